"""The segmentation engine: an image and a bundle in, a label map on the image's own grid out.

What it computes is what MONAI's bundle workflow (``python -m monai.bundle run`` with the
bundle's inference config) computes; how it computes it is cheaper:

1. **Model grid.** The bundle's Orientation/Spacing transforms are applied lazily by MONAI
   (:func:`~.geometry.model_grid`), so the grid is MONAI's to the last digit.
2. **Windows.** The sliding windows are MONAI's (same tiling of the model grid). A window that
   contains no body voxel (CT above -500 HU, or above a data-derived threshold for other
   modalities) is not run: it predicts background. Every window that covers a body voxel runs,
   so inside the body the blended prediction equals MONAI's exactly; only air is assumed to be
   background. ``--no-crop`` runs every window.
3. **Resampling.** One trilinear pass from the input grid to the model grid (MONAI: an
   orientation copy, then a float64 resampling of the whole image): float32 over the windows
   that run when the intensity transforms are voxel-wise (CT windows), as three separable 1D
   passes when the grids are axis-aligned (the usual case: the model grid keeps the image's
   directions); float64 with ``grid_sample`` over the whole grid otherwise (a z-score of the
   non-zero voxels depends on which voxels are exactly zero, and ``grid_sample`` leaves the
   same rounding leaks as MONAI's resampling). Back to the input grid, over the box of voxels
   predicted as foreground: on axis-aligned grids the interpolated probabilities decide only
   where the 8 model voxels around an input voxel disagree (:func:`~.geometry.argmax_of_interpolation`),
   elsewhere in slabs reduced to labels at once; MONAI inverts float64 probabilities of every
   class on the whole input grid. The label map is stored first-axis-fastest, as image files
   store voxels, so writing it needs no transposing copy.
4. **Inference.** MONAI's sliding-window scheme (same padding, windows and blending, MONAI's
   own ``sliding_window_inference`` for networks whose output window differs from the input's)
   under ``torch.inference_mode``, the window sum kept channels-last on the CPU, where batches
   hold about two 96^3 windows' worth of voxels (:func:`cpu_batch_size`) in calls of even size; float16
   autocast on CUDA; on CUDA out-of-memory it retries with one window per batch and the
   stitched output in CPU memory, then on the CPU, and says so.

Options: flip test-time augmentation (probabilities averaged over the identity and a flip of
each axis), ``fast`` (twice the model's voxel size: 8x fewer voxels), post-processing
(:mod:`.postprocess`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.volume import Volume
from ..errors import ImageFormatError, MedSegNASError
from . import DEVICES
from .geometry import (
    Grid,
    argmax_of_interpolation,
    axis_aligned,
    index_map,
    map_box,
    model_grid,
    resample,
    resample_axis_aligned,
    resample_slabs,
    window_padding,
    window_starts,
)
from .model import SegmentationModel
from .optimize import prepare_for_inference
from .postprocess import PostprocessSpec, postprocess_labels

__all__ = [
    "DEVICES",
    "SegmentOptions",
    "SegmentResult",
    "Progress",
    "select_device",
    "segment_volume",
]

#: Logit given to the background channel of windows that are not run (softmax: 1 - 1e-13).
BACKGROUND_LOGIT = 30.0
#: Flips (spatial dims of a batch) averaged by test-time augmentation, the identity first.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,))
#: Largest memory (GB) the model-grid image and predictions may take before a run is refused.
MAX_MODEL_GRID_GB = 64.0
#: Input voxels per network call on the CPU (2 windows of 96^3), see cpu_batch_size.
CPU_BATCH_VOXELS = 2 * 96**3
#: Fraction of the 1-99 percentile range above which a non-CT voxel counts as foreground.
FOREGROUND_FRACTION = 0.05


@dataclass
class SegmentOptions:
    """How to run a model (defaults: the bundle's own settings).

    Args:
        device: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda`` or ``mps``.
        fast: twice the model's voxel size (about 8x fewer voxels), for a quick preview.
        tta: average the class probabilities over flips of each axis (4x the work).
        postprocess: clean-up steps, or None.
        roi: sliding-window size (voxels) instead of the bundle's.
        overlap: window overlap in [0, 1) instead of the bundle's.
        sw_batch_size: windows per network call (default: the bundle's; on the CPU up to twice
            that, see :func:`cpu_batch_size`).
        crop: skip windows without body voxels (exact inside the body).
        amp: reduced-precision autocast. None (default): float16 on CUDA (as MONAI's bundle
            evaluators do with ``amp: true``), float32 elsewhere (the same numbers as MONAI).
            True: also bfloat16 on CPUs with Intel AMX (about 3x faster there; label maps then
            differ from MONAI's at a few boundary voxels). False: float32 everywhere.
        threads: CPU threads for torch (default: torch's choice).
        box: segment only inside this box, ``(x0, y0, z0, x1, y1, z1)``: two opposite corners in
            RAS millimetres (any order; the world coordinates Slicer shows). The voxels whose
            centres lie in it are segmented; the label map keeps the full input grid, zeros
            outside. See :func:`box_to_voxels`.
        box_voxels: the same as a voxel box ``(i0, j0, k0, i1, j1, k1)`` of the input, half-open
            (``i0 <= i < i1``, as Python slices).
        stitch_on_cpu: on CUDA, sum the window outputs in CPU memory (the GPU holds the network
            and one batch of windows only); chosen by :func:`~.plan.choose_fallback` when the
            stitched output would not fit in GPU memory.
    """

    device: str = "auto"
    fast: bool = False
    tta: bool = False
    postprocess: PostprocessSpec | None = None
    roi: tuple[int, int, int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    crop: bool = True
    amp: bool | None = None
    threads: int | None = None
    box: tuple[float, float, float, float, float, float] | None = None
    box_voxels: tuple[int, int, int, int, int, int] | None = None
    stitch_on_cpu: bool = False


@dataclass
class SegmentResult:
    """A label map on the input grid and how it was computed.

    Attributes:
        labels: ``(1, I, J, K)`` uint8 (uint16 beyond 255 classes) on the input's affine;
            ``meta["labels"]`` holds the label table.
        stats: device, grids, window counts, seconds per stage.
    """

    labels: Volume
    stats: dict[str, Any] = field(default_factory=dict)


class Progress:
    """Receives progress from the engine; the default shows nothing. Subclass or pass callables."""

    def __init__(
        self,
        step: Callable[..., None] | None = None,
        log: Callable[[str], None] | None = None,
        check_stop: Callable[[], None] | None = None,
    ) -> None:
        self._step, self._log, self._check = step, log, check_stop

    def step(self, stage: str, done: int, total: int, **metrics: Any) -> None:
        if self._step is not None:
            self._step(stage, done, total, **metrics)

    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def check_stop(self) -> None:
        if self._check is not None:
            self._check()


def select_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` (see :data:`DEVICES`); a clear error when it is not there."""
    name = (name or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MedSegNASError(
                f"--device cuda: no CUDA GPU is usable by this PyTorch ({torch.__version__}); "
                "use --device cpu or install a CUDA build of PyTorch"
            )
        return torch.device("cuda")
    if name == "mps":
        if not has_mps:
            raise MedSegNASError("--device mps: Apple MPS is not available here; use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MedSegNASError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")


def cpu_has_fast_bfloat16() -> bool:
    """Whether the CPU runs bfloat16 convolutions natively (Intel AMX), so that autocast pays off."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # private torch API: absent or failing means "do not count on it"
        return False


def cpu_batch_size(bundle_batch: int, roi: Sequence[int]) -> int:
    """Windows per network call on the CPU: about :data:`CPU_BATCH_VOXELS` input voxels, at least
    one window and at most twice the bundle's ``sw_batch_size``.

    A bundle's batch is sized for GPU memory. On the CPU bigger batches of big windows are not
    faster, they only hold more memory: the segment benchmark's UNet (96^3 windows, 512x512x150
    CT, 2 free cores, whole processes) inferred in 7.3-7.7 s with 2, 4 or 8 windows per call, at
    a peak of 1.2, 1.6-1.7 and 2.0-2.2 GiB. Small windows are still batched, where each call's
    fixed cost counts. The windows and their blending are MONAI's either way.
    """
    wanted = math.ceil(CPU_BATCH_VOXELS / max(1, math.prod(int(r) for r in roi)))
    return max(1, min(wanted, 2 * max(1, int(bundle_batch))))


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device`` (None: float32), see :attr:`SegmentOptions.amp`."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    if amp and device.type == "cpu" and cpu_has_fast_bfloat16():
        return torch.bfloat16
    return None


def _apply_transforms(transforms: Sequence[Any], image: torch.Tensor) -> torch.Tensor:
    """MONAI intensity transforms (array or dictionary) on a ``(C, ...)`` tensor, as a plain tensor.

    A compiled model's :class:`~.compiled.IntensityWindow` steps run without MONAI."""
    if all(getattr(t, "voxelwise", False) for t in transforms):
        for transform in transforms:
            image = transform(image)
        return image.float()
    from monai.data import MetaTensor
    from monai.transforms import MapTransform

    for transform in transforms:
        if isinstance(transform, MapTransform):
            key = transform.keys[0]
            image = transform({key: image})[key]
        else:
            image = transform(image)
        if not isinstance(image, torch.Tensor):
            image = torch.as_tensor(np.asarray(image))
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    return image.float()


def _fast_geometry(model: SegmentationModel, grid: Grid) -> list[Any]:
    """The model's geometric transforms with twice the voxel size (a Spacing is added if none)."""
    from .compiled import SpacingStep, is_grid_step

    if model.geometry and all(is_grid_step(t) for t in model.geometry) or model.compiled_for is not None:
        steps = [t.scaled(2.0) if isinstance(t, SpacingStep) else t for t in model.geometry]
        if not any(isinstance(t, SpacingStep) for t in steps):
            oriented = model_grid(grid, steps)
            steps.append(SpacingStep(tuple(float(s) * 2.0 for s in oriented.spacing), "bilinear"))
        return steps
    from monai.transforms import Spacing

    transforms = [copy.deepcopy(t) for t in model.geometry]
    scaled = False
    for transform in transforms:
        inner = getattr(transform, "spacing_transform", None)
        if inner is not None or type(transform).__name__ == "Spacing":
            target = inner if inner is not None else transform
            target.pixdim = np.asarray(target.pixdim, dtype=np.float64) * 2.0
            scaled = True
    if not scaled:
        oriented = model_grid(grid, transforms)
        transforms.append(Spacing(pixdim=(oriented.spacing * 2.0).tolist(), mode="bilinear"))
    return transforms


def _foreground_mask(volume: Volume, model: SegmentationModel) -> tuple[np.ndarray, str]:
    """Body voxels of the first channel, and how they were found (for the log)."""
    channel = volume.array[0]
    threshold = model.foreground_threshold()
    if threshold is not None:
        return channel > threshold, f"intensity > {threshold:g}"
    sample = channel[:: max(1, channel.shape[0] // 64), :: max(1, channel.shape[1] // 64)]
    low, high = np.percentile(sample, [1, 99])
    threshold = float(low + FOREGROUND_FRACTION * (high - low))
    return channel > threshold, f"intensity > {threshold:.4g} (5% of the 1-99% range)"


def box_to_voxels(
    grid: Grid,
    box: Sequence[float] | None = None,
    box_voxels: Sequence[int] | None = None,
) -> tuple[tuple[int, int], ...]:
    """The half-open voxel box ``((i0, i1), (j0, j1), (k0, k1))`` of ``grid`` to segment.

    Args:
        grid: the input image's grid (IJK -> RAS affine, mm).
        box: two opposite corners in RAS mm, ``(x0, y0, z0, x1, y1, z1)``, in any order: the
            voxels whose centres lie in it (for an oblique grid, the smallest voxel box holding
            those voxels).
        box_voxels: ``(i0, j0, k0, i1, j1, k1)`` directly, half-open (clipped to the image).

    Raises:
        ImageFormatError: the box is empty, or holds no voxel centre of the image.
    """
    shape = np.array(grid.shape)
    if box_voxels is not None:
        lo = np.asarray(box_voxels[:3], dtype=int)
        hi = np.asarray(box_voxels[3:], dtype=int)
        if np.any(hi <= lo):
            raise ImageFormatError(
                f"--box-voxels {','.join(map(str, box_voxels))} is empty: each end must exceed its start (i0 < i1, ...)"
            )
        what = f"--box-voxels {','.join(map(str, box_voxels))}"
    else:
        assert box is not None
        corners_ras = np.asarray(box, dtype=np.float64).reshape(2, 3)
        low, high = corners_ras.min(axis=0), corners_ras.max(axis=0)
        what = f"--box {','.join(f'{v:g}' for v in box)}"
        if np.any(high <= low):
            axis = "xyz"[int(np.argmax(high <= low))]
            raise ImageFormatError(f"{what} is empty along {axis}: give two opposite corners of a box")
        corners = np.array(list(itertools.product(*zip(low, high, strict=True))))  # (8, 3) RAS
        ijk = (np.linalg.inv(grid.affine) @ np.c_[corners, np.ones(8)].T)[:3].T
        eps = 1e-6  # a corner on a voxel centre includes it
        lo = np.ceil(ijk.min(axis=0) - eps).astype(int)
        hi = np.floor(ijk.max(axis=0) + eps).astype(int) + 1
    lo_clip, hi_clip = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.any(hi_clip <= lo_clip):
        ends = grid.affine[:3, :3] @ (np.array(list(itertools.product(*[(0, n - 1) for n in shape]))).T)
        ends = ends + grid.affine[:3, 3:4]
        span = ", ".join(
            f"{axis} {a:.1f} to {b:.1f}"
            for axis, a, b in zip("xyz", ends.min(axis=1), ends.max(axis=1), strict=True)
        )
        raise ImageFormatError(
            f"{what} holds no voxel of the image ({' x '.join(map(str, shape))} voxels; its voxel centres span "
            f"RAS {span} mm)"
        )
    return tuple((int(a), int(b)) for a, b in zip(lo_clip, hi_clip, strict=True))


def _restrict_plan(plan: _Plan, m_grid: Grid, in_grid: Grid, box: Sequence[tuple[int, int]]) -> _Plan:
    """Keep only the windows of ``plan`` that reach the input voxel ``box``: every window that
    covers a voxel of the box still runs (and no other), so the labels inside it are the ones a
    run over the whole image gives."""
    box_mask = np.zeros(in_grid.shape, dtype=bool)
    box_mask[_box_slices(box)] = True
    reaching = _plan_windows(m_grid, in_grid, plan.roi, plan.overlap, box_mask)
    keep = plan.keep & reaching.keep
    return _Plan(plan.roi, plan.overlap, plan.starts, keep, _kept_box(keep, plan.roi, m_grid.shape))


def _kept_box(
    keep: set[tuple[int, ...]], roi: Sequence[int], m_shape: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """The model-grid box covered by the ``keep`` windows (empty boxes when none)."""
    shape = np.array(m_shape)
    if not keep:
        return tuple((0, 0) for _ in shape)
    kept = np.array(sorted(keep)) - np.array(window_padding(tuple(m_shape), tuple(roi)))
    lo = np.clip(kept.min(axis=0), 0, shape)
    hi = np.clip(kept.max(axis=0) + np.array(roi), 0, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclass
class _Plan:
    """The windows of one run: which run, and the box of the model grid they cover."""

    roi: tuple[int, ...]
    overlap: float | tuple[float, ...]
    starts: list[tuple[int, ...]]  # padded-image coordinates, MONAI's order
    keep: set[tuple[int, ...]]
    box: tuple[tuple[int, int], ...]  # model-grid box (start, stop) covered by kept windows


def _plan_windows(
    m_grid: Grid,
    in_grid: Grid,
    roi: Sequence[int],
    overlap: float | tuple[float, ...],
    mask: np.ndarray | None,
) -> _Plan:
    roi = tuple(int(r) for r in roi)
    pad = window_padding(m_grid.shape, roi)
    starts = list(itertools.product(*window_starts(m_grid.shape, roi, overlap)))
    shape = np.array(m_grid.shape)
    if mask is None:
        keep = set(starts)
    else:
        to_input = index_map(in_grid, m_grid)  # model index -> input index
        in_shape = np.array(in_grid.shape)
        keep = set()
        for start in starts:
            lo = np.clip(np.array(start) - pad - 1, 0, shape - 1)  # one voxel more: interpolation neighbours
            hi = np.clip(np.array(start) - pad + np.array(roi), 0, shape - 1)
            reach = map_box(to_input, list(zip(lo, hi, strict=True)))
            a = np.clip(np.floor(reach[:, 0]).astype(int), 0, in_shape - 1)
            b = np.clip(np.ceil(reach[:, 1]).astype(int) + 1, a + 1, in_shape)
            if mask[a[0] : b[0], a[1] : b[1], a[2] : b[2]].any():
                keep.add(start)
    return _Plan(roi, overlap, starts, keep, _kept_box(keep, roi, m_grid.shape))


def _box_slices(box: Sequence[tuple[int, int]]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _input_box(m_grid: Grid, in_grid: Grid, box: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The box of input voxels whose position lies in (or next to) the model-grid ``box``."""
    if any(b <= a for a, b in box):
        return tuple((0, 0) for _ in box)
    reach = map_box(index_map(in_grid, m_grid), [(a - 1, b) for a, b in box])
    shape = np.array(in_grid.shape)
    lo = np.clip(np.floor(reach[:, 0]).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(reach[:, 1]).astype(int) + 2, lo, shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _torch_source(volume: Volume, grid: Grid, *, memory_order: bool = False) -> tuple[torch.Tensor, Grid]:
    """The voxels as a contiguous tensor, and the grid they lie on.

    ``memory_order``: the spatial axes are reordered to the order the array is stored in (the
    grid's axes and affine columns with them: the same voxels at the same points), so that an
    array stored first-axis-fastest (NIfTI as nibabel reads it) is used without a copy.
    """
    array = volume.array
    if array.dtype == np.bool_ or array.dtype.kind == "u" and array.dtype.itemsize > 1:
        array = array.astype(np.float32)  # torch has no general arithmetic on uint16+ / bool
    if not array.flags.writeable:
        array = array.copy()
    if memory_order and min(array.strides) > 0:
        axes = sorted(range(3), key=lambda axis: -array.strides[axis + 1])  # slowest-varying first
        if axes != [0, 1, 2]:
            array = array.transpose(0, *(axis + 1 for axis in axes))
            grid = Grid(tuple(grid.shape[axis] for axis in axes), grid.affine[:, [*axes, 3]])  # type: ignore[arg-type]
    return torch.from_numpy(np.ascontiguousarray(array)), grid


class _Runner:
    """One attempt at inference on a device (recreated for each out-of-memory fallback)."""

    def __init__(
        self,
        model: SegmentationModel,
        options: SegmentOptions,
        progress: Progress,
        device: torch.device,
        sw_batch_size: int,
        output_device: torch.device,
    ) -> None:
        self.model, self.options, self.progress = model, options, progress
        self.device, self.sw_batch_size, self.output_device = device, sw_batch_size, output_device
        self.autocast = autocast_dtype(device, options.amp)
        self.probabilities = options.tta  # TTA averages probabilities inside each window
        self.done = 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        network = self.model.network
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last_3d)  # as the network (optimize.py)
        context = (
            torch.autocast(self.device.type, dtype=self.autocast)
            # a compiled network is a trace that holds its autocast casts already
            if self.autocast and self.model.compiled_for is None
            else contextlib.nullcontext()
        )
        with context, _bundle_errors(self.model):
            if not self.options.tta:
                return network(batch).float()
            total = None
            for dims in TTA_FLIPS:
                x = batch.flip(dims) if dims else batch
                probs = torch.softmax(network(x).float(), dim=1)
                probs = probs.flip(dims) if dims else probs
                total = probs if total is None else total.add_(probs)
            return total / len(TTA_FLIPS)

    def infer(self, image: torch.Tensor, plan: _Plan | None, total_windows: int) -> torch.Tensor:
        """``(C_in, *grid)`` -> ``(C_out, *grid)`` logits (or probabilities with TTA)."""
        if plan is None:  # the bundle runs the whole image at once (SimpleInferer)
            out = self.forward(image[None].to(self.device))
            self.progress.step("infer", 1, 1)
            return out[0].to(self.output_device)
        try:
            return self._stitch(image, plan, total_windows)
        except _OtherOutputShape:
            return self._monai_sliding_window(image, plan, total_windows)

    def _stitch(self, image: torch.Tensor, plan: _Plan, total_windows: int) -> torch.Tensor:
        """MONAI's ``sliding_window_inference`` (same padding, windows, blending), minus its costs.

        The sum of the window outputs is kept in the network's memory layout (channels-last on
        the CPU, so each addition reads and writes contiguous memory); with constant blending
        there is no multiplication by an all-ones weight map, and the count of windows per voxel
        is the outer product of the counts per axis (exact small integers, as MONAI's sum).
        Windows outside the body add the background logit to the background channel only.
        """
        model = self.model
        roi = tuple(int(r) for r in plan.roi)
        spatial = tuple(int(s) for s in image.shape[1:])
        pad: list[int] = []  # torch.nn.functional.pad order: last axis first, as MONAI
        for axis in (2, 1, 0):
            missing = max(roi[axis] - spatial[axis], 0)
            pad += [missing // 2, missing - missing // 2]
        if any(pad):
            image = torch.nn.functional.pad(image[None], pad, mode=model.pad_mode, value=model.cval)[0]
        padded = tuple(int(s) for s in image.shape[1:])
        num_classes = model.num_outputs
        channels_last = self.device.type == "cpu"
        if channels_last:
            total = torch.zeros((*padded, num_classes), dtype=torch.float32, device=self.output_device)
            total = total.permute(3, 0, 1, 2)
        else:
            total = torch.zeros((num_classes, *padded), dtype=torch.float32, device=self.output_device)
        weights = None
        if model.blend_mode != "constant" and roi in model.importance_maps:
            weights = model.importance_maps[roi].to(self.output_device)  # stored with a compiled model
        elif model.blend_mode != "constant":
            from monai.data.utils import compute_importance_map

            weights = compute_importance_map(
                roi, mode=model.blend_mode, sigma_scale=model.sigma_scale, device=self.output_device
            ).float()
        background = 1.0 if self.probabilities else BACKGROUND_LOGIT
        kept = [start for start in plan.starts if start in plan.keep]
        for start in plan.starts:
            if start not in plan.keep:
                # sigmoid outputs: every channel off; softmax: the background channel wins
                channel = slice(None) if model.multilabel else 0
                if model.multilabel:
                    background = -BACKGROUND_LOGIT
                region = total[(channel, *_window_slices(start, roi))]
                region.add_(weights * background if weights is not None else background)
        # As many network calls as batches of sw_batch_size need, with sizes differing by at most
        # one: no small last batch, which costs more per window.
        calls = math.ceil(len(kept) / max(1, int(self.sw_batch_size)))
        bounds = [round(n * len(kept) / calls) for n in range(calls + 1)] if calls else [0]
        for first, stop in itertools.pairwise(bounds):
            starts = kept[first:stop]
            windows = torch.stack([image[(slice(None), *_window_slices(start, roi))] for start in starts])
            outputs = self.forward(windows.to(self.device))
            if tuple(outputs.shape[2:]) != roi or int(outputs.shape[1]) != num_classes:
                raise _OtherOutputShape
            outputs = outputs.to(self.output_device)
            for start, output in zip(starts, outputs, strict=True):
                if weights is not None:
                    output = output * weights
                total[(slice(None), *_window_slices(start, roi))] += output
            self.done += len(starts)
            self.progress.step("infer", self.done, total_windows, windows=total_windows)
            self.progress.check_stop()
        if weights is None:
            count = _window_counts(plan.starts, roi, padded, self.output_device)
        else:
            count = torch.zeros(padded, dtype=torch.float32, device=self.output_device)
            for start in plan.starts:
                count[_window_slices(start, roi)] += weights
        total /= count
        if any(pad):
            before = pad[::-1][1::2]  # per axis 0, 1, 2: the padding added before it
            total = total[(slice(None), *(slice(b, b + n) for b, n in zip(before, spatial, strict=True)))]
        return total

    def _monai_sliding_window(self, image: torch.Tensor, plan: _Plan, total_windows: int) -> torch.Tensor:
        """``monai.inferers.sliding_window_inference`` itself, for networks whose output has
        another size than their input window."""
        from monai.inferers import sliding_window_inference

        num_classes = self.model.num_outputs
        background = torch.zeros((1, num_classes, *plan.roi), dtype=torch.float32, device=self.device)
        if self.model.multilabel:
            background[:] = -BACKGROUND_LOGIT  # sigmoid outputs: every channel off
        else:
            background[:, 0] = 1.0 if self.probabilities else BACKGROUND_LOGIT
        self.done = 0

        def predictor(windows: torch.Tensor, coords: list) -> torch.Tensor:
            flags = [tuple(int(s.start) for s in c[2:]) in plan.keep for c in coords]
            run = [n for n, flag in enumerate(flags) if flag]
            if len(run) == len(flags):
                out = self.forward(windows)
            else:
                out = background.expand(len(flags), *background.shape[1:]).clone()
                if run:
                    out[run] = self.forward(windows[run])
            if run:
                self.done += len(run)
                self.progress.step("infer", self.done, total_windows, windows=total_windows)
                self.progress.check_stop()
            return out

        model = self.model
        out = sliding_window_inference(
            image[None].to(self.device),
            roi_size=plan.roi,
            sw_batch_size=self.sw_batch_size,
            predictor=predictor,
            overlap=plan.overlap,
            mode=model.blend_mode,
            sigma_scale=model.sigma_scale,
            padding_mode=model.pad_mode,
            cval=model.cval,
            device=self.output_device,
            with_coord=True,
        )
        return out[0]


@contextlib.contextmanager
def _bundle_errors(model: SegmentationModel):
    """Errors raised inside a trusted bundle's own network code are reported as the bundle's
    (out-of-memory errors pass, for the engine's fallbacks)."""
    from .model import BundleCodeError

    if not model.trusted:
        yield
        return
    try:
        yield
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        if _is_out_of_memory(exc) or isinstance(exc, _OtherOutputShape):
            raise
        raise BundleCodeError(
            f"bundle {model.name}: its own network code failed: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from exc
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, ImportError, AssertionError) as exc:
        raise BundleCodeError(
            f"bundle {model.name}: its own network code failed: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}"
        ) from exc


class _OtherOutputShape(Exception):
    """The network's output window is not its input window (MONAI then rescales the windows)."""


def _window_slices(start: Sequence[int], roi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(a) + int(r)) for a, r in zip(start, roi, strict=True))


def _window_counts(
    starts: Sequence[Sequence[int]], roi: Sequence[int], shape: Sequence[int], device: torch.device
) -> torch.Tensor:
    """How many windows cover each voxel: the outer product of the per-axis counts."""
    per_axis = []
    for axis, (size, window) in enumerate(zip(shape, roi, strict=True)):
        counts = torch.zeros(int(size), dtype=torch.float32)
        for first in sorted({int(start[axis]) for start in starts}):
            counts[first : first + int(window)] += 1.0
        per_axis.append(counts)
    count = per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]
    return count.to(device)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class WindowLayout:
    """Where a run's voxels and windows lie (see :func:`layout_windows`).

    Attributes:
        in_grid / m_grid: the input grid and the model grid (``--fast``: twice the voxel size).
        region: the input voxel box asked for (``--box``), or None.
        roi / overlap: the sliding windows (None: the bundle runs the whole image at once).
        plan: the windows, which run and the model-grid box they cover (None without windows).
        messages: what the planning logged (model grid, windows skipped), for a run given this layout.
    """

    in_grid: Grid
    m_grid: Grid
    region: tuple[tuple[int, int], ...] | None
    roi: tuple[int, ...] | None
    overlap: float | tuple[float, ...]
    plan: _Plan | None
    messages: list[str] = field(default_factory=list)


def layout_windows(
    volume: Volume, model: SegmentationModel, options: SegmentOptions, progress: Progress | None = None
) -> WindowLayout:
    """The grids and sliding windows a run of ``model`` on ``volume`` uses, without running it
    (what :func:`segment_volume` and :func:`~.plan.estimate_segmentation` both plan from).

    Raises:
        ImageFormatError: an empty ``--box``, or a model grid too large to hold.
    """
    progress = progress or Progress()
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        progress.log(message)

    name = volume.meta.get("path") or "the image"
    in_grid = Grid(volume.spatial_shape, volume.affine)
    region: tuple[tuple[int, int], ...] | None = None
    if options.box is not None or options.box_voxels is not None:
        region = box_to_voxels(in_grid, options.box, options.box_voxels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        geometry = _fast_geometry(model, in_grid) if options.fast else model.geometry
        m_grid = model_grid(in_grid, geometry)
    needed_gb = m_grid.num_voxels * (model.num_classes + volume.num_channels + 1) * 4 / 1e9
    if needed_gb > MAX_MODEL_GRID_GB:
        raise ImageFormatError(
            f"{name}: on the model grid ({' x '.join(map(str, m_grid.shape))} voxels) the predictions would "
            f"need {needed_gb:.0f} GB; is the image's voxel size right? --fast halves each side"
        )
    roi = tuple(options.roi) if options.roi else model.roi_size
    overlap = options.overlap if options.overlap is not None else model.overlap
    spacing = " x ".join(f"{s:.3g}" for s in m_grid.spacing)
    say(
        f"model grid {' x '.join(map(str, m_grid.shape))} voxels of {spacing} mm"
        + (" (--fast: twice the model's voxel size)" if options.fast else "")
    )

    plan: _Plan | None = None
    if roi is not None:
        mask, how = _foreground_mask(volume, model) if options.crop else (None, "")
        if mask is not None and not mask.any():
            say(f"no voxel has {how}: running every window")
            mask = None
        plan = _plan_windows(m_grid, in_grid, roi, overlap, mask)
        total = len(plan.starts)
        if mask is not None:
            say(
                f"{total} windows of {' x '.join(map(str, plan.roi))}; {len(plan.keep)} contain body voxels "
                f"({how}), {total - len(plan.keep)} outside the body are skipped (--no-crop runs them)"
            )
        else:
            say(f"{total} windows of {' x '.join(map(str, plan.roi))}")
        if region is not None:
            plan = _restrict_plan(plan, m_grid, in_grid, region)
            say(
                "box: input voxels "
                + " x ".join(f"{a}:{b}" for a, b in region)
                + f"; {len(plan.keep)} of {total} windows reach it"
            )

    return WindowLayout(in_grid, m_grid, region, roi, overlap, plan, messages)


def windows_per_call(
    model: SegmentationModel, options: SegmentOptions, device: torch.device, roi: Sequence[int] | None
) -> int:
    """Windows per network call: ``options.sw_batch_size``, else the bundle's (on the CPU
    :func:`cpu_batch_size` of it)."""
    if options.sw_batch_size:
        return int(options.sw_batch_size)
    if device.type == "cpu" and roi is not None:
        return cpu_batch_size(model.sw_batch_size, roi)
    return max(1, int(model.sw_batch_size))


def segment_volume(
    volume: Volume,
    model: SegmentationModel,
    options: SegmentOptions | None = None,
    progress: Progress | None = None,
    *,
    layout: WindowLayout | None = None,
) -> SegmentResult:
    """Segment one image (channels stacked in ``volume``) with ``model``.

    ``layout``: the windows already planned for this volume, model and options
    (:func:`layout_windows`, as a :class:`~.plan.SegmentPlan` holds them), not planned again.

    Returns:
        the label map on ``volume``'s grid and run statistics.

    Raises:
        ImageFormatError: the image's channel count does not match the model's inputs, or the
            model grid would be unreasonably large.
        MedSegNASError: the requested device is not available.
    """
    options = options or SegmentOptions()
    progress = progress or Progress()
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    name = volume.meta.get("path") or "the image"
    if volume.num_channels != model.in_channels:
        raise ImageFormatError(
            f"{name}: {volume.num_channels} channel(s) given, but model '{model.name}' takes {model.in_channels} "
            f"({', '.join(model.spec.channels) if model.spec is not None else 'see its metadata'}); "
            "pass one image per channel, in the model's order"
        )
    device = select_device(options.device)
    if options.threads:
        torch.set_num_threads(int(options.threads))

    if layout is None:
        layout = layout_windows(volume, model, options, progress)
    else:
        for message in layout.messages:
            progress.log(message)
    in_grid, m_grid, region, roi, plan = layout.in_grid, layout.m_grid, layout.region, layout.roi, layout.plan
    timings["plan"] = time.perf_counter() - clock

    sw_batch_size = windows_per_call(model, options, device, roi)
    # The stitched output stays on CUDA (unless options.stitch_on_cpu); MPS and CPU runs stitch
    # and invert in CPU memory.
    on_cuda = device.type == "cuda" and not options.stitch_on_cpu
    attempts = [(device, sw_batch_size, device if on_cuda else torch.device("cpu"))]
    if model.compiled_for is not None and model.compiled_for[0] != device.type:
        raise MedSegNASError(
            f"model '{model.name}' was loaded compiled for {model.compiled_for[0]}, not {device.type}"
        )
    if device.type == "cuda" and model.compiled_for is not None:
        # A trace compiled for CUDA runs there only: one window per batch, output in CPU memory.
        if sw_batch_size > 1 or on_cuda:
            attempts.append((device, 1, torch.device("cpu")))
    elif device.type == "cuda":
        if sw_batch_size > 1 or on_cuda:
            attempts.append((device, 1, torch.device("cpu")))
        attempts.append((torch.device("cpu"), 1, torch.device("cpu")))
    for number, (run_device, run_batch, out_device) in enumerate(attempts):
        try:
            labels = _run(
                volume,
                model,
                options,
                progress,
                plan,
                in_grid,
                m_grid,
                run_device,
                run_batch,
                out_device,
                timings,
            )
            break
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if options.roi and not _is_out_of_memory(exc):
                reason = " ".join(str(exc).split())[:200]
                raise MedSegNASError(
                    f"model '{model.name}' cannot run on {' x '.join(map(str, roi))} windows ({reason}); "
                    f"use its own window size {' x '.join(map(str, model.roi_size or ()))} or another --roi"
                ) from None
            if not _is_out_of_memory(exc) or number == len(attempts) - 1:
                raise
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
            following = attempts[number + 1]
            how = (
                "one window per batch, output in CPU memory" if following[0].type == "cuda" else "on the CPU"
            )
            progress.log(
                f"{run_device.type} ran out of memory with {run_batch} window(s) per batch; retrying {how}"
            )
        finally:
            model.network.to("cpu", memory_format=torch.contiguous_format)
    device_used = run_device
    if region is not None:
        # Only the box was asked for: the windows run reach beyond it, their labels there are dropped.
        inside = np.zeros(labels.shape, dtype=bool)
        inside[_box_slices(region)] = True
        labels[~inside] = 0

    clock = time.perf_counter()
    if options.postprocess is not None and options.postprocess.active:
        progress.step("postprocess", 0, 1)
        postprocess_labels(labels, options.postprocess, [lb.value for lb in model.labels])
        progress.log(f"post-processing: {options.postprocess.describe()}")
        progress.step("postprocess", 1, 1)
    timings["postprocess"] = time.perf_counter() - clock

    table = list(model.labels)
    result = Volume(labels[None], volume.affine.copy(), {"labels": table, "model": model.name})
    stats = {
        "device": device_used.type,
        "autocast": str(autocast_dtype(device_used, options.amp) or "float32").replace("torch.", ""),
        "input_shape": list(in_grid.shape),
        "model_grid": list(m_grid.shape),
        "model_spacing": [round(float(s), 4) for s in m_grid.spacing],
        "windows": len(plan.starts) if plan else 1,
        "windows_run": len(plan.keep) if plan else 1,
        "box_voxels": [list(b) for b in region] if region is not None else None,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "voxels": {lb.name: int(np.count_nonzero(labels == lb.value)) for lb in table if lb.value != 0},
    }
    return SegmentResult(result, stats)


def _run(
    volume: Volume,
    model: SegmentationModel,
    options: SegmentOptions,
    progress: Progress,
    plan: _Plan | None,
    in_grid: Grid,
    m_grid: Grid,
    device: torch.device,
    sw_batch_size: int,
    output_device: torch.device,
    timings: dict[str, float],
) -> np.ndarray:
    """Resample, infer, invert: the ``(I, J, K)`` label map of the input grid."""
    runner = _Runner(model, options, progress, device, sw_batch_size, output_device)
    work_device = device if device.type == "cuda" else torch.device("cpu")  # grid_sample 3D: CUDA or CPU
    clock = time.perf_counter()
    progress.step("preprocess", 0, 1)
    identity = _same_grid(in_grid, m_grid)
    with torch.inference_mode():
        # Voxel-wise intensities resample separably from any axis order; otherwise the input's axis
        # order is kept, so that statistics and grid_sample round as in MONAI.
        memory_order = model.pointwise and not model.pre_intensity and not identity
        source, source_grid = _torch_source(volume, in_grid, memory_order=memory_order)
        source = source.to(work_device)
        if model.pre_intensity:
            source = _apply_transforms(model.pre_intensity, source.float())
        if plan is not None and model.pointwise and not identity:
            box = plan.box
        else:
            box = tuple((0, s) for s in m_grid.shape)
        region = (slice(None), *_box_slices(box))
        if identity:
            # No resampling is needed (no Orientation/Spacing, or they change nothing): the voxels
            # are copied, so exact zeros stay zero for NormalizeIntensity(nonzero=True), as in MONAI.
            image = source.to(torch.float32, copy=True)
            if model.post_intensity:
                image = _apply_transforms(model.post_intensity, image)
        else:
            image = torch.zeros((volume.num_channels, *m_grid.shape), dtype=torch.float32, device=work_device)
        if not identity and all(b > a for a, b in box):
            resample(
                source,
                index_map(source_grid, m_grid),
                [b - a for a, b in box],
                mode=model.interpolation,
                padding_mode=model.padding_mode,
                dst_offset=[a for a, _ in box],
                # Statistics-based normalisation (z-score over non-zero voxels) tells exact zeros
                # from tiny values: resample in float64 as MONAI's Spacing does, so that the same
                # voxels are zero. Voxel-wise windows (CT) do not care: float32 is enough.
                dtype=torch.float32 if model.pointwise else torch.float64,
                out=image[region],
                separable=model.pointwise,
            )
            if model.channel_steps:
                image = _apply_channel_steps(model, image)
            if model.post_intensity:
                image[region] = _apply_transforms(model.post_intensity, image[region])
        del source
        crop_box = None
        if model.crop_foreground is not None:
            image, crop_box, plan = _crop_foreground(image, model, m_grid, in_grid, plan)
            progress.log(
                "foreground crop (CropForeground): "
                + " x ".join(str(b - a) for a, b in crop_box)
                + f" of {' x '.join(map(str, m_grid.shape))} model voxels"
            )
        progress.step("preprocess", 1, 1)
        timings["preprocess"] = time.perf_counter() - clock

        clock = time.perf_counter()
        prepare_for_inference(model.network, device)
        total_windows = len(plan.keep) if plan is not None else 1
        progress.step("infer", 0, max(total_windows, 1), windows=total_windows)
        if plan is not None and not plan.keep:
            prediction = None
        else:
            prediction = runner.infer(image, plan, total_windows)
        del image
        if prediction is not None and crop_box is not None:
            # MONAI's Invertd pads the cropped predictions back with zeros.
            full = torch.zeros((prediction.shape[0], *m_grid.shape), dtype=prediction.dtype)
            full[(slice(None), *_box_slices(crop_box))] = prediction.to(full.device)
            prediction, plan = full, None
        timings["infer"] = time.perf_counter() - clock

        clock = time.perf_counter()
        if model.multilabel:
            labels = _invert_multilabel(prediction, model, in_grid, m_grid, identity)
        else:
            labels = _invert(
                prediction, model, plan, in_grid, m_grid, softmax=model.softmax and not options.tta,
                identity=identity,
            )  # fmt: skip
        for step in model.input_label_steps:
            labels[...] = _apply_label_step(step, torch.from_numpy(np.asarray(labels))).numpy()
        timings["invert"] = time.perf_counter() - clock
    return labels


def _apply_channel_steps(model: SegmentationModel, image: torch.Tensor) -> torch.Tensor:
    """The bundle's own input-combining transforms (``--trust``): each of its input keys gets one
    channel of the resampled image, in order, as its data dictionary would hold them."""
    from monai.data import MetaTensor

    from .model import BundleCodeError

    for transform, keys, out_key in model.channel_steps:
        if len(keys) != image.shape[0]:
            raise MedSegNASError(
                f"bundle {model.name}: its step {type(transform).__name__} combines {len(keys)} inputs "
                f"({', '.join(keys)}); give {len(keys)} images, in that order"
            )
        data = {key: MetaTensor(image[n : n + 1].clone()) for n, key in enumerate(keys)}
        try:
            out = transform(data)[out_key]
        except Exception as exc:
            raise BundleCodeError(
                f"bundle {model.name}: its own transform {type(transform).__name__} failed: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ) from exc
        out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(np.asarray(out))
        image = out.to(torch.float32).contiguous()
    return image


def _has_half_voxel_ties(aligned: Any, shape: Sequence[int], offset: Sequence[int]) -> bool:
    """Whether an axis-aligned inversion samples some model coordinate exactly at ``n + 0.5``."""
    if aligned is None:
        return False
    for axis in range(3):
        coords = aligned.coordinates(axis, int(offset[axis]), int(shape[axis]))
        if np.any(np.abs(coords - np.floor(coords) - 0.5) < 1e-6):
            return True
    return False


def _monai_nearest_inversion(
    model_labels: torch.Tensor, model: SegmentationModel, m_grid: Grid, in_grid: Grid
) -> np.ndarray:
    """Nearest-neighbour inversion of a model-grid label map as MONAI's ``Invertd`` computes it:
    ``SpatialResample`` (float64, the ``Spacing``'s padding) onto the oriented input grid, then
    the orientation undone (an exact flip/permutation)."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    from .compiled import SpacingStep

    spacing_at = next(
        (
            index
            for index, step in enumerate(model.geometry)
            if isinstance(step, SpacingStep) or type(step).__name__.rstrip("d") == "Spacing"
        ),
        len(model.geometry),
    )
    before_spacing = model.geometry[:spacing_at]
    oriented = model_grid(in_grid, before_spacing)
    source = MetaTensor(
        model_labels[None].to(torch.float64).cpu(), affine=torch.as_tensor(m_grid.affine, dtype=torch.float64)
    )
    resampler = SpatialResample(mode="nearest", padding_mode=model.padding_mode, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = resampler(
            source,
            dst_affine=torch.as_tensor(oriented.affine, dtype=torch.float64),
            spatial_size=oriented.shape,
        )
    values = torch.as_tensor(values.as_tensor() if hasattr(values, "as_tensor") else values)
    back = axis_aligned(index_map(oriented, in_grid))  # input index -> oriented index: flips, permutation
    result = resample_axis_aligned(values, back, in_grid.shape, mode="nearest", dtype=None)[0]
    return result.round().to(torch.int64).numpy()


def _same_grid(a: Grid, b: Grid, tolerance: float = 1e-6) -> bool:
    """Whether two grids are the same voxels at the same points (resampling would copy)."""
    return tuple(a.shape) == tuple(b.shape) and bool(np.allclose(a.affine, b.affine, rtol=0, atol=tolerance))


def _crop_foreground(
    image: torch.Tensor, model: SegmentationModel, m_grid: Grid, in_grid: Grid, plan: _Plan | None
) -> tuple[torch.Tensor, tuple[tuple[int, int], ...], _Plan | None]:
    """The bundle's ``CropForeground`` box of the preprocessed model-grid image (MONAI computes
    it), the image cropped to it and the windows tiling the crop (all run, as MONAI's)."""
    transform = model.crop_foreground
    cropper = getattr(transform, "cropper", transform)
    start, end = cropper.compute_bounding_box(image.cpu())
    shape = np.array(m_grid.shape)
    start = np.clip(np.asarray(start, dtype=int), 0, shape)
    end = np.clip(np.asarray(end, dtype=int), start, shape)
    box = tuple((int(a), int(b)) for a, b in zip(start, end, strict=True))
    if any(b <= a for a, b in box):
        box = tuple((0, int(n)) for n in shape)
    cropped = image[(slice(None), *_box_slices(box))].contiguous()
    if plan is not None:
        crop_affine = m_grid.affine.copy()
        crop_affine[:3, 3] = m_grid.affine[:3, :3] @ start + m_grid.affine[:3, 3]
        crop_grid = Grid(tuple(b - a for a, b in box), crop_affine)  # type: ignore[arg-type]
        plan = _plan_windows(crop_grid, in_grid, plan.roi, plan.overlap, None)
    return cropped, box, plan


def _apply_label_step(step: Any, labels: torch.Tensor) -> torch.Tensor:
    """A MONAI label transform (``KeepLargestConnectedComponent(d)``) on a ``(...)`` label map."""
    from monai.transforms import MapTransform

    from .postprocess import LargestComponentStep

    if isinstance(step, LargestComponentStep):
        return step(labels)
    data = labels[None]
    if isinstance(step, MapTransform):
        out = step({step.keys[0]: data})[step.keys[0]]
    else:
        out = step(data)
    out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    return out[0].to(labels.dtype)


def _invert_multilabel(
    prediction: torch.Tensor | None, model: SegmentationModel, in_grid: Grid, m_grid: Grid, identity: bool
) -> np.ndarray:
    """Sigmoid channels -> input grid (linear, as MONAI's Invertd) -> thresholded (``>=``, as
    ``AsDiscrete(threshold=...)``) -> one label map by the bundle's merge step."""
    labels = np.zeros(in_grid.shape, dtype=np.uint8 if max(lb.value for lb in model.labels) < 256 else np.uint16,
                      order="F")  # fmt: skip
    if prediction is None:
        return labels
    if identity:
        channels = torch.sigmoid(prediction.float()) >= model.threshold
        labels[...] = model.merge(channels).cpu().numpy()
        return labels
    for start, stop, values in resample_slabs(
        prediction,
        index_map(m_grid, in_grid),
        in_grid.shape,
        mode="bilinear",
        padding_mode=model.padding_mode,
        source_transform=torch.sigmoid if model.sigmoid_first else None,
    ):
        probabilities = values if model.sigmoid_first else torch.sigmoid(values)
        labels[start:stop] = model.merge(probabilities >= model.threshold).cpu().numpy()
    return labels


def argmax_channels(values: torch.Tensor) -> torch.Tensor:
    """``values.argmax(dim=0)`` as uint8 (int16 beyond 256 channels), for ``(C, ...)`` tensors.

    Through ``max(dim=0)``, which returns the first largest channel on ties as ``argmax`` does
    and runs 1.2-4x faster than ``argmax`` on the CPU in either memory layout.
    """
    dtype = torch.uint8 if values.shape[0] <= 256 else torch.int16
    return values.max(dim=0).indices.to(dtype)


def _model_labels(prediction: torch.Tensor, box: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Argmax labels of the model grid: computed inside ``box`` (the windows that ran), 0 outside."""
    dtype = torch.uint8 if prediction.shape[0] <= 256 else torch.int16
    labels = torch.zeros(prediction.shape[1:], dtype=dtype, device=prediction.device)
    if all(b > a for a, b in box):
        labels[_box_slices(box)] = argmax_channels(prediction[(slice(None), *_box_slices(box))])
    return labels


def _foreground_box(labels: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """The model-grid box of the voxels labelled non-background, one voxel wider.

    An input voxel is interpolated from the 8 model voxels around it. Where all 8 are background
    by argmax, the interpolated probabilities are too (a convex combination keeps the order), so
    only input voxels in this box need interpolating: the rest is background exactly.
    """
    foreground = labels != 0
    bounds = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = torch.nonzero(foreground.any(dim=others[1]).any(dim=others[0]))
        if hits.numel() == 0:
            return tuple((0, 0) for _ in range(3))
        lo, hi = int(hits.min()), int(hits.max()) + 1
        bounds.append((max(lo - 1, 0), min(hi + 1, int(labels.shape[axis]))))
    return tuple(bounds)


def _invert(
    prediction: torch.Tensor | None,
    model: SegmentationModel,
    plan: _Plan | None,
    in_grid: Grid,
    m_grid: Grid,
    *,
    softmax: bool,
    identity: bool = False,
) -> np.ndarray:
    """Model-grid predictions ``(C, *m_grid)`` -> ``(I, J, K)`` labels on the input grid.

    The bundle's label steps on the model grid (``KeepLargestConnectedComponent`` before
    ``Invertd``) run on the argmax labels first; the inversion is then nearest-neighbour. On the
    same grid (``identity``) the labels are copied.

    Axis-aligned grids go through :func:`~.geometry.argmax_of_interpolation` (probabilities
    interpolated only at label boundaries) or a separable nearest-neighbour gather; other grids
    are resampled in slabs with ``grid_sample``.
    """
    dtype = np.uint8 if model.num_classes <= 256 else np.uint16
    # First axis fastest, as image files store voxels: written without a transposing copy.
    labels = np.zeros(in_grid.shape, dtype=dtype, order="F")
    if prediction is None:
        return labels
    model_labels = _model_labels(
        prediction, plan.box if plan is not None else tuple((0, s) for s in m_grid.shape)
    )
    for step in model.model_label_steps:
        model_labels = _apply_label_step(step, model_labels.cpu()).to(model_labels.dtype)
    if identity:
        labels[...] = model_labels.cpu().numpy()
        return labels
    in_box = _input_box(m_grid, in_grid, _foreground_box(model_labels))
    if any(b <= a for a, b in in_box):
        return labels
    to_model = index_map(m_grid, in_grid)
    shape = [b - a for a, b in in_box]
    offset = [a for a, _ in in_box]
    target = labels[_box_slices(in_box)]
    aligned = axis_aligned(to_model)
    if model.invert == "nearest" and _has_half_voxel_ties(aligned, shape, offset):
        # Input voxels exactly half-way between two model voxels: which one MONAI's Invertd picks
        # depends on its float64 arithmetic, so these maps are inverted by MONAI's own resampler.
        labels[...] = _monai_nearest_inversion(model_labels, model, m_grid, in_grid)
        return labels
    if aligned is not None and model.invert == "nearest" and model.padding_mode in ("border", "zeros"):
        values = resample_axis_aligned(
            model_labels[None], aligned, shape, mode="nearest", padding_mode=model.padding_mode,
            dst_offset=offset, dtype=None,
        )[0]  # fmt: skip
        target[...] = values.cpu().numpy()
        return labels
    if (
        aligned is not None
        and model.invert == "linear"
        and model.padding_mode == "border"
        and model.num_classes < 255
    ):
        values = argmax_of_interpolation(
            prediction, model_labels, aligned, shape, dst_offset=offset, softmax=softmax
        )
        target[...] = values.cpu().numpy()
        return labels
    if model.invert in ("nearest", "label_linear"):
        # label_linear: the bundle inverts its argmax labels with Invertd(nearest_interp=False), so
        # MONAI interpolates the label values trilinearly; its map, rounded, is what is computed.
        source = model_labels[None].float()
        mode = "nearest" if model.invert == "nearest" else "bilinear"
        reduce = lambda values: values[0].round()  # noqa: E731
        transform = None
    else:
        source, mode, reduce = prediction, "bilinear", argmax_channels
        transform = (lambda crop: torch.softmax(crop, dim=0)) if softmax else None
    for start, stop, values in resample_slabs(
        source,
        to_model,
        shape,
        mode=mode,
        padding_mode=model.padding_mode,
        dst_offset=offset,
        source_transform=transform,
    ):
        target[start:stop] = reduce(values).cpu().numpy().astype(dtype, copy=False)
    return labels
