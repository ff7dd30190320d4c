"""The in-memory image type shared by every layer: a voxel array plus its geometry.

Convention (the one used throughout MedSegNAS, identical to MONAI's default and to Slicer's
``IJKToRAS`` matrix):

* ``array`` is indexed ``[c, i, j, k]``: channel first, then voxel indices in the order the
  file stores them (``i`` varies fastest on disk). This is MONAI's channel-first layout, so a
  :class:`Volume` array can go straight into MONAI transforms and networks.
* ``affine`` is a 4x4 float64 matrix mapping homogeneous voxel indices ``(i, j, k, 1)`` to
  physical **RAS** coordinates in millimetres: +x towards the patient's Right, +y Anterior,
  +z Superior, as in Slicer and NIfTI. Geometry stored as LPS (ITK, DICOM, most NRRD files)
  is converted on read and back on write by negating the first two rows, so voxels never move.

Spacing, origin and direction are derived from the affine (never stored twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Flips between LPS (ITK, DICOM, NRRD "left-posterior-superior") and RAS (Slicer, NIfTI, MONAI).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image with channels and its voxel-to-RAS geometry.

    Args:
        array: voxel values, shape ``(C, I, J, K)`` (C >= 1).
        affine: ``(4, 4)`` float64 IJK -> RAS (mm) matrix.
        meta: free-form metadata kept from the file (e.g. NRRD/DICOM keys, label table).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")
        if self.array.ndim != 4:
            raise ValueError(f"Volume.array must be (C, I, J, K), got shape {self.array.shape}")

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm, shape ``(3,)``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of the centre of voxel (0, 0, 0), shape ``(3,)``."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit RAS direction of the i, j, k axes as columns, shape ``(3, 3)``."""
        return self.affine[:3, :3] / self.spacing

    @property
    def affine_lps(self) -> np.ndarray:
        """The same geometry as an IJK -> LPS matrix (ITK / DICOM / NRRD convention)."""
        return LPS_TO_RAS @ self.affine

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes have the same spatial shape and affine (within ``atol`` mm)."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol)
        )


def affine_from_geometry(spacing, origin, direction) -> np.ndarray:
    """Build an IJK -> RAS affine from spacing ``(3,)``, RAS origin ``(3,)`` and a ``(3, 3)``
    direction matrix whose columns are the RAS unit vectors of the i, j, k axes."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


@dataclass(frozen=True)
class LabelInfo:
    """One class of a label map: integer value, display name and RGB color in [0, 1]."""

    value: int
    name: str
    color: tuple[float, float, float]
