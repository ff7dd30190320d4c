"""Voxel grids, one-step resampling between them, and the sliding-window layout.

A :class:`Grid` is a spatial shape plus its IJK -> RAS affine (the :class:`~MedSegNASLib.data.volume.Volume`
convention). The model grid of an image is computed by MONAI itself: the bundle's
``Orientation``/``Spacing`` transforms are applied *lazily* (shape and affine only, no voxels) to a
zero-stride MetaTensor, so the grid is exactly the one ``monai.bundle run`` resamples to, whatever
the transforms' options.

The voxels are then resampled in one step from the input grid to the model grid (and the
predictions back) with ``torch.nn.functional.grid_sample`` semantics (``align_corners=False``): MONAI's ``Orientation`` is a pure
axis flip/permutation and its ``Spacing`` a trilinear resampling that maps voxel centres through
the affines (``src_index = inv(src_affine) @ dst_affine @ dst_index``, border padding), so one
trilinear pass over the composed map gives the same values as MONAI's two steps, without the
intermediate copies and in float32 instead of MONAI's float64. Work is done in slabs along the
first axis so that memory stays bounded (the grid of a slab costs 12 bytes per voxel), and each
slab reads only the part of the source it needs, converted to float on the fly.

**Axis-aligned grids** (most CT and MR: the model grid differs from the input grid by flips,
an axis permutation and voxel sizes, :func:`axis_aligned`) take a faster, separable route with
the same values (to float rounding): trilinear interpolation is a product of three 1D linear
interpolations, so :func:`resample` runs three 1D passes (each a gather and a weighted sum along
one axis, the most shrinking axis first) instead of 8 gathers per voxel; and
:func:`argmax_of_interpolation` returns the label of the interpolated class probabilities
without interpolating them where the 8 model voxels around an output voxel share one label (a
weighted average of probability vectors whose largest entry is the same class has its largest
entry there too): only slabs that hold label-boundary voxels are interpolated (separably, as
above), and only those voxels take the interpolated label.
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
    "AxisMap",
    "model_grid",
    "index_map",
    "axis_aligned",
    "argmax_of_interpolation",
    "resample_slabs",
    "resample",
    "scan_interval",
    "window_starts",
    "window_count",
    "map_box",
]

#: Output voxels resampled per slab (about 50 MB of sampling grid).
SLAB_VOXELS = 1 << 22
#: Largest off-axis entry of an index map (source voxels per destination voxel) still treated as
#: axis-aligned: across 1000 voxels it moves a sample by at most 1e-4 voxel.
AXIS_TOLERANCE = 1e-7
#: Output voxels per slab of :func:`argmax_of_interpolation` (its boundary voxels are interpolated
#: together; memory about 20 bytes per voxel and class).
BOUNDARY_CHUNK = 1 << 20
#: Label value marking a model-grid cell whose 8 corners do not share one label.
_MIXED = 255


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

    Dictionary transforms are applied to ``{key: image}`` for their first key. The steps of a
    compiled model (:class:`~.compiled.OrientationStep`, :class:`~.compiled.SpacingStep`: the same
    arithmetic, checked against MONAI when compiled) are computed without MONAI.
    """
    from .compiled import is_grid_step, steps_grid

    if all(is_grid_step(t) for t in transforms):
        shape, affine = steps_grid(transforms, grid.shape, grid.affine)
        return Grid(shape, affine)  # type: ignore[arg-type]
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    placeholder = torch.zeros((), dtype=torch.float32).expand(1, *grid.shape)  # zero-stride: no memory
    image = MetaTensor(placeholder, affine=torch.as_tensor(grid.affine, dtype=torch.float64))
    for transform in transforms:
        previous = transform.lazy
        transform.lazy = True
        try:
            if isinstance(transform, MapTransform):
                key = transform.keys[0]  # every key gets the placeholder (renal: three phases)
                image = transform(dict.fromkeys(transform.keys, image))[key]
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


@dataclass(frozen=True)
class AxisMap:
    """An index map that sends each destination axis along a single source axis.

    Destination index ``n`` on axis ``d`` is at source index ``scale[d] * n + offset[d]`` on source
    axis ``source_axis[d]`` (flips have a negative scale).
    """

    source_axis: tuple[int, int, int]
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def coordinates(self, axis: int, start: int, count: int) -> np.ndarray:
        """Source coordinates (float64) of destination indices ``start .. start + count - 1`` of ``axis``."""
        return self.scale[axis] * np.arange(start, start + count, dtype=np.float64) + self.offset[axis]


def axis_aligned(matrix: np.ndarray, tolerance: float = AXIS_TOLERANCE) -> AxisMap | None:
    """The :class:`AxisMap` of an index map (:func:`index_map`), or None if it rotates or shears."""
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    significant = np.abs(linear) > tolerance
    if not (significant.sum(axis=0) == 1).all() or not (significant.sum(axis=1) == 1).all():
        return None
    source_axis = tuple(int(np.flatnonzero(significant[:, d])[0]) for d in range(3))
    scale = tuple(float(linear[source_axis[d], d]) for d in range(3))
    offset = tuple(float(matrix[source_axis[d], 3]) for d in range(3))
    return AxisMap(source_axis, scale, offset)  # type: ignore[arg-type]


def _linear_taps(
    coords: np.ndarray, size: int, padding_mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1D linear interpolation at ``coords`` as ``grid_sample`` does it along one axis:
    ``(lower index, upper index, lower weight, upper weight)``; indices are always valid."""
    if padding_mode == "border":
        x = np.clip(coords, 0.0, size - 1.0)
        lower = np.floor(x)
        upper_weight = x - lower
        lower_index = lower.astype(np.int64)
        return lower_index, np.minimum(lower_index + 1, size - 1), 1.0 - upper_weight, upper_weight
    lower = np.floor(coords)  # "zeros": neighbours outside the image count as 0
    upper_weight = coords - lower
    lower_index = lower.astype(np.int64)
    upper_index = lower_index + 1
    lower_weight = (1.0 - upper_weight) * ((lower_index >= 0) & (lower_index < size))
    upper_weight = upper_weight * ((upper_index >= 0) & (upper_index < size))
    return np.clip(lower_index, 0, size - 1), np.clip(upper_index, 0, size - 1), lower_weight, upper_weight


def _nearest_taps(coords: np.ndarray, size: int, padding_mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest neighbour as ``grid_sample`` (ties to even): ``(index, inside or None)``."""
    if padding_mode == "border":
        return np.rint(np.clip(coords, 0.0, size - 1.0)).astype(np.int64), None
    index = np.rint(coords).astype(np.int64)
    inside = (index >= 0) & (index < size)
    return np.clip(index, 0, size - 1), inside


def _along(
    values: np.ndarray, dim: int, like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A 1D array as a tensor that broadcasts along dimension ``dim`` of ``like``."""
    shape = [1] * like.dim()
    shape[dim] = -1
    return torch.as_tensor(values, dtype=dtype, device=like.device).reshape(shape)


def _take(values: torch.Tensor, dim: int, index: np.ndarray) -> torch.Tensor:
    """``values.index_select(dim, index)``; on the CPU through ``numpy.take`` (several times
    faster for small integer types)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.take(values.numpy(), index, axis=dim))
    return values.index_select(dim, torch.as_tensor(index, device=values.device))


def resample_axis_aligned(
    source: torch.Tensor,
    axis_map: AxisMap,
    dst_shape: Sequence[int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "border",
    dst_offset: Sequence[int] = (0, 0, 0),
    dtype: torch.dtype | None = torch.float32,
) -> torch.Tensor:
    """:func:`resample` for an axis-aligned map: three separable 1D passes.

    Args:
        source: ``(C, *S)`` voxels of any real dtype.
        axis_map: destination index -> source index (:func:`axis_aligned`).
        dst_shape, dst_offset: the destination box (shape and index of its first voxel).
        mode: ``"bilinear"`` (trilinear) or ``"nearest"``.
        padding_mode: ``"border"`` or ``"zeros"``.
        dtype: compute and result dtype; None (nearest only) keeps the source's.

    Returns:
        ``(C, *dst_shape)``, possibly a permuted view.
    """
    if mode not in ("bilinear", "nearest") or padding_mode not in ("border", "zeros"):
        raise ValueError(
            f"separable resampling supports bilinear/nearest with border/zeros, not {mode}/{padding_mode}"
        )
    src_shape = [int(s) for s in source.shape[1:]]
    dst_shape = [int(s) for s in dst_shape]
    # The most shrinking axis first: every later pass works on fewer voxels.
    order = sorted(range(3), key=lambda d: dst_shape[d] / max(src_shape[axis_map.source_axis[d]], 1))
    values = source
    for d in order:
        dim = axis_map.source_axis[d] + 1
        size = src_shape[dim - 1]
        coords = axis_map.coordinates(d, int(dst_offset[d]), dst_shape[d])
        if mode == "nearest":
            index, inside = _nearest_taps(coords, size, padding_mode)
            first = int(index.min())
            values = values.narrow(dim, first, int(index.max()) - first + 1)
            values = _take(values, dim, index - first)
            if inside is not None and not inside.all():
                values = values * _along(inside, dim, values, values.dtype)
            continue
        lower, upper, lower_weight, upper_weight = _linear_taps(coords, size, padding_mode)
        first = int(lower.min())
        values = values.narrow(dim, first, int(upper.max()) - first + 1)  # only the rows sampled
        work = dtype or torch.float32
        low = _take(values, dim, lower - first).to(work)
        high = _take(values, dim, upper - first).to(work)
        values = low.mul_(_along(lower_weight, dim, low, work)).addcmul_(
            high, _along(upper_weight, dim, high, work)
        )
    if dtype is not None and values.dtype != dtype:
        values = values.to(dtype)
    # Dimension 1 + source_axis[d] now holds destination axis d.
    return values.permute(0, *(axis_map.source_axis[d] + 1 for d in range(3)))


def uniform_cells(labels: torch.Tensor) -> torch.Tensor:
    """For each voxel ``(i, j, k)`` of a label map (values < 255): its label when the 8 voxels
    ``(i..i+1, j..j+1, k..k+1)`` (clamped at the last index) all have it, else 255."""
    cells = labels
    for dim in range(3):
        following = torch.cat(
            [cells.narrow(dim, 1, cells.shape[dim] - 1), cells.narrow(dim, cells.shape[dim] - 1, 1)], dim
        )
        cells = torch.where(cells == following, cells, _MIXED)
    return cells.to(torch.uint8)


def _softmax_channels(values: torch.Tensor) -> torch.Tensor:
    """Softmax over the first dimension of a contiguous ``(C, ...)`` tensor, in place (whole-vector ops)."""
    values.sub_(values.amax(dim=0, keepdim=True)).exp_()
    return values.div_(values.sum(dim=0, keepdim=True))


def argmax_of_interpolation(
    prediction: torch.Tensor,
    labels: torch.Tensor,
    axis_map: AxisMap,
    dst_shape: Sequence[int],
    *,
    dst_offset: Sequence[int] = (0, 0, 0),
    softmax: bool = True,
    chunk: int = BOUNDARY_CHUNK,
) -> torch.Tensor:
    """The label of the trilinearly interpolated class probabilities (border padding), on a box.

    Equals ``argmax_channels(resample(softmax(prediction), ...))`` (to float rounding, ties to the
    lower class) without interpolating the probabilities everywhere: an output voxel whose 8
    surrounding model voxels share a label gets that label directly. Elsewhere (label
    boundaries) the probabilities are interpolated separably (three 1D passes, each a gather
    and a weighted sum), one slab of the first output axis at a time, over the slab's planes that
    hold boundary voxels; those voxels take the label of the largest interpolated probability.

    Args:
        prediction: ``(C, *S)`` class scores on the model grid: logits (``softmax=True``) or
            probabilities; fewer than 255 classes; any memory layout.
        labels: ``(*S)`` uint8 argmax of ``prediction`` over the classes.
        axis_map: output index -> model-grid index.
        dst_shape, dst_offset: the output box.
        chunk: output voxels per slab (memory: about ``chunk * C`` numbers, a few times).

    Returns:
        ``(*dst_shape)`` uint8 labels.
    """
    num_classes = int(prediction.shape[0])
    if num_classes >= _MIXED:
        raise ValueError(f"at most {_MIXED - 1} classes, got {num_classes}")
    src_shape = [int(s) for s in prediction.shape[1:]]
    dst_shape = [int(s) for s in dst_shape]
    # Per destination axis d: lower/upper model index (on model axis source_axis[d]) and weights.
    taps = [
        _linear_taps(
            axis_map.coordinates(d, int(dst_offset[d]), dst_shape[d]),
            src_shape[axis_map.source_axis[d]],
            "border",
        )
        for d in range(3)
    ]
    # Work on the part of the model grid that the box samples.
    region = [slice(0, 0)] * 3
    for d in range(3):
        region[axis_map.source_axis[d]] = slice(int(taps[d][0].min()), int(taps[d][1].max()) + 1)
    cells = uniform_cells(labels[tuple(region)])
    out = cells
    # Gather the cell of each output voxel, the most shrinking axis first.
    order = sorted(range(3), key=lambda d: dst_shape[d] / src_shape[axis_map.source_axis[d]])
    for d in order:
        axis = axis_map.source_axis[d]
        out = _take(out, axis, taps[d][0] - region[axis].start)
    out = out.permute(*(axis_map.source_axis[d] for d in range(3))).contiguous()
    del cells

    mixed_planes = (out == _MIXED).flatten(1).any(dim=1)
    rows = max(1, int(chunk) // max(1, dst_shape[1] * dst_shape[2]))
    for first in range(0, dst_shape[0], rows):
        planes = torch.nonzero(mixed_planes[first : first + rows])
        if planes.numel() == 0:
            continue
        box = [
            (first + int(planes.min()), first + int(planes.max()) + 1),
            (0, dst_shape[1]),
            (0, dst_shape[2]),
        ]
        # The model voxels this box samples, as (C, S0, S1, S2) probabilities.
        picks = [(taps[d][0][a:b], taps[d][1][a:b]) for d, (a, b) in enumerate(box)]
        source_box = [slice(0, 0)] * 3
        for d, (lower, upper) in enumerate(picks):
            source_box[axis_map.source_axis[d]] = slice(int(lower.min()), int(upper.max()) + 1)
        values = prediction[(slice(None), *source_box)].float().contiguous()
        if softmax:
            values = _softmax_channels(values)
        for d in order:  # 1D linear interpolation along each axis, the most shrinking first
            dim = axis_map.source_axis[d] + 1
            a, b = box[d]
            start = source_box[dim - 1].start
            low = _take(values, dim, picks[d][0] - start)
            high = _take(values, dim, picks[d][1] - start)
            values = low.mul_(_along(taps[d][2][a:b], dim, low, torch.float32)).addcmul_(
                high, _along(taps[d][3][a:b], dim, high, torch.float32)
            )
        # Dimension 1 + source_axis[d] now holds destination axis d.
        values = values.permute(0, *(axis_map.source_axis[d] + 1 for d in range(3)))
        # torch.max over the classes: the first largest on ties (the lower class), as argmax.
        slab = out[box[0][0] : box[0][1]]
        slab.copy_(torch.where(slab == _MIXED, values.max(dim=0).indices.to(torch.uint8), slab))
    return out


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
    separable: bool = True,
) -> torch.Tensor:
    """All slabs of :func:`resample_slabs` in one ``(C, *dst_shape)`` tensor (``out`` if given; it
    may have another dtype than the computation, e.g. float64 computed into float32).

    An axis-aligned map with bilinear/nearest interpolation and border/zeros padding takes the
    separable route (:func:`resample_axis_aligned`): the same values to rounding, several times
    faster. ``separable=False`` keeps ``grid_sample``'s arithmetic, whose rounding leaks (1e-12
    instead of an exact 0 next to the body) MONAI's resampling shares: a z-score over the
    non-zero voxels depends on them."""
    aligned = axis_aligned(matrix) if separable else None
    if aligned is not None and mode in ("bilinear", "nearest") and padding_mode in ("border", "zeros"):
        values = resample_axis_aligned(
            source,
            aligned,
            dst_shape,
            mode=mode,
            padding_mode=padding_mode,
            dst_offset=dst_offset,
            dtype=dtype,
        )
        if out is None:
            return values.contiguous()
        out.copy_(values)
        return out
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
