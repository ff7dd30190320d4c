"""What the SSLPretrain panel does, without Qt: jobs to start and follow, and MRML nodes to show.

The Slicer module (``SSLPretrain.py``) only connects widgets to these functions; tests drive them
with the real MRML classes of the ``slicer-core`` wheel. Every long task is a job of the
MedSegNAS protocol (:mod:`MedSegNASLib.jobs`) run by ``python -m SSLPretrainLib.cli``:

- :func:`start_pretraining` writes the chosen scene volumes as NIfTI into ``RUN/inputs/`` (or
  takes a folder / ``dataset.json``), the settings into ``RUN/config.json``, and launches
  ``sslpretrain pretrain``; :func:`resume_job` continues a stopped run, :func:`cancel_job` stops one;
- :func:`start_finetuning` and :func:`start_fewshot` launch ``sslpretrain finetune`` / ``fewshot``;
- :class:`JobFollower` reads a run's new events on each timer tick and keeps its
  :class:`LossCurves`; :func:`update_loss_plot` turns them into a plot chart node, updated in place;
- :func:`load_reconstructions` loads the latest reconstructions (input, masked input,
  reconstruction) as volume nodes; :func:`fewshot_table_node` turns ``fewshot.csv`` into a table
  node; :func:`use_model` registers a fine-tuned bundle in the model registry;
- :func:`live_runs` finds the runs still going after Slicer was restarted, to re-attach to them.

MRML nodes are made with the scene passed in (``slicer.mrmlScene`` in the application);
``slicer`` itself is only imported through :mod:`MedSegNASLib.panels.slicer_bridge`, and only by the
functions that need it, so importing this module when Slicer starts costs nothing (no torch,
MONAI or nibabel).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MedSegNASLib.atomic import write_json_atomic
from MedSegNASLib.dependencies import packages_for
from MedSegNASLib.errors import DatasetError, JobError, MedSegNASError
from MedSegNASLib.jobs import RunDir, list_runs, refresh_status
from MedSegNASLib.jobs.curves import CURVES_FILE, read_curve_points
from MedSegNASLib.panels import panel_jobs

# Shared with the MedSegNAS panel; importable from here as the SSLPretrain module uses them.
from MedSegNASLib.panels.panel_jobs import LIVE_STATES as LIVE_STATES
from MedSegNASLib.panels.panel_jobs import JobUpdate as JobUpdate
from MedSegNASLib.panels.panel_jobs import as_float, launch_job
from MedSegNASLib.panels.panel_jobs import cancel_job as cancel_job
from MedSegNASLib.panels.panel_jobs import format_eta as format_eta
from MedSegNASLib.panels.panel_jobs import worker_python as worker_python

from .cli import REQUIRED_PACKAGES
from .config import LOSS_NAMES, PRESETS, resolve_config

#: What follows the Python executable in a worker's command line.
JOB_ENTRY: tuple[str, ...] = ("-m", "SSLPretrainLib.cli")
#: Job kinds the panel starts and lists.
PRETRAIN, FINETUNE, FEWSHOT = "pretrain", "finetune", "fewshot"
JOB_KINDS: tuple[str, ...] = (PRETRAIN, FINETUNE, FEWSHOT)
#: Plot series of the loss chart: (series / table column name, metric key in the progress events).
LOSS_SERIES: tuple[tuple[str, str], ...] = (
    ("rotation", "rotation"),
    ("contrastive", "contrastive"),
    ("inpainting", "reconstruction"),
    ("total", "loss"),
)
#: Colors (RGB 0..1) of the loss series, in :data:`LOSS_SERIES` order.
LOSS_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.12, 0.47, 0.71),
    (1.0, 0.5, 0.05),
    (0.17, 0.63, 0.17),
    (0.1, 0.1, 0.1),
)
#: Roles of the reconstruction files, in the order they are loaded.
RECONSTRUCTION_ROLES: tuple[str, ...] = ("input", "masked", "reconstruction")
#: Folder of a pretraining run that holds the scene volumes written for it.
INPUTS_FOLDER = "inputs"
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: What the panel's jobs need (import name -> pip requirement), from the one list in
#: :mod:`MedSegNASLib.dependencies`; torch itself comes from Slicer's PyTorch extension.
PRETRAIN_PACKAGES: dict[str, str] = packages_for("ssl")

assert {key for _, key in LOSS_SERIES} == {"loss", *LOSS_NAMES}, "one series per loss term and the total"


# -- settings ---------------------------------------------------------------------------------


@dataclass
class PretrainOptions:
    """The panel's pretraining settings: a preset and the main settings overriding it.

    Attributes:
        preset: ``tiny``, ``small`` or ``full`` (see :mod:`.config`).
        steps: optimisation steps (``None``: the preset's).
        crop_size: side of the cubic crops in voxels, a multiple of 32 (``None``: the preset's).
        feature_size: Swin UNETR embedding size, a multiple of 12 (``None``: the preset's).
        batch_size: crops per step (``None``: the preset's).
        loss_weights: weight of ``rotation``, ``contrastive`` and ``reconstruction`` (inpainting);
            missing terms keep their weight.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        extra: further settings of :class:`~.config.PretrainConfig` (e.g. ``{"log_every": 5}``).
    """

    preset: str = "tiny"
    steps: int | None = None
    crop_size: int | None = None
    feature_size: int | None = None
    batch_size: int | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_panel(cls, settings: Any) -> PretrainOptions:
        """From the panel's parameter node (``preset``, ``steps``, ``cropSize``, ``featureSize``,
        ``batchSize``, ``rotationWeight``, ``contrastiveWeight``, ``inpaintingWeight``, ``device``)."""
        s = settings
        weights = {
            "rotation": s.rotationWeight,
            "contrastive": s.contrastiveWeight,
            "reconstruction": s.inpaintingWeight,
        }
        return cls(s.preset, s.steps, s.cropSize, s.featureSize, s.batchSize, weights, s.device)

    def overrides(self) -> dict[str, Any]:
        """The settings file content (``--config``): the settings that override the preset's."""
        settings: dict[str, Any] = dict(self.extra)
        if self.steps is not None:
            settings["steps"] = int(self.steps)
        if self.crop_size is not None:
            settings["roi"] = [int(self.crop_size)] * 3
        if self.feature_size is not None:
            settings["feature_size"] = int(self.feature_size)
        if self.batch_size is not None:
            settings["batch_size"] = int(self.batch_size)
        if self.loss_weights:
            settings["loss_weights"] = {name: float(value) for name, value in self.loss_weights.items()}
        return settings

    def check(self) -> None:
        """Raise :class:`MedSegNASError` naming every invalid setting (before anything starts)."""
        if self.device not in DEVICES:
            raise MedSegNASError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        resolve_config(self.preset, self.overrides())


def preset_defaults(preset: str) -> dict[str, Any]:
    """The main settings of a preset, as the panel shows them: ``steps``, ``crop_size``,
    ``feature_size``, ``batch_size`` and ``loss_weights`` (term -> weight)."""
    if preset not in PRESETS:
        raise MedSegNASError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = resolve_config(preset)
    return {
        "steps": config.steps,
        "crop_size": config.roi[0],
        "feature_size": config.feature_size,
        "batch_size": config.batch_size,
        "loss_weights": dict(config.loss_weights),
    }


# -- worker processes ---------------------------------------------------------------------------


def worker_environment() -> dict[str, str]:
    """Environment additions for a worker: ``PYTHONPATH`` to ``SSLPretrainLib`` and ``MedSegNASLib``,
    CPU thread counts (see :func:`MedSegNASLib.panels.panel_jobs.worker_environment`)."""
    import SSLPretrainLib

    return panel_jobs.worker_environment(SSLPretrainLib)


def worker_command(*args: str, python: str | None = None) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` that run ``sslpretrain <args>`` in a worker Python (default:
    :func:`worker_python`)."""
    return [python or worker_python(), *JOB_ENTRY, *args], {**os.environ, **worker_environment()}


def start_environment_check(python: str | None = None) -> subprocess.Popen:
    """Start ``sslpretrain info --json`` in the background (importing torch takes seconds)."""
    argv, environment = worker_command("info", "--json", python=python)
    return subprocess.Popen(
        argv,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def environment_check_result(process: subprocess.Popen) -> dict[str, Any] | None:
    """The environment report (see :func:`.cli.collect_environment`) once ``process`` has ended,
    ``None`` while it runs.

    Raises:
        RuntimeError: the worker printed no report (its last error line, or its exit code).
    """
    if process.poll() is None:
        return None
    output, errors = process.communicate()
    try:
        return json.loads(output)
    except ValueError:
        lines = [line for line in (errors or "").splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {process.returncode}, no output") from None


def check_environment(timeout_s: float = 120.0, python: str | None = None) -> dict[str, Any]:
    """Run the environment check and wait for it (scripts and tests; the panel polls)."""
    process = start_environment_check(python)
    deadline = time.monotonic() + timeout_s
    while (environment := environment_check_result(process)) is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"the environment check did not finish in {timeout_s:g} s")
        time.sleep(0.1)
    return environment


def missing_packages(environment: Mapping[str, Any]) -> list[str]:
    """The packages a job cannot run without (torch, MONAI) that the report finds missing or broken."""
    return [name for name in REQUIRED_PACKAGES if environment["packages"].get(name) is None]


def _launch(
    argv: Sequence[Any], kind: str, run_dir: RunDir | None, runs_root: Path | None, python: str | None
) -> RunDir:
    import SSLPretrainLib

    return launch_job(
        argv,
        run_dir,
        runs_root=runs_root,
        kind=kind,
        entry=JOB_ENTRY,
        packages=[SSLPretrainLib],
        python=python,
    )


def _safe_file_stem(name: str) -> str:
    # No dots: a node named after its file ("case.nii.gz") would give "case.nii.gz.nii.gz",
    # which the image writers refuse.
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return stem or "volume"


def export_scene_volumes(volume_nodes: Iterable[Any], folder: str | os.PathLike[str]) -> list[Path]:
    """Write volume nodes as NIfTI files (``<node name>.nii.gz``, made unique) with their geometry.

    Linear parent transforms are hardened into the written geometry (see
    :func:`MedSegNASLib.panels.slicer_bridge.export_volume_node`).

    Raises:
        DatasetError: no volume given.
    """
    from MedSegNASLib.panels.slicer_bridge import export_volume_node

    nodes = [node for node in volume_nodes if node is not None]
    if not nodes:
        raise DatasetError("no volume chosen: check the scene volumes to pretrain on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for node in nodes:
        stem = _safe_file_stem(node.GetName() or "volume")
        unique, number = stem, 2
        while unique.lower() in used:
            unique, number = f"{stem}_{number}", number + 1
        used.add(unique.lower())
        written.append(export_volume_node(node, folder / f"{unique}.nii.gz"))
    return written


def start_pretraining(
    runs_root: str | os.PathLike[str],
    options: PretrainOptions,
    *,
    images: str | os.PathLike[str] | None = None,
    volume_nodes: Sequence[Any] = (),
    python: str | None = None,
) -> RunDir:
    """Launch ``sslpretrain pretrain`` in a new run directory under ``runs_root``.

    Args:
        runs_root: where the run directory ``pretrain-<date>-<id>`` is made.
        options: preset and settings; written to ``RUN/config.json`` and passed as ``--config``.
        images: a folder of images, a ``dataset.json`` or a datalist (``--images``).
        volume_nodes: scene volumes to pretrain on instead, written to ``RUN/inputs/``.
        python: the worker's Python (default :func:`worker_python`: PythonSlicer in Slicer).

    Returns:
        The run directory, its ``process`` the worker.

    Raises:
        MedSegNASError: invalid settings, no images, or the job cannot start (nothing is left
            behind when the settings or the volumes are refused).
    """
    options.check()
    if images is None and not volume_nodes:
        raise DatasetError("choose the images to pretrain on: a folder or dataset, or volumes of the scene")
    if images is not None and not Path(images).expanduser().exists():
        raise DatasetError(f"{images}: no such file or folder to pretrain on")
    run = RunDir.create(Path(runs_root).expanduser().absolute(), PRETRAIN)
    try:
        # A queued status makes the folder a run directory before the worker exists, so that
        # the launcher accepts the inputs and settings file written into it.
        run.write_status(state="queued", pid=None)
        if volume_nodes:
            export_scene_volumes(volume_nodes, run.path / INPUTS_FOLDER)
            images = run.path / INPUTS_FOLDER
        config_file = write_json_atomic(run.path / "config.json", options.overrides())
    except BaseException:
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    argv = [PRETRAIN, "--images", Path(images).expanduser().absolute(), "--preset", options.preset]
    argv += ["--config", config_file, "--device", options.device]
    return _launch(argv, PRETRAIN, run, None, python)


def resume_job(run_dir: str | os.PathLike[str] | RunDir, python: str | None = None) -> RunDir:
    """Continue a stopped (cancelled or failed) pretraining, fine-tuning or few-shot run where it stopped,
    with the settings the run recorded (``<kind> --resume``).

    Returns the run directory; its ``process`` is ``None`` when the run was already done.
    """
    import SSLPretrainLib

    return panel_jobs.resume_job(
        run_dir,
        kinds=JOB_KINDS,
        entry=JOB_ENTRY,
        packages=[SSLPretrainLib],
        recorded_command=False,
        python=python,
    )


def _training_options(preset: str, device: str, seed: int) -> list[Any]:
    # Fine-tuning trains on CUDA or the CPU; "mps" (a pretraining choice) falls back to auto.
    return [
        "--preset",
        preset,
        "--device",
        device if device in ("auto", "cpu", "cuda") else "auto",
        "--seed",
        int(seed),
    ]


def start_finetuning(
    runs_root: str | os.PathLike[str],
    pretrained: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    *,
    labelled: int | None = None,
    preset: str = "tiny",
    device: str = "auto",
    seed: int = 0,
    python: str | None = None,
) -> RunDir:
    """Launch ``sslpretrain finetune`` (Swin UNETR from the pretrained encoder) in a new run directory.

    The exported bundle is not registered by the job (``--no-register``): :func:`use_model` does
    that when the user chooses to.

    Args:
        pretrained: a pretraining run directory or an encoder file.
        dataset: the labelled dataset (``dataset.json`` or its folder).
        labelled: train on this many labelled cases (``None`` or 0: the training job's own split).
        preset, device, seed: as ``sslpretrain finetune`` takes them.
    """
    argv: list[Any] = [FINETUNE, "--pretrained", _existing(pretrained, "pretrained encoder")]
    argv += ["--dataset", _existing(dataset, "labelled dataset"), *_training_options(preset, device, seed)]
    argv += ["--no-register"] + (["--labelled", int(labelled)] if labelled else [])
    return _launch(argv, FINETUNE, None, Path(runs_root), python)


def start_fewshot(
    runs_root: str | os.PathLike[str],
    pretrained: str | os.PathLike[str],
    dataset: str | os.PathLike[str],
    *,
    shots: str | Sequence[int] = "2,4,8",
    budget: int | None = None,
    preset: str = "tiny",
    device: str = "auto",
    seed: int = 0,
    python: str | None = None,
) -> RunDir:
    """Launch ``sslpretrain fewshot``: Dice against labelled cases, pretrained vs random initialisation.

    Args:
        shots: numbers of labelled cases, ``"2,4,8"`` or a sequence.
        budget: training steps of every fine-tuning (``None`` or 0: the command's default).
    """
    shots_text = (shots if isinstance(shots, str) else ",".join(str(int(n)) for n in shots)).replace(" ", "")
    if not re.fullmatch(r"\d+(,\d+)*", shots_text):
        raise MedSegNASError(
            f"labelled cases must be whole numbers separated by commas (e.g. 2,4,8), got {shots_text!r}"
        )
    argv: list[Any] = [FEWSHOT, "--dataset", _existing(dataset, "labelled dataset")]
    argv += ["--pretrained", _existing(pretrained, "pretrained encoder"), "--shots", shots_text]
    argv += _training_options(preset, device, seed) + (["--budget", int(budget)] if budget else [])
    return _launch(argv, FEWSHOT, None, Path(runs_root), python)


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path).expanduser().absolute()
    if str(path).strip() in ("", ".") or not path.exists():
        raise MedSegNASError(f"choose the {what}: {path} does not exist")
    return path


def job_runs(runs_root: str | os.PathLike[str], kinds: Sequence[str] = JOB_KINDS) -> list[dict[str, Any]]:
    """Summaries (:func:`MedSegNASLib.jobs.run_summary`) of the runs of ``kinds`` under ``runs_root``,
    newest first; also runs started from a shell, or before Slicer was restarted."""
    return [run for run in list_runs(Path(runs_root).expanduser()) if run["kind"] in kinds]


def run_choices(runs_root: str | os.PathLike[str] | None, kind: str = PRETRAIN) -> list[tuple[str, str]]:
    """``(label, path)`` of the runs of ``kind``, newest first, labelled ``<run id> (<state> <percent>%)``."""
    choices = []
    for run in job_runs(runs_root, [kind]) if runs_root is not None else []:
        percent = f" {run['percent']:.0f}%" if run["percent"] is not None else ""
        choices.append((f"{run['run_id']} ({run['state']}{percent})", run["path"]))
    return choices


def attach_live_runs(
    followers: dict[str, JobFollower], runs_root: str | os.PathLike[str] | None, kinds: Sequence[str]
) -> list[str]:
    """Follow the newest live run of each of ``kinds`` (after a restart: re-attach), unless
    ``followers`` already follows it; returns the kinds that got a new follower."""
    attached = []
    for kind, run in (live_runs(runs_root, kinds) if runs_root is not None else {}).items():
        if kind not in followers or str(followers[kind].run.path) != run["path"]:
            followers[kind] = JobFollower(run["path"])
            attached.append(kind)
    return attached


def live_runs(
    runs_root: str | os.PathLike[str], kinds: Sequence[str] = JOB_KINDS
) -> dict[str, dict[str, Any]]:
    """The newest run of each of ``kinds`` whose worker is still at work (dead workers are recorded as such)."""
    return panel_jobs.live_runs(runs_root, kinds)


# -- following a run ----------------------------------------------------------------------------


class LossCurves:
    """The loss terms of a pretraining run against the step, from its progress events.

    A resumed run starts again from its last checkpoint, so the steps that the stopped worker
    logged after it are replaced by the new worker's (as TensorBoard's ``purge_step`` does).
    """

    def __init__(self) -> None:
        self._points: dict[int, dict[str, float]] = {}
        self._last_step: int | None = None

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> bool:
        """Take the loss values of the ``progress`` events; True when a point was added or changed."""
        changed = False
        for event in events:
            metrics = event.get("metrics") if event.get("type") == "progress" else None
            if not isinstance(metrics, Mapping) or not any(key in metrics for _, key in LOSS_SERIES):
                continue
            step = int(event["step"])
            if self._last_step is not None and step <= self._last_step:
                for stale in [s for s in self._points if s >= step]:
                    del self._points[stale]
            self._points[step] = {name: as_float(metrics.get(key)) for name, key in LOSS_SERIES}
            self._last_step = step
            changed = True
        return changed

    def __len__(self) -> int:
        return len(self._points)

    @property
    def steps(self) -> list[int]:
        return sorted(self._points)

    def values(self, name: str) -> list[float]:
        """The values of series ``name`` (``rotation``, ``contrastive``, ``inpainting``, ``total``) by step."""
        return [self._points[step][name] for step in self.steps]

    def latest(self) -> dict[str, float]:
        return dict(self._points[max(self._points)]) if self._points else {}


class JobFollower(panel_jobs.JobFollower):
    """Follows one run directory and keeps its :class:`LossCurves`: call :meth:`poll` from a timer;
    ``update.curves_changed`` says when to redraw the chart.

    The curves come from the run's compact ``curves.json`` (:mod:`MedSegNASLib.jobs.curves`),
    re-read when it changes, so a tick stays short however long the run; a run without one (an
    older version) builds them from its event log, read at most ``max_bytes_per_poll`` a tick.
    """

    shown_metrics = tuple((name, key) for name, key in LOSS_SERIES)

    def __init__(self, run_dir: str | os.PathLike[str] | RunDir) -> None:
        super().__init__(run_dir)
        self.curves = LossCurves()
        self._curves_stamp: tuple[int, int] | None = None

    def skip_history(self) -> bool:
        return (self.run.path / CURVES_FILE).exists()

    def take_events(self, events: list[dict[str, Any]]) -> bool:
        if self._curves_stamp is not None:
            return False  # the curves file has them
        return self.curves.add_events(events)

    def poll(self) -> JobUpdate:
        update = super().poll()
        try:
            stat = (self.run.path / CURVES_FILE).stat()
        except OSError:
            return update
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._curves_stamp:
            points = read_curve_points(self.run)
            if points is not None:
                self.curves = LossCurves()
                self.curves.add_events(points)
                self._curves_stamp = stamp
                self.bytes_read += stat.st_size
                update.curves_changed = True
        return update


# -- MRML nodes ---------------------------------------------------------------------------------


def _node_named(scene: Any, name: str, class_name: str) -> Any | None:
    nodes = scene.GetNodesByClassByName(class_name, name)
    node = nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
    return node


def _fill_loss_table(table_node: Any, curves: LossCurves) -> None:
    import vtk

    columns: dict[str, list[float]] = {"step": [float(s) for s in curves.steps]}
    columns.update({name: curves.values(name) for name, _ in LOSS_SERIES})
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for name, values in columns.items():
        array = vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(values))
        for index, value in enumerate(values):
            array.SetValue(index, value)
        table_node.AddColumn(array)
    table_node.EndModify(was_modifying)


def update_loss_plot(curves: LossCurves, scene: Any, name: str, *, chart_node: Any | None = None) -> Any:
    """A plot chart node of the loss curves: one series per loss (rotation, contrastive, inpainting,
    total) against the step, all reading one table node.

    Called again with the chart node (or the same ``name``), it updates that table in place, so
    the plot view redraws without new nodes.

    Args:
        curves: the losses.
        scene: the MRML scene.
        name: chart name (e.g. the run id); the table is ``<name> table``, series ``<name> <loss>``.
        chart_node: the chart to update (default: the chart named ``name`` if there is one).

    Returns:
        The ``vtkMRMLPlotChartNode``.
    """
    chart_node = chart_node or _node_named(scene, name, "vtkMRMLPlotChartNode")
    table_node = None
    if chart_node is not None and chart_node.GetNumberOfPlotSeriesNodes():
        table_node = chart_node.GetNthPlotSeriesNode(0).GetTableNode()
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    _fill_loss_table(table_node, curves)
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        chart_node.SetTitle(f"{name}: self-supervised losses")
        chart_node.SetXAxisTitle("step")
        chart_node.SetYAxisTitle("loss (unweighted)")
    if chart_node.GetNumberOfPlotSeriesNodes() == 0:
        for (series_name, _), color in zip(LOSS_SERIES, LOSS_COLORS, strict=True):
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {series_name}")
            series.SetAndObserveTableNodeID(table_node.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName(series_name)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetLineWidth(3 if series_name == "total" else 2)
            series.SetColor(*color)
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart_node


def _remove_node(scene: Any, node: Any) -> None:
    for index in reversed(range(node.GetNumberOfDisplayNodes())):
        display = node.GetNthDisplayNode(index)
        if display is not None and scene.IsNodePresent(display):
            scene.RemoveNode(display)
    scene.RemoveNode(node)


def reconstruction_records(
    run_dir: str | os.PathLike[str] | RunDir,
) -> tuple[int | None, list[dict[str, Any]]]:
    """``(step, samples)`` of a run's latest reconstructions (``artifacts/reconstructions/``);
    ``(None, [])`` when it has written none yet."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    index_file = run.artifacts / "reconstructions" / "reconstructions.json"
    if not index_file.is_file():
        return None, []
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise JobError(f"{index_file} is not valid JSON ({exc})") from None
    return index.get("step"), list(index.get("samples") or [])


def load_reconstructions(
    run_dir: str | os.PathLike[str] | RunDir, scene: Any, *, name: str | None = None
) -> list[dict[str, Any]]:
    """Load the latest reconstructions of a pretraining run as scalar volume nodes.

    Each sample gives three nodes, ``<name> sample<i> input``, ``masked`` and
    ``reconstruction``, each with the crop's place in its source image (IJK-to-RAS from the file).
    Nodes of an earlier load with the same names are replaced.

    Returns:
        One dict per sample: role -> volume node, plus ``source`` (the image it was cut from).

    Raises:
        JobError: the run has written no reconstructions yet.
    """
    from MedSegNASLib.data.io import read_volume
    from MedSegNASLib.panels.slicer_bridge import volume_to_volume_node

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    step, samples = reconstruction_records(run)
    if not samples:
        raise JobError(
            f"run {run.run_id} has written no reconstructions yet (they come at the end, or every "
            "reconstruction_every steps)"
        )
    name = name or run.run_id
    folder = run.artifacts / "reconstructions"
    loaded: list[dict[str, Any]] = []
    for sample in samples:
        nodes: dict[str, Any] = {"source": sample.get("source"), "step": step}
        for role in RECONSTRUCTION_ROLES:
            volume = read_volume(folder / sample["files"][role])
            node_name = f"{name} sample{sample['sample']} {role}"
            previous = _node_named(scene, node_name, "vtkMRMLScalarVolumeNode")
            if previous is not None:
                _remove_node(scene, previous)
            nodes[role] = volume_to_volume_node(volume, scene, name=node_name)
        loaded.append(nodes)
    return loaded


def _csv_cell(text: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def fewshot_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``fewshot.csv`` with numbers as numbers and empty cells as ``None``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [
                {key: _csv_cell(value or "") for key, value in row.items()} for row in csv.DictReader(handle)
            ]
    except OSError as exc:
        raise JobError(f"cannot read the few-shot table {path}: {exc.strerror or exc}") from None


def fewshot_files(run_dir: str | os.PathLike[str] | RunDir) -> dict[str, Path]:
    """The few-shot results a run has written so far: ``csv``, ``markdown``, ``plot`` -> path."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    names = {"csv": "fewshot.csv", "markdown": "fewshot.md", "plot": "fewshot.png"}
    return {key: run.artifacts / file for key, file in names.items() if (run.artifacts / file).is_file()}


def fewshot_table_node(
    source: str | os.PathLike[str] | RunDir, scene: Any, *, name: str | None = None, replace_node: Any = None
) -> Any:
    """A table node of a few-shot comparison, one row per fine-tuning (``fewshot.csv``).

    Args:
        source: a few-shot run directory or its ``fewshot.csv``.
        scene: the MRML scene.
        name: node name (default ``<run id> few-shot``).
        replace_node: a table node to fill instead of a new one (default: the one named ``name``).
    """
    from MedSegNASLib.panels.slicer_bridge import metrics_to_table_node

    path = Path(source.path if isinstance(source, RunDir) else source)
    if path.is_dir():
        csv_path = fewshot_files(path).get("csv")
        if csv_path is None:
            raise JobError(f"run {path.name} has no few-shot table yet (artifacts/fewshot.csv)")
        name = name or f"{path.name} few-shot"
    else:
        csv_path, name = path, name or f"{path.parent.parent.name} few-shot"
    rows = fewshot_rows(csv_path)
    replace_node = replace_node or _node_named(scene, name, "vtkMRMLTableNode")
    return metrics_to_table_node(rows, scene, name, replace_node=replace_node)


# -- models -------------------------------------------------------------------------------------


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def find_bundle(run_dir: str | os.PathLike[str] | RunDir) -> Path | None:
    """The MONAI bundle folder a finished fine-tuning run exported, or ``None``.

    Looked up in the ``done`` event's result (``bundle``), then the ``model`` / ``bundle``
    artifacts announced, then ``artifacts/model`` and ``artifacts/bundle``.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    candidates: list[Path] = []
    result = run.read_status().get("result") or {}
    if isinstance(result, Mapping) and result.get("bundle"):
        candidates.append(Path(result["bundle"]))
    events, _ = run.read_events()
    candidates += [
        Path(e["path"])
        for e in reversed(events)
        if e.get("type") == "artifact" and e.get("kind") in ("model", "bundle")
    ]
    candidates += [run.artifacts / "model", run.artifacts / "bundle"]
    for candidate in candidates:
        folder = candidate if candidate.is_absolute() else run.path / candidate
        if _is_bundle(folder):
            return folder
    return None


def _finished_bundle(run_dir: str | os.PathLike[str] | RunDir) -> tuple[RunDir, Path]:
    """A finished fine-tuning run and its exported bundle folder.

    Raises:
        JobError: the run has not finished, or exported no bundle.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    state = refresh_status(run).get("state")
    if state != "done":
        raise JobError(f"run {run.run_id} is {state}: only a finished fine-tuning has a model to use")
    bundle = find_bundle(run)
    if bundle is None:
        raise JobError(
            f"run {run.run_id} exported no MONAI bundle (no artifacts/model with configs/metadata.json)"
        )
    return run, bundle


def use_model(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    name: str | None = None,
    home: str | os.PathLike[str] | None = None,
):
    """Register a fine-tuning run's bundle in the model registry (copied; the run keeps its own).

    Returns the registry's :class:`~MedSegNASLib.models.registry.ModelRecord` (its ``id`` is what
    ``medsegnas segment --model`` and the MedSegNAS panel take).

    Raises:
        JobError: the run has not finished, or exported no bundle.
    """
    from MedSegNASLib.models.registry import register_model

    run, bundle = _finished_bundle(run_dir)
    return register_model(
        bundle, source=f"{run.read_job().get('kind', 'finetune')} run {run.path}", name=name, home=home
    )


def launch_use_model_job(
    run_dir: str | os.PathLike[str] | RunDir,
    runs_root: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
) -> RunDir:
    """:func:`use_model` as a short background job (``medsegnas models import BUNDLE --rename``,
    kind ``model-import``): checking the bundle's weights imports torch, which must not happen on
    Slicer's GUI thread. The ``done`` result holds ``model`` (the new registry id).

    Raises:
        JobError: the run has not finished, or exported no bundle.
    """
    from MedSegNASLib.panels.panel_logic import launch_model_import_job

    run, bundle = _finished_bundle(run_dir)
    return launch_model_import_job(str(bundle), runs_root, home=home)


# -- data -----------------------------------------------------------------------------------------


def describe_dataset(dataset: str | os.PathLike[str]) -> dict[str, Any]:
    """Images a dataset offers for pretraining, read from its JSON (no image is opened).

    Returns a dict with ``name``, ``path``, ``modalities``, ``unlabeled``, ``training``,
    ``validation``, ``test`` (numbers of cases) and ``missing`` (image files that do not exist,
    relative to the dataset root).
    """
    from MedSegNASLib.data.datasets import load_dataset

    description = load_dataset(Path(dataset).expanduser())
    summary: dict[str, Any] = {
        "name": description.name,
        "path": str(description.path),
        "modalities": description.modalities,
    }
    missing: list[str] = []
    for role, cases in description.groups():
        summary[role] = len(cases)
        for case in cases:
            missing += [description.display_path(image) for image in case.images if not image.is_file()]
    summary["missing"] = missing
    return summary
