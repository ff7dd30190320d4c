"""``medsegnas jobs list|status|cancel``: watch and stop background jobs from a shell.

``RUN`` is a run directory path (as printed by ``--detach``) or the name of one under ./runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import JobError
from .context import format_progress
from .rundir import FINAL_STATES, RunDir
from .runner import EXIT_CANCELLED, EXIT_DONE, EXIT_FAILED, cancel, list_runs, refresh_status, run_summary

DEFAULT_RUNS_ROOT = Path("runs")
#: Exit code of ``jobs status --follow`` for each final state of the run it followed.
FOLLOW_EXIT_CODES = {"done": EXIT_DONE, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``jobs`` with its ``list``, ``status`` and ``cancel`` actions."""
    jobs = subparsers.add_parser(
        "jobs",
        help="list, watch and cancel background jobs",
        description="List, watch and cancel jobs started with --detach (or with --run-dir). "
        "RUN is a run directory, or the name of one under ./runs.",
    )
    actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="table of the runs in a folder, newest first",
        description="Show the runs in DIR, newest first: run id, kind, state, progress, start time, "
        "path. Runs whose worker died are marked failed on the way.",
    )
    listing.add_argument(
        "root",
        nargs="?",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of run directories (default: ./runs)",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(func=list_command)

    status = actions.add_parser(
        "status",
        help="state, progress, metrics and error of one run",
        description="Show a run's state, worker pid, progress, last metrics, ETA and error. "
        "With --follow, print its events as they come until it ends; the exit code is then "
        f"{EXIT_DONE} done, {EXIT_FAILED} failed, {EXIT_CANCELLED} cancelled.",
    )
    status.add_argument("run", metavar="RUN", help="run directory, or its name under ./runs")
    status.add_argument("--json", action="store_true", help="print JSON (with --follow: one event per line)")
    status.add_argument("--follow", action="store_true", help="stream the run's events until it ends")
    status.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between polls with --follow (default: 0.5)",
    )
    status.set_defaults(func=status_command)

    stop = actions.add_parser(
        "cancel",
        help="stop a running job (it saves a checkpoint first)",
        description="Ask a run's worker to stop (SIGTERM to its process group): it finishes the current "
        "step, saves a checkpoint and ends 'cancelled'; continue it later with --resume. A worker "
        "still running after the grace period is killed (SIGKILL).",
    )
    stop.add_argument("run", metavar="RUN", help="run directory, or its name under ./runs")
    stop.add_argument(
        "--grace", type=float, default=30.0, metavar="S", help="seconds to wait before SIGKILL (default: 30)"
    )
    stop.add_argument("--no-wait", action="store_true", help="send SIGTERM and return without waiting")
    stop.set_defaults(func=cancel_command)


def resolve_run(text: str) -> RunDir:
    """The run directory ``text`` names: a path, else a name under ./runs."""
    for candidate in (Path(text), DEFAULT_RUNS_ROOT / text):
        run = RunDir(candidate)
        if run.is_run_dir():
            return run
    raise JobError(
        f"{text} is not a run directory (no job.json or status.json); "
        "see 'medsegnas jobs list' for the runs under ./runs"
    )


def _short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def list_command(args: argparse.Namespace) -> int:
    root = args.root if args.root is not None else DEFAULT_RUNS_ROOT
    if args.root is not None and not root.is_dir():
        raise JobError(f"{root} is not a folder; give the folder that holds your run directories")
    runs = list_runs(root)
    if args.json:
        print(json.dumps([{k: v for k, v in run.items() if k != "created_ts"} for run in runs], indent=2))
        return EXIT_DONE
    if not runs:
        print(f"no runs in {root}")
        return EXIT_DONE
    header = ("RUN ID", "KIND", "STATE", "PROGRESS", "STARTED", "PATH")
    rows = [
        (
            run["run_id"],
            run["kind"],
            run["state"],
            "-" if run["percent"] is None else f"{run['percent']:.0f}%",
            _short_time(run["started"]),
            run["path"],
        )
        for run in runs
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, str(row[-1])]))
    return EXIT_DONE


def _status_lines(summary: dict[str, Any]) -> list[str]:
    state = summary["state"]
    if summary.get("pid") and state not in FINAL_STATES:
        state += f" (pid {summary['pid']} on {summary.get('host') or '?'})"
    progress = summary.get("progress") or {}
    lines = [f"run:      {summary['path']}", f"kind:     {summary['kind']}", f"state:    {state}"]
    if progress:
        shown = {**progress, "metrics": {}}
        if summary["state"] in FINAL_STATES:
            shown["eta_s"] = None
        lines.append(f"progress: {format_progress(shown)}")
        metrics = progress.get("metrics") or {}
        if metrics:
            lines.append("metrics:  " + "  ".join(f"{key}={value}" for key, value in metrics.items()))
    lines.append(f"started:  {_short_time(summary.get('started'))}")
    if summary.get("ended"):
        lines.append(f"ended:    {_short_time(summary['ended'])}")
    if summary.get("error"):
        lines.append(f"error:    {summary['error']}")
    return lines


def _event_line(event: dict[str, Any]) -> str:
    kind = event.get("type")
    stamp = _short_time(event.get("time"))
    if kind == "progress":
        text = format_progress(event)
    elif kind == "log":
        level = event.get("level", "info")
        text = event.get("message", "") if level == "info" else f"{level}: {event.get('message', '')}"
    elif kind == "checkpoint":
        text = f"checkpoint {event.get('path')}" + (
            f" (step {event['step']})" if event.get("step") is not None else ""
        )
    elif kind == "artifact":
        text = f"artifact ({event.get('kind')}): {event.get('path')}"
    elif kind == "done":
        text = "done" + (f": {json.dumps(event['result'])}" if event.get("result") is not None else "")
    elif kind == "error":
        text = f"failed: {event.get('message')}"
    elif kind == "cancelled":
        text = "cancelled" + (f": {event['message']}" if event.get("message") else "")
    else:
        text = json.dumps(event)
    return f"{stamp}  {text}"


def status_command(args: argparse.Namespace) -> int:
    run = resolve_run(args.run)
    if not args.follow:
        summary = run_summary(run)
        summary.pop("created_ts", None)
        print(json.dumps(summary, indent=2) if args.json else "\n".join(_status_lines(summary)))
        return EXIT_DONE
    offset = 0
    while True:
        state = refresh_status(run).get("state")  # read before the events: none can be missed
        events, offset = run.read_events(offset)
        for event in events:
            print(json.dumps(event) if args.json else _event_line(event), flush=True)
        if state in FINAL_STATES:
            return FOLLOW_EXIT_CODES[state]
        time.sleep(max(args.interval, 0.05))


def cancel_command(args: argparse.Namespace) -> int:
    run = resolve_run(args.run)
    before = refresh_status(run).get("state")
    if before in FINAL_STATES:
        print(f"{run.path}: already {before}; nothing to cancel")
        return EXIT_DONE
    if not args.no_wait:
        print(f"stopping {run.path} (waiting up to {args.grace:g} s) ...", file=sys.stderr, flush=True)
    state = cancel(run, grace_s=args.grace, wait=not args.no_wait)
    print(f"{run.path}: {state}")
    return EXIT_DONE
