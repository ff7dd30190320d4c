"""DeepEdit guidance channels, encoded as MONAI's ``monai.apps.deepedit`` transforms encode them.

The network input is the image followed by one guidance channel per label (background included),
in the order of ``label_names``: each click sets its voxel to 1, the channel is smoothed by a
Gaussian (sigma 3 voxels) and rescaled to [0, 1], as
:class:`monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd` does (computed around the clicks
only: :func:`guidance_channels`). Training simulates clicks in
the error regions as :class:`monai.apps.deepedit.interaction.Interaction` does, with
:class:`~monai.apps.deepedit.transforms.FindDiscrepancyRegionsDeepEditd` and
:class:`~monai.apps.deepedit.transforms.AddRandomGuidanceDeepEditd` (Diaz-Pinto et al., "MONAI
Label", 2022, arXiv:2203.12362).

Models with the **previous-mask** input (``medsegnas.interactive.previous_mask``) are trained as
RITM trains them (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for Interactive
Segmentation", ICIP 2022, arXiv:2102.06583): the input also holds the mask before the newest click,
and the training loop runs the model on its own predictions, placing each next click in the errors
of the model's last result (:func:`interactive_training_input` with ``previous_mask=True``). Most
sequences start from the model's own automatic result, as a user refining it does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "GUIDANCE_SIGMA",
    "guidance_channels",
    "add_guidance",
    "crop_points",
    "interactive_training_input",
    "WithoutClicks",
]

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

    MONAI's encoding (``AddGuidanceSignalDeepEditd``): each click sets its voxel to 1 (points outside
    the grid are clamped onto its border, negative ones skipped), the channel is smoothed by
    MONAI's ``GaussianFilter`` (erf kernel of ``sigma`` voxels truncated at 4 sigma, zero padding)
    and rescaled to [0, 1]; a channel without clicks is zeros. MONAI filters the whole grid (three
    1-D convolutions over every voxel: 0.3 s a click for 5 channels of 96^3 on 2 CPU cores);
    the filter of a set of single voxels is the sum of the kernel's outer product placed at each
    of them, written here into each click's box alone (float32, in the filter's axis order, so a
    lone click gives MONAI's values exactly; overlapping clicks differ by float rounding).
    """
    from monai.networks.layers.convutils import gaussian_1d

    shape = tuple(int(s) for s in spatial_shape)
    kernel = gaussian_1d(float(sigma), truncated=4.0, approx="erf").numpy().astype(np.float32)
    tail = (len(kernel) - 1) // 2
    out = np.zeros((len(points), *shape), dtype=np.float32)
    for channel, items in enumerate(points.values()):
        voxels = {
            tuple(max(0, min(int(v), n - 1)) for v, n in zip(point[-3:], shape, strict=True))
            for point in items
            if not np.any(np.asarray(point) < 0)
        }
        if not voxels:
            continue
        signal = out[channel]
        for voxel in voxels:
            box, pieces = [], []
            for v, n in zip(voxel, shape, strict=True):
                low, high = max(0, v - tail), min(n, v + tail + 1)
                box.append(slice(low, high))
                pieces.append(kernel[low - v + tail : high - v + tail])
            # ((k_i * k_j) * k_k): the order in which MONAI's separable filter multiplies
            signal[tuple(box)] += np.multiply.outer(np.multiply.outer(pieces[0], pieces[1]), pieces[2])
        low_value, high_value = signal.min(), signal.max()
        if high_value > 0:
            signal -= low_value
            signal /= high_value - low_value
    return out


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
    previous_mask: bool = False,
    from_automatic_probability: float = 0.75,
) -> torch.Tensor:
    """The network input of one DeepEdit training step: images plus simulated-click guidance channels.

    As MONAI's ``Interaction``: with probability ``interact_probability`` the network (in eval
    mode, no gradient) predicts up to ``max_interactions`` times; after each prediction clicks
    are added in the error regions (iteration ``j`` keeps clicking with probability
    ``1 - j / max_interactions``); otherwise the guidance is all zeros (the automatic mode, so
    one model serves both). The model's training mode is restored.

    With ``previous_mask`` (RITM's iterative training with mask guidance), the input also has one
    previous-mask channel per segment and an interactive sample is a click sequence of
    1..``max_interactions`` clicks on one segment: it starts from the model's automatic result
    (probability ``from_automatic_probability``) or from nothing; each click goes to the centre of
    the largest error region of that segment in the model's latest result (the simulated user of
    the evaluation, :func:`~.simulate.next_click`), and the returned input holds all the clicks
    and, as previous mask, the result before the newest click.

    Args:
        model: the network; its input has ``C + len(label_names)`` channels.
        images: ``(B, C, I, J, K)`` preprocessed image patches.
        labels: ``(B, 1, I, J, K)`` label values.
        label_names: label name -> value, background included, in guidance-channel order.
        generator: the randomness (seeded by the trainer, so runs repeat).
    Returns:
        ``(B, C + len(label_names), I, J, K)`` on ``images``' device, plus ``len(label_names) - 1``
        previous-mask channels with ``previous_mask``.
    """
    if previous_mask:
        return _iterative_mask_guided_input(
            model,
            images,
            labels,
            label_names,
            generator=generator,
            interact_probability=interact_probability,
            max_interactions=max_interactions,
            sigma=sigma,
            from_automatic_probability=from_automatic_probability,
        )
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


def _iterative_mask_guided_input(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_names: Mapping[str, int],
    *,
    generator: np.random.Generator,
    interact_probability: float,
    max_interactions: int,
    sigma: int,
    from_automatic_probability: float,
) -> torch.Tensor:
    """RITM-style input: image, click guidance, previous masks (see :func:`interactive_training_input`)."""
    from .clicks import BACKGROUND
    from .simulate import next_click

    batch = images.shape[0]
    spatial = tuple(int(s) for s in images.shape[2:])
    segments = [name for name in label_names if name != BACKGROUND]
    extra = len(label_names) + len(segments)
    zeros = torch.zeros((batch, extra, *spatial), dtype=images.dtype, device=images.device)
    inputs = torch.cat([images, zeros], dim=1)
    if generator.random() >= interact_probability or not segments:
        return inputs  # the automatic mode: no clicks, no previous mask
    truth = labels.detach().cpu().numpy()[:, 0]
    count = int(generator.integers(1, max_interactions + 1))
    chosen = [segments[int(generator.integers(len(segments)))] for _ in range(batch)]
    points: list[dict[str, list[list[int]]]] = [{name: [] for name in label_names} for _ in range(batch)]
    was_training = model.training
    model.eval()
    try:

        def predict(network_input: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return model(network_input).argmax(dim=1).cpu().numpy()

        if generator.random() < from_automatic_probability:
            predictions = predict(inputs)
        else:
            predictions = np.zeros((batch, *spatial), dtype=np.int64)
        for index in range(count):
            channels = []
            for b in range(batch):
                value = label_names[chosen[b]]
                click = next_click(predictions[b] == value, truth[b] == value)
                if click is not None:
                    target = chosen[b] if click.positive else BACKGROUND
                    points[b][target].append(list(click.voxel))
                previous = np.stack([predictions[b] == label_names[name] for name in segments])
                channels.append(
                    np.concatenate(
                        [guidance_channels(spatial, points[b], sigma), previous.astype(np.float32)]
                    )
                )
            extras = torch.from_numpy(np.stack(channels)).to(images.device, images.dtype)
            inputs = torch.cat([images, extras], dim=1)
            if index + 1 < count:  # the result the next click corrects
                predictions = predict(inputs)
    finally:
        model.train(was_training)
    return inputs


class WithoutClicks(torch.nn.Module):
    """An interactive network used automatically: its guidance (and previous-mask) channels are zeros.

    DeepEdit's no-click mode; for a model with previous masks, also "nothing segmented yet".

    Args:
        network: takes ``C + guidance_channels`` input channels.
        guidance_channels: how many zero channels to append to a ``(B, C, ...)`` input
            (:func:`~.export.extra_channels` of the bundle's declaration).
    """

    def __init__(self, network: torch.nn.Module, guidance_channels: int) -> None:
        super().__init__()
        self.network = network
        self.guidance_channels = int(guidance_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        zeros = images.new_zeros((images.shape[0], self.guidance_channels, *images.shape[2:]))
        return self.network(torch.cat([images, zeros], dim=1))
