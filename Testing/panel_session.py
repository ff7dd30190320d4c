"""Fixtures of the panel tests: an offscreen Slicer session (``Testing/slicer_harness``) per test.

:func:`session` (a test module's ``slicer_app`` fixture): the harness, with a fresh scene, ``HOME`` and the model registry in the test's
temporary folder (the parameter nodes' default folders are under ``HOME``), worker processes on one
thread. ``open_panel(app, name)``: load a module file and show it (Slicer's ``enter``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_harness  # noqa: E402


def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The body of each panel test module's ``slicer_app`` fixture (yields the harness)."""
    pytest.importorskip("slicer")
    pytest.importorskip("PySide6")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDSEGNAS_HOME", str(tmp_path / "registry"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "home").mkdir()
    app = slicer_harness.install()
    app.new_session()
    yield app
    for _module, widget in list(app.modules.values()):
        for area in getattr(widget, "_areas", {}).values():  # leave no worker behind
            if getattr(area.follower, "run", None) is not None:  # a warm segmentation stops with cleanup
                _cancel_quietly(area.follower.run)
        for follower in getattr(widget, "_followers", {}).values():
            _cancel_quietly(follower.run)
    app.new_session()


def _cancel_quietly(run: Any) -> None:
    from MedSegNASLib.panels.panel_jobs import cancel_job

    try:
        cancel_job(run)
        if getattr(run, "process", None) is not None:
            run.process.wait(timeout=60)
    except Exception:
        pass


def open_panel(app: Any, name: str) -> Any:
    """Load ``<name>/<name>.py`` as Slicer does and show it; returns the widget."""
    _module, widget = app.load_module(name, ROOT / name)
    app.enter(widget)
    return widget


def missing(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import NAME`` fail in this process, as in a Python that lacks the package."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)
