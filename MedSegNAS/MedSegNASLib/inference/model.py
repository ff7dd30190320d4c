"""A MONAI bundle opened for segmentation: network, weights, preprocessing, window settings, labels.

:func:`load_resolved_model` opens what ``--model`` names: a registry id (with the trust stored in
the registry), a bundle folder or an archive, through :func:`~MedSegNASLib.models.registry.resolve_model`.
:func:`load_model` reads a bundle folder or archive (.zip/.tar.gz) without running code from it
(unless ``trusted``): the archive goes through :func:`~MedSegNASLib.models.safe_extract`, the
config through :func:`~MedSegNASLib.models.safe_parse_bundle_config` (allow-listed ``_target_``,
``$`` expressions interpreted, never ``eval``), the weights through
:func:`~MedSegNASLib.models.load_weights` (``weights_only=True``).

Where the preprocessing comes from:

* a bundle exported by MedSegNAS carries its :class:`~MedSegNASLib.data.preprocessing.PreprocessingSpec`
  in ``metadata.json`` (``medsegnas.preprocessing``): that spec is used, as in training;
* any other bundle (MONAI model zoo) is read from its inference config's ``preprocessing``
  transforms: ``Orientation(d)`` and ``Spacing(d)`` define the model grid; MONAI intensity
  transforms (``ScaleIntensityRanged``, ``NormalizeIntensityd``, ...) are built by the safe parser
  and applied as they are; loading/typing transforms are skipped. A transform that changes the
  grid in another way (cropping, resizing, padding) cannot be inverted by ``segment`` and is
  refused with a message naming it.

The output side is read from ``postprocessing``: softmax or not, whether ``Invertd`` interpolates
probabilities (linear) or labels (nearest), and refuses sigmoid (multi-label) outputs.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.volume import LabelInfo
from ..errors import MedSegNASError

__all__ = [
    "SegmentationModel",
    "BundleCodeError",
    "load_model",
    "load_resolved_model",
    "run_status",
    "RUNS_UNTRUSTED",
    "RUNS_WITH_TRUST",
    "RUNS_NOT",
    "ARCHIVE_SUFFIXES",
    "CT_BODY_HU",
]

#: Archive names accepted as ``--model``.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
#: Hounsfield units above which a CT voxel belongs to the body (air is -1000, fat -100).
CT_BODY_HU = -500.0
#: Transforms that only load, type or move the data: nothing to reproduce.
_PASS_THROUGH = {
    "LoadImage",
    "EnsureChannelFirst",
    "AddChannel",
    "EnsureType",
    "ToTensor",
    "CastToType",
    "ToDevice",
    "Identity",
    "DeleteItems",
    "SelectItems",
    "CopyItems",
}
#: Intensity transforms whose output voxel depends on that voxel alone (so they may run on a crop).
_POINTWISE = {"ScaleIntensityRange", "ThresholdIntensity", "ShiftIntensity"}
_GEOMETRY = {"Orientation", "Spacing"}


@dataclass
class SegmentationModel:
    """Everything the engine needs to run a bundle on an image.

    Attributes:
        name: the bundle's name; root: its folder (gone after loading an archive).
        network: the network in eval mode, weights loaded, on the CPU.
        in_channels: input channels the network expects.
        labels: output channel ``c`` -> label value ``c`` with a name and color (0 = background).
        geometry: MONAI ``Orientation``/``Spacing`` transforms defining the model grid, in order.
        pre_intensity: intensity transforms the bundle applies *before* resampling (input grid).
        post_intensity: intensity transforms applied after resampling (model grid).
        pointwise: every post-resampling intensity transform is voxel-wise (crop-safe).
        interpolation: ``"bilinear"`` or ``"nearest"``: how ``Spacing`` resamples the image.
        padding_mode: ``Spacing``'s padding mode (``"border"`` by default).
        roi_size: sliding window (voxels), or None to run the network on the whole image.
        overlap, sw_batch_size, blend_mode, sigma_scale, pad_mode, cval: sliding-window settings.
        softmax: the bundle applies softmax before inverting (else raw logits are inverted).
        invert: ``"linear"`` (probabilities interpolated back), ``"nearest"`` (labels), or
            ``"label_linear"`` (label values interpolated trilinearly and rounded: what MONAI's
            ``Invertd(nearest_interp=False)`` does to an argmax map, e.g. prostate_mri_anatomy).
        modality: ``"CT"``, ``"MR"``... from the metadata; ct_window: (a_min, a_max) if known.
        steps: human-readable preprocessing steps, for logs and ``models info``.
        spec: the MedSegNAS preprocessing spec, for exported bundles.
        crop_foreground: the bundle's ``CropForeground(d)`` (after resampling): windows tile the
            foreground box of the model grid, predictions outside it are zero, as after MONAI's
            inversion of the crop.
        multilabel: sigmoid channels, thresholded at ``threshold`` after inversion (linear) and
            merged into one label map by ``merge`` (a callable ``(C, ...) bool -> (...) labels``).
        model_label_steps / input_label_steps: label-map transforms (``KeepLargestConnectedComponent``)
            the bundle applies on the model grid (before ``Invertd``) / on the input grid (after).
        trusted: built with the bundle's own code (``--trust``): errors from it are the bundle's.
        output_channels: channels the network outputs, when they are merged into other labels.
        channel_steps: (trusted) the bundle's own transforms that combine its input keys after
            resampling (``scripts.*.ConcatImages``): ``(transform, input keys, output key)``;
            the engine gives each input key one channel of the image, in order.
        sigmoid_first: the sigmoid comes before ``Invertd`` (probabilities are interpolated),
            else after it (logits are interpolated).
        network_size: the safety check's dry build of the network
            (:class:`~MedSegNASLib.models.capabilities.NetworkSize`: parameters, summed layer
            outputs), when it ran; the memory plan's figure before a calibration.
        network_signature: what the network's calibration is cached under (None: computed from
            the network; a compiled network keeps the signature of the network it was traced from).
        importance_maps: Gaussian window weights by window size, stored with a compiled model
            (the engine computes any other with MONAI).
        compiled_for: ``(device type, precision)`` of a compiled model (:mod:`.compiled`): its
            network is a trace that holds the autocast casts and runs on that device only.
    """

    name: str
    root: Path
    network: torch.nn.Module
    in_channels: int
    labels: list[LabelInfo]
    geometry: list[Any]
    pre_intensity: list[Any] = field(default_factory=list)
    post_intensity: list[Any] = field(default_factory=list)
    pointwise: bool = True
    interpolation: str = "bilinear"
    padding_mode: str = "border"
    roi_size: tuple[int, ...] | None = None
    overlap: float | tuple[float, ...] = 0.25
    sw_batch_size: int = 1
    blend_mode: str = "constant"
    sigma_scale: float | tuple[float, ...] = 0.125
    pad_mode: str = "constant"
    cval: float = 0.0
    softmax: bool = True
    invert: str = "linear"
    modality: str | None = None
    ct_window: tuple[float, float] | None = None
    steps: list[str] = field(default_factory=list)
    spec: Any = None
    crop_foreground: Any = None
    multilabel: bool = False
    threshold: float = 0.5
    merge: Any = None
    model_label_steps: list[Any] = field(default_factory=list)
    input_label_steps: list[Any] = field(default_factory=list)
    trusted: bool = False
    output_channels: int | None = None
    channel_steps: list[tuple[Any, list[str], str]] = field(default_factory=list)
    sigmoid_first: bool = True
    network_size: Any = None
    network_signature: str | None = None
    importance_maps: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)
    compiled_for: tuple[str, str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Channels the network outputs (the label count, unless channels are merged into labels)."""
        return self.output_channels or self.num_classes

    def foreground_threshold(self) -> float | None:
        """Raw intensity (first channel) above which a voxel is body, or None to derive it from the data.

        CT: -500 HU, or the bottom of a wider window (a lung window reaching -1000 HU keeps the lungs).
        """
        if self.modality and self.modality.upper().startswith("CT") or self.ct_window is not None:
            if self.ct_window is not None:
                low, high = self.ct_window
                return min(CT_BODY_HU, low + 0.05 * (high - low))
            return CT_BODY_HU
        return None


def _label_colors(count: int) -> list[tuple[float, float, float]]:
    """Distinct colors (golden-angle hues) for labels whose bundle names no color."""
    colors = []
    for index in range(count):
        hue = (0.07 + index * 0.618034) % 1.0
        colors.append(tuple(round(c, 4) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.9)))
    return colors  # type: ignore[return-value]


def _short_name(obj: Any) -> str:
    name = type(obj).__name__
    return name[:-1] if name.endswith("d") and name[:-1] in _known_names() else name


def _known_names() -> set[str]:
    from monai import transforms

    return {n for n in dir(transforms) if not n.startswith("_")}


def _is_intensity(obj: Any) -> bool:
    module = type(obj).__module__
    return module.startswith("monai.transforms.intensity")


def _transform_items(parser: Any, item_id: str) -> list[tuple[str, Any]]:
    """``(config id, raw config)`` of each transform of a Compose (or list) config item."""
    raw = parser[item_id]
    seen = 0
    while isinstance(raw, str) and raw.startswith("@") and seen < 10:  # "preprocessing": "@other"
        item_id = raw[1:].replace("#", "::")
        raw = parser[item_id]
        seen += 1
    if isinstance(raw, dict) and "transforms" in raw:
        base, items = f"{item_id}::transforms", raw["transforms"]
    elif isinstance(raw, list):
        base, items = item_id, raw
    else:
        raise MedSegNASError(f"the bundle's '{item_id}' is not a list of transforms or a Compose of them")
    if isinstance(items, str) and items.startswith("@"):
        return _transform_items(parser, items[1:].replace("#", "::"))
    if not isinstance(items, list):
        raise MedSegNASError(f"the bundle's '{item_id}' transforms are not a list")
    return [(f"{base}::{index}", item) for index, item in enumerate(items)]


def _arg(parser: Any, item_id: str, raw: dict, key: str, default: Any) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, str) and value.startswith(("@", "$", "%")):
        return parser.get_parsed_content(f"{item_id}::{key}")
    return value


def _target_name(raw: Any, trusted: bool = False) -> str | None:
    """The short class name of a config component (``Spacingd`` -> ``Spacing``), or None.

    Untrusted: only allow-listed targets are resolved. Trusted: the bundle's own targets
    (``scripts.*``) are named as written, as MONAI's parser would import them."""
    from ..models.safe_expr import resolve_target
    from ..models.safety import UnsafeConfigError

    if not isinstance(raw, dict) or "_target_" not in raw:
        return None
    try:
        target = resolve_target(raw["_target_"])
    except UnsafeConfigError:
        if not trusted or not isinstance(raw["_target_"], str):
            raise
        return raw["_target_"].rsplit(".", 1)[-1]
    name = target.__name__
    return name[:-1] if name.endswith("d") and name[:-1] in _known_names() else name


def _read_preprocessing(model: SegmentationModel, parser: Any, bundle: str) -> None:
    """Fill the model's geometry and intensity steps from a generic bundle's ``preprocessing``."""
    from ..models.safe_expr import resolve_target
    from ..models.safety import UnsafeConfigError

    spacing_seen = False
    input_keys: list[str] = []
    for item_id, raw in _transform_items(parser, "preprocessing"):
        name = _target_name(raw, model.trusted)
        if name is None:
            raise MedSegNASError(f"{bundle}: preprocessing item '{item_id}' is not a MONAI transform")
        if raw.get("_disabled_") is True:
            continue
        keys = _arg(parser, item_id, raw, "keys", None) if isinstance(raw, dict) else None
        keys = [str(k) for k in keys] if isinstance(keys, (list, tuple)) else [str(keys)] if keys else []
        if model.channel_steps and not model.channel_steps[-1][2] and keys:
            step = model.channel_steps[-1]
            model.channel_steps[-1] = (step[0], step[1], keys[0])  # the key the bundle's step made
        if name in _PASS_THROUGH:
            continue
        bundle_code = False
        if model.trusted:
            try:
                resolve_target(raw["_target_"])
            except UnsafeConfigError:
                bundle_code = True
        if bundle_code:
            if model.crop_foreground is not None or model.post_intensity or not input_keys:
                raise MedSegNASError(
                    f"{bundle}: its own preprocessing step '{item_id}' ({name}) comes where segment cannot "
                    "apply it (only right after the resampling); run it with python -m monai.bundle run"
                )
            model.channel_steps.append((parser.get_parsed_content(item_id), list(input_keys), ""))
            model.pointwise = False
            model.steps.append(f"{name} (bundle code)")
            continue
        if model.crop_foreground is not None and name in _GEOMETRY:
            raise MedSegNASError(
                f"{bundle}: its preprocessing resamples after CropForeground ('{item_id}'), which segment "
                "does not reproduce; run it with python -m monai.bundle run"
            )
        transform = parser.get_parsed_content(item_id)
        if name in _GEOMETRY:
            input_keys = keys
            model.geometry.append(transform)
            if name == "Spacing":
                if spacing_seen:
                    raise MedSegNASError(
                        f"{bundle}: its preprocessing resamples twice (two Spacing transforms), which "
                        "segment does not reproduce"
                    )
                spacing_seen = True
                _check_spacing(transform, bundle)
                mode, padding, pixdim = _spacing_settings(transform)
                model.interpolation = "nearest" if mode in ("nearest", "0") else "bilinear"
                model.padding_mode = padding
                model.steps.append(
                    f"spacing {' x '.join(f'{p:g}' for p in pixdim)} mm ({model.interpolation})"
                )
            else:
                inner = getattr(transform, "ornt_transform", transform)
                model.steps.append(f"orientation {inner.axcodes or 'closest canonical'}")
        elif name == "CropForeground":
            # MONAI crops the model grid to the foreground box and Invertd pads the predictions
            # back with zeros: the engine tiles the box and fills the rest with zeros alike.
            model.crop_foreground = transform
            model.pointwise = False
            model.steps.append("CropForeground")
        elif _is_intensity(transform):
            target = model.post_intensity if spacing_seen or model.crop_foreground else model.pre_intensity
            target.append(transform)
            if spacing_seen and name not in _POINTWISE:
                model.pointwise = False
            if name == "ScaleIntensityRange":
                a_min = _arg(parser, item_id, raw, "a_min", None)
                a_max = _arg(parser, item_id, raw, "a_max", None)
                if a_min is not None and a_max is not None:
                    model.ct_window = (float(a_min), float(a_max))
            model.steps.append(name)
        else:
            raise MedSegNASError(
                f"{bundle}: its preprocessing uses {name} ('{item_id}'), which changes the image in a way "
                "'medsegnas segment' cannot reproduce and invert; run this bundle with python -m monai.bundle run"
            )
    if not spacing_seen and model.pre_intensity:
        model.post_intensity = model.pre_intensity + model.post_intensity  # no resampling: order kept
        model.pre_intensity = []
        model.pointwise = model.crop_foreground is None and all(
            _short_name(t) in _POINTWISE for t in model.post_intensity
        )


def _first_value(value: Any) -> str:
    value = value[0] if isinstance(value, (list, tuple)) else value
    return str(getattr(value, "value", value)).lower()


def _spacing_settings(transform: Any) -> tuple[str, str, list[float]]:
    """(interpolation mode, padding mode, pixdim) of a ``Spacing`` or ``Spacingd``."""
    if hasattr(transform, "spacing_transform"):  # Spacingd: modes per key
        return (
            _first_value(transform.mode),
            _first_value(transform.padding_mode),
            [float(p) for p in transform.spacing_transform.pixdim],
        )
    resampler = transform.sp_resample
    return (
        _first_value(resampler.mode),
        _first_value(resampler.padding_mode),
        [float(p) for p in transform.pixdim],
    )


def _check_spacing(transform: Any, bundle: str) -> None:
    inner = getattr(transform, "spacing_transform", transform)
    if getattr(inner, "diagonal", False):
        raise MedSegNASError(
            f"{bundle}: Spacing(diagonal=True) (resampling to an axis-aligned grid) is not supported"
        )


def _where_chain(text: Any) -> tuple[list[tuple[int, float, int]], int] | None:
    """A label-merging lambda read as data, never run: ``lambda x: torch.where(x[[c]] > t, v,
    torch.where(...,  default))`` (BraTS) -> ``([(c, t, v), ...], default)``; None otherwise."""
    import ast

    if not isinstance(text, str) or not text.startswith("$"):
        return None
    try:
        tree = ast.parse(text[1:].strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Lambda) or len(tree.args.args) != 1:
        return None
    arg = tree.args.args[0].arg
    rules: list[tuple[int, float, int]] = []
    node: ast.AST = tree.body
    while isinstance(node, ast.Call):
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr == "where"
            and isinstance(func.value, ast.Name)
            and func.value.id == "torch"
            and len(node.args) == 3
            and not node.keywords
        ):
            return None
        test, value, node = node.args
        if not (
            isinstance(test, ast.Compare)
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Gt)
            and isinstance(test.comparators[0], ast.Constant)
            and isinstance(test.left, ast.Subscript)
            and isinstance(test.left.value, ast.Name)
            and test.left.value.id == arg
            and isinstance(value, ast.Constant)
        ):
            return None
        index = test.left.slice
        if isinstance(index, ast.List) and len(index.elts) == 1:
            index = index.elts[0]
        if not (isinstance(index, ast.Constant) and isinstance(index.value, int)):
            return None
        if not isinstance(value.value, int) or not isinstance(test.comparators[0].value, (int, float)):
            return None
        rules.append((int(index.value), float(test.comparators[0].value), int(value.value)))
    if not rules or not (isinstance(node, ast.Constant) and isinstance(node.value, int)):
        return None
    return rules, int(node.value)


class WhereChainMerge:
    """``(C, ...)`` thresholded channels -> ``(...)`` labels by an ordered rule list: the first
    rule ``(channel, threshold, value)`` whose channel is above its threshold gives the label."""

    def __init__(self, rules: list[tuple[int, float, int]], default: int) -> None:
        self.rules, self.default = rules, default

    @property
    def values(self) -> list[int]:
        return sorted({self.default, *(value for _, _, value in self.rules)})

    def __call__(self, channels: torch.Tensor) -> torch.Tensor:
        labels = torch.full(channels.shape[1:], self.default, dtype=torch.int16, device=channels.device)
        for channel, threshold, value in reversed(self.rules):
            labels = torch.where(channels[channel] > threshold, value, labels)
        return labels


class BundleMerge:
    """A bundle's own merging transform (``Lambdad``, ``scripts.*.MergeClassesd``; ``--trust``)
    applied as MONAI applies it, to ``{"pred": (C, ...)}``."""

    def __init__(self, transform: Any, key: str) -> None:
        self.transform, self.key = transform, key

    def __call__(self, channels: torch.Tensor) -> torch.Tensor:
        from monai.transforms import MapTransform

        data = channels.float()
        if isinstance(self.transform, MapTransform):
            out = self.transform({self.key: data})[self.key]
        else:
            out = self.transform(data)
        out = torch.as_tensor(out)
        return out[0].round().to(torch.int16) if out.dim() == 4 else out.round().to(torch.int16)


def _largest_component_step(parser: Any, item_id: str, raw: dict) -> Any:
    """The bundle's ``KeepLargestConnectedComponent(d)``: ours (scipy) for MONAI's defaults,
    else MONAI's own transform (which needs scikit-image)."""
    from .postprocess import LargestComponentStep

    defaults = (
        not _arg(parser, item_id, raw, "is_onehot", False)
        and _arg(parser, item_id, raw, "independent", True)
        and _arg(parser, item_id, raw, "connectivity", None) in (None, 3)
        and _arg(parser, item_id, raw, "num_components", 1) == 1
    )
    if defaults:
        labels = _arg(parser, item_id, raw, "applied_labels", None)
        return LargestComponentStep(None if labels is None else [int(v) for v in np.atleast_1d(labels)])
    return parser.get_parsed_content(item_id)


def _read_postprocessing(model: SegmentationModel, parser: Any, bundle: str) -> None:
    """softmax / sigmoid, invert mode, label clean-up and label merging from ``postprocessing``."""
    if "postprocessing" not in parser:
        return
    softmax = False
    argmax_done = False
    inverted = False
    for item_id, raw in _transform_items(parser, "postprocessing"):
        if isinstance(raw, dict) and raw.get("_disabled_") is True:
            continue
        if isinstance(raw, dict) and _where_chain(raw.get("func")) is not None and not model.trusted:
            name = "Lambda"  # read as data below: nothing is built or run
        else:
            name = _target_name(raw, model.trusted)
        if name is None:
            continue
        if name == "Activations":
            if _arg(parser, item_id, raw, "sigmoid", False):
                model.multilabel = True
                model.sigmoid_first = not inverted
            softmax = softmax or bool(_arg(parser, item_id, raw, "softmax", False))
        elif name == "AsDiscrete":
            threshold = _arg(parser, item_id, raw, "threshold", None)
            if threshold is not None and not _arg(parser, item_id, raw, "argmax", False):
                if not model.multilabel:
                    raise MedSegNASError(
                        f"{bundle}: its outputs are thresholded channels without a sigmoid, which segment "
                        "does not reproduce; run it with python -m monai.bundle run"
                    )
                model.threshold = float(threshold)
                continue
            argmax_done = argmax_done or bool(_arg(parser, item_id, raw, "argmax", False))
        elif name == "Invert":
            inverted = True
            nearest = bool(_arg(parser, item_id, raw, "nearest_interp", True))
            model.invert = "nearest" if nearest else "label_linear" if argmax_done else "linear"
        elif name == "KeepLargestConnectedComponent":
            if not argmax_done:
                raise MedSegNASError(
                    f"{bundle}: KeepLargestConnectedComponent ('{item_id}') on channels before argmax is not "
                    "supported; run it with python -m monai.bundle run"
                )
            step = _largest_component_step(parser, item_id, raw)
            (model.input_label_steps if inverted else model.model_label_steps).append(step)
        elif (
            model.multilabel
            and name in ("Lambda", "MergeClassesd", "MergeClasses")
            or (model.trusted and model.multilabel and name not in ("SaveImage", "CopyItems", "DeleteItems"))
        ):
            chain = _where_chain(raw.get("func")) if name == "Lambda" else None
            if chain is not None and not model.trusted:
                model.merge = WhereChainMerge(*chain)
            elif model.trusted:
                keys = _arg(parser, item_id, raw, "keys", "pred")
                key = keys[0] if isinstance(keys, (list, tuple)) else keys
                model.merge = BundleMerge(parser.get_parsed_content(item_id), str(key))
            else:
                raise MedSegNASError(
                    f"{bundle}: its output step '{item_id}' ({name}) is bundle code; run it with --trust"
                )
    if model.multilabel:
        if model.merge is None:
            raise MedSegNASError(
                f"{bundle}: its outputs are sigmoid (multi-label) channels that the config does not merge "
                "into one label map, which one label map cannot hold; run it with python -m monai.bundle run"
            )
        model.invert = "linear"
        softmax = False
    model.softmax = softmax
    if not inverted:
        model.invert = "nearest" if argmax_done else "linear"


def _read_inferer(model: SegmentationModel, parser: Any) -> None:
    from monai.inferers import SlidingWindowInferer

    if "inferer" not in parser:
        model.roi_size = tuple(model.spec.patch_size) if model.spec is not None else None
        return
    inferer = parser.get_parsed_content("inferer")
    if isinstance(inferer, SlidingWindowInferer):
        roi = inferer.roi_size
        model.roi_size = tuple(int(r) for r in (roi if isinstance(roi, (list, tuple)) else [roi] * 3))
        model.overlap = inferer.overlap if isinstance(inferer.overlap, float) else tuple(inferer.overlap)
        model.sw_batch_size = int(inferer.sw_batch_size)
        model.blend_mode = str(getattr(inferer.mode, "value", inferer.mode))
        model.sigma_scale = inferer.sigma_scale
        model.pad_mode = str(getattr(inferer.padding_mode, "value", inferer.padding_mode))
        model.cval = float(inferer.cval)
    else:
        model.roi_size = None  # SimpleInferer: the whole image at once


def _labels_from_metadata(metadata: dict, num_classes: int | None) -> list[LabelInfo]:
    section = metadata.get("medsegnas") or {}
    if isinstance(section.get("labels"), list):
        return [
            LabelInfo(int(item["value"]), str(item["name"]), tuple(float(c) for c in item["color"]))  # type: ignore[arg-type]
            for item in sorted(section["labels"], key=lambda item: int(item["value"]))
        ]
    pred = ((metadata.get("network_data_format") or {}).get("outputs") or {}).get("pred") or {}
    names = {}
    for key, value in (pred.get("channel_def") or {}).items():
        with contextlib.suppress(ValueError, TypeError):
            names[int(key)] = str(value)
    count = num_classes or (max(names) + 1 if names else None)
    if count is None:
        raise MedSegNASError(
            "the bundle's metadata names no output channels (network_data_format.outputs.pred)"
        )
    colors = _label_colors(count)
    return [
        LabelInfo(value, names.get(value, "background" if value == 0 else f"label {value}"), colors[value])
        for value in range(count)
    ]


def _bundle_folder(source: Path, scratch: list[Path]) -> Path:
    from ..models import find_bundle_root, safe_extract

    if source.is_dir():
        return find_bundle_root(source)
    if not source.exists():
        raise MedSegNASError(f"model {source} not found (give a bundle folder or a .zip/.tar.gz of one)")
    if not source.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise MedSegNASError(f"model {source} is neither a bundle folder nor a .zip/.tar.gz archive of one")
    folder = Path(tempfile.mkdtemp(prefix="medsegnas-bundle-"))
    scratch.append(folder)
    safe_extract(source, folder / "bundle")
    return find_bundle_root(folder / "bundle")


def _references(value: Any) -> list[str]:
    from monai.bundle import ReferenceResolver

    if isinstance(value, str):
        return [ref.lstrip("@").replace("#", "::") for ref in ReferenceResolver.match_refs_pattern(value)]
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


def _build_on_cpu(parser: Any, item_id: str) -> list[str]:
    """Make every component that ``item_id`` builds take ``device="cpu"`` (DiNTS configs hard-code
    ``dints_space#device`` to CUDA); the engine moves the network to ``--device`` itself.

    Returns the config ids changed."""
    changed: list[str] = []
    todo, seen = [item_id], set()
    while todo:
        current = todo.pop()
        if current in seen or current not in parser:
            continue
        seen.add(current)
        raw = parser[current]
        if isinstance(raw, dict) and "_target_" in raw and "device" in raw:
            parser[f"{current}::device"] = "cpu"
            changed.append(current)
            raw = parser[current]
        todo.extend(_references(raw))
        if isinstance(raw, (dict, list)):  # nested components (lists of layers...)
            items = raw.items() if isinstance(raw, dict) else enumerate(raw)
            todo.extend(f"{current}::{key}" for key, value in items if isinstance(value, (dict, list)))
    return changed


def _weights_file(root: Path, parser: Any, config: dict, *, trusted: bool) -> Path:
    """The weights file the bundle's config loads: a ``CheckpointLoader``'s ``load_path`` (an item
    of its own or one of the handlers), else the ``.pt``/``.pth`` of ``large_files.yml`` under
    ``models/``, else ``models/model.pt``.

    Raises:
        ModelFileError: the file is missing; the message names it (and where it is listed).
    """
    from ..models import load_config_file
    from ..models.safety import ModelFileError

    listed: list[tuple[str, str]] = []  # (relative path, where it is named)
    candidates = ["checkpointloader"]
    for key in ("handlers", "validate::handlers"):
        if isinstance(config.get(key.split("::")[0]), (list, dict)) and key in parser:
            items = parser[key]
            if isinstance(items, list):
                candidates += [f"{key}::{n}" for n in range(len(items))]
    for item_id in candidates:
        raw = parser[item_id] if item_id in parser else None
        if not (isinstance(raw, dict) and "CheckpointLoader" in str(raw.get("_target_", ""))):
            continue
        with contextlib.suppress(Exception):  # an expression we may not evaluate: use large_files
            path = Path(str(parser.get_parsed_content(f"{item_id}::load_path")))
            path = path if path.is_absolute() else root / path
            with contextlib.suppress(ValueError):
                listed.append((str(path.resolve().relative_to(root.resolve())), f"{item_id}::load_path"))
    for name in ("large_files.yml", "large_files.yaml", "large_files.json"):
        if (root / name).is_file():
            with contextlib.suppress(Exception):
                entries = load_config_file(root / name).get("large_files") or []
                for entry in entries:
                    path = str(entry.get("path", "")) if isinstance(entry, dict) else ""
                    if path.startswith("models/") and path.endswith((".pt", ".pth")) and "/" not in path[7:]:
                        listed.append((path, name))
            break
    listed.append(("models/model.pt", "the default"))
    for relative, _ in listed:
        if (root / relative).is_file():
            return root / relative
    relative, where = listed[0]
    source = f" (named by {where})" if where != "the default" else ""
    large = next((n for n in ("large_files.yml", "large_files.yaml") if (root / n).is_file()), None)
    hint = (
        f"; the bundle lists its large files in {large}: python -m monai.bundle download fetches them"
        if large
        else ""
    )
    raise ModelFileError(f"bundle {root} has no weights file {relative}{source}{hint}")


@contextlib.contextmanager
def _bundle_code(root: Path, trusted: bool):
    """While building a trusted bundle: its folder importable (as ``monai.bundle run`` does, so
    ``scripts.*`` targets resolve) and ``torch.load`` onto the CPU (configs ask for CUDA)."""
    if not trusted:
        yield
        return
    import sys

    for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[module]  # another bundle's scripts package must not shadow this one's
    original_load = torch.load

    def load_on_cpu(*args: Any, **kwargs: Any) -> Any:
        kwargs["map_location"] = "cpu"
        return original_load(*args, **kwargs)

    sys.path.insert(0, str(root))
    torch.load = load_on_cpu  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original_load  # type: ignore[assignment]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


class BundleCodeError(MedSegNASError):
    """Code of a trusted bundle (its config's expressions or ``scripts``) raised an error."""


def _bundle_error(root: Path, what: str, exc: BaseException) -> BundleCodeError:
    reason = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ is not None else exc
    text = " ".join(str(reason).split())[:300]
    return BundleCodeError(f"bundle {root.name}: its own code failed {what}: {type(reason).__name__}: {text}")


def load_model(source: str | Path, *, trusted: bool = False, automatic: bool = True) -> SegmentationModel:
    """Open a bundle folder or archive for segmentation; runs no code from it unless ``trusted``.

    An interactive bundle of ``medsegnas train --interactive`` (its metadata declares
    ``medsegnas.interactive``) segments without clicks when ``automatic``: its network gets zeros
    for the guidance and previous-mask channels (:class:`~..interactive.guidance.WithoutClicks`)
    and the model takes the image channels only; ``automatic=False`` keeps the bare network (the
    interactive session feeds those channels itself).

    Every component the network needs is built on the CPU (:func:`_build_on_cpu`); the engine
    moves the network to the device asked for. The weights are the file the config's
    ``CheckpointLoader`` names (:func:`_weights_file`).

    Raises:
        MedSegNASError (UnsafeContentError, ModelFileError): unsafe, missing or inconsistent
            pieces, or preprocessing that segment cannot reproduce; the message names the file.
        BundleCodeError: (trusted) the bundle's own code failed while building.
    """
    from ..data.preprocessing import PreprocessingSpec
    from ..models import inspect_bundle, load_config_file, load_weights, safe_parse_bundle_config

    source = Path(source).expanduser()
    scratch: list[Path] = []
    try:
        root = _bundle_folder(source, scratch)
        info = inspect_bundle(root, require_weights=False)
        config = load_config_file(info.inference_config)
        # What the engine builds; postprocessing is only read (its settings), and the components
        # it builds from there (KeepLargestConnectedComponent) go through the safe parser's checks.
        wanted = [i for i in ("network_def", "preprocessing", "inferer") if i in config]
        if "network_def" not in wanted:
            raise MedSegNASError(
                f"{info.inference_config} has no 'network_def' item to build the network from"
            )
        with warnings.catch_warnings(), _bundle_code(root, trusted):
            warnings.simplefilter("ignore")
            parser = safe_parse_bundle_config(info.inference_config, trusted=trusted, ids=wanted)
            _build_on_cpu(parser, "network_def")
            try:
                network = parser.get_parsed_content("network_def")
            except MedSegNASError:
                raise
            except Exception as exc:
                if not trusted:
                    raise
                raise _bundle_error(root, "while building its network", exc) from exc
            if not isinstance(network, torch.nn.Module):
                raise MedSegNASError(
                    f"{info.inference_config}: network_def builds a {type(network).__name__}, not a network"
                )
            weights = _weights_file(root, parser, config, trusted=trusted)
            state = load_weights(weights, trusted=trusted)
            try:
                network.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                reason = " ".join(str(exc).split())[:300]
                raise MedSegNASError(f"weights {weights} do not fit the bundle's network: {reason}") from None
            network.eval()

            section = info.metadata.get("medsegnas")
            spec = None
            if isinstance(section, dict) and isinstance(section.get("preprocessing"), dict):
                spec = PreprocessingSpec.from_dict(section["preprocessing"])
            in_channels = (
                info.in_channels or (spec.num_channels if spec else None) or _network_in_channels(config)
            )
            labels = _labels_from_metadata(info.metadata, info.out_channels)
            model = SegmentationModel(
                name=info.name,
                root=root,
                network=network,
                in_channels=int(in_channels or 1),
                labels=labels,
                geometry=[],
                modality=info.modality,
                spec=spec,
                trusted=trusted,
                # vars(): a trusted bundle's MONAI ConfigParser raises KeyError for unknown attributes
                network_size=vars(parser).get("network_sizes", {}).get("network_def"),
            )
            try:
                _read_sections(model, parser, config, info, spec)
            except MedSegNASError:
                raise
            except Exception as exc:
                if not trusted:
                    raise
                raise _bundle_error(root, "while building its transforms", exc) from exc
        declared = section.get("interactive") if isinstance(section, dict) else None
        if automatic and isinstance(declared, dict):  # its no-click mode is its automatic result
            model = without_clicks(model, declared)
        return model
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def without_clicks(model: SegmentationModel, declared: dict) -> SegmentationModel:
    """An interactive bundle's model used without clicks: zeros for the guidance (and previous-mask)
    channels its metadata declares (``medsegnas.interactive``), the image channels as its input."""
    from ..interactive.export import extra_channels
    from ..interactive.guidance import WithoutClicks

    return dataclasses.replace(
        model,
        network=WithoutClicks(model.network, extra_channels(declared)),
        in_channels=int(declared["image_channels"]),
    )


def _read_sections(model: SegmentationModel, parser: Any, config: dict, info: Any, spec: Any) -> None:
    """Preprocessing (MedSegNAS spec or the config's transforms), inferer and postprocessing."""
    if spec is not None:
        model.geometry = spec.geometry_transforms(["image"], ["bilinear"])
        model.post_intensity = [spec.intensity_transform("image")]
        model.pointwise = spec.intensity.kind == "ct_window"
        if spec.intensity.kind == "ct_window":
            model.ct_window = (spec.intensity.a_min, spec.intensity.a_max)
        spacing = "kept" if spec.spacing is None else " x ".join(f"{s:g}" for s in spec.spacing) + " mm"
        model.steps = [
            f"orientation {spec.orientation}",
            f"spacing {spacing}",
            f"intensity {spec.intensity.kind}",
        ]
    elif "preprocessing" in config:
        _read_preprocessing(model, parser, str(info.root))
    else:
        raise MedSegNASError(f"{info.inference_config} has no 'preprocessing' item and no MedSegNAS spec")
    _read_inferer(model, parser)
    if model.roi_size is None and spec is not None:
        model.roi_size = tuple(spec.patch_size)
    _read_postprocessing(model, parser, str(info.root))
    if model.multilabel:
        model.output_channels = len(model.labels)
    if model.multilabel and isinstance(model.merge, WhereChainMerge):
        # label v is named after the channel whose rule gives it (BraTS: channel 2 -> label 4)
        channel_of = {value: channel for channel, _, value in model.merge.rules}
        colors = _label_colors(max(model.merge.values) + 1)
        model.labels = [
            LabelInfo(0, "background", (0.0, 0.0, 0.0))
            if v not in channel_of or channel_of[v] >= len(model.labels)
            else LabelInfo(v, model.labels[channel_of[v]].name, colors[v])
            for v in model.merge.values
        ]


#: :func:`run_status` results: the engine runs the bundle as it is / only with ``--trust`` / not.
RUNS_UNTRUSTED, RUNS_WITH_TRUST, RUNS_NOT = "untrusted", "trust", "no"


def _read_without_network(root: Path, *, trusted: bool) -> SegmentationModel:
    """Everything :func:`load_model` reads from a bundle except the network and its weights."""
    from ..models import inspect_bundle, load_config_file, safe_parse_bundle_config

    info = inspect_bundle(root, require_weights=False)
    config = load_config_file(info.inference_config)
    wanted = [i for i in ("network_def", "preprocessing", "inferer") if i in config]
    with warnings.catch_warnings(), _bundle_code(root, trusted):
        warnings.simplefilter("ignore")
        parser = safe_parse_bundle_config(info.inference_config, trusted=trusted, ids=wanted)
        model = SegmentationModel(
            name=info.name,
            root=root,
            network=torch.nn.Identity(),
            in_channels=int(info.in_channels or _network_in_channels(config) or 1),
            labels=_labels_from_metadata(info.metadata, info.out_channels),
            geometry=[],
            modality=info.modality,
            trusted=trusted,
        )
        _read_sections(model, parser, config, info, None)
    return model


def run_status(folder: str | Path) -> tuple[str, str]:
    """Whether ``medsegnas segment`` runs a bundle from its configs (no weights needed).

    Untrusted, the checks of :func:`~MedSegNASLib.models.safe_parse_bundle_config` and the
    engine's reading of every section (preprocessing, inferer, postprocessing) must pass.
    Otherwise the same reading is tried with the bundle's code allowed (``--trust``); bundle
    code that is not in ``folder`` (published configs without ``scripts/``) is named, not
    imported: its transforms are judged by where they stand in the config.

    Returns:
        ``(status, reason)``: :data:`RUNS_UNTRUSTED` (reason empty), :data:`RUNS_WITH_TRUST`
        (reason: the first check that refuses it untrusted) or :data:`RUNS_NOT` (reason: why the
        engine cannot run it even trusted).
    """
    from ..models.safety import UnsafeConfigError

    root = Path(folder)
    try:
        _read_without_network(root, trusted=False)
        return RUNS_UNTRUSTED, ""
    except UnsafeConfigError as exc:
        untrusted_reason = str(exc).split(" is not safe to run: ", 1)[-1].split("; open it with --trust")[0]
    except MedSegNASError as exc:
        return RUNS_NOT, str(exc)
    try:
        _read_without_network(root, trusted=True)
    except BundleCodeError as exc:
        if "ModuleNotFoundError" not in str(exc) and "scripts" not in str(exc):
            return RUNS_NOT, str(exc)
    except MedSegNASError as exc:
        return RUNS_NOT, str(exc)
    except ImportError:
        pass  # the bundle's scripts/ are not here: they are judged by position (see above)
    return RUNS_WITH_TRUST, untrusted_reason


def looks_like_path(spec: str) -> bool:
    """As :func:`~MedSegNASLib.models.registry.resolve_model` decides: a path, not an id."""
    return (
        "/" in spec
        or os.sep in spec
        or spec.startswith((".", "~"))
        or spec.lower().endswith(ARCHIVE_SUFFIXES)
    )


def _unknown_model_error(spec: str, home: str | Path | None) -> MedSegNASError:
    """``--model SPEC`` names neither a registered id nor a file: say which ids come close."""
    import difflib

    from ..models.registry import ModelRegistry

    registry = ModelRegistry(home)
    try:
        known = [record.id for record in registry.list()]
    except MedSegNASError:
        known = []
    close = difflib.get_close_matches(spec, known, n=3, cutoff=0.5)
    lowered = spec.lower()
    close += [k for k in known if lowered in k.lower() and k not in close][: 3 - len(close)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return MedSegNASError(
        f"model {spec!r} is neither a registered model id nor a bundle folder or archive; {hint}"
        f"see medsegnas models list (registry {registry.models_dir})"
    )


def _apply_record(model: SegmentationModel, record: Any) -> None:
    """Use a registry record's label table (catalog names and colors) when it covers the outputs."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        table = sorted(record.labels, key=lambda item: int(item["value"]))
        if [int(item["value"]) for item in table] == list(range(model.num_classes)):
            model.labels = [
                LabelInfo(int(item["value"]), str(item["name"]), tuple(float(c) for c in item["color"]))  # type: ignore[arg-type]
                for item in table
            ]


def load_resolved_model(
    spec: str | Path,
    *,
    trust: bool = False,
    home: str | Path | None = None,
    compiled: tuple[torch.device, str] | None = None,
    before_full_load: Any = None,
) -> SegmentationModel:
    """Open what ``--model SPEC`` names: a registry id, a bundle folder or a bundle archive.

    The lookup is :func:`~MedSegNASLib.models.registry.resolve_model` (an id first unless ``spec``
    looks like a path; archives are unpacked once into ``<home>/cache/bundles``). A registered
    model runs code from its bundle when it was trusted in the registry (``medsegnas models
    trust ID`` or an import with ``--trust``) or when ``trust`` is given; folders and archives only
    with ``trust``. A registered model known to need code is refused before anything is read.

    Args:
        spec: registry id, bundle folder, or .zip/.tar.gz of one.
        trust: the user passed ``--trust``.
        home: registry home (default ``$MEDSEGNAS_HOME``, else ``~/.medsegnas``).
        compiled: ``(device, precision)``: take the bundle's compiled form for that device and
            precision when the cache has one (:func:`~.compiled.load_compiled`; no MONAI import).
        before_full_load: called before the bundle is loaded the full way (no compiled form).

    Raises:
        MedSegNASError: unknown id (close ids named), a model that needs ``--trust``, or any error
            of :func:`load_model`.
    """
    from ..models.registry import TRUST_COMMAND, resolve_model
    from ..models.safety import ModelFileError

    text = str(spec)
    try:
        resolved = resolve_model(text, home=home)
    except ModelFileError:
        if isinstance(spec, Path) or looks_like_path(text) or Path(text).expanduser().exists():
            raise
        raise _unknown_model_error(text, home) from None
    record = resolved.record
    trusted = bool(trust or resolved.trusted)
    if record is not None and record.problems and not trusted:
        first = record.problems[0] + (
            f" (and {len(record.problems) - 1} more)" if len(record.problems) > 1 else ""
        )
        raise MedSegNASError(
            f"model '{record.id}' needs code to run ({first}); run it with --trust, or mark it trusted with "
            f"{TRUST_COMMAND.format(id=record.id)}, only if you trust its source"
        )
    model = None
    if compiled is not None and not trusted:
        from .compiled import load_compiled

        model = load_compiled(resolved.path, *compiled)
    if model is None:
        if before_full_load is not None:
            before_full_load()
        model = load_model(resolved.path, trusted=trusted)
    if record is not None:
        _apply_record(model, record)
    return model


def _network_in_channels(config: dict) -> int | None:
    network_def = config.get("network_def") or {}
    value = network_def.get("in_channels") if isinstance(network_def, dict) else None
    return value if isinstance(value, int) else None
