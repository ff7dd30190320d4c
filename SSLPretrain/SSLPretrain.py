"""SSLPretrain Slicer module: the panel, its parameter node, and a thin logic over ``SSLPretrainLib``.

Self-supervised pretraining of Swin UNETR encoders runs as a background job of the MedSegNAS job
protocol (its commands arrive with their issue). What the panel offers now:

- Environment: what a pretraining job would run with (``sslpretrain info``: PyTorch and its CUDA
  build, MONAI, the GPUs), checked in a background process; install what is missing.
- Pretraining data: read a dataset description (MSD ``dataset.json`` or a datalist) and report
  the images it offers for pretraining and any missing file.

No ``from __future__ import annotations`` here: ``parameterNodeWrapper`` reads the field types
with ``typing.get_type_hints`` while Slicer is still loading this file.
"""

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from SSLPretrainLib.cli import REQUIRED_PACKAGES, format_environment

#: pip requirements of the packages a pretraining job needs (torch comes from the PyTorch extension).
PRETRAIN_PACKAGES: dict[str, str] = {
    "torch": "torch>=2.4",
    "monai": "monai>=1.5,<1.7",
    "einops": "einops>=0.6",
}

#: Milliseconds between two checks of the background environment check.
PROCESS_POLL_INTERVAL_MS = 300


#
# SSLPretrain
#


class SSLPretrain(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule in Slicer's Base/Python)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SSL Pretrain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        # Shares the MedSegNAS module's job protocol, data I/O and dependency installation.
        self.parent.dependencies = ["MedSegNAS"]
        self.parent.contributors = ["MedSegNAS contributors (https://github.com/medsegnas/SlicerMedSegNAS)"]
        self.parent.helpText = _(
            """
Pretrain the encoder of a Swin UNETR segmentation network on unlabelled volumes with
self-supervised learning (masked-volume inpainting, rotation prediction and contrastive coding),
then fine-tune it on a few labelled cases.
<ul>
<li><b>Environment</b>: the PyTorch, MONAI and GPU a pretraining job would use; install what is missing.</li>
<li><b>Pretraining data</b>: check a dataset description (dataset.json or datalist) and count the
images it offers for pretraining.</li>
</ul>
See the <a href="https://github.com/medsegnas/SlicerMedSegNAS#readme">extension documentation</a>.
"""
        )
        self.parent.acknowledgementText = _(
            """
Pretraining follows Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical
Image Analysis" (CVPR 2022) and its <a href="https://monai.io">MONAI</a> implementation.
Developed by the MedSegNAS contributors, Apache License 2.0.
"""
        )


#
# SSLPretrainParameterNode
#


@parameterNodeWrapper
class SSLPretrainParameterNode:
    """The panel's settings, saved with the scene.

    datasetFolder - dataset.json, its folder, or a datalist JSON listing the pretraining images.
    """

    datasetFolder: Path = Path.home() / "MedSegNAS" / "phantom"


#
# SSLPretrainWidget
#


class SSLPretrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: widgets <-> parameter node <-> logic; background checks followed by a timer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._environmentProcess = None
        self._environmentTimer = None
        self._missingPackages = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSLPretrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SSLPretrainLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.environmentCheckButton.connect("clicked(bool)", self.onCheckEnvironment)
        self.ui.environmentInstallButton.connect("clicked(bool)", self.onInstallPackages)
        self.ui.datasetCheckButton.connect("clicked(bool)", self.onCheckDataset)

        self._environmentTimer = qt.QTimer()
        self._environmentTimer.setInterval(PROCESS_POLL_INTERVAL_MS)
        self._environmentTimer.connect("timeout()", self._pollEnvironmentCheck)

        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        self._environmentTimer.stop()
        if self._environmentProcess is not None and self._environmentProcess.poll() is None:
            self._environmentProcess.kill()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        checking = self._environmentProcess is not None
        self.ui.environmentCheckButton.enabled = not checking
        self.ui.environmentInstallButton.enabled = not checking and bool(self._missingPackages)
        self.ui.environmentInstallButton.toolTip = (
            _("Install {names} into Slicer's Python.").format(names=", ".join(self._missingPackages))
            if self._missingPackages
            else _(
                "Everything a pretraining job needs is installed (or the environment was not checked yet)."
            )
        )
        hasDataset = bool(
            self._parameterNode and str(self._parameterNode.datasetFolder).strip() not in ("", ".")
        )
        self.ui.datasetCheckButton.enabled = hasDataset

    # -- environment ----------------------------------------------------------------------------

    def onCheckEnvironment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the environment check."), waitCursor=True):
            self._environmentProcess = self.logic.startEnvironmentCheck()
            self.ui.environmentStatusLabel.text = _("Checking (importing PyTorch takes a few seconds)...")
            self._updateButtons()
            self._environmentTimer.start()

    def _pollEnvironmentCheck(self) -> None:
        try:
            environment = self.logic.environmentCheckResult(self._environmentProcess)
        except Exception as exc:
            self._finishEnvironmentCheck(_("The check failed: {error}").format(error=exc), "")
            return
        if environment is None:
            return  # still running
        self._missingPackages = self.logic.missingPackages(environment)
        self._finishEnvironmentCheck(
            self.logic.environmentSummary(environment), format_environment(environment)
        )

    def _finishEnvironmentCheck(self, summary: str, details: str) -> None:
        self._environmentTimer.stop()
        self._environmentProcess = None
        self.ui.environmentStatusLabel.text = summary
        self.ui.environmentTextEdit.setPlainText(details)
        self._updateButtons()

    def onInstallPackages(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to install the packages."), waitCursor=True):
            if self.logic.installPackages():
                self.onCheckEnvironment()

    # -- pretraining data -----------------------------------------------------------------------

    def onCheckDataset(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to read the dataset."), waitCursor=True):
            try:
                summary = self.logic.describeDataset(Path(self._parameterNode.datasetFolder).expanduser())
            except Exception as exc:
                self.ui.datasetStatusLabel.text = str(exc)
                raise
            self.ui.datasetStatusLabel.text = self.logic.datasetSummaryText(summary)


#
# SSLPretrainLogic
#


class SSLPretrainLogic(ScriptedLoadableModuleLogic):
    """What the panel does, usable from Slicer's Python console and tests without the panel."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return SSLPretrainParameterNode(super().getParameterNode())

    # -- environment ----------------------------------------------------------------------------

    @staticmethod
    def workerCommand(*args: str) -> tuple:
        """``(argv, environment)`` to run ``sslpretrain <args>`` in a worker Python (PythonSlicer)."""
        from MedSegNAS import MedSegNASLogic

        folders = [os.path.dirname(os.path.abspath(__file__))]
        medsegnasLib = importlib.util.find_spec("MedSegNASLib")
        if medsegnasLib is not None and medsegnasLib.submodule_search_locations:
            folders.append(os.path.dirname(list(medsegnasLib.submodule_search_locations)[0]))
        folders += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(folders))}
        return [MedSegNASLogic.pythonExecutable(), "-m", "SSLPretrainLib.cli", *args], environment

    def startEnvironmentCheck(self) -> subprocess.Popen:
        """Start ``sslpretrain info --json`` in the background (torch takes seconds to import)."""
        argv, environment = self.workerCommand("info", "--json")
        return subprocess.Popen(
            argv,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def environmentCheckResult(process: subprocess.Popen):
        """The environment dict once ``process`` has ended, ``None`` while it runs.

        Raises RuntimeError with the worker's last error line when it printed no report.
        """
        if process.poll() is None:
            return None
        output, errors = process.communicate()
        try:
            return json.loads(output)
        except ValueError:
            lines = [line for line in (errors or "").splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"exit code {process.returncode}, no output") from None

    def checkEnvironment(self, timeoutSeconds: float = 120.0) -> dict:
        """Run the environment check and wait for it (scripts and tests; the panel polls)."""
        process = self.startEnvironmentCheck()
        deadline = time.monotonic() + timeoutSeconds
        while (environment := self.environmentCheckResult(process)) is None:
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"the environment check did not finish in {timeoutSeconds:g} s")
            time.sleep(0.1)
        return environment

    @staticmethod
    def missingPackages(environment: dict) -> list:
        return [name for name in REQUIRED_PACKAGES if environment["packages"].get(name) is None]

    @staticmethod
    def environmentSummary(environment: dict) -> str:
        """One line for the panel: what is missing, or where pretraining would run."""
        missing = SSLPretrainLogic.missingPackages(environment)
        broken = [name for name in missing if name in environment.get("problems", {})]
        if missing and len(broken) < len(missing):
            return _("Not installed: {names}.").format(names=", ".join(n for n in missing if n not in broken))
        if broken:
            return _("Installed but failing to import: {names} (details below).").format(
                names=", ".join(broken)
            )
        packages = environment["packages"]
        if environment["devices"]:
            device = environment["devices"][0]
            where = f"{device['name']} ({device['description']})"
        else:
            where = _("the CPU only (no GPU found): pretraining will be very slow")
        return _("PyTorch {torch}, MONAI {monai}; pretraining runs on {where}.").format(
            torch=packages["torch"], monai=packages["monai"], where=where
        )

    @staticmethod
    def installPackages(askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension) and MONAI if missing; False if declined."""
        from MedSegNAS import MedSegNASLogic

        return MedSegNASLogic.ensurePackages(PRETRAIN_PACKAGES, askConfirmation=askConfirmation)

    # -- pretraining data -----------------------------------------------------------------------

    @staticmethod
    def describeDataset(dataset: Path) -> dict:
        """Images a dataset offers for pretraining, read from its JSON (no image is opened).

        Returns a dict with ``name``, ``path``, ``modalities``, ``unlabeled``, ``training``,
        ``validation``, ``test`` (numbers of cases) and ``missing`` (image files that do not exist,
        relative to the dataset root).
        """
        from MedSegNASLib.data.datasets import load_dataset

        description = load_dataset(dataset)
        summary = {
            "name": description.name,
            "path": str(description.path),
            "modalities": description.modalities,
        }
        missing = []
        for role, cases in description.groups():
            summary[role] = len(cases)
            for case in cases:
                missing += [description.display_path(image) for image in case.images if not image.is_file()]
        summary["missing"] = missing
        return summary

    @staticmethod
    def datasetSummaryText(summary: dict) -> str:
        labelled = summary["training"] + summary["validation"]
        text = _(
            "{name}: {unlabeled} unlabelled image(s); {labelled} labelled and {test} test image(s) can also be used "
            "for pretraining. Channels: {channels}."
        ).format(
            name=summary["name"],
            unlabeled=summary["unlabeled"],
            labelled=labelled,
            test=summary["test"],
            channels=", ".join(summary["modalities"]),
        )
        if summary["missing"]:
            text += " " + _("{count} image file(s) missing, e.g. {example}.").format(
                count=len(summary["missing"]), example=summary["missing"][0]
            )
        else:
            text += " " + _("All image files are present.")
        return text


#
# SSLPretrainTest
#


class SSLPretrainTest(ScriptedLoadableModuleTest):
    """Run in Slicer: Developer mode > Reload and Test, or as a ctest of the extension build."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_dataset_is_described_and_its_images_load()
        self.setUp()
        self.test_environment_check_reports_packages()

    def test_phantom_dataset_is_described_and_its_images_load(self):
        """A tiny phantom dataset written by the Lib: counted right, its unlabelled image loads."""
        import tempfile

        from MedSegNASLib.data.datasets import load_dataset
        from MedSegNASLib.data.io import read_volume
        from MedSegNASLib.data.phantom import write_phantom_dataset
        from MedSegNASLib.slicer_bridge import volume_to_volume_node

        logic = SSLPretrainLogic()
        with tempfile.TemporaryDirectory() as folder:
            write_phantom_dataset(folder, cases=1, size=24, unlabeled=2, test_cases=0)
            summary = logic.describeDataset(Path(folder))
            self.assertEqual((summary["unlabeled"], summary["training"], summary["test"]), (2, 1, 0))
            self.assertEqual(summary["missing"], [])
            image = load_dataset(folder).unlabeled[0].images[0]
            volumeNode = volume_to_volume_node(read_volume(image), slicer.mrmlScene, name="unlabelled")
            os.remove(image)
            self.assertIn(image.name, logic.describeDataset(Path(folder))["missing"][0])
        self.assertEqual(volumeNode.GetImageData().GetDimensions(), (24, 24, 24))
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("unlabelled"))
        self.delayDisplay("Pretraining data checked")

    def test_environment_check_reports_packages(self):
        environment = SSLPretrainLogic().checkEnvironment()
        self.assertIn("torch", environment["packages"])
        self.assertIn(environment["default_device"], ("cuda", "mps", "cpu"))
        self.delayDisplay(SSLPretrainLogic.environmentSummary(environment))
