#!/usr/bin/env python3
"""GPU check of the DiNTS search and retraining: the published space at 96^3 with AMP.

    python Testing/gpu_check.py [--out DIR] [--cases 10] [--no-bench] [--cpu-smoke]

On a machine with a CUDA GPU this

1. writes a phantom dataset (``--cases`` labelled 128^3 cases, so that 96^3 patches fit after
   resampling);
2. runs ``medsegnas search --preset full`` (12 x 4 space, channel_mul 0.5) for 3 epochs (1 warm-up)
   with 96^3 patches, AMP on (the default on CUDA), as a job in ``DIR/search-run``;
3. prints the step times (mean weight step, mean architecture step, median step pair in the search
   phase from the event timestamps) and the peak GPU memory (``torch.cuda.max_memory_allocated``)
   next to the memory estimates (MedSegNAS' probe estimate and MONAI's ``get_ram_cost_usage``);
4. retrains the searched architecture (``medsegnas train --arch``, channel_mul 1.0, 96^3 patches,
   AMP) for 2 epochs and prints its mean step time and peak GPU memory next to its estimate;
5. unless ``--no-bench``, runs ``benchmarks/search_bench.py`` on the GPU (same space and patch,
   AMP) and prints its time and memory ratios against the tutorial-style step.

``--cpu-smoke`` runs the same stages on the CPU at toy sizes (tiny preset, 48^3 phantoms, 32^3
patches, no benchmark): a check of this script itself on a machine without a GPU; its figures
mean nothing.

Exit code 0 when everything ran; 2 without a CUDA GPU (with a message saying so); 1 when a stage
failed (its output is shown). ``gpu_check_segment.py`` and ``gpu_check_ssl.py`` do the same for
segmentation and pretraining.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fail(message: str, code: int = 1) -> None:
    print(f"gpu_check: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(what: str, command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    print("+ " + " ".join(command), flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    print(f"  ({time.monotonic() - started:.1f} s, exit code {result.returncode})", flush=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-6000:], sep="\n", file=sys.stderr)
        fail(f"{what} failed with exit code {result.returncode}")
    return result


def search_step_times(events_path: Path) -> list[float]:
    """Seconds between consecutive search-phase progress events (one weight + one architecture step each)."""
    stamps = []
    for line in events_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("type") == "progress" and event.get("stage") == "search":
            stamps.append((event["step"], datetime.fromisoformat(event["time"]).timestamp()))
    return [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False) if b[0] == a[0] + 1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="working folder (default: a new temporary one)"
    )
    parser.add_argument("--cases", type=int, default=10, help="labelled phantom cases (default 10)")
    parser.add_argument(
        "--no-bench", action="store_true", help="skip the benchmark against the tutorial-style step"
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run every stage on the CPU at toy sizes (checks this script; the figures mean nothing)",
    )
    args = parser.parse_args()

    import torch

    smoke = args.cpu_smoke
    device = "cpu" if smoke else "cuda"
    size, patch, preset = (48, 32, "tiny") if smoke else (128, 96, "full")
    if smoke:
        args.no_bench = True
        device_name = "CPU (smoke run)"
    elif not torch.cuda.is_available():
        fail(
            f"this check needs a CUDA GPU, but torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) "
            "sees none; run it on a GPU machine",
            code=2,
        )
    else:
        device_name = torch.cuda.get_device_name(0)
        total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(
            f"GPU: {device_name}, {total_gib:.1f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}",
            flush=True,
        )

    out = args.out or Path(tempfile.mkdtemp(prefix="medsegnas-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    dataset, run_dir, train_dir = out / f"phantom{size}", out / "search-run", out / "train-run"
    python = sys.executable
    if not (dataset / "dataset.json").exists():
        run(
            "phantom dataset",
            [python, "-m", "MedSegNASLib.cli", "phantom", str(dataset), "--cases", str(args.cases), "--size", str(size),
             "--unlabeled", "0", "--test-cases", "0"],
            timeout_s=600,
        )  # fmt: skip
    config = out / f"search-{patch}.json"
    config.write_text(
        json.dumps(
            {
                "epochs": 3,
                "warmup_epochs": 1,
                "val_interval": 3,
                "patch_size": [patch] * 3,
                "checkpoint_every": 0,
                "num_workers": min(4, os.cpu_count() or 1),
            }
        )
    )
    for folder in (run_dir, train_dir):
        if folder.exists():
            fail(f"{folder} exists from an earlier check; remove it or pass another --out")
    run(
        "search",
        [python, "-m", "MedSegNASLib.cli", "search", "--dataset", str(dataset), "--run-dir", str(run_dir),
         "--preset", preset, "--config", str(config), "--device", device],
        timeout_s=1200,
    )  # fmt: skip
    summary = json.loads((run_dir / "artifacts" / "summary.json").read_text())
    timing, memory = summary["timing"], summary["memory"]
    pairs = search_step_times(run_dir / "events.jsonl")
    space = "tiny space" if smoke else "published 12x4 space"
    print(f"\n== DiNTS search, {space}, {patch}^3 patches, {device} ==")
    print(
        f"device: {summary['device']} ({device_name}), amp: {summary['amp']}, patch {summary['patch_size']}"
    )
    print(
        f"mean weight step: {timing['mean_weight_step_s']:.3f} s over {timing['weight_steps_this_process']} steps; "
        f"mean architecture step: {timing['mean_arch_step_s']:.3f} s over {timing['arch_steps_this_process']} steps"
    )
    if pairs:
        print(f"median search step (weight + architecture, incl. logging): {statistics.median(pairs):.3f} s")
    print(
        f"peak {'process' if smoke else 'GPU'} memory: {memory['measured_peak_mb']:.0f} MiB; "
        f"MedSegNAS estimate {memory['estimate_mb']:.0f} MiB; MONAI get_ram_cost_usage: "
        f"{memory['monai_estimate_mb']:.0f} 'MB' (every path on: {memory['monai_estimate_full_mb']:.0f})"
    )
    print(f"searched network at channel_mul 1.0: {summary['parameters']['searched_channel_mul_1'] / 1e6:.2f} M parameters, "
          f"{(summary['flops_per_patch'] or 0) / 1e9:.1f} GFLOP per {patch}^3 patch")  # fmt: skip
    print(f"validation Dice (3 epochs, not a result): {summary['best_val_dice']}")

    train_config = out / f"train-{patch}.json"
    train_config.write_text(
        json.dumps(
            {
                "epochs": 2,
                "val_interval": 2,
                "patch_size": [patch] * 3,
                "checkpoint_every": 0,
                "num_workers": min(4, os.cpu_count() or 1),
            }
        )
    )
    run(
        "retrain",
        [python, "-m", "MedSegNASLib.cli", "train", "--dataset", str(dataset), "--run-dir", str(train_dir),
         "--arch", str(run_dir / "artifacts" / "arch.json"), "--preset", preset, "--config", str(train_config),
         "--device", device, "--no-register"],
        timeout_s=1200,
    )  # fmt: skip
    trained = json.loads((train_dir / "artifacts" / "summary.json").read_text())
    train_memory = trained["memory"]
    print(f"\n== retraining the searched architecture (channel_mul 1.0), {patch}^3 patches ==")
    print(
        f"device: {trained['device']}, amp: {trained['amp']}, {trained['parameters'] / 1e6:.2f} M parameters; "
        f"mean training step: {trained['timing']['mean_step_s']:.3f} s over "
        f"{trained['timing']['steps_this_process']} steps"
    )
    print(
        f"peak memory: {train_memory['measured_peak_mb']:.0f} MiB; estimate {train_memory['estimate_mb']:.0f} MiB"
    )

    if not args.no_bench:
        print("\n== search step vs the tutorial-style step (same process, same data) ==")
        result = run(
            "benchmark",
            [python, str(ROOT / "benchmarks" / "search_bench.py"), "--preset", "full", "--patch", "96", "--size", "128",
             "--device", "cuda", "--amp", "--steps", "3", "--rounds", "2", "--json", str(out / "search_bench.json")],
            timeout_s=900,
        )  # fmt: skip
        print(result.stdout)
    print(f"files: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
