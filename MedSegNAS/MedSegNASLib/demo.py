"""``medsegnas demo``: the README's main command, on built-in phantom data (no download).

The whole MedSegNAS pipeline on a synthetic abdominal CT dataset, each long stage a job of the
common protocol with its own run directory under ``OUT/runs``:

1. ``phantom``: the dataset, in Medical Segmentation Decathlon layout (``OUT/dataset``);
2. dataset check (files, grids, label values) and a picture of one case with its labels;
3. ``search --preset tiny``: DiNTS topology search -> ``arch.json`` and the topology picture;
4. ``train --preset tiny --arch``: retrain the searched network -> a MONAI bundle;
5. ``evaluate``: Dice, HD95 and NSD per organ on the validation cases (``OUT/evaluation.*``);
6. ``segment``: a test image the network never saw -> ``OUT/segmentation/<case>.seg.nrrd``
   and a picture of it.

With the defaults (6 cases of 64^3) it takes a few minutes on 2 CPU cores. ``--quick`` shortens
the search and the training to a couple of epochs (for smoke tests: the Dice is then low).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MedSegNASError

STAGES = 6

#: Settings of ``--quick`` (search and training only a couple of epochs).
QUICK_SEARCH = {"epochs": 2, "warmup_epochs": 1, "val_interval": 1}
QUICK_TRAIN = {"epochs": 2, "val_interval": 1}


def register(subparsers: argparse._SubParsersAction) -> None:
    from .data.commands import MAX_PHANTOM_SIZE, int_at_least
    from .data.phantom import MIN_PHANTOM_SIZE

    demo = subparsers.add_parser(
        "demo",
        help="run the whole MedSegNAS pipeline on built-in phantom data (no download)",
        description="Generate a synthetic abdominal CT dataset, search a DiNTS network on it, retrain the "
        "searched network, evaluate it (Dice, HD95, NSD per organ) and segment a test image. Every long "
        "stage runs as a job whose run directory is kept under OUT/runs.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        metavar="DIR",
        help="output folder (default: demo-output)",
    )
    demo.add_argument(
        "--cases", type=int_at_least(3), default=6, metavar="N", help="labelled phantom cases (default: 6)"
    )
    demo.add_argument(
        "--size",
        type=int_at_least(MIN_PHANTOM_SIZE * 2, MAX_PHANTOM_SIZE),
        default=64,
        metavar="S",
        help="voxels per axis (default: 64)",
    )
    demo.add_argument(
        "--seed", type=int_at_least(0), default=0, metavar="K", help="phantom seed (default: 0)"
    )
    demo.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to compute (default: auto)"
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="search and train for only a couple of epochs (a smoke test of the pipeline; low Dice)",
    )
    demo.set_defaults(func=demo_command)


def _organ_volumes_ml(label_path: Path, values: list[int]) -> list[float]:
    from .data.io import read_volume

    label = read_volume(label_path)
    voxel_ml = float(np.prod(label.spacing)) / 1000.0
    counts = np.bincount(label.array.reshape(-1).astype(np.int64), minlength=max(values) + 1)
    return [float(counts[v]) * voxel_ml for v in values]


def _run_stage(name: str, runs: Path, argv: Sequence[str]) -> Path:
    """Run ``medsegnas <argv> --run-dir RUN`` in this process; return RUN (raise if it did not finish)."""
    from . import cli
    from .jobs import RunDir

    run = RunDir.create(runs, name)
    code = cli.main([*argv, "--run-dir", str(run.path)])
    if code != 0:
        raise MedSegNASError(f"the {name} stage stopped with exit code {code}; see {run.worker_log}")
    return run.path


def _write_config(path: Path, settings: dict[str, Any]) -> Path:
    from .atomic import write_json_atomic

    write_json_atomic(path, settings)
    return path


def _format_metric(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "      ") -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            indent
            + "  ".join(
                str(cell).rjust(width) if i else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )


def demo_command(args: argparse.Namespace) -> int:
    from .data.datasets import load_dataset, validate_dataset
    from .data.io import read_volume
    from .data.preview import render_overlay
    from .evaluation.evaluate import evaluate_model

    started = time.monotonic()
    out = args.out.expanduser().absolute()
    dataset_dir = out / "dataset"
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)

    print(
        f"[1/{STAGES}] phantom dataset: {args.cases} labelled cases of {args.size}^3 voxels -> {dataset_dir}"
    )
    argv = ["phantom", str(dataset_dir), "--cases", str(args.cases), "--size", str(args.size)]
    argv += ["--seed", str(args.seed), "--test-cases", "2", "--unlabeled", "2"]
    _run_stage("phantom", runs, argv)

    print(f"[2/{STAGES}] dataset check")
    dataset = load_dataset(dataset_dir / "dataset.json")
    report = validate_dataset(dataset, raise_on_error=False)
    for line in report.summary_lines():
        print("      " + line)
    report.raise_if_errors()
    first = dataset.cases[0]
    preview = render_overlay(
        read_volume(first.images[0]),
        read_volume(first.label),
        dataset.labels,
        out / "phantom_preview.png",
        title=f"MedSegNAS phantom: {first.name}",
    )
    organs = dataset.foreground_labels
    values = [info.value for info in organs]
    rows = [
        [case.name, *(f"{v:.1f}" for v in _organ_volumes_ml(case.label, values))] for case in dataset.cases
    ]
    _print_table(["organ volume (mL)", *(info.name for info in organs)], rows)

    print(f"[3/{STAGES}] DiNTS topology search (preset tiny)")
    argv = ["search", "--dataset", str(dataset_dir), "--preset", "tiny", "--device", args.device]
    if args.quick:
        argv += ["--config", str(_write_config(out / "quick-search.json", QUICK_SEARCH))]
    search_run = _run_stage("search", runs, argv)
    arch = search_run / "artifacts" / "arch.json"
    print(f"      architecture: {arch}")
    print(f"      topology:     {search_run / 'artifacts' / 'topology.png'}")

    print(f"[4/{STAGES}] retrain the searched network (preset tiny)")
    argv = ["train", "--dataset", str(dataset_dir), "--arch", str(arch), "--preset", "tiny"]
    argv += ["--device", args.device, "--no-register"]
    if args.quick:
        argv += ["--config", str(_write_config(out / "quick-train.json", QUICK_TRAIN))]
    train_run = _run_stage("train", runs, argv)
    bundle = train_run / "artifacts" / "model"
    print(f"      MONAI bundle: {bundle}")

    print(f"[5/{STAGES}] evaluate on the validation cases")
    evaluation = evaluate_model(bundle, dataset_dir, split="validation", device=args.device)
    json_path, csv_path = evaluation.write(out / "evaluation.json")
    rows = []
    for name, stats in evaluation.per_class.items():
        rows.append(
            [
                name,
                _format_metric(stats.get("dice_mean")),
                _format_metric(stats.get("hd95_mm_mean"), 1),
                _format_metric(stats.get("nsd_mean")),
            ]
        )
    _print_table(["organ", "Dice", "HD95 (mm)", "NSD"], rows)

    print(f"[6/{STAGES}] segment a test image")
    test_case = dataset.test[0] if dataset.test else first
    test_image, case_name = test_case.images[0], test_case.name
    segmentation = out / "segmentation" / f"{case_name}.seg.nrrd"
    segmentation.parent.mkdir(parents=True, exist_ok=True)
    from . import cli

    code = cli.main(["segment", str(test_image), "--model", str(bundle), "-o", str(segmentation)])
    if code != 0:
        raise MedSegNASError(f"segmenting {test_image} failed with exit code {code}")
    segmented_picture = render_overlay(
        read_volume(test_image),
        read_volume(segmentation),
        dataset.labels,
        out / "segmentation_preview.png",
        title=f"MedSegNAS demo: {case_name} segmented by the searched network",
    )

    minutes = (time.monotonic() - started) / 60.0
    print()
    print(f"done in {minutes:.1f} min")
    print(f"dataset:       {dataset_dir / 'dataset.json'}")
    print(f"picture:       {preview}")
    print(f"topology:      {search_run / 'artifacts' / 'topology.png'}")
    print(f"bundle:        {bundle}  (medsegnas segment IMAGE --model {bundle} -o OUT.seg.nrrd)")
    print(f"evaluation:    {json_path}, {csv_path}")
    print(f"segmentation:  {segmentation}  ({segmented_picture})")
    print(f"job runs:      {runs}  (medsegnas jobs list {runs})")
    sys.stdout.flush()
    return 0
