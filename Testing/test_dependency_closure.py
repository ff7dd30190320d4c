"""The panels' install list is complete: every worker kind runs in a fresh environment holding only
what Slicer 5.10 bundles, torch, and ``medsegnas doctor --requirements``.

The environment is a new virtual environment (built once, cached under the temporary folder:
``$MEDSEGNAS_CLOSURE_CACHE`` or ``<tmp>/medsegnas-closure``, keyed by its package lists) with
:data:`~MedSegNASLib.dependencies.SLICER_BUNDLE` (numpy, scipy, SimpleITK, requests, the DICOM
stack...), torch (``$MEDSEGNAS_TORCH``, default ``torch==2.13.0``, as ``dev.py`` installs it) and
:func:`~MedSegNASLib.dependencies.panel_requirement_lines` from the package index. The Lib folders
go on ``PYTHONPATH`` as Slicer puts them; the project itself is not installed.
``Testing/closure_driver.py`` then runs in it: every (also lazy) import of the Libs, then the
jobs phantom, segment, evaluate, model import and model download (always), and search, train,
pretrain, finetune and fewshot at toy sizes (marked slow: about 5 min on 2 busy cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest
from filelock import FileLock
from MedSegNASLib.dependencies import SLICER_BUNDLE, panel_requirement_lines

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().with_name("closure_driver.py")
TORCH_SPEC = os.environ.get("MEDSEGNAS_TORCH", "torch==2.13.0")
CACHE = Path(os.environ.get("MEDSEGNAS_CLOSURE_CACHE") or Path(tempfile.gettempdir()) / "medsegnas-closure")

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(sys.platform == "win32", reason="the venv layout below is POSIX"),
]


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def slicer_like_python() -> Path:
    """The fresh environment's Python (built on first use, then reused while its lists are the same)."""
    lists = [sys.version, TORCH_SPEC, *SLICER_BUNDLE, *panel_requirement_lines()]
    key = hashlib.sha256("\n".join(lists).encode()).hexdigest()[:12]
    folder = CACHE / f"venv-{key}"
    python = folder / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(CACHE / f"venv-{key}.lock")):
        if not (folder / ".complete").exists():
            shutil.rmtree(folder, ignore_errors=True)
            venv.EnvBuilder(with_pip=True, clear=True).create(folder)  # no system site-packages
            _pip(python, TORCH_SPEC, *SLICER_BUNDLE)  # Slicer's own Python, plus the PyTorch extension
            _pip(python, *panel_requirement_lines())  # what the panels install
            (folder / ".complete").write_text("\n".join(lists) + "\n")
    return python


def _environment(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "user"),
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain")]),
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "MEDSEGNAS_HOME": str(tmp_path / "home"),
    }


def _run(python: Path, tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], capture_output=True, text=True, timeout=timeout, env=_environment(tmp_path)
    )


def test_fresh_environment_holds_only_slicer_torch_and_the_panel_list(
    slicer_like_python: Path, tmp_path: Path
) -> None:
    listed = _run(slicer_like_python, tmp_path, "-m", "pip", "list", "--format", "json")
    installed = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert "medsegnas" not in installed and "pytest" not in installed and "slicer-core" not in installed
    assert {"torch", "monai", "tensorboard", "einops", "matplotlib", "nibabel"} <= installed
    # The doctor, run by the fresh Python from the Lib folders, finds everything.
    doctor = _run(slicer_like_python, tmp_path, "-m", "MedSegNASLib.cli", "doctor", timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "everything MedSegNAS needs is installed" in doctor.stdout


def test_every_import_and_the_quick_jobs_run_in_the_fresh_environment(
    slicer_like_python: Path, tmp_path: Path
) -> None:
    result = _run(
        slicer_like_python, tmp_path, str(DRIVER), str(tmp_path / "work"), "--phases", "imports,fast"
    )
    assert result.returncode == 0 and "CLOSURE OK" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    for job in ("phantom", "segment", "evaluate", "model-import", "model-download"):
        assert f"ok job {job}" in result.stdout


def test_a_package_missing_from_the_list_fails_the_check(slicer_like_python: Path, tmp_path: Path) -> None:
    """What the check is for: a worker import that the list misses (here tensorboard, as before the
    fix, when search/train imported it but the panel never installed it) fails it."""
    script = (
        "import runpy, sys\n"
        "sys.modules['tensorboard'] = None  # as if the panel had not installed it\n"
        f"sys.argv = [{str(DRIVER)!r}, {str(tmp_path / 'work')!r}, '--phases', 'imports']\n"
        f"runpy.run_path({str(DRIVER)!r}, run_name='__main__')\n"
    )
    result = _run(slicer_like_python, tmp_path, "-c", script, timeout=300)
    assert result.returncode != 0
    assert "FAIL import torch.utils.tensorboard" in result.stdout + result.stderr


@pytest.mark.slow
def test_training_jobs_run_in_the_fresh_environment(slicer_like_python: Path, tmp_path: Path) -> None:
    result = _run(
        slicer_like_python, tmp_path, str(DRIVER), str(tmp_path / "work"), "--phases", "slow", timeout=900
    )
    assert result.returncode == 0 and "CLOSURE OK" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    for job in ("search", "train", "pretrain", "finetune", "fewshot"):
        assert f"ok job {job}" in result.stdout
