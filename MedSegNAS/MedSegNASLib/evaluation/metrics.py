"""Per-class overlap and surface metrics of a label map against a reference, with MONAI's metrics.

For each foreground class (label value != 0) of two integer label maps on the same voxel grid:

* **Dice** ``2|P ∩ R| / (|P| + |R|)`` (:func:`monai.metrics.compute_dice`).
* **HD95** (mm): MONAI's 95th-percentile symmetric Hausdorff distance between the boundary voxels
  of ``P`` and ``R``, with the voxel spacing in mm (:func:`monai.metrics.compute_hausdorff_distance`,
  ``percentile=95``: the larger of the two directed 95th percentiles).
* **NSD** (normalised surface Dice at a tolerance in mm): the fraction of both boundaries that lies
  within the tolerance of the other boundary, boundary elements weighted by their area as in
  Nikolov et al. 2021 / DeepMind's ``surface-distance`` (:func:`monai.metrics.compute_surface_dice`,
  ``use_subvoxels=True``).

**Absent classes** (the convention of every MedSegNAS report):

=====================  ==========  ===========  ==========  =========================
reference / prediction  Dice        HD95 (mm)    NSD         status
=====================  ==========  ===========  ==========  =========================
present / present       computed    computed     computed    ``present``
present / empty         0.0         inf          0.0         ``missed``
empty / present         0.0         inf          0.0         ``false_positive``
empty / empty           NaN         NaN          NaN         ``absent`` (not scored)
=====================  ==========  ===========  ==========  =========================

A class that is in neither map is not a success nor a failure: its NaN values are left out of
every mean (reports count such cases separately). A missed class or a false positive is a real
failure (Dice 0, NSD 0); its HD95 is infinite, which reports leave out of HD95 means and count.

Each class is cropped to the bounding box of ``P ∪ R`` plus one voxel before MONAI sees it
(MONAI crops the same way inside), so a 13-organ CT never becomes a 13-channel one-hot volume.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..data.volume import LabelInfo
from ..errors import ImageFormatError, MedSegNASError

__all__ = [
    "STATUSES",
    "ClassMetrics",
    "label_metrics",
    "binary_metrics",
]

#: Row status by (reference present, prediction present); see the module docstring.
STATUSES: dict[tuple[bool, bool], str] = {
    (True, True): "present",
    (True, False): "missed",
    (False, True): "false_positive",
    (False, False): "absent",
}


@dataclass
class ClassMetrics:
    """The metrics of one class in one label map.

    Attributes:
        label: label value in the maps.
        name: class name.
        dice: Dice coefficient in [0, 1]; NaN when the class is in neither map.
        hd95_mm: 95th-percentile Hausdorff distance in mm; inf when the class is in only one map,
            NaN when in neither.
        nsd: normalised surface Dice in [0, 1] at the tolerance given; NaN when in neither map.
        voxels_ref: voxels of the class in the reference.
        voxels_pred: voxels of the class in the prediction.
    """

    label: int
    name: str
    dice: float
    hd95_mm: float
    nsd: float
    voxels_ref: int
    voxels_pred: int

    @property
    def status(self) -> str:
        """``present``, ``missed``, ``false_positive`` or ``absent`` (see the module docstring)."""
        return STATUSES[(self.voxels_ref > 0, self.voxels_pred > 0)]

    def as_dict(self) -> dict[str, object]:
        """The fields plus ``status``, as plain Python values (NaN and inf kept as floats)."""
        return {**asdict(self), "status": self.status}


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise MedSegNASError(f"voxel spacing must be three positive numbers (mm), got {list(spacing_mm)}")
    return spacing  # type: ignore[return-value]


def _check_tolerance(tolerance_mm: float) -> float:
    tolerance = float(tolerance_mm)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise MedSegNASError(
            f"the surface tolerance must be a finite number of mm >= 0, got {tolerance_mm!r}"
        )
    return tolerance


def _as_label_map(array: np.ndarray, what: str) -> np.ndarray:
    """``(I, J, K)`` (or ``(1, I, J, K)``) integer-valued array -> ``(I, J, K)``."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ImageFormatError(f"the {what} must be a 3D label map (I, J, K), got shape {array.shape}")
    return array


def _crop_box(mask: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by one voxel on each side, clipped to the array."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, int(shape[axis]))))
    return tuple(box)


def binary_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    tolerance_mm: float = 2.0,
) -> tuple[float, float, float]:
    """``(dice, hd95_mm, nsd)`` of two boolean ``(I, J, K)`` masks (absent-class rules applied).

    Args:
        prediction, reference: boolean masks of the same shape.
        spacing_mm: voxel size along i, j, k in mm.
        tolerance_mm: NSD tolerance in mm.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    spacing = _check_spacing(spacing_mm)
    tolerance = _check_tolerance(tolerance_mm)
    pred = np.asarray(prediction, dtype=bool)
    ref = np.asarray(reference, dtype=bool)
    if pred.shape != ref.shape:
        raise ImageFormatError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return math.nan, math.nan, math.nan
    if not has_ref or not has_pred:
        return 0.0, math.inf, 0.0
    box = _crop_box(pred | ref, pred.shape)
    y_pred = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation notices, once per call
        dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(
            y_pred, y, [tolerance], include_background=True, spacing=spacing, use_subvoxels=True
        )
    return float(dice.item()), float(hd95.item()), float(nsd.item())


def label_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[LabelInfo],
    spacing_mm: Sequence[float],
    *,
    tolerance_mm: float = 2.0,
) -> list[ClassMetrics]:
    """Dice, HD95 (mm) and NSD of every foreground class of a label map against a reference.

    Args:
        prediction: integer label map ``(I, J, K)`` (a leading channel of 1 is accepted).
        reference: the reference label map, same shape and voxel grid.
        labels: the classes to score; value 0 (background) is skipped.
        spacing_mm: voxel size along i, j, k in mm (e.g. ``Volume.spacing``).
        tolerance_mm: NSD tolerance in mm (default 2 mm).

    Returns:
        One :class:`ClassMetrics` per foreground label, in the order of ``labels``; classes in
        neither map get NaN metrics (see the module docstring for every absent-class rule).

    Raises:
        ImageFormatError: the maps are not 3D or differ in shape.
        MedSegNASError: bad spacing or tolerance.
    """
    pred = _as_label_map(prediction, "prediction")
    ref = _as_label_map(reference, "reference")
    if pred.shape != ref.shape:
        raise ImageFormatError(
            f"prediction shape {'x'.join(map(str, pred.shape))} differs from reference shape "
            f"{'x'.join(map(str, ref.shape))}; put both on the same voxel grid first"
        )
    spacing = _check_spacing(spacing_mm)
    tolerance = _check_tolerance(tolerance_mm)
    results = []
    for info in labels:
        value = int(info.value)
        if value == 0:
            continue
        pred_mask, ref_mask = pred == value, ref == value
        dice, hd95, nsd = binary_metrics(pred_mask, ref_mask, spacing, tolerance_mm=tolerance)
        results.append(
            ClassMetrics(
                label=value,
                name=str(info.name),
                dice=dice,
                hd95_mm=hd95,
                nsd=nsd,
                voxels_ref=int(np.count_nonzero(ref_mask)),
                voxels_pred=int(np.count_nonzero(pred_mask)),
            )
        )
    return results
