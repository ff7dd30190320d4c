"""Pretext views of a batch of crops: random quarter turns and random block masking, two views a crop.

For ``N`` crops ``(N, C, X, Y, Z)`` (``X == Y``), :func:`make_views` returns ``2N`` views: view 1
of every crop, then view 2. Each view is the crop turned by its own ``k`` quarter turns in the
I-J plane (axial for images reoriented to RAS; ``k`` is the rotation label), then masked by its
own random blocks. The reconstruction target of a view is the turned crop before masking.

Masking (Tang et al.): blocks of at most ``max_block_fraction`` of each axis are added at random
places until a random share of the voxels, drawn uniformly up to ``max_fraction``, is covered; a
block that would take the covered share above ``max_fraction`` is skipped, so the bound always
holds. Each block is filled with Gaussian noise of the view's mean and standard deviation
(at least :data:`MIN_NOISE_STD`) (``noise``) or with the voxels at the same place of another sample of the batch (``swap``);
``mixed`` picks one of the two for each block.

The random choices (turns, blocks, donors) come from a NumPy generator and the noise from a torch
generator, both seeded by the caller per step, so a step's views are a function of its seed:
this is what makes a resumed run identical to an uninterrupted one. Everything but the block
layout runs batched on the batch's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .heads import NUM_ROTATIONS

#: Mask codes: voxel kept, replaced by noise, replaced by another sample's voxel.
KEEP, NOISE, SWAP = 0, 1, 2
#: Smallest noise standard deviation (normalised intensities): a uniform crop (all air) still
#: gets visible noise, so that its masked blocks are something to inpaint.
MIN_NOISE_STD = 0.1
#: Consecutive skipped blocks after which a mask is considered full enough.
MAX_SKIPPED_BLOCKS = 20


@dataclass
class MaskSpec:
    """Block masking settings (see the module docstring)."""

    max_fraction: float = 0.3
    max_block_fraction: float = 0.25
    fill: str = "mixed"


@dataclass
class SSLViews:
    """A batch of ``2N`` pretext views.

    Attributes:
        views: ``(2N, C, X, Y, Z)`` turned and masked crops: the model's input.
        targets: ``(2N, C, X, Y, Z)`` turned crops before masking: the reconstruction target.
        rotations: ``(2N,)`` int64 quarter turns ``k`` in 0..3 of each view.
        masks: ``(2N, 1, X, Y, Z)`` uint8 codes :data:`KEEP`, :data:`NOISE`, :data:`SWAP`.
    """

    views: torch.Tensor
    targets: torch.Tensor
    rotations: torch.Tensor
    masks: torch.Tensor


def rotate_quarter_turns(volumes: torch.Tensor, turns: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Turn each ``volumes[n]`` ``(C, X, Y, Z)`` by ``turns[n]`` quarter turns in the X-Y plane
    (``torch.rot90`` over dims (1, 2) of the sample). Needs ``X == Y``; one call per distinct k."""
    if volumes.shape[2] != volumes.shape[3]:
        raise ValueError(f"quarter turns in the I-J plane need I == J, got a {tuple(volumes.shape[2:])} crop")
    turns = torch.as_tensor(np.asarray(turns), dtype=torch.int64)
    out = torch.empty_like(volumes)
    for k in range(NUM_ROTATIONS):
        selected = torch.nonzero(turns == k).flatten().to(volumes.device)
        if selected.numel():
            out[selected] = torch.rot90(volumes[selected], k, dims=(2, 3))
    return out


def block_mask(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    max_fraction: float = 0.3,
    max_block_fraction: float = 0.25,
    fill: str = "mixed",
) -> np.ndarray:
    """A random block mask of ``shape`` with codes KEEP / NOISE / SWAP (uint8).

    The masked share of voxels is at most ``max_fraction``; every block spans at most
    ``max(1, floor(max_block_fraction * side))`` voxels along each axis.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    total = int(np.prod(shape))
    limit = int(np.floor(max_fraction * total))
    target = int(rng.uniform(0.0, max_fraction) * total)
    max_sides = [max(1, int(max_block_fraction * side)) for side in shape]
    covered, skipped = 0, 0
    while covered < target and skipped < MAX_SKIPPED_BLOCKS:
        sides = [int(rng.integers(1, m + 1)) for m in max_sides]
        starts = [int(rng.integers(0, side - s + 1)) for side, s in zip(shape, sides, strict=True)]
        code = NOISE if fill == "noise" else SWAP if fill == "swap" else int(rng.integers(NOISE, SWAP + 1))
        block = tuple(slice(b, b + s) for b, s in zip(starts, sides, strict=True))
        new = int(np.prod(sides)) - int(np.count_nonzero(mask[block]))
        if covered + new > limit:
            skipped += 1
            continue
        skipped = 0
        mask[block] = code
        covered += new
    return mask


def _donors(num_crops: int, rng: np.random.Generator) -> np.ndarray:
    """For each of the ``2N`` views, another view to take swapped voxels from: a view of another
    crop when there is one, else the other view of the same crop."""
    views = np.arange(2 * num_crops)
    if num_crops == 1:
        return views[::-1].copy()
    crop = views % num_crops
    other = (crop + rng.integers(1, num_crops, size=views.size)) % num_crops
    return other + num_crops * rng.integers(0, 2, size=views.size)


def make_views(
    crops: torch.Tensor,
    rng: np.random.Generator,
    generator: torch.Generator,
    spec: MaskSpec | None = None,
    *,
    turns: np.ndarray | None = None,
) -> SSLViews:
    """Two turned, masked views of each crop (see the module docstring).

    Args:
        crops: ``(N, C, X, Y, Z)`` normalised crops, ``X == Y``, on any device.
        rng: NumPy generator for turns, blocks and donors.
        generator: torch generator on ``crops.device`` for the noise.
        spec: masking settings.
        turns: ``(2N,)`` quarter turns to apply instead of random ones (0: keep the crop's
            orientation, e.g. for reconstructions shown on the source image).
    """
    spec = spec or MaskSpec()
    n = crops.shape[0]
    device = crops.device
    turns = rng.integers(0, NUM_ROTATIONS, size=2 * n) if turns is None else np.asarray(turns, dtype=np.int64)
    targets = rotate_quarter_turns(torch.cat([crops, crops]), turns)
    spatial = tuple(int(s) for s in targets.shape[2:])
    codes = np.stack(
        [
            block_mask(spatial, rng, spec.max_fraction, spec.max_block_fraction, spec.fill)
            for _ in range(2 * n)
        ]
    )
    masks = torch.from_numpy(codes).unsqueeze(1).to(device)
    donors = torch.from_numpy(_donors(n, rng)).to(device)
    dims = tuple(range(1, targets.ndim))
    mean = targets.mean(dim=dims, keepdim=True)
    std = targets.std(dim=dims, keepdim=True).clamp_min(MIN_NOISE_STD)
    noise = torch.randn(targets.shape, generator=generator, device=device, dtype=targets.dtype) * std + mean
    views = torch.where(masks == NOISE, noise, targets)
    views = torch.where(masks == SWAP, targets[donors], views)
    return SSLViews(views, targets, torch.as_tensor(turns, dtype=torch.int64, device=device), masks)
