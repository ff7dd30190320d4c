"""Clicks: ``{"label": NAME, "positive": bool, "ras": [x, y, z]}`` in millimetres (Slicer's RAS).

Slicer markups, ``medsegnas interactive --clicks clicks.json`` and the simulated user all speak
this format. A click is converted to a voxel of an image with that image's *own* IJK-to-RAS
affine, after any orientation change (the classic pitfall of clicks landing on the wrong side).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedSegNASError

__all__ = ["Click", "parse_clicks", "read_clicks", "ras_to_voxel", "voxel_to_ras", "deepedit_points"]

#: DeepEdit's name of the background channel: a negative click on a label is a positive click here.
BACKGROUND = "background"


@dataclass(frozen=True)
class Click:
    """One click: ``label`` (segment name), ``positive`` (inside it) and ``ras`` (mm, shape ``(3,)``)."""

    label: str
    positive: bool
    ras: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "positive": self.positive, "ras": list(self.ras)}


def parse_clicks(items: Any, *, where: str = "clicks") -> list[Click]:
    """Validate a JSON list of clicks; raises MedSegNASError naming the first bad item."""
    if not isinstance(items, list):
        raise MedSegNASError(f"{where}: expected a list of clicks, got {type(items).__name__}")
    clicks = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise MedSegNASError(f"{where}[{n}]: expected an object with label, positive, ras")
        label, positive, ras = item.get("label"), item.get("positive", True), item.get("ras")
        if not isinstance(label, str) or not label:
            raise MedSegNASError(f"{where}[{n}]: 'label' must be a segment name, got {label!r}")
        if not isinstance(positive, bool):
            raise MedSegNASError(f"{where}[{n}]: 'positive' must be true or false, got {positive!r}")
        if (
            not isinstance(ras, list)
            or len(ras) != 3
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ras
            )
        ):
            raise MedSegNASError(f"{where}[{n}]: 'ras' must be three finite numbers (mm), got {ras!r}")
        clicks.append(Click(label, positive, (float(ras[0]), float(ras[1]), float(ras[2]))))
    return clicks


def read_clicks(path: str | Path) -> list[Click]:
    """Read a clicks.json file (a list of click objects)."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedSegNASError(f"clicks file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedSegNASError(f"cannot read clicks file {path}: {exc}") from None
    return parse_clicks(items, where=str(path))


def ras_to_voxel(ras: Sequence[float] | np.ndarray, affine: np.ndarray) -> np.ndarray:
    """RAS points (mm, shape ``(N, 3)`` or ``(3,)``) -> continuous voxel indices of the image with ``affine``."""
    points = np.atleast_2d(np.asarray(ras, dtype=np.float64))
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    return (np.linalg.inv(affine) @ homogeneous.T).T[:, :3]


def voxel_to_ras(voxels: Sequence[float] | np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices (shape ``(N, 3)`` or ``(3,)``) -> RAS points in mm, shape ``(N, 3)``."""
    points = np.atleast_2d(np.asarray(voxels, dtype=np.float64))
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    return (affine @ homogeneous.T).T[:, :3]


def nearest_voxel(voxels: np.ndarray) -> np.ndarray:
    """Continuous voxel indices -> the nearest voxel, ties upwards whatever the rounding noise.

    A voxel centre exactly half-way between two voxels of another grid is common (a grid at twice
    the spacing); ``np.rint`` would pick either side depending on 1e-12 noise of the affine
    products, so the same point stored in another axis order could land elsewhere.
    """
    return np.floor(np.asarray(voxels, dtype=np.float64) + 0.5 + 1e-6).astype(int)


def deepedit_points(
    clicks: Iterable[Click], label_names: Mapping[str, int], affine: np.ndarray
) -> dict[str, list[list[int]]]:
    """Clicks -> DeepEdit's per-label voxel points (``{label: [[i, j, k], ...]}``) on the grid of ``affine``.

    DeepEdit has one guidance channel per entry of ``label_names`` (background included): a
    positive click on a label goes to that label's channel; a negative click (\"not this
    label\") goes to the background channel, as DeepEdit's training turns a false positive into a
    click of the label that is really there. Voxel = the nearest voxel centre (a click anywhere
    inside a voxel selects it; MONAI's truncation would move clicks by up to one voxel).

    Raises:
        MedSegNASError: a click names a label the model does not know, or is a negative
            background click, or the model has no background channel for a negative click.
    """
    points: dict[str, list[list[int]]] = {name: [] for name in label_names}
    for click in clicks:
        if click.label not in label_names:
            raise MedSegNASError(
                f"click on label {click.label!r}: the model knows {', '.join(n for n in label_names)}"
            )
        target = click.label
        if not click.positive:
            if click.label == BACKGROUND or BACKGROUND not in label_names:
                raise MedSegNASError(
                    f"negative click on {click.label!r}: the model has no channel for it (labels "
                    f"{', '.join(label_names)})"
                )
            target = BACKGROUND
        voxel = nearest_voxel(ras_to_voxel(click.ras, affine)[0])
        points[target].append([int(v) for v in voxel])
    return points
