"""Size-budgeted DiNTS search: parameter counts per path, the budgeted decode, random architectures.

The parameter table must give the size of the network MONAI builds from a code exactly; the
budgeted decode must respect the budget, equal the plain decode when the budget is loose, and say
what the smallest reachable size is when it cannot; ``medsegnas search --max-params`` must write an
arch.json whose retrained network fits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from MedSegNASLib import cli
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.nas import SearchSpace, load_arch_json
from MedSegNASLib.nas.decode import decode
from MedSegNASLib.nas.search_budget import ParameterTable, decode_within_budget, sample_architectures

pytestmark = pytest.mark.timeout(300)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny() -> tuple[SearchSpace, ParameterTable]:
    space = SearchSpace.preset("tiny")
    return space, ParameterTable.build(space, in_channels=1, num_classes=5)


def _supernet(space: SearchSpace, seed: int):
    torch.manual_seed(seed)
    network = space.build_search_network(1, 5)
    with torch.no_grad():  # a search that has learnt something: spread-out path and op weights
        network.dints_space.log_alpha_a.normal_(0.0, 1.5)
        network.dints_space.log_alpha_c.normal_(0.0, 1.5)
    return network


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_parameter_table_counts_the_built_network_exactly(preset: str) -> None:
    space = SearchSpace.preset(preset)
    table = ParameterTable.build(space, in_channels=2, num_classes=3)
    for code in sample_architectures(space, 3, seed=4, table=table):
        assert table.of(code) == _count(code.network(2, 3, channel_mul=1.0)) == code.extra["params"]


def test_random_architectures_are_feasible_distinct_deterministic_and_within_budget(tiny) -> None:
    space, table = tiny
    budget = table.fixed + 1_500_000
    codes = sample_architectures(space, 6, seed=1, table=table, max_params=budget)
    again = sample_architectures(space, 6, seed=1, table=table, max_params=budget)
    other = sample_architectures(space, 6, seed=2, table=table, max_params=budget)
    keys = [c.arch_code_a.tobytes() + c.arch_code_c.tobytes() for c in codes]
    assert len(set(keys)) == 6  # ArchCode itself checks that consecutive blocks fit together
    assert keys == [c.arch_code_a.tobytes() + c.arch_code_c.tobytes() for c in again]
    assert keys != [c.arch_code_a.tobytes() + c.arch_code_c.tobytes() for c in other]
    assert all(table.of(c) <= budget for c in codes)
    with pytest.raises(MedSegNASError, match="random architectures with at most"):
        sample_architectures(space, 2, seed=1, table=table, max_params=table.fixed - 1, max_tries=50)


def test_budgeted_decode_fits_and_a_loose_budget_is_the_plain_decode(tiny) -> None:
    space, table = tiny
    network = _supernet(space, seed=0)
    plain = decode(network, space)
    plain_params = table.of(plain)
    loose = decode_within_budget(network, space, table, plain_params)
    assert np.array_equal(loose.arch_code_a, plain.arch_code_a)
    assert np.array_equal(loose.arch_code_c, plain.arch_code_c)
    assert loose.extra["budget"]["penalty"] == 0.0
    sizes = []
    for fraction in (0.8, 0.6, 0.45):
        budget = int(table.fixed + fraction * (plain_params - table.fixed))
        code = decode_within_budget(network, space, table, budget)
        assert table.of(code) <= budget == code.extra["budget"]["max_params"]
        assert code.extra["budget"]["unconstrained_params"] == plain_params
        assert _count(code.network(1, 5)) == table.of(code)
        sizes.append(table.of(code))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < plain_params


def test_an_impossible_budget_names_the_smallest_reachable_size(tiny) -> None:
    space, table = tiny
    with pytest.raises(MedSegNASError, match=r"smallest the decode reaches has [\d,]+"):
        decode_within_budget(_supernet(space, seed=1), space, table, table.fixed // 2)


def test_decode_with_zero_path_cost_is_the_plain_decode(tiny) -> None:
    space, _ = tiny
    network = _supernet(space, seed=2)
    plain = decode(network, space)
    zero = decode(network, space, path_cost=np.zeros((space.num_blocks, space.num_paths)))
    assert np.array_equal(zero.arch_code_a, plain.arch_code_a)
    with pytest.raises(ValueError, match="path_cost"):
        decode(network, space, path_cost=-np.ones((space.num_blocks, space.num_paths)))


# ------------------------------------------------------------------------------ the search job
QUICK = {
    "epochs": 2,
    "warmup_epochs": 1,
    "val_interval": 1,
    "checkpoint_every": 0,
    "crops_per_case": 1,
    "max_patch_size": [32, 32, 32],
}


def test_search_with_max_params_writes_an_architecture_within_the_budget(
    phantom_dataset: Callable[..., Path], json_file: Callable[[str, object], Path], tmp_path: Path, tiny
) -> None:
    space, table = tiny
    dataset = phantom_dataset(cases=6, size=32, seed=3)
    config = json_file("budget.json", QUICK)
    budget = table.fixed + 1_000_000
    run = tmp_path / "search"
    argv = ["search", "--dataset", str(dataset), "--preset", "tiny", "--config", str(config)]
    code = cli.main([*argv, "--device", "cpu", "--max-params", str(budget), "--run-dir", str(run)])
    assert code == 0
    arch = load_arch_json(run / "artifacts" / "arch.json")
    assert _count(arch.network(1, 5, channel_mul=1.0)) <= budget
    summary = json.loads((run / "artifacts" / "summary.json").read_text())
    assert summary["max_params"] == budget and summary["budget"]["params"] <= budget
    assert summary["parameters"]["searched_channel_mul_1"] <= budget


def test_a_budget_below_the_smallest_network_fails_before_training(
    phantom_dataset: Callable[..., Path], tmp_path: Path, capsys, tiny
) -> None:
    _, table = tiny
    dataset = phantom_dataset(cases=6, size=32, seed=3)
    run = tmp_path / "search"
    argv = ["search", "--dataset", str(dataset), "--preset", "tiny", "--device", "cpu", "--run-dir", str(run)]
    assert cli.main([*argv, "--max-params", "1000"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error.startswith("error: max_params 1,000 is below the smallest network")
        and "stems and head" in error
    )
    assert not (run / "checkpoints" / "last.pt").exists()


# ------------------------------------------------------------------------------ proxy data
def test_k_centre_greedy_covers_every_cluster_before_repeating_one() -> None:
    from MedSegNASLib.nas.search_proxy_data import k_centre_greedy

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    features = np.concatenate([c + 0.1 * rng.standard_normal((5, 2)) for c in centres])
    chosen = k_centre_greedy(features, 3)
    assert sorted(index // 5 for index in chosen) == [0, 1, 2]
    with pytest.raises(MedSegNASError, match="cannot choose"):
        k_centre_greedy(features, 16)


def test_search_on_proxy_data_uses_only_the_chosen_cases(
    phantom_dataset: Callable[..., Path], json_file: Callable[[str, object], Path], tmp_path: Path, capsys
) -> None:
    dataset = phantom_dataset(cases=6, size=32, seed=3)
    config = json_file("proxy.json", QUICK)
    run = tmp_path / "search"
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
    assert cli.main([*argv, "--proxy-cases", "2", "--run-dir", str(run)]) == 0
    resolved = json.loads((run / "job.json").read_text())["config"]
    split = resolved["dataset"]["split"]
    assert sorted(split["weights"] + split["architecture"]) == sorted(resolved["proxy_data"]["selected"])
    assert len(resolved["proxy_data"]["selected"]) == 2 and resolved["proxy_data"]["of"] == 4
    assert not set(resolved["proxy_data"]["selected"]) & set(split["validation"])
    summary = json.loads((run / "artifacts" / "summary.json").read_text())
    assert summary["proxy_data"]["selected"] == resolved["proxy_data"]["selected"]
    # as many proxy cases as training cases saves nothing: refused before training
    assert cli.main([*argv, "--proxy-cases", "4", "--run-dir", str(tmp_path / "other")]) == 1
    assert "must be fewer than the 4 training cases" in capsys.readouterr().err
