"""Unlabelled volumes for pretraining: where they are, how they are prepared and cropped.

* :func:`collect_images` turns ``--images`` (a folder of images, an MSD ``dataset.json`` or a
  MONAI datalist) into a list of :class:`ImageSource` and the channel modalities.
* :func:`prepare_volume` reads one image (any format :mod:`MedSegNASLib.data.io` reads),
  reorients it to RAS, optionally resamples it, finds its foreground and normalises its
  intensities by modality (CT: window to [0, 1]; MR: z-score), keeping the IJK -> RAS affine.
* :class:`CropSampler` draws the crops of every training step. Which volume, where the crop is
  and everything else random is decided by ``(seed, step, rank)`` alone, so the crops of a step
  are the same whether the run was interrupted or not, and any loader process can make them.

A crop keeps its geometry: its affine is the volume's affine moved to the crop's first voxel,
so a crop written as NIfTI lies exactly on its source image in Slicer.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from MedSegNASLib.data.datasets import load_dataset
from MedSegNASLib.data.io import image_format, read_volumes
from MedSegNASLib.data.preprocessing import IntensitySpec, PreprocessingSpec
from MedSegNASLib.errors import DatasetError

from .config import PretrainConfig

#: At most this many foreground positions are kept per volume (a regular subsample).
MAX_FOREGROUND_POSITIONS = 200_000


@dataclass(frozen=True)
class ImageSource:
    """One pretraining image: its channel files (one file may hold several channels)."""

    paths: tuple[Path, ...]

    @property
    def name(self) -> str:
        name = self.paths[0].name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name


def collect_images(path: str | os.PathLike[str]) -> tuple[list[ImageSource], list[str]]:
    """The pretraining images named by ``path`` and their channel modalities.

    ``path`` is one of:

    * an MSD ``dataset.json`` (or a folder holding one): its ``unlabeled`` and ``training``
      images (never ``test``: test images stay unseen);
    * a MONAI datalist ``.json``: its ``unlabeled`` (if any) and ``training`` images;
    * a folder of image files (``.nii.gz``, ``.nrrd``, ``.mha``, ...; Slicer ``.seg.nrrd``
      segmentations are skipped), or of DICOM series folders, or one DICOM series.

    Returns:
        ``(sources, modalities)``; modalities are ``["unknown"] * channels`` for a folder.

    Raises:
        DatasetError: nothing to pretrain on, or an unreadable description.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"--images {path}: no such file or folder")
    if (path.is_file() and path.suffix.lower() == ".json") or (path / "dataset.json").is_file():
        dataset = load_dataset(path)
        cases = [*dataset.unlabeled, *dataset.cases]
        if not cases:
            raise DatasetError(
                f"{dataset.path} lists no 'unlabeled' or 'training' images to pretrain on; "
                'add an "unlabeled": ["path", ...] list'
            )
        return [ImageSource(tuple(case.images)) for case in cases], list(dataset.modalities)
    if path.is_file():
        if image_format(path) is None:
            raise DatasetError(
                f"--images {path}: not a folder of images, a dataset.json or a datalist (.json)"
            )
        return [ImageSource((path,))], ["unknown"]
    entries = sorted(path.iterdir())
    files = [
        entry
        for entry in entries
        if entry.is_file() and image_format(entry) not in (None, "seg.nrrd", "dicom")
    ]
    if files:
        return [ImageSource((file,)) for file in files], ["unknown"]
    if any(entry.suffix.lower() == ".dcm" for entry in entries if entry.is_file()):
        return [ImageSource((path,))], ["unknown"]
    series = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    if series:
        return [ImageSource((folder,)) for folder in series], ["unknown"]
    raise DatasetError(
        f"--images {path}: no images found (expected .nii.gz, .nii, .nrrd, .mha, .mhd files, "
        "DICOM series folders, a dataset.json or a datalist)"
    )


def resolve_modality(config: PretrainConfig, modalities: list[str], first_volume_min: float | None) -> str:
    """``CT`` or ``MR``: the configured one, else the dataset's, else guessed from intensities.

    A plain folder says nothing about modality: an image whose darkest voxel is below -500 is
    taken for CT (air is -1000 HU; MR intensities are not negative).
    """
    if config.modality != "auto":
        return config.modality
    names = [name.upper() for name in modalities if name.lower() != "unknown"]
    if names:
        return "CT" if all(name == "CT" for name in names) else "MR"
    return "CT" if first_volume_min is not None and first_volume_min < -500 else "MR"


def preprocessing_spec(config: PretrainConfig, modality: str, channels: int) -> PreprocessingSpec:
    """The shared :class:`PreprocessingSpec` of the pretraining input (CT window / z-score)."""
    if modality == "CT":
        intensity = IntensitySpec(kind="ct_window", a_min=config.ct_window[0], a_max=config.ct_window[1])
    else:
        intensity = IntensitySpec(kind="zscore")
    return PreprocessingSpec(
        channels=[modality] * channels,
        spacing=config.spacing,
        orientation="RAS",
        intensity=intensity,
        patch_size=list(config.roi),
    )


@dataclass
class PretrainVolume:
    """A prepared volume.

    Attributes:
        array: ``(C, I, J, K)`` float32, normalised, RAS-oriented (resampled if asked).
        affine: ``(4, 4)`` IJK -> RAS (mm) of ``array``.
        foreground: ``(M, 3)`` int32 voxel positions of foreground (possibly subsampled).
        background: ``(C,)`` value used to pad crops that reach outside the volume.
        name: the source's name.
    """

    array: np.ndarray
    affine: np.ndarray
    foreground: np.ndarray
    background: np.ndarray
    name: str


def read_raw(source: ImageSource) -> tuple[np.ndarray, np.ndarray]:
    """Voxels ``(C, I, J, K)`` float32 and IJK -> RAS affine of a source, as stored."""
    volume = read_volumes(list(source.paths), dtype=np.float32)
    return volume.array, volume.affine


def prepare_volume(source: ImageSource, spec: PreprocessingSpec, foreground_hu: float) -> PretrainVolume:
    """Read, reorient, resample, find the foreground of and normalise one image (see module doc)."""
    from monai.data import MetaTensor

    array, affine = read_raw(source)
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.from_numpy(affine))
    for transform in spec.geometry_transforms(["image"], ["bilinear"]):
        image = transform({"image": image})["image"]
    raw = image.as_tensor()
    if spec.intensity.kind == "ct_window":
        foreground_mask = (raw > foreground_hu).any(dim=0)
    else:
        lowest = raw.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
        foreground_mask = (raw > lowest).any(dim=0)
    normalised = spec.intensity_transform("image")({"image": image})["image"]
    out = torch.as_tensor(normalised).float().numpy()
    return PretrainVolume(
        array=np.ascontiguousarray(out),
        affine=np.asarray(image.affine, dtype=np.float64),
        foreground=_foreground_positions(foreground_mask.numpy()),
        background=out.reshape(out.shape[0], -1).min(axis=1),
        name=source.name,
    )


def _foreground_positions(mask: np.ndarray) -> np.ndarray:
    stride = 1
    while np.count_nonzero(mask[::stride, ::stride, ::stride]) > MAX_FOREGROUND_POSITIONS:
        stride += 1
    return (np.argwhere(mask[::stride, ::stride, ::stride]) * stride).astype(np.int32)


def extract_crop(array: np.ndarray, start: np.ndarray, size: tuple[int, ...], pad: np.ndarray) -> np.ndarray:
    """``array[:, start:start+size]`` ``(C, *size)``; voxels outside the volume get ``pad`` (per channel)."""
    out = np.empty((array.shape[0], *size), dtype=array.dtype)
    out[:] = pad.reshape(-1, 1, 1, 1)
    src, dst = [], []
    for begin, length, side in zip(start, size, array.shape[1:], strict=True):
        lo, hi = max(int(begin), 0), min(int(begin) + length, side)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(begin), hi - int(begin)))
    out[(slice(None), *dst)] = array[(slice(None), *src)]
    return out


def crop_affine(affine: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The IJK -> RAS affine of a crop whose voxel (0, 0, 0) is the volume's voxel ``start``."""
    moved = np.array(affine, dtype=np.float64)
    moved[:3, 3] = affine[:3, :3] @ np.asarray(start, dtype=np.float64) + affine[:3, 3]
    return moved


def step_rng(seed: int, step: int, rank: int, stream: int) -> np.random.Generator:
    """The generator of one random stream (crops, views, ...) of one step of one process."""
    return np.random.default_rng([seed, step, rank, stream])


def step_torch_seed(seed: int, step: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0] >> 1)


#: Stream ids of :func:`step_rng`.
CROP_STREAM, VIEW_STREAM, NOISE_STREAM, ORDER_STREAM, SNAPSHOT_STREAM = range(5)


class CropSampler:
    """The crops of each step, deterministically (see the module docstring).

    Crop ``b`` of process ``rank`` at ``step`` is global crop ``g = (step * world + rank) *
    batch_size + b``. Crops come ``crops_per_volume`` at a time from one volume; volumes are
    visited in a fresh random order every epoch (one pass over all volumes).

    Args:
        sources: the images.
        config: settings (roi, batch_size, crops_per_volume, foreground_ratio, seed, cache).
        spec: preprocessing of every volume.
        rank, world_size: this process among the ``torchrun`` processes.
    """

    def __init__(
        self,
        sources: list[ImageSource],
        config: PretrainConfig,
        spec: PreprocessingSpec,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sources:
            raise DatasetError("no images to pretrain on")
        self.sources = list(sources)
        self.config = config
        self.spec = spec
        self.rank = rank
        self.world_size = world_size
        self._cache: OrderedDict[int, PretrainVolume] = OrderedDict()
        self._orders: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:  # loader processes start with an empty cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def volume(self, index: int) -> PretrainVolume:
        """The prepared volume ``index`` (kept in a small least-recently-used cache)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        volume = prepare_volume(self.sources[index], self.spec, self.config.foreground_hu)
        if self.config.cache_volumes > 0:
            self._cache[index] = volume
            while len(self._cache) > self.config.cache_volumes:
                self._cache.popitem(last=False)
        return volume

    def _volume_for_slot(self, slot: int) -> int:
        epoch, position = divmod(slot, len(self.sources))
        if epoch not in self._orders:
            self._orders[epoch] = step_rng(self.config.seed, epoch, 0, ORDER_STREAM).permutation(
                len(self.sources)
            )
        return int(self._orders[epoch][position])

    def crop_start(self, volume: PretrainVolume, rng: np.random.Generator) -> np.ndarray:
        """A crop's first voxel: centred on a random foreground voxel with probability
        ``foreground_ratio``, else anywhere; kept inside the volume where it fits."""
        roi = np.asarray(self.config.roi)
        shape = np.asarray(volume.array.shape[1:])
        if len(volume.foreground) and rng.random() < self.config.foreground_ratio:
            centre = volume.foreground[rng.integers(len(volume.foreground))].astype(np.int64)
        else:
            centre = np.array([rng.integers(side) for side in shape])
        start = centre - roi // 2
        fits = shape >= roi
        return np.where(fits, np.clip(start, 0, np.maximum(shape - roi, 0)), (shape - roi) // 2)

    def plan(self, step: int) -> list[tuple[int, np.ndarray]]:
        """``(volume index, crop start)`` of every crop of ``step`` on this process."""
        config = self.config
        rng = step_rng(config.seed, step, self.rank, CROP_STREAM)
        first = (step * self.world_size + self.rank) * config.batch_size
        plan = []
        for crop in range(first, first + config.batch_size):
            index = self._volume_for_slot(crop // config.crops_per_volume)
            plan.append((index, self.crop_start(self.volume(index), rng)))
        return plan

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """``{"images": (B, C, *roi) float32, "volume": (B,) int64, "start": (B, 3) int64}``."""
        roi = tuple(self.config.roi)
        crops, volumes, starts = [], [], []
        for index, start in self.plan(step):
            volume = self.volume(index)
            crops.append(extract_crop(volume.array, start, roi, volume.background))
            volumes.append(index)
            starts.append(start)
        return {
            "images": torch.from_numpy(np.stack(crops)),
            "volume": torch.tensor(volumes, dtype=torch.int64),
            "start": torch.from_numpy(np.stack(starts).astype(np.int64)),
        }

    def snapshot_crops(self, count: int) -> list[tuple[np.ndarray, np.ndarray, ImageSource]]:
        """``count`` fixed crops ``(crop (C, *roi), affine, source)`` for reconstruction
        snapshots: the same crops every time, one per volume in turn."""
        roi = tuple(self.config.roi)
        rng = step_rng(self.config.seed, 0, 0, SNAPSHOT_STREAM)
        crops = []
        for i in range(count):
            index = i % len(self.sources)
            volume = self.volume(index)
            start = self.crop_start(volume, rng)
            crop = extract_crop(volume.array, start, roi, volume.background)
            crops.append((crop, crop_affine(volume.affine, start), self.sources[index]))
        return crops


class StepDataset(torch.utils.data.Dataset):
    """Steps ``first .. last - 1`` as a map-style dataset (item ``i`` = the crops of step ``first + i``),
    so a ``DataLoader`` with worker processes prepares the next steps while one trains."""

    def __init__(self, sampler: CropSampler, first: int, last: int) -> None:
        self.sampler = sampler
        self.first = first
        self.last = last

    def __len__(self) -> int:
        return max(self.last - self.first, 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sampler.batch(self.first + index)
