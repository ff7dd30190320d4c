"""Running, launching, cancelling and watching jobs: the verbs of the job protocol.

A long command (``medsegnas phantom``, search, train, segment, ...) adds the job options with
:func:`add_job_arguments` and hands its work to :func:`run_job_command`. The same command then
runs four ways:

``medsegnas CMD ...``
    in the foreground, no run directory: progress on the terminal, Ctrl-C stops cleanly.
``medsegnas CMD ... --run-dir RUN``
    as the worker of run directory ``RUN``: holds its lock, writes status and events.
``medsegnas CMD ... --detach [--runs-root DIR]``
    creates a run directory, starts the worker above as a background process (its own
    process group, output to ``worker.log``), prints the run directory and returns.
``medsegnas CMD ... --run-dir RUN --resume``
    continues a stopped run from ``checkpoints/last.pt``.

Exit codes of a job command: 0 done, 1 failed, 3 cancelled (:data:`EXIT_CANCELLED`; distinct
from 130, which means the user hit Ctrl-C twice and the job stopped without saving).

Controllers (the CLI, the Slicer panel, tests) use :func:`launch`, :func:`cancel`,
:func:`refresh_status`, :func:`list_runs` and :meth:`RunDir.read_events`.

Workers run on Linux, macOS and Windows: the run lock is a :mod:`filelock` lock and
:func:`cancel` reaches the worker's whole process tree through :mod:`psutil` (children and
grandchildren, also those that left the worker's process group). :func:`refresh_status` and
:func:`cancel` can only see processes on their own host; a run that another machine is writing
is left as reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from ..errors import JobError, MedSegNASError
from .context import JobCancelled, JobContext
from .rundir import FINAL_STATES, RunDir, hostname, now_iso, pid_alive, process_start_ticks

EXIT_DONE = 0
EXIT_FAILED = 1
#: Exit code of a job that stopped on request after saving its state.
EXIT_CANCELLED = 3
#: Exit code after a second Ctrl-C: stopped at once, without a final checkpoint.
EXIT_INTERRUPTED = 130

#: Seconds a worker waits for the run lock (a launcher holds it while it starts the worker).
WORKER_LOCK_WAIT_S = 1.0
#: What a launched worker runs after the Python executable, unless told otherwise.
DEFAULT_ENTRY: tuple[str, ...] = ("-m", "MedSegNASLib.cli")
#: Files that may already be in a fresh run directory (made by :meth:`RunDir.create`).
_FRESH_ENTRIES = frozenset({"checkpoints", "artifacts", "worker.log", ".lock"})


# -- command-line options ---------------------------------------------------------------------


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--run-dir RUN``, ``--resume``, ``--detach`` and ``--runs-root DIR`` to a command."""
    group = parser.add_argument_group(
        "job options", "Run in the background, record progress in a run directory, resume a stopped run."
    )
    group.add_argument(
        "--run-dir",
        metavar="RUN",
        type=Path,
        default=None,
        help="run directory to record status, events, checkpoints and results in "
        "(created if missing); without it the command runs in the foreground and records nothing",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run in --run-dir from its last checkpoint",
    )
    group.add_argument(
        "--detach",
        action="store_true",
        help="start the command as a background worker, print its run directory and return at once "
        "(follow it with 'medsegnas jobs status RUN --follow')",
    )
    group.add_argument(
        "--runs-root",
        metavar="DIR",
        type=Path,
        default=Path("runs"),
        help="where --detach creates a new run directory when --run-dir is not given (default: ./runs)",
    )


# -- running a job body -----------------------------------------------------------------------


def run_job_command(
    kind: str,
    args: argparse.Namespace,
    body: Callable[[JobContext], dict[str, Any] | None],
    config: dict[str, Any],
    *,
    inputs: dict[str, Any] | None = None,
) -> int:
    """Run ``body`` under the job protocol, as ``args`` (from :func:`add_job_arguments`) ask.

    Args:
        kind: job kind, e.g. ``"phantom"``; names run directories and is checked on resume.
        args: parsed arguments with ``run_dir``, ``resume``, ``detach``, ``runs_root``. Optional
            ``job_entry`` (list of str) replaces ``-m MedSegNASLib.cli`` when detaching, and
            ``job_argv`` replaces ``sys.argv[1:]`` as the command line to relaunch.
        body: the work; returns a JSON-able summary (recorded in the ``done`` event) or None.
        config: the resolved settings, recorded in ``job.json``.
        inputs: input files/folders, recorded in ``job.json``.

    Returns:
        The exit code: 0 done (or detached, or nothing left to resume), 1 failed, 3 cancelled,
        130 aborted by a second Ctrl-C. Errors before the body starts (locked run, wrong kind)
        raise :class:`JobError`.
    """
    run_dir = getattr(args, "run_dir", None)
    resume = bool(getattr(args, "resume", False))
    if getattr(args, "detach", False):
        return _detach(kind, args, config, inputs)
    if resume and run_dir is None:
        raise JobError("--resume needs --run-dir RUN: the run directory of the job to continue")
    if run_dir is None:
        return _execute(kind, None, False, body, debug=bool(getattr(args, "debug", False)))
    run = RunDir(run_dir)
    if resume and not run.is_run_dir():
        raise JobError(f"cannot resume {run_dir}: it is not a run directory (no job.json or status.json)")
    run.ensure_layout()
    with run.acquire_lock(WORKER_LOCK_WAIT_S):
        if not _check_can_start(run, kind, resume):
            print(f"run {run.path} already finished (done); nothing to resume", file=sys.stderr)
            return EXIT_DONE
        if not run.job_json.exists():
            run.write_job(_job_record(run, kind, getattr(args, "job_argv", None), config, inputs))
        return _execute(kind, run, resume, body, debug=True)


def _execute(
    kind: str,
    run: RunDir | None,
    resume: bool,
    body: Callable[[JobContext], dict[str, Any] | None],
    *,
    debug: bool,
) -> int:
    """Run ``body`` with stop handlers installed and record how it ended (caller holds the lock)."""
    ctx = JobContext(run, resuming=resume)
    previous_handlers = _install_stop_handlers(ctx)
    try:
        if run is not None:
            pid = os.getpid()
            run.write_status(
                state="running",
                pid=pid,
                pgid=os.getpgrp() if hasattr(os, "getpgrp") else None,
                pid_start=process_start_ticks(pid),
                host=hostname(),
                started=now_iso(),
                ended=None,
                error=None,
                result=None,
                cancel_requested=None,
            )
            verb = "resumed" if resume else "started"
            run.append_event({"type": "log", "level": "info", "message": f"{kind} {verb} (pid {pid})"})
        try:
            result = body(ctx)
        except JobCancelled as exc:
            _finish(run, ctx, "cancelled", message=str(exc))
            ctx.display.log(f"cancelled: {exc}")
            return EXIT_CANCELLED
        except KeyboardInterrupt:
            message = "interrupted by a second Ctrl-C before the job saved its state"
            _finish(run, ctx, "cancelled", error=message)
            print(f"error: {message}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except MedSegNASError as exc:
            _finish(run, ctx, "failed", error=str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:  # a bug in the body: keep the traceback where it can be read
            message = f"{type(exc).__name__}: {exc}"
            if debug:
                traceback.print_exc()
            _finish(run, ctx, "failed", error=message)
            hint = "" if debug else " (internal error; rerun with --debug for details)"
            print(f"error: {message}{hint}", file=sys.stderr)
            return EXIT_FAILED
        _finish(run, ctx, "done", result=result)
        return EXIT_DONE
    finally:
        ctx.display.close()
        _restore_handlers(previous_handlers)


def _finish(
    run: RunDir | None,
    ctx: JobContext,
    state: str,
    *,
    error: str | None = None,
    message: str | None = None,
    result: Any = None,
) -> None:
    """Record the final state: the final event first, then the status.

    In this order a reader that sees a final state in ``status.json`` and then reads the new
    events is sure to get the final event too (``jobs status --follow`` relies on it).
    """
    if run is None:
        return
    try:
        ctx.flush_curves()
    except OSError as exc:  # a full disk must not hide how the job ended
        print(f"warning: could not write the curves file: {exc}", file=sys.stderr)
    run.append_event(_final_event(state, error=error, message=message, result=result), sync=True)
    fields: dict[str, Any] = {"state": state, "ended": now_iso(), "error": error, "result": result}
    if ctx.last_progress is not None:
        fields["progress"] = _progress_summary(ctx.last_progress)
    run.write_status(**fields)


def _final_event(state: str, *, error: str | None = None, message: str | None = None, result: Any = None):
    """``done`` (with ``result``), ``error`` (failed, with ``message``) or ``cancelled``."""
    if state == "done":
        return {"type": "done", "state": state, "result": result}
    if state == "failed":
        return {"type": "error", "state": state, "message": error}
    return {"type": "cancelled", "state": state, "message": error or message}


def _progress_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("step", "total", "stage", "epoch", "metrics", "eta_s", "time")
    return {key: record[key] for key in keys if key in record}


def _install_stop_handlers(ctx: JobContext) -> dict[int, Any]:
    """SIGTERM and SIGINT only set ``ctx``'s stop flag; a second SIGINT aborts at once.

    Signal handlers can only be set from the main thread; elsewhere (a body run from a GUI
    thread) stopping is up to :meth:`JobContext.request_stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_sigterm(signum: int, frame: object) -> None:
        ctx.request_stop("stop requested (SIGTERM)")

    def on_sigint(signum: int, frame: object) -> None:
        if ctx.stop_requested:
            raise KeyboardInterrupt
        ctx.request_stop("stop requested (Ctrl-C)")
        os.write(2, b"\nstopping after the current step (press Ctrl-C again to abort now)\n")

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint)}
    # SIGBREAK: what a cancel sends on Windows (CTRL_BREAK_EVENT to the worker's process group).
    for name in ("SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), on_sigterm)
    return previous


def _restore_handlers(previous: Mapping[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _check_can_start(run: RunDir, kind: str, resume: bool) -> bool:
    """Whether a worker may (re)start in ``run``; False means "resume, but it is already done".

    The caller holds the run lock, so a ``running`` state here belongs to a dead worker.
    """
    job, status = run.read_job(), run.read_status()
    if job and job.get("kind") != kind:
        raise JobError(
            f"{run.path} holds a '{job.get('kind')}' run, not '{kind}'; "
            f"use the '{job.get('kind')}' command to resume it, or choose another run directory"
        )
    state = status.get("state")
    if resume:
        return state != "done"
    if state not in (None, "queued"):
        raise JobError(
            f"{run.path} already holds a {state} run; add --resume to continue it, or use a new run directory"
        )
    if not job and not status:
        extra = sorted(entry.name for entry in run.path.iterdir() if entry.name not in _FRESH_ENTRIES)
        if extra:
            raise JobError(
                f"{run.path} is not empty ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}) "
                "and not a run directory; give a new or empty folder as --run-dir"
            )
    return True


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("monai", "monai"), ("medsegnas", "medsegnas")):
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _job_record(
    run: RunDir,
    kind: str,
    argv: Sequence[str] | None,
    config: Mapping[str, Any] | None,
    inputs: Mapping[str, Any] | None,
    cwd: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "run_id": run.run_id,
        "argv": list(argv) if argv is not None else list(sys.orig_argv),
        "cwd": cwd or os.getcwd(),
        "config": dict(config) if config is not None else None,
        "inputs": dict(inputs) if inputs else {},
        "versions": _versions(),
        "host": hostname(),
        "created": now_iso(),
    }


# -- launching ---------------------------------------------------------------------------------


def _without_job_options(argv: Sequence[str]) -> list[str]:
    """``argv`` minus ``--detach``, ``--run-dir X`` and ``--runs-root X`` (the launcher sets those)."""
    cleaned: list[str] = []
    skip_value = False
    for token in argv:
        if skip_value:
            skip_value = False
        elif token == "--detach" or token.startswith(("--run-dir=", "--runs-root=")):
            continue
        elif token in ("--run-dir", "--runs-root"):
            skip_value = True
        else:
            cleaned.append(token)
    return cleaned


def _detach(
    kind: str, args: argparse.Namespace, config: dict[str, Any], inputs: dict[str, Any] | None
) -> int:
    argv = getattr(args, "job_argv", None)
    if argv is None:
        argv = sys.argv[1:]
        if "--detach" not in argv:
            raise JobError(
                "cannot tell which command line to run in the background (sys.argv has no --detach); "
                "call MedSegNASLib.jobs.launch() from Python instead"
            )
    run = launch(
        _without_job_options(argv),
        args.run_dir,
        runs_root=args.runs_root,
        kind=kind,
        entry=getattr(args, "job_entry", None),
        config=config,
        inputs=inputs,
    )
    if run.process is None:
        print(f"run {run.path} already finished (done); nothing to resume", file=sys.stderr)
    print(run.path)
    return EXIT_DONE


def launch(
    argv: Sequence[str],
    run_dir: str | os.PathLike[str] | RunDir | None = None,
    *,
    runs_root: str | os.PathLike[str] | None = None,
    python: str | None = None,
    kind: str | None = None,
    entry: Sequence[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> RunDir:
    """Start a worker for the command ``argv`` in the background and return its run directory.

    The worker is ``[python, *entry, *argv, "--run-dir", RUN]`` in a new session (its own
    process group, so :func:`cancel` stops it with everything it started), with stdin closed
    and stdout+stderr appended to ``worker.log``. ``status.json`` says ``queued`` with the
    worker's pid until the worker takes over.

    Args:
        argv: the command and its arguments, e.g. ``["phantom", "out", "--cases", "4"]``;
            add ``"--resume"`` (with ``run_dir``) to continue a stopped run.
        run_dir: an existing or new run directory; default: a new one under ``runs_root``.
        runs_root: where to create the run directory (default ``./runs``).
        python: the interpreter (default ``sys.executable``; in Slicer: PythonSlicer).
        kind: job kind (default ``argv[0]``).
        entry: what follows the interpreter (default ``-m MedSegNASLib.cli``; a script path
            for other entry points).
        cwd: working directory of the worker (default: the current one), so relative paths
            in ``argv`` mean what they meant here.
        env: extra environment variables for the worker.
        config, inputs: when given, ``job.json`` is written now (the worker writes it
            otherwise, from what it parsed).

    Returns:
        The :class:`RunDir`, with ``process`` set to the worker's :class:`subprocess.Popen`;
        ``process`` is ``None`` when resuming a run that is already done (nothing to do).

    Raises:
        JobError: the run directory is in use by a live worker, holds another kind of job, or
            holds a run (without ``--resume``) or is not a run directory (with it).
    """
    argv = [str(token) for token in argv]
    if not argv:
        raise ValueError("launch needs a command, e.g. ['phantom', 'out']")
    kind = kind or argv[0]
    resume = "--resume" in argv
    if isinstance(run_dir, RunDir):
        run = run_dir
    elif run_dir is not None:
        run = RunDir(run_dir)
    else:
        run = RunDir.create(runs_root if runs_root is not None else "runs", kind)
    if resume and not run.is_run_dir():
        raise JobError(f"cannot resume {run.path}: it is not a run directory (no job.json or status.json)")
    run.ensure_layout()
    command = [python or sys.executable, *(entry if entry is not None else DEFAULT_ENTRY)]
    command += [*_without_job_options(argv), "--run-dir", str(run.path)]
    workdir = str(Path(cwd).absolute()) if cwd is not None else os.getcwd()
    # Holding the lock while starting the worker keeps a second launcher out and keeps our
    # 'queued' write from landing after the worker's 'running' one; the worker waits for it.
    with run.acquire_lock(timeout_s=0.5):
        if not _check_can_start(run, kind, resume):
            run.process = None
            return run
        if config is not None and not run.job_json.exists():
            run.write_job(_job_record(run, kind, command, config, inputs, cwd=workdir))
        run.write_status(
            state="queued",
            pid=None,
            pgid=None,
            pid_start=None,
            host=hostname(),
            queued=now_iso(),
            started=None,
            ended=None,
            error=None,
            result=None,
        )
        run.process = _spawn(run, command, workdir, env)
    return run


def _new_process_group() -> dict[str, Any]:
    """Popen options that start the worker in its own process group: its own session on POSIX (a
    terminal's Ctrl-C does not reach it), a new console process group on Windows (so that a cancel
    can send it CTRL_BREAK_EVENT, which Python turns into SIGBREAK)."""
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


def _spawn(run: RunDir, command: list[str], cwd: str, env: Mapping[str, str] | None) -> subprocess.Popen:
    # Passive OpenMP waiting: busy-spinning threads make a CPU worker several times slower as soon
    # as another process (the Slicer GUI, a second job) wants a core; measured in the search tests.
    child_env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(run.worker_log, "ab") as log:
        log.write(f"[{now_iso()}] launching: {subprocess.list2cmdline(command)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_new_process_group(),
            )
        except OSError as exc:
            message = f"could not start the worker ({command[0]}): {exc.strerror or exc}"
            _record_end(run, "failed", message)
            raise JobError(message) from None
    run.write_status(pid=process.pid, pgid=process.pid, pid_start=process_start_ticks(process.pid))
    return process


# -- watching and stopping -------------------------------------------------------------------


def _as_run(run_dir: str | os.PathLike[str] | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)


def _is_local(status: Mapping[str, Any]) -> bool:
    return status.get("host") in (None, hostname())


def _worker_alive(run: RunDir, status: Mapping[str, Any]) -> bool:
    """A worker holds the lock, or the launched process is still starting up."""
    return run.lock_is_held() or pid_alive(status.get("pid"), status.get("pid_start"))


def refresh_status(run_dir: str | os.PathLike[str] | RunDir) -> dict[str, Any]:
    """``status.json``, after recording a worker that died without saying so.

    A run whose state is queued/running/cancelling while no process holds its lock, and whose
    recorded pid is gone (or now belongs to another process: start times differ), is marked
    ``failed`` with "worker process <pid> exited without finishing (killed?)" -- or
    ``cancelled`` if a cancel had been requested. Runs written on another host are returned
    as they are (their processes cannot be seen from here).
    """
    run = _as_run(run_dir)
    status = run.read_status()
    if status.get("state") not in ("queued", "running", "cancelling") or not _is_local(status):
        return status
    if status.get("state") == "queued" and not status.get("pid"):
        return status  # a launcher is still starting it (it holds the lock meanwhile)
    if _worker_alive(run, status):
        return status
    lock = run.try_lock()
    if lock is None:  # a worker took over just now
        return run.read_status()
    with lock:
        status = run.read_status()  # re-read: the worker may have finished meanwhile
        state = status.get("state")
        if state not in ("queued", "running", "cancelling") or pid_alive(
            status.get("pid"), status.get("pid_start")
        ):
            return status
        pid = status.get("pid")
        if state == "cancelling":
            return _record_end(run, "cancelled", f"worker process {pid} stopped before confirming the cancel")
        return _record_end(run, "failed", f"worker process {pid} exited without finishing (killed?)")


def _record_end(run: RunDir, state: str, error: str) -> dict[str, Any]:
    """Record the end of a run whose worker cannot (caller holds the lock)."""
    run.append_event(_final_event(state, error=error), sync=True)
    return run.write_status(state=state, ended=now_iso(), error=error)


def process_tree(pid: int | None, start_time: float | None = None) -> list[psutil.Process]:
    """The live process ``pid`` (if its start time matches) and all its descendants, parents first."""
    if not pid_alive(pid, start_time):
        return []
    try:
        root = psutil.Process(int(pid))
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_worker(status: Mapping[str, Any], signum: int) -> bool:
    """Send ``signum`` to the worker and every process it started (its process tree).

    The tree is listed before signalling, so children that lose their parent on the way are still
    reached. On POSIX the worker's own process group gets the signal too (processes that were
    orphaned earlier still belong to it). On Windows a stop request (SIGTERM) is CTRL_BREAK_EVENT
    to the worker's console process group, SIGKILL ends every process of the tree.
    """
    pid, pgid = status.get("pid"), status.get("pgid")
    tree = process_tree(pid, status.get("pid_start"))
    if not tree:
        return False
    sent = False
    if os.name == "nt" and signum != getattr(signal, "SIGKILL", None):  # pragma: no cover - Windows
        try:
            os.kill(int(pid), signal.CTRL_BREAK_EVENT)
            return True
        except OSError:
            return False
    if os.name != "nt" and pgid and pgid == pid:  # a worker started from a shell shares the shell's group
        try:
            os.killpg(pgid, signum)
            sent = True
        except ProcessLookupError:
            pass
        except PermissionError:
            raise JobError(
                f"not allowed to signal worker process {pid} (it belongs to another user)"
            ) from None
    for process in tree:
        try:
            if signum == getattr(signal, "SIGKILL", None):
                process.kill()
            else:
                process.send_signal(signum)
            sent = True
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            if process.pid == pid:
                raise JobError(
                    f"not allowed to signal worker process {pid} (it belongs to another user)"
                ) from None
    return sent


def cancel(run_dir: str | os.PathLike[str] | RunDir, grace_s: float = 30.0, wait: bool = True) -> str:
    """Stop a run: SIGTERM, then after ``grace_s`` seconds SIGKILL; return the final state.

    The worker's handler sets its stop flag; the body finishes its step, saves a checkpoint
    and ends ``cancelled`` (or ``done``, if that was the last step). With ``wait=False`` only
    the SIGTERM is sent and ``'cancelling'`` returned. A run that already ended is left alone
    and its state returned.

    Raises:
        JobError: ``run_dir`` is not a run directory, or its worker runs on another host.
    """
    run = _as_run(run_dir)
    status = refresh_status(run)
    state = status.get("state")
    if state in FINAL_STATES or state is None:
        return state or "unknown"
    if not _is_local(status):
        raise JobError(f"run {run.path} is running on host {status.get('host')}; cancel it there")
    # "cancelling" is written before the signal: the worker answers it within a step and writes
    # its final state, which must not be overwritten by ours (written after the signal, it was:
    # the run then read as stopped without confirming the cancel).
    if run.read_status().get("state") not in FINAL_STATES:
        run.write_status(state="cancelling", cancel_requested=now_iso())
    if not _signal_worker(status, signal.SIGTERM):
        return refresh_status(run).get("state", "unknown")
    if not wait:
        return "cancelling"
    deadline = time.monotonic() + grace_s
    while _worker_alive(run, status) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = False
    if _worker_alive(run, status):
        killed = _signal_worker(status, getattr(signal, "SIGKILL", signal.SIGTERM))
        deadline = time.monotonic() + 10.0
        while _worker_alive(run, status) and time.monotonic() < deadline:
            time.sleep(0.05)
    if not killed:
        return refresh_status(run).get("state", "unknown")
    with run.acquire_lock(timeout_s=5.0):
        if run.read_status().get("state") in FINAL_STATES:
            return run.read_status()["state"]
        error = f"worker did not stop within {grace_s:g} s of SIGTERM; killed with SIGKILL"
        return _record_end(run, "cancelled", error)["state"]


# -- listing -------------------------------------------------------------------------------------

_STAMP = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{6}$")


def _created_timestamp(run: RunDir, job: Mapping[str, Any]) -> float:
    match = _STAMP.search(run.run_id)
    if match:
        return datetime.datetime.strptime(match.group(1), "%Y%m%d-%H%M%S").timestamp()
    if job.get("created"):
        try:
            return datetime.datetime.fromisoformat(job["created"]).timestamp()
        except ValueError:
            pass
    return run.path.stat().st_mtime


def run_summary(run_dir: str | os.PathLike[str] | RunDir) -> dict[str, Any]:
    """What a list shows of one run (after :func:`refresh_status`): id, kind, state, progress..."""
    run = _as_run(run_dir)
    try:
        job, status = run.read_job(), refresh_status(run)
    except JobError as exc:  # damaged JSON: list it with the reason instead of hiding it
        job, status = {}, {"state": "damaged", "error": str(exc)}
    progress = status.get("progress") or {}
    total = progress.get("total")
    percent = 100.0 * progress.get("step", 0) / total if total else None
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "kind": job.get("kind") or _STAMP.sub("", run.run_id),
        "state": status.get("state", "unknown"),
        "percent": percent,
        "progress": progress,
        "created": job.get("created"),
        "started": status.get("started"),
        "ended": status.get("ended"),
        "error": status.get("error"),
        "pid": status.get("pid"),
        "host": status.get("host"),
        "created_ts": _created_timestamp(run, job),
    }


def list_runs(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run directory directly under ``root``, newest first, as :func:`run_summary` dicts.

    Dead workers are detected on the way (see :func:`refresh_status`). A missing ``root``
    gives an empty list.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [RunDir(child) for child in root.iterdir() if child.is_dir()]
    summaries = [run_summary(run) for run in runs if run.is_run_dir()]
    summaries.sort(key=lambda item: (item["created_ts"], item["run_id"]), reverse=True)
    return summaries
