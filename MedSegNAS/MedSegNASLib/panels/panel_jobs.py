"""Background jobs as both panels launch, follow, cancel and resume them, without Qt.

The MedSegNAS and SSLPretrain panels run every long task as a worker of the job protocol
(:mod:`MedSegNASLib.jobs`) and follow it from a ``qt.QTimer``. What they share is here:

* :func:`worker_python` (Slicer's PythonSlicer) and :func:`worker_environment` (``PYTHONPATH``
  to the Lib packages, CPU thread counts);
* :func:`launch_job`: one worker, or one per GPU under ``torch.distributed.run``
  (:func:`torchrun_entry`; rank 0 writes the run directory, see :mod:`MedSegNASLib.nas.distributed`);
* :func:`cancel_job`, :func:`resume_job` (with the GPU count the run was started with),
  :func:`live_runs` (to re-attach after a restart);
* :class:`JobFollower` and :class:`JobUpdate`: new events, state, progress text, ETA;
  :func:`poll_job`, :func:`run_is_live`, :func:`run_result` for one look at a run.

Nothing here imports torch, MONAI, Qt or ``slicer``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import JobError, MedSegNASError
from ..jobs import FINAL_STATES, RunDir, cancel, launch, list_runs, refresh_status
from ..jobs.runner import DEFAULT_ENTRY

__all__ = [
    "LAUNCH_INFO",
    "LIVE_STATES",
    "THREAD_VARIABLES",
    "JobFollower",
    "JobUpdate",
    "as_float",
    "cancel_job",
    "format_eta",
    "launch_job",
    "live_runs",
    "poll_job",
    "progress_text",
    "resume_job",
    "run_is_live",
    "run_result",
    "thread_environment",
    "torchrun_entry",
    "usable_cpu_count",
    "worker_environment",
    "worker_python",
]

#: States of a run whose worker is (or is about to be) at work.
LIVE_STATES: frozenset[str] = frozenset({"queued", "running", "cancelling"})
#: How a panel launched a run (number of processes), read back on resume; inside the run folder.
LAUNCH_INFO = Path("artifacts") / "inputs" / "launch.json"
#: Thread-count variables of the OpenMP / MKL runtimes that torch's CPU kernels use.
THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------- worker processes


def worker_python() -> str:
    """The Python that runs workers: Slicer's PythonSlicer (inside Slicer ``sys.executable`` is the
    application, its Python launcher is on ``PATH`` beside it), else this interpreter."""
    if Path(sys.executable).name.lower().startswith("pythonslicer"):
        return sys.executable
    return shutil.which("PythonSlicer") or sys.executable


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the container's CPU quota (cgroup v2 ``cpu.max`` or v1 CFS), None if unlimited."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    return None


def usable_cpu_count() -> int:
    """CPU cores this process may run on: its affinity mask, bounded by a container CPU quota.

    ``os.cpu_count()`` (and torch's default thread count) see the whole machine, which is too many
    in a container or under ``taskset``.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.floor(limit)))
    return max(1, count)


def thread_environment(processes: int = 1, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` for ``processes`` CPU workers, unless already set.

    Each worker gets ``(usable cores - 1) // processes`` threads (at least 1): one core stays free
    for the Slicer GUI (the budget SlicerMONAIAuto3DSeg sets itself), and workers never ask for more
    threads than there are free cores. Oversubscribed OpenMP threads wait on each other at every
    parallel region: on two busy cores a CPU job with 2 threads ran about 20 times slower than
    with 1. A value the user set (in ``environ``, default ``os.environ``) is kept.
    """
    environ = os.environ if environ is None else environ
    threads = str(max(1, (usable_cpu_count() - 1) // max(1, int(processes))))
    return {name: threads for name in THREAD_VARIABLES if not environ.get(name)}


def worker_environment(*packages: Any, processes: int = 1) -> dict[str, str]:
    """Environment additions for a worker.

    ``PYTHONPATH``: the folders holding ``MedSegNASLib`` and the given Lib ``packages`` (modules),
    so that ``-m <Lib>.cli`` imports this copy (inside Slicer they are on ``sys.path`` but not in a
    child's environment). Thread counts: :func:`thread_environment` for ``processes`` workers.
    """
    import MedSegNASLib

    folders = [str(Path(package.__file__).resolve().parents[1]) for package in (*packages, MedSegNASLib)]
    folders += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(folders)), **thread_environment(processes)}


def torchrun_entry(processes: int, entry: Sequence[str] = DEFAULT_ENTRY) -> tuple[str, ...]:
    """What follows the Python executable to run ``entry`` as ``processes`` ranks on this machine.

    ``python -m torch.distributed.run --standalone --nproc_per_node N -m <Lib>.cli ...``
    (torchrun's own module, so no ``torchrun`` script needs to be on ``PATH``; ``--standalone``
    picks a free rendezvous port). With one process, ``entry`` itself.
    """
    processes = int(processes)
    if processes < 1:
        raise MedSegNASError(f"the number of GPUs (processes) must be at least 1, got {processes}")
    entry = tuple(str(token) for token in entry)
    if processes == 1:
        return entry
    return ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *entry)


def launch_job(
    argv: Sequence[Any],
    run: RunDir | None = None,
    *,
    runs_root: str | os.PathLike[str] | None = None,
    kind: str | None = None,
    entry: Sequence[str] = DEFAULT_ENTRY,
    packages: Sequence[Any] = (),
    processes: int = 1,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> RunDir:
    """Start ``<python> <entry> <argv> --run-dir RUN`` in the background (:func:`~MedSegNASLib.jobs.launch`).

    Args:
        argv: the command and its arguments (``str()`` is applied), e.g. ``["search", "--dataset", p]``.
        run: the run directory; default: a new one under ``runs_root`` (made if missing).
        kind: job kind (default ``argv[0]``).
        entry: the worker's entry point after the interpreter (default ``-m MedSegNASLib.cli``).
        packages: further Lib packages (modules) the worker imports, for ``PYTHONPATH``.
        processes: more than 1 runs the command under ``torch.distributed.run`` with that many
            ranks (one per GPU); recorded in ``artifacts/inputs/launch.json`` for :func:`resume_job`.
        python: the interpreter (default :func:`worker_python`).
        env: further environment variables (they win over the computed ones).
        cwd: the worker's folder (default: the run directory's parent).

    Returns:
        The run directory, its ``process`` the worker (torchrun's agent when ``processes > 1``).
    """
    if run is None:
        root = Path(runs_root if runs_root is not None else "runs").expanduser().absolute()
        root.mkdir(parents=True, exist_ok=True)
        run = RunDir.create(root, kind or str(argv[0]))
    if int(processes) > 1 or (run.path / LAUNCH_INFO).exists():
        (run.path / LAUNCH_INFO).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.path / LAUNCH_INFO, {"processes": int(processes)})
    return launch(
        [str(token) for token in argv],
        run,
        python=python or worker_python(),
        kind=kind,
        entry=torchrun_entry(processes, entry),
        cwd=cwd if cwd is not None else run.path.parent,
        env={**worker_environment(*packages, processes=processes), **(env or {})},
    )


def launched_processes(run_dir: str | os.PathLike[str] | RunDir) -> int:
    """How many processes a panel started the run with (1 when it did not record it)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        return max(1, int(json.loads((run.path / LAUNCH_INFO).read_text(encoding="utf-8"))["processes"]))
    return 1


def cancel_job(run_dir: str | os.PathLike[str] | RunDir) -> str:
    """Ask a job to stop (SIGTERM to its worker's process group) and return at once with
    ``'cancelling'``, or the final state of a run that had already ended. The worker finishes its
    step, saves a checkpoint and ends ``cancelled`` (under torchrun, rank 0 gets the signal and
    the ranks agree to stop after the same step)."""
    return cancel(run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir), wait=False)


def resume_job(
    run_dir: str | os.PathLike[str] | RunDir,
    *,
    kinds: Sequence[str] | None = None,
    entry: Sequence[str] = DEFAULT_ENTRY,
    packages: Sequence[Any] = (),
    recorded_command: bool = True,
    processes: int | None = None,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunDir:
    """Continue a stopped run from ``checkpoints/last.pt``.

    Args:
        run_dir: the run.
        kinds: the job kinds the caller may resume (others raise).
        entry, packages: as :func:`launch_job`.
        recorded_command: rerun the command line recorded in ``job.json`` (commands that check
            the resumed settings against it); False: only ``<kind> --resume`` (commands that read
            their settings back from the run).
        processes: ranks to run (default: as many as the run was launched with).

    Returns:
        The run directory; its ``process`` is ``None`` when the run was already done.

    Raises:
        JobError: not a run directory, a kind not in ``kinds``, or no recorded command line.
    """
    run = RunDir.open(run_dir.path if isinstance(run_dir, RunDir) else run_dir)
    job = run.read_job()
    kind = str(job.get("kind") or "")
    if kinds is not None and kind not in kinds:
        raise JobError(f"{run.path} holds a '{kind}' run, which this panel cannot resume")
    command = [kind]
    if recorded_command:
        argv = [str(token) for token in job.get("argv") or []]
        if kind not in argv:
            raise JobError(f"{run.path}: job.json does not record the '{kind}' command line to resume")
        # The recorded line starts with the interpreter and the entry point; the command follows.
        command = [token for token in argv[argv.index(kind) :] if token != "--resume"]
    return launch_job(
        [*command, "--resume"],
        run,
        kind=kind,
        entry=entry,
        packages=packages,
        processes=processes or launched_processes(run),
        python=python,
        env=env,
        cwd=job.get("cwd") or run.path.parent,
    )


def live_runs(
    runs_root: str | os.PathLike[str], kinds: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The newest unfinished run of each kind under ``runs_root``: ``{kind: run summary}``
    (:func:`~MedSegNASLib.jobs.run_summary`, with ``path``).

    What a panel re-attaches to after Slicer restarts (dead workers are marked failed on the way).
    """
    kinds = None if kinds is None else set(kinds)
    found: dict[str, dict[str, Any]] = {}
    for run in list_runs(Path(runs_root).expanduser()):  # newest first
        if run["state"] in LIVE_STATES and (kinds is None or run["kind"] in kinds):
            found.setdefault(run["kind"], run)
    return found


def run_is_live(run_dir: str | os.PathLike[str] | RunDir) -> bool:
    """Whether the run has not ended yet, by its refreshed status (a dead worker's run is failed)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return refresh_status(run).get("state") not in FINAL_STATES


def run_result(run_dir: str | os.PathLike[str] | RunDir) -> dict[str, Any]:
    """The ``result`` of the run's refreshed status (what a ``done`` worker reported), ``{}`` if none."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return refresh_status(run).get("result") or {}


# --------------------------------------------------------------------------- following a job


def format_eta(seconds: float | None) -> str:
    """``"about 3 min left"`` from an ETA in seconds ("" when unknown)."""
    if seconds is None or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return ""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"about {seconds:.0f} s left"
    if seconds < 3600:
        return f"about {seconds / 60:.0f} min left"
    return f"about {seconds / 3600:.1f} h left"


def as_float(value: Any) -> float:
    try:
        return float(value)  # also "nan" / "inf", as the event log writes non-finite numbers
    except (TypeError, ValueError):
        return math.nan


def metric_text(metrics: Mapping[str, Any], shown: Sequence[tuple[str, str]] | None = None) -> str:
    """``"case_3, loss 0.500, validation Dice 0.700"``: the metrics ``shown`` as (label, key) pairs
    (default: loss, arch loss, validation Dice), after the case name when there is one."""
    shown = shown or (("loss", "loss"), ("arch loss", "arch_loss"), ("validation Dice", "val_dice"))
    parts = []
    for label, key in shown:
        value = as_float(metrics.get(key)) if key in metrics else math.nan
        if math.isfinite(value):
            parts.append(f"{label} {value:.3f}")
    if metrics.get("case"):
        parts.insert(0, str(metrics["case"]))
    return ", ".join(parts)


def progress_text(event: Mapping[str, Any], shown: Sequence[tuple[str, str]] | None = None) -> str:
    """One line for a progress event: stage, epoch, step of total, main metrics, ETA."""
    parts = [str(event.get("stage") or "working")]
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']}")
    parts.append(f"{event.get('step', 0)} of {event.get('total', '?')}")
    text = ", ".join(parts)
    metrics = metric_text(event.get("metrics") or {}, shown)
    eta = format_eta(event.get("eta_s"))
    return text + (f": {metrics}" if metrics else "") + (f" ({eta})" if eta else "")


@dataclass
class JobUpdate:
    """What one :meth:`JobFollower.poll` found.

    Attributes:
        state: ``status.json`` state (queued, running, cancelling, cancelled, failed, done).
        finished: the state is final.
        step, total: of the latest progress event (0 and 1 before the first; total when done).
        stage: of the latest progress event.
        text: a line for the panel (progress, last message, or how it ended).
        eta: ``"about 3 min left"`` or "".
        events: the new events.
        status: the whole ``status.json``.
        curves_changed: a follower that keeps curves added points (see the SSL panel).
    """

    state: str
    finished: bool
    step: int
    total: int
    stage: str
    text: str
    eta: str
    events: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    curves_changed: bool = False

    @property
    def percent(self) -> int:
        return int(round(100 * self.step / self.total)) if self.total else 0


class JobFollower:
    """Reads a job's new events and state; cheap enough for a ``qt.QTimer`` callback on the GUI thread.

    Subclasses show other metrics (:attr:`shown_metrics`) or collect curves (:meth:`take_events`).

    Args:
        run_dir: the run directory (a :class:`RunDir` from :func:`launch_job` keeps its
            ``process``, which is reaped here so that it leaves no zombie).
    """

    #: (label, metric key) pairs of the progress line; None: loss, arch loss, validation Dice.
    shown_metrics: Sequence[tuple[str, str]] | None = None
    #: Most bytes of the event log one :meth:`poll` reads: a tick stays short however long the
    #: log (a search writes 100k events); a follower behind catches up over the next ticks.
    max_bytes_per_poll: int = 128 * 1024
    #: A first poll of a longer log starts this many bytes before its end (re-attaching to a long
    #: run: the progress line needs only the latest events; curves come from ``curves.json``).
    tail_bytes: int = 16 * 1024

    def __init__(self, run_dir: str | os.PathLike[str] | RunDir) -> None:
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.offset = 0
        self.last_progress: dict[str, Any] | None = None
        self.last_message = ""
        self.last_update: JobUpdate | None = None
        #: Bytes of the event log read by the last :meth:`poll` (bounded by :attr:`max_bytes_per_poll`).
        self.bytes_read = 0
        self._started = False

    def skip_history(self) -> bool:
        """Whether a first poll may skip all but the log's tail (subclasses that build something
        from every event say no when they have no other source)."""
        return True

    def _start_offset(self) -> int:
        """Where the first poll starts reading: 0, or the first line of the log's tail."""
        try:
            size = self.run.events_jsonl.stat().st_size
        except OSError:
            return 0
        if size <= self.tail_bytes or not self.skip_history():
            return 0
        with open(self.run.events_jsonl, "rb") as handle:
            handle.seek(size - self.tail_bytes)
            chunk = handle.read(self.tail_bytes)
        newline = chunk.find(b"\n")
        self.bytes_read += len(chunk)
        return size - self.tail_bytes + newline + 1 if newline >= 0 else 0

    @property
    def kind(self) -> str:
        with contextlib.suppress(JobError):
            return str(self.run.read_job().get("kind") or "")
        return ""

    def take_events(self, events: list[dict[str, Any]]) -> bool:
        """Hook for subclasses: digest new events; True when curves changed."""
        return False

    def describe(self, state: str, status: Mapping[str, Any]) -> str:
        """The panel's line for ``state``: how it ended, or the latest progress."""
        progress = self.last_progress or status.get("progress") or {}
        if state == "done":
            return "Done" + (f": {self.last_message}" if self.last_message else "")
        if state == "failed":
            return f"Failed: {status.get('error') or 'see worker.log in the run folder'}"
        if state == "cancelled":
            return "Cancelled; resume it from the runs list"
        if state == "cancelling":
            return "Cancelling: finishing the current step and saving a checkpoint..."
        if progress:
            return progress_text(progress, self.shown_metrics)
        return self.last_message or ("Starting..." if state == "queued" else "Running...")

    def cancel(self) -> str:
        """:func:`cancel_job` of the followed run (the panels' Cancel buttons)."""
        return cancel_job(self.run)

    def poll(self) -> JobUpdate:
        """Read the events written since the last call and the (refreshed) status."""
        process = getattr(self.run, "process", None)
        if process is not None:
            process.poll()
        # Status first: a final state read here guarantees the final event is in the log below.
        status = refresh_status(self.run)
        self.bytes_read = 0
        if not self._started:
            self._started = True
            if self.offset == 0:
                self.offset = self._start_offset()
        events, offset = self.run.read_events(self.offset, max_bytes=self.max_bytes_per_poll)
        self.bytes_read += offset - self.offset
        self.offset = offset
        try:
            caught_up = self.offset >= self.run.events_jsonl.stat().st_size
        except OSError:
            caught_up = True
        for event in events:
            if event.get("type") == "progress":
                self.last_progress = event
            elif event.get("type") == "log" and event.get("level") in (None, "info", "warning", "error"):
                self.last_message = str(event.get("message", ""))
        curves_changed = self.take_events(events)
        state = str(status.get("state") or "queued")
        progress = self.last_progress or status.get("progress") or {}
        finished = state in FINAL_STATES and caught_up  # its last events are read before it is done
        total = int(progress.get("total") or 1)
        self.last_update = JobUpdate(
            state=state,
            finished=finished,
            step=total if state == "done" else int(progress.get("step") or 0),
            total=total,
            stage=str(progress.get("stage") or ""),
            text=self.describe(state, status),
            eta="" if finished else format_eta(progress.get("eta_s")),
            events=events,
            status=status,
            curves_changed=curves_changed,
        )
        return self.last_update

    def wait(self, timeout_s: float = 600.0, interval_s: float = 0.2) -> JobUpdate:
        """Poll until the run ends (scripts and tests; the panels poll from a timer).

        Raises:
            TimeoutError: still not finished after ``timeout_s`` seconds.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            update = self.poll()
            if update.finished:
                return update
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run.path} still {update.state} after {timeout_s:g} s")
            time.sleep(interval_s)

    def progress_text(self, status: Mapping[str, Any] | None = None) -> str:
        """The panel's line for the run now (from ``status`` when given, else ``status.json``)."""
        status = status if status is not None else refresh_status(self.run)
        return self.describe(str(status.get("state") or "queued"), status)

    def percent(self) -> int:
        """Share of the steps done, 0..100, by the latest progress event."""
        progress = self.last_progress or self.run.read_status().get("progress") or {}
        total = progress.get("total") or 0
        return int(round(100 * (progress.get("step") or 0) / total)) if total else 0


def poll_job(
    run_dir: str | os.PathLike[str] | RunDir, offset: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """One look at a run for a script that keeps its own place in the event log: ``(refreshed
    status, events written after byte ``offset``, offset to pass next time)``; reaps a worker that
    this process launched (a :class:`RunDir` from :func:`launch_job`). At most
    :attr:`JobFollower.max_bytes_per_poll` bytes are read per call."""
    follower = JobFollower(run_dir)
    follower.offset, follower._started = offset, True  # from ``offset`` (no tail skip), bounded
    update = follower.poll()
    return update.status, update.events, follower.offset
