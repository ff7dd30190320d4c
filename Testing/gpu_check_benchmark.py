#!/usr/bin/env python3
"""GPU check of ``medsegnas benchmark nas``: the protocol with a search long enough to select.

    python Testing/gpu_check_benchmark.py [--out DIR] [--budget-s S] [--cpu-smoke]
        [--preset tiny] [--size 64] [--cases 8] [--search-epochs 80] [--warmup-epochs 20]
        [--train-epochs 60] [--random 2] [--baselines unet]

On a machine with a CUDA GPU this writes an ``abdomen-hard`` phantom (``--cases`` labelled + 4 test
cases of ``--size``^3), runs the benchmark with one seed: the search, its architecture retrained,
``--random`` random architectures of the same space and size budget, and the ``--baselines``
(size-matched and standard), every network trained for the same ``--train-epochs``; then prints
the table (``benchmark.md``: test Dice, parameters, FLOPs, CPU and GPU latency per window, search
and training seconds), the searched topology's active paths against the random ones', and the
wall time.

The defaults are the README's documented CPU setting (``--preset tiny``, 64^3, 8 cases) with the
schedule the CPU could not afford: the search trains its architecture weights for 60 epochs
(about 360 steps, against the CPU run's 18) and every network for 60 epochs (360 steps, against
72), the question the CPU table left open (does a search that has time to separate its path
probabilities pick better than chance?). ``--budget-s`` stops the benchmark after S seconds (its
rows so far are kept in ``benchmark.json`` and printed: a lent GPU has minutes, not hours).
``--cpu-smoke`` runs the same on the CPU at toy sizes (32^3, one epoch): a check of this script on
a machine without a GPU; its figures mean nothing.

Exit code 0 when everything ran (or the budget ended it with rows written); 2 without a CUDA GPU;
1 when a stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "MedSegNAS"), os.environ.get("PYTHONPATH")])),
    }


def run(command: list[str], timeout_s: float) -> bool:
    """Run ``command`` in its own process group; False when ``timeout_s`` ended it (the whole group)."""
    print("+ " + " ".join(command), flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the benchmark's sub-runs are its children: a timeout stops them too
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        print(f"  (stopped at the {timeout_s:.0f} s budget)", flush=True)
        return False
    print(f"  ({time.monotonic() - started:.1f} s, exit code {process.returncode})", flush=True)
    if process.returncode != 0:
        print(stdout[-3000:], stderr[-6000:], sep="\n", file=sys.stderr)
        print("gpu_check_benchmark: error: a stage failed", file=sys.stderr)
        sys.exit(1)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=7200.0, help="stop the benchmark after S seconds")
    parser.add_argument("--preset", choices=["tiny", "small", "full"], default="tiny")
    parser.add_argument("--size", type=int, default=64, help="phantom grid size (voxels per side)")
    parser.add_argument("--cases", type=int, default=8, help="labelled phantom cases (4 test cases besides)")
    parser.add_argument("--search-epochs", type=int, default=80)
    parser.add_argument("--warmup-epochs", type=int, default=20, help="search epochs that train weights only")
    parser.add_argument("--train-epochs", type=int, default=60)
    parser.add_argument("--random", type=int, default=2, help="random architectures")
    parser.add_argument("--baselines", default="unet", help="unet,segresnet or a subset")
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
    device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        args.preset, args.size, args.cases = "tiny", 32, 6
        args.search_epochs, args.warmup_epochs, args.train_epochs = 2, 1, 1
    window = [min(48 if args.preset == "tiny" else 96, args.size)] * 3
    every = max(1, args.search_epochs // 4)
    search = {"epochs": args.search_epochs, "warmup_epochs": args.warmup_epochs, "val_interval": every,
              "checkpoint_every": 200, "max_patch_size": window}  # fmt: skip
    train = {"epochs": args.train_epochs, "val_interval": max(1, args.train_epochs // 4),
             "checkpoint_every": 200, "max_patch_size": window}  # fmt: skip
    (out / "search.json").write_text(json.dumps(search))
    (out / "train.json").write_text(json.dumps(train))
    python = [sys.executable, "-m", "MedSegNASLib.cli"]
    data = out / "data"
    started = time.monotonic()
    if not (data / "dataset.json").is_file():
        run([*python, "phantom", str(data), "--task", "abdomen-hard", "--cases", str(args.cases), "--size",
             str(args.size), "--test-cases", "4", "--unlabeled", "0"], 1800)  # fmt: skip
    bench = out / "bench"
    finished = run(
        [*python, "benchmark", "nas", "--dataset", str(data), "--preset", args.preset, "--seeds", "0",
         "--random", str(args.random), "--baselines", args.baselines, "--search-config", str(out / "search.json"),
         "--train-config", str(out / "train.json"), "--device", device, "--run-dir", str(bench),
         *(["--resume"] if bench.exists() else [])],
        max(1.0, args.budget_s - (time.monotonic() - started)),
    )  # fmt: skip
    report_path = bench / "artifacts" / "benchmark.json"
    if not report_path.is_file():
        print("gpu_check_benchmark: the budget ended before the first model was scored", file=sys.stderr)
        return 0 if not finished else 1
    print((bench / "artifacts" / "benchmark.md").read_text())
    report = json.loads(report_path.read_text())
    for row in report["rows"]:
        print(
            f"{row['model']:22s} {row.get('active_paths', '-')!s:>3} active paths, {row['params'] / 1e6:6.2f} M, "
            f"test Dice {row['test_dice_mean']}, train {row.get('train_seconds')} s, {row.get('train_steps')} steps"
        )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"benchmark wall time {time.monotonic() - started:.0f} s on {device} (GPU: {gpu}); "
        f"{'complete' if finished else 'stopped at the budget, rows so far'}; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
