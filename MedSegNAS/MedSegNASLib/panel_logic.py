"""What the MedSegNAS panel does, without Qt: scene nodes in, jobs launched and followed, nodes out.

The module file ``MedSegNAS.py`` only connects widgets to these functions, so everything here is
tested with the real MRML classes of the ``slicer-core`` wheel (``Testing/test_medsegnas_logic.py``):

* **Segment**: :func:`segment_volume_node` runs a model in this process (scripts, tests);
  :func:`launch_segment_job` runs ``medsegnas segment`` as a background job and
  :func:`load_segment_result` turns its label map into the same segmentation node. The node is
  named ``"<input> - <model>"``, has the bundle's named, colored segments, references the input
  volume, and replaces the previous result of the same input and model (found by node attributes).
* **Models**: :func:`model_tooltip`, :func:`model_display_name`, :class:`BackgroundTask` for
  imports and downloads (a thread: the network and the bundle checks never block the GUI).
* **Search and train**: :func:`launch_training_job`, :func:`resume_job`, :class:`JobFollower`
  (new events, progress text, ETA), :func:`run_curves_to_plot_chart` (loss and validation Dice
  curves as plot series over table nodes, updated in place).
* **Inspect**: :func:`run_details`, :func:`run_dice_table_node`,
  :func:`load_validation_predictions`, :func:`use_run_model`.
* **Evaluate**: :func:`evaluate_segmentation_nodes` (Dice, HD95, NSD per segment into a table node).

Only ``slicer`` (MRML classes) and ``vtk`` are imported at the top; the slicer bridge, data I/O,
torch and MONAI are imported by the functions that need them, so that Slicer starts quickly and
the panel opens even before torch is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import slicer

from .atomic import write_json_atomic
from .errors import JobError, MedSegNASError
from .jobs import FINAL_STATES, RunDir, cancel, launch, list_runs, refresh_status, run_summary

if TYPE_CHECKING:  # torch is imported only where a model runs
    from .data.volume import LabelInfo, Volume
    from .inference.engine import SegmentOptions
    from .models.registry import ModelRecord

__all__ = [
    "BackgroundTask",
    "JobFollower",
    "JobUpdate",
    "RunDetails",
    "cancel_job",
    "evaluate_segmentation_nodes",
    "find_previous_result",
    "format_eta",
    "launch_segment_job",
    "launch_training_job",
    "live_runs",
    "load_segment_result",
    "load_validation_predictions",
    "missing_packages",
    "model_display_name",
    "model_tooltip",
    "read_run_curves",
    "resume_job",
    "run_curves_to_plot_chart",
    "run_details",
    "run_dice_table_node",
    "segment_argv",
    "segment_volume_node",
    "use_run_model",
    "worker_environment",
    "worker_python",
]

#: Node attributes that identify a segmentation made by the panel (re-running replaces it).
INPUT_ATTRIBUTE = "MedSegNAS.InputVolumeID"
MODEL_ATTRIBUTE = "MedSegNAS.Model"
#: Node attribute that ties plot, series and table nodes to a run directory (updated in place).
RUN_ATTRIBUTE = "MedSegNAS.Run"
ROLE_ATTRIBUTE = "MedSegNAS.Role"
#: Where a segment job launched by the panel keeps its inputs and result, inside the run folder.
SEGMENT_INPUTS = Path("artifacts") / "inputs"
SEGMENT_OUTPUT = Path("artifacts") / "segmentation.seg.nrrd"
SCENE_INFO = "scene.json"
#: Job kinds the panel launches and follows.
SEGMENT, SEARCH, TRAIN, PHANTOM = "segment", "search", "train", "phantom"
#: Python packages the jobs need (import name -> pip requirement); torch comes from the PyTorch extension.
REQUIRED_PACKAGES: dict[str, str] = {
    "torch": "torch>=2.4",
    "monai": "monai>=1.5,<1.7",
    "nibabel": "nibabel>=5.0",
    "scipy": "scipy>=1.10",
    "SimpleITK": "SimpleITK>=2.3",
}
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


# --------------------------------------------------------------------------- environment


def missing_packages(packages: Iterable[str] = REQUIRED_PACKAGES) -> list[str]:
    """Import names of ``packages`` that this Python cannot import (nothing is imported)."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def worker_python() -> str:
    """The Python that runs workers: Slicer's PythonSlicer (inside Slicer ``sys.executable`` is
    the application, whose Python launcher sits next to it), else this interpreter."""
    if Path(sys.executable).name.lower().startswith("pythonslicer"):
        return sys.executable
    return shutil.which("PythonSlicer") or sys.executable


def worker_environment() -> dict[str, str]:
    """``PYTHONPATH`` for workers: the module folder, so ``-m MedSegNASLib.cli`` imports this Lib."""
    module_folder = str(Path(__file__).resolve().parents[1])
    paths = [module_folder] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _launch(argv: Sequence[Any], run: RunDir, python: str | None, env: Mapping[str, str] | None) -> RunDir:
    return launch(
        [str(token) for token in argv],
        run,
        python=python or worker_python(),
        cwd=run.path.parent,
        env={**worker_environment(), **(env or {})},
    )


def cancel_job(run_dir: str | os.PathLike[str] | RunDir) -> str:
    """Ask a job to stop (SIGTERM to its process group) and return at once (``'cancelling'`` or
    the final state); the worker finishes its step, saves a checkpoint and ends ``cancelled``."""
    return cancel(run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir), wait=False)


def live_runs(runs_root: str | os.PathLike[str], kinds: Sequence[str] | None = None) -> dict[str, str]:
    """Newest unfinished run of each kind under ``runs_root``: ``{kind: run path}``.

    What the panel re-attaches to after Slicer restarts (dead workers are marked failed on the way).
    """
    found: dict[str, str] = {}
    for run in list_runs(Path(runs_root).expanduser()):  # newest first
        if run["state"] not in FINAL_STATES and (kinds is None or run["kind"] in kinds):
            found.setdefault(run["kind"], run["path"])
    return found


def resume_job(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Continue a stopped run from ``checkpoints/last.pt`` with the command line it was started with.

    Returns the run directory; its ``process`` is ``None`` when the run was already done.

    Raises:
        JobError: not a run directory, or ``job.json`` does not record the command.
    """
    run = RunDir.open(run_dir.path if isinstance(run_dir, RunDir) else run_dir)
    job = run.read_job()
    kind, argv = job.get("kind"), [str(token) for token in job.get("argv") or []]
    if kind not in argv:
        raise JobError(f"{run.path}: job.json does not record the '{kind}' command line to resume")
    # The recorded line starts with the interpreter and the entry point; the command follows.
    command = [token for token in argv[argv.index(kind) :] if token != "--resume"]
    return launch(
        [*command, "--resume"],
        run,
        python=python or worker_python(),
        cwd=job.get("cwd") or run.path.parent,
        env={**worker_environment(), **(env or {})},
    )


# --------------------------------------------------------------------------- following a job


def format_eta(seconds: float | None) -> str:
    """``"about 3 min left"`` from an ETA in seconds ("" when unknown)."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return ""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"about {seconds:.0f} s left"
    if seconds < 3600:
        return f"about {seconds / 60:.0f} min left"
    return f"about {seconds / 3600:.1f} h left"


def _metric_text(metrics: Mapping[str, Any]) -> str:
    shown = []
    for key in ("loss", "arch_loss", "val_dice"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            shown.append(f"{'validation Dice' if key == 'val_dice' else key.replace('_', ' ')} {value:.3f}")
    case = metrics.get("case")
    if case:
        shown.insert(0, str(case))
    return ", ".join(shown)


def progress_text(event: Mapping[str, Any]) -> str:
    """One line for a progress event: stage, epoch, step of total, main metrics, ETA."""
    parts = [str(event.get("stage") or "working")]
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']}")
    parts.append(f"{event.get('step', 0)} of {event.get('total', '?')}")
    text = ", ".join(parts)
    metrics = _metric_text(event.get("metrics") or {})
    eta = format_eta(event.get("eta_s"))
    return text + (f": {metrics}" if metrics else "") + (f" ({eta})" if eta else "")


@dataclass
class JobUpdate:
    """What changed since the last poll of a job.

    Attributes:
        state: ``status.json`` state (queued, running, cancelling, cancelled, failed, done).
        finished: the state is final.
        step, total: of the latest progress event (0, 1 before the first).
        stage: of the latest progress event.
        text: a line for the panel (progress, last message, or how it ended).
        eta: ``"about 3 min left"`` or "".
        events: the new events.
        status: the whole ``status.json``.
    """

    state: str
    finished: bool
    step: int
    total: int
    stage: str
    text: str
    eta: str
    events: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


class JobFollower:
    """Reads a job's new events and state; cheap enough for a ``qt.QTimer`` callback on the GUI thread.

    Args:
        run_dir: the run directory (a :class:`RunDir` from :func:`launch` keeps its ``process``,
            which is reaped here so that it leaves no zombie).
    """

    def __init__(self, run_dir: str | os.PathLike[str] | RunDir) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.offset = 0
        self.last_progress: dict[str, Any] | None = None
        self.last_message = ""

    @property
    def kind(self) -> str:
        with contextlib.suppress(JobError):
            return str(self.run.read_job().get("kind") or "")
        return ""

    def poll(self) -> JobUpdate:
        process = getattr(self.run, "process", None)
        if process is not None:
            process.poll()
        events, self.offset = self.run.read_events(self.offset)
        status = refresh_status(self.run)
        for event in events:
            if event.get("type") == "progress":
                self.last_progress = event
            elif event.get("type") == "log" and event.get("level") in ("info", "warning", "error"):
                self.last_message = str(event.get("message", ""))
        state = str(status.get("state") or "queued")
        progress = self.last_progress or status.get("progress") or {}
        finished = state in FINAL_STATES
        if state == "done":
            text = "Done" + (f": {self.last_message}" if self.last_message else "")
        elif state == "failed":
            text = f"Failed: {status.get('error') or 'see worker.log in the run folder'}"
        elif state == "cancelled":
            text = "Cancelled; resume it from the runs list"
        elif state == "cancelling":
            text = "Cancelling: finishing the current step and saving a checkpoint..."
        elif progress:
            text = progress_text(progress)
        else:
            text = self.last_message or ("Starting..." if state == "queued" else "Running...")
        total = int(progress.get("total") or 1)
        step = total if state == "done" else int(progress.get("step") or 0)
        return JobUpdate(
            state=state,
            finished=finished,
            step=step,
            total=total,
            stage=str(progress.get("stage") or ""),
            text=text,
            eta="" if finished else format_eta(progress.get("eta_s")),
            events=events,
            status=status,
        )


class BackgroundTask:
    """A function run in a thread (model import or download), polled from the GUI thread.

    The function gets a ``progress(done, total)`` callback as keyword argument ``progress``
    (bytes for downloads). Nothing here touches Qt or the scene: the poller does, when
    :attr:`finished` turns true.
    """

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.done_units = 0
        self.total_units: int | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self._finished = threading.Event()

        def run() -> None:
            try:
                self.result = function(*args, progress=self._progress, **kwargs)
            except BaseException as exc:  # reported to the GUI, which shows it
                self.error = exc
            finally:
                self._finished.set()

        self._thread = threading.Thread(target=run, name=f"MedSegNAS {getattr(function, '__name__', 'task')}")
        self._thread.daemon = True
        self._thread.start()

    def _progress(self, done: int, total: int | None = None) -> None:
        self.done_units, self.total_units = int(done), (int(total) if total else None)

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    @property
    def fraction(self) -> float | None:
        """Share done in [0, 1], or None when the total is unknown."""
        return min(self.done_units / self.total_units, 1.0) if self.total_units else None

    def wait(self, timeout_s: float | None = None) -> Any:
        """Block until done (scripts and tests); return the result or raise the function's error."""
        if not self._finished.wait(timeout_s):
            raise TimeoutError(f"{self._thread.name} still running after {timeout_s} s")
        if self.error is not None:
            raise self.error
        return self.result


# --------------------------------------------------------------------------- models


def model_display_name(record: ModelRecord) -> str:
    """The model's line in a model list; bundles that cannot run without trust are marked."""
    if record.needs_trust:
        return f"{record.id}  [untrusted: needs code]"
    return record.id + ("  [trusted]" if record.trusted else "")


def model_tooltip(record: ModelRecord) -> str:
    """Tooltip of a registered model: what it segments, from what, how big, where it came from, trust."""
    from .models.registry import human_size

    labels = [str(item.get("name")) for item in record.labels if int(item.get("value", 0)) != 0]
    channels = (
        f"{record.input_channels} input channel(s)" if record.input_channels else "input channels unknown"
    )
    lines = [
        f"{record.name} {record.version}".strip(),
        f"Segments: {', '.join(labels) if labels else 'not described in its metadata'}",
        f"Modality: {record.modality or 'not stated'}; {channels}",
        f"Network: {record.network or 'unknown'}; size {human_size(record.size_bytes)}",
        f"Source: {record.source}",
    ]
    if record.description:
        lines.insert(1, record.description)
    if record.trusted:
        lines.append("Trusted: may run code from its configuration and weights.")
    elif record.problems:
        lines.append(
            f"UNTRUSTED: needs code to run ({record.problems[0]}); mark it trusted only if you trust its source."
        )
    else:
        lines.append("Safe: runs without executing code from the bundle.")
    return "\n".join(lines)


def import_model_task(
    source: str, *, trusted: bool = False, home: str | os.PathLike[str] | None = None
) -> BackgroundTask:
    """Import a bundle folder, archive or URL into the registry in a thread."""
    from .models.registry import ModelRegistry

    return BackgroundTask(ModelRegistry(home).import_model, source, trusted=trusted, if_exists="rename")


def download_model_task(name: str, *, home: str | os.PathLike[str] | None = None) -> BackgroundTask:
    """Download a catalog bundle (checksum checked) into the registry in a thread."""
    from .models.registry import ModelRegistry

    return BackgroundTask(ModelRegistry(home).download, name)


# --------------------------------------------------------------------------- segment


def _looks_like_path(spec: str) -> bool:
    from .models.registry import ARCHIVE_SUFFIXES

    return (
        "/" in spec
        or os.sep in spec
        or spec.startswith((".", "~"))
        or spec.lower().endswith(ARCHIVE_SUFFIXES)
    )


def model_key(model_spec: str | os.PathLike[str]) -> str:
    """What identifies a model in node attributes: a registry id, or the bundle's absolute path."""
    text = os.fspath(model_spec)
    return str(Path(text).expanduser().absolute()) if _looks_like_path(text) else text


def model_label(model_spec: str | os.PathLike[str]) -> str:
    """The model's name in a result's node name: the registry id, or the bundle folder/archive name."""
    from .models.registry import ARCHIVE_SUFFIXES

    text = os.fspath(model_spec)
    if not _looks_like_path(text):
        return text
    name = Path(text.rstrip("/" + os.sep)).name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def result_node_name(volume_node: Any, model_spec: str | os.PathLike[str]) -> str:
    return f"{volume_node.GetName()} - {model_label(model_spec)}"


def find_previous_result(volume_node: Any, model_spec: str | os.PathLike[str]) -> Any | None:
    """The segmentation node the panel made for this input and model, if it is still in the scene."""
    scene = volume_node.GetScene()
    if scene is None:
        return None
    key = model_key(model_spec)
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    found = None
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if (
            node.GetAttribute(INPUT_ATTRIBUTE) == volume_node.GetID()
            and node.GetAttribute(MODEL_ATTRIBUTE) == key
        ):
            found = node  # the newest one
    return found


def _show_result(
    labels: Volume | str | os.PathLike[str],
    table: Sequence[LabelInfo] | None,
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    replace_existing: bool,
) -> Any:
    from .slicer_bridge import labelmap_to_segmentation_node

    previous = find_previous_result(volume_node, model_spec) if replace_existing else None
    node = labelmap_to_segmentation_node(
        labels,
        table,
        volume_node.GetScene(),
        reference_volume_node=volume_node,
        name=result_node_name(volume_node, model_spec),
        replace_node=previous,
        keep_empty_segments=True,  # every class of the model is listed, found or not
    )
    node.SetAttribute(INPUT_ATTRIBUTE, volume_node.GetID())
    node.SetAttribute(MODEL_ATTRIBUTE, model_key(model_spec))
    return node


def _input_volume(volume_node: Any, extra_channel_nodes: Sequence[Any]) -> Volume:
    """The input volume node and the extra channels stacked as one ``(C, I, J, K)`` volume."""
    import numpy as np

    from .data.volume import Volume
    from .slicer_bridge import volume_node_to_volume

    volume = volume_node_to_volume(volume_node)
    if not extra_channel_nodes:
        return volume
    arrays = [volume.array.astype(np.float32, copy=False)]
    for node in extra_channel_nodes:
        extra = volume_node_to_volume(node)
        if extra.spatial_shape != volume.spatial_shape or not np.allclose(
            extra.affine, volume.affine, atol=1e-3
        ):
            raise MedSegNASError(
                f"channel volume '{node.GetName()}' is not on the voxel grid of '{volume_node.GetName()}'; "
                "resample it onto that volume first (Resample Scalar/Vector/DWI Volume module)"
            )
        arrays.append(extra.array.astype(np.float32, copy=False))
    return Volume(np.concatenate(arrays), volume.affine, dict(volume.meta))


def segment_volume_node(
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    *,
    extra_channel_nodes: Sequence[Any] = (),
    options: SegmentOptions | None = None,
    replace_existing: bool = True,
    progress: Any = None,
    trusted: bool = False,
    home: str | os.PathLike[str] | None = None,
) -> Any:
    """Segment a volume node with a model in this process and show the result as a segmentation node.

    Args:
        volume_node: the image (scalar volume node in a scene); its first channel for the model.
        model_spec: registry id, bundle folder or bundle archive.
        extra_channel_nodes: further input channels, in the model's order, on the same voxel grid.
        options: engine options (device, fast, tta, post-processing...); default: the bundle's.
        replace_existing: refill the panel's previous result of the same input and model
            instead of adding a new node.
        progress: :class:`~MedSegNASLib.inference.engine.Progress` receiving stages and windows.
        trusted: allow the bundle to run code (as ``--trust``).
        home: registry home (default ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).

    Returns:
        The ``vtkMRMLSegmentationNode`` named ``"<input> - <model>"``: one segment per label of the
        bundle (its names and colors), reference image geometry from the input volume.
    """
    from .inference.engine import segment_volume
    from .inference.model import load_resolved_model

    volume = _input_volume(volume_node, extra_channel_nodes)
    model = load_resolved_model(os.fspath(model_spec), trust=trusted, home=home)
    result = segment_volume(volume, model, options, progress)
    return _show_result(result.labels, model.labels, volume_node, model_spec, replace_existing)


def _options_dict(options: SegmentOptions | Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    return {name: getattr(options, name) for name in vars(options)}


def segment_argv(
    inputs: Sequence[str | os.PathLike[str]],
    model_spec: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    trusted: bool = False,
) -> list[str]:
    """The ``medsegnas segment`` command line for ``options`` (a SegmentOptions or a dict of its fields;
    ``postprocess`` may be a PostprocessSpec or its text, e.g. ``"largest-component,fill-holes"``)."""
    values = _options_dict(options)
    argv = ["segment", *map(str, inputs), "--model", model_key(model_spec), "--output", str(output)]
    argv += ["--device", str(values.get("device") or "auto")]
    for flag, name in (("--fast", "fast"), ("--tta", "tta"), ("--trust", None)):
        if trusted if name is None else values.get(name):
            argv.append(flag)
    postprocess = values.get("postprocess")
    if postprocess is not None and not isinstance(postprocess, str):  # a PostprocessSpec
        steps = [f"min-size={postprocess.min_size}"] if postprocess.min_size else []
        steps += ["largest-component"] if postprocess.largest_component else []
        steps += ["fill-holes"] if postprocess.fill_holes else []
        postprocess = ",".join(steps)
    if postprocess:
        argv += ["--postprocess", str(postprocess)]
    if values.get("roi"):
        argv += ["--roi", *map(str, values["roi"])]
    for flag, name in (
        ("--overlap", "overlap"),
        ("--sw-batch-size", "sw_batch_size"),
        ("--threads", "threads"),
    ):
        if values.get(name) is not None:
            argv += [flag, str(values[name])]
    if values.get("crop") is False:
        argv.append("--no-crop")
    if values.get("amp") is not None:
        argv.append("--amp" if values["amp"] else "--no-amp")
    return argv


def launch_segment_job(
    volume_node: Any,
    model_spec: str | os.PathLike[str],
    runs_root: str | os.PathLike[str],
    options: SegmentOptions | Mapping[str, Any] | None = None,
    *,
    extra_channel_nodes: Sequence[Any] = (),
    trusted: bool = False,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Save the input volume(s) into a new run folder and start ``medsegnas segment`` on them.

    Layout: ``RUN/artifacts/inputs/channel_<n>.nrrd`` (with their geometry, linear transforms
    hardened), ``RUN/artifacts/inputs/scene.json`` (input node ID and name, model), result
    ``RUN/artifacts/segmentation.seg.nrrd``. Follow it with :class:`JobFollower`, then call
    :func:`load_segment_result`.

    Returns:
        The run directory, its ``process`` the worker.
    """
    from .slicer_bridge import export_volume_node

    run = RunDir.create(Path(runs_root).expanduser().absolute(), SEGMENT)
    inputs_dir = run.path / SEGMENT_INPUTS
    inputs_dir.mkdir(parents=True)
    inputs = [
        export_volume_node(node, inputs_dir / f"channel_{index}.nrrd")
        for index, node in enumerate([volume_node, *extra_channel_nodes])
    ]
    write_json_atomic(
        inputs_dir / SCENE_INFO,
        {
            "volume_node_id": volume_node.GetID(),
            "volume_name": volume_node.GetName(),
            "extra_channel_names": [node.GetName() for node in extra_channel_nodes],
            "model": model_key(model_spec),
        },
    )
    argv = segment_argv(inputs, model_spec, run.path / SEGMENT_OUTPUT, options, trusted=trusted)
    return _launch(argv, run, python, env)


def load_segment_result(
    run_dir: str | os.PathLike[str] | RunDir,
    volume_node: Any | None = None,
    *,
    scene: Any | None = None,
    replace_existing: bool = True,
) -> Any:
    """The segmentation node of a finished segment job (launched by :func:`launch_segment_job`).

    Args:
        run_dir: the run folder.
        volume_node: the segmented volume node; default: the node recorded at launch if it is
            still in ``scene`` (same ID and name), else the saved input loaded as a new volume
            node (after Slicer was restarted).
        scene: where to look for / load the volume (default: the volume node's, else Slicer's).

    Raises:
        JobError: the job is not done (its state and error are in the message).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    status = refresh_status(run)
    if status.get("state") != "done":
        raise JobError(
            f"segment job {run.path} is {status.get('state')}"
            + (f": {status['error']}" if status.get("error") else "")
            + "; there is no result to load"
        )
    info = json.loads((run.path / SEGMENT_INPUTS / SCENE_INFO).read_text(encoding="utf-8"))
    output = Path((status.get("result") or {}).get("output") or run.path / SEGMENT_OUTPUT)
    if volume_node is None:
        from .data.io import read_volume
        from .slicer_bridge import _resolve_scene, volume_to_volume_node

        scene = _resolve_scene(scene)
        node = scene.GetNodeByID(info.get("volume_node_id") or "")
        if node is not None and node.GetName() == info.get("volume_name"):
            volume_node = node
        else:
            saved = read_volume(run.path / SEGMENT_INPUTS / "channel_0.nrrd")
            volume_node = volume_to_volume_node(saved, scene, name=info.get("volume_name") or "Input")
    return _show_result(output, None, volume_node, info["model"], replace_existing)


# --------------------------------------------------------------------------- search and train


def training_overrides(
    *,
    epochs: int | None = None,
    patch_size: int | Sequence[int] | None = None,
    memory_budget_mb: float | None = None,
) -> dict[str, Any]:
    """Config overrides for ``--config`` from the panel's options (0 or None: the preset's choice)."""
    overrides: dict[str, Any] = {}
    if epochs:
        overrides["epochs"] = int(epochs)
    if patch_size:
        size = [int(patch_size)] * 3 if isinstance(patch_size, (int, float)) else [int(s) for s in patch_size]
        overrides["patch_size"] = size
    if memory_budget_mb:
        overrides["memory_budget_mb"] = float(memory_budget_mb)
    return overrides


def launch_training_job(
    kind: str,
    dataset: str | os.PathLike[str],
    runs_root: str | os.PathLike[str],
    *,
    preset: str = "tiny",
    overrides: Mapping[str, Any] | None = None,
    arch: str | os.PathLike[str] | None = None,
    network: str | None = None,
    device: str = "auto",
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Start ``medsegnas search`` or ``medsegnas train`` on a dataset (``dataset.json`` or its folder).

    ``overrides`` (epochs, patch_size, memory_budget_mb, any search/train setting) are written to
    ``RUN/artifacts/inputs/config.json`` and passed as ``--config``. ``train`` takes the searched
    ``arch`` (``arch.json`` or its search run folder) or a baseline ``network`` (unet, segresnet,
    swinunetr). Resume a stopped run with :func:`resume_job`.
    """
    if kind not in (SEARCH, TRAIN):
        raise MedSegNASError(f"unknown job kind {kind!r}: the panel launches '{SEARCH}' or '{TRAIN}'")
    dataset = Path(dataset).expanduser().absolute()
    if not dataset.exists():
        raise MedSegNASError(f"dataset {dataset} does not exist; choose a dataset.json or its folder")
    argv: list[Any] = [kind, "--dataset", dataset, "--preset", preset, "--device", device]
    if kind == TRAIN:
        if (arch is None) == (network is None):
            raise MedSegNASError("train needs either a searched architecture (arch) or a baseline network")
        if arch is not None:
            arch = Path(arch).expanduser().absolute()
            argv += ["--arch", arch / "artifacts" / "arch.json" if arch.is_dir() else arch]
        else:
            argv += ["--network", network]
    run = RunDir.create(Path(runs_root).expanduser().absolute(), kind)
    if overrides:
        config = write_json_atomic(run.path / SEGMENT_INPUTS / "config.json", dict(overrides))
        argv += ["--config", config]
    return _launch(argv, run, python, env)


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


def read_run_curves(run_dir: str | os.PathLike[str] | RunDir) -> RunCurves:
    """The loss and validation-Dice curves of a run, read incrementally (only new events are parsed)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    key = str(run.path.resolve())
    curves = _CURVES_CACHE.get(key)
    size = run.events_jsonl.stat().st_size if run.events_jsonl.exists() else 0
    if curves is None or size < curves.offset:  # new, or the log was replaced
        curves = RunCurves()
    events, curves.offset = run.read_events(curves.offset)
    for event in events:
        if event.get("type") == "progress":
            curves.add(event)
    _CURVES_CACHE[key] = curves
    return curves


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
        parameters = results.get("parameters")
        if isinstance(parameters, dict):
            lines.append("Parameters: " + ", ".join(f"{k} {_number_text(v)}" for k, v in parameters.items()))
        elif parameters is not None:
            lines.append(f"Parameters: {_number_text(parameters)}")
        memory = results.get("memory")
        if isinstance(memory, dict) and memory:
            lines.append("Memory (MB): " + ", ".join(f"{k} {_number_text(v)}" for k, v in memory.items()))
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
    from .data.datasets import load_dataset
    from .data.volume import LabelInfo

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
    from .data.io import read_volume
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
        loaded.append((volume_node, prediction, truth))
    return loaded


def use_run_model(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    name: str | None = None,
    home: str | os.PathLike[str] | None = None,
) -> ModelRecord:
    """Register a run's exported bundle (``artifacts/model``) in the model registry (a copy)."""
    from .models.registry import register_model

    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    model = run_details(run).model
    if model is None:
        raise MedSegNASError(f"run {run.path} has no exported model (artifacts/model) to use")
    kind = run.read_job().get("kind") or "run"
    return register_model(model, source=f"{kind} run {run.path}", name=name, home=home)


# --------------------------------------------------------------------------- evaluate


def _segments(segmentation_node: Any) -> list[tuple[str, str, int | None]]:
    """(segment ID, name, stored label value or None) of every segment, in order."""
    import vtk

    from .data.io import LABEL_VALUE_TAG

    segmentation = segmentation_node.GetSegmentation()
    found = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        tag = vtk.reference("")
        value = None
        if segment.GetTag(LABEL_VALUE_TAG, tag) and str(tag).strip().isdigit():
            value = int(str(tag))
        elif segment_id.startswith("label_") and segment_id[6:].isdigit():
            value = int(segment_id[6:])
        found.append((segment_id, segment.GetName(), value))
    return found


def match_segments(segmentation_node: Any, reference_node: Any) -> list[tuple[str, str | None, str]]:
    """Pairs (reference segment ID, segmentation segment ID or None, name), matched by segment name,
    then by stored label value; reference segments in order."""
    candidates = _segments(segmentation_node)
    used: set[str] = set()
    pairs = []
    for ref_id, ref_name, ref_value in _segments(reference_node):
        match = next((sid for sid, name, _ in candidates if name == ref_name and sid not in used), None)
        if match is None and ref_value is not None:
            match = next(
                (sid for sid, _, value in candidates if value == ref_value and sid not in used), None
            )
        if match is not None:
            used.add(match)
        pairs.append((ref_id, match, ref_name))
    return pairs


def _geometry_volume_node(reference_node: Any, other_node: Any) -> Any:
    """A volume node defining the grid to compare on: the volume the reference segmentation is
    referenced to, else the other's, else one made from the reference's own image geometry."""
    for node in (reference_node, other_node):
        volume = node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole())
        if volume is not None and volume.IsA("vtkMRMLVolumeNode") and volume.GetImageData() is not None:
            return volume
    geometry = reference_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    image = slicer.vtkOrientedImageData()
    if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False):
        raise MedSegNASError(
            f"reference segmentation '{reference_node.GetName()}' has no reference geometry; "
            "set its source geometry to a volume (Segment Editor) first"
        )
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    extent = image.GetExtent()
    plain = vtk.vtkImageData()
    plain.SetDimensions(extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    plain.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    volume = slicer.vtkMRMLScalarVolumeNode()  # temporary, never added to the scene
    origin_shift = [sum(matrix.GetElement(r, c) * extent[2 * c] for c in range(3)) for r in range(3)]
    for r in range(3):
        matrix.SetElement(r, 3, matrix.GetElement(r, 3) + origin_shift[r])
    volume.SetIJKToRASMatrix(matrix)
    volume.SetAndObserveImageData(plain)
    return volume


def evaluate_segmentation_nodes(
    segmentation_node: Any,
    reference_node: Any,
    scene: Any,
    *,
    tolerance_mm: float = 2.0,
    table_node: Any | None = None,
) -> Any:
    """Dice, HD95 (mm) and NSD of every reference segment into a table node.

    Segments are matched by name, then by stored label value (:func:`match_segments`); both
    segmentations are exported on one grid (the volume the reference is referenced to) with
    :func:`~MedSegNASLib.slicer_bridge.segments_to_labelmap`, then scored by
    :func:`~MedSegNASLib.evaluation.metrics.label_metrics` (absent-class rules there: a missed
    segment scores Dice 0, HD95 inf). Where segments of one segmentation overlap, the later wins.

    Returns:
        The ``vtkMRMLTableNode`` ``"<segmentation> vs <reference>"``, one row per reference segment:
        ``segment``, ``matched`` (segment name in the evaluated segmentation, "" when none),
        ``dice``, ``hd95_mm``, ``nsd``, ``voxels_reference``, ``voxels_segmentation``, ``status``.
    """
    from .data.volume import LabelInfo
    from .evaluation.metrics import label_metrics
    from .slicer_bridge import metrics_to_table_node, segments_to_labelmap

    pairs = match_segments(segmentation_node, reference_node)
    if not pairs:
        raise MedSegNASError(f"reference segmentation '{reference_node.GetName()}' has no segments")
    grid = _geometry_volume_node(reference_node, segmentation_node)
    reference = segments_to_labelmap(
        reference_node, grid, [(ref_id, number) for number, (ref_id, _, _) in enumerate(pairs, start=1)]
    )
    evaluated = segments_to_labelmap(
        segmentation_node,
        grid,
        [(match, number) for number, (_, match, _) in enumerate(pairs, start=1) if match is not None],
    )
    labels = [LabelInfo(number, name, (0.0, 0.0, 0.0)) for number, (_, _, name) in enumerate(pairs, start=1)]
    scores = label_metrics(
        evaluated.array[0], reference.array[0], labels, reference.spacing, tolerance_mm=tolerance_mm
    )
    segmentation = segmentation_node.GetSegmentation()
    rows = [
        {
            "segment": score.name,
            "matched": segmentation.GetSegment(match).GetName() if match else "",
            "dice": score.dice,
            "hd95_mm": score.hd95_mm,
            "nsd": score.nsd,
            "voxels_reference": score.voxels_ref,
            "voxels_segmentation": score.voxels_pred,
            "status": score.status,
        }
        for score, (_, match, _) in zip(scores, pairs, strict=True)
    ]
    name = f"{segmentation_node.GetName()} vs {reference_node.GetName()}"
    return metrics_to_table_node(rows, scene, name, replace_node=table_node)


# --------------------------------------------------------------------------- phantom data


def load_dataset_case(
    dataset: str | os.PathLike[str], case_index: int = 0, scene: Any | None = None
) -> tuple[Any, Any | None]:
    """Load training case ``case_index`` of a dataset as a volume node and a segmentation node.

    Args:
        dataset: ``dataset.json``, its folder, or a datalist.
        case_index: index into the dataset's training cases.
        scene: MRML scene (default: the application's).

    Returns:
        ``(volume node, segmentation node)``; the segmentation is ``None`` for an unlabelled case.
    """
    from .data.datasets import load_dataset
    from .data.io import read_volume
    from .slicer_bridge import _resolve_scene, labelmap_to_segmentation_node, volume_to_volume_node

    description = load_dataset(dataset)
    if not 0 <= case_index < len(description.cases):
        raise MedSegNASError(
            f"dataset {description.path} has {len(description.cases)} training case(s); no case {case_index}"
        )
    case = description.cases[case_index]
    scene = _resolve_scene(scene)
    volume_node = volume_to_volume_node(read_volume(case.images[0]), scene, name=case.name)
    segmentation_node = None
    if case.label is not None:
        segmentation_node = labelmap_to_segmentation_node(
            case.label,
            description.labels or None,
            scene,
            reference_volume_node=volume_node,
            name=f"{case.name} labels",
        )
    return volume_node, segmentation_node
