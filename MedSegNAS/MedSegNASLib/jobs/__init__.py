"""The job protocol: every long task runs as a worker that writes one run directory.

See ``ARCHITECTURE.md`` ("Jobs") and the module docstrings of :mod:`.rundir` (layout, files,
lock), :mod:`.context` (what a job body sees) and :mod:`.runner` (run, launch, cancel, watch).
Importing this package is cheap: torch is imported only to save or load a checkpoint.
"""

from __future__ import annotations

from .context import JobCancelled, JobContext
from .rundir import FINAL_STATES, STATES, RunDir
from .runner import (
    EXIT_CANCELLED,
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    add_job_arguments,
    cancel,
    launch,
    list_runs,
    refresh_status,
    run_job_command,
    run_summary,
)

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_DONE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "FINAL_STATES",
    "STATES",
    "JobCancelled",
    "JobContext",
    "RunDir",
    "add_job_arguments",
    "cancel",
    "launch",
    "list_runs",
    "refresh_status",
    "run_job_command",
    "run_summary",
]
