"""Persistent workers spoken to in JSON lines over their stdin/stdout: both sides of the channel.

The interactive worker (:mod:`MedSegNASLib.interactive.worker`) and the warm segmentation worker
(:mod:`MedSegNASLib.inference.worker`) are long-lived child processes that serve many requests.
Their channel is the worker's **stdin/stdout, one JSON object a line**; bulky data travels as
files. Why pipes and not a socket:

* nothing listens on a port: no other process or user of the machine can talk to the worker, no
  firewall prompt, no port to choose or to leak;
* the parent's death closes the pipe: the worker reads end-of-file and exits, on every OS, even
  when the parent was killed (Slicer crash); on POSIX it also exits when re-parented;
* the same worker serves Slicer (polled from a ``qt.QTimer``, no thread in Slicer), the CLI and
  the tests.

Worker side: :class:`LineChannel` (the protocol owns the real stdout; anything else printed goes
to stderr) and :func:`serve` (the request loop: a bad request gets an error line and the worker
stays; ``{"op": "stop"}``, end-of-file, a new parent or ``idle_timeout`` seconds without a request
end it). A long request may call :meth:`LineChannel.check_cancel` between steps to honour
``{"op": "cancel"}`` (or a ``stop`` or end-of-file) sent meanwhile; other requests read then wait
their turn.

Client side: :class:`PipeWorkerClient` starts the process and offers :meth:`~PipeWorkerClient.send`
/ :meth:`~PipeWorkerClient.poll` (never waits: GUI timers) and :meth:`~PipeWorkerClient.wait` /
:meth:`~PipeWorkerClient.request` (blocking: CLI, tests).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError

__all__ = ["Cancelled", "LineChannel", "PipeWorkerClient", "serve"]


class Cancelled(Exception):
    """Raised by :meth:`LineChannel.check_cancel` when the running request is to stop."""


# ------------------------------------------------------------------------------- worker side


class LineChannel:
    """The worker's end: reads requests from stdin (a reader thread), writes replies to stdout.

    Creating it moves the process's stdout to stderr (library chatter must not corrupt the
    protocol) and keeps a private handle on the real stdout for :meth:`say`.
    """

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        self._lines: queue.Queue = queue.Queue()
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._parent = os.getppid()
        self._lock = threading.Lock()
        #: Why the worker should end: None, "stop", "eof" (the parent closed the pipe or died).
        self.ending: str | None = None
        self._stop_id: Any = None
        threading.Thread(target=self._read_stdin, daemon=True, name="pipe-worker-stdin").start()

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            self._lines.put(line)
        self._lines.put(None)  # end-of-file: the parent is gone

    def say(self, message: Mapping[str, Any]) -> None:
        """Write one protocol line (thread-safe)."""
        text = json.dumps(message) + "\n"
        with self._lock:
            self._out.write(text)
            self._out.flush()

    def _parse(self, line: str | None) -> dict[str, Any] | None:
        """A request from a line; None for a blank line or a bad one (answered here)."""
        if line is None:
            self.ending = self.ending or "eof"
            return None
        if not line.strip():
            return None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise MedSegNASError("a request is a JSON object")
        except (json.JSONDecodeError, MedSegNASError) as exc:
            self.say({"id": None, "ok": False, "error": f"bad request: {exc}"})
            return None
        if request.get("op") == "stop":
            self.ending, self._stop_id = "stop", request.get("id")
            return None
        return request

    def parent_gone(self) -> bool:
        return os.name == "posix" and os.getppid() != self._parent

    def next_request(self, idle_timeout: float) -> dict[str, Any] | None:
        """The next request; None when the worker should end (:attr:`ending` says why, or
        ``"idle"`` after ``idle_timeout`` seconds without a line, ``"parent"`` when re-parented)."""
        idle_since = time.monotonic()
        while self.ending is None:
            if self._pending:
                return self._pending.popleft()
            try:
                line = self._lines.get(timeout=min(1.0, max(idle_timeout, 0.01)))
            except queue.Empty:
                if self.parent_gone():
                    self.ending = "parent"
                elif time.monotonic() - idle_since > idle_timeout:
                    self.ending = "idle"
                continue
            idle_since = time.monotonic()
            request = self._parse(line)
            if request is not None:
                return request
        return None

    def check_cancel(self, running_id: Any = None) -> None:
        """Raise :class:`Cancelled` if a ``cancel`` (of ``running_id`` or of any request), a
        ``stop`` or end-of-file arrived; other requests read meanwhile are kept for later."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            request = self._parse(line)
            if request is None:
                continue
            if request.get("op") == "cancel" and request.get("target") in (None, running_id):
                self.say({"id": request.get("id"), "ok": True, "cancelling": running_id})
                raise Cancelled("cancelled")
            self._pending.append(request)
        if self.ending is not None or self.parent_gone():
            raise Cancelled(f"the worker is ending ({self.ending or 'parent'})")

    def say_stopped(self) -> None:
        if self.ending == "stop":
            self.say({"id": self._stop_id, "ok": True, "event": "stopped"})
        elif self.ending == "idle":
            self.say({"event": "idle-exit"})


def serve(
    channel: LineChannel,
    handle: Callable[[dict[str, Any]], dict[str, Any]],
    idle_timeout: float,
    after_reply: Callable[[], None] | None = None,
) -> int:
    """Answer requests with ``handle(request) -> reply fields`` until the worker should end.

    Each request gets one line ``{"id": n, "ok": true, ...}`` or ``{"id": n, "ok": false, "error":
    "..."}`` (a :class:`~MedSegNASLib.errors.MedSegNASError`'s text, a missing field, or for a bug
    the exception's type and text, its traceback on stderr); the worker always stays. A
    ``cancel`` with nothing running is answered ``{"ok": true, "cancelling": null}``. Returns the
    exit code (0). ``after_reply`` runs after each reply is sent (work the client need not wait
    for); its errors go to stderr.
    """
    while True:
        request = channel.next_request(idle_timeout)
        if request is None:
            channel.say_stopped()
            return 0
        ident = request.get("id")
        if request.get("op") == "cancel":
            channel.say({"id": ident, "ok": True, "cancelling": None})
            continue
        try:
            reply = {"id": ident, "ok": True, **handle(request)}
        except Cancelled as exc:
            reply = {"id": ident, "ok": False, "cancelled": True, "error": str(exc)}
        except MedSegNASError as exc:
            reply = {"id": ident, "ok": False, "error": str(exc)}
        except KeyError as exc:
            reply = {"id": ident, "ok": False, "error": f"request lacks {exc}"}
        except Exception as exc:  # a bug: one line to the client, the traceback to stderr
            traceback.print_exc()
            reply = {"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        channel.say(reply)
        if after_reply is not None:
            try:
                after_reply()
            except Exception:  # never the client's problem: the worker stays
                traceback.print_exc()


# ------------------------------------------------------------------------------- client side


def _pipe_bytes_available(stream: Any) -> int:
    """Bytes waiting in a Windows pipe (``PeekNamedPipe``, as ``multiprocessing`` polls its pipes)."""
    import _winapi  # type: ignore[import-not-found]
    import msvcrt  # type: ignore[import-not-found]

    handle = msvcrt.get_osfhandle(stream.fileno())
    available, _left = _winapi.PeekNamedPipe(handle, 0)
    return int(available)


class PipeWorkerClient:
    """Starts a worker process and talks to it; blocking calls for scripts, :meth:`send`/:meth:`poll` for GUIs.

    Args:
        argv: the worker's command line.
        what: how messages name the worker ("the interactive worker").
        prefix: prefix of the private folder made for the worker's files (removed by :meth:`stop`).
        log_path: where the worker's stderr goes (default ``worker.log`` in that folder).
        env: environment additions (``OMP_NUM_THREADS`` defaults to 2).

    Use as a context manager (the worker is stopped on exit).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        what: str = "the worker",
        prefix: str = "medsegnas-worker-",
        log_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.what = what
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.log_path = Path(log_path) if log_path else self.folder / "worker.log"
        self._log = open(self.log_path, "ab")
        environment = dict(os.environ)
        environment.setdefault("OMP_NUM_THREADS", "2")
        environment.update(env or {})
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=environment
        )
        self._buffer = b""
        self._next_id = 0
        self._stopped = False

    @property
    def alive(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def _ended(self) -> MedSegNASError:
        return MedSegNASError(f"{self.what} has ended ({self._tail()})")

    # -------------------------------------------------------------- non-blocking (GUI timers)

    def send(self, request: Mapping[str, Any]) -> int:
        """Send one request; returns its id (numbered here unless ``request`` has one)."""
        self._next_id += 1
        message = {"id": self._next_id, **request}
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._ended() from None
        return int(message["id"]) if isinstance(message["id"], int) else self._next_id

    def poll(self) -> dict[str, Any] | None:
        """The next message if one is complete, else None; never waits."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            if os.name == "posix":
                ready, _, _ = select.select([fd], [], [], 0)
                if not ready:
                    return None
                chunk = os.read(fd, 1 << 16)
            else:
                available = _pipe_bytes_available(self.process.stdout)
                if not available:
                    if self.process.poll() is not None:
                        raise self._ended()
                    return None
                chunk = os.read(fd, available)
            if not chunk:
                raise self._ended()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # -------------------------------------------------------------- blocking (CLI, tests)

    def wait(self, timeout: float) -> dict[str, Any]:
        """The next message; raises when none comes within ``timeout`` s or the worker ended."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.poll()
            if message is not None:
                return message
            if time.monotonic() > deadline:
                raise MedSegNASError(f"{self.what} did not answer within {timeout:g} s")
            if self.process.poll() is not None and not self._readable():
                raise self._ended()
            time.sleep(0.005)

    def _readable(self) -> bool:
        assert self.process.stdout is not None
        if os.name != "posix":
            return bool(_pipe_bytes_available(self.process.stdout))
        return bool(select.select([self.process.stdout.fileno()], [], [], 0)[0])

    def request(
        self,
        request: Mapping[str, Any],
        timeout: float = 120.0,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send ``request`` and wait for its reply (raised as an error when not ``ok``); other
        messages meanwhile (progress) go to ``on_message``. ``timeout``: seconds without a message."""
        ident = self.send(request)
        while True:
            reply = self.wait(timeout)
            if reply.get("id") == ident and "ok" in reply:
                if not reply.get("ok"):
                    raise MedSegNASError(str(reply.get("error")))
                return reply
            if on_message is not None:
                on_message(reply)

    def stop(self, timeout: float = 10.0, *, kill: bool = True) -> None:
        """Ask the worker to stop; kill it if it does not within ``timeout`` (``kill=False``, for
        GUI callbacks that must not wait: leave it to end by itself at the end-of-file of its
        closed stdin, after its current step); remove its folder."""
        if self._stopped:
            return
        if self.process.poll() is None:
            with contextlib.suppress(MedSegNASError):
                self.send({"op": "stop"})
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                if kill:
                    self.process.kill()
                    self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._stopped = True

    def _tail(self) -> str:
        """The last line of the worker's log (why it ended), else its exit code."""
        with contextlib.suppress(OSError, ValueError):
            self._log.flush()
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit code {self.process.poll()}"

    def __enter__(self) -> PipeWorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
