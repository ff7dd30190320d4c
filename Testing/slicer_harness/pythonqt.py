"""The ``qt`` module the panels import, as PythonQt (Slicer's Qt binding) shows it, over PySide6.

What differs from PySide6 and matters to the panels:

* Qt properties are Python attributes (``button.text = "Cancel"``, ``combo.currentData``); a
  property hides the method of the same name, as in PythonQt (``label.text`` is a str, not callable).
  Writing a read-only property raises ``AttributeError``.
* ``obj.connect("clicked(bool)", slot)`` / ``obj.disconnect(...)``: a slot is called with as many of
  the signal's arguments as it accepts. An exception in a slot is printed and the event loop goes
  on (as in PythonQt); the harness records it (:data:`SLOT_ERRORS`) with each slot's duration
  (:data:`SLOT_TIMES`), so tests see errors that Slicer would only print to its console.
* ``QObject.name`` is the object name (``slicer.util.childWidgetVariables`` relies on it).
* ``QFileDialog``, ``QDesktopServices`` and ``QMessageBox.exec`` never open a window: they record
  the call and answer from :data:`ANSWERS` (what the user would pick).
"""

from __future__ import annotations

import inspect
import time
import traceback
from typing import Any

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

#: (slot qualified name, exception) of every exception raised inside a slot since the last reset.
SLOT_ERRORS: list[tuple[str, BaseException]] = []
#: slot qualified name -> longest call in seconds.
SLOT_TIMES: dict[str, float] = {}
#: Recorded user-facing calls: ("openUrl", url), ("getExistingDirectory", title), ...
CALLS: list[tuple[str, Any]] = []
#: What dialogs answer: "getExistingDirectory", "getOpenFileName" -> path ("" = cancelled).
ANSWERS: dict[str, Any] = {}

_TYPE_NAMES = {"bool": bool, "int": int, "double": float, "float": float, "QString": str}


def _slot_name(slot: Any) -> str:
    return getattr(slot, "__qualname__", None) or repr(slot)


def _positional_capacity(slot: Any) -> int | None:
    """How many positional arguments ``slot`` takes (None: any number)."""
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def guarded(slot: Any, name: str | None = None) -> Any:
    """``slot`` called the PythonQt way: extra signal arguments dropped, exceptions printed and recorded."""
    capacity, label = _positional_capacity(slot), name or _slot_name(slot)

    def call(*args: Any) -> None:
        started = time.perf_counter()
        try:
            slot(*(args if capacity is None else args[:capacity]))
        except Exception as exc:  # PythonQt prints it and returns to the event loop
            traceback.print_exc()
            SLOT_ERRORS.append((label, exc))
        finally:
            elapsed = time.perf_counter() - started
            SLOT_TIMES[label] = max(SLOT_TIMES.get(label, 0.0), elapsed)

    return call


def _split_signature(signature: str) -> tuple[str, tuple[type, ...]]:
    name, _, rest = signature.partition("(")
    args = [a.strip().rstrip("*&").replace("const ", "") for a in rest.rstrip(")").split(",") if a.strip()]
    return name.strip(), tuple(_TYPE_NAMES.get(a, object) for a in args)


class PythonQtObject:
    """Mixin: PythonQt's ``connect``/``disconnect`` with signature strings, and ``name``."""

    def _signal(self, signature: str) -> Any:
        name, types = _split_signature(signature)
        signal = getattr(self, name)
        if types:
            try:
                return signal[types if len(types) > 1 else types[0]]
            except (KeyError, IndexError, TypeError):
                return signal
        return signal

    def connect(self, signature: str, slot: Any) -> bool:
        wrapped = guarded(slot, f"{self.objectName() or type(self).__name__}.{signature}: {_slot_name(slot)}")
        self.__dict__.setdefault("_pythonqt_slots", []).append((signature, slot, wrapped))
        self._signal(signature).connect(wrapped)
        return True

    def disconnect(self, signature: str, slot: Any = None) -> bool:
        kept = []
        for entry in self.__dict__.get("_pythonqt_slots", []):
            if entry[0] == signature and (slot is None or entry[1] == slot):
                self._signal(signature).disconnect(entry[2])
            else:
                kept.append(entry)
        self.__dict__["_pythonqt_slots"] = kept
        return True

    @property
    def name(self) -> str:
        return self.objectName()

    @name.setter
    def name(self, value: str) -> None:
        self.setObjectName(value)


def _property(prop: QtCore.QMetaProperty) -> property:
    name, writable = prop.name(), prop.isWritable()

    def get(self: QtCore.QObject) -> Any:
        return QtCore.QObject.property(self, name)

    def set_(self: QtCore.QObject, value: Any) -> None:
        if not writable:
            raise AttributeError(f"property {name} of {type(self).__name__} is read-only")
        if hasattr(value, "__fspath__"):
            value = str(value)
        QtCore.QObject.setProperty(self, name, value)

    return property(get, set_)


def pythonqt_class(base: type, name: str | None = None, extra: dict | None = None) -> type:
    """``base`` (a PySide6 QObject class) with its Qt properties as attributes and PythonQt's connect."""
    attrs: dict[str, Any] = {"__module__": __name__}
    meta = base.staticMetaObject
    for index in range(meta.propertyCount()):
        prop = meta.property(index)
        declared = any(isinstance(k.__dict__.get(prop.name()), QtCore.Property) for k in base.__mro__)
        if prop.name() != "objectName" and not declared:
            attrs[prop.name()] = _property(prop)
    # In the class itself: shiboken resolves ``connect`` on the Qt class before a mixin's.
    attrs.update(
        {k: v for k, v in vars(PythonQtObject).items() if k in ("connect", "disconnect", "_signal", "name")}
    )
    attrs.update(extra or {})
    return type(name or base.__name__, (PythonQtObject, base), attrs)


# -- the classes the panels and slicer.util use ------------------------------------------------------

_WIDGETS = (
    "QWidget QLabel QPushButton QToolButton QCheckBox QComboBox QLineEdit QSpinBox QDoubleSpinBox "
    "QProgressBar QTableWidget QPlainTextEdit QTextEdit QGroupBox QFrame QRadioButton QSlider "
    "QScrollArea QTabWidget QMainWindow QDialog QMessageBox"
).split()
_LAYOUTS = "QVBoxLayout QHBoxLayout QFormLayout QGridLayout".split()

for _name in _WIDGETS:
    globals()[_name] = pythonqt_class(getattr(QtWidgets, _name))
for _name in _LAYOUTS:
    globals()[_name] = getattr(QtWidgets, _name)

QObject = pythonqt_class(QtCore.QObject)
QTimer = pythonqt_class(QtCore.QTimer)
QAction = pythonqt_class(QtGui.QAction)
QMenu = pythonqt_class(QtWidgets.QMenu)

Qt = QtCore.Qt
QFile = QtCore.QFile
QUrl = QtCore.QUrl
QSettings = QtCore.QSettings
QSize = QtCore.QSize
QPixmap = QtGui.QPixmap
QIcon = QtGui.QIcon
QColor = QtGui.QColor
QCursor = QtGui.QCursor
QTableWidgetItem = QtWidgets.QTableWidgetItem
QApplication = QtWidgets.QApplication
QSizePolicy = QtWidgets.QSizePolicy
QHeaderView = QtWidgets.QHeaderView
QAbstractItemView = QtWidgets.QAbstractItemView


class QFileDialog:
    """Records the question and answers from ``ANSWERS`` (PythonQt returns the path, not a tuple)."""

    @staticmethod
    def getExistingDirectory(parent: Any = None, caption: str = "", *args: Any) -> str:
        CALLS.append(("getExistingDirectory", caption))
        return str(ANSWERS.get("getExistingDirectory", ""))

    @staticmethod
    def getOpenFileName(parent: Any = None, caption: str = "", *args: Any) -> str:
        CALLS.append(("getOpenFileName", caption))
        return str(ANSWERS.get("getOpenFileName", ""))


class QDesktopServices:
    """Records the URL the panel asks the desktop to open."""

    @staticmethod
    def openUrl(url: QtCore.QUrl) -> bool:
        CALLS.append(("openUrl", url.toLocalFile() or url.toString()))
        return True


# -- .ui loading with Slicer/CTK stand-ins ------------------------------------------------------

#: class name in a .ui file -> the class to create (filled by ``slicer_harness.widgets``).
CUSTOM_WIDGETS: dict[str, type] = {}


class QUiLoader(QtUiTools.QUiLoader):
    """Creates PythonQt-style widgets, and the registered stand-ins for Slicer's and CTK's classes."""

    def createWidget(self, className: str, parent: Any = None, name: str = "") -> Any:  # noqa: N802
        cls = CUSTOM_WIDGETS.get(className) or globals().get(className)
        if isinstance(cls, type) and issubclass(cls, QtWidgets.QWidget):
            widget = cls(parent)
            widget.setObjectName(name)
            return widget
        return super().createWidget(className, parent, name)
