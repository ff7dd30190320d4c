"""``medsegnas segment --box``: segment only inside a box, label map on the whole input grid.

A tiny UNet bundle (trained briefly on phantom cases, exported with ``export_bundle``) segments
one phantom case twice: the whole image, and only a box of it. Inside the box the labels must
be the whole image's (every window that covers a box voxel still runs, so the only allowed
difference is float32 rounding from other windows sharing a network call, as between batch
sizes in test_segment.py); outside it zeros; the output grid the input's; fewer windows run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
from MedSegNASLib.cli import main as medsegnas_main

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: Voxel corners (inclusive) of the box, on the 48^3 test images: one face on the image's edge.
BOX_LOW, BOX_HIGH = (4, 6, 30), (19, 21, 47)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    from MedSegNASLib.models.registry import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "medsegnas-home"))
    return tmp_path / "medsegnas-home"


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("box")
    images = sf.write_test_images(root / "images")
    bundle = sf.export_unet_bundle(root / "bundle", steps=100)
    return {"images": images, "bundle": bundle}


def segment(*args) -> int:
    return medsegnas_main(["segment", *map(str, args)])


def centres_inside(
    affine: np.ndarray, shape: tuple[int, ...], low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Mask of the voxels whose centre lies in the RAS box [low, high] (brute force)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    inside = np.all((ras >= low - 1e-4) & (ras <= high + 1e-4), axis=1)
    return inside.reshape(shape)


@pytest.mark.parametrize("view", ["lps", "oblique"])
def test_box_labels_equal_the_whole_image_inside_and_zero_outside(case, view, tmp_path, capsys) -> None:
    image = case["images"][view]
    full_path, box_path = tmp_path / "full.nii.gz", tmp_path / "box.nii.gz"
    assert segment(image, "--model", case["bundle"], "-o", full_path, "--device", "cpu") == 0
    full, full_affine = sf.read_labels(full_path)
    _, image_affine = sf.read_labels(image)

    # The RAS corners of the voxel centres BOX_LOW and BOX_HIGH, given in the order a user may.
    corner_a = image_affine[:3, :3] @ np.array(BOX_LOW) + image_affine[:3, 3]
    corner_b = image_affine[:3, :3] @ np.array(BOX_HIGH) + image_affine[:3, 3]
    box = ",".join(f"{v:.6f}" for v in (*corner_a, *corner_b))
    capsys.readouterr()
    assert segment(image, "--model", case["bundle"], "-o", box_path, "--device", "cpu", f"--box={box}") == 0
    log = capsys.readouterr().err
    ours, ours_affine = sf.read_labels(box_path)

    assert ours.shape == full.shape
    np.testing.assert_allclose(ours_affine, image_affine, atol=1e-4)
    np.testing.assert_allclose(ours_affine, full_affine, atol=1e-4)
    # The voxel box segmented: the smallest one holding every voxel centre inside the RAS box.
    low, high = np.minimum(corner_a, corner_b), np.maximum(corner_a, corner_b)
    centres = centres_inside(image_affine, full.shape, low, high)
    assert centres.sum() > 1000
    if view == "lps":  # axis-aligned: the voxel box is exactly the one the corners came from
        expected = np.zeros(full.shape, dtype=bool)
        expected[tuple(slice(a, b + 1) for a, b in zip(BOX_LOW, BOX_HIGH, strict=True))] = True
        np.testing.assert_array_equal(centres, expected)
    idx = np.argwhere(centres)
    region = tuple(slice(a, b + 1) for a, b in zip(idx.min(axis=0), idx.max(axis=0), strict=True))
    inside = np.zeros(full.shape, dtype=bool)
    inside[region] = True

    assert not ours[~inside].any(), "labels outside the box"
    assert np.count_nonzero(full[inside]) > 0.01 * inside.sum(), "the box holds too little organ to compare"
    agree = np.mean(ours[inside] == full[inside])
    assert agree >= 0.9999, agree
    for value in sorted(set(np.unique(full[inside])) - {0}):
        assert sf.dice(ours[inside], full[inside], int(value)) >= 0.999
    # Fewer windows ran than for the whole image.
    line = next(line for line in log.splitlines() if "windows reach it" in line)
    reached, total = (int(w) for w in line.split("; ")[-1].split()[:3:2])
    assert 0 < reached < total, line


def test_box_voxels_gives_the_box_of_the_same_voxels(case, tmp_path) -> None:
    image = case["images"]["lps"]
    _, affine = sf.read_labels(image)
    corners = [affine[:3, :3] @ np.array(c) + affine[:3, 3] for c in (BOX_LOW, BOX_HIGH)]
    by_mm, by_index = tmp_path / "mm.nii.gz", tmp_path / "index.nii.gz"
    box = ",".join(f"{v:.6f}" for v in itertools.chain(*corners))
    assert segment(image, "--model", case["bundle"], "-o", by_mm, "--device", "cpu", f"--box={box}") == 0
    voxels = ",".join(map(str, (*BOX_LOW, *(h + 1 for h in BOX_HIGH))))
    assert (
        segment(image, "--model", case["bundle"], "-o", by_index, "--device", "cpu", "--box-voxels", voxels)
        == 0
    )
    np.testing.assert_array_equal(sf.read_labels(by_mm)[0], sf.read_labels(by_index)[0])


def test_boxes_that_hold_no_voxel_are_refused_clearly(case, tmp_path, capsys) -> None:
    image = case["images"]["lps"]
    out = tmp_path / "out.nii.gz"
    run = ["--model", case["bundle"], "-o", out, "--device", "cpu"]
    assert segment(image, *run, "--box=5000,5000,5000,5100,5100,5100") == 1
    err = capsys.readouterr().err
    assert "--box 5000,5000,5000,5100,5100,5100 holds no voxel of the image" in err
    assert "48 x 48 x 48 voxels" in err and "RAS x " in err
    assert segment(image, *run, "--box=0,0,10,40,40,10") == 1
    assert "is empty along z" in capsys.readouterr().err
    assert segment(image, *run, "--box-voxels", "10,10,10,10,20,20") == 1
    assert "is empty" in capsys.readouterr().err
    assert segment(image, *run, "--box-voxels", "60,0,0,70,10,10") == 1
    assert "holds no voxel of the image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        segment(image, *run, "--box", "1,2,3")
    assert usage.value.code == 2
    assert "expected six comma-separated numbers, got '1,2,3'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        segment(image, *run, "--box=1,2,3,4,5,6", "--box-voxels", "1,2,3,4,5,6")
    assert "not allowed with argument" in capsys.readouterr().err
    assert not out.exists()
