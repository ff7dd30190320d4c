"""Stand-ins for the CTK and Slicer widget classes the panels' ``.ui`` files use.

Each keeps the properties, signals and methods the panels and the parameter node wrapper use, with
the behaviour of the real class where it matters to a user: a node combo box lists the scene's nodes
of its ``nodeTypes``, follows node additions and removals, and selects the first node when ``None``
is not allowed (``qMRMLNodeComboBox``); a path line edit emits ``currentPathChanged``.
"""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore, QtWidgets

from . import pythonqt


class _MRMLWidget(QtWidgets.QWidget):
    """qMRMLWidget: ``setMRMLScene`` passes the scene on to the MRML widgets inside (what the .ui's
    ``mrmlSceneChanged(vtkMRMLScene*)`` connections do in Slicer)."""

    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene: Any) -> None:  # noqa: N802 - Slicer's name
        self._scene = scene
        for child in self.findChildren(QtWidgets.QWidget):
            if hasattr(child, "setMRMLScene") and not isinstance(child, _MRMLWidget):
                child.setMRMLScene(scene)
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self) -> Any:  # noqa: N802
        return self._scene


class _NodeComboBox(QtWidgets.QComboBox):
    """qMRMLNodeComboBox over a QComboBox: items are the scene's nodes of ``nodeTypes`` (by ID)."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._scene, self._observers, self._nodeTypes = None, [], []
        self._noneEnabled = False
        self.currentIndexChanged.connect(lambda _index: self.currentNodeChanged.emit(self.currentNode()))

    def _get_node_types(self) -> list:
        return list(self._nodeTypes)

    def _set_node_types(self, value: Any) -> None:
        self._nodeTypes = [value] if isinstance(value, str) else list(value or [])
        self._refill()

    def _get_none(self) -> bool:
        return self._noneEnabled

    def _set_none(self, value: bool) -> None:
        self._noneEnabled = bool(value)
        self._refill()

    nodeTypes = QtCore.Property("QStringList", _get_node_types, _set_node_types)
    noneEnabled = QtCore.Property(bool, _get_none, _set_none)
    addEnabled = QtCore.Property(bool, lambda self: False, lambda self, value: None)
    removeEnabled = QtCore.Property(bool, lambda self: False, lambda self, value: None)
    renameEnabled = QtCore.Property(bool, lambda self: False, lambda self, value: None)

    def setMRMLScene(self, scene: Any) -> None:  # noqa: N802
        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._scene, self._observers = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent):
                self._observers.append(scene.AddObserver(event, lambda *_args: self._refill()))
        self._refill()

    def mrmlScene(self) -> Any:  # noqa: N802
        return self._scene

    def _matching_nodes(self) -> list:
        if self._scene is None:
            return []
        nodes = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            if any(node.IsA(cls) for cls in self._nodeTypes) and not node.GetHideFromEditors():
                nodes.append(node)
        return nodes

    def _refill(self) -> None:
        """Relist the nodes; keep the current node if still there, else the first (None not allowed)."""
        previous = QtWidgets.QComboBox.currentData(self)
        nodes = self._matching_nodes()
        ids = ([None] if self._noneEnabled else []) + [node.GetID() for node in nodes]
        blocked = self.blockSignals(True)
        self.clear()
        for node_id in ids:
            node = self._scene.GetNodeByID(node_id) if node_id else None
            self.addItem(node.GetName() if node else "None", node_id)
        index = self.findData(previous) if previous in ids else 0 if ids else -1
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        if QtWidgets.QComboBox.currentData(self) != previous:
            self.currentNodeChanged.emit(self.currentNode())

    def currentNode(self) -> Any:  # noqa: N802
        node_id = QtWidgets.QComboBox.currentData(self)
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def currentNodeID(self) -> str:  # noqa: N802
        return QtWidgets.QComboBox.currentData(self) or ""

    def setCurrentNode(self, node: Any) -> None:  # noqa: N802
        self.setCurrentNodeID(node.GetID() if node is not None else None)

    def setCurrentNodeID(self, node_id: str | None) -> None:  # noqa: N802
        index = self.findData(node_id) if node_id else (0 if self._noneEnabled else -1)
        self.setCurrentIndex(index)

    def nodes(self) -> list:
        return self._matching_nodes()


class _CheckableNodeComboBox(_NodeComboBox):
    """qMRMLCheckableNodeComboBox: the nodes the user ticked (``setCheckState`` models the tick)."""

    checkedNodesChanged = QtCore.Signal()

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._checked: list[str] = []

    def setCheckState(self, node: Any, state: Any) -> None:  # noqa: N802
        node_id = node.GetID()
        if state == QtCore.Qt.Checked and node_id not in self._checked:
            self._checked.append(node_id)
        elif state != QtCore.Qt.Checked and node_id in self._checked:
            self._checked.remove(node_id)
        self.checkedNodesChanged.emit()

    def checkedNodes(self) -> list:  # noqa: N802
        nodes = [self._scene.GetNodeByID(node_id) for node_id in self._checked] if self._scene else []
        return [node for node in nodes if node is not None]


class _CollapsibleButton(QtWidgets.QPushButton):
    """ctkCollapsibleButton: a titled section that holds widgets; ``collapsed`` hides nothing here."""

    contentsCollapsed = QtCore.Signal(bool)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def _set_collapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        self.contentsCollapsed.emit(self._collapsed)

    collapsed = QtCore.Property(bool, lambda self: self._collapsed, _set_collapsed)


class _PathLineEdit(QtWidgets.QWidget):
    """ctkPathLineEdit: a path typed or browsed; ``currentPath`` and ``currentPathChanged(QString)``."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._line = QtWidgets.QLineEdit(self)
        self._line.textChanged.connect(self.currentPathChanged.emit)

    def _set_path(self, value: Any) -> None:
        self._line.setText(str(value))

    currentPath = QtCore.Property(str, lambda self: self._line.text(), _set_path)
    filters = QtCore.Property(int, lambda self: 0, lambda self, value: None)

    def setCurrentPath(self, value: Any) -> None:  # noqa: N802
        self._set_path(value)


qMRMLWidget = pythonqt.pythonqt_class(_MRMLWidget, "qMRMLWidget")
qMRMLNodeComboBox = pythonqt.pythonqt_class(_NodeComboBox, "qMRMLNodeComboBox")
qMRMLCheckableNodeComboBox = pythonqt.pythonqt_class(_CheckableNodeComboBox, "qMRMLCheckableNodeComboBox")
ctkCollapsibleButton = pythonqt.pythonqt_class(_CollapsibleButton, "ctkCollapsibleButton")
ctkPathLineEdit = pythonqt.pythonqt_class(_PathLineEdit, "ctkPathLineEdit")

pythonqt.CUSTOM_WIDGETS.update(
    {
        cls.__name__: cls
        for cls in (
            qMRMLWidget,
            qMRMLNodeComboBox,
            qMRMLCheckableNodeComboBox,
            ctkCollapsibleButton,
            ctkPathLineEdit,
        )
    }
)
