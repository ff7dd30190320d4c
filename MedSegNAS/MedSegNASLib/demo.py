"""``medsegnas demo``: the README's main command, on built-in phantom data (no download).

Stages (each a job of the common protocol, with its own run directory under ``OUT/runs``):

1. ``phantom``: a synthetic abdominal CT dataset in Medical Segmentation Decathlon layout;
2. dataset check: files, grids and label values;
3. a picture of one case with its organ labels (``OUT/phantom_preview.png``) and a table of organ
   volumes per case.

The search, training, evaluation and segmentation stages join this pipeline as they land.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .errors import MedSegNASError


def register(subparsers: argparse._SubParsersAction) -> None:
    from .data.commands import MAX_PHANTOM_SIZE, int_at_least
    from .data.phantom import MIN_PHANTOM_SIZE

    demo = subparsers.add_parser(
        "demo",
        help="run the MedSegNAS pipeline on built-in phantom data (no download)",
        description="Generate a synthetic abdominal CT dataset, check it and draw one case with its organ "
        "labels. Every stage runs as a job whose run directory is kept under OUT/runs.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo-output"),
        metavar="DIR",
        help="output folder (default: demo-output)",
    )
    demo.add_argument(
        "--cases", type=int_at_least(2), default=6, metavar="N", help="labelled phantom cases (default: 6)"
    )
    demo.add_argument(
        "--size",
        type=int_at_least(MIN_PHANTOM_SIZE, MAX_PHANTOM_SIZE),
        default=64,
        metavar="S",
        help="voxels per axis (default: 64)",
    )
    demo.add_argument(
        "--seed", type=int_at_least(0), default=0, metavar="K", help="phantom seed (default: 0)"
    )
    demo.set_defaults(func=demo_command)


def _organ_volumes_ml(label_path: Path, values: list[int]) -> list[float]:
    from .data.io import read_volume

    label = read_volume(label_path)
    voxel_ml = float(np.prod(label.spacing)) / 1000.0
    counts = np.bincount(label.array.reshape(-1).astype(np.int64), minlength=max(values) + 1)
    return [float(counts[v]) * voxel_ml for v in values]


def demo_command(args: argparse.Namespace) -> int:
    from . import cli
    from .data.datasets import load_dataset, validate_dataset
    from .data.io import read_volume
    from .data.preview import render_overlay
    from .jobs import RunDir

    out = args.out.expanduser().absolute()
    dataset_dir = out / "dataset"
    runs = out / "runs"
    print(f"[1/3] phantom dataset: {args.cases} labelled cases of {args.size}^3 voxels -> {dataset_dir}")
    run = RunDir.create(runs, "phantom")
    code = cli.main(
        [
            "phantom",
            str(dataset_dir),
            "--cases",
            str(args.cases),
            "--size",
            str(args.size),
            "--seed",
            str(args.seed),
            "--test-cases",
            "2",
            "--unlabeled",
            "2",
            "--run-dir",
            str(run.path),
        ]
    )
    if code != 0:
        raise MedSegNASError(f"the phantom stage stopped with exit code {code}; see {run.worker_log}")

    print("[2/3] dataset check")
    dataset = load_dataset(dataset_dir / "dataset.json")
    report = validate_dataset(dataset, raise_on_error=False)
    for line in report.summary_lines():
        print("      " + line)
    report.raise_if_errors()

    print("[3/3] preview and organ volumes")
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
    header = f"      {'case':<16}" + "".join(f"{info.name:>14}" for info in organs)
    print(header + "   (mL)")
    for case in dataset.cases:
        volumes = _organ_volumes_ml(case.label, values)
        print(f"      {case.name:<16}" + "".join(f"{v:>14.1f}" for v in volumes))
    print()
    print(f"dataset:  {dataset_dir / 'dataset.json'}")
    print(f"picture:  {preview}")
    print(f"job runs: {runs}  (medsegnas jobs list {runs})")
    sys.stdout.flush()
    return 0
