"""The MedSegNAS module file itself (``MedSegNAS/MedSegNAS.py``), driven as a user drives it.

The panel runs offscreen in ``Testing/slicer_harness`` (PythonQt-style Qt over PySide6, the real MRML
scene of slicer-core, real worker subprocesses); each test clicks buttons and checks what the user
sees: button texts and states, status lines, nodes in the scene, the slice views and the layout.

Handlers covered (test in brackets):

* Module: ``MedSegNAS.__init__`` (dependencies) [test_module_declares_what_it_uses];
  ``setup``, ``enter``, ``initializeParameterNode``, ``setParameterNode``,
  ``_onParameterNodeModified`` [every test]; ``exit``, ``onSceneStartClose``, ``onSceneEndClose``
  (scene closed while the module is hidden) [test_user_journey]; ``cleanup`` [fixture teardown].
* Jobs: ``onJobButton`` start and cancel for Generate phantom, Search, Train, Segment; ``_follow``,
  ``_pollJobs`` (timer), ``_stopFollowing``, ``_onPhantomDone``, ``_onTrainingDone``,
  ``_onSegmentDone`` [test_user_journey, test_search_then_cancel_resume_and_cancel_from_runs].
* Runs: ``refreshRuns`` (button, timer), ``_onRunSelected``, Show folder, Cancel, Resume, Curves
  (``_showCurves``), Load predictions, Use this model [test_user_journey,
  test_search_then_cancel_resume_and_cancel_from_runs].
* Models: ``refreshModels`` (Refresh), ``_onModelChosen``, Browse folder / Browse file
  (``_browseModel``), Open folder, Import (``onImportModel``, ``_pollTask`` timer), Remove
  [test_models_section]; Download [test_buttons_ask_for_missing_packages].
* Evaluate: ``onEvaluate`` [test_user_journey]; scene cases: ``refreshSceneCases``,
  ``_checkedSceneCases`` [test_scene_cases_are_listed_with_checkboxes].
* Package checks of Evaluate, Curves, Load predictions, Import, Download, Remove, Use this model
  [test_buttons_ask_for_missing_packages]; errors inside timers [test_timer_errors_show_once].
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import panel_session  # noqa: E402
from panel_session import ROOT, missing, open_panel  # noqa: E402

slicer = pytest.importorskip("slicer")


@pytest.fixture
def slicer_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from panel_session.session(tmp_path, monkeypatch)


FOUR_UP = 3  # slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


def _layout_has_plot(app) -> bool:
    return "plot" in (app.layout_node.GetCurrentLayoutDescription() or "").lower()


def _layout_has_table(app) -> bool:
    return "table" in (app.layout_node.GetCurrentLayoutDescription() or "").lower()


def _nodes(cls: str) -> list:
    return [
        slicer.mrmlScene.GetNthNodeByClass(i, cls)
        for i in range(slicer.mrmlScene.GetNumberOfNodesByClass(cls))
    ]


def _select_run(app, w, kind: str) -> str:
    """Select the newest run of ``kind`` in the runs table (as a click on its row); returns its path."""
    table = w.ui.runsTableWidget
    app.click(w.ui.runsRefreshButton)
    for row in range(table.rowCount):
        path = table.item(row, 0).data(slicer_harness_qt().Qt.UserRole)
        if Path(path).name.startswith(kind + "-"):
            table.selectRow(row)
            return path
    raise AssertionError(f"no {kind} run listed")


def slicer_harness_qt():
    import qt

    return qt


def test_module_declares_what_it_uses(slicer_app) -> None:
    """Every ``slicer.modules.X`` the module files use is a declared dependency (Plots: curves)."""
    for name in ("MedSegNAS", "SSLPretrain"):
        source = (ROOT / name / f"{name}.py").read_text()
        module, _widget = slicer_app.load_module(name, ROOT / name)
        declared = {d.lower() for d in slicer.modules.__dict__[name.lower()].dependencies}
        used = set(re.findall(r"slicer\.modules\.(\w+)", source))
        assert used <= declared | {"medsegnas"}, f"{name} uses {sorted(used - declared)} without declaring it"
        assert "plots" in declared


def test_opening_the_panel_changes_nothing_and_lists_runs(slicer_app) -> None:
    w = open_panel(slicer_app, "MedSegNAS")
    assert (w.ui.segmentButton.text, w.ui.segmentButton.enabled) == ("Segment", False)  # no volume, no model
    assert (w.ui.searchButton.text, w.ui.searchButton.enabled) == ("Search", True)
    assert (w.ui.trainButton.text, w.ui.trainButton.enabled) == ("Train", True)
    assert w.ui.runsStatusLabel.text.startswith("0 run(s) in ")
    assert slicer_app.layout_manager.history == [FOUR_UP]
    assert slicer_app.dialogs == [] and slicer_app.slot_errors == []


def test_user_journey(slicer_app, tmp_path: Path) -> None:
    """Phantom data -> Train (hide the module and close the scene meanwhile) -> curves -> model ->
    Segment -> Load predictions -> Evaluate; what the user sees at each step."""
    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    ui.phantomFolderPathLineEdit.currentPath = str(tmp_path / "phantom")
    ui.phantomCasesSpinBox.value, ui.phantomUnlabeledSpinBox.value, ui.phantomSizeSpinBox.value = 2, 0, 32
    app.click(ui.phantomButton)
    assert (ui.phantomButton.text, ui.phantomButton.enabled) == ("Cancel", True)
    app.wait_until(lambda: ui.phantomStatusLabel.text.startswith("Done"), 120, "the phantom job")
    assert ui.phantomButton.text == "Generate phantom dataset"
    volume = app.background_volume()
    assert volume is not None and volume.GetImageData().GetDimensions() == (32, 32, 32)
    assert len(_nodes("vtkMRMLSegmentationNode")) == 1

    # defect 6: Train must not turn the Search button into Cancel (job.json has no kind yet)
    ui.datasetPathLineEdit.currentPath = str(tmp_path / "phantom")
    ui.networkComboBox.currentIndex = ui.networkComboBox.findText("unet")
    ui.epochsSpinBox.value, ui.patchSizeSpinBox.value = 1, 32
    app.click(ui.trainButton)
    assert (ui.trainButton.text, ui.trainButton.enabled) == ("Cancel", True)
    assert (ui.searchButton.text, ui.searchButton.enabled) == ("Search", False)

    # defect 7: the module is hidden and the scene closed while the job runs
    app.exit(w)
    app.close_scene()
    app.wait_until(lambda: w._areas["train"].follower is None, 300, "the train job")
    assert app.slot_errors == [] and app.dialogs == []
    assert ui.trainStatusLabel.text.startswith("Done"), ui.trainStatusLabel.text
    # the trained model is registered and listed; its curves are shown beside its Dice table (defect 5)
    assert ui.modelComboBox.count == 1
    assert _layout_has_plot(app) and _layout_has_table(app), app.layout_node.GetCurrentLayoutDescription()

    app.enter(w)
    assert w._parameterNode.runsFolder != tmp_path / "runs"  # the settings went with the closed scene
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    # the model choice reaches the parameter node (signals not left blocked)
    ui.modelComboBox.currentIndex = -1
    ui.modelComboBox.currentIndex = 0
    assert w._parameterNode.model == ui.modelComboBox.currentData != ""

    # Runs: the train run's predictions and model
    path = _select_run(app, w, "train")
    assert (
        ui.runsLoadPredictionsButton.enabled and ui.runsUseModelButton.enabled and ui.runsCurvesButton.enabled
    )
    app.click(ui.runsShowFolderButton)
    assert ("openUrl", path) in app.calls
    app.click(ui.runsLoadPredictionsButton)
    assert len(_nodes("vtkMRMLSegmentationNode")) == 2  # prediction and truth of the validation case
    app.click(ui.runsUseModelButton)
    assert "Registered as" in ui.runsStatusLabel.text
    app.layout_manager.setLayout(FOUR_UP)
    app.click(ui.runsCurvesButton)
    assert _layout_has_plot(app) and _layout_has_table(app)

    # Segment the shown volume with the trained model
    ui.inputVolumeNodeComboBox.setCurrentNode(app.background_volume())
    assert ui.segmentButton.enabled
    app.click(ui.segmentButton)
    assert ui.segmentButton.text == "Cancel"
    app.wait_until(lambda: ui.segmentStatusLabel.text.startswith("Done"), 240, "the segment job")
    assert ui.segmentButton.text == "Segment" and app.slot_errors == []
    model_name = ui.modelComboBox.currentText
    results = [n for n in _nodes("vtkMRMLSegmentationNode") if n.GetName().endswith(model_name.split(" ")[0])]
    assert results, [n.GetName() for n in _nodes("vtkMRMLSegmentationNode")]

    # Evaluate the result against a prediction loaded from the run
    ui.evaluateSegmentationNodeComboBox.setCurrentNode(results[0])
    ui.evaluateReferenceNodeComboBox.setCurrentNode(_nodes("vtkMRMLSegmentationNode")[0])
    app.click(ui.evaluateButton)
    assert ui.evaluateStatusLabel.text.startswith("Scores in table")
    assert _layout_has_table(app) and _layout_has_plot(app)
    assert app.dialogs == [] and app.slot_errors == []
