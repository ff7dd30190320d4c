"""The "MedSegNAS" Segment Editor effect: Auto (a model's result into the segments of the same
names) and Refine (positive/negative clicks in slice views update the selected segment).

Registered by the MedSegNAS module once Slicer has started (``MedSegNAS.py``). Slicer glue only:
the work is in ``MedSegNASLib.panels.editor_effect_logic`` (workers, jobs, applying masks through
this effect's ``modifySegmentByLabelmap``, so the editor's masking and undo apply). No inference on
Slicer's main thread: Auto is a background job (or worker), Refine a persistent worker process,
both read from a ``qt.QTimer``.
"""

import os

import qt
import slicer
import vtk
from MedSegNASLib.panels import editor_effect_logic as el
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

#: Milliseconds between two reads of the worker and the Auto job.
POLL_INTERVAL_MS = 100
#: The label combo's first item: the model label of the same name as the segment.
BY_NAME = "(same name as the segment)"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Auto and click refinement with MedSegNAS models (see the module docstring)."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedSegNAS"
        scriptedEffect.title = "MedSegNAS"
        scriptedEffect.perSegment = False  # Auto fills several segments; Refine the selected one
        scriptedEffect.requireSegments = False  # Auto adds the segments it lacks
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.session = None  # el.RefineSession
        self.autoRun = None  # el.AutoRun
        self.markers = None  # el.ClickMarkers
        self.models = []  # (id, name, interactive)
        self._sceneObserver = None
        self._message = ""  # the last error or outcome, shown with the status
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onTimer)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(
            os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons", "SegmentEditorMedSegNAS.png"
        )
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return (
            "<html>Segment with MedSegNAS models.<p><b>Auto</b>: the chosen model segments the source volume in the "
            "background; each of its labels goes to the segment of the same name (added when missing), other "
            "segments are left as they are.<p><b>Refine</b> the selected segment with an interactive model: "
            "<b>left click</b> where the segment should be, <b>shift+left</b> or <b>right click</b> where it should "
            "not, in any slice view. Each click updates the segment around it (Undo takes one click back). "
            "<b>Finish</b> keeps the result. Masking settings apply.</html>"
        )

    # -- options ----------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.refineModelComboBox = qt.QComboBox()
        self.refineModelComboBox.toolTip = (
            "Interactive model that answers the clicks (medsegnas train --interactive)"
        )
        self.labelComboBox = qt.QComboBox()
        self.labelComboBox.toolTip = "The model's label the selected segment is"
        self.autoModelComboBox = qt.QComboBox()
        self.autoModelComboBox.toolTip = "Model whose automatic result Auto puts into the segments"
        self.autoButton = qt.QPushButton("Auto")
        self.finishButton = qt.QPushButton("Finish")
        self.finishButton.toolTip = "Keep the refined segment and stop the interactive worker"
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addLabeledOptionsWidget("Auto model:", self.autoModelComboBox)
        self.scriptedEffect.addOptionsWidget(self.autoButton)
        self.scriptedEffect.addLabeledOptionsWidget("Refine model:", self.refineModelComboBox)
        self.scriptedEffect.addLabeledOptionsWidget("Refine as label:", self.labelComboBox)
        self.scriptedEffect.addOptionsWidget(self.finishButton)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.autoButton.connect("clicked()", self.onAuto)
        self.finishButton.connect("clicked()", self.onFinish)
        for combo in (self.refineModelComboBox, self.autoModelComboBox, self.labelComboBox):
            combo.connect("activated(int)", self.updateMRMLFromGUI)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("RefineModel", "")
        self.scriptedEffect.setParameterDefault("AutoModel", "")
        self.scriptedEffect.setParameterDefault("Label", "")

    def refreshModels(self):
        try:
            self.models = el.registry_models()
        except Exception as exc:
            self.models, self._message = [], f"Cannot read the model registry: {exc}"
        for combo, interactiveOnly in ((self.refineModelComboBox, True), (self.autoModelComboBox, False)):
            wasBlocked = combo.blockSignals(True)
            combo.clear()
            for modelId, name, interactive in self.models:
                if interactive or not interactiveOnly:
                    combo.addItem(name, modelId)
            combo.blockSignals(wasBlocked)
        self.updateGUIFromMRML()

    def updateGUIFromMRML(self):
        if not hasattr(self, "statusLabel"):
            return
        for combo, name in ((self.refineModelComboBox, "RefineModel"), (self.autoModelComboBox, "AutoModel")):
            wasBlocked = combo.blockSignals(True)
            index = combo.findData(self.scriptedEffect.parameter(name))
            combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
            combo.blockSignals(wasBlocked)
        wasBlocked = self.labelComboBox.blockSignals(True)
        labels = self.session.labels if self.session is not None else []
        if [self.labelComboBox.itemText(i) for i in range(self.labelComboBox.count)] != [BY_NAME, *labels]:
            self.labelComboBox.clear()
            self.labelComboBox.addItems([BY_NAME, *labels])
        index = self.labelComboBox.findText(self.scriptedEffect.parameter("Label"))
        self.labelComboBox.setCurrentIndex(max(index, 0))
        self.labelComboBox.blockSignals(wasBlocked)
        self.autoButton.text = "Cancel Auto" if self.autoRun is not None else "Auto"
        self.autoButton.enabled = self.autoRun is not None or self.autoModelComboBox.count > 0
        self.finishButton.enabled = self.session is not None
        self.updateStatus()

    def updateMRMLFromGUI(self):
        label = self.labelComboBox.currentText
        self.scriptedEffect.setParameter("RefineModel", self.refineModelComboBox.currentData or "")
        self.scriptedEffect.setParameter("AutoModel", self.autoModelComboBox.currentData or "")
        self.scriptedEffect.setParameter("Label", "" if label == BY_NAME else label)
        if self.session is not None and not self._sessionMatches():
            self._stopRefine()
            self._message = "Settings changed: the next click starts a new session."
        self.updateStatus()

    def updateStatus(self):
        lines = [el.status_text(self.session)]
        if self.autoRun is not None:
            lines.append(f"Auto: {self.autoRun.text}")
        if self._message:
            lines.append(self._message)
        self.statusLabel.text = "\n".join(lines)

    # -- activation -------------------------------------------------------------------------------

    def activate(self):
        self.refreshModels()
        self.markers = el.ClickMarkers(slicer.mrmlScene)
        self._sceneObserver = slicer.mrmlScene.AddObserver(
            slicer.mrmlScene.StartCloseEvent, self.onSceneClose
        )
        self._message = ""
        self._startRefine()
        self.timer.start()
        self.updateGUIFromMRML()

    def deactivate(self):
        if self._sceneObserver is not None:
            slicer.mrmlScene.RemoveObserver(self._sceneObserver)
            self._sceneObserver = None
        self._stopRefine()
        if self.autoRun is not None:
            self.autoRun.cancel()
            self.autoRun = None
        if self.markers is not None:
            self.markers.remove()
        self.timer.start()  # runs on until the stopped workers have exited (reaped)
        self.onTimer()

    def onSceneClose(self, caller=None, event=None):
        self._stopRefine()
        if self.autoRun is not None:
            self.autoRun.cancel()
            self.autoRun = None

    def _sessionMatches(self):
        _segmentation, segmentId = el.selected_segment(self.scriptedEffect.parameterSetNode())
        label = self.scriptedEffect.parameter("Label") or None
        s = self.session
        return (s.model, s.segment_id, s.volume_node) == (
            self.scriptedEffect.parameter("RefineModel") or self.refineModelComboBox.currentData,
            segmentId,
            self.scriptedEffect.parameterSetNode().GetSourceVolumeNode(),
        ) and (label is None or label == s.label)

    def _startRefine(self):
        """A worker for the selected segment with the chosen interactive model, if all are chosen."""
        editorNode = self.scriptedEffect.parameterSetNode()
        segmentation, segmentId = el.selected_segment(editorNode)
        volume = editorNode.GetSourceVolumeNode() if editorNode is not None else None
        model = self.scriptedEffect.parameter("RefineModel") or self.refineModelComboBox.currentData
        if not (segmentation and segmentId and volume and model):
            self._message = "Refine needs a source volume, a selected segment and an interactive model."
            return False
        try:
            self.session = el.RefineSession(
                model, volume, segmentation, segmentId, label=self.scriptedEffect.parameter("Label") or None
            )
        except Exception as exc:
            self._message = f"Cannot start the interactive worker: {exc}"
            return False
        self._message = ""
        return True

    def _stopRefine(self):
        if self.session is not None:
            self.session.stop()
            self.session = None
        if self.markers is not None:
            self.markers.clear()

    # -- buttons ----------------------------------------------------------------------------------

    def onAuto(self):
        if self.autoRun is not None:
            self.autoRun.cancel()
            self.autoRun, self._message = None, "Auto cancelled."
            self.updateGUIFromMRML()
            return
        volume = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        modelId = self.autoModelComboBox.currentData
        if volume is None or not modelId:
            self._message = "Auto needs a source volume and a model."
            self.updateStatus()
            return
        interactive = next((i for m, _n, i in self.models if m == modelId), False)
        try:
            self.autoRun = el.AutoRun(
                modelId, volume, interactive=interactive, runs_folder=el.default_runs_folder(slicer.mrmlScene)
            )
            self._message = ""
        except Exception as exc:
            self._message = f"Cannot start Auto: {exc}"
        self.timer.start()
        self.updateGUIFromMRML()

    def onFinish(self):
        self._stopRefine()
        self._message = "Finished: the segment is kept; the next click starts a new session."
        self.updateGUIFromMRML()

    # -- clicks and timer -------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if eventId not in (vtk.vtkCommand.LeftButtonPressEvent, vtk.vtkCommand.RightButtonPressEvent):
            return False
        if (
            viewWidget.className() != "qMRMLSliceWidget"
            or callerInteractor.GetControlKey()
            or callerInteractor.GetAltKey()
        ):
            return False  # 3D views, and ctrl/alt drags, keep their own meaning
        positive = eventId == vtk.vtkCommand.LeftButtonPressEvent and not callerInteractor.GetShiftKey()
        ras = el.xy_to_ras(viewWidget.mrmlSliceNode(), callerInteractor.GetEventPosition())
        if self.session is not None and (
            self.session.state in ("failed", "stopped") or not self._sessionMatches()
        ):
            self._stopRefine()  # a new session for another segment, model or label, or after a failure
        if self.session is None and not self._startRefine():
            self.updateStatus()
            return True
        self.session.add_click(ras, positive)
        self.markers.add(ras, positive)
        self.timer.start()
        self.updateGUIFromMRML()
        return True

    def onTimer(self):
        editor = el.EffectEditor(self.scriptedEffect)
        if self.autoRun is not None and self.autoRun.poll(editor):
            run, self.autoRun = self.autoRun, None
            names = ", ".join(run.segment_ids)
            self._message = (
                f"Auto done: {names}." if run.state == "done" else f"Auto {run.state}: {run.error}"
            )
            self.updateGUIFromMRML()
        if self.session is not None and self.session.poll(editor):
            if self.session.state == "failed" and self.markers is not None:
                self.markers.clear()
            if self.session.restarted and self.markers is not None:  # undo or another tool: new clicks
                self.session.restarted = False
                self.markers.clear()
                for positive, ras in self.session.clicks:
                    self.markers.add(ras, positive)
            self.updateGUIFromMRML()
        elif self.session is not None and self.session.state == "starting":
            self.updateStatus()
        if el.reap_workers() == 0 and self.session is None and self.autoRun is None:
            self.timer.stop()  # started again by a click or Auto
