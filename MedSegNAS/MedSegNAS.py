"""MedSegNAS Slicer module: the panel and its parameter node, connected to ``MedSegNASLib.panel_logic``.

Every long task runs as a background job (``MedSegNASLib.jobs``) of Slicer's Python: the panel
launches the worker, follows its event log from a ``qt.QTimer`` and never blocks; after a
restart it re-attaches to the jobs still running in the runs folder. Everything the panel does
without Qt (segment, load results, curves, tables, evaluation) is in ``MedSegNASLib.panel_logic``
and tested with slicer-core; this file only connects widgets to it.

No ``from __future__ import annotations`` here: ``parameterNodeWrapper`` reads the field types
with ``typing.get_type_hints`` while Slicer is still loading this file.
"""

import importlib
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MedSegNASLib import panel_dataset, panel_runs
from MedSegNASLib import panel_logic as pl
from MedSegNASLib.jobs import FINAL_STATES, RunDir, list_runs, refresh_status
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


def _isChosen(path) -> bool:
    """Whether a path setting holds something (an empty path line edit gives "" or ".")."""
    return str(path).strip() not in ("", ".")


def _fillRow(table, row, cells, tooltip, data) -> None:
    """Fill a table widget row with read-only text cells carrying ``data`` (``qt.Qt.UserRole``)."""
    for column, text in enumerate(cells):
        item = qt.QTableWidgetItem(text)
        item.setToolTip(tooltip)
        item.setData(qt.Qt.UserRole, data)
        table.setItem(row, column, item)


class MedSegNAS(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule in Slicer's Base/Python)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSegNAS")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSegNAS contributors (https://github.com/medsegnas/SlicerMedSegNAS)"]
        self.parent.helpText = _(
            """
Segment organs in 3D images with deep-learning models: pretrained MONAI bundles or networks that
MedSegNAS finds by differentiable architecture search (DiNTS) on your own data. Long tasks run as
background jobs that you can follow, cancel and resume, here or on a GPU cluster.
<ul>
<li><b>Segment</b>: a volume and a model in, a named, colored segmentation out.</li>
<li><b>Models</b>: import MONAI bundles (folder, zip, URL), download from the catalog; untrusted ones are marked.</li>
<li><b>Search and train</b>: architecture search and training on a dataset folder or on scene volumes
with their segmentations, on one or several GPUs, with live curves.</li>
<li><b>Runs</b>: every job of a runs folder: status, curves, topology, Dice; use its model.</li>
<li><b>Evaluate</b>: Dice, HD95 and surface Dice of a segmentation against a reference.</li>
<li><b>Phantom data</b>: a synthetic CT dataset with organ labels to try it all.</li>
</ul>
See the <a href="https://github.com/medsegnas/SlicerMedSegNAS#readme">extension documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
MedSegNAS is built on <a href="https://monai.io">MONAI</a> and <a href="https://pytorch.org">PyTorch</a>;
its architecture search follows DiNTS (He et al., CVPR 2021). Developed by the MedSegNAS contributors,
Apache License 2.0.
"""
        )


@parameterNodeWrapper
class MedSegNASParameterNode:
    """The panel's settings, saved with the scene.

    Segment: inputVolume, extraChannelVolume (second model channel), model (registry id), device,
    fast, tta, largestComponent, fillHoles, replaceExisting. Search and train: datasetSource
    (``folder``: datasetPath; ``scene``: the checked scene cases, exported with sceneModality),
    preset, network (``searched``: the architecture of the run selected in Runs), epochs,
    patchSize, memoryBudget (0: the preset's / automatic), gpus (processes, one per GPU). Evaluate: evaluateSegmentation, evaluateReference.
    Phantom: phantomFolder, phantomCases, phantomUnlabeled, phantomSize, loadPhantomWhenDone.
    runsFolder: where jobs create their run folders. segmentRun, trainRun, phantomRun: the run
    folders the panel follows, so that it re-attaches after the module is reloaded.
    """

    runsFolder: Path = Path.home() / "MedSegNAS" / "runs"
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    extraChannelVolume: slicer.vtkMRMLScalarVolumeNode
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
    epochs: Annotated[int, WithinRange(0, 100000)] = 0
    patchSize: Annotated[int, WithinRange(0, 512)] = 0
    memoryBudget: Annotated[int, WithinRange(0, 1000000)] = 0
    gpus: Annotated[int, WithinRange(1, 64)] = 1
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


class _JobArea:
    """One area of the panel that follows a job: its start button turns into Cancel, its progress
    bar and label show the job's stage, progress and ETA, ``onDone(run path)`` handles success."""

    def __init__(self, buttons, progressBar, statusLabel, runParameter, kinds, onDone):
        self.buttons, self.progressBar, self.statusLabel = buttons, progressBar, statusLabel
        self.runParameter, self.kinds, self.onDone = runParameter, kinds, onDone
        self.idleTexts = {kind: button.text for kind, button in buttons.items()}
        self.follower = None
        self.kind = None

    def update(self, canStart=True) -> None:
        for kind, button in self.buttons.items():
            running = self.follower is not None and kind == self.kind
            button.text = _("Cancel") if running else self.idleTexts[kind]
            button.enabled = running or (self.follower is None and canStart)


class MedSegNASWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> panel_logic; jobs followed by timers, never waited for."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runStates = {}  # run folder -> state, as last listed
        self._listedRunsFolder = None
        self._curvesRun = None  # run whose curves are plotted (refreshed while it runs)
        self._task = None  # model import/download in a thread

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegNAS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedSegNASLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        ui = self.ui
        self._areas = {
            "segment": _JobArea({pl.SEGMENT: ui.segmentButton}, ui.segmentProgressBar, ui.segmentStatusLabel,
                                "segmentRun", (pl.SEGMENT,), self._onSegmentDone),
            "train": _JobArea({pl.SEARCH: ui.searchButton, pl.TRAIN: ui.trainButton}, ui.trainProgressBar,
                              ui.trainStatusLabel, "trainRun", (pl.SEARCH, pl.TRAIN), self._onTrainingDone),
            "phantom": _JobArea({pl.PHANTOM: ui.phantomButton}, ui.phantomProgressBar, ui.phantomStatusLabel,
                                "phantomRun", (pl.PHANTOM,), self._onPhantomDone),
        }  # fmt: skip
        for name, area in self._areas.items():
            for kind, button in area.buttons.items():
                button.connect("clicked(bool)", lambda _checked, n=name, k=kind: self.onJobButton(n, k))
        for button, slot in (
            (ui.modelsImportButton, self.onImportModel), (ui.modelsDownloadButton, self.onDownloadModel),
            (ui.modelsRemoveButton, self.onRemoveModel), (ui.modelsRefreshButton, self.refreshModels),
            (ui.modelsBrowseFolderButton, lambda: self._browseModel(folder=True)),
            (ui.modelsBrowseFileButton, lambda: self._browseModel(folder=False)),
            (ui.modelsOpenFolderButton, lambda: self._openFolder(self.logic.registry().models_dir)),
            (ui.runsRefreshButton, self.refreshRuns), (ui.runsCancelButton, self.onCancelRun),
            (ui.runsResumeButton, self.onResumeRun), (ui.runsCurvesButton, self.onShowCurves),
            (ui.runsShowFolderButton, lambda: self._openFolder(self._selectedRunPath())),
            (ui.runsLoadPredictionsButton, self.onLoadPredictions), (ui.runsUseModelButton, self.onUseModel),
            (ui.evaluateButton, self.onEvaluate), (ui.sceneCasesRefreshButton, self.refreshSceneCases),
        ):  # fmt: skip
            button.connect("clicked(bool)", lambda _checked=False, s=slot: s())
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
        """The application closes: stop timers (jobs keep running; they outlive the GUI)."""
        for timer in (self._jobTimer, self._runsTimer, self._taskTimer):
            timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshRuns()
        self.refreshSceneCases()

    def exit(self) -> None:
        self._runsTimer.stop()  # job timers keep going: the jobs' ends must still be handled
        self.setParameterNode(None, keepNode=True)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        params = self._parameterNode
        if not params.inputVolume:
            params.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        live = {}
        if _isChosen(params.runsFolder):  # jobs started before Slicer was restarted
            live = pl.live_runs(Path(params.runsFolder).expanduser())
        for area in self._areas.values():
            if area.follower is None:
                path = getattr(params, area.runParameter) or next(
                    (live[k]["path"] for k in area.kinds if k in live), ""
                )
                if path:
                    self._follow(area, RunDir(path))

    def setParameterNode(self, inputParameterNode, keepNode=False) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
            self._parameterNodeGuiTag = None
        if keepNode:
            return
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        params = self._parameterNode
        self._areas["segment"].update(bool(params and params.inputVolume and params.model))
        fromScene = bool(params and params.datasetSource == "scene")
        self._areas["train"].update(bool(params and (fromScene or _isChosen(params.datasetPath))))
        self.ui.datasetPathLineEdit.enabled = not fromScene
        for widget in (
            self.ui.sceneCasesTableWidget,
            self.ui.sceneCasesRefreshButton,
            self.ui.sceneModalityLineEdit,
        ):
            widget.enabled = fromScene
        self._areas["phantom"].update(bool(params and _isChosen(params.phantomFolder)))
        self.ui.evaluateButton.enabled = bool(
            params and params.evaluateSegmentation and params.evaluateReference
        )
        if params and str(params.runsFolder) != self._listedRunsFolder:
            self.refreshRuns()  # the user chose another runs folder

    # -- jobs -----------------------------------------------------------------------------------

    def onJobButton(self, areaName, kind) -> None:
        area = self._areas[areaName]
        if area.follower is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to cancel the job."), waitCursor=True):
                pl.cancel_job(area.follower.run)
                area.statusLabel.text = _("Cancelling: finishing the current step...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the job."), waitCursor=True):
            if not self.logic.ensurePackages(
                pl.PHANTOM_PACKAGES if kind == pl.PHANTOM else pl.REQUIRED_PACKAGES
            ):
                return
            job = pl.launch_from_settings(
                kind,
                self._parameterNode,
                selected_run=self._selectedRunPath(),
                scene_pairs=self._checkedSceneCases(),
            )
            if kind in (pl.SEARCH, pl.TRAIN):
                self._curvesRun = str(job.path)
            self._follow(area, job)
            self.refreshRuns()

    def _follow(self, area, job) -> None:
        if not job.is_run_dir():
            setattr(self._parameterNode, area.runParameter, "")
            return
        area.follower, area.kind = pl.JobFollower(job), None
        area.kind = area.follower.kind or next(iter(area.buttons))
        setattr(self._parameterNode, area.runParameter, str(job.path))
        area.progressBar.value = 0
        area.statusLabel.text = _("Starting...")
        self._onParameterNodeModified()
        self._jobTimer.start()

    def _pollJobs(self) -> None:
        for area in self._areas.values():
            if area.follower is None:
                continue
            try:
                update = area.follower.poll()
            except Exception as exc:  # a damaged run folder: stop following it, say why
                self._stopFollowing(area, _("Cannot follow the job: {error}").format(error=exc))
                continue
            area.progressBar.maximum, area.progressBar.value = update.total, update.step
            area.progressBar.format = f"{update.stage} %p%" if update.stage else "%p%"
            area.statusLabel.text = update.text
            if update.finished:
                path = str(area.follower.run.path)
                self._stopFollowing(area, update.text)  # first: if loading fails, it is not polled again
                if update.state == "done":
                    with slicer.util.tryWithErrorDisplay(
                        _("Failed to load the job's result."), waitCursor=True
                    ):
                        area.onDone(path)
        if self._curvesRun:
            with slicer.util.tryWithErrorDisplay(_("Failed to update the curves.")):
                panel_runs.run_curves_to_plot_chart(self._curvesRun, slicer.mrmlScene)
                if refresh_status(RunDir(self._curvesRun)).get("state") in FINAL_STATES:
                    self._curvesRun = None
        if not self._curvesRun and all(area.follower is None for area in self._areas.values()):
            self._jobTimer.stop()

    def _stopFollowing(self, area, message) -> None:
        area.follower = None
        if self._parameterNode:
            setattr(self._parameterNode, area.runParameter, "")
        area.statusLabel.text = message
        self._onParameterNodeModified()
        self.refreshRuns()

    def _onSegmentDone(self, path) -> None:
        segmentation = pl.load_segment_result(path, replace_existing=self._parameterNode.replaceExisting)
        volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        self.ui.segmentStatusLabel.text = _("Done: {name}").format(name=segmentation.GetName())

    def _onTrainingDone(self, path) -> None:
        self.refreshModels()  # train registers its model
        self._showCurves(path)

    def _onPhantomDone(self, path) -> None:
        dataset = (refresh_status(RunDir(path)).get("result") or {}).get("dataset")
        if dataset and self._parameterNode.loadPhantomWhenDone:
            volume, _segmentation = self.logic.loadDatasetCase(dataset)
            self.ui.phantomStatusLabel.text = _("Done: {dataset}; showing {name}").format(
                dataset=dataset, name=volume.GetName()
            )

    def refreshSceneCases(self) -> None:
        """List the scene's segmentations with their volumes; keep the checks of those still there."""
        table = self.ui.sceneCasesTableWidget
        checked = {segmentation.GetID() for _volume, segmentation in self._checkedSceneCases()}
        rows = panel_dataset.scene_segmentation_pairs(slicer.mrmlScene)
        table.setRowCount(len(rows))
        for row, (volume, segmentation) in enumerate(rows):
            cells = [
                segmentation.GetName(),
                volume.GetName(),
                ", ".join(panel_dataset.segment_names(segmentation)),
            ]
            _fillRow(table, row, cells, volume.GetName(), (segmentation.GetID(), volume.GetID()))
            item = table.item(row, 0)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(
                qt.Qt.Checked if segmentation.GetID() in checked or not checked else qt.Qt.Unchecked
            )

    def _checkedSceneCases(self) -> list:
        table, cases = self.ui.sceneCasesTableWidget, []
        for row in range(table.rowCount):
            item = table.item(row, 0)
            if item is not None and item.checkState() == qt.Qt.Checked:
                segmentationId, volumeId = item.data(qt.Qt.UserRole)
                volume, segmentation = (slicer.mrmlScene.GetNodeByID(i) for i in (volumeId, segmentationId))
                if volume is not None and segmentation is not None:
                    cases.append((volume, segmentation))
        return cases

    # -- models ---------------------------------------------------------------------------------

    def refreshModels(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the model registry.")):
            records = self.logic.registry().list()
            table, combo = self.ui.modelsTableWidget, self.ui.modelComboBox
            table.setRowCount(len(records))
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for row, (cells, tooltip, modelId) in enumerate(pl.model_table_rows(records)):
                _fillRow(table, row, cells, tooltip, modelId)
                combo.addItem(cells[0], modelId)
                combo.setItemData(row, tooltip, qt.Qt.ToolTipRole)
            combo.setCurrentIndex(max(combo.findData(self._parameterNode.model), 0) if records else -1)
            combo.blockSignals(wasBlocked)
            self._onModelChosen()
            if self.ui.catalogComboBox.count == 0:
                from MedSegNASLib.models.registry import load_catalog

                self.ui.catalogComboBox.addItems(sorted(load_catalog()))

    def _onModelChosen(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.currentData or ""
            self.ui.modelComboBox.toolTip = (
                self.ui.modelComboBox.itemData(self.ui.modelComboBox.currentIndex, qt.Qt.ToolTipRole) or ""
            )

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
        source = self.ui.modelSourceLineEdit.text.strip()
        if source:
            self._startTask(pl.import_model_task(source, trusted=self.ui.trustCheckBox.checked), source)

    def onDownloadModel(self) -> None:
        name = self.ui.catalogComboBox.currentText
        if name:
            self._startTask(pl.download_model_task(name), name)

    def _startTask(self, task, what) -> None:
        self._task = task
        self.ui.modelsStatusLabel.text = _("Importing {what}...").format(what=what)
        for button in (self.ui.modelsImportButton, self.ui.modelsDownloadButton):
            button.enabled = False
        self._taskTimer.start()

    def _pollTask(self) -> None:
        task = self._task
        fraction = task.fraction if task else None
        self.ui.modelsProgressBar.maximum = (
            0 if fraction is None else 100
        )  # busy bar when the size is unknown
        self.ui.modelsProgressBar.value = int(100 * (fraction or 0))
        if task is None or not task.finished:
            return
        self._taskTimer.stop()
        self._task = None
        self.ui.modelsProgressBar.maximum, self.ui.modelsProgressBar.value = 100, 100 if not task.error else 0
        for button in (self.ui.modelsImportButton, self.ui.modelsDownloadButton):
            button.enabled = True
        if task.error is not None:
            self.ui.modelsStatusLabel.text = _("Not imported: {error}").format(error=task.error)
        else:
            self.ui.modelsStatusLabel.text = _("Imported as '{id}'.").format(id=task.result.id)
            self._parameterNode.model = task.result.id
        self.refreshModels()

    def onRemoveModel(self) -> None:
        items = self.ui.modelsTableWidget.selectedItems()
        modelId = items[0].data(qt.Qt.UserRole) if items else None
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
        if _isChosen(folder):
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
        items = self.ui.runsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def _onRunSelected(self) -> None:
        path = self._selectedRunPath()
        state = self._runStates.get(path)
        details = panel_runs.run_details(path) if path and state != "damaged" else None
        self.ui.runsCancelButton.enabled = path is not None and state not in FINAL_STATES
        self.ui.runsResumeButton.enabled = state in ("cancelled", "failed")
        self.ui.runsShowFolderButton.enabled = self.ui.runsCurvesButton.enabled = path is not None
        self.ui.runsLoadPredictionsButton.enabled = bool(details and details.predictions)
        self.ui.runsUseModelButton.enabled = bool(details and details.model)
        self.ui.runDetailsLabel.text = details.text() if details else ""
        pixmap = qt.QPixmap(str(details.topology)) if details and details.topology else None
        self.ui.topologyLabel.setPixmap(pixmap.scaledToWidth(360) if pixmap else qt.QPixmap())

    def _withSelectedRun(self, message, action) -> None:
        path = self._selectedRunPath()
        if path:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                action(path)
            self.refreshRuns()

    def onCancelRun(self) -> None:
        self._withSelectedRun(_("Failed to cancel the run."), pl.cancel_job)

    def onResumeRun(self) -> None:
        def resume(path):
            job = pl.resume_job(path)
            area = next(a for a in self._areas.values() if job.read_job().get("kind") in a.kinds)
            if area.follower is None:
                self._follow(area, job)

        self._withSelectedRun(_("Failed to resume the run."), resume)

    def onShowCurves(self) -> None:
        self._withSelectedRun(_("Failed to plot the run."), self._showCurves)

    def _showCurves(self, path) -> None:
        chart = panel_runs.run_curves_to_plot_chart(path, slicer.mrmlScene)
        slicer.modules.plots.logic().ShowChartInLayout(chart)
        dice = panel_runs.run_dice_table_node(path, slicer.mrmlScene)
        if dice is not None:
            self._showTable(dice)
        if refresh_status(RunDir(path)).get("state") not in FINAL_STATES:
            self._curvesRun = path
            self._jobTimer.start()

    def onLoadPredictions(self) -> None:
        def load(path):
            loaded = panel_runs.load_validation_predictions(path, slicer.mrmlScene)
            slicer.util.setSliceViewerLayers(background=loaded[0][0], fit=True)

        self._withSelectedRun(_("Failed to load the predictions."), load)

    def onUseModel(self) -> None:
        def use(path):
            record = panel_runs.use_run_model(path, home=self.logic.registryHome)
            self._parameterNode.model = record.id
            self.refreshModels()
            self.ui.runsStatusLabel.text = _("Registered as '{id}'; choose it under Segment.").format(
                id=record.id
            )

        self._withSelectedRun(_("Failed to register the model."), use)

    # -- evaluate and helpers -------------------------------------------------------------------

    def onEvaluate(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to evaluate."), waitCursor=True):
            p = self._parameterNode
            table = pl.evaluate_segmentation_nodes(
                p.evaluateSegmentation, p.evaluateReference, slicer.mrmlScene
            )
            self._showTable(table)
            self.ui.evaluateStatusLabel.text = _("Scores in table '{name}'.").format(name=table.GetName())

    @staticmethod
    def _showTable(tableNode) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager.layout != slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
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
        """Install the missing ``packages`` (import name -> pip requirement) into Slicer's Python.

        torch comes from the PyTorch extension (it picks the build for this machine's GPU); the
        others from pip. Packages that are present are never reinstalled or upgraded, so Slicer's
        own numpy and SimpleITK stay as they are. Returns False when the user declined.
        """
        missing = pl.missing_packages(packages)
        if not missing:
            return True
        question = _(
            "MedSegNAS needs these Python packages, which are not installed: {names}.\nInstall them now?"
        )
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            question.format(names=", ".join(missing))
        ):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    _("PyTorch is missing: install the PyTorch extension (Extensions Manager).")
                ) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed; try the PyTorch Utils module."))
        others = [packages[name] for name in missing if name != "torch"]
        if others:
            slicer.util.pip_install(others)
        importlib.invalidate_caches()
        stillMissing = pl.missing_packages(packages)
        if stillMissing:
            raise RuntimeError(_("Could not install: {names}").format(names=", ".join(stillMissing)))
        return True

    @staticmethod
    def launchPhantomJob(datasetFolder, cases, unlabeled, size, runsFolder) -> RunDir:
        """Write a phantom dataset (``medsegnas phantom``) into ``datasetFolder`` as a background job."""
        return pl.launch_phantom_job(datasetFolder, runsFolder, cases=cases, unlabeled=unlabeled, size=size)

    @staticmethod
    def pollJob(job, eventOffset: int = 0) -> tuple:
        """``(status, new events, next offset)`` of a job (reaps a worker this process started)."""
        follower = pl.JobFollower(job)
        follower.offset = eventOffset
        update = follower.poll()
        return update.status, update.events, follower.offset

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
        for test in (
            self.test_phantom_case_loads_as_volume_and_segmentation,
            self.test_segment_phantom_with_a_bundle,
        ):
            self.setUp()
            test()

    def test_phantom_case_loads_as_volume_and_segmentation(self):
        """A small phantom written by the Lib loads with its geometry and named organ segments."""
        import tempfile

        from MedSegNASLib.data.phantom import PHANTOM_LABELS
        from MedSegNASLib.panel_selftest import phantom_dataset

        with tempfile.TemporaryDirectory() as folder:
            volumeNode, segmentationNode = MedSegNASLogic.loadDatasetCase(phantom_dataset(folder), show=False)
        self.assertEqual(volumeNode.GetImageData().GetDimensions(), (32, 32, 32))
        names = set(panel_dataset.segment_names(segmentationNode))
        self.assertTrue(names and names <= {label.name for label in PHANTOM_LABELS if label.value})
        self.delayDisplay("Phantom case loaded")

    def test_segment_phantom_with_a_bundle(self):
        """A bundle segments the phantom in the background; the result is named, colored, on its grid."""
        import tempfile

        missing = pl.missing_packages()
        if missing:  # not skipTest: that would hide the other tests' results run by runTest
            self.delayDisplay(f"Segment test not run: {', '.join(missing)} not installed")
            return
        from MedSegNASLib.data.phantom import PHANTOM_LABELS
        from MedSegNASLib.panel_selftest import phantom_bundle, phantom_dataset

        with tempfile.TemporaryDirectory() as folder:
            volumeNode, _truth = MedSegNASLogic.loadDatasetCase(phantom_dataset(Path(folder) / "data"))
            bundle = phantom_bundle(folder)
            job = pl.launch_segment_job(volumeNode, bundle, Path(folder) / "runs", {"device": "cpu"})
            status = MedSegNASLogic.waitForJob(job, timeoutSeconds=300)
            self.assertEqual(status["state"], "done", status.get("error"))
            segmentationNode = pl.load_segment_result(job, volumeNode)
        self.assertEqual(segmentationNode.GetName(), f"{volumeNode.GetName()} - phantom_unet")
        names = panel_dataset.segment_names(segmentationNode)
        self.assertEqual(names, [label.name for label in PHANTOM_LABELS if label.value])
        reference = segmentationNode.GetNodeReference(
            segmentationNode.GetReferenceImageGeometryReferenceRole()
        )
        self.assertEqual(reference.GetID(), volumeNode.GetID())
        self.delayDisplay("Phantom segmented in the background")
