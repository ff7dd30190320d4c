"""VISTA3D point prompts in the interactive session, from MONAI components only (no bundle code).

The model zoo's ``vista3d`` bundle runs its inference through its own code
(``scripts.inferer.Vista3dInferer``, ``scripts.evaluator.Vista3dEvaluator``, ``$import scripts``),
so as published it runs only with ``--trust``. Its *interactive* use needs none of that code:

* the network is MONAI's ``monai.networks.nets.vista3d132`` (the config's ``network_def``
  expression ``$monai.networks.nets.vista3d132(in_channels=@input_channels)`` is read as the
  ``_target_`` component it names, so the safe parser checks its arguments and sizes it on the
  ``meta`` device before building it);
* the preprocessing is MONAI transforms (``Spacingd``, ``CropForegroundd``,
  ``monai.apps.vista3d.transforms.VistaPreTransformd``, ``ScaleIntensityRanged``, ``Orientationd``,
  ``CastToTyped``), built by the safe parser; the config reads ``labels_dict`` from
  ``metadata.json`` with ``pathlib`` (refused), so the engine supplies that same ``channel_def``;
* each click set runs ``monai.apps.vista3d.inferer.point_based_window_inferer`` with the
  arguments the bundle's ``Vista3dInferer`` passes (one window of the patch size centred on each
  click; ``transpose=True``, ``class_vector``/``prompt_class`` = the segment's label value, the
  class head dropped for a zero-shot label), then ``VistaPostTransformd`` and MONAI's own inverse
  of the preprocessing with nearest interpolation, as the bundle's ``Invertd`` does; voxels outside
  the windows (NaN there) keep the segment's current mask.

Clicks are the clicks of the selected segment: positive 1, negative 0 (2/3 for VISTA3D's
"special" classes, as ``VistaPreTransformd`` maps them), at the continuous voxel of the
preprocessed image that their RAS position maps to through its affine (the bundle's evaluator
maps file voxels with the same affines). Sessions start empty: VISTA3D's automatic result of 127
classes is what ``medsegnas segment --trust`` runs.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.volume import Volume
from ..errors import MedSegNASError
from .clicks import BACKGROUND, Click, ras_to_voxel
from .session import InteractiveModel, InteractiveSession, _meta_image, _safe_imports

__all__ = [
    "VISTA_FACTORY",
    "is_vista3d",
    "load_vista3d",
    "VistaSession",
    "interactive_problems",
    "trust_verdict",
]

#: The MONAI factory of the published VISTA3D network.
VISTA_FACTORY = "monai.networks.nets.vista3d132"
#: Loading/typing steps of the published preprocessing that change nothing to reproduce here.
_PASS_THROUGH = {"LoadImaged", "EnsureChannelFirstd", "EnsureTyped"}
#: The image steps of the published preprocessing, built by the safe parser and run in order.
_IMAGE_STEPS = {"Spacingd", "CropForegroundd", "ScaleIntensityRanged", "Orientationd", "CastToTyped"}
#: The window overlap the bundle's ``Vista3dInferer`` is given (``inferer.overlap``), when literal.
_DEFAULT_OVERLAP = 0.3
#: Window sides (voxels) a VISTA3D session accepts: bounds (the tests use 32^3; 512^3 bounds memory).
_MIN_WINDOW, _MAX_WINDOW = 16, 512
_REFERENCE = re.compile(r"@([\w#]+)")


def _target(raw: Any) -> str:
    return str(raw.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(raw, Mapping) else ""


def network_component(expression: Any) -> dict[str, Any] | None:
    """``$monai.networks.nets.vista3d132(k=v, ...)`` -> ``{"_target_": ..., k: v}``; None if it is not that.

    Only keyword arguments whose values are literals or ``@`` references qualify; anything else
    (a nested call, a computed value) is left to the safety check, which refuses it.
    """
    if isinstance(expression, Mapping):
        return dict(expression) if str(expression.get("_target_", "")).endswith("vista3d132") else None
    if not isinstance(expression, str) or not expression.startswith("$"):
        return None
    text = _REFERENCE.sub(lambda m: repr("@" + m.group(1)), expression[1:].strip())
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Call) or tree.args or ast.unparse(tree.func) != VISTA_FACTORY:
        return None
    item: dict[str, Any] = {"_target_": VISTA_FACTORY}
    for keyword in tree.keywords:
        if keyword.arg is None:
            return None
        try:
            item[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            return None
    return item


def is_vista3d(config: Mapping[str, Any]) -> bool:
    """The inference config builds MONAI's VISTA3D network (the model zoo's ``vista3d`` bundle)."""
    return network_component(config.get("network_def")) is not None


def _channel_def(metadata: Mapping[str, Any]) -> dict[str, str]:
    outputs = ((metadata.get("network_data_format") or {}).get("outputs") or {}).get("pred") or {}
    channels = outputs.get("channel_def") if isinstance(outputs, Mapping) else None
    if not isinstance(channels, Mapping) or not channels:
        raise MedSegNASError(
            "the VISTA3D bundle's metadata.json declares no output channel_def (label names)"
        )
    return {str(k): str(v) for k, v in channels.items()}


def vista_config(config: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The published config as the safe parser reads it: the network as a component, labels from metadata."""
    config = _safe_imports(dict(config))
    component = network_component(config.get("network_def"))
    if component is None:
        raise MedSegNASError("not a VISTA3D config: its network_def does not build " + VISTA_FACTORY)
    config["network_def"] = component
    config["labels_dict"] = _channel_def(metadata)
    return config


def _interactive_ids(settings: Mapping[str, Any]) -> list[str]:
    """The config items the VISTA3D session builds (and nothing else of the config)."""
    ids = ["network_def", "patch_size", "labels_dict", "subclass"]
    for index, raw in enumerate(settings.get("preprocessing_transforms", []) or []):
        if _target(raw) not in _PASS_THROUGH:
            ids.append(f"preprocessing_transforms#{index}")
    return ids


def interactive_problems(root: Path, config: Mapping[str, Any], metadata: Mapping[str, Any]) -> list[str]:
    """What stops the VISTA3D session on an untrusted bundle: the static checks and a dry build
    (network on the ``meta`` device) of exactly the items it builds; empty when it runs untrusted."""
    from ..models.bundle import inference_path_problems

    try:
        settings = vista_config(config, metadata)
    except MedSegNASError as exc:
        return [str(exc)]
    ids = [i for i in _interactive_ids(settings) if i in settings]
    return inference_path_problems(root, settings, ids)


def trust_verdict(root: str | Path) -> str | None:
    """One line for ``models import``/``info``: what a VISTA3D bundle needs to run; None for other bundles.

    Names the bundle code (``scripts.*``) its published inference runs, and whether the interactive
    session runs its point prompts untrusted.
    """
    from ..models import inspect_bundle, load_config_file

    info = inspect_bundle(root, require_weights=False)
    config = load_config_file(info.inference_config)
    if not is_vista3d(config):
        return None
    from ..inference.model import RUNS_NOT, RUNS_WITH_TRUST, run_status

    code = sorted(set(re.findall(r"scripts(?:\.\w+)+", json.dumps(config))))
    uses = f"its inference runs the bundle's own code ({', '.join(code)})" if code else ""
    status, reason = run_status(info.root)
    if status == RUNS_NOT:
        segment = f"medsegnas segment does not run it, not even with --trust ({reason})"
        segment += f"; {uses}, so MONAI's own run of it needs trust" if uses else ""
    elif status == RUNS_WITH_TRUST:
        segment = f"medsegnas segment needs --trust: {uses or reason}"
    else:
        segment = "medsegnas segment runs it untrusted"
    problems = interactive_problems(
        info.root, config, info.metadata if isinstance(info.metadata, dict) else {}
    )
    if problems:
        return f"VISTA3D: {segment}; medsegnas interactive refuses it untrusted too: {problems[0]}"
    return (
        f"VISTA3D: {segment}; its point prompts run untrusted in medsegnas interactive "
        "(MONAI's vista3d132 and transforms, none of its code)"
    )


def load_vista3d(
    root: Path,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    weights: Path | None,
    name: str,
    trusted: bool,
    region: int | None = None,
) -> InteractiveModel:
    """An :class:`~.session.InteractiveModel` of kind ``"vista3d"`` from a VISTA3D bundle, without its code.

    Args:
        weights: the state dict file (``models/model.pt``), loaded with ``weights_only=True``
            unless trusted; None only for a dry check.
        region: side (voxels) of the window around each click (default: the config's
            ``patch_size``, 128 as published).
    """
    from ..models import load_weights, safe_parse_bundle_config

    settings = vista_config(config, metadata)
    steps = [(index, _target(raw)) for index, raw in enumerate(settings.get("preprocessing_transforms", []))]
    unknown = [t for _, t in steps if t not in _PASS_THROUGH | _IMAGE_STEPS | {"VistaPreTransformd"}]
    if unknown or not steps:
        raise MedSegNASError(
            f"{root}: its preprocessing uses {', '.join(unknown) or 'nothing'}, which the VISTA3D session "
            "does not reproduce"
        )
    ids = _interactive_ids(settings)
    missing = [i for i in ids[:2] if i not in settings]
    if missing:
        raise MedSegNASError(
            f"{root}: its inference config lacks {', '.join(missing)} (not a VISTA3D bundle)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = safe_parse_bundle_config(settings, trusted=trusted, ids=ids, bundle_root=root)
        network = parser.get_parsed_content("network_def")
        patch = tuple(int(s) for s in parser.get_parsed_content("patch_size"))
        transforms = []
        pre = None
        for index, target in steps:
            if target in _PASS_THROUGH:
                continue
            item = parser.get_parsed_content(f"preprocessing_transforms#{index}")
            if target == "VistaPreTransformd":
                pre = item
            else:
                transforms.append(item)
    inferer = settings.get("inferer")
    overlap = inferer.get("overlap", _DEFAULT_OVERLAP) if isinstance(inferer, Mapping) else _DEFAULT_OVERLAP
    window = tuple(int(region) for _ in range(3)) if region else patch
    if len(window) != 3 or not all(_MIN_WINDOW <= side <= _MAX_WINDOW for side in window):
        raise MedSegNASError(
            f"{root}: VISTA3D window {list(window)} (patch_size or --region): each side must be "
            f"{_MIN_WINDOW}-{_MAX_WINDOW} voxels"
        )
    if weights is not None:
        state = load_weights(weights, trusted=trusted)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise MedSegNASError(
                f"weights {weights} do not fit the bundle's network: {' '.join(str(exc).split())[:300]}"
            ) from None
    network.eval()
    labels = _channel_def(metadata)
    label_names = {BACKGROUND: 0} | {v: int(k) for k, v in labels.items() if int(k) != 0}
    return InteractiveModel(
        name=name,
        kind="vista3d",
        network=network,
        label_names=label_names,
        image_channels=1,
        geometry=transforms,
        region=window,  # type: ignore[arg-type]
        options={
            "pre": pre,
            "overlap": float(overlap) if isinstance(overlap, (int, float)) else _DEFAULT_OVERLAP,
        },
    )


class _LazyMasks(dict):
    """Segment name -> mask; a segment not clicked yet is empty, made only when asked for (132 of them)."""

    def __init__(self, names: Sequence[str], shape: Sequence[int]):
        super().__init__()
        self.names = set(names)
        self.shape = tuple(shape)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __missing__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        mask = np.zeros(self.shape, dtype=bool)
        self[name] = mask
        return mask


class VistaSession(InteractiveSession):
    """The ``vista3d`` kind of :class:`~.session.InteractiveSession` (which makes it; same public API).

    The image is preprocessed once as the published bundle does; :meth:`update` runs MONAI's
    ``point_based_window_inferer`` on windows of ``model.region`` around the selected segment's
    clicks and pastes the result back on the image's grid.
    """

    def __init__(
        self,
        model: InteractiveModel,
        volume: Volume,
        *,
        start: str = "auto",
        device: str = "cpu",
        change_at_click_only: bool = True,
        click_reach_mm: float | None = None,
    ) -> None:
        # change_at_click_only and click_reach_mm concern previous-mask models; VISTA3D's answer is
        # its own, so they are accepted (the session API is one) and have no effect.
        if volume.num_channels != 1:
            raise MedSegNASError(
                f"the image has {volume.num_channels} channels; VISTA3D takes one CT channel"
            )
        if start not in ("auto", "empty"):
            raise MedSegNASError(f"start must be 'auto' or 'empty', got {start!r}")
        self.model = model
        self.volume = volume
        self.device = torch.device(device)
        self.network = model.network.to(self.device)
        self.shape = volume.spatial_shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _meta_image(volume)
            for transform in model.geometry:
                image = transform({"image": image})["image"]
        self.preprocessed = image  # a MetaTensor: MONAI's record of each step, for the inverse
        self.affine = np.asarray(image.affine, dtype=np.float64)  # preprocessed grid -> RAS
        self.grid_shape = tuple(int(s) for s in image.shape[1:])
        # "auto" also starts empty: the automatic result of 127 classes is segment --trust's job.
        self.masks = _LazyMasks(model.segment_names, self.shape)

    def update(
        self, clicks: Sequence[Click], label: str | None = None
    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
        """As :meth:`InteractiveSession.update`; only the clicks on ``label`` prompt it (VISTA3D: one object)."""
        if not clicks:
            raise MedSegNASError("no clicks given")
        label = label or clicks[-1].label
        self._check_label(label)
        with torch.inference_mode():
            box = self._vista_update(clicks, label)
        return self.masks[label][tuple(slice(a, b) for a, b in box)], box

    def prompts(self, clicks: Sequence[Click], label: str) -> dict[str, Any]:
        """The bundle's prompts for ``label``: ``label_prompt``, ``points`` (preprocessed voxels), ``point_labels``."""
        mine = [c for c in clicks if c.label == label]
        if not mine:
            raise MedSegNASError(f"no clicks on {label!r}")
        value = self.model.label_names[label]
        subclass = getattr(self.model.options.get("pre"), "subclass", None) or {}
        if str(value) in subclass:
            parts = ", ".join(
                name for name, v in self.model.label_names.items() if v in set(subclass[str(value)])
            )
            raise MedSegNASError(
                f"VISTA3D takes point prompts for one structure; {label!r} groups several ({parts[:200]}): "
                "click on one of them"
            )
        points = ras_to_voxel([c.ras for c in mine], self.affine)
        data = {
            "label_prompt": [value],
            "points": points.tolist(),
            "point_labels": [int(c.positive) for c in mine],
        }
        pre = self.model.options.get("pre")
        if pre is not None:  # special classes (tumours, vessels): point labels 0/1 -> 2/3
            data = pre(data)
        return data

    def _vista_update(self, clicks: Sequence[Click], label: str) -> tuple[tuple[int, int], ...]:
        from monai.apps.vista3d.inferer import point_based_window_inferer
        from monai.apps.vista3d.transforms import VistaPostTransformd
        from monai.data import MetaTensor
        from monai.transforms import Compose, Invertd

        data = self.prompts(clicks, label)
        point_coords = torch.as_tensor([data["points"]], dtype=torch.float32, device=self.device)
        point_labels = torch.as_tensor([data["point_labels"]], device=self.device)
        class_vector = torch.as_tensor([data["label_prompt"]], device=self.device).reshape(-1, 1)
        prompt_class = copy.deepcopy(class_vector)
        if torch.any(class_vector > self.network.point_head.last_supported):
            class_vector = None  # a zero-shot class: point head only, as Vista3dInferer does
        image = self.preprocessed.to(self.device)[None]
        logits = point_based_window_inferer(
            inputs=image,
            roi_size=list(self.model.region),
            sw_batch_size=1,
            transpose=True,
            with_coord=True,
            predictor=self.network,
            mode="gaussian",
            sw_device=self.device,
            device=self.device,
            overlap=self.model.options["overlap"],
            point_coords=point_coords,
            point_labels=point_labels,
            class_vector=class_vector,
            prompt_class=prompt_class,
            prev_mask=None,
            labels=None,
            label_set=None,
        )
        pred = MetaTensor(
            torch.as_tensor(logits)[0].float().cpu(),  # [1, H, W, D] logits, NaN outside the windows
            meta=copy.deepcopy(self.preprocessed.meta),
            applied_operations=copy.deepcopy(self.preprocessed.applied_operations),
        )
        post = {
            "pred": pred,
            "image": self.preprocessed,
            "label_prompt": torch.as_tensor(data["label_prompt"]),
        }
        post["points"] = torch.as_tensor(data["points"])
        post["point_labels"] = torch.as_tensor(data["point_labels"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = VistaPostTransformd("pred")(post)
            post = Invertd(
                "pred",
                transform=Compose(self.model.geometry),
                orig_keys="image",
                nearest_interp=True,
                to_tensor=True,
            )(post)
        values = torch.nan_to_num(post["pred"].as_tensor()[0], nan=255).numpy()
        inside = values != 255
        if not inside.any():
            return tuple((0, 0) for _ in self.shape)
        box = tuple((int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(inside))
        window = tuple(slice(a, b) for a, b in box)
        mask = self.masks[label].copy()
        mask[window] = np.where(inside[window], values[window] == self.model.label_names[label], mask[window])
        self.masks[label] = mask
        return box
