"""MedSegNAS Slicer module: the panel and its parameter node, connected to ``MedSegNASLib.panels.panel_logic``.

Every long task is a background job (``MedSegNASLib.jobs``) followed from a ``qt.QTimer``, and
re-attached after a restart. Everything without Qt is in ``MedSegNASLib.panels``, tested with
slicer-core (the state behind the buttons: ``panels.panel_state``); this file connects widgets to it.

No ``from __future__ import annotations`` here: ``parameterNodeWrapper`` reads the field types
with ``typing.get_type_hints`` while Slicer is still loading this file.
"""

import contextlib
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MedSegNASLib.dependencies import doctor_report, unsupported_slicer_message
from MedSegNASLib.jobs import FINAL_STATES, RunDir, list_runs
from MedSegNASLib.panels import panel_dataset, panel_runs, panel_segment
from MedSegNASLib.panels import panel_logic as pl
from MedSegNASLib.panels import panel_selftest as selftest
from MedSegNASLib.panels.panel_state import (
    FollowedJob,
    JobArea,
    ModelTask,
    ParameterNodeHolder,
    ReportedErrors,
    is_chosen,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Milliseconds between two reads of the followed jobs, two refreshes of the runs table, two
#: checks of a model import or download.
JOB_POLL_INTERVAL_MS = 500
RUNS_REFRESH_INTERVAL_MS = 3000
TASK_POLL_INTERVAL_MS = 200


def _fillRow(table, row, cells, tooltip, data) -> None:
    """Fill a table widget row with read-only text cells carrying ``data`` (``qt.Qt.UserRole``)."""
    for column, text in enumerate(cells):
        item = qt.QTableWidgetItem(text)
        item.setToolTip(tooltip)
        item.setData(qt.Qt.UserRole, data)
        table.setItem(row, column, item)


def _selectedData(table):
    """The ``qt.Qt.UserRole`` data of a table widget's selected row (None: nothing selected)."""
    items = table.selectedItems()
    return items[0].data(qt.Qt.UserRole) if items else None


class MedSegNAS(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule in Slicer's Base/Python)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSegNAS")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Plots"]
        self.parent.contributors = ["MedSegNAS contributors (https://github.com/medsegnas/SlicerMedSegNAS)"]
        self.parent.helpText = _(
            """Segment organs in 3D images with pretrained MONAI bundles or with networks that MedSegNAS
finds by architecture search (DiNTS) on your data. Search, training and segmentation run as background
jobs that you follow, cancel and resume, here or on a GPU cluster; the Phantom data section writes a
synthetic CT dataset to try them. See the <a href="https://github.com/medsegnas/SlicerMedSegNAS#readme">documentation</a>."""
        )
        self.parent.acknowledgementText = _(
            """MedSegNAS is built on <a href="https://monai.io">MONAI</a> and <a href="https://pytorch.org">PyTorch</a>;
its architecture search follows DiNTS (He et al., CVPR 2021). Apache License 2.0."""
        )
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self) -> None:
        """Add the "MedSegNAS" effect (Auto, click Refine) to the Segment Editor, as Slicer's extensions do."""
        if unsupported_slicer_message(slicer.app.applicationVersion):
            return
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        effect = effects.qSlicerSegmentEditorScriptedEffect(None)
        source = Path(__file__).parent / "SegmentEditorMedSegNASLib" / "SegmentEditorEffect.py"
        effect.setPythonSource(source.as_posix())
        effect.self().register()


@parameterNodeWrapper
class MedSegNASParameterNode:
    """The panel's settings, saved with the scene, in the order of its sections.

    extraChannelVolume: a second model channel. segmentRoi: segment only inside it. datasetSource ``scene``: the checked scene cases,
    exported with sceneModality. network ``searched``: the architecture of the run selected in Runs.
    interactive: Train trains an interactive (click) model (``medsegnas train --interactive``).
    epochs, patchSize, memoryBudget 0: the preset's. gpus: processes, one per GPU. tuneTrials,
    tuneBudgetSteps: Tune's trials and optimisation steps per trial. segmentRun,
    trainRun, phantomRun: the run folders followed, re-attached after the module is reloaded.
    """

    runsFolder: Path = Path.home() / "MedSegNAS" / "runs"
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    extraChannelVolume: slicer.vtkMRMLScalarVolumeNode
    segmentRoi: slicer.vtkMRMLMarkupsROINode
    model: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    fast: bool = False
    tta: bool = False
    largestComponent: bool = False
    fillHoles: bool = False
    replaceExisting: bool = True
    datasetSource: Annotated[str, Choice(["folder", "scene"])] = "folder"
    datasetPath: Path = Path.home() / "MedSegNAS" / "phantom"
    sceneModality: str = "CT"
    preset: Annotated[str, Choice(["tiny", "small", "full"])] = "tiny"
    network: Annotated[str, Choice(["searched", "unet", "segresnet", "swinunetr"])] = "searched"
    interactive: bool = False
    epochs: Annotated[int, WithinRange(0, 100000)] = 0
    patchSize: Annotated[int, WithinRange(0, 512)] = 0
    memoryBudget: Annotated[int, WithinRange(0, 1000000)] = 0
    gpus: Annotated[int, WithinRange(1, 64)] = 1
    tuneTrials: Annotated[int, WithinRange(1, 500)] = 8
    tuneBudgetSteps: Annotated[int, WithinRange(5, 100000)] = 40
    evaluateSegmentation: slicer.vtkMRMLSegmentationNode
    evaluateReference: slicer.vtkMRMLSegmentationNode
    phantomFolder: Path = Path.home() / "MedSegNAS" / "phantom"
    phantomCases: Annotated[int, WithinRange(1, 500)] = 4
    phantomUnlabeled: Annotated[int, WithinRange(0, 500)] = 2
    phantomSize: Annotated[int, WithinRange(16, 256)] = 64
    loadPhantomWhenDone: bool = True
    segmentRun: str = ""
    trainRun: str = ""
    phantomRun: str = ""


class _JobArea(JobArea):
    """A ``panel_state.JobArea`` with its widgets: start buttons (one turns into Cancel while its job
    runs), progress bar and status line."""

    def __init__(self, buttons, progressBar, statusLabel, runParameter, onDone):
        JobArea.__init__(self, {kind: button.text for kind, button in buttons.items()}, runParameter, onDone)
        self.buttons, self.progressBar, self.statusLabel = buttons, progressBar, statusLabel

    def update(self, canStart=True) -> None:
        for kind, (text, enabled) in self.button_states(canStart, _("Cancel")).items():
            self.buttons[kind].text, self.buttons[kind].enabled = text, enabled


class MedSegNASWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> panel_logic; jobs followed by timers, never waited for."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._params = None  # panel_state.ParameterNodeHolder
        self._timerErrors = ReportedErrors()
        self._runStates = {}  # run folder -> state, as last listed
        self._listedRunsFolder = None
        self._curvesRun = None  # run whose curves are plotted (refreshed while it runs)
        self._task = ModelTask(_("A model import is running; wait for it to finish."))
        self._evaluation = FollowedJob()  # the Evaluate button's job
        self._segmenter = None  # panel_segment.WarmSegmenter: the Segment button's warm worker

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        message = unsupported_slicer_message(slicer.app.applicationVersion)
        if message:  # an older Slicer (older Python): say so here, not as errors in buttons and workers
            self.layout.addWidget(qt.QLabel(message))
            self.enter = self.exit = self.cleanup = lambda: None
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegNAS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegNASLogic()
        self._params = ParameterNodeHolder(self.logic.getParameterNode, self._connectGui, self._disconnectGui)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        ui = self.ui
        self._areas = {
            "segment": _JobArea({pl.SEGMENT: ui.segmentButton}, ui.segmentProgressBar, ui.segmentStatusLabel,
                                "segmentRun", self._onSegmentDone),
            "train": _JobArea({pl.SEARCH: ui.searchButton, pl.TRAIN: ui.trainButton, pl.TUNE: ui.tuneButton},
                              ui.trainProgressBar, ui.trainStatusLabel, "trainRun", self._onTrainingDone),
            "phantom": _JobArea({pl.PHANTOM: ui.phantomButton}, ui.phantomProgressBar, ui.phantomStatusLabel,
                                "phantomRun", self._onPhantomDone),
        }  # fmt: skip
        for name, area in self._areas.items():
            for kind, button in area.buttons.items():
                button.connect("clicked(bool)", lambda _checked, n=name, k=kind: self.onJobButton(n, k))
        needs = self._withPackages  # the Lib's packages are installed first (the user is asked)
        for button, slot in (
            (ui.modelsImportButton, needs(self.onImportModel)), (ui.modelsDownloadButton, needs(self.onDownloadModel)),
            (ui.modelsRemoveButton, needs(self.onRemoveModel)), (ui.modelsRefreshButton, self.refreshModels),
            (ui.modelsBrowseFolderButton, lambda: self._browseModel(folder=True)),
            (ui.modelsBrowseFileButton, lambda: self._browseModel(folder=False)),
            (ui.modelsOpenFolderButton, lambda: self._openFolder(self.logic.registry().models_dir)),
            (ui.runsRefreshButton, self.refreshRuns),
            (ui.runsShowFolderButton, lambda: self._openFolder(self._selectedRunPath())),
            (ui.evaluateButton, needs(self.onEvaluate)), (ui.sceneCasesRefreshButton, self.refreshSceneCases),
        ):  # fmt: skip
            button.connect("clicked(bool)", lambda _checked=False, s=slot: s())
        for button, message, action in (  # the selected run's actions
            (ui.runsCancelButton, _("Failed to cancel the run."), pl.cancel_job),
            (ui.runsResumeButton, _("Failed to resume the run."), self._resumeRun),
            (ui.runsCurvesButton, _("Failed to plot the run."), needs(self._showCurves)),
            (ui.runsLoadPredictionsButton, _("Failed to load the predictions."), needs(self._loadPredictions)),
            (ui.runsUseModelButton, _("Failed to register the model."), needs(self._useRunModel)),
        ):  # fmt: skip
            button.connect("clicked(bool)", lambda _c=False, m=message, a=action: self._withSelectedRun(m, a))
        ui.runsTableWidget.connect("itemSelectionChanged()", self._onRunSelected)
        ui.modelComboBox.connect("currentIndexChanged(int)", self._onModelChosen)
        self._jobTimer = self._timer(JOB_POLL_INTERVAL_MS, self._pollJobs)
        self._runsTimer = self._timer(RUNS_REFRESH_INTERVAL_MS, self.refreshRuns)
        self._taskTimer = self._timer(TASK_POLL_INTERVAL_MS, self._pollTask)
        self.initializeParameterNode()
        self.refreshModels()

    @staticmethod
    def _timer(interval, callback):
        timer = qt.QTimer()
        timer.setInterval(interval)
        timer.connect("timeout()", callback)
        return timer

    def cleanup(self) -> None:
        """The application closes: stop timers and the warm worker (jobs keep running; they outlive the GUI)."""
        for timer in (self._jobTimer, self._runsTimer, self._taskTimer):
            timer.stop()
        self._stopSegmenter(_("Stopped: the module was closed."))
        self.removeObservers()

    def _stopSegmenter(self, message) -> None:
        """Stop the warm segmentation worker (and the segmentation it runs)."""
        area = self._areas["segment"]
        if isinstance(area.follower, panel_segment.WarmSegmentRequest):
            area.follower.discard()
            self._stopFollowing(area, message)
        if self._segmenter is not None:
            self._segmenter.stop()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshRuns()
        self.refreshSceneCases()

    def exit(self) -> None:
        self._runsTimer.stop()  # job timers keep going: the jobs' ends must still be handled
        self._params.detach_gui()  # keep the node: the timers read it

    def onSceneStartClose(self, caller, event) -> None:
        self._stopSegmenter(_("Stopped: the scene was closed."))
        self._params.release()

    def onSceneEndClose(self, caller, event) -> None:
        self.initializeParameterNode(gui=self.parent.isEntered)  # hidden too: the timers read it

    @property
    def _parameterNode(self):
        return self._params.node if self._params else None

    def initializeParameterNode(self, gui=True) -> None:
        params = self._params.attach(gui)
        if not params.inputVolume:
            params.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        # jobs followed across a scene close, then jobs started before Slicer was restarted
        live = pl.live_runs(Path(params.runsFolder).expanduser()) if is_chosen(params.runsFolder) else {}
        for area in self._areas.values():
            if area.follower is not None:
                run = getattr(area.follower, "run", None)  # a warm segmentation has no run folder
                setattr(params, area.run_parameter, str(run.path) if run else "")
                continue
            path = area.run_to_follow(getattr(params, area.run_parameter), live)
            if path:
                self._follow(area, RunDir(path))
        self._onParameterNodeModified()

    def _connectGui(self, params):
        self.addObserver(params, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        return params.connectGui(self.ui)

    def _disconnectGui(self, params, tag) -> None:
        params.disconnectGui(tag)
        self.removeObserver(params, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _withPackages(self, slot):
        """``slot``, run once the packages the Lib needs are installed (the user is asked first)."""

        def run(*args):
            with slicer.util.tryWithErrorDisplay(_("Failed to install the packages."), waitCursor=True):
                if not self.logic.ensurePackages(pl.REQUIRED_PACKAGES):
                    return
            return slot(*args)

        return run

    def _inTimer(self, label, message, action, *args) -> None:
        """``action(*args)`` from a timer: an error goes to ``label`` and the log, once; no dialog."""
        try:
            action(*args)
        except Exception as exc:
            label.text = message.format(error=exc)
            self._timerErrors.report(label.text, exc)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        params, ui = self._parameterNode, self.ui
        fromScene = bool(params and params.datasetSource == "scene")
        self._areas["segment"].update(bool(params and params.inputVolume and params.model))
        self._areas["train"].update(bool(params and (fromScene or is_chosen(params.datasetPath))))
        self._areas["phantom"].update(bool(params and is_chosen(params.phantomFolder)))
        ui.evaluateButton.enabled = bool(
            params and params.evaluateSegmentation and params.evaluateReference and not self._evaluation.busy
        )
        ui.datasetPathLineEdit.enabled = not fromScene
        for widget in (ui.sceneCasesTableWidget, ui.sceneCasesRefreshButton, ui.sceneModalityLineEdit):
            widget.enabled = fromScene
        if params and str(params.runsFolder) != self._listedRunsFolder:
            self.refreshRuns()  # the user chose another runs folder

    # -- jobs -----------------------------------------------------------------------------------

    def onJobButton(self, areaName, kind) -> None:
        area = self._areas[areaName]
        if area.follower is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to cancel the job."), waitCursor=True):
                area.follower.cancel()
                area.statusLabel.text = _("Cancelling: finishing the current step...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the job."), waitCursor=True):
            packages = pl.PHANTOM_PACKAGES if kind == pl.PHANTOM else pl.REQUIRED_PACKAGES
            if not self.logic.ensurePackages(packages):
                return
            if kind == pl.SEGMENT:  # the warm worker: the model stays loaded for the next one
                self._segmenter = self._segmenter or panel_segment.WarmSegmenter(home=self.logic.registryHome)
                area.follow(self._segmenter.start_from_settings(self._parameterNode), kind)
                area.progressBar.value, area.statusLabel.text = 0, _("Starting...")
                self._onParameterNodeModified()
                return self._jobTimer.start()
            selected, cases = self._selectedRunPath(), self._checkedSceneCases()
            job = pl.launch_from_settings(kind, self._parameterNode, selected_run=selected, scene_pairs=cases)
            if kind in pl.TRAINING_KINDS:
                self._curvesRun = str(job.path)
            self._follow(area, job, kind)
            self.refreshRuns()

    def _follow(self, area, job, kind=None) -> None:
        """Follow ``job`` in ``area``; ``kind``: the kind launched (None: the run's own record)."""
        if job.is_run_dir():
            with contextlib.suppress(ValueError):  # not a run of this area (a stale setting): forget it
                area.follow(pl.JobFollower(job), kind)
        if area.follower is None:
            setattr(self._parameterNode, area.run_parameter, "")
            return
        setattr(self._parameterNode, area.run_parameter, str(job.path))
        area.progressBar.value = 0
        area.statusLabel.text = _("Starting...")
        self._onParameterNodeModified()
        self._jobTimer.start()

    def _pollJobs(self) -> None:
        for area in self._areas.values():
            if area.follower is None:
                continue
            polled = area.poll()
            if polled.error is not None:  # a damaged run folder: no longer followed; say why
                self._stopFollowing(area, _("Cannot follow the job: {error}").format(error=polled.error))
                self._timerErrors.report(area.statusLabel.text, polled.error)
                continue
            update = polled.update
            area.progressBar.maximum, area.progressBar.value = update.total, update.step
            area.progressBar.format = f"{update.stage} %p%" if update.stage else "%p%"
            area.statusLabel.text = update.text
            if update.finished:
                self._stopFollowing(area, update.text)
                if polled.ended is not None:
                    self._inTimer(
                        area.statusLabel,
                        _("Failed to load the job's result: {error}"),
                        area.on_done,
                        polled.ended,
                    )
        if self._curvesRun:
            curvesRun, self._curvesRun = self._curvesRun, None  # an error stops the updates
            self._inTimer(
                self.ui.runsStatusLabel,
                _("Failed to update the curves: {error}"),
                self._updateCurves,
                curvesRun,
            )
        if self._evaluation.busy:
            self._inTimer(self.ui.evaluateStatusLabel, _("Failed to evaluate: {error}"), self._pollEvaluation)
        if (
            not self._curvesRun
            and not self._evaluation.busy
            and not any(a.busy for a in self._areas.values())
        ):
            self._jobTimer.stop()

    def _updateCurves(self, path) -> None:
        panel_runs.run_curves_to_plot_chart(path, slicer.mrmlScene)
        if pl.run_is_live(path):
            self._curvesRun = path

    def _stopFollowing(self, area, message) -> None:
        area.stop()
        if self._parameterNode:
            setattr(self._parameterNode, area.run_parameter, "")
        area.statusLabel.text = message
        self._onParameterNodeModified()
        self.refreshRuns()

    def _onSegmentDone(self, follower) -> None:
        replace = self._parameterNode.replaceExisting
        segmentation = panel_segment.load_result(follower, replace_existing=replace)
        volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        done = self.ui.segmentStatusLabel.text.removeprefix("Done")  # the warm worker's times
        self.ui.segmentStatusLabel.text = _("Done: {name}").format(name=segmentation.GetName()) + done

    def _onTrainingDone(self, follower) -> None:
        self.refreshModels()  # train and tune register their model
        self._showCurves(str(follower.run.path))

    def _onPhantomDone(self, follower) -> None:
        path = str(follower.run.path)
        dataset = pl.run_result(path).get("dataset")
        if dataset and self._parameterNode.loadPhantomWhenDone:
            volume, _segmentation = self.logic.loadDatasetCase(dataset)
            text = _("Done: {dataset}; showing {name}")
            self.ui.phantomStatusLabel.text = text.format(dataset=dataset, name=volume.GetName())

    def refreshSceneCases(self) -> None:
        """List the scene's segmentations with their volumes; keep the checks of those still there."""
        table = self.ui.sceneCasesTableWidget
        checked = {segmentation.GetID() for _volume, segmentation in self._checkedSceneCases()}
        rows = pl.scene_case_rows(slicer.mrmlScene)
        table.setRowCount(len(rows))
        for row, (cells, tooltip, ids) in enumerate(rows):
            _fillRow(table, row, cells, tooltip, ids)
            item = table.item(row, 0)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if ids[0] in checked or not checked else qt.Qt.Unchecked)

    def _checkedSceneCases(self) -> list:
        table = self.ui.sceneCasesTableWidget
        items = [table.item(row, 0) for row in range(table.rowCount)]
        checked = [i.data(qt.Qt.UserRole) for i in items if i is not None and i.checkState() == qt.Qt.Checked]
        return pl.scene_cases(slicer.mrmlScene, checked)

    # -- models ---------------------------------------------------------------------------------

    def refreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the model registry.")):
            records = self.logic.registry().list()
            table, combo = self.ui.modelsTableWidget, self.ui.modelComboBox
            table.setRowCount(len(records))
            chosen = self._parameterNode.model if self._parameterNode else ""
            wasBlocked = combo.blockSignals(True)
            try:  # an error must not leave the combo box deaf to the user's choices
                combo.clear()
                for row, (cells, tooltip, modelId) in enumerate(pl.model_table_rows(records)):
                    _fillRow(table, row, cells, tooltip, modelId)
                    combo.addItem(cells[0], modelId)
                    combo.setItemData(row, tooltip, qt.Qt.ToolTipRole)
                combo.setCurrentIndex(max(combo.findData(chosen), 0) if records else -1)
            finally:
                combo.blockSignals(wasBlocked)
            self._onModelChosen()
            if self.ui.catalogComboBox.count == 0:
                self.ui.catalogComboBox.addItems(pl.catalog_names())

    def _onModelChosen(self, index=None) -> None:
        combo = self.ui.modelComboBox
        if self._parameterNode:
            self._parameterNode.model = combo.currentData or ""
            combo.toolTip = combo.itemData(combo.currentIndex, qt.Qt.ToolTipRole) or ""

    def _browseModel(self, folder) -> None:
        if folder:
            path = qt.QFileDialog.getExistingDirectory(None, _("Bundle folder"))
        else:
            path = qt.QFileDialog.getOpenFileName(
                None, _("Bundle archive"), "", "Bundles (*.zip *.tar.gz *.tgz)"
            )
        if path:
            self.ui.modelSourceLineEdit.text = path

    def onImportModel(self) -> None:
        source, trusted = self.ui.modelSourceLineEdit.text.strip(), self.ui.trustCheckBox.checked
        if source:
            self._startTask(lambda runs: pl.launch_model_import_job(source, runs, trusted=trusted, home=self.logic.registryHome), source)  # fmt: skip

    def onDownloadModel(self) -> None:
        name = self.ui.catalogComboBox.currentText
        if name:
            self._startTask(lambda runs: pl.launch_model_download_job(name, runs, home=self.logic.registryHome), name)  # fmt: skip

    def _startTask(self, launch, what, statusLabel=None, doneText=None) -> None:
        """Run a model import/download as a background job (a worker process) followed by a timer.

        ``statusLabel``: where progress and the outcome show (default: the Models section's);
        ``doneText``: the outcome's text, ``{id}`` the new model id."""
        with slicer.util.tryWithErrorDisplay(_("Failed to start the import."), waitCursor=True):
            self._task.check_idle()
            follower = pl.JobFollower(launch(Path(self._parameterNode.runsFolder).expanduser()))
            label = statusLabel or self.ui.modelsStatusLabel
            self._task.start(
                follower, label, doneText or _("Imported as '{id}'."), _("Not imported: {error}")
            )
            label.text = _("Importing {what}...").format(what=what)
            self.ui.modelsImportButton.enabled = self.ui.modelsDownloadButton.enabled = False
            self.ui.runsUseModelButton.enabled = False
            self._taskTimer.start()

    def _pollTask(self) -> None:
        progress, bar = self._task.poll(), self.ui.modelsProgressBar
        bar.maximum, bar.value = progress.bar
        if not progress.finished:
            return
        self._taskTimer.stop()
        self.ui.modelsImportButton.enabled = self.ui.modelsDownloadButton.enabled = True
        if progress.model and self._parameterNode:
            self._parameterNode.model = progress.model
        self.refreshModels()
        if progress.where is self.ui.runsStatusLabel:
            self.refreshRuns()  # the import run is listed as ended (before the outcome is written there)
        progress.where.text = progress.text

    def onRemoveModel(self) -> None:
        modelId = _selectedData(self.ui.modelsTableWidget)
        if modelId and slicer.util.confirmOkCancelDisplay(_("Delete model '{id}'?").format(id=modelId)):
            with slicer.util.tryWithErrorDisplay(_("Failed to remove the model."), waitCursor=True):
                self.logic.registry().remove(modelId)
            self.refreshModels()

    # -- runs -----------------------------------------------------------------------------------

    def refreshRuns(self) -> None:
        """Fill the runs table from the runs folder; keep refreshing while a run is live."""
        if not self._parameterNode:
            return
        self._listedRunsFolder = str(self._parameterNode.runsFolder)
        folder = Path(self._parameterNode.runsFolder).expanduser()
        runs, message = [], _("Choose the runs folder.")
        if is_chosen(folder):
            try:
                runs = list_runs(folder)
                message = _("{count} run(s) in {folder}").format(count=len(runs), folder=folder)
            except Exception as exc:
                message = _("Cannot list {folder}: {error}").format(folder=folder, error=exc)
        self.ui.runsStatusLabel.text = message
        selectedPath, table = self._selectedRunPath(), self.ui.runsTableWidget
        table.setRowCount(len(runs))
        for row, (cells, tooltip, path) in enumerate(panel_runs.run_table_rows(runs)):
            _fillRow(table, row, cells, tooltip, path)
            if path == selectedPath:
                table.selectRow(row)
        self._runStates = {run["path"]: run["state"] for run in runs}
        live = any(state not in FINAL_STATES for state in self._runStates.values())
        (self._runsTimer.start if live and self.parent.isEntered else self._runsTimer.stop)()
        self._onRunSelected()

    def _selectedRunPath(self):
        return _selectedData(self.ui.runsTableWidget)

    def _onRunSelected(self) -> None:
        path = self._selectedRunPath()
        actions, ui = panel_runs.run_actions(path, self._runStates.get(path)), self.ui
        ui.runsCancelButton.enabled, ui.runsResumeButton.enabled = actions.cancel, actions.resume
        ui.runsShowFolderButton.enabled = ui.runsCurvesButton.enabled = actions.show
        ui.runsLoadPredictionsButton.enabled = actions.load_predictions
        ui.runsUseModelButton.enabled = actions.use_model
        ui.runDetailsLabel.text = actions.details
        pixmap = qt.QPixmap(str(actions.topology)) if actions.topology else None
        ui.topologyLabel.setPixmap(pixmap.scaledToWidth(360) if pixmap else qt.QPixmap())

    def _withSelectedRun(self, message, action) -> None:
        path = self._selectedRunPath()
        if path:
            before = self.ui.runsStatusLabel.text
            self._tryAction(message, action, path)
            note = self.ui.runsStatusLabel.text
            self.refreshRuns()
            if note != before:  # what the action told the user stays visible
                self.ui.runsStatusLabel.text = note

    def _resumeRun(self, path) -> None:
        job = pl.resume_job(path)
        area = next(a for a in self._areas.values() if job.read_job().get("kind") in a.kinds)
        if area.follower is None:
            self._follow(area, job)

    def _showCurves(self, path) -> None:
        chart = panel_runs.run_curves_to_plot_chart(path, slicer.mrmlScene)
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        dice = panel_runs.run_dice_table_node(path, slicer.mrmlScene)
        if dice is not None:
            self._showTable(dice)
        if pl.run_is_live(path):
            self._curvesRun = path
            self._jobTimer.start()

    def _loadPredictions(self, path) -> None:
        loaded = panel_runs.load_validation_predictions(path, slicer.mrmlScene)
        slicer.util.setSliceViewerLayers(background=loaded[0][0], fit=True)

    def _useRunModel(self, path) -> None:
        """Register the run's exported bundle as a short model-import job: validating its weights
        needs torch, which must not be imported (seconds) in Slicer's GUI process."""
        model = panel_runs.run_details(path).model
        if model is None:
            raise RuntimeError(_("Run {path} has no exported model.").format(path=path))
        self._startTask(
            lambda runs: pl.launch_model_import_job(str(model), runs, home=self.logic.registryHome),
            Path(path).name,
            statusLabel=self.ui.runsStatusLabel,
            doneText=_("Registered as '{id}'; choose it under Segment."),
        )

    # -- evaluate and helpers -------------------------------------------------------------------

    def onEvaluate(self) -> None:
        """Export both segmentations as label maps and score them in a worker (torch and MONAI
        stay out of the GUI process); the job timer shows the table when it is done."""
        with slicer.util.tryWithErrorDisplay(_("Failed to evaluate."), waitCursor=True):
            p = self._parameterNode
            run = pl.launch_evaluate_nodes_job(
                p.evaluateSegmentation, p.evaluateReference, Path(p.runsFolder).expanduser()
            )
            self._evaluation.start(pl.JobFollower(run))
            self.ui.evaluateStatusLabel.text = _("Evaluating in the background...")
            self._onParameterNodeModified()
            self._jobTimer.start()

    def _pollEvaluation(self) -> None:
        outcome = self._evaluation.poll()
        if not outcome.finished:
            return
        self._onParameterNodeModified()
        if not outcome.ok:
            self.ui.evaluateStatusLabel.text = _("Not evaluated: {error}").format(error=outcome.error)
            return
        table = pl.evaluation_table_node(outcome.run, slicer.mrmlScene)
        self._showTable(table)
        self.ui.evaluateStatusLabel.text = _("Scores in table '{name}'.").format(name=table.GetName())

    @staticmethod
    def _tryAction(message, action, *args) -> None:
        """Run ``action(*args)``; an error shows ``message`` and its details to the user."""
        with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
            action(*args)

    @staticmethod
    def _showTable(tableNode) -> None:
        # The table beside the plot view: a table-only layout would hide the curves just shown.
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()

    @staticmethod
    def _openFolder(path) -> None:
        if path:
            Path(path).mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))


class MedSegNASLogic(ScriptedLoadableModuleLogic):
    """The panel's actions for Slicer's Python console and tests; the work is in ``panel_logic``.

    ``registryHome``: model registry folder (None: ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).
    """

    def __init__(self, registryHome=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.registryHome = registryHome

    def getParameterNode(self):
        return MedSegNASParameterNode(super().getParameterNode())

    def registry(self):
        from MedSegNASLib.models.registry import ModelRegistry

        return ModelRegistry(self.registryHome)

    @staticmethod
    def ensurePackages(packages: dict, askConfirmation: bool = True) -> bool:
        """Install the missing ``packages`` (import name -> pip requirement) into Slicer's Python, torch
        from the PyTorch extension (see ``panel_logic.ensure_packages``). False: the user declined."""
        question = (
            _("MedSegNAS needs these Python packages, which are not installed: {names}.\nInstall them now?")
            + "\n\n"
            + doctor_report()[0]
        )  # the same check as `medsegnas doctor` and SSLPretrain's
        return pl.ensure_packages(
            packages,
            confirm=lambda names: (
                not askConfirmation or slicer.util.confirmOkCancelDisplay(question.format(names=names))
            ),
            install_torch=pl.install_torch_from_extension,
            install_with_pip=slicer.util.pip_install,
        )

    @staticmethod
    def launchPhantomJob(datasetFolder, cases, unlabeled, size, runsFolder) -> RunDir:
        """Write a phantom dataset (``medsegnas phantom``) into ``datasetFolder`` as a background job."""
        return pl.launch_phantom_job(datasetFolder, runsFolder, cases=cases, unlabeled=unlabeled, size=size)

    @staticmethod
    def pollJob(job, eventOffset: int = 0) -> tuple:
        """``(status, new events, next offset)`` of a job (reaps a worker this process started)."""
        return pl.poll_job(job, eventOffset)

    @staticmethod
    def waitForJob(job, timeoutSeconds: float = 600.0) -> dict:
        """Block until the job ends and return its status (scripts and tests; the panel polls)."""
        return pl.JobFollower(job).wait(timeout_s=timeoutSeconds).status

    @staticmethod
    def listRuns(runsFolder) -> list:
        """Summaries of the runs in ``runsFolder`` (newest first), see ``MedSegNASLib.jobs.list_runs``."""
        return list_runs(Path(runsFolder).expanduser())

    @staticmethod
    def loadDatasetCase(dataset, caseIndex: int = 0, scene=None, show: bool = True) -> tuple:
        """Training case ``caseIndex`` of a dataset as ``(volume node, segmentation node or None)``."""
        volumeNode, segmentationNode = panel_dataset.load_dataset_case(dataset, caseIndex, scene)
        if show:
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        return volumeNode, segmentationNode


class MedSegNASTest(ScriptedLoadableModuleTest):
    """Run in Slicer: Developer mode > Reload and Test, or as a ctest of the extension build."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = pl.missing_packages()
        if missing:  # a build machine or a Slicer without them: say so instead of failing on an import
            message = _(
                "MedSegNAS self-test skipped: {names} not installed (the Segment button installs them)."
            )
            self.delayDisplay(message.format(names=", ".join(missing)))
            return
        for test in (
            self.test_phantom_case_loads_as_volume_and_segmentation,
            self.test_segment_phantom_with_a_bundle,
        ):
            self.setUp()
            test()

    def test_phantom_case_loads_as_volume_and_segmentation(self):
        """A small phantom written by the Lib loads with its geometry and named organ segments."""
        with tempfile.TemporaryDirectory() as folder:
            dataset = selftest.phantom_dataset(folder)
            volumeNode, segmentationNode = MedSegNASLogic.loadDatasetCase(dataset, show=False)
        self.assertEqual(volumeNode.GetImageData().GetDimensions(), (32, 32, 32))
        names = set(panel_dataset.segment_names(segmentationNode))
        self.assertTrue(names and names <= set(selftest.phantom_organ_names()))
        self.delayDisplay("Phantom case loaded")

    def test_segment_phantom_with_a_bundle(self):
        """A bundle segments the phantom in the background; the result is named, colored, on its grid."""
        with tempfile.TemporaryDirectory() as folder:
            dataset = selftest.phantom_dataset(Path(folder) / "data")
            volumeNode, _truth = MedSegNASLogic.loadDatasetCase(dataset)
            status, segmentationNode = selftest.segment_with_phantom_bundle(volumeNode, folder, timeout_s=300)
        self.assertEqual(status["state"], "done", status.get("error"))
        self.assertEqual(segmentationNode.GetName(), f"{volumeNode.GetName()} - phantom_unet")
        self.assertEqual(panel_dataset.segment_names(segmentationNode), selftest.phantom_organ_names())
        geometryRole = segmentationNode.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentationNode.GetNodeReference(geometryRole).GetID(), volumeNode.GetID())
        self.delayDisplay("Phantom segmented in the background")
