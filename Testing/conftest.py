"""Shared pytest configuration and helpers.

Configuration: the ``--runslow`` opt-in for tests marked ``slow`` and an offscreen Qt platform.

Fixtures: ``phantom_dataset`` (a factory of phantom datasets, one per set of arguments per
session) and ``json_file`` (a factory of JSON files, e.g. ``--config`` settings).

Helpers for tests of jobs (import them with ``from conftest import ...``): :func:`wait_for`,
:func:`job_argv`, :func:`start_worker`, :func:`finish`, :func:`events_of` and
:data:`WORKER_ENV`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Two cores on CI: keep torch from oversubscribing when tests start worker subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The tests' bundle-check and calibration cache entries go to a folder of this test session, not
# to the user's ~/.medsegnas/cache (tests that check the cache point it at their own folder).
if "MEDSEGNAS_CACHE" not in os.environ:
    import tempfile

    os.environ["MEDSEGNAS_CACHE"] = tempfile.mkdtemp(prefix="medsegnas-test-cache-")

#: Worker processes compute on one thread: on a shared 2-core machine two spinning OpenMP threads
#: per process slow a step down tenfold when other processes compete; one thread does not.
WORKER_ENV = {"OMP_NUM_THREADS": "1"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(cases=, size=, seed=, unlabeled=, test_cases=)``: the folder of a phantom dataset.

    Written once per session for each set of arguments (tests only read it).
    """
    from MedSegNASLib.data.phantom import write_phantom_dataset

    made: dict[tuple, Path] = {}

    def make(*, cases: int, size: int, seed: int, unlabeled: int = 0, test_cases: int = 0) -> Path:
        key = (cases, size, seed, unlabeled, test_cases)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"phantom{size}")
            write_phantom_dataset(
                folder, cases=cases, size=size, seed=seed, unlabeled=unlabeled, test_cases=test_cases
            )
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def json_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Any], Path]:
    """``write(name, data)``: ``data`` as JSON in a new temporary folder, as the file ``name``."""

    def write(name: str, data: Any) -> Path:
        path = tmp_path_factory.mktemp(Path(name).stem) / name
        path.write_text(json.dumps(data))
        return path

    return write


# --------------------------------------------------------------------------------------------
# helpers for job tests


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_argv(command: str, dataset: Path, config: Path, *extra: str) -> list[str]:
    """``COMMAND --dataset DATA --preset tiny --config FILE --device cpu EXTRA...``."""
    return [
        command,
        "--dataset",
        str(dataset),
        "--preset",
        "tiny",
        "--config",
        str(config),
        "--device",
        "cpu",
        *extra,
    ]


def start_worker(argv: list[str], run_dir: Path, **env: str):
    """``medsegnas ARGV`` as a job worker process in ``run_dir``, one compute thread, ``env`` added."""
    from MedSegNASLib.jobs import launch

    return launch(argv, run_dir, env={**WORKER_ENV, **env})


def finish(run, timeout: float = 240.0) -> int:
    """Wait for the worker of ``run`` (a started ``RunDir``) and return its exit code; print its log if not 0."""
    assert run.process is not None
    code = run.process.wait(timeout=timeout)
    if code != 0:
        print(run.worker_log.read_text()[-4000:])
    return code


def events_of(run, kind: str | None = None, stage: str | None = None) -> list[dict]:
    """The events of ``run`` so far, of type ``kind`` and ``stage`` where given."""
    events, _ = run.read_events()
    return [
        event
        for event in events
        if (kind is None or event["type"] == kind) and (stage is None or event.get("stage") == stage)
    ]
