"""Fine-tuning a Swin UNETR segmentation network from a pretrained encoder, as a job.

    sslpretrain finetune --pretrained RUN_OR_FILE --dataset DATA --run-dir RUN [--labelled N]
                         [--preset tiny|small|full] [--config FILE] [--seed N] [--device ...]
    sslpretrain finetune --dataset DATA --run-dir RUN --random-init     # the same, from scratch
    sslpretrain finetune ... --run-dir RUN --resume                     # continue after a stop

The training is the segmentation training job of MedSegNAS
(:func:`MedSegNASLib.nas.train.run_train`, network ``swinunetr``): the same preprocessing,
patches, schedule, validation, checkpoints and exported MONAI bundle that ``medsegnas segment``
runs. What fine-tuning adds is the start: the network is built with the pretrained encoder's
feature size, and before the first step its encoder is filled from the pretrained weights by
:func:`~SSLPretrainLib.encoder.load_pretrained_encoder`, which reports how many encoder tensors
were loaded and fails when none or too few were (the classic silent failure of research code,
``load_state_dict(strict=False)`` after a wrong renaming). The report is logged, kept in the run's
result (``init``) and in the bundle's metadata.

``--labelled N`` trains on the first ``N`` labelled training cases of the dataset (in the order
of its ``dataset.json``) and validates on the other labelled cases, so the Dice reported is
always on cases the network has not seen.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from MedSegNASLib.errors import JobError, MedSegNASError

#: Job kind: names run directories ``finetune-<date>-<id>``.
JOB_KIND = "finetune"
#: The segmentation network fine-tuning trains (MedSegNAS' name for MONAI's SwinUNETR).
NETWORK = "swinunetr"
#: Presets of the training job (tiny: CPU minutes; small: one GPU; full: the published schedule).
PRESET_CHOICES: tuple[str, ...] = ("tiny", "small", "full")
#: Most entries of the ``skipped``/``missing`` lists kept in a run's result (the counts are exact).
MAX_LISTED_KEYS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune``."""
    from MedSegNASLib.jobs import add_job_arguments

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a Swin UNETR segmentation network from a pretrained encoder",
        description="Train a Swin UNETR on a labelled dataset starting from a pretrained encoder: an "
        "'sslpretrain pretrain' run directory, its encoder.pt or checkpoint, or MONAI's published Swin "
        "UNETR SSL weights (model_swinvit.pt). Reports how many encoder tensors were loaded and stops "
        "when none or too few were. Training, validation and the exported MONAI bundle "
        "(RUN/artifacts/bundle, runs with 'medsegnas segment') are those of the MedSegNAS training job.",
    )
    add_finetune_arguments(parser)
    add_job_arguments(parser)
    parser.set_defaults(func=finetune_command, job_entry=["-m", "SSLPretrainLib.cli"])


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``finetune`` shares with ``fewshot``, and its own."""
    from MedSegNASLib.data.commands import int_at_least

    add_common_arguments(parser)
    parser.add_argument(
        "--labelled",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="train on the first N labelled training cases (validate on the others); default: the "
        "training job's own split of all labelled cases",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="train the same network from random initialisation instead (the baseline to compare with)",
    )
    parser.add_argument("--name", default=None, help="name of the exported model (default: from the dataset)")
    parser.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the exported bundle to the model registry (default: yes, as 'medsegnas train')",
    )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pretrained``, the dataset and the training job's ``--preset``/``--config``/``--seed``/``--device``."""
    from MedSegNASLib.nas.commands import add_dataset_arguments, add_training_arguments

    parser.add_argument(
        "--pretrained",
        metavar="RUN_OR_FILE",
        type=Path,
        default=None,
        help="pretraining run directory (uses RUN/artifacts/encoder.pt, else its last checkpoint) or a weights "
        "file: encoder.pt, last.pt, or MONAI's Swin UNETR SSL weights",
    )
    add_dataset_arguments(parser, required=False)
    add_training_arguments(
        parser,
        presets=PRESET_CHOICES,
        default_preset="tiny",
        preset_help="training schedule and patch size of the training job (default: tiny)",
        config_help="JSON or YAML file overriding training settings (e.g. steps, patch_size, lr)",
        seed_help="random seed (default: 0)",
        device_help="where to train (default: auto)",
    )


# --------------------------------------------------------------------------------------------
# The encoder initialisation
# --------------------------------------------------------------------------------------------


def _shorten(report: Mapping[str, Any]) -> dict[str, Any]:
    """The load report with long key lists cut to :data:`MAX_LISTED_KEYS` (counts kept)."""
    short = dict(report)
    for name in ("skipped", "missing"):
        keys = list(report.get(name) or [])
        short[f"{name}_count"] = len(keys)
        short[name] = keys[:MAX_LISTED_KEYS]
    return short


def describe_load(report: Mapping[str, Any]) -> str:
    """One line: ``loaded 118 of 118 encoder tensors from ... (layout ..., MONAI ...)``."""
    version = report.get("monai_version") or "unrecorded"
    return (
        f"loaded {report['loaded']} of {report['total_encoder_tensors']} encoder tensors from {report['source']} "
        f"({report['layout']} layout, feature size {report.get('feature_size')}, MONAI {version})"
    )


def encoder_initialiser(
    pretrained: str | Path, log: Callable[[str, str], None] | None = None
) -> Callable[[Any], dict[str, Any]]:
    """The ``init_network`` of :func:`~MedSegNASLib.nas.train.run_train`: loads ``pretrained``
    into the fresh network's encoder and returns the (shortened) load report.

    The weights are read when the network is initialised (not when a run is resumed, whose
    checkpoint holds the fine-tuned weights). Warnings (another MONAI version, unloaded tensors)
    go to ``log(message, "warning")``.
    """
    from .encoder import load_pretrained_encoder, read_pretrained_encoder

    say = log or (lambda message, level="info": print(message, file=sys.stderr))

    def initialise(network) -> dict[str, Any]:
        import warnings

        from .encoder import MonaiVersionWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MonaiVersionWarning)  # logged below, as job events
            weights = read_pretrained_encoder(pretrained)
        report = load_pretrained_encoder(network, weights)
        say(describe_load(report), "info")
        for message in report["warnings"]:
            say(message, "warning")
        if report["mismatched"]:
            first = report["mismatched"][0]
            say(
                f"{len(report['mismatched'])} encoder tensor(s) not loaded because their shapes differ, e.g. "
                f"{first['key']} {tuple(first['pretrained_shape'])} pretrained vs {tuple(first['network_shape'])} "
                "here (another number of image channels?); they start from random values",
                "warning",
            )
        if report["missing"]:
            say(
                f"{len(report['missing'])} encoder tensor(s) absent from the weights start from random values",
                "warning",
            )
        return _shorten(report)

    return initialise


def random_initialiser(log: Callable[[str, str], None] | None = None) -> Callable[[Any], dict[str, Any]]:
    """``init_network`` for the baseline: keeps the network's random weights and says so."""

    def initialise(network) -> dict[str, Any]:
        if log is not None:
            log("training from random initialisation (no pretrained encoder)", "info")
        return {"loaded": 0, "total_encoder_tensors": None, "source": None, "layout": "random"}

    return initialise


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def pretrained_facts(source: str | Path) -> dict[str, Any]:
    """Feature size, image channels, path and layout of the pretrained encoder (read once, checked)."""
    import warnings

    from .encoder import MonaiVersionWarning, read_pretrained_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonaiVersionWarning)  # said again when the weights are loaded
        weights = read_pretrained_encoder(source)
    if weights.feature_size is None:
        examples = ", ".join(list(weights.state_dict)[:3])
        raise MedSegNASError(
            f"{weights.path} ({weights.layout} layout) has no Swin patch embedding "
            f"(swinViT.patch_embed.proj.weight); its keys look like {examples}: not a Swin UNETR encoder"
        )
    return {
        "path": str(weights.path),
        "layout": weights.layout,
        "feature_size": weights.feature_size,
        "in_channels": weights.in_channels,
        "monai_version": weights.monai_version,
    }


def labelled_case_names(dataset_path: str | Path, dataroot: str | Path | None = None) -> list[str]:
    """Names of the dataset's labelled training cases, in the order of its JSON file."""
    from MedSegNASLib.data import load_dataset

    dataset = load_dataset(dataset_path, dataroot=dataroot)
    return [case.name for case in dataset.cases if case.label is not None]


def train_request(
    *,
    dataset: str | Path,
    dataroot: str | Path | None,
    preset: str,
    overrides: Mapping[str, Any],
    seed: int | None,
    feature_size: int | None,
    train_cases: Sequence[str] | None,
    validation_cases: Sequence[str] | None,
    name: str | None = None,
    register: bool = False,
) -> dict[str, Any]:
    """The request of :func:`~MedSegNASLib.nas.train.resolve_train_config` for a Swin UNETR."""
    overrides = dict(overrides)
    if feature_size is not None:
        kwargs = dict(overrides.get("network_kwargs") or {})
        given = kwargs.get("feature_size")
        if given is not None and int(given) != int(feature_size):
            raise MedSegNASError(
                f"--config sets network_kwargs.feature_size {given}, but the pretrained encoder has feature size "
                f"{feature_size}; leave it out (fine-tuning takes the encoder's)"
            )
        kwargs["feature_size"] = int(feature_size)
        overrides["network_kwargs"] = kwargs
    return {
        "dataset": str(Path(dataset).expanduser().absolute()),
        "dataroot": None if dataroot is None else str(Path(dataroot).expanduser().absolute()),
        "preset": preset,
        "overrides": overrides,
        "seed": seed,
        "arch": None,
        "network": NETWORK,
        "train_cases": None if train_cases is None else list(train_cases),
        "validation_cases": None if validation_cases is None else list(validation_cases),
        "register": bool(register),
        "name": name,
    }


def split_labelled(names: Sequence[str], labelled: int | None) -> tuple[list[str] | None, list[str] | None]:
    """``(train_cases, validation_cases)`` for ``--labelled N``: the first N and the rest."""
    if labelled is None:
        return None, None
    if labelled >= len(names):
        raise MedSegNASError(
            f"--labelled {labelled}: the dataset has {len(names)} labelled case(s) and at least one must be "
            f"left for validation; use --labelled {max(len(names) - 1, 1)} or less"
        )
    return list(names[:labelled]), list(names[labelled:])


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def read_train_overrides(path: Path | None) -> dict[str, Any]:
    """The training settings of a --config file (none without one)."""
    if path is None:
        return {}
    from MedSegNASLib.nas.commands import load_config_file

    return load_config_file(path)


def _recorded(run_dir: Path) -> dict[str, Any]:
    """The resolved configuration of the fine-tuning run being resumed."""
    from MedSegNASLib.jobs import RunDir

    run = RunDir(run_dir)
    if not run.is_run_dir():
        raise JobError(f"cannot resume {run_dir}: it is not a run directory (no job.json or status.json)")
    job = run.read_job()
    resolved = (job or {}).get("config")
    if (job or {}).get("kind") != JOB_KIND or not isinstance(resolved, dict) or "finetune" not in resolved:
        raise JobError(
            f"cannot resume {run_dir}: it holds no fine-tuning run that got as far as training; start a new run"
        )
    return resolved


def run_finetune(ctx, resolved: Mapping[str, Any], dist_info) -> dict[str, Any]:
    """The job body: :func:`~MedSegNASLib.nas.train.run_train` with the encoder initialisation."""
    from MedSegNASLib.nas.train import run_train

    facts = resolved["finetune"]
    log = ctx.log
    if facts.get("pretrained") is None:
        init = random_initialiser(log)
    else:
        init = encoder_initialiser(facts["pretrained"]["path"], log)
    summary = run_train(ctx, resolved, dist_info, init_network=init)
    return {**dict(summary), "pretrained": facts.get("pretrained")}


def resolve_finetune_config(
    request: Mapping[str, Any],
    *,
    pretrained: Mapping[str, Any] | None,
    device_type: str,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The training job's resolved configuration plus a ``finetune`` section.

    Args:
        request: from :func:`train_request`.
        pretrained: :func:`pretrained_facts` of the encoder, or ``None`` for random initialisation.
        device_type, log: as :func:`~MedSegNASLib.nas.train.resolve_train_config`.
    """
    from MedSegNASLib.nas.train import resolve_train_config

    resolved = dict(resolve_train_config(dict(request), device_type=device_type, log=log))
    resolved["finetune"] = json.loads(
        json.dumps({"pretrained": None if pretrained is None else dict(pretrained), "request": dict(request)})
    )
    return resolved


def finetune_command(args: argparse.Namespace) -> int:
    """Resolve the configuration (or read it back when resuming) and run the fine-tuning job."""
    from MedSegNASLib.jobs import run_job_command
    from MedSegNASLib.nas.commands import run_distributed_job
    from MedSegNASLib.nas.distributed import resolve_device, torchrun_rank

    from .encoder import resolve_pretrained_path

    rank, local_rank, world = torchrun_rank()
    if args.run_dir is None and not args.detach:
        raise JobError(
            "finetune writes its model and checkpoints to a run directory: give --run-dir RUN, or --detach"
        )
    if world > 1 and args.detach:
        raise JobError("--detach cannot be used under torchrun; detach the torchrun command itself")
    if args.detach:
        inputs = {"dataset": None if args.dataset is None else str(args.dataset)}
        return run_job_command(JOB_KIND, args, lambda ctx: None, None, inputs=inputs)  # type: ignore[arg-type]

    if args.resume:
        resolved = _recorded(args.run_dir)
        recorded = resolved["finetune"]["request"]
        given = {
            "dataset": None if args.dataset is None else str(args.dataset.expanduser().absolute()),
            "pretrained": None if args.pretrained is None else str(resolve_pretrained_path(args.pretrained)),
        }
        before = {
            "dataset": recorded["dataset"],
            "pretrained": (resolved["finetune"].get("pretrained") or {}).get("path"),
        }
        changed = [name for name, value in given.items() if value is not None and value != before[name]]
        if changed:
            raise JobError(
                f"{args.run_dir} was started with another --{' and --'.join(changed)}; resume it with the same "
                "settings (or with --run-dir and --resume alone), or start a new run"
            )
    else:
        if args.dataset is None:
            raise MedSegNASError("--dataset is needed: the labelled dataset to fine-tune on")
        if args.pretrained is None and not args.random_init:
            raise MedSegNASError(
                "--pretrained RUN_OR_FILE is needed (a pretraining run or weights file); "
                "or --random-init to train the same network from scratch"
            )
        if args.pretrained is not None and args.random_init:
            raise MedSegNASError("--pretrained and --random-init exclude each other")
        pretrained = None if args.random_init else args.pretrained.expanduser().absolute()
        facts = pretrained_facts(pretrained) if pretrained is not None else None
        names = labelled_case_names(args.dataset, args.dataroot)
        train_cases, validation_cases = split_labelled(names, args.labelled)
        request = train_request(
            dataset=args.dataset,
            dataroot=args.dataroot,
            preset=args.preset,
            overrides=read_train_overrides(args.config),
            seed=args.seed,
            feature_size=None if facts is None else facts["feature_size"],
            train_cases=train_cases,
            validation_cases=validation_cases,
            name=args.name,
            register=args.register,
        )
        device_type = resolve_device(args.device, local_rank).type
        say = (lambda message: print(message, file=sys.stderr, flush=True)) if rank == 0 else None
        try:
            resolved = resolve_finetune_config(request, pretrained=facts, device_type=device_type, log=say)
        except MedSegNASError as exc:
            if rank != 0:
                raise
            error = exc

            def failed(ctx) -> None:
                raise error

            # Recorded in the run directory like any other job failure.
            return run_job_command(
                JOB_KIND, args, failed, {"request": request}, inputs={"dataset": request["dataset"]}
            )
    inputs = {"dataset": resolved["finetune"]["request"]["dataset"]}
    pretrained_info = resolved["finetune"].get("pretrained")
    if pretrained_info is not None:
        inputs["pretrained"] = pretrained_info["path"]

    return run_distributed_job(JOB_KIND, args, run_finetune, resolved, inputs)
