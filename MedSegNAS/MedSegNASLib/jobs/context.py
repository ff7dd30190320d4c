"""What a job body sees: :class:`JobContext` (progress, logs, artifacts, checkpoints, stop flag).

A body is a function ``body(ctx) -> dict | None`` run by
:func:`~MedSegNASLib.jobs.runner.run_job_command`. It reports progress between steps, saves a
checkpoint that holds everything needed to continue, and checks :attr:`JobContext.stop_requested`
at points where stopping loses nothing::

    def body(ctx: JobContext) -> dict:
        state = (ctx.load_checkpoint() if ctx.resuming else None) or {"step": 0}
        for step in range(state["step"], total):
            ...                                   # one unit of work
            state["step"] = step + 1
            ctx.progress(step + 1, total, stage="train", loss=loss)
            ctx.save_checkpoint(state)
            ctx.raise_if_stop_requested()         # cancel: state is already saved
        return {"steps": total}

Without a run directory (a foreground command without ``--run-dir``) the same body runs:
progress goes to the terminal, checkpoints are not kept and nothing can be resumed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ..atomic import write_atomic
from ..errors import JobError
from .curves import CurveRecorder
from .rundir import RunDir

#: Seconds between two rewrites of ``status.json`` for progress (events get every step).
STATUS_INTERVAL_S = 1.0
#: Seconds between two plain progress lines when the output is not a terminal (worker.log).
PLAIN_PROGRESS_INTERVAL_S = 2.0


class JobCancelled(Exception):
    """The job stopped because a stop was requested (SIGTERM, SIGINT or ``jobs cancel``).

    Raised by :meth:`JobContext.raise_if_stop_requested` after the body saved its checkpoint;
    :func:`~MedSegNASLib.jobs.runner.run_job_command` turns it into the ``cancelled`` state.
    """


def format_progress(progress: dict[str, Any]) -> str:
    """One human line for a progress record: ``train 30/100 (30%) epoch 2 loss=0.41 eta 1m05s``."""
    step, total = progress.get("step", 0), progress.get("total") or 0
    parts = [progress.get("stage") or "step", f"{step}/{total}"]
    if total:
        parts.append(f"({100.0 * step / total:.0f}%)")
    if progress.get("epoch") is not None:
        parts.append(f"epoch {progress['epoch']}")
    for key, value in (progress.get("metrics") or {}).items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    if progress.get("eta_s") is not None:
        parts.append(f"eta {format_duration(progress['eta_s'])}")
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressDisplay:
    """Shows progress and log lines: a tqdm bar on a terminal, throttled plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._bar_key: tuple[str, int] | None = None
        self._last_plain = 0.0

    def progress(self, record: dict[str, Any]) -> None:
        if self.interactive:
            self._progress_bar(record)
            return
        now = time.monotonic()
        final = record["step"] >= record["total"]
        if final or now - self._last_plain >= PLAIN_PROGRESS_INTERVAL_S:
            self._last_plain = now
            print(format_progress(record), file=self.stream, flush=True)

    def log(self, message: str, level: str = "info") -> None:
        line = message if level == "info" else f"{level}: {message}"
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._bar_key = None

    def _progress_bar(self, record: dict[str, Any]) -> None:
        from tqdm import tqdm

        key = (record.get("stage") or "", int(record["total"]))
        if self._bar_key != key:
            self.close()
            # Start at the first step seen, so the rate counts only steps done in this process.
            self._bar = tqdm(
                total=key[1],
                initial=record["step"],
                desc=key[0] or None,
                file=self.stream,
                dynamic_ncols=True,
            )
            self._bar_key = key
        postfix = dict(record.get("metrics") or {})
        if record.get("epoch") is not None:
            postfix = {"epoch": record["epoch"], **postfix}
        self._bar.set_postfix(postfix, refresh=False)
        if record["step"] != self._bar.n:
            self._bar.update(record["step"] - self._bar.n)  # redraws at most every 0.1 s
        else:
            self._bar.refresh()


class JobContext:
    """The job body's handle on its run: progress, logs, artifacts, checkpoints and stop requests.

    Args:
        run_dir: the run directory the worker owns (it holds the lock), or ``None`` for a
            foreground run without ``--run-dir``: then events only go to the terminal,
            :meth:`save_checkpoint` keeps nothing and :meth:`load_checkpoint` returns ``None``.
        resuming: ``True`` when the command was started with ``--resume``.
        display: where progress and log lines are shown (default: stderr).
    """

    def __init__(
        self, run_dir: RunDir | None = None, resuming: bool = False, *, display: ProgressDisplay | None = None
    ) -> None:
        self.run_dir = run_dir
        self.resuming = resuming
        self.display = display if display is not None else ProgressDisplay()
        self.last_progress: dict[str, Any] | None = None
        self._stop_reason: str | None = None
        self._eta_origin: tuple[tuple[str, int], float, int] | None = None
        self._last_status_write = float("-inf")
        # The compact curves file the panels plot instead of parsing the whole event log.
        self._curves = CurveRecorder(run_dir) if run_dir is not None else None

    # -- stop requests ----------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once SIGTERM/SIGINT (or :meth:`request_stop`) asked the job to stop."""
        return self._stop_reason is not None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the body to stop at its next check. Safe to call from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def raise_if_stop_requested(self) -> None:
        """Raise :class:`JobCancelled` if a stop was requested (save a checkpoint first)."""
        if self._stop_reason is not None:
            step = self.last_progress["step"] if self.last_progress else None
            where = f" after step {step}" if step is not None else ""
            raise JobCancelled(f"{self._stop_reason}: stopped{where}")

    # -- reporting --------------------------------------------------------------------------

    def progress(
        self, step: int, total: int, *, stage: str = "", epoch: int | None = None, **metrics: Any
    ) -> None:
        """Report that ``step`` of ``total`` units of ``stage`` are done, with optional metrics.

        ``eta_s`` (seconds) is estimated from the steps done since this stage started in this
        process (a resumed run does not count the steps of the earlier process).
        """
        if total < 1 or step < 0:
            raise ValueError(f"progress needs total >= 1 and step >= 0, got step={step}, total={total}")
        now = time.monotonic()
        key = (stage, total)
        eta_s: float | None = None
        if self._eta_origin is None or self._eta_origin[0] != key:
            self._eta_origin = (key, now, step)
        else:
            _, start_time, start_step = self._eta_origin
            if step > start_step:
                eta_s = round((now - start_time) / (step - start_step) * max(total - step, 0), 1)
        record: dict[str, Any] = {"type": "progress", "step": step, "total": total, "stage": stage}
        if epoch is not None:
            record["epoch"] = epoch
        record["metrics"] = metrics
        record["eta_s"] = eta_s
        if self.run_dir is not None:
            record = self.run_dir.append_event(record)
            if now - self._last_status_write >= STATUS_INTERVAL_S or step >= total or self.stop_requested:
                self._write_progress_status(record, now)
            if self._curves is not None and self._curves.add(record):
                self._curves.maybe_write(force=step >= total or self.stop_requested, now=now)
        self.last_progress = record
        self.display.progress(record)

    def flush_curves(self) -> None:
        """Write the curves file now (the runner does it when the job ends)."""
        if self._curves is not None:
            self._curves.maybe_write(force=True)

    def log(self, message: str, level: str = "info") -> None:
        """A message for the user (``level``: debug, info, warning, error)."""
        if self.run_dir is not None:
            self.run_dir.append_event({"type": "log", "level": level, "message": message})
        self.display.log(message, level)

    def artifact(self, path: str | os.PathLike[str], kind: str, **info: Any) -> None:
        """Announce a result file or folder (``kind``: e.g. ``model``, ``labelmap``, ``table``).

        The path is recorded relative to the run directory when it lies inside it, so a run
        directory copied back from a cluster still points at its own artifacts.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"artifact {path} does not exist; write it before announcing it")
        if self.run_dir is not None:
            location = self.run_dir.relative(path)
            self.run_dir.append_event({"type": "artifact", "path": location, "kind": kind, **info})
        self.display.log(f"{kind}: {path}")

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint_path(self, name: str = "last.pt") -> Path | None:
        """Where checkpoint ``name`` lives, or ``None`` without a run directory."""
        if self.run_dir is None:
            return None
        if Path(name).name != name:
            raise ValueError(f"checkpoint name {name!r} must be a plain file name")
        return self.run_dir.checkpoints / name

    def save_checkpoint(self, state: dict[str, Any], name: str = "last.pt") -> None:
        """Save ``state`` atomically to ``checkpoints/<name>`` and record a checkpoint event.

        ``state`` must load with ``torch.load(weights_only=True)``: tensors, numbers, strings,
        and lists/tuples/dicts of them (state dicts of models and optimizers qualify). A crash
        while saving leaves the previous checkpoint intact. Without a run directory this does
        nothing.
        """
        path = self.checkpoint_path(name)
        if path is None:
            return
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda handle: torch.save(state, handle))
        _fsync_dir(path.parent)
        step = self.last_progress["step"] if self.last_progress else None
        self.run_dir.append_event(
            {"type": "checkpoint", "name": name, "path": self.run_dir.relative(path), "step": step}
        )

    def load_checkpoint(self, name: str = "last.pt") -> dict[str, Any] | None:
        """The state saved by :meth:`save_checkpoint`, or ``None`` if there is none.

        Loaded with ``weights_only=True`` onto the CPU: a checkpoint cannot run code.
        """
        path = self.checkpoint_path(name)
        if path is None or not path.is_file():
            return None
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise JobError(
                f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {exc}); "
                "delete it to start this run over, or start a new run"
            ) from None

    # -- internals --------------------------------------------------------------------------

    def _write_progress_status(self, record: dict[str, Any], now: float) -> None:
        assert self.run_dir is not None
        summary = {
            key: record[key]
            for key in ("step", "total", "stage", "epoch", "metrics", "eta_s", "time")
            if key in record
        }
        fields: dict[str, Any] = {"progress": summary}
        if self.stop_requested:
            fields["state"] = "cancelling"
        self.run_dir.write_status(**fields)
        self._last_status_write = now


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
