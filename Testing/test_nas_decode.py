"""DiNTS search space, sparse decode, arch.json and topology pictures (MedSegNASLib.nas).

The decode is checked against MONAI's own ``TopologySearch.decode()`` on seeded random
architecture weights; decoded codes must build MONAI DiNTS networks that run.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.nas import (
    ArchCode,
    SearchSpace,
    decode,
    load_arch_json,
    path_probabilities,
    plot_path_probabilities,
    plot_topology,
    save_arch_json,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def searched_supernet(space: SearchSpace, seed: int):
    """A supernet whose architecture weights look like the end of a search: spread out, no ties."""
    search = space.build_supernet()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        search.log_alpha_a.copy_(torch.randn(search.log_alpha_a.shape, generator=generator) * 2.0)
        search.log_alpha_c.copy_(torch.randn(search.log_alpha_c.shape, generator=generator))
    return search


def make_code(space: SearchSpace, seed: int = 0) -> ArchCode:
    return decode(searched_supernet(space, seed), space)


# ------------------------------------------------------------------------------------ search space
def test_presets_describe_the_published_and_small_spaces() -> None:
    full = SearchSpace.preset("full")
    assert (full.num_blocks, full.num_depths, full.channel_mul, full.use_downsample) == (12, 4, 0.5, True)
    assert full.required_divisor == 32
    assert full.num_paths == 10
    tiny = SearchSpace.preset("tiny")
    assert tiny.num_blocks * tiny.num_depths < SearchSpace.preset("small").num_blocks * 4 < 12 * 4
    tiny.check_patch_size((64, 64, 64))  # the CPU demo patch fits the tiny space
    with pytest.raises(MedSegNASError, match="unknown DiNTS search space preset 'huge'; choose one of tiny"):
        SearchSpace.preset("huge")


def test_search_space_dict_round_trip_and_validation() -> None:
    space = SearchSpace(num_blocks=5, num_depths=3, channel_mul=0.25, use_downsample=False, spatial_dims=2)
    data = json.loads(json.dumps(space.to_dict()))
    assert SearchSpace.from_dict(data) == space
    with pytest.raises(MedSegNASError, match="unknown DiNTS search space field.*num_layers"):
        SearchSpace.from_dict({**data, "num_layers": 3})
    with pytest.raises(MedSegNASError, match="num_depths must be an integer from 1 to 5, got 7"):
        SearchSpace(num_depths=7)
    with pytest.raises(MedSegNASError, match="channel_mul must be a number >= 1/32"):
        SearchSpace(channel_mul=0.01)


def test_path_order_channels_and_ops_match_monai() -> None:
    space = SearchSpace(num_blocks=2, num_depths=4, channel_mul=0.25)
    supernet = space.build_supernet()
    assert [level_in for level_in, _ in space.path_levels] == supernet.arch_code2in
    assert [level_out for _, level_out in space.path_levels] == supernet.arch_code2out
    assert [space.channels(level) for level in range(4)] == supernet.filter_nums[1:5]
    assert space.op_names == ("skip", "conv 3x3x3", "P3D 3x3x1", "P3D 3x1x3", "P3D 1x3x3")
    assert supernet.log_alpha_c.shape == (2, 10, len(space.op_names))


def test_check_patch_size_says_what_to_use() -> None:
    full = SearchSpace.preset("full")
    full.check_patch_size((96, 96, 96))
    with pytest.raises(MedSegNASError) as info:
        full.check_patch_size((96, 96, 80))
    assert str(info.value) == (
        "patch size (96, 96, 80) is not divisible by 32 along axis 2 (80): DiNTS with 4 depths and "
        "downsampling needs multiples of 32; try (96, 96, 96)"
    )
    with pytest.raises(MedSegNASError, match=r"along axes 0 \(20\) and 1 \(70\).*try \(32, 64, 64\)"):
        full.check_patch_size((20, 70, 64))
    no_down = SearchSpace(num_blocks=4, num_depths=3, use_downsample=False)
    with pytest.raises(MedSegNASError, match="3 depths and no downsampling needs multiples of 8; try"):
        no_down.check_patch_size((12, 16, 16))
    with pytest.raises(MedSegNASError, match="has 2 sides; this 3D DiNTS space needs 3"):
        full.check_patch_size((96, 96))


def test_search_network_of_the_tiny_preset_runs() -> None:
    space = SearchSpace.preset("tiny")
    net = space.build_search_network(in_channels=1, num_classes=3)
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)
    assert decode(net).search_space == space  # a DiNTS around the supernet decodes too
    probs = path_probabilities(net)
    assert probs.shape == (space.num_blocks, space.num_paths)
    assert np.all((probs > 0) & (probs <= 1))


# ------------------------------------------------------------------------------------ decode
EQUIVALENCE_SPACES = [
    SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.125),
    SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.125),
    SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.125, use_downsample=False),
    SearchSpace(num_blocks=6, num_depths=3, channel_mul=0.125),
    SearchSpace(num_blocks=3, num_depths=2, channel_mul=0.125, spatial_dims=2),
    SearchSpace(num_blocks=3, num_depths=4, channel_mul=0.125),  # 1023 patterns a block; MONAI takes ~8 s
]


@pytest.mark.parametrize("space", EQUIVALENCE_SPACES, ids=lambda s: f"{s.num_blocks}x{s.num_depths}")
def test_decode_matches_monai(space: SearchSpace) -> None:
    search = searched_supernet(space, seed=space.num_blocks)
    ours = decode(search, space)
    node_a, arch_code_a, arch_code_c, arch_code_a_max = search.decode()
    np.testing.assert_array_equal(ours.node_a, node_a)
    np.testing.assert_array_equal(ours.arch_code_a, arch_code_a)
    np.testing.assert_array_equal(ours.arch_code_c, arch_code_c)
    np.testing.assert_array_equal(ours.arch_code_a_max, arch_code_a_max)
    assert ours.node_a.dtype == ours.arch_code_a.dtype == ours.arch_code_c.dtype == np.int64


@pytest.mark.slow
def test_decode_matches_monai_on_the_published_space() -> None:
    space = SearchSpace(num_blocks=12, num_depths=4, channel_mul=0.125)  # MONAI's decode: ~1.2 GB, ~15 s
    for seed in (0, 1):
        search = searched_supernet(space, seed)
        ours, theirs = decode(search, space), search.decode()
        for mine, monai in zip((ours.node_a, ours.arch_code_a, ours.arch_code_c), theirs[:3], strict=True):
            np.testing.assert_array_equal(mine, monai)


def test_decoded_blocks_fit_together() -> None:
    code = make_code(SearchSpace(num_blocks=6, num_depths=4, channel_mul=0.125), seed=3)
    levels = code.search_space.path_levels
    for block in range(6):
        active = np.flatnonzero(code.arch_code_a[block])
        reads = {levels[p][0] for p in active}
        writes = {levels[p][1] for p in active}
        assert reads == set(np.flatnonzero(code.node_a[block]))  # reads exactly what the previous block wrote
        assert writes == set(np.flatnonzero(code.node_a[block + 1]))


def test_decode_reads_the_space_from_the_supernet_and_refuses_diverged_weights() -> None:
    space = SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25, use_downsample=False)
    search = searched_supernet(space, seed=1)
    assert decode(search).search_space == space
    with pytest.raises(ValueError, match="num_blocks 4 vs 3"):
        decode(search, SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.25, use_downsample=False))
    with torch.no_grad():
        search.log_alpha_a[1, 2] = float("nan")
    with pytest.raises(MedSegNASError, match="NaN or infinity .*decode an earlier checkpoint"):
        decode(search)


@pytest.mark.parametrize(
    ("space", "patch"),
    [
        (SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.25), (32, 32, 32)),
        (SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25, use_downsample=False), (16, 24, 32)),
        (SearchSpace(num_blocks=3, num_depths=4, channel_mul=0.25), (32, 32, 64)),
        (SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25, spatial_dims=2), (32, 48)),
    ],
    ids=["4x3", "3x3-no-downsample", "3x4", "2d"],
)
def test_decoded_network_segments_a_patch(space: SearchSpace, patch: tuple[int, ...]) -> None:
    code = make_code(space, seed=7)
    space.check_patch_size(patch)
    net = code.network(in_channels=2, num_classes=3, channel_mul=0.25)
    used = set(net.dints_space.cell_tree.keys())
    assert used == {str((b, p)) for b, p, *_ in code.active_paths()}  # only the active paths were built
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *patch))
    assert out.shape == (1, 3, *patch)
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------ arch.json
def test_arch_json_round_trip_builds_the_same_network(tmp_path) -> None:
    code = make_code(SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.5), seed=2)
    code.extra.update(epoch=np.int64(40), val_dice=np.float32(0.75), run="search-20250101-000000-abc123")
    path = save_arch_json(code, tmp_path / "arch.json")

    data = json.loads(path.read_text())  # strict JSON, plain lists
    assert data["arch_code_a"] == code.arch_code_a.tolist()
    assert data["search_space"]["num_blocks"] == 4
    assert data["extra"] == {"epoch": 40, "val_dice": 0.75, "run": "search-20250101-000000-abc123"}
    assert sorted(os.listdir(tmp_path)) == ["arch.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a private mkstemp file

    loaded = load_arch_json(path)
    assert loaded.search_space == code.search_space
    for name in ("node_a", "arch_code_a", "arch_code_c", "arch_code_a_max"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(code, name))
    assert loaded.extra["epoch"] == 40

    original = code.network(in_channels=1, num_classes=2).state_dict()
    rebuilt_net = loaded.network(in_channels=1, num_classes=2)
    rebuilt = rebuilt_net.state_dict()
    assert list(rebuilt) == list(original)
    assert all(rebuilt[key].shape == original[key].shape for key in original)
    rebuilt_net.load_state_dict(original)  # retrained weights load into the network rebuilt from JSON


def test_arch_json_is_replaced_not_appended(tmp_path) -> None:
    path = tmp_path / "arch.json"
    first = make_code(SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25), seed=0)
    second = make_code(SearchSpace(num_blocks=5, num_depths=3, channel_mul=0.25), seed=1)
    save_arch_json(first, path)
    save_arch_json(second, path)
    assert load_arch_json(path).search_space.num_blocks == 5
    assert sorted(os.listdir(tmp_path)) == ["arch.json"]
    with pytest.raises(MedSegNASError, match="folder .*missing does not exist"):
        save_arch_json(first, tmp_path / "missing" / "arch.json")


def test_bad_arch_files_get_clear_errors(tmp_path) -> None:
    code = make_code(SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25), seed=4)
    good = code.to_dict()

    def write(name: str, data) -> str:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return str(path)

    with pytest.raises(MedSegNASError, match="missing.json does not exist"):
        load_arch_json(tmp_path / "missing.json")
    with pytest.raises(MedSegNASError, match=r"truncated.json: arch code is not valid JSON"):
        load_arch_json(write("truncated.json", code.to_json()[:50]))
    with pytest.raises(
        MedSegNASError, match=r"shape.json: arch code arch_code_a has shape \(2, 7\), expected \(3, 7\)"
    ):
        load_arch_json(write("shape.json", {**good, "arch_code_a": good["arch_code_a"][:2]}))
    with pytest.raises(
        MedSegNASError, match="ops.json: arch code arch_code_c must hold integers from 0 to 4"
    ):
        load_arch_json(write("ops.json", {**good, "arch_code_c": [[9] * 7] * 3}))
    with pytest.raises(MedSegNASError, match="other.json: not a DiNTS arch code"):
        load_arch_json(write("other.json", {**good, "format": "monai-bundle"}))

    # Hand-made codes (3 x 3 space; paths 0: 0->0 ... 6: 2->2). Block 1 reads level 2, which block 0
    # does not write: the network would feed it nothing. Refused by name.
    only_top, top_and_bottom = [1, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 1]
    dangling = {
        **good,
        "arch_code_a": [only_top, top_and_bottom, only_top],
        "node_a": [[1, 0, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]],
    }
    with pytest.raises(MedSegNASError, match=r"block 1 reads level\(s\) \[2\] that block 0 does not write"):
        ArchCode.from_dict(dangling)
    wrong_nodes = {
        **dangling,
        "arch_code_a": [only_top, only_top, only_top],
        "node_a": [[1, 0, 0]] * 3 + [[1, 1, 0]],
    }
    with pytest.raises(MedSegNASError, match="nodes.json: arch code node_a does not match its active paths"):
        load_arch_json(write("nodes.json", wrong_nodes))


# ------------------------------------------------------------------------------------ pictures
def svg_groups(path) -> dict[str, str]:
    """``id -> concatenated text`` of every SVG group with an id."""
    root = ET.parse(path).getroot()
    return {
        g.get("id"): "".join(t.text or "" for t in g.iter("{http://www.w3.org/2000/svg}text"))
        for g in root.iter("{http://www.w3.org/2000/svg}g")
        if g.get("id")
    }


@pytest.mark.parametrize(
    "space",
    [
        SearchSpace(num_blocks=12, num_depths=4, channel_mul=0.125),
        SearchSpace(num_blocks=3, num_depths=2, spatial_dims=2),
    ],
    ids=["12x4", "2d"],
)
def test_topology_picture_labels_every_active_path(tmp_path, space: SearchSpace) -> None:
    code = make_code(space, seed=5)
    code.extra["val_dice"] = 0.8123
    png = plot_topology(code, tmp_path / "topology.png", path_svg=tmp_path / "topology.svg")
    assert png.read_bytes()[:8] == PNG_MAGIC
    svg = tmp_path / "topology.svg"
    groups = svg_groups(svg)
    active = code.active_paths()
    assert active
    for block, path, _, _, op in active:
        assert groups[f"path-b{block}-p{path}"] == op
    labelled = {key for key in groups if key.startswith("path-b")}
    assert labelled == {f"path-b{b}-p{p}" for b, p, *_ in active}  # no label on an inactive path
    assert "val_dice 0.8123" in svg.read_text()
    assert sorted(os.listdir(tmp_path)) == ["topology.png", "topology.svg"]


def test_path_probability_heat_map(tmp_path) -> None:
    space = SearchSpace(num_blocks=4, num_depths=3, channel_mul=0.125)
    search = searched_supernet(space, seed=0)
    history = []
    for _ in range(5):
        history.append(path_probabilities(search))
        with torch.no_grad():
            search.log_alpha_a.mul_(1.5)
    png = plot_path_probabilities(history, tmp_path / "paths.png", steps=[10, 20, 30, 40, 50])
    assert png.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="3 steps given for 5 history records"):
        plot_path_probabilities(history, tmp_path / "bad.png", steps=[1, 2, 3])
    with pytest.raises(ValueError, match="got shapes"):
        plot_path_probabilities([history[0], history[1][:2]], tmp_path / "bad.png")
    with pytest.raises(MedSegNASError, match="does not exist"):
        plot_path_probabilities(history, tmp_path / "nowhere" / "paths.png")
    assert sorted(os.listdir(tmp_path)) == ["paths.png"]
