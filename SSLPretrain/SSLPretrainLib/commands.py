"""``sslpretrain pretrain``: self-supervised pretraining of a Swin UNETR encoder, as a job.

    sslpretrain pretrain --images DIR_OR_DATALIST --run-dir RUN [--preset tiny|small|full]
                         [--config FILE] [--device auto|cpu|cuda|mps] [--resume] [--detach]
    sslpretrain pretrain --run-dir RUN --resume          # same images and settings as before
    torchrun --nproc_per_node 4 -m SSLPretrainLib.cli pretrain --images ... --run-dir RUN

The job protocol is :mod:`MedSegNASLib.jobs` (run directory, events, cancel, resume); the work is
:func:`SSLPretrainLib.pretrain.run_pretraining`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MedSegNASLib.errors import JobError, MedSegNASError
from MedSegNASLib.jobs import RunDir, add_job_arguments, run_job_command
from MedSegNASLib.nas.commands import load_config_file

from .config import PRESETS, PretrainConfig, resolve_config

#: What a detached worker runs after the Python executable.
JOB_ENTRY: list[str] = ["-m", "SSLPretrainLib.cli"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` command."""
    pretrain = subparsers.add_parser(
        "pretrain",
        help="pretrain a Swin UNETR encoder on unlabelled volumes (self-supervised)",
        description="Pretrain the encoder of a Swin UNETR on unlabelled volumes with rotation prediction, "
        "contrastive coding and masked-volume inpainting (Tang et al. 2022). Writes checkpoints, "
        "TensorBoard logs, reconstructions (NIfTI) and the encoder weights (RUN/artifacts/encoder.pt) "
        "into the run directory. Stop it with 'medsegnas jobs cancel RUN' (or Ctrl-C) and continue "
        "it with --resume. For several GPUs start it with torchrun.",
    )
    pretrain.add_argument(
        "--images",
        metavar="DIR_OR_DATALIST",
        type=Path,
        default=None,
        help="a folder of images (NIfTI, NRRD, MetaImage, DICOM series folders), an MSD dataset.json "
        "(its 'unlabeled' and 'training' images) or a MONAI datalist; not needed with --resume",
    )
    pretrain.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="settings to start from: tiny (CPU, 32^3 crops, feature size 12), small (64^3, 24) or "
        "full (the published 96^3, 48); default: tiny",
    )
    pretrain.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=None,
        help='JSON or YAML file of settings overriding the preset, e.g. {"steps": 500}',
    )
    pretrain.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        default="auto",
        help="where to train (default: auto = CUDA, else Apple GPU, else CPU)",
    )
    add_job_arguments(pretrain)
    pretrain.set_defaults(func=pretrain_command, job_entry=JOB_ENTRY)


def _settings(args: argparse.Namespace) -> tuple[str, dict[str, Any], Path]:
    """``(preset, overrides, images)`` from the arguments, or from ``job.json`` on a bare ``--resume``."""
    if args.images is not None:
        overrides = load_config_file(args.config) if args.config is not None else {}
        return args.preset or "tiny", overrides, args.images.expanduser().absolute()
    if not args.resume:
        raise MedSegNASError("--images is needed: a folder of images, a dataset.json or a datalist")
    if args.run_dir is None:
        raise JobError("--resume needs --run-dir RUN: the run directory of the job to continue")
    job = RunDir(args.run_dir).read_job()
    recorded = job.get("config") or {}
    if job.get("kind") not in (None, "pretrain") or "settings" not in recorded:
        raise JobError(f"{args.run_dir} holds no pretraining run to resume; give --images to start one")
    if args.preset is not None or args.config is not None:
        raise MedSegNASError("--preset/--config need --images; a bare --resume reuses the run's own settings")
    return recorded["preset"], recorded["settings"], Path(job["inputs"]["images"])


def pretrain_command(args: argparse.Namespace) -> int:
    """Resolve images, settings, device and processes, then run :func:`run_pretraining` as a job."""
    import torch

    from .pretrain import (
        JOB_KIND,
        DistributedInfo,
        PretrainPlan,
        init_distributed,
        run_pretraining,
        select_device,
    )
    from .volumes import collect_images, read_raw, resolve_modality

    if args.run_dir is None and not args.detach:
        raise MedSegNASError(
            "pretrain needs --run-dir RUN (where checkpoints and encoder.pt are written), or --detach"
        )
    preset, overrides, images = _settings(args)
    config: PretrainConfig = resolve_config(preset, overrides)
    sources, modalities = collect_images(images)
    job_config = {"preset": preset, "settings": config.to_dict(), "device": args.device}
    inputs = {"images": str(images)}
    if args.detach:
        return run_job_command(JOB_KIND, args, lambda ctx: None, job_config, inputs=inputs)

    dist = DistributedInfo.from_env()
    device = select_device(args.device, dist)
    first_array, _ = read_raw(sources[0])
    modality = resolve_modality(config, modalities, float(first_array.min()))
    in_channels = int(first_array.shape[0])
    del first_array
    run_dir = Path(args.run_dir).absolute() if args.run_dir is not None else None
    plan = PretrainPlan(
        config=config,
        sources=sources,
        modality=modality,
        in_channels=in_channels,
        device=device,
        dist=dist,
        checkpoint_file=run_dir / "checkpoints" / "last.pt" if run_dir is not None else None,
        resume=bool(args.resume),
    )
    if not dist.enabled:
        return run_job_command(
            JOB_KIND, args, lambda ctx: run_pretraining(ctx, plan), job_config, inputs=inputs
        )

    # Several processes (torchrun): process 0 is the job's worker and alone writes the run
    # directory; it tells the others whether the job starts at all (a finished run does not).
    init_distributed(dist, device)
    go = torch.zeros(1, device=device)

    def main_body(ctx):
        go.fill_(1.0)
        torch.distributed.broadcast(go, src=0)
        return run_pretraining(ctx, plan)

    if dist.is_main:
        started = False

        def body(ctx):
            nonlocal started
            started = True
            return main_body(ctx)

        try:
            return run_job_command(JOB_KIND, args, body, job_config, inputs=inputs)
        finally:
            if not started:
                torch.distributed.broadcast(go, src=0)
            torch.distributed.destroy_process_group()
    torch.distributed.broadcast(go, src=0)
    if go.item() == 0:
        torch.distributed.destroy_process_group()
        return 0
    helper_args = argparse.Namespace(run_dir=None, resume=False, detach=False, debug=args.debug)
    try:
        return run_job_command(JOB_KIND, helper_args, lambda ctx: run_pretraining(ctx, plan), job_config)
    finally:
        torch.distributed.destroy_process_group()
