"""DiNTS topology search: the search space, decoding a searched supernet, and its pictures.

Importing this package loads neither torch nor matplotlib; the names below import their module on
first use, and the functions import torch and matplotlib when called.

    space = SearchSpace.preset("tiny")            # or SearchSpace(num_blocks=..., ...)
    space.check_patch_size((64, 64, 64))          # MedSegNASError with a suggestion if not divisible
    net = space.build_search_network(1, 3)        # monai DiNTS around TopologySearch (the supernet)
    ...                                           # search (nas/search.py)
    code = decode(net)                            # ArchCode, sparse-graph Dijkstra
    save_arch_json(code, "arch.json")             # plain JSON, atomic
    model = load_arch_json("arch.json").network(1, 3)   # retrain / inference network
    plot_topology(code, "topology.png", path_svg="topology.svg")

Retraining (nas/train.py; ``medsegnas train``)::

    resolved = resolve_train_config({"dataset": ..., "preset": "tiny", "arch": "arch.json", ...}, device_type="cpu")
    network, network_def = build_network(resolved)   # the module and its MONAI bundle config
    summary = run_train(ctx, resolved, dist_info)     # as a job body: bundle, predictions, registry
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported now: the function ``decode`` must shadow its module ``nas.decode`` (numpy only, cheap).
from .decode import ArchCode, decode, load_arch_json, path_probabilities, save_arch_json
from .search_space import SearchSpace

_EXPORTS = {
    "topology_plot": ("plot_path_probabilities", "plot_topology"),
    "train": ("NETWORKS", "TRAIN_PRESETS", "build_network", "resolve_train_config", "run_train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["ArchCode", "SearchSpace", "decode", "load_arch_json", "path_probabilities", "save_arch_json"]
__all__ += sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    # PEP 562: a name imports its module on first use, so that importing a sub-module (a command's
    # registration, say) does not pay for nibabel/SimpleITK/matplotlib it does not use.
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
