"""The Swin UNETR encoder, its exported weights and the MONAI version they were made with.

The encoder is MONAI's :class:`~monai.networks.nets.swin_unetr.SwinTransformer`, built with the
arguments :class:`~monai.networks.nets.SwinUNETR` gives it, so its weights load into
``SwinUNETR(...).swinViT`` unchanged.

Exported weights (``RUN/artifacts/encoder.pt``) are a plain state dict whose keys are those of
``SwinUNETR.state_dict()`` for the encoder, i.e. ``swinViT.patch_embed.proj.weight``, ...
(:data:`ENCODER_PREFIX` + the keys of ``SwinUNETR.swinViT.state_dict()``), saved with
``torch.save`` and loadable with ``weights_only=True``. A JSON sidecar ``encoder.json`` records
``feature_size``, ``in_channels``, ``monai_version``, ``torch_version``, ``key_prefix`` and the
number of tensors.

MONAI 1.5 changed the 3D ``PatchMerging`` layer (a bug fix): encoder weights trained with one
MONAI major.minor version give different features in another without any error, so every
checkpoint records the MONAI version and :func:`monai_version_warning` says when it differs.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from MedSegNASLib.atomic import write_atomic
from MedSegNASLib.errors import MedSegNASError
from torch import nn

#: Prefix of the encoder's keys in ``SwinUNETR.state_dict()``; exported keys carry it.
ENCODER_PREFIX = "swinViT."
#: Swin UNETR's fixed architecture (the published one; MONAI's defaults).
SWIN_DEPTHS: tuple[int, ...] = (2, 2, 2, 2)
SWIN_HEADS: tuple[int, ...] = (3, 6, 12, 24)
SWIN_WINDOW = 7
SWIN_PATCH = 2


class MonaiVersionWarning(UserWarning):
    """Weights were saved with another MONAI major.minor version than the one loading them."""


def monai_version() -> str:
    import monai

    return str(monai.__version__)


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = str(version).split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def monai_version_warning(recorded: str | None, what: str) -> str | None:
    """A warning text when ``recorded`` (the MONAI version that saved ``what``) differs in
    major.minor from the running MONAI, else ``None``. A missing version also warns."""
    current = monai_version()
    if recorded is None:
        return (
            f"{what} does not record the MONAI version it was made with; if it predates MONAI 1.5, "
            f"its Swin patch-merging layout differs from MONAI {current} and its features will be wrong"
        )
    if _major_minor(recorded) == _major_minor(current):
        return None
    return (
        f"{what} was saved with MONAI {recorded} but MONAI {current} is loading it; MONAI 1.5 changed "
        "the Swin patch-merging layout, so the encoder may compute different features without any error "
        f"(install monai=={recorded} to use it as trained, or pretrain again)"
    )


def warn_if_other_monai(recorded: str | None, what: str) -> str | None:
    """Issue :class:`MonaiVersionWarning` when needed; return its text (or ``None``)."""
    message = monai_version_warning(recorded, what)
    if message is not None:
        warnings.warn(message, MonaiVersionWarning, stacklevel=2)
    return message


def build_swin_encoder(feature_size: int, in_channels: int = 1, *, use_checkpoint: bool = False) -> nn.Module:
    """MONAI's ``SwinTransformer`` exactly as ``SwinUNETR(in_channels, ..., feature_size)`` builds it.

    Input ``(B, in_channels, X, Y, Z)`` with every side divisible by 32; output of
    ``forward(x, normalize)``: five feature maps, the last ``(B, 16 * feature_size, X/32, Y/32, Z/32)``.
    """
    from monai.networks.nets.swin_unetr import PatchMerging, SwinTransformer

    if feature_size % 12:
        raise MedSegNASError(f"feature_size must be divisible by 12 (Swin UNETR), got {feature_size}")
    return SwinTransformer(
        in_chans=in_channels,
        embed_dim=feature_size,
        window_size=(SWIN_WINDOW,) * 3,
        patch_size=(SWIN_PATCH,) * 3,
        depths=SWIN_DEPTHS,
        num_heads=SWIN_HEADS,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        norm_layer=nn.LayerNorm,
        patch_norm=False,
        use_checkpoint=use_checkpoint,
        spatial_dims=3,
        downsample=PatchMerging,
    )


@dataclass
class EncoderWeights:
    """Weights read by :func:`load_encoder_weights`.

    Attributes:
        state_dict: keys as in ``SwinUNETR.state_dict()`` (``swinViT.`` prefix).
        feature_size, in_channels: the architecture they belong to.
        monai_version: MONAI version that saved them (``None`` if unknown).
        path: the file read.
    """

    state_dict: dict[str, torch.Tensor]
    feature_size: int
    in_channels: int
    monai_version: str | None
    path: Path

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The same tensors with keys of ``SwinUNETR.swinViT.state_dict()`` (prefix removed)."""
        return {key[len(ENCODER_PREFIX) :]: value for key, value in self.state_dict.items()}


def sidecar_path(weights_path: str | os.PathLike[str]) -> Path:
    return Path(weights_path).with_suffix(".json")


def export_encoder(
    encoder: nn.Module,
    path: str | os.PathLike[str],
    *,
    feature_size: int,
    in_channels: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``encoder``'s weights to ``path`` (keys prefixed ``swinViT.``) and the JSON sidecar.

    Both files are written atomically; the sidecar last, so a sidecar always describes a
    complete weights file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        ENCODER_PREFIX + key: value.detach().cpu().clone() for key, value in encoder.state_dict().items()
    }
    write_atomic(path, lambda handle: torch.save(state, handle))
    info = {
        "format": "sslpretrain-swin-encoder",
        "feature_size": int(feature_size),
        "in_channels": int(in_channels),
        "monai_version": monai_version(),
        "torch_version": str(torch.__version__),
        "key_prefix": ENCODER_PREFIX,
        "tensors": len(state),
        "loads_into": f"monai.networks.nets.SwinUNETR(in_channels={in_channels}, out_channels=..., feature_size={feature_size}).load_state_dict(weights, strict=False)",
        **dict(extra or {}),
    }
    text = json.dumps(info, indent=2) + "\n"
    write_atomic(sidecar_path(path), lambda handle: handle.write(text.encode("utf-8")))
    return path


def load_encoder_weights(path: str | os.PathLike[str]) -> EncoderWeights:
    """Read weights written by :func:`export_encoder` (``weights_only``: no code runs).

    Issues :class:`MonaiVersionWarning` when they were saved with another MONAI major.minor.

    Raises:
        MedSegNASError: missing or unreadable file or sidecar, or a sidecar that does not match.
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise MedSegNASError(f"encoder weights not found: {path}")
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedSegNASError(
            f"{side} is missing: it records the feature size and MONAI version of {path.name}; "
            "export the encoder again with sslpretrain"
        ) from None
    except (OSError, ValueError) as exc:
        raise MedSegNASError(f"cannot read {side}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MedSegNASError(f"cannot load encoder weights {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MedSegNASError(f"{path} is not a state dict of tensors")
    if info.get("tensors") is not None and info["tensors"] != len(state):
        raise MedSegNASError(f"{path} holds {len(state)} tensors but {side.name} says {info['tensors']}")
    warn_if_other_monai(info.get("monai_version"), f"encoder weights {path}")
    return EncoderWeights(
        state_dict=state,
        feature_size=int(info["feature_size"]),
        in_channels=int(info.get("in_channels", 1)),
        monai_version=info.get("monai_version"),
        path=path,
    )


# -- pretrained weights for fine-tuning ---------------------------------------------------------

#: Least fraction of the encoder's tensors a pretrained file must fill (with the right shapes)
#: for fine-tuning to start from it. A complete encoder fills 100%; 95% leaves room for the
#: patch embedding of an image with another number of channels (2 of 126 tensors), while a
#: renaming that went wrong (the classic silent failure) fills next to nothing and is refused.
MIN_LOADED_FRACTION = 0.95
#: Children of MONAI's ``SwinTransformer`` with weights: a key starting with one of these is an
#: encoder saved alone (MONAI's published SSL weights) and gets :data:`ENCODER_PREFIX`.
_ENCODER_CHILDREN = ("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.")
#: Layouts :func:`read_pretrained_encoder` recognises.
LAYOUTS = ("sslpretrain-encoder", "sslpretrain-checkpoint", "monai-swin-ssl", "swin-unetr")


def normalise_encoder_key(key: str) -> str:
    """The ``SwinUNETR.state_dict()`` key that a pretrained tensor's ``key`` stands for.

    MONAI's published Swin UNETR SSL weights (``model_swinvit.pt``, the layout
    ``SwinUNETR.load_from`` reads) name the encoder's tensors ``module.patch_embed.proj.weight``,
    ``module.layers1.0.blocks.0.mlp.fc1.weight``, ...; the research code's own checkpoints use
    ``module.swin_vit.``. The rules, applied in this order:

    1. every leading ``module.`` is removed (``DataParallel``/``DistributedDataParallel``);
    2. ``swin_vit.`` becomes ``swinViT.`` (the research code's attribute name);
    3. a key starting with a child of the encoder (``patch_embed.``, ``layers1.`` ... ``layers4.``)
       gets the ``swinViT.`` prefix (an encoder saved alone);
    4. ``.mlp.fc1.``/``.mlp.fc2.`` become ``.mlp.linear1.``/``.mlp.linear2.`` (MONAI's ``MLPBlock``).

    Other keys (decoder, SSL heads) pass unchanged and simply match no encoder tensor.
    """
    while key.startswith("module."):
        key = key[len("module.") :]
    if key.startswith("swin_vit."):
        key = ENCODER_PREFIX + key[len("swin_vit.") :]
    elif key.startswith(_ENCODER_CHILDREN):
        key = ENCODER_PREFIX + key
    if key.startswith(ENCODER_PREFIX):
        key = key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
    return key


@dataclass
class PretrainedEncoder:
    """Pretrained encoder weights for fine-tuning, read by :func:`read_pretrained_encoder`.

    Attributes:
        state_dict: every tensor of the file, keys normalised by :func:`normalise_encoder_key`
            (the encoder's carry the ``swinViT.`` prefix).
        path: the file read.
        layout: one of :data:`LAYOUTS`: our exported ``encoder.pt``, our pretraining checkpoint,
            MONAI's published SSL weights (``module.patch_embed...``), or a plain ``SwinUNETR``
            state dict (``swinViT.``, e.g. a fine-tuned bundle's ``model.pt``).
        monai_version: MONAI version that saved them (``None`` when the file does not say).
        renamed: how many keys the published-layout rules renamed.
        warnings: what the user should know (another MONAI version, an unfinished pretraining run).
        info: facts about the pretraining (``steps``, ``modality``, ...), when recorded.
    """

    state_dict: dict[str, torch.Tensor]
    path: Path
    layout: str
    monai_version: str | None = None
    renamed: int = 0
    warnings: list[str] | None = None
    info: dict[str, Any] | None = None

    def _embedding(self) -> torch.Tensor | None:
        return self.state_dict.get(ENCODER_PREFIX + "patch_embed.proj.weight")

    @property
    def feature_size(self) -> int | None:
        """Feature size of the encoder (output channels of the patch embedding), if present."""
        weight = self._embedding()
        return int(weight.shape[0]) if weight is not None and weight.ndim == 5 else None

    @property
    def in_channels(self) -> int | None:
        """Image channels the encoder was pretrained on (input channels of the patch embedding)."""
        weight = self._embedding()
        return int(weight.shape[1]) if weight is not None and weight.ndim == 5 else None

    @property
    def encoder_keys(self) -> list[str]:
        return [key for key in self.state_dict if key.startswith(ENCODER_PREFIX)]


def resolve_pretrained_path(source: str | os.PathLike[str]) -> Path:
    """The weights file behind ``source``: a file as is; a pretraining run directory gives its
    ``artifacts/encoder.pt`` (finished run) or else its ``checkpoints/last.pt`` (stopped run); a
    Swin UNETR bundle folder gives its ``models/model.pt``."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = (
            path / "artifacts" / "encoder.pt",
            path / "checkpoints" / "last.pt",
            path / "models" / "model.pt",
        )
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise MedSegNASError(
            f"{path} holds no pretrained encoder (no artifacts/encoder.pt, checkpoints/last.pt or models/model.pt); "
            "give a pretraining run directory of 'sslpretrain pretrain', or a weights file"
        )
    if not path.is_file():
        raise MedSegNASError(
            f"pretrained weights not found: {path} (give a pretraining run directory or a .pt file)"
        )
    return path


def _tensor_mapping(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return None


def _is_exported_encoder(path: Path) -> bool:
    """Whether ``path`` has the JSON sidecar of :func:`export_encoder` beside it."""
    try:
        info = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == "sslpretrain-swin-encoder"


def read_pretrained_encoder(source: str | os.PathLike[str]) -> PretrainedEncoder:
    """Read pretrained Swin encoder weights in any layout fine-tuning accepts.

    ``source``: a pretraining run directory (see :func:`resolve_pretrained_path`), our exported
    ``encoder.pt`` (with its ``encoder.json``), our checkpoint ``last.pt``, MONAI's published SSL
    weights (``{"state_dict": {"module.patch_embed.proj.weight": ...}}`` or the bare dict), or a
    ``SwinUNETR`` state dict. Always read with ``torch.load(weights_only=True)``: no code runs.
    Issues :class:`MonaiVersionWarning` when the weights come from another MONAI major.minor
    version, or do not say which (the published ones predate MONAI 1.5).

    Raises:
        MedSegNASError: missing or unreadable file, or a file that holds no state dict of tensors.
    """
    path = resolve_pretrained_path(source)
    notes: list[str] = []
    if _is_exported_encoder(path):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MonaiVersionWarning)
            exported = load_encoder_weights(path)
        notes += [str(w.message) for w in caught if issubclass(w.category, MonaiVersionWarning)]
        for note in notes:
            warnings.warn(note, MonaiVersionWarning, stacklevel=2)
        info = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        extra = {key: info[key] for key in ("steps", "modality", "preprocessing") if key in info}
        return PretrainedEncoder(
            dict(exported.state_dict), path, "sslpretrain-encoder", exported.monai_version, 0, notes, extra
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MedSegNASError(
            f"cannot load {path} as weights ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "only state dicts of tensors are read (torch.load with weights_only=True), not pickled models"
        ) from None
    info: dict[str, Any] = {}
    recorded: str | None = None
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("sslpretrain-checkpoint"):
        layout, state = "sslpretrain-checkpoint", _tensor_mapping(obj.get("model"))
        recorded = obj.get("monai_version")
        steps = (obj.get("config") or {}).get("steps")
        info = {"step": obj.get("step"), "steps": steps}
        if steps is not None and obj.get("step") is not None and obj["step"] < steps:
            notes.append(
                f"{path} is the checkpoint of an unfinished pretraining run (step {obj['step']} of {steps})"
            )
    else:
        layout = "swin-unetr"
        state = _tensor_mapping(obj)
        if state is None and isinstance(obj, Mapping):
            for wrapper in ("state_dict", "model", "network", "model_state_dict"):
                state = _tensor_mapping(obj.get(wrapper))
                if state is not None:
                    break
            if isinstance(obj.get("monai_version"), str):
                recorded = obj["monai_version"]
    if state is None:
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {list(obj)[:6]}"
        raise MedSegNASError(
            f"{path} holds no state dict of tensors ({kind}); expected encoder weights such as "
            "RUN/artifacts/encoder.pt or MONAI's model_swinvit.pt"
        )
    normalised: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        new_key = normalise_encoder_key(key)
        bare = key[len("module.") :] if key.startswith("module.") else key
        renamed += new_key not in (key, bare)
        normalised[new_key] = value
    if layout == "swin-unetr" and renamed:
        layout = "monai-swin-ssl"
    if recorded is None and path.parent.name == "models":  # a MONAI bundle records it in its metadata
        try:
            metadata = json.loads(
                (path.parent.parent / "configs" / "metadata.json").read_text(encoding="utf-8")
            )
            recorded = str(metadata["monai_version"]) if isinstance(metadata, dict) else None
        except (OSError, ValueError, KeyError):
            recorded = None
    message = warn_if_other_monai(recorded, f"pretrained weights {path}")
    if message:
        notes.insert(0, message)
    return PretrainedEncoder(normalised, path, layout, recorded, renamed, notes, info)


def load_pretrained_encoder(
    network: nn.Module,
    pretrained: PretrainedEncoder | str | os.PathLike[str],
    *,
    min_fraction: float = MIN_LOADED_FRACTION,
) -> dict[str, Any]:
    """Copy pretrained encoder weights into a Swin UNETR's encoder (``network.swinViT``), checked.

    Every encoder tensor of ``network`` (keys ``swinViT.*`` of its state dict) is filled from
    the pretrained tensor of the same normalised name when the shapes agree; the copies are then
    read back and compared. Nothing else of ``network`` changes. The counts are of the encoder's
    learned tensors (118 for Swin UNETR): the ``relative_position_index`` buffers are the same
    constants in every network, so loading them proves nothing (they are copied all the same).

    Returns:
        The load report: ``loaded`` (learned tensors copied), ``total_encoder_tensors``,
        ``loaded_fraction``, ``missing`` (encoder keys the file lacks), ``mismatched``
        (``{"key", "pretrained_shape", "network_shape"}``), ``skipped`` (the file's keys that are
        not encoder tensors, e.g. SSL heads), ``buffers_loaded``, ``source``, ``layout``,
        ``renamed``, ``monai_version``, ``feature_size`` and ``warnings``.

    Raises:
        MedSegNASError: ``network`` has no Swin encoder, or fewer than ``min_fraction`` of its
            encoder tensors (or none at all) could be loaded: fine-tuning would silently start
            from random weights.
    """
    if not isinstance(pretrained, PretrainedEncoder):
        pretrained = read_pretrained_encoder(pretrained)
    target = network.state_dict()
    learned = {name for name, _ in network.named_parameters() if name.startswith(ENCODER_PREFIX)}
    encoder_keys = [key for key in target if key.startswith(ENCODER_PREFIX)]
    if not learned:
        raise MedSegNASError(
            f"the network ({type(network).__name__}) has no Swin encoder ({ENCODER_PREFIX}* weights) to load "
            "pretrained weights into; fine-tune a Swin UNETR"
        )
    source = pretrained.state_dict
    to_load: dict[str, torch.Tensor] = {}
    mismatched: list[dict[str, Any]] = []
    missing: list[str] = []
    for key in encoder_keys:
        if key not in source:
            if key in learned:
                missing.append(key)
        elif tuple(source[key].shape) != tuple(target[key].shape):
            mismatched.append(
                {
                    "key": key,
                    "pretrained_shape": list(source[key].shape),
                    "network_shape": list(target[key].shape),
                }
            )
        else:
            to_load[key] = source[key].to(dtype=target[key].dtype)
    encoder_set = set(encoder_keys)
    skipped = [key for key in source if key not in encoder_set]
    loaded = sum(key in learned for key in to_load)
    total = len(learned)
    fraction = loaded / total
    where = f"{pretrained.path} ({pretrained.layout} layout)"
    network_features = int(target[ENCODER_PREFIX + "patch_embed.proj.weight"].shape[0])
    if pretrained.feature_size is not None and pretrained.feature_size != network_features:
        hint = (
            f"the weights are for feature size {pretrained.feature_size}, the network has feature size "
            f"{network_features}"
        )
    else:
        hint = "the weights are for another architecture (depths, heads) or were renamed wrongly"
    if loaded == 0:
        if mismatched:
            first = mismatched[0]
            detail = (
                f"{len(mismatched)} name(s) matched but with other shapes, e.g. {first['key']} "
                f"{tuple(first['pretrained_shape'])} in the file vs {tuple(first['network_shape'])} in the "
                f"network ({hint})"
            )
        else:
            examples = ", ".join(list(source)[:3]) or "none"
            detail = f"its {len(source)} tensor(s) have keys such as {examples}, none of which names an encoder tensor"
        raise MedSegNASError(
            f"none of the {total} encoder tensors of the Swin UNETR could be loaded from {where}: {detail}; "
            "give a pretraining run of 'sslpretrain pretrain', its encoder.pt, or MONAI's Swin UNETR SSL weights"
        )
    if fraction < min_fraction:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if mismatched:
            first = mismatched[0]
            parts.append(
                f"{len(mismatched)} with other shapes (e.g. {first['key']} {tuple(first['pretrained_shape'])} vs "
                f"{tuple(first['network_shape'])})"
            )
        raise MedSegNASError(
            f"only {loaded} of the {total} encoder tensors ({100 * fraction:.0f}%) could be loaded from {where}; "
            f"at least {100 * min_fraction:.0f}% are needed: {'; '.join(parts)}; {hint}"
        )
    result = network.load_state_dict(to_load, strict=False)
    if result.unexpected_keys:  # pragma: no cover - keys were taken from the network itself
        raise MedSegNASError(f"unexpected keys while loading the encoder: {result.unexpected_keys[:3]}")
    after = network.state_dict()
    differing = [
        key for key, value in to_load.items() if not torch.equal(after[key], value.to(after[key].device))
    ]
    if differing:  # pragma: no cover - a module whose state_dict does not alias its parameters
        raise MedSegNASError(f"encoder weights did not take: {len(differing)} tensor(s) differ after loading")
    return {
        "loaded": loaded,
        "total_encoder_tensors": total,
        "loaded_fraction": round(fraction, 4),
        "missing": missing,
        "mismatched": mismatched,
        "skipped": skipped,
        "buffers_loaded": len(to_load) - loaded,
        "source": str(pretrained.path),
        "layout": pretrained.layout,
        "renamed": pretrained.renamed,
        "monai_version": pretrained.monai_version,
        "feature_size": pretrained.feature_size,
        "warnings": list(pretrained.warnings or []),
    }
