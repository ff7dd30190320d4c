"""One run directory: its layout, atomic status writes, the append-only event log and the lock.

Layout (see ``ARCHITECTURE.md``, "Jobs")::

    <kind>-<YYYYmmdd-HHMMSS>-<6 hex>/
        job.json        what was asked; written once
        status.json     current state; replaced atomically (tmp + fsync + os.replace)
        events.jsonl    one JSON object per line, append-only
        checkpoints/    last.pt (+ best.pt ...)
        artifacts/      the results
        worker.log      stdout + stderr of the worker process
        .lock           advisory lock (``fcntl.flock``) held by the worker for its whole life

Events (every one has ``type`` and ``time``, an ISO 8601 local time with UTC offset)::

    progress    step, total, stage, epoch (when given), metrics {name: value}, eta_s (or null)
    log         level (debug|info|warning|error), message
    checkpoint  name, path (relative to the run directory), step (last progress step or null)
    artifact    path (relative when inside the run directory), kind, any extra fields
    done        state "done", result (what the job body returned)
    error       state "failed", message (one line)
    cancelled   state "cancelled", message (why / how it stopped)

Each worker process ends with one of the last three, written just before ``status.json`` gets
its final state (so does a reader that records a dead or killed worker); a resumed run appends
to the same file after it. Non-finite floats are written as
the strings "nan", "inf", "-inf" so that every line is strict JSON.

The lock is what makes a run directory safe to share between a GUI, a shell and a worker:
the operating system releases it when the worker dies, even by SIGKILL, so "lock free" means "no
live worker" without trusting pids. It is a :class:`filelock.FileLock` (``flock`` on Linux and
macOS, ``msvcrt.locking`` on Windows); pids are checked with :mod:`psutil` (with their start
time, so a reused pid is not taken for the worker).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from .. import atomic
from ..errors import JobError

#: Every state a run can be in; the last three are final.
STATES: tuple[str, ...] = ("queued", "running", "cancelling", "cancelled", "failed", "done")
FINAL_STATES: frozenset[str] = frozenset({"cancelled", "failed", "done"})

_KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def now_iso() -> str:
    """Local time with UTC offset and milliseconds, e.g. ``2025-01-31T14:02:07.125+01:00``."""
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


def hostname() -> str:
    return socket.gethostname()


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to something :func:`json.dumps` writes as strict JSON.

    Paths become strings, numpy / torch scalars and 0-d tensors become Python numbers, tuples
    and sets become lists, and non-finite floats become the strings ``"nan"``, ``"inf"``,
    ``"-inf"`` (strict JSON has no NaN, and a NaN loss is worth showing). Anything else
    unknown is written as ``str(value)``.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item) and getattr(value, "ndim", None) == 0:
        with contextlib.suppress(Exception):
            return to_jsonable(item())
    tolist = getattr(value, "tolist", None)  # arrays and tensors
    if callable(tolist):
        with contextlib.suppress(Exception):
            return to_jsonable(tolist())
    return str(value)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` (made JSON-able) to ``path`` atomically; see :mod:`MedSegNASLib.atomic`."""
    atomic.write_json_atomic(path, to_jsonable(data))


def process_start_ticks(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch, :meth:`psutil.Process.create_time`),
    or ``None`` when it does not exist or is a zombie.

    Stored next to the pid so that a pid reused by an unrelated process is not taken for the
    worker. (The name is kept from when this read ``/proc``; status files store it as ``pid_start``.)
    """
    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.Error, ValueError, TypeError):
        return None


#: Two start times of one process read at different moments differ by rounding only.
_START_TIME_TOLERANCE_S = 0.05


def pid_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True when ``pid`` is a live (not zombie) process, with the same start time if given.

    A start time recorded by an older version (``/proc`` clock ticks, an int far below any epoch
    time) is not compared: the pid alone decides then.
    """
    if not pid:
        return False
    started = process_start_ticks(pid)
    if started is None:
        return False
    if start_time is None or (isinstance(start_time, int) and start_time < 10**9):
        return True
    return abs(started - float(start_time)) < _START_TIME_TOLERANCE_S


class RunLock:
    """The worker's exclusive lock on ``<run>/.lock``; released by the system when it dies."""

    def __init__(self, path: Path, lock: FileLock) -> None:
        self.path = path
        self._lock: FileLock | None = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _file_lock(path: Path) -> FileLock:
    # A new, non-singleton lock object per call: two holders in one process must exclude each
    # other as two processes do (a launcher and the reader probing it, in the tests).
    return FileLock(str(path), thread_local=False, is_singleton=False)


class RunDir:
    """Paths, readers and writers of one run directory (see the module docstring for the layout).

    ``RunDir(path)`` does not touch the disk; :meth:`create` makes a new one and :meth:`open`
    checks that an existing folder is a run directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        #: The launcher's ``subprocess.Popen`` of the worker, when this object started one.
        self.process: Any = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def job_json(self) -> Path:
        return self.path / "job.json"

    @property
    def status_json(self) -> Path:
        return self.path / "status.json"

    @property
    def events_jsonl(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    @property
    def worker_log(self) -> Path:
        return self.path / "worker.log"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"

    # -- creation ---------------------------------------------------------------------------

    @classmethod
    def create(cls, runs_root: str | os.PathLike[str], kind: str) -> RunDir:
        """Make a new, uniquely named ``<runs_root>/<kind>-<YYYYmmdd-HHMMSS>-<6 hex>/``."""
        if not _KIND_PATTERN.match(kind):
            raise JobError(f"job kind {kind!r} must be lower-case letters, digits, '-' or '_'")
        root = Path(runs_root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        for _ in range(100):
            path = root / f"{kind}-{stamp}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            run = cls(path)
            run.ensure_layout()
            return run
        raise JobError(f"could not create a unique run directory under {root}")  # pragma: no cover

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run directory; :class:`JobError` if ``path`` is not one."""
        run = cls(path)
        if not run.is_run_dir():
            raise JobError(
                f"{path} is not a run directory (no job.json or status.json); "
                "pass a folder printed by --detach or listed by 'medsegnas jobs list'"
            )
        return run

    def is_run_dir(self) -> bool:
        return self.path.is_dir() and (self.job_json.is_file() or self.status_json.is_file())

    def ensure_layout(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        self.artifacts.mkdir(exist_ok=True)

    # -- job.json ---------------------------------------------------------------------------

    def read_job(self) -> dict[str, Any]:
        """``job.json`` as a dict; ``{}`` when it has not been written yet."""
        return self._read_json(self.job_json)

    def write_job(self, job: dict[str, Any]) -> None:
        """Write ``job.json``; it is written once, so an existing one is an error."""
        if self.job_json.exists():
            raise JobError(f"{self.job_json} already exists; a run's job.json is written once")
        write_json_atomic(self.job_json, job)

    # -- status.json ------------------------------------------------------------------------

    def read_status(self) -> dict[str, Any]:
        """``status.json`` as a dict; ``{}`` when it has not been written yet."""
        return self._read_json(self.status_json)

    def write_status(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into ``status.json`` (atomically) and return the new status.

        ``updated`` is set to now. Unknown states are refused, so a typo cannot leave a run in
        a state no reader understands.
        """
        state = fields.get("state")
        if state is not None and state not in STATES:
            raise ValueError(f"unknown job state {state!r}; expected one of {STATES}")
        status = self.read_status()
        status.update(fields)
        status["updated"] = now_iso()
        write_json_atomic(self.status_json, status)
        return status

    # -- events.jsonl -----------------------------------------------------------------------

    def append_event(self, event: dict[str, Any], *, sync: bool = False) -> dict[str, Any]:
        """Append one event (a ``time`` is added if missing) as one line with one ``write``.

        One ``O_APPEND`` write per line keeps lines whole even if a second process appends (a
        launcher recording a kill); ``sync`` also fsyncs, for events a reader must not lose.
        """
        record = {"type": event["type"], "time": event.get("time") or now_iso()}
        record.update({key: value for key, value in event.items() if key not in record})
        line = (json.dumps(to_jsonable(record), allow_nan=False) + "\n").encode("utf-8")
        fd = os.open(self.events_jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def read_events(self, offset: int = 0, max_bytes: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """Events written after byte ``offset``, and the offset to pass next time.

        Only complete lines (ending in a newline) are returned: a line the worker is writing
        right now stays unread until it is finished. A complete line that is not a JSON object
        (a damaged file) is skipped rather than stopping every reader at that point.
        ``max_bytes`` bounds what one call reads (a GUI timer's tick); the rest comes next time.
        """
        try:
            with open(self.events_jsonl, "rb") as handle:
                handle.seek(offset)
                data = handle.read() if max_bytes is None else handle.read(max(1, int(max_bytes)))
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n")
        if end < 0:
            if max_bytes is not None and len(data) >= max_bytes:  # one line longer than the bound:
                return [], offset + len(data)  # skip it rather than stall (its rest is skipped as damaged)
            return [], offset
        events: list[dict[str, Any]] = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events, offset + end + 1

    # -- lock -------------------------------------------------------------------------------

    def try_lock(self, timeout_s: float = 0.0) -> RunLock | None:
        """Take the exclusive run lock, waiting up to ``timeout_s``; ``None`` if it stays taken.

        Whoever writes the run's status or events holds this lock: the worker for its whole
        life, a launcher while it starts the worker, a reader for the instant it records that
        a worker died. Waiting a little absorbs those short holds and :meth:`lock_is_held`'s
        probes; a real second worker holds it far longer.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(self.lock_file)
        try:
            lock.acquire(timeout=max(0.0, timeout_s), poll_interval=0.05)
        except Timeout:
            return None
        return RunLock(self.lock_file, lock)

    def acquire_lock(self, timeout_s: float = 2.0) -> RunLock:
        """:meth:`try_lock`, raising :class:`JobError` when a live worker holds the lock."""
        lock = self.try_lock(timeout_s)
        if lock is None:
            pid = self.read_status().get("pid")
            raise JobError(
                f"run directory {self.path} is in use by a running worker"
                + (f" (pid {pid})" if pid else "")
                + "; wait for it to finish or stop it with 'medsegnas jobs cancel'"
            )
        return lock

    def lock_is_held(self) -> bool:
        """True while a live worker (or a launcher starting one) holds the lock: a probe that takes
        and at once drops it."""
        if not self.lock_file.exists():
            return False
        lock = self.try_lock(0.0)
        if lock is None:
            return True
        lock.release()
        return False

    # -- helpers ----------------------------------------------------------------------------

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the run directory when inside it (portable copies), else absolute."""
        absolute = Path(path).absolute()
        try:
            return absolute.relative_to(self.path).as_posix()
        except ValueError:
            return str(absolute)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise JobError(f"{path} is not valid JSON ({exc}); the run directory is damaged") from None
        if not isinstance(data, dict):
            raise JobError(f"{path} does not hold a JSON object; the run directory is damaged")
        return data
