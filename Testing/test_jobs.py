"""The job protocol with real worker processes, real signals and real files.

The worker is ``Testing/job_workers.py count``: it sleeps a little per step, reports progress
and checkpoints a counter after every step, so a test can stop, kill and resume it and check
that every step was done exactly once. The ``jobs`` commands are tested on the real ``phantom``
job, through ``medsegnas`` once its parser loads (see :func:`jobs_cli`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest
from MedSegNASLib.errors import DatasetError, JobError
from MedSegNASLib.jobs import (
    EXIT_CANCELLED,
    JobCancelled,
    JobContext,
    RunDir,
    add_job_arguments,
    cancel,
    launch,
    list_runs,
    refresh_status,
    run_job_command,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="job workers need POSIX signals and flock"),
]

WORKER_SCRIPT = Path(__file__).resolve().with_name("job_workers.py")
WORKER_ENTRY = [str(WORKER_SCRIPT)]


wait_for = functools.partial(conftest.wait_for, timeout=20.0)


def launch_count(
    runs_root: Path, steps: int, step_s: float, *extra: str, run_dir: RunDir | None = None
) -> RunDir:
    argv = ["count", "--steps", str(steps), "--step-s", str(step_s), *extra]
    return launch(argv, run_dir, runs_root=runs_root, entry=WORKER_ENTRY)


def progress_steps(run: RunDir) -> list[int]:
    events, _ = run.read_events()
    return [event["step"] for event in events if event["type"] == "progress"]


def wait_for_step(run: RunDir, step: int) -> None:
    wait_for(lambda: any(s >= step for s in progress_steps(run)), what=f"progress step {step} in {run.path}")


def checkpoint_state(run: RunDir) -> dict:
    return JobContext(run).load_checkpoint()


def test_launch_then_poll_events_incrementally_until_done(tmp_path: Path) -> None:
    run = launch_count(tmp_path / "runs", steps=6, step_s=0.1)
    assert run.path.parent == tmp_path / "runs"
    assert run.run_id.startswith("count-") and len(run.run_id.split("-")[-1]) == 6

    seen: list[dict] = []
    offsets = [0]
    deadline = time.monotonic() + 30
    while not any(event["type"] == "done" for event in seen):
        assert time.monotonic() < deadline, f"no done event; worker.log:\n{run.worker_log.read_text()}"
        events, offset = run.read_events(offsets[-1])
        assert offset >= offsets[-1]
        seen += events
        offsets.append(offset)
        time.sleep(0.05)

    assert run.process.wait(timeout=10) == 0
    assert len({offset for offset in offsets}) > 2, "events should arrive over several polls"
    # The incremental reads saw every line exactly once, in file order.
    assert seen == run.read_events(0)[0]
    assert offsets[-1] == run.events_jsonl.stat().st_size
    assert [event["step"] for event in seen if event["type"] == "progress"] == [1, 2, 3, 4, 5, 6]
    assert all(
        event["total"] == 6 and event["stage"] == "count" for event in seen if event["type"] == "progress"
    )
    assert all("time" in event for event in seen)
    assert seen[-1]["type"] == "done" and seen[-1]["result"] == {"count": 6, "steps": [0, 1, 2, 3, 4, 5]}
    artifact = next(event for event in seen if event["type"] == "artifact")
    assert artifact["path"] == "artifacts/count.txt" and (run.path / artifact["path"]).read_text() == "6\n"

    status = refresh_status(run)
    assert status["state"] == "done" and status["error"] is None
    assert status["pid"] == run.process.pid and status["started"] <= status["ended"]
    assert status["progress"]["step"] == 6
    job = run.read_job()
    assert job["kind"] == "count" and job["config"] == {"steps": 6, "step_s": 0.1}
    assert set(job["versions"]) == {"python", "torch", "monai", "medsegnas"} and job["versions"]["torch"]
    assert "--run-dir" in job["argv"] and str(run.path) in job["argv"]
    assert (run.checkpoints / "last.pt").is_file()
    assert "count 6/6 (100%)" in run.worker_log.read_text()


def test_reader_ignores_a_partial_last_line_until_it_is_complete(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "count")
    run.append_event({"type": "log", "level": "info", "message": "first"})
    line = json.dumps({"type": "progress", "time": "t", "step": 1, "total": 2}) + "\n"
    with open(run.events_jsonl, "a") as handle:
        handle.write(line[:20])  # a worker caught in the middle of a write

    events, offset = run.read_events(0)
    assert [event["message"] for event in events] == ["first"]
    assert run.read_events(offset) == ([], offset)

    with open(run.events_jsonl, "a") as handle:
        handle.write(line[20:])
    events, new_offset = run.read_events(offset)
    assert events == [json.loads(line)]
    assert new_offset == run.events_jsonl.stat().st_size


def test_cancel_checkpoints_then_resume_does_every_step_once(tmp_path: Path) -> None:
    run = launch_count(tmp_path, steps=10, step_s=0.2)
    wait_for_step(run, 2)

    assert cancel(run, grace_s=15) == "cancelled"
    assert run.process.wait(timeout=10) == EXIT_CANCELLED
    status = run.read_status()
    assert status["state"] == "cancelled" and status["error"] is None
    events, _ = run.read_events()
    assert events[-1]["type"] == "cancelled" and "SIGTERM" in events[-1]["message"]
    stopped_at = checkpoint_state(run)["count"]
    assert 2 <= stopped_at < 10
    assert progress_steps(run) == list(range(1, stopped_at + 1)), (
        "the step in progress finished and was saved"
    )

    resumed = launch_count(tmp_path, 10, 0.05, "--resume", run_dir=run)
    assert resumed.process.wait(timeout=30) == 0, resumed.worker_log.read_text()
    assert refresh_status(run)["state"] == "done"
    assert checkpoint_state(run) == {"count": 10, "steps": list(range(10))}
    assert progress_steps(run) == list(range(1, 11)), "no step done twice or skipped across the resume"
    assert run.read_events()[0][-1]["result"] == {"count": 10, "steps": list(range(10))}


def test_sigkilled_worker_is_reported_failed_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    run = launch_count(tmp_path, steps=8, step_s=0.2)
    wait_for_step(run, 2)
    assert refresh_status(run)["state"] == "running"  # alive: left alone

    pid = run.read_status()["pid"]
    os.killpg(run.read_status()["pgid"], signal.SIGKILL)
    assert run.process.wait(timeout=10) == -signal.SIGKILL

    status = refresh_status(run)
    assert status["state"] == "failed"
    assert status["error"] == f"worker process {pid} exited without finishing (killed?)"
    last_event = run.read_events()[0][-1]
    assert last_event["type"] == "error" and last_event["message"] == status["error"]
    saved = checkpoint_state(run)
    assert saved["steps"] == list(range(saved["count"]))

    resumed = launch_count(tmp_path, 8, 0.05, "--resume", run_dir=run)
    assert resumed.process.wait(timeout=30) == 0, resumed.worker_log.read_text()
    assert refresh_status(run)["state"] == "done"
    assert checkpoint_state(run) == {"count": 8, "steps": list(range(8))}
    # Steps after the last checkpoint may be reported twice (they were redone); none is lost.
    assert sorted(set(progress_steps(run))) == list(range(1, 9))


def test_worker_that_dies_before_starting_is_reported_failed(tmp_path: Path) -> None:
    run = launch(["count", "--no-such-option"], runs_root=tmp_path, entry=WORKER_ENTRY)
    assert run.process.wait(timeout=20) == 2  # argparse usage error, before taking the lock
    status = refresh_status(run)
    assert status["state"] == "failed"
    assert status["error"] == f"worker process {run.process.pid} exited without finishing (killed?)"
    assert "unrecognized arguments: --no-such-option" in run.worker_log.read_text()


def test_second_worker_on_the_same_run_dir_is_refused(tmp_path: Path) -> None:
    run = launch_count(tmp_path, steps=400, step_s=0.1)
    try:
        wait_for_step(run, 1)
        first_pid = run.read_status()["pid"]
        second = subprocess.run(
            [sys.executable, str(WORKER_SCRIPT), "count", "--steps", "3", "--run-dir", str(run.path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "in use by a running worker" in second.stderr and str(first_pid) in second.stderr
        resume = subprocess.run(
            [sys.executable, str(WORKER_SCRIPT), "count", "--run-dir", str(run.path), "--resume"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert resume.returncode == 1 and "in use by a running worker" in resume.stderr
        with pytest.raises(JobError, match="in use by a running worker"):
            launch_count(tmp_path, 3, 0.1, run_dir=run)
        status = run.read_status()
        assert status["state"] == "running" and status["pid"] == first_pid
    finally:
        assert cancel(run, wait=False) == "cancelling"
    assert run.process.wait(timeout=10) == EXIT_CANCELLED
    assert refresh_status(run)["state"] == "cancelled"


def test_worker_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    run = launch_count(tmp_path, 100, 0.1, "--ignore-sigterm")
    wait_for_step(run, 1)

    started = time.monotonic()
    assert cancel(run, grace_s=1.0) == "cancelled"
    assert time.monotonic() - started >= 1.0
    assert run.process.wait(timeout=10) == -signal.SIGKILL
    status = run.read_status()
    assert status["state"] == "cancelled"
    assert status["error"] == "worker did not stop within 1 s of SIGTERM; killed with SIGKILL"
    assert run.read_events()[0][-1]["type"] == "cancelled"
    assert not run.lock_is_held()


def _tree_pids(run: RunDir) -> list[int]:
    tree = run.artifacts / "tree.json"
    wait_for(lambda: tree.exists() and tree.read_text().endswith("]"), what="the worker's child processes")
    return json.loads(tree.read_text())


def _gone(pid: int) -> bool:
    """Not running any more (a zombie whose parent has not reaped it yet counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill-after-grace"])
def test_cancel_reaches_children_and_grandchildren_outside_the_process_group(
    tmp_path: Path, ignore_sigterm: bool
) -> None:
    """Defect 9: cancel stops the whole process tree (psutil), not only the worker's process group."""
    extra = ["--grandchild", *(["--ignore-sigterm"] if ignore_sigterm else [])]
    run = launch_count(tmp_path, 400, 0.1, *extra)
    child, grandchild = _tree_pids(run)
    assert os.getpgid(grandchild) != run.read_status()["pgid"], "the grandchild left the worker's group"
    state = cancel(run, grace_s=1.0)
    assert state == "cancelled"
    run.process.wait(timeout=10)
    wait_for(lambda: _gone(child) and _gone(grandchild), what="the child and grandchild to stop")
    assert not run.lock_is_held()


def test_run_lock_is_portable_and_released_when_its_holder_dies(tmp_path: Path) -> None:
    """The run lock (filelock): one holder at a time, also within one process; a SIGKILLed holder's
    lock is free at once, so its run reads as failed rather than running forever."""
    run = RunDir.create(tmp_path, "count")
    first = run.try_lock()
    assert first is not None and run.lock_is_held()
    assert run.try_lock(0.2) is None, "a second holder must wait"
    first.release()
    assert not run.lock_is_held()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom MedSegNASLib.jobs import RunDir\n"
         f"lock = RunDir({str(run.path)!r}).acquire_lock()\nprint('locked', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    assert run.lock_is_held()
    with pytest.raises(JobError, match="in use by a running worker"):
        run.acquire_lock(0.2)
    holder.kill()
    holder.wait(timeout=10)
    assert not run.lock_is_held()


def test_failure_in_the_body_is_recorded_with_its_message(tmp_path: Path) -> None:
    run_path = tmp_path / "failing"
    result = subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), "count", "--steps", "5", "--step-s", "0", "--fail-at", "2"]
        + ["--run-dir", str(run_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: step 2 failed on purpose"
    run = RunDir.open(run_path)
    status = run.read_status()
    assert status["state"] == "failed" and status["error"] == "step 2 failed on purpose"
    assert status["progress"]["step"] == 2
    last_event = run.read_events()[0][-1]
    assert last_event["type"] == "error" and last_event["message"] == "step 2 failed on purpose"
    # It stopped where it failed and can be resumed once the cause is fixed.
    assert checkpoint_state(run)["count"] == 2


def test_ctrl_c_stops_after_the_step_and_twice_aborts_at_once(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    command = [sys.executable, str(WORKER_SCRIPT), "count", "--steps", "20", "--run-dir", str(run.path)]

    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*command, *extra], stderr=subprocess.PIPE, text=True)

    def interrupt_after_step(process: subprocess.Popen[str], step: int) -> None:
        wait_for_step(run, step)
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        while "press Ctrl-C again to abort now" not in process.stderr.readline():
            pass

    first = start("--step-s", "0.2")
    interrupt_after_step(first, 2)
    assert first.wait(timeout=20) == EXIT_CANCELLED
    assert run.read_status()["state"] == "cancelled"
    stopped_at = JobContext(run).load_checkpoint()["count"]

    second = start("--step-s", "1", "--resume")  # a long step, so the second Ctrl-C lands inside it
    interrupt_after_step(second, stopped_at + 1)
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=20) == 130
    status = run.read_status()
    assert status["state"] == "cancelled" and "second Ctrl-C" in status["error"]

    third = start("--step-s", "0.01", "--resume")
    assert third.wait(timeout=30) == 0
    assert JobContext(run).load_checkpoint() == {"count": 20, "steps": list(range(20))}


def test_foreground_on_a_terminal_shows_a_progress_bar() -> None:
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 cols
    command = [sys.executable, str(WORKER_SCRIPT), "count", "--steps", "3", "--step-s", "0.05"]
    process = subprocess.Popen(command, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closes when the worker exits
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(timeout=20) == 0
    assert "count: 100%|" in output.decode() and "3/3 [" in output.decode()


# -- run_job_command in this process: start rules and the foreground mode ----------------------


def job_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    return parser.parse_args(list(argv))


def counting_body(steps: int, stop_after: int | None = None):
    def body(ctx: JobContext) -> dict:
        state = (ctx.load_checkpoint() if ctx.resuming else None) or {"count": 0}
        for step in range(state["count"], steps):
            state = {"count": step + 1}
            ctx.progress(step + 1, steps, stage="count")
            ctx.save_checkpoint(state)
            if stop_after is not None and step + 1 == stop_after:
                ctx.request_stop("test stop")
            ctx.raise_if_stop_requested()
        return state

    return body


def test_start_and_resume_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_path = tmp_path / "run"
    assert (
        run_job_command("count", job_args("--run-dir", str(run_path)), counting_body(4, 2), {})
        == EXIT_CANCELLED
    )
    run = RunDir.open(run_path)
    assert run.read_status()["state"] == "cancelled" and run.read_job()["kind"] == "count"

    with pytest.raises(JobError, match="already holds a cancelled run; add --resume"):
        run_job_command("count", job_args("--run-dir", str(run_path)), counting_body(4), {})
    with pytest.raises(JobError, match="holds a 'count' run, not 'phantom'"):
        run_job_command("phantom", job_args("--run-dir", str(run_path), "--resume"), counting_body(4), {})
    with pytest.raises(JobError, match="--resume needs --run-dir"):
        run_job_command("count", job_args("--resume"), counting_body(4), {})
    with pytest.raises(JobError, match="not a run directory"):
        run_job_command(
            "count", job_args("--run-dir", str(tmp_path / "nothing"), "--resume"), counting_body(4), {}
        )
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "thesis.txt").write_text("keep me")
    with pytest.raises(JobError, match="is not empty .*thesis.txt"):
        run_job_command("count", job_args("--run-dir", str(tmp_path / "documents")), counting_body(4), {})

    assert (
        run_job_command("count", job_args("--run-dir", str(run_path), "--resume"), counting_body(4), {}) == 0
    )
    assert run.read_status()["state"] == "done" and run.read_status()["result"] == {"count": 4}
    assert [e["step"] for e in run.read_events()[0] if e["type"] == "progress"] == [1, 2, 3, 4]

    capsys.readouterr()
    assert (
        run_job_command("count", job_args("--run-dir", str(run_path), "--resume"), counting_body(4), {}) == 0
    )
    assert "already finished (done); nothing to resume" in capsys.readouterr().err
    assert launch(["count", "--resume"], run_path, entry=WORKER_ENTRY).process is None  # nothing to start
    assert run.read_status()["state"] == "done"


def test_foreground_without_run_dir_reports_to_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[JobContext] = []

    def body(ctx: JobContext) -> dict:
        seen.append(ctx)
        assert ctx.load_checkpoint() is None
        ctx.progress(1, 2, stage="cases", dice=0.5)
        ctx.save_checkpoint({"x": 1})  # nowhere to keep it: a no-op
        ctx.log("half way")
        ctx.progress(2, 2, stage="cases", dice=0.75)
        return {"ok": True}

    assert run_job_command("count", job_args(), body, {}) == 0
    assert seen[0].run_dir is None and not seen[0].resuming
    err = capsys.readouterr().err
    assert "cases 1/2 (50%) dice=0.5" in err and "half way" in err and "cases 2/2 (100%) dice=0.75" in err

    def failing(ctx: JobContext) -> None:
        raise DatasetError("dataset.json lists no training cases")

    assert run_job_command("count", job_args(), failing, {}) == 1
    assert capsys.readouterr().err.strip() == "error: dataset.json lists no training cases"

    def stopping(ctx: JobContext) -> None:
        raise JobCancelled("stop")

    assert run_job_command("count", job_args(), stopping, {}) == EXIT_CANCELLED


# -- the jobs commands through a real command line ---------------------------------------------


def jobs_cli() -> list[str]:
    """``medsegnas`` once every module its parser loads exists; until then the same ``jobs``
    commands registered in job_workers.py's parser."""
    from MedSegNASLib import cli

    if all(importlib.util.find_spec(name) is not None for name in cli.COMMAND_MODULES):
        return [sys.executable, "-m", "MedSegNASLib.cli"]
    return [sys.executable, str(WORKER_SCRIPT)]


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*jobs_cli(), *argv], cwd=cwd, capture_output=True, text=True, timeout=40)


# Enough cases that the job is still running after four CLI calls on a slow, shared machine.
PHANTOM_ARGS = ("phantom", "data", "--cases", "48", "--size", "64", "--unlabeled", "0", "--test-cases", "0")


def test_phantom_job_through_the_jobs_commands(tmp_path: Path) -> None:
    """The real ``phantom`` job: detach, list, status, cancel, follow, resume, with exit codes."""
    detached = run_cli(*PHANTOM_ARGS, "--detach", cwd=tmp_path)
    assert detached.returncode == 0, detached.stderr
    run = RunDir.open(detached.stdout.strip())
    assert run.path.parent == tmp_path / "runs"  # the default --runs-root, relative to the cwd
    assert run.read_job()["kind"] == "phantom" and run.read_job()["config"]["cases"] == 48
    wait_for_step(run, 2)

    listing = run_cli("jobs", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["RUN", "ID", "KIND", "STATE", "PROGRESS", "STARTED", "PATH"]
    assert row.split()[:3] == [run.run_id, "phantom", "running"] and row.endswith(str(run.path))
    as_json = json.loads(run_cli("jobs", "list", "runs", "--json", cwd=tmp_path).stdout)
    assert [(item["run_id"], item["state"]) for item in as_json] == [(run.run_id, "running")]
    assert 0 < as_json[0]["percent"] < 100

    status = run_cli("jobs", "status", run.run_id, cwd=tmp_path)  # a name under ./runs works too
    assert status.returncode == 0, status.stderr
    assert f"state:    running (pid {run.read_status()['pid']}" in status.stdout
    assert "metrics:  case=phantom_0" in status.stdout

    cancelled = run_cli("jobs", "cancel", str(run.path), "--grace", "20", cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{run.path}: cancelled"
    assert (
        json.loads(run_cli("jobs", "status", str(run.path), "--json", cwd=tmp_path).stdout)["state"]
        == "cancelled"
    )
    followed = run_cli("jobs", "status", str(run.path), "--follow", cwd=tmp_path)
    assert followed.returncode == EXIT_CANCELLED
    assert "phantom 1/48 (2%) case=phantom_000" in followed.stdout
    assert (
        followed.stdout.splitlines()[-1].split("  ", 1)[1].startswith("cancelled: stop requested (SIGTERM)")
    )
    written = JobContext(run).load_checkpoint()["done"]
    assert 2 <= len(written) < 48 and not (tmp_path / "data" / "dataset.json").exists()
    first_files = {path: path.stat().st_mtime_ns for path in (tmp_path / "data").rglob("*.nii.gz")}
    assert {path.name.split(".")[0] for path in first_files} == set(written)

    resumed = run_cli(*PHANTOM_ARGS, "--run-dir", str(run.path), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    dataset = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert len(dataset["training"]) == 48
    assert all((tmp_path / "data" / case["label"]).is_file() for case in dataset["training"])
    assert {path: path.stat().st_mtime_ns for path in first_files} == first_files, "cases written twice"
    assert progress_steps(run)[-48:] == list(range(1, 49))
    assert run_cli("jobs", "status", str(run.path), "--follow", cwd=tmp_path).returncode == 0

    again = run_cli("jobs", "cancel", str(run.path), cwd=tmp_path)
    assert again.returncode == 0 and "already done; nothing to cancel" in again.stdout
    for argv in (("status", str(tmp_path / "nope")), ("cancel", "nope"), ("list", str(tmp_path / "nope"))):
        bad = run_cli("jobs", *argv, cwd=tmp_path)
        assert bad.returncode == 1
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error: ")
        assert "not a run directory" in bad.stderr or "is not a folder" in bad.stderr
    assert run_cli("jobs", "list", cwd=tmp_path / "runs").stdout.strip() == "no runs in runs"
    help_text = run_cli("jobs", "cancel", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "--grace" in help_text.stdout and "--no-wait" in help_text.stdout


def test_list_runs_newest_first_with_progress(tmp_path: Path) -> None:
    older = RunDir(tmp_path / "phantom-20240101-120000-aaaaaa")
    older.ensure_layout()
    older.write_status(state="done", progress={"step": 4, "total": 4})
    newer = RunDir(tmp_path / "count-20250101-120000-bbbbbb")
    newer.ensure_layout()
    newer.write_status(state="failed", error="boom", progress={"step": 1, "total": 4})
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [(run["run_id"], run["kind"], run["state"], run["percent"]) for run in runs] == [
        (newer.run_id, "count", "failed", 25.0),
        (older.run_id, "phantom", "done", 100.0),
    ]
    assert runs[0]["error"] == "boom" and runs[0]["path"] == str(newer.path)
    assert list_runs(tmp_path / "missing") == []
