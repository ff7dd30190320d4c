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

from ..lazy import lazy_exports

# Imported now: the function ``decode`` must shadow its module ``nas.decode`` (numpy only, cheap).
from .decode import ArchCode, decode, load_arch_json, path_probabilities, save_arch_json
from .search_space import SearchSpace

_EXPORTS = {
    "topology_plot": ("plot_path_probabilities", "plot_topology"),
    "train": ("NETWORKS", "TRAIN_PRESETS", "build_network", "resolve_train_config", "run_train"),
}

__all__ = ["ArchCode", "SearchSpace", "decode", "load_arch_json", "path_probabilities", "save_arch_json"]
__getattr__, __dir__, _LAZY_NAMES = lazy_exports(__name__, globals(), _EXPORTS)
__all__ += _LAZY_NAMES
