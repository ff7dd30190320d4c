"""Training-free ranking: zero-cost proxies at initialisation and ``medsegnas search --zero-cost``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from MedSegNASLib import cli
from MedSegNASLib.nas import SearchSpace, load_arch_json
from MedSegNASLib.nas.benchmark import proxy_correlations
from MedSegNASLib.nas.search_budget import sample_architectures
from MedSegNASLib.nas.search_zero_cost import PROXIES, _synflow_in, proxy_scores

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return sample_architectures(SearchSpace.preset("tiny"), 1, seed=5)[0].network(1, 3)


def test_proxies_are_finite_and_leave_the_network_as_it_was(network) -> None:
    before = {k: v.clone() for k, v in network.state_dict().items()}
    torch.manual_seed(1)
    images, labels = torch.randn(3, 1, 16, 16, 16), torch.randint(0, 3, (3, 1, 16, 16, 16))
    scores = proxy_scores(network, images, labels)
    assert set(scores) == set(PROXIES) and all(math.isfinite(v) for v in scores.values())
    assert scores["params"] == sum(p.numel() for p in network.parameters())
    assert scores["grad_norm"] > 0 and scores["snip"] > 0
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # SynFlow's |w| is undone
    assert (
        all(p.grad is None for p in network.parameters())
        and next(network.parameters()).dtype == torch.float32
    )


def test_naswot_cannot_tell_identical_inputs_apart_and_synflow_float32_matches_float64(network) -> None:
    image = torch.randn(1, 1, 16, 16, 16)
    same = proxy_scores(network, image.repeat(2, 1, 1, 1, 1), torch.zeros(2, 1, 16, 16, 16, dtype=torch.long))
    assert same["naswot"] == -math.inf  # two identical ReLU codes: a singular kernel
    low = _synflow_in(network, 1, (16, 16, 16), torch.float32)
    high = _synflow_in(network, 1, (16, 16, 16), torch.float64)
    network.float()
    assert low == pytest.approx(high, abs=1e-3)


def test_kendall_tau_of_each_proxy_with_test_dice() -> None:
    rows = [
        {
            "test_dice_mean": d,
            "proxies": {"grad_norm": d, "snip": -d, "synflow": 1.0, "naswot": d * d, "params": 1e6},
        }
        for d in (0.1, 0.4, 0.2, 0.8)
    ]
    tau = proxy_correlations(rows)
    assert tau["grad_norm"]["tau"] == pytest.approx(1.0) and tau["naswot"]["tau"] == pytest.approx(1.0)
    assert tau["snip"]["tau"] == pytest.approx(-1.0) and tau["synflow"]["tau"] is None  # constant: undefined
    assert tau["params"]["n"] == 4
    assert proxy_correlations(rows[:2]) == {}  # too few architectures


def test_zero_cost_search_ranks_candidates_and_writes_the_best(
    phantom_dataset: Callable[..., Path], json_file: Callable[[str, object], Path], tmp_path: Path
) -> None:
    dataset = phantom_dataset(cases=6, size=32, seed=3)
    config = json_file(
        "zc.json", {"max_patch_size": [32, 32, 32], "zero_cost_candidates": 3, "zero_cost_batch": 2}
    )
    run = tmp_path / "zc"
    argv = [
        "search",
        "--dataset",
        str(dataset),
        "--preset",
        "tiny",
        "--config",
        str(config),
        "--device",
        "cpu",
    ]
    assert cli.main([*argv, "--zero-cost", "--max-params", "6000000", "--run-dir", str(run)]) == 0
    artifacts = run / "artifacts"
    ranking = json.loads((artifacts / "zero_cost.json").read_text())
    assert ranking["proxy"] == "naswot" and len(ranking["candidates"]) == 3
    naswot = [c["scores"]["naswot"] for c in ranking["candidates"]]
    best = ranking["candidates"][int(np.argmax(naswot))]
    assert best["rank"] == 1 and sorted(c["rank"] for c in ranking["candidates"]) == [1, 2, 3]
    arch = load_arch_json(artifacts / "arch.json")
    assert np.array_equal(arch.arch_code_a, np.asarray(best["arch"]["arch_code_a"]))
    assert sum(p.numel() for p in arch.network(1, 5).parameters()) <= 6_000_000
    summary = json.loads((artifacts / "summary.json").read_text())
    assert summary["method"] == "zero-cost" and summary["timing"]["wall_s_this_process"] > 0
    assert not (run / "checkpoints" / "last.pt").exists()  # no supernet was trained
