#!/usr/bin/env python3
"""The README's few-shot table over several seeds: pretrained encoder vs random initialisation.

One ``sslpretrain fewshot`` run per seed (each its own resumable run directory,
``OUT/fewshot-seed<K>``), all from the same pretrained encoder; the seed shuffles which labelled
cases train and which are held out, and seeds every fine-tuning. Then, per number of labelled
cases: mean Dice ± sample standard deviation over seeds for each initialisation, and of the paired
difference (pretrained - random, same cases and seed), and on how many seeds the pretrained arm
is ahead. Writes ``OUT/fewshot_seeds.md``, ``OUT/fewshot_seeds.json`` and ``OUT/fewshot_seeds.png``.

Without ``--dataset``/``--pretrained`` it first makes the README's phantom and pretrains on its
unlabeled volumes (``--preset tiny``), so the whole table is one command:

    python benchmarks/fewshot_seeds.py --out FS3 --seeds 0,1,2 --shots 2,4 --budget 48 --eval-cases 4

Run it again after a stop: finished runs are kept, a stopped one is resumed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for folder in ("MedSegNAS", "SSLPretrain"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from MedSegNASLib.atomic import write_atomic, write_text_atomic  # noqa: E402
from MedSegNASLib.jobs import RunDir  # noqa: E402
from SSLPretrainLib.fewshot import (  # noqa: E402
    SeedSummary,
    read_fewshot_csv,
    seeds_markdown,
    summarize_seeds,
)


def _run(module: str, *args: str) -> None:
    print(f"+ {module} " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", f"{module}.cli", *args], check=True)


def _seeds(text: str) -> list[int]:
    try:
        seeds = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be whole numbers separated by commas, got {text!r}"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The dataset and pretrained run: given, or made as the README describes (kept across reruns)."""
    dataset = args.dataset
    if dataset is None:
        dataset = args.out / "PH"
        if not (dataset / "dataset.json").is_file():
            _run("MedSegNASLib", "phantom", str(dataset), "--cases", "10", "--size", "64", "--unlabeled", "8")
    pretrained = args.pretrained
    if pretrained is None:
        pretrained = args.out / "PRE"
        run = RunDir(pretrained)
        state = run.read_status().get("state") if run.is_run_dir() else None
        if state != "done":
            resume = ["--resume"] if state is not None else []
            _run("SSLPretrainLib", "pretrain", "--images", str(dataset / "imagesUnlabeled"), "--preset", "tiny",
                 "--device", args.device, "--run-dir", str(pretrained), *resume)  # fmt: skip
    return Path(dataset), Path(pretrained)


def run_seed(args: argparse.Namespace, dataset: Path, pretrained: Path, seed: int) -> Path:
    """The few-shot run of ``seed`` (skipped when finished, resumed when stopped); its CSV."""
    run = RunDir(args.out / f"fewshot-seed{seed}")
    state = run.read_status().get("state") if run.is_run_dir() else None
    if state != "done":
        if state is not None:
            _run("SSLPretrainLib", "fewshot", "--run-dir", str(run.path), "--resume", "--device", args.device)
        else:
            argv = ["fewshot", "--dataset", str(dataset), "--pretrained", str(pretrained), "--seed", str(seed),
                    "--shots", args.shots, "--budget", str(args.budget), "--device", args.device,
                    "--run-dir", str(run.path)]  # fmt: skip
            if args.eval_cases is not None:
                argv += ["--eval-cases", str(args.eval_cases)]
            if args.config is not None:
                argv += ["--config", str(args.config)]
            _run("SSLPretrainLib", *argv)
    return run.artifacts / "fewshot.csv"


def plot(summaries: list[SeedSummary], path: Path) -> None:
    """Mean Dice (%) ± sd over seeds against labelled cases, one line per initialisation."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    shots = [s.shots for s in summaries]
    for key, color, marker, label in (
        ("random", "#7f7f7f", "s", "random init"),
        ("pretrained", "#1f77b4", "o", "pretrained encoder"),
    ):
        means = [100 * s.to_dict()[key]["mean"] for s in summaries]
        sds = [100 * s.to_dict()[key]["sd"] for s in summaries]
        ax.errorbar(shots, means, yerr=sds, color=color, marker=marker, capsize=4, label=label, linewidth=1.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots)
    ax.set_xticklabels([str(n) for n in shots])
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("Dice on held-out cases (%), mean ± sd")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    seeds = sorted({seed for s in summaries for seed in s.seeds})
    ax.set_title(f"Few-shot fine-tuning of Swin UNETR, {len(seeds)} seed(s)")
    ax.legend(loc="best")  # away from the points, wherever they lie
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=120, facecolor="white"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and the table")
    parser.add_argument(
        "--dataset", type=Path, default=None, help="labelled dataset (default: make the phantom)"
    )
    parser.add_argument(
        "--pretrained", type=Path, default=None, help="pretraining run (default: pretrain tiny)"
    )
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="seeds (default: 0,1,2)")
    parser.add_argument("--shots", default="2,4", help="labelled cases per training set (default: 2,4)")
    parser.add_argument("--budget", type=int, default=48, help="steps of every fine-tuning (default: 48)")
    parser.add_argument("--eval-cases", type=int, default=4, help="held-out cases per seed (default: 4)")
    parser.add_argument("--config", type=Path, default=None, help="fine-tuning settings (JSON/YAML)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    dataset, pretrained = prepare(args)
    results = {
        seed: read_fewshot_csv(run_seed(args, dataset, pretrained, seed).read_text()) for seed in args.seeds
    }
    summaries = summarize_seeds(results)
    table = seeds_markdown(summaries)
    command = " ".join(["python benchmarks/fewshot_seeds.py", *(argv if argv is not None else sys.argv[1:])])
    report = {
        "command": command,
        "dataset": str(dataset),
        "pretrained": str(pretrained),
        "budget_steps": args.budget,
        "wall_seconds_this_call": round(time.monotonic() - started, 1),
        "summaries": [s.to_dict() for s in summaries],
        "per_seed": {str(seed): [r.to_dict() for r in rows] for seed, rows in results.items()},
    }
    write_text_atomic(args.out / "fewshot_seeds.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(args.out / "fewshot_seeds.md", f"Reproduce: `{command}`\n\n{table}")
    plot(summaries, args.out / "fewshot_seeds.png")
    print(table, end="")
    print(f"written: {args.out / 'fewshot_seeds.md'}, fewshot_seeds.json, fewshot_seeds.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
