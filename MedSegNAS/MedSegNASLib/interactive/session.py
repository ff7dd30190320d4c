"""An interactive session: one model and one image held in memory; each click set updates one mask.

Two kinds of interactive bundles, both opened through the safe loading (no code from the bundle,
weights with ``weights_only=True``):

* **MedSegNAS interactive bundles** (``medsegnas train --interactive``): ``metadata.json`` declares
  ``medsegnas.interactive`` (guidance channels, their order and encoding). The image is
  preprocessed once as in training (orientation, spacing, intensity); each click set runs the
  network on a local region around the newest click only (the training patch size, e.g. 96^3),
  and the segment outside that region keeps its current voxels. A bundle that declares
  ``previous_mask`` also gets the current masks as input (RITM's mask guidance), and its answer
  changes only the connected parts of the difference that touch the newest click: the rest of
  the segment, including what earlier clicks fixed, stays as the user sees it. The clicked voxel
  always ends on the side the user clicked for (:func:`click_consistent`).
* **MONAI DeepEdit bundles** (the model zoo's ``spleen_deepedit_annotation``): the published
  ``deepedit_transforms`` are reproduced: orientation to RAS, intensity, the whole image resized to
  ``spatial_size``, clicks scaled as ``AddGuidanceFromPointsDeepEditd`` and
  ``ResizeGuidanceMultipleLabelDeepEditd`` do, guidance by ``AddGuidanceSignalDeepEditd``, softmax,
  MONAI's own inverse of the resize and of the orientation, argmax. The bundle's
  ``scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd`` (its own code: it converts clicks
  given as voxels of the file to voxels of the RAS-oriented image) is not run: clicks arrive in RAS
  millimetres and are converted with the oriented image's affine, which is what it computes.

Masks are exchanged on the grid of the image as given (``Volume``), as boolean arrays.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.volume import Volume
from ..errors import MedSegNASError
from ..inference.engine import argmax_channels
from ..inference.geometry import axis_aligned
from .clicks import BACKGROUND, Click, deepedit_points, nearest_voxel, ras_to_voxel
from .guidance import GUIDANCE_SIGMA, crop_points, guidance_channels

__all__ = [
    "InteractiveModel",
    "InteractiveSession",
    "load_interactive_model",
    "keep_change_at_click",
    "keep_change_near_click",
    "CLICK_REACH_MM",
    "click_consistent",
    "INTERACTIVE_KEY",
]

#: ``metadata["medsegnas"][INTERACTIVE_KEY]`` declares a MedSegNAS interactive bundle.
INTERACTIVE_KEY = "interactive"
#: Loading/typing transforms of a DeepEdit bundle's preprocessing that change nothing to reproduce.
_PASS_THROUGH = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureTyped", "ToTensord"}
#: The DeepEdit inference steps this module reproduces (the first one is the bundle's own code).
_DEEPEDIT_STEPS = {
    "OrientationGuidanceMultipleLabelDeepEditd",
    "AddGuidanceFromPointsDeepEditd",
    "Resized",
    "ResizeGuidanceMultipleLabelDeepEditd",
    "AddGuidanceSignalDeepEditd",
}


@dataclass
class InteractiveModel:
    """A network that takes the image plus one guidance channel per label.

    Attributes:
        name: the bundle's name. kind: ``"local"`` (MedSegNAS bundle), ``"deepedit"`` or
            ``"vista3d"`` (zoo bundles; the latter in :mod:`.vista`).
        network: in eval mode, on the CPU. label_names: name -> label value, in guidance-channel
            order (background included). image_channels: intensity channels before the guidance.
        sigma: Gaussian sigma of the guidance (voxels). geometry: MONAI dictionary transforms
            (key ``image``) of the model grid. intensity: intensity transforms after them.
        region: local region (voxels) of a ``local`` model, VISTA3D's window around each click;
            spatial_size: the DeepEdit resize. options: what one kind needs besides (VISTA3D's).
        previous_mask: the input ends with one previous-mask channel per segment (``local`` only).
        automatic: a ``local`` model's automatic form (no clicks) for the segment engine: the
            automatic start is then exactly what ``medsegnas segment`` gives (the bundle's own
            sliding-window settings and inverse), not a second, different inference.
    """

    name: str
    kind: str
    network: torch.nn.Module
    label_names: dict[str, int]
    image_channels: int
    sigma: int = GUIDANCE_SIGMA
    geometry: list[Any] = field(default_factory=list)
    intensity: list[Any] = field(default_factory=list)
    region: tuple[int, int, int] | None = None
    spatial_size: tuple[int, int, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    previous_mask: bool = False
    automatic: Any = None

    @property
    def segment_names(self) -> list[str]:
        return [name for name in self.label_names if name != BACKGROUND]


# ------------------------------------------------------------------------------- loading


def _target(raw: Any) -> str:
    return str(raw.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(raw, Mapping) else ""


def _safe_imports(config: dict[str, Any]) -> dict[str, Any]:
    """The config without import statements of modules off the allow-list (e.g. ``ignite``).

    MONAI evaluates every import of a config; the items this module builds need none of them, and
    an expression that used a dropped name would fail the safety check instead of running.
    """
    from ..models.safe_expr import import_bindings
    from ..models.safety import UnsafeConfigError

    config = copy.deepcopy(config)
    kept = []
    for statement in config.get("imports", []) or []:
        try:
            import_bindings(str(statement))
        except UnsafeConfigError:
            continue
        kept.append(statement)
    config["imports"] = kept
    return config


def _load_deepedit(
    root: Path, config: dict[str, Any], weights: Path, name: str, trusted: bool
) -> InteractiveModel:
    from monai.transforms import Orientationd

    from ..models import load_weights, safe_parse_bundle_config

    steps = [_target(item) for item in config.get("deepedit_transforms", [])]
    unknown = [s for s in steps if s not in _DEEPEDIT_STEPS]
    if "AddGuidanceSignalDeepEditd" not in steps or unknown:
        raise MedSegNASError(
            f"{root}: its deepedit_transforms ({', '.join(steps) or 'none'}) are not the DeepEdit inference "
            "steps MedSegNAS reproduces"
        )
    ids = ["network_def", "label_names", "spatial_size", "number_intensity_ch", "preprocessing_transforms"]
    missing = [i for i in ids if i not in config]
    if missing:
        raise MedSegNASError(
            f"{root}: its inference config lacks {', '.join(missing)} (not a DeepEdit bundle)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = safe_parse_bundle_config(_safe_imports(config), trusted=trusted, ids=ids, bundle_root=root)
        network = parser.get_parsed_content("network_def")
        label_names = {str(k): int(v) for k, v in dict(parser.get_parsed_content("label_names")).items()}
        spatial_size = tuple(int(s) for s in parser.get_parsed_content("spatial_size"))
        image_channels = int(parser.get_parsed_content("number_intensity_ch"))
        geometry: list[Any] = []
        intensity: list[Any] = []
        for index, raw in enumerate(config["preprocessing_transforms"]):
            target = _target(raw)
            if target in _PASS_THROUGH:
                continue
            if target == "Orientationd":
                axcodes = parser.get_parsed_content(f"preprocessing_transforms#{index}#axcodes")
                geometry.append(
                    Orientationd("image", axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S")))
                )
            elif target in (
                "ScaleIntensityRanged",
                "NormalizeIntensityd",
                "ScaleIntensityd",
                "ClipIntensityPercentilesd",
            ):
                item = copy.deepcopy(parser.get_parsed_content(f"preprocessing_transforms#{index}"))
                item.keys = ("image",)
                intensity.append(item)
            else:
                raise MedSegNASError(
                    f"{root}: its preprocessing uses {target or raw!r}, which the interactive session cannot reproduce"
                )
        sigma = GUIDANCE_SIGMA
        for raw in config["deepedit_transforms"]:
            if _target(raw) == "AddGuidanceSignalDeepEditd" and isinstance(raw.get("sigma"), int):
                sigma = int(raw["sigma"])
    state = load_weights(weights, trusted=trusted)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MedSegNASError(
            f"weights {weights} do not fit the bundle's network: {' '.join(str(exc).split())[:300]}"
        ) from None
    network.eval()
    return InteractiveModel(
        name=name,
        kind="deepedit",
        network=network,
        label_names=label_names,
        image_channels=image_channels,
        sigma=sigma,
        geometry=geometry,
        intensity=intensity,
        spatial_size=spatial_size,  # type: ignore[arg-type]
    )


def load_interactive_model(
    spec: str | Path, *, trust: bool = False, home: str | Path | None = None, region: int | None = None
) -> InteractiveModel:
    """Open what ``--model SPEC`` names (registry id, bundle folder or archive) for click refinement.

    Args:
        region: side (voxels) of the local region of a MedSegNAS interactive model (default: its
            training patch size).

    Raises:
        MedSegNASError: not an interactive bundle, or any error of the safe loading.
    """
    from ..inference.model import load_model, without_clicks
    from ..models import inspect_bundle, load_config_file
    from ..models.registry import resolve_model

    resolved = resolve_model(str(spec), home=home)
    trusted = bool(trust or resolved.trusted)
    info = inspect_bundle(resolved.path)
    section = info.metadata.get("medsegnas") if isinstance(info.metadata, dict) else None
    declared = section.get(INTERACTIVE_KEY) if isinstance(section, dict) else None
    if isinstance(declared, dict):
        model = load_model(resolved.path, trusted=trusted, automatic=False)
        label_names = {str(k): int(v) for k, v in dict(declared["label_names"]).items()}
        automatic = without_clicks(model, declared)
        patch = model.roi_size or (96, 96, 96)
        side = region
        return InteractiveModel(
            name=info.name,
            kind="local",
            network=model.network,
            label_names=label_names,
            image_channels=int(declared["image_channels"]),
            sigma=int(declared.get("sigma", GUIDANCE_SIGMA)),
            geometry=list(model.geometry),
            intensity=[*model.pre_intensity, *model.post_intensity],
            region=tuple(int(side) for _ in range(3)) if side else tuple(int(p) for p in patch),  # type: ignore[arg-type]
            previous_mask=bool(declared.get("previous_mask", False)),
            automatic=automatic,
        )
    config = load_config_file(info.inference_config)
    from .vista import is_vista3d, load_vista3d

    if is_vista3d(config):
        return load_vista3d(info.root, config, info.metadata, info.weights, info.name, trusted, region)
    if "deepedit_transforms" in config:
        return _load_deepedit(info.root, config, info.weights, info.name, trusted)
    raise MedSegNASError(
        f"model {spec} is not interactive: its metadata declares no guidance channels (medsegnas.interactive) "
        "and its config has no DeepEdit transforms nor a VISTA3D network; train one with medsegnas train --interactive"
    )


# ------------------------------------------------------------------------------- session


def keep_change_at_click(
    before: np.ndarray, after: np.ndarray, clicked: Sequence[int], reach: int = 1
) -> np.ndarray:
    """``before`` changed only where ``after`` differs from it in a connected part that touches the click.

    The model's answer may also move the boundary far from the click (its noise, or undoing what
    earlier clicks fixed); a user expects a click to edit where they clicked. A connected part
    (26-connectivity) of ``before != after`` is taken when it has a voxel within ``reach`` voxels
    (a cube) of ``clicked``.

    Args:
        before, after: boolean masks of one segment, the same shape ``(I, J, K)``.
        clicked: the click's voxel in that box (may lie outside it: then nothing changes).
    """
    from scipy import ndimage

    changed = before != after
    low = [max(0, int(c) - reach) for c in clicked]
    high = [max(0, int(c) + reach + 1) for c in clicked]
    window = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    if not changed[window].any():
        return before.copy()
    parts, _ = ndimage.label(changed, structure=np.ones((3, 3, 3), dtype=bool))
    touching = np.unique(parts[window])
    kept = np.isin(parts, touching[touching > 0])
    return np.where(kept, after, before)


def keep_change_near_click(
    before: np.ndarray,
    after: np.ndarray,
    clicked: Sequence[int],
    spacing: Sequence[float],
    reach_mm: float,
) -> np.ndarray:
    """``after`` within ``reach_mm`` (physical distance, voxel ``spacing`` in mm) of ``clicked``, ``before`` beyond.

    At a boundary the image barely shows (the phantom spleen against muscle), the network's answer
    to a click may redraw the organ's whole face: on one test phantom the voxels a positive click
    fixed were mostly within 40 mm of it, the voxels it spoiled mostly 40-100 mm away (see
    :data:`CLICK_REACH_MM` for what the limit does to NoC@90).
    """
    grid = np.ogrid[tuple(slice(0, n) for n in before.shape)]
    squared = sum(((g - int(c)) * float(s)) ** 2 for g, c, s in zip(grid, clicked, spacing, strict=True))
    return np.where(squared <= reach_mm**2, after, before)


def click_consistent(
    mask: np.ndarray, probability: np.ndarray, clicked: Sequence[int], positive: bool, radius: float
) -> np.ndarray:
    """``mask`` with the clicked voxel on the side the user clicked for, following the model's ranking.

    Clicks are constraints: the clicked voxel must end inside the segment for a positive click and
    outside for a negative one (the click consistency that BRS enforces by optimisation: Jang and
    Kim, "Interactive Image Segmentation via Backpropagating Refinement Scheme", CVPR 2019). When
    the network's answer leaves it on the wrong side, the voxels at least as likely (positive) or
    at most as likely (negative) as the clicked one, connected to it and within ``radius`` voxels,
    move with it: the model's ranking of the voxels decides the shape, not a brush.

    Args:
        mask: boolean ``(I, J, K)``, the segment after the network's answer.
        probability: the network's probability of the segment, same shape.
        clicked: the click's voxel (outside the box: ``mask`` is returned).
        positive: a positive click (add) or negative (remove).
        radius: voxels (the click's Gaussian sigma).
    """
    from scipy import ndimage

    point = tuple(int(c) for c in clicked)
    if not all(0 <= c < n for c, n in zip(point, mask.shape, strict=True)) or bool(mask[point]) == positive:
        return mask
    grid = np.indices(mask.shape)
    near = sum((g - c) ** 2 for g, c in zip(grid, point, strict=True)) <= radius**2
    level = probability[point]
    candidate = near & ((probability >= level) if positive else (probability <= level))
    parts, _ = ndimage.label(candidate, structure=np.ones((3, 3, 3), dtype=bool))
    moved = parts == parts[point]
    out = mask.copy()
    out[moved] = positive
    return out


def _meta_image(volume: Volume) -> Any:
    from monai.data import MetaTensor

    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)),
        affine=torch.from_numpy(volume.affine),
    )


def _apply(transforms: Sequence[Any], image: Any) -> Any:
    for transform in transforms:
        image = transform({"image": image})["image"]
    return image


#: How far (mm) one click's change may reach from it by default (:func:`keep_change_near_click`);
#: 0: no limit, the default. A 40 mm limit helped the spleen from the automatic start on
#: development phantoms (NoC@90 7.75 against 11) and was mixed on the test phantoms (9.75 against
#: 6.25 with one model, 5.25 against 8.75 with another), and it breaks the start from nothing for
#: an organ larger than the reach (liver Dice after one click 0.52 against 0.93): see the README.
CLICK_REACH_MM = 0.0


class InteractiveSession:
    """One image and one model; :meth:`update` turns the clicks so far into the segment's new mask.

    Args:
        model: from :func:`load_interactive_model`.
        volume: the image, on its own grid (masks are exchanged on this grid).
        start: ``"auto"`` (every segment starts as the model's result without clicks) or ``"empty"``.
        device: where the network runs (``"cpu"``, ``"cuda"``).
        change_at_click_only: with a previous-mask model, take only the change connected to the
            newest click (:func:`keep_change_at_click`), in the click's direction (a positive click
            of the segment only adds voxels, a negative one only removes: the network's answer
            also moves faint boundaries next to the click, the wrong way for half of them) and
            within ``click_reach_mm`` of it; False takes the network's whole region.
        click_reach_mm: how far (mm, on the model grid) a click's change may reach; 0 or None: no
            limit. The default: :data:`CLICK_REACH_MM`.

    A ``vista3d`` model makes a :class:`~.vista.VistaSession` (the same API; point prompts).
    """

    def __new__(cls, model: InteractiveModel, *args: Any, **kwargs: Any) -> InteractiveSession:
        if cls is InteractiveSession and model.kind == "vista3d":
            from .vista import VistaSession

            return super().__new__(VistaSession)
        return super().__new__(cls)

    def __init__(
        self,
        model: InteractiveModel,
        volume: Volume,
        *,
        start: str = "auto",
        device: str = "cpu",
        change_at_click_only: bool = True,
        click_reach_mm: float | None = CLICK_REACH_MM,
    ) -> None:
        if volume.num_channels != model.image_channels:
            raise MedSegNASError(
                f"the image has {volume.num_channels} channel(s); model '{model.name}' takes {model.image_channels}"
            )
        if start not in ("auto", "empty"):
            raise MedSegNASError(f"start must be 'auto' or 'empty', got {start!r}")
        self.model = model
        self.volume = volume
        self.device = torch.device(device)
        self.change_at_click_only = bool(change_at_click_only)
        self.click_reach_mm = float(click_reach_mm or 0.0)
        self.network = model.network.to(self.device)
        self.shape = volume.spatial_shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A MetaTensor: it keeps MONAI's record of the geometry, for its inverse.
            self.preprocessed = _apply(model.intensity, _apply(model.geometry, _meta_image(volume)))
            self.image = self.preprocessed.as_tensor().float()
        self.affine = np.asarray(self.preprocessed.affine, dtype=np.float64)  # model grid -> RAS
        self.grid_shape = tuple(int(s) for s in self.image.shape[1:])
        self.masks: dict[str, np.ndarray] = {}
        if model.kind == "deepedit":
            self._resized = self._resize_image()
        if start == "auto":
            labels = self._automatic()
            for name in model.segment_names:
                self.masks[name] = labels == model.label_names[name]
        else:
            for name in model.segment_names:
                self.masks[name] = np.zeros(self.shape, dtype=bool)

    # -------------------------------------------------------------- public

    @property
    def segment_names(self) -> list[str]:
        return self.model.segment_names

    def seed(self, label: str, mask: np.ndarray) -> None:
        """Start ``label`` from a mask any tool produced (boolean, the image's grid)."""
        self._check_label(label)
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise MedSegNASError(f"mask of {label!r} has shape {mask.shape}; the image has {self.shape}")
        self.masks[label] = mask.astype(bool)

    def update(
        self, clicks: Sequence[Click], label: str | None = None
    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
        """Apply all the clicks so far to ``label`` (default: the newest click's label).

        Returns:
            The new mask of ``label`` inside the changed box (boolean) and that box, as
            ``((i0, i1), (j0, j1), (k0, k1))`` half-open voxel ranges on the image's grid; the
            session's full mask (:attr:`masks`) is updated too.
        """
        if not clicks:
            raise MedSegNASError("no clicks given")
        label = label or clicks[-1].label
        self._check_label(label)
        points = deepedit_points(clicks, self.model.label_names, self.affine)
        with torch.inference_mode():
            if self.model.kind == "deepedit":
                labels = self._deepedit(points)
                box = tuple((0, s) for s in self.shape)
                self.masks[label] = labels == self.model.label_names[label]
            else:
                box = self._local(points, clicks[-1], label)
        mask = self.masks[label][tuple(slice(a, b) for a, b in box)]
        return mask, box  # type: ignore[return-value]

    # -------------------------------------------------------------- internals

    def _check_label(self, label: str) -> None:
        if label not in self.masks:
            raise MedSegNASError(
                f"model '{self.model.name}' segments {', '.join(self.segment_names)}, not {label!r}"
            )

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs.to(self.device)).float().cpu()

    def _resize_image(self) -> Any:
        from monai.transforms import Resized

        self._resize = Resized("image", spatial_size=self.model.spatial_size, mode="area")
        return self._resize({"image": self.preprocessed.clone()})["image"]

    def deepedit_input(self, points: Mapping[str, Sequence[Sequence[int]]]) -> np.ndarray:
        """The DeepEdit network input ``(image_channels + labels, *spatial_size)`` for voxel points of the model grid."""
        factor = np.divide(self.model.spatial_size, self.grid_shape)
        scaled = {
            name: np.multiply(items, factor).astype(int).tolist() if len(items) else []
            for name, items in points.items()
        }
        resized = self._resized
        return np.concatenate(
            [resized.as_tensor().numpy(), guidance_channels(resized.shape[1:], scaled, self.model.sigma)],
            axis=0,
        )

    def _deepedit(self, points: Mapping[str, Sequence[Sequence[int]]]) -> np.ndarray:
        """DeepEdit inference on the whole image resized; labels on the input grid."""
        from monai.data import MetaTensor

        resized = self._resized
        inputs = self.deepedit_input(points)
        logits = self._forward(torch.from_numpy(inputs)[None])[0]
        probabilities = torch.softmax(logits, dim=0)
        pred = MetaTensor(
            probabilities,
            meta=copy.deepcopy(resized.meta),
            applied_operations=copy.deepcopy(resized.applied_operations),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = self._resize.inverse({"image": pred})["image"]
            for transform in reversed(self.model.geometry):
                pred = transform.inverse({"image": pred})["image"]
        # Output channel c is label value c (DeepEdit and MedSegNAS bundles alike).
        return argmax_channels(pred.as_tensor()).numpy()

    def _automatic(self) -> np.ndarray:
        """The model's result without clicks (zero guidance), as label values on the input grid."""
        if self.model.kind == "deepedit":
            return self._deepedit({name: [] for name in self.model.label_names})
        if self.model.automatic is not None:  # the segment engine: the same result as medsegnas segment
            from ..inference.engine import SegmentOptions, segment_volume

            result = segment_volume(
                self.volume, self.model.automatic, SegmentOptions(device=str(self.device))
            )
            return result.labels.array[0]
        from monai.inferers import sliding_window_inference

        extra = len(self.model.label_names) + (
            len(self.model.segment_names) if self.model.previous_mask else 0
        )
        inputs = torch.cat([self.image, torch.zeros((extra, *self.grid_shape))])[None]
        # The whole region even where the image is smaller: MONAI pads, and the network keeps the
        # input sizes its down-sampling divides.
        roi = list(self.model.region)  # type: ignore[arg-type]
        with torch.inference_mode():
            logits = sliding_window_inference(inputs, roi, 1, self._forward, overlap=0.25, mode="gaussian")
        labels_model = argmax_channels(logits[0]).numpy()
        return self._to_input_grid(labels_model, (0, 0, 0), np.zeros(self.shape, dtype=labels_model.dtype))[0]

    def _region_box(self, centre: Sequence[int]) -> tuple[tuple[int, int], ...]:
        box = []
        for c, side, size in zip(centre, self.model.region, self.grid_shape, strict=True):  # type: ignore[arg-type]
            side = min(side, size)
            start = int(np.clip(c - side // 2, 0, size - side))
            box.append((start, start + side))
        return tuple(box)

    def _local(
        self, points: Mapping[str, Sequence[Sequence[int]]], newest: Click, label: str
    ) -> tuple[tuple[int, int], ...]:
        centre = nearest_voxel(ras_to_voxel(newest.ras, self.affine)[0])
        box = self._region_box(centre)
        start = [a for a, _ in box]
        shape = [b - a for a, b in box]
        crop = self.image[(slice(None), *[slice(a, b) for a, b in box])]
        local = crop_points(points, start, shape)
        parts = [crop, torch.from_numpy(guidance_channels(shape, local, self.model.sigma))]
        if self.model.previous_mask:
            previous = self._masks_on_model_grid(start, shape)
            parts.append(torch.from_numpy(previous.astype(np.float32)))
        inputs = torch.cat(parts)[None]
        pad = self._padding(shape)
        if any(pad):
            inputs = torch.nn.functional.pad(inputs, [p for side in reversed(pad) for p in (0, side)])
        logits = self._forward(inputs)[0][(slice(None), *[slice(0, s) for s in shape])]
        channel = self.model.label_names[label]  # output channel c is label value c
        region_mask = (argmax_channels(logits) == channel).numpy()  # max(dim=0): 8x faster than argmax here
        if self.model.previous_mask:
            before = previous[self.model.segment_names.index(label)]
        if self.model.previous_mask and self.change_at_click_only:
            clicked = nearest_voxel(ras_to_voxel(newest.ras, self.affine)[0]) - np.array(start)
            if newest.label == label:  # the click's direction: a positive click adds, a negative removes
                region_mask = (region_mask | before) if newest.positive else (region_mask & before)
            region_mask = keep_change_at_click(before, region_mask, clicked)
            if self.click_reach_mm > 0:
                spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
                region_mask = keep_change_near_click(
                    before, region_mask, clicked, spacing, self.click_reach_mm
                )
            if newest.label == label:
                probability = torch.softmax(logits, dim=0)[channel].numpy()
                region_mask = click_consistent(
                    region_mask, probability, clicked, newest.positive, self.model.sigma
                )
        # A previous-mask model's answer is written where it changed the mask only: the other voxels
        # keep the image-grid mask exactly (a round trip through a resampled grid would move them).
        only = region_mask != before if self.model.previous_mask else None
        self.masks[label], input_box = self._to_input_grid(region_mask, start, self.masks[label], only)
        return input_box

    def _masks_on_model_grid(self, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        """The segments' current masks (image grid) on the model-grid box at ``start``: ``(segments, *shape)`` bool.

        Nearest voxel, through both affines, so any storage order or spacing of the image maps right.
        """
        to_input = np.linalg.inv(self.volume.affine) @ self.affine
        lookup = NearestLookup(to_input, start, shape, self.shape)
        out = np.zeros((len(self.segment_names), *[int(s) for s in shape]), dtype=bool)
        for index, name in enumerate(self.segment_names):
            out[index] = lookup.gather(self.masks[name])
        return out

    def _padding(self, shape: Sequence[int]) -> list[int]:
        """Zero padding up to the region size (an image smaller than the region on some axis)."""
        return [max(0, r - s) for r, s in zip(self.model.region, shape, strict=True)]  # type: ignore[arg-type]

    def _to_input_grid(
        self,
        values: np.ndarray,
        start: Sequence[int],
        target: np.ndarray,
        only: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
        """Paste model-grid ``values`` (a box at ``start``) into ``target`` on the input grid (nearest voxel).

        ``only`` (boolean, the shape of ``values``): write just the input voxels whose model voxel
        is set there. Returns the updated target and the input-grid box it covers.
        """
        shape = np.array(values.shape)
        corners = np.array(
            [[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)]
        ) + np.array(start)
        ras = (self.affine @ np.c_[corners, np.ones(8)].T).T[:, :3]
        to_input = np.linalg.inv(self.volume.affine)
        input_corners = (to_input @ np.c_[ras, np.ones(8)].T).T[:, :3]
        low = np.clip(np.floor(input_corners.min(axis=0) - 0.5).astype(int), 0, self.shape)
        high = np.clip(np.ceil(input_corners.max(axis=0) + 0.5).astype(int) + 1, 0, self.shape)
        box = tuple((int(a), int(b)) for a, b in zip(low, high, strict=True))
        model_index = np.linalg.inv(self.affine) @ self.volume.affine
        lookup = NearestLookup(model_index, low, high - low, values.shape, source_start=start)
        written = lookup.inside
        if only is not None:  # leave the voxels whose model voxel did not change as they are
            written = written & lookup.gather(only)
        target = target.copy()
        region = target[tuple(slice(a, b) for a, b in box)]
        region[written] = lookup.gather(values)[written]
        return target, box


class NearestLookup:
    """Nearest-voxel lookup from a box of one grid into an array on another grid.

    ``to_source`` (4 x 4) maps the box grid's voxel indices to the source's; the box starts at
    ``start`` and has ``shape``; ``source`` arrays passed to :meth:`gather` hold the source grid
    from ``source_start`` on. Where the two grids are axis-aligned (:func:`~..inference.geometry.axis_aligned`:
    any flip, axis order or spacing, the case of a resampled image), the lookup is an outer
    product of per-axis index lists (``np.ix_``): 0.01 s instead of 0.1 s for a 96^3 box, the
    same voxels, as the per-axis indices are the same floating-point sums. Otherwise every
    voxel's index is mapped through the matrix.
    """

    def __init__(
        self,
        to_source: np.ndarray,
        start: Sequence[int],
        shape: Sequence[int],
        source_shape: Sequence[int],
        source_start: Sequence[int] = (0, 0, 0),
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        source = np.asarray(source_shape[-3:], dtype=int)
        aligned = axis_aligned(to_source)  # the engine's test of alignment (and its tolerance)
        self._axes: list[np.ndarray] | None = None
        if aligned is not None:
            indices: list[np.ndarray] = [np.empty(0, dtype=int)] * 3  # per source axis
            valid = []  # per box axis
            for d, s in enumerate(aligned.source_axis):
                index = nearest_voxel(aligned.coordinates(d, int(start[d]), self.shape[d])) - int(
                    source_start[s]
                )
                valid.append((index >= 0) & (index < source[s]))
                indices[s] = np.clip(index, 0, source[s] - 1)
            self._axes, self._order = indices, aligned.source_axis  # box axis d is source axis order[d]
            self.inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        else:
            grid = np.indices(self.shape).reshape(3, -1).T + np.asarray(start)
            voxels = nearest_voxel(grid @ to_source[:3, :3].T + to_source[:3, 3]) - np.asarray(source_start)
            inside = np.all((voxels >= 0) & (voxels < source), axis=1)
            self._flat = np.flatnonzero(inside)
            self._voxels = voxels[inside]
            self.inside = inside.reshape(self.shape)

    def gather(self, source: np.ndarray) -> np.ndarray:
        """``source``'s value at the nearest voxel of each box voxel (``shape``); zero (False) outside it."""
        if self._axes is not None:
            values = np.transpose(source[np.ix_(*self._axes)], self._order)
            return np.where(self.inside, values, np.zeros((), dtype=source.dtype))
        out = np.zeros(int(np.prod(self.shape)), dtype=source.dtype)
        out[self._flat] = source[self._voxels[:, 0], self._voxels[:, 1], self._voxels[:, 2]]
        return out.reshape(self.shape)
