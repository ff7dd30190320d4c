"""The README pictures of the panels: ``tools/render_panels.py`` run as a user would run it.

What a reader of the README would check: there is a picture of each module panel, it is about as
wide as the README (one or two Slicer panel columns), it is a real drawing (not blank), and every
section of the panel is in it. The tool runs in a subprocess on Qt's offscreen platform, on a small
runs folder written with the job protocol's own classes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "render_panels.py"
PICTURES = {"MedSegNAS": "MedSegNAS-panel.png", "SSLPretrain": "SSLPretrain-panel.png"}


def _offscreen_env() -> dict[str, str]:
    return dict(os.environ, QT_QPA_PLATFORM="offscreen", QT_PREFERRED_BINDING="PySide6")


@pytest.fixture(scope="module")
def offscreen_qt() -> None:
    pytest.importorskip("Qt")
    pytest.importorskip("PySide6.QtWidgets")
    probe = "from PySide6.QtWidgets import QApplication; QApplication([]).processEvents()"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=_offscreen_env(), timeout=60
    )
    if result.returncode != 0:
        pytest.skip(f"PySide6 cannot start on the offscreen platform: {result.stderr.strip()[-300:]}")


def _section_titles(module: str) -> list[str]:
    """The titles of the panel's collapsible sections, read from its .ui file."""
    root = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()
    return [
        widget.find("property[@name='text']/string").text
        for widget in root.iter("widget")
        if widget.get("class") == "ctkCollapsibleButton"
    ]


def _runs_folder(root: Path) -> Path:
    """A runs folder with a finished search and a cancelled pretraining, with progress events."""
    from MedSegNASLib.jobs import RunDir

    runs = root / "runs"
    for kind, stage, state in (("search", "search", "done"), ("pretrain", "pretrain", "cancelled")):
        run = RunDir.create(runs, kind)
        run.write_job({"kind": kind, "run_id": run.run_id, "created": "2026-11-26T21:33:43+00:00"})
        total = 10
        for step in range(1, total + 1):
            metrics = {"loss": 1.0 / step, "val_dice": 0.05 * step, "rotation": 0.5, "reconstruction": 0.2}
            event = {"type": "progress", "step": step, "total": total, "stage": stage, "epoch": step}
            run.append_event({**event, "metrics": metrics, "eta_s": 30.0 * (total - step)})
        run.write_status(state=state, progress={"step": total if state == "done" else 4, "total": total})
    return runs


def test_tool_writes_a_picture_of_each_panel_with_all_its_sections(offscreen_qt, tmp_path: Path) -> None:
    out = tmp_path / "Screenshots"
    out.mkdir()
    command = [sys.executable, str(TOOL), "--out-dir", str(out), "--no-environment-check"]
    command += ["--runs-dir", str(_runs_folder(tmp_path))]
    result = subprocess.run(command, capture_output=True, text=True, env=_offscreen_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == sorted(PICTURES.values()), "no temp file is left"

    lines = {line.split(" panel:")[0]: line for line in result.stdout.splitlines() if " panel: " in line}
    assert sorted(lines) == sorted(PICTURES)
    for module, name in PICTURES.items():
        line = lines[module]
        assert str(out / name) in line and "runs of" in line, line
        described = line.split("sections ", 1)[1]
        titles = _section_titles(module)
        assert len(titles) >= 4
        # Every section is rendered, once, in panel order (columns separated by " | ").
        assert [title for column in described.split(" | ") for title in column.split(", ")] == titles

        with Image.open(out / name) as image:
            assert image.format == "PNG"
            picture = np.asarray(image.convert("RGB"))
        height, width, _ = picture.shape
        assert 400 <= width <= 900, "one or two panel columns of about 420 pixels"
        assert 300 <= height <= 2400
        colors = np.unique(picture.reshape(-1, 3), axis=0)
        assert len(colors) > 50, "text, frames and widgets, antialiased: many distinct colors"
        white = np.all(picture == 255, axis=-1).mean()
        assert 0.3 < white < 0.95, "Slicer's white panel background, with widgets drawn on it"
        dark = (picture.max(axis=-1) < 80).mean()
        assert dark > 0.005, "black text"
        red, green, blue = np.moveaxis(picture.astype(int), -1, 0)
        highlight = ((blue > red + 60) & (blue > green + 20)).mean()
        assert highlight > 0.002, "Slicer's blue (#308cc6) in progress bars and selected rows"


def test_tool_says_when_the_output_folder_is_missing(tmp_path: Path) -> None:
    command = [sys.executable, str(TOOL), "--out-dir", str(tmp_path / "missing"), "--no-environment-check"]
    result = subprocess.run(command, capture_output=True, text=True, env=_offscreen_env(), timeout=60)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
