"""The MedSegNAS panel's Segment button over the warm segmentation worker, driven as a user drives it.

The module file runs in ``Testing/slicer_harness`` (real MRML scene of slicer-core, real worker
process): Segment twice (the second reports the model already loaded, the same worker, the result
node refilled), a markups ROI chosen under Region (the result is ``medsegnas segment --box`` of the
ROI's bounds: equal label maps, empty outside), an unplaced ROI refused, Cancel, and the worker
stopped on scene close and on module cleanup. Every GUI callback stays under the panel tests' bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import panel_session  # noqa: E402
from panel_session import open_panel  # noqa: E402

slicer = pytest.importorskip("slicer")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture
def slicer_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from panel_session.session(tmp_path, monkeypatch)


def _segmentations() -> list:
    scene = slicer.mrmlScene
    cls = "vtkMRMLSegmentationNode"
    return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]


def _labels(segmentation, volume) -> np.ndarray:
    from MedSegNASLib.panels.slicer_bridge import segmentation_node_to_labelmap

    return segmentation_node_to_labelmap(segmentation, volume).array[0]


def _worker_gone(process, timeout: float = 30.0) -> bool:
    import subprocess

    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return False
    return True


def test_segment_twice_warm_roi_cancel_and_stop(slicer_app, phantom_dataset, tmp_path: Path) -> None:
    from MedSegNASLib.cli import main as medsegnas_main
    from MedSegNASLib.panels.panel_selftest import phantom_bundle
    from MedSegNASLib.panels.slicer_bridge import export_volume_node
    from test_panel_medsegnas import _assert_gui_stays_responsive

    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    app.slot_times.clear()
    record = w.logic.registry().import_model(phantom_bundle(tmp_path / "bundles"))
    app.click(ui.modelsRefreshButton)
    assert w._parameterNode.model == record.id
    volume, _truth = w.logic.loadDatasetCase(phantom_dataset(cases=1, size=32, seed=0), show=False)
    ui.inputVolumeNodeComboBox.setCurrentNode(volume)
    app.choose(ui.deviceComboBox, "cpu")

    # First Segment: the worker starts and loads the model.
    app.click(ui.segmentButton)
    assert (ui.segmentButton.text, ui.segmentButton.enabled) == ("Cancel", True)
    seen = set()

    def done() -> bool:
        seen.add((ui.segmentStatusLabel.text, ui.segmentProgressBar.value))
        return ui.segmentButton.text == "Segment"

    app.wait_until(done, 240, "the first segmentation")
    assert app.dialogs == [] and app.slot_errors == []
    status = ui.segmentStatusLabel.text
    assert status.startswith(f"Done: {volume.GetName()} - {record.id}") and "model loaded in" in status, (
        status
    )
    assert "planned: peak" in status and "GiB" in status, status  # the plan, known before the run
    assert any(value > 0 for _text, value in seen) and len({text for text, _value in seen}) > 1, seen
    (result,) = _segmentations()[1:]  # the truth loaded with the case, then the result
    whole = _labels(result, volume)
    process = w._segmenter.worker.process

    # Second Segment: the same worker, the model already loaded, the same node refilled.
    app.click(ui.segmentButton)
    app.wait_until(lambda: ui.segmentButton.text == "Segment", 120, "the second segmentation")
    assert "model already loaded" in ui.segmentStatusLabel.text, ui.segmentStatusLabel.text
    assert w._segmenter.worker.process is process and w._segmenter.started_workers == 1
    assert _segmentations()[1:] == [result] and np.array_equal(_labels(result, volume), whole)

    # Region: a markups ROI; the label map is `segment --box` of its bounds.
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Kidneys")
    ui.segmentRoiNodeComboBox.setCurrentNode(roi)
    assert w._parameterNode.segmentRoi is roi
    app.click(ui.segmentButton)  # not placed yet: said at once, nothing sent
    assert len(app.dialogs) == 1 and "not placed yet" in app.dialogs[0], app.dialogs
    assert ui.segmentButton.text == "Segment"
    app.dialogs.clear()
    app.slot_errors.clear()
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    centre = [(bounds[2 * a] + bounds[2 * a + 1]) / 2 for a in range(3)]
    roi.SetXYZ(*centre)
    roi.SetRadiusXYZ(*[(bounds[2 * a + 1] - bounds[2 * a]) / 5 for a in range(3)])
    app.click(ui.segmentButton)
    app.wait_until(lambda: ui.segmentButton.text == "Segment", 120, "the ROI segmentation")
    assert "model already loaded" in ui.segmentStatusLabel.text, ui.segmentStatusLabel.text
    inside = _labels(result, volume)
    image = export_volume_node(volume, tmp_path / "input.nrrd")
    box = [0.0] * 6
    roi.GetRASBounds(box)
    argv = ["segment", str(image), "--model", record.id, "-o", str(tmp_path / "box.nrrd"), "--device", "cpu"]
    argv.append("--box=" + ",".join(map(str, (box[0], box[2], box[4], box[1], box[3], box[5]))))
    assert medsegnas_main(argv) == 0
    from MedSegNASLib.data.io import read_volume

    expected = read_volume(tmp_path / "box.nrrd").array[0]
    assert inside.any() and np.array_equal(inside, expected)
    assert np.count_nonzero(inside) < np.count_nonzero(whole)

    # Cancel: the worker stops between window batches; nothing new in the scene, the worker stays.
    ui.segmentRoiNodeComboBox.setCurrentNode(None)
    app.click(ui.segmentButton)
    app.click(ui.segmentButton)  # Cancel
    assert ui.segmentStatusLabel.text.startswith("Cancelling")
    app.wait_until(lambda: ui.segmentButton.text == "Segment", 120, "the cancelled segmentation")
    assert ui.segmentStatusLabel.text == "Cancelled", ui.segmentStatusLabel.text
    assert _segmentations()[1:] == [result] and np.array_equal(_labels(result, volume), inside)
    assert w._segmenter.worker.process is process and process.poll() is None
    assert app.dialogs == [] and app.slot_errors == []
    _assert_gui_stays_responsive(app.slot_times)

    # Scene close stops the worker.
    app.close_scene()
    assert _worker_gone(process) and process.returncode == 0
    app.new_session()  # Slicer exits: cleanup
    assert w._segmenter.worker is None


def test_module_cleanup_stops_the_worker_and_the_segmentation_it_runs(
    slicer_app, phantom_dataset, tmp_path: Path
) -> None:
    from MedSegNASLib.panels.panel_selftest import phantom_bundle

    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    record = w.logic.registry().import_model(phantom_bundle(tmp_path / "bundles"))
    app.click(ui.modelsRefreshButton)
    volume, _truth = w.logic.loadDatasetCase(phantom_dataset(cases=1, size=32, seed=0), show=False)
    ui.inputVolumeNodeComboBox.setCurrentNode(volume)
    app.click(ui.segmentButton)
    assert w._parameterNode.model == record.id and ui.segmentButton.text == "Cancel"
    worker = w._segmenter.worker
    app.wait_until(lambda: worker.ready is not None or ui.segmentButton.text == "Segment", 120, "the worker")
    app.new_session()  # the application exits while the segmentation runs (or just ended)
    assert w._segmenter.worker is None and _worker_gone(worker.process)
    assert not worker.folder.exists()  # the inputs written for it are removed
    assert app.slot_errors == []
