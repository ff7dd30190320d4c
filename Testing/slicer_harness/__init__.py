"""Run the Slicer module files (``MedSegNAS.py``, ``SSLPretrain.py``) offscreen, without Slicer.

Written for this project's tests. ``install()`` adds to the real ``slicer`` package of the
``slicer-core`` wheel (real MRML scene, nodes and logics; its real ``slicer.util``) what the Slicer
application adds, built on PySide6:

* ``qt`` and ``ctk``: PythonQt's view of Qt (:mod:`.pythonqt`: properties as attributes,
  ``connect("signal(args)", slot)``) and stand-ins for the CTK/MRML widgets of the ``.ui`` files
  (:mod:`.widgets`), loaded by the real ``slicer.util.loadUI`` and ``childWidgetVariables``;
* ``slicer.parameterNodeWrapper`` (:mod:`.parameter_nodes`), ``slicer.ScriptedLoadableModule``
  and ``slicer.i18n`` (:mod:`.scripted`);
* the Segment Editor's scripted effect API (:mod:`.segment_editor`: ``SegmentEditorEffects``, the
  effect adaptor and factory, an editor widget over the real ``vtkSlicerSegmentEditorLogic``) and
  ``slicer.app``'s ``startupCompleted()`` signal (:meth:`Harness.complete_startup`);
* ``slicer.mrmlScene`` with the singletons the application creates (layout node, selection node,
  three slice views with real ``vtkMRMLSliceLogic``), ``slicer.app`` (application logic, a
  :class:`LayoutManager` that records every layout the user is shown, override cursor,
  ``testingEnabled() == False`` so errors take the path a user meets) and ``slicer.modules``
  (``plots``, ``tables`` logics; the loaded modules).

Modal dialogs never block: ``slicer.util.messageBox`` (behind ``errorDisplay``,
``confirmOkCancelDisplay``, ``tryWithErrorDisplay``) records the text in :attr:`Harness.dialogs`
and answers :attr:`Harness.answer`; file dialogs answer from ``pythonqt.ANSWERS``.
Jobs are real worker subprocesses; timers fire in :meth:`Harness.wait_until`.

Not modelled: rendering, the module panel's scroll area and widget geometry, Slicer's
``qSlicerModuleManager`` (modules are loaded by :meth:`Harness.load_module`), drag and drop,
``slicer.util.pip_install`` (the tests run where the packages are present, or mark one missing).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

_HARNESS: Harness | None = None


class LayoutManager:
    """Slicer's layout manager as far as panels see it: ``layout`` is the layout node's view
    arrangement (so ``vtkSlicerPlotsLogic.ShowChartInLayout`` changes it too); :attr:`history`
    records every arrangement shown."""

    def __init__(self, harness: Harness) -> None:
        self._harness = harness
        self.history: list[int] = []

    def _node(self) -> Any:
        return self._harness.layout_node

    @property
    def layout(self) -> int:
        return self._node().GetViewArrangement()

    def setLayout(self, arrangement: int) -> None:  # noqa: N802 - Slicer's name
        self._node().SetViewArrangement(arrangement)

    def sliceViewNames(self) -> list[str]:  # noqa: N802
        return list(self._harness.slice_logics)

    def mrmlSliceLogics(self) -> Any:  # noqa: N802
        import vtk

        collection = vtk.vtkCollection()
        for logic in self._harness.slice_logics.values():
            collection.AddItem(logic)
        return collection


class Application:
    """``slicer.app``: what panels call on qSlicerApplication."""

    applicationName = "3D Slicer"
    #: The Slicer version the panels see; a test may set an older one.
    applicationVersion = "5.10.0"

    def __init__(self, harness: Harness) -> None:
        self._harness = harness

    def layoutManager(self) -> LayoutManager:  # noqa: N802
        return self._harness.layout_manager

    def applicationLogic(self) -> Any:  # noqa: N802
        return self._harness.application_logic

    def testingEnabled(self) -> bool:  # noqa: N802
        return False

    def setOverrideCursor(self, cursor: Any) -> None:  # noqa: N802
        self._harness.qapp.setOverrideCursor(cursor)

    def restoreOverrideCursor(self) -> None:  # noqa: N802
        self._harness.qapp.restoreOverrideCursor()

    def processEvents(self) -> None:  # noqa: N802
        self._harness.qapp.processEvents()

    def connect(self, signal: str, slot: Callable[[], Any]) -> bool:
        """PythonQt's connect; ``startupCompleted()`` fires in :meth:`Harness.complete_startup`."""
        assert signal == "startupCompleted()", f"the harness has no application signal {signal}"
        self._harness.startup_slots.append(slot)
        return True


class Harness:
    """One offscreen Slicer session: scene, application, modules; see the module docstring."""

    def __init__(self) -> None:
        from PySide6 import QtWidgets

        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        self.dialogs: list[str] = []
        self.answer = True  # what the user clicks in a question dialog (True: OK / Yes)
        self.modules: dict[str, Any] = {}
        self.startup_slots: list[Callable[[], Any]] = []

    # -- session ---------------------------------------------------------------------------------

    def _make_scene(self) -> None:
        import slicer

        scene = slicer.vtkMRMLScene()
        slicer.mrmlScene = scene
        self.application_logic = slicer.vtkSlicerApplicationLogic()
        self.application_logic.SetMRMLScene(scene)
        # The layout logic adds the layout node with Slicer's standard layout descriptions.
        self.layout_logic = slicer.vtkMRMLLayoutLogic()
        self.layout_logic.SetMRMLScene(scene)
        self.layout_node = self.layout_logic.GetLayoutNode()
        self.layout_node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.layout_manager = LayoutManager(self)
        self.layout_node.AddObserver("ModifiedEvent", self._record_layout)
        self.layout_manager.history = [self.layout_node.GetViewArrangement()]
        self.slice_logics = {}
        for name in ("Red", "Yellow", "Green"):
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetMRMLScene(scene)
            logic.AddSliceNode(name)
            self.slice_logics[name] = logic
        plots = slicer.vtkSlicerPlotsLogic()
        plots.SetMRMLApplicationLogic(self.application_logic)
        plots.SetMRMLScene(scene)
        tables = slicer.vtkSlicerTablesLogic()
        tables.SetMRMLScene(scene)
        self._logics = {"plots": plots, "tables": tables}
        slicer.modules = types.SimpleNamespace(
            **{name: types.SimpleNamespace(logic=lambda lg=lg: lg) for name, lg in self._logics.items()}
        )
        slicer.app = Application(self)

    def complete_startup(self) -> None:
        """Slicer has loaded every module: ``startupCompleted()`` (scripted effects register here)."""
        from .pythonqt import guarded

        slots, self.startup_slots = self.startup_slots, []
        for slot in slots:
            guarded(slot, "startupCompleted()")()

    def segment_editor(self) -> Any:
        """A Segment Editor widget over the scene with the registered effects (:mod:`.segment_editor`)."""
        from .segment_editor import SegmentEditor

        return SegmentEditor(self)

    def _record_layout(self, caller: Any, event: Any) -> None:
        arrangement = caller.GetViewArrangement()
        if self.layout_manager.history[-1] != arrangement:
            self.layout_manager.history.append(arrangement)

    def background_volume(self, view: str = "Red") -> Any:
        """The volume node shown in a slice view (None: nothing)."""
        import slicer

        composite = self.slice_logics[view].GetSliceCompositeNode()
        return slicer.mrmlScene.GetNodeByID(composite.GetBackgroundVolumeID() or "")

    def close_scene(self) -> None:
        """File > Close Scene: ``Clear(0)`` (singletons stay), with StartClose/EndClose events."""
        import slicer

        slicer.mrmlScene.Clear(0)

    # -- modules ---------------------------------------------------------------------------------

    def load_module(self, name: str, folder: Path) -> tuple[Any, Any]:
        """Load ``folder/name.py`` as Slicer does: the module object, then its widget, set up.

        Returns ``(python module, widget)``; the widget is not entered yet (see :meth:`enter`).
        """
        import qt
        import slicer

        path = folder / f"{name}.py"
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        parent = types.SimpleNamespace(path=str(path))
        getattr(module, name)(parent)
        setattr(slicer.modules, name.lower(), parent)
        panel = slicer.qMRMLWidget()
        panel.setLayout(qt.QVBoxLayout())
        panel.setMRMLScene(slicer.mrmlScene)
        panel.isEntered = False
        widget = getattr(module, f"{name}Widget")(panel)
        widget.setup()
        self.modules[name] = (module, widget)
        parent.widgetRepresentation = lambda: panel
        return module, widget

    def enter(self, widget: Any) -> None:
        """The user opens the module (Slicer calls ``enter`` with ``isEntered`` set)."""
        widget.parent.isEntered = True
        widget.enter()

    def exit(self, widget: Any) -> None:
        """The user switches to another module."""
        widget.exit()
        widget.parent.isEntered = False

    # -- user and event loop -----------------------------------------------------------------------

    def click(self, button: Any) -> None:
        """A user's click: refused (AssertionError) on a disabled button, as the GUI would."""
        assert button.enabled, f"{button.objectName()} is disabled"
        button.click()

    def choose(self, combo: Any, text: str) -> None:
        """A user's pick in a combo box: ``currentIndex`` changes, then ``activated(int)`` (user only)."""
        index = combo.findText(text)
        assert index >= 0, f"{text!r} is not in {combo.objectName()}"
        assert combo.enabled, f"{combo.objectName()} is disabled"
        combo.currentIndex = index
        combo.activated.emit(index)

    def process_events(self, seconds: float = 0.0) -> None:
        """Run the event loop (timers fire) for about ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            self.qapp.processEvents()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.02)

    def wait_until(
        self, predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition"
    ) -> Any:
        """Run the event loop until ``predicate()`` is true (returned); fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.qapp.processEvents()
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def reset_records(self) -> None:
        from . import pythonqt

        self.dialogs.clear()
        pythonqt.SLOT_ERRORS.clear()
        pythonqt.CALLS.clear()

    @property
    def slot_errors(self) -> list:
        from . import pythonqt

        return pythonqt.SLOT_ERRORS

    @property
    def slot_times(self) -> dict[str, float]:
        """Slot (qualified name) -> its longest call in seconds, since the harness started."""
        from . import pythonqt

        return pythonqt.SLOT_TIMES

    @property
    def calls(self) -> list:
        from . import pythonqt

        return pythonqt.CALLS

    def new_session(self) -> None:
        """A fresh application: new scene, no modules loaded, nothing recorded."""
        for _module, widget in self.modules.values():
            widget.cleanup()
        self.modules.clear()
        from . import segment_editor

        self.startup_slots.clear()
        segment_editor.reset()
        self._make_scene()
        self.reset_records()
        self.answer = True


def install() -> Harness:
    """Make ``import qt``, ``import ctk`` and ``slicer.*`` behave as inside Slicer (idempotent)."""
    global _HARNESS
    if _HARNESS is not None:
        return _HARNESS
    import slicer
    import slicer.util

    from . import parameter_nodes, pythonqt, scripted, segment_editor, widgets

    sys.modules["qt"] = pythonqt
    segment_editor.install()
    ctk = types.ModuleType("ctk")
    ctk.ctkCollapsibleButton, ctk.ctkPathLineEdit = widgets.ctkCollapsibleButton, widgets.ctkPathLineEdit
    sys.modules["ctk"] = ctk
    slicer.qMRMLWidget = widgets.qMRMLWidget
    slicer.qMRMLNodeComboBox = widgets.qMRMLNodeComboBox
    slicer.qMRMLCheckableNodeComboBox = widgets.qMRMLCheckableNodeComboBox
    for name, module in (
        ("parameterNodeWrapper", parameter_nodes),
        ("ScriptedLoadableModule", scripted),
        ("i18n", scripted),
    ):
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)

    harness = Harness()

    def message_box(text: str, parent: Any = None, **kwargs: Any) -> Any:
        """A modal dialog: recorded, answered with ``harness.answer`` (OK/Yes or Cancel/No)."""
        import qt

        harness.dialogs.append(text)
        buttons = kwargs.get("standardButtons")
        if harness.answer:
            return (
                qt.QMessageBox.Yes
                if buttons is not None and buttons & qt.QMessageBox.Yes
                else qt.QMessageBox.Ok
            )
        return (
            qt.QMessageBox.No
            if buttons is not None and buttons & qt.QMessageBox.No
            else qt.QMessageBox.Cancel
        )

    slicer.util.messageBox = message_box
    slicer.util.mainWindow = lambda: harness.qapp
    _HARNESS = harness
    harness.new_session()
    return harness
