"""Size budgets in a DiNTS space: parameter counts per path, budgeted decode, random architectures.

The parameters of a DiNTS network built from an architecture code (:meth:`ArchCode.network`)
are a constant (stems and head, fixed by the space, ``in_channels`` and ``num_classes``) plus one
:class:`monai.networks.nets.dints.Cell` per active path, whose size depends only on the path
(its input and output levels) and its operation. :class:`ParameterTable` holds these numbers, so
the size of any code is a sum (checked against the built network in the tests), and:

* :func:`decode_within_budget` finds "the best network no larger than X": the decode of
  :func:`~MedSegNASLib.nas.decode.decode` with a Lagrangian size penalty ``mu * params / X`` added
  to every active path (and each path's operation chosen by ``-log p_op + mu * params``), the
  smallest ``mu`` whose decode fits found by bisection. At ``mu = 0`` it is the plain decode.
* :func:`sample_architectures` draws random architectures of the space (the control every NAS
  result needs, Li & Talwalkar 2019): each block a uniformly random path pattern among those that
  read exactly the levels the previous block writes (the decode's feasibility rule), a uniformly
  random operation per path, rejected when over the size budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MedSegNASError
from .decode import ArchCode, _node_sets
from .search_space import SearchSpace, _quiet

__all__ = [
    "ParameterTable",
    "decode_within_budget",
    "random_architecture",
    "sample_architectures",
]


def _count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@dataclass(frozen=True)
class ParameterTable:
    """Parameter counts of the networks of a DiNTS space at one width.

    Args:
        cell: (num_paths, num_ops) parameters of the cell on each path running each operation.
        fixed: parameters of everything else (stems, head), the same for every code.
        space, in_channels, num_classes, channel_mul: what the counts are for.
    """

    cell: np.ndarray
    fixed: int
    space: SearchSpace
    in_channels: int
    num_classes: int
    channel_mul: float

    @classmethod
    def build(
        cls, space: SearchSpace, in_channels: int, num_classes: int, channel_mul: float = 1.0
    ) -> ParameterTable:
        """Count every (path, operation) cell once, and the rest from one small network."""
        import torch
        from monai.networks.nets.dints import Cell

        ops = len(space.op_names)
        cell = np.zeros((space.num_paths, ops), dtype=np.int64)
        rates = ([-1, 0, 1] * space.num_depths)[1:-1]  # MONAI's arch_code2ops
        for path, (level_in, level_out) in enumerate(space.path_levels):
            for op in range(ops):
                module = Cell(
                    space.channels(level_in, channel_mul),
                    space.channels(level_out, channel_mul),
                    rates[path],
                    torch.nn.functional.one_hot(torch.tensor(op), ops),
                    space.spatial_dims,
                )
                cell[path, op] = _count(module)
        # One path per block (level 0 to itself, skip): the rest of the network is what is left.
        code_a = np.zeros((space.num_blocks, space.num_paths), dtype=np.int64)
        code_a[:, 0] = 1
        code_c = np.zeros_like(code_a)
        code = _code(space, code_a, code_c)
        with _quiet():
            total = _count(code.network(in_channels, num_classes, channel_mul=channel_mul))
        fixed = total - int(cell[0, 0]) * space.num_blocks
        return cls(cell, fixed, space, int(in_channels), int(num_classes), float(channel_mul))

    def parameters(self, code_a: np.ndarray, code_c: np.ndarray) -> int:
        """Parameters of the network of ``(arch_code_a, arch_code_c)`` (each (blocks, paths))."""
        code_a, code_c = np.asarray(code_a), np.asarray(code_c)
        per_path = self.cell[np.arange(self.space.num_paths)[None, :], code_c]
        return int(self.fixed + (per_path * code_a).sum())

    def of(self, code: ArchCode) -> int:
        return self.parameters(code.arch_code_a, code.arch_code_c)


def _code(space: SearchSpace, code_a: np.ndarray, code_c: np.ndarray, **extra: Any) -> ArchCode:
    reads, writes = _node_sets(space, code_a)
    node_a = np.concatenate([reads[:1], writes]).astype(np.int64)
    return ArchCode(node_a, code_a, code_c, None, space, extra=dict(extra))


def decode_within_budget(
    search, space: SearchSpace, table: ParameterTable, max_params: int, *, iterations: int = 40
) -> ArchCode:
    """The most probable feasible architecture of a supernet with at most ``max_params`` parameters.

    Args:
        search: :class:`~monai.networks.nets.TopologySearch` (or a DiNTS around one).
        space: its search space.
        table: :class:`ParameterTable` of the retrained width (what the budget is about).
        max_params: the budget (parameters of the retrained network).
        iterations: bisection steps on the penalty weight.
    Returns:
        :class:`ArchCode`; ``extra["budget"]`` records the budget, the penalty weight and the
        parameters of the unconstrained and the chosen decode.
    Raises:
        MedSegNASError: no architecture of the space fits (the message gives the smallest size).
    """
    import torch
    import torch.nn.functional as F

    from .decode import decode

    search = getattr(search, "dints_space", search)
    plain = decode(search, space)
    plain_params = table.of(plain)
    record = {"max_params": int(max_params), "unconstrained_params": plain_params}
    if plain_params <= max_params:
        plain.extra["budget"] = {**record, "penalty": 0.0, "params": plain_params}
        return plain
    with torch.no_grad():
        log_p = F.log_softmax(search.log_alpha_c.float(), -1).cpu().numpy().astype(np.float64)
    regret = log_p.max(-1, keepdims=True) - log_p  # >= 0, 0 at the most probable op
    size = table.cell[None, :, :] / float(max_params)  # (1, paths, ops)

    def attempt(mu: float) -> ArchCode:
        total = regret + mu * size  # (blocks, paths, ops)
        ops = total.argmin(-1)
        extra = np.take_along_axis(total, ops[..., None], -1)[..., 0]
        return decode(search, space, path_cost=extra, op_code=ops)

    high = 1.0
    best = attempt(high)
    while table.of(best) > max_params and high < 1e9:
        high *= 10.0
        best = attempt(high)
    if table.of(best) > max_params:
        raise MedSegNASError(
            f"no architecture of this {space.num_blocks}x{space.num_depths} space at channel_mul "
            f"{table.channel_mul:g} has at most {max_params:,} parameters: the smallest the decode reaches "
            f"has {table.of(best):,}; raise the budget or use a smaller space"
        )
    low = 0.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        candidate = attempt(mid)
        if table.of(candidate) <= max_params:
            high, best = mid, candidate
        else:
            low = mid
    best.extra["budget"] = {**record, "penalty": high, "params": table.of(best)}
    return best


def random_architecture(space: SearchSpace, rng: np.random.Generator) -> ArchCode:
    """One random feasible architecture: uniform path patterns under the decode's rule, uniform ops."""
    from monai.networks.nets.dints import _dfs

    children = np.asarray(_dfs(0, space.num_paths - 1), dtype=np.int64)[1:]  # non-empty patterns
    reads, writes = _node_sets(space, children)
    bits = 1 << np.arange(space.num_depths)
    read_key, write_key = reads @ bits, writes @ bits
    chosen = [int(rng.integers(len(children)))]
    for _ in range(1, space.num_blocks):
        fitting = np.flatnonzero(read_key == write_key[chosen[-1]])
        chosen.append(int(rng.choice(fitting)))
    code_a = children[chosen]
    code_c = rng.integers(len(space.op_names), size=code_a.shape)
    return _code(space, code_a, code_c.astype(np.int64))


def sample_architectures(
    space: SearchSpace,
    count: int,
    seed: int,
    *,
    table: ParameterTable | None = None,
    max_params: int | None = None,
    max_tries: int = 10000,
    accept: Callable[[ArchCode], bool] | None = None,
) -> list[ArchCode]:
    """``count`` distinct random architectures (:func:`random_architecture`) within ``max_params``.

    Deterministic in ``seed``. ``extra`` of each holds ``random_seed``, ``index`` and ``params``
    (when ``table`` is given).

    Raises:
        MedSegNASError: fewer than ``count`` fitting architectures after ``max_tries`` draws.
    """
    if max_params is not None and table is None:
        raise ValueError("a parameter budget needs the ParameterTable")
    rng = np.random.default_rng([int(seed), 0x5A3D])
    found: list[ArchCode] = []
    seen: set[bytes] = set()
    for _ in range(max_tries):
        if len(found) == count:
            break
        code = random_architecture(space, rng)
        key = code.arch_code_a.tobytes() + code.arch_code_c.tobytes()
        if key in seen:
            continue
        params = table.of(code) if table is not None else None
        if max_params is not None and params > max_params:
            continue
        if accept is not None and not accept(code):
            continue
        seen.add(key)
        code.extra = {"random_seed": int(seed), "index": len(found), **({"params": params} if params else {})}
        found.append(code)
    if len(found) < count:
        raise MedSegNASError(
            f"found only {len(found)} of {count} random architectures"
            + (f" with at most {max_params:,} parameters" if max_params is not None else "")
            + f" in {max_tries} draws; raise the budget or ask for fewer"
        )
    return found
