"""The warm segmentation worker: one process serving many ``segment`` requests, models kept loaded.

A ``medsegnas segment`` job pays for a process start, the imports (torch, MONAI) and the model's
loading on every run; inside Slicer every click of **Segment** would pay them again. This worker
pays them once: the panel starts it on the first segmentation and the second and later ones skip
straight to the image. The channel is :mod:`MedSegNASLib.jobs.pipe_worker` (JSON lines over
stdin/stdout, as the interactive worker; no port, no thread in Slicer).

Start it with ``medsegnas segment-worker`` or ``python -m MedSegNASLib.inference.worker``
(``--idle-timeout S``, ``--max-models N``, ``--home DIR``). Protocol:

* worker -> client, first line: ``{"event": "ready", "pid": ..., "seconds": s}`` (imports done);
* client -> worker: ``{"id": n, "op": "segment", "image": PATH or [PATH, ...], "output": PATH,
  "model": SPEC, ...}`` with the options of ``medsegnas segment`` under their long names
  (``device``, ``fast``, ``tta``, ``postprocess`` ("largest-component,fill-holes"), ``roi``
  ([x, y, z]), ``overlap``, ``sw_batch_size``, ``crop`` (false: ``--no-crop``), ``amp``
  (true/false), ``threads``, ``box`` ([x0, y0, z0, x1, y1, z1] in RAS mm), ``box_voxels``,
  ``trust``), checked by the CLI's own parser;
  ``{"id": n, "op": "cancel"}`` (the running request, or ``"target": m``), ``{"op": "stop"}``;
* worker -> client while a request runs: ``{"id": n, "event": "progress", "stage": ..., "step": k,
  "total": t}``, ``{"id": n, "event": "log", "message": ...}`` and, before the segmentation runs,
  ``{"id": n, "event": "plan", "summary": "planned: peak ... GiB, about ... s", "plan": {...}}``;
* worker -> client at its end: ``{"id": n, "ok": true, "output": ..., "labels": [...], "voxels":
  {...}, "seconds": {... "load", "infer", "total"}, "warm": bool, ...}`` or ``{"id": n, "ok":
  false, "error": ..., "cancelled": true?}``. A bad request never ends the worker.

Models are kept by what loading depends on (the bundle, fingerprinted by its files' sizes and
times, so a replaced bundle is loaded again; ``trust``; the registry home), at most
``--max-models`` (least recently used evicted). Per-request options (device, ``fast``, windows,
box...) do not change the loaded network: the engine moves it to the device and back for each
run. Loading goes through :func:`~.model.load_resolved_model` as ``medsegnas segment`` does: an
untrusted bundle runs without its code; ``trust`` in a request is ``--trust``. A bundle compiled
by an earlier run or session (:mod:`.compiled`) loads compiled for the request's device and
precision (no MONAI import: the first request of a session is faster too); one loaded the full
way is compiled after its reply is sent (the next request waits for that, the client does not).

Cancel is read between window batches (the engine's ``Progress.check_stop``): the request ends
``cancelled``, nothing is written, the model stays loaded. The worker ends on ``stop``,
end-of-file (its parent is gone), re-parenting, or ``--idle-timeout`` seconds without a request.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MedSegNASError
from ..jobs.pipe_worker import LineChannel, PipeWorkerClient, serve

__all__ = ["DEFAULT_IDLE_TIMEOUT", "ModelCache", "SegmentWorker", "main", "request_argv", "worker_argv"]

#: The worker ends after this many seconds without a request (10 minutes), unless told otherwise.
DEFAULT_IDLE_TIMEOUT = 600.0
#: Models kept loaded (least recently used evicted).
DEFAULT_MAX_MODELS = 2
#: Request fields that are ``medsegnas segment`` options, and how each becomes command-line words.
_FLAGS = ("fast", "tta", "trust")
_VALUES = ("device", "postprocess", "overlap", "sw_batch_size", "threads")
_LISTS = ("roi",)
_BOXES = ("box", "box_voxels")
_REQUEST_FIELDS = {"id", "op", "image", "output", "model", "crop", "amp", *_FLAGS, *_VALUES, *_LISTS, *_BOXES}


# ------------------------------------------------------------------------------- requests


def request_argv(request: Mapping[str, Any]) -> list[str]:
    """The ``medsegnas segment`` command line a segment request stands for."""
    unknown = sorted(set(request) - _REQUEST_FIELDS)
    if unknown:
        raise MedSegNASError(f"unknown request field(s) {', '.join(unknown)}")
    images = request["image"]
    images = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    argv = [
        "segment",
        *map(str, images),
        "--model",
        str(request["model"]),
        "--output",
        str(request["output"]),
    ]
    argv += [f"--{name.replace('_', '-')}" for name in _FLAGS if request.get(name)]
    for name in _VALUES:
        if request.get(name) is not None:
            argv.append(f"--{name.replace('_', '-')}={request[name]}")  # "=": a value may start with "-"
    for name in _LISTS:
        if request.get(name) is not None:
            argv += [f"--{name}", *map(str, request[name])]
    for name in _BOXES:
        if request.get(name) is not None:
            value = request[name]
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            argv.append(f"--{name.replace('_', '-')}={text}")
    if request.get("crop") is False:
        argv.append("--no-crop")
    if request.get("amp") is not None:
        argv.append("--amp" if request["amp"] else "--no-amp")
    return argv


def _segment_parser() -> argparse.ArgumentParser:
    """``medsegnas segment``'s own parser, raising instead of exiting."""
    from .commands import register

    root = argparse.ArgumentParser(prog="medsegnas", add_help=False)
    commands = root.add_subparsers(dest="command")
    register(commands)

    def refuse(message: str) -> None:
        raise MedSegNASError(f"bad segment request: {message}")

    for parser in (root, *commands.choices.values()):
        parser.error = refuse  # type: ignore[method-assign]
    return root


def _parse(request: Mapping[str, Any], parser: argparse.ArgumentParser) -> argparse.Namespace:
    try:
        return parser.parse_args(request_argv(request))
    except SystemExit:  # --help and friends
        raise MedSegNASError("bad segment request") from None


# ------------------------------------------------------------------------------- models


def _bundle_fingerprint(spec: str, home: str | None) -> tuple:
    """What identifies the bundle's contents now: its resolved folder (or archive file) and the
    sizes and modification times of its configs and weights."""
    from ..models.registry import resolve_model

    path = Path(spec).expanduser()
    if path.is_file():  # an archive: its own stat (resolving unpacks/hashes it)
        stat = path.stat()
        return (str(path.absolute()), stat.st_size, stat.st_mtime_ns)
    try:
        folder = resolve_model(spec, home=home).path
    except Exception:
        return (spec,)  # loading will say what is wrong
    files = []
    for sub in ("configs", "models"):
        for item in sorted((folder / sub).glob("*")):
            if item.is_file():
                stat = item.stat()
                files.append((item.name, stat.st_size, stat.st_mtime_ns))
    return (str(folder), tuple(files))


class ModelCache:
    """Loaded models by (model spec, bundle fingerprint, trust, home); least recently used evicted.

    Args:
        max_models: how many to keep (at least 1).
        home: registry home (None: ``$MEDSEGNAS_HOME`` or ``~/.medsegnas``).
    """

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS, home: str | None = None) -> None:
        self.max_models = max(1, int(max_models))
        self.home = home
        self._models: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def get(self, spec: str, *, trust: bool, compiled: tuple[Any, str] | None = None) -> tuple[Any, bool]:
        """``(model, warm)``: warm when it was loaded already. ``compiled``: ``(device, precision)``
        of the request, whose compiled form of the bundle is taken when the cache has one (a
        compiled model runs on its device and precision only, so they are part of the key)."""
        from .model import load_resolved_model

        target = (compiled[0].type, compiled[1]) if compiled is not None else None
        key = (spec, _bundle_fingerprint(spec, self.home), bool(trust), self.home, target)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key], True
        stale = [k for k in self._models if k[0] == spec and k[2:] == key[2:]]  # the bundle changed
        for old in stale:
            del self._models[old]
        while len(self._models) >= self.max_models:
            self._models.popitem(last=False)
        gc.collect()  # the evicted networks' memory back before the next one loads
        model = load_resolved_model(spec, trust=trust, home=self.home, compiled=compiled)
        self._models[key] = model
        return model, False

    def __len__(self) -> int:
        return len(self._models)


class _RequestContext:
    """What :func:`~.commands.segment_loaded` reports through, as protocol lines of request ``ident``."""

    def __init__(self, channel: LineChannel, ident: Any) -> None:
        self.channel, self.ident = channel, ident

    def progress(self, step: int, total: int, **fields: Any) -> None:
        self.channel.say(
            {"id": self.ident, "event": "progress", "step": int(step), "total": int(total), **fields}
        )

    def log(self, message: str) -> None:
        self.channel.say({"id": self.ident, "event": "log", "message": str(message)})

    def report_plan(self, plan: Any) -> None:
        """The plan of this request, before it runs: ``{"event": "plan", "summary": ..., "plan": {...}}``."""
        self.channel.say(
            {"id": self.ident, "event": "plan", "summary": plan.summary(), "plan": plan.to_dict()}
        )

    def raise_if_stop_requested(self) -> None:
        self.channel.check_cancel(self.ident)

    def artifact(self, *args: Any, **kwargs: Any) -> None:
        pass


def segment_request(
    request: Mapping[str, Any],
    cache: ModelCache,
    channel: LineChannel,
    parser: argparse.ArgumentParser,
    later: list[Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Serve one ``segment`` request: the fields of the reply (see the module docstring).

    A bundle loaded the full way is compiled for the next sessions (:mod:`.compiled`) after the
    reply: the work is appended to ``later`` (the worker runs it once the reply is sent)."""
    from ..data.io import read_volumes
    from .commands import (
        _compile_for_next_runs,
        _model_spec,
        check_output_path,
        compiled_target,
        segment_loaded,
        segment_options_from_args,
    )

    args = _parse(request, parser)
    output = check_output_path(args.output)
    inputs = [p.expanduser().absolute() for p in args.inputs]
    for path in inputs:
        if not path.exists():
            raise MedSegNASError(f"input {path} does not exist")
    options = segment_options_from_args(args)
    ctx = _RequestContext(channel, request.get("id"))
    started = time.perf_counter()
    ctx.progress(0, 2, stage="load")
    spec = _model_spec(args.model)
    model, warm = cache.get(spec, trust=args.trust, compiled=None if args.trust else compiled_target(options))
    model_seconds = time.perf_counter() - started
    volume = read_volumes(inputs)
    volume.meta.setdefault("path", str(inputs[0]))
    ctx.progress(2, 2, stage="load")
    ctx.log(f"model '{model.name}' {'already loaded' if warm else f'loaded in {model_seconds:.1f} s'}")
    summary = segment_loaded(volume, model, output, options, ctx, started=started)
    summary["compiled"] = model.compiled_for is not None
    if model.compiled_for is None and not args.trust and not warm and later is not None:
        log = _StderrContext()
        later.append(lambda: _compile_for_next_runs(model, volume, options, dict(summary), log))
    return {
        **summary,
        "labels": [lb.name for lb in model.labels],
        "model": model.name,
        "warm": warm,
        "model_load_seconds": round(model_seconds, 3),
        "models_loaded": len(cache),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medsegnas segment-worker", description=__doc__.split("\n")[0])
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    return run_worker(args)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="S",
        help=f"end after S seconds without a request (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-models",
        type=int,
        default=DEFAULT_MAX_MODELS,
        metavar="N",
        help=f"models kept loaded, least recently used evicted (default {DEFAULT_MAX_MODELS})",
    )
    parser.add_argument(
        "--home", default=None, help="model registry folder (default: $MEDSEGNAS_HOME or ~/.medsegnas)"
    )


def run_worker(args: argparse.Namespace) -> int:
    """Serve requests on stdin/stdout until stopped (the worker's whole life)."""
    channel = LineChannel()
    started = time.perf_counter()
    try:
        import torch  # noqa: F401 - the imports every request needs, paid before "ready"

        from . import engine  # noqa: F401
        from .optimize import reuse_freed_memory

        reuse_freed_memory()  # a worker process: no fresh pages for every batch of windows
        segment_parser = _segment_parser()
    except Exception as exc:
        import traceback

        traceback.print_exc()
        channel.say({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    channel.say({"event": "ready", "pid": os.getpid(), "seconds": round(time.perf_counter() - started, 3)})
    cache = ModelCache(args.max_models, args.home)
    later: list[Callable[[], None]] = []

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "segment":
            return segment_request(request, cache, channel, segment_parser, later)
        if op == "ping":
            return {"models_loaded": len(cache)}
        raise MedSegNASError(f"unknown op {op!r} (segment, cancel, ping, stop)")

    def after_reply() -> None:
        while later:
            later.pop(0)()

    return serve(channel, handle, args.idle_timeout, after_reply)


class _StderrContext:
    """Where work done after a reply reports: the worker's stderr (its log file)."""

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- client side


def worker_argv(
    *,
    python: str | None = None,
    home: str | os.PathLike[str] | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_models: int = DEFAULT_MAX_MODELS,
) -> list[str]:
    """The command line that starts a worker (inside Slicer, ``python`` is PythonSlicer)."""
    argv = [python or sys.executable, "-m", "MedSegNASLib.inference.worker"]
    argv += ["--idle-timeout", str(idle_timeout), "--max-models", str(max_models)]
    if home is not None:
        argv += ["--home", str(home)]
    return argv


class SegmentWorker(PipeWorkerClient):
    """A warm segmentation worker and its client (:class:`~MedSegNASLib.jobs.pipe_worker.PipeWorkerClient`).

    Args:
        env: environment additions for the worker (e.g. ``PYTHONPATH`` inside Slicer).
        log_path: the worker's stderr (default ``worker.log`` in its private folder).
        **options: :func:`worker_argv`'s.
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            worker_argv(**options),
            what="the segmentation worker",
            prefix="medsegnas-segment-",
            log_path=log_path,
            env=env,
        )
        self.ready: dict[str, Any] | None = None

    def take_ready(self, message: Mapping[str, Any]) -> bool:
        """Whether ``message`` is the worker's first line (kept in :attr:`ready`); raises its error."""
        if message.get("event") == "error":
            raise MedSegNASError(f"the segmentation worker could not start: {message.get('error')}")
        if message.get("event") == "ready":
            self.ready = dict(message)
            return True
        return False

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        while self.ready is None:
            self.take_ready(self.wait(timeout))
        return self.ready

    def segment(
        self,
        images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        model: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        timeout: float = 600.0,
        on_message: Any = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Segment and wait (scripts, tests); returns the reply. ``options``: request fields."""
        self.wait_ready(timeout)
        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        request = {
            "op": "segment",
            "image": [str(p) for p in paths],
            "model": str(model),
            "output": str(output),
            **options,
        }
        return self.request(request, timeout, on_message)

    def __enter__(self) -> SegmentWorker:
        return self


if __name__ == "__main__":
    sys.exit(main())
