"""Proxy data for the search: a subset of the training cases that covers the dataset (k-centre greedy).

"Proxy data" (Nath et al., MICCAI 2021): search on fewer cases that represent the dataset, to cut
the search cost; the searched architecture is then retrained on every training case. Each case is
described by simple image and label statistics (:func:`case_features`: intensity percentiles,
the fraction of voxels of each class, the physical extent of the image), standardised over the
cases; k-centre greedy (Sener & Savarese, ICLR 2018) starts from the case closest to the mean and
repeatedly adds the case farthest from those chosen, so the subset spans the spread of the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MedSegNASError

__all__ = ["case_features", "k_centre_greedy", "select_proxy_cases"]

_PERCENTILES = (5, 25, 50, 75, 95)


def case_features(case, label_values: Sequence[int]) -> np.ndarray:
    """Statistics of one labelled case: intensity percentiles of the image (first channel), the
    fraction of voxels of each of ``label_values`` (background excluded) and the extent (mm) per axis."""
    from ..data.io import read_volume

    image = read_volume(case.images[0], dtype=np.float32)
    values = image.array[0][::2, ::2, ::2].ravel()
    features = list(np.percentile(values, _PERCENTILES))
    label = np.asarray(read_volume(case.label).array[0])[::2, ::2, ::2]
    features += [float((label == value).mean()) for value in label_values if value != 0]
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    features += list(np.asarray(image.spatial_shape, dtype=np.float64) * spacing)
    return np.asarray(features, dtype=np.float64)


def k_centre_greedy(features: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` rows of ``features`` (n, d) by k-centre greedy on standardised features."""
    n = features.shape[0]
    if not 1 <= k <= n:
        raise MedSegNASError(f"cannot choose {k} of {n} cases")
    scale = features.std(axis=0)
    z = (features - features.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    chosen = [int(np.argmin((z**2).sum(axis=1)))]
    distance = ((z - z[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, ((z - z[nxt]) ** 2).sum(axis=1))
    return chosen


def select_proxy_cases(
    cases: Sequence[Any], k: int, label_values: Sequence[int]
) -> tuple[list[Any], dict[str, Any]]:
    """The ``k`` cases chosen by :func:`k_centre_greedy` (in their listed order) and a record of the choice."""
    if k < 2:
        raise MedSegNASError(f"proxy_cases must be at least 2 (a weight and an architecture case), got {k}")
    if k >= len(cases):
        raise MedSegNASError(
            f"proxy_cases ({k}) must be fewer than the {len(cases)} training cases of the search to save anything"
        )
    features = np.stack([case_features(case, label_values) for case in cases])
    chosen = sorted(k_centre_greedy(features, k))
    record = {
        "method": "k-centre greedy on standardised image/label statistics",
        "features": [f"intensity p{p}" for p in _PERCENTILES]
        + [f"fraction of label {v}" for v in label_values if v != 0]
        + ["extent x (mm)", "extent y (mm)", "extent z (mm)"],
        "selected": [cases[i].name for i in chosen],
        "of": len(cases),
    }
    return [cases[i] for i in chosen], record
