"""The three pretext losses and their weighted sum.

NT-Xent (the SimCLR contrastive loss) in log-sum-exp form: for ``2N`` projections ``z`` of ``N``
crops (view 1 of every crop, then view 2), with cosine similarities ``s_ij`` and temperature
``T``, the loss of sample ``i`` whose other view is ``p(i)`` is::

    l_i = -s_ip(i) / T + log sum_{j != i} exp(s_ij / T)

``torch.logsumexp`` subtracts the row maximum before exponentiating, so the loss stays finite at
any temperature (``exp(1 / 0.005) = exp(200)`` overflows float32 in the direct form of the
reference code and of ``monai.losses.ContrastiveLoss``). It is computed in float32 even under
autocast.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import LOSS_NAMES
from .heads import SSLOutputs


def nt_xent_loss(view1: torch.Tensor, view2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy of two batches of projections.

    Args:
        view1, view2: ``(N, D)`` projections of the two views of ``N`` crops (row ``n`` of both
            comes from crop ``n``); ``N >= 1``. Any floating dtype; computed in float32.
        temperature: ``T > 0``.

    Returns:
        Scalar: the mean of ``l_i`` over the ``2N`` samples. Every other sample of the batch is
        a negative; with ``N = 1`` the positive is the only other sample and the loss is 0.
    """
    if view1.shape != view2.shape or view1.ndim != 2:
        raise ValueError(
            f"expected two (N, D) batches of the same shape, got {tuple(view1.shape)} and {tuple(view2.shape)}"
        )
    n = view1.shape[0]
    with torch.autocast(device_type=view1.device.type, enabled=False):  # float16 would round s_ij / T
        z = F.normalize(torch.cat([view1, view2]).float(), dim=1)
        logits = (z @ z.T) / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        # cross_entropy = -logit of the positive + logsumexp of the row: the stable form.
        return F.cross_entropy(logits, positives)


class SSLLoss(nn.Module):
    """``w_rot * CE(rotation) + w_con * NT-Xent + w_rec * L1(reconstruction)``.

    Args:
        weights: weight of each term (keys from :data:`~.config.LOSS_NAMES`; missing ones are 1).
        temperature: NT-Xent temperature.
    """

    def __init__(self, weights: dict[str, float] | None = None, temperature: float = 0.5) -> None:
        super().__init__()
        weights = weights or {}
        self.weights = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}
        self.temperature = float(temperature)

    def forward(
        self, outputs: SSLOutputs, rotation_labels: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its unweighted terms.

        Args:
            outputs: the model's outputs for ``2N`` views (view 1 of each crop, then view 2).
            rotation_labels: ``(2N,)`` int64, the quarter turns applied to each view.
            targets: ``(2N, C, X, Y, Z)`` the rotated views before masking.

        Returns:
            ``(total, {"rotation": ..., "contrastive": ..., "reconstruction": ...})``, scalars
            (float32).
        """
        n = rotation_labels.shape[0] // 2
        terms = {
            "rotation": F.cross_entropy(outputs.rotation_logits.float(), rotation_labels),
            "contrastive": nt_xent_loss(outputs.projection[:n], outputs.projection[n:], self.temperature),
            "reconstruction": F.l1_loss(outputs.reconstruction.float(), targets.float()),
        }
        total = sum(self.weights[name] * terms[name] for name in LOSS_NAMES)
        return total, terms  # type: ignore[return-value]
