"""Voxel grids, one-step resampling between them, and the sliding-window layout.

A :class:`Grid` is a spatial shape plus its IJK -> RAS affine (the :class:`~MedSegNASLib.data.volume.Volume`
convention). The model grid of an image is computed by MONAI itself: the bundle's
``Orientation``/``Spacing`` transforms are applied *lazily* (shape and affine only, no voxels) to a
zero-stride MetaTensor, so the grid is exactly the one ``monai.bundle run`` resamples to, whatever
the transforms' options.

The voxels are then resampled in one step from the input grid to the model grid (and the
predictions back) with ``torch.nn.functional.grid_sample``: MONAI's ``Orientation`` is a pure
axis flip/permutation and its ``Spacing`` a trilinear resampling that maps voxel centres through
the affines (``src_index = inv(src_affine) @ dst_affine @ dst_index``, border padding), so one
trilinear pass over the composed map gives the same values as MONAI's two steps, without the
intermediate copies and in float32 instead of MONAI's float64. Work is done in slabs along the
first axis so that memory stays bounded (the grid of a slab costs 12 bytes per voxel), and each
slab reads only the part of the source it needs, converted to float on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Grid",
    "model_grid",
    "index_map",
    "resample_slabs",
    "resample",
    "scan_interval",
    "window_starts",
    "window_count",
    "map_box",
]

#: Output voxels resampled per slab (about 50 MB of sampling grid).
SLAB_VOXELS = 1 << 22


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (I, J, K) and the IJK -> RAS ``affine`` (4 x 4, mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.shape))


def model_grid(grid: Grid, transforms: Sequence[Callable]) -> Grid:
    """The grid MONAI's geometric ``transforms`` (Orientation/Spacing, array or dictionary
    versions) produce from an image on ``grid``: applied lazily, so no voxel is touched.

    Dictionary transforms are applied to ``{key: image}`` for their first key.
    """
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    placeholder = torch.zeros((), dtype=torch.float32).expand(1, *grid.shape)  # zero-stride: no memory
    image = MetaTensor(placeholder, affine=torch.as_tensor(grid.affine, dtype=torch.float64))
    for transform in transforms:
        previous = transform.lazy
        transform.lazy = True
        try:
            if isinstance(transform, MapTransform):
                key = transform.keys[0]
                image = transform({key: image})[key]
            else:
                image = transform(image)
        finally:
            transform.lazy = previous
    shape = tuple(int(s) for s in image.peek_pending_shape())
    affine = np.asarray(image.peek_pending_affine(), dtype=np.float64)
    return Grid(shape, affine)  # type: ignore[arg-type]


def index_map(src: Grid, dst: Grid) -> np.ndarray:
    """The 4 x 4 matrix taking a voxel index of ``dst`` to the (fractional) voxel index of ``src``
    at the same physical point: ``inv(src.affine) @ dst.affine``."""
    return np.linalg.solve(src.affine, dst.affine)


def _normalizer(shape: Sequence[int]) -> np.ndarray:
    """Voxel index -> grid_sample coordinate (align_corners=False: voxel i covers [i-0.5, i+0.5])."""
    matrix = np.eye(4)
    for axis, size in enumerate(shape):
        matrix[axis, axis] = 2.0 / size
        matrix[axis, 3] = 1.0 / size - 1.0
    return matrix


#: Reverses i, j, k to grid_sample's x, y, z (x indexes the last axis).
_REVERSE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _translation(offset: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, 3] = offset
    return matrix


def map_box(matrix: np.ndarray, box: Sequence[tuple[float, float]]) -> np.ndarray:
    """Bounding box ``(3, 2)`` of the image under ``matrix`` of the index box ``[(lo, hi)] * 3``
    (inclusive corner indices)."""
    corners = np.array(np.meshgrid(*[list(b) for b in box], indexing="ij")).reshape(3, -1)
    mapped = matrix[:3, :3] @ corners + matrix[:3, 3:4]
    return np.stack([mapped.min(axis=1), mapped.max(axis=1)], axis=1)


def resample_slabs(
    source: torch.Tensor,
    matrix: np.ndarray,
    dst_shape: Sequence[int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    dst_offset: Sequence[int] = (0, 0, 0),
    dtype: torch.dtype = torch.float32,
    slab_voxels: int = SLAB_VOXELS,
    source_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Resample ``source`` onto a destination box, one slab of the first axis at a time.

    Args:
        source: ``(C, *S)`` voxels of any real dtype (read as ``dtype`` one slab at a time).
        matrix: destination voxel index -> source voxel index (:func:`index_map`).
        dst_shape: shape of the destination box to compute.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``, as ``grid_sample``.
        padding_mode: ``"border"`` (MONAI ``Spacing``'s default), ``"zeros"`` or ``"reflection"``.
        dst_offset: index of the box's first voxel in the destination grid.
        dtype: compute dtype (float32, or float16 on a GPU).
        source_transform: applied to each piece of the source before sampling it (e.g. a softmax
            over the channels, so that the whole source never has to be transformed at once).

    Yields:
        ``(start, stop, slab)``: destination rows ``start:stop`` of the box (first axis) and
        their values ``(C, stop - start, *dst_shape[1:])``.
    """
    src_shape = tuple(int(s) for s in source.shape[1:])
    channels = int(source.shape[0])
    dst_shape = tuple(int(s) for s in dst_shape)
    rows = max(1, min(dst_shape[0], slab_voxels // max(1, dst_shape[1] * dst_shape[2])))
    for start in range(0, dst_shape[0], rows):
        stop = min(dst_shape[0], start + rows)
        slab_shape = (stop - start, dst_shape[1], dst_shape[2])
        to_source = matrix @ _translation([dst_offset[0] + start, dst_offset[1], dst_offset[2]])
        # Read only the part of the source this slab samples (plus the interpolation neighbours).
        reach = map_box(to_source, [(0, n - 1) for n in slab_shape])
        lo = np.clip(np.floor(reach[:, 0]).astype(int) - 1, 0, np.array(src_shape) - 1)
        hi = np.clip(np.ceil(reach[:, 1]).astype(int) + 2, lo + 1, np.array(src_shape))
        crop = source[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].to(dtype)
        if source_transform is not None:
            crop = source_transform(crop)
        crop_shape = tuple(int(s) for s in crop.shape[1:])
        to_crop = _translation(-lo) @ to_source
        theta = (
            _REVERSE @ _normalizer(crop_shape) @ to_crop @ np.linalg.inv(_normalizer(slab_shape)) @ _REVERSE
        )
        theta_t = torch.as_tensor(theta[:3], dtype=dtype, device=source.device)[None]
        grid = F.affine_grid(theta_t, [1, channels, *slab_shape], align_corners=False)
        values = F.grid_sample(crop[None], grid, mode=mode, padding_mode=padding_mode, align_corners=False)[0]
        del grid
        yield start, stop, values


def resample(
    source: torch.Tensor,
    matrix: np.ndarray,
    dst_shape: Sequence[int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    dst_offset: Sequence[int] = (0, 0, 0),
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """All slabs of :func:`resample_slabs` in one ``(C, *dst_shape)`` tensor (``out`` if given; it
    may have another dtype than the computation, e.g. float64 computed into float32)."""
    if out is None:
        out = torch.empty((source.shape[0], *dst_shape), dtype=dtype, device=source.device)
    for start, stop, values in resample_slabs(
        source, matrix, dst_shape, mode=mode, padding_mode=padding_mode, dst_offset=dst_offset, dtype=dtype
    ):
        out[:, start:stop] = values  # cast to ``out``'s dtype if it differs
    return out


# ----------------------------------------------------------------------------- sliding windows


def _per_axis(overlap: float | Sequence[float], n: int) -> tuple[float, ...]:
    if isinstance(overlap, (int, float)):
        return (float(overlap),) * n
    values = tuple(float(o) for o in overlap)
    return values if len(values) == n else (values[0],) * n


def scan_interval(
    image_shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]
) -> tuple[int, ...]:
    """Window step per axis, as ``monai.inferers.sliding_window_inference`` computes it."""
    steps = []
    for size, window, share in zip(image_shape, roi, _per_axis(overlap, len(roi)), strict=True):
        steps.append(int(window) if window == size else max(1, int(window * (1 - share))))
    return tuple(steps)


def window_starts(
    image_shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]
) -> list[list[int]]:
    """Start index of every window along each axis, in the (padded) image MONAI tiles.

    MONAI pads an image smaller than the window; ``image_shape`` here is the padded shape
    ``max(size, roi)``. The last window of each axis ends at the image's end.
    """
    padded = [max(int(s), int(r)) for s, r in zip(image_shape, roi, strict=True)]
    steps = scan_interval(padded, roi, overlap)
    starts = []
    for size, window, step in zip(padded, roi, steps, strict=True):
        count = next((n for n in range(math.ceil(size / step)) if n * step + window >= size), 0) + 1
        starts.append([min(n * step, size - window) for n in range(count)])
    return starts


def window_count(image_shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]) -> int:
    """Number of windows ``sliding_window_inference`` runs on an image of ``image_shape``."""
    return int(np.prod([len(s) for s in window_starts(image_shape, roi, overlap)]))


def window_padding(image_shape: Sequence[int], roi: Sequence[int]) -> tuple[int, ...]:
    """Voxels MONAI pads before the image on each axis when it is smaller than the window."""
    return tuple(max(int(r) - int(s), 0) // 2 for s, r in zip(image_shape, roi, strict=True))
