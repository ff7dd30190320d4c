"""Worst GUI-timer tick on a long run: ``JobFollower.poll`` and ``read_run_curves``, old vs new.

    python benchmarks/panel_tick_bench.py [--events 100000] [--ticks 20]

Writes a search-like run with ``--events`` progress events through the real job API
(:class:`~MedSegNASLib.jobs.JobContext`: event log, status and the compact ``curves.json``), then
times what a panel does on re-attaching and on the following ticks:

* old: the whole event log parsed in the first tick (what ``JobFollower.poll`` and
  ``read_run_curves`` did before: ``RunDir.read_events(0)`` and every progress event into
  :class:`~MedSegNASLib.panels.panel_runs.RunCurves`);
* new: :meth:`JobFollower.poll` (bounded bytes per tick, tail on re-attach) and
  :func:`read_run_curves` (``curves.json``), worst of ``--ticks`` ticks while the run goes on.

Prints the worst tick of each in ms and the ratio old/new. Importing ``panel_runs`` needs
``slicer`` (the slicer-core wheel).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegNAS"))

from MedSegNASLib.jobs import JobContext, RunDir  # noqa: E402
from MedSegNASLib.jobs.context import ProgressDisplay  # noqa: E402


class _Quiet(ProgressDisplay):
    def progress(self, record):  # the benchmark writes 100k events: no terminal lines
        pass


def write_run(root: Path, events: int, validate_every: int = 500) -> tuple[RunDir, JobContext]:
    """A running search-like run with ``events`` progress events (loss, arch loss, validation Dice)."""
    run = RunDir.create(root, "search")
    run.write_job({"kind": "search", "run_id": run.run_id, "config": {}})
    run.write_status(state="running", pid=None, host=None)
    ctx = JobContext(run, display=_Quiet())
    val = 0.1
    for step in range(1, events + 1):
        if step % validate_every == 0:
            val = min(0.95, val + 0.01)
        loss = 1.0 / math.sqrt(step)
        ctx.progress(
            step,
            events * 2,
            stage="search",
            epoch=step // 100 + 1,
            loss=loss,
            arch_loss=loss / 2,
            val_dice=val,
        )
    ctx.flush_curves()
    return run, ctx


def old_tick(run: RunDir) -> float:
    """The former first tick: parse the whole log for the progress line and for the curves."""
    from MedSegNASLib.panels.panel_runs import RunCurves

    start = time.perf_counter()
    events, _ = run.read_events(0)  # JobFollower.poll from offset 0
    last = [e for e in events if e.get("type") == "progress"][-1]
    assert last["step"] > 0
    events, _ = run.read_events(0)  # read_run_curves, a separate reader
    curves = RunCurves()
    for event in events:
        if event.get("type") == "progress":
            curves.add(event)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args(argv)
    from MedSegNASLib.panels import panel_runs
    from MedSegNASLib.panels.panel_jobs import JobFollower

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run, ctx = write_run(Path(folder), args.events)
        size = run.events_jsonl.stat().st_size
        curves_size = (run.path / "curves.json").stat().st_size
        print(
            f"run: {args.events} events, events.jsonl {size / 2**20:.1f} MiB, curves.json "
            f"{curves_size / 2**10:.0f} KiB (written in {time.perf_counter() - started:.1f} s)"
        )
        old = max(old_tick(run) for _ in range(2))
        follower = JobFollower(run)
        worst_poll = worst_curves = 0.0
        step = args.events
        for tick in range(args.ticks):
            t0 = time.perf_counter()
            follower.poll()
            t1 = time.perf_counter()
            panel_runs.read_run_curves(run)
            t2 = time.perf_counter()
            worst_poll, worst_curves = max(worst_poll, t1 - t0), max(worst_curves, t2 - t1)
            for _ in range(50):  # the run goes on between two ticks
                step += 1
                ctx.progress(step, args.events * 2, stage="search", loss=1.0 / math.sqrt(step), val_dice=0.9)
            if tick % 5 == 4:
                ctx.flush_curves()  # as the worker does every 2 s
        new = worst_poll + worst_curves
        print(f"old first tick (poll + curves, whole log): {1000 * old:9.1f} ms")
        print(f"new worst JobFollower.poll tick:           {1000 * worst_poll:9.1f} ms")
        print(f"new worst read_run_curves tick:            {1000 * worst_curves:9.1f} ms")
        print(f"ratio old / new (poll + curves):           {old / new:9.0f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
