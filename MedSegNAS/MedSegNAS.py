"""MedSegNAS Slicer module: the panel, its parameter node, and a thin logic over ``MedSegNASLib``.

Every long task runs as a background job (``MedSegNASLib.jobs``): the panel launches the worker,
follows its event log from a ``qt.QTimer`` and never blocks. What the panel offers now:

- Phantom data: write a synthetic CT dataset with organ labels (``medsegnas phantom``) and show
  its first case.
- Runs: the jobs of a runs folder (any kind, also those started from a shell or before Slicer
  was restarted) with their state and progress; cancel one, open its folder.

No ``from __future__ import annotations`` here: ``parameterNodeWrapper`` reads the field types
with ``typing.get_type_hints`` while Slicer is still loading this file.
"""

import importlib.util
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from MedSegNASLib.jobs import FINAL_STATES, RunDir, cancel, launch, list_runs, refresh_status
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DOCUMENTATION_URL = "https://github.com/medsegnas/SlicerMedSegNAS#readme"

#: Python packages a phantom job and loading its results need (import name -> pip requirement).
#: torch: the job saves resumable checkpoints with it; it is installed through the PyTorch extension.
PHANTOM_PACKAGES: dict[str, str] = {
    "numpy": "numpy",
    "scipy": "scipy>=1.10",
    "SimpleITK": "SimpleITK>=2.3",
    "nibabel": "nibabel>=5.0",
    "torch": "torch>=2.4",
}

#: Milliseconds between two reads of a followed job's event log.
JOB_POLL_INTERVAL_MS = 500
#: Milliseconds between two refreshes of the runs table while a listed run is live.
RUNS_REFRESH_INTERVAL_MS = 3000


def _isChosen(path) -> bool:
    """Whether a path setting holds a folder (an empty path line edit gives "" or ".")."""
    return str(path).strip() not in ("", ".")


#
# MedSegNAS
#


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
<li><b>Phantom data</b>: write a synthetic abdominal CT dataset with liver, spleen and kidney labels
(Medical Segmentation Decathlon layout) to try the workflow without patient data.</li>
<li><b>Runs</b>: the jobs of a runs folder, with their state and progress; cancel a job or open its folder.</li>
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


#
# MedSegNASParameterNode
#


@parameterNodeWrapper
class MedSegNASParameterNode:
    """The panel's settings, saved with the scene.

    runsFolder - where jobs create their run directories.
    phantomFolder - dataset folder the phantom job writes (dataset.json, imagesTr/, labelsTr/, ...).
    phantomCases, phantomUnlabeled - labelled training cases and unlabelled images to write.
    phantomSize - voxels per axis of every phantom volume.
    loadPhantomWhenDone - show the first case in the views when the phantom job is done.
    phantomRun - run directory of the phantom job the panel follows ("" for none); kept here
        so that the panel re-attaches to it after the module is reloaded.
    """

    runsFolder: Path = Path.home() / "MedSegNAS" / "runs"
    phantomFolder: Path = Path.home() / "MedSegNAS" / "phantom"
    phantomCases: Annotated[int, WithinRange(1, 500)] = 4
    phantomUnlabeled: Annotated[int, WithinRange(0, 500)] = 2
    phantomSize: Annotated[int, WithinRange(16, 256)] = 64
    loadPhantomWhenDone: bool = True
    phantomRun: str = ""


#
# MedSegNASWidget
#


class MedSegNASWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> logic; jobs followed by timers, never waited for."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._phantomJob = None  # RunDir of the followed phantom job
        self._phantomEventOffset = 0
        self._phantomTimer = None
        self._runsTimer = None
        self._runStates = {}  # run folder -> state, as last listed
        self._listedRunsFolder = None  # the runs folder the table shows

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegNAS.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegNASLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.phantomButton.connect("clicked(bool)", self.onPhantomButton)
        self.ui.runsRefreshButton.connect("clicked(bool)", self.refreshRuns)
        self.ui.runsCancelButton.connect("clicked(bool)", self.onCancelRun)
        self.ui.runsShowFolderButton.connect("clicked(bool)", self.onShowRunFolder)
        self.ui.runsTableWidget.connect("itemSelectionChanged()", self._updateRunButtons)

        self._phantomTimer = qt.QTimer()
        self._phantomTimer.setInterval(JOB_POLL_INTERVAL_MS)
        self._phantomTimer.connect("timeout()", self._pollPhantomJob)
        self._runsTimer = qt.QTimer()
        self._runsTimer.setInterval(RUNS_REFRESH_INTERVAL_MS)
        self._runsTimer.connect("timeout()", self.refreshRuns)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """The application closes: stop timers (jobs keep running; they outlive the GUI)."""
        self._phantomTimer.stop()
        self._runsTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshRuns()

    def exit(self) -> None:
        self._runsTimer.stop()  # the phantom timer keeps going: the job's end must still be handled
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if self._phantomJob is None and self._parameterNode.phantomRun:
            self._followPhantomJob(self._parameterNode.phantomRun)  # re-attach after a reload

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._updateButtons()
        if self._parameterNode and str(self._parameterNode.runsFolder) != self._listedRunsFolder:
            self.refreshRuns()  # the user chose another runs folder

    def _updateButtons(self) -> None:
        following = self._phantomJob is not None
        self.ui.phantomButton.text = _("Cancel") if following else _("Generate phantom dataset")
        hasFolder = bool(self._parameterNode and _isChosen(self._parameterNode.phantomFolder))
        self.ui.phantomButton.enabled = following or hasFolder
        self.ui.phantomButton.toolTip = (
            _("Stop the phantom job after the current case; the cases written so far are kept.")
            if following
            else _("Write the phantom dataset into the dataset folder as a background job.")
        )
        self._updateRunButtons()

    # -- phantom data ---------------------------------------------------------------------------

    def onPhantomButton(self) -> None:
        if self._phantomJob is not None:
            with slicer.util.tryWithErrorDisplay(_("Failed to cancel the phantom job."), waitCursor=True):
                self.logic.cancelJob(self._phantomJob)
                self.ui.phantomStatusLabel.text = _("Cancelling: finishing the current case...")
                self.ui.phantomButton.enabled = False
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the phantom job."), waitCursor=True):
            params = self._parameterNode
            folder = Path(params.phantomFolder).expanduser()
            if folder.is_dir() and any(folder.iterdir()) and not (folder / "dataset.json").exists():
                if not slicer.util.confirmOkCancelDisplay(
                    _("Folder {folder} is not empty. Write the phantom dataset into it?").format(
                        folder=folder
                    )
                ):
                    return
            if not self.logic.ensurePackages(PHANTOM_PACKAGES):
                return
            job = self.logic.launchPhantomJob(
                folder,
                cases=params.phantomCases,
                unlabeled=params.phantomUnlabeled,
                size=params.phantomSize,
                runsFolder=Path(params.runsFolder).expanduser(),
            )
            self._followPhantomJob(job)
            self.refreshRuns()

    def _followPhantomJob(self, job) -> None:
        job = job if isinstance(job, RunDir) else RunDir(job)
        if not job.is_run_dir():
            self._parameterNode.phantomRun = ""
            return
        self._phantomJob = job
        self._phantomEventOffset = 0
        self._parameterNode.phantomRun = str(job.path)
        self.ui.phantomProgressBar.value = 0
        self.ui.phantomStatusLabel.text = _("Starting...")
        self._updateButtons()
        self._pollPhantomJob()
        self._phantomTimer.start()

    def _pollPhantomJob(self) -> None:
        job = self._phantomJob
        if job is None:
            self._phantomTimer.stop()
            return
        try:
            status, events, self._phantomEventOffset = self.logic.pollJob(job, self._phantomEventOffset)
        except Exception as exc:  # a damaged run folder: stop following it, say why
            self._stopFollowingPhantomJob(_("Cannot follow the job: {error}").format(error=exc))
            return
        for event in events:
            if event.get("type") == "progress":
                self.ui.phantomProgressBar.maximum = int(event.get("total") or 1)
                self.ui.phantomProgressBar.value = int(event.get("step") or 0)
                self.ui.phantomStatusLabel.text = _("Wrote {case} ({step} of {total})").format(
                    case=(event.get("metrics") or {}).get("case", ""),
                    step=event.get("step"),
                    total=event.get("total"),
                )
            elif event.get("type") == "log":
                self.ui.phantomStatusLabel.text = str(event.get("message", ""))
        state = status.get("state")
        if state not in FINAL_STATES:
            return
        dataset = (status.get("result") or {}).get("dataset") if state == "done" else None
        if state == "done":
            message = _("Done: {dataset}").format(dataset=dataset)
        elif state == "cancelled":
            message = _("Cancelled; the cases written so far are kept.")
        else:
            message = _("Failed: {error}").format(
                error=status.get("error") or _("see worker.log in the run folder")
            )
        self._stopFollowingPhantomJob(message)  # first: if loading fails, the job is not polled again
        if dataset and self._parameterNode and self._parameterNode.loadPhantomWhenDone:
            with slicer.util.tryWithErrorDisplay(_("Failed to load the phantom case."), waitCursor=True):
                volumeNode, _segmentationNode = self.logic.loadDatasetCase(dataset)
                self.ui.phantomStatusLabel.text = _("Done: {dataset}; showing {name}").format(
                    dataset=dataset, name=volumeNode.GetName()
                )

    def _stopFollowingPhantomJob(self, message: str) -> None:
        self._phantomTimer.stop()
        self._phantomJob = None
        if self._parameterNode:
            self._parameterNode.phantomRun = ""
        self.ui.phantomStatusLabel.text = message
        self._updateButtons()
        self.refreshRuns()

    # -- runs -----------------------------------------------------------------------------------

    def refreshRuns(self, *args) -> None:
        """Fill the runs table from the runs folder; keep refreshing while a run is live."""
        if not self._parameterNode:
            return
        self._listedRunsFolder = str(self._parameterNode.runsFolder)
        folder = Path(self._parameterNode.runsFolder).expanduser()
        try:
            runs = self.logic.listRuns(folder) if _isChosen(folder) else []
        except Exception as exc:
            runs = []
            self.ui.runsStatusLabel.text = _("Cannot list {folder}: {error}").format(folder=folder, error=exc)
        else:
            if not _isChosen(folder):
                self.ui.runsStatusLabel.text = _("Choose the runs folder.")
            elif runs:
                self.ui.runsStatusLabel.text = _("{count} run(s) in {folder}").format(
                    count=len(runs), folder=folder
                )
            else:
                self.ui.runsStatusLabel.text = _("No runs in {folder} yet.").format(folder=folder)
        selectedPath = self._selectedRunPath()
        table = self.ui.runsTableWidget
        table.setRowCount(len(runs))
        for row, run in enumerate(runs):
            percent = run.get("percent")
            cells = [
                run["run_id"],
                run["kind"],
                run["state"],
                f"{percent:.0f}%" if percent is not None else "",
                (run.get("started") or run.get("created") or "")[:19].replace("T", " "),
            ]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setData(qt.Qt.UserRole, run["path"])
                item.setToolTip(run.get("error") or run["path"])
                table.setItem(row, column, item)
            if run["path"] == selectedPath:
                table.selectRow(row)
        self._runStates = {run["path"]: run["state"] for run in runs}
        live = any(state not in FINAL_STATES for state in self._runStates.values())
        if live and self.parent.isEntered:
            self._runsTimer.start()
        else:
            self._runsTimer.stop()
        self._updateRunButtons()

    def _selectedRunPath(self):
        items = self.ui.runsTableWidget.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else None

    def _updateRunButtons(self) -> None:
        path = self._selectedRunPath()
        state = self._runStates.get(path)
        self.ui.runsCancelButton.enabled = path is not None and state not in FINAL_STATES
        self.ui.runsShowFolderButton.enabled = path is not None

    def onCancelRun(self) -> None:
        path = self._selectedRunPath()
        if path is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to cancel the run."), waitCursor=True):
            self.logic.cancelJob(RunDir(path))
        self.refreshRuns()

    def onShowRunFolder(self) -> None:
        path = self._selectedRunPath()
        if path is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(path))


#
# MedSegNASLogic
#


class MedSegNASLogic(ScriptedLoadableModuleLogic):
    """What the panel does, usable from Slicer's Python console and tests without the panel.

    Jobs: :meth:`launchJob` starts ``medsegnas <command>`` as a background worker (Slicer's
    PythonSlicer), :meth:`pollJob` reads its new events and state, :meth:`cancelJob` asks it to
    stop, :meth:`waitForJob` blocks (scripts and tests only). Results are loaded through
    ``MedSegNASLib.slicer_bridge``. No computation happens here.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedSegNASParameterNode(super().getParameterNode())

    # -- dependencies ---------------------------------------------------------------------------

    @staticmethod
    def missingPackages(packages) -> list:
        """Import names of ``packages`` (names or a name -> requirement dict) that are not installed."""
        return [name for name in packages if importlib.util.find_spec(name) is None]

    @staticmethod
    def ensurePackages(packages: dict, askConfirmation: bool = True) -> bool:
        """Install the missing ``packages`` (import name -> pip requirement) into Slicer's Python.

        torch comes from the PyTorch extension (it picks the build for this machine's GPU); the
        others are installed with pip. Packages that are present are never reinstalled or
        upgraded, so Slicer's own numpy and SimpleITK stay as they are.

        Returns:
            True when everything is installed, False when the user declined.
        """
        missing = MedSegNASLogic.missingPackages(packages)
        if not missing:
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _(
                "MedSegNAS needs these Python packages, which are not installed: {names}.\nInstall them now?"
            ).format(names=", ".join(missing))
        ):
            return False
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    _(
                        "PyTorch is missing and the PyTorch extension is not installed: install it from the Extensions Manager."
                    )
                ) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError(_("PyTorch could not be installed; try the PyTorch Utils module."))
        others = [packages[name] for name in missing if name != "torch"]
        if others:
            slicer.util.pip_install(others)
        importlib.invalidate_caches()
        still_missing = MedSegNASLogic.missingPackages(packages)
        if still_missing:
            raise RuntimeError(_("Could not install: {names}").format(names=", ".join(still_missing)))
        return True

    # -- jobs -----------------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """The Python that runs workers: Slicer's PythonSlicer (plain ``sys.executable`` elsewhere)."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def workerEnvironment() -> dict:
        """Environment additions for workers: the module folders on PYTHONPATH, for ``-m MedSegNASLib.cli``."""
        moduleFolder = os.path.dirname(os.path.abspath(__file__))
        paths = [moduleFolder] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}

    def launchJob(self, argv: list, runsFolder: Path, entry=None) -> RunDir:
        """Start ``medsegnas <argv>`` (or ``entry``'s command) as a background job in a new run folder.

        Returns the run directory; its ``process`` is the worker. Raises ``JobError`` when the
        job cannot start (message for the user).
        """
        runsFolder = Path(runsFolder).expanduser()
        runsFolder.mkdir(parents=True, exist_ok=True)
        return launch(
            [str(token) for token in argv],
            runs_root=runsFolder,
            python=self.pythonExecutable(),
            entry=entry,
            cwd=runsFolder,
            env=self.workerEnvironment(),
        )

    def launchPhantomJob(
        self, datasetFolder: Path, cases: int, unlabeled: int, size: int, runsFolder: Path
    ) -> RunDir:
        """Write a phantom dataset (``medsegnas phantom``) into ``datasetFolder`` as a background job."""
        folder = Path(datasetFolder).expanduser().absolute()
        options = {"--cases": cases, "--unlabeled": unlabeled, "--size": size}
        return self.launchJob(
            ["phantom", folder, *(str(token) for item in options.items() for token in item)], runsFolder
        )

    @staticmethod
    def pollJob(job: RunDir, eventOffset: int = 0) -> tuple:
        """``(status, new events, next offset)`` of a job; quick, for a ``qt.QTimer`` callback.

        Reaps the worker if this process started it, and marks a worker that died without a
        word as failed (``refresh_status``).
        """
        if getattr(job, "process", None) is not None:
            job.process.poll()
        events, nextOffset = job.read_events(eventOffset)
        return refresh_status(job), events, nextOffset

    @staticmethod
    def cancelJob(job: RunDir) -> str:
        """Ask a job to stop (SIGTERM to its process group) and return at once: ``'cancelling'``,
        or the final state if it had already ended. It saves a checkpoint and ends ``cancelled``."""
        return cancel(job, wait=False)

    @staticmethod
    def waitForJob(job: RunDir, timeoutSeconds: float = 600.0) -> dict:
        """Block until the job ends and return its status (scripts and tests; the panel polls)."""
        deadline = time.monotonic() + timeoutSeconds
        while True:
            status, _events, _offset = MedSegNASLogic.pollJob(job)
            if status.get("state") in FINAL_STATES:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.path} still {status.get('state')} after {timeoutSeconds:g} s")
            time.sleep(0.2)

    @staticmethod
    def listRuns(runsFolder: Path) -> list:
        """Summaries of the runs in ``runsFolder`` (newest first), see ``MedSegNASLib.jobs.list_runs``."""
        return list_runs(Path(runsFolder).expanduser())

    # -- results --------------------------------------------------------------------------------

    @staticmethod
    def loadDatasetCase(dataset, caseIndex: int = 0, scene=None, show: bool = True) -> tuple:
        """Load training case ``caseIndex`` of a dataset as a volume node and a segmentation node.

        Args:
            dataset: ``dataset.json``, its folder, or a datalist.
            caseIndex: index into the dataset's training cases.
            scene: MRML scene (default: the application's).
            show: put the volume in the slice views (needs the application).

        Returns:
            ``(volumeNode, segmentationNode)``; the segmentation is ``None`` for an unlabelled case.
        """
        from MedSegNASLib.data.datasets import load_dataset
        from MedSegNASLib.data.io import read_volume
        from MedSegNASLib.slicer_bridge import labelmap_to_segmentation_node, volume_to_volume_node

        description = load_dataset(dataset)
        if not 0 <= caseIndex < len(description.cases):
            raise ValueError(
                f"dataset {description.path} has {len(description.cases)} training case(s); no case {caseIndex}"
            )
        case = description.cases[caseIndex]
        scene = scene if scene is not None else slicer.mrmlScene
        volumeNode = volume_to_volume_node(read_volume(case.images[0]), scene, name=case.name)
        segmentationNode = None
        if case.label is not None:
            labels = description.labels or None
            segmentationNode = labelmap_to_segmentation_node(
                case.label, labels, scene, reference_volume_node=volumeNode, name=f"{case.name} labels"
            )
        if show:
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        logging.info(f"loaded {case.name} from {description.path}")
        return volumeNode, segmentationNode


#
# MedSegNASTest
#


class MedSegNASTest(ScriptedLoadableModuleTest):
    """Run in Slicer: Developer mode > Reload and Test, or as a ctest of the extension build."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_case_loads_as_volume_and_segmentation()
        self.setUp()
        self.test_phantom_job_runs_in_the_background()

    def test_phantom_case_loads_as_volume_and_segmentation(self):
        """A tiny phantom written by the Lib loads with its geometry and named organ segments."""
        import tempfile

        from MedSegNASLib.data.phantom import PHANTOM_LABELS, write_phantom_dataset

        self.delayDisplay("Writing a 24^3 phantom case")
        with tempfile.TemporaryDirectory() as folder:
            datasetJson = write_phantom_dataset(folder, cases=1, size=24, unlabeled=0, test_cases=0)
            volumeNode, segmentationNode = MedSegNASLogic.loadDatasetCase(datasetJson, show=False)
        self.assertEqual(volumeNode.GetImageData().GetDimensions(), (24, 24, 24))
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(volumeNode.GetID()))
        segmentation = segmentationNode.GetSegmentation()
        names = {
            segmentation.GetNthSegment(index).GetName() for index in range(segmentation.GetNumberOfSegments())
        }
        organs = {label.name for label in PHANTOM_LABELS if label.value != 0}
        self.assertTrue(names and names <= organs, f"segments {names} are not organs of {organs}")
        self.delayDisplay("Phantom case loaded")

    def test_phantom_job_runs_in_the_background(self):
        """``medsegnas phantom`` runs as a job from Slicer and its run folder says done."""
        import tempfile

        logic = MedSegNASLogic()
        missing = logic.missingPackages(PHANTOM_PACKAGES)
        if missing:  # not skipTest: that would hide the other tests' results run by runTest
            self.delayDisplay(f"Phantom job test not run: {', '.join(missing)} not installed")
            return
        with tempfile.TemporaryDirectory() as folder:
            job = logic.launchPhantomJob(
                Path(folder) / "data", cases=1, unlabeled=1, size=24, runsFolder=Path(folder) / "runs"
            )
            status = logic.waitForJob(job, timeoutSeconds=300)
            self.assertEqual(status["state"], "done", status.get("error"))
            self.assertTrue((Path(folder) / "data" / "dataset.json").is_file())
            runs = logic.listRuns(Path(folder) / "runs")
            self.assertEqual([(run["kind"], run["state"]) for run in runs], [("phantom", "done")])
        self.delayDisplay("Phantom job done")
