"""``benchmarks/cpu_floor.py``: the floating-point work it counts is the work MONAI's sliding window
does, and the script runs end to end with its verdict on the issue's time budgets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cpu_floor  # noqa: E402


def test_window_count_is_the_number_of_windows_monai_runs() -> None:
    from monai.inferers import sliding_window_inference

    for grid, roi in (
        ((40, 37, 30), (16, 16, 16)),
        ((96, 96, 96), (96, 96, 96)),
        ((100, 60, 20), (32, 32, 16)),
    ):
        seen = []

        def predictor(batch: torch.Tensor, seen: list = seen) -> torch.Tensor:
            seen.append(batch.shape[0])
            return batch

        sliding_window_inference(torch.zeros(1, 1, *grid), roi, 1, predictor, overlap=0.5)
        assert cpu_floor.window_count(grid, roi) == sum(seen), (grid, roi)
    # the benchmark CT on the bundle's grid: 5 x 5 x 3 windows of 96^3
    assert cpu_floor.MODEL_GRID == (273, 273, 188)
    assert cpu_floor.window_count(cpu_floor.MODEL_GRID, (96, 96, 96)) == 75


def test_network_flops_count_a_multiply_add_as_two() -> None:
    conv = torch.nn.Conv3d(3, 8, 3, padding=1, bias=False)
    assert cpu_floor.network_flops(conv, (1, 3, 10, 12, 14)) == 2 * 3 * 8 * 27 * 10 * 12 * 14


def test_script_prints_rates_and_the_verdict_on_each_budget() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cpu_floor.py"), "--repeat", "1", "--monai-seconds", "2000"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "75 windows of (96, 96, 96)" in out and "11.81 GFLOP per window" in out
    for name in ("matrix product", "convolution", "UNet as MONAI runs it", "UNet as segment runs it"):
        assert name in out
    # 0.15 x 2000 s = 300 s is far above any float32 floor of 886 GFLOP on a working CPU
    assert "budget 0.15 x MONAI = 300.0 s: above the float32 inference floor" in out
