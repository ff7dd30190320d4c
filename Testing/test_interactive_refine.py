"""Click refinement with the previous-mask input (RITM-style mask guidance).

The session tests use a hand-written network whose answer is known: a segment is kept where its
previous-mask channel says so, added near a positive click of it, removed near a negative click
(the background guidance channel), and, like a real network's noise, it also claims a bright
block of the image that nobody clicked. What a user sees: the clicked voxel and its neighbourhood
change in the clicked direction, everything else keeps its voxels, on an image stored LPS that
the model reads RAS (so the previous mask must go through both grids).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.interactive.clicks import nearest_voxel, parse_clicks, voxel_to_ras
from MedSegNASLib.interactive.export import (
    extra_channels,
    interactive_label_names,
    interactive_section,
    previous_mask_names,
)
from MedSegNASLib.interactive.guidance import interactive_training_input
from MedSegNASLib.interactive.session import (
    InteractiveModel,
    InteractiveSession,
    NearestLookup,
    keep_change_at_click,
    keep_change_near_click,
)

NAMES = interactive_label_names(PHANTOM_LABELS)  # background, liver, spleen, right kidney, left kidney
SEGMENTS = [name for name in NAMES if name != "background"]


class ClickFollower(torch.nn.Module):
    """Logits: background 0; segment s: ``6 * previous_s - 3 + 12 * guidance_s - 12 * guidance_background``.

    The liver also gets ``+10 * image``: the network "finds" any bright block, wherever it is.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        image = inputs[:, :1]
        guidance = inputs[:, 1 : 1 + len(NAMES)]
        previous = inputs[:, 1 + len(NAMES) :]
        assert previous.shape[1] == len(SEGMENTS)
        segments = 6 * previous - 3 + 12 * guidance[:, 1:] - 12 * guidance[:, :1]
        segments[:, :1] += 10 * image
        return torch.cat([torch.zeros_like(image), segments], dim=1)


class BoundaryDrift(ClickFollower):
    """The click follower whose answer also moves every segment's whole boundary by one voxel, out
    (``drift=1``) or in (``drift=-1``), as a trained network's answer drifts at faint boundaries."""

    def __init__(self, drift: int) -> None:
        super().__init__()
        self.drift = drift

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = super().forward(inputs)
        previous = inputs[:, 1 + len(NAMES) :]
        pool = torch.nn.functional.max_pool3d
        moved = pool(previous, 3, 1, 1) if self.drift > 0 else -pool(-previous, 3, 1, 1)
        logits[:, 1:] += 12 * (moved - previous)
        return logits


@pytest.fixture(params=["same spacing", "resampled"])
def session(request) -> InteractiveSession:
    """The model reads the image RAS, at its own spacing or resampled to another (masks go through both grids)."""
    return _session(ClickFollower(), resampled=request.param == "resampled")


def _session(network: torch.nn.Module, resampled: bool = False) -> InteractiveSession:
    from monai.transforms import Orientationd, Spacingd

    array = np.zeros((1, 32, 32, 32), dtype=np.float32)
    array[0, 26:31, 26:31, 26:31] = 1.0  # the bright block nobody clicks
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # stored LPS; the model's grid is RAS (i and j flipped)
    model = InteractiveModel(
        name="click follower",
        kind="local",
        network=network,
        label_names=NAMES,
        image_channels=1,
        geometry=[
            Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            *([Spacingd("image", pixdim=(2.5, 2.5, 3.5))] if resampled else []),
        ],
        region=(32, 32, 32),
        previous_mask=True,
    )
    session = InteractiveSession(model, Volume(array, lps), start="empty")
    seeded = np.zeros((32, 32, 32), dtype=bool)
    seeded[4:16, 4:16, 4:16] = True  # the liver as another tool left it
    session.seed("liver", seeded)
    return session


def _click(session: InteractiveSession, voxel: list[int], positive: bool) -> list:
    ras = voxel_to_ras(voxel, session.volume.affine)[0].tolist()
    return parse_clicks([{"label": "liver", "positive": positive, "ras": ras}])


def test_a_positive_click_grows_the_segment_there_and_nothing_else_changes(session):
    before = session.masks["liver"].copy()
    raw = ClickFollower()(torch.cat([torch.ones(1, 1, 2, 2, 2), torch.zeros(1, 9, 2, 2, 2)], dim=1))
    assert raw.argmax(dim=1).eq(1).all()  # left alone, the network claims the bright block

    session.update(_click(session, [18, 10, 10], positive=True), "liver")
    after = session.masks["liver"]
    assert after[18, 10, 10] and after[19, 10, 10] and after[17, 9, 11]  # the click and around it
    assert not before[18, 10, 10]
    assert np.array_equal(after & before, before)  # the seeded liver stays whole
    assert not after[26:31, 26:31, 26:31].any()  # the network's far-away answer is not taken
    assert np.array_equal(after[:, 20:], before[:, 20:])  # far from the click: unchanged
    added = np.argwhere(after & ~before)
    assert np.abs(added - [18, 10, 10]).max() <= 7  # the click's neighbourhood: about 12 mm (2 mm voxels)


def test_a_negative_click_removes_voxels_there_and_later_clicks_keep_earlier_edits(session):
    before = session.masks["liver"].copy()
    clicks = _click(session, [10, 10, 14], positive=False)
    session.update(clicks, "liver")
    cut = session.masks["liver"].copy()
    assert not cut[10, 10, 14] and not cut[10, 11, 15]
    assert cut[5, 5, 5] and cut[10, 10, 5]  # the seeded voxels far from the click stay
    assert not (cut & ~before).any()  # a negative click adds nothing

    clicks += _click(session, [18, 6, 6], positive=True)
    session.update(clicks, "liver")
    after = session.masks["liver"]
    assert after[18, 6, 6] and not after[10, 10, 14]  # the earlier cut survives the next click
    assert np.array_equal(after[:, :, 12:], cut[:, :, 12:])


def test_a_click_changes_the_segment_only_in_its_own_direction():
    """A negative click never adds voxels and a positive one never removes any, even where the
    network's answer also moves the boundary next to the click (the drift touches the click)."""
    grower = _session(BoundaryDrift(drift=1))
    before = grower.masks["liver"].copy()
    assert BoundaryDrift(1)(_inputs_of(before)).argmax(dim=1)[0, 16, 10, 10] == 1  # it would grow
    grower.update(_click(grower, [15, 10, 10], positive=False), "liver")
    after = grower.masks["liver"]
    assert not after[15, 10, 10] and before[15, 10, 10]  # the click took its voxel out
    assert not (after & ~before).any()  # and added nothing, though the network grew the face
    shrinker = _session(BoundaryDrift(drift=-1))
    before = shrinker.masks["liver"].copy()
    shrinker.update(_click(shrinker, [16, 10, 10], positive=True), "liver")
    after = shrinker.masks["liver"]
    assert after[16, 10, 10] and not before[16, 10, 10]
    assert not (before & ~after).any()  # a positive click removes nothing


def _inputs_of(liver: np.ndarray) -> torch.Tensor:
    """The network input of an empty image, no clicks, ``liver`` as the previous liver (model grid = input grid)."""
    inputs = torch.zeros((1, 1 + len(NAMES) + len(SEGMENTS), *liver.shape))
    inputs[0, 1 + len(NAMES)] = torch.from_numpy(liver.astype(np.float32))
    return inputs


def test_keep_change_at_click_takes_only_the_connected_change_at_the_click():
    before = np.zeros((20, 20, 20), dtype=bool)
    before[5:10, 5:10, 5:10] = True
    after = before.copy()
    after[10:12, 5:10, 5:10] = True  # grown at the click
    after[15:18, 15:18, 15:18] = True  # changed elsewhere
    after[5, 5, 5] = False  # and a hole far away
    kept = keep_change_at_click(before, after, (11, 7, 7))
    assert kept[10:12, 5:10, 5:10].all() and not kept[15:18, 15:18, 15:18].any() and kept[5, 5, 5]
    assert np.array_equal(keep_change_at_click(before, after, (0, 19, 0)), before)  # nothing there


def test_keep_change_near_click_measures_the_reach_in_millimetres():
    before = np.zeros((20, 20, 20), dtype=bool)
    after = np.ones((20, 20, 20), dtype=bool)  # the answer claims everything
    kept = keep_change_near_click(before, after, (10, 10, 10), spacing=(1.0, 1.0, 4.0), reach_mm=6.0)
    assert kept[16, 10, 10] and not kept[17, 10, 10]  # 6 mm and 7 mm along the 1 mm axis
    assert kept[10, 10, 11] and not kept[10, 10, 12]  # 4 mm and 8 mm along the 4 mm axis
    assert kept.sum() == sum(
        1 for i, j, k in np.ndindex(20, 20, 20) if (i - 10) ** 2 + (j - 10) ** 2 + (4 * (k - 10)) ** 2 <= 36
    )


def test_iterative_training_input_holds_the_models_own_result_and_a_click_in_its_error():
    from monai.networks.nets import UNet

    section = interactive_section(NAMES, 1, previous_mask=True)
    assert extra_channels(section) == 9 and previous_mask_names(section) == SEGMENTS
    torch.manual_seed(0)
    network = UNet(3, 1 + 9, 5, channels=(4, 8), strides=(2,), num_res_units=0)
    labels = torch.zeros((2, 1, 16, 16, 16), dtype=torch.long)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    labels[1, :, 2:6, 2:6, 2:6] = 2
    images = labels.float() / 2 + 0.1 * torch.randn((2, 1, 16, 16, 16))
    generator = np.random.default_rng(4)
    automatic = interactive_training_input(
        network, images, labels, NAMES, generator=generator, interact_probability=0.0, previous_mask=True
    )
    assert automatic.shape == (2, 10, 16, 16, 16) and not automatic[:, 1:].any()

    network.train()
    inputs = interactive_training_input(
        network,
        images,
        labels,
        NAMES,
        generator=np.random.default_rng(4),
        interact_probability=1.0,
        max_interactions=1,
        from_automatic_probability=1.0,
        previous_mask=True,
    )
    assert network.training  # restored
    with torch.no_grad():
        network.eval()
        own = network(automatic).argmax(dim=1)
    previous = inputs[:, 6:]
    for b in range(2):
        for index, name in enumerate(SEGMENTS):
            assert torch.equal(previous[b, index].bool(), own[b] == NAMES[name])
        guidance = inputs[b, 1:6]
        channel, *voxel = np.unravel_index(int(guidance.argmax()), guidance.shape)
        assert guidance.max() == 1.0
        truth = int(labels[b, 0][tuple(voxel)])
        predicted = int(own[b][tuple(voxel)])
        if channel == 0:  # negative: a false positive of some segment
            assert predicted != 0 and truth != predicted
        else:  # positive: a missed voxel of that segment
            assert truth == channel and predicted != channel


def test_a_click_the_network_ignores_still_moves_its_voxel_along_the_models_ranking():
    from MedSegNASLib.interactive.session import click_consistent

    mask = np.zeros((21, 21, 21), dtype=bool)
    mask[:, :, :8] = True
    # The network's probability falls off across the segment's face (0.5 between depths 7 and 8);
    # the voxel clicked at depth 10 is 0.08 likely: the network said no, the user says yes.
    probability = np.broadcast_to(1 / (1 + np.exp(np.arange(21) - 7.5)), (21, 21, 21)).copy()
    added = click_consistent(mask, probability, (10, 10, 10), positive=True, radius=3)
    assert added[10, 10, 10] and added[10, 10, 8] and added[10, 12, 10]
    assert not added[10, 10, 11]  # less likely than the clicked voxel: left out
    assert not added[10, 17, 9] and np.array_equal(added[:, :, :8], mask[:, :, :8])  # only near the click
    removed = click_consistent(mask, probability, (10, 10, 6), positive=False, radius=3)
    assert not removed[10, 10, 6] and not removed[10, 10, 7] and removed[10, 10, 5]
    assert removed[2, 2, 6]  # out of reach
    assert click_consistent(mask, probability, (10, 10, 2), positive=True, radius=3) is mask  # already in


def test_nearest_lookup_between_grids_maps_every_voxel_as_the_affines_say():
    """The per-axis lookup of axis-aligned grids (any flip, axis order, spacing, offset) picks the same
    voxels as mapping each voxel through the affine, and a rotated grid takes the per-voxel path."""
    rng = np.random.default_rng(0)

    def per_voxel(to_source, start, shape, source, source_start):
        grid = np.indices(shape).reshape(3, -1).T + np.asarray(start)
        voxels = nearest_voxel(grid @ to_source[:3, :3].T + to_source[:3, 3]) - np.asarray(source_start)
        inside = np.all((voxels >= 0) & (voxels < np.array(source.shape)), axis=1)
        out = np.zeros(int(np.prod(shape)), source.dtype)
        out[inside] = source[tuple(voxels[inside].T)]
        return out.reshape(shape), inside.reshape(shape)

    for _ in range(100):
        to_source = np.eye(4)
        to_source[:3, :3] = 0
        for row, column in enumerate(rng.permutation(3)):
            to_source[row, column] = rng.choice([-1, 1]) * rng.choice([0.5, 1.0, 1.5, 2.0, 0.7, 1 / 3])
        to_source[:3, 3] = rng.uniform(-20, 40, 3).round(int(rng.integers(0, 3)))
        source = rng.random(tuple(rng.integers(5, 30, 3))) > 0.5
        start, source_start = rng.integers(-5, 10, 3), rng.integers(0, 3, 3)
        shape = tuple(int(n) for n in rng.integers(1, 25, 3))
        rotated = to_source + np.eye(4, k=1) * 0.01  # off-axis terms: not axis-aligned
        for matrix in (to_source, rotated):
            lookup = NearestLookup(matrix, start, shape, source.shape, source_start=source_start)
            expected, inside = per_voxel(matrix, start, shape, source, source_start)
            assert np.array_equal(lookup.gather(source), expected) and np.array_equal(lookup.inside, inside)


def test_interactive_samples_hold_up_to_the_configured_number_of_clicks():
    """``interactive_max_clicks`` (the training config) bounds the click sequence of a sample: with
    the automatic start, a sample of n clicks runs the network n times (its start, then after each
    click but the last); sequences of every length 1..n occur."""
    from MedSegNASLib.errors import MedSegNASError
    from MedSegNASLib.nas.train import TrainConfig
    from monai.networks.nets import UNet

    for bad in (0, 2.5, "3"):
        with pytest.raises(MedSegNASError, match="interactive_max_clicks must be an integer >= 1"):
            TrainConfig.from_preset("small", {"interactive_max_clicks": bad})
    with pytest.raises(MedSegNASError, match=r"interactive_probability must be a number in \[0, 1\]"):
        TrainConfig.from_preset("small", {"interactive_probability": 1.5})
    assert TrainConfig.from_preset("small", {"interactive_max_clicks": 8}).interactive_max_clicks == 8

    torch.manual_seed(0)
    network = UNet(3, 1 + 9, 5, channels=(4, 8), strides=(2,), num_res_units=0)
    calls: list[int] = []
    network.register_forward_hook(lambda module, args, output: calls.append(1))
    labels = torch.zeros((1, 1, 16, 16, 16), dtype=torch.long)
    labels[:, :, 4:12, 4:12, 4:12] = 1
    images = labels.float() + 0.1 * torch.randn((1, 1, 16, 16, 16))
    seen = set()
    for seed in range(40):
        calls.clear()
        interactive_training_input(
            network, images, labels, NAMES, generator=np.random.default_rng(seed), interact_probability=1.0,
            max_interactions=6, from_automatic_probability=1.0, previous_mask=True,
        )  # fmt: skip
        seen.add(len(calls))
    assert seen == {1, 2, 3, 4, 5, 6}
