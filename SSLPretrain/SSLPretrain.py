"""SSLPretrain Slicer module: the panel, its parameter node, and a thin logic over ``SSLPretrainLib``.

Pretraining, fine-tuning and the few-shot comparison are background jobs followed by a ``qt.QTimer``;
all that needs no Qt is in ``SSLPretrainLib.panel_logic`` (tested with slicer-core). No ``from
__future__ import annotations``: ``parameterNodeWrapper`` reads the field types while Slicer loads this.
"""

import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MedSegNASLib.dependencies import unsupported_slicer_message
from MedSegNASLib.panels.panel_state import ParameterNodeHolder, ReportedErrors, is_chosen
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
from SSLPretrainLib import panel_logic
from SSLPretrainLib.cli import format_environment

#: Milliseconds between two checks of the background environment check, and of followed jobs.
PROCESS_POLL_INTERVAL_MS = 300
JOB_POLL_INTERVAL_MS = 1000


class SSLPretrain(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule in Slicer's Base/Python)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SSL Pretrain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # Shares the MedSegNAS module's job protocol, data I/O and dependency installation.
        self.parent.dependencies = ["MedSegNAS", "Plots"]
        self.parent.contributors = ["MedSegNAS contributors (https://github.com/medsegnas/SlicerMedSegNAS)"]
        self.parent.helpText = _(
            """
Pretrain the encoder of a Swin UNETR segmentation network on unlabelled volumes (a folder, a dataset
or scene volumes) with self-supervised learning (masked-volume inpainting, rotation prediction,
contrastive coding), as a background job: live loss curves, latest reconstructions, cancel and
resume. Then fine-tune it on a labelled dataset and use the model to segment, or compare it with
random initialisation for a few numbers of labelled cases (table and plot). See the
<a href="https://github.com/medsegnas/SlicerMedSegNAS#readme">extension documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
Pretraining follows Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical
Image Analysis" (CVPR 2022) and its <a href="https://monai.io">MONAI</a> implementation.
Developed by the MedSegNAS contributors, Apache License 2.0.
"""
        )


@parameterNodeWrapper
class SSLPretrainParameterNode:
    """The panel's settings, saved with the scene (what each one means: the tooltips in the .ui file)."""

    datasetFolder: Path = Path.home() / "MedSegNAS" / "phantom"
    useSceneVolumes: bool = False
    preset: Annotated[str, Choice(["tiny", "small", "full"])] = "tiny"
    steps: Annotated[int, WithinRange(1, 10000000)] = 200
    cropSize: Annotated[int, WithinRange(32, 256)] = 32
    featureSize: Annotated[int, WithinRange(12, 96)] = 12
    batchSize: Annotated[int, WithinRange(1, 64)] = 2
    rotationWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    contrastiveWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    inpaintingWeight: Annotated[float, WithinRange(0.0, 100.0)] = 1.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    runsFolder: Path = Path.home() / "MedSegNAS" / "runs"
    labelledDataset: Path = Path.home() / "MedSegNAS" / "phantom"
    labelledCases: Annotated[int, WithinRange(0, 100000)] = 0
    shots: str = "2,4,8"
    budget: Annotated[int, WithinRange(0, 10000000)] = 0


class SSLPretrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> logic; jobs followed by a timer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._params = None  # MedSegNASLib.panels.panel_state.ParameterNodeHolder
        self._timerErrors = ReportedErrors()
        self._curvesWanted = False  # the user asked to see a run (started, resumed or chose it)
        self._startedHere = set()  # job kinds started from this panel: their results are shown
        self._environmentProcess = None
        self._missingPackages = []
        self._followers = {}  # job kind -> panel_logic.JobFollower of the run the panel shows
        self._registration = None  # JobFollower of the Use model button's model-import job
        self._chartNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        message = unsupported_slicer_message(slicer.app.applicationVersion)
        if message:  # an older Slicer (older Python): say so here, not as errors in buttons and workers
            self.layout.addWidget(qt.QLabel(message))
            self.enter = self.exit = self.cleanup = lambda: None
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSLPretrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSLPretrainLogic()
        self._params = ParameterNodeHolder(self.logic.getParameterNode, self._connectGui, self._disconnectGui)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for button, handler in (
            (self.ui.environmentCheckButton, self.onCheckEnvironment),
            (self.ui.environmentInstallButton, self.onInstallPackages),
            (self.ui.datasetCheckButton, self.onCheckDataset),
            (self.ui.startButton, self.onStart),
            (self.ui.cancelButton, self.onCancel),
            (self.ui.resumeButton, self.onResume),
            (self.ui.refreshRunsButton, self.refreshRuns),
            (self.ui.loadReconstructionsButton, self.onLoadReconstructions),
            (self.ui.finetuneButton, self.onFinetune),
            (self.ui.useModelButton, self.onUseModel),
            (self.ui.fewshotButton, self.onFewshot),
        ):
            button.connect("clicked(bool)", handler)
        self.ui.presetComboBox.connect("activated(int)", self.onPresetChosen)
        self.ui.runComboBox.connect("activated(int)", self.onRunChosen)
        self._environmentTimer = _timer(PROCESS_POLL_INTERVAL_MS, self._pollEnvironmentCheck)
        self._jobTimer = _timer(JOB_POLL_INTERVAL_MS, self._pollJobs)
        self.initializeParameterNode()
        self.refreshRuns()

    def cleanup(self) -> None:
        self._environmentTimer.stop()
        self._jobTimer.stop()  # jobs go on without the panel; it re-attaches when opened again
        if self._environmentProcess is not None and self._environmentProcess.poll() is None:
            self._environmentProcess.kill()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._params.detach_gui()  # keep the node: the job timer goes on

    def onSceneStartClose(self, caller, event) -> None:
        self._params.release()
        self._chartNode = None

    def onSceneEndClose(self, caller, event) -> None:
        self.initializeParameterNode(gui=self.parent.isEntered)

    @property
    def _parameterNode(self):
        return self._params.node if self._params else None

    def initializeParameterNode(self, gui=True) -> None:
        self._params.attach(gui)
        self._updateButtons()

    def _connectGui(self, params):
        self.addObserver(params, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        return params.connectGui(self.ui)

    def _disconnectGui(self, params, tag) -> None:
        params.disconnectGui(tag)
        self.removeObserver(params, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def _state(self, kind):  # of the run followed for ``kind``; None when there is none
        follower = self._followers.get(kind)
        return follower.run.read_status().get("state") if follower else None

    def _updateButtons(self, caller=None, event=None) -> None:
        checking, missing, p = (
            self._environmentProcess is not None,
            self._missingPackages,
            self._parameterNode,
        )
        self.ui.environmentCheckButton.enabled = not checking
        self.ui.environmentInstallButton.enabled = not checking and bool(missing)
        self.ui.environmentInstallButton.toolTip = _("Install {names} into Slicer's Python.").format(
            names=", ".join(missing) or "PyTorch, MONAI"
        )
        self.ui.datasetCheckButton.enabled = bool(p) and is_chosen(p.datasetFolder)
        self.ui.sceneVolumesCheckableNodeComboBox.enabled = bool(p and p.useSceneVolumes)
        state, pretrain = self._state("pretrain"), self._followers.get("pretrain")
        self.ui.cancelButton.enabled = state in panel_logic.LIVE_STATES
        self.ui.resumeButton.enabled = state in ("cancelled", "failed")
        hasReconstructions = bool(pretrain and panel_logic.reconstruction_records(pretrain.run)[1])
        self.ui.loadReconstructionsButton.enabled = hasReconstructions
        for kind, button, idleText in (
            ("finetune", self.ui.finetuneButton, _("Fine-tune")),
            ("fewshot", self.ui.fewshotButton, _("Run few-shot comparison")),
        ):
            running = self._state(kind) in panel_logic.LIVE_STATES
            button.text = _("Cancel") if running else idleText
            button.enabled = running or state == "done"  # a finished pretraining run has an encoder
        finetune = self._followers.get("finetune") if self._state("finetune") == "done" else None
        registering = self._registration is not None
        self.ui.useModelButton.enabled = bool(
            finetune and not registering and panel_logic.find_bundle(finetune.run)
        )

    def onCheckEnvironment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the environment check."), waitCursor=True):
            self._environmentProcess = panel_logic.start_environment_check()
            self.ui.environmentStatusLabel.text = _("Checking (importing PyTorch takes a few seconds)...")
            self._updateButtons()
            self._environmentTimer.start()

    def _pollEnvironmentCheck(self) -> None:
        try:
            environment = panel_logic.environment_check_result(self._environmentProcess)
            if environment is None:
                return  # still running
            self._missingPackages = panel_logic.missing_packages(environment)
            summary, details = self.logic.environmentSummary(environment), format_environment(environment)
        except Exception as exc:
            summary, details = _("The check failed: {error}").format(error=exc), ""
        self._environmentTimer.stop()
        self._environmentProcess = None
        self.ui.environmentStatusLabel.text = summary
        self.ui.environmentTextEdit.setPlainText(details)
        self._updateButtons()

    def onInstallPackages(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the packages."), waitCursor=True):
            if self.logic.installPackages():
                self.onCheckEnvironment()

    def onCheckDataset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the dataset."), waitCursor=True):
            try:
                summary = self.logic.describeDataset(self._parameterNode.datasetFolder)
            except Exception as exc:
                self.ui.datasetStatusLabel.text = str(exc)
                raise
            self.ui.datasetStatusLabel.text = self.logic.datasetSummaryText(summary)

    def onPresetChosen(self, index) -> None:
        """Fill in the chosen preset's settings (the user changes them afterwards if wanted)."""
        defaults, p = panel_logic.preset_defaults(self.ui.presetComboBox.currentText), self._parameterNode
        p.steps, p.cropSize = defaults["steps"], defaults["crop_size"]
        p.featureSize, p.batchSize = defaults["feature_size"], defaults["batch_size"]
        weights = defaults["loss_weights"]
        p.rotationWeight, p.contrastiveWeight = weights["rotation"], weights["contrastive"]
        p.inpaintingWeight = weights["reconstruction"]

    def onStart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start pretraining."), waitCursor=True):
            checked = self.ui.sceneVolumesCheckableNodeComboBox.checkedNodes()
            run = self.logic.startPretraining(
                self._parameterNode, checked if self._parameterNode.useSceneVolumes else []
            )
            self._curvesWanted = True
            self.refreshRuns(select=run)

    def onCancel(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel the run."), waitCursor=True):
            panel_logic.cancel_job(self._followers["pretrain"].run)
            self._updateButtons()

    def onResume(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to resume the run."), waitCursor=True):
            run = panel_logic.resume_job(self._followers["pretrain"].run)
            self._curvesWanted = True
            self.refreshRuns(select=run)

    def refreshRuns(self, *args, select=None) -> None:
        """List the pretraining runs (``select``: a run just started) and re-attach to running fine-tunings."""
        if not self._parameterNode:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to list the runs."), waitCursor=True):
            runsFolder = self._parameterNode.runsFolder if is_chosen(self._parameterNode.runsFolder) else None
            if select is not None:  # follow the launcher's RunDir: it reaps the worker process
                self._followers["pretrain"], self._chartNode = panel_logic.JobFollower(select), None
            followed, choices = self._followers.get("pretrain"), panel_logic.run_choices(runsFolder)
            self.ui.runComboBox.clear()
            for label, path in choices:
                self.ui.runComboBox.addItem(label, path)
            paths = [path for _label, path in choices]
            current = str(followed.run.path) if followed else None
            self.ui.runComboBox.currentIndex = (
                paths.index(current) if current in paths else min(0, len(paths) - 1)
            )
            panel_logic.attach_live_runs(self._followers, runsFolder, ["finetune", "fewshot"])
            self.onRunChosen()

    def onRunChosen(self, index=None) -> None:
        """The run shown (``index``: the user chose it; None: the list was refilled)."""
        if index is not None:
            self._curvesWanted = True  # only the user's choice shows curves (and may change the layout)
        path = self.ui.runComboBox.currentData
        followed = self._followers.get("pretrain")
        if not path:
            self._followers.pop("pretrain", None)
        elif followed is None or str(followed.run.path) != path:
            self._followers["pretrain"] = panel_logic.JobFollower(path)
            self._chartNode = None
        self._pollJobs()
        self._jobTimer.start()

    def _pollJobs(self) -> None:
        """Timer tick: read the followed runs' new events; update progress, curves and results."""
        widgets = {
            "pretrain": (self.ui.pretrainProgressBar, self.ui.pretrainStatusLabel),
            "finetune": (self.ui.finetuneProgressBar, self.ui.finetuneStatusLabel),
            "fewshot": (self.ui.fewshotProgressBar, self.ui.fewshotStatusLabel),
        }
        live = False
        for kind, follower in list(self._followers.items()):
            try:
                live = self._pollJob(kind, follower, *widgets[kind]) or live
            except Exception as exc:  # in the status line and the log, once; the run is no longer followed
                widgets[kind][1].text = _("Cannot follow the run: {error}").format(error=exc)
                self._timerErrors.report(widgets[kind][1].text, exc)
                self._followers.pop(kind, None)
        if self._registration is not None:
            try:
                live = self._pollRegistration() or live
            except Exception as exc:
                self.ui.finetuneStatusLabel.text = _("Cannot follow the run: {error}").format(error=exc)
                self._timerErrors.report(self.ui.finetuneStatusLabel.text, exc)
        if not live:
            self._jobTimer.stop()
        self._updateButtons()

    def _pollJob(self, kind, follower, progressBar, statusLabel) -> bool:
        """Show the run's new progress and results; True while it runs."""
        update = follower.poll()
        progressBar.value, statusLabel.text = update.percent, update.text
        newCurves = update.curves_changed or self._chartNode is None
        if kind == "pretrain" and self._curvesWanted and newCurves and len(follower.curves):
            self._chartNode = self.logic.showLossCurves(follower, self._chartNode)
        if kind == "fewshot" and any(e.get("type") in ("artifact", "done") for e in update.events):
            self._showFewshotResults(follower)
        return not update.finished

    def onLoadReconstructions(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the reconstructions."), waitCursor=True):
            self.logic.loadReconstructions(self._followers["pretrain"].run)

    def _startOrCancel(self, kind, start, options) -> None:
        """Cancel the running ``kind`` job, or start one from the selected pretraining run."""
        p = self._parameterNode
        if self._state(kind) in panel_logic.LIVE_STATES:
            panel_logic.cancel_job(self._followers[kind].run)
        else:
            values = {"labelled": p.labelledCases, "preset": p.preset, "device": p.device}
            values.update(shots=p.shots, budget=p.budget)
            pretrained = self._followers["pretrain"].run.path
            run = start(p.runsFolder, pretrained, p.labelledDataset, **{key: values[key] for key in options})
            self._followers[kind] = panel_logic.JobFollower(run)
            self._startedHere.add(kind)
            self._jobTimer.start()
        self._pollJobs()

    def onFinetune(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start or cancel fine-tuning."), waitCursor=True):
            self._startOrCancel("finetune", panel_logic.start_finetuning, ["labelled", "preset", "device"])

    def onFewshot(self) -> None:
        with slicer.util.tryWithErrorDisplay(
            _("Failed to start or cancel the few-shot comparison."), waitCursor=True
        ):
            self._startOrCancel("fewshot", panel_logic.start_fewshot, ["shots", "budget", "preset", "device"])

    def onUseModel(self) -> None:
        """Register the fine-tuned bundle as a short job (checking its weights imports torch, which
        the GUI process never does); the job timer shows the outcome."""
        with slicer.util.tryWithErrorDisplay(_("Failed to add the model to the registry."), waitCursor=True):
            run = panel_logic.launch_use_model_job(
                self._followers["finetune"].run, self._parameterNode.runsFolder
            )
            self._registration = panel_logic.JobFollower(run)
            self.ui.finetuneStatusLabel.text = _("Adding the model to the registry...")
            self._updateButtons()
            self._jobTimer.start()

    def _pollRegistration(self) -> bool:
        """The Use model job's outcome in the fine-tuning status line; True while it runs."""
        follower, self._registration = self._registration, None  # an error stops the polling
        update = follower.poll()
        if not update.finished:
            self._registration = follower
            return True
        modelId = (update.status.get("result") or {}).get("model")
        if update.state == "done" and modelId:
            text = _("Model '{id}' added: choose it in the MedSegNAS module to segment.").format(id=modelId)
        else:
            text = _("Model not added: {error}").format(error=update.status.get("error") or update.text)
        self.ui.finetuneStatusLabel.text = text
        return False

    def _showFewshotResults(self, follower) -> None:
        files = panel_logic.fewshot_files(follower.run)
        if "csv" in files and "fewshot" in self._startedHere:  # the layout changes only when asked
            self.logic.showTable(panel_logic.fewshot_table_node(follower.run, slicer.mrmlScene))
        if "plot" in files:
            pixmap = qt.QPixmap(str(files["plot"]))
            self.ui.fewshotPlotLabel.setPixmap(
                pixmap.scaledToWidth(min(pixmap.width(), 400), qt.Qt.SmoothTransformation)
            )


def _timer(intervalMs, callback):
    timer = qt.QTimer()
    timer.setInterval(intervalMs)
    timer.connect("timeout()", callback)
    return timer


class SSLPretrainLogic(ScriptedLoadableModuleLogic):
    """For the panel, the Python console and tests; the work is in ``SSLPretrainLib.panel_logic``."""

    describeDataset = staticmethod(panel_logic.describe_dataset)

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SSLPretrainParameterNode(super().getParameterNode())

    @staticmethod
    def environmentSummary(environment: dict) -> str:
        """One line for the panel: what is missing, or where jobs would run."""
        missing = panel_logic.missing_packages(environment)
        broken = [name for name in missing if name in environment.get("problems", {})]
        if missing and len(broken) < len(missing):
            return _("Not installed: {names}.").format(names=", ".join(n for n in missing if n not in broken))
        if broken:
            return _("Installed but failing to import: {names} (details below).").format(
                names=", ".join(broken)
            )
        if environment["devices"]:
            device = environment["devices"][0]
            where = f"{device['name']} ({device['description']})"
        else:
            where = _("the CPU only (no GPU found): pretraining will be very slow")
        return _("PyTorch {torch}, MONAI {monai}; pretraining runs on {where}.").format(
            torch=environment["packages"]["torch"], monai=environment["packages"]["monai"], where=where
        )

    @staticmethod
    def installPackages(askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension) and MONAI if missing; False if declined."""
        from MedSegNAS import MedSegNASLogic

        return MedSegNASLogic.ensurePackages(panel_logic.PRETRAIN_PACKAGES, askConfirmation=askConfirmation)

    @staticmethod
    def datasetSummaryText(summary: dict) -> str:
        text = _(
            "{name}: {unlabeled} unlabelled image(s); {labelled} labelled and {test} test image(s) can also be used "
            "for pretraining. Channels: {channels}."
        ).format(
            name=summary["name"],
            unlabeled=summary["unlabeled"],
            labelled=summary["training"] + summary["validation"],
            test=summary["test"],
            channels=", ".join(summary["modalities"]),
        )
        if not summary["missing"]:
            return text + " " + _("All image files are present.")
        found = _("{count} image file(s) missing, e.g. {example}.")
        return text + " " + found.format(count=len(summary["missing"]), example=summary["missing"][0])

    @staticmethod
    def startPretraining(p, volumeNodes=()):
        """Start pretraining with the panel's settings ``p`` on ``volumeNodes``, or on ``p.datasetFolder``."""
        options, images = panel_logic.PretrainOptions.from_panel(p), None if volumeNodes else p.datasetFolder
        return panel_logic.start_pretraining(
            p.runsFolder, options, images=images, volume_nodes=list(volumeNodes)
        )

    @staticmethod
    def showLossCurves(follower, chartNode=None):
        """The run's loss chart (updated in place), shown in the plot view."""
        chart = panel_logic.update_loss_plot(
            follower.curves, slicer.mrmlScene, follower.run.run_id, chart_node=chartNode
        )
        if chartNode is None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)
        return chart

    @staticmethod
    def loadReconstructions(run, show: bool = True) -> list:
        """Load the run's latest reconstructions; show the first sample's input with its reconstruction."""
        samples = panel_logic.load_reconstructions(run, slicer.mrmlScene)
        if show and samples:
            slicer.util.setSliceViewerLayers(
                background=samples[0]["input"],
                foreground=samples[0]["reconstruction"],
                foregroundOpacity=0.5,
                fit=True,
            )
        return samples

    @staticmethod
    def showTable(tableNode) -> None:
        """Show a table node in the table view (the layout with a plot and a table view: curves beside it)."""
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()


class SSLPretrainTest(ScriptedLoadableModuleTest):
    """Run in Slicer: Developer mode > Reload and Test, or as a ctest of the extension build."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        from MedSegNASLib.panels.panel_logic import missing_packages

        missing = missing_packages(dict.fromkeys([*panel_logic.PRETRAIN_PACKAGES, "nibabel"]))
        if missing:  # a build machine or a Slicer without them: say so instead of failing on an import
            message = _(
                "SSLPretrain self-test skipped: {names} not installed (Install missing packages, in the panel)."
            )
            self.delayDisplay(message.format(names=", ".join(missing)))
            return
        self.setUp()
        self.test_pretraining_on_scene_volumes()

    def test_pretraining_on_scene_volumes(self):
        """Phantom dataset counted; 2 tiny steps on 2 scene volumes: 4 loss curves, 32^3 reconstructions."""
        from MedSegNASLib.data import read_volume, write_phantom_dataset
        from MedSegNASLib.panels.slicer_bridge import volume_to_volume_node

        logic = SSLPretrainLogic()
        p = logic.getParameterNode()
        with tempfile.TemporaryDirectory() as folder:
            write_phantom_dataset(folder, cases=1, size=32, unlabeled=2, test_cases=0)
            summary = logic.describeDataset(folder)
            self.assertEqual((summary["unlabeled"], summary["training"], summary["missing"]), (2, 1, []))
            images = sorted(Path(folder, "imagesUnlabeled").glob("*.nii.gz"))
            nodes = [
                volume_to_volume_node(read_volume(path), slicer.mrmlScene, name=path.name) for path in images
            ]
            p.runsFolder, p.steps, p.batchSize = Path(folder) / "runs", 2, 1
            follower = panel_logic.JobFollower(logic.startPretraining(p, nodes))
            self.assertEqual(follower.wait(timeout_s=600).state, "done", follower.run.worker_log.read_text())
            chart = logic.showLossCurves(follower)
            self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 4)
            self.assertEqual(chart.GetNthPlotSeriesNode(0).GetTableNode().GetNumberOfRows(), 2)
            samples = logic.loadReconstructions(follower.run)
            self.assertEqual(samples[0]["input"].GetImageData().GetDimensions(), (32, 32, 32))
        self.delayDisplay(logic.datasetSummaryText(summary))
