"""Reading and validating datasets: MSD dataset.json, Auto3DSeg datalists, folds.

Broken datasets are real copies of a phantom dataset with one thing broken, as users break
them: a deleted file, a label saved on another grid, a stray label value, a hand-edited JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from MedSegNASLib.data.datasets import (
    DatasetCase,
    load_dataset,
    split_folds,
    train_val_split,
    validate_dataset,
)
from MedSegNASLib.data.io import read_volume, write_volume
from MedSegNASLib.data.phantom import write_phantom_dataset
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.errors import DatasetError


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "phantom"
    write_phantom_dataset(out, cases=3, size=32, unlabeled=1, test_cases=1, seed=7)
    return out


@pytest.fixture
def copy(phantom_dataset: Path, tmp_path: Path) -> Path:
    """A fresh copy of the phantom dataset for a test to break."""
    return Path(shutil.copytree(phantom_dataset, tmp_path / "copy"))


def edit_json(folder: Path, change) -> None:
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def problems_of(dataset_folder: Path, **kwargs) -> list[str]:
    """The problems ``validate_dataset`` raises for a dataset, asserting that it raises."""
    with pytest.raises(DatasetError) as caught:
        validate_dataset(load_dataset(dataset_folder), **kwargs)
    message = str(caught.value)
    problems = caught.value.problems
    for problem in problems:
        assert problem in message
    return problems


def medsegnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", *args], capture_output=True, text=True, timeout=120
    )


# -- reading -------------------------------------------------------------------------------------


def test_reads_msd_dataset_json(phantom_dataset: Path) -> None:
    dataset = load_dataset(phantom_dataset)  # the folder works as well as the file
    assert dataset.path == phantom_dataset / "dataset.json"
    assert dataset.format == "msd" and dataset.name == "MedSegNASPhantom"
    assert dataset.modalities == ["CT"]
    assert [(i.value, i.name) for i in dataset.labels] == [
        (0, "background"),
        (1, "liver"),
        (2, "spleen"),
        (3, "right kidney"),
        (4, "left kidney"),
    ]
    np.testing.assert_allclose(dataset.labels[1].color, np.array([221, 130, 101]) / 255)
    assert len(dataset.cases) == 3 and len(dataset.test) == 1 and len(dataset.unlabeled) == 1
    for case in dataset.cases:
        assert case.images[0].is_absolute() and case.images[0].is_file()
        assert case.label is not None and case.label.parent.name == "labelsTr"
        assert case.label.name == case.images[0].name and case.name.startswith("phantom_")
    assert dataset.test[0].images[0].parent.name == "imagesTs"
    assert dataset.test[0].label is not None and dataset.test[0].label.parent.name == "labelsTs"
    assert dataset.unlabeled[0].images[0].parent.name == "imagesUnlabeled"


def test_intact_dataset_validates_and_summarises(phantom_dataset: Path) -> None:
    report = validate_dataset(load_dataset(phantom_dataset / "dataset.json"))
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.checked_cases == 3 and report.shapes == [(32, 32, 32)] * 3
    assert all(s[2] > s[0] for s in report.spacings)
    summary = "\n".join(report.summary_lines())
    assert "3 training (3 labelled)" in summary and "32x32x32" in summary and "1 liver" in summary


def test_invalid_json_says_where(copy: Path) -> None:
    text = (copy / "dataset.json").read_text()
    (copy / "dataset.json").write_text(text.replace('"training": [', '"training": [,', 1))
    with pytest.raises(DatasetError, match=r"dataset\.json is not valid JSON \(line \d+, column \d+"):
        load_dataset(copy)
    result = medsegnas("dataset", "check", str(copy))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_required_keys_are_named(copy: Path) -> None:
    edit_json(copy, lambda d: (d.pop("labels"), d.pop("training")))
    with pytest.raises(DatasetError, match=r"lacks required MSD key\(s\) 'training', 'labels'"):
        load_dataset(copy)
    (copy / "dataset.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="neither an MSD dataset.json nor a MONAI datalist"):
        load_dataset(copy)


def test_malformed_entries_are_all_listed(copy: Path) -> None:
    def damage(data: dict) -> None:
        data["training"][0].pop("label")
        data["training"][1] = {"label": "labelsTr/x.nii.gz"}
        data["labels"]["5"] = ["a", "b"]

    edit_json(copy, damage)
    with pytest.raises(DatasetError) as caught:
        load_dataset(copy)
    message = str(caught.value)
    assert "3 problems" in message
    assert "training[0] has no 'label'" in message
    assert "training[1] has no 'image'" in message
    assert "'labels' entry '5'" in message


# -- validation: each problem, named with its file ---------------------------------------------


def test_missing_files_are_all_listed(copy: Path) -> None:
    (copy / "imagesTr" / "phantom_001.nii.gz").unlink()
    (copy / "labelsTr" / "phantom_002.nii.gz").unlink()
    (copy / "imagesTs" / "phantom_003.nii.gz").unlink()
    problems = problems_of(copy)
    assert len(problems) == 3
    assert "image file not found: imagesTr/phantom_001.nii.gz" in problems[0]
    assert "label file not found: labelsTr/phantom_002.nii.gz" in problems[1]
    assert problems[2].startswith("test case 'phantom_003'")

    result = medsegnas("dataset", "check", str(copy))
    assert result.returncode == 1
    for name in ("imagesTr/phantom_001.nii.gz", "labelsTr/phantom_002.nii.gz", "imagesTs/phantom_003.nii.gz"):
        assert name in result.stdout
    assert "3 error(s)" in result.stderr


def _rewrite_label(path: Path, change) -> None:
    label = read_volume(path)
    write_volume(change(label), path)


def test_label_on_another_grid_is_detected(copy: Path) -> None:
    def shift(label: Volume) -> Volume:
        affine = label.affine.copy()
        affine[:3, 3] += [4.0, 0.0, 0.0]
        return Volume(label.array, affine)

    _rewrite_label(copy / "labelsTr" / "phantom_000.nii.gz", shift)
    _rewrite_label(
        copy / "labelsTr" / "phantom_001.nii.gz", lambda v: Volume(v.array[:, :, :, :30], v.affine)
    )
    problems = problems_of(copy)
    assert len(problems) == 2
    assert (
        "label labelsTr/phantom_000.nii.gz is not on the grid of image imagesTr/phantom_000.nii.gz"
        in problems[0]
    )
    assert "origin differs by up to 4 mm" in problems[0]
    assert "labelsTr/phantom_001.nii.gz" in problems[1] and "shape 32x32x30 vs 32x32x32" in problems[1]


def test_undeclared_label_value_names_value_and_file(copy: Path) -> None:
    def add_seven(label: Volume) -> Volume:
        array = label.array.copy()
        array[0, 10:12, 10:12, 10:12] = 7
        return Volume(array, label.affine)

    _rewrite_label(copy / "labelsTr" / "phantom_002.nii.gz", add_seven)
    (problem,) = problems_of(copy)
    assert problem.startswith("label file labelsTr/phantom_002.nii.gz contains value(s) 7 ")
    assert "does not declare" in problem
    # Reading only headers skips the value check.
    assert validate_dataset(load_dataset(copy), check_labels=False).ok


def test_declared_label_never_present_is_a_warning(copy: Path) -> None:
    for path in [*(copy / "labelsTr").iterdir(), *(copy / "labelsTs").iterdir()]:
        _rewrite_label(path, lambda v: Volume(np.where(v.array == 2, 0, v.array).astype(np.uint8), v.affine))
    report = validate_dataset(load_dataset(copy))
    assert report.ok
    # 3 training label maps and the labelled test case's
    assert report.warnings == ["label 2 'spleen' is declared but absent from all 4 label file(s) checked"]


def test_no_training_cases_is_an_error_and_one_case_a_warning(copy: Path) -> None:
    edit_json(copy, lambda d: d.update(training=[], numTraining=0))
    assert problems_of(copy) == ["dataset.json lists no training cases"]
    edit_json(
        copy,
        lambda d: d.update(
            training=[{"image": "imagesTr/phantom_000.nii.gz", "label": "labelsTr/phantom_000.nii.gz"}]
        ),
    )
    report = validate_dataset(load_dataset(copy))
    assert report.ok
    assert report.warnings == ["only one training case: training and validation data cannot be split"]
    with pytest.raises(DatasetError, match="at least 2 are needed"):
        train_val_split(load_dataset(copy))


def test_modalities_must_match_channel_files(copy: Path) -> None:
    edit_json(copy, lambda d: d.update(modality={"0": "CT", "1": "PET"}))
    problems = problems_of(copy, max_cases=1)
    assert problems[0] == (
        "training case 'phantom_000': 1 image channel(s) (imagesTr/phantom_000.nii.gz) but the dataset "
        "declares 2 modalities (CT, PET)"
    )
    assert len(problems) == 3  # one case per role with max_cases=1: training, test, unlabeled


def test_every_problem_is_reported_at_once(copy: Path) -> None:
    (copy / "imagesTr" / "phantom_000.nii.gz").unlink()

    def add_seven(label: Volume) -> Volume:
        array = label.array.copy()
        array[0, 0, 0, 0] = 7
        affine = label.affine.copy()
        affine[2, 3] -= 10.0
        return Volume(array, affine)

    _rewrite_label(copy / "labelsTr" / "phantom_001.nii.gz", add_seven)
    problems = problems_of(copy)
    assert len(problems) == 3
    assert "imagesTr/phantom_000.nii.gz" in problems[0]
    assert "labelsTr/phantom_001.nii.gz is not on the grid" in problems[1]
    assert "labelsTr/phantom_001.nii.gz contains value(s) 7" in problems[2]


# -- Auto3DSeg / MONAI datalists ------------------------------------------------------------------


@pytest.fixture
def two_channel_datalist(phantom_dataset: Path, tmp_path: Path) -> Path:
    """An Auto3DSeg datalist of 3 two-channel cases (CT + a second channel) with explicit folds."""
    data = tmp_path / "data"
    entries = []
    for index, case in enumerate(load_dataset(phantom_dataset).cases):
        ct = read_volume(case.images[0])
        second = Volume((ct.array // 2).astype(np.int16), ct.affine)
        write_volume(ct, data / f"case{index}_ct.nii.gz")
        write_volume(second, data / f"case{index}_pet.nii.gz")
        write_volume(read_volume(case.label), data / f"case{index}_seg.nii.gz")
        entries.append(
            {
                "image": [f"case{index}_ct.nii.gz", f"case{index}_pet.nii.gz"],
                "label": f"case{index}_seg.nii.gz",
                "fold": index % 2,
            }
        )
    test_ct = read_volume(phantom_dataset / "imagesTs" / "phantom_003.nii.gz")
    write_volume(test_ct, data / "test_ct.nii.gz")
    write_volume(Volume((test_ct.array // 2).astype(np.int16), test_ct.affine), data / "test_pet.nii.gz")
    datalist = {
        "training": entries,
        "testing": [{"image": ["test_ct.nii.gz", "test_pet.nii.gz"]}],
        "labels": {"background": 0, "liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4},
    }
    path = tmp_path / "lists" / "datalist.json"
    path.parent.mkdir()
    path.write_text(json.dumps(datalist))
    return path


def test_auto3dseg_datalist_with_folds_and_channels(two_channel_datalist: Path) -> None:
    data = two_channel_datalist.parent.parent / "data"
    with pytest.raises(DatasetError) as caught:  # paths are relative to the data folder, not the list
        validate_dataset(load_dataset(two_channel_datalist))
    assert len(caught.value.problems) == 3 * 3 + 2

    dataset = load_dataset(two_channel_datalist, dataroot=data)
    assert dataset.format == "datalist" and dataset.num_channels == 2
    assert dataset.modalities == ["unknown", "unknown"]
    assert [i.name for i in dataset.labels] == [
        "background",
        "liver",
        "spleen",
        "right kidney",
        "left kidney",
    ]
    assert [c.images for c in dataset.cases][0] == (data / "case0_ct.nii.gz", data / "case0_pet.nii.gz")
    assert [c.fold for c in dataset.cases] == [0, 1, 0]
    assert len(dataset.test) == 1 and dataset.test[0].label is None
    report = validate_dataset(dataset)
    assert report.ok and report.checked_cases == 3

    folds = split_folds(dataset.cases, n_folds=2)
    assert [[c.name for c in f] for f in folds] == [["case0_ct", "case2_ct"], ["case1_ct"]]
    train, val = train_val_split(dataset, fold=1, n_folds=2)
    assert [c.name for c in train] == ["case0_ct", "case2_ct"] and [c.name for c in val] == ["case1_ct"]
    with pytest.raises(DatasetError, match="is in fold 3, but only 2 folds"):
        split_folds([DatasetCase(c.images, c.label, 3) for c in dataset.cases], n_folds=2)

    # The dataroot can also be written into the datalist itself.
    listed = json.loads(two_channel_datalist.read_text())
    two_channel_datalist.write_text(json.dumps({**listed, "dataroot": "../data"}))
    assert load_dataset(two_channel_datalist).cases[0].images[0] == data / "case0_ct.nii.gz"


def test_channel_files_on_different_grids(two_channel_datalist: Path) -> None:
    data = two_channel_datalist.parent.parent / "data"
    pet = read_volume(data / "case1_pet.nii.gz")
    affine = pet.affine.copy()
    affine[:3, :3] *= 1.01  # a slightly different spacing, same origin
    write_volume(Volume(pet.array, affine), data / "case1_pet.nii.gz")
    with pytest.raises(DatasetError) as caught:
        validate_dataset(load_dataset(two_channel_datalist, dataroot=data))
    (problem,) = caught.value.problems
    assert "channel file case1_pet.nii.gz is not on the grid of case1_ct.nii.gz" in problem
    assert "spacing or direction differs" in problem


def test_datalist_without_label_names(two_channel_datalist: Path) -> None:
    listed = json.loads(two_channel_datalist.read_text())
    del listed["labels"]
    two_channel_datalist.write_text(json.dumps(listed))
    dataset = load_dataset(two_channel_datalist, dataroot=two_channel_datalist.parent.parent / "data")
    assert dataset.labels == [] and not dataset.labels_declared
    report = validate_dataset(dataset)
    assert report.ok
    assert report.warnings == ["datalist.json declares no label names; values found: 0, 1, 2, 3, 4"]


# -- folds -------------------------------------------------------------------------------------


def _cases(count: int, folds: dict[int, int] | None = None) -> list[DatasetCase]:
    folds = folds or {}
    return [
        DatasetCase((Path(f"/data/case{i:02d}.nii.gz"),), Path(f"/data/seg{i:02d}.nii.gz"), folds.get(i))
        for i in range(count)
    ]


def test_folds_are_deterministic_disjoint_and_balanced() -> None:
    cases = _cases(23)
    folds = split_folds(cases, n_folds=5, seed=0)
    assert folds == split_folds(list(cases), n_folds=5, seed=0)
    names = [c.name for fold in folds for c in fold]
    assert sorted(names) == sorted(c.name for c in cases) and len(set(names)) == 23
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    assert folds != split_folds(cases, n_folds=5, seed=1)
    for fold in folds:  # listed order is kept inside a fold
        assert [c.name for c in fold] == sorted(c.name for c in fold)


def test_explicit_folds_are_honoured() -> None:
    cases = _cases(10, folds={0: 2, 1: 2, 2: 2, 3: 0})
    folds = split_folds(cases, n_folds=3, seed=5)
    assert {c.name for c in cases[:3]} <= {c.name for c in folds[2]}
    assert cases[3] in folds[0]
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    with pytest.raises(DatasetError, match="case 'case00' .* is in fold 2, but only 2 folds"):
        split_folds(cases, n_folds=2)


def test_train_val_split_covers_every_case_once(copy: Path) -> None:
    dataset = load_dataset(copy)
    seen = []
    for fold in range(3):
        train, val = train_val_split(dataset, fold=fold, n_folds=3)
        assert len(val) == 1 and len(train) == 2 and not set(map(id, train)) & set(map(id, val))
        seen += [c.name for c in val]
    assert sorted(seen) == sorted(c.name for c in dataset.cases)
    with pytest.raises(DatasetError, match="fold 3 has no cases: .* 3 labelled cases for 5 folds"):
        train_val_split(dataset, fold=3, n_folds=5)
    with pytest.raises(DatasetError, match="fold must be between 0 and 2"):
        train_val_split(dataset, fold=3, n_folds=3)


def test_label_colors_default_to_anatomy_then_a_palette(copy: Path) -> None:
    def rename(data: dict) -> None:
        del data["label_colors"]
        data["labels"].update({"3": "liver_tumor", "4": "structure x", "5": "structure y"})

    edit_json(copy, rename)
    colors = {info.name: tuple(round(255 * c) for c in info.color) for info in load_dataset(copy).labels}
    assert colors["background"] == (0, 0, 0)
    assert colors["liver"] == (221, 130, 101) and colors["spleen"] == (157, 108, 162)
    assert colors["liver_tumor"] not in (colors["liver"], colors["background"])
    assert len({colors["structure x"], colors["structure y"], colors["liver"], colors["liver_tumor"]}) == 4
