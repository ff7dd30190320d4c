"""The ``medsegnas`` command line as a user meets it: help, exit codes, error lines and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from MedSegNASLib.cli import COMMAND_MODULES, build_parser
from MedSegNASLib.data.datasets import load_dataset, validate_dataset
from MedSegNASLib.data.io import read_volume


def medsegnas(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _command_paths(parser) -> list[list[str]]:
    """Every (sub-)command path of the parser, e.g. ['jobs', 'status']."""
    paths = []
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            paths.append([name])
            paths.extend([name, *rest] for rest in _command_paths(sub))
    return paths


def test_every_command_has_help() -> None:
    paths = _command_paths(build_parser())
    assert ["phantom"] in paths and ["jobs", "cancel"] in paths and ["demo"] in paths
    assert len(COMMAND_MODULES) >= 3
    for path in paths:
        result = medsegnas(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.startswith("usage: medsegnas " + " ".join(path)), result.stdout[:200]


def test_usage_errors_exit_2_and_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    assert medsegnas().returncode == 2
    assert medsegnas("no-such-command").returncode == 2
    usage = medsegnas("phantom", str(tmp_path / "ds"), "--size", "abc")
    assert usage.returncode == 2 and "--size" in usage.stderr

    missing = medsegnas("dataset", "info", str(tmp_path / "nowhere" / "dataset.json"))
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert "Traceback" not in missing.stderr

    debug = medsegnas("--debug", "dataset", "info", str(tmp_path / "nowhere" / "dataset.json"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_demo_runs_the_whole_pipeline_and_reports_where_everything_is(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = medsegnas("demo", "--out", str(out), "--cases", "3", "--size", "32", "--quick")
    assert result.returncode == 0, result.stderr

    dataset = load_dataset(out / "dataset" / "dataset.json")
    assert len(dataset.cases) == 3
    assert validate_dataset(dataset).ok

    picture = mpimg.imread(out / "phantom_preview.png")
    assert picture.ndim == 3 and picture.shape[0] >= 300 and picture.shape[1] >= 800
    assert picture[..., :3].std() > 0.05  # an actual image, not a blank canvas

    runs = {run.name.split("-")[0]: run for run in (out / "runs").iterdir()}
    assert set(runs) == {"phantom", "search", "train"}
    for run in runs.values():
        assert json.loads((run / "status.json").read_text())["state"] == "done", run
    assert (runs["search"] / "artifacts" / "arch.json").is_file()
    assert (runs["search"] / "artifacts" / "topology.png").is_file()
    bundle = runs["train"] / "artifacts" / "model"
    assert (bundle / "configs" / "inference.json").is_file() and (bundle / "models" / "model.pt").is_file()

    evaluation = json.loads((out / "evaluation.json").read_text())
    csv_rows = (out / "evaluation.csv").read_text().strip().splitlines()
    validation_cases = {row["case"] for row in evaluation["rows"]}
    assert len(csv_rows) == 1 + 4 * len(validation_cases)

    segmentation = out / "segmentation" / f"{dataset.test[0].name}.seg.nrrd"
    label = read_volume(segmentation)
    image = read_volume(dataset.test[0].images[0])
    assert label.spatial_shape == image.spatial_shape and np.allclose(label.affine, image.affine, atol=1e-4)

    for organ in ("liver", "spleen", "right kidney", "left kidney"):
        assert organ in result.stdout
    for path in (out / "phantom_preview.png", bundle, segmentation, out / "evaluation.json"):
        assert str(path) in result.stdout


@pytest.mark.parametrize("args", [["--cases", "0"], ["--size", "8"]])
def test_demo_rejects_bad_sizes_before_doing_anything(tmp_path: Path, args: list[str]) -> None:
    result = medsegnas("demo", "--out", str(tmp_path / "demo"), *args)
    assert result.returncode in (1, 2)
    assert not (tmp_path / "demo" / "dataset" / "dataset.json").exists()
