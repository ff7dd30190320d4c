"""The subset of ``slicer.parameterNodeWrapper`` the panels use, over a real ``vtkMRMLScriptedModuleNode``.

Typed fields (``str``, ``int``, ``float``, ``bool``, ``pathlib.Path``, MRML node classes), the
``Choice`` and ``WithinRange`` annotations (checked on write, applied to the widget), defaults, and
``connectGui``/``disconnectGui`` for the widget kinds of the panels' ``.ui`` files found by their
``SlicerParameterName`` property. Values are stored as the real wrapper stores them: parameters
(strings) of the node, nodes as node references, so that they survive a scene save and a module
reload; the widget <-> node sync follows Slicer's (widget edits write the node; any node change
rewrites every connected widget).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import vtk
from PySide6 import QtWidgets

PARAMETER_NAME_PROPERTY = "SlicerParameterName"


class Choice:
    def __init__(self, choices: list) -> None:
        self.choices = list(choices)

    def validate(self, value: Any) -> None:
        if value not in self.choices:
            raise ValueError(f"The value '{value}' is not in the list of choices {self.choices}")


class WithinRange:
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value: Any) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"The value {value} is not within [{self.minimum}, {self.maximum}]")


def _is_node_type(cls: Any) -> bool:
    return isinstance(cls, type) and hasattr(cls, "GetClassName") and cls.__name__.startswith("vtkMRML")


class _Field:
    def __init__(self, name: str, hint: Any, owner: type) -> None:
        self.name, self.type, self.annotations = name, hint, []
        if typing.get_origin(hint) is typing.Annotated:
            self.type, *self.annotations = typing.get_args(hint)
        defaults = {str: "", int: 0, float: 0.0, bool: False, Path: Path()}
        self.default = getattr(owner, name) if name in owner.__dict__ else defaults.get(self.type)

    def validate(self, value: Any) -> None:
        for annotation in self.annotations:
            annotation.validate(value)

    def write(self, node: Any, value: Any) -> None:
        if _is_node_type(self.type):
            if value is not None and not value.IsA(self.type.__name__):
                raise ValueError(f"{self.name} must be a {self.type.__name__}, not {value.GetClassName()}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if self.type is bool:
            value = bool(value)
        elif self.type in (int, float):
            value = self.type(value)
        elif self.type is Path:
            value = Path(value)
        elif self.type is str and not isinstance(value, str):
            raise TypeError(f"{self.name} must be a str, not {type(value).__name__}")
        self.validate(value)
        node.SetParameter(self.name, str(value))

    def read(self, node: Any) -> Any:
        if _is_node_type(self.type):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.type is bool:
            return text == "True"
        return self.type(text) if self.type in (int, float, Path) else text


# -- widgets <-> values ------------------------------------------------------------------------------


class _Connector:
    """How one widget kind shows a value: ``read``, ``write`` and the signal that says it changed."""

    def __init__(self, widget: Any, field: _Field) -> None:
        self.widget, self.field = widget, field
        w = widget
        choice = next((a for a in field.annotations if isinstance(a, Choice)), None)
        within = next((a for a in field.annotations if isinstance(a, WithinRange)), None)
        if hasattr(w, "setCurrentNode"):
            w.nodeTypes = [field.type.__name__]
            self.read, self.signal = w.currentNode, w.currentNodeChanged
            self.write = w.setCurrentNode
        elif hasattr(w, "currentPathChanged"):
            self.read, self.signal = (lambda: Path(w.currentPath)), w.currentPathChanged
            self.write = lambda value: setattr(w, "currentPath", str(value))
        elif isinstance(w, QtWidgets.QCheckBox):
            self.read, self.signal = (lambda: w.checked), w.toggled
            self.write = lambda value: setattr(w, "checked", bool(value))
        elif isinstance(w, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)):
            if within is not None:
                w.setRange(within.minimum, within.maximum)
            self.read, self.signal = (lambda: w.value), w.valueChanged
            self.write = lambda value: setattr(w, "value", value)
        elif isinstance(w, QtWidgets.QComboBox) and choice is not None:
            w.clear()  # Slicer's connector lists the choices itself
            for value in choice.choices:
                w.addItem(str(value))
            self.read, self.signal = (lambda: choice.choices[w.currentIndex]), w.currentIndexChanged
            self.write = lambda value: setattr(w, "currentIndex", choice.choices.index(value))
        elif isinstance(w, QtWidgets.QLineEdit):
            self.read, self.signal = (lambda: w.text), w.textChanged
            self.write = lambda value: setattr(w, "text", str(value))
        else:
            raise RuntimeError(f"No GUI connector for {type(w).__name__} and {field.name}")


def _connect_gui(self: Any, gui: Any) -> int:
    widgets = (
        gui.findChildren(QtWidgets.QWidget) if isinstance(gui, QtWidgets.QWidget) else gui.__dict__.values()
    )
    connectors = []
    for widget in widgets:
        name = widget.property(PARAMETER_NAME_PROPERTY) if isinstance(widget, QtWidgets.QWidget) else None
        if name:
            connectors.append(_Connector(widget, self.allParameters[name]))
    tag = self._nextGuiTag = getattr(self, "_nextGuiTag", 0) + 1
    for connector in connectors:
        connector.write(getattr(self, connector.field.name))

        def changed(*_args: Any, c: _Connector = connector) -> None:
            if not self._updatingGui:
                setattr(self, c.field.name, c.read())

        connector.slot = changed
        connector.signal.connect(changed)
    observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_a: self._updateGui())
    self._guis[tag] = (connectors, observer)
    return tag


def _update_gui(self: Any) -> None:
    if self._updatingGui:
        return
    self._updatingGui = True
    try:
        for connectors, _observer in self._guis.values():
            for connector in connectors:
                connector.write(getattr(self, connector.field.name))
    finally:
        self._updatingGui = False


def _disconnect_gui(self: Any, tag: int) -> None:
    if tag in self._guis:
        connectors, observer = self._guis.pop(tag)
        for connector in connectors:
            connector.signal.disconnect(connector.slot)
        self.parameterNode.RemoveObserver(observer)


def _init(self: Any, parameterNode: Any) -> None:
    self.parameterNode, self._guis, self._updatingGui = parameterNode, {}, False
    for field in self.allParameters.values():
        present = parameterNode.GetNodeReferenceID(field.name) if _is_node_type(field.type) else None
        if not present and not parameterNode.GetParameter(field.name) and field.default is not None:
            field.write(parameterNode, field.default)


def parameterNodeWrapper(cls: type) -> type:  # noqa: N802 - Slicer's name
    """Class decorator: typed, validated attributes stored in the wrapped scripted module node."""
    fields = {
        name: _Field(name, hint, cls)
        for name, hint in typing.get_type_hints(cls, include_extras=True).items()
    }
    for field in fields.values():
        setattr(
            cls,
            field.name,
            property(
                lambda self, f=field: f.read(self.parameterNode),
                lambda self, value, f=field: f.write(self.parameterNode, value),
            ),
        )
    cls.allParameters = fields
    cls.__init__ = _init
    cls.connectGui, cls.disconnectGui, cls._updateGui = _connect_gui, _disconnect_gui, _update_gui
    cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
        event, callback, priority
    )
    cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
    cls.StartModify = lambda self: self.parameterNode.StartModify()
    cls.EndModify = lambda self, was: self.parameterNode.EndModify(was)
    cls.Modified = lambda self: self.parameterNode.Modified()
    return cls
