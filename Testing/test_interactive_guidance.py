"""Clicks, DeepEdit guidance channels and the simulated user (issue 13, part 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.interactive.clicks import (
    deepedit_points,
    parse_clicks,
    ras_to_voxel,
    read_clicks,
    voxel_to_ras,
)
from MedSegNASLib.interactive.guidance import crop_points, guidance_channels, interactive_training_input
from MedSegNASLib.interactive.simulate import clicks_to_reach, dice, next_click

LABELS = {"spleen": 1, "background": 0}
# An LPS-stored image seen in RAS: i runs to the left, j to the back, 2 mm slices.
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])


def test_clicks_file_round_trip_and_bad_items(tmp_path):
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps([{"label": "spleen", "positive": False, "ras": [1, 2.5, 3]}]))
    (click,) = read_clicks(path)
    assert (click.label, click.positive, click.ras) == ("spleen", False, (1.0, 2.5, 3.0))
    for bad, words in [
        ({"label": "", "positive": True, "ras": [0, 0, 0]}, "'label'"),
        ({"label": "a", "positive": "yes", "ras": [0, 0, 0]}, "'positive'"),
        ({"label": "a", "positive": True, "ras": [0, 0]}, "'ras'"),
        ({"label": "a", "positive": True, "ras": [0, float("nan"), 0]}, "'ras'"),
    ]:
        with pytest.raises(MedSegNASError, match=words):
            parse_clicks([bad])
    with pytest.raises(MedSegNASError, match="does not exist"):
        read_clicks(tmp_path / "missing.json")


def test_ras_clicks_land_on_the_voxel_the_affine_says():
    voxel = np.array([[3, 7, 4]])
    ras = voxel_to_ras(voxel, AFFINE)
    assert np.allclose(ras, [[17.0, 23.0, 3.0]])
    assert np.allclose(ras_to_voxel(ras, AFFINE), voxel)
    # A click 0.4 voxel off the centre still selects that voxel (nearest centre, not truncation).
    clicks = parse_clicks(
        [
            {"label": "spleen", "positive": True, "ras": [17.4, 22.6, 3.7]},
            {"label": "spleen", "positive": False, "ras": [10.0, 30.0, -5.0]},
        ]
    )
    points = deepedit_points(clicks, LABELS, AFFINE)
    assert points == {"spleen": [[3, 7, 4]], "background": [[10, 0, 0]]}
    with pytest.raises(MedSegNASError, match="liver"):
        deepedit_points(
            parse_clicks([{"label": "liver", "positive": True, "ras": [0, 0, 0]}]), LABELS, AFFINE
        )


def test_guidance_channels_are_monai_gaussians_in_label_order():
    channels = guidance_channels((24, 20, 16), {"spleen": [[5, 6, 7]], "background": []})
    assert channels.shape == (2, 24, 20, 16) and channels.dtype == np.float32
    assert channels[0].max() == pytest.approx(1.0) and channels[0][5, 6, 7] == pytest.approx(1.0)
    assert channels[0].min() == pytest.approx(0.0)
    assert not channels[1].any()  # no background click: a zero channel
    # Gaussian of sigma 3 voxels: at 3 voxels the signal is exp(-1/2) of the peak (before rescaling
    # by min..max, where min is ~0 this far from the point).
    assert channels[0][8, 6, 7] == pytest.approx(np.exp(-0.5), abs=0.02)
    assert channels[0][5, 6, 7] > channels[0][6, 6, 7] > channels[0][9, 6, 7]


def _monai_guidance(shape, points, sigma=3):
    from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd

    signal = AddGuidanceSignalDeepEditd(keys="image", guidance="guidance", sigma=sigma, number_intensity_ch=1)
    data = {
        "image": np.zeros((1, *shape), dtype=np.float32),
        "guidance": {k: [list(p) for p in v] for k, v in points.items()},
    }
    return np.asarray(signal(data)["image"][1:], dtype=np.float32)


def test_guidance_channels_equal_monais_transform_for_any_clicks():
    """The click-local computation gives MONAI's AddGuidanceSignalDeepEditd output: exactly for a lone
    click, to float rounding for overlapping ones, with its clamping, skipping and duplicates."""
    rng = np.random.default_rng(3)
    shape = (40, 33, 28)
    lone = {"liver": [[20, 1, 27]], "spleen": [], "background": [[0, 0, 0]]}
    assert np.array_equal(guidance_channels(shape, lone), _monai_guidance(shape, lone))
    for _ in range(5):
        points = {
            "liver": [[int(v) for v in rng.integers(-3, 45, 3)] for _ in range(int(rng.integers(1, 6)))],
            "spleen": [[int(v) for v in rng.integers(0, 28, 3)] for _ in range(int(rng.integers(0, 3)))],
            "background": [[5, 5, 5], [5, 5, 5], [6, 5, 5]],  # a duplicate counts once, as in MONAI
        }
        ours, theirs = guidance_channels(shape, points, 2), _monai_guidance(shape, points, 2)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-6
    # a grid smaller than the kernel: the minimum is not zero and the rescaling must use it
    small = {"liver": [[1, 2, 0], [3, 0, 1]]}
    assert np.abs(guidance_channels((4, 3, 2), small) - _monai_guidance((4, 3, 2), small)).max() < 1e-6


def test_local_regions_drop_clicks_outside_instead_of_clamping_them():
    points = {"spleen": [[5, 6, 7], [40, 6, 7]], "background": [[-1, 0, 0]]}
    assert crop_points(points, (4, 4, 4), (16, 16, 16)) == {"spleen": [[1, 2, 3]], "background": []}


def _blob(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_simulated_user_clicks_the_centre_of_the_largest_error():
    truth = _blob((32, 32, 32), (10, 10, 10), 6) | _blob((32, 32, 32), (24, 24, 24), 3)
    prediction = _blob((32, 32, 32), (24, 24, 24), 3) | _blob((32, 32, 32), (24, 8, 24), 4)
    click = next_click(prediction, truth)
    assert click.positive and click.voxel == (10, 10, 10)  # the missed sphere outweighs the extra one
    click = next_click(prediction | truth & ~_blob((32, 32, 32), (10, 10, 10), 2), truth)
    assert not click.positive and click.voxel == (24, 8, 24)  # now the false positive is largest
    assert next_click(truth, truth) is None
    assert dice(prediction, truth) == pytest.approx(
        2 * (prediction & truth).sum() / (prediction.sum() + truth.sum())
    )
    assert clicks_to_reach([0.5, 0.86, 0.91], 0.85, 20) == 1
    assert clicks_to_reach([0.5, 0.86, 0.89], 0.90, 20) == 20


class _AllBackground(torch.nn.Module):
    def forward(self, x):
        return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :1])], dim=1)


def test_training_clicks_fall_in_the_missed_region():
    torch.manual_seed(0)
    label = torch.from_numpy(_blob((24, 24, 24), (12, 12, 12), 5)).float()[None, None]
    images = torch.rand(1, 1, 24, 24, 24)
    inputs = interactive_training_input(
        _AllBackground(), images, label, LABELS, generator=np.random.default_rng(0), interact_probability=1.0
    )
    assert inputs.shape == (1, 3, 24, 24, 24)
    assert torch.equal(inputs[:, :1], images)
    peak = np.unravel_index(int(inputs[0, 1].argmax()), (24, 24, 24))
    assert label[0, 0][peak] == 1  # the spleen click is inside the missed spleen
    automatic = interactive_training_input(
        _AllBackground(), images, label, LABELS, generator=np.random.default_rng(0), interact_probability=0.0
    )
    assert not automatic[:, 1:].any()
