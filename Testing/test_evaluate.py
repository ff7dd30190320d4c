"""``medsegnas evaluate`` and the metric core: values a user can check by hand, real files, the real CLI.

* Metrics on shapes whose answers are known: a box shifted by a whole number of voxels on an
  anisotropic grid (Dice from the counted overlap, HD95 = shift x spacing, NSD 1 above that
  tolerance and below 1 under it), identical maps, and every absent-class rule.
* :func:`evaluate_predictions` on a 32^3 phantom dataset: the reference itself scores Dice 1;
  an erased organ scores 0 (missed); a cropped ``.seg.nrrd`` copy is put back on the grid.
* :func:`evaluate_model` with a tiny untrained UNet bundle: one CSV row per case and class,
  values in range; a model's recorded validation cases are the ones evaluated.
* The CLI: files written, the job protocol (subprocess), and bad input -> exit 1, one line, no files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from MedSegNASLib.cli import main
from MedSegNASLib.data import load_dataset, read_volume, train_val_split, write_phantom_dataset, write_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.data.volume import LabelInfo, Volume
from MedSegNASLib.errors import ImageFormatError, MedSegNASError
from MedSegNASLib.evaluation.evaluate import (
    CSV_COLUMNS,
    evaluate_model,
    evaluate_predictions,
    summarize,
)
from MedSegNASLib.evaluation.metrics import label_metrics

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SPACING = (0.8, 1.5, 3.0)  # mm along i, j, k: a wrong axis would give another distance
ORGAN = LabelInfo(1, "organ", (1.0, 0.0, 0.0))
OTHER = LabelInfo(2, "other", (0.0, 1.0, 0.0))


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A registry home of this test only: nothing is read from or written to ``~/.medsegnas``."""
    from MedSegNASLib.models.registry import HOME_ENV

    path = tmp_path / "medsegnas-home"
    monkeypatch.setenv(HOME_ENV, str(path))
    return path


def _box(shape=(40, 40, 30), start=(10, 10, 8), size=(16, 16, 12), value=1) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = value
    return array


# ---------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(("axis", "shift"), [(2, 2), (0, 3), (1, 1)])
def test_a_shifted_box_has_the_dice_of_its_overlap_and_the_shift_as_hd95(axis, shift) -> None:
    reference = _box()
    start = [10, 10, 8]
    start[axis] += shift
    prediction = _box(start=tuple(start))
    distance = shift * SPACING[axis]
    overlap = np.count_nonzero((reference == 1) & (prediction == 1))
    expected_dice = 2 * overlap / (np.count_nonzero(reference) + np.count_nonzero(prediction))

    (result,) = label_metrics(prediction, reference, [ORGAN], SPACING, tolerance_mm=distance + 0.1)
    assert result.dice == pytest.approx(expected_dice, abs=1e-6)
    assert result.hd95_mm == pytest.approx(distance, abs=1e-5)
    assert result.nsd == pytest.approx(1.0)
    assert (result.voxels_ref, result.voxels_pred) == (16 * 16 * 12, 16 * 16 * 12)
    assert result.status == "present"

    (tight,) = label_metrics(prediction, reference, [ORGAN], SPACING, tolerance_mm=distance - 0.1)
    assert 0.0 < tight.nsd < 1.0
    assert (tight.dice, tight.hd95_mm) == (result.dice, result.hd95_mm)


def test_identical_maps_score_perfectly_and_background_is_not_scored() -> None:
    reference = _box()
    reference[30:36, 30:36, 20:26] = 2
    results = label_metrics(reference, reference.copy(), PHANTOM_LABELS[:1] + [ORGAN, OTHER], SPACING)
    assert [r.label for r in results] == [1, 2]
    for result in results:
        assert (result.dice, result.hd95_mm, result.nsd) == (1.0, 0.0, 1.0)
        assert result.voxels_ref == result.voxels_pred > 0


def test_absent_class_conventions() -> None:
    reference = _box()  # class 1 only
    prediction = np.zeros_like(reference)
    prediction[30:34, 30:34, 20:24] = 2  # class 2 only
    missed, false_positive, absent = label_metrics(
        prediction, reference, [ORGAN, OTHER, LabelInfo(3, "never", (0, 0, 1))], SPACING
    )
    assert (missed.dice, missed.hd95_mm, missed.nsd, missed.status) == (0.0, math.inf, 0.0, "missed")
    assert (missed.voxels_ref, missed.voxels_pred) == (16 * 16 * 12, 0)
    assert (false_positive.dice, false_positive.hd95_mm, false_positive.nsd) == (0.0, math.inf, 0.0)
    assert false_positive.status == "false_positive"
    assert all(math.isnan(v) for v in (absent.dice, absent.hd95_mm, absent.nsd))
    assert absent.status == "absent"

    # Means leave out NaN (absent) and inf (HD95 of a missed class) and count them.
    rows = [
        {"case": "a", **m.as_dict()}
        for m in label_metrics(reference, reference, [ORGAN], SPACING)
        + label_metrics(prediction, reference, [ORGAN], SPACING)
        + label_metrics(np.zeros_like(reference), np.zeros_like(reference), [ORGAN], SPACING)
    ]
    entry = summarize(rows)["organ"]
    assert (entry["dice_mean"], entry["dice_n"], entry["dice_sd"]) == (0.5, 2, 0.5)
    assert (entry["hd95_mm_mean"], entry["hd95_mm_n"]) == (0.0, 1)
    assert (entry["cases"], entry["present"], entry["missed"], entry["absent"]) == (3, 1, 1, 1)


def test_label_metrics_refuses_maps_of_different_shapes() -> None:
    with pytest.raises(ImageFormatError, match="differs from reference shape"):
        label_metrics(_box(), _box(shape=(40, 40, 31)), [ORGAN], SPACING)
    with pytest.raises(MedSegNASError, match="spacing"):
        label_metrics(_box(), _box(), [ORGAN], (1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------ predictions


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate") / "phantom"
    return write_phantom_dataset(root, cases=4, size=32, unlabeled=0, test_cases=1).parent


def _copy_labels(dataset: Path, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    loaded = load_dataset(dataset)
    for case in [*loaded.cases, *loaded.test]:  # the phantom labels its test cases (labelsTs/)
        volume = read_volume(case.label)
        write_volume(volume, folder / f"{case.name}.nii.gz")
        names.append(case.name)
    return names


def test_the_reference_itself_scores_dice_1(dataset, tmp_path) -> None:
    names = _copy_labels(dataset, tmp_path / "preds")
    report = evaluate_predictions(tmp_path / "preds", dataset, split="all")
    assert report.info["cases"] == names
    assert len(report.rows) == len(names) * 4
    assert set(report.mean_dice()) == {"liver", "spleen", "right kidney", "left kidney"}
    for row in report.rows:
        assert (row["dice"], row["hd95_mm"], row["nsd"], row["status"]) == (1.0, 0.0, 1.0, "present")

    # The validation split is the one search and train use (fold 0 of 5, seed 0).
    _, validation = train_val_split(load_dataset(dataset), fold=0, n_folds=5, seed=0)
    report = evaluate_predictions(tmp_path / "preds", dataset)
    assert report.info["cases"] == [case.name for case in validation]


def test_the_test_split_scores_the_labelled_test_cases_that_no_training_split_holds(
    dataset, tmp_path
) -> None:
    _copy_labels(dataset, tmp_path / "preds")
    loaded = load_dataset(dataset)
    test_names = [case.name for case in loaded.test]
    assert test_names and all(case.label.parent.name == "labelsTs" for case in loaded.test)
    report = evaluate_predictions(tmp_path / "preds", dataset, split="test")
    assert report.info["cases"] == test_names
    assert report.mean_dice()["liver"] == 1.0
    # Search and train draw their training and validation cases from the training list only.
    training, validation = train_val_split(loaded, fold=0, n_folds=5, seed=0)
    assert not {c.name for c in [*training, *validation]} & set(test_names)


def _without_test_labels(dataset: Path, folder: Path) -> Path:
    """A copy of ``dataset.json`` (same files) whose test list has images only, as in MSD."""
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["test"] = [entry["image"] for entry in meta["test"]]
    meta["dataroot"] = str(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def test_an_erased_organ_scores_0_and_a_cropped_seg_nrrd_is_put_back_on_the_grid(dataset, tmp_path) -> None:
    names = _copy_labels(dataset, tmp_path / "preds")
    erased = read_volume(tmp_path / "preds" / f"{names[0]}.nii.gz")
    erased.array[erased.array == 2] = 0  # no spleen
    write_volume(erased, tmp_path / "preds" / f"{names[0]}.nii.gz")
    # Another case as a Slicer segmentation cropped to its segments (another grid, same voxels).
    labels = read_volume(tmp_path / "preds" / f"{names[1]}.nii.gz")
    (tmp_path / "preds" / f"{names[1]}.nii.gz").unlink()
    nonzero = np.argwhere(labels.array[0] > 0)
    lo, hi = nonzero.min(axis=0), nonzero.max(axis=0) + 1
    affine = labels.affine.copy()
    affine[:3, 3] = labels.affine[:3, :3] @ lo + labels.affine[:3, 3]
    cropped = Volume(
        np.ascontiguousarray(labels.array[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]), affine
    )
    write_volume(cropped, tmp_path / "preds" / f"{names[1]}.seg.nrrd", labels=PHANTOM_LABELS)

    report = evaluate_predictions(tmp_path / "preds", dataset, split="all", cases=names[:3], tolerance_mm=1.0)
    by_key = {(row["case"], row["name"]): row for row in report.rows}
    spleen = by_key[(names[0], "spleen")]
    assert (spleen["dice"], spleen["nsd"], spleen["status"]) == (0.0, 0.0, "missed")
    assert spleen["voxels_pred"] == 0 and spleen["voxels_ref"] > 0
    assert by_key[(names[0], "liver")]["dice"] == 1.0
    assert all(by_key[(names[1], organ)]["dice"] == 1.0 for organ in report.mean_dice())
    assert report.per_class["spleen"]["missed"] == 1
    assert report.per_class["spleen"]["dice_n"] == 3  # a missed organ counts in the mean Dice
    assert report.mean_dice()["spleen"] == pytest.approx(2 / 3)
    assert report.mean_dice()["liver"] == 1.0


def test_report_files_are_strict_json_and_one_csv_row_per_case_and_class(dataset, tmp_path) -> None:
    names = _copy_labels(dataset, tmp_path / "preds")
    erased = read_volume(tmp_path / "preds" / f"{names[0]}.nii.gz")
    erased.array[erased.array == 4] = 0
    write_volume(erased, tmp_path / "preds" / f"{names[0]}.nii.gz")
    report = evaluate_predictions(tmp_path / "preds", dataset, split="all")
    json_path, csv_path = report.write(tmp_path / "out" / "report.json")
    assert csv_path == tmp_path / "out" / "report.csv"
    data = json.loads(json_path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["split"] == "all" and data["tolerance_mm"] == 2.0 and len(data["rows"]) == 4 * len(names)
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["case"], r["name"]) for r in rows] == [(c, o.name) for c in names for o in PHANTOM_LABELS[1:]]
    missed = next(r for r in rows if r["case"] == names[0] and r["name"] == "left kidney")
    assert (float(missed["dice"]), float(missed["hd95_mm"]), missed["status"]) == (0.0, math.inf, "missed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.csv", "report.json"]
    with pytest.raises(MedSegNASError, match=r"\.json"):
        report.write(tmp_path / "out" / "report.txt")


# ----------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, dataset) -> Path:
    """A tiny untrained UNet exported as a bundle, recording one validation case like train does."""
    import segment_fixtures as sf
    from MedSegNASLib.models.export import export_bundle

    recorded = load_dataset(dataset).cases[2].name
    from MedSegNASLib.data.preprocessing import PreprocessingSpec

    # The phantom's own voxel size (12 x 12 x 23 mm at 32^3): one 32^3 window per case.
    spec = PreprocessingSpec(
        channels=["CT"],
        spacing=[12.0, 12.0, 24.0],
        intensity={"kind": "ct_window", "a_min": -100.0, "a_max": 250.0},
        patch_size=[32, 32, 32],
    )
    return export_bundle(
        tmp_path_factory.mktemp("bundle") / "model",
        network_def=sf.UNET_DEF,
        state_dict=sf.build(sf.UNET_DEF).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=spec,
        name="untrained tiny UNet",
        inferer=sf.INFERER,
        extra_metadata={"training": {"validation_cases": [recorded]}},
    )


def test_evaluate_model_scores_every_case_and_class(bundle, dataset, tmp_path) -> None:
    progress = []
    report = evaluate_model(
        bundle, dataset, split="all", device="cpu", progress=lambda done, total, **info: progress.append(done)
    )
    loaded = load_dataset(dataset)
    cases = [case.name for case in [*loaded.cases, *loaded.test]]
    assert report.info["cases"] == cases and progress == [1, 2, 3, 4, 5]
    _, csv_path = report.write(tmp_path / "model.json")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cases) * 4
    for row in rows:
        dice, hd95, nsd = float(row["dice"]), float(row["hd95_mm"]), float(row["nsd"])
        ref, pred = int(row["voxels_ref"]), int(row["voxels_pred"])
        assert ref > 0  # every phantom case holds every organ
        if pred == 0:
            assert (dice, nsd, hd95, row["status"]) == (0.0, 0.0, math.inf, "missed")
        else:
            assert 0.0 <= dice <= 1.0 and 0.0 <= nsd <= 1.0 and hd95 >= 0.0 and row["status"] == "present"

    # "validation" of a model trained by MedSegNAS: the cases its training run validated on.
    report = evaluate_model(bundle, dataset, device="cpu")
    assert report.info["cases"] == [cases[2]]
    assert "recorded in the model" in report.info["split_source"]
    # So does the predictions folder written next to that model by the same train run.
    _copy_labels(dataset, bundle.parent / "predictions")
    report = evaluate_predictions(bundle.parent / "predictions", dataset)
    assert report.info["cases"] == [cases[2]]


# -------------------------------------------------------------------------------------- CLI


def _only_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_cli_predictions_writes_the_report_and_prints_the_table(dataset, tmp_path, capsys) -> None:
    _copy_labels(dataset, tmp_path / "preds")
    out = tmp_path / "results" / "eval.json"
    code = main(
        ["evaluate", "--predictions", str(tmp_path / "preds"), "--dataset", str(dataset), "--split", "all",
         "--out", str(out), "--tolerance", "1.5"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "liver" in printed and "1.000 ± 0.000" in printed and "NSD@1.5mm" in printed
    assert json.loads(out.read_text())["mean_dice"]["liver"] == 1.0
    assert out.with_suffix(".csv").is_file()


def test_cli_bad_inputs_exit_1_with_one_line_and_no_files(dataset, bundle, tmp_path, capsys) -> None:
    _copy_labels(dataset, tmp_path / "preds")
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    (tmp_path / "partial").mkdir()
    write_volume(
        read_volume(load_dataset(dataset).cases[0].label), tmp_path / "partial" / "phantom_000.nii.gz"
    )
    preds = ["--predictions", str(tmp_path / "preds")]
    cases = {
        "missing dataset": (preds + ["--dataset", str(tmp_path / "nothere")], "not found"),
        "unknown model id": (["--model", "no_such_model", "--dataset", str(dataset)], "no_such_model"),
        "no labelled test case": (
            preds + ["--dataset", str(_without_test_labels(dataset, tmp_path / "msd")), "--split", "test"],
            "none has a label",
        ),
        "out under a file": (
            preds + ["--dataset", str(dataset), "--out", str(a_file / "x.json")],
            "not a folder",
        ),
        "out not json": (preds + ["--dataset", str(dataset), "--out", str(out_dir / "x.csv")], ".json"),
        "missing predictions": (
            ["--predictions", str(tmp_path / "partial"), "--dataset", str(dataset), "--split", "all"],
            "no prediction",
        ),
        "unknown case": (preds + ["--dataset", str(dataset), "--cases", "nobody"], "nobody"),
    }
    for name, (argv, fragment) in cases.items():
        if "--out" not in argv:
            argv = [*argv, "--out", str(out_dir / f"{name.replace(' ', '_')}.json")]
        code = main(["evaluate", *argv])
        line = _only_error_line(capsys)
        assert code == 1, name
        assert fragment in line, (name, line)
    assert list(out_dir.iterdir()) == []


def test_cli_model_as_a_job_in_a_subprocess(bundle, dataset, tmp_path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", "evaluate", "--model", str(bundle), "--dataset", str(dataset),
         "--split", "all", "--cases", "phantom_000,phantom_001", "--device", "cpu", "--run-dir", str(run)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "left kidney" in result.stdout
    report = json.loads((run / "artifacts" / "evaluation.json").read_text())
    assert report["cases"] == ["phantom_000", "phantom_001"] and len(report["rows"]) == 8
    assert (run / "artifacts" / "evaluation.csv").is_file()
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["type"] == "progress" and e.get("stage") == "evaluate"]
    assert steps == [1, 2]
    assert {e["path"] for e in events if e["type"] == "artifact"} == {
        "artifacts/evaluation.json",
        "artifacts/evaluation.csv",
    }
    assert json.loads((run / "status.json").read_text())["state"] == "done"
