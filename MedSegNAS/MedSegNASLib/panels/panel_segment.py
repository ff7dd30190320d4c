"""The panel's **Segment** button over the warm segmentation worker, without Qt.

:class:`WarmSegmenter` owns one :class:`~MedSegNASLib.inference.worker.SegmentWorker` process:
started on the first segmentation (with Slicer's PythonSlicer, see
:func:`~.panel_jobs.worker_python`), kept while the module lives, stopped on scene close,
application exit and module cleanup (and by the worker itself when idle or when Slicer is gone).
The second and later segmentations skip the process start, the imports and the model's loading.

:meth:`WarmSegmenter.start` writes the input volume node(s) into the worker's private folder,
sends the request (the panel's options, and the bounds of an optional markups ROI node as
``box``: :func:`roi_box`) and returns a :class:`WarmSegmentRequest`, which the panel's timer
polls like a job follower (:meth:`~WarmSegmentRequest.poll` never waits; it returns a
:class:`~.panel_jobs.JobUpdate`), cancels (:meth:`~WarmSegmentRequest.cancel`: read by the worker
between window batches) and, when it is done, turns into the segmentation node
(:meth:`~WarmSegmentRequest.load_result`, the same node as a ``segment`` job gives:
:func:`.panel_logic.load_segment_result`). :func:`load_result` does either.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError
from .panel_jobs import JobUpdate, progress_text, worker_environment, worker_python

__all__ = ["WarmSegmentRequest", "WarmSegmenter", "load_result", "roi_box"]

#: Most worker messages one poll reads (a timer tick stays short; the rest come next tick).
MAX_MESSAGES_PER_POLL = 200


def roi_box(roi_node: Any) -> list[float] | None:
    """A markups ROI node's bounds in world (RAS) millimetres as ``[x0, y0, z0, x1, y1, z1]``
    (``medsegnas segment --box``); None for no node. A rotated ROI gives its axis-aligned hull.

    Raises:
        MedSegNASError: the ROI is not placed yet (no control point).
    """
    if roi_node is None:
        return None
    if roi_node.GetNumberOfControlPoints() < 1:
        raise MedSegNASError(
            f"ROI '{roi_node.GetName()}' is not placed yet; place it in a view or choose None under Region"
        )
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    return [bounds[0], bounds[2], bounds[4], bounds[1], bounds[3], bounds[5]]


class WarmSegmentRequest:
    """One segmentation sent to the warm worker, followed from the panel's timer.

    Attributes:
        kind: ``"segment"`` (the panel area's job kind).
        ident: the request's id in the worker's protocol.
        reply: the worker's final answer (None while it runs): ``warm``, ``seconds``, ``labels``...
    """

    kind = "segment"

    def __init__(
        self,
        segmenter: WarmSegmenter,
        ident: int,
        volume_node: Any,
        model_spec: str,
        folder: Path,
        output: Path,
    ) -> None:
        self.segmenter, self.ident = segmenter, ident
        self.volume_node, self.model_spec = volume_node, model_spec
        self.folder, self.output = folder, output
        self.reply: dict[str, Any] | None = None
        self.progress: dict[str, Any] = {}
        self.last_message = ""
        self.plan_summary = ""  # the worker's plan of this run (peak memory, time), shown while it runs
        self.cancelling = False

    @property
    def finished(self) -> bool:
        return self.reply is not None

    def _take(self, message: Mapping[str, Any]) -> None:
        worker = self.segmenter.worker
        if worker is not None and worker.take_ready(message):
            return
        if message.get("id") != self.ident:
            return  # an answer to something else (a cancel)
        if message.get("event") == "progress":
            self.progress = dict(message)
        elif message.get("event") == "log":
            self.last_message = str(message.get("message", ""))
        elif message.get("event") == "plan":
            self.plan_summary = str(message.get("summary", ""))
        elif "ok" in message:
            self.reply = dict(message)

    def poll(self) -> JobUpdate:
        """Read what the worker said since the last call (never waits)."""
        worker = self.segmenter.worker
        if self.reply is None:
            try:
                if worker is None:
                    raise MedSegNASError("the segmentation worker was stopped")
                for _ in range(MAX_MESSAGES_PER_POLL):
                    message = worker.poll()
                    if message is None:
                        break
                    self._take(message)
                    if self.reply is not None:
                        break
            except MedSegNASError as exc:  # the worker died: the next Segment starts a new one
                self.reply = {"id": self.ident, "ok": False, "error": str(exc)}
                self.segmenter.stop()
        state, text = self.state, self.text()
        step, total = int(self.progress.get("step", 0)), max(int(self.progress.get("total", 1)), 1)
        if state == "done":
            step = total
        return JobUpdate(
            state=state,
            finished=self.finished,
            step=step,
            total=total,
            stage=str(self.progress.get("stage", "")),
            text=text,
            eta="",
            status={"state": state, "result": self.reply or {}, "error": (self.reply or {}).get("error")},
        )

    @property
    def state(self) -> str:
        if self.reply is None:
            return "cancelling" if self.cancelling else "running"
        if self.reply.get("ok"):
            return "done"
        return "cancelled" if self.reply.get("cancelled") else "failed"

    def text(self) -> str:
        """The panel's status line."""
        state = self.state
        if state == "done":
            assert self.reply is not None
            seconds = float((self.reply.get("seconds") or {}).get("total", 0.0))
            load = (
                "model already loaded"
                if self.reply.get("warm")
                else f"model loaded in {float(self.reply.get('model_load_seconds', 0.0)):.1f} s"
            )
            planned = f"; {self.plan_summary}" if self.plan_summary else ""
            return f"Done in {seconds:.1f} s ({load}{planned})"
        if state == "failed":
            return f"Failed: {(self.reply or {}).get('error')}"
        if state == "cancelled":
            return "Cancelled"
        if state == "cancelling":
            return "Cancelling: stopping after the current windows..."
        worker = self.segmenter.worker
        if worker is not None and worker.ready is None:
            return "Starting the segmentation worker..."
        if self.progress.get("stage") == "load":
            return "Loading the model and the image..."
        running = progress_text(self.progress) if self.progress else "Running..."
        return f"{running} ({self.plan_summary})" if self.plan_summary else running

    def cancel(self) -> str:
        """Ask the worker to stop this request between window batches; returns the state."""
        worker = self.segmenter.worker
        if self.reply is None and worker is not None:
            worker.send({"op": "cancel", "target": self.ident})
            self.cancelling = True
        return self.state

    def load_result(self, *, replace_existing: bool = True) -> Any:
        """The segmentation node of the finished request (named, colored segments, referencing
        the input volume; the previous result of the same input and model refilled when
        ``replace_existing``). The request's files are removed."""
        from .panel_logic import _show_result

        if self.state != "done":
            raise MedSegNASError(f"the segmentation is {self.state}; there is no result to load")
        try:
            if self.volume_node.GetScene() is None:
                raise MedSegNASError("the input volume was removed from the scene during the segmentation")
            return _show_result(self.output, None, self.volume_node, self.model_spec, replace_existing)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the request's files (inputs written for the worker, its output)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class WarmSegmenter:
    """The panel's warm segmentation worker (one process; started on first use).

    Args:
        python: the worker's interpreter (default :func:`~.panel_jobs.worker_python`).
        env: environment additions (default :func:`~.panel_jobs.worker_environment`).
        home: model registry folder (None: ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).
        idle_timeout: seconds without a request after which the worker ends by itself.
    """

    def __init__(
        self,
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        home: str | os.PathLike[str] | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.python, self.env, self.home, self.idle_timeout = python, env, home, idle_timeout
        self.worker: Any = None
        self.started_workers = 0
        self._requests = 0

    def _ensure_worker(self) -> Any:
        from ..inference.worker import DEFAULT_IDLE_TIMEOUT, SegmentWorker

        if self.worker is not None and not self.worker.alive:
            self.stop()  # it ended (idle timeout, crash): start a new one
        if self.worker is None:
            self.worker = SegmentWorker(
                python=self.python or worker_python(),
                env=self.env if self.env is not None else worker_environment(),
                home=self.home,
                idle_timeout=self.idle_timeout or DEFAULT_IDLE_TIMEOUT,
            )
            self.started_workers += 1
        return self.worker

    def start(
        self,
        volume_node: Any,
        model_spec: str | os.PathLike[str],
        options: Mapping[str, Any] | None = None,
        *,
        extra_channel_nodes: Sequence[Any] = (),
        roi_node: Any = None,
        trusted: bool = False,
    ) -> WarmSegmentRequest:
        """Send a segmentation of ``volume_node`` (and extra channels) to the worker; returns at once.

        ``options``: request fields (``device``, ``fast``, ``tta``, ``postprocess``...,
        :func:`.panel_logic.segment_options`); ``roi_node``: segment only inside this markups ROI.
        """
        from .panel_logic import model_key
        from .slicer_bridge import export_volume_node

        if volume_node is None:
            raise MedSegNASError("choose an input volume to segment")
        if not model_spec:
            raise MedSegNASError("choose a model to segment with")
        box = roi_box(roi_node)
        worker = self._ensure_worker()
        self._requests += 1
        folder = worker.folder / f"request-{self._requests}"
        folder.mkdir(parents=True)
        try:
            images = [
                str(export_volume_node(node, folder / f"channel_{index}.nrrd"))
                for index, node in enumerate([volume_node, *extra_channel_nodes])
            ]
            output = folder / "segmentation.seg.nrrd"
            request = {
                "op": "segment",
                "image": images,
                "output": str(output),
                "model": model_key(model_spec),
                **{k: v for k, v in (options or {}).items() if v is not None},
            }
            if box is not None:
                request["box"] = box
            if trusted:
                request["trust"] = True
            ident = worker.send(request)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return WarmSegmentRequest(self, ident, volume_node, model_key(model_spec), folder, output)

    def start_from_settings(self, settings: Any) -> WarmSegmentRequest:
        """:meth:`start` with the panel's settings (its parameter node: ``inputVolume``,
        ``extraChannelVolume``, ``model``, ``segmentRoi``, ``device``, ``fast``, ``tta``...)."""
        from .panel_logic import segment_options

        extra = [settings.extraChannelVolume] if settings.extraChannelVolume else []
        return self.start(
            settings.inputVolume,
            settings.model,
            segment_options(settings),
            extra_channel_nodes=extra,
            roi_node=settings.segmentRoi,
        )

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.alive

    #: Seconds :meth:`stop` waits for the worker to exit (a GUI callback must stay short); a worker
    #: busy with a batch of windows ends by itself at its next check (its stdin is closed).
    STOP_WAIT_S = 0.3

    def stop(self) -> None:
        """Stop the worker (a running request ends with it); nothing when none runs."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop(timeout=self.STOP_WAIT_S, kill=False)


def load_result(follower: Any, *, replace_existing: bool = True) -> Any:
    """The segmentation node of a finished Segment: a warm request's, or a ``segment`` job's
    (a run followed since before a restart)."""
    if isinstance(follower, WarmSegmentRequest):
        return follower.load_result(replace_existing=replace_existing)
    from .panel_logic import load_segment_result

    return load_segment_result(follower.run, replace_existing=replace_existing)
