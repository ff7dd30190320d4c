"""Retraining as a job: a searched DiNTS architecture or a MONAI baseline, exported as a MONAI bundle.

``medsegnas train`` trains one segmentation network on a labelled dataset with the same data
pipeline as the search (:mod:`.pipeline`: configuration from the dataset statistics, MONAI
transforms, class-balanced crops, :class:`~.pipeline.SeededPatchDataset`, sliding-window
validation Dice), then exports the best network as a MONAI bundle and registers it.

Networks (:data:`NETWORKS`):

* ``dints``: a searched architecture (``arch.json`` from ``medsegnas search``), built as MONAI's
  model-zoo bundle ``pancreas_ct_dints_segmentation`` builds it:
  :class:`~monai.networks.nets.TopologyInstance` (``channel_mul`` 1.0, twice as wide as the
  searched supernet, as published) inside :class:`~monai.networks.nets.DiNTS`;
* ``unet``, ``segresnet``, ``swinunetr``: MONAI's baselines, sized per preset
  (:data:`BASELINE_NETWORKS`; ``network_kwargs`` in the config overrides any argument).

Optimisation follows MONAI's DiNTS retraining script (``tutorials/automl/DiNTS/train.py``):
DiceCE loss, SGD (lr 0.025 x number of processes, momentum 0.9, weight decay 4e-5) with the
rate halved at 20, 40, 60 and 80% of the epochs. The baselines use AdamW (lr 1e-4, weight decay
1e-5) with a cosine schedule, as MONAI's SwinUNETR and Auto3DSeg SegResNet recipes do. AMP on
CUDA, DistributedDataParallel under ``torchrun`` (gloo on CPUs); only rank 0 writes.

Resuming is exact: the checkpoint holds the weights, optimiser, AMP scaler, RNG states, counters,
best score and validation history; the learning rate is a function of the epoch, and sample
order and augmentation are functions of ``(seed, epoch, sample)``.

Results in the run directory::

    checkpoints/last.pt, checkpoints/best.pt
    artifacts/model/             MONAI bundle of the best network (export_bundle)
    artifacts/summary.json       network, parameters, best epoch and Dice by label name, cases, time, memory
    artifacts/val_dice.json      every validation and the mean training loss of every epoch
    artifacts/curves.png         the same as a plot
    artifacts/predictions/<case>.nii.gz   the best network's validation label maps on the images' grids
    artifacts/tensorboard/
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..atomic import write_json_atomic
from ..errors import DatasetError, JobError, MedSegNASError
from .common import (
    ActivationMemoryModel,
    capture_rng_state,
    cases_of_split,
    check_checkpoint,
    current_rss_mb,
    dataset_record,
    is_int,
    is_number,
    log_validation,
    mean_over_ranks,
    measure_training_cases,
    open_tensorboard,
    peak_memory_mb,
    plan_patch_size,
    restore_rng_state,
    run_amp,
    score_validation,
    seed_run,
    stop_check,
    validated_labels,
)
from .config import PipelineConfig

__all__ = [
    "BASELINE_NETWORKS",
    "LOSSES",
    "NETWORKS",
    "TRAIN_PRESETS",
    "TrainConfig",
    "build_loss",
    "build_network",
    "learning_rate_factor",
    "minimum_patch_side",
    "network_divisor",
    "resolve_train_config",
    "run_train",
]

CHECKPOINT_FORMAT = "medsegnas-train"
CHECKPOINT_VERSION = 1

#: Networks ``medsegnas train`` builds; ``dints`` needs a searched ``arch.json``.
NETWORKS = ("dints", "unet", "segresnet", "swinunetr")

#: Schedules of the named presets. ``tiny`` retrains the tiny search's architecture on the 6-case
#: 64^3 phantom in about two minutes on 2 CPU cores; its learning rates are higher than the
#: published ones so that its few dozen steps get somewhere. ``small`` suits one GPU. ``full`` is
#: MONAI's DiNTS retraining schedule (96^3 patches, 2 images of 1 patch per step, validation every
#: 500 epochs); an epoch is one pass over the training cases.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "epochs": 12,
        "val_interval": 4,
        "checkpoint_every": 10,
        "batch_size": 1,
        "crops_per_case": 2,
        "max_patch_size": [48, 48, 48],
        "sgd_lr": 0.05,
        "adamw_lr": 3e-3,
    },
    "small": {
        "epochs": 1000,
        "val_interval": 50,
        "checkpoint_every": 200,
        "batch_size": 2,
        "crops_per_case": 2,
        "max_patch_size": [96, 96, 96],
    },
    "full": {
        "epochs": 13500,
        "val_interval": 500,
        "checkpoint_every": 1000,
        "batch_size": 2,
        "crops_per_case": 1,
        "max_patch_size": [96, 96, 96],
        "val_overlap": 0.5,
    },
}


def _unet_arguments(channels: list[int], norm: str) -> dict[str, Any]:
    """MONAI UNet arguments: a halving between levels, two residual units per level."""
    return {"channels": channels, "strides": [2] * (len(channels) - 1), "num_res_units": 2, "norm": norm}


#: MONAI arguments of the baselines per preset (``in_channels``/``out_channels`` are added).
#: ``full``: the model-zoo spleen UNet, Auto3DSeg's SegResNet width, the published SwinUNETR
#: (feature size 48); the SwinUNETR sizes match ``sslpretrain``'s presets so a pretrained encoder
#: of the same preset loads into it.
BASELINE_NETWORKS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "unet": _unet_arguments([16, 32, 64, 128], "instance"),
        "segresnet": {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
        "swinunetr": {"feature_size": 12},
    },
    "small": {
        "unet": _unet_arguments([16, 32, 64, 128, 256], "instance"),
        "segresnet": {"init_filters": 16, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]},
        "swinunetr": {"feature_size": 24},
    },
    "full": {
        "unet": _unet_arguments([16, 32, 64, 128, 256], "batch"),
        "segresnet": {"init_filters": 32, "blocks_down": [1, 2, 2, 4, 4], "blocks_up": [1, 1, 1, 1]},
        "swinunetr": {"feature_size": 48},
    },
}

#: Training losses (MONAI's DiceLoss, DiceCELoss, DiceFocalLoss); ``dice_ce`` is the published one.
LOSSES = ("dice_ce", "dice", "dice_focal")

_MONAI_CLASS = {"unet": "UNet", "segresnet": "SegResNet", "swinunetr": "SwinUNETR"}


@dataclass
class TrainConfig(PipelineConfig):
    """Every setting of a training run. A preset fills them; a ``--config`` file overrides any of them.

    Schedule: ``epochs`` (passes over the training cases), ``val_interval`` (epochs between
    validations; the last epoch always validates), ``checkpoint_every`` (steps between
    checkpoints of ``checkpoints/last.pt`` besides the end of every epoch and stop requests;
    0: epoch ends only).

    Data (as :class:`~MedSegNASLib.nas.search.SearchConfig`, from
    :class:`~MedSegNASLib.nas.config.PipelineConfig`): ``batch_size`` (cases per step and
    process), ``crops_per_case``, ``patch_size`` (None: automatic, a multiple of the network's
    divisor, at most ``max_patch_size``, within ``memory_budget_mb``), ``spacing``, ``intensity``,
    ``orientation``, ``augment``, ``fold`` / ``n_folds`` (validation fold when the caller gives no
    split), ``num_workers``, ``cache_rate``.

    Network: ``channel_mul`` (DiNTS width; 1.0 as published), ``network_kwargs`` (MONAI arguments
    of a baseline overriding :data:`BASELINE_NETWORKS`, e.g. ``{"feature_size": 48}``).

    Optimisation: ``optimizer`` (``auto``: SGD for DiNTS as published, AdamW for the baselines;
    or ``sgd`` / ``adamw``), ``sgd_lr`` 0.025, ``momentum`` 0.9, ``sgd_weight_decay`` 4e-5,
    ``adamw_lr`` 1e-4, ``adamw_weight_decay`` 1e-5 (learning rates x number of processes),
    ``lr_schedule`` (``auto``: ``multistep`` for SGD, ``cosine`` for AdamW; or ``constant``),
    ``lr_milestones`` (fractions of the epochs past which the rate halves once more),
    ``warmup_epochs`` (linear warm-up before the schedule).

    Loss (:data:`LOSSES`): ``loss`` (``dice_ce``, as published; ``dice``; ``dice_focal``) with
    MONAI's term weights ``lambda_dice``, ``lambda_ce`` (Dice-CE) and ``lambda_focal`` /
    ``focal_gamma`` (Dice-Focal). Augmentation: ``augment_strength`` scales the probabilities and
    ranges of the random affine and intensity transforms (1: the published light augmentation,
    0: none).

    Interactive training (``--interactive``): ``interactive_probability`` (the share of steps
    whose input carries simulated clicks; the others train the automatic mode) and
    ``interactive_max_clicks`` (an interactive sample holds 1 to this many clicks, each at the
    centre of the largest error left by the previous ones; 3 as MONAI's DeepEdit, more to train
    the long click sequences the simulated-user evaluation makes).

    Runtime: ``amp`` ("auto": CUDA only), ``deterministic``, ``val_overlap`` /
    ``val_sw_batch_size`` (sliding-window validation), ``seed``.
    """

    KIND: ClassVar[str] = "train"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = TRAIN_PRESETS
    POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = ("sgd_lr", "adamw_lr", "channel_mul")
    NON_NEGATIVE_FIELDS: ClassVar[tuple[str, ...]] = (
        "momentum",
        "sgd_weight_decay",
        "adamw_weight_decay",
        "lambda_dice",
        "lambda_ce",
        "lambda_focal",
        "focal_gamma",
        "augment_strength",
    )

    epochs: int = 13500
    val_interval: int = 500
    checkpoint_every: int = 1000
    batch_size: int = 2
    crops_per_case: int = 1
    lr_milestones: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    channel_mul: float = 1.0
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "auto"
    sgd_lr: float = 0.025
    sgd_weight_decay: float = 4e-5
    adamw_lr: float = 1e-4
    adamw_weight_decay: float = 1e-5
    lr_schedule: str = "auto"
    loss: str = "dice_ce"
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    lambda_focal: float = 1.0
    focal_gamma: float = 2.0
    augment_strength: float = 1.0
    interactive_probability: float = 0.5
    interactive_max_clicks: int = 3

    def optimizer_for(self, network: str) -> str:
        """``sgd`` or ``adamw`` for ``network`` (``auto``: SGD for DiNTS, AdamW for the baselines)."""
        if self.optimizer != "auto":
            return self.optimizer
        return "sgd" if network == "dints" else "adamw"

    def schedule_for(self, network: str) -> str:
        if self.lr_schedule != "auto":
            return self.lr_schedule
        return "multistep" if self.optimizer_for(network) == "sgd" else "cosine"

    def extra_problems(self) -> list[str]:
        problems = []
        if self.optimizer not in ("auto", "sgd", "adamw"):
            problems.append(f"optimizer must be 'auto', 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss == "dice_ce" and is_number(self.lambda_dice) and is_number(self.lambda_ce):
            if self.lambda_dice + self.lambda_ce <= 0:
                problems.append("lambda_dice and lambda_ce cannot both be 0")
        if self.loss == "dice_focal" and is_number(self.lambda_dice) and is_number(self.lambda_focal):
            if self.lambda_dice + self.lambda_focal <= 0:
                problems.append("lambda_dice and lambda_focal cannot both be 0")
        if self.lr_schedule not in ("auto", "multistep", "cosine", "constant"):
            problems.append(
                f"lr_schedule must be 'auto', 'multistep', 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not is_number(self.interactive_probability) or not 0 <= self.interactive_probability <= 1:
            problems.append(
                f"interactive_probability must be a number in [0, 1], got {self.interactive_probability!r}"
            )
        if not is_int(self.interactive_max_clicks) or self.interactive_max_clicks < 1:
            problems.append(
                f"interactive_max_clicks must be an integer >= 1, got {self.interactive_max_clicks!r}"
            )
        if not isinstance(self.network_kwargs, Mapping):
            problems.append(
                f"network_kwargs must be a mapping of MONAI arguments, got {self.network_kwargs!r}"
            )
        return problems


def learning_rate_factor(
    epoch: int, epochs: int, schedule: str, milestones: Sequence[float] = (), warmup_epochs: int = 0
) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based).

    ``multistep``: ``0.5 ** k``, ``k`` the number of milestones ``m`` with ``epoch / epochs > m``
    (MONAI's DiNTS retraining script); ``cosine``: half a cosine from 1 to 0 over the epochs after
    the warm-up; ``constant``: 1. During the ``warmup_epochs`` the factor rises linearly to 1.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    if schedule == "multistep":
        return 0.5 ** sum(1 for m in milestones if epoch / epochs > m)
    if schedule == "cosine":
        t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def build_loss(config: TrainConfig):
    """The training loss of ``config``: logits ``(B, C, *patch)`` and labels ``(B, 1, *patch)`` -> scalar.

    All three leave the background out of the Dice term and use the batch Dice with squared
    predictions, as MONAI's DiNTS retraining does for Dice-CE.
    """
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    common = {
        "include_background": False,
        "to_onehot_y": True,
        "softmax": True,
        "squared_pred": True,
        "batch": True,
        "smooth_nr": 1e-5,
        "smooth_dr": 1e-5,
    }
    if config.loss == "dice":
        return DiceLoss(**common)
    if config.loss == "dice_focal":
        return DiceFocalLoss(
            **common,
            gamma=config.focal_gamma,
            lambda_dice=config.lambda_dice,
            lambda_focal=config.lambda_focal,
        )
    return DiceCELoss(**common, lambda_dice=config.lambda_dice, lambda_ce=config.lambda_ce)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def _baseline_definition(
    network: str, preset: str, overrides: Mapping[str, Any], in_channels: int, num_classes: int
) -> dict[str, Any]:
    kwargs = {**copy.deepcopy(BASELINE_NETWORKS[preset][network]), **copy.deepcopy(dict(overrides))}
    for fixed in ("_target_", "in_channels", "out_channels", "spatial_dims"):
        if fixed in kwargs:
            raise MedSegNASError(
                f"network_kwargs may not set {fixed!r}: it follows from the network and the dataset"
            )
    return {
        "_target_": _MONAI_CLASS[network],
        "spatial_dims": 3,
        "in_channels": int(in_channels),
        "out_channels": int(num_classes),
        **kwargs,
    }


def network_divisor(
    network: str, network_def: Mapping[str, Any], arch: Mapping[str, Any] | None = None
) -> int:
    """Every side of an input patch must be a multiple of this for ``network``.

    DiNTS: ``2 ** (num_depths + use_downsample)``; UNet: the product of its strides; SegResNet:
    ``2 ** (len(blocks_down) - 1)``; SwinUNETR: 32 (five halvings: a 2^3 patch embedding and four
    patch mergings).
    """
    if network == "dints":
        from .search_space import SearchSpace

        assert arch is not None
        return SearchSpace.from_dict(arch["search_space"]).required_divisor
    if network == "unet":
        strides = network_def.get("strides") or []
        divisor = 1
        for stride in strides:
            divisor *= int(np.max(np.atleast_1d(stride)))
        return divisor
    if network == "segresnet":
        return 2 ** (len(network_def.get("blocks_down") or (1, 2, 2, 4)) - 1)
    return 32


def minimum_patch_side(network: str, divisor: int) -> int:
    """Smallest patch side ``network`` trains on: twice the divisor for UNet and SwinUNETR.

    Their deepest features are instance-normalised, which needs more than one voxel: at a side of
    ``divisor`` the deepest feature map is 1^3 (64^3 for SwinUNETR, whose deepest map is then 2^3).
    """
    return 2 * divisor if network in ("unet", "swinunetr") else divisor


def _check_patch(network: str, patch: Sequence[int], divisor: int, arch: Mapping[str, Any] | None) -> None:
    if network == "dints":
        from .search_space import SearchSpace

        assert arch is not None
        SearchSpace.from_dict(arch["search_space"]).check_patch_size(tuple(patch))
        return
    sizes = tuple(patch)
    bad = [axis for axis, size in enumerate(sizes) if size % divisor]
    if bad:
        nearest = tuple(max(divisor, ((s + divisor // 2) // divisor) * divisor) for s in sizes)
        axes = " and ".join(f"{axis} ({sizes[axis]})" for axis in bad)
        raise MedSegNASError(
            f"patch size {sizes} is not divisible by {divisor} along {'axes' if len(bad) > 1 else 'axis'} {axes}: "
            f"{_MONAI_CLASS[network]} needs multiples of {divisor}; try {nearest}"
        )
    smallest = minimum_patch_side(network, divisor)
    if min(sizes) < smallest:
        raise MedSegNASError(
            f"patch size {sizes} is too small for {_MONAI_CLASS[network]}: every side needs at least {smallest} "
            f"voxels (its deepest features are instance-normalised); try {tuple(max(s, smallest) for s in sizes)}"
        )


def build_network(resolved: Mapping[str, Any]):
    """The network a resolved configuration describes, freshly initialised, on the CPU.

    Returns:
        ``(module, network_def)``: the :class:`torch.nn.Module` (input ``(B, C, *patch)`` ->
        logits ``(B, num_classes, *patch)``) and its MONAI config for the bundle's
        ``inference.json`` (built from it by MONAI's ``ConfigParser`` gives the same module).
    """
    from monai.bundle import ConfigParser

    info = resolved["network"]
    network_def = copy.deepcopy(info["network_def"])
    if info["name"] == "dints":
        from .decode import ArchCode

        code = ArchCode.from_dict(info["arch"])
        module = code.network(
            int(network_def["in_channels"]),
            int(network_def["num_classes"]),
            channel_mul=float(network_def["dints_space"]["channel_mul"]),
        )
        return module, network_def
    module = ConfigParser({"network_def": copy.deepcopy(network_def)}).get_parsed_content("network_def")
    return module, network_def


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _load_arch(path: str | None) -> dict[str, Any]:
    from .decode import load_arch_json

    if not path:
        raise MedSegNASError("the dints network needs the searched architecture: give --arch ARCH.json")
    arch_path = Path(path)
    if arch_path.is_dir():
        candidates = [arch_path / "arch.json", arch_path / "artifacts" / "arch.json"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise MedSegNASError(
                f"{arch_path} is a folder without arch.json (nor artifacts/arch.json); give the arch.json "
                "written by medsegnas search"
            )
        arch_path = found
    code = load_arch_json(arch_path)  # names the file and the problem
    if code.search_space.spatial_dims != 3:
        raise MedSegNASError(
            f"{arch_path}: its search space is {code.search_space.spatial_dims}D; training runs on 3D volumes"
        )
    return code.to_dict()


def _check_request(request: Mapping[str, Any]) -> str:
    """The network name of a request; exactly one of ``arch`` and ``network`` must be given."""
    arch, network = request.get("arch"), request.get("network")
    if arch and network and network != "dints":
        raise MedSegNASError(
            f"give either --arch (train a searched DiNTS architecture) or --network {network}, not both"
        )
    if arch:
        return "dints"
    if not network:
        raise MedSegNASError(
            "say what to train: --arch ARCH.json (a searched DiNTS architecture) or --network "
            "unet|segresnet|swinunetr (a MONAI baseline)"
        )
    if network not in NETWORKS:
        raise MedSegNASError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    if network == "dints":
        raise MedSegNASError("the dints network needs the searched architecture: give --arch ARCH.json")
    return str(network)


def _choose_split(dataset, config: TrainConfig, request: Mapping[str, Any]) -> tuple[list, list]:
    """Training and validation cases: the caller's lists, or the search's fold split."""
    from ..data.datasets import train_val_split

    labelled = [case for case in [*dataset.cases, *dataset.validation] if case.label is not None]
    by_name = {case.name: case for case in labelled}
    wanted_train, wanted_val = request.get("train_cases"), request.get("validation_cases")
    if wanted_train is None and wanted_val is None:
        return train_val_split(dataset, fold=config.fold, n_folds=config.n_folds, seed=config.seed)

    def pick(names: Sequence[str], role: str) -> list:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise MedSegNASError(f"{role} cases must be a list of case names, got {names!r}")
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DatasetError(
                f"{role} case(s) {', '.join(unknown)} are not labelled cases of {dataset.path.name} "
                f"(known: {', '.join(sorted(by_name)[:8])}{', ...' if len(by_name) > 8 else ''})"
            )
        if len(set(names)) != len(names):
            raise MedSegNASError(f"{role} cases list a case twice: {list(names)}")
        return [by_name[n] for n in names]

    training = pick(wanted_train, "training") if wanted_train is not None else None
    validation = pick(wanted_val, "validation") if wanted_val is not None else None
    if training is None:
        held = {case.name for case in validation}
        training = [case for case in labelled if case.name not in held]
    if validation is None:
        used = {case.name for case in training}
        validation = [case for case in labelled if case.name not in used]
    overlap = sorted({c.name for c in training} & {c.name for c in validation})
    if overlap:
        raise MedSegNASError(
            f"case(s) {', '.join(overlap)} are in both the training and the validation cases"
        )
    if not training or not validation:
        raise DatasetError(
            f"the split leaves {len(training)} training and {len(validation)} validation case(s); "
            "training needs at least one of each"
        )
    return training, validation


def resolve_train_config(
    request: Mapping[str, Any],
    *,
    device_type: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check the dataset, the network and the settings and fill in everything automatic, before training.

    Args:
        request: ``dataset``, ``dataroot`` (or None), ``preset``, ``overrides`` (the ``--config``
            mapping), ``seed`` (None: the config's), ``arch`` (arch.json path or None), ``network``
            (``unet``, ``segresnet``, ``swinunetr``, or None with ``arch``), ``train_cases`` /
            ``validation_cases`` (case names, or None: the search's fold split; one list alone
            takes the other labelled cases as the other), ``register`` (bool), ``name`` (registry
            id or None).
        device_type: ``"cuda"`` or ``"cpu"``: decides AMP and the default memory budget.
        log: where to say what was found.

    Returns:
        The resolved configuration (plain JSON): ``request``, ``train`` (:class:`TrainConfig` with
        ``patch_size`` set), ``network`` (name, ``network_def``, divisor, arch code and its path for
        DiNTS, parameters), ``preprocessing``, ``dataset`` (labels, split), ``statistics``,
        ``memory``, ``registry``.

    Raises:
        MedSegNASError: invalid settings or patch size; a missing, corrupt or non-3D arch.json;
            neither or both of arch and network; too few labelled cases; a declared class present
            in no label map; unknown case names.
    """
    import torch

    from ..data.datasets import load_dataset

    say = log or (lambda message: None)
    network_name = _check_request(request)
    overrides = dict(request.get("overrides") or {})
    if request.get("seed") is not None:
        overrides["seed"] = int(request["seed"])
    config = TrainConfig.from_preset(str(request.get("preset") or "full"), overrides)
    if config.amp is True and device_type != "cuda":
        raise MedSegNASError(
            "amp: true needs a CUDA device; use amp: auto (AMP on GPUs only) or --device cuda"
        )
    arch: dict[str, Any] | None = None
    arch_path: str | None = None
    if network_name == "dints":
        if config.network_kwargs:
            raise MedSegNASError("network_kwargs applies to the MONAI baselines; DiNTS is shaped by --arch")
        arch_path = str(Path(request["arch"]).expanduser().absolute())
        arch = _load_arch(arch_path)
    # The input-size rule is checked before any data is read (the divisor needs no dataset).
    probe_def = (
        {}
        if network_name == "dints"
        else _baseline_definition(network_name, config.preset, config.network_kwargs, 1, 2)
    )
    divisor = network_divisor(network_name, probe_def, arch)
    if config.patch_size is not None:
        _check_patch(network_name, config.patch_size, divisor, arch)

    dataset = load_dataset(request["dataset"], dataroot=request.get("dataroot"))
    labelled = [case for case in [*dataset.cases, *dataset.validation] if case.label is not None]
    if len(labelled) < 2:
        raise DatasetError(
            f"{dataset.path} has {len(labelled)} labelled case(s); training needs at least 2: one to train on "
            "and one to validate"
        )
    labels = validated_labels(dataset, say)
    training, validation = _choose_split(dataset, config, request)

    stats, spec, absent_in_training = measure_training_cases(dataset, training, labels, config, say)
    if absent_in_training:
        say(
            "warning: class(es) "
            + ", ".join(f"'{info.name}'" for info in absent_in_training)
            + " have no voxel in the training cases; the network cannot learn them"
        )
    num_classes = len(labels)
    in_channels = dataset.num_channels
    interactive = None
    if request.get("interactive"):
        # DeepEdit-style: the image, then one guidance channel per label (background included),
        # then the previous mask of each segment (RITM's mask guidance: a click refines what is there).
        from ..interactive.export import extra_channels, interactive_label_names, interactive_section

        # Guidance channel c is output channel c: labels by index, as the exported bundle numbers them.
        indexed = [{"value": i, "name": info.name} for i, info in enumerate(labels)]
        interactive = interactive_section(
            interactive_label_names(indexed), dataset.num_channels, previous_mask=True
        )
        in_channels += extra_channels(interactive)
    if network_name == "dints":
        from ..models.export import dints_network_def

        network_def = dints_network_def(arch, in_channels, num_classes, channel_mul=config.channel_mul)
    else:
        network_def = _baseline_definition(
            network_name, config.preset, config.network_kwargs, in_channels, num_classes
        )
    partial = {"network": {"name": network_name, "network_def": network_def, "arch": arch}}
    try:
        torch.manual_seed(0)
        network, _ = build_network(partial)
    except MedSegNASError:
        raise
    except Exception as exc:  # a bad network_kwargs value: MONAI's own message, on one line
        reason = " ".join(str(exc).split())[:300]
        raise MedSegNASError(
            f"cannot build the {network_name} network: {type(exc).__name__}: {reason}"
        ) from None
    parameters = int(sum(p.numel() for p in network.parameters()))
    smallest = minimum_patch_side(network_name, divisor)
    try:
        memory = ActivationMemoryModel(network, in_channels, smallest)
    except (RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise MedSegNASError(f"the {network_name} network cannot train on a probe patch: {reason}") from None
    del network
    median_shape, memory_plan = plan_patch_size(
        config,
        spec,
        stats,
        memory,
        divisor,
        device_type=device_type,
        say=say,
        smallest=smallest,
        network_name=network_name,
    )

    resolved = {
        "request": {
            key: request.get(key)
            for key in (
                "dataset",
                "dataroot",
                "preset",
                "overrides",
                "seed",
                "arch",
                "network",
                "train_cases",
                "validation_cases",
                "register",
                "name",
                "interactive",
            )
        },
        "interactive": interactive,
        "train": config.to_dict(),
        "network": {
            "name": network_name,
            "network_def": network_def,
            "divisor": divisor,
            "arch": arch,
            "arch_path": arch_path,
            "parameters": parameters,
            "optimizer": config.optimizer_for(network_name),
            "lr_schedule": config.schedule_for(network_name),
        },
        "preprocessing": spec.to_dict(),
        "dataset": dataset_record(
            dataset,
            labels,
            {"train": [c.name for c in training], "validation": [c.name for c in validation]},
            absent_in_training,
        ),
        "statistics": {**stats.to_dict(), "median_resampled_shape": median_shape},
        "memory": memory_plan,
        "registry": {"register": bool(request.get("register", True)), "name": request.get("name")},
    }
    if resolved["registry"]["name"] is not None:
        from ..models.registry import _check_id

        _check_id(str(resolved["registry"]["name"]))
    return json.loads(json.dumps(resolved))


def describe_config(resolved: Mapping[str, Any]) -> str:
    """One line with what was chosen."""
    spec, train, memory, net = (
        resolved["preprocessing"],
        resolved["train"],
        resolved["memory"],
        resolved["network"],
    )
    intensity = spec["intensity"]
    norm = (
        f"CT window [{intensity['a_min']:g}, {intensity['a_max']:g}] HU"
        if intensity["kind"] == "ct_window"
        else "z-score"
    )
    split = resolved["dataset"]["split"]
    optimizer = net["optimizer"]
    lr = train["sgd_lr"] if optimizer == "sgd" else train["adamw_lr"]
    return (
        f"training {net['name']} ({net['parameters'] / 1e6:.2f} M parameters), preset {train['preset']}: patch "
        f"{'x'.join(map(str, train['patch_size']))}, spacing {'x'.join(f'{s:g}' for s in spec['spacing'])} mm, "
        f"{norm}, {train['epochs']} epochs, {optimizer} lr {lr:g} ({net['lr_schedule']}), cases "
        f"{len(split['train'])} training / {len(split['validation'])} validation, memory estimate "
        f"{memory['estimate_mb']:.0f} MB of {memory['budget_mb']:.0f} MB"
    )


# --------------------------------------------------------------------------------------------
# The training job
# --------------------------------------------------------------------------------------------


@dataclass
class TrainProgress:
    """Counters and records of a training run; all of it goes into the checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # steps done in the current epoch
    global_step: int = 0
    best_dice: float = -1.0
    best_epoch: int = -1
    loss_sum: float = 0.0  # training loss summed over the steps of the current epoch
    validations: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    init: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _make_optimizer(network, config: TrainConfig, kind: str, world: int):
    import torch

    if kind == "sgd":
        return torch.optim.SGD(
            network.parameters(),
            lr=config.sgd_lr * world,
            momentum=config.momentum,
            weight_decay=config.sgd_weight_decay,
        )
    return torch.optim.AdamW(
        network.parameters(), lr=config.adamw_lr * world, weight_decay=config.adamw_weight_decay
    )


def _registry_id(resolved: Mapping[str, Any], run_name: str) -> str:
    name = resolved["registry"].get("name")
    if name:
        return str(name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{resolved['network']['name']}-{run_name}").strip("._-")
    return cleaned[:100] or resolved["network"]["name"]


def run_train(
    ctx,
    resolved: Mapping[str, Any],
    dist_info,
    *,
    init_network: Callable[[Any], Mapping[str, Any]] | None = None,
    on_validation: Callable[[Mapping[str, Any]], None] | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """The training job body: train, validate, keep the best network, export, predict, register.

    Args:
        ctx: :class:`~MedSegNASLib.jobs.JobContext` (rank 0 needs a run directory; other ranks
            write nothing).
        resolved: from :func:`resolve_train_config` (recorded in ``job.json``).
        dist_info: :class:`~MedSegNASLib.nas.distributed.DistInfo` of this process.
        init_network: called once on the freshly built network (on the CPU, before training;
            not when resuming), e.g. to load a pretrained encoder; the mapping it returns is
            recorded under ``"init"`` in the checkpoint and ``summary.json``.
        on_validation: called on rank 0 with each new validation record (``epoch``, ``step``,
            ``val_dice``, ``val_dice_mean``) after ``best.pt`` is updated; it may raise to end the
            run there (``medsegnas tune`` prunes trials this way).
        export: False ends after training: no bundle, predictions, registry or plots; the
            result then holds ``best_val_dice_mean``, ``best_epoch``, ``validations``, ``steps``
            and ``wall_s`` (tuning trials).

    Returns:
        The summary (rank 0; ``{}`` elsewhere): ``bundle`` (path), ``registry_id``,
        ``best_val_dice`` (label name -> Dice), ``best_val_dice_mean``, ``best_epoch``, ...
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from ..data.datasets import load_dataset
    from ..data.preprocessing import PreprocessingSpec
    from .distributed import EpochSampler, broadcast_object, shard_evenly
    from .pipeline import (
        SeededPatchDataset,
        case_records,
        make_cache,
        make_loader,
        preprocessing_transforms,
        training_transforms,
    )

    started = time.monotonic()
    config = TrainConfig.from_dict(resolved["train"])
    spec = PreprocessingSpec.from_dict(resolved["preprocessing"])
    network_name = resolved["network"]["name"]
    labels = resolved["dataset"]["labels"]
    label_values = [item["value"] for item in labels]
    class_names = [item["name"] for item in labels[1:]]
    num_classes = len(labels)
    device = dist_info.device
    world, rank = dist_info.world_size, dist_info.rank
    amp = run_amp(config.amp, device)
    main = dist_info.is_main
    run_dir = ctx.run_dir if main else None
    if main and run_dir is None:
        raise JobError("training writes its model and results to a run directory; run it with --run-dir RUN")
    artifacts = run_dir.artifacts if run_dir is not None else None

    if main:
        ctx.log(describe_config(resolved))
    seed_run(config.seed, device, config.deterministic)

    # ---- data -------------------------------------------------------------------------------
    dataset = load_dataset(resolved["dataset"]["path"], dataroot=resolved["request"].get("dataroot"))
    train_cases, val_cases = cases_of_split(dataset, resolved["dataset"]["split"], ("train", "validation"))
    if main:
        ctx.log(f"preprocessing {len(train_cases)} training and {len(val_cases)} validation case(s)")
    workers = config.num_workers
    cache_t = make_cache(
        case_records(train_cases),
        preprocessing_transforms(spec, label_values, for_training=True),
        cache_rate=config.cache_rate,
        num_workers=workers,
    )
    cache_v = make_cache(
        shard_evenly(case_records(val_cases), rank, world),
        preprocessing_transforms(spec, label_values, for_training=False),
        cache_rate=config.cache_rate,
        num_workers=workers,
    )
    data_t = SeededPatchDataset(
        cache_t,
        training_transforms(
            spec,
            num_classes,
            crops_per_case=config.crops_per_case,
            augment=config.augment,
            strength=config.augment_strength,
        ),
        seed=config.seed,
        stream=0,
    )
    sampler = EpochSampler(len(data_t), seed=config.seed, stream=0, rank=rank, world_size=world)
    pin = device.type == "cuda"
    loader = make_loader(data_t, sampler, batch_size=config.batch_size, num_workers=workers, pin_memory=pin)
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch

    # ---- model and optimiser ---------------------------------------------------------------
    network, network_def = build_network(resolved)
    checkpoint = ctx.load_checkpoint() if (main and ctx.resuming) else None
    if dist_info.distributed and ctx.resuming:
        checkpoint = broadcast_object(checkpoint)
    progress = TrainProgress()
    if checkpoint is not None:
        check_checkpoint(checkpoint, resolved, world, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "training")
        network.load_state_dict(checkpoint["model"])
        progress = TrainProgress(**checkpoint["progress"])
    elif init_network is not None:
        record = init_network(network)
        progress.init = json.loads(json.dumps(dict(record or {})))
        if main:
            ctx.log(f"network initialised: {json.dumps(progress.init)[:300]}")
    network.to(device)
    model = network
    if dist_info.distributed:
        model = DistributedDataParallel(
            network,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=network_name == "dints",  # inactive DiNTS stems get no gradient
        )
    optimizer_kind = resolved["network"]["optimizer"]
    schedule = resolved["network"]["lr_schedule"]
    optimizer = _make_optimizer(network, config, optimizer_kind, world)
    base_lr = (config.sgd_lr if optimizer_kind == "sgd" else config.adamw_lr) * world
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    loss_function = build_loss(config)
    best_state: dict[str, Any] | None = None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_state(checkpoint["rng"])
        if main:
            best = ctx.load_checkpoint("best.pt")
            best_state = best["model"] if best is not None else None
            ctx.log(f"resuming at epoch {progress.epoch + 1}, step {progress.global_step} of {total_steps}")
    del checkpoint

    def set_learning_rate(epoch: int) -> float:
        lr = base_lr * learning_rate_factor(
            epoch, config.epochs, schedule, config.lr_milestones, config.warmup_epochs
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "resolved": dict(resolved),
            "world_size": world,
            "model": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "progress": progress.to_dict(),
            "rng": capture_rng_state(),
        }

    writer = open_tensorboard(artifacts, progress.global_step, ctx.resuming)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = current_rss_mb()
    step_times: list[float] = []

    def save() -> None:
        ctx.save_checkpoint(checkpoint_state())

    stop_if_requested = stop_check(ctx, device, save)
    interactive = resolved.get("interactive")
    if interactive:
        from ..interactive.export import extra_channels
        from ..interactive.guidance import WithoutClicks, interactive_training_input

    def validate(epoch: int) -> dict[str, Any]:
        nonlocal best_state
        scored = WithoutClicks(network, extra_channels(interactive)) if interactive else network
        mean, per_class, counts = score_validation(scored, cache_v, spec, config, class_names, device, amp)
        record = {
            "epoch": epoch + 1,
            "step": progress.global_step,
            "val_dice": per_class,
            "val_dice_mean": None if math.isnan(mean) else mean,
            "val_cases_per_class": {n: int(c) for n, c in zip(class_names, counts, strict=True)},
        }
        progress.validations.append(record)
        improved = not math.isnan(mean) and mean > progress.best_dice
        if improved:
            progress.best_dice, progress.best_epoch = mean, epoch + 1
        if main:
            if improved:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
                ctx.save_checkpoint(
                    {
                        "format": CHECKPOINT_FORMAT + "-best",
                        "version": CHECKPOINT_VERSION,
                        "model": best_state,
                        "epoch": epoch + 1,
                        "val_dice": per_class,
                        "val_dice_mean": mean,
                    },
                    "best.pt",
                )
            note = " - best so far, checkpoints/best.pt updated" if improved else ""
            log_validation(ctx, writer, epoch, per_class, mean, progress.global_step, note)
            if on_validation is not None:
                on_validation(record)
        return record

    try:
        model.train()
        while progress.epoch < config.epochs:
            epoch = progress.epoch
            lr = set_learning_rate(epoch)
            sampler.set_epoch(epoch, start=progress.step_in_epoch * config.batch_size)
            data_t.set_epoch(epoch)
            for batch in loader:
                tick = time.perf_counter()
                images = batch["image"].to(device, non_blocking=pin)
                targets = batch["label"].to(device, non_blocking=pin)
                if (
                    interactive
                ):  # clicks simulated in this step's error regions (seeded by the step: resumable)
                    images = interactive_training_input(
                        model,
                        images,
                        targets,
                        interactive["label_names"],
                        generator=np.random.default_rng([config.seed, rank, progress.global_step]),
                        previous_mask=bool(interactive.get("previous_mask")),
                        interact_probability=config.interactive_probability,
                        max_interactions=config.interactive_max_clicks,
                    )
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    logits = model(images)
                loss = loss_function(logits.float(), targets)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step_times.append(time.perf_counter() - tick)
                metrics: dict[str, Any] = {"loss": float(loss.detach()), "lr": lr}
                if dist_info.distributed:
                    mean_over_ranks(metrics, ("loss",), world, device)
                progress.loss_sum += metrics["loss"]
                progress.step_in_epoch += 1
                progress.global_step += 1
                if writer is not None:
                    writer.add_scalar("train/loss", metrics["loss"], progress.global_step)
                    writer.add_scalar("train/lr", lr, progress.global_step)
                epoch_done = progress.step_in_epoch >= steps_per_epoch
                if epoch_done:
                    # The epoch's end happens before its last step is reported, so that step's
                    # progress event carries the validation it triggered.
                    progress.epoch_losses.append(progress.loss_sum / progress.step_in_epoch)
                    if (epoch + 1) % config.val_interval == 0 or epoch + 1 == config.epochs:
                        record = validate(epoch)
                        for name, value in record["val_dice"].items():
                            metrics[f"val_dice/{name}"] = value
                    progress.epoch += 1
                    progress.step_in_epoch = 0
                    progress.loss_sum = 0.0
                    model.train()
                if progress.validations and progress.validations[-1]["val_dice_mean"] is not None:
                    metrics["val_dice"] = progress.validations[-1]["val_dice_mean"]
                ctx.progress(progress.global_step, total_steps, stage="train", epoch=epoch + 1, **metrics)
                if epoch_done or (
                    config.checkpoint_every and progress.global_step % config.checkpoint_every == 0
                ):
                    save()
                stop_if_requested()
                if epoch_done:
                    break
    finally:
        if writer is not None:
            writer.close()

    if not main:
        return {}
    if not export:
        return {
            "best_val_dice_mean": progress.best_dice if progress.best_epoch > 0 else None,
            "best_epoch": progress.best_epoch,
            "validations": progress.validations,
            "steps": progress.global_step,
            "epochs": progress.epoch,
            "wall_s": round(time.monotonic() - started, 1),
        }
    return _finish(
        ctx,
        resolved=resolved,
        network=network,
        network_def=network_def,
        best_state=best_state,
        progress=progress,
        device=device,
        world=world,
        amp=amp,
        step_times=step_times,
        rss_before=rss_before,
        wall_s=time.monotonic() - started,
    )


def _plot_curves(progress: TrainProgress, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..atomic import write_atomic

    figure = Figure(figsize=(8, 4.5), dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    epochs = np.arange(1, len(progress.epoch_losses) + 1)
    axis.plot(epochs, progress.epoch_losses, color="0.3", label="training loss (DiceCE, epoch mean)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    dice_axis = axis.twinx()
    dice_axis.set_ylabel("validation Dice")
    dice_axis.set_ylim(0, 1)
    if progress.validations:
        at = [v["epoch"] for v in progress.validations]
        names = list(progress.validations[0]["val_dice"])
        for name in names:
            values = [
                np.nan if v["val_dice"].get(name) is None else v["val_dice"][name]
                for v in progress.validations
            ]
            dice_axis.plot(at, values, marker="o", markersize=3, linewidth=1, label=name)
        means = [np.nan if v["val_dice_mean"] is None else v["val_dice_mean"] for v in progress.validations]
        dice_axis.plot(at, means, marker="s", color="black", linewidth=2, label="mean Dice")
    lines = axis.get_legend_handles_labels()
    more = dice_axis.get_legend_handles_labels()
    dice_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    axis.set_title(title)
    figure.tight_layout()
    write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


def _write_predictions(
    ctx, bundle: Path, cases, resolved: Mapping[str, Any], device, out_dir: Path
) -> list[str]:
    """The bundle's label maps of ``cases`` on each image's own grid (the segment engine), as NIfTI.

    Label values are the dataset's (the network's channels 0..C-1 mapped back when the dataset's
    values are not consecutive).
    """
    from ..data.io import read_volume, read_volumes, write_volume
    from ..data.volume import Volume
    from ..inference.engine import SegmentOptions, segment_volume
    from ..inference.model import load_model
    from .search_space import _quiet

    with _quiet():
        model = load_model(bundle)  # an interactive bundle: its automatic result (no clicks)
    values = np.array([item["value"] for item in resolved["dataset"]["labels"]], dtype=np.int64)
    remap = not np.array_equal(values, np.arange(len(values)))
    packed = len(resolved["dataset"]["modalities"]) > 1
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for done, case in enumerate(cases, start=1):
        if len(case.images) == 1:
            image = read_volume(case.images[0], dtype=np.float32, fourth_axis_channels=packed)
        else:
            image = read_volumes(case.images, dtype=np.float32)
        result = segment_volume(image, model, SegmentOptions(device=device.type))
        labels = result.labels
        if remap:
            mapped = values[np.asarray(labels.array, dtype=np.int64)]
            labels = Volume(
                mapped.astype(np.uint16 if values.max() > 255 else np.uint8), labels.affine, labels.meta
            )
        path = write_volume(labels, out_dir / f"{case.name}.nii.gz")
        written.append(path.name)
        ctx.progress(done, len(cases), stage="predict", case=case.name)
    return written


def _finish(
    ctx,
    *,
    resolved: Mapping[str, Any],
    network,
    network_def: Mapping[str, Any],
    best_state: Mapping[str, Any] | None,
    progress: TrainProgress,
    device,
    world: int,
    amp: bool,
    step_times: Sequence[float],
    rss_before: float | None,
    wall_s: float,
) -> dict[str, Any]:
    """Rank 0 after training: bundle, predictions, registry, summary.json, val_dice.json, curves."""
    from ..data.datasets import load_dataset
    from ..data.preprocessing import PreprocessingSpec
    from ..data.volume import LabelInfo
    from ..models.export import export_bundle
    from .search_space import _quiet

    run_dir = ctx.run_dir
    artifacts = run_dir.artifacts
    memory = dict(peak_memory_mb(device))
    memory["estimate_mb"] = resolved["memory"]["estimate_mb"]
    if rss_before is not None and device.type == "cpu":
        memory["rss_before_training_mb"] = round(rss_before, 1)
    network_name = resolved["network"]["name"]
    labels = [
        LabelInfo(i, item["name"], tuple(item["color"]))
        for i, item in enumerate(resolved["dataset"]["labels"])
    ]
    spec = PreprocessingSpec.from_dict(resolved["preprocessing"])
    split = resolved["dataset"]["split"]
    if best_state is None:
        ctx.log(
            "no validation scored (no Dice could be computed); exporting the last weights", level="warning"
        )
        best_state = {k: v.detach().to("cpu") for k, v in network.state_dict().items()}
        best_record = (
            progress.validations[-1] if progress.validations else {"val_dice": {}, "val_dice_mean": None}
        )
    else:
        best_record = next(v for v in progress.validations if v["epoch"] == progress.best_epoch)
    registry_id = _registry_id(resolved, run_dir.path.name)
    val_dice = best_record["val_dice"]
    train_info = {
        "run_id": run_dir.run_id,
        "preset": resolved["train"]["preset"],
        "epochs": progress.epoch,
        "best_epoch": progress.best_epoch,
        "train_cases": split["train"],
        "validation_cases": split["validation"],
        "dataset": resolved["dataset"]["name"],
    }
    ctx.log("exporting the best network as a MONAI bundle")
    with _quiet():  # MONAI's TopologyInstance prints a patch-size hint; the patch was checked already
        bundle = export_bundle(
            artifacts / "model",
            network_def=network_def,
            state_dict=best_state,
            labels=labels,
            preprocessing=spec,
            name=registry_id,
            description=(
                f"{network_name} trained by MedSegNAS on {resolved['dataset']['name']} "
                f"({len(split['train'])} training cases); best mean validation Dice "
                + (
                    f"{best_record['val_dice_mean']:.3f}"
                    if best_record["val_dice_mean"] is not None
                    else "n/a"
                )
            ),
            extra_metadata={
                "metrics": {"val_dice": val_dice, "val_dice_mean": best_record["val_dice_mean"]},
                "training": train_info,
                **({"init": progress.init} if progress.init is not None else {}),
                **({"interactive": resolved["interactive"]} if resolved.get("interactive") else {}),
            },
            arch_code=resolved["network"]["arch"],
        )
    if resolved.get("interactive"):
        from ..interactive.export import declare_interactive

        declare_interactive(bundle, resolved["interactive"])
    ctx.artifact(bundle, "model")

    dataset = load_dataset(resolved["dataset"]["path"], dataroot=resolved["request"].get("dataroot"))
    by_name = {case.name: case for case in [*dataset.cases, *dataset.validation]}
    ctx.log(f"segmenting the {len(split['validation'])} validation case(s) with the exported model")
    predictions = _write_predictions(
        ctx, bundle, [by_name[n] for n in split["validation"]], resolved, device, artifacts / "predictions"
    )
    ctx.artifact(artifacts / "predictions", "labelmap", cases=predictions)

    record_id: str | None = None
    registry_error: str | None = None
    if resolved["registry"]["register"]:
        from ..models.registry import register_model

        try:
            record = register_model(bundle, source=f"train run {run_dir.path}", name=registry_id)
            record_id = record.id
            ctx.log(f"registered the model as '{record_id}' (medsegnas segment --model {record_id})")
        except MedSegNASError as exc:  # the trained bundle is kept in the run directory either way
            registry_error = str(exc)
            ctx.log(f"the model was not registered: {exc}", level="warning")

    parameters = int(sum(v.numel() for v in network.parameters()))
    validations = progress.validations
    write_json_atomic(
        artifacts / "val_dice.json",
        {"labels": [item["name"] for item in resolved["dataset"]["labels"][1:]], "validations": validations,
         "epoch_losses": progress.epoch_losses},
    )  # fmt: skip
    _plot_curves(progress, artifacts / "curves.png", f"{network_name}: training loss and validation Dice")
    summary = {
        "network": network_name,
        "network_def": network_def,
        "arch": resolved["network"]["arch_path"],
        "parameters": parameters,
        "best_epoch": progress.best_epoch,
        "best_val_dice": val_dice,
        "best_val_dice_mean": best_record["val_dice_mean"],
        "last_val_dice": validations[-1]["val_dice"] if validations else None,
        "validations": validations,
        "train_cases": split["train"],
        "validation_cases": split["validation"],
        "patch_size": list(spec.patch_size),
        "spacing": spec.spacing,
        "optimizer": resolved["network"]["optimizer"],
        "lr_schedule": resolved["network"]["lr_schedule"],
        "wall_s": round(wall_s, 1),
        "memory": memory,
        "timing": {
            "steps_this_process": len(step_times),
            "mean_step_s": round(float(np.mean(step_times)), 4) if step_times else None,
        },
        "steps": progress.global_step,
        "epochs": progress.epoch,
        "world_size": world,
        "device": str(device),
        "amp": amp,
        "init": progress.init,
        "bundle": str(run_dir.relative(bundle)),
        "predictions": [f"predictions/{name}" for name in predictions],
        "registry_id": record_id,
        **({"registry_error": registry_error} if registry_error else {}),
    }
    summary_path = write_json_atomic(artifacts / "summary.json", summary)
    for path, kind in (
        (summary_path, "table"),
        (artifacts / "val_dice.json", "table"),
        (artifacts / "curves.png", "image"),
        (artifacts / "tensorboard", "tensorboard"),
    ):
        if Path(path).exists():
            ctx.artifact(path, kind)
    return {
        "bundle": str(bundle),
        "registry_id": record_id,
        "network": network_name,
        "parameters": parameters,
        "best_epoch": progress.best_epoch,
        "best_val_dice": val_dice,
        "best_val_dice_mean": best_record["val_dice_mean"],
        "summary": str(run_dir.relative(summary_path)),
        "init": progress.init,
    }
