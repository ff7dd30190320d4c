"""Run a command in a fresh process and measure *its own* wall time, CPU time and peak memory.

``os.wait4`` on a child started straight from a big process (pytest, a benchmark that built a
bundle) over-reports: Linux carries into the child's ``ru_maxrss`` the resident high-water mark of
the address space it had before ``exec``, the parent's (``fork`` and ``vfork`` alike; CI measured
3 GiB for a 0.5 GiB ``segment`` run this way). Here a small launcher (``python -S``, about 10 MiB)
starts the command and reports the command's rusage, so the figure is the command's own.

POSIX only (``os.posix_spawnp``, ``os.wait4``). Used by the tests and by the benchmarks (``benchmarks/segment_bench.py``, ``plan_accuracy.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_LAUNCHER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as handle:
    handle.write('{"code": %d, "wall": %r, "cpu": %r, "maxrss": %d}' % (
        os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss))
"""


@dataclass(frozen=True)
class ChildRun:
    """A finished command: exit code, seconds from spawn to exit, CPU seconds, peak RSS bytes."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_bytes: int


def run_child(
    argv: list[str], env: dict[str, str] | None = None, stdout: IO | None = None, stderr: IO | None = None
) -> ChildRun:
    """Run ``argv`` to completion (stdout/stderr to the given files) and measure it.

    The wall time is the launcher's, spawn to exit, so the launcher's own start (about 20 ms)
    is not in it. Raises ``RuntimeError`` if the launcher itself fails (the command's exit code,
    whatever it is, is in the result).
    """
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "rusage.json"
        launcher = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCHER, str(report), *argv],
            env=env,
            stdout=stdout,
            stderr=stderr,
            check=False,
        )
        if not report.is_file():
            raise RuntimeError(f"the measuring launcher failed (exit {launcher.returncode}) for {argv[:3]}")
        data = json.loads(report.read_text())
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return ChildRun(int(data["code"]), float(data["wall"]), float(data["cpu"]), int(data["maxrss"]) * scale)


def run_child_captured(argv: list[str], env: dict[str, str] | None = None) -> tuple[ChildRun, str, str]:
    """:func:`run_child` with stdout and stderr returned as text (through files: no pipe can fill)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        run = run_child(argv, env, out, err)
        out.seek(0)
        err.seek(0)
        return run, out.read(), err.read()
