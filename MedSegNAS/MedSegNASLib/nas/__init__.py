"""DiNTS topology search: the search space, decoding a searched supernet, and its pictures.

Importing this package loads neither torch nor matplotlib; the functions import them when called.

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

from .decode import ArchCode, decode, load_arch_json, path_probabilities, save_arch_json
from .search_space import SearchSpace
from .topology_plot import plot_path_probabilities, plot_topology
from .train import NETWORKS, TRAIN_PRESETS, build_network, resolve_train_config, run_train

__all__ = [
    "NETWORKS",
    "TRAIN_PRESETS",
    "ArchCode",
    "SearchSpace",
    "build_network",
    "decode",
    "load_arch_json",
    "path_probabilities",
    "plot_path_probabilities",
    "plot_topology",
    "resolve_train_config",
    "run_train",
    "save_arch_json",
]
