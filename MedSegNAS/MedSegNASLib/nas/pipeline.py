"""Data pipeline of search and training: auto-configuration, MONAI transforms, loaders, validation Dice.

From dataset statistics to a :class:`~MedSegNASLib.data.preprocessing.PreprocessingSpec`
(:func:`auto_preprocessing`, :func:`choose_patch_size`), then the transforms that feed the networks:

* **preprocessing** (deterministic, cached once per run): read the case with MedSegNAS' reader
  (same geometry as everywhere in the project), reorient, resample to the target spacing,
  normalise intensities, pad to the patch size and index the voxels of every class;
* **training** (random, re-seeded per sample): class-balanced crops
  (:class:`monai.transforms.RandCropByLabelClassesd`, equal weight for every class including the
  background) and light augmentation (small rotations and scaling, intensity scale and shift; no
  flips, which would swap left and right organs);
* **validation**: whole resampled volumes, sliding-window inference, Dice per class with
  :class:`monai.metrics.DiceMetric`, summed over ranks.

Auto-configuration choices (each can be overridden in the search config):

* **spacing**: the median voxel size along R, A and S over the training cases. When the coarsest
  median axis is more than 3 times the finest (thick-slice data), that axis gets the 10th
  percentile of its spacings instead (nnU-Net's rule), so thin-slice cases are not thrown away
  by heavy downsampling.
* **intensity**: CT (every channel named CT) is clipped to the 0.5 and 99.5 percentiles of the
  voxels inside labelled structures and scaled to [0, 1]. The published DiNTS pancreas window
  [-87, 199] HU is such a window for pancreas CT; computing it from the dataset keeps e.g.
  contrast-enhanced kidneys or bone from being clipped when they are labelled. Everything else
  (MR, PET, mixed channels) gets a per-channel z-score over non-zero voxels.
* **patch size**: the largest multiple of the network's divisor that is at most the median
  resampled image size and the preset's maximum, shrunk (largest side first) until the memory
  estimate fits the budget.

Sample randomness never comes from global or per-worker generator state: sample ``i`` of epoch
``e`` of stream ``s`` is transformed with a generator seeded from ``(seed, s, e, i)``
(:class:`SeededPatchDataset`) and drawn in an order seeded the same way
(:class:`~MedSegNASLib.nas.distributed.EpochSampler`). A run restarted from a checkpoint taken
part-way through an epoch therefore sees exactly the patches it would have seen.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.datasets import Dataset, DatasetCase
from ..data.preprocessing import IntensitySpec, PreprocessingSpec
from ..data.volume import LabelInfo
from ..errors import DatasetError, MedSegNASError

__all__ = [
    "DatasetStatistics",
    "LoadCased",
    "SeededPatchDataset",
    "auto_preprocessing",
    "case_records",
    "choose_patch_size",
    "collect_statistics",
    "is_ct",
    "make_loader",
    "preprocessing_transforms",
    "target_spacing",
    "training_transforms",
    "validation_dice",
]

#: Anisotropy above which the coarse axis gets a low percentile of its spacings (nnU-Net's 3).
ANISOTROPY_RATIO = 3.0
#: Foreground intensity percentiles of the automatic CT window.
CT_WINDOW_PERCENTILES = (0.5, 99.5)
#: Foreground voxels sampled per case for intensity statistics (evenly spaced, deterministic).
INTENSITY_SAMPLES_PER_CASE = 20_000
#: At most this many voxel indices are kept per class and case for class-balanced cropping.
MAX_INDICES_PER_CLASS = 100_000

_CT_NAME = re.compile(r"(^|[^a-z])ct([^a-z]|$)", re.IGNORECASE)


def is_ct(modality: str) -> bool:
    """True for channel names such as ``CT``, ``ct``, ``CT venous``; False for ``MRI``, ``T2``, ``PET``."""
    return bool(_CT_NAME.search(modality))


# --------------------------------------------------------------------------------------------
# Dataset statistics and auto-configuration
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetStatistics:
    """What auto-configuration needs to know about the training cases.

    Attributes:
        case_names: the cases measured.
        spacings: voxel size (mm) of each case along R, A, S (after reorientation), ``(n, 3)``.
        shapes: voxels of each case along R, A, S, ``(n, 3)``.
        label_voxels: label value -> voxels with that value over all cases (0 when absent).
        foreground: intensity statistics of the voxels inside labels, pooled over channels and
            cases (``p0.5``, ``p99.5``, ``mean``, ``std``, ``samples``); empty when not measured.
    """

    case_names: list[str]
    spacings: np.ndarray
    shapes: np.ndarray
    label_voxels: dict[int, int] = field(default_factory=dict)
    foreground: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cases": len(self.case_names),
            "median_spacing": [round(float(v), 4) for v in np.median(self.spacings, axis=0)],
            "median_shape": [int(v) for v in np.median(self.shapes, axis=0)],
            "label_voxels": {str(k): int(v) for k, v in sorted(self.label_voxels.items())},
            "foreground": {k: float(v) for k, v in self.foreground.items()},
        }


def _ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis i, j, k: the RAS axis it is closest to (what ``Orientationd`` will make it)."""
    from nibabel.orientations import io_orientation

    return io_orientation(np.asarray(affine)).astype(int)[:, 0]


def collect_statistics(
    dataset: Dataset,
    cases: Sequence[DatasetCase],
    *,
    label_values: Sequence[int],
    intensities: bool = True,
    on_case: Callable[[int, int], None] | None = None,
) -> DatasetStatistics:
    """Measure spacing, shape, label voxel counts and (optionally) foreground intensities of ``cases``.

    Args:
        dataset: the dataset the cases belong to (for its channel layout).
        cases: labelled cases (usually the training cases of the run).
        label_values: the values to count in the label maps.
        intensities: also read the images and sample the intensities of labelled voxels.
        on_case: called as ``on_case(done, total)`` after each case.
    """
    from ..data.io import read_geometry, read_volume, read_volumes

    spacings, shapes, names = [], [], []
    voxels = dict.fromkeys((int(v) for v in label_values), 0)
    samples: list[np.ndarray] = []
    packed = dataset.num_channels > 1
    for done, case in enumerate(cases, start=1):
        if case.label is None:
            raise DatasetError(f"case '{case.name}' has no label file; a search needs labelled cases")
        shape, affine = read_geometry(case.label)
        axes = _ras_axes(affine)
        spacing_ijk = np.linalg.norm(affine[:3, :3], axis=0)
        spacing, size = np.zeros(3), np.zeros(3, dtype=int)
        spacing[axes], size[axes] = spacing_ijk, shape
        spacings.append(spacing)
        shapes.append(size)
        names.append(case.name)
        label = read_volume(case.label).array[0]
        counts = np.bincount(label.reshape(-1).astype(np.int64), minlength=max(voxels) + 1)
        for value in voxels:
            voxels[value] += int(counts[value]) if value < len(counts) else 0
        if intensities:
            if len(case.images) == 1:
                image = read_volume(case.images[0], dtype=np.float32, fourth_axis_channels=packed)
            else:
                image = read_volumes(case.images, dtype=np.float32)
            inside = label > 0
            values = image.array[:, inside].reshape(-1)
            if values.size > INTENSITY_SAMPLES_PER_CASE:
                values = values[np.linspace(0, values.size - 1, INTENSITY_SAMPLES_PER_CASE).astype(np.int64)]
            samples.append(values)
        if on_case is not None:
            on_case(done, len(cases))
    foreground: dict[str, float] = {}
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    if pooled.size:
        low, high = np.percentile(pooled, CT_WINDOW_PERCENTILES)
        foreground = {
            "p0.5": float(low),
            "p99.5": float(high),
            "mean": float(pooled.mean()),
            "std": float(pooled.std()),
            "samples": float(pooled.size),
        }
    return DatasetStatistics(names, np.array(spacings), np.array(shapes), voxels, foreground)


def target_spacing(stats: DatasetStatistics, anisotropy_ratio: float = ANISOTROPY_RATIO) -> list[float]:
    """Median spacing along R, A, S; a thick-slice axis gets its 10th percentile instead (see module doc)."""
    spacing = np.median(stats.spacings, axis=0)
    coarse = int(np.argmax(spacing))
    if spacing[coarse] > anisotropy_ratio * spacing.min():
        spacing[coarse] = np.percentile(stats.spacings[:, coarse], 10)
    return [round(float(s), 4) for s in spacing]


def auto_intensity(modalities: Sequence[str], stats: DatasetStatistics | None) -> IntensitySpec:
    """CT window from the labelled voxels' 0.5/99.5 percentiles when every channel is CT, else z-score."""
    if modalities and all(is_ct(m) for m in modalities):
        if stats is None or not stats.foreground:
            return IntensitySpec(kind="ct_window")  # the published window [-87, 199]
        low, high = np.floor(stats.foreground["p0.5"]), np.ceil(stats.foreground["p99.5"])
        if high <= low:
            high = low + 1.0
        return IntensitySpec(kind="ct_window", a_min=float(low), a_max=float(high))
    return IntensitySpec(kind="zscore")


def resampled_median_shape(stats: DatasetStatistics, spacing: Sequence[float]) -> list[int]:
    """Median image size (voxels along R, A, S) after resampling to ``spacing``."""
    sizes = stats.shapes * stats.spacings / np.asarray(spacing, dtype=np.float64)
    return [int(round(v)) for v in np.median(sizes, axis=0)]


def choose_patch_size(
    divisor: int,
    median_shape: Sequence[int],
    max_patch: Sequence[int],
    memory_budget_mb: float,
    estimate_mb: Callable[[Sequence[int]], float],
) -> list[int]:
    """Largest patch that is a multiple of ``divisor``, fits the images and the memory budget.

    Each side starts at ``min(max_patch, median_shape)`` rounded down to a multiple of
    ``divisor`` (at least ``divisor``); then the largest side is reduced by ``divisor`` until
    ``estimate_mb(patch) <= memory_budget_mb``.

    Raises:
        MedSegNASError: even a ``divisor``-cubed patch does not fit the budget.
    """
    patch = [
        max(divisor, (min(int(m), int(s)) // divisor) * divisor)
        for m, s in zip(max_patch, median_shape, strict=True)
    ]
    while estimate_mb(patch) > memory_budget_mb:
        largest = int(np.argmax(patch))
        if patch[largest] <= divisor:
            raise MedSegNASError(
                f"the memory budget of {memory_budget_mb:.0f} MB is too small for the smallest patch "
                f"{patch} (estimated {estimate_mb(patch):.0f} MB); raise memory_budget_mb, use a smaller "
                "search space or batch size"
            )
        patch[largest] -= divisor
    return patch


def auto_preprocessing(
    dataset: Dataset,
    stats: DatasetStatistics,
    *,
    spacing: Sequence[float] | None = None,
    intensity: dict[str, Any] | None = None,
    orientation: str = "RAS",
    patch_size: Sequence[int] = (96, 96, 96),
) -> PreprocessingSpec:
    """The preprocessing spec for ``dataset``: given values win, the rest from ``stats``."""
    return PreprocessingSpec(
        channels=list(dataset.modalities),
        spacing=list(spacing) if spacing is not None else target_spacing(stats),
        orientation=orientation,
        intensity=IntensitySpec(**intensity) if intensity else auto_intensity(dataset.modalities, stats),
        patch_size=list(patch_size),
    )


def label_table(dataset: Dataset, found_values: Sequence[int]) -> list[LabelInfo]:
    """The classes a network predicts: the declared labels, or the values found when none are declared."""
    from ..data.datasets import label_color

    if dataset.labels_declared:
        return list(dataset.labels)
    values = sorted({0, *(int(v) for v in found_values)})
    return [LabelInfo(v, "background" if v == 0 else f"label {v}", label_color("", v)) for v in values]


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def case_records(cases: Sequence[DatasetCase]) -> list[dict[str, Any]]:
    """MONAI data dicts: ``{"image": [paths], "label": path, "name": case name}``."""
    return [
        {
            "image": [str(p) for p in case.images],
            "label": None if case.label is None else str(case.label),
            "name": case.name,
        }
        for case in cases
    ]


class LoadCased:
    """Read a case's image channels and label with MedSegNAS' reader into MONAI ``MetaTensor``\\ s.

    ``image`` becomes float32 ``(C, I, J, K)`` and ``label`` float32 ``(1, I, J, K)``, each with
    its IJK -> RAS affine (MONAI's convention), so ``Orientationd`` and ``Spacingd`` work as on
    files loaded by ``LoadImaged``. A single image file with several channels (MSD 4D) is read
    with its 4th axis as channels.
    """

    def __init__(self, num_channels: int = 1) -> None:
        self.num_channels = num_channels

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        import torch
        from monai.data import MetaTensor

        from ..data.io import read_volume, read_volumes

        out = dict(data)
        paths = list(data["image"])
        if len(paths) == 1:
            image = read_volume(paths[0], dtype=np.float32, fourth_axis_channels=self.num_channels > 1)
        else:
            image = read_volumes(paths, dtype=np.float32)
        meta = {"filename_or_obj": paths[0]}
        out["image"] = MetaTensor(
            torch.from_numpy(np.ascontiguousarray(image.array)),
            affine=torch.from_numpy(image.affine),
            meta=meta,
        )
        if data.get("label") is not None:
            label = read_volume(data["label"], dtype=np.float32)
            out["label"] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(label.array)),
                affine=torch.from_numpy(label.affine),
                meta={"filename_or_obj": data["label"]},
            )
        return out


def _label_mapping(label_values: Sequence[int]) -> list:
    """``MapLabelValued`` to 0..n-1 when the label values are not already consecutive."""
    from monai.transforms import MapLabelValued

    values = [int(v) for v in label_values]
    if values == list(range(len(values))):
        return []
    return [MapLabelValued("label", orig_labels=values, target_labels=list(range(len(values))))]


def preprocessing_transforms(spec: PreprocessingSpec, label_values: Sequence[int], *, for_training: bool):
    """The deterministic part: load, reorient, resample, normalise; for training also pad + class indices.

    Returns:
        a :class:`monai.transforms.Compose`. Output ``image`` (C, X, Y, Z) float32 and ``label``
        (1, X, Y, Z) with classes 0..n-1 (values mapped in the order of ``label_values``).
    """
    from monai.transforms import ClassesToIndicesd, Compose, SpatialPadd

    steps: list = [LoadCased(spec.num_channels)]
    with warnings.catch_warnings():
        # MONAI 1.6 announces a change of Orientationd's default axis labels; RAS MetaTensors are unaffected.
        warnings.filterwarnings("ignore", message=".*Orientationd.__init__:labels", category=FutureWarning)
        steps += spec.geometry_transforms(["image", "label"], ["bilinear", "nearest"])
    steps.append(spec.intensity_transform("image"))
    steps += _label_mapping(label_values)
    if for_training:
        steps.append(SpatialPadd(["image", "label"], spatial_size=spec.patch_size))
        steps.append(
            ClassesToIndicesd(
                "label", num_classes=len(label_values), max_samples_per_class=MAX_INDICES_PER_CLASS
            )
        )
    return Compose(steps)


def training_transforms(
    spec: PreprocessingSpec, num_classes: int, *, crops_per_case: int, augment: bool, strength: float = 1.0
):
    """The random part of training: class-balanced crops, then light augmentation.

    ``strength`` scales the augmentation: the probabilities (capped at 1) and the ranges of the
    random affine (rotation up to 15 degrees and scaling by 10% at 1) and intensity transforms;
    0 is the same as ``augment=False``.

    Each call returns a list of ``crops_per_case`` dicts with plain tensors ``image`` (C, *patch)
    and ``label`` (1, *patch).
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAffined,
        RandCropByLabelClassesd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SelectItemsd,
    )

    steps: list = [
        RandCropByLabelClassesd(
            ["image", "label"],
            label_key="label",
            spatial_size=spec.patch_size,
            num_classes=num_classes,
            num_samples=crops_per_case,
            indices_key="label_cls_indices",
            warn=False,
        ),
        SelectItemsd(["image", "label"]),
    ]
    if augment and strength > 0:
        s = float(strength)
        steps += [
            RandAffined(
                ["image", "label"],
                prob=min(1.0, 0.2 * s),
                rotate_range=(0.26 * s,) * 3,  # up to 15 degrees at strength 1
                scale_range=(0.1 * s,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd("image", factors=0.1 * s, prob=min(1.0, 0.5 * s)),
            RandShiftIntensityd("image", offsets=0.1 * s, prob=min(1.0, 0.5 * s)),
        ]
    steps.append(EnsureTyped(["image", "label"], track_meta=False))
    return Compose(steps)


class SeededPatchDataset:
    """Training samples: a preprocessed case through the random transforms, seeded per sample.

    Sample ``index`` in epoch ``epoch`` is transformed after ``random.set_random_state(seed=
    derive_seed(seed, stream, epoch, index))``, so the patches of a sample do not depend on which
    worker process makes them, in which order, or whether the run was resumed.

    Args:
        cases: the preprocessed cases (e.g. a :class:`monai.data.CacheDataset`), indexable.
        random: the random transforms (:func:`training_transforms`).
        seed, stream: run seed and stream id (weights / architecture).
    """

    def __init__(self, cases, random, *, seed: int, stream: int) -> None:
        self.cases = cases
        self.random = random
        self.seed, self.stream = int(seed), int(stream)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.cases)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        from .distributed import derive_seed

        item = dict(self.cases[index])  # shallow: the transforms below do not modify tensors in place
        self.random.set_random_state(seed=derive_seed(self.seed, self.stream, self.epoch, index))
        return self.random(item)


def make_cache(records: list[dict[str, Any]], transform, *, cache_rate: float, num_workers: int):
    """The preprocessed cases, cached in memory (``cache_rate`` of them; the rest on the fly)."""
    from monai.data import CacheDataset

    return CacheDataset(
        records,
        transform=transform,
        cache_rate=cache_rate,
        num_workers=max(num_workers, 1) if cache_rate > 0 else 0,
        copy_cache=False,
        progress=False,
    )


def make_loader(dataset: SeededPatchDataset, sampler, *, batch_size: int, num_workers: int, pin_memory: bool):
    """A DataLoader over ``dataset`` in ``sampler``'s order; crops of a batch are concatenated."""
    import torch
    from monai.data import list_data_collate

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=list_data_collate,
        pin_memory=pin_memory,
        persistent_workers=False,  # workers must see the epoch set before each iteration
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validation_dice(
    network,
    cases,
    *,
    num_classes: int,
    patch_size: Sequence[int],
    device,
    amp: bool = False,
    sw_batch_size: int = 1,
    overlap: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every foreground class over ``cases``, combined over all ranks.

    In a process group every rank passes its own share of the validation cases
    (:func:`~MedSegNASLib.nas.distributed.shard_evenly`); the per-class sums and counts are summed
    over the ranks, so every rank returns the figures of the whole validation set.

    Each case (a preprocessed dict with ``image`` (C, X, Y, Z) and ``label`` (1, X, Y, Z)) is
    segmented with sliding-window inference (window ``patch_size``, ``overlap``) and scored
    with :class:`monai.metrics.DiceMetric`; a class absent from a case's label is left out of that
    class's mean rather than counted as 0 or 1.

    Returns:
        ``(mean_dice, cases_counted)``, each ``(num_classes - 1,)``: mean Dice per foreground
        class over the cases where it is present (NaN where it is present in none), and in how
        many cases it was present.
    """
    import torch
    from monai.inferers import sliding_window_inference
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    from .distributed import all_reduce_sum

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    sums = torch.zeros(num_classes - 1, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes - 1, dtype=torch.float64, device=device)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for index in range(len(cases)):
                case = cases[index]
                image = torch.as_tensor(case["image"]).as_subclass(torch.Tensor)[None].to(device)
                label = torch.as_tensor(case["label"]).as_subclass(torch.Tensor)[None].to(device)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                    logits = sliding_window_inference(
                        image,
                        roi_size=list(patch_size),
                        sw_batch_size=sw_batch_size,
                        predictor=network,
                        overlap=overlap,
                    )
                prediction = one_hot(torch.argmax(logits, dim=1, keepdim=True), num_classes)
                scores = metric(prediction, one_hot(label.long(), num_classes))[0].to(torch.float64)
                present = torch.isfinite(scores)
                sums += torch.where(present, scores, torch.zeros_like(scores))
                counts += present.to(torch.float64)
                metric.reset()
    finally:
        network.train(was_training)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    sums, counts = sums.cpu().numpy(), counts.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return mean, counts
