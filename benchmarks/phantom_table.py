#!/usr/bin/env python3
"""The README's phantom table: a searched DiNTS network against standard baselines, same budget.

One run, same dataset, same preprocessing, same training preset and seed for every network:

1. a phantom dataset (``medsegnas phantom``; skipped when ``--dataset`` is given);
2. ``medsegnas search --preset P`` (skipped when ``--arch`` is given);
3. ``medsegnas train --preset P`` of the searched architecture and of each ``--baselines``;
4. ``medsegnas evaluate`` of every exported bundle on the same validation cases.

It prints a Markdown table (Dice per class, mean Dice, HD95, parameters, training time) and
writes it with the raw figures to ``OUT/phantom_table.md`` and ``OUT/phantom_table.json``.

    python benchmarks/phantom_table.py --out /tmp/phantom-table            # about 10 min on 2 CPU cores
    python benchmarks/phantom_table.py --out /tmp/t --preset small --device cuda --cases 20 --size 96
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def medsegnas(*args: str) -> None:
    command = [sys.executable, "-m", "MedSegNASLib.cli", *args]
    print("+ medsegnas " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def train(network: str, arch: Path | None, args: argparse.Namespace, dataset: Path) -> dict[str, Any]:
    run = args.out / "runs" / f"train-{network}"
    argv = ["train", "--dataset", str(dataset), "--run-dir", str(run), "--preset", args.preset]
    argv += ["--seed", str(args.seed), "--device", args.device, "--no-register"]
    argv += ["--arch", str(arch)] if arch is not None else ["--network", network]
    if args.train_config is not None:
        argv += ["--config", str(args.train_config)]
    started = time.monotonic()
    if not (run / "artifacts" / "model" / "models" / "model.pt").is_file():
        medsegnas(*argv)
    seconds = time.monotonic() - started
    summary = json.loads((run / "artifacts" / "summary.json").read_text())
    evaluation = args.out / f"evaluation-{network}.json"
    medsegnas(
        "evaluate",
        "--model",
        str(run / "artifacts" / "model"),
        "--dataset",
        str(dataset),
        "--split",
        "validation",
        "--device",
        args.device,
        "--out",
        str(evaluation),
    )
    return {
        "network": network,
        "run": str(run),
        "parameters": summary.get("parameters"),
        "train_seconds": summary.get("wall_s", seconds),
        "evaluation": json.loads(evaluation.read_text()),
    }


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite (JSON reports write "nan"/"inf")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _cell(value: Any, digits: int = 3) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    classes = list(results[0]["evaluation"]["per_class"])
    header = ["network", "parameters", *[f"Dice {name}" for name in classes], "mean Dice", "mean HD95 (mm)"]
    header.append("training (min)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        per_class = result["evaluation"]["per_class"]
        dice = [_finite(per_class[name].get("dice_mean")) for name in classes]
        hd95 = [_finite(per_class[name].get("hd95_mm_mean")) for name in classes]
        finite = [d for d in dice if d is not None]
        finite_hd = [h for h in hd95 if h is not None]
        row = [result["network"], f"{(result['parameters'] or 0) / 1e6:.2f} M"]
        row += [_cell(d) for d in dice]
        row.append(_cell(sum(finite) / len(finite) if finite else None))
        row.append(_cell(sum(finite_hd) / len(finite_hd) if finite_hd else None, 1))
        row.append(_cell((result["train_seconds"] or 0) / 60.0, 1))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("phantom-table"))
    parser.add_argument(
        "--dataset", type=Path, default=None, help="use this dataset instead of a new phantom"
    )
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"])
    parser.add_argument(
        "--arch", type=Path, default=None, help="arch.json of an earlier search (skip the search)"
    )
    parser.add_argument("--baselines", default="unet", help="comma-separated: unet,segresnet,swinunetr")
    parser.add_argument("--train-config", type=Path, default=None, help="--config for every training run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)

    dataset = args.dataset
    if dataset is None:
        dataset = args.out / "dataset"
        if not (dataset / "dataset.json").is_file():
            medsegnas("phantom", str(dataset), "--cases", str(args.cases), "--size", str(args.size))
    arch = args.arch
    if arch is None:
        search_run = args.out / "runs" / "search"
        arch = search_run / "artifacts" / "arch.json"
        if not arch.is_file():
            medsegnas(
                "search", "--dataset", str(dataset), "--run-dir", str(search_run), "--preset", args.preset,
                "--seed", str(args.seed), "--device", args.device,
            )  # fmt: skip
    results = [train("dints", arch, args, dataset)]
    for network in [name.strip() for name in args.baselines.split(",") if name.strip()]:
        results.append(train(network, None, args, dataset))

    table = markdown(results)
    (args.out / "phantom_table.md").write_text(table)
    (args.out / "phantom_table.json").write_text(json.dumps(results, indent=2))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
