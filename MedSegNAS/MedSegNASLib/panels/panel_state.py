"""The panels' state that outlives a single handler, without Qt (tested directly and through the panels).

* :class:`JobArea`: one area of a panel that follows a job: which run its buttons follow, of which
  kind (the kind the panel launched, not guessed from a ``job.json`` the worker may not have
  written yet), and what each button shows.
* :class:`ParameterNodeHolder`: which parameter node the panel uses, and whether the GUI is
  connected to it. The node is re-acquired when a scene closes, even while the module is hidden,
  because the panel's timers keep following jobs and read it.
* :class:`ReportedErrors`: errors inside timer callbacks are shown once (status line and log), not
  in a dialog on every tick.
* :class:`ModelTask`: the one model import or download that runs at a time (a worker job), its
  progress bar and the outcome line.
* :class:`FollowedJob`: a job followed without a progress display (the Evaluate button's), whose
  outcome the panel shows when it ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AreaPoll",
    "FollowedJob",
    "JobArea",
    "JobOutcome",
    "ModelTask",
    "ModelTaskProgress",
    "ParameterNodeHolder",
    "ReportedErrors",
    "is_chosen",
    "kind_of_run_folder",
]

logger = logging.getLogger(__name__)


def is_chosen(path: Any) -> bool:
    """Whether a path setting holds a path (an empty path line edit gives "" or ".")."""
    return str(path).strip() not in ("", ".")


def kind_of_run_folder(path: str | os.PathLike[str]) -> str:
    """The job kind in a run folder's name (``<kind>-<YYYYmmdd-HHMMSS>-<id>``, see ``RunDir.create``):
    known from the launch on, before the worker writes ``job.json``."""
    parts = Path(path).name.rsplit("-", 3)
    return parts[0] if len(parts) == 4 else ""


@dataclass(frozen=True)
class AreaPoll:
    """What one :meth:`JobArea.poll` found.

    Attributes:
        update: the follower's ``JobUpdate`` (None when the run could not be read).
        error: why the run cannot be followed (a damaged run folder); the area stopped following it.
        ended: the follower whose job ended ``done``: its result is to be loaded (``on_done``).
    """

    update: Any = None
    error: Exception | None = None
    ended: Any = None


class JobArea:
    """One area that follows a job: its start buttons (one per job kind), one of which turns into
    Cancel while a job of its kind runs; the others wait.

    Args:
        idle_texts: job kind -> the text of its start button (in the order of the buttons).
        run_parameter: the parameter node field that keeps the followed run folder (re-attached
            after a module reload or a restart).
        on_done: called with the run folder when the job ends ``done``.
    """

    def __init__(
        self, idle_texts: Mapping[str, str], run_parameter: str, on_done: Callable[[str], Any]
    ) -> None:
        self.idle_texts = dict(idle_texts)
        self.run_parameter, self.on_done = run_parameter, on_done
        self.follower: Any = None
        self.kind: str | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.idle_texts)

    @property
    def busy(self) -> bool:
        return self.follower is not None

    def follow(self, follower: Any, kind: str | None = None) -> None:
        """Follow ``follower``'s run, of ``kind`` (the kind launched; None: the run's ``job.json``)."""
        kind = kind or follower.kind or kind_of_run_folder(follower.run.path)
        if kind not in self.idle_texts:
            raise ValueError(
                f"a {kind or 'job of unknown kind'} run cannot be followed here ({', '.join(self.kinds)})"
            )
        self.follower, self.kind = follower, kind

    def stop(self) -> None:
        self.follower, self.kind = None, None

    def poll(self) -> AreaPoll:
        """One look at the followed job (a timer tick); the area stops following a job that ended or
        whose run folder cannot be read."""
        follower = self.follower
        try:
            update = follower.poll()
        except Exception as exc:
            self.stop()
            return AreaPoll(error=exc)
        if not update.finished:
            return AreaPoll(update)
        self.stop()
        return AreaPoll(update, ended=follower if update.state == "done" else None)

    def run_to_follow(self, saved: str, live: Mapping[str, Mapping[str, Any]]) -> str:
        """The run folder to re-attach after a module reload or a restart: the one the parameter node
        kept (``saved``), else a live run of one of this area's kinds (``live``: kind -> run summary,
        ``panel_logic.live_runs``); "" for none."""
        return saved or next((str(live[kind]["path"]) for kind in self.kinds if kind in live), "")

    def button_states(self, can_start: bool, cancel_text: str = "Cancel") -> dict[str, tuple[str, bool]]:
        """Job kind -> (button text, enabled): the followed kind's button cancels, the others wait."""
        states = {}
        for kind, idle in self.idle_texts.items():
            running = self.busy and kind == self.kind
            states[kind] = (cancel_text if running else idle, running or (not self.busy and can_start))
        return states


class ParameterNodeHolder:
    """The parameter node a panel uses, and whether its widgets are connected to it.

    Args:
        acquire: returns the scene's parameter node (the module logic's ``getParameterNode``).
        connect: ``connect(node)`` connects the widgets and observers, returns a tag.
        disconnect: ``disconnect(node, tag)`` undoes it.

    Slicer calls ``enter``/``exit`` when the module is shown/hidden and the scene sends
    StartClose/EndClose whenever the user closes it: while hidden the panel keeps the node (its
    timers read it) but not the widgets; between StartClose and EndClose there is no node.
    """

    def __init__(
        self,
        acquire: Callable[[], Any],
        connect: Callable[[Any], Any],
        disconnect: Callable[[Any, Any], None],
    ) -> None:
        self._acquire, self._connect, self._disconnect = acquire, connect, disconnect
        self.node: Any = None
        self._tag: Any = None

    @property
    def gui_connected(self) -> bool:
        return self._tag is not None

    def attach(self, gui: bool) -> Any:
        """(Re-)acquire the scene's node; connect the widgets to it when ``gui`` (module shown)."""
        node = self._acquire()
        if node is not self.node or (gui and not self.gui_connected) or (not gui and self.gui_connected):
            self.detach_gui()
            self.node = node
            if gui and node is not None:
                self._tag = self._connect(node)
        return self.node

    def detach_gui(self) -> None:
        """Disconnect the widgets; keep the node (the module is hidden, its jobs go on)."""
        if self.gui_connected and self.node is not None:
            self._disconnect(self.node, self._tag)
        self._tag = None

    def release(self) -> None:
        """The scene is closing: no node until :meth:`attach`."""
        self.detach_gui()
        self.node = None


class ReportedErrors:
    """Errors of timer callbacks: each distinct message is logged once; ``report`` says whether it is new."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def report(self, message: str, exc: BaseException | None = None) -> bool:
        """Log ``message`` the first time it is seen (with the exception); True when it was new."""
        if message in self._seen:
            return False
        self._seen.add(message)
        logger.error(message, exc_info=exc)
        return True

    def clear(self) -> None:
        self._seen.clear()


@dataclass(frozen=True)
class ModelTaskProgress:
    """What one :meth:`ModelTask.poll` shows.

    Attributes:
        bar: ``(maximum, value)`` of the progress bar; ``(0, 0)`` is Qt's busy bar (no byte count yet).
        finished: the job ended (the task is no longer followed).
        model: the registered model id, when the job ended done with one ("" otherwise).
        text: the outcome line once finished ("" before).
        where: the status line the task was started for (any object; the panel passes a label).
    """

    bar: tuple[int, int]
    finished: bool = False
    model: str = ""
    text: str = ""
    where: Any = None


class ModelTask:
    """The panel's model import or download: one at a time, a worker job followed from a timer.

    Args:
        busy_text: the error when a second task is started while one runs.
    """

    def __init__(self, busy_text: str = "A model import is running; wait for it to finish.") -> None:
        self.busy_text = busy_text
        self.follower: Any = None
        self._where: Any = None
        self._done_text = self._failed_text = ""

    @property
    def busy(self) -> bool:
        return self.follower is not None

    def check_idle(self) -> None:
        """Raise ``RuntimeError(busy_text)`` while a task runs (before launching another job)."""
        if self.busy:
            raise RuntimeError(self.busy_text)

    def start(self, follower: Any, where: Any, done_text: str, failed_text: str) -> None:
        """Follow ``follower`` (a ``JobFollower``); the outcome goes to ``where``.

        Args:
            done_text: the outcome when a model was registered, ``{id}`` its id.
            failed_text: the outcome otherwise, ``{error}`` the job's error or last line.
        """
        self.check_idle()
        self.follower, self._where = follower, where
        self._done_text, self._failed_text = done_text, failed_text

    def poll(self) -> ModelTaskProgress:
        """One look at the job (cheap: a timer tick); the task ends when the job does."""
        update = self.follower.poll() if self.follower is not None else None
        if update is None or not update.finished:
            known = update is not None and update.total > 1  # byte counts once a download started
            return ModelTaskProgress(bar=(100, update.percent) if known else (0, 0), where=self._where)
        self.follower = None
        model = str((update.status.get("result") or {}).get("model") or "")
        if update.state == "done" and model:
            return ModelTaskProgress((100, 100), True, model, self._done_text.format(id=model), self._where)
        error = update.status.get("error") or update.text
        return ModelTaskProgress((100, 0), True, "", self._failed_text.format(error=error), self._where)


@dataclass(frozen=True)
class JobOutcome:
    """What one :meth:`FollowedJob.poll` found: ``finished``; then ``ok`` (ended ``done``), ``error``
    (the job's error or last line otherwise) and ``run`` (its run folder)."""

    finished: bool
    ok: bool = False
    error: str = ""
    run: Any = None


class FollowedJob:
    """A job followed from a timer without a progress display, one at a time (the Evaluate button's)."""

    def __init__(self) -> None:
        self.follower: Any = None

    @property
    def busy(self) -> bool:
        return self.follower is not None

    def start(self, follower: Any) -> None:
        self.follower = follower

    def poll(self) -> JobOutcome:
        """One look at the job; it is no longer followed once it ended, or when reading it failed (the
        exception propagates: a timer must not report the same error on every tick)."""
        follower, self.follower = self.follower, None
        if follower is None:
            return JobOutcome(finished=False)
        update = follower.poll()
        if not update.finished:
            self.follower = follower
            return JobOutcome(finished=False)
        if update.state == "done":
            return JobOutcome(True, ok=True, run=follower.run)
        return JobOutcome(True, error=update.status.get("error") or update.text, run=follower.run)
