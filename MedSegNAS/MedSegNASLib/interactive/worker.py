"""The persistent interactive worker and its client.

One worker process per editing session holds the model and the preprocessed image; each click
set costs one network pass over a local region. The channel is the worker's **stdin/stdout, one
JSON object a line** (:mod:`MedSegNASLib.jobs.pipe_worker`, shared with the warm segmentation
worker, says why pipes); masks travel as ``.npy`` files in a private session folder (a box of a
512^3 volume is megabytes: a file beats a pipe of JSON).

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
import io
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedSegNASError
from ..jobs.pipe_worker import LineChannel, PipeWorkerClient, serve

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

    channel = LineChannel()
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
        channel.say({"event": "error", "error": str(exc)})
        return 1
    except Exception as exc:  # a bug: one line to the client, the traceback to stderr
        import traceback

        traceback.print_exc()
        channel.say({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    channel.say(
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
    return serve(channel, lambda request: _serve(session, request), args.idle_timeout)


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


class InteractiveWorker(PipeWorkerClient):
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
        super().__init__(
            worker_argv(model, images, **options),
            what="the interactive worker",
            prefix="medsegnas-interactive-",
            log_path=log_path,
        )
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        message = self.wait(timeout)
        if message.get("event") != "ready":
            raise MedSegNASError(str(message.get("error", message)))
        self.info = message
        return message

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

    def __enter__(self) -> InteractiveWorker:
        return self


if __name__ == "__main__":
    sys.exit(main())
