"""A GUI timer tick does bounded work however long the run (defect 12).

A long search writes ~100k events (23 MiB); re-attaching used to parse them all in one tick
(3.6 s in ``JobFollower.poll``, 29 s in ``read_run_curves``). Now the worker keeps a compact
``curves.json`` and the readers bound what they read; these tests count bytes read and points
kept, not wall time (``benchmarks/panel_tick_bench.py`` times it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from MedSegNASLib.jobs import RunDir
from MedSegNASLib.jobs.curves import CURVES_FILE, MAX_POINTS, CurveRecorder, read_curve_points
from MedSegNASLib.panels import panel_runs
from MedSegNASLib.panels.panel_jobs import JobFollower

EVENTS = 100_000
VALIDATE_EVERY = 1000


def _event(step: int, val: float) -> dict:
    loss = 1.0 / math.sqrt(step)
    return {
        "type": "progress",
        "time": "2026-01-01T00:00:00.000+00:00",
        "step": step,
        "total": 2 * EVENTS,
        "stage": "search",
        "epoch": step // 100 + 1,
        "metrics": {"loss": loss, "arch_loss": loss / 2, "val_dice": val},
        "eta_s": 100.0,
    }


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A running search with 100k progress events and the curves file its worker keeps (written
    by the real :class:`CurveRecorder`; the log in one write, which is what 100k appends give)."""
    run = RunDir.create(tmp_path_factory.mktemp("runs"), "search")
    run.write_job({"kind": "search", "run_id": run.run_id})
    run.write_status(state="running", pid=None, host="elsewhere")  # left as reported
    recorder = CurveRecorder(run)
    lines = []
    for step in range(1, EVENTS + 1):
        event = _event(step, 0.1 + 0.008 * (step // VALIDATE_EVERY))
        recorder.add(event)
        lines.append(json.dumps(event))
    run.events_jsonl.write_text("\n".join(lines) + "\n")
    recorder.maybe_write(force=True)
    return run


def test_first_poll_of_a_long_run_reads_only_its_tail(long_run: RunDir) -> None:
    size = long_run.events_jsonl.stat().st_size
    assert size > 20 * 2**20
    follower = JobFollower(long_run)
    update = follower.poll()
    assert follower.bytes_read <= follower.tail_bytes + follower.max_bytes_per_poll
    assert update.step == EVENTS and not update.finished, "the latest progress, from the tail"
    assert "search, epoch" in update.text
    follower.poll()
    assert follower.bytes_read == 0, "nothing new: nothing read"
    new = [json.dumps(_event(step, 0.9)) + "\n" for step in range(EVENTS + 1, EVENTS + 11)]
    with open(long_run.events_jsonl, "a") as log:
        log.write("".join(new))
    try:
        update = follower.poll()
        assert follower.bytes_read == sum(len(line) for line in new)
        assert [event["step"] for event in update.events] == list(range(EVENTS + 1, EVENTS + 11))
    finally:
        with open(long_run.events_jsonl, "r+b") as log:
            log.truncate(size)


def test_curves_of_a_long_run_come_from_the_compact_file(long_run: RunDir) -> None:
    panel_runs._CURVES_CACHE.clear()
    curves = panel_runs.read_run_curves(long_run)
    curves_size = (long_run.path / CURVES_FILE).stat().st_size
    assert curves.bytes_read == curves_size < 256 * 2**10
    validations = EVENTS // VALIDATE_EVERY
    assert len(curves.steps) <= MAX_POINTS + validations + 1
    assert curves.steps[0] == 1 and curves.steps[-1] == EVENTS, "first and newest steps kept"
    # The first point counts as a validation (its Dice is the first seen), as when read from the log.
    assert curves.validation_steps == [1] + [k * VALIDATE_EVERY for k in range(1, validations + 1)], (
        "every validation kept, at its step"
    )
    assert curves.dice["mean"][-1] == pytest.approx(0.1 + 0.008 * validations)
    assert panel_runs.read_run_curves(long_run).bytes_read == 0, "unchanged file: not read again"


def test_a_run_without_curves_file_is_read_a_bounded_chunk_per_call(tmp_path: Path) -> None:
    """Runs written by an older version: the event log, at most 1 MiB per call, caught up over calls."""
    run = RunDir.create(tmp_path, "train")
    events = 12_000
    run.events_jsonl.write_text(
        "".join(json.dumps(_event(step, 0.5)) + "\n" for step in range(1, events + 1))
    )
    assert run.events_jsonl.stat().st_size > 2 * panel_runs.MAX_EVENT_BYTES_PER_READ
    panel_runs._CURVES_CACHE.clear()
    calls = 0
    while True:
        curves = panel_runs.read_run_curves(run)
        calls += 1
        assert curves.bytes_read <= panel_runs.MAX_EVENT_BYTES_PER_READ
        if curves.bytes_read == 0:
            break
    assert calls >= 3
    assert curves.steps == list(range(1, events + 1))


def test_a_finished_run_is_finished_only_once_its_last_events_are_read(tmp_path: Path) -> None:
    """A follower that needs every event catches up chunk by chunk and still gets the final one."""

    class EveryEvent(JobFollower):
        max_bytes_per_poll = 64 * 1024

        def skip_history(self) -> bool:
            return False

    run = RunDir.create(tmp_path, "train")
    lines = [json.dumps(_event(step, 0.5)) for step in range(1, 2001)]
    lines.append(json.dumps({"type": "done", "state": "done", "result": {"ok": True}}))
    run.events_jsonl.write_text("\n".join(lines) + "\n")
    run.write_status(state="done", result={"ok": True})
    follower = EveryEvent(run)
    seen = []
    for _ in range(100):
        update = follower.poll()
        assert follower.bytes_read <= EveryEvent.max_bytes_per_poll
        seen += update.events
        if update.finished:
            break
    assert len(seen) == 2001 and seen[-1]["type"] == "done"
    assert update.text.startswith("Done")


def test_curve_recorder_thins_keeps_validations_and_replaces_replayed_steps(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "train")
    recorder = CurveRecorder(run, max_points=10)
    for step in range(1, 101):
        recorder.add(
            {"step": step, "stage": "train", "metrics": {"loss": 1.0 / step, "val_dice": step // 25 / 10}}
        )
    recorder.maybe_write(force=True)
    points = read_curve_points(run)
    ordinary = [p["step"] for p in points if not p.get("validation")]
    assert len(ordinary) <= 10 and ordinary[-1] == 99, "the newest ordinary point is kept"
    gaps = {b - a for a, b in zip(ordinary[:-2], ordinary[1:-1], strict=True)}
    assert max(gaps) - min(gaps) <= 1, f"evenly spaced (validations aside): {ordinary}"
    assert [p["step"] for p in points if p.get("validation")] == [1, 25, 50, 75, 100]
    # A resumed worker continues the file; the steps after its checkpoint (60) are redone.
    resumed = CurveRecorder(run, max_points=10)
    resumed.add({"step": 61, "stage": "train", "metrics": {"loss": 5.0, "val_dice": 0.2}})
    resumed.maybe_write(force=True)
    points = read_curve_points(run)
    assert points[-1]["step"] == 61 and points[-1]["metrics"]["loss"] == 5.0
    assert all(p["step"] <= 61 for p in points)
    assert [p["step"] for p in points if p.get("validation")] == [1, 25, 50]
    no_metrics = CurveRecorder(run).add({"step": 1, "stage": "predict", "metrics": {"case": "x"}})
    assert no_metrics is False
