"""``medsegnas evaluate``: Dice, HD95 and NSD of a model (or of label-map files) on a dataset.

    medsegnas evaluate --model spleen_ct_segmentation --dataset Task09_Spleen --out eval.json
    medsegnas evaluate --model runs/train-20250101-120000-ab12cd --dataset data --split all
    medsegnas evaluate --predictions runs/train-.../artifacts/predictions --dataset data --cases a,b
    medsegnas evaluate --model bundle/ --dataset data --run-dir runs/eval-1      # as a job

Prints a table (per class: mean ± sd over the cases); ``--out FILE.json`` also writes the report
and ``FILE.csv`` (one row per case and class). As a job (``--run-dir``), progress is reported per
case and the report goes to ``RUN/artifacts/evaluation.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError

__all__ = ["register", "evaluate_command", "check_report_path"]

#: Report file name in a job's artifacts folder when ``--out`` is not given.
JOB_REPORT_NAME = "evaluation.json"


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a distance in mm, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"the tolerance must be a finite number of mm >= 0, got {text}")
    return value


def _case_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            "give case names separated by commas, e.g. --cases case_001,case_007"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    from ..inference import DEVICES
    from ..jobs.runner import add_job_arguments
    from ..nas.commands import add_dataset_arguments
    from .evaluate import SPLITS

    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, HD95 and NSD of a model (or of existing label maps) on a labelled dataset",
        description="Segment the labelled cases of a dataset with a model (the segment engine: the model's own "
        "preprocessing, label maps on each case's grid) and compare them with the reference label maps: Dice, "
        "95th-percentile Hausdorff distance in mm and normalised surface Dice at a tolerance in mm, per case "
        "and class (MONAI's metrics). With --predictions, score label-map files named after the cases instead "
        "of running a model. A class in neither map is not scored (NaN, left out of means); a class in only "
        "one scores Dice 0, NSD 0 and an infinite HD95 (left out of HD95 means, counted).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        "-m",
        metavar="MODEL",
        help="a registered model id, a bundle folder, .zip or .tar.gz, or the run directory of 'medsegnas train'",
    )
    source.add_argument(
        "--predictions",
        type=Path,
        metavar="DIR",
        help="score the label maps in DIR (<case>.nii.gz, .nrrd, .seg.nrrd, .mha) instead of running a model",
    )
    add_dataset_arguments(parser)
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="validation",
        help="validation: the validation cases of search/train (a trained model's own recorded ones); test: the "
        "labelled test cases; all: every labelled case (default: validation)",
    )
    parser.add_argument(
        "--cases", type=_case_list, default=None, metavar="A,B", help="only these cases of the split"
    )
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="write the report to FILE.json and the per-case table to FILE.csv",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to run the model (default: auto)"
    )
    parser.add_argument(
        "--tolerance",
        type=_tolerance,
        default=2.0,
        metavar="MM",
        help="surface distance (mm) within which NSD counts a boundary as correct (default: 2)",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="let the bundle run its own code (only for bundles from a source you trust)",
    )
    interactive = parser.add_argument_group(
        "interactive models (--interactive)",
        "the simulated-user protocol: each next click at the centre of the largest error region; NoC@85, "
        "NoC@90, Dice after each click, seconds per click, a Dice-vs-clicks plot (FILE.png next to --out)",
    )
    interactive.add_argument("--interactive", action="store_true", help="evaluate click refinement")
    interactive.add_argument(
        "--start",
        choices=("auto", "empty"),
        default="auto",
        help="start from the automatic result or nothing",
    )
    interactive.add_argument(
        "--max-clicks", type=int, default=20, metavar="N", help="click budget (default 20)"
    )
    interactive.add_argument(
        "--brush-mm",
        type=float,
        default=5.0,
        metavar="MM",
        help="radius of the paint-stroke comparison (5 mm)",
    )
    interactive.add_argument(
        "--region", type=int, default=None, metavar="N", help="local region side (voxels)"
    )
    interactive.add_argument(
        "--whole-region",
        action="store_true",
        help="a previous-mask model's answer is taken over its whole region, not only the change "
        "connected to the click (for comparison)",
    )
    interactive.add_argument(
        "--click-reach",
        type=float,
        default=None,
        metavar="MM",
        help="how far (mm) one click's change may reach from it (default: no limit)",
    )
    add_job_arguments(parser)
    parser.set_defaults(func=evaluate_command)


def check_report_path(path: Path) -> Path:
    """Refuse, before any work, a report path that cannot be written. Returns it absolute."""
    path = path.expanduser().absolute()
    if path.suffix.lower() != ".json":
        raise MedSegNASError(f"--out {path}: give a .json file name (the CSV table is written next to it)")
    if path.is_dir():
        raise MedSegNASError(f"--out {path} is a folder; give a file name such as {path / 'evaluation.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedSegNASError(f"--out {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MedSegNASError(f"--out {path}: folder {parent} is not writable")
    for existing in (path, path.with_suffix(".csv")):
        if existing.is_dir():
            raise MedSegNASError(f"--out {path}: {existing} is a folder")
    return path


def _check_inputs(args: argparse.Namespace) -> Any:
    """Fail fast, before a run directory is touched, on inputs that cannot work; returns the opened
    model (a :class:`~MedSegNASLib.inference.model.SegmentationModel`) or None for --predictions."""
    from .evaluate import open_dataset, select_cases

    dataset = open_dataset(args.dataset, args.dataroot)
    if args.split != "validation":  # a model may bring its own validation cases: checked later
        select_cases(dataset, args.split, args.cases)
    if args.predictions is not None:
        if not args.predictions.expanduser().is_dir():
            raise MedSegNASError(f"--predictions {args.predictions}: no such folder")
        return None
    from ..inference.engine import select_device
    from ..inference.model import load_resolved_model

    select_device(args.device)
    return load_resolved_model(args.model, trust=args.trust)  # a train run folder: its bundle


def _jsonable_means(means: dict[str, float]) -> dict[str, float | None]:
    return {name: (round(value, 4) if math.isfinite(value) else None) for name, value in means.items()}


def evaluate_command(args: argparse.Namespace) -> int:
    """Run ``evaluate`` as the job kind ``evaluate`` (in the foreground without ``--run-dir``)."""
    if getattr(args, "interactive", False):
        from ..interactive.commands import evaluate_interactive_command

        return evaluate_interactive_command(args)
    from ..jobs.runner import run_job_command
    from .evaluate import evaluate_model, evaluate_predictions

    out = check_report_path(args.out) if args.out is not None else None
    network = _check_inputs(args)
    dataset = str(args.dataset.expanduser().absolute())
    dataroot = None if args.dataroot is None else str(args.dataroot.expanduser().absolute())
    predictions = None if args.predictions is None else str(args.predictions.expanduser().absolute())
    model = None
    if args.model is not None:
        from ..inference.model import looks_like_path

        model = str(Path(args.model).expanduser().absolute()) if looks_like_path(args.model) else args.model
        if Path(args.model).expanduser().is_dir():
            model = str(Path(args.model).expanduser().absolute())
    config: dict[str, Any] = {
        "model": model,
        "predictions": predictions,
        "dataset": dataset,
        "dataroot": dataroot,
        "split": args.split,
        "cases": args.cases,
        "out": None if out is None else str(out),
        "device": args.device,
        "tolerance_mm": args.tolerance,
        "trust": args.trust,
    }
    inputs = {"dataset": dataset, **({"model": model} if model else {"predictions": predictions})}

    def body(ctx) -> dict[str, Any]:
        def progress(done: int, total: int, **info: Any) -> None:
            ctx.progress(done, total, stage="evaluate", **info)

        common = {
            "split": args.split,
            "cases": args.cases,
            "tolerance_mm": args.tolerance,
            "dataroot": dataroot,
            "progress": progress,
            "log": ctx.log,
            "stop": ctx.raise_if_stop_requested,
        }
        if predictions is not None:
            report = evaluate_predictions(predictions, dataset, **common)
        else:
            report = evaluate_model(network, dataset, device=args.device, **common)
            report.info["model"] = model
        target = out
        if target is None and ctx.run_dir is not None:
            target = ctx.run_dir.artifacts / JOB_REPORT_NAME
        written: list[str] = []
        if target is not None:
            json_path, csv_path = report.write(target)
            ctx.artifact(json_path, "table", format="json")
            ctx.artifact(csv_path, "table", format="csv")
            written = [str(json_path), str(csv_path)]
        print(report.format_table())
        sys.stdout.flush()
        return {
            "cases": len(report.info.get("cases", [])),
            "mean_dice": _jsonable_means(report.mean_dice()),
            "files": written,
        }

    return run_job_command("evaluate", args, body, config, inputs=inputs)
