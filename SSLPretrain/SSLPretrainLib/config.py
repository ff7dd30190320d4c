"""Pretraining settings: :class:`PretrainConfig`, the ``tiny``/``small``/``full`` presets and config files.

A run's settings are a preset overridden by a JSON or YAML file (``--config FILE``, read by
:func:`MedSegNASLib.nas.commands.load_config_file`), e.g.::

    {"steps": 500, "roi": [64, 64, 64], "loss_weights": {"contrastive": 0.5}}

Unknown keys are refused (a typo must not silently do nothing). The resolved settings are
recorded in the run's ``job.json`` and in every checkpoint; a resumed run must use the same ones.

Presets (one process; with ``torchrun`` each process takes ``batch_size`` crops per step):

=======  ============  =======  =====  ======  ==================================================
preset   feature_size  roi      batch  steps   for
=======  ============  =======  =====  ======  ==================================================
tiny     12            32^3     2      200     CPU demos and tests on the phantom (minutes)
small    24            64^3     2      5000    a single 8-12 GB GPU (64^3 avoids the reported OOM)
full     48            96^3     2      100000  the published setting (Tang et al.: 96^3, AdamW
                                               lr 4e-4, wd 0.1, warm-up cosine, 1.5 x 1.5 x 2 mm)
=======  ============  =======  =====  ======  ==================================================
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from MedSegNASLib.errors import MedSegNASError

#: Names of the three loss terms, in the order they are reported.
LOSS_NAMES: tuple[str, ...] = ("rotation", "contrastive", "reconstruction")
MASK_FILLS: tuple[str, ...] = ("noise", "swap", "mixed")
MODALITIES: tuple[str, ...] = ("auto", "CT", "MR")
AMP_DTYPES: tuple[str, ...] = ("float16", "bfloat16")


@dataclass
class PretrainConfig:
    """Everything that decides what a pretraining run computes (the device does not).

    Model:
        feature_size: Swin UNETR embedding size (divisible by 12); the bottleneck has
            ``16 * feature_size`` channels.
        projection_dim: size of the contrastive projection; ``None`` derives it as two thirds of
            the bottleneck channels (512 for feature size 48, as in the reference).
        use_checkpoint: gradient checkpointing in the Swin stages (less memory, ~30% slower).
    Data:
        roi: crop size in voxels ``(I, J, K)``; each side divisible by 32, ``I == J`` (the
            rotation task turns the I-J plane).
        batch_size: crops per process and step; each crop gives two views.
        crops_per_volume: consecutive crops drawn from one volume before the next is used.
        foreground_ratio: probability that a crop is centred on a foreground voxel.
        foreground_hu: CT voxels above this value (HU) are foreground; other modalities: voxels
            above the volume's minimum.
        modality: ``CT`` (window ``ct_window`` to [0, 1]), ``MR`` (z-score of non-zero voxels)
            or ``auto`` (the dataset's modality; for a plain folder CT when the darkest voxel
            is below -500).
        ct_window: HU range ``[a_min, a_max]`` mapped to [0, 1] (clipped).
        spacing: resample to this voxel size (mm, along R, A, S after reorienting to RAS) or
            ``None`` to keep each image's own.
        cache_volumes: preprocessed volumes each loader process keeps in memory.
        num_workers: background loader processes (0: load in the training process).
    Pretext tasks:
        mask_max_fraction: at most this fraction of a crop's voxels is masked.
        mask_max_block_fraction: a masked block spans at most this fraction of each axis.
        mask_fill: ``noise``, ``swap`` (the same voxels of another sample) or ``mixed``
            (each block picks one).
        temperature: NT-Xent temperature.
        loss_weights: weight of each loss term (``rotation``, ``contrastive``, ``reconstruction``).
    Optimisation:
        steps, warmup_steps, lr, end_lr, weight_decay, grad_clip (max gradient L2 norm, 0: off).
        amp: mixed precision on CUDA (ignored on CPU); amp_dtype ``float16`` (with a gradient
            scaler) or ``bfloat16``.
        seed: decides initial weights, crops and masks; a run is reproducible from it.
        deterministic: use PyTorch's deterministic algorithms; ``None`` (default): on CPU only,
            where they cost little and make a resumed run bit-identical to an uninterrupted one
            (multi-threaded CPU kernels otherwise add gradients in a varying order); ``true``
            also on GPU (slower).
    Reporting:
        log_every: steps between progress events (and TensorBoard points).
        checkpoint_every: steps between checkpoints (also written when stopped and at the end).
        reconstructions: crops whose reconstruction is saved as NIfTI (0: none).
        reconstruction_every: steps between reconstruction snapshots (0: only at the end).
    """

    feature_size: int = 48
    projection_dim: int | None = None
    use_checkpoint: bool = False
    roi: list[int] = field(default_factory=lambda: [96, 96, 96])
    batch_size: int = 2
    crops_per_volume: int = 2
    foreground_ratio: float = 0.9
    foreground_hu: float = -500.0
    modality: str = "auto"
    ct_window: list[float] = field(default_factory=lambda: [-1000.0, 1000.0])
    spacing: list[float] | None = None
    cache_volumes: int = 8
    num_workers: int = 0
    mask_max_fraction: float = 0.3
    mask_max_block_fraction: float = 0.25
    mask_fill: str = "mixed"
    temperature: float = 0.5
    loss_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_NAMES, 1.0))
    steps: int = 100000
    warmup_steps: int = 500
    lr: float = 4e-4
    end_lr: float = 0.0
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    amp: bool = True
    amp_dtype: str = "float16"
    seed: int = 0
    deterministic: bool | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    reconstructions: int = 2
    reconstruction_every: int = 0

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise MedSegNASError("invalid pretraining settings: " + "; ".join(problems))
        self.roi = [int(side) for side in self.roi]
        self.ct_window = [float(v) for v in self.ct_window]
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]
        self.loss_weights = {name: float(self.loss_weights.get(name, 1.0)) for name in LOSS_NAMES}

    def problems(self) -> list[str]:
        """Every invalid setting, each as a short sentence (empty when all are valid)."""
        found: list[str] = []

        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                found.append(f"{name} must be an integer >= {minimum}, got {value!r}")

        def fraction(name: str, low: float, high: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                found.append(f"{name} must be a number in [{low}, {high}], got {value!r}")

        positive_int("feature_size")
        if isinstance(self.feature_size, int) and self.feature_size % 12:
            found.append(f"feature_size must be divisible by 12 (Swin UNETR), got {self.feature_size}")
        if self.projection_dim is not None:
            positive_int("projection_dim")
        roi = self.roi
        if not (isinstance(roi, list | tuple) and len(roi) == 3 and all(_is_int(s) and s > 0 for s in roi)):
            found.append(f"roi must be three positive integers, got {roi!r}")
        else:
            if any(int(s) % 32 for s in roi):
                found.append(f"every roi side must be divisible by 32 (Swin UNETR), got {list(roi)}")
            if int(roi[0]) != int(roi[1]):
                found.append(
                    f"roi[0] and roi[1] must be equal (the rotation task turns that plane), got {list(roi)}"
                )
        for name in ("batch_size", "crops_per_volume", "steps", "log_every", "checkpoint_every"):
            positive_int(name)
        for name in (
            "warmup_steps",
            "cache_volumes",
            "num_workers",
            "reconstructions",
            "reconstruction_every",
            "seed",
        ):
            positive_int(name, 0)
        fraction("foreground_ratio", 0.0, 1.0)
        fraction("mask_max_fraction", 0.0, 1.0)
        fraction("mask_max_block_fraction", 0.0, 1.0)
        if self.mask_fill not in MASK_FILLS:
            found.append(f"mask_fill must be one of {', '.join(MASK_FILLS)}, got {self.mask_fill!r}")
        if self.modality not in MODALITIES:
            found.append(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.amp_dtype not in AMP_DTYPES:
            found.append(f"amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}")
        window = self.ct_window
        if not (isinstance(window, list | tuple) and len(window) == 2 and window[1] > window[0]):
            found.append(f"ct_window must be [a_min, a_max] with a_max > a_min, got {window!r}")
        if self.spacing is not None and not (
            isinstance(self.spacing, list | tuple) and len(self.spacing) == 3 and min(self.spacing) > 0
        ):
            found.append(f"spacing must be null or three positive numbers (mm), got {self.spacing!r}")
        if self.deterministic not in (None, True, False):
            found.append(f"deterministic must be true, false or null, got {self.deterministic!r}")
        for name in ("temperature", "lr"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                found.append(f"{name} must be a positive number, got {value!r}")
        for name in ("end_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                found.append(f"{name} must be a number >= 0, got {value!r}")
        weights = self.loss_weights
        if not isinstance(weights, dict):
            found.append(f"loss_weights must be an object such as {{'rotation': 1.0}}, got {weights!r}")
        else:
            unknown = sorted(set(weights) - set(LOSS_NAMES))
            if unknown:
                found.append(f"loss_weights has unknown term(s) {unknown}; the terms are {list(LOSS_NAMES)}")
            if any(not isinstance(v, int | float) or v < 0 for v in weights.values()):
                found.append(f"loss_weights must be numbers >= 0, got {weights}")
            elif weights and not any(weights.get(name, 1.0) > 0 for name in LOSS_NAMES):
                found.append("at least one loss weight must be > 0")
        return found

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the Swin encoder's last stage: ``16 * feature_size`` (768 for 48)."""
        return 16 * self.feature_size

    @property
    def resolved_projection_dim(self) -> int:
        return self.projection_dim or (2 * self.bottleneck_channels) // 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Build from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedSegNASError(
                f"unknown pretraining setting(s) {', '.join(unknown)}; valid settings: {', '.join(sorted(known))}"
            )
        return cls(**copy.deepcopy(data))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Preset overrides of the :class:`PretrainConfig` defaults (which are the published setting).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "feature_size": 12,
        "roi": [32, 32, 32],
        "batch_size": 2,
        "steps": 200,
        "warmup_steps": 10,
        "lr": 2e-4,
        "log_every": 1,
        "checkpoint_every": 20,
        "cache_volumes": 16,
    },
    "small": {
        "feature_size": 24,
        "roi": [64, 64, 64],
        "batch_size": 2,
        "steps": 5000,
        "warmup_steps": 100,
        "log_every": 10,
        "checkpoint_every": 250,
        "num_workers": 2,
    },
    "full": {
        "feature_size": 48,
        "roi": [96, 96, 96],
        "batch_size": 2,
        "steps": 100000,
        "warmup_steps": 500,
        "spacing": [1.5, 1.5, 2.0],
        "log_every": 20,
        "checkpoint_every": 1000,
        "reconstruction_every": 10000,
        "num_workers": 4,
    },
}


def resolve_config(preset: str = "tiny", overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """The preset's settings with ``overrides`` applied (``loss_weights`` merges term by term)."""
    if preset not in PRESETS:
        raise MedSegNASError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    data = copy.deepcopy(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key == "loss_weights" and isinstance(value, dict):
            data["loss_weights"] = {**dict.fromkeys(LOSS_NAMES, 1.0), **data.get("loss_weights", {}), **value}
        else:
            data[key] = value
    return PretrainConfig.from_dict(data)
