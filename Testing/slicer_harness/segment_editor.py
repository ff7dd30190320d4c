"""The Segment Editor as scripted effects see it: Slicer's Python effect API over the real MRML logic.

Stands in for what the Slicer application provides (checked against Slicer's
``qSlicerSegmentEditorAbstractEffect.h``, ``qSlicerSegmentEditorScriptedEffect`` and
``SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py``):

* ``SegmentEditorEffects.AbstractScriptedSegmentEditorEffect`` (``self.scriptedEffect``, ``register``);
* ``qSlicerSegmentationsEditorEffectsPythonQt``: ``qSlicerSegmentEditorScriptedEffect`` (the C++
  adaptor: ``setPythonSource`` loads the file and instantiates the class named as the file,
  ``self()``, ``name``/``title``/``perSegment``/``requireSegments``, effect parameters stored on the
  ``vtkMRMLSegmentEditorNode`` as ``<effect name>.<parameter>`` attributes, ``addOptionsWidget``,
  ``saveStateForUndo``, ``modifySelectedSegmentByLabelmap``/``modifySegmentByLabelmap`` and the
  ``ModificationMode`` values) and ``qSlicerSegmentEditorEffectFactory`` (``instance().registerEffect``);
* :class:`SegmentEditor`: the editor widget: a real ``vtkMRMLSegmentEditorNode`` and
  ``vtkSlicerSegmentEditorLogic`` (so masking, overwrite mode, hidden segments and undo are
  slicer-core's own), effects cloned from the factory, activated and deactivated as the widget
  does, and mouse presses in slice views delivered to ``processInteractionEvents`` with a
  ``qMRMLSliceWidget`` stand-in (``mrmlSliceNode()``, ``sliceLogic()``, ``className()``).

Not modelled: rendering, effect cursors, the 3D view, keyboard shortcuts.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import slicer
import vtk

_FACTORY_EFFECTS: list[Any] = []


class AbstractScriptedSegmentEditorEffect:
    """``SegmentEditorEffects.AbstractScriptedSegmentEditorEffect``: holds the adaptor, registers it."""

    def __init__(self, scriptedEffect: Any) -> None:
        self.scriptedEffect = scriptedEffect

    def register(self) -> None:
        qSlicerSegmentEditorEffectFactory().instance().registerEffect(self.scriptedEffect)


class qSlicerSegmentEditorEffectFactory:  # noqa: N801 - Slicer's name
    """The singleton factory: effects registered once; each editor widget clones them."""

    def instance(self) -> qSlicerSegmentEditorEffectFactory:
        return self

    def registerEffect(self, effect: Any) -> bool:  # noqa: N802
        if any(e.name == effect.name for e in _FACTORY_EFFECTS):
            return False  # Slicer refuses a second effect of the same name
        _FACTORY_EFFECTS.append(effect)
        return True

    def registeredEffects(self) -> list[Any]:  # noqa: N802
        return list(_FACTORY_EFFECTS)


class qSlicerSegmentEditorAbstractEffect:  # noqa: N801
    """``slicer.qSlicerSegmentEditorAbstractEffect``: the ``ModificationMode`` enum effects pass."""

    ModificationModeSet, ModificationModeAdd, ModificationModeRemove, ModificationModeRemoveAll = 0, 1, 2, 3


class qSlicerSegmentEditorScriptedEffect(qSlicerSegmentEditorAbstractEffect):  # noqa: N801
    """The C++ adaptor of a Python effect (what ``self.scriptedEffect`` is in the effect)."""

    def __init__(self, parent: Any = None) -> None:
        import qt

        self.name, self.title = "", ""
        self.perSegment, self.requireSegments = True, True
        self._python = None
        self._node = None
        self._logic = None  # the editor's vtkSlicerSegmentEditorLogic, set by SegmentEditor
        self._editor = None
        self._active = False
        self.pythonSource = ""
        self._frame = qt.QFrame()
        self._frame.setLayout(qt.QFormLayout())

    # -- Python source ---------------------------------------------------------------------------

    def setPythonSource(self, path: str, className: str = "") -> bool:  # noqa: N802, N803
        """Load ``path`` and instantiate the class named as the file (Slicer's rule)."""
        path = str(path)
        name = f"_scripted_effect_{Path(path).stem}_{abs(hash(path))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cls = getattr(module, className or Path(path).stem)
        self.pythonSource = path
        self._python = cls(self)
        return True

    def self(self) -> Any:
        return self._python

    def clone(self) -> Any:
        return self._python.clone()

    # -- what the C++ base class calls on the Python side ----------------------------------------

    def icon(self) -> Any:
        return self._python.icon()

    def helpText(self) -> str:  # noqa: N802
        return self._python.helpText()

    def setupOptionsFrame(self) -> None:  # noqa: N802
        self._python.setupOptionsFrame()

    def setMRMLDefaults(self) -> None:  # noqa: N802
        self._python.setMRMLDefaults()

    def activate(self) -> None:
        self._active = True  # the base class shows the options frame first
        self._python.activate()

    def deactivate(self) -> None:
        self._python.deactivate()
        self._active = False

    def active(self) -> bool:
        return self._active

    def updateGUIFromMRML(self) -> None:  # noqa: N802
        self._python.updateGUIFromMRML()

    def updateMRMLFromGUI(self) -> None:  # noqa: N802
        self._python.updateMRMLFromGUI()

    # -- API the effect calls ------------------------------------------------------------------------

    def parameterSetNode(self) -> Any:  # noqa: N802
        return self._node

    def setParameterSetNode(self, node: Any) -> None:  # noqa: N802
        self._node = node

    def scene(self) -> Any:
        return self._node.GetScene() if self._node is not None else None

    def optionsFrame(self) -> Any:  # noqa: N802
        return self._frame

    def optionsLayout(self) -> Any:  # noqa: N802
        return self._frame.layout()

    def addOptionsWidget(self, widget: Any) -> None:  # noqa: N802
        from PySide6 import QtWidgets

        if isinstance(widget, QtWidgets.QLayout):
            self._frame.layout().addRow(widget)
        else:
            self._frame.layout().addRow(widget)

    def addLabeledOptionsWidget(self, label: str, widget: Any) -> Any:  # noqa: N802
        import qt

        text = qt.QLabel(label)
        self._frame.layout().addRow(text, widget)
        return text

    def _key(self, name: str) -> str:
        return f"{self.name}.{name}"

    def parameter(self, name: str) -> str:
        value = self._node.GetAttribute(self._key(name))
        if value is None:
            value = self._node.GetAttribute(name)  # a common parameter
        return value or ""

    def integerParameter(self, name: str) -> int:  # noqa: N802
        return int(self.parameter(name) or 0)

    def doubleParameter(self, name: str) -> float:  # noqa: N802
        return float(self.parameter(name) or 0.0)

    def parameterDefined(self, name: str) -> bool:  # noqa: N802
        return self._node.GetAttribute(self._key(name)) is not None

    def setParameter(self, name: str, value: Any) -> None:  # noqa: N802
        self._node.SetAttribute(self._key(name), str(value))

    def setParameterDefault(self, name: str, value: Any) -> None:  # noqa: N802
        if not self.parameterDefined(name):
            self.setParameter(name, value)

    def setCommonParameter(self, name: str, value: Any) -> None:  # noqa: N802
        self._node.SetAttribute(name, str(value))

    def saveStateForUndo(self) -> None:  # noqa: N802
        self._logic.SaveStateForUndo()

    def _mode(self, mode: int) -> Any:
        logic = self._logic
        return {
            0: logic.ModificationModeSet,
            1: logic.ModificationModeAdd,
            2: logic.ModificationModeRemove,
            3: logic.ModificationModeRemoveAll,
        }[int(mode)]

    def modifySegmentByLabelmap(  # noqa: N802
        self,
        segmentationNode: Any,
        segmentID: str,
        modifierLabelmap: Any,
        modificationMode: int,
        *rest: Any,  # noqa: N803
    ) -> None:
        """``(node, id, labelmap, mode[, extent], bypassMasking=False)``: the editor's masking applies."""
        bypass = bool(rest[-1]) if rest and isinstance(rest[-1], bool) else False
        self._logic.ModifySegmentByLabelmap(
            segmentationNode,
            segmentID,
            modifierLabelmap,
            self._mode(modificationMode),
            self.perSegment,
            bypass,
        )

    def modifySelectedSegmentByLabelmap(
        self, modifierLabelmap: Any, modificationMode: int, *rest: Any
    ) -> None:  # noqa: N802, N803
        self.modifySegmentByLabelmap(
            self._node.GetSegmentationNode(),
            self._node.GetSelectedSegmentID(),
            modifierLabelmap,
            modificationMode,
            *rest,
        )

    def selectEffect(self, effectName: str) -> None:  # noqa: N802, N803
        self._editor.setActiveEffectByName(effectName)

    def confirmCurrentSegmentVisible(self) -> int:  # noqa: N802
        return 1  # ConfirmedWithoutDialog


class SliceWidget:
    """``qMRMLSliceWidget`` as an effect sees it."""

    def __init__(self, logic: Any) -> None:
        self._logic = logic

    def className(self) -> str:  # noqa: N802
        return "qMRMLSliceWidget"

    def mrmlSliceNode(self) -> Any:  # noqa: N802
        return self._logic.GetSliceNode()

    def sliceLogic(self) -> Any:  # noqa: N802
        return self._logic


class Interactor:
    """``vtkRenderWindowInteractor`` at one mouse press: position (view pixels) and modifier keys."""

    def __init__(
        self, xy: tuple[int, int], shift: bool = False, control: bool = False, alt: bool = False
    ) -> None:
        self._xy, self._keys = xy, (shift, control, alt)

    def GetEventPosition(self) -> tuple[int, int]:  # noqa: N802
        return self._xy

    def GetShiftKey(self) -> int:  # noqa: N802
        return int(self._keys[0])

    def GetControlKey(self) -> int:  # noqa: N802
        return int(self._keys[1])

    def GetAltKey(self) -> int:  # noqa: N802
        return int(self._keys[2])


class SegmentEditor:
    """The Segment Editor widget over the scene (``qMRMLSegmentEditorWidget``'s effect handling)."""

    def __init__(self, harness: Any) -> None:
        from . import pythonqt

        self.harness = harness
        scene = slicer.mrmlScene
        self.node = slicer.vtkMRMLSegmentEditorNode()
        scene.AddNode(self.node)
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.node)
        self.effects = {}
        for registered in _FACTORY_EFFECTS:
            effect = registered.clone()  # each editor widget has its own instances
            effect._node, effect._logic, effect._editor = self.node, self.logic, self
            effect.setupOptionsFrame()
            effect.setMRMLDefaults()
            self.effects[effect.name] = effect
        self.active = None
        self._record = pythonqt.guarded  # effect callbacks are timed like slots

    def setSegmentationNode(self, node: Any) -> None:  # noqa: N802
        from MedSegNASLib.panels.slicer_bridge import _ensure_segmentation_converters

        _ensure_segmentation_converters()
        self.node.SetAndObserveSegmentationNode(node)

    def setSourceVolumeNode(self, node: Any) -> None:  # noqa: N802
        self.node.SetAndObserveSourceVolumeNode(node)
        segmentation = self.node.GetSegmentationNode()
        if segmentation is not None and not segmentation.GetNodeReference(
            segmentation.GetReferenceImageGeometryReferenceRole()
        ):
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(node)

    def setCurrentSegmentID(self, segment_id: str) -> None:  # noqa: N802
        self.node.SetSelectedSegmentID(segment_id)
        if self.active is not None:
            self._call(self.active.updateGUIFromMRML, "updateGUIFromMRML")

    def _call(self, method: Any, what: str, *args: Any) -> Any:
        result: list[Any] = []
        self._record(
            lambda *a: result.append(method(*a)), f"{self.active.name if self.active else ''}.{what}"
        )(*args)
        return result[0] if result else None

    def setActiveEffectByName(self, name: str) -> None:  # noqa: N802
        if self.active is not None:
            self._call(self.active.deactivate, "deactivate")
            self.active = None
        if name:
            self.active = self.effects[name]
            self._call(self.active.activate, "activate")

    def undo(self) -> None:
        self.logic.Undo()
        if self.active is not None:
            self._call(self.active.updateGUIFromMRML, "updateGUIFromMRML")

    def press(
        self, view: str, ras: tuple[float, float, float], button: str = "left", shift: bool = False
    ) -> bool:
        """A mouse press at RAS point ``ras`` in slice view ``view`` (the slice moved through it first)."""
        logic = self.harness.slice_logics[view]
        slice_node = logic.GetSliceNode()
        slice_node.JumpSliceByOffsetting(*ras)
        to_xy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(slice_node.GetXYToRAS(), to_xy)
        x, y, z, _ = to_xy.MultiplyPoint((*ras, 1.0))
        assert abs(z) < 1e-3, f"{ras} is not on the {view} slice"
        event = (
            vtk.vtkCommand.LeftButtonPressEvent if button == "left" else vtk.vtkCommand.RightButtonPressEvent
        )
        handler = self.active.self().processInteractionEvents
        return self._call(
            handler, "processInteractionEvents", Interactor((x, y), shift), event, SliceWidget(logic)
        )


def install() -> None:
    """Make ``import SegmentEditorEffects`` and ``import qSlicerSegmentationsEditorEffectsPythonQt`` work."""
    effects = types.ModuleType("SegmentEditorEffects")
    effects.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    sys.modules["SegmentEditorEffects"] = effects
    adaptors = types.ModuleType("qSlicerSegmentationsEditorEffectsPythonQt")
    adaptors.qSlicerSegmentEditorScriptedEffect = qSlicerSegmentEditorScriptedEffect
    adaptors.qSlicerSegmentEditorEffectFactory = qSlicerSegmentEditorEffectFactory
    sys.modules["qSlicerSegmentationsEditorEffectsPythonQt"] = adaptors
    slicer.qSlicerSegmentEditorAbstractEffect = qSlicerSegmentEditorAbstractEffect


def reset() -> None:
    """A new application: no effect registered yet."""
    _FACTORY_EFFECTS.clear()
