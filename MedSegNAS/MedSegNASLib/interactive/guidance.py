"""DeepEdit guidance channels, built by MONAI's own ``monai.apps.deepedit`` transforms.

The network input is the image followed by one guidance channel per label (background included),
in the order of ``label_names``: each click sets its voxel to 1, the channel is smoothed by a
Gaussian (sigma 3 voxels) and rescaled to [0, 1]
(:class:`monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd`). Training simulates clicks in
the error regions as :class:`monai.apps.deepedit.interaction.Interaction` does, with
:class:`~monai.apps.deepedit.transforms.FindDiscrepancyRegionsDeepEditd` and
:class:`~monai.apps.deepedit.transforms.AddRandomGuidanceDeepEditd` (Diaz-Pinto et al., "MONAI
Label", 2022, arXiv:2203.12362).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["GUIDANCE_SIGMA", "guidance_channels", "add_guidance", "crop_points", "interactive_training_input"]

#: MONAI's default sigma (voxels) of AddGuidanceSignalDeepEditd, used by the model-zoo bundles.
GUIDANCE_SIGMA = 3

# AddRandomGuidanceDeepEditd logs every simulated click at INFO level: once per sample and step.
logging.getLogger("monai.apps.deepedit.transforms").setLevel(logging.WARNING)


def crop_points(
    points: Mapping[str, Sequence[Sequence[int]]], start: Sequence[int], shape: Sequence[int]
) -> dict[str, list[list[int]]]:
    """Points of a whole grid -> the points inside the box ``start`` .. ``start + shape``, in box indices.

    MONAI's signal clamps points outside the image onto its border, which is right for a whole
    image and wrong for a local region: those points are dropped here instead.
    """
    kept: dict[str, list[list[int]]] = {}
    for name, items in points.items():
        kept[name] = []
        for point in items:
            local = [int(p) - int(s) for p, s in zip(point[-3:], start, strict=True)]
            if all(0 <= v < n for v, n in zip(local, shape, strict=True)):
                kept[name].append(local)
    return kept


def guidance_channels(
    spatial_shape: Sequence[int], points: Mapping[str, Sequence[Sequence[int]]], sigma: int = GUIDANCE_SIGMA
) -> np.ndarray:
    """One guidance channel per entry of ``points`` (in its order), shape ``(len(points), I, J, K)``, float32.

    Built by MONAI's ``AddGuidanceSignalDeepEditd`` on a dummy one-channel image of that shape, so
    the encoding is MONAI's (Gaussian of ``sigma`` voxels, rescaled to [0, 1]; zeros without clicks).
    """
    from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd

    dummy = np.zeros((1, *[int(s) for s in spatial_shape]), dtype=np.float32)
    guidance = {name: [list(p) for p in items] for name, items in points.items()}
    signal = AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", sigma=sigma, number_intensity_ch=1)
    out = signal({"image": dummy, "guidance": guidance})["image"]
    return np.asarray(out[1:], dtype=np.float32)


def add_guidance(
    image: np.ndarray, points: Mapping[str, Sequence[Sequence[int]]], sigma: int = GUIDANCE_SIGMA
) -> np.ndarray:
    """``image`` (C, I, J, K) followed by its guidance channels: the network input, float32."""
    channels = guidance_channels(image.shape[1:], points, sigma)
    return np.concatenate([np.asarray(image, dtype=np.float32), channels], axis=0)


def interactive_training_input(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_names: Mapping[str, int],
    *,
    generator: np.random.Generator,
    interact_probability: float = 0.5,
    max_interactions: int = 3,
    sigma: int = GUIDANCE_SIGMA,
) -> torch.Tensor:
    """The network input of one DeepEdit training step: images plus simulated-click guidance channels.

    As MONAI's ``Interaction``: with probability ``interact_probability`` the network (in eval
    mode, no gradient) predicts up to ``max_interactions`` times; after each prediction clicks
    are added in the error regions (iteration ``j`` keeps clicking with probability
    ``1 - j / max_interactions``); otherwise the guidance is all zeros (the automatic mode, so
    one model serves both). The model's training mode is restored.

    Args:
        model: the network; its input has ``C + len(label_names)`` channels.
        images: ``(B, C, I, J, K)`` preprocessed image patches.
        labels: ``(B, 1, I, J, K)`` label values.
        label_names: label name -> value, background included, in guidance-channel order.
        generator: the randomness (seeded by the trainer, so runs repeat).
    Returns:
        ``(B, C + len(label_names), I, J, K)`` on ``images``' device.
    """
    from monai.apps.deepedit.transforms import (
        AddGuidanceSignalDeepEditd,
        AddRandomGuidanceDeepEditd,
        FindDiscrepancyRegionsDeepEditd,
    )

    batch, n_image = images.shape[0], images.shape[1]
    zeros = torch.zeros(
        (batch, len(label_names), *images.shape[2:]), dtype=images.dtype, device=images.device
    )
    inputs = torch.cat([images, zeros], dim=1)
    if generator.random() >= interact_probability:
        return inputs
    discrepancy = FindDiscrepancyRegionsDeepEditd(keys="label", pred="pred", discrepancy="discrepancy")
    clicker = AddRandomGuidanceDeepEditd(keys="NA", guidance="guidance", discrepancy="discrepancy")
    clicker.set_random_state(int(generator.integers(2**31)))
    signal = AddGuidanceSignalDeepEditd(
        keys="image", guidance="guidance", sigma=sigma, number_intensity_ch=n_image
    )
    image_np = images.detach().cpu().numpy()
    label_np = labels.detach().cpu().numpy()
    guidance: list[dict[str, list]] = [{name: [] for name in label_names} for _ in range(batch)]
    was_training = model.training
    model.eval()
    try:
        for j in range(max_interactions):
            with torch.no_grad():
                predictions = model(inputs).argmax(dim=1, keepdim=True).cpu().numpy()
            channels = []
            for b in range(batch):
                d = {
                    "image": image_np[b],
                    "label": label_np[b],
                    "pred": predictions[b].astype(np.float32),
                    "label_names": dict(label_names),
                    "guidance": guidance[b],
                    "probability": 1.0 - j / max_interactions,
                }
                d = clicker(discrepancy(d))
                guidance[b] = {name: list(d["guidance"].get(name, [])) for name in label_names}
                d = signal({"image": image_np[b], "guidance": guidance[b]})
                channels.append(np.asarray(d["image"], dtype=np.float32))
            inputs = torch.from_numpy(np.stack(channels)).to(images.device, images.dtype)
    finally:
        model.train(was_training)
    return inputs


class WithoutClicks(torch.nn.Module):
    """An interactive network used automatically: its guidance channels are zeros (DeepEdit's no-click mode).

    Args:
        network: takes ``C + guidance_channels`` input channels.
        guidance_channels: how many zero channels to append to a ``(B, C, ...)`` input.
    """

    def __init__(self, network: torch.nn.Module, guidance_channels: int) -> None:
        super().__init__()
        self.network = network
        self.guidance_channels = int(guidance_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        zeros = images.new_zeros((images.shape[0], self.guidance_channels, *images.shape[2:]))
        return self.network(torch.cat([images, zeros], dim=1))
