"""A small real job for the job-protocol tests: counts steps, one checkpoint per step.

    python Testing/job_workers.py count --run-dir RUN --steps N --step-s S [--ignore-sigterm]
    python Testing/job_workers.py jobs list|status|cancel ...   (the real ``jobs`` commands)
    python Testing/job_workers.py phantom OUT_DIR ...            (the real ``phantom`` job)

``jobs`` and ``phantom`` are registered from the same modules as in ``medsegnas``, so they can
be tested while the ``medsegnas`` parser cannot load yet (a module it lists is missing).
Background workers started from here run this script too (``job_entry``).

``count`` sleeps ``S`` seconds per step, reports progress, saves ``{"count", "steps"}`` after
every step (``steps`` lists the step indices done, in order, across resumes) and stops
between steps when asked. ``--ignore-sigterm`` makes it ignore SIGTERM, to test the SIGKILL
after the grace period. ``--fail-at K`` raises a DatasetError at step K. ``--grandchild`` first
starts a child process that starts a grandchild in a session of its own (out of the worker's
process group, as a tool that daemonizes would) and writes both pids to ``artifacts/tree.json``.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from MedSegNASLib.data import commands as data_commands
from MedSegNASLib.errors import DatasetError
from MedSegNASLib.jobs import JobContext, add_job_arguments, commands, run_job_command


def count_body(args: argparse.Namespace):
    def body(ctx: JobContext) -> dict:
        if args.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if args.grandchild and ctx.run_dir is not None:
            tree = ctx.run_dir.artifacts / "tree.json"
            script = (
                "import json, subprocess, sys, time\n"
                "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
                " start_new_session=True)\n"
                f"open({str(tree)!r}, 'w').write(json.dumps([__import__('os').getpid(), grandchild.pid]))\n"
                "time.sleep(120)\n"
            )
            subprocess.Popen([sys.executable, "-c", script])
        state = (ctx.load_checkpoint() if ctx.resuming else None) or {"count": 0, "steps": []}
        if ctx.resuming:
            ctx.log(f"resuming at step {state['count']}")
        for step in range(state["count"], args.steps):
            if args.fail_at is not None and step == args.fail_at:
                raise DatasetError(f"step {step} failed on purpose")
            time.sleep(args.step_s)
            state = {"count": step + 1, "steps": [*state["steps"], step]}
            ctx.progress(step + 1, args.steps, stage="count", value=float(step + 1))
            ctx.save_checkpoint(state)
            ctx.raise_if_stop_requested()
        if ctx.run_dir is not None:
            result_file = ctx.run_dir.artifacts / "count.txt"
            result_file.write_text(f"{state['count']}\n")
            ctx.artifact(result_file, "count")
        return {"count": state["count"], "steps": state["steps"]}

    return body


def count_command(args: argparse.Namespace) -> int:
    config = {"steps": args.steps, "step_s": args.step_s}
    return run_job_command("count", args, count_body(args), config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job_workers")
    parser.add_argument("--debug", action="store_true")
    parser.set_defaults(job_entry=[str(Path(__file__).resolve())])
    subparsers = parser.add_subparsers(dest="command", required=True)
    count = subparsers.add_parser("count", help="count steps, checkpointing after each")
    count.add_argument("--steps", type=int, default=10)
    count.add_argument("--step-s", type=float, default=0.1)
    count.add_argument("--ignore-sigterm", action="store_true")
    count.add_argument("--fail-at", type=int, default=None)
    count.add_argument("--grandchild", action="store_true")
    add_job_arguments(count)
    count.set_defaults(func=count_command)
    commands.register(subparsers)
    data_commands.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from MedSegNASLib.cli import run

    args = build_parser().parse_args(argv)
    return run(args.func, args, args.debug)


if __name__ == "__main__":
    sys.exit(main())
