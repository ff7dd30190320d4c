#!/usr/bin/env python3
"""Render the README pictures of the MedSegNAS and SSLPretrain panels, offscreen, with Qt.

Writes, into ``--out-dir`` (default ``Resources/Screenshots``):

* ``MedSegNAS-panel.png``: the MedSegNAS module panel with every section expanded (Segment,
  Models, Search and train, Runs, Evaluate, Phantom data), in two columns when one would be too
  tall for the README.
* ``SSLPretrain-panel.png``: the SSLPretrain module panel, likewise.

The panels are the modules' own ``Resources/UI/*.ui`` files, loaded with Qt.py over PySide6 on
the offscreen platform (no display, no Slicer). Slicer's and CTK's widget classes, which only exist
inside Slicer, are replaced by Qt stand-ins that look like them: a collapsible button by a header
button with an arrow over a framed contents area, a path line edit by a line edit with a browse
button, a node combo box by a combo box showing a node name. Slicer's light palette and the Fusion
style give the panels Slicer's look.

The widgets show a session: the parameter nodes' defaults (read from the module files), then what a
user sees after running the demo. With ``--runs-dir`` the runs table, run details, model list and
progress line come from real run folders (a ``medsegnas demo`` output's ``runs`` folder), with the
same functions the panels use (``MedSegNASLib.jobs.list_runs``, ``panel_runs``, ``panel_jobs``);
without it, from an example. The SSLPretrain environment report is this machine's
(``sslpretrain info``; ``--no-environment-check`` skips it, which saves importing PyTorch).

Examples::

    python tools/render_panels.py --runs-dir /tmp/demo/runs      # after `medsegnas demo --out /tmp/demo`
    python tools/render_panels.py --out-dir /tmp/pictures --columns 1
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULE_NAMES: tuple[str, ...] = ("MedSegNAS", "SSLPretrain")
for _module in MODULE_NAMES:  # run from a checkout without `pip install -e .` too
    sys.path.insert(0, str(ROOT / _module))

from MedSegNASLib.atomic import write_atomic  # noqa: E402
from MedSegNASLib.errors import MedSegNASError  # noqa: E402

#: Width of Slicer's module panel, in pixels.
PANEL_WIDTH = 420
#: A panel taller than this is drawn in two columns (``--columns auto``).
MAX_ONE_COLUMN_HEIGHT = 1000
#: Pixels around and between the sections of a composed picture.
MARGIN, GAP = 6, 12

#: Slicer's light palette (qSlicerStyle::standardLightPalette): role -> color, or
#: (color group, role) -> color for the disabled state.
SLICER_LIGHT_PALETTE: dict[Any, str] = {
    "Window": "#ffffff",
    "WindowText": "#000000",
    "Base": "#ffffff",
    "AlternateBase": "#e4e4fe",
    "ToolTipBase": "#ffffdc",
    "ToolTipText": "#000000",
    "Text": "#000000",
    "Button": "#fcfcfc",
    "ButtonText": "#000000",
    "BrightText": "#ff0000",
    "Light": "#c8c8c8",
    "Midlight": "#e6e6e6",
    "Dark": "#aaaaaa",
    "Mid": "#c8c8c8",
    "Shadow": "#5a5a5a",
    "Highlight": "#308cc6",
    "HighlightedText": "#ffffff",
    "Link": "#0000ff",
    ("Disabled", "WindowText"): "#bebebe",
    ("Disabled", "Text"): "#bebebe",
    ("Disabled", "ButtonText"): "#bebebe",
    ("Disabled", "Highlight"): "#919191",
}

#: Example values used where no run folder gives real ones.
EXAMPLE_CASE = "phantom_006"
EXAMPLE_MODEL_ID = "medsegnas-dints"
EXAMPLE_SEARCH_EVENT: dict[str, Any] = {
    "stage": "search",
    "epoch": 4,
    "step": 96,
    "total": 240,
    "metrics": {"loss": 0.612, "arch_loss": 0.701, "val_dice": 0.483},
    "eta_s": 180.0,
}
EXAMPLE_PRETRAIN_EVENT: dict[str, Any] = {
    "stage": "pretrain",
    "step": 80,
    "total": 200,
    "metrics": {"rotation": 1.21, "contrastive": 0.87, "reconstruction": 0.164, "loss": 2.24},
    "eta_s": 150.0,
}
ORGANS: tuple[str, ...] = ("liver", "spleen", "right kidney", "left kidney")


# --------------------------------------------------------------------------------------------
# The .ui file with Qt stand-ins for Slicer's widget classes


def custom_widget_bases(root: ET.Element) -> dict[str, str]:
    """Slicer/CTK class -> the Qt class it finally extends (``<customwidget><extends>`` chains)."""
    extends = {custom.findtext("class"): custom.findtext("extends") for custom in root.iter("customwidget")}

    def resolve(name: str) -> str:
        seen: set[str] = set()
        while name in extends and name not in seen:
            seen.add(name)
            name = extends[name]
        return name

    return {name: resolve(name) for name in extends}


def _property(tag: str, name: str, value: str) -> ET.Element:
    prop = ET.Element("property", name=name)
    ET.SubElement(prop, tag).text = value
    return prop


def _flat_layout(kind: str, name: str, spacing: int) -> ET.Element:
    layout = ET.Element("layout", {"class": kind, "name": name})
    layout.append(_property("number", "spacing", str(spacing)))
    for side in ("left", "top", "right", "bottom"):
        layout.append(_property("number", f"{side}Margin", "0"))
    return layout


def _child_widget(layout: ET.Element, cls: str, name: str) -> ET.Element:
    item = ET.SubElement(layout, "item")
    return ET.SubElement(item, "widget", {"class": cls, "name": name})


def _keep_qwidget_properties(widget: ET.Element) -> None:
    """Drop the Slicer class's own properties; keep the tooltip and the dynamic ones (stdset="0")."""
    for prop in widget.findall("property"):
        if prop.get("stdset") != "0" and prop.get("name") not in ("toolTip", "enabled"):
            widget.remove(prop)


def _collapsible_stand_in(widget: ET.Element) -> str:
    """ctkCollapsibleButton -> a QWidget holding a header button over a framed contents area;
    the button's layout moves into the frame. Returns the section title."""
    name, title = widget.get("name"), ""
    for prop in widget.findall("property"):
        if prop.get("name") == "text":
            title = prop.findtext("string") or ""
    contents_layout = widget.find("layout")
    _keep_qwidget_properties(widget)
    widget.set("class", "QWidget")
    outer = _flat_layout("QVBoxLayout", f"{name}StandInLayout", 0)
    _child_widget(outer, "QToolButton", f"{name}Header")
    frame = _child_widget(outer, "QFrame", f"{name}Contents")
    if contents_layout is not None:
        widget.remove(contents_layout)
        frame.append(contents_layout)
    widget.append(outer)
    return title


def _path_line_edit_stand_in(widget: ET.Element) -> None:
    """ctkPathLineEdit -> a QWidget holding a line edit and a browse button."""
    name = widget.get("name")
    _keep_qwidget_properties(widget)
    widget.set("class", "QWidget")
    row = _flat_layout("QHBoxLayout", f"{name}StandInLayout", 2)
    _child_widget(row, "QLineEdit", f"{name}Edit")
    _child_widget(row, "QToolButton", f"{name}Browse")
    widget.append(row)


def ui_with_stand_ins(ui_path: Path, qt_widgets: Any) -> tuple[bytes, list[tuple[str, str]]]:
    """The .ui file's XML with every Slicer/CTK widget replaced by a Qt stand-in, and the
    ``(widget name, title)`` of its collapsible sections in panel order."""
    root = ET.parse(ui_path).getroot()
    bases = custom_widget_bases(root)
    sections = []
    for widget in list(root.iter("widget")):
        custom = widget.get("class")
        if custom == "ctkCollapsibleButton":
            sections.append((widget.get("name"), _collapsible_stand_in(widget)))
        elif custom == "ctkPathLineEdit":
            _path_line_edit_stand_in(widget)
        elif custom in bases:
            base = "QComboBox" if custom.startswith("qMRML") and "ComboBox" in custom else bases[custom]
            widget.set("class", base)
            meta = getattr(qt_widgets, base).staticMetaObject
            for prop in widget.findall("property"):  # e.g. nodeTypes, which a QComboBox lacks
                if prop.get("stdset") != "0" and meta.indexOfProperty(prop.get("name")) < 0:
                    widget.remove(prop)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in ("customwidgets", "connections"):
                parent.remove(child)
    return ET.tostring(root), sections


# --------------------------------------------------------------------------------------------
# Parameter node defaults, read from the module file (the panel starts from them)


@dataclass
class Parameter:
    """One field of a module's parameterNodeWrapper class."""

    default: Any = None
    choices: list[str] | None = None
    value_range: tuple[float, float] | None = None


def _default_value(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    # Path.home() / "MedSegNAS" / "runs" -> "~/MedSegNAS/runs"
    parts: list[str] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts.insert(0, ast.literal_eval(node.right))
        node = node.left
    if isinstance(node, ast.Call) and ast.unparse(node) == "Path.home()":
        return "/".join(["~", *parts])
    return None


def parameter_fields(module: str) -> dict[str, Parameter]:
    """Field name -> default, choices and range of ``<module>ParameterNode`` in ``<module>.py``."""
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    wrapper = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == f"{module}ParameterNode"
    )
    fields = {}
    for item in wrapper.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        parameter = Parameter(default=_default_value(item.value))
        for call in ast.walk(item.annotation):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
                if call.func.id == "Choice":
                    parameter.choices = [str(choice) for choice in ast.literal_eval(call.args[0])]
                elif call.func.id == "WithinRange":
                    low, high = (ast.literal_eval(arg) for arg in call.args[:2])
                    parameter.value_range = (low, high)
        fields[item.target.id] = parameter
    return fields


# --------------------------------------------------------------------------------------------
# What the widgets show


@dataclass
class TableContent:
    rows: list[list[str]]
    selected: int | None = None
    checkable: bool = False


@dataclass
class PanelSession:
    """Values to show, by widget name; applied over the parameter defaults."""

    texts: dict[str, str] = field(default_factory=dict)  # labels, line edits, path edits, buttons
    values: dict[str, float | bool] = field(default_factory=dict)  # spin boxes, check boxes
    combo_items: dict[str, list[str]] = field(default_factory=dict)  # first item is current
    combo_current: dict[str, str] = field(default_factory=dict)
    progress: dict[str, int] = field(default_factory=dict)
    tables: dict[str, TableContent] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    pictures: dict[str, Path] = field(default_factory=dict)  # label -> PNG shown in it
    plain_texts: dict[str, str] = field(default_factory=dict)
    source: str = "example values"


def _progress_events(run_path: Path) -> list[dict[str, Any]]:
    from MedSegNASLib.jobs import RunDir

    events, _offset = RunDir(run_path).read_events()
    return [event for event in events if event.get("type") == "progress" and event.get("total")]


def _event_near(events: Sequence[dict[str, Any]], fraction: float, stage: str) -> dict[str, Any] | None:
    """The progress event closest to ``fraction`` of the run, of ``stage`` and with an ETA when
    the run has such events."""
    staged = [event for event in events if event.get("stage") == stage] or list(events)
    staged = [event for event in staged if event.get("eta_s")] or staged
    if not staged:
        return None
    return min(staged, key=lambda event: abs(event["step"] / event["total"] - fraction))


def _percent(event: dict[str, Any]) -> int:
    return int(round(100 * event["step"] / event["total"]))


def _model_records(runs: list[dict[str, Any]], registry: Path | None, scratch: Path) -> list[Any]:
    """The registry's models; else the newest exported model of the runs, registered in a scratch
    registry (as the panel's *Use this model* would); else an example record."""
    from MedSegNASLib.models.registry import ModelRecord, ModelRegistry
    from MedSegNASLib.panels import panel_runs

    if registry is not None:
        return ModelRegistry(registry).list()
    for run in runs:
        if run["state"] == "done" and panel_runs.run_details(run["path"]).model is not None:
            return [panel_runs.use_run_model(run["path"], home=scratch)]
    labels = [{"value": value, "name": name} for value, name in enumerate(ORGANS, start=1)]
    example = ModelRecord(
        id=EXAMPLE_MODEL_ID,
        name=EXAMPLE_MODEL_ID,
        version="0.1.0",
        source="train run (example)",
        sha256="",
        sha256_of="folder",
        trusted=False,
        imported="",
        labels=labels,
        modality="CT",
    )
    return [example]


def _dataset_cases(dataset: Path | None) -> tuple[str, str, dict[str, Any] | None]:
    """(test case name, a labelled case name, describe_dataset summary) of the demo dataset."""
    if dataset is None:
        return EXAMPLE_CASE, "phantom_000", None
    from MedSegNASLib.data.datasets import load_dataset
    from SSLPretrainLib.panel_logic import describe_dataset

    loaded = load_dataset(dataset / "dataset.json" if dataset.is_dir() else dataset)
    test = [case.name for case in loaded.test] or [EXAMPLE_CASE]
    labelled = [case.name for case in loaded.cases if case.label is not None] or ["phantom_000"]
    return test[0], labelled[0], describe_dataset(dataset)


def medsegnas_session(
    runs_dir: Path | None, dataset: Path | None, registry: Path | None, scratch: Path
) -> PanelSession:
    """The MedSegNAS panel after the demo: a search running, earlier runs listed, a model registered."""
    from MedSegNASLib.jobs import list_runs
    from MedSegNASLib.models.registry import load_catalog
    from MedSegNASLib.panels import panel_logic, panel_runs
    from MedSegNASLib.panels.panel_jobs import progress_text

    session = PanelSession()
    runs = list_runs(runs_dir) if runs_dir is not None else []
    if runs:
        session.source = f"runs of {runs_dir}"
    case, labelled, _summary = _dataset_cases(dataset)
    records = _model_records(runs, registry, scratch)
    model_rows = panel_logic.model_table_rows(records)
    model_id = records[0].id if records else EXAMPLE_MODEL_ID
    result = f"{case} - {model_id}"

    # Segment: done on the demo's test case.
    session.combo_items["inputVolumeNodeComboBox"] = [case]
    session.combo_items["extraChannelNodeComboBox"] = ["None"]
    session.combo_items["segmentRoiNodeComboBox"] = ["None"]
    session.combo_items["modelComboBox"] = [cells[0] for cells, _tip, _id in model_rows]
    session.values.update(largestComponentCheckBox=True, fillHolesCheckBox=True)
    session.progress["segmentProgressBar"] = 100
    session.texts["segmentStatusLabel"] = f"Done: {result}"

    # Models
    session.tables["modelsTableWidget"] = TableContent([cells for cells, _tip, _id in model_rows], selected=0)
    session.combo_items["catalogComboBox"] = sorted(load_catalog())
    session.combo_current["catalogComboBox"] = "spleen_ct_segmentation"
    if records and records[0].source.startswith("train run /"):  # registered from the Runs section
        session.texts["runsStatusLabel"] = f"Registered as '{model_id}'; choose it under Segment."
    else:
        session.progress["modelsProgressBar"] = 100
        session.texts["modelsStatusLabel"] = f"Imported as '{model_id}'."

    # Search and train: a search running, at about 40%.
    search_runs = [run for run in runs if run["kind"] == "search"]
    event = None
    if search_runs:
        event = _event_near(_progress_events(Path(search_runs[0]["path"])), 0.4, "search")
    event = event or EXAMPLE_SEARCH_EVENT
    session.progress["trainProgressBar"] = _percent(event)
    session.texts["trainStatusLabel"] = progress_text(event)
    session.texts["searchButton"] = "Cancel"  # the running job's button turns into Cancel
    session.disabled.update({"trainButton", "tuneButton"})
    if dataset is not None:
        session.texts["datasetPathLineEdit"] = str(dataset)
    session.tables["sceneCasesTableWidget"] = TableContent(
        [[result, case, ", ".join(ORGANS)]], checkable=True
    )
    # Dataset source "folder": the scene-case widgets are disabled, as the panel does.
    session.disabled.update({"sceneCasesTableWidget", "sceneCasesRefreshButton", "sceneModalityLineEdit"})

    # Runs
    if runs_dir is not None:
        session.texts["runsFolderPathLineEdit"] = str(runs_dir)
    table_rows = panel_runs.run_table_rows(runs)
    if not table_rows:  # an example: a train run and the search it retrained
        table_rows = [
            (["train-20261126-215043-034f79", "train", "done", "100%", "2026-11-26 21:50:43"], "", ""),
            (["search-20261126-213343-773494", "search", "done", "100%", "2026-11-26 21:34:03"], "", ""),
        ]
    selected = next(
        (row for row, run in enumerate(runs) if panel_runs.run_details(run["path"]).model is not None), None
    )
    session.tables["runsTableWidget"] = TableContent([cells for cells, _tip, _path in table_rows], selected)
    if selected is not None:
        details = panel_runs.run_details(runs[selected]["path"])
        session.texts["runDetailsLabel"] = details.text()
        if details.topology is not None:
            session.pictures["topologyLabel"] = details.topology
        if not details.predictions:
            session.disabled.add("runsLoadPredictionsButton")
        session.disabled.update({"runsCancelButton", "runsResumeButton"})  # a finished run
    session.texts.setdefault(
        "runsStatusLabel",
        f"{len(runs)} run(s) in {runs_dir}" if runs_dir is not None else "2 run(s) in ~/MedSegNAS/runs",
    )

    # Evaluate
    session.combo_items["evaluateSegmentationNodeComboBox"] = [result]
    session.combo_items["evaluateReferenceNodeComboBox"] = [f"{case} reference"]
    session.texts["evaluateStatusLabel"] = f"Scores in table '{result} scores'."

    # Phantom data
    if dataset is not None:
        session.texts["phantomFolderPathLineEdit"] = str(dataset)
    session.progress["phantomProgressBar"] = 100
    session.texts["phantomStatusLabel"] = f"Done: {dataset or '~/MedSegNAS/phantom'}; showing {labelled}"
    return session


def ssl_session(runs_dir: Path | None, dataset: Path | None, check_environment: bool) -> PanelSession:
    """The SSLPretrain panel: environment checked, dataset checked, a pretraining running."""
    from SSLPretrainLib import panel_logic

    session = PanelSession()
    _case, _labelled, summary = _dataset_cases(dataset)
    if check_environment:
        from SSLPretrainLib.cli import collect_environment, format_environment

        environment = collect_environment()
        session.texts["environmentStatusLabel"] = environment_summary(environment)
        session.plain_texts["environmentTextEdit"] = format_environment(environment)
        if not panel_logic.missing_packages(environment):
            session.disabled.add("environmentInstallButton")
    if dataset is not None:
        session.texts["datasetFolderPathLineEdit"] = str(dataset)
        session.texts["labelledDatasetPathLineEdit"] = str(dataset)
    if summary is not None:
        session.texts["datasetStatusLabel"] = dataset_summary_text(summary)
    session.combo_items["sceneVolumesCheckableNodeComboBox"] = ["phantom_006, phantom_007"]
    session.disabled.add("sceneVolumesCheckableNodeComboBox")  # "use scene volumes" is off

    choices = panel_logic.run_choices(runs_dir) if runs_dir is not None else []
    event = None
    if choices:
        session.source = f"runs of {runs_dir}"
        event = _event_near(_progress_events(Path(choices[0][1])), 0.4, "pretrain")
    if runs_dir is not None:
        session.texts["runsFolderPathLineEdit"] = str(runs_dir)
    event = event or EXAMPLE_PRETRAIN_EVENT
    from MedSegNASLib.panels.panel_jobs import progress_text

    session.combo_items["runComboBox"] = [label for label, _path in choices] or [
        f"pretrain-20261126-220512-5be1c2 (running {_percent(event)}%)"
    ]
    session.progress["pretrainProgressBar"] = _percent(event)
    session.texts["pretrainStatusLabel"] = progress_text(event, panel_logic.JobFollower.shown_metrics)
    session.disabled.update({"resumeButton", "loadReconstructionsButton", "useModelButton"})
    # Fine-tuning needs a finished pretraining run: its buttons wait for this one.
    session.disabled.update({"finetuneButton", "fewshotButton"})
    return session


def environment_summary(environment: dict[str, Any]) -> str:
    """The panel's one-line summary of ``sslpretrain info`` (as SSLPretrainLogic.environmentSummary)."""
    from SSLPretrainLib import panel_logic

    missing = panel_logic.missing_packages(environment)
    if missing:
        return f"Not installed or failing to import: {', '.join(missing)}."
    if environment["devices"]:
        device = environment["devices"][0]
        where = f"{device['name']} ({device['description']})"
    else:
        where = "the CPU only (no GPU found): pretraining will be very slow"
    packages = environment["packages"]
    return f"PyTorch {packages['torch']}, MONAI {packages['monai']}; pretraining runs on {where}."


def dataset_summary_text(summary: dict[str, Any]) -> str:
    """The panel's line after *Check dataset* (as SSLPretrainLogic.datasetSummaryText)."""
    text = (
        f"{summary['name']}: {summary['unlabeled']} unlabelled image(s); "
        f"{summary['training'] + summary['validation']} labelled and {summary['test']} test image(s) "
        f"can also be used for pretraining. Channels: {', '.join(summary['modalities'])}."
    )
    if not summary["missing"]:
        return text + " All image files are present."
    return text + f" {len(summary['missing'])} image file(s) missing, e.g. {summary['missing'][0]}."


# --------------------------------------------------------------------------------------------
# Qt: load, fill, grab, compose


class QtPanels:
    """Qt objects of one offscreen application (created once: Qt allows one QApplication)."""

    def __init__(self) -> None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        os.environ["QT_PREFERRED_BINDING"] = "PySide6"
        from Qt import QtCompat, QtCore, QtGui, QtWidgets

        self.QtCompat, self.QtCore, self.QtGui, self.QtWidgets = QtCompat, QtCore, QtGui, QtWidgets
        # The offscreen platform warns that it cannot resize windows to their hints: not a problem here.
        QtCore.qInstallMessageHandler(
            lambda _kind, _context, message: (
                None if "propagateSizeHints" in message else print(message, file=sys.stderr)
            )
        )
        self.app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["render_panels"])
        self.app.setStyle(QtWidgets.QStyleFactory.create("Fusion"))
        self.app.setPalette(self.slicer_palette())
        # DejaVu Sans Condensed is about as wide as the fonts Slicer uses (Segoe UI, San Francisco).
        font = QtGui.QFont("DejaVu Sans Condensed")
        font.setPointSizeF(9.0)
        self.app.setFont(font)

    def slicer_palette(self) -> Any:
        QtGui = self.QtGui
        palette = QtGui.QPalette()
        for key, color in SLICER_LIGHT_PALETTE.items():
            if isinstance(key, tuple):
                group = getattr(QtGui.QPalette.ColorGroup, key[0])
                palette.setColor(group, getattr(QtGui.QPalette.ColorRole, key[1]), QtGui.QColor(color))
            else:
                palette.setColor(getattr(QtGui.QPalette.ColorRole, key), QtGui.QColor(color))
        return palette

    def load(self, module: str) -> tuple[Any, list[tuple[str, str]]]:
        """The module's panel with stand-ins, and its ``(section widget name, title)`` list."""
        ui_path = ROOT / module / "Resources" / "UI" / f"{module}.ui"
        if not ui_path.is_file():
            raise MedSegNASError(f"{ui_path} does not exist: run this from a MedSegNAS checkout")
        xml, sections = ui_with_stand_ins(ui_path, self.QtWidgets)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{module}.ui"
            path.write_bytes(xml)
            panel = self.QtCompat.loadUi(str(path))
        self._style_stand_ins(panel, sections)
        return panel, sections

    def _style_stand_ins(self, panel: Any, sections: list[tuple[str, str]]) -> None:
        QtCore, QtWidgets = self.QtCore, self.QtWidgets
        for name, title in sections:
            header = panel.findChild(QtWidgets.QToolButton, f"{name}Header")
            header.setText(title)
            header.setArrowType(QtCore.Qt.ArrowType.DownArrow)  # expanded
            header.setToolButtonStyle(QtCore.Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            header.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
            header.setMinimumHeight(26)
            font = header.font()
            font.setBold(True)
            header.setFont(font)
            contents = panel.findChild(QtWidgets.QFrame, f"{name}Contents")
            contents.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        for browse in panel.findChildren(QtWidgets.QToolButton):
            if browse.objectName().endswith("PathLineEditBrowse"):
                browse.setText("...")

    def fill(self, panel: Any, module: str, session: PanelSession) -> None:
        """Parameter defaults first (as connectGui would show them), then the session's values."""
        QtWidgets = self.QtWidgets
        fields = parameter_fields(module)
        for widget in panel.findChildren(QtWidgets.QWidget):
            name = widget.property("SlicerParameterName")
            if name in fields:
                self._show_parameter(widget, fields[name])
        for name, items in session.combo_items.items():
            combo = self._child(panel, name)
            combo.clear()
            combo.addItems(items)
            combo.setCurrentText(session.combo_current.get(name, items[0] if items else ""))
        for name, text in session.texts.items():
            widget = self._child(panel, name)
            edit = widget.findChild(QtWidgets.QLineEdit) if type(widget) is QtWidgets.QWidget else None
            (edit or widget).setText(text)
        for name, value in session.values.items():
            widget = self._child(panel, name)
            (widget.setChecked if isinstance(widget, QtWidgets.QAbstractButton) else widget.setValue)(value)
        for name, value in session.progress.items():
            self._child(panel, name).setValue(value)
        for name, text in session.plain_texts.items():
            self._child(panel, name).setPlainText(text)
        for name, content in session.tables.items():
            self._fill_table(self._child(panel, name), content)
        for name, path in session.pictures.items():
            pixmap = self.QtGui.QPixmap(str(path))
            if not pixmap.isNull():
                width = min(pixmap.width(), 360)
                self._child(panel, name).setPixmap(
                    pixmap.scaledToWidth(width, self.QtCore.Qt.TransformationMode.SmoothTransformation)
                )
        for name in session.disabled:
            self._child(panel, name).setEnabled(False)
        for combo in panel.findChildren(QtWidgets.QComboBox):
            # Long node names must not widen the panel; beside a button, the list takes the room
            # (as it does in Slicer, where its size hint is its longest entry).
            combo.setSizeAdjustPolicy(
                QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(8)
            policy = combo.sizePolicy()
            policy.setHorizontalStretch(1)
            combo.setSizePolicy(policy)

    def _child(self, panel: Any, name: str) -> Any:
        widget = panel.findChild(self.QtWidgets.QWidget, name)
        if widget is None:
            raise MedSegNASError(f"the panel has no widget named {name!r}: update tools/render_panels.py")
        return widget

    def _show_parameter(self, widget: Any, parameter: Parameter) -> None:
        QtWidgets, default = self.QtWidgets, parameter.default
        if isinstance(widget, QtWidgets.QComboBox) and parameter.choices:
            widget.clear()
            widget.addItems(parameter.choices)
            widget.setCurrentText(str(default))
        elif isinstance(widget, (QtWidgets.QSpinBox, QtWidgets.QDoubleSpinBox)) and default is not None:
            if parameter.value_range is not None:
                low, high = parameter.value_range
                if isinstance(widget, QtWidgets.QSpinBox):
                    widget.setRange(int(low), int(high))
                else:
                    widget.setRange(float(low), float(high))
            widget.setValue(default)
        elif isinstance(widget, QtWidgets.QCheckBox) and default is not None:
            widget.setChecked(bool(default))
        elif isinstance(widget, QtWidgets.QLineEdit) and default is not None:
            widget.setText(str(default))
        elif type(widget) is QtWidgets.QWidget and default is not None:  # path line edit stand-in
            edit = widget.findChild(QtWidgets.QLineEdit)
            if edit is not None:
                edit.setText(str(default))

    def _fill_table(self, table: Any, content: TableContent) -> None:
        QtCore, QtWidgets = self.QtCore, self.QtWidgets
        table.setRowCount(len(content.rows))
        for row, cells in enumerate(content.rows):
            for column, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                if column == 0 and content.checkable:
                    item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                    item.setCheckState(QtCore.Qt.CheckState.Checked)
                table.setItem(row, column, item)
        if content.selected is not None:
            table.selectRow(content.selected)
        table.setWordWrap(False)  # else a cell breaks at hyphens and shows its first line only
        table.setTextElideMode(QtCore.Qt.TextElideMode.ElideMiddle)
        table.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.verticalHeader().setDefaultSectionSize(22)
        # Fit the rows without blank space below them (the .ui's minimum height when fewer).
        rows_height = table.horizontalHeader().sizeHint().height() + 22 * max(len(content.rows), 1)
        table.setFixedHeight(max(rows_height + 2 * table.frameWidth(), 48))

    def fit_columns(self, table: Any) -> None:
        """Columns as wide as their contents. When they do not fit, the first column (the row's name)
        keeps up to 45% of the width and the widest of the others are narrowed to a common width;
        long cells are elided in the middle."""
        table.resizeColumnsToContents()
        header = table.horizontalHeader()
        header.setStretchLastSection(False)
        available = table.viewport().width()
        widths = [header.sectionSize(column) for column in range(table.columnCount())]
        if sum(widths) > available and len(widths) > 1:
            first = min(widths[0], max(available * 45 // 100, available - sum(widths[1:])))
            others, room = widths[1:], available - first
            cap = max(others)
            while cap > 24 and sum(min(width, cap) for width in others) > room:
                cap -= 1
            widths = [first, *(min(width, cap) for width in others)]
        widths[-1] += max(available - sum(widths), 0)
        for column, width in enumerate(widths):
            header.resizeSection(column, width)

    def lay_out(self, panel: Any) -> None:
        panel.setFixedWidth(PANEL_WIDTH)
        panel.show()
        for _ in range(2):
            self.app.processEvents()
            panel.adjustSize()
            panel.setFixedWidth(PANEL_WIDTH)
            for table in panel.findChildren(self.QtWidgets.QTableWidget):
                self.fit_columns(table)
        panel.resize(PANEL_WIDTH, panel.sizeHint().height())
        self.app.processEvents()

    def grab_sections(self, panel: Any, sections: list[tuple[str, str]]) -> list[tuple[str, Any]]:
        """``(title, QPixmap)`` of each section, in panel order."""
        grabbed = []
        for name, title in sections:
            widget = self._child(panel, name)
            grabbed.append((title, widget.grab()))
        return grabbed

    def compose(self, pictures: list[tuple[str, Any]], columns: int) -> tuple[Any, list[list[str]]]:
        """The sections stacked in ``columns`` columns (reading order kept, heights balanced)."""
        QtCore, QtGui = self.QtCore, self.QtGui
        heights = [pixmap.height() for _title, pixmap in pictures]
        split = split_columns(heights, columns)
        column_heights = [sum(heights[i] for i in part) + GAP // 2 * (len(part) - 1) for part in split]
        width = max((pixmap.width() for _t, pixmap in pictures), default=PANEL_WIDTH)
        image = QtGui.QImage(
            len(split) * width + (len(split) - 1) * GAP + 2 * MARGIN,
            max(column_heights, default=0) + 2 * MARGIN,
            QtGui.QImage.Format.Format_RGB32,
        )
        image.fill(QtGui.QColor(SLICER_LIGHT_PALETTE["Window"]))
        painter = QtGui.QPainter(image)
        for index, part in enumerate(split):
            x, y = MARGIN + index * (width + GAP), MARGIN
            for section in part:
                painter.drawPixmap(QtCore.QPoint(x, y), pictures[section][1])
                y += heights[section] + GAP // 2
            if index > 0:  # a thin rule between the columns
                painter.setPen(QtGui.QColor(SLICER_LIGHT_PALETTE["Midlight"]))
                painter.drawLine(x - GAP // 2, MARGIN, x - GAP // 2, image.height() - MARGIN)
        painter.end()
        return image, [[pictures[i][0] for i in part] for part in split]

    def save(self, image: Any, path: Path) -> Path:
        QtCore = self.QtCore
        data = QtCore.QByteArray()
        buffer = QtCore.QBuffer(data)
        buffer.open(QtCore.QIODevice.OpenModeFlag.WriteOnly)
        if not image.save(buffer, "PNG"):
            raise MedSegNASError(f"could not encode the picture for {path}")
        buffer.close()
        return write_atomic(path, lambda handle: handle.write(bytes(data)))


def split_columns(heights: Sequence[int], columns: int) -> list[list[int]]:
    """Section indices per column, in order, so that the tallest column is as short as possible."""
    indices = list(range(len(heights)))
    if columns <= 1 or len(heights) < 2:
        return [indices]
    best = min(
        range(1, len(heights)),
        key=lambda cut: max(sum(heights[:cut]), sum(heights[cut:])),
    )
    return [indices[:best], indices[best:]]


# --------------------------------------------------------------------------------------------


@dataclass
class PanelJob:
    module: str
    picture: str
    session: Callable[[], PanelSession]


def render_panel(qt: QtPanels, job: PanelJob, out_dir: Path, columns: str) -> tuple[Path, str]:
    """Load, fill, lay out and grab one panel; write its picture. Returns (path, report line)."""
    panel, sections = qt.load(job.module)
    session = job.session()
    qt.fill(panel, job.module, session)
    qt.lay_out(panel)
    pictures = qt.grab_sections(panel, sections)
    total = sum(pixmap.height() for _title, pixmap in pictures)
    count = {"1": 1, "2": 2}.get(columns, 2 if total > MAX_ONE_COLUMN_HEIGHT else 1)
    image, layout = qt.compose(pictures, count)
    path = qt.save(image, out_dir / job.picture)
    panel.close()
    described = " | ".join(", ".join(titles) for titles in layout)
    line = f"wrote {path} ({image.width()}x{image.height()}, {session.source}): sections {described}"
    return path, line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, help="runs folder with real runs (e.g. DEMO_OUT/runs)")
    parser.add_argument(
        "--dataset", type=Path, help="dataset folder or dataset.json (default: the runs folder's ../dataset)"
    )
    parser.add_argument(
        "--registry", type=Path, help="model registry home to list (default: the runs' model)"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "Resources" / "Screenshots")
    parser.add_argument(
        "--columns", choices=("auto", "1", "2"), default="auto", help="auto: two when one is too tall"
    )
    parser.add_argument(
        "--no-environment-check",
        dest="check_environment",
        action="store_false",
        help="leave SSLPretrain's environment unchecked (skips importing PyTorch)",
    )
    parser.add_argument("--modules", nargs="+", choices=MODULE_NAMES, default=list(MODULE_NAMES))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.out_dir.is_dir():
            raise MedSegNASError(f"output folder {args.out_dir} does not exist")
        if args.runs_dir is not None and not args.runs_dir.is_dir():
            raise MedSegNASError(f"runs folder {args.runs_dir} does not exist")
        dataset = args.dataset
        if dataset is None and args.runs_dir is not None:
            beside = args.runs_dir.resolve().parent / "dataset"
            dataset = beside if (beside / "dataset.json").is_file() else None
        try:
            qt = QtPanels()
        except ImportError as exc:
            raise MedSegNASError(f"Qt is not available ({exc}): pip install Qt.py PySide6") from exc
        with tempfile.TemporaryDirectory(prefix="render-panels-") as scratch:
            jobs = {
                "MedSegNAS": PanelJob(
                    "MedSegNAS",
                    "MedSegNAS-panel.png",
                    lambda: medsegnas_session(args.runs_dir, dataset, args.registry, Path(scratch)),
                ),
                "SSLPretrain": PanelJob(
                    "SSLPretrain",
                    "SSLPretrain-panel.png",
                    lambda: ssl_session(args.runs_dir, dataset, args.check_environment),
                ),
            }
            for module in args.modules:
                _path, line = render_panel(qt, jobs[module], args.out_dir, args.columns)
                print(f"{module} panel: {line}", flush=True)
    except MedSegNASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
