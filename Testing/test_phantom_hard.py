"""The ``abdomen-hard`` phantom task: thin and small labelled structures, four contrasts, variable geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from MedSegNASLib import cli
from MedSegNASLib.data import load_dataset
from MedSegNASLib.data.datasets import validate_dataset
from MedSegNASLib.data.phantom import PHANTOM_HARD_LABELS, generate_phantom_case
from scipy import ndimage

SIZE = 64


@pytest.fixture(scope="module")
def cases() -> list:
    return [generate_phantom_case(seed, SIZE, task="abdomen-hard") for seed in range(8)]


def test_hard_cases_are_deterministic_and_the_default_task_keeps_its_labels() -> None:
    a_image, a_label = generate_phantom_case(3, 32, task="abdomen-hard")
    b_image, b_label = generate_phantom_case(3, 32, task="abdomen-hard")
    assert np.array_equal(a_image.array, b_image.array) and np.array_equal(a_label.array, b_label.array)
    default_image, default_label = generate_phantom_case(3, 32)
    assert set(np.unique(default_label.array)) <= {0, 1, 2, 3, 4}
    assert [i.name for i in a_label.meta["labels"]] == [i.name for i in PHANTOM_HARD_LABELS]
    with pytest.raises(ValueError, match="unknown phantom task"):
        generate_phantom_case(3, 32, task="thorax")


def test_every_hard_structure_is_present_and_the_pancreas_and_veins_are_thin(cases) -> None:
    for image, label in cases:
        values = set(np.unique(label.array).tolist())
        assert {1, 2, 3, 4, 5, 6}.issubset(values), values
        spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        pancreas = label.array[0] == 5
        depth = ndimage.distance_transform_edt(pancreas, sampling=spacing)
        assert depth.max() < 12.0  # thin: no voxel deeper than 12 mm inside it
        assert pancreas.sum() < 0.05 * (label.array[0] == 1).sum()  # small next to the liver
        lesion = label.array[0] == 7
        if lesion.any():  # lesions sit in the liver: each touches liver voxels
            grown = ndimage.binary_dilation(lesion, iterations=1)
            assert (label.array[0][grown & ~lesion] == 1).any()
    assert sum((label.array == 7).any() for _, label in cases) >= 6


def test_contrasts_field_of_view_and_slices_vary(cases) -> None:
    contrasts = {image.meta["contrast"] for image, _ in cases}
    assert len(contrasts) >= 3, contrasts
    spacings = np.array([np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0)) for image, _ in cases])
    ratios = spacings[:, 2] / spacings[:, 0]
    assert ratios.max() - ratios.min() > 0.8 and spacings[:, 0].max() / spacings[:, 0].min() > 1.2
    for image, label in cases:
        hu, lab = image.array[0].astype(np.float32), label.array[0]
        fat = (lab == 0) & (ndimage.uniform_filter(hu, 3) > -130) & (ndimage.uniform_filter(hu, 3) < -70)
        if image.meta["contrast"] == "mr-t1":  # T1-like: vessels dark, the liver brighter than the spleen
            assert image.meta["modality"] == "MR-like"
            assert (
                hu[lab == 6].mean() < hu[lab == 1].mean() - 100 and hu[lab == 1].mean() > hu[lab == 2].mean()
            )
        else:
            assert image.meta["modality"] == "CT" and fat.any()
            if image.meta["contrast"] == "arterial":  # contrast in the arteries: vessels brightest
                assert hu[lab == 6].mean() > hu[lab == 1].mean() + 80


def test_phantom_cli_writes_a_hard_dataset_that_validates(tmp_path: Path, capsys) -> None:
    out = tmp_path / "hard"
    argv = ["phantom", str(out), "--task", "abdomen-hard", "--cases", "3", "--size", "32"]
    assert cli.main([*argv, "--test-cases", "1", "--unlabeled", "0"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "MedSegNASPhantomHard" and meta["phantom"]["task"] == "abdomen-hard"
    assert meta["labels"]["5"] == "pancreas" and meta["labels"]["7"] == "liver lesion"
    dataset = load_dataset(out)
    assert len(dataset.cases) == 3 and dataset.test[0].label is not None
    assert validate_dataset(dataset).ok
