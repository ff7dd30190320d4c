"""The GPU check script runs end to end (``--cpu-smoke``: every stage on the CPU at toy sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_search_and_retrain(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "Testing" / "gpu_check.py"),
            "--cpu-smoke",
            "--cases",
            "4",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "== DiNTS search, tiny space, 32^3 patches, cpu ==" in out
    assert "mean weight step:" in out and "mean architecture step:" in out
    assert "== retraining the searched architecture (channel_mul 1.0), 32^3 patches ==" in out
    assert "mean training step:" in out
    assert (tmp_path / "search-run" / "artifacts" / "arch.json").is_file()
    assert (tmp_path / "train-run" / "artifacts" / "model" / "models" / "model.pt").is_file()


def test_gpu_check_without_gpu_says_so(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = subprocess.run(
        [sys.executable, str(ROOT / "Testing" / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "search-run").exists()
