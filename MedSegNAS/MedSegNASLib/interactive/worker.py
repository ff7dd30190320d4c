"""The persistent interactive worker and its client.

One worker process per editing session holds the model and the preprocessed image; each click
set costs one network pass over a local region. The channel is the worker's **stdin/stdout, one
JSON object a line**; masks travel as ``.npy`` files in a private session folder (a box of a
512^3 volume is megabytes: a file beats a pipe of JSON). Why pipes and not a socket:

* nothing listens on a port: no other process or user of the machine can talk to the worker, no
  firewall prompt, no port to choose or to leak;
* the parent's death closes the pipe: the worker reads end-of-file and exits, on every OS, even
  when the parent was killed (Slicer crash); on POSIX it also exits when re-parented;
* the same worker serves Slicer (polled from a ``qt.QTimer``, no thread in Slicer), the CLI and
  the tests.

Protocol (``python -m MedSegNASLib.interactive.worker --model M --image IMG ...``):

* worker -> client, first line: ``{"event": "ready", "segments": [...], "kind": ..., "shape": [I, J, K],
  "seconds": s}`` or ``{"event": "error", "error": "..."}`` (then exit 1);
* client -> worker: ``{"id": n, "op": "update", "clicks": [...], "label": NAME, "output": "m.npy"}``
  (all clicks so far; the reply's ``box`` says where the saved mask goes),
  ``{"id": n, "op": "seed", "label": NAME, "mask": "m.npy"}`` (start from a mask any tool made),
  ``{"id": n, "op": "mask", "label": NAME, "output": "m.npy"}`` (the whole mask),
  ``{"op": "stop"}``;
* worker -> client: ``{"id": n, "ok": true, ...}`` or ``{"id": n, "ok": false, "error": "..."}``;
  a bad request never ends the session.

The worker exits on ``stop``, on end-of-file (parent gone), or after ``--idle-timeout`` seconds
without a request.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedSegNASError

__all__ = ["InteractiveWorker", "main", "worker_argv"]

#: A session ends after this many seconds without a request (15 minutes), unless told otherwise.
DEFAULT_IDLE_TIMEOUT = 900.0


# ------------------------------------------------------------------------------- worker side


def _save_npy(path: str | Path, array: np.ndarray) -> None:
    from ..atomic import write_atomic

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def _load_npy(path: str | Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MedSegNASError(f"cannot read mask {path}: {exc}") from None


def _serve(session: Any, request: dict[str, Any]) -> dict[str, Any]:
    from .clicks import parse_clicks

    op = request.get("op")
    started = time.perf_counter()
    if op == "update":
        clicks = parse_clicks(request.get("clicks"), where="clicks")
        mask, box = session.update(clicks, request.get("label"))
        _save_npy(request["output"], mask)
        return {
            "box": [list(b) for b in box],
            "output": request["output"],
            "seconds": time.perf_counter() - started,
        }
    if op == "seed":
        session.seed(str(request.get("label")), _load_npy(request["mask"]))
        return {}
    if op == "mask":
        label = str(request.get("label"))
        session._check_label(label)
        _save_npy(request["output"], session.masks[label])
        return {"output": request["output"]}
    raise MedSegNASError(f"unknown op {op!r} (update, seed, mask, stop)")


def _stdin_lines(lines: queue.Queue) -> None:
    for line in sys.stdin:
        lines.put(line)
    lines.put(None)  # end-of-file: the parent is gone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m MedSegNASLib.interactive.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", nargs="+", required=True, type=Path)
    parser.add_argument("--trust", action="store_true")
    parser.add_argument("--home", default=None)
    parser.add_argument("--start", choices=("auto", "empty"), default="auto")
    parser.add_argument("--region", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    args = parser.parse_args(argv)

    # Protocol lines own the real stdout; anything else printed (library chatter) goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def say(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    parent = os.getppid()
    started = time.perf_counter()
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from ..data.io import read_volumes
        from .session import InteractiveSession, load_interactive_model

        model = load_interactive_model(args.model, trust=args.trust, home=args.home, region=args.region)
        volume = read_volumes(args.image)
        session = InteractiveSession(model, volume, start=args.start, device=args.device)
    except MedSegNASError as exc:
        say({"event": "error", "error": str(exc)})
        return 1
    except Exception as exc:  # a bug: one line to the client, the traceback to stderr
        import traceback

        traceback.print_exc()
        say({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    say(
        {
            "event": "ready",
            "segments": session.segment_names,
            "labels": {name: model.label_names[name] for name in session.segment_names},
            "kind": model.kind,
            "shape": list(session.shape),
            "region": list(model.region) if model.region else None,
            "seconds": time.perf_counter() - started,
        }
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_stdin_lines, args=(lines,), daemon=True).start()
    idle_since = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if os.name == "posix" and os.getppid() != parent:
                return 0  # re-parented: the parent died
            if time.monotonic() - idle_since > args.idle_timeout:
                say({"event": "idle-exit"})
                return 0
            continue
        if line is None:
            return 0
        idle_since = time.monotonic()
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise MedSegNASError("a request is a JSON object")
        except (json.JSONDecodeError, MedSegNASError) as exc:
            say({"id": None, "ok": False, "error": f"bad request: {exc}"})
            continue
        if request.get("op") == "stop":
            say({"id": request.get("id"), "ok": True, "event": "stopped"})
            return 0
        try:
            reply = {"id": request.get("id"), "ok": True, **_serve(session, request)}
        except MedSegNASError as exc:
            reply = {"id": request.get("id"), "ok": False, "error": str(exc)}
        except KeyError as exc:
            reply = {"id": request.get("id"), "ok": False, "error": f"request lacks {exc}"}
        except Exception as exc:
            import traceback

            traceback.print_exc()
            reply = {"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        say(reply)


# ------------------------------------------------------------------------------- client side


def worker_argv(
    model: str | Path,
    images: Sequence[str | Path],
    *,
    python: str | None = None,
    trust: bool = False,
    home: str | Path | None = None,
    start: str = "auto",
    region: int | None = None,
    threads: int | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> list[str]:
    """The command line that starts a worker (inside Slicer, ``python`` is PythonSlicer)."""
    argv = [
        python or sys.executable,
        "-m",
        "MedSegNASLib.interactive.worker",
        "--model",
        str(model),
        "--image",
    ]
    argv += [str(i) for i in images]
    argv += ["--start", start, "--idle-timeout", str(idle_timeout)]
    if trust:
        argv.append("--trust")
    if home is not None:
        argv += ["--home", str(home)]
    if region is not None:
        argv += ["--region", str(region)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


class InteractiveWorker:
    """Starts a worker process and talks to it; blocking calls for scripts, :meth:`send`/:meth:`poll` for GUIs.

    Use as a context manager (the worker is stopped on exit). Its stderr goes to ``log_path``
    (default: ``worker.log`` in the session folder, removed with it).
    """

    def __init__(
        self,
        model: str | Path,
        images: Sequence[str | Path],
        *,
        log_path: str | Path | None = None,
        **options: Any,
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="medsegnas-interactive-"))
        self.log_path = Path(log_path) if log_path else self.folder / "worker.log"
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "2")
        self.process = subprocess.Popen(
            worker_argv(model, images, **options),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
        )
        self._buffer = b""
        self._next_id = 0
        self.info: dict[str, Any] = {}

    # -------------------------------------------------------------- non-blocking (GUI timers)

    def send(self, request: dict[str, Any]) -> int:
        """Send one request; returns its id."""
        self._next_id += 1
        request = {"id": self._next_id, **request}
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise MedSegNASError(f"the interactive worker has ended ({self._tail()})") from None
        return self._next_id

    def poll(self) -> dict[str, Any] | None:
        """The next message if one is complete, else None; never waits (POSIX; elsewhere it reads a line)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            if os.name == "posix":
                ready, _, _ = select.select([fd], [], [], 0)
                if not ready:
                    return None
                chunk = os.read(fd, 1 << 16)
            else:  # Windows pipes cannot be polled: a click answers within a second
                chunk = self.process.stdout.readline()
            if not chunk:
                raise MedSegNASError(f"the interactive worker has ended ({self._tail()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    # -------------------------------------------------------------- blocking (CLI, tests)

    def wait(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.poll()
            if message is not None:
                return message
            if time.monotonic() > deadline:
                raise MedSegNASError(f"the interactive worker did not answer within {timeout:g} s")
            if self.process.poll() is not None and not self._readable():
                raise MedSegNASError(f"the interactive worker has ended ({self._tail()})")
            time.sleep(0.005)

    def _readable(self) -> bool:
        assert self.process.stdout is not None
        if os.name != "posix":
            return True
        return bool(select.select([self.process.stdout.fileno()], [], [], 0)[0])

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        message = self.wait(timeout)
        if message.get("event") != "ready":
            raise MedSegNASError(str(message.get("error", message)))
        self.info = message
        return message

    def request(self, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        ident = self.send(request)
        while True:
            reply = self.wait(timeout)
            if reply.get("id") == ident:
                if not reply.get("ok"):
                    raise MedSegNASError(str(reply.get("error")))
                return reply

    def update(
        self, clicks: Sequence[Any], label: str | None = None, timeout: float = 120.0
    ) -> tuple[np.ndarray, tuple[tuple[int, int], ...], float]:
        """Send all clicks so far; returns (mask inside box, box, seconds the worker computed)."""
        output = self.folder / f"update-{self._next_id + 1}.npy"
        items = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in clicks]
        reply = self.request(
            {"op": "update", "clicks": items, "label": label, "output": str(output)}, timeout
        )
        mask = np.load(output, allow_pickle=False)
        output.unlink()
        return mask, tuple(tuple(b) for b in reply["box"]), float(reply["seconds"])  # type: ignore[return-value]

    def seed(self, label: str, mask: np.ndarray, timeout: float = 60.0) -> None:
        path = self.folder / "seed.npy"
        _save_npy(path, np.asarray(mask, dtype=bool))
        self.request({"op": "seed", "label": label, "mask": str(path)}, timeout)

    def mask(self, label: str, timeout: float = 60.0) -> np.ndarray:
        path = self.folder / "mask.npy"
        self.request({"op": "mask", "label": label, "output": str(path)}, timeout)
        return np.load(path, allow_pickle=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop; kill it if it does not within ``timeout``; remove the session folder."""
        if self.process.poll() is None:
            with contextlib.suppress(MedSegNASError):
                self.send({"op": "stop"})
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit code {self.process.poll()}"

    def __enter__(self) -> InteractiveWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
