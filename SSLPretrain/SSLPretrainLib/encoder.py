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
