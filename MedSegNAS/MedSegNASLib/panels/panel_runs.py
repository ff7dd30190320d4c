"""What the Runs (inspect) section of the MedSegNAS panel shows of a run, without Qt.

* :func:`read_run_curves` and :func:`run_curves_to_plot_chart`: loss and validation-Dice curves of
  a run's progress events as plot series over table nodes, updated in place while it runs;
* :func:`run_details` (status, network, parameters, memory, best Dice, topology picture) and
  :func:`run_dice_table_node` (per-class Dice as a table node);
* :func:`load_validation_predictions` (predictions beside their ground truth) and
  :func:`use_run_model` ("Use this model": register the run's bundle).

Runs started from a shell or on another machine (a copied or shared run folder) work the same.
Tested with slicer-core in ``Testing/test_medsegnas_logic.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import slicer

from ..errors import MedSegNASError
from ..jobs import FINAL_STATES, RunDir, run_summary
from .panel_terminology import apply_terminology

if TYPE_CHECKING:
    from ..data.volume import LabelInfo
    from ..models.registry import ModelRecord

__all__ = [
    "RunActions",
    "RunCurves",
    "RunDetails",
    "load_validation_predictions",
    "read_run_curves",
    "run_actions",
    "run_curves_to_plot_chart",
    "run_details",
    "run_dice_table_node",
    "run_table_rows",
    "use_run_model",
]

#: Node attribute that ties plot, series and table nodes to a run directory (updated in place).
RUN_ATTRIBUTE = "MedSegNAS.Run"
ROLE_ATTRIBUTE = "MedSegNAS.Role"
#: Chart attribute: the :attr:`RunCurves.stamp` it shows (same stamp: nothing to redraw).
STAMP_ATTRIBUTE = "MedSegNAS.CurvesStamp"
#: Distinct curve colors (RGB 0..1) for plot series without a label color.
_CURVE_COLORS = [
    (0.35, 0.35, 0.35),
    (0.84, 0.15, 0.16),
    (0.12, 0.47, 0.71),
    (0.17, 0.63, 0.17),
    (1.0, 0.5, 0.05),
    (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
]


def _finite(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


@dataclass
class RunCurves:
    """Curves of a run's progress events.

    Attributes:
        steps: global step of every progress event of the training stages.
        losses: loss name -> value per entry of ``steps`` (NaN where absent).
        validation_steps, validation_epochs: where validations happened.
        dice: ``"mean"`` and class name -> validation Dice per validation.
    """

    steps: list[int] = field(default_factory=list)
    losses: dict[str, list[float]] = field(default_factory=dict)
    validation_steps: list[int] = field(default_factory=list)
    validation_epochs: list[int] = field(default_factory=list)
    dice: dict[str, list[float]] = field(default_factory=dict)
    offset: int = 0
    #: Where the curves came from (``curves.json``'s mtime and size, or the event log's offset):
    #: unchanged means nothing to redraw.
    stamp: str = ""
    #: Bytes read by the last :func:`read_run_curves` call.
    bytes_read: int = 0
    _last_mean: float | None = None

    def add(self, event: Mapping[str, Any]) -> None:
        metrics = event.get("metrics") or {}
        losses = {k: v for k, v in metrics.items() if "loss" in k and isinstance(v, (int, float))}
        if not losses and "val_dice" not in metrics:
            return  # a stage without curves (loading, prediction...)
        step = int(event.get("step") or 0)
        self.steps.append(step)
        for name in sorted(set(losses) | set(self.losses)):
            column = self.losses.setdefault(name, [math.nan] * (len(self.steps) - 1))
            column.append(_finite(losses.get(name)))
        per_class = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val_dice/")}
        mean = metrics.get("val_dice")
        # A validation: per-class values (train), or a new mean (search reports only the latest mean).
        if per_class or (isinstance(mean, (int, float)) and mean != self._last_mean):
            self.validation_steps.append(step)
            self.validation_epochs.append(int(event.get("epoch") or 0))
            values = {"mean": mean, **per_class}
            for name in list(dict.fromkeys([*self.dice, *values])):
                column = self.dice.setdefault(name, [math.nan] * (len(self.validation_steps) - 1))
                column.append(_finite(values.get(name)))
        if isinstance(mean, (int, float)):
            self._last_mean = mean


_CURVES_CACHE: dict[str, RunCurves] = {}
#: Most bytes of the event log one :func:`read_run_curves` call reads for a run without a
#: ``curves.json`` (from an older version): a GUI tick stays short, later calls catch up.
MAX_EVENT_BYTES_PER_READ = 1024 * 1024


def read_run_curves(run_dir: str | os.PathLike[str] | RunDir) -> RunCurves:
    """The loss and validation-Dice curves of a run.

    From the run's compact ``curves.json`` (:mod:`MedSegNASLib.jobs.curves`: at most a few
    thousand points whatever the run's length, re-read only when it changed); for a run without
    one, from its event log, at most :data:`MAX_EVENT_BYTES_PER_READ` new bytes per call.
    """
    from ..jobs.curves import CURVES_FILE, read_curve_points

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    key = str(run.path.resolve())
    cached = _CURVES_CACHE.get(key)
    try:
        stat = (run.path / CURVES_FILE).stat()
        stamp = f"file:{stat.st_mtime_ns}:{stat.st_size}"
    except OSError:
        stamp = ""
    if stamp:
        if cached is not None and cached.stamp == stamp:
            cached.bytes_read = 0
            return cached
        points = read_curve_points(run)
        if points is not None:
            curves = RunCurves(stamp=stamp, bytes_read=stat.st_size)
            for point in points:
                curves.add(point)
            _CURVES_CACHE[key] = curves
            return curves
    size = run.events_jsonl.stat().st_size if run.events_jsonl.exists() else 0
    if cached is None or not cached.stamp.startswith("events:") or size < cached.offset:
        cached = RunCurves(stamp="events:0")  # new, from an older version, or the log was replaced
    start = cached.offset
    events, cached.offset = run.read_events(cached.offset, max_bytes=MAX_EVENT_BYTES_PER_READ)
    cached.bytes_read = cached.offset - start
    cached.stamp = f"events:{cached.offset}"
    for event in events:
        if event.get("type") == "progress":
            cached.add(event)
    _CURVES_CACHE[key] = cached
    return cached


def _tagged_node(scene: Any, class_name: str, run_key: str, role: str) -> Any | None:
    nodes = scene.GetNodesByClass(class_name)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node.GetAttribute(RUN_ATTRIBUTE) == run_key and node.GetAttribute(ROLE_ATTRIBUTE) == role:
            return node
    return None


def _tag(node: Any, run_key: str, role: str) -> Any:
    node.SetAttribute(RUN_ATTRIBUTE, run_key)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    return node


def _table(scene: Any, run_key: str, role: str, name: str, columns: Mapping[str, Sequence[Any]]) -> Any:
    from .slicer_bridge import metrics_to_table_node

    existing = _tagged_node(scene, "vtkMRMLTableNode", run_key, role)
    return _tag(metrics_to_table_node(columns, scene, name, replace_node=existing), run_key, role)


def _label_colors(run: RunDir) -> dict[str, tuple[float, float, float]]:
    """Class name -> color from the run's resolved dataset labels (when job.json has them)."""
    with contextlib.suppress(Exception):
        labels = (run.read_job().get("config") or {}).get("dataset", {}).get("labels") or []
        return {str(item["name"]): tuple(float(c) for c in item["color"]) for item in labels}
    return {}


def run_curves_to_plot_chart(run_dir: str | os.PathLike[str] | RunDir, scene: Any) -> Any:
    """Loss and validation-Dice curves of a run as a plot chart node, updated in place on each call.

    Two table nodes hold the columns: ``"<run> losses"`` (``step`` and one column per loss in the
    progress events: ``loss``, ``arch_loss``...) and ``"<run> validation Dice"`` (``step``,
    ``epoch``, ``mean`` and one column per class). Each curve is a ``vtkMRMLPlotSeriesNode`` of the
    chart (x: step), named ``"<run> <column>"``; class curves take the dataset's label colors.
    Calling again with the same run refills the same nodes (the panel does it on each poll).

    Returns:
        The ``vtkMRMLPlotChartNode`` (``"<run> curves"``).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run_key = str(run.path.resolve())
    curves = read_run_curves(run)
    chart = _tagged_node(scene, "vtkMRMLPlotChartNode", run_key, "chart")
    if chart is not None and chart.GetAttribute(STAMP_ATTRIBUTE) == curves.stamp:
        return chart  # nothing new: a timer tick costs a file stat
    if chart is None:
        chart = _tag(
            scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{run.run_id} curves"), run_key, "chart"
        )
        chart.SetTitle(f"{run.run_id}: losses and validation Dice")
        chart.SetXAxisTitle("step")
        chart.SetYAxisTitle("loss / Dice")
        chart.SetLegendVisibility(True)
    was_modifying = chart.StartModify()
    try:
        curve_tables = [
            (
                _table(
                    scene, run_key, "losses", f"{run.run_id} losses", {"step": curves.steps, **curves.losses}
                ),
                list(curves.losses),
                "solid",
            ),
        ]
        if curves.validation_steps:
            validation = {"step": curves.validation_steps, "epoch": curves.validation_epochs, **curves.dice}
            table = _table(scene, run_key, "validation", f"{run.run_id} validation Dice", validation)
            curve_tables.append((table, list(curves.dice), "dash"))
        colors = _label_colors(run)
        existing = {chart.GetNthPlotSeriesNode(i).GetName(): chart.GetNthPlotSeriesNode(i)
                    for i in range(chart.GetNumberOfPlotSeriesNodes())}  # fmt: skip
        number = 0
        for table, columns, line in curve_tables:
            for column in columns:
                name = f"{run.run_id} {column}"
                series = existing.get(name)
                if series is None:
                    series = _tag(scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name), run_key, "series")
                    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                    series.SetMarkerStyle(
                        slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle
                        if line == "dash"
                        else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
                    )
                    series.SetLineStyle(
                        slicer.vtkMRMLPlotSeriesNode.LineStyleDash
                        if column == "mean" or line == "solid"
                        else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid
                    )
                    series.SetColor(*(colors.get(column) or _CURVE_COLORS[number % len(_CURVE_COLORS)]))
                    chart.AddAndObservePlotSeriesNodeID(series.GetID())
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(column)
                number += 1
        chart.SetAttribute(STAMP_ATTRIBUTE, curves.stamp)
    finally:
        chart.EndModify(was_modifying)
    return chart


# --------------------------------------------------------------------------- inspect


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _number_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


#: The memory figures of a summary.json the run details show, with their labels.
_MEMORY_FIGURES = {
    "measured_peak_mb": "peak",
    "estimate_mb": "estimate",
    "monai_estimate_mb": "MONAI's estimate",
    "rss_before_training_mb": "before training",
}


def _memory_text(memory: dict[str, Any]) -> str:
    """``peak 2,230 MB, estimate 691 MB``: the figures of a summary's ``memory`` block, in MB."""
    return ", ".join(
        f"{label} {value:,.0f} MB"
        for key, label in _MEMORY_FIGURES.items()
        if isinstance(value := memory.get(key), (int, float)) and not isinstance(value, bool)
    )


@dataclass
class RunDetails:
    """What the Inspect section shows of a run.

    Attributes:
        summary: :func:`~MedSegNASLib.jobs.run_summary` (state, kind, progress, error...).
        results: ``artifacts/summary.json`` of a finished search/train ({} before).
        topology: ``artifacts/topology.png`` when the run has one.
        model: ``artifacts/model`` (a MONAI bundle) when the run exported one.
        predictions: validation label maps in ``artifacts/predictions``.
    """

    summary: dict[str, Any]
    results: dict[str, Any]
    topology: Path | None
    model: Path | None
    predictions: list[Path]

    @property
    def dice(self) -> dict[str, float]:
        values = self.results.get("best_val_dice") or {}
        return {str(k): _finite(v) for k, v in values.items()} if isinstance(values, dict) else {}

    def text(self) -> str:
        """Lines for the panel: state, network, parameters, memory, best Dice, time."""
        summary, results = self.summary, self.results
        state = summary["state"] + (
            f" ({summary['percent']:.0f}%)" if summary.get("percent") is not None else ""
        )
        lines = [f"{summary['kind']} run {summary['run_id']}: {state}"]
        if summary.get("error"):
            lines.append(f"Error: {summary['error']}")
        if results.get("network"):
            lines.append(f"Network: {results['network']}")
        tune = results.get("tune")
        if isinstance(tune, dict) and isinstance(tune.get("best_trial_val_dice"), (int, float)):
            lines.append(
                f"Tune: {tune.get('trials')} trial(s), best trial {tune.get('best_trial')} (validation Dice "
                f"{tune['best_trial_val_dice']:.3f}); retrained below; see artifacts/best_config.yaml"
            )
        parameters = results.get("parameters")
        if isinstance(parameters, dict):
            lines.append("Parameters: " + ", ".join(f"{k} {_number_text(v)}" for k, v in parameters.items()))
        elif parameters is not None:
            lines.append(f"Parameters: {_number_text(parameters)}")
        memory = results.get("memory")
        if isinstance(memory, dict) and (memory_text := _memory_text(memory)):
            lines.append("Memory: " + memory_text)
        if results.get("patch_size"):
            lines.append(
                f"Patch: {' x '.join(map(str, results['patch_size']))} voxels on {results.get('device', '?')}"
            )
        mean = results.get("best_val_dice_mean")
        if isinstance(mean, (int, float)):
            lines.append(f"Best mean validation Dice {mean:.3f} (epoch {results.get('best_epoch')})")
        seconds = results.get("wall_s") or (results.get("timing") or {}).get("wall_s_this_process")
        if isinstance(seconds, (int, float)):
            lines.append(f"Time: {seconds / 60:.1f} min")
        return "\n".join(lines)


def run_table_rows(runs: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], str, str]]:
    """Rows of the runs table from :func:`~MedSegNASLib.jobs.list_runs` summaries:
    ``(cells [run id, kind, state, percent, started], tooltip (error or path), run path)``."""
    rows = []
    for run in runs:
        percent = run.get("percent")
        started = (run.get("started") or run.get("created") or "")[:19].replace("T", " ")
        cells = [
            run["run_id"],
            run["kind"],
            run["state"],
            f"{percent:.0f}%" if percent is not None else "",
            started,
        ]
        rows.append((cells, run.get("error") or run["path"], run["path"]))
    return rows


def run_details(run_dir: str | os.PathLike[str] | RunDir) -> RunDetails:
    """Status and results of a run folder (also one copied back from a cluster)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    artifacts = run.artifacts
    topology = artifacts / "topology.png"
    model = artifacts / "model"
    return RunDetails(
        summary=run_summary(run),
        results=_read_json(artifacts / "summary.json"),
        topology=topology if topology.is_file() else None,
        model=model if (model / "configs").is_dir() else None,
        predictions=sorted((artifacts / "predictions").glob("*.nii*")),
    )


@dataclass
class RunActions:
    """What the Runs section offers for the selected run: which buttons are enabled, the details
    shown beside them, and the topology picture (None: no run, or nothing of that kind)."""

    cancel: bool = False
    resume: bool = False
    show: bool = False  # Show folder and Curves
    load_predictions: bool = False
    use_model: bool = False
    details: str = ""
    topology: Path | None = None


def run_actions(path: str | None, state: str | None) -> RunActions:
    """:class:`RunActions` for the run folder ``path`` last listed in ``state`` (None: no selection).

    A damaged run is not read. A cancelled or failed run is resumable only if its worker recorded
    its command line (one stopped before that has nothing to resume)."""
    if not path:
        return RunActions()
    details = run_details(path) if state != "damaged" else None
    return RunActions(
        cancel=state not in FINAL_STATES,
        resume=state in ("cancelled", "failed") and bool(RunDir(path).read_job().get("argv")),
        show=True,
        load_predictions=bool(details and details.predictions),
        use_model=bool(details and details.model),
        details=details.text() if details else "",
        topology=details.topology if details else None,
    )


def run_dice_table_node(run_dir: str | os.PathLike[str] | RunDir, scene: Any) -> Any | None:
    """The best validation Dice per class of a finished run as a table node (``segment``, ``dice``);
    ``None`` when the run has no results yet. Refilled in place when called again."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    dice = run_details(run).dice
    if not dice:
        return None
    rows = {"segment": list(dice), "dice": list(dice.values())}
    return _table(scene, str(run.path.resolve()), "dice", f"{run.run_id} validation Dice per class", rows)


def _run_dataset(run: RunDir) -> tuple[Any, list[LabelInfo]]:
    """The dataset a search/train run used and its label table (from ``job.json``)."""
    from ..data.datasets import load_dataset
    from ..data.volume import LabelInfo

    job = run.read_job()
    config = job.get("config") or {}
    dataset_info = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    request = config.get("request") or {}
    path = dataset_info.get("path") or request.get("dataset") or (job.get("inputs") or {}).get("dataset")
    if not path:
        raise MedSegNASError(f"{run.job_json} does not say which dataset the run used")
    dataset = load_dataset(path, dataroot=request.get("dataroot"))
    labels = [
        LabelInfo(int(item["value"]), str(item["name"]), tuple(float(c) for c in item["color"]))
        for item in dataset_info.get("labels") or []
    ] or list(dataset.labels)
    return dataset, labels


def load_validation_predictions(
    run_dir: str | os.PathLike[str] | RunDir, scene: Any, *, max_cases: int | None = None
) -> list[tuple[Any, Any, Any | None]]:
    """Load a train run's validation predictions beside their ground truth.

    For each ``artifacts/predictions/<case>.nii.gz``: the case's image as a volume node, the
    prediction as segmentation ``"<case> prediction"`` and the reference label map as
    ``"<case> ground truth"`` (``None`` when the dataset has no label for it), both with the
    dataset's names and colors and referenced to the image.

    Returns:
        ``[(volume node, prediction node, ground-truth node or None), ...]`` in case-name order.
    """
    from ..data.io import read_volume
    from .slicer_bridge import labelmap_to_segmentation_node, volume_to_volume_node

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    predictions = run_details(run).predictions[:max_cases]
    if not predictions:
        raise MedSegNASError(f"run {run.path} has no validation predictions (artifacts/predictions) yet")
    dataset, labels = _run_dataset(run)
    cases = {case.name: case for case in [*dataset.cases, *getattr(dataset, "validation", [])]}
    loaded = []
    for path in predictions:
        name = path.name.split(".")[0]
        case = cases.get(name)
        if case is None:
            raise MedSegNASError(f"{path.name}: no case '{name}' in dataset {dataset.path}")
        volume_node = volume_to_volume_node(read_volume(case.images[0]), scene, name=name)
        prediction = labelmap_to_segmentation_node(
            path, labels, scene, reference_volume_node=volume_node, name=f"{name} prediction"
        )
        truth = None
        if case.label is not None:
            truth = labelmap_to_segmentation_node(
                case.label, labels, scene, reference_volume_node=volume_node, name=f"{name} ground truth"
            )
        for node in (prediction, truth):
            if node is not None:
                apply_terminology(node)
        loaded.append((volume_node, prediction, truth))
    return loaded


def use_run_model(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    name: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> ModelRecord:
    """Register a run's exported bundle (``artifacts/model``) in the model registry (a copy)."""
    from ..models.registry import register_model

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    model = run_details(run).model
    if model is None:
        raise MedSegNASError(f"run {run.path} has no exported model (artifacts/model) to use")
    kind = run.read_job().get("kind") or "run"
    return register_model(model, source=f"{kind} run {run.path}", name=name, home=home)
