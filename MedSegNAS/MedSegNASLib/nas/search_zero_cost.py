"""Training-free ranking of DiNTS architectures: zero-cost proxies computed at initialisation.

Each proxy scores a freshly initialised network from one mini-batch of training patches (or, for
SynFlow, no data), in about a second per architecture instead of a training run:

* ``grad_norm``: the sum over weight tensors of the L2 norm of the DiceCE loss gradient
  (Abdelfattah et al., "Zero-cost proxies for lightweight NAS", ICLR 2021);
* ``snip``: ``sum |w * dL/dw|`` (Lee et al., ICLR 2019);
* ``synflow``: ``sum |w * dR/dw|`` with ``R`` the sum of the outputs of the network whose weights
  are replaced by their absolute values, on an all-ones input, normalisation layers bypassed
  (float32; float64 if that overflows) (Tanaka et al., NeurIPS 2020); reported as log10;
* ``naswot``: log-determinant of the kernel ``K[i, j]`` = number of ReLU units on which patches
  ``i`` and ``j`` agree (both active or both inactive) (Mellor et al., "NAS without training",
  ICML 2021);
* ``params``: the parameter count, the naive baseline every proxy should beat (White et al. 2022:
  many proxies mostly measure size).

``medsegnas search --zero-cost`` (:func:`run_zero_cost_search`) draws candidates of the space
(within ``max_params`` if set), scores them and writes the best one by ``zero_cost_proxy`` as
``arch.json``, with every candidate's scores in ``zero_cost.json``; no supernet is trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..atomic import write_json_atomic
from ..errors import MedSegNASError

__all__ = ["PROXIES", "proxy_scores", "run_zero_cost_search", "training_patches"]

#: Proxies, in report order; higher is better for each.
PROXIES = ("grad_norm", "snip", "synflow", "naswot", "params")


def _norm_layers(network) -> list:
    import torch

    kinds = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    return [m for m in network.modules() if isinstance(m, kinds)]


def _gradient_scores(network, images, labels) -> dict[str, float]:
    import torch
    from monai.losses import DiceCELoss

    network.zero_grad(set_to_none=True)
    loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(
        network(images), labels
    )
    loss.backward()
    grad_norm = snip = 0.0
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.grad is not None:
                grad_norm += float(parameter.grad.norm())
                snip += float((parameter.grad * parameter).abs().sum())
    network.zero_grad(set_to_none=True)
    return {"grad_norm": grad_norm, "snip": snip}


def _synflow(network, in_channels: int, patch: Sequence[int]) -> float:
    """log10 SynFlow in float32, redone in float64 (slow on CPUs) only if float32 overflows."""
    import torch

    score = _synflow_in(network, in_channels, patch, torch.float32)
    if not math.isfinite(score):
        score = _synflow_in(network, in_channels, patch, torch.float64)
    return score


def _synflow_in(network, in_channels: int, patch: Sequence[int], dtype) -> float:
    import torch

    network = network.to(dtype)
    signs = {}
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            signs[name] = torch.sign(tensor)
            tensor.abs_()
    hooks = [m.register_forward_hook(lambda module, inputs, output: inputs[0]) for m in _norm_layers(network)]
    try:
        network.zero_grad(set_to_none=True)
        output = network(torch.ones(1, in_channels, *patch, dtype=dtype))
        torch.sum(output).backward()
        total = 0.0
        with torch.no_grad():
            for parameter in network.parameters():
                if parameter.grad is not None:
                    total += float((parameter * parameter.grad).abs().sum())
    finally:
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for name, tensor in network.state_dict().items():
                tensor.mul_(signs[name])
        network.zero_grad(set_to_none=True)
        network.float()
    return math.log10(total) if total > 0 and math.isfinite(total) else (math.inf if total > 0 else -math.inf)


def _naswot(network, images) -> float:
    import torch

    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64)

    def hook(module, inputs, output) -> None:
        codes = (output.detach().reshape(batch, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, torch.nn.ReLU)]
    try:
        with torch.no_grad():
            network(images)
    finally:
        for handle in handles:
            handle.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) > 0 else -math.inf


def proxy_scores(network, images, labels) -> dict[str, float]:
    """Every proxy of :data:`PROXIES` for a freshly initialised ``network``.

    Args:
        network: input (B, C, *patch) -> logits (B, classes, *patch); left as it was found.
        images: (B, C, *patch) float training patches (B >= 2 for ``naswot``).
        labels: (B, 1, *patch) class indices.
    """
    network.train()
    scores = _gradient_scores(network, images, labels)
    scores["synflow"] = _synflow(network, int(images.shape[1]), tuple(images.shape[2:]))
    scores["naswot"] = _naswot(network, images)
    scores["params"] = float(sum(p.numel() for p in network.parameters()))
    return scores


def training_patches(resolved: Mapping[str, Any], count: int, seed: int):
    """``count`` class-balanced training patches (the search's transforms): ``(images, labels)`` tensors."""
    import torch

    from ..data.datasets import load_dataset
    from ..data.preprocessing import PreprocessingSpec
    from .common import cases_of_split
    from .pipeline import (
        SeededPatchDataset,
        case_records,
        make_cache,
        preprocessing_transforms,
        training_transforms,
    )

    spec = PreprocessingSpec.from_dict(resolved["preprocessing"])
    labels = resolved["dataset"]["labels"]
    dataset = load_dataset(resolved["dataset"]["path"], dataroot=resolved["request"].get("dataroot"))
    weights, architecture = cases_of_split(dataset, resolved["dataset"]["split"], ("weights", "architecture"))
    cache = make_cache(
        case_records([*weights, *architecture]),
        preprocessing_transforms(spec, [item["value"] for item in labels], for_training=True),
        cache_rate=1.0,
        num_workers=0,
    )
    crops = SeededPatchDataset(
        cache, training_transforms(spec, len(labels), crops_per_case=1, augment=False), seed=seed, stream=7
    )
    images, targets = [], []
    epoch = 0
    while len(images) < count:
        crops.set_epoch(epoch)
        for index in range(len(crops)):
            for item in crops[index]:
                images.append(torch.as_tensor(item["image"]))
                targets.append(torch.as_tensor(item["label"]))
        epoch += 1
    return torch.stack(images[:count]).float(), torch.stack(targets[:count]).long()


def score_architectures(
    codes, images, labels, num_classes: int, *, seed: int = 0, channel_mul: float = 1.0, stop=None
):
    """Proxy scores of each :class:`~.decode.ArchCode` (networks initialised with ``seed``)."""
    import torch

    results = []
    for code in codes:
        if stop is not None:
            stop()
        torch.manual_seed(seed)
        tick = time.perf_counter()
        network = code.network(int(images.shape[1]), num_classes, channel_mul=channel_mul)
        scores = proxy_scores(network, images, labels)
        scores["seconds"] = round(time.perf_counter() - tick, 3)
        results.append(scores)
    return results


def run_zero_cost_search(ctx, resolved: Mapping[str, Any], dist_info) -> dict[str, Any]:
    """``medsegnas search --zero-cost``: rank random candidates of the space by a proxy, no supernet.

    Writes ``arch.json`` (the best candidate; ``extra`` holds its scores and rank), ``zero_cost.json``
    (every candidate's code and scores) and ``summary.json`` (proxy, candidates, search time)."""
    from .decode import save_arch_json
    from .search import SearchConfig
    from .search_budget import ParameterTable, sample_architectures
    from .search_space import SearchSpace
    from .topology_plot import plot_topology

    started = time.monotonic()
    config = SearchConfig.from_dict(resolved["search"])
    space = SearchSpace.from_dict(resolved["search_space"])
    num_classes = int(resolved["dataset"]["num_classes"])
    in_channels = len(resolved["dataset"]["modalities"])
    if dist_info.world_size > 1:
        raise MedSegNASError("the zero-cost search runs in one process; start it without torchrun")
    table = ParameterTable.build(space, in_channels, num_classes, channel_mul=1.0)
    codes = sample_architectures(
        space, config.zero_cost_candidates, config.seed, table=table, max_params=config.max_params
    )
    ctx.log(
        f"zero-cost search: {len(codes)} random candidates of the {space.num_blocks}x{space.num_depths} space"
        + (f" with at most {config.max_params:,} parameters" if config.max_params else "")
        + f", ranked by {config.zero_cost_proxy}"
    )
    images, labels = training_patches(resolved, config.zero_cost_batch, config.seed)
    scores = []
    for index, code in enumerate(codes):
        scores += score_architectures(
            [code], images, labels, num_classes, seed=config.seed, stop=ctx.raise_if_stop_requested
        )
        ctx.progress(
            index + 1,
            len(codes),
            stage="zero-cost",
            **{k: v for k, v in scores[-1].items() if math.isfinite(v)},
        )
    values = np.array([s[config.zero_cost_proxy] for s in scores], dtype=np.float64)
    values[~np.isfinite(values) & (values < 0)] = -np.inf
    best = int(np.argmax(values))
    order = np.argsort(-values, kind="stable")
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    code = codes[best]
    code.extra = {**code.extra, "zero_cost": scores[best], "proxy": config.zero_cost_proxy, "rank": 1}
    artifacts = ctx.run_dir.artifacts if ctx.run_dir is not None else None
    seconds = round(time.monotonic() - started, 1)
    summary = {
        "method": "zero-cost",
        "proxy": config.zero_cost_proxy,
        "candidates": len(codes),
        "best_index": best,
        "best_scores": scores[best],
        "max_params": config.max_params,
        "parameters": {"searched_channel_mul_1": table.of(code)},
        "timing": {"wall_s_this_process": seconds},
        "batch": list(images.shape),
        "search_space": space.to_dict(),
    }
    if artifacts is not None:
        save_arch_json(code, artifacts / "arch.json")
        plot_topology(code, artifacts / "topology.png", path_svg=artifacts / "topology.svg")
        write_json_atomic(
            artifacts / "zero_cost.json",
            {
                "proxy": config.zero_cost_proxy,
                "proxies": list(PROXIES),
                "candidates": [
                    {"index": i, "rank": rank[i], "scores": s, "arch": c.to_dict()}
                    for i, (c, s) in enumerate(zip(codes, scores, strict=True))
                ],
            },
        )
        write_json_atomic(artifacts / "summary.json", summary)
        for name, kind in (("arch.json", "arch"), ("zero_cost.json", "table"), ("summary.json", "table"),
                           ("topology.png", "image")):  # fmt: skip
            ctx.artifact(artifacts / name, kind)
    ctx.log(
        f"best by {config.zero_cost_proxy}: candidate {best} ({table.of(code):,} parameters), {seconds} s"
    )
    return {
        "arch": "arch.json",
        "proxy": config.zero_cost_proxy,
        "candidates": len(codes),
        "seconds": seconds,
    }
