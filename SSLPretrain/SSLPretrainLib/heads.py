"""The self-supervised head on the Swin encoder's bottleneck, and the model that joins them.

All sizes follow from ``feature_size`` (``f``): the bottleneck has ``16 f`` channels at 1/32 of
the input resolution (768 for f = 48, the only size the reference head's hard-coded 768 fits).

* rotation: global average of the bottleneck -> ``Linear(16 f, 4)``, logits of k in 0..3.
* contrastive: the same pooled vector -> ``Linear(16 f, 16 f)`` -> batch norm -> GELU ->
  ``Linear(16 f, projection_dim)`` (SimCLR's projection; the loss normalises it). At
  initialisation the pooled Swin features of different crops have cosine similarities of about
  0.99; the batch norm removes what the batch shares, so the contrastive loss learns from the
  first step instead of sitting at log(2N - 1).
* inpainting: a convolutional decoder, five times (3^3 conv, group norm, leaky ReLU,
  trilinear x2 upsampling) halving the channels ``16 f -> 8 f -> ... -> f / 2``, then a 1^3 conv
  to the input channels: it reconstructs the whole crop at input resolution. Group norm (up to
  8 groups) replaces the reference's instance norm, which is undefined on the single bottleneck
  voxel of a 32^3 crop.

Pooling (instead of the reference's use of bottleneck tokens 0 and 1) works at any crop size,
including 32^3 crops whose bottleneck is a single voxel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .encoder import build_swin_encoder

#: Rotation classes: k quarter turns, k = 0..3.
NUM_ROTATIONS = 4
#: Decoder stages: each doubles the resolution, 2^5 = 32 = the encoder's total downsampling.
DECODER_STAGES = 5
#: Groups of the decoder's group norms (fewer when the channels are not divisible by 8).
DECODER_GROUPS = 8


class SSLOutputs(NamedTuple):
    """What :class:`SwinSSLModel` returns for a batch of ``N`` views.

    Attributes:
        rotation_logits: ``(N, 4)``.
        projection: ``(N, projection_dim)``, not normalised.
        reconstruction: ``(N, C, X, Y, Z)``, the input's shape.
    """

    rotation_logits: torch.Tensor
    projection: torch.Tensor
    reconstruction: torch.Tensor


def default_projection_dim(feature_size: int) -> int:
    """Two thirds of the bottleneck channels: 512 for feature size 48 (the reference's size)."""
    return (2 * 16 * feature_size) // 3


class SSLHead(nn.Module):
    """Rotation classifier, contrastive projection and inpainting decoder on the bottleneck.

    Args:
        feature_size: the encoder's feature size ``f`` (bottleneck channels ``16 f``).
        out_channels: channels of the reconstructed image (the input's).
        projection_dim: contrastive projection size (default :func:`default_projection_dim`).
    """

    def __init__(self, feature_size: int, out_channels: int = 1, projection_dim: int | None = None) -> None:
        super().__init__()
        channels = 16 * feature_size
        self.bottleneck_channels = channels
        self.projection_dim = projection_dim or default_projection_dim(feature_size)
        self.rotation = nn.Linear(channels, NUM_ROTATIONS)
        self.projection = nn.Sequential(
            nn.Linear(channels, channels),
            nn.BatchNorm1d(channels),
            nn.GELU(),
            nn.Linear(channels, self.projection_dim),
        )
        stages: list[nn.Module] = []
        width = channels
        for _ in range(DECODER_STAGES):
            stages += [
                nn.Conv3d(width, width // 2, kernel_size=3, padding=1),
                nn.GroupNorm(math.gcd(width // 2, DECODER_GROUPS), width // 2),
                nn.LeakyReLU(),
                nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
            ]
            width //= 2
        stages.append(nn.Conv3d(width, out_channels, kernel_size=1))
        self.decoder = nn.Sequential(*stages)

    def forward(self, bottleneck: torch.Tensor) -> SSLOutputs:
        """``bottleneck`` ``(N, 16 f, x, y, z)`` -> :class:`SSLOutputs` (reconstruction ``(N, C, 32x, 32y, 32z)``)."""
        pooled = bottleneck.mean(dim=(2, 3, 4))
        return SSLOutputs(self.rotation(pooled), self.projection(pooled), self.decoder(bottleneck))


class SwinSSLModel(nn.Module):
    """Swin UNETR encoder (``swinViT``, as in :class:`~monai.networks.nets.SwinUNETR`) + :class:`SSLHead`.

    ``state_dict()`` keys under ``swinViT.`` are exactly those of ``SwinUNETR.state_dict()``.
    """

    def __init__(
        self,
        feature_size: int,
        in_channels: int = 1,
        projection_dim: int | None = None,
        *,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.in_channels = in_channels
        self.swinViT = build_swin_encoder(feature_size, in_channels, use_checkpoint=use_checkpoint)
        self.head = SSLHead(feature_size, in_channels, projection_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck ``(N, 16 f, X/32, Y/32, Z/32)``, layer-normalised over channels as
        ``SwinUNETR`` (``normalize=True``) feeds it to its decoder."""
        bottleneck = self.swinViT(x.contiguous(), normalize=False)[-1]
        channels_last = bottleneck.movedim(1, -1)
        return F.layer_norm(channels_last, channels_last.shape[-1:]).movedim(-1, 1)

    def forward(self, x: torch.Tensor) -> SSLOutputs:
        """``x`` ``(N, C, X, Y, Z)``, every side divisible by 32 -> :class:`SSLOutputs`."""
        return self.head(self.encode(x))
