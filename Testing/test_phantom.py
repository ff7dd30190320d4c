"""Phantom datasets: what ``medsegnas phantom`` writes is a valid, CT-like, reproducible MSD dataset.

Everything is checked on the written files, read back with the project's image reader, as a
user preparing a dataset would check it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from MedSegNASLib.data.datasets import load_dataset, validate_dataset
from MedSegNASLib.data.io import read_volume
from MedSegNASLib.data.phantom import (
    PHANTOM_LABELS,
    generate_phantom_case,
    phantom_case_seed,
    write_phantom_dataset,
)

#: Mean HU expected inside each organ's mask (non-contrast liver and spleen, enhanced kidneys,
#: allowing for partial volume at the organ borders of a coarse grid).
ORGAN_HU_RANGES = {
    "liver": (30.0, 95.0),
    "spleen": (20.0, 85.0),
    "right kidney": (90.0, 220.0),
    "left kidney": (90.0, 220.0),
}


def medsegnas(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the real ``medsegnas`` command line in a fresh Python process."""
    return subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cli_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("phantom") / "ds"
    result = medsegnas(
        "phantom", str(out), "--cases", "4", "--size", "48", "--unlabeled", "2", "--test-cases", "1"
    )
    return out, result


def test_cli_writes_msd_dataset_json(cli_dataset) -> None:
    out, result = cli_dataset
    assert result.returncode == 0, result.stderr
    assert str(out / "dataset.json") in result.stdout
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {
        "0": "background",
        "1": "liver",
        "2": "spleen",
        "3": "right kidney",
        "4": "left kidney",
    }
    assert meta["numTraining"] == len(meta["training"]) == 4
    assert meta["numTest"] == len(meta["test"]) == 1
    assert len(meta["unlabeled"]) == 2
    assert meta["label_colors"]["1"] == [221, 130, 101]
    for key in ("name", "description", "reference", "licence"):
        assert meta[key]
    listed = [e["image"] for e in meta["training"]] + [e["label"] for e in meta["training"]]
    listed += [e["image"] for e in meta["test"]] + [e["label"] for e in meta["test"]] + meta["unlabeled"]
    for relative in listed:
        assert (out / relative).is_file(), relative
    assert {p.parent.name for p in map(Path, listed)} == {
        "imagesTr",
        "labelsTr",
        "imagesTs",
        "labelsTs",
        "imagesUnlabeled",
    }
    assert len(set(Path(p).name for p in listed)) == 4 + 1 + 2  # image and label share a name
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"


def test_labels_align_with_images_and_organs_are_ct_like(cli_dataset) -> None:
    out, _ = cli_dataset
    meta = json.loads((out / "dataset.json").read_text())
    names = {int(v): n for v, n in meta["labels"].items()}
    for entry in meta["training"]:
        image = read_volume(out / entry["image"])
        label = read_volume(out / entry["label"])
        assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
        assert image.spatial_shape == label.spatial_shape == (48, 48, 48)
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)

        spacing = image.spacing
        assert spacing[2] / spacing[0] > 1.3, f"slices should be thicker than in-plane: {spacing}"
        assert abs(spacing[0] - spacing[1]) < 1e-3
        direction = np.abs(image.direction)
        off_axis = direction - np.diag(np.diag(direction))
        assert off_axis.max() > np.sin(np.deg2rad(1.0)), f"affine should be oblique: {image.direction}"

        hu = image.array[0].astype(np.float64)
        labels = label.array[0]
        present = {int(v) for v in np.unique(labels)} - {0}
        assert present <= set(names) and len(present) >= 3, present
        for value in present:
            low, high = ORGAN_HU_RANGES[names[value]]
            mean = hu[labels == value].mean()
            assert low <= mean <= high, f"{entry['label']}: {names[value]} mean {mean:.1f} HU"
        corners = hu[[0, 0, -1, -1], [0, -1, 0, -1], :]
        assert corners.mean() < -900, "air around the body"
        assert hu.max() > 300, "bone is present"
        assert ((hu > -150) & (hu < -50)).mean() > 0.01, "fat is present"
        assert ((hu > -1024) & (hu < -600)).any() and hu.min() >= -1024


def test_written_dataset_validates(cli_dataset) -> None:
    out, _ = cli_dataset
    report = validate_dataset(load_dataset(out))
    assert report.ok and not report.warnings, report.summary_lines()
    assert report.label_counts == {0: 5, 1: 5, 2: 5, 3: 5, 4: 5}  # 4 training + 1 labelled test case
    check = medsegnas("dataset", "check", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK" in check.stdout.splitlines()[-1]


def test_same_seed_same_case_other_seed_other_case() -> None:
    image_a, label_a = generate_phantom_case(11, 32)
    image_b, label_b = generate_phantom_case(11, 32)
    assert image_a.array.tobytes() == image_b.array.tobytes()
    assert label_a.array.tobytes() == label_b.array.tobytes()
    np.testing.assert_array_equal(image_a.affine, image_b.affine)
    image_c, label_c = generate_phantom_case(12, 32)
    assert not np.array_equal(image_a.array, image_c.array)
    assert not np.array_equal(label_a.array, label_c.array)
    assert not np.allclose(image_a.affine, image_c.affine)
    unlabelled, none = generate_phantom_case(11, 32, labelled=False)
    assert none is None and unlabelled.array.tobytes() == image_a.array.tobytes()


def test_seed_is_the_same_patient_at_every_size() -> None:
    small, _ = generate_phantom_case(4, 32)
    large, _ = generate_phantom_case(4, 48)
    np.testing.assert_allclose(small.spacing * 32, large.spacing * 48, rtol=1e-9)  # same field of view
    np.testing.assert_allclose(small.direction, large.direction, atol=1e-12)


def test_every_organ_present_at_32_voxels() -> None:
    for seed in range(25):
        image, label = generate_phantom_case(seed, 32)
        assert image.array.shape == label.array.shape == (1, 32, 32, 32)
        counts = np.bincount(label.array.ravel(), minlength=len(PHANTOM_LABELS))
        assert len(counts) == len(PHANTOM_LABELS), f"seed {seed}: unexpected values"
        assert (counts[1:] >= 8).all(), f"seed {seed}: organ voxel counts {counts[1:]}"


def test_64_cube_is_generated_in_well_under_a_second() -> None:
    generate_phantom_case(0, 32)  # warm-up: first scipy calls load code
    best = float("inf")
    for seed in (1, 2):
        start = time.perf_counter()
        generate_phantom_case(seed, 64)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"{best:.2f} s"


def test_case_content_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    small = write_phantom_dataset(tmp_path / "a", cases=2, size=24, unlabeled=1, test_cases=0, seed=3)
    large = write_phantom_dataset(tmp_path / "b", cases=3, size=24, unlabeled=1, test_cases=1, seed=3)
    small_meta, large_meta = json.loads(small.read_text()), json.loads(large.read_text())
    for a, b in zip(small_meta["training"], large_meta["training"], strict=False):
        assert a == b
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                read_volume(small.parent / a[key]).array, read_volume(large.parent / b[key]).array
            )
    # The first unlabeled image is the same case, whatever its number in each dataset.
    np.testing.assert_array_equal(
        read_volume(small.parent / small_meta["unlabeled"][0]).array,
        read_volume(large.parent / large_meta["unlabeled"][0]).array,
    )
    other_seed = write_phantom_dataset(tmp_path / "c", cases=1, size=24, unlabeled=0, test_cases=0, seed=4)
    assert not np.array_equal(
        read_volume(other_seed.parent / "imagesTr/phantom_000.nii.gz").array,
        read_volume(small.parent / "imagesTr/phantom_000.nii.gz").array,
    )


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--size", "8"], "--size: must be at least 16"),
        (["--size", "1000"], "--size: must be at most"),
        (["--cases", "0"], "--cases: must be at least 1"),
        (["--unlabeled", "-1"], "--unlabeled: must be at least 0"),
        (["--seed", "x"], "--seed: expected an integer"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], complaint: str) -> None:
    result = medsegnas("phantom", str(tmp_path / "ds"), *args)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert not (tmp_path / "ds").exists()


def test_refuses_to_overwrite_another_dataset(tmp_path: Path) -> None:
    foreign = tmp_path / "Task09_Spleen"
    foreign.mkdir()
    original = json.dumps({"name": "Spleen", "labels": {"0": "background", "1": "spleen"}, "training": []})
    (foreign / "dataset.json").write_text(original)
    result = medsegnas("phantom", str(foreign), "--cases", "1", "--size", "16", "--unlabeled", "0")
    assert result.returncode == 1
    assert "not a MedSegNAS phantom" in result.stderr and str(foreign) in result.stderr
    assert (foreign / "dataset.json").read_text() == original
    assert not (foreign / "imagesTr").exists()


def _wait_for_progress(events: Path, step: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.exists():
            for line in events.read_text().splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                if event.get("type") == "progress" and event["step"] >= step:
                    return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no progress event with step >= {step} within {timeout} s")


def test_sigterm_stops_between_cases_and_resume_skips_written_ones(tmp_path: Path) -> None:
    import torch

    out, run = tmp_path / "ds", tmp_path / "run"
    args = ["phantom", str(out), "--cases", "30", "--size", "32", "--unlabeled", "0", "--test-cases", "0"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "MedSegNASLib.cli", *args, "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_progress(run / "events.jsonl", 2, worker)
        os.kill(worker.pid, signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 3, stderr  # cancelled after saving its state
    assert json.loads((run / "status.json").read_text())["state"] == "cancelled"
    assert not (out / "dataset.json").exists(), "an unfinished dataset has no dataset.json"
    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["done"]
    assert 2 <= len(done) < 30
    written = sorted(p.name for p in (out / "imagesTr").iterdir())
    assert written == [f"{case}.nii.gz" for case in done], "stopped right after a checkpointed case"
    stamps = {name: (out / "imagesTr" / name).stat().st_mtime_ns for name in written}

    resumed = medsegnas(*args, "--run-dir", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {len(done)} of 30 cases already written" in resumed.stderr
    for name, stamp in stamps.items():
        assert (out / "imagesTr" / name).stat().st_mtime_ns == stamp, f"{name} was generated again"
    dataset = load_dataset(out)
    assert len(dataset.cases) == 30 and all(p.is_file() for case in dataset.cases for p in case.files())
    for index in (0, 29):  # one case from before the stop, one from after the resume
        expected, _ = generate_phantom_case(phantom_case_seed(0, "training", index), 32)
        np.testing.assert_array_equal(read_volume(dataset.cases[index].images[0]).array, expected.array)
