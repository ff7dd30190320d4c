"""Bundles compiled for segmentation: a bundle's second run imports no MONAI.

A cold ``medsegnas segment`` spends seconds importing MONAI (its package imports every
sub-package and every optional package installed: about 3 s of a 14 s CPU run, 17 s of a 22 s
GPU run) before it parses the bundle's config. For the bundles whose run needs nothing of MONAI
but its grid arithmetic, one intensity window and the network, the first run (which loads the
bundle the full way) stores in the user cache (``<cache>/compiled/<fingerprint>/``):

- ``model.json``: what :class:`~.model.SegmentationModel` holds besides the network, with the
  geometric and intensity steps as the small classes below (:class:`OrientationStep`,
  :class:`SpacingStep`, :class:`IntensityWindow`), and the Gaussian window weights;
- ``network-<device>-<precision>.pt``: the network as the engine runs it (batch norm folded,
  channels-last on the CPU), traced with :func:`torch.jit.trace` under the run's autocast (the
  trace records the casts, so the traced graph is the autocast run), saved with
  :func:`torch.jit.save`; :func:`torch.jit.load` reads it back in about 0.1 s without MONAI.

Later runs of the same bundle folder (same config files, same weight files: the
:func:`bundle_fingerprint`) on the same device and precision load those instead.

Nothing is stored unless it gives the same label maps: at compile time the steps' grids are
compared with MONAI's own (lazy ``Orientation``/``Spacing`` on the run's image grid and on
oblique, flipped and anisotropic probe grids), the intensity window with MONAI's transform on
values across its range (bit for bit), and the traced network with the network on random
windows of other batch sizes (equal to float rounding, the same argmax). Only bundles opened
without ``--trust`` are compiled (a trusted bundle's own code is not traced), and only those the
engine runs with these steps: no foreground crop, multi-label outputs, label-map steps or
bundle-code steps (they keep the full path).

TorchScript is deprecated from torch 2.13 (``torch.jit.trace``/``save``/``load`` warn) in favour
of ``torch.export``; but loading an exported program imports torch's compiler stack (dynamo,
sympy: 2.2 s measured on the development machine, about what MONAI's import costs), which
defeats the purpose, while ``torch.jit.load`` takes about 0.1 s. Should a torch release drop
TorchScript, compiling fails and every run takes the full path (nothing breaks, nothing is faster).

The cache is the user's own folder, as the calibration cache (:mod:`~MedSegNASLib.user_cache`);
an entry that cannot be read counts as absent. A stored network is a TorchScript archive written
by this module from a network built by the safe bundle loader, never a file from a bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "COMPILED_KIND",
    "OrientationStep",
    "SpacingStep",
    "IntensityWindow",
    "bundle_fingerprint",
    "grid_steps_of",
    "steps_grid",
    "is_grid_step",
    "intensity_steps_of",
    "compile_model",
    "load_compiled",
    "precision_name",
]

#: Cache kind (folder under the user cache) of compiled bundles.
COMPILED_KIND = "compiled"
#: Layout version of ``model.json``; a change makes older entries absent.
COMPILED_FORMAT = 1
#: MONAI's tolerance for "the same spacing" (``monai.utils.AFFINE_TOL``): a pixdim within it of the
#: image's own spacing keeps the image's spacing.
AFFINE_TOL = 1e-3
#: Bundle files that are read as configuration (hashed by content); others are weights (by size and time).
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
#: Largest difference between the traced and the eager network's outputs, relative to their size.
TRACE_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- grid steps


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` in float64 as MONAI composes pending affines (``torch.matmul``), to the last bit."""
    product = torch.matmul(
        torch.as_tensor(left, dtype=torch.float64), torch.as_tensor(right, dtype=torch.float64)
    )
    return product.numpy()


@dataclass(frozen=True)
class OrientationStep:
    """MONAI's ``Orientation(axcodes, labels)`` as grid arithmetic: axes flipped and permuted to ``axcodes``.

    ``labels``: the (low, high) end of each axis code, MONAI's and nibabel's default
    ``(("L", "R"), ("P", "A"), ("I", "S"))`` (RAS).
    """

    axcodes: str
    labels: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))

    def grid(self, shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
        """The ``(shape, affine)`` of an image on ``(shape, affine)`` after the step."""
        from nibabel import orientations

        source = orientations.io_orientation(affine)
        target = orientations.axcodes2ornt(self.axcodes, labels=self.labels)
        change = orientations.ornt_transform(source, target)
        xform = orientations.inv_ornt_aff(change, tuple(int(s) for s in shape))
        order = np.argsort(change[:, 0])
        new_shape = tuple(int(shape[int(axis)]) for axis in order)
        return new_shape, _matmul(affine, xform)

    def to_dict(self) -> dict[str, Any]:
        return {"step": "orientation", "axcodes": self.axcodes, "labels": [list(p) for p in self.labels]}


@dataclass(frozen=True)
class SpacingStep:
    """MONAI's ``Spacing(pixdim)`` (not diagonal, no extent scaling) as grid arithmetic.

    The output grid keeps the image's directions with voxels of ``pixdim`` mm (a pixdim within
    :data:`AFFINE_TOL` of the image's spacing, or not positive, keeps the image's), its first
    voxel at the input's corner that comes first along every output axis, and as many voxels as
    cover the input's voxel centres (``round(extent / pixdim) + 1``): ``monai.data.utils``'
    ``zoom_affine`` and ``compute_shape_offset``. ``mode`` and ``padding_mode`` are how the voxels
    are resampled (the engine's :func:`~.geometry.resample`).
    """

    pixdim: tuple[float, ...]
    mode: str = "bilinear"
    padding_mode: str = "border"

    def grid(self, shape: Sequence[int], affine: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
        affine = np.array(affine, dtype=np.float64)
        rank = len(shape)
        wanted = np.array(self.pixdim[:rank], dtype=np.float64)
        if wanted.size < rank:
            wanted = np.append(wanted, [wanted[-1]] * (rank - wanted.size))
        current = np.sqrt(np.sum(affine[:rank, :rank] ** 2, axis=0))
        keep = np.abs(current - wanted) <= AFFINE_TOL
        wanted = np.where(keep, current, wanted)
        wanted = np.where(wanted <= 0, current, wanted)  # MONAI: a non-positive pixdim keeps the image's
        wanted[wanted == 0] = 1.0
        # The image's directions (shear removed) with the new voxel sizes.
        linear = affine[:rank, :rank]
        upper = np.linalg.cholesky(linear.T @ linear).T
        rotation = linear @ np.linalg.inv(upper)
        target = np.eye(rank + 1)
        target[:rank, :rank] = rotation @ np.diag(np.sign(np.diag(upper)) * np.abs(wanted))
        new_shape, offset = _shape_and_offset(shape, affine, target)
        target[:rank, rank] = offset
        # MONAI composes the pending affine with the resampling's index map.
        return new_shape, _matmul(affine, np.linalg.solve(affine, target))

    def scaled(self, factor: float) -> SpacingStep:
        return SpacingStep(tuple(p * factor for p in self.pixdim), self.mode, self.padding_mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": "spacing",
            "pixdim": list(self.pixdim),
            "mode": self.mode,
            "padding_mode": self.padding_mode,
        }


def _shape_and_offset(
    shape: Sequence[int], source: np.ndarray, target: np.ndarray
) -> tuple[tuple[int, ...], np.ndarray]:
    """Output shape and origin of resampling ``shape`` on ``source`` to the directions of ``target``.

    The input's corner voxel centres mapped to the output's index space: the shape spans them
    (``round(extent) + 1``); the origin is the corner whose indices are smallest on every axis
    (MONAI's test, ``allclose`` with its tolerance), else the centres of both grids coincide.
    """
    sizes = np.array(shape, dtype=np.float64)
    rank = len(sizes)
    ends = [(0.0, size - 1.0) for size in sizes]
    corners = np.asarray(np.meshgrid(*ends, indexing="ij")).reshape((rank, -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    in_target = np.linalg.solve(target, source) @ corners
    physical = source @ corners
    distances = in_target[:-1].copy()
    in_target = in_target[:-1] / in_target[-1]
    new_shape = np.round(np.ptp(in_target, axis=1) + 1.0)
    offset = None
    for index in range(corners.shape[1]):
        lowest = np.min(distances - distances[:, index : index + 1], 1)
        if np.allclose(lowest, 0.0, rtol=AFFINE_TOL):
            offset = physical[:-1, index]
            break
    if offset is None:
        offset = source[:-1, :-1] @ (sizes / 2.0) + source[:-1, -1] - target[:-1, :-1] @ (new_shape / 2.0)
    return tuple(int(s) for s in new_shape.astype(int)), offset


def steps_grid(
    steps: Sequence[Any], shape: Sequence[int], affine: np.ndarray
) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid after ``steps`` (:class:`OrientationStep` / :class:`SpacingStep`), in order."""
    current_shape = tuple(int(s) for s in shape)
    current = np.array(affine, dtype=np.float64)
    for step in steps:
        current_shape, current = step.grid(current_shape, current)
    return current_shape, current


def is_grid_step(step: Any) -> bool:
    return isinstance(step, (OrientationStep, SpacingStep))


def grid_steps_of(transforms: Sequence[Any]) -> list[Any] | None:
    """The steps of MONAI ``Orientation(d)``/``Spacing(d)`` transforms, or None if one has options
    these steps do not reproduce (closest canonical, diagonal, extent scaling, pixdim limits,
    affine recomputation)."""
    steps: list[Any] = []
    for transform in transforms:
        name = type(transform).__name__.rstrip("d")
        if name == "Orientation":
            inner = getattr(transform, "ornt_transform", transform)
            axcodes = getattr(inner, "axcodes", None)
            if getattr(inner, "as_closest_canonical", False) or not isinstance(axcodes, str):
                return None
            labels = getattr(inner, "labels", None) or OrientationStep.labels
            steps.append(OrientationStep(axcodes, tuple((str(a), str(b)) for a, b in labels)))
        elif name == "Spacing":
            inner = getattr(transform, "spacing_transform", transform)
            limits = np.concatenate(
                [
                    np.ravel(getattr(inner, "min_pixdim", np.nan)),
                    np.ravel(getattr(inner, "max_pixdim", np.nan)),
                ]
            ).astype(np.float64)
            if (
                getattr(inner, "diagonal", False)
                or getattr(inner, "scale_extent", False)
                or getattr(inner, "recompute_affine", False)
                or not np.all(np.isnan(limits))
            ):
                return None
            from .model import _spacing_settings

            mode, padding, pixdim = _spacing_settings(transform)
            steps.append(SpacingStep(tuple(float(p) for p in pixdim), mode, padding))
        else:
            return None
    return steps


def step_from_dict(data: dict[str, Any]) -> Any:
    if data["step"] == "orientation":
        return OrientationStep(str(data["axcodes"]), tuple((str(a), str(b)) for a, b in data["labels"]))
    if data["step"] == "spacing":
        return SpacingStep(
            tuple(float(p) for p in data["pixdim"]), str(data["mode"]), str(data["padding_mode"])
        )
    if data["step"] == "window":
        return IntensityWindow(
            *(float(data[k]) for k in ("a_min", "a_max", "b_min", "b_max")), bool(data["clip"])
        )
    raise ValueError(f"unknown step {data['step']!r}")


# ---------------------------------------------------------------------------------- intensity


@dataclass(frozen=True)
class IntensityWindow:
    """MONAI's ``ScaleIntensityRange``: ``[a_min, a_max]`` mapped linearly to ``[b_min, b_max]``, then clipped.

    The same tensor operations in the same order, so the values are MONAI's bit for bit.
    """

    a_min: float
    a_max: float
    b_min: float
    b_max: float
    clip: bool

    voxelwise = True

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = (image - self.a_min) / (self.a_max - self.a_min)
        image = image * (self.b_max - self.b_min) + self.b_min
        if self.clip:
            image = torch.clamp(image, self.b_min, self.b_max)
        return image

    def to_dict(self) -> dict[str, Any]:
        return {"step": "window", "a_min": self.a_min, "a_max": self.a_max, "b_min": self.b_min,
                "b_max": self.b_max, "clip": self.clip}  # fmt: skip


def intensity_steps_of(transforms: Sequence[Any]) -> list[IntensityWindow] | None:
    """:class:`IntensityWindow` steps of MONAI ``ScaleIntensityRange(d)`` transforms, or None for any other."""
    steps = []
    for transform in transforms:
        inner = getattr(transform, "scaler", transform)
        if type(inner).__name__ != "ScaleIntensityRange" or getattr(inner, "dtype", None) not in (
            None,
            np.float32,
            torch.float32,
        ):
            return None
        values = [getattr(inner, k, None) for k in ("a_min", "a_max", "b_min", "b_max")]
        if any(v is None for v in values) or values[1] == values[0]:
            return None
        steps.append(IntensityWindow(*(float(v) for v in values), bool(getattr(inner, "clip", False))))  # type: ignore[arg-type]
    return steps


# ---------------------------------------------------------------------------------- cache


def precision_name(dtype: torch.dtype | None) -> str:
    """``float32`` for no autocast, else the autocast dtype's name (``float16``, ``bfloat16``)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def bundle_fingerprint(folder: str | os.PathLike[str]) -> str | None:
    """A digest of a bundle folder: its path, its config files' contents, and every other file's
    size and modification time (weights are not read: loading them is what this saves). None
    when the folder cannot be listed or is not a folder (an archive is unpacked afresh each run)."""
    root = Path(folder).expanduser().absolute()
    if not root.is_dir():
        return None
    entries: list[Any] = []
    try:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(".") or "/__pycache__/" in f"/{relative}":
                continue
            if path.suffix.lower() in CONFIG_SUFFIXES:
                entries.append([relative, hashlib.sha256(path.read_bytes()).hexdigest()])
            else:
                status = path.stat()
                entries.append([relative, status.st_size, status.st_mtime_ns])
    except OSError:
        return None
    from .. import __version__

    text = json.dumps([COMPILED_FORMAT, __version__, torch.__version__, str(root), entries], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _entry_dir(fingerprint: str) -> Path:
    from ..user_cache import cache_dir

    return cache_dir(COMPILED_KIND) / fingerprint


def _network_file(device_type: str, precision: str) -> str:
    return f"network-{device_type}-{precision}.pt"


def load_compiled(folder: str | os.PathLike[str], device: torch.device, precision: str) -> Any | None:
    """The :class:`~.model.SegmentationModel` compiled from the bundle ``folder`` for ``device`` and
    ``precision`` (:func:`precision_name`), or None when there is none (or it cannot be read)."""
    fingerprint = bundle_fingerprint(folder)
    if fingerprint is None:
        return None
    entry = _entry_dir(fingerprint)
    network_path = entry / _network_file(device.type, precision)
    try:
        data = json.loads((entry / "model.json").read_text(encoding="utf-8"))
        if data.get("format") != COMPILED_FORMAT or data.get("fingerprint") != fingerprint:
            return None
        if not network_path.is_file():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see the module's note on TorchScript
            network = torch.jit.load(
                str(network_path), map_location=device if device.type != "mps" else "cpu"
            )
        return _model_from_record(data, Path(folder), entry, network, device.type, precision)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError):
        return None


def _model_from_record(
    data: dict[str, Any], root: Path, root_entry: Path, network: Any, device_type: str, precision: str
) -> Any:
    from ..data.volume import LabelInfo
    from .model import SegmentationModel

    spec = None
    if data.get("spec") is not None:
        from ..data.preprocessing import PreprocessingSpec

        spec = PreprocessingSpec.from_dict(data["spec"])
    size = None
    if data.get("network_size") is not None:
        from ..models.network_size import NetworkSize

        raw = data["network_size"]
        size = NetworkSize(raw["problem"], int(raw["parameters"]), raw["activation_bytes"], int(raw["batch"]),
                           tuple(raw["patch"]))  # fmt: skip
    maps = {}
    for item in data.get("importance_maps", []):
        name = str(item["file"])
        if not re.fullmatch(r"importance-[0-9x]+\.npy", name):
            raise ValueError(f"unexpected file name {name!r}")
        values = np.load(root_entry / name, allow_pickle=False)
        if list(values.shape) != list(item["roi"]) or values.dtype != np.float32:
            raise ValueError("importance map of the wrong shape")
        maps[tuple(int(r) for r in item["roi"])] = torch.from_numpy(values)
    model = SegmentationModel(
        name=str(data["name"]),
        root=root,
        network=network,
        in_channels=int(data["in_channels"]),
        labels=[LabelInfo(int(v), str(n), tuple(float(c) for c in color)) for v, n, color in data["labels"]],  # type: ignore[arg-type]
        geometry=[step_from_dict(s) for s in data["geometry"]],
        post_intensity=[step_from_dict(s) for s in data["post_intensity"]],
        pointwise=bool(data["pointwise"]),
        interpolation=str(data["interpolation"]),
        padding_mode=str(data["padding_mode"]),
        roi_size=tuple(int(r) for r in data["roi_size"]),
        overlap=data["overlap"] if isinstance(data["overlap"], (int, float)) else tuple(data["overlap"]),
        sw_batch_size=int(data["sw_batch_size"]),
        blend_mode=str(data["blend_mode"]),
        sigma_scale=data["sigma_scale"]
        if isinstance(data["sigma_scale"], (int, float))
        else tuple(data["sigma_scale"]),
        pad_mode=str(data["pad_mode"]),
        cval=float(data["cval"]),
        softmax=bool(data["softmax"]),
        invert=str(data["invert"]),
        modality=data.get("modality"),
        ct_window=tuple(data["ct_window"]) if data.get("ct_window") is not None else None,  # type: ignore[arg-type]
        steps=[str(s) for s in data["steps"]],
        spec=spec,
        network_size=size,
        network_signature=str(data["network_signature"]),
        importance_maps=maps,
        compiled_for=(device_type, precision),
    )
    return model


def _not_compilable(model: Any) -> str | None:
    """Why ``model`` keeps the full path, or None when it can be compiled."""
    if model.trusted:
        return "opened with --trust"
    if model.compiled_for is not None:
        return "already compiled"
    for what, present in (
        ("a foreground crop", model.crop_foreground is not None),
        ("multi-label outputs", model.multilabel or model.merge is not None),
        ("label-map steps", bool(model.model_label_steps or model.input_label_steps)),
        ("bundle-code steps", bool(model.channel_steps)),
        ("intensity steps before resampling", bool(model.pre_intensity)),
        ("no sliding window", model.roi_size is None),
        ("merged output channels", model.output_channels is not None),
    ):
        if present:
            return what
    if grid_steps_of(model.geometry) is None:
        return "orientation or spacing options the compiled steps do not reproduce"
    if intensity_steps_of(model.post_intensity) is None:
        return "intensity transforms other than ScaleIntensityRange"
    return None


#: Probe grids (shape, affine) on which the compiled steps must give MONAI's grid.
def _probe_grids(shape: Sequence[int], affine: np.ndarray) -> list[tuple[tuple[int, ...], np.ndarray]]:
    rotation = np.array(
        [[math.cos(0.3), -math.sin(0.3), 0.0], [math.sin(0.3), math.cos(0.3), 0.0], [0.0, 0.0, 1.0]]
    )
    oblique = np.eye(4)
    oblique[:3, :3] = rotation @ np.diag([0.7, 0.9, 2.5])
    oblique[:3, 3] = [-120.5, 33.25, 7.0]
    lps = np.diag([-0.8, -0.8, 3.0, 1.0])
    lps[:3, 3] = [200.0, 180.0, -50.0]
    swapped = np.array([[0, 0, 1.2, -10], [0, -1.5, 0, 40], [1.1, 0, 0, 3.3], [0, 0, 0, 1]], dtype=np.float64)
    return [
        (tuple(int(s) for s in shape), np.asarray(affine, dtype=np.float64)),
        ((61, 47, 23), oblique),
        ((128, 96, 40), lps),
        ((33, 70, 51), swapped),
    ]


def _same_as_monai(
    model: Any, steps: list[Any], windows: list[IntensityWindow], shape: Sequence[int], affine: np.ndarray
) -> str | None:
    """None when the steps give MONAI's grids and values, else what differs."""
    from .geometry import Grid, model_grid

    for probe_shape, probe_affine in _probe_grids(shape, affine):
        theirs = model_grid(Grid(probe_shape, probe_affine), model.geometry)  # type: ignore[arg-type]
        ours_shape, ours_affine = steps_grid(steps, probe_shape, probe_affine)
        if tuple(theirs.shape) != ours_shape or not np.allclose(
            theirs.affine, ours_affine, rtol=0, atol=1e-9
        ):
            return f"grid of {probe_shape}: MONAI {tuple(theirs.shape)}, compiled {ours_shape}"
    from .engine import _apply_transforms

    generator = torch.Generator().manual_seed(0)
    values = torch.cat(
        [torch.linspace(-3000.0, 4000.0, 50000), torch.randn(50000, generator=generator) * 800.0]
    ).reshape(1, 100, 1000)
    expected = _apply_transforms(model.post_intensity, values.clone())
    ours = values.clone()
    for window in windows:
        ours = window(ours)
    if not torch.equal(expected, ours.float()):
        return "intensity window values differ from MONAI's"
    return None


def _trace(network: torch.nn.Module, example: torch.Tensor, autocast: torch.dtype | None) -> Any:
    context = torch.autocast(example.device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    with torch.no_grad(), context, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the module's note on TorchScript
        return torch.jit.trace(network, example, check_trace=False)


def _outputs_agree(eager: torch.Tensor, traced: torch.Tensor) -> bool:
    eager, traced = eager.float(), traced.float()
    if eager.shape != traced.shape:
        return False
    scale = 1.0 + float(eager.abs().max())
    return float((eager - traced).abs().max()) <= TRACE_TOLERANCE * scale and torch.equal(
        eager.argmax(dim=1), traced.argmax(dim=1)
    )


def compile_model(
    model: Any,
    folder: str | os.PathLike[str],
    device: torch.device,
    autocast: torch.dtype | None,
    shape: Sequence[int],
    affine: np.ndarray,
) -> tuple[bool, str]:
    """Store ``model`` (loaded the full way from the bundle ``folder``, already run on ``device``)
    for :func:`load_compiled`. ``shape``/``affine``: the grid of the image it ran on (a probe).

    Returns ``(stored, message)``; nothing is stored when the model keeps the full path or a
    check differs (the message says which).
    """
    from .optimize import prepare_for_inference
    from .plan import _network_signature

    started = time.perf_counter()
    reason = _not_compilable(model)
    if reason is not None:
        return False, f"not compiled: {reason}"
    fingerprint = bundle_fingerprint(folder)
    if fingerprint is None:
        return False, "not compiled: the bundle is not a folder"
    steps = grid_steps_of(model.geometry) or []
    windows = intensity_steps_of(model.post_intensity) or []
    difference = _same_as_monai(model, steps, windows, shape, affine)
    if difference is not None:
        return False, f"not compiled: {difference}"
    signature = _network_signature(model.network)
    network = prepare_for_inference(model.network, device)
    roi = tuple(int(r) for r in model.roi_size)
    memory_format = (
        torch.channels_last_3d if device.type == "cpu" and len(roi) == 3 else torch.contiguous_format
    )
    generator = torch.Generator().manual_seed(0)

    def window(batch: int) -> torch.Tensor:
        x = torch.randn((batch, model.in_channels, *roi), generator=generator)
        return x.to(device).contiguous(memory_format=memory_format)

    try:
        traced = _trace(network, window(1), autocast)
        context = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        with torch.inference_mode():
            for batch in (2, 1):
                probe = window(batch)
                with context:
                    eager = network(probe)
                if not _outputs_agree(eager, traced(probe)):
                    return False, "not compiled: the traced network's outputs differ from the network's"
    except Exception as exc:  # a network tracing cannot follow (data-dependent control flow...)
        return (
            False,
            f"not compiled: tracing failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
        )
    finally:
        model.network.to("cpu", memory_format=torch.contiguous_format)

    maps: list[dict[str, Any]] = []
    map_values: dict[str, np.ndarray] = {}
    if model.blend_mode != "constant":
        from monai.data.utils import compute_importance_map

        values = compute_importance_map(
            roi, mode=model.blend_mode, sigma_scale=model.sigma_scale, device="cpu"
        )
        name = "importance-" + "x".join(map(str, roi)) + ".npy"
        maps.append({"roi": list(roi), "file": name})
        map_values[name] = np.ascontiguousarray(values.float().numpy())
    size = model.network_size
    record = {
        "format": COMPILED_FORMAT,
        "fingerprint": fingerprint,
        "name": model.name,
        "in_channels": model.in_channels,
        "labels": [[lb.value, lb.name, list(lb.color)] for lb in model.labels],
        "geometry": [s.to_dict() for s in steps],
        "post_intensity": [w.to_dict() for w in windows],
        "pointwise": model.pointwise,
        "interpolation": model.interpolation,
        "padding_mode": model.padding_mode,
        "roi_size": list(roi),
        "overlap": model.overlap if isinstance(model.overlap, (int, float)) else list(model.overlap),
        "sw_batch_size": model.sw_batch_size,
        "blend_mode": model.blend_mode,
        "sigma_scale": model.sigma_scale
        if isinstance(model.sigma_scale, (int, float))
        else list(model.sigma_scale),
        "pad_mode": model.pad_mode,
        "cval": model.cval,
        "softmax": model.softmax,
        "invert": model.invert,
        "modality": model.modality,
        "ct_window": list(model.ct_window) if model.ct_window is not None else None,
        "steps": list(model.steps),
        "spec": model.spec.to_dict() if model.spec is not None else None,
        "network_size": None
        if size is None
        else {
            "problem": size.problem,
            "parameters": size.parameters,
            "activation_bytes": size.activation_bytes,
            "batch": size.batch,
            "patch": list(size.patch),
        },  # fmt: skip
        "network_signature": signature,
        "importance_maps": maps,
        "source": str(Path(folder).expanduser().absolute()),
    }
    entry = _entry_dir(fingerprint)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name, values in map_values.items():
            _save_atomic(lambda path, v=values: np.save(path, v, allow_pickle=False), entry / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _save_atomic(
                lambda path: torch.jit.save(traced, path),
                entry / _network_file(device.type, precision_name(autocast)),
            )
        from ..atomic import write_json_atomic

        write_json_atomic(entry / "model.json", record)
    except (OSError, RuntimeError) as exc:
        return False, f"not compiled: the cache folder is not writable ({exc})"
    _remove_older_entries(record["source"], fingerprint)
    return True, f"compiled for the next runs in {time.perf_counter() - started:.1f} s ({entry})"


def _remove_older_entries(source: str, current: str) -> None:
    """Remove what was compiled from earlier states of the bundle folder ``source`` (its entries
    are never used again, and a network's copy can be large)."""
    folder = _entry_dir(current).parent
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.name == current or not entry.is_dir():
                continue
            with contextlib.suppress(OSError, ValueError):
                if json.loads((entry / "model.json").read_text(encoding="utf-8")).get("source") == source:
                    shutil.rmtree(entry, ignore_errors=True)


def _save_atomic(save: Any, path: Path) -> None:
    """``save(stream)`` into a temporary file, then renamed to ``path`` (readers never see half a file)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    try:
        with open(temporary, "wb") as stream:
            save(stream)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
