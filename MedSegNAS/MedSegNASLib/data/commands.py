"""``medsegnas phantom`` (write a phantom dataset, as a job) and ``medsegnas dataset check|info``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import JobError

#: Largest ``--size`` accepted: a 256^3 case already needs ~1 GB of working memory.
MAX_PHANTOM_SIZE = 256


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[minimum, maximum]`` with a clear message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``phantom`` and ``dataset`` (``check``, ``info``)."""
    from ..jobs.runner import add_job_arguments
    from .phantom import MIN_PHANTOM_SIZE, UNLABELED_FOLDER

    phantom = subparsers.add_parser(
        "phantom",
        help="write a synthetic abdominal CT dataset (MSD layout) for tests and demos",
        description="Write synthetic CT-like abdominal volumes with liver, spleen and kidney labels as a "
        "Medical Segmentation Decathlon dataset: OUT_DIR/dataset.json, imagesTr/, labelsTr/, imagesTs/ "
        f"and {UNLABELED_FOLDER}/ (images for self-supervised pretraining). The same seed always gives "
        "the same files. Runs as a job: use --detach to run it in the background, --run-dir/--resume "
        "to continue an interrupted run.",
    )
    phantom.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="dataset folder (created if needed)")
    phantom.add_argument(
        "--cases", type=int_at_least(1), default=8, metavar="N", help="labelled training cases (default: 8)"
    )
    phantom.add_argument(
        "--size",
        type=int_at_least(MIN_PHANTOM_SIZE, MAX_PHANTOM_SIZE),
        default=64,
        metavar="S",
        help=f"voxels per axis of every volume, {MIN_PHANTOM_SIZE}-{MAX_PHANTOM_SIZE} (default: 64)",
    )
    phantom.add_argument(
        "--seed", type=int_at_least(0), default=0, metavar="K", help="dataset seed (default: 0)"
    )
    phantom.add_argument(
        "--unlabeled", type=int_at_least(0), default=4, metavar="M", help="unlabelled images (default: 4)"
    )
    phantom.add_argument(
        "--test-cases",
        type=int_at_least(0),
        default=2,
        metavar="T",
        help="labelled test cases (imagesTs/, labelsTs/): a held-out split (default: 2)",
    )
    phantom.add_argument(
        "--task",
        choices=("abdomen", "abdomen-hard"),
        default="abdomen",
        help="abdomen: liver, spleen, kidneys (the demo's); abdomen-hard: also a thin pancreas, vessels and liver "
        "lesions, four contrasts (CT phases, MR-like), variable field of view and slice thickness",
    )
    add_job_arguments(phantom)
    phantom.set_defaults(func=phantom_command)

    dataset = subparsers.add_parser(
        "dataset",
        help="check or describe a dataset (MSD dataset.json or MONAI datalist)",
        description="Check or describe a dataset given as a Medical Segmentation Decathlon dataset.json "
        "(or its folder) or a MONAI / Auto3DSeg datalist JSON.",
    )
    actions = dataset.add_subparsers(dest="dataset_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate files, grids and label values; exit 1 on errors",
        description="Check that every listed file exists, that images, channels and labels share their "
        "voxel grid, that label maps hold only declared values and that the dataset can be split for "
        "training. Prints a summary and every problem found; the exit code is 1 if there are errors.",
    )
    info = actions.add_parser(
        "info",
        help="summary of the dataset description (opens no image)",
        description="Print the dataset's name, format, case counts, channels, labels and folds, read "
        "from the JSON only.",
    )
    for action in (check, info):
        action.add_argument(
            "dataset", metavar="DATASET", type=Path, help="dataset.json, its folder, or a datalist"
        )
        action.add_argument(
            "--dataroot",
            type=Path,
            default=None,
            metavar="DIR",
            help="folder that relative paths in the JSON are relative to (default: the JSON's folder)",
        )
    check.add_argument(
        "--max-cases",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="open the files of at most N cases per role (existence is checked for all)",
    )
    check.add_argument(
        "--no-label-values",
        dest="check_labels",
        action="store_false",
        help="do not read label maps to check their values (headers only: faster)",
    )
    check.set_defaults(func=dataset_check_command)
    info.add_argument(
        "--folds",
        type=int_at_least(2),
        default=5,
        metavar="N",
        help="cross-validation folds to show (default: 5)",
    )
    info.set_defaults(func=dataset_info_command)


def phantom_command(args: argparse.Namespace) -> int:
    """Write a phantom dataset case by case as the job kind ``phantom`` (resumable)."""
    from ..jobs.runner import run_job_command
    from .phantom import plan_phantom_dataset, write_phantom_dataset

    out_dir = args.out_dir.expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise JobError(f"{out_dir} exists and is not a folder; choose another OUT_DIR")
    config: dict[str, Any] = {
        "out_dir": str(out_dir),
        "cases": args.cases,
        "size": args.size,
        "seed": args.seed,
        "unlabeled": args.unlabeled,
        "test_cases": args.test_cases,
        **({"task": args.task} if args.task != "abdomen" else {}),
    }
    total = len(
        plan_phantom_dataset(
            cases=args.cases, seed=args.seed, unlabeled=args.unlabeled, test_cases=args.test_cases
        )
    )

    def body(ctx) -> dict[str, Any]:
        done: list[str] = []
        state = ctx.load_checkpoint() if ctx.resuming else None
        if state is not None:
            if state.get("config") != config:
                raise JobError(
                    f"this run was started with {state.get('config')}; resume it with the same arguments "
                    "or start a new run"
                )
            done = list(state.get("done", []))
            ctx.log(f"resuming: {len(done)} of {total} cases already written")

        def on_case(step: int, total_cases: int, case_id: str) -> None:
            if case_id not in done:
                done.append(case_id)
            ctx.progress(step, total_cases, stage="phantom", case=case_id)
            ctx.save_checkpoint({"done": list(done), "config": config})
            if step < total_cases:  # after the last case only dataset.json is left: finish it
                ctx.raise_if_stop_requested()

        dataset_json = write_phantom_dataset(
            out_dir,
            cases=args.cases,
            size=args.size,
            seed=args.seed,
            unlabeled=args.unlabeled,
            test_cases=args.test_cases,
            task=args.task,
            on_case=on_case,
            skip_existing=set(done),
        )
        ctx.artifact(dataset_json, "dataset")
        print(dataset_json)
        print(
            f"phantom dataset: {args.cases} labelled training, {args.test_cases} test and {args.unlabeled} "
            f"unlabeled case(s) of {args.size}^3 voxels, seed {args.seed}"
        )
        sys.stdout.flush()
        return {"dataset": str(dataset_json), "cases": total}

    return run_job_command("phantom", args, body, config, inputs={"out_dir": str(out_dir)})


def dataset_check_command(args: argparse.Namespace) -> int:
    from .datasets import load_dataset, validate_dataset

    dataset = load_dataset(args.dataset, dataroot=args.dataroot)
    report = validate_dataset(
        dataset, check_labels=args.check_labels, max_cases=args.max_cases, raise_on_error=False
    )
    print("\n".join(report.summary_lines()))
    if not report.ok:
        print(
            f"error: dataset {dataset.path} has {len(report.errors)} error(s), listed above", file=sys.stderr
        )
        return 1
    return 0


def dataset_info_command(args: argparse.Namespace) -> int:
    from .datasets import load_dataset, split_folds

    dataset = load_dataset(args.dataset, dataroot=args.dataroot)
    labelled = [case for case in dataset.cases if case.label is not None]
    lines = [
        f"dataset: {dataset.name} ({dataset.path}, {'MSD dataset.json' if dataset.format == 'msd' else 'datalist'})",
        f"root: {dataset.root}",
        f"cases: {len(dataset.cases)} training ({len(labelled)} labelled), {len(dataset.validation)} validation, "
        f"{len(dataset.test)} test, {len(dataset.unlabeled)} unlabeled",
        "channels: " + ", ".join(f"{i} {m}" for i, m in enumerate(dataset.modalities)),
        "labels: " + (", ".join(f"{i.value} {i.name}" for i in dataset.labels) or "not declared"),
    ]
    if dataset.validation:
        lines.append("validation: the datalist's explicit 'validation' list")
    elif len(labelled) >= 2:
        folds = split_folds(labelled, n_folds=args.folds)
        lines.append(f"folds ({args.folds}): " + ", ".join(str(len(f)) for f in folds) + " validation cases")
    if dataset.description:
        lines.append(f"description: {dataset.description}")
    print("\n".join(lines))
    return 0
