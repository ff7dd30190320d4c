"""The SSLPretrain panel's logic (``SSLPretrainLib.panel_logic``) with real MRML nodes of slicer-core.

What a user of the panel would check: scene volumes become the pretraining inputs with their
geometry; a real (tiny, 2-step) pretraining job launched from the panel logic is found while it
runs, gives a loss chart with one series per loss and one point per logged step (updated in
place while the job runs), and its reconstructions load as volumes lying on their source image;
a few-shot table becomes a table node; a fine-tuned bundle goes into the model registry.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedSegNASLib.data import read_volume, write_phantom_dataset  # noqa: E402
from MedSegNASLib.errors import DatasetError, JobError, MedSegNASError  # noqa: E402
from MedSegNASLib.jobs import RunDir, refresh_status  # noqa: E402
from MedSegNASLib.jobs.rundir import hostname, process_start_ticks  # noqa: E402
from MedSegNASLib.panels.slicer_bridge import volume_node_to_volume, volume_to_volume_node  # noqa: E402
from SSLPretrainLib import panel_logic  # noqa: E402
from SSLPretrainLib.panel_logic import (  # noqa: E402
    LOSS_SERIES,
    JobFollower,
    LossCurves,
    PretrainOptions,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="job workers need POSIX signals and flock"),
]

#: Settings of the tiny run: 2 steps of one 32^3 crop, every step logged and checkpointed.
RUN_STEPS = 2


def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _ijk_to_ras(node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _node_count(scene, class_name: str) -> int:
    return scene.GetNumberOfNodesByClass(class_name)


# --------------------------------------------------------------------------------------------
# the real pretraining run, launched the way the panel launches it


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two 32^3 phantom volumes loaded in a scene, pretrained on for 2 steps by a background worker.

    While the worker runs, the test's loop does what the panel's timer does: poll the run and
    update the loss chart in place. It records what it saw.
    """
    folder = tmp_path_factory.mktemp("sslpanel")
    write_phantom_dataset(folder / "phantom", cases=1, size=32, seed=5, unlabeled=2, test_cases=0)
    scene = slicer.vtkMRMLScene()
    sources = sorted((folder / "phantom" / "imagesUnlabeled").glob("*.nii.gz"))
    nodes = [volume_to_volume_node(read_volume(path), scene, name=path.name[:-7]) for path in sources]
    options = PretrainOptions(
        "tiny",
        steps=RUN_STEPS,
        batch_size=1,
        loss_weights={"contrastive": 0.5},
        device="cpu",
        extra={"reconstructions": 1, "log_every": 1, "checkpoint_every": 1, "warmup_steps": 1},
    )
    run = panel_logic.start_pretraining(folder / "runs", options, volume_nodes=nodes)
    attached: dict[str, JobFollower] = {}
    attached_kinds = panel_logic.attach_live_runs(attached, folder / "runs", panel_logic.JOB_KINDS)
    follower = JobFollower(run)
    chart_updates = []  # (chart node, table rows) after each update of the curves
    deadline = time.monotonic() + 240
    while True:
        update = follower.poll()
        if update.curves_changed:
            previous = chart_updates[-1][0] if chart_updates else None
            chart = panel_logic.update_loss_plot(follower.curves, scene, run.run_id, chart_node=previous)
            chart_updates.append((chart, chart.GetNthPlotSeriesNode(0).GetTableNode().GetNumberOfRows()))
        if update.finished:
            break
        assert time.monotonic() < deadline, f"the run did not finish:\n{run.worker_log.read_text()}"
        time.sleep(0.2)
    return SimpleNamespace(
        folder=folder,
        scene=scene,
        nodes=nodes,
        run=run,
        follower=follower,
        final=update,
        attached=attached,
        attached_kinds=attached_kinds,
        chart_updates=chart_updates,
    )


def _logged_losses(run: RunDir) -> dict[int, dict[str, float]]:
    """Step -> loss values, read straight from the run's events.jsonl."""
    losses = {}
    for line in run.events_jsonl.read_text().splitlines():
        event = json.loads(line)
        if event["type"] == "progress":
            losses[event["step"]] = {name: float(event["metrics"][key]) for name, key in LOSS_SERIES}
    return losses


def test_pretraining_run_finishes_with_the_panel_settings_and_scene_volumes(pretrain_run) -> None:
    run = pretrain_run.run
    assert pretrain_run.final.state == "done", run.worker_log.read_text()
    job = run.read_job()
    assert job["kind"] == "pretrain"
    assert Path(job["inputs"]["images"]) == run.path / "inputs"
    settings = job["config"]["settings"]
    assert settings["steps"] == RUN_STEPS and settings["batch_size"] == 1 and settings["roi"] == [32, 32, 32]
    assert settings["loss_weights"] == {"rotation": 1.0, "contrastive": 0.5, "reconstruction": 1.0}
    assert json.loads((run.path / "config.json").read_text())["loss_weights"] == {"contrastive": 0.5}
    assert pretrain_run.follower.progress_text().startswith("Done: pretraining a Swin UNETR encoder")
    assert pretrain_run.follower.percent() == 100 and pretrain_run.final.percent == 100
    assert (pretrain_run.final.step, pretrain_run.final.total) == (RUN_STEPS, RUN_STEPS)


def test_scene_volumes_are_the_inputs_with_their_voxels_and_geometry(pretrain_run) -> None:
    inputs = sorted((pretrain_run.run.path / "inputs").glob("*.nii.gz"))
    assert [path.name for path in inputs] == [f"{node.GetName()}.nii.gz" for node in pretrain_run.nodes]
    for node, path in zip(pretrain_run.nodes, inputs, strict=True):
        written, shown = read_volume(path), volume_node_to_volume(node)
        np.testing.assert_allclose(written.affine, _ijk_to_ras(node), atol=1e-4)
        np.testing.assert_array_equal(written.array, shown.array)


def test_a_running_pretraining_is_found_to_reattach_to(pretrain_run) -> None:
    """Right after the launch the run is live: a panel opened then (a restart) follows it."""
    assert pretrain_run.attached_kinds == ["pretrain"]
    assert pretrain_run.attached["pretrain"].run == pretrain_run.run
    # Finished now: nothing left to re-attach to, and it is listed as done.
    assert panel_logic.live_runs(pretrain_run.folder / "runs") == {}
    ((label, path),) = panel_logic.run_choices(pretrain_run.folder / "runs")
    assert path == str(pretrain_run.run.path) and label == f"{pretrain_run.run.run_id} (done 100%)"


def test_loss_chart_has_one_series_per_loss_with_one_point_per_logged_step(pretrain_run) -> None:
    logged = _logged_losses(pretrain_run.run)
    assert sorted(logged) == list(range(1, RUN_STEPS + 1))
    chart = pretrain_run.chart_updates[-1][0]
    assert chart.GetName() == pretrain_run.run.run_id
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    assert [node.GetName() for node in series] == [
        f"{pretrain_run.run.run_id} {name}" for name in ("rotation", "contrastive", "inpainting", "total")
    ]
    table = series[0].GetTableNode()
    assert {node.GetTableNode().GetID() for node in series} == {table.GetID()}
    assert table.GetNumberOfRows() == RUN_STEPS
    for node, (name, _) in zip(series, LOSS_SERIES, strict=True):
        assert (node.GetXColumnName(), node.GetYColumnName()) == ("step", name)
        x = table.GetTable().GetColumnByName("step")
        y = table.GetTable().GetColumnByName(name)
        points = {int(x.GetValue(row)): y.GetValue(row) for row in range(table.GetNumberOfRows())}
        assert points == pytest.approx({step: values[name] for step, values in logged.items()})
    # The worker's total is the weighted sum of the terms (contrastive weight 0.5).
    for values in logged.values():
        assert values["total"] == pytest.approx(
            values["rotation"] + 0.5 * values["contrastive"] + values["inpainting"], rel=1e-5
        )


def test_loss_chart_is_updated_in_place_while_the_run_goes_on(pretrain_run) -> None:
    updates = pretrain_run.chart_updates
    assert {chart.GetID() for chart, _ in updates} == {updates[0][0].GetID()}
    rows = [count for _, count in updates]
    assert rows == sorted(rows) and rows[-1] == RUN_STEPS
    scene = pretrain_run.scene
    assert [_node_count(scene, cls) for cls in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode")] == [1, 4]
    # A panel opened after a restart follows the run anew and finds the same chart by name.
    again = JobFollower(pretrain_run.run.path)
    again.poll()
    assert panel_logic.update_loss_plot(again.curves, scene, pretrain_run.run.run_id) is updates[-1][0]
    assert [_node_count(scene, cls) for cls in ("vtkMRMLPlotChartNode", "vtkMRMLTableNode")] == [1, 1]


def test_reconstructions_load_as_volumes_lying_on_their_source_image(pretrain_run) -> None:
    scene = pretrain_run.scene
    before = _node_count(scene, "vtkMRMLScalarVolumeNode")
    (sample,) = panel_logic.load_reconstructions(pretrain_run.run, scene)
    assert sample["step"] == RUN_STEPS
    assert _node_count(scene, "vtkMRMLScalarVolumeNode") == before + 3
    source_node = next(node for node in pretrain_run.nodes if node.GetName() == sample["source"])
    source = volume_node_to_volume(source_node)
    for role in ("input", "masked", "reconstruction"):
        node = sample[role]
        assert node.GetName() == f"{pretrain_run.run.run_id} sample0 {role}"
        assert node.GetImageData().GetDimensions() == (32, 32, 32)
        affine = _ijk_to_ras(node)
        # Same voxel size and axes as the source, and every voxel centre on a source voxel centre.
        np.testing.assert_allclose(
            np.abs(np.linalg.det(affine[:3, :3])), abs(np.linalg.det(source.affine[:3, :3]))
        )
        grid = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij")).reshape(3, -1)
        source_ijk = (np.linalg.inv(source.affine) @ affine @ np.vstack([grid, np.ones(grid.shape[1])]))[:3]
        assert np.abs(source_ijk - np.round(source_ijk)).max() < 1e-3
        assert source_ijk.min() > -0.5 and source_ijk.max() < np.array(source.spatial_shape).max() - 0.5
    # The input crop is the source's voxels there, in HU clipped to the CT window of the tiny preset.
    crop = volume_node_to_volume(sample["input"]).array[0].astype(np.float64)
    index = np.round(source_ijk).astype(int)
    expected = np.clip(source.array[0][index[0], index[1], index[2]], -1000, 1000).reshape(crop.shape)
    np.testing.assert_allclose(crop, expected, atol=0.05)
    assert not np.allclose(volume_node_to_volume(sample["masked"]).array, crop), "part of the crop is masked"
    # Loading again replaces the nodes instead of adding more.
    panel_logic.load_reconstructions(pretrain_run.run, scene)
    assert _node_count(scene, "vtkMRMLScalarVolumeNode") == before + 3


def test_cancel_and_resume_of_a_finished_run_change_nothing(pretrain_run) -> None:
    events_before = pretrain_run.run.events_jsonl.read_bytes()
    assert panel_logic.cancel_job(pretrain_run.run) == "done"
    resumed = panel_logic.resume_job(pretrain_run.run)
    assert resumed.process is None  # nothing left to do: no worker started
    assert pretrain_run.run.events_jsonl.read_bytes() == events_before
    assert refresh_status(pretrain_run.run)["state"] == "done"


# --------------------------------------------------------------------------------------------
# scene volumes, settings and launch errors


def test_scene_volumes_are_written_with_hardened_transforms_and_unique_names(tmp_path: Path) -> None:
    scene = slicer.vtkMRMLScene()
    rng = np.random.default_rng(0)
    oblique = np.array(
        [[0.0, -1.5, 0.2, 10.0], [2.0, 0.0, 0.0, -20.0], [0.0, 0.1, 3.0, 5.0], [0, 0, 0, 1]], dtype=np.float64
    )
    from MedSegNASLib.data.volume import Volume

    first = volume_to_volume_node(
        Volume(rng.normal(size=(1, 6, 7, 8)).astype(np.float32), oblique), scene, "CT a/b"
    )
    second = volume_to_volume_node(
        Volume(rng.integers(-1000, 1000, (1, 5, 5, 5)).astype(np.int16), np.eye(4)), scene, "CT a/b"
    )
    moved = np.eye(4)
    moved[:3, 3] = (4.0, -2.0, 7.5)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(_vtk_matrix(moved))
    second.SetAndObserveTransformNodeID(transform.GetID())

    paths = panel_logic.export_scene_volumes([first, second], tmp_path / "inputs")
    assert [path.name for path in paths] == ["CT_a_b.nii.gz", "CT_a_b_2.nii.gz"]
    first.SetName("case_001.nii.gz")  # named after the file it was loaded from
    (renamed,) = panel_logic.export_scene_volumes([first], tmp_path / "renamed")
    assert renamed.name == "case_001_nii_gz.nii.gz" and read_volume(renamed).array.shape == (1, 6, 7, 8)
    written = [read_volume(path) for path in paths]
    np.testing.assert_allclose(written[0].affine, oblique, atol=1e-5)
    np.testing.assert_allclose(written[1].affine, moved, atol=1e-5)
    np.testing.assert_array_equal(written[0].array, volume_node_to_volume(first).array)
    np.testing.assert_array_equal(written[1].array, volume_node_to_volume(second).array)


def test_bad_settings_or_no_images_start_nothing_and_leave_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(MedSegNASError, match="feature_size must be divisible by 12"):
        panel_logic.start_pretraining(runs, PretrainOptions(feature_size=13), images=tmp_path)
    with pytest.raises(MedSegNASError, match="roi side must be divisible by 32"):
        panel_logic.start_pretraining(runs, PretrainOptions(crop_size=40), images=tmp_path)
    with pytest.raises(DatasetError, match="choose the images"):
        panel_logic.start_pretraining(runs, PretrainOptions())
    with pytest.raises(DatasetError, match="no volume chosen"):
        panel_logic.start_pretraining(runs, PretrainOptions(), volume_nodes=[None])
    assert not runs.exists() or list(runs.iterdir()) == []
    with pytest.raises(MedSegNASError, match="whole numbers separated by commas"):
        panel_logic.start_fewshot(runs, tmp_path, tmp_path, shots="2, four")
    with pytest.raises(MedSegNASError, match="choose the labelled dataset"):
        panel_logic.start_finetuning(runs, tmp_path, tmp_path / "missing.json")
    assert not runs.exists() or list(runs.iterdir()) == []


def test_preset_defaults_are_the_presets_settings() -> None:
    assert panel_logic.preset_defaults("tiny") == {
        "steps": 200,
        "crop_size": 32,
        "feature_size": 12,
        "batch_size": 2,
        "loss_weights": {"rotation": 1.0, "contrastive": 1.0, "reconstruction": 1.0},
    }
    assert panel_logic.preset_defaults("full")["crop_size"] == 96
    with pytest.raises(MedSegNASError, match="unknown preset"):
        panel_logic.preset_defaults("huge")


# --------------------------------------------------------------------------------------------
# following runs: curves of a resumed run, dead workers


def test_curves_of_a_resumed_run_replace_the_steps_logged_after_its_checkpoint() -> None:
    def progress(step: int, loss: float) -> dict:
        metrics = {"loss": loss, "rotation": loss / 2, "contrastive": "nan", "reconstruction": 0.1}
        return {"type": "progress", "step": step, "total": 10, "metrics": metrics}

    curves = LossCurves()
    assert curves.add_events([progress(1, 3.0), progress(2, 2.5), progress(3, 2.0), {"type": "log"}])
    # Killed after step 3, resumed from the checkpoint of step 2: steps 3.. come again.
    assert curves.add_events([progress(3, 2.2), progress(4, 1.9)])
    assert not curves.add_events([{"type": "checkpoint", "step": 4}])
    assert curves.steps == [1, 2, 3, 4]
    assert curves.values("total") == [3.0, 2.5, 2.2, 1.9]
    assert curves.values("rotation") == [1.5, 1.25, 1.1, 0.95]
    assert all(math.isnan(value) for value in curves.values("contrastive"))


def test_a_run_whose_worker_died_is_not_reattached_to(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(finished.stdout)
    run = RunDir.create(tmp_path / "runs", "finetune")
    run.write_job({"kind": "finetune", "config": None, "inputs": {}})
    run.write_status(state="running", pid=dead_pid, pid_start=process_start_ticks(dead_pid), host=hostname())
    assert panel_logic.live_runs(tmp_path / "runs") == {}
    assert refresh_status(run)["state"] == "failed"
    followers: dict[str, JobFollower] = {}
    assert panel_logic.attach_live_runs(followers, tmp_path / "runs", ["finetune"]) == []
    follower = JobFollower(run)
    assert follower.poll().finished
    assert follower.progress_text().startswith("Failed: worker process")


# --------------------------------------------------------------------------------------------
# few-shot table, fine-tuned model


FEWSHOT_HEADER = [
    "labelled_cases",
    "init",
    "mean_dice",
    "dice_liver",
    "dice_spleen",
    "steps",
    "seed",
    "eval_cases",
    "encoder_tensors_loaded",
    "seconds",
    "run",
]


def _write_fewshot_run(root: Path) -> tuple[RunDir, list[list[str]]]:
    run = RunDir.create(root, "fewshot")
    rows = []
    for shots in (2, 4, 8):
        for init in ("random", "pretrained"):
            dice = 0.3 + 0.05 * shots + (0.1 if init == "pretrained" else 0.0)
            spleen = "" if (shots, init) == (2, "random") else f"{dice - 0.1:.4f}"  # absent in every case
            loaded = "58" if init == "pretrained" else ""
            rows.append(
                [
                    str(shots),
                    init,
                    f"{dice:.4f}",
                    f"{dice + 0.1:.4f}",
                    spleen,
                    "40",
                    "0",
                    "2",
                    loaded,
                    "12.5",
                    f"runs/n{shots}-{init}",
                ]
            )
    with open(run.artifacts / "fewshot.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([FEWSHOT_HEADER, *rows])
    return run, rows


def test_fewshot_csv_becomes_a_table_node_with_its_rows(tmp_path: Path) -> None:
    scene = slicer.vtkMRMLScene()
    run, rows = _write_fewshot_run(tmp_path / "runs")
    table = panel_logic.fewshot_table_node(run, scene)
    assert table.GetName() == f"{run.run_id} few-shot"
    assert (table.GetNumberOfRows(), table.GetNumberOfColumns()) == (6, len(FEWSHOT_HEADER))
    vtk_table = table.GetTable()
    assert [vtk_table.GetColumn(i).GetName() for i in range(len(FEWSHOT_HEADER))] == FEWSHOT_HEADER
    assert vtk_table.GetColumnByName("labelled_cases").GetClassName() == "vtkIntArray"
    assert vtk_table.GetColumnByName("init").GetClassName() == "vtkStringArray"
    mean = vtk_table.GetColumnByName("mean_dice")
    assert [mean.GetValue(i) for i in range(6)] == pytest.approx([float(row[2]) for row in rows])
    assert math.isnan(vtk_table.GetColumnByName("dice_spleen").GetValue(0))
    assert [table.GetCellText(i, 1) for i in range(6)] == [row[1] for row in rows]
    assert table.GetCellText(5, 10) == "runs/n8-pretrained"
    # Shown again (the run rewrote its table): the same node is filled, no second one.
    assert panel_logic.fewshot_table_node(run.artifacts / "fewshot.csv", scene, name=table.GetName()) is table
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert set(panel_logic.fewshot_files(run)) == {"csv"}


def test_a_fewshot_run_without_its_table_yet_says_so(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "fewshot")
    with pytest.raises(JobError, match="no few-shot table yet"):
        panel_logic.fewshot_table_node(run, slicer.vtkMRMLScene())


def test_use_this_model_registers_the_bundle_of_a_finished_finetuning(tmp_path: Path, monkeypatch) -> None:
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.models.export import export_bundle
    from MedSegNASLib.models.registry import ModelRegistry
    from segment_fixtures import TINY_SPEC, UNET_DEF, build

    run = RunDir.create(tmp_path / "runs", "finetune")
    run.write_job({"kind": "finetune", "config": None, "inputs": {}})
    run.write_status(state="running", pid=None, host=hostname())
    with pytest.raises(JobError, match="only a finished fine-tuning"):
        panel_logic.use_model(run, home=tmp_path / "home")
    bundle = export_bundle(
        run.artifacts / "bundle",
        network_def=UNET_DEF,
        state_dict=build(UNET_DEF).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="phantom_ssl_finetuned",
    )
    run.append_event({"type": "artifact", "path": "artifacts/bundle", "kind": "model"})
    run.write_status(state="done", result={"bundle": "artifacts/bundle"})
    assert panel_logic.find_bundle(run) == bundle
    record = panel_logic.use_model(run, home=tmp_path / "home")
    assert record.id == "phantom_ssl_finetuned"
    assert [model.id for model in ModelRegistry(tmp_path / "home").list()] == ["phantom_ssl_finetuned"]
    assert (bundle / "configs" / "metadata.json").is_file(), "the run keeps its own copy"
