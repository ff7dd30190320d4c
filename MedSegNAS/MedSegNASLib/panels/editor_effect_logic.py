"""What the MedSegNAS Segment Editor effect does, without Qt: Auto runs, Refine sessions, click markers.

The effect file (``SegmentEditorMedSegNASLib/SegmentEditorEffect.py``) only connects widgets, the
slice views' mouse events and a ``qt.QTimer`` to the classes here:

* :class:`EffectEditor` turns the effect's ``scriptedEffect`` into the editor interface that
  :mod:`.segment_editor_logic` applies masks through (``modifySegmentByLabelmap``,
  ``saveStateForUndo``), so the Segment Editor's masking, overwrite mode, hidden (protected)
  segments and undo apply to every change, as for Slicer's own effects.
* :class:`AutoRun`: an automatic result in the background (a ``medsegnas segment`` job for an
  automatic bundle; an interactive worker started from the automatic result for an interactive
  one), each label into the segment of the same name, other segments untouched.
* :class:`RefineSession`: one interactive worker for the selected segment, seeded with its current
  mask (whatever tool made it, empty included); each click set is one request, the reply's mask
  applied inside its box with one undo state. Nothing here waits: :meth:`RefineSession.poll` and
  :meth:`AutoRun.poll` are called from the effect's timer and return at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedSegNASError
from ..interactive.clicks import Click
from .segment_editor_logic import apply_label_map, apply_segment_mask

__all__ = [
    "AutoRun",
    "ClickMarkers",
    "EffectEditor",
    "RefineSession",
    "default_runs_folder",
    "is_interactive_bundle",
    "match_label",
    "reap_workers",
    "registry_models",
    "stop_worker",
    "xy_to_ras",
]

#: Names of the markups point lists that show the clicks (positive green, negative red).
MARKER_NAMES = {True: "MedSegNAS positive clicks", False: "MedSegNAS negative clicks"}
MARKER_COLORS = {True: (0.2, 0.9, 0.2), False: (0.95, 0.2, 0.2)}
#: Seconds a worker has to exit after ``stop`` before :func:`reap_workers` kills it (it holds
#: nothing to save: the segment has every applied answer). Nothing waits for it: a torch process
#: can take seconds to exit on a busy machine, and Finish must not hold the GUI meanwhile.
STOP_GRACE_S = 10.0
#: Workers asked to stop, with the time they are killed at; see :func:`reap_workers`.
_STOPPING: list[tuple[Any, float]] = []


# ------------------------------------------------------------------------------- models


def is_interactive_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether the bundle at ``path`` takes clicks (its metadata declares guidance channels, or its
    inference config has DeepEdit transforms); reads JSON only (no torch in Slicer's process)."""
    configs = Path(path) / "configs"
    with contextlib.suppress(OSError, ValueError):
        metadata = json.loads((configs / "metadata.json").read_text(encoding="utf-8"))
        section = metadata.get("medsegnas") if isinstance(metadata, dict) else None
        if isinstance(section, dict) and isinstance(section.get("interactive"), dict):
            return True
    with contextlib.suppress(OSError, ValueError):
        inference = json.loads((configs / "inference.json").read_text(encoding="utf-8"))
        return isinstance(inference, dict) and "deepedit_transforms" in inference
    return False


def registry_models(home: str | os.PathLike[str] | None = None) -> list[tuple[str, str, bool]]:
    """``(model id, display name, interactive)`` of every registry model, in the registry's order."""
    from ..models.registry import ModelRegistry
    from .panel_logic import model_display_name

    registry = ModelRegistry(home)
    return [
        (r.id, model_display_name(r), is_interactive_bundle(registry.model_path(r.id)))
        for r in registry.list()
    ]


def match_label(segment_name: str, labels: Sequence[str]) -> str | None:
    """The model label for a segment: same name (case and spaces ignored); the only label of a
    one-label model; else None (the user picks one)."""
    wanted = segment_name.strip().lower()
    for label in labels:
        if label.strip().lower() == wanted:
            return label
    return labels[0] if len(labels) == 1 else None


def default_runs_folder(scene: Any) -> Path:
    """The MedSegNAS panel's runs folder (its parameter node), else ``~/MedSegNAS/runs``."""
    node = scene.GetSingletonNode("MedSegNAS", "vtkMRMLScriptedModuleNode") if scene is not None else None
    value = node.GetParameter("runsFolder") if node is not None else ""
    return (
        Path(value).expanduser()
        if value and value.strip() not in ("", ".")
        else Path.home() / "MedSegNAS" / "runs"
    )


# ------------------------------------------------------------------------------- editor


class EffectEditor:
    """The editor interface of :mod:`.segment_editor_logic` over a scripted effect's ``scriptedEffect``.

    ``scriptedEffect.modifySegmentByLabelmap`` applies the editor's masking (editable area and
    intensity range, overwrite mode, hidden segments) and ``saveStateForUndo`` records an undo
    state, exactly as for Slicer's own effects.
    """

    def __init__(self, scripted_effect: Any) -> None:
        import slicer

        self.effect = scripted_effect
        modes = slicer.qSlicerSegmentEditorAbstractEffect  # the enum Slicer's own effects pass
        self.ModificationModeSet = modes.ModificationModeSet
        self.ModificationModeAdd = modes.ModificationModeAdd
        self.ModificationModeRemove = modes.ModificationModeRemove

    def GetSegmentationNode(self) -> Any:  # noqa: N802 - the logic's name
        return self.effect.parameterSetNode().GetSegmentationNode()

    def GetSegmentEditorNode(self) -> Any:  # noqa: N802
        return self.effect.parameterSetNode()

    def SaveStateForUndo(self) -> None:  # noqa: N802
        self.effect.saveStateForUndo()

    def ModifySegmentByLabelmap(  # noqa: N802
        self,
        segmentation_node: Any,
        segment_id: str,
        modifier: Any,
        mode: Any,
        _per_segment: bool,
        bypass: bool,
    ) -> None:
        self.effect.modifySegmentByLabelmap(segmentation_node, segment_id, modifier, mode, bypass)


def xy_to_ras(slice_node: Any, xy: Sequence[float]) -> tuple[float, float, float]:
    """A slice view's pixel position (``interactor.GetEventPosition()``) -> RAS millimetres (slice node's XYToRAS)."""
    matrix = slice_node.GetXYToRAS()
    ras = matrix.MultiplyPoint((float(xy[0]), float(xy[1]), 0.0, 1.0))
    return (ras[0], ras[1], ras[2])


class ClickMarkers:
    """The clicks shown in the views: two locked markups point lists (positive green, negative red)."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.nodes: dict[bool, Any] = {}

    def _node(self, positive: bool) -> Any:
        node = self.nodes.get(positive)
        if node is None or self.scene.GetNodeByID(node.GetID() or "") is None:
            import slicer

            node = slicer.vtkMRMLMarkupsFiducialNode()
            node.SetName(MARKER_NAMES[positive])
            node.SetLocked(True)  # markers, not handles: a drag must not move a click
            node.SetSaveWithScene(False)
            self.scene.AddNode(node)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*MARKER_COLORS[positive])
                display.SetColor(*MARKER_COLORS[positive])
                display.SetPointLabelsVisibility(False)
            self.nodes[positive] = node
        return node

    def add(self, ras: Sequence[float], positive: bool) -> None:
        self._node(positive).AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]))

    def count(self, positive: bool) -> int:
        node = self.nodes.get(positive)
        return node.GetNumberOfControlPoints() if node is not None else 0

    def clear(self) -> None:
        for node in self.nodes.values():
            if node.GetScene() is not None:
                node.RemoveAllControlPoints()

    def remove(self) -> None:
        for node in self.nodes.values():
            if node.GetScene() is not None:
                node.GetScene().RemoveNode(node)
        self.nodes.clear()


# ------------------------------------------------------------------------------- workers


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """``PYTHONPATH`` and thread counts for a worker started here (inside Slicer the Lib is on
    ``sys.path``, not in a child's environment); the process environment is restored after."""
    from .panel_jobs import worker_environment

    saved = dict(os.environ)
    os.environ.update(worker_environment())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def stop_worker(worker: Any) -> None:
    """Ask a worker to stop, without waiting; :func:`reap_workers` (the effect's timer) finishes it.

    Its stdin is closed after the request: end-of-file also ends a worker still loading its
    model, and frees the thread that reads stdin, so the process exits promptly.
    """
    if worker.process.poll() is None:
        with contextlib.suppress(Exception):
            worker.send({"op": "stop"})
        with contextlib.suppress(Exception):
            worker.process.stdin.close()
    _STOPPING.append((worker, time.monotonic() + STOP_GRACE_S))


def reap_workers() -> int:
    """Close the stopped workers that have exited (pipes, session folder), kill those past their
    grace time; never waits. Returns how many are still exiting."""
    left = []
    for worker, deadline in _STOPPING:
        process = worker.process
        if process.poll() is None and time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                process.kill()
        if process.poll() is None:
            left.append((worker, deadline))
            continue
        with contextlib.suppress(Exception):
            worker.stop(timeout=0.05)  # it has ended: closes the pipes and the log, removes its folder
    _STOPPING[:] = left
    return len(left)


def _start_worker(model: str, image: Path, *, start: str, home: Any, python: str | None) -> Any:
    from ..interactive.worker import InteractiveWorker
    from .panel_jobs import worker_python

    with _worker_environment():
        options: dict[str, Any] = {"python": python or worker_python(), "start": start}
        if home is not None:
            options["home"] = home
        return InteractiveWorker(model, [image], **options)


class _Exported:
    """The source volume written once for a worker, in a private folder removed with it."""

    def __init__(self, volume_node: Any) -> None:
        from .slicer_bridge import export_volume_node

        self.folder = Path(tempfile.mkdtemp(prefix="medsegnas-effect-"))
        self.image = export_volume_node(volume_node, self.folder / "image.nrrd")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class RefineSession:
    """Click refinement of one segment by one interactive worker; see the module docstring.

    Args:
        model: registry id or bundle folder of an interactive model.
        volume_node: the source volume (the worker's image; masks come on its voxel grid).
        segmentation_node, segment_id: the segment refined.
        label: the model's label the clicks are for (None: chosen by name when the worker is ready).
        home: registry home; python: the worker's interpreter (default PythonSlicer or this one).

    ``state``: ``starting`` (the worker loads the model and preprocesses the image), ``ready``,
    ``busy`` (a click set is being answered), ``stopped`` or ``failed`` (``error`` says why).
    """

    def __init__(
        self,
        model: str,
        volume_node: Any,
        segmentation_node: Any,
        segment_id: str,
        *,
        label: str | None = None,
        home: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.model, self.volume_node = model, volume_node
        self.segmentation_node, self.segment_id = segmentation_node, segment_id
        self.label = label
        self.labels: list[str] = []
        self.clicks: list[tuple[bool, tuple[float, float, float]]] = []
        self.state, self.error = "starting", ""
        self.last_seconds: float | None = None  # the worker's time for the last click set
        self.last_round_trip: float | None = None  # click to mask applied
        self.started = time.monotonic()
        self._pending: int | None = None  # id of the update in flight
        self._sent_clicks = 0
        self._sent_at = 0.0
        self._seeded_mtime: int | None = None  # the segment's state the worker knows
        self.restarted = False  # set when the clicks were dropped (the segment changed meanwhile)
        self._exported = _Exported(volume_node)
        self.worker = _start_worker(model, self._exported.image, start="empty", home=home, python=python)

    # -------------------------------------------------------------- user actions

    def add_click(self, ras: Sequence[float], positive: bool) -> None:
        """Queue a click (RAS mm); it is sent with all the clicks so far once the worker is free."""
        if self.state in ("stopped", "failed"):
            raise MedSegNASError(f"the refine session has ended ({self.error or self.state})")
        self.clicks.append((bool(positive), (float(ras[0]), float(ras[1]), float(ras[2]))))

    def stop(self) -> None:
        """Stop the worker (the segment keeps what was applied) and remove the session's files."""
        if self.state != "stopped":
            stop_worker(self.worker)
            self._exported.remove()
            self.state = "stopped"

    # -------------------------------------------------------------- timer

    def poll(self, editor: Any) -> bool:
        """Read the worker's messages, apply an answered click set through ``editor``, send the
        next; never waits. Returns whether something changed (the status line to refresh)."""
        if self.state in ("stopped", "failed"):
            return False
        changed = False
        try:
            while True:
                message = self.worker.poll()
                if message is None:
                    break
                changed = True
                self._handle(message, editor)
                if self.state == "failed":
                    return True
            if self.state == "ready" and len(self.clicks) > self._sent_clicks:
                self._send(editor)
                changed = True
            elif self.state == "starting" and self.worker.process.poll() is not None:
                message = self.worker.poll()  # the last words of a worker that ended
                if message is None:
                    self._fail("the interactive worker ended while starting (see its log)")
                    return True
                self._handle(message, editor)
                changed = True
        except MedSegNASError as exc:
            self._fail(str(exc))
            changed = True
        return changed

    def _fail(self, error: str) -> None:
        self.error = error
        stop_worker(self.worker)
        self._exported.remove()
        self.state = "failed"

    def _handle(self, message: dict[str, Any], editor: Any) -> None:
        if message.get("event") == "ready":
            self.labels = list(message.get("segments") or [])
            self.worker.info = message
            segment = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)
            if self.label is None and segment is not None:
                self.label = match_label(segment.GetName(), self.labels)
            if self.label is not None and self.label not in self.labels:
                raise MedSegNASError(f"the model segments {', '.join(self.labels)}, not {self.label!r}")
            self.state = "ready"
            return
        if message.get("event") == "error":
            raise MedSegNASError(str(message.get("error")))
        if message.get("event") == "idle-exit":
            raise MedSegNASError("the interactive worker stopped after being idle; click again to restart")
        if not message.get("ok", False):
            if message.get("id") == self._pending:
                self._pending = None
                self.state = "ready"
            raise MedSegNASError(str(message.get("error")))
        if message.get("id") != self._pending or "box" not in message:
            return  # the reply to a seed
        self._pending = None
        self.state = "ready"
        output = Path(message["output"])
        mask = np.load(output, allow_pickle=False)
        output.unlink(missing_ok=True)
        box = [tuple(b) for b in message["box"]]
        apply_segment_mask(editor, self.segment_id, mask, self.volume_node, box)  # one undo state
        self._seeded_mtime = self._segment_mtime()
        self.last_seconds = float(message.get("seconds", 0.0))
        self.last_round_trip = time.monotonic() - self._sent_at

    def _segment_mtime(self) -> int | None:
        from .slicer_bridge import _BINARY_LABELMAP

        segment = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)
        representation = segment.GetRepresentation(_BINARY_LABELMAP) if segment is not None else None
        return representation.GetMTime() if representation is not None else None

    def _send(self, editor: Any) -> None:
        if self.label is None:
            segment = self.segmentation_node.GetSegmentation().GetSegment(self.segment_id)
            name = segment.GetName() if segment is not None else self.segment_id
            raise MedSegNASError(
                f"segment '{name}' is none of the model's labels ({', '.join(self.labels)}); choose the label"
            )
        if self.segmentation_node.GetSegmentation().GetSegment(self.segment_id) is None:
            raise MedSegNASError("the refined segment was removed")
        mtime = self._segment_mtime()
        if self._seeded_mtime is None or mtime != self._seeded_mtime:
            # The worker does not know this mask yet (first click, or the segment was changed by
            # another tool or by undo): start from it, and from the clicks made since.
            if self._seeded_mtime is not None:
                self.clicks = self.clicks[self._sent_clicks :]
                self._sent_clicks = 0
                self.restarted = True
            self._seed()
            self._seeded_mtime = mtime
        clicks = [Click(self.label, positive, ras).to_dict() for positive, ras in self.clicks]
        output = self.worker.folder / f"update-{len(self.clicks)}-{time.monotonic_ns()}.npy"
        self._pending = self.worker.send(
            {"op": "update", "clicks": clicks, "label": self.label, "output": str(output)}
        )
        self._sent_clicks = len(self.clicks)
        self._sent_at = time.monotonic()
        self.state = "busy"

    def _seed(self) -> None:
        from .slicer_bridge import segments_to_labelmap

        mask = segments_to_labelmap(self.segmentation_node, self.volume_node, [(self.segment_id, 1)]).array[0]
        path = self.worker.folder / "seed.npy"
        np.save(path, mask.astype(bool), allow_pickle=False)
        self.worker.send({"op": "seed", "label": self.label, "mask": str(path)})


class AutoRun:
    """The automatic result of a model into the segmentation, in the background.

    An automatic bundle runs as a ``medsegnas segment`` job (the panel's job protocol); an
    interactive bundle as an interactive worker that starts from its automatic result (no
    clicks). :meth:`poll` applies the result once, each label into the segment of the same name
    (added when missing), one undo state for the whole result.
    """

    def __init__(
        self,
        model: str,
        volume_node: Any,
        *,
        interactive: bool,
        runs_folder: str | os.PathLike[str],
        home: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.model, self.volume_node, self.interactive = model, volume_node, interactive
        self.state, self.error, self.text = "running", "", "Starting..."
        self.segment_ids: dict[str, str] = {}
        self.started = time.monotonic()
        self.follower = self.worker = self._exported = None
        self._masks: dict[str, np.ndarray] = {}
        self._asked: dict[int, str] = {}
        if interactive:
            self._exported = _Exported(volume_node)
            self.worker = _start_worker(model, self._exported.image, start="auto", home=home, python=python)
        else:
            from .panel_logic import JobFollower, launch_segment_job

            self.follower = JobFollower(launch_segment_job(volume_node, model, runs_folder, python=python))

    def cancel(self) -> None:
        if self.follower is not None:
            from .panel_jobs import cancel_job

            with contextlib.suppress(Exception):
                cancel_job(self.follower.run)
        self._end("cancelled")

    def _end(self, state: str, error: str = "") -> None:
        if self.worker is not None:
            stop_worker(self.worker)
        if self._exported is not None:
            self._exported.remove()
        self.state, self.error = state, error

    def poll(self, editor: Any) -> bool:
        """Follow the job or worker; apply the result when it is there. Returns True once finished."""
        if self.state != "running":
            return True
        try:
            result = self._poll_job() if self.follower is not None else self._poll_worker()
            if result is None:
                return False
            labels, names, colors = result
            self.segment_ids = apply_label_map(editor, labels, names, self.volume_node, colors)
            self._end("done")
        except Exception as exc:  # a failed job or worker, or a result that does not fit
            self._end("failed", str(exc))
        return True

    def _poll_job(self) -> tuple[np.ndarray, dict[str, int], dict[str, Any]] | None:
        from .panel_logic import SEGMENT_OUTPUT
        from .slicer_bridge import _label_map_array, volume_node_to_volume

        update = self.follower.poll()
        self.text = update.text
        if not update.finished:
            return None
        if update.state != "done":
            raise MedSegNASError(update.status.get("error") or update.text)
        output = Path(
            (update.status.get("result") or {}).get("output") or self.follower.run.path / SEGMENT_OUTPUT
        )
        labels, affine, table = _label_map_array(output)
        reference = volume_node_to_volume(self.volume_node).affine
        if labels.shape != tuple(self.volume_node.GetImageData().GetDimensions()) or not np.allclose(
            affine, reference, atol=1e-3
        ):
            raise MedSegNASError("the result is not on the source volume's voxel grid")
        names = {label.name: int(label.value) for label in table if int(label.value) > 0}
        colors = {label.name: tuple(label.color) for label in table}
        return labels, names, colors

    def _poll_worker(self) -> tuple[np.ndarray, dict[str, int], dict[str, Any]] | None:
        while True:
            message = self.worker.poll()
            if message is None:
                if self.worker.process.poll() is not None and not self._asked and not self._masks:
                    raise MedSegNASError("the interactive worker ended while starting (see its log)")
                return None
            if message.get("event") == "error":
                raise MedSegNASError(str(message.get("error")))
            if message.get("event") == "ready":
                self.text = "Computing the automatic result..."
                self._values = dict(message.get("labels") or {})
                for name in message.get("segments") or []:
                    path = self.worker.folder / f"auto-{len(self._asked)}.npy"
                    self._asked[self.worker.send({"op": "mask", "label": name, "output": str(path)})] = name
                continue
            if message.get("id") in self._asked:
                if not message.get("ok"):
                    raise MedSegNASError(str(message.get("error")))
                name = self._asked.pop(message["id"])
                self._masks[name] = np.load(message["output"], allow_pickle=False)
                if not self._asked:
                    shape = next(iter(self._masks.values())).shape
                    labels = np.zeros(shape, dtype=np.int32)
                    for label_name, mask in self._masks.items():
                        labels[mask] = int(self._values.get(label_name, 0))
                    names = {n: int(self._values[n]) for n in self._masks if int(self._values.get(n, 0)) > 0}
                    return labels, names, {}


def selected_segment(editor_node: Any) -> tuple[Any, str | None]:
    """``(segmentation node, selected segment ID or None)`` of the Segment Editor's node."""
    segmentation_node = editor_node.GetSegmentationNode() if editor_node is not None else None
    segment_id = editor_node.GetSelectedSegmentID() if segmentation_node is not None else None
    if segment_id and segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        segment_id = None
    return segmentation_node, segment_id or None


def status_text(session: RefineSession | None, *, now: Callable[[], float] = time.monotonic) -> str:
    """The effect's status line for a refine session."""
    if session is None:
        return "Refine: choose an interactive model and a segment, then click in a slice view."
    if session.state == "failed":
        return f"Refine stopped: {session.error}"
    if session.state == "stopped":
        return "Refine finished: the segment is kept as it is."
    positive = sum(1 for p, _ in session.clicks if p)
    clicks = (
        f"{len(session.clicks)} click(s) ({positive} positive, {len(session.clicks) - positive} negative)"
    )
    if session.state == "starting":
        return f"Starting the interactive worker ({now() - session.started:.0f} s)... {clicks} waiting"
    last = ""
    if session.last_seconds is not None:
        last = f"; last update {session.last_seconds:.2f} s ({session.last_round_trip or 0.0:.2f} s to apply)"
    busy = ", updating..." if session.state == "busy" else ""
    label = f" as '{session.label}'" if session.label else ""
    return f"Refine{label}: {clicks}{busy}{last}"
