"""DiNTS topology search as a job: configuration, the published schedule, exact resume, artifacts.

The networks are MONAI's (:class:`monai.networks.nets.TopologySearch` inside
:class:`~monai.networks.nets.DiNTS`); this module runs the search the DiNTS paper describes
(Liu et al., CVPR 2021) and MONAI's tutorial implements, with these differences:

* the regularisers are computed vectorised (:class:`DiNTSRegularizers`; the same values as
  ``get_topology_entropy`` / ``get_ram_cost_usage``, checked in the tests) and
  ``lambda(t)`` multiplies all of them the same way with and without AMP
  (``L = DiceCE + lambda(t) * (H_a + H_c + L_mem + 0.001 * L_topo)``);
* the weight optimiser gets the weights only (MONAI's ``DiNTS.weight_parameters()`` also returns
  the architecture parameters), the architecture gradients are clipped to norm 0.5 as in
  Auto3DSeg;
* everything needed to continue is checkpointed (weights, alphas, optimisers, scheduler, AMP
  scalers, RNG states, counters, best score, probability history), and data order and
  augmentation are functions of ``(seed, epoch, sample)``: a resumed run repeats the losses of
  an uninterrupted one;
* the decode is the sparse-graph one (:func:`~MedSegNASLib.nas.decode.decode`).

Use :func:`resolve_search_config` to turn a request (dataset, preset, overrides) into the full
configuration recorded in ``job.json``, then :func:`run_search` as the job body.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..atomic import write_json_atomic
from ..errors import DatasetError, MedSegNASError
from .common import (
    ActivationMemoryModel,
    capture_rng_state,
    cases_of_split,
    check_checkpoint,
    current_rss_mb,
    dataset_record,
    is_number,
    log_validation,
    mean_over_ranks,
    measure_training_cases,
    open_tensorboard,
    peak_memory_mb,
    plan_patch_size,
    restore_rng_state,
    run_amp,
    score_validation,
    seed_run,
    stop_check,
    validated_labels,
)
from .config import PipelineConfig, check_pipeline_settings
from .search_space import SearchSpace

__all__ = [
    "SEARCH_PRESETS",
    "DiNTSRegularizers",
    "SearchConfig",
    "SearchMemoryModel",
    "check_pipeline_settings",
    "SupernetTrainer",
    "lr_milestone_epochs",
    "resolve_search_config",
    "run_search",
]

CHECKPOINT_FORMAT = "medsegnas-dints-search"
CHECKPOINT_VERSION = 1

#: Schedules of the named presets; ``search_space`` is :attr:`SearchSpace.PRESETS`. ``tiny`` is a
#: demo that finishes in about two minutes on 2 CPU cores (6 phantom cases of 64^3); its
#: architecture learning rate is 30 times the published one so that its 12 architecture steps move
#: the path probabilities visibly. ``small`` and ``full`` use the published optimisation settings;
#: ``full`` is the published search (12 x 4 space, 96^3 patches, half of the epochs warm-up).
SEARCH_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "epochs": 12,
        "warmup_epochs": 6,
        "val_interval": 3,
        "checkpoint_every": 10,
        "batch_size": 1,
        "crops_per_case": 2,
        "max_patch_size": [48, 48, 48],
        "lr_arch": 0.03,
    },
    "small": {
        "epochs": 100,
        "warmup_epochs": 50,
        "val_interval": 10,
        "checkpoint_every": 50,
        "batch_size": 1,
        "crops_per_case": 2,
        "max_patch_size": [96, 96, 96],
    },
    "full": {
        "epochs": 400,
        "warmup_epochs": 200,
        "val_interval": 20,
        "checkpoint_every": 100,
        "batch_size": 1,
        "crops_per_case": 2,
        "max_patch_size": [96, 96, 96],
    },
}


@dataclass
class SearchConfig(PipelineConfig):
    """Every setting of a search. A preset fills them; a ``--config`` file overrides any of them.

    Schedule: ``epochs`` (passes over the weight half of the training cases), ``warmup_epochs``
    (weights only), ``val_interval`` (epochs between validations; the last epoch always
    validates), ``checkpoint_every`` (steps between checkpoints of ``checkpoints/last.pt``, besides
    the end of every epoch and stop requests; 0: epoch ends only).

    Data: ``batch_size`` (cases per step and process), ``crops_per_case`` (class-balanced patches
    per case; a step sees ``batch_size * crops_per_case`` patches), ``patch_size`` (voxels, None:
    automatic, at most ``max_patch_size`` and within ``memory_budget_mb``, None: 85% of the GPU or
    half the RAM up to 16 GB), ``spacing`` (mm along R, A, S; None: automatic), ``intensity``
    (a :class:`~MedSegNASLib.data.preprocessing.IntensitySpec` dict; None: automatic),
    ``orientation``, ``augment``, ``fold`` / ``n_folds`` (validation fold), ``num_workers``,
    ``cache_rate`` (all of these as :class:`~MedSegNASLib.nas.config.PipelineConfig`).

    Optimisation (published values): ``lr_weights`` 0.025 (SGD, x number of processes),
    ``momentum`` 0.9, ``weight_decay`` 4e-5, ``lr_milestones`` [0.4, 0.8] (fractions of the
    post-warm-up epochs where the weight learning rate halves), ``lr_arch`` 1e-3 (Adam, x number of
    processes), ``arch_betas`` [0.5, 0.999], ``arch_weight_decay`` 0, ``arch_grad_clip`` 0.5,
    ``memory_target`` 0.8 (sigma of the memory loss), ``topology_weight`` 0.001.

    Size budget: ``max_params`` (None: none): every decode (``arch.json``) is the most probable
    architecture whose retrained network (channel_mul 1.0) has at most this many parameters
    (:func:`~MedSegNASLib.nas.search_budget.decode_within_budget`).

    Training-free search (:mod:`~MedSegNASLib.nas.search_zero_cost`): ``zero_cost`` (rank
    ``zero_cost_candidates`` random architectures by ``zero_cost_proxy`` -- grad_norm, snip, synflow,
    naswot or params -- on ``zero_cost_batch`` training patches instead of training a supernet).

    Proxy data (:mod:`~MedSegNASLib.nas.search_proxy_data`): ``proxy_cases`` (None: all) -- search
    on this many training cases chosen by k-centre greedy on image/label statistics.

    Runtime: ``amp`` ("auto": on CUDA only; true on CPU is an error), ``deterministic``
    (deterministic GPU kernels, slower), ``val_overlap`` / ``val_sw_batch_size`` (sliding window),
    ``seed``.
    """

    KIND: ClassVar[str] = "search"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = SEARCH_PRESETS
    POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = ("lr_weights", "lr_arch", "arch_grad_clip")
    NON_NEGATIVE_FIELDS: ClassVar[tuple[str, ...]] = (
        "momentum",
        "weight_decay",
        "arch_weight_decay",
        "topology_weight",
    )
    WARMUP_REASON: ClassVar[str] = ": the architecture is only trained after the warm-up"

    epochs: int = 400
    warmup_epochs: int = 200
    val_interval: int = 20
    checkpoint_every: int = 100
    batch_size: int = 1
    crops_per_case: int = 2
    lr_milestones: list[float] = field(default_factory=lambda: [0.4, 0.8])
    search_space: dict[str, Any] = field(default_factory=dict)
    lr_weights: float = 0.025
    weight_decay: float = 4e-5
    lr_arch: float = 1e-3
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    arch_weight_decay: float = 0.0
    arch_grad_clip: float = 0.5
    memory_target: float = 0.8
    topology_weight: float = 0.001
    max_params: int | None = None
    zero_cost: bool = False
    zero_cost_candidates: int = 16
    zero_cost_proxy: str = "naswot"
    zero_cost_batch: int = 4
    proxy_cases: int | None = None

    @classmethod
    def preset_values(cls, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The preset with ``overrides`` applied; ``search_space`` is merged key by key."""
        values: dict[str, Any] = {
            "preset": name,
            "search_space": dict(SearchSpace.PRESETS[name]),
            **SEARCH_PRESETS[name],
        }
        space_override = overrides.pop("search_space", None) or {}
        if not isinstance(space_override, Mapping):
            raise MedSegNASError(f"search_space must be a mapping, got {space_override!r}")
        values["search_space"].update(space_override)
        values.update(overrides)
        return values

    @property
    def space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.search_space)

    def extra_problems(self) -> list[str]:
        problems = []
        if not is_number(self.memory_target) or not 0 < self.memory_target <= 1:
            problems.append(f"memory_target must be in (0, 1], got {self.memory_target!r}")
        if not (
            isinstance(self.arch_betas, list)
            and len(self.arch_betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.arch_betas)
        ):
            problems.append(f"arch_betas must be two numbers in [0, 1), got {self.arch_betas!r}")
        if self.max_params is not None and not (
            isinstance(self.max_params, int)
            and not isinstance(self.max_params, bool)
            and self.max_params >= 1
        ):
            problems.append(f"max_params must be a positive integer or null, got {self.max_params!r}")
        from .search_zero_cost import PROXIES

        if not isinstance(self.zero_cost, bool):
            problems.append(f"zero_cost must be true or false, got {self.zero_cost!r}")
        if self.zero_cost_proxy not in PROXIES:
            problems.append(
                f"zero_cost_proxy must be one of {', '.join(PROXIES)}, got {self.zero_cost_proxy!r}"
            )
        if self.proxy_cases is not None and (
            not isinstance(self.proxy_cases, int)
            or isinstance(self.proxy_cases, bool)
            or self.proxy_cases < 2
        ):
            problems.append(f"proxy_cases must be an integer >= 2 or null, got {self.proxy_cases!r}")
        for name, minimum in (("zero_cost_candidates", 1), ("zero_cost_batch", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        return problems

    def check_values(self) -> None:
        try:
            self.space  # noqa: B018 (validates the search space)
        except TypeError as exc:
            raise MedSegNASError(f"invalid search config: search_space: {exc}") from None


def lr_milestone_epochs(epochs: int, warmup_epochs: int, fractions: Sequence[float]) -> list[int]:
    """Epochs at whose start the weight learning rate has halved once more.

    As in MONAI's DiNTS search script, the rate of epoch ``e`` is ``lr * 0.5 ** k`` with ``k`` the
    number of fractions ``f`` for which ``(e - warmup) / (epochs - warmup) > f``; the first such
    epoch for ``f`` is ``warmup + floor(f * (epochs - warmup)) + 1``.
    """
    span = epochs - warmup_epochs
    return [warmup_epochs + int(math.floor(f * span)) + 1 for f in fractions]


# --------------------------------------------------------------------------------------------
# Regularisers and memory
# --------------------------------------------------------------------------------------------


class DiNTSRegularizers:
    """The architecture losses of DiNTS, vectorised, for one :class:`~monai.networks.nets.TopologySearch`.

    Same definitions as MONAI's ``TopologySearch.get_prob_a``, ``get_topology_entropy`` and
    ``get_ram_cost_usage``, with the per-block and per-path Python loops replaced by tensor
    products (a block-by-node-set matrix product for the topology term).

    Args:
        search: the supernet's search space module.
        device: where the loss tensors live (the supernet's device).
    """

    def __init__(self, search, device) -> None:
        import torch

        self.device = torch.device(device)
        self.children = torch.as_tensor(
            np.asarray(search.child_list), dtype=torch.float32, device=self.device
        )
        num_depths = int(search.num_depths)
        level_in = np.zeros((len(search.arch_code2in), num_depths))
        level_out = np.zeros_like(level_in)
        level_in[np.arange(len(search.arch_code2in)), search.arch_code2in] = 1
        level_out[np.arange(len(search.arch_code2out)), search.arch_code2out] = 1
        child_list = np.asarray(search.child_list)
        bits = 1 << np.arange(num_depths)
        reads = ((child_list @ level_in) > 0) @ bits - 1  # node set index of the levels a child reads
        writes = ((child_list @ level_out) > 0) @ bits - 1  # ... and writes
        num_sets = 2**num_depths - 1
        by_writes = np.zeros((num_sets, len(child_list)), dtype=np.float32)
        by_reads = np.zeros_like(by_writes)
        by_writes[writes, np.arange(len(child_list))] = 1
        by_reads[reads, np.arange(len(child_list))] = 1
        self.by_writes = torch.as_tensor(by_writes, device=self.device)  # MONAI's node2in as a matrix
        self.by_reads = torch.as_tensor(by_reads, device=self.device)  # MONAI's node2out
        self.ram_cost = torch.as_tensor(search.ram_cost, dtype=torch.float32, device=self.device)
        self.out_level = torch.as_tensor(
            np.asarray(search.arch_code2out), dtype=torch.long, device=self.device
        )
        self.filter_nums = [int(f) for f in search.filter_nums[:num_depths]]
        self.use_downsample = bool(search.use_downsample)
        self.spatial_dims = int(search._spatial_dims)

    def path_probabilities(self, log_alpha_a):
        """Path activation probabilities, renormalised to exclude the all-off pattern: (blocks, paths)."""
        import torch

        prob = torch.sigmoid(log_alpha_a)
        return prob / (1 - (1 - prob).prod(-1, keepdim=True))

    def child_probabilities(self, log_alpha_a):
        """Probability of each non-empty path pattern of each block: (blocks, 2**paths - 1)."""
        import torch

        prob = torch.sigmoid(log_alpha_a)[:, None, :]  # (blocks, 1, paths)
        norm = 1 - (1 - prob).prod(-1)
        pattern = (self.children * prob + (1 - self.children) * (1 - prob)).prod(-1)
        return pattern / norm.clamp_min(torch.finfo(pattern.dtype).tiny)

    @staticmethod
    def path_entropy(child_probs):
        """H_a: mean entropy term over blocks and path patterns (as MONAI's search script)."""
        import torch

        return -(child_probs * torch.log(child_probs + 1e-5)).mean()

    @staticmethod
    def op_entropy(log_alpha_c):
        """H_c: mean entropy term of the operation softmax over blocks, paths and operations."""
        import torch.nn.functional as F

        return -(F.softmax(log_alpha_c, dim=-1) * F.log_softmax(log_alpha_c, dim=-1)).mean()

    def topology_loss(self, child_probs):
        """L_topo: nodes written by block b and nodes read by block b+1 should agree (binary cross entropy)."""
        import torch

        written = child_probs[:-1] @ self.by_writes.T  # P(block b writes exactly node set n)
        read = child_probs[1:] @ self.by_reads.T  # P(block b+1 reads exactly node set n)
        return -(written * torch.log(read + 1e-5) + (1 - written) * torch.log(1 - read + 1e-5)).sum()

    def memory_usage(self, log_alpha_a, log_alpha_c, input_shape: Sequence[int], full: bool = False):
        """Expected feature-map memory in MONAI's units (MB as ``get_ram_cost_usage`` computes them).

        ``full``: with every path on (operation weights still from ``log_alpha_c``). The absolute
        value is not calibrated (MONAI divides the 3D size by 2 for the stem instead of 8); only
        ratios are meaningful.
        """
        import torch
        import torch.nn.functional as F

        batch = int(input_shape[0])
        image = np.asarray(input_shape[-self.spatial_dims :], dtype=np.int64)
        sizes = torch.tensor(
            [
                batch * self.filter_nums[d] * float((image // (2**d)).prod())
                for d in range(len(self.filter_nums))
            ],
            dtype=torch.float32,
            device=self.device,
        ) / (2 ** int(self.use_downsample))
        path_prob = torch.ones_like(log_alpha_a) if full else self.path_probabilities(log_alpha_a)
        op_cost = 1 + (self.ram_cost * F.softmax(log_alpha_c, dim=-1)).sum(-1)  # (blocks, paths)
        return (path_prob * op_cost * sizes[self.out_level]).sum() * 32 / 8 / 1024**2

    def __call__(self, search, input_shape: Sequence[int], memory_target: float) -> dict[str, Any]:
        """All regularisers of one architecture step (tensors with gradients to the alphas)."""
        child = self.child_probabilities(search.log_alpha_a)
        usage = self.memory_usage(search.log_alpha_a, search.log_alpha_c, input_shape)
        usage_full = self.memory_usage(search.log_alpha_a, search.log_alpha_c, input_shape, full=True)
        return {
            "path_entropy": self.path_entropy(child),
            "op_entropy": self.op_entropy(search.log_alpha_c),
            "memory": (memory_target - usage / usage_full).abs(),
            "topology": self.topology_loss(child),
            "memory_ratio": usage / usage_full,
        }


class SearchMemoryModel(ActivationMemoryModel):
    """Training memory of a search step, from the tensors one probe forward pass saves for backward.

    As :class:`~MedSegNASLib.nas.common.ActivationMemoryModel` for the supernet of ``space``,
    built on the CPU with the weights trainable and the architecture parameters frozen (probe
    patch ``max(divisor, 32)`` per side).
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int) -> None:
        network = space.build_search_network(in_channels, num_classes)
        network.dints_space.log_alpha_a.requires_grad_(False)
        network.dints_space.log_alpha_c.requires_grad_(False)
        super().__init__(network, in_channels, space.required_divisor, spatial_dims=space.spatial_dims)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _split_halves(cases: list, seed: int) -> tuple[list, list]:
    """Training cases -> (weights half, architecture half), shuffled with ``seed``; the extra case goes to weights."""
    order = np.random.default_rng(int(seed) + 7919).permutation(len(cases))
    cut = (len(cases) + 1) // 2
    return [cases[i] for i in sorted(order[:cut])], [cases[i] for i in sorted(order[cut:])]


def resolve_search_config(
    request: Mapping[str, Any],
    *,
    device_type: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check the dataset and settings and fill in everything automatic, before any training.

    Args:
        request: ``dataset`` (dataset.json, its folder or a datalist), ``dataroot`` (or None),
            ``preset``, ``overrides`` (the ``--config`` mapping) and ``seed`` (None: the config's).
        device_type: ``"cuda"`` or ``"cpu"``: decides AMP and the default memory budget.
        log: where to say what was found (default: nowhere).

    Returns:
        The resolved configuration (JSON-able): ``request``, ``search`` (:class:`SearchConfig` with
        ``patch_size`` set), ``search_space``, ``preprocessing``
        (:class:`~MedSegNASLib.data.preprocessing.PreprocessingSpec`), ``dataset`` (path, labels,
        modalities, case names of the weight/architecture/validation splits), ``statistics`` and
        ``memory`` (budget, estimate, probe).

    Raises:
        MedSegNASError: invalid settings or patch size, a dataset with too few labelled cases,
            missing or inconsistent files, or a declared class present in no label map.
    """
    from ..data.datasets import load_dataset, train_val_split

    say = log or (lambda message: None)
    overrides = dict(request.get("overrides") or {})
    if request.get("seed") is not None:
        overrides["seed"] = int(request["seed"])
    config = SearchConfig.from_preset(str(request.get("preset", "full")), overrides)
    space = config.space
    if space.spatial_dims != 3:
        raise MedSegNASError("the search runs on 3D volumes: search_space.spatial_dims must be 3")
    if config.patch_size is not None:
        space.check_patch_size(tuple(config.patch_size))
    if config.amp is True and device_type != "cuda":
        raise MedSegNASError(
            "amp: true needs a CUDA device; use amp: auto (AMP on GPUs only) or --device cuda"
        )

    dataset = load_dataset(request["dataset"], dataroot=request.get("dataroot"))
    labelled = [case for case in dataset.cases if case.label is not None]
    needed = 2 if dataset.validation else 3
    if len(labelled) < needed:
        raise DatasetError(
            f"{dataset.path} has {len(labelled)} labelled training case(s); a DiNTS search needs at least 3: "
            "one for validation and one each for the weight and architecture halves of the training cases"
            + (" (2 when the datalist has a validation list)" if dataset.validation else "")
        )
    labels = validated_labels(dataset, say)
    training, validation = train_val_split(
        dataset, fold=config.fold, n_folds=config.n_folds, seed=config.seed
    )
    if len(training) < 2:
        raise DatasetError(
            f"fold {config.fold} leaves {len(training)} training case(s); the search needs 2 or more "
            "(weights and architecture halves); use fewer folds or add cases"
        )
    proxy_record = None
    if config.proxy_cases is not None:
        from .search_proxy_data import select_proxy_cases

        training, proxy_record = select_proxy_cases(training, config.proxy_cases, [i.value for i in labels])
        say(
            f"proxy data: searching on {len(training)} of {proxy_record['of']} training cases (k-centre greedy)"
        )
    weights, architecture = _split_halves(training, config.seed)

    if config.max_params is not None:
        _check_budget(space, dataset.num_channels, len(labels), config.max_params, say)
    stats, spec, missing_in_training = measure_training_cases(dataset, training, labels, config, say)
    memory = SearchMemoryModel(space, dataset.num_channels, len(labels))
    median_shape, memory_plan = plan_patch_size(
        config, spec, stats, memory, space.required_divisor, device_type=device_type, say=say
    )

    def names(cases) -> list[str]:
        return [case.name for case in cases]

    split = {"weights": names(weights), "architecture": names(architecture), "validation": names(validation)}
    resolved = {
        "request": {key: request.get(key) for key in ("dataset", "dataroot", "preset", "overrides", "seed")},
        "search": config.to_dict(),
        "search_space": space.to_dict(),
        "preprocessing": spec.to_dict(),
        "dataset": dataset_record(dataset, labels, split, missing_in_training),
        "statistics": {**stats.to_dict(), "median_resampled_shape": median_shape},
        "memory": memory_plan,
        **({"proxy_data": proxy_record} if proxy_record is not None else {}),
    }
    return json.loads(json.dumps(resolved))  # plain JSON types only (job.json, checkpoint)


def _check_budget(space: SearchSpace, in_channels: int, num_classes: int, max_params: int, say) -> None:
    """Refuse, before any training, a parameter budget that no architecture of the space meets."""
    from .search_budget import ParameterTable

    table = ParameterTable.build(space, in_channels, num_classes, channel_mul=1.0)
    smallest = table.fixed + int(table.cell.min(axis=1).min()) * space.num_blocks
    if smallest > max_params:
        raise MedSegNASError(
            f"max_params {max_params:,} is below the smallest network of this {space.num_blocks}x"
            f"{space.num_depths} space ({smallest:,} parameters at channel_mul 1.0: stems and head alone have "
            f"{table.fixed:,}); raise max_params or use a smaller space"
        )
    largest = table.fixed + int(table.cell.max(axis=1).sum()) * space.num_blocks
    say(f"size budget: at most {max_params:,} parameters (this space: {smallest:,} to {largest:,})")


def describe_config(resolved: Mapping[str, Any]) -> str:
    """One line with what auto-configuration chose."""
    spec, search, memory = resolved["preprocessing"], resolved["search"], resolved["memory"]
    intensity = spec["intensity"]
    if intensity["kind"] == "ct_window":
        norm = f"CT window [{intensity['a_min']:g}, {intensity['a_max']:g}] HU"
    else:
        norm = "z-score"
    split = resolved["dataset"]["split"]
    space = resolved["search_space"]
    return (
        f"preset {search['preset']}: space {space['num_blocks']}x{space['num_depths']} channel_mul "
        f"{space['channel_mul']}, patch {'x'.join(map(str, search['patch_size']))}, spacing "
        f"{'x'.join(f'{s:g}' for s in spec['spacing'])} mm, {norm}, {search['epochs']} epochs "
        f"({search['warmup_epochs']} warm-up), cases {len(split['weights'])} weights / "
        f"{len(split['architecture'])} architecture / {len(split['validation'])} validation, memory estimate "
        f"{memory['estimate_mb']:.0f} MB of {memory['budget_mb']:.0f} MB"
    )


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class SearchProgress:
    """Counters and records of a search; all of it goes into the checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # weight steps done in the current epoch
    global_step: int = 0  # weight steps done in total
    arch_position: int = 0  # architecture batches consumed in total
    best_dice: float = -1.0
    best_epoch: int = -1
    history_epochs: list[int] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


class SupernetTrainer:
    """The two updates of a DiNTS search: a weight step and an architecture step.

    Weights: SGD (``lr_weights`` x ``world_size``, momentum, weight decay) on DiceCE, the learning
    rate halved at the :func:`lr_milestone_epochs` (call :meth:`end_epoch` after each epoch).
    Architecture: one Adam per architecture tensor (``lr_arch`` x ``world_size``) on
    ``DiceCE + lambda * (H_a + H_c + L_mem + topology_weight * L_topo)``, gradients clipped to
    ``arch_grad_clip``. With ``amp`` the forward passes run under ``torch.autocast`` (float16) and
    each update has its own ``GradScaler``; the losses are computed in float32 either way.

    Args:
        network: the :class:`~monai.networks.nets.DiNTS` supernet.
        model: what to call for the forward pass: ``network`` or a DistributedDataParallel around it.
        config: learning rates and loss weights (:class:`SearchConfig`).
        world_size: number of processes (scales the learning rates, as published).
        device: where the network lives.
        amp: mixed precision (CUDA only).
    """

    def __init__(self, network, model, config: SearchConfig, *, world_size: int, device, amp: bool) -> None:
        import torch
        from monai.losses import DiceCELoss

        self.network, self.model, self.config = network, model, config
        self.device, self.amp = device, amp
        self.search = network.dints_space
        self.arch_parameters = [self.search.log_alpha_a, self.search.log_alpha_c]
        self.weight_parameters = [
            p for p in network.parameters() if all(p is not a for a in self.arch_parameters)
        ]
        self.optimizer_w = torch.optim.SGD(
            self.weight_parameters,
            lr=config.lr_weights * world_size,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        arch = {
            "lr": config.lr_arch * world_size,
            "betas": tuple(config.arch_betas),
            "weight_decay": config.arch_weight_decay,
        }
        self.optimizer_a = torch.optim.Adam([self.search.log_alpha_a], **arch)
        self.optimizer_c = torch.optim.Adam([self.search.log_alpha_c], **arch)
        milestones = lr_milestone_epochs(config.epochs, config.warmup_epochs, config.lr_milestones)
        self.scheduler_w = torch.optim.lr_scheduler.MultiStepLR(self.optimizer_w, milestones, gamma=0.5)
        self.scaler_w = torch.amp.GradScaler(device.type, enabled=amp)
        self.scaler_a = torch.amp.GradScaler(device.type, enabled=amp)
        self.loss_function = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
        )
        self.regularizers = DiNTSRegularizers(self.search, device)

    @property
    def weight_lr(self) -> float:
        return float(self.optimizer_w.param_groups[0]["lr"])

    def _forward(self, images):
        import torch

        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            return self.model(images)

    def weight_step(self, images, targets) -> float:
        """One SGD step of the weights on (B, C, *patch) images and (B, 1, *patch) labels; returns DiceCE."""
        _set_trainable(self.weight_parameters, True)
        _set_trainable(self.arch_parameters, False)
        self.optimizer_w.zero_grad(set_to_none=True)
        loss = self.loss_function(self._forward(images).float(), targets)
        self.scaler_w.scale(loss).backward()
        self.scaler_w.step(self.optimizer_w)
        self.scaler_w.update()
        return float(loss.detach())

    def arch_step(self, images, targets, weight: float) -> dict[str, float]:
        """One Adam step of the architecture parameters with regulariser weight ``lambda = weight``."""
        import torch

        config, search = self.config, self.search
        _set_trainable(self.weight_parameters, False)
        _set_trainable(self.arch_parameters, True)
        self.optimizer_a.zero_grad(set_to_none=True)
        self.optimizer_c.zero_grad(set_to_none=True)
        segmentation = self.loss_function(self._forward(images).float(), targets)
        terms = self.regularizers(search, images.shape, config.memory_target)
        regulariser = (
            terms["path_entropy"]
            + terms["op_entropy"]
            + terms["memory"]
            + config.topology_weight * terms["topology"]
        )
        loss = segmentation + weight * regulariser  # one expression with and without AMP
        self.scaler_a.scale(loss).backward()
        self.scaler_a.unscale_(self.optimizer_a)
        self.scaler_a.unscale_(self.optimizer_c)
        torch.nn.utils.clip_grad_norm_([search.log_alpha_a], config.arch_grad_clip)
        torch.nn.utils.clip_grad_norm_([search.log_alpha_c], config.arch_grad_clip)
        self.scaler_a.step(self.optimizer_a)
        self.scaler_a.step(self.optimizer_c)
        self.scaler_a.update()
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["arch_loss"] = float(loss.detach())
        values["arch_dice_ce"] = float(segmentation.detach())
        return values

    def end_epoch(self) -> None:
        self.scheduler_w.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer_weights": self.optimizer_w.state_dict(),
            "optimizer_alpha_a": self.optimizer_a.state_dict(),
            "optimizer_alpha_c": self.optimizer_c.state_dict(),
            "scheduler_weights": self.scheduler_w.state_dict(),
            "scaler_weights": self.scaler_w.state_dict(),
            "scaler_arch": self.scaler_a.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer_w.load_state_dict(state["optimizer_weights"])
        self.optimizer_a.load_state_dict(state["optimizer_alpha_a"])
        self.optimizer_c.load_state_dict(state["optimizer_alpha_c"])
        self.scheduler_w.load_state_dict(state["scheduler_weights"])
        self.scaler_w.load_state_dict(state["scaler_weights"])
        self.scaler_a.load_state_dict(state["scaler_arch"])


def _set_trainable(parameters: Sequence, flag: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(flag)


def _count_flops(code, in_channels: int, num_classes: int, patch: Sequence[int]) -> float | None:
    """FLOPs of one forward pass of the retrained network (channel_mul 1.0) on one patch, on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        network = code.network(in_channels, num_classes, channel_mul=1.0).to("meta")
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(torch.empty(1, in_channels, *patch, device="meta"))
        return float(counter.get_total_flops())
    except Exception:  # a MONAI op without a meta kernel: leave the figure out rather than fail the run
        return None


def run_search(ctx, resolved: Mapping[str, Any], dist_info) -> dict[str, Any]:
    """The search job body: train the supernet, validate, decode, write artifacts.

    Args:
        ctx: :class:`~MedSegNASLib.jobs.JobContext` (writes nothing on ranks other than 0).
        resolved: from :func:`resolve_search_config` (recorded in ``job.json``).
        dist_info: :class:`~MedSegNASLib.nas.distributed.DistInfo` of this process.

    Returns:
        A summary for the ``done`` event: artifact paths, best epoch and validation Dice.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from ..data.datasets import load_dataset
    from ..data.preprocessing import PreprocessingSpec
    from .decode import path_probabilities, save_arch_json
    from .distributed import EpochSampler, broadcast_object, shard_evenly
    from .pipeline import (
        SeededPatchDataset,
        case_records,
        make_cache,
        make_loader,
        preprocessing_transforms,
        training_transforms,
    )
    from .topology_plot import plot_topology

    started = time.monotonic()
    config = SearchConfig.from_dict(resolved["search"])
    if config.zero_cost:
        from .search_zero_cost import run_zero_cost_search

        return run_zero_cost_search(ctx, resolved, dist_info)
    space = SearchSpace.from_dict(resolved["search_space"])
    spec = PreprocessingSpec.from_dict(resolved["preprocessing"])
    labels = resolved["dataset"]["labels"]
    label_values = [item["value"] for item in labels]
    class_names = [item["name"] for item in labels[1:]]
    num_classes = len(labels)
    in_channels = spec.num_channels
    device = dist_info.device
    world, rank = dist_info.world_size, dist_info.rank
    amp = run_amp(config.amp, device)
    main = dist_info.is_main
    run_dir = ctx.run_dir if main else None
    artifacts = run_dir.artifacts if run_dir is not None else None

    if main:
        ctx.log(describe_config(resolved))
    seed_run(config.seed, device, config.deterministic)
    decode_best = _decoder(config, space, in_channels, num_classes)

    # ---- data -------------------------------------------------------------------------------
    dataset = load_dataset(resolved["dataset"]["path"], dataroot=resolved["request"].get("dataroot"))
    weight_cases, arch_cases, val_cases = cases_of_split(
        dataset, resolved["dataset"]["split"], ("weights", "architecture", "validation")
    )
    if main:
        ctx.log(
            f"preprocessing {len(weight_cases) + len(arch_cases)} training and {len(val_cases)} validation case(s)"
        )
    train_pre = preprocessing_transforms(spec, label_values, for_training=True)
    val_pre = preprocessing_transforms(spec, label_values, for_training=False)
    workers = config.num_workers
    cache_w = make_cache(
        case_records(weight_cases), train_pre, cache_rate=config.cache_rate, num_workers=workers
    )
    cache_a = make_cache(
        case_records(arch_cases), train_pre, cache_rate=config.cache_rate, num_workers=workers
    )
    val_records = shard_evenly(case_records(val_cases), rank, world)
    cache_v = make_cache(val_records, val_pre, cache_rate=config.cache_rate, num_workers=workers)

    def random_part():
        return training_transforms(
            spec, num_classes, crops_per_case=config.crops_per_case, augment=config.augment
        )

    data_w = SeededPatchDataset(cache_w, random_part(), seed=config.seed, stream=0)
    data_a = SeededPatchDataset(cache_a, random_part(), seed=config.seed, stream=1)
    sampler_w = EpochSampler(len(data_w), seed=config.seed, stream=0, rank=rank, world_size=world)
    sampler_a = EpochSampler(len(data_a), seed=config.seed, stream=1, rank=rank, world_size=world)
    pin = device.type == "cuda"
    loader_w = make_loader(
        data_w, sampler_w, batch_size=config.batch_size, num_workers=workers, pin_memory=pin
    )
    loader_a = make_loader(
        data_a, sampler_a, batch_size=config.batch_size, num_workers=workers, pin_memory=pin
    )
    steps_per_epoch = math.ceil(len(sampler_w) / config.batch_size)
    arch_steps_per_epoch = math.ceil(len(sampler_a) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch

    # ---- model and optimisers -------------------------------------------------------------
    network = space.build_search_network(in_channels, num_classes, device=str(device))

    checkpoint = ctx.load_checkpoint() if (main and ctx.resuming) else None
    if dist_info.distributed and ctx.resuming:
        checkpoint = broadcast_object(checkpoint)
    if checkpoint is not None:
        check_checkpoint(checkpoint, resolved, world, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "search")
        network.load_state_dict(checkpoint["model"])

    model = network
    if dist_info.distributed:
        model = DistributedDataParallel(
            network,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # weights and alphas take turns being trainable
        )

    trainer = SupernetTrainer(network, model, config, world_size=world, device=device, amp=amp)

    progress = SearchProgress()
    history: list[np.ndarray] = []
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint["trainer"])
        progress = SearchProgress(**checkpoint["progress"])
        history = [h.numpy().astype(np.float64) for h in checkpoint["probability_history"]]
        restore_rng_state(checkpoint["rng"])
        if main:
            ctx.log(f"resuming at epoch {progress.epoch + 1}, step {progress.global_step} of {total_steps}")

    def checkpoint_state() -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "resolved": dict(resolved),
            "world_size": world,
            "model": network.state_dict(),
            "trainer": trainer.state_dict(),
            "progress": progress.to_dict(),
            "probability_history": [torch.from_numpy(h) for h in history],
            "rng": capture_rng_state(),
        }

    writer = open_tensorboard(artifacts, progress.global_step, ctx.resuming)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before_training = current_rss_mb()
    step_times = {"weights": [], "architecture": []}

    def to_device(batch) -> tuple:
        return batch["image"].to(device, non_blocking=pin), batch["label"].to(device, non_blocking=pin)

    arch_iterator: Any = None

    def next_arch_batch():
        nonlocal arch_iterator
        if arch_iterator is None:
            arch_epoch, offset = divmod(progress.arch_position, arch_steps_per_epoch)
            sampler_a.set_epoch(arch_epoch, start=offset * config.batch_size)
            data_a.set_epoch(arch_epoch)
            arch_iterator = iter(loader_a)
        try:
            batch = next(arch_iterator)
        except StopIteration:  # cannot happen: the iterator is renewed at each arch epoch boundary
            raise RuntimeError("architecture data ran out inside an epoch") from None
        progress.arch_position += 1
        if progress.arch_position % arch_steps_per_epoch == 0:
            arch_iterator = None  # the next batch starts the next architecture epoch
        return batch

    def save() -> None:
        ctx.save_checkpoint(checkpoint_state())

    stop_if_requested = stop_check(ctx, device, save)

    def validate(epoch: int) -> None:
        mean, per_class, counts = score_validation(network, cache_v, spec, config, class_names, device, amp)
        searching = epoch >= config.warmup_epochs
        record = {
            "epoch": epoch + 1,
            "val_dice": per_class,
            "val_dice_mean": None if math.isnan(mean) else mean,
        }
        progress.validations.append(record)
        improved = searching and not math.isnan(mean) and mean > progress.best_dice
        if improved:
            progress.best_dice, progress.best_epoch = mean, epoch + 1
        if main:
            code = decode_best(network)
            code.extra = {
                **code.extra,
                "epoch": epoch + 1,
                "phase": "search" if searching else "warmup",
                "val_dice": per_class,
                "val_dice_mean": record["val_dice_mean"],
                "val_cases_per_class": {n: int(c) for n, c in zip(class_names, counts, strict=True)},
                "patch_size": list(spec.patch_size),
                "run_id": run_dir.run_id if run_dir is not None else None,
            }
            if artifacts is not None:
                save_arch_json(code, artifacts / "arch_last.json")
                if improved:
                    save_arch_json(code, artifacts / "arch.json")
                    plot_topology(code, artifacts / "topology.png", path_svg=artifacts / "topology.svg")
            note = " - best so far, arch.json updated" if improved else ""
            log_validation(ctx, writer, epoch, per_class, mean, progress.global_step, note)

    try:
        network.train()
        while progress.epoch < config.epochs:
            epoch = progress.epoch
            searching = epoch >= config.warmup_epochs
            weight = (
                (epoch - config.warmup_epochs) / (config.epochs - config.warmup_epochs) if searching else 0.0
            )
            stage = "search" if searching else "warmup"
            if progress.step_in_epoch < steps_per_epoch:
                sampler_w.set_epoch(epoch, start=progress.step_in_epoch * config.batch_size)
                data_w.set_epoch(epoch)
                for batch in loader_w:
                    tick = time.perf_counter()
                    loss_w = trainer.weight_step(*to_device(batch))
                    step_times["weights"].append(time.perf_counter() - tick)
                    metrics: dict[str, Any] = {"loss": loss_w, "lr": trainer.weight_lr}
                    if searching:
                        tick = time.perf_counter()
                        terms = trainer.arch_step(*to_device(next_arch_batch()), weight)
                        step_times["architecture"].append(time.perf_counter() - tick)
                        metrics.update(
                            {
                                "arch_loss": terms["arch_loss"],
                                "lambda": weight,
                                "path_entropy": terms["path_entropy"],
                                "op_entropy": terms["op_entropy"],
                                "memory_ratio": terms["memory_ratio"],
                                "topology": terms["topology"],
                            }
                        )
                    if dist_info.distributed:
                        mean_over_ranks(metrics, ("loss", "arch_loss"), world, device)
                    latest = progress.validations[-1]["val_dice_mean"] if progress.validations else None
                    if latest is not None:
                        metrics["val_dice"] = latest  # the latest validation's mean Dice, for the panel
                    progress.step_in_epoch += 1
                    progress.global_step += 1
                    ctx.progress(progress.global_step, total_steps, stage=stage, epoch=epoch + 1, **metrics)
                    if writer is not None:
                        for key, value in metrics.items():
                            if key != "val_dice":  # written once per validation
                                writer.add_scalar(f"train/{key}", value, progress.global_step)
                    if config.checkpoint_every and progress.global_step % config.checkpoint_every == 0:
                        save()
                    stop_if_requested()
            # end of epoch: everything below is repeated if the run is resumed from a checkpoint
            # taken after the last step of this epoch, and recorded only with the next checkpoint.
            trainer.end_epoch()
            with torch.no_grad():
                history.append(path_probabilities(network))
            progress.history_epochs.append(epoch + 1)
            if (epoch + 1) % config.val_interval == 0 or epoch + 1 == config.epochs:
                validate(epoch)
            progress.epoch += 1
            progress.step_in_epoch = 0
            save()
            stop_if_requested()
    finally:
        if writer is not None:
            writer.close()

    summary: dict[str, Any] = {}
    if main:
        summary = _finish(
            ctx,
            resolved=resolved,
            network=network,
            space=space,
            history=history,
            progress=progress,
            in_channels=in_channels,
            num_classes=num_classes,
            device=device,
            world=world,
            amp=amp,
            step_times=step_times,
            rss_before_training=rss_before_training,
            wall_s=time.monotonic() - started,
            decode_best=decode_best,
        )
    return summary


def _decoder(config: SearchConfig, space: SearchSpace, in_channels: int, num_classes: int):
    """The decode of this search: plain, or within ``config.max_params`` (parameters at channel_mul 1.0)."""
    from .decode import decode

    if config.max_params is None:
        return lambda network: decode(network, space)
    from .search_budget import ParameterTable, decode_within_budget

    table = ParameterTable.build(space, in_channels, num_classes, channel_mul=1.0)
    return lambda network: decode_within_budget(network, space, table, int(config.max_params))


def _finish(
    ctx,
    *,
    resolved,
    network,
    space: SearchSpace,
    history,
    progress: SearchProgress,
    in_channels: int,
    num_classes: int,
    device,
    world: int,
    amp: bool,
    step_times,
    rss_before_training,
    wall_s: float,
    decode_best=None,
) -> dict[str, Any]:
    """Final artifacts on rank 0: arch.json (if no search-phase validation made one), plots, summary.json."""
    import torch

    from .decode import decode, load_arch_json, save_arch_json
    from .topology_plot import plot_path_probabilities, plot_topology

    if decode_best is None:
        decode_best = lambda network: decode(network, space)  # noqa: E731
    run_dir = ctx.run_dir
    memory = dict(peak_memory_mb(device))
    search = network.dints_space
    patch = list(resolved["search"]["patch_size"])
    patches = resolved["memory"]["patches_per_step"]
    with torch.no_grad():
        in_shape = (patches, in_channels, *patch)
        memory["monai_estimate_mb"] = round(float(search.get_ram_cost_usage(in_shape)), 2)
        memory["monai_estimate_full_mb"] = round(float(search.get_ram_cost_usage(in_shape, full=True)), 2)
    memory["estimate_mb"] = resolved["memory"]["estimate_mb"]
    memory["estimate"] = (
        "activation bytes saved for backward in a probe forward pass, scaled to the patch, plus 4x parameters"
    )
    memory["monai_estimate"] = (
        "TopologySearch.get_ram_cost_usage for the last probabilities (and every path on): a relative figure; "
        "its stem term divides the 3D size by 2 instead of 8, so it is not calibrated in MB"
    )
    if rss_before_training is not None and device.type == "cpu":
        memory["rss_before_training_mb"] = round(rss_before_training, 1)
        # includes what the allocator keeps after frees (glibc does not return every freed block)
        memory["rss_growth_during_training_mb"] = round(memory["measured_peak_mb"] - rss_before_training, 1)
    if memory.get("measured_peak_mb") and memory["monai_estimate_full_mb"] > 0:
        memory["measured_over_monai_full"] = round(
            memory["measured_peak_mb"] / memory["monai_estimate_full_mb"], 3
        )

    result: dict[str, Any] = {"best_epoch": progress.best_epoch, "best_val_dice_mean": progress.best_dice}
    if run_dir is None:
        code = decode_best(network)
        return {**result, "arch": code.to_dict(), "validations": progress.validations}

    artifacts = run_dir.artifacts
    arch_path = artifacts / "arch.json"
    if not arch_path.exists():
        # No validation after the warm-up improved on nothing (e.g. all Dice NaN): keep the last decode.
        code = decode_best(network)
        last = progress.validations[-1] if progress.validations else {}
        code.extra = {
            **code.extra,
            "epoch": progress.epoch,
            "phase": "search",
            **{k: last.get(k) for k in ("val_dice", "val_dice_mean")},
        }
        save_arch_json(code, arch_path)
        plot_topology(code, artifacts / "topology.png", path_svg=artifacts / "topology.svg")
        ctx.log("no validation scored after the warm-up; arch.json holds the final decode", level="warning")
    best = load_arch_json(arch_path)
    if not (artifacts / "topology.png").exists():
        plot_topology(best, artifacts / "topology.png", path_svg=artifacts / "topology.svg")
    plot_path_probabilities(
        history,
        artifacts / "path_probabilities.png",
        steps=progress.history_epochs,
        title="DiNTS path probabilities over the search",
    )

    def count(module) -> int:
        return int(sum(p.numel() for p in module.parameters()))

    searched = best.network(in_channels, num_classes, channel_mul=1.0)
    supernet_weights = count(network) - int(search.log_alpha_a.numel() + search.log_alpha_c.numel())
    flops = _count_flops(best, in_channels, num_classes, patch)
    weights_times = step_times["weights"]
    arch_times = step_times["architecture"]
    summary = {
        "arch": "arch.json",
        "best_epoch": progress.best_epoch,
        "best_val_dice": best.extra.get("val_dice"),
        "best_val_dice_mean": best.extra.get("val_dice_mean"),
        "last_val_dice": progress.validations[-1]["val_dice"] if progress.validations else None,
        "validations": progress.validations,
        "active_paths": len(best.active_paths()),
        "max_params": resolved["search"].get("max_params"),
        "proxy_data": resolved.get("proxy_data"),
        "budget": best.extra.get("budget"),
        "parameters": {
            "searched_channel_mul_1": count(searched),
            "searched_channel_mul_search": count(
                best.network(in_channels, num_classes, channel_mul=space.channel_mul)
            ),
            "supernet": supernet_weights,
            "architecture": int(search.log_alpha_a.numel() + search.log_alpha_c.numel()),
        },
        "flops_per_patch": flops,
        "flops_note": "one forward pass of the searched network at channel_mul 1.0 on one patch (batch 1), "
        "counted by torch.utils.flop_counter on the meta device; a multiply-add counts as 2",
        "patch_size": patch,
        "memory": memory,
        "timing": {
            "wall_s_this_process": round(wall_s, 1),
            "weight_steps_this_process": len(weights_times),
            "mean_weight_step_s": round(float(np.mean(weights_times)), 4) if weights_times else None,
            "arch_steps_this_process": len(arch_times),
            "mean_arch_step_s": round(float(np.mean(arch_times)), 4) if arch_times else None,
        },
        "steps": progress.global_step,
        "epochs": progress.epoch,
        "world_size": world,
        "device": str(device),
        "amp": amp,
        "search_space": space.to_dict(),
    }
    summary_path = write_json_atomic(artifacts / "summary.json", summary)
    for path, kind in (
        (arch_path, "arch"),
        (artifacts / "arch_last.json", "arch"),
        (artifacts / "topology.png", "image"),
        (artifacts / "topology.svg", "image"),
        (artifacts / "path_probabilities.png", "image"),
        (summary_path, "table"),
        (artifacts / "tensorboard", "tensorboard"),
    ):
        if Path(path).exists():
            ctx.artifact(path, kind)
    return {
        **result,
        "arch": str(run_dir.relative(arch_path)),
        "best_val_dice": summary["best_val_dice"],
        "parameters_searched": summary["parameters"]["searched_channel_mul_1"],
    }
