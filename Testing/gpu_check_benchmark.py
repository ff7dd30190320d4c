#!/usr/bin/env python3
"""GPU check of ``medsegnas benchmark nas``: the first figures of the protocol on a GPU.

    python Testing/gpu_check_benchmark.py [--out DIR] [--cpu-smoke]

On a machine with a CUDA GPU this writes an ``abdomen-hard`` phantom (12 labelled + 4 test cases of
96^3), runs the benchmark with one seed, 2 random architectures, UNet and SegResNet (size-matched and
standard), a short ``small``-preset search and training (AMP), and prints the table
(``benchmark.md``: test Dice, parameters, FLOPs, CPU and GPU latency per window, search and training
seconds) and the wall time. ``--cpu-smoke`` runs the same on the CPU at toy sizes (tiny preset,
32^3): a check of this script on a machine without a GPU; its figures mean nothing.

Exit code 0 when everything ran; 2 without a CUDA GPU; 1 when a stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], timeout_s: float) -> None:
    print("+ " + " ".join(command), flush=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "MedSegNAS"), os.environ.get("PYTHONPATH", "")]),
    }
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    print(f"  ({time.monotonic() - started:.1f} s, exit code {result.returncode})", flush=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-6000:], sep="\n", file=sys.stderr)
        print("gpu_check_benchmark: error: a stage failed", file=sys.stderr)
        sys.exit(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "gpu_check_benchmark: no CUDA GPU here (use --cpu-smoke to check the script on a CPU)",
            file=sys.stderr,
        )
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-benchmark-"))
    out.mkdir(parents=True, exist_ok=True)
    smoke = args.cpu_smoke
    size, cases, preset, device = (32, 6, "tiny", "cpu") if smoke else (96, 12, "small", "cuda")
    patch = [32, 32, 32] if smoke else [96, 96, 96]
    search = {"epochs": 2 if smoke else 20, "warmup_epochs": 1 if smoke else 10, "val_interval": 1 if smoke else 5,
              "max_patch_size": patch, "zero_cost_candidates": 3 if smoke else 16}  # fmt: skip
    train = {"epochs": 1 if smoke else 40, "val_interval": 1 if smoke else 10, "max_patch_size": patch}
    (out / "search.json").write_text(json.dumps(search))
    (out / "train.json").write_text(json.dumps(train))
    python = [sys.executable, "-m", "MedSegNASLib.cli"]
    data = out / "data"
    if not (data / "dataset.json").is_file():
        run([*python, "phantom", str(data), "--task", "abdomen-hard", "--cases", str(cases), "--size", str(size),
             "--test-cases", "4", "--unlabeled", "0"], 1800)  # fmt: skip
    started = time.monotonic()
    run([*python, "benchmark", "nas", "--dataset", str(data), "--preset", preset, "--seeds", "0", "--random", "2",
         "--search-config", str(out / "search.json"), "--train-config", str(out / "train.json"), "--zero-cost",
         "--device", device, "--run-dir", str(out / "bench"), *(["--resume"] if (out / "bench").exists() else [])],
        7200)  # fmt: skip
    print((out / "bench" / "artifacts" / "benchmark.md").read_text())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"benchmark wall time {time.monotonic() - started:.0f} s on {device} (GPU: {gpu}); results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
