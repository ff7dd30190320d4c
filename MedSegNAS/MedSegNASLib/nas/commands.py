"""``medsegnas search`` and ``medsegnas train``: DiNTS search and retraining as jobs.

One process::

    medsegnas search --dataset DATA --run-dir RUN --preset tiny
    medsegnas search --dataset DATA --run-dir RUN --resume          # continue after a stop or a crash
    medsegnas train --dataset DATA --run-dir RUN2 --arch RUN/artifacts/arch.json --preset tiny
    medsegnas train --dataset DATA --run-dir RUN3 --network unet --preset tiny

Several processes (one per GPU, or gloo on CPUs); only rank 0 writes the run directory::

    torchrun --standalone --nproc_per_node 2 -m MedSegNASLib.cli search --dataset DATA --run-dir RUN
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import JobError, MedSegNASError

__all__ = [
    "add_dataset_arguments",
    "add_training_arguments",
    "load_config_file",
    "register",
    "run_distributed_job",
    "search_command",
    "train_command",
]

#: ``--device`` choices of the training commands.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_dataset_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--dataset DATA`` (a Path; None when not ``required`` and not given) and ``--dataroot DIR``."""
    parser.add_argument(
        "--dataset",
        required=required,
        type=Path,
        default=None,
        metavar="DATA",
        help="dataset.json, its folder, or a datalist",
    )
    parser.add_argument(
        "--dataroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder that relative paths in the dataset JSON are relative to (default: the JSON's folder)",
    )


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    presets: Sequence[str],
    default_preset: str,
    preset_help: str,
    config_help: str,
    seed_help: str = "random seed (default: the config's, 0)",
    device_help: str = "where to compute (default: auto)",
) -> None:
    """``--preset`` (one of ``presets``), ``--config FILE`` (see :func:`load_config_file`), ``--device``
    (auto, cpu, cuda) and ``--seed N`` (None when not given)."""
    parser.add_argument("--preset", choices=list(presets), default=default_preset, help=preset_help)
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help=config_help)
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help=device_help)
    parser.add_argument("--seed", type=int, default=None, metavar="N", help=seed_help)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``search`` and ``train``."""
    from ..jobs.runner import add_job_arguments
    from .search import SEARCH_PRESETS

    search = subparsers.add_parser(
        "search",
        help="DiNTS architecture search on a labelled dataset",
        description="Search a DiNTS network topology for a segmentation dataset (MSD dataset.json or MONAI "
        "datalist). The dataset is checked and the preprocessing (spacing, intensity, patch size) is "
        "configured from its statistics before any training; the resolved configuration is recorded in "
        "RUN/job.json. Results: RUN/artifacts/arch.json (best architecture), topology.png/.svg, "
        "path_probabilities.png, summary.json and TensorBoard logs. Stop with SIGTERM or Ctrl-C and "
        "continue with --resume; run under 'torchrun --nproc_per_node N -m MedSegNASLib.cli search ...' "
        "for several GPUs (or CPU processes).",
    )
    add_dataset_arguments(search)
    add_training_arguments(
        search,
        presets=SEARCH_PRESETS,
        default_preset="full",
        preset_help="search space and schedule: tiny (CPU demo, minutes), small (one GPU), full (published 12x4 "
        "search; default)",
        config_help="JSON or YAML file overriding any search setting (e.g. epochs, patch_size, search_space)",
    )
    search.add_argument(
        "--max-params",
        type=int,
        default=None,
        metavar="N",
        help="size budget: arch.json is the most probable architecture whose retrained network (channel_mul "
        "1.0) has at most N parameters (the config key max_params)",
    )
    search.add_argument(
        "--proxy-cases",
        type=int,
        default=None,
        metavar="N",
        help="proxy data: search on N of the training cases, chosen by k-centre greedy on image/label statistics "
        "to cover the dataset (the config key proxy_cases); retrain on all of them",
    )
    search.add_argument(
        "--zero-cost",
        action="store_true",
        help="training-free search: rank random architectures of the space by a zero-cost proxy at "
        "initialisation (config zero_cost_proxy, default naswot; zero_cost_candidates) and write the best as "
        "arch.json, without training a supernet",
    )
    add_job_arguments(search)
    search.set_defaults(func=search_command)
    _register_train(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    from ..jobs.runner import add_job_arguments
    from .train import TRAIN_PRESETS

    train = subparsers.add_parser(
        "train",
        help="train a searched DiNTS architecture or a MONAI baseline and export it as a bundle",
        description="Train a segmentation network on a labelled dataset with the search's data pipeline "
        "(preprocessing configured from the dataset statistics, class-balanced crops) and keep the "
        "network with the best mean validation Dice. Give the searched architecture with --arch "
        "(arch.json of 'medsegnas search', retrained at full width) or a baseline with --network. "
        "Results: RUN/artifacts/model (MONAI bundle), summary.json, val_dice.json, curves.png, "
        "predictions/<case>.nii.gz (validation label maps) and TensorBoard logs; the bundle is added to "
        "the model registry unless --no-register. Stop with SIGTERM or Ctrl-C and continue with "
        "--resume; run under 'torchrun --nproc_per_node N -m MedSegNASLib.cli train ...' for several "
        "GPUs (or CPU processes).",
    )
    add_dataset_arguments(train)
    train.add_argument(
        "--arch",
        type=Path,
        default=None,
        metavar="ARCH.json",
        help="searched DiNTS architecture (arch.json written by medsegnas search, or its run directory)",
    )
    train.add_argument(
        "--network",
        default=None,
        metavar="NAME",
        help="a MONAI baseline instead of a searched architecture: unet, segresnet or swinunetr",
    )
    add_training_arguments(
        train,
        presets=TRAIN_PRESETS,
        default_preset="full",
        preset_help="schedule and baseline sizes: tiny (CPU demo, minutes), small (one GPU), full (published "
        "DiNTS retraining; default)",
        config_help="JSON or YAML file overriding any training setting (e.g. epochs, patch_size, network_kwargs)",
    )
    train.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the trained bundle to the model registry (default: yes)",
    )
    train.add_argument(
        "--interactive",
        action="store_true",
        help="train a DeepEdit-style interactive model: one guidance channel per label, clicks simulated in "
        "the error regions during training (medsegnas interactive, evaluate --interactive)",
    )
    train.add_argument(
        "--name",
        default=None,
        metavar="ID",
        help="registry id and bundle name (default: <network>-<run directory name>)",
    )
    add_job_arguments(train)
    train.set_defaults(func=train_command)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a JSON or ``.yaml``/``.yml`` config file (empty for an empty file).

    Raises:
        MedSegNASError: the file is missing, unreadable, not valid JSON/YAML or not a mapping
            (the message names the file and the problem).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedSegNASError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedSegNASError(f"cannot read config file {path}: {exc}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MedSegNASError(
                f"{path} is YAML but PyYAML is not installed; pip install pyyaml or use JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MedSegNASError(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MedSegNASError(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedSegNASError(f"{path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def _request(args: argparse.Namespace) -> dict[str, Any]:
    overrides = load_config_file(args.config) if args.config is not None else {}
    if getattr(args, "max_params", None) is not None:
        overrides["max_params"] = int(args.max_params)
    if getattr(args, "proxy_cases", None) is not None:
        overrides["proxy_cases"] = int(args.proxy_cases)
    if getattr(args, "zero_cost", False):
        overrides["zero_cost"] = True
    return {
        "dataset": str(args.dataset.expanduser().absolute()),
        "dataroot": None if args.dataroot is None else str(args.dataroot.expanduser().absolute()),
        "preset": args.preset,
        "overrides": overrides,
        "seed": args.seed,
    }


def _train_request(args: argparse.Namespace) -> dict[str, Any]:
    request = _request(args)
    request.update(
        {
            "arch": None if args.arch is None else str(args.arch.expanduser().absolute()),
            "network": args.network,
            "train_cases": None,
            "validation_cases": None,
            "register": bool(args.register),
            "name": args.name,
            "interactive": bool(getattr(args, "interactive", False)),
        }
    )
    return request


def _recorded_config(
    run_dir: Path, request: dict[str, Any], *, section: str = "search", options: str = ""
) -> dict[str, Any]:
    """The resolved configuration of the run being resumed, after checking that the request matches."""
    from ..jobs.rundir import RunDir

    run = RunDir(run_dir)
    if not run.is_run_dir():
        raise JobError(f"cannot resume {run_dir}: it is not a run directory (no job.json or status.json)")
    job = run.read_job()
    resolved = job.get("config") if job else None
    if not isinstance(resolved, dict) or section not in resolved:
        raise JobError(
            f"cannot resume {run_dir}: its job.json records no resolved {section} configuration (the run failed "
            "before training started); start a new run"
        )
    recorded = json.loads(json.dumps(resolved.get("request")))
    if recorded != json.loads(json.dumps(request)):
        changed = sorted(key for key in request if recorded.get(key) != request.get(key))
        raise JobError(
            f"{run_dir} was started with other settings ({', '.join(changed)} differ); resume it with the same "
            f"--dataset, --dataroot, --preset, --config{options} and --seed, or start a new run"
        )
    return resolved


def search_command(args: argparse.Namespace) -> int:
    """Resolve the configuration (or read it back when resuming), then run the search as a job."""
    from .distributed import torchrun_rank
    from .search import resolve_search_config, run_search

    _, _, world = torchrun_rank()
    if world > 1 and args.detach:
        raise JobError("--detach cannot be used under torchrun; detach the torchrun command itself")
    if world > 1 and args.run_dir is None and args.resume:
        raise JobError("--resume needs --run-dir RUN")
    if args.run_dir is None and not args.detach:
        raise JobError(
            "search writes its results (arch.json, pictures, checkpoints) to a run directory: give --run-dir RUN, "
            "or --detach to create one under --runs-root"
        )
    request = _request(args)
    inputs = {"dataset": request["dataset"]}
    return _run_training_job("search", args, request, inputs, resolve_search_config, run_search)


def _run_training_job(
    kind: str,
    args: argparse.Namespace,
    request: dict[str, Any],
    inputs: dict[str, Any],
    resolve: Callable[..., dict[str, Any]],
    run: Callable[..., dict[str, Any]],
    *,
    resume_options: str = "",
) -> int:
    """What search and train share once the request is checked: detach, or resume from ``job.json``,
    or resolve the configuration, then run ``run(ctx, resolved, dist_info)`` on every rank (rank 0
    as the job worker)."""
    from ..jobs.runner import run_job_command
    from .distributed import resolve_device, torchrun_rank

    rank, local_rank, _ = torchrun_rank()
    if args.detach:
        # The background worker resolves the configuration and records it in job.json.
        return run_job_command(kind, args, _unused_body, None, inputs=inputs)  # type: ignore[arg-type]

    if args.resume:
        if args.run_dir is None:
            raise JobError(f"--resume needs --run-dir RUN: the run directory of the {kind} to continue")
        resolved = _recorded_config(args.run_dir, request, section=kind, options=resume_options)
    else:
        device_type = resolve_device(args.device, local_rank).type
        log = (lambda message: print(message, file=sys.stderr, flush=True)) if rank == 0 else None
        try:
            resolved = resolve(request, device_type=device_type, log=log)
        except MedSegNASError as exc:
            if rank != 0 or args.run_dir is None:
                raise
            error = exc

            def failed(ctx) -> None:
                raise error

            # Record the failure in the run directory like any other job failure.
            return run_job_command(kind, args, failed, {"request": request}, inputs=inputs)

    return run_distributed_job(kind, args, run, resolved, inputs)


def run_distributed_job(
    kind: str,
    args: argparse.Namespace,
    run: Callable[..., dict[str, Any]],
    resolved: dict[str, Any],
    inputs: dict[str, Any],
) -> int:
    """Run ``run(ctx, resolved, dist_info)`` on every rank of this (``torchrun``) launch.

    Rank 0 runs it as the job worker of ``args.run_dir`` (``job.json`` records ``resolved`` and
    ``inputs``); other ranks as workers that write nothing. Each rank joins the process group
    before and leaves it after. Returns the exit code.
    """
    from ..jobs.runner import run_job_command
    from .distributed import init_distributed, run_worker_rank, shutdown_distributed, torchrun_rank

    def body(ctx) -> dict[str, Any]:
        info = init_distributed(args.device)
        try:
            return run(ctx, resolved, info)
        finally:
            shutdown_distributed()

    if torchrun_rank()[0] == 0:
        return run_job_command(kind, args, body, resolved, inputs=inputs)
    return run_worker_rank(body, resuming=bool(args.resume))


def _unused_body(ctx) -> None:  # pragma: no cover - a detached command never runs its body here
    raise RuntimeError("unreachable")


def train_command(args: argparse.Namespace) -> int:
    """Resolve the configuration (or read it back when resuming), then train as a job."""
    from .distributed import torchrun_rank
    from .train import _check_request, resolve_train_config, run_train

    _, _, world = torchrun_rank()
    if world > 1 and args.detach:
        raise JobError("--detach cannot be used under torchrun; detach the torchrun command itself")
    if args.run_dir is None and not args.detach:
        raise JobError(
            "train writes its results (model bundle, predictions, checkpoints) to a run directory: give "
            "--run-dir RUN, or --detach to create one under --runs-root"
        )
    request = _train_request(args)
    _check_request(request)  # neither or both of --arch and --network: fail before anything else
    inputs = {"dataset": request["dataset"], **({"arch": request["arch"]} if request["arch"] else {})}

    return _run_training_job(
        "train",
        args,
        request,
        inputs,
        resolve_train_config,
        run_train,
        resume_options=", --arch/--network, --register, --name",
    )
