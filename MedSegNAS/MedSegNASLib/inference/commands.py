"""``medsegnas segment``: segment an image with a MONAI bundle, as a job.

    medsegnas segment ct.nii.gz --model spleen_ct_segmentation -o spleen.seg.nrrd   # a registry id
    medsegnas segment ct.nii.gz --model spleen_bundle/ -o spleen.seg.nrrd
    medsegnas segment t2.nii.gz adc.nii.gz --model prostate.zip -o labels.nii.gz --device cpu --tta

Stages reported as progress events: ``load``, ``preprocess``, ``infer`` (windows), ``postprocess``,
``write``. The label map is written atomically on the first input's grid: nothing is left behind
when something fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError

__all__ = ["register", "segment_command", "check_output_path", "segment_loaded", "segment_options_from_args"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _overlap(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {value}")
    return value


def _six_numbers(text: str, kind: type) -> tuple:
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 6:
            raise ValueError
        return tuple(kind(p) for p in parts)
    except ValueError:
        name = "numbers" if kind is float else "whole numbers"
        raise argparse.ArgumentTypeError(f"expected six comma-separated {name}, got {text!r}") from None


def _box(text: str) -> tuple[float, ...]:
    return _six_numbers(text, float)


def _box_voxels(text: str) -> tuple[int, ...]:
    return _six_numbers(text, int)


def _postprocess(text: str):
    from .postprocess import PostprocessSpec

    try:
        return PostprocessSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment`` and ``segment-worker``."""
    from ..jobs.runner import add_job_arguments
    from . import DEVICES

    parser = subparsers.add_parser(
        "segment",
        help="segment an image with a MONAI bundle (label map on the image's own grid)",
        description="Segment a 3D image with a MONAI bundle (folder, .zip or .tar.gz): the bundle's own "
        "preprocessing (orientation, voxel size, intensity), sliding-window inference (GPU with float16 "
        "autocast when present), then the label map back on the input's grid, written as NIfTI or as a "
        "Slicer segmentation (.seg.nrrd) with the bundle's segment names and colors. Windows that contain "
        "no body voxel are skipped (exact inside the body; --no-crop runs them all). Bundles run without "
        "executing code from them unless --trust is given.",
    )
    parser.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        type=Path,
        help="image file(s) or DICOM folder(s); several files are the model's channels, in its order, "
        "on one voxel grid",
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="MODEL",
        help="a registered model id (medsegnas models list), a bundle folder, .zip or .tar.gz, or "
        "the run directory of 'medsegnas train'",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="OUTPUT",
        help="label map to write (.nii.gz, .seg.nrrd, .nrrd, .mha); required unless --plan",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the expected peak memory and time of this run on this machine (one batch of windows "
        "is measured once and cached), and the fallback it would pick when memory is short; run nothing",
    )
    parser.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where to run the network (default: auto)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="twice the model's voxel size: about 8x faster, coarser"
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over flips of each axis (4x slower)",
    )
    parser.add_argument(
        "--postprocess",
        type=_postprocess,
        default=None,
        metavar="STEPS",
        help="comma-separated clean-up: largest-component, fill-holes, min-size=N (voxels)",
    )
    parser.add_argument(
        "--roi",
        type=_positive_int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="sliding-window size in voxels (default: the bundle's)",
    )
    parser.add_argument(
        "--overlap",
        type=_overlap,
        default=None,
        metavar="F",
        help="window overlap in [0, 1) (default: the bundle's)",
    )
    parser.add_argument(
        "--sw-batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="windows per network call (default: the bundle's sw_batch_size)",
    )
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument(
        "--amp",
        dest="amp",
        action="store_true",
        default=None,
        help="reduced precision on the CPU too: bfloat16 on CPUs with Intel AMX (faster; label maps then "
        "differ from MONAI's at a few boundary voxels). Default: float16 on CUDA, float32 on the CPU",
    )
    precision.add_argument(
        "--no-amp", dest="amp", action="store_false", help="float32 everywhere, CUDA included"
    )
    parser.add_argument(
        "--no-crop", dest="crop", action="store_false", help="also run the windows that contain no body voxel"
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads (default: PyTorch's choice)",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="run the bundle's code and pickles (only for bundles from a source you trust; a registered "
        "model trusted with 'medsegnas models trust ID' needs no --trust)",
    )
    region = parser.add_mutually_exclusive_group()
    region.add_argument(
        "--box",
        type=_box,
        default=None,
        metavar="X0,Y0,Z0,X1,Y1,Z1",
        help="segment only inside this box: two opposite corners in RAS millimetres (Slicer's world "
        "coordinates; from a markups ROI's GetBounds(b): b[0],b[2],b[4],b[1],b[3],b[5]). The label map "
        "keeps the whole input grid, zeros outside; inside it is the whole image's label map",
    )
    region.add_argument(
        "--box-voxels",
        type=_box_voxels,
        default=None,
        metavar="I0,J0,K0,I1,J1,K1",
        help="the same as input voxel indices, half-open (I0 <= i < I1, ...)",
    )
    add_job_arguments(parser)
    # the process ends when the label map is written: no interpreter teardown (cli.end_process)
    parser.set_defaults(func=segment_command, exit_at_once=True)

    from .worker import add_worker_arguments, run_worker

    worker = subparsers.add_parser(
        "segment-worker",
        help="a warm segmentation worker: JSON segment requests on stdin, models kept loaded (panels, scripts)",
        description="Serve segment requests, one JSON object a line on stdin, answers on stdout, models kept "
        "loaded between requests, until stdin closes, 'stop', or the idle timeout. A request: "
        '{"id": 1, "op": "segment", "image": "ct.nii.gz", "output": "labels.nii.gz", "model": "spleen", '
        '"device": "cpu", "box": [x0, y0, z0, x1, y1, z1]} with the options of segment; '
        'cancel: {"op": "cancel"}. See MedSegNASLib/inference/worker.py.',
    )
    add_worker_arguments(worker)
    worker.set_defaults(func=run_worker)


def check_output_path(path: Path) -> Path:
    """Refuse, before any work, an output that cannot be written: unsupported type, a folder,
    a parent that is a file or not writable. Returns the absolute path."""
    from ..data.io import WRITABLE_SUFFIXES

    path = path.expanduser().absolute()
    if not path.name.lower().endswith(WRITABLE_SUFFIXES):
        raise MedSegNASError(
            f"output {path}: cannot write this file type; use one of {', '.join(WRITABLE_SUFFIXES)}"
        )
    if path.is_dir():
        raise MedSegNASError(f"output {path} is a folder; give a file name such as {path / 'labels.nii.gz'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedSegNASError(f"output {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MedSegNASError(f"output {path}: folder {parent} is not writable")
    return path


#: Packages that ``import monai`` loads when installed but segmentation never uses: pytorch-ignite
#: (MONAI's training engines; with torch.distributed and sympy about 1.4 s of a 7 s tiny run on a
#: loaded 2-core machine) and matplotlib (MONAI's Jupyter helpers, 0.35 s).
UNUSED_BY_SEGMENT = ("ignite", "matplotlib")


class _Unavailable:
    """An import hook that makes the named top-level packages look absent."""

    def __init__(self, packages: tuple[str, ...]) -> None:
        self.packages = packages

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.packages:
            raise ImportError(f"{name} is not needed to segment")
        return None


def import_monai_for_segmentation() -> None:
    """Import MONAI without :data:`UNUSED_BY_SEGMENT`, in a process of its own only.

    MONAI imports every sub-package on ``import monai``; its ``optional_import`` of ignite and
    matplotlib then falls back to placeholders, which no code of the segmentation path touches.
    Only done when this process is ``medsegnas`` itself (``python -m MedSegNASLib.cli`` as the
    panels and jobs start it, or the console script) and MONAI is not imported yet: a program
    that calls :func:`~MedSegNASLib.cli.main` (tests, Slicer) keeps MONAI whole. Afterwards the
    packages import normally again (bundle code run with ``--trust`` may use them).
    """
    from ..cli import is_own_process

    if not is_own_process() or "monai" in sys.modules or any(p in sys.modules for p in UNUSED_BY_SEGMENT):
        return
    hook = _Unavailable(UNUSED_BY_SEGMENT)
    sys.meta_path.insert(0, hook)
    try:
        import monai.bundle  # noqa: F401
    finally:
        sys.meta_path.remove(hook)


def segment_command(args: argparse.Namespace) -> int:
    """Run ``segment`` as the job kind ``segment``."""
    from ..jobs.runner import run_job_command

    if args.output is None and not args.plan:
        raise MedSegNASError(
            "segment: give the label map to write with --output/-o (or --plan to only estimate)"
        )
    if args.json and not args.plan:
        raise MedSegNASError("segment: --json goes with --plan (a run's result is in its job's events)")
    output = check_output_path(args.output) if args.output is not None else None
    inputs = [p.expanduser().absolute() for p in args.inputs]
    model_spec = _model_spec(args.model)
    options = segment_options_from_args(args)
    config: dict[str, Any] = {
        "model": model_spec,
        "output": str(output),
        "device": args.device,
        "fast": args.fast,
        "tta": args.tta,
        "postprocess": args.postprocess.describe() if args.postprocess else None,
        "roi": list(args.roi) if args.roi else None,
        "overlap": args.overlap,
        "sw_batch_size": args.sw_batch_size,
        "crop": args.crop,
        "amp": args.amp,
        "trust": args.trust,
        "box": list(args.box) if args.box else None,
        "box_voxels": list(args.box_voxels) if args.box_voxels else None,
    }

    if args.plan:
        return plan_files(inputs, model_spec, options, trusted=args.trust, as_json=args.json)

    def body(ctx) -> dict[str, Any]:
        return segment_files(inputs, model_spec, output, options, ctx, trusted=args.trust)

    return run_job_command("segment", args, body, config, inputs={"images": [str(p) for p in inputs]})


def segment_options_from_args(args: argparse.Namespace) -> Any:
    """The engine's :class:`~.engine.SegmentOptions` from parsed ``segment`` arguments (the CLI and
    the warm worker, :mod:`.worker`, parse requests with the same parser)."""
    from .engine import SegmentOptions

    return SegmentOptions(
        device=args.device,
        fast=args.fast,
        tta=args.tta,
        postprocess=args.postprocess,
        roi=tuple(args.roi) if args.roi else None,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        crop=args.crop,
        amp=args.amp,
        threads=args.threads,
        box=args.box,
        box_voxels=args.box_voxels,
    )


def _model_spec(text: str) -> str:
    """``--model`` as given when it may be a registry id (looked up first, as resolve_model does),
    else as an absolute path, so that job.json names the bundle unambiguously."""
    from .model import looks_like_path

    return str(Path(text).expanduser().absolute()) if looks_like_path(text) else text


def _seconds_since_start() -> float:
    """Wall time since this process started (the start-up a fresh run pays), 0 if unknown."""
    import psutil

    try:
        return max(0.0, time.time() - psutil.Process().create_time())
    except (psutil.Error, OSError):
        return 0.0


def compiled_target(options: Any) -> tuple[Any, str] | None:
    """``(device, precision)`` a run with ``options`` uses: which compiled form of a bundle it can
    take (:func:`~.compiled.load_compiled`); None when the device is not available (the run says so)."""
    from .compiled import precision_name
    from .engine import autocast_dtype, select_device

    try:
        device = select_device(options.device)
    except MedSegNASError:
        return None
    return device, precision_name(autocast_dtype(device, options.amp))


def _read_and_load(
    inputs: list[Path], model: str | Path, trusted: bool, options: Any = None
) -> tuple[Any, Any]:
    """The image(s) and the model; the image is read while the model loads (imports, weights):
    decompressing it runs mostly outside the GIL. A bad image is still the error reported.

    With ``options`` (the run's), a bundle compiled for their device and precision by an earlier
    run loads without MONAI (:mod:`.compiled`); otherwise MONAI is imported for segmentation
    (:func:`import_monai_for_segmentation`, unless the bundle is trusted: its own code may use
    MONAI's ignite-based parts, which must then be real) and the bundle loads the full way."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.io import read_volumes
    from .model import load_resolved_model

    compiled = compiled_target(options) if options is not None and not trusted else None
    before_full_load = None if trusted else import_monai_for_segmentation
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-read") as pool:
        reading = pool.submit(read_volumes, inputs)
        try:
            loaded = load_resolved_model(
                model, trust=trusted, compiled=compiled, before_full_load=before_full_load
            )
        except BaseException:
            reading.result()
            raise
        volume = reading.result()
    volume.meta.setdefault("path", str(inputs[0]))
    return volume, loaded


def plan_files(
    inputs: list[Path], model: str | Path, options: Any, *, trusted: bool = False, as_json: bool = False
) -> int:
    """``segment --plan``: read, load, estimate (calibrating the network once), print; no job."""
    import json

    from ..models.capabilities import SIZE_CHECK_STORED_SECONDS
    from .optimize import reuse_freed_memory
    from .plan import choose_fallback

    reuse_freed_memory()  # as the run would: the calibration's memory is the run's
    volume, loaded = _read_and_load(inputs, model, trusted, options)
    # the run reads the size check's verdict from the cache this process has just filled
    startup = max(0.0, _seconds_since_start() - SIZE_CHECK_STORED_SECONDS["seconds"])
    try:
        chosen, plan = choose_fallback(volume, loaded, options, measure=True, elapsed_seconds=startup)
    except MedSegNASError as exc:
        if as_json:
            print(json.dumps({"fits": False, "error": str(exc)}))
            return 1
        raise
    if as_json:
        print(json.dumps(plan.to_dict()))
    else:
        print(plan.to_text())
    return 0


def segment_files(
    inputs: list[Path],
    model: str | Path,
    output: Path,
    options: Any,
    ctx: Any,
    *,
    trusted: bool = False,
) -> dict[str, Any]:
    """Load, segment, write; reports through the job context ``ctx``. Returns the job summary.

    ``model`` is a registry id, a bundle folder or an archive (:func:`~.model.load_resolved_model`);
    ``trusted``: the user passed ``--trust``.
    """
    from .optimize import reuse_freed_memory

    started = time.perf_counter()
    reuse_freed_memory()  # this is a worker process: no fresh pages for every batch of windows
    spec = model
    volume, model = _read_and_load(inputs, spec, trusted, options)
    ctx.progress(1, 2, stage="load")
    how = " (compiled by an earlier run)" if model.compiled_for is not None else ""
    ctx.log(
        f"model '{model.name}'{how}: {model.in_channels} input channel(s), {model.num_classes} classes "
        f"({', '.join(lb.name for lb in model.labels[1:])}); preprocessing: {', '.join(model.steps)}"
    )
    ctx.progress(2, 2, stage="load")
    summary = segment_loaded(
        volume, model, output, options, ctx, started=started, elapsed_seconds=_seconds_since_start()
    )
    summary["compiled"] = model.compiled_for is not None
    if model.compiled_for is None and not trusted and getattr(options, "compile", True):
        _compile_for_next_runs(model, volume, options, summary, ctx)
    return summary


def _compile_for_next_runs(model: Any, volume: Any, options: Any, summary: dict[str, Any], ctx: Any) -> None:
    """After a run that loaded the bundle the full way: store its compiled form (:mod:`.compiled`)
    for the device and precision the run used, so that the next run imports no MONAI. Never
    fails the run: what could not be compiled is logged."""
    import torch

    from .compiled import compile_model
    from .engine import autocast_dtype

    try:
        folder = model.root  # the bundle folder it was loaded from (already resolved)
        device = torch.device(summary["device"])
        autocast = autocast_dtype(device, options.amp)
        _, message = compile_model(model, folder, device, autocast, volume.array.shape[1:], volume.affine)
    except Exception as exc:  # the label map is written: this is only for the next run
        message = f"not compiled: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    ctx.log(message)


def segment_loaded(
    volume: Any,
    model: Any,
    output: Path,
    options: Any,
    ctx: Any,
    *,
    started: float,
    elapsed_seconds: float = 0.0,
) -> dict[str, Any]:
    """Segment a read image with a loaded model, write the label map (atomically), report through
    ``ctx`` (``progress``, ``log``, ``raise_if_stop_requested``, ``artifact``); returns the summary.
    ``started``: ``time.perf_counter()`` when loading began (the ``load`` seconds end now);
    ``elapsed_seconds``: the process's start-up so far, which the plan adds to its time estimate
    (0 in the warm worker: no start-up). Shared by ``medsegnas segment`` and the warm worker (:mod:`.worker`)."""
    import numpy as np

    from ..data.io import write_volume
    from .engine import Progress, segment_volume
    from .plan import choose_fallback

    load_seconds = time.perf_counter() - started

    def step(stage: str, done: int, total: int, **metrics: Any) -> None:
        ctx.progress(done, max(total, 1), stage=stage, **metrics)

    # Known before the run: peak memory and time; a fallback that fits when the plan does not.
    options, plan = choose_fallback(volume, model, options, elapsed_seconds=elapsed_seconds)
    ctx.log(plan.to_text())
    report_plan = getattr(ctx, "report_plan", None)  # the warm worker tells its client (the panel)
    if report_plan is not None:
        report_plan(plan)
    result = segment_volume(
        volume,
        model,
        options,
        Progress(step=step, log=ctx.log, check_stop=ctx.raise_if_stop_requested),
        layout=plan.layout,
    )
    result.stats["plan"] = plan.to_dict()
    result.stats["fallback"] = plan.fallback or None
    ctx.progress(0, 1, stage="write")
    clock = time.perf_counter()
    write_volume(result.labels, output, labels=model.labels)
    result.stats["seconds"]["write"] = round(time.perf_counter() - clock, 3)
    result.stats["seconds"]["load"] = round(load_seconds, 3)
    result.stats["seconds"]["total"] = round(time.perf_counter() - started, 3)
    ctx.progress(1, 1, stage="write")
    ctx.artifact(output, "labelmap", labels=[lb.name for lb in model.labels])
    voxel_ml = float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    for label_name, count in result.stats["voxels"].items():
        ctx.log(f"  {label_name}: {count * voxel_ml:.1f} ml")
    seconds = result.stats["seconds"]
    stages = ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if k != "total")
    ctx.log(f"done in {seconds['total']:.1f} s on {result.stats['device']} ({stages} s)")
    print(output)
    sys.stdout.flush()
    return {"output": str(output), **result.stats}
