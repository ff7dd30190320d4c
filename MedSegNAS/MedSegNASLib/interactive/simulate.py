"""The simulated user of interactive evaluation.

Each next click goes to the centre of the largest error region: the voxel farthest from the
region's boundary (Euclidean distance transform, voxel spacing taken into account), positive if
the region was missed (false negative), negative if it is a false positive. This is the protocol
of the interactive-segmentation literature (DeepIGeoS, Wang et al. 2018; the NoC@85/90 metrics of
DIOS, Xu et al. 2016) and of MONAI Label's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["ErrorClick", "next_click", "dice", "clicks_to_reach"]


@dataclass(frozen=True)
class ErrorClick:
    """A simulated click: ``voxel`` (i, j, k), ``positive`` (missed region), ``region_size`` (voxels)."""

    voxel: tuple[int, int, int]
    positive: bool
    region_size: int


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray | None, int]:
    components, count = ndimage.label(mask)
    if count == 0:
        return None, 0
    sizes = np.bincount(components.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    return components == biggest, int(sizes[biggest - 1])


def next_click(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> ErrorClick | None:
    """Where the simulated user clicks next, or None when ``prediction`` equals ``truth``.

    Args:
        prediction, truth: boolean masks of one label, shape ``(I, J, K)``.
        spacing: voxel size in mm, so the centre is the farthest point in millimetres.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    missed, missed_size = _largest_component(truth & ~prediction)
    extra, extra_size = _largest_component(prediction & ~truth)
    if missed is None and extra is None:
        return None
    positive = missed_size >= extra_size
    region = missed if positive else extra
    size = missed_size if positive else extra_size
    # Pad so that the image border counts as region boundary too.
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    voxel = np.unravel_index(int(np.argmax(distance)), region.shape)
    return ErrorClick(tuple(int(v) for v in voxel), bool(positive), size)  # type: ignore[arg-type]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((prediction & truth).sum()) / total


def clicks_to_reach(dice_per_click: Sequence[float], target: float, budget: int) -> int:
    """NoC@target: clicks needed (``dice_per_click[k]`` is the Dice after ``k`` clicks); ``budget`` if never."""
    for clicks, value in enumerate(dice_per_click):
        if value >= target:
            return clicks
    return budget
