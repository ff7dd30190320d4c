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
  ``_onSegmentDone`` [test_user_journey, test_search_then_cancel_resume_and_cancel_from_runs];
  ``onJobButton`` start for Tune (Trials, Budget), ``_onTrainingDone`` of a tune run
  [test_tune_runs_in_the_train_area_and_lists_its_model].
* Runs: ``refreshRuns`` (button, timer), ``_onRunSelected``, Show folder, Cancel, Resume, Curves
  (``_showCurves``), Load predictions, Use this model (a model-import job: ``_startTask``,
  ``_pollTask``) [test_user_journey,
  test_search_then_cancel_resume_and_cancel_from_runs].
* Models: ``refreshModels`` (Refresh), ``_onModelChosen``, Browse folder / Browse file
  (``_browseModel``), Open folder, Import (``onImportModel``, ``_pollTask`` timer), Remove
  [test_models_section]; Download [test_buttons_ask_for_missing_packages].
* Evaluate: ``onEvaluate`` and its job's ``_pollEvaluation`` (timer) [test_user_journey]; scene cases: ``refreshSceneCases``,
  ``_checkedSceneCases`` [test_scene_cases_are_listed_with_checkboxes].
* Package checks of Evaluate, Curves, Load predictions, Import, Download, Remove, Use this model
  [test_buttons_ask_for_missing_packages]; errors inside timers [test_timer_errors_show_once];
  Search with Epochs within the preset's warm-up [test_search_refuses_epochs_within_the_warm_up].
* Every slot's longest call stays under a bound (``_assert_gui_stays_responsive``) [test_user_journey,
  test_search_then_cancel_resume_and_cancel_from_runs].
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


def test_user_journey(slicer_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Phantom data -> Train (hide the module and close the scene meanwhile) -> curves -> model ->
    Segment -> Load predictions -> Evaluate; what the user sees at each step."""
    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    app.slot_times.clear()  # this test's calls only (the harness keeps the longest since it started)
    torch_before = {name for name in ("torch", "monai") if name in sys.modules}
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
    app.click(ui.runsUseModelButton)  # a short model-import job: torch is never imported in the GUI
    assert ui.runsStatusLabel.text.startswith("Importing "), ui.runsStatusLabel.text
    app.wait_until(lambda: "Registered as" in ui.runsStatusLabel.text, 120, "the model registration")
    assert ui.modelComboBox.count == 2 and w._parameterNode.model == ui.modelComboBox.currentData
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
    app.click(ui.evaluateButton)  # scored in a worker: the button waits until the table is shown
    assert not ui.evaluateButton.enabled and ui.evaluateStatusLabel.text.startswith("Evaluating")
    app.wait_until(lambda: ui.evaluateStatusLabel.text.startswith("Scores in table"), 120, "the evaluation")
    assert ui.evaluateButton.enabled
    assert _layout_has_table(app) and _layout_has_plot(app)
    assert app.dialogs == [] and app.slot_errors == []

    # defect 4: without a package, each button asks to install it; declined, nothing else happens
    missing(monkeypatch, "nibabel")
    app.answer = False
    segmentations, arrangement = len(_nodes("vtkMRMLSegmentationNode")), app.layout_node.GetViewArrangement()
    app.layout_manager.setLayout(FOUR_UP)
    for button in (
        ui.evaluateButton,
        ui.runsCurvesButton,
        ui.runsLoadPredictionsButton,
        ui.runsUseModelButton,
    ):
        app.dialogs.clear()
        app.click(button)
        assert len(app.dialogs) == 1 and "nibabel" in app.dialogs[0], (button.objectName(), app.dialogs)
    assert len(_nodes("vtkMRMLSegmentationNode")) == segmentations and app.layout_manager.layout == FOUR_UP
    assert app.slot_errors == [] and arrangement
    slowest = sorted(app.slot_times.items(), key=lambda item: -item[1])[:8]
    print("longest GUI callbacks (s):", ", ".join(f"{name} {seconds:.3f}" for name, seconds in slowest))
    _assert_gui_stays_responsive(app.slot_times)
    if not torch_before:  # in a process without them (this test alone): no handler imported torch or MONAI
        assert not {"torch", "monai"} & set(sys.modules), "a GUI callback imported torch/MONAI"


#: Bound on any one GUI callback in these tests (s). The target in Slicer is 50 ms (issue 11); this
#: machine is a loaded 2-core one, where the journey's handlers measured 10-140 ms, so the bound only
#: catches real regressions such as torch being imported on the GUI thread (19-22 s, now in workers).
GUI_CALL_BOUND_S = 0.5
#: Documented exceptions (slot -> bound): the job timer's first loaded result imports
#: ``MedSegNASLib.data`` (nibabel, and pydicom through it) in the GUI process once: 0.3-0.7 s here,
#: about 20 ms of loading once imported (Slicer has pydicom loaded already); 3 s leaves room for load.
GUI_CALL_EXCEPTIONS_S = {"QTimer.timeout(): MedSegNASWidget._pollJobs": 3.0}


def _assert_gui_stays_responsive(slot_times: dict[str, float]) -> None:
    slow = {
        name: round(seconds, 3)
        for name, seconds in slot_times.items()
        if seconds > GUI_CALL_EXCEPTIONS_S.get(name, GUI_CALL_BOUND_S)
    }
    assert not slow, f"GUI callbacks over their bound (s): {slow}"


def test_search_then_cancel_resume_and_cancel_from_runs(slicer_app, phantom_dataset, tmp_path: Path) -> None:
    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    app.slot_times.clear()
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    ui.datasetPathLineEdit.currentPath = str(phantom_dataset(cases=3, size=32, seed=0))  # a search needs 3
    ui.patchSizeSpinBox.value = 32  # the preset's 12 epochs: cancelled long before
    app.click(ui.searchButton)
    assert (ui.searchButton.text, ui.trainButton.text, ui.trainButton.enabled) == ("Cancel", "Train", False)
    app.wait_until(lambda: ui.runsTableWidget.rowCount == 1, 10, "the run listed")
    run = w._areas["train"].follower.run
    progress = lambda: any(e["type"] == "progress" for e in run.read_events()[0])  # noqa: E731
    app.wait_until(lambda: progress() or w._areas["train"].follower is None, 120, "the search's progress")
    assert run.read_status()["state"] == "running", run.read_status().get("error")
    app.process_events(3.5)  # the runs table refreshes itself while a run is live
    app.click(ui.searchButton)  # Cancel
    assert ui.trainStatusLabel.text.startswith("Cancelling"), (
        ui.trainStatusLabel.text,
        app.dialogs,
        app.slot_errors,
    )
    app.wait_until(lambda: w._areas["train"].follower is None, 180, "the search to stop")
    assert (ui.searchButton.text, ui.searchButton.enabled, ui.trainButton.enabled) == ("Search", True, True)
    _select_run(app, w, "search")
    assert ui.runsResumeButton.enabled and not ui.runsCancelButton.enabled
    app.click(ui.runsResumeButton)
    assert (ui.searchButton.text, ui.searchButton.enabled) == ("Cancel", True)
    assert ui.runsCancelButton.enabled
    app.click(ui.runsCancelButton)
    app.wait_until(lambda: w._areas["train"].follower is None, 180, "the resumed search to stop")
    assert ui.searchButton.text == "Search" and ui.runsResumeButton.enabled
    assert app.dialogs == [] and app.slot_errors == []
    _assert_gui_stays_responsive(app.slot_times)


def test_tune_runs_in_the_train_area_and_lists_its_model(slicer_app, phantom_dataset, tmp_path: Path) -> None:
    """Tune (2 trials of 5 steps, the Budget's minimum, of a UNet on a 2-case 32^3 phantom, ~25 s on the loaded 2-core
    machine): Cancel while it runs, the other buttons disabled, progress shown, then the tune run
    under Runs with its model (the final retrain), registered and listed in Models."""
    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    app.slot_times.clear()
    assert (ui.tuneButton.text, ui.tuneButton.enabled) == ("Tune", True)
    assert (ui.tuneTrialsSpinBox.value, ui.tuneBudgetStepsSpinBox.value) == (8, 40)  # the defaults
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    ui.datasetPathLineEdit.currentPath = str(phantom_dataset(cases=2, size=32, seed=0))
    ui.networkComboBox.currentIndex = ui.networkComboBox.findText("unet")
    ui.tuneTrialsSpinBox.value, ui.tuneBudgetStepsSpinBox.value = 2, 4
    assert (w._parameterNode.tuneTrials, w._parameterNode.tuneBudgetSteps) == (2, 5)  # 5: the least budget
    app.click(ui.tuneButton)
    assert (ui.tuneButton.text, ui.tuneButton.enabled) == ("Cancel", True), (app.dialogs, app.slot_errors)
    assert [(b.text, b.enabled) for b in (ui.searchButton, ui.trainButton)] == [
        ("Search", False),
        ("Train", False),
    ]
    run = w._areas["train"].follower.run
    assert run.path.name.startswith("tune-")
    seen = set()  # status lines and progress values shown while the tune runs

    def finished() -> bool:
        seen.add((ui.trainStatusLabel.text, ui.trainProgressBar.value))
        return w._areas["train"].follower is None

    app.wait_until(finished, 240, "the tune job")
    assert app.dialogs == [] and app.slot_errors == []
    assert ui.trainStatusLabel.text.startswith("Done"), ui.trainStatusLabel.text
    assert any(value > 0 for _text, value in seen) and len({text for text, _value in seen}) > 2, seen
    assert [(b.text, b.enabled) for b in (ui.searchButton, ui.trainButton, ui.tuneButton)] == [
        ("Search", True),
        ("Train", True),
        ("Tune", True),
    ]
    job = run.read_job()
    assert job["kind"] == "tune"
    assert job["argv"][job["argv"].index("--trials") :][:4] == ["--trials", "2", "--budget-steps", "5"]
    assert (job["config"]["tune"]["trials"], job["config"]["tune"]["budget_steps"]) == (2, 5)
    assert ui.modelComboBox.count == 1  # the final retrain is registered
    assert _layout_has_plot(app)  # its curves are shown, as for a train run
    assert _select_run(app, w, "tune") == str(run.path)
    assert ui.runsUseModelButton.enabled and ui.runsLoadPredictionsButton.enabled
    assert "Tune: 2 trial(s), best trial" in ui.runDetailsLabel.text, ui.runDetailsLabel.text
    assert (run.path / "artifacts" / "model").is_dir() and (
        run.path / "artifacts" / "best_config.yaml"
    ).is_file()
    _assert_gui_stays_responsive(app.slot_times)


def test_models_section(slicer_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Browse, import, choose, remove a bundle; package checks of Import, Download, Remove (defect 4)."""
    import qt
    from MedSegNASLib.panels.panel_selftest import phantom_bundle

    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    bundle = phantom_bundle(tmp_path / "bundles")
    qt.ANSWERS["getExistingDirectory"] = str(bundle)
    app.click(ui.modelsBrowseFolderButton)
    assert ui.modelSourceLineEdit.text == str(bundle)
    qt.ANSWERS["getOpenFileName"] = ""  # the user cancels the file dialog: nothing changes
    app.click(ui.modelsBrowseFileButton)
    assert ui.modelSourceLineEdit.text == str(bundle)
    app.click(ui.modelsImportButton)
    assert not ui.modelsImportButton.enabled
    app.wait_until(lambda: ui.modelsImportButton.enabled, 120, "the import")
    assert ui.modelsStatusLabel.text.startswith("Imported as"), ui.modelsStatusLabel.text
    assert ui.modelComboBox.count == ui.modelsTableWidget.rowCount == 1
    assert w._parameterNode.model == ui.modelComboBox.currentData
    app.click(ui.modelsOpenFolderButton)
    assert app.calls[-1][0] == "openUrl" and Path(app.calls[-1][1]).is_dir()
    app.click(ui.modelsRefreshButton)
    assert ui.modelComboBox.count == 1

    ui.modelsTableWidget.selectRow(0)
    missing(monkeypatch, "nibabel")
    app.answer = False
    for button in (ui.modelsImportButton, ui.modelsDownloadButton, ui.modelsRemoveButton):
        app.dialogs.clear()
        app.click(button)
        assert len(app.dialogs) == 1 and "nibabel" in app.dialogs[0], (button.objectName(), app.dialogs)
    assert ui.modelComboBox.count == 1 and app.slot_errors == []
    monkeypatch.delitem(sys.modules, "nibabel")
    import nibabel  # noqa: F401 - installed again

    app.answer = True  # "Delete model ...?" OK
    app.click(ui.modelsRemoveButton)
    assert ui.modelComboBox.count == ui.modelsTableWidget.rowCount == 0
    assert w._parameterNode.model == "" and not ui.segmentButton.enabled


def test_scene_cases_are_listed_with_checkboxes(slicer_app, phantom_dataset) -> None:
    import qt

    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    dataset = phantom_dataset(cases=2, size=32, seed=0)
    for case in (0, 1):
        w.logic.loadDatasetCase(dataset, case, show=False)
    app.choose(w.ui.datasetSourceComboBox, "scene")
    assert not w.ui.datasetPathLineEdit.enabled and w.ui.sceneCasesRefreshButton.enabled
    app.click(w.ui.sceneCasesRefreshButton)
    table = w.ui.sceneCasesTableWidget
    assert table.rowCount == 2
    assert all(table.item(row, 0).checkState() == qt.Qt.Checked for row in range(2))
    table.item(1, 0).setCheckState(qt.Qt.Unchecked)
    app.click(w.ui.sceneCasesRefreshButton)  # the user's checks are kept
    assert [table.item(row, 0).checkState() for row in range(2)] == [qt.Qt.Checked, qt.Qt.Unchecked]
    assert w.ui.trainButton.enabled


def test_timer_errors_show_once_in_the_status_line(slicer_app, tmp_path: Path, caplog) -> None:
    """Defect 11: a job's result that fails to load is reported in the area's status line and the
    log, once, without a modal dialog (no user action started it: the panel re-attached to the run)."""
    app = slicer_app
    module, _widget = app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    run = module.MedSegNASLogic.launchPhantomJob(tmp_path / "phantom", 1, 0, 16, tmp_path / "runs")
    assert module.MedSegNASLogic.waitForJob(run, 120)["state"] == "done"
    (tmp_path / "phantom" / "dataset.json").unlink()  # the user deleted it meanwhile
    app.new_session()
    module, w = app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    w._parameterNode.runsFolder, w._parameterNode.phantomRun = tmp_path / "runs", str(run.path)
    app.enter(w)
    app.wait_until(lambda: w._areas["phantom"].follower is None, 30, "the re-attached run's end")
    app.process_events(1.5)
    assert w.ui.phantomStatusLabel.text.startswith("Failed to load the job's result: ")
    assert app.dialogs == [] and app.slot_errors == []
    assert sum("Failed to load the job's result" in r.getMessage() for r in caplog.records) == 1


def test_search_refuses_epochs_within_the_warm_up(slicer_app, tmp_path: Path) -> None:
    """Epochs at or below the preset's warm-up (tiny: 6) would fail in the worker: the click says
    so at once, and makes no run."""
    from MedSegNASLib.panels.panel_logic import check_epochs

    app, w = slicer_app, open_panel(slicer_app, "MedSegNAS")
    ui = w.ui
    ui.runsFolderPathLineEdit.currentPath = str(tmp_path / "runs")
    ui.datasetPathLineEdit.currentPath = str(tmp_path / "data")
    ui.epochsSpinBox.value = 6
    app.click(ui.searchButton)
    assert len(app.dialogs) == 1 and "at least 7" in app.dialogs[0], app.dialogs
    assert (ui.searchButton.text, ui.searchButton.enabled) == ("Search", True)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    # tryWithErrorDisplay shows the dialog, then re-raises (Slicer prints it to its console)
    assert [type(error).__name__ for _slot, error in app.slot_errors] == ["MedSegNASError"]
    check_epochs("search", "tiny", 7)  # one more is a valid search; 0 is the preset's; train has no warm-up
    check_epochs("search", "tiny", 0)
    check_epochs("train", "tiny", 1)
