"""``medsegnas interactive``: refine a segmentation by clicks, through the same worker Slicer uses.

    medsegnas interactive ct.nii.gz --model spleen_deepedit/ --clicks clicks.json -o spleen.seg.nrrd
    medsegnas interactive ct.nii.gz --model my_interactive --clicks c.json -o out.nii.gz --initial auto.nii.gz

``clicks.json`` is a list of ``{"label": NAME, "positive": bool, "ras": [x, y, z]}`` in millimetres
(Slicer's RAS): Slicer markups map to it directly. The clicks are applied as one set per label (in
the order labels first appear); every segment of the model is written to the output label map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import MedSegNASError

__all__ = ["register", "interactive_command"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``interactive``."""
    parser = subparsers.add_parser(
        "interactive",
        help="refine a segmentation by positive/negative clicks (DeepEdit-style interactive models)",
        description="Start an interactive worker (the model and the image held in memory), apply the clicks of "
        "--clicks and write the resulting label map. Works with MONAI DeepEdit bundles and with bundles from "
        "medsegnas train --interactive; bundles run without executing code from them unless --trust is given.",
    )
    parser.add_argument(
        "inputs", metavar="IMAGE", nargs="+", type=Path, help="image file(s) or DICOM folder(s)"
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        help="registered model id, bundle folder or archive, or the run directory of 'medsegnas train'",
    )
    parser.add_argument(
        "--clicks", required=True, type=Path, help="clicks.json: a list of {label, positive, ras}"
    )
    parser.add_argument(
        "--output", "-o", required=True, type=Path, help="label map to write (.nii.gz, .seg.nrrd)"
    )
    parser.add_argument(
        "--start",
        choices=("auto", "empty"),
        default="auto",
        help="segments start as the model's result without clicks (auto, default) or empty",
    )
    parser.add_argument(
        "--initial", type=Path, help="a label map to start from (segments matched by the model's values)"
    )
    parser.add_argument(
        "--region", type=int, help="side of the local region in voxels (default: the training patch)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads of the worker")
    parser.add_argument(
        "--trust", action="store_true", help="allow code from the bundle (only for sources you trust)"
    )
    parser.set_defaults(func=interactive_command)


def interactive_command(args: argparse.Namespace) -> int:
    from ..data.io import read_volume, read_volumes, write_volume
    from ..data.volume import LabelInfo, Volume
    from ..inference.commands import check_output_path
    from .clicks import read_clicks
    from .worker import InteractiveWorker

    clicks = read_clicks(args.clicks)
    if not clicks:
        raise MedSegNASError(f"{args.clicks} holds no clicks")
    check_output_path(args.output)
    volume = read_volumes(args.inputs)
    initial = None
    if args.initial is not None:
        initial = read_volume(args.initial).array[0]
        if initial.shape != volume.spatial_shape:
            raise MedSegNASError(
                f"--initial {args.initial} has shape {initial.shape}; the image has {volume.spatial_shape}"
            )
    with InteractiveWorker(
        args.model,
        args.inputs,
        trust=args.trust,
        start="empty" if initial is not None else args.start,
        region=args.region,
        threads=args.threads,
    ) as worker:
        info = worker.wait_ready()
        labels: dict[str, int] = info["labels"]
        unknown = sorted({c.label for c in clicks} - set(labels))
        if unknown:
            raise MedSegNASError(f"clicks name {', '.join(unknown)}; model segments: {', '.join(labels)}")
        if initial is not None:
            for name, value in labels.items():
                worker.seed(name, initial == value)
        order = list(dict.fromkeys(c.label for c in clicks))
        for name in order:
            _, box, seconds = worker.update(clicks, name)  # DeepEdit: every click is guidance
            print(
                f"{name}: {sum(c.label == name for c in clicks)} click(s), {seconds:.2f} s in box {box}",
                file=sys.stderr,
            )
        if info.get("kind") == "vista3d" and initial is None:
            # A VISTA3D session starts empty: only the clicked segments can hold voxels (it has 132).
            labels = {name: labels[name] for name in order}
        result = np.zeros(volume.spatial_shape, dtype=np.uint8)
        for name, value in labels.items():
            result[worker.mask(name)] = value
    table = [
        LabelInfo(value, name, _color(i))
        for i, (name, value) in enumerate(sorted(labels.items(), key=lambda x: x[1]))
    ]
    write_volume(Volume(result[None], volume.affine), args.output, labels=table)
    print(f"wrote {args.output}")
    return 0


def _color(index: int) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb((index * 0.381966) % 1.0, 0.7, 0.9)  # type: ignore[return-value]


def evaluate_interactive_command(args: argparse.Namespace) -> int:
    """``medsegnas evaluate --interactive``: the simulated-user protocol as the job kind ``evaluate``."""
    from ..atomic import write_json_atomic
    from ..evaluation.commands import check_report_path
    from ..jobs.runner import run_job_command
    from .evaluate import evaluate_interactive, format_table, plot_dice_per_click

    if args.model is None:
        raise MedSegNASError("--interactive evaluates a model: give --model (an interactive bundle)")
    out = check_report_path(args.out) if args.out is not None else None
    dataset = str(args.dataset.expanduser().absolute())
    model = (
        str(Path(args.model).expanduser().absolute())
        if Path(args.model).expanduser().exists()
        else args.model
    )
    config = {
        "model": model,
        "dataset": dataset,
        "split": args.split,
        "cases": args.cases,
        "interactive": True,
        "start": args.start,
        "max_clicks": args.max_clicks,
        "brush_mm": args.brush_mm,
        "region": args.region,
        "whole_region": bool(args.whole_region),
        "click_reach": args.click_reach,
        "out": None if out is None else str(out),
    }

    def body(ctx) -> dict:
        report = evaluate_interactive(
            model,
            dataset,
            split=args.split,
            cases=args.cases,
            start=args.start,
            max_clicks=args.max_clicks,
            brush_mm=args.brush_mm,
            region=args.region,
            change_at_click_only=not args.whole_region,
            click_reach_mm=args.click_reach,
            trust=args.trust,
            dataroot=args.dataroot,
            progress=lambda done, total, **info: ctx.progress(done, total, stage="evaluate", **info),
            log=ctx.log,
            stop=ctx.raise_if_stop_requested,
        )
        target = out
        if target is None and ctx.run_dir is not None:
            target = ctx.run_dir.artifacts / "interactive_evaluation.json"
        files = []
        if target is not None:
            write_json_atomic(target, report)
            plot = plot_dice_per_click(report, target.with_suffix(".png"))
            ctx.artifact(target, "table", format="json")
            ctx.artifact(plot, "plot")
            files = [str(target), str(plot)]
        print(format_table(report))
        sys.stdout.flush()
        return {"mean": report["mean"], "files": files}

    return run_job_command("evaluate", args, body, config, inputs={"dataset": dataset, "model": model})
