"""The MedSegNAS panel's logic (``MedSegNASLib.panels.panel_logic``) with the real MRML classes of ``slicer-core``.

What a user of the panel would check: segmenting a volume node with a bundle gives a segmentation
node named after the input and the model, with the bundle's segment names and colors, on the
input's grid (the same label map the engine computes), and re-running replaces it; the background
segment job gives the same node; a run directory gives plot and table nodes with its curves and
metrics, refilled in place as the run goes on; a run's validation predictions load beside their
ground truth and its model registers; two segmentations compare into a table with the right Dice.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the panel logic needs slicer-core (pip install slicer-core)")
torch = pytest.importorskip("torch")

from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case, write_phantom_dataset  # noqa: E402
from MedSegNASLib.data.volume import LabelInfo, Volume  # noqa: E402
from MedSegNASLib.jobs import JobContext, RunDir  # noqa: E402
from MedSegNASLib.panels import panel_logic, panel_runs  # noqa: E402
from MedSegNASLib.panels import slicer_bridge as bridge  # noqa: E402

pytestmark = pytest.mark.timeout(300)
ORGANS = [label for label in PHANTOM_LABELS if label.value != 0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny phantom UNet bundle, as ``segment_fixtures`` makes them but untrained (seconds, not
    minutes): names, colors and grids are what these tests check, and its random weights still
    label a few dozen voxels of a phantom, so that a shifted or transposed label map shows."""
    from MedSegNASLib.models.export import export_bundle
    from segment_fixtures import INFERER, TINY_SPEC, UNET_DEF, build

    return export_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny_unet",
        network_def=UNET_DEF,
        state_dict=build(UNET_DEF, seed=0).eval().state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny phantom UNet",
        inferer=INFERER,
    )


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _phantom_node(scene, seed: int = 5, name: str = "phantom"):
    image, _ = generate_phantom_case(seed, 32)
    return bridge.volume_to_volume_node(image, scene, name=name)


def _segments(node) -> dict[str, tuple[float, float, float]]:
    segmentation = node.GetSegmentation()
    return {
        segmentation.GetNthSegment(i).GetName(): tuple(
            round(c, 4) for c in segmentation.GetNthSegment(i).GetColor()
        )
        for i in range(segmentation.GetNumberOfSegments())
    }


def _segmentation_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


# ------------------------------------------------------------------------------------- segment


def test_segment_volume_node_gives_named_colored_segments_on_the_input_grid(bundle: Path, scene) -> None:
    from MedSegNASLib.inference.engine import SegmentOptions, segment_volume
    from MedSegNASLib.inference.model import load_model

    volume_node = _phantom_node(scene)
    options = SegmentOptions(device="cpu")
    node = panel_logic.segment_volume_node(volume_node, bundle, options=options)

    assert node.GetName() == "phantom - tiny_unet"
    assert _segments(node) == {label.name: tuple(round(c, 4) for c in label.color) for label in ORGANS}
    reference = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
    assert reference is not None and reference.GetID() == volume_node.GetID()
    # The bundle's organ names carry their SNOMED CT terminology (Slicer's TerminologyEntry tag).
    import vtk

    entries = {}
    for index in range(node.GetSegmentation().GetNumberOfSegments()):
        entry = vtk.reference("")
        segment = node.GetSegmentation().GetNthSegment(index)
        segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        entries[segment.GetName()] = str(entry)
    assert "~SCT^10200004^Liver~^^~" in entries["liver"] and "~SCT^78961009^Spleen~" in entries["spleen"]
    assert "~SCT^64033007^Kidney~SCT^24028007^Right~" in entries["right kidney"]
    # On the input's grid, voxel for voxel the label map the engine computes for the same image.
    expected = segment_volume(bridge.volume_node_to_volume(volume_node), load_model(bundle), options).labels
    shown = bridge.segmentation_node_to_labelmap(node, volume_node)
    assert shown.array.shape == (1, 32, 32, 32)
    np.testing.assert_allclose(shown.affine, bridge.volume_node_to_volume(volume_node).affine)
    assert np.count_nonzero(expected.array) > 0, "the model labels some voxels"
    np.testing.assert_array_equal(shown.array, expected.array)

    # Re-running replaces the result of the same input and model; asked otherwise, it adds one.
    again = panel_logic.segment_volume_node(volume_node, bundle, options=options)
    assert again.GetID() == node.GetID() and len(_segmentation_nodes(scene)) == 1
    other_input = _phantom_node(scene, seed=6, name="other")
    panel_logic.segment_volume_node(other_input, bundle, options=options)
    kept = panel_logic.segment_volume_node(volume_node, bundle, options=options, replace_existing=False)
    assert kept.GetID() != node.GetID()
    assert sorted(n.GetName() for n in _segmentation_nodes(scene)) == [
        "other - tiny_unet",
        "phantom - tiny_unet",
        "phantom - tiny_unet",
    ]


def test_segment_job_runs_in_the_background_and_loads_the_same_result(bundle: Path, scene, tmp_path) -> None:
    volume_node = _phantom_node(scene)
    options = {"device": "cpu", "postprocess": "largest-component"}
    job = panel_logic.launch_segment_job(volume_node, bundle, tmp_path / "runs", options)
    follower = panel_logic.JobFollower(job)
    updates = []
    started = time.monotonic()
    while True:
        update = follower.poll()
        updates.append(update)
        if update.finished or time.monotonic() - started > 240:
            break
        time.sleep(0.2)
    assert update.state == "done", update.text
    assert update.step == update.total
    assert {"load", "write"} <= {u.stage for u in updates} | {
        e.get("stage") for u in updates for e in u.events if e.get("type") == "progress"
    }
    argv = json.loads(job.job_json.read_text())["argv"]
    assert argv[argv.index("--postprocess") + 1] == "largest-component" and "cpu" in argv

    node = panel_logic.load_segment_result(job, volume_node)
    assert node.GetName() == "phantom - tiny_unet"
    assert _segments(node) == {label.name: tuple(round(c, 4) for c in label.color) for label in ORGANS}
    from MedSegNASLib.inference.engine import SegmentOptions
    from MedSegNASLib.inference.postprocess import PostprocessSpec

    direct = panel_logic.segment_volume_node(
        volume_node,
        bundle,
        options=SegmentOptions(device="cpu", postprocess=PostprocessSpec.parse("largest-component")),
        replace_existing=False,
    )
    np.testing.assert_array_equal(
        bridge.segmentation_node_to_labelmap(node, volume_node).array,
        bridge.segmentation_node_to_labelmap(direct, volume_node).array,
    )
    # Loading again (e.g. after the panel re-attached) replaces the job's node.
    assert panel_logic.load_segment_result(job, volume_node).GetID() in {node.GetID(), direct.GetID()}

    # After a restart the input node is gone: the saved input comes back as a new volume node.
    fresh = slicer.vtkMRMLScene()
    restored = panel_logic.load_segment_result(job.path, scene=fresh)
    restored_volume = restored.GetNodeReference(restored.GetReferenceImageGeometryReferenceRole())
    assert restored_volume.GetName() == "phantom"
    np.testing.assert_allclose(
        bridge.volume_node_to_volume(restored_volume).affine, bridge.volume_node_to_volume(volume_node).affine
    )


def test_segment_argv_carries_every_option(bundle: Path) -> None:
    from MedSegNASLib.inference.engine import SegmentOptions
    from MedSegNASLib.inference.postprocess import PostprocessSpec

    options = SegmentOptions(
        device="cuda",
        fast=True,
        tta=True,
        postprocess=PostprocessSpec.parse("fill-holes"),
        overlap=0.5,
        amp=False,
    )
    argv = panel_logic.segment_argv(["in.nrrd"], "my_model", "out.seg.nrrd", options, trusted=True)
    assert argv[:6] == ["segment", "in.nrrd", "--model", "my_model", "--output", "out.seg.nrrd"]
    for expected in (
        ["--device", "cuda"],
        ["--fast"],
        ["--tta"],
        ["--trust"],
        ["--overlap", "0.5"],
        ["--no-amp"],
    ):
        assert " ".join(expected) in " ".join(argv)
    assert argv[argv.index("--postprocess") + 1] == "fill-holes"
    from MedSegNASLib.cli import build_parser

    parsed = build_parser().parse_args(argv)
    assert (parsed.device, parsed.fast, parsed.tta, parsed.trust, parsed.amp) == (
        "cuda",
        True,
        True,
        True,
        False,
    )
    assert parsed.postprocess == PostprocessSpec(fill_holes=True)


def test_tune_argv_is_what_medsegnas_tune_parses(tmp_path: Path) -> None:
    """The panel's Tune: ``medsegnas tune`` with the preset, network or searched architecture, trials
    and budget; without a network or architecture it is refused before any run folder exists."""
    from MedSegNASLib.cli import build_parser
    from MedSegNASLib.errors import MedSegNASError

    dataset = tmp_path / "dataset.json"
    dataset.write_text("{}")
    argv = panel_logic.training_argv(
        "tune", dataset, preset="small", network="unet", device="cpu", trials=3, budget_steps=25
    )
    assert argv == [
        "tune", "--dataset", str(dataset.absolute()), "--preset", "small", "--device", "cpu",
        "--network", "unet", "--trials", "3", "--budget-steps", "25",
    ]  # fmt: skip
    parsed = build_parser().parse_args([*argv, "--run-dir", str(tmp_path / "run")])
    assert (parsed.command, parsed.network, parsed.trials, parsed.budget_steps) == ("tune", "unet", 3, 25)
    search_run = tmp_path / "search-1"
    (search_run / "artifacts").mkdir(parents=True)
    argv = panel_logic.training_argv("tune", dataset, arch=search_run, config=tmp_path / "c.json")
    assert argv[argv.index("--arch") + 1] == str(search_run / "artifacts" / "arch.json")
    assert argv[argv.index("--trials") + 1 :] == [
        "8",
        "--budget-steps",
        "40",
        "--config",
        str(tmp_path / "c.json"),
    ]
    for kind in ("train", "search"):  # the other kinds take no tune options
        assert "--trials" not in panel_logic.training_argv(
            kind, dataset, network="unet" if kind == "train" else None
        )
    with pytest.raises(MedSegNASError, match="^tune needs either a searched architecture"):
        panel_logic.launch_training_job("tune", dataset, tmp_path / "runs")
    with pytest.raises(MedSegNASError, match="at least 1 trial"):
        panel_logic.launch_training_job("tune", dataset, tmp_path / "runs", network="unet", trials=0)
    # from the panel's settings: the searched network needs a selected search run; Epochs is the budget's
    from types import SimpleNamespace

    settings = SimpleNamespace(
        runsFolder=tmp_path / "runs", datasetSource="folder", datasetPath=dataset, preset="tiny",
        network="searched", epochs=0, patchSize=0, memoryBudget=0, gpus=1, device="cpu",
        sceneModality="CT", tuneTrials=2, tuneBudgetSteps=5,
    )  # fmt: skip
    with pytest.raises(MedSegNASError, match="select a finished search run under Runs, .* network to tune"):
        panel_logic.launch_from_settings("tune", settings)
    settings.network, settings.epochs = "unet", 3
    with pytest.raises(MedSegNASError, match="Epochs does not apply to Tune"):
        panel_logic.launch_from_settings("tune", settings)
    assert not (tmp_path / "runs").exists(), "refused settings leave no run folder"


# ------------------------------------------------------------------------------------- models


def test_model_tooltip_and_use_run_model(bundle: Path, tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "runs", "train")
    run.write_job({"kind": "train", "argv": ["python", "-m", "MedSegNASLib.cli", "train"], "config": {}})
    shutil.copytree(bundle, run.artifacts / "model")
    record = panel_runs.use_run_model(run, home=tmp_path / "home")
    tooltip = panel_logic.model_tooltip(record)
    for organ in ORGANS:
        assert organ.name in tooltip
    assert f"train run {run.path}" in tooltip
    assert "Safe: runs without executing code" in tooltip
    assert panel_logic.model_display_name(record) == record.id
    record.problems = ["configs/inference.json: '$' expression"]
    assert "[untrusted" in panel_logic.model_display_name(record)
    assert "UNTRUSTED" in panel_logic.model_tooltip(record)

    run = panel_logic.launch_model_import_job(str(bundle), tmp_path / "runs", home=tmp_path / "home")
    update = panel_logic.JobFollower(run).wait(timeout_s=180)  # a worker process, not a thread
    assert update.state == "done", run.worker_log.read_text()
    assert update.status["result"]["model"] != record.id, "an id clash is renamed, not overwritten"


# ------------------------------------------------------------------------------------- runs


LOSSES = [1.2, 0.9, 0.7, 0.55, 0.5, 0.42]


def _training_run(root: Path, steps: int, *, finish: bool) -> RunDir:
    """A train run written through the real job API: progress with losses, validations every 2 steps."""
    run = RunDir(root / "train-20250101-120000-abcdef")
    if not run.is_run_dir():
        run.ensure_layout()
        labels = [
            {"value": label.value, "name": label.name, "color": list(label.color)} for label in PHANTOM_LABELS
        ]
        run.write_job({"kind": "train", "argv": [], "config": {"dataset": {"labels": labels}}})
        run.write_status(state="running")
    ctx = JobContext(run, display=panel_logic_display())
    done = len([e for e in run.read_events()[0] if e["type"] == "progress"])
    for step in range(done + 1, steps + 1):
        metrics = {"loss": LOSSES[step - 1], "lr": 0.01}
        if step % 2 == 0:
            metrics.update({f"val_dice/{organ.name}": 0.1 * step + 0.01 * organ.value for organ in ORGANS})
            metrics["val_dice"] = 0.1 * step
        ctx.progress(step, len(LOSSES), stage="train", epoch=(step + 1) // 2, **metrics)
    if finish:
        summary = {
            "network": "dints",
            "parameters": 123456,
            "memory": {"measured_peak_mb": 812.5, "estimate_mb": 900.0, "measured": "ru_maxrss"},
            "best_epoch": 3,
            "best_val_dice": {organ.name: 0.6 + 0.01 * organ.value for organ in ORGANS},
            "best_val_dice_mean": 0.625,
            "patch_size": [32, 32, 32],
            "device": "cpu",
            "wall_s": 120.0,
        }
        (run.artifacts / "summary.json").write_text(json.dumps(summary))
        run.write_status(state="done")
    return run


def panel_logic_display():
    from MedSegNASLib.jobs.context import ProgressDisplay

    class Quiet(ProgressDisplay):
        def progress(self, record):
            pass

        def log(self, message, level="info"):
            pass

    return Quiet()


def _column(table_node, name: str) -> list[float]:
    table = table_node.GetTable()
    column = table.GetColumnByName(name)
    assert column is not None, f"no column {name}"
    return [column.GetValue(row) for row in range(table.GetNumberOfRows())]


def test_run_curves_become_plot_series_over_tables_updated_in_place(tmp_path: Path, scene) -> None:
    run = _training_run(tmp_path, 3, finish=False)
    chart = panel_runs.run_curves_to_plot_chart(run, scene)
    series = {
        chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
        for i in range(chart.GetNumberOfPlotSeriesNodes())
    }
    run_id = run.run_id
    assert set(series) == {f"{run_id} {name}" for name in ["loss", "mean", *(o.name for o in ORGANS)]}, (
        "one series per loss and per validation Dice (mean and classes); the learning rate is not plotted"
    )
    losses = series[f"{run_id} loss"].GetTableNode()
    assert _column(losses, "step") == [1, 2, 3]
    assert _column(losses, "loss") == pytest.approx(LOSSES[:3])
    liver = series[f"{run_id} liver"]
    assert liver.GetXColumnName() == "step" and liver.GetYColumnName() == "liver"
    assert _column(liver.GetTableNode(), "liver") == pytest.approx([0.2 + 0.01])
    assert tuple(round(c, 4) for c in liver.GetColor()) == tuple(round(c, 4) for c in ORGANS[0].color)

    # The run goes on: the same nodes are refilled, none added.
    _training_run(tmp_path, 6, finish=True)
    counts = {
        name: scene.GetNumberOfNodesByClass(name)
        for name in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLTableNode")
    }
    again = panel_runs.run_curves_to_plot_chart(run, scene)
    assert again.GetID() == chart.GetID()
    assert counts == {name: scene.GetNumberOfNodesByClass(name) for name in counts}
    assert _column(losses, "loss") == pytest.approx(LOSSES)
    assert _column(liver.GetTableNode(), "step") == [2, 4, 6]
    assert _column(liver.GetTableNode(), "mean") == pytest.approx([0.2, 0.4, 0.6])

    # Inspect: status, parameters, memory, per-class Dice table.
    details = panel_runs.run_details(run)
    text = details.text()
    assert "train run train-20250101-120000-abcdef: done" in text
    assert "123,456" in text and "Memory: peak 812 MB, estimate 900 MB" in text and "0.625" in text
    dice = panel_runs.run_dice_table_node(run, scene)
    assert [dice.GetTable().GetValue(row, 0).ToString() for row in range(dice.GetNumberOfRows())] == [
        o.name for o in ORGANS
    ]
    assert _column(dice, "dice") == pytest.approx([0.6 + 0.01 * o.value for o in ORGANS])

    update = panel_logic.JobFollower(run).poll()
    assert update.finished and update.state == "done" and update.step == update.total


def test_run_actions_enable_what_the_selected_run_allows(tmp_path: Path) -> None:
    assert panel_runs.run_actions(None, None) == panel_runs.RunActions()  # no selection: nothing

    live = _training_run(tmp_path / "live", 2, finish=False)
    actions = panel_runs.run_actions(str(live.path), "running")
    assert (actions.cancel, actions.resume, actions.show) == (True, False, True)
    assert actions.details.startswith("train run ") and not actions.use_model

    # failed: resumable only once the worker recorded its command line
    live.write_status(state="failed")
    assert not panel_runs.run_actions(str(live.path), "failed").resume
    recorded = RunDir(tmp_path / "recorded" / "train-20250101-120000-abcdef")
    recorded.ensure_layout()
    recorded.write_job({"kind": "train", "argv": ["train", "--dataset", "d"], "config": {}})
    recorded.write_status(state="failed")
    failed = panel_runs.run_actions(str(recorded.path), "failed")
    assert failed.resume and not failed.cancel

    done = _training_run(tmp_path / "done", 6, finish=True)
    (done.artifacts / "model" / "configs").mkdir(parents=True)
    (done.artifacts / "topology.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    actions = panel_runs.run_actions(str(done.path), "done")
    assert not actions.cancel and not actions.resume and actions.use_model
    assert actions.topology == done.artifacts / "topology.png" and "0.625" in actions.details

    damaged = panel_runs.run_actions(str(tmp_path / "gone"), "damaged")  # listed damaged: not read
    assert damaged.show and damaged.details == "" and damaged.topology is None


def test_eta_and_progress_text() -> None:
    assert panel_logic.format_eta(None) == ""
    assert panel_logic.format_eta(42) == "about 42 s left"
    assert panel_logic.format_eta(600) == "about 10 min left"
    event = {
        "stage": "train",
        "epoch": 3,
        "step": 40,
        "total": 120,
        "metrics": {"loss": 0.5, "val_dice": 0.7},
        "eta_s": 90,
    }
    assert (
        panel_logic.progress_text(event)
        == "train, epoch 3, 40 of 120: loss 0.500, validation Dice 0.700 (about 2 min left)"
    )


def test_validation_predictions_load_beside_ground_truth(tmp_path: Path, scene) -> None:
    dataset_json = write_phantom_dataset(tmp_path / "data", cases=2, size=24, unlabeled=0, test_cases=0)
    from MedSegNASLib.data.datasets import load_dataset

    dataset = load_dataset(dataset_json)
    case = dataset.cases[1]
    run = RunDir.create(tmp_path / "runs", "train")
    labels = [
        {"value": label.value, "name": label.name, "color": list(label.color)} for label in PHANTOM_LABELS
    ]
    run.write_job(
        {"kind": "train", "argv": [], "config": {"dataset": {"path": str(dataset.path), "labels": labels}}}
    )
    (run.artifacts / "predictions").mkdir()
    shutil.copy(case.label, run.artifacts / "predictions" / f"{case.name}.nii.gz")

    ((volume, prediction, truth),) = panel_runs.load_validation_predictions(run, scene)
    assert volume.GetName() == case.name
    assert (prediction.GetName(), truth.GetName()) == (f"{case.name} prediction", f"{case.name} ground truth")
    assert set(_segments(prediction)) <= {o.name for o in ORGANS} and _segments(prediction) == _segments(
        truth
    )
    table = panel_logic.evaluate_segmentation_nodes(prediction, truth, scene)
    assert _column(table, "dice") == pytest.approx([1.0] * table.GetNumberOfRows())


# ------------------------------------------------------------------------------------- evaluate


def test_evaluate_two_segmentations_gives_known_dice(scene, tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = bridge.volume_to_volume_node(
        Volume(np.zeros((1, 20, 20, 16), np.int16), affine), scene, name="grid"
    )
    reference = np.zeros((20, 20, 16), np.uint8)
    reference[2:10, 2:10, 2:10] = 1  # 512 voxels
    reference[12:18, 12:18, 4:10] = 2  # 216 voxels
    predicted = np.zeros_like(reference)
    predicted[2:10, 2:10, 6:14] = 1  # overlaps the reference cube by half: Dice 0.5
    predicted[12:18, 12:18, 4:10] = 3  # the spleen found exactly, stored under another value and name
    table = [
        LabelInfo(1, "liver", (1.0, 0.0, 0.0)),
        LabelInfo(2, "spleen", (0.0, 1.0, 0.0)),
        LabelInfo(4, "kidney", (0, 0, 1)),
    ]
    reference_node = bridge.labelmap_to_segmentation_node(
        Volume(reference[None], affine),
        table,
        scene,
        reference_volume_node=image,
        name="truth",
        keep_empty_segments=True,
    )
    predicted_node = bridge.labelmap_to_segmentation_node(
        Volume(predicted[None], affine),
        [LabelInfo(1, "liver", (1.0, 0.0, 0.0)), LabelInfo(3, "Segment_3", (0.5, 0.5, 0.5))],
        scene,
        reference_volume_node=image,
        name="model",
    )
    # Matched by name (liver), then by the reference's stored value: rename segment 3 to carry value 2.
    predicted_node.GetSegmentation().GetSegment("label_3").SetTag(bridge.LABEL_VALUE_TAG, "2")
    result = panel_logic.evaluate_segmentation_nodes(predicted_node, reference_node, scene)
    assert result.GetName() == "model vs truth"
    names = [result.GetTable().GetValue(row, 0).ToString() for row in range(result.GetNumberOfRows())]
    assert names == ["liver", "spleen", "kidney"]
    dice = _column(result, "dice")
    assert dice[:2] == pytest.approx([0.5, 1.0])
    assert math.isnan(dice[2]), "a segment in neither map is not scored"
    assert _column(result, "hd95_mm")[1] == pytest.approx(0.0)
    assert _column(result, "voxels_reference")[:2] == [512, 216]
    matched = [result.GetTable().GetValue(row, 1).ToString() for row in range(result.GetNumberOfRows())]
    assert matched == ["liver", "Segment_3", ""]

    # The panel's Evaluate button: the same scores from an 'evaluate' worker (torch stays out of the GUI)
    run = panel_logic.launch_evaluate_nodes_job(predicted_node, reference_node, tmp_path / "runs")
    status = panel_logic.JobFollower(run).wait(timeout_s=240).status
    assert status["state"] == "done", status.get("error")
    from_job = panel_logic.evaluation_table_node(run, scene)
    assert from_job.GetName() == "model vs truth" and from_job is not result
    assert from_job.GetNumberOfRows() == 3
    for row in range(3):
        for column in (0, 1, 7):  # segment, matched, status
            expected = result.GetTable().GetValue(row, column).ToString()
            assert from_job.GetTable().GetValue(row, column).ToString() == expected
    for name in ("dice", "hd95_mm", "nsd", "voxels_reference", "voxels_segmentation"):
        assert _column(from_job, name) == pytest.approx(_column(result, name), nan_ok=True), name
