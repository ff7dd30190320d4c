"""What the search job (:mod:`.search`) and the training job (:mod:`.train`) share.

Value checks for configurations, random state (seeding, exact capture and restore for
checkpoints), memory figures, metric averaging over ranks, the checks of a dataset's declared
classes and of a checkpoint against ``job.json``, and the parts of the resolved configuration
and of the job body that both jobs build the same way.

Importing this module loads neither torch nor MONAI; the functions import them when called.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DatasetError, JobError, MedSegNASError

__all__ = [
    "ActivationMemoryModel",
    "check_checkpoint",
    "capture_rng_state",
    "cases_of_split",
    "current_rss_mb",
    "dataset_record",
    "default_memory_budget_mb",
    "dice_by_class",
    "is_int",
    "is_number",
    "is_positive_number",
    "log_validation",
    "mean_over_ranks",
    "measure_training_cases",
    "open_tensorboard",
    "peak_memory_mb",
    "plan_patch_size",
    "restore_rng_state",
    "run_amp",
    "score_validation",
    "seed_run",
    "stop_check",
    "validated_labels",
]


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_number(value: Any) -> bool:
    return is_number(value) and value > 0


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Random state
# --------------------------------------------------------------------------------------------


def seed_run(seed: int, device: Any, deterministic: bool) -> None:
    """Seed Python, NumPy and torch with ``seed`` and set cuDNN's determinism for ``device``."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, in types ``torch.load(weights_only=True)`` accepts."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_state`: the generators continue where they were captured."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Memory and devices
# --------------------------------------------------------------------------------------------


def default_memory_budget_mb(device_type: str) -> float:
    """85% of the GPU's memory, or half of the RAM (at most 16 GB) on a CPU."""
    import torch

    if device_type == "cuda":
        return 0.85 * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**20
    try:
        import os

        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        ram = 8192.0
    return float(min(0.5 * ram, 16384.0))


def peak_memory_mb(device) -> dict[str, Any]:
    """``measured_peak_mb`` (MB) and what it ``measured``: CUDA tensors on a GPU, the process' peak RSS on a CPU."""
    import torch

    if device.type == "cuda":
        return {
            "measured_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "measured": "torch.cuda.max_memory_allocated during training (tensors only, no CUDA context)",
        }
    from ..inference.plan import process_memory

    # VmHWM, not ru_maxrss: a process started by fork + exec (Slicer's QProcess, pytest) inherits
    # in ru_maxrss the peak of its parent's address space, e.g. all of Slicer's memory.
    _, peak = process_memory()
    return {
        "measured_peak_mb": round(peak / 2**20, 1),
        "measured": "peak resident memory of the process (VmHWM): interpreter, libraries, cached data and training",
    }


def current_rss_mb() -> float | None:
    """Resident memory of this process now (MB), or None where ``/proc`` does not tell."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class ActivationMemoryModel:
    """Training memory of a network, from the tensors one probe forward pass saves for backward.

    A probe patch (``max(side, 32)`` voxels per side, batch 1; ``side`` the network's smallest
    patch) goes through the network on the CPU; the bytes of the distinct non-parameter tensors
    autograd keeps (caught with :func:`torch.autograd.graph.saved_tensors_hooks`) give bytes per
    input voxel. The estimate for ``patches`` patches of ``patch`` voxels is that times the voxels
    (x 0.6 under AMP) plus four copies of the parameters (weights, gradients, momentum, a spare).
    Not counted: the CUDA context and allocator slack on a GPU, the interpreter, libraries and
    cached data on a CPU.
    """

    AMP_ACTIVATION_FACTOR = 0.6

    def __init__(self, network, in_channels: int, side: int, spatial_dims: int = 3) -> None:
        import torch
        from monai.losses import DiceCELoss

        side = max(int(side), 32)
        self.probe_patch = [side] * spatial_dims
        saved: dict[int, int] = {}
        parameters = {p.untyped_storage().data_ptr() for p in network.parameters()}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters:  # convolutions save their weights too: not activations
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        network.train()
        inputs = torch.zeros(1, in_channels, *self.probe_patch)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits = network(inputs)
            loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, torch.zeros(1, 1, *self.probe_patch))
        del loss, logits
        self.bytes_per_voxel = sum(saved.values()) / float(np.prod(self.probe_patch))
        self.parameter_bytes = sum(p.numel() * p.element_size() for p in network.parameters())

    def estimate_mb(self, patch: Sequence[int], patches: int = 1, amp: bool = False) -> float:
        """Memory (MB) of a training step on ``patches`` patches of ``patch`` voxels."""
        activations = self.bytes_per_voxel * float(np.prod(patch)) * patches
        if amp:
            activations *= self.AMP_ACTIVATION_FACTOR
        return (activations + 4 * self.parameter_bytes) / 2**20

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe_patch": self.probe_patch,
            "bytes_per_voxel": self.bytes_per_voxel,
            "parameter_bytes": self.parameter_bytes,
        }


def run_amp(setting: bool | str, device) -> bool:
    """Whether a run on ``device`` uses AMP: ``"auto"`` means on CUDA only; true on a CPU is an error."""
    amp = device.type == "cuda" if setting == "auto" else bool(setting)
    if amp and device.type != "cuda":
        raise MedSegNASError("AMP needs a CUDA device; set amp to auto or false for a CPU run")
    return amp


def mean_over_ranks(metrics: dict[str, Any], keys: Sequence[str], world: int, device) -> None:
    """Replace ``metrics[key]`` (where present) by its mean over all ranks."""
    import torch

    from .distributed import all_reduce_sum

    present = [key for key in keys if key in metrics]
    values = torch.tensor([metrics[key] for key in present], dtype=torch.float64, device=device)
    for key, value in zip(present, (all_reduce_sum(values) / world).tolist(), strict=True):
        metrics[key] = value


# --------------------------------------------------------------------------------------------
# Resolving a configuration
# --------------------------------------------------------------------------------------------


def validated_labels(dataset, say: Callable[[str], None]) -> list:
    """Check every case of ``dataset`` and return the classes a network predicts (``LabelInfo`` list).

    Raises:
        DatasetError: a declared class has no voxel in any checked label map (or what
            :func:`~MedSegNASLib.data.datasets.validate_dataset` finds).
    """
    from ..data.datasets import validate_dataset
    from .pipeline import label_table

    say(f"checking dataset {dataset.path} ({len(dataset.cases)} training cases)")
    report = validate_dataset(dataset)
    if dataset.labels_declared:
        absent = [info for info in dataset.foreground_labels if info.value not in report.label_counts]
        if absent:
            names = ", ".join(f"{info.value} '{info.name}'" for info in absent)
            raise DatasetError(
                f"{dataset.path.name} declares class(es) {names} but no label map of the {report.checked_cases} "
                "checked case(s) contains a voxel of them; remove them from 'labels' or fix the label maps"
            )
    return label_table(dataset, list(report.label_counts))


def dataset_record(
    dataset, labels: Sequence, split: Mapping[str, list[str]], absent: Sequence
) -> dict[str, Any]:
    """The ``dataset`` part of a resolved configuration: where it is, its classes and the case split."""
    return {
        "path": str(dataset.path),
        "root": str(dataset.root),
        "name": dataset.name,
        "modalities": list(dataset.modalities),
        "labels": [{"value": i.value, "name": i.name, "color": list(i.color)} for i in labels],
        "num_classes": len(labels),
        "split": dict(split),
        "classes_absent_from_training": [info.name for info in absent],
    }


def measure_training_cases(dataset, training: Sequence, labels: Sequence, config, say: Callable[[str], None]):
    """Statistics of the ``training`` cases and the preprocessing they call for.

    ``config`` is a :class:`~MedSegNASLib.nas.config.PipelineConfig`: its ``spacing``,
    ``intensity`` and ``orientation`` win over the automatic ones.

    Returns:
        ``(stats, spec, absent)``: :class:`~MedSegNASLib.nas.pipeline.DatasetStatistics`, the
        :class:`~MedSegNASLib.data.preprocessing.PreprocessingSpec` (patch size still the
        configured or maximal one) and the foreground ``labels`` without a voxel in ``training``.
    """
    from .pipeline import auto_preprocessing, collect_statistics, is_ct

    ct_auto = config.intensity is None and all(is_ct(m) for m in dataset.modalities)
    say(f"measuring {len(training)} training case(s): spacing, sizes, label and intensity statistics")
    stats = collect_statistics(
        dataset, training, label_values=[info.value for info in labels], intensities=ct_auto
    )
    absent = [info for info in labels if info.value and stats.label_voxels.get(info.value, 0) == 0]
    spec = auto_preprocessing(
        dataset,
        stats,
        spacing=config.spacing,
        intensity=config.intensity,
        orientation=config.orientation,
        patch_size=config.patch_size or config.max_patch_size,
    )
    return stats, spec, absent


def plan_patch_size(
    config,
    spec,
    stats,
    memory,
    divisor: int,
    *,
    device_type: str,
    say: Callable[[str], None],
    smallest: int = 1,
    network_name: str = "network",
) -> tuple[list[int], dict[str, Any]]:
    """Choose the patch size (unless ``config.patch_size`` is set) and record it in ``config`` and ``spec``.

    The patch is the largest multiple of ``divisor`` within the resampled median image, the
    configured maximum and the memory budget (``config.memory_budget_mb``, or
    :func:`default_memory_budget_mb`), each side at least ``smallest``; ``memory`` has
    ``estimate_mb(patch, patches, amp)`` and ``to_dict()``.

    Returns:
        ``(median_shape, memory)``: the resampled median image size (voxels) and the ``memory``
        part of the resolved configuration (budget and estimate in MB, AMP, patches per step).

    Raises:
        MedSegNASError: even the smallest patch does not fit the budget.
    """
    from .pipeline import choose_patch_size, resampled_median_shape

    amp = device_type == "cuda" if config.amp == "auto" else bool(config.amp)
    budget = float(config.memory_budget_mb or default_memory_budget_mb(device_type))
    patches = config.batch_size * config.crops_per_case
    median_shape = resampled_median_shape(stats, spec.spacing)
    if config.patch_size is None:
        patch = choose_patch_size(
            divisor,
            [max(int(s), smallest) for s in median_shape],
            [max(int(s), smallest) for s in config.max_patch_size],
            budget,
            lambda p: memory.estimate_mb(p, patches, amp),
        )
        if min(patch) < smallest:
            raise MedSegNASError(
                f"the memory budget of {budget:.0f} MB is too small for the smallest {network_name} patch "
                f"({smallest}^3, estimated {memory.estimate_mb([smallest] * 3, patches, amp):.0f} MB); raise "
                "memory_budget_mb or lower batch_size / crops_per_case"
            )
    else:
        patch = list(config.patch_size)
    spec.patch_size = patch
    config.patch_size = patch
    estimate = memory.estimate_mb(patch, patches, amp)
    if estimate > budget:
        say(
            f"warning: estimated memory {estimate:.0f} MB exceeds the budget of {budget:.0f} MB for patch {patch}"
        )
    return median_shape, {
        "budget_mb": round(budget, 1),
        "estimate_mb": round(estimate, 1),
        "amp": amp,
        "patches_per_step": patches,
        "model": memory.to_dict(),
    }


# --------------------------------------------------------------------------------------------
# The job body
# --------------------------------------------------------------------------------------------


def check_checkpoint(
    checkpoint: Mapping[str, Any],
    resolved: Mapping[str, Any],
    world: int,
    checkpoint_format: str,
    version: int,
    kind: str,
) -> None:
    """Raise :class:`JobError` unless ``checkpoint`` continues this run exactly.

    ``kind`` names the job in the message (``"search"``, ``"training"``).
    """
    if checkpoint.get("format") != checkpoint_format or checkpoint.get("version") != version:
        raise JobError(
            f"checkpoint is not a version {version} {kind} checkpoint "
            f"(format {checkpoint.get('format')!r}, version {checkpoint.get('version')!r}); start a new run"
        )
    if checkpoint.get("resolved") != json.loads(json.dumps(resolved)):
        raise JobError(
            "checkpoint was written with another configuration than job.json records; start a new run"
        )
    if checkpoint.get("world_size") != world:
        raise JobError(
            f"this run was started with {checkpoint.get('world_size')} process(es); resume it with the same "
            f"number (now {world}) to continue exactly"
        )


def cases_of_split(dataset, split: Mapping[str, list[str]], roles: Sequence[str]) -> list[list]:
    """The dataset's cases named in ``split[role]`` for each of ``roles``.

    Raises:
        DatasetError: a case of the run is no longer in the dataset.
    """
    by_name = {case.name: case for case in [*dataset.cases, *dataset.validation]}
    try:
        return [[by_name[name] for name in split[role]] for role in roles]
    except KeyError as exc:
        raise DatasetError(
            f"case {exc} of this run is no longer in {dataset.path}; resume with the same dataset"
        ) from None


def open_tensorboard(artifacts, global_step: int, resuming: bool):
    """A TensorBoard writer in ``artifacts/tensorboard`` (None without artifacts); resuming drops later events."""
    if artifacts is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(artifacts / "tensorboard"), purge_step=global_step if resuming else None)


def stop_check(ctx, device, save: Callable[[], None]) -> Callable[[], None]:
    """A function to call between steps: when any rank was asked to stop, checkpoint and stop all ranks."""
    from .distributed import any_rank

    def stop_if_requested() -> None:
        if any_rank(ctx.stop_requested, device):
            save()
            if not ctx.stop_requested:
                ctx.request_stop("stop requested on another rank")
            ctx.raise_if_stop_requested()

    return stop_if_requested


def score_validation(
    network, cases, spec, config, class_names: Sequence[str], device, amp: bool
) -> tuple[float, dict[str, float | None], Any]:
    """Sliding-window validation Dice of ``network`` on the preprocessed ``cases`` (all ranks).

    ``spec`` gives the window (its ``patch_size``), ``config`` (a
    :class:`~MedSegNASLib.nas.config.PipelineConfig`) the window batch and overlap.

    Returns:
        ``(mean, per_class, counts)``: as :func:`dice_by_class`, and the number of cases that
        scored each foreground class.
    """
    from .pipeline import validation_dice

    dice, counts = validation_dice(
        network,
        cases,
        num_classes=len(class_names) + 1,
        patch_size=spec.patch_size,
        device=device,
        amp=amp,
        sw_batch_size=config.val_sw_batch_size,
        overlap=config.val_overlap,
    )
    return (*dice_by_class(dice, class_names), counts)


def dice_by_class(dice, class_names: Sequence[str]) -> tuple[float, dict[str, float | None]]:
    """Mean foreground Dice (NaN when none could be computed) and Dice by class name (None: not computed)."""
    mean = float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan")
    per_class = {
        name: (None if not np.isfinite(v) else round(float(v), 6))
        for name, v in zip(class_names, dice, strict=True)
    }
    return mean, per_class


def log_validation(
    ctx, writer, epoch: int, per_class: Mapping[str, float | None], mean: float, step: int, note: str
) -> None:
    """Say a validation's Dice in the job log (``note`` appended) and write it to TensorBoard."""
    text = ", ".join(f"{n} {v:.3f}" if v is not None else f"{n} -" for n, v in per_class.items())
    ctx.log(f"epoch {epoch + 1}: validation Dice {text} (mean {mean:.3f})" + note)
    if writer is not None:
        for name, value in per_class.items():
            if value is not None:
                writer.add_scalar(f"val_dice/{name}", value, step)
        if not math.isnan(mean):
            writer.add_scalar("val_dice/mean", mean, step)
