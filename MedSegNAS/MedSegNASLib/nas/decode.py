"""Decode a searched DiNTS supernet into a fixed architecture, and store it as JSON.

The decode follows MONAI's :meth:`monai.networks.nets.TopologySearch.decode`: each block picks one
*child*, a non-empty pattern of active paths (1023 patterns for 4 depths). Consecutive blocks must
fit: the nodes that block ``b`` writes are exactly the nodes that block ``b + 1`` reads. A child
costs ``-log(P(child) + 1e-5) + 0.001`` and the cheapest source-to-sink route through the blocks
(Dijkstra) is the architecture with the highest joint probability under the feasibility rule.

MONAI stores that graph as a dense (blocks * children + 2)^2 float64 matrix (1.2 GB for 12 x 4)
and links every child of block ``b`` to every fitting child of block ``b + 1`` (about n^2 / 4
edges per block boundary). Here the graph is sparse and the boundary goes through one hub vertex
per node set: ``child(b) -> hub(b, its output nodes) -> child(b + 1) reading those nodes``. Every
route of MONAI's graph is one route here with the same cost, so the shortest route is the same
(up to exact ties), with ``O(blocks * children)`` edges: about 25,000 instead of 2.75 million for
12 x 4, so 5 depths decode too.

Architecture codes are written as JSON (plain lists), not pickled numpy: ``torch.load`` with
``weights_only=True`` (the default since torch 2.6) rejects pickled numpy arrays.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from ..errors import MedSegNASError
from ..jobs.rundir import to_jsonable
from .search_space import SearchSpace, _quiet

__all__ = ["ARCH_FORMAT", "ArchCode", "decode", "load_arch_json", "path_probabilities", "save_arch_json"]

#: ``format`` field of an arch.json file; ``version`` is bumped on incompatible changes.
ARCH_FORMAT = "medsegnas-dints-arch"
ARCH_VERSION = 1


def _node_sets(space: SearchSpace, arch_code_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes read and written by each path pattern.

    Args:
        arch_code_a: (..., num_paths) 0/1 path activations.
    Returns:
        ``(reads, writes)``, each (..., num_depths) bool: level ``d`` is read (written) when an
        active path starts (ends) there.
    """
    levels_in = np.zeros((space.num_paths, space.num_depths), dtype=np.int64)
    levels_out = np.zeros_like(levels_in)
    for path, (level_in, level_out) in enumerate(space.path_levels):
        levels_in[path, level_in] = 1
        levels_out[path, level_out] = 1
    active = np.asarray(arch_code_a, dtype=np.int64)
    return active @ levels_in > 0, active @ levels_out > 0


@dataclass(eq=False)
class ArchCode:
    """A decoded DiNTS architecture, in MONAI's encoding (plain numpy int arrays).

    Args:
        node_a: (num_blocks + 1, num_depths) 0/1; column 0 holds the levels the first block reads
            (fed by the stem), column ``b + 1`` the levels block ``b`` writes (the last one feeds the head).
        arch_code_a: (num_blocks, num_paths) 0/1 active paths; path order is
            :attr:`SearchSpace.path_levels`.
        arch_code_c: (num_blocks, num_paths) index into :attr:`SearchSpace.op_names` (the op each
            path runs; ignored where the path is off).
        arch_code_a_max: (num_blocks, num_paths) each block's most probable pattern on its own,
            ignoring whether the blocks fit together (a diagnostic; ``None`` when unknown).
        search_space: the space the code belongs to (blocks, depths, downsampling, dims).
        extra: free-form JSON-able facts stored with the code (epoch, val_dice, run id...).
    """

    node_a: np.ndarray
    arch_code_a: np.ndarray
    arch_code_c: np.ndarray
    arch_code_a_max: np.ndarray | None
    search_space: SearchSpace
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        space = self.search_space
        if not isinstance(space, SearchSpace):
            raise TypeError(f"search_space must be a SearchSpace, got {type(space).__name__}")
        blocks, depths, paths = space.num_blocks, space.num_depths, space.num_paths
        self.node_a = self._int_array("node_a", self.node_a, (blocks + 1, depths), 2)
        self.arch_code_a = self._int_array("arch_code_a", self.arch_code_a, (blocks, paths), 2)
        self.arch_code_c = self._int_array(
            "arch_code_c", self.arch_code_c, (blocks, paths), len(space.op_names)
        )
        if self.arch_code_a_max is not None:
            self.arch_code_a_max = self._int_array(
                "arch_code_a_max", self.arch_code_a_max, (blocks, paths), 2
            )
        if not isinstance(self.extra, dict):
            raise MedSegNASError(f"arch code 'extra' must be a JSON object, got {type(self.extra).__name__}")

        empty = np.flatnonzero(self.arch_code_a.sum(axis=1) == 0)
        if empty.size:
            raise MedSegNASError(f"arch code has no active path in block(s) {empty.tolist()}")
        reads, writes = _node_sets(space, self.arch_code_a)
        expected = np.concatenate([reads[:1], writes]).astype(np.int64)
        if not np.array_equal(self.node_a, expected):
            raise MedSegNASError(
                "arch code node_a does not match its active paths: expected "
                f"{expected.tolist()}, found {self.node_a.tolist()}"
            )
        for block in range(1, blocks):
            dangling = np.flatnonzero(reads[block] & ~writes[block - 1])
            if dangling.size:
                raise MedSegNASError(
                    f"arch code block {block} reads level(s) {dangling.tolist()} that block {block - 1} "
                    "does not write"
                )

    def _int_array(self, name: str, value: Any, shape: tuple[int, ...], limit: int) -> np.ndarray:
        """``value`` as an int64 array of ``shape`` with entries in ``[0, limit)``, or a clear error."""
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise MedSegNASError(f"arch code {name} must be a nested list of numbers") from None
        space = self.search_space
        if array.shape != shape:
            raise MedSegNASError(
                f"arch code {name} has shape {array.shape}, expected {shape} for a {space.num_blocks} blocks x "
                f"{space.num_depths} depths search space"
            )
        if (
            not np.all(np.isfinite(array))
            or np.any(array != np.round(array))
            or array.min() < 0
            or array.max() >= limit
        ):
            raise MedSegNASError(f"arch code {name} must hold integers from 0 to {limit - 1}")
        return array.astype(np.int64)

    # ------------------------------------------------------------------------------ reading
    def active_paths(self) -> list[tuple[int, int, int, int, str]]:
        """Active paths as ``(block, path, level_in, level_out, op_name)``, block by block."""
        names = self.search_space.op_names
        levels = self.search_space.path_levels
        return [
            (int(block), int(path), *levels[path], names[self.arch_code_c[block, path]])
            for block, path in zip(*np.nonzero(self.arch_code_a), strict=True)
        ]

    # ------------------------------------------------------------------------------ networks
    def instance(self, channel_mul: float = 1.0, device: str = "cpu"):
        """The fixed topology: :class:`monai.networks.nets.TopologyInstance` with only the active paths
        and their chosen ops, ``channel_mul`` wide (1.0 for retraining, as published)."""
        from monai.networks.nets import TopologyInstance

        space = self.search_space
        with _quiet():
            return TopologyInstance(
                channel_mul=channel_mul,
                num_blocks=space.num_blocks,
                num_depths=space.num_depths,
                spatial_dims=space.spatial_dims,
                use_downsample=space.use_downsample,
                arch_code=[self.arch_code_a.copy(), self.arch_code_c.copy()],
                device=device,
            )

    def network(self, in_channels: int, num_classes: int, channel_mul: float = 1.0, device: str = "cpu"):
        """The segmentation network, built as the model-zoo bundle ``pancreas_ct_dints_segmentation``
        builds it: :class:`monai.networks.nets.DiNTS` around :meth:`instance`, with ``node_a``.

        Input (B, in_channels, *patch) with every side a multiple of
        :attr:`SearchSpace.required_divisor` -> logits (B, num_classes, *patch).
        """
        import torch
        from monai.networks.nets import DiNTS

        space = self.search_space
        return DiNTS(
            self.instance(channel_mul=channel_mul, device=device),
            in_channels=in_channels,
            num_classes=num_classes,
            spatial_dims=space.spatial_dims,
            use_downsample=space.use_downsample,
            node_a=torch.from_numpy(self.node_a.copy()),
        ).to(device)

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the codes as nested lists, the search space, op names (for readers) and extra."""
        return {
            "format": ARCH_FORMAT,
            "version": ARCH_VERSION,
            "search_space": self.search_space.to_dict(),
            "op_names": list(self.search_space.op_names),
            "node_a": self.node_a.tolist(),
            "arch_code_a": self.arch_code_a.tolist(),
            "arch_code_c": self.arch_code_c.tolist(),
            "arch_code_a_max": None if self.arch_code_a_max is None else self.arch_code_a_max.tolist(),
            "extra": to_jsonable(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchCode:
        """Inverse of :meth:`to_dict`; raises :class:`MedSegNASError` naming what is missing or wrong."""
        if not isinstance(data, Mapping):
            raise MedSegNASError(f"an arch code must be a JSON object, got {type(data).__name__}")
        if data.get("format", ARCH_FORMAT) != ARCH_FORMAT:
            raise MedSegNASError(
                f"not a DiNTS arch code: format is {data.get('format')!r}, expected {ARCH_FORMAT!r}"
            )
        version = data.get("version", ARCH_VERSION)
        if version != ARCH_VERSION:
            raise MedSegNASError(
                f"arch code version {version!r} is not supported (this MedSegNAS reads version {ARCH_VERSION})"
            )
        missing = [key for key in ("search_space", "node_a", "arch_code_a", "arch_code_c") if key not in data]
        if missing:
            raise MedSegNASError(f"arch code is missing {', '.join(missing)}")
        return cls(
            node_a=data["node_a"],
            arch_code_a=data["arch_code_a"],
            arch_code_c=data["arch_code_c"],
            arch_code_a_max=data.get("arch_code_a_max"),
            search_space=SearchSpace.from_dict(data["search_space"]),
            extra=dict(data.get("extra") or {}),
        )

    def to_json(self) -> str:
        """Strict JSON text (one block per line in the code matrices is left to the formatter)."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ArchCode:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MedSegNASError(f"arch code is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(data)


def save_arch_json(code: ArchCode, path: str | PathLike[str]) -> Path:
    """Write ``code`` to ``path`` atomically (readers see the old file or the new one, never half).

    Returns:
        the path written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise MedSegNASError(f"cannot write arch code to {path}: folder {path.parent} does not exist")
    text = code.to_json().encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(text))


def load_arch_json(path: str | PathLike[str]) -> ArchCode:
    """Read an arch.json written by :func:`save_arch_json`; errors name the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedSegNASError(f"arch code file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedSegNASError(f"cannot read arch code file {path}: {exc}") from None
    try:
        return ArchCode.from_json(text)
    except MedSegNASError as exc:
        raise MedSegNASError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------- decoding
def _space_of(search, space: SearchSpace | None) -> SearchSpace:
    """The :class:`SearchSpace` of a TopologySearch, checked against ``space`` when one is given."""
    found = {
        "num_blocks": int(search.num_blocks),
        "num_depths": int(search.num_depths),
        "use_downsample": bool(search.use_downsample),
        "spatial_dims": int(search._spatial_dims),
    }
    if space is None:
        # MONAI keeps only the rounded channel counts; level 0 of the stem has 32 * channel_mul.
        return SearchSpace(channel_mul=search.filter_nums[0] / 32, **found)
    differ = {
        key: (getattr(space, key), value) for key, value in found.items() if getattr(space, key) != value
    }
    if differ:
        details = ", ".join(f"{key} {want} vs {have}" for key, (want, have) in differ.items())
        raise ValueError(f"search space does not match the supernet: {details}")
    return space


def path_probabilities(search) -> np.ndarray:
    """Probability of each path being active, given that its block has at least one active path.

    Args:
        search: :class:`~monai.networks.nets.TopologySearch` (or a DiNTS around one).
    Returns:
        (num_blocks, num_paths) float64 in [0, 1], path order :attr:`SearchSpace.path_levels`.
    """
    import torch

    search = getattr(search, "dints_space", search)
    with torch.no_grad():
        _, prob_a = search.get_prob_a(child=False)
    return prob_a.detach().cpu().numpy().astype(np.float64)


def decode(
    search,
    space: SearchSpace | None = None,
    *,
    path_cost: np.ndarray | None = None,
    op_code: np.ndarray | None = None,
) -> ArchCode:
    """Most probable feasible architecture of a supernet (sparse-graph version of MONAI's decode).

    Args:
        search: :class:`~monai.networks.nets.TopologySearch` after (or during) a search, or a
            :class:`~monai.networks.nets.DiNTS` around one.
        space: the search space it was built from; by default read from ``search`` (``channel_mul``
            then comes from the rounded channel counts).
        path_cost: (num_blocks, num_paths) extra cost (>= 0) of each path when active, added to its
            block's child costs (a size penalty: :func:`~.search_budget.decode_within_budget`).
        op_code: (num_blocks, num_paths) operations to use instead of the most probable ones.
    Returns:
        :class:`ArchCode` with the same ``node_a``, ``arch_code_a``, ``arch_code_c`` and
        ``arch_code_a_max`` as ``search.decode()`` (as int arrays), barring exact ties in cost.
    Raises:
        MedSegNASError: the architecture weights are not finite (the search diverged).
    """
    import torch
    import torch.nn.functional as F
    from monai.networks.nets import TopologySearch
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    search = getattr(search, "dints_space", search)
    if not isinstance(search, TopologySearch):
        raise TypeError(
            f"decode needs a monai TopologySearch (or DiNTS around one), got {type(search).__name__}"
        )
    space = _space_of(search, space)

    with torch.no_grad():
        if not (torch.isfinite(search.log_alpha_a).all() and torch.isfinite(search.log_alpha_c).all()):
            raise MedSegNASError(
                "cannot decode: the architecture weights contain NaN or infinity (the search diverged); "
                "decode an earlier checkpoint"
            )
        child_probs, _ = search.get_prob_a(child=True)
        # Same expressions as MONAI so that costs and op choices agree bit for bit.
        arch_code_c = torch.argmax(F.softmax(search.log_alpha_c, -1), -1).cpu().numpy()
    child_probs = child_probs.cpu().numpy()  # (num_blocks, num_children)
    children = np.asarray(search.child_list, dtype=np.int64)  # (num_children, num_paths)
    arch_code_a_max = children[np.argmax(child_probs, -1)]
    cost = -np.log(child_probs + 1e-5) + 0.001  # > 0: Dijkstra needs non-negative weights
    if path_cost is not None:
        extra = np.asarray(path_cost, dtype=np.float64)
        if extra.shape != arch_code_a_max.shape or not np.all(np.isfinite(extra)) or extra.min() < 0:
            raise ValueError(f"path_cost must be finite, >= 0 and of shape {arch_code_a_max.shape}")
        cost = cost + np.einsum("bp,cp->bc", extra, children.astype(np.float64))
    if op_code is not None:
        arch_code_c = np.asarray(op_code, dtype=np.int64)

    num_blocks, num_children = child_probs.shape
    reads, writes = _node_sets(space, children)
    bits = 1 << np.arange(space.num_depths)
    read_key = reads @ bits - 1  # node set as an index 0 .. 2**num_depths - 2 (never empty)
    write_key = writes @ bits - 1
    num_sets = 2**space.num_depths - 1

    # Vertices: source, children of every block, hubs (one per node set at each inner boundary), sink.
    def child_vertex(block: int, child: np.ndarray | int) -> np.ndarray | int:
        return 1 + block * num_children + child

    hub0 = 1 + num_blocks * num_children
    sink = hub0 + (num_blocks - 1) * num_sets
    all_children = np.arange(num_children)
    rows, cols, weights = [np.zeros(num_children, np.int64)], [child_vertex(0, all_children)], [cost[0]]
    for block in range(num_blocks - 1):
        hubs = hub0 + block * num_sets
        # child -> hub of the nodes it writes (free), hub -> each child of the next block reading them.
        rows += [child_vertex(block, all_children), hubs + read_key]
        cols += [hubs + write_key, child_vertex(block + 1, all_children)]
        weights += [np.zeros(num_children), cost[block + 1]]
    rows.append(child_vertex(num_blocks - 1, all_children))
    cols.append(np.full(num_children, sink))
    weights.append(np.full(num_children, 0.001))
    # The zero-weight hub edges are stored explicitly; csgraph treats stored zeros as edges.
    graph = csr_matrix(
        (np.concatenate(weights).astype(np.float64), (np.concatenate(rows), np.concatenate(cols))),
        shape=(sink + 1, sink + 1),
    )
    _, predecessors = dijkstra(graph, directed=True, indices=0, return_predecessors=True)
    if predecessors[sink] < 0:  # cannot happen: every node set is read by some pattern
        raise RuntimeError("DiNTS decode graph has no route from the first to the last block")

    chosen = np.zeros(num_blocks, dtype=np.int64)
    vertex = predecessors[sink]
    while vertex > 0:
        if vertex < hub0:
            block, chosen_child = divmod(int(vertex) - 1, num_children)
            chosen[block] = chosen_child
        vertex = predecessors[vertex]
    arch_code_a = children[chosen]
    node_a = np.concatenate([reads[chosen[:1]], writes[chosen]]).astype(np.int64)
    return ArchCode(
        node_a=node_a,
        arch_code_a=arch_code_a,
        arch_code_c=arch_code_c.astype(np.int64),
        arch_code_a_max=arch_code_a_max,
        search_space=space,
    )
