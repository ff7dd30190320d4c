#!/usr/bin/env python3
"""GPU check of ``medsegnas segment``: the CT-sized benchmark on CUDA with float16 autocast.

    python Testing/gpu_check_segment.py [--work DIR] [--require-gpu]

Runs ``benchmarks/segment_bench.py --device cuda --amp --repeat 2`` (512 x 512 x 150 phantom,
spleen-bundle-sized UNet, 96^3 windows; MONAI's bundle workflow and ``segment`` each in a fresh
process) and prints its table, then one line per check:

* ``segment`` end to end (process start to exit, imports included) under 10 s;
* its label map agrees with MONAI's (Dice >= 0.99 per label);
* its peak GPU memory, next to MONAI's (reported, not judged).

Exit code 0 when every check passes; 1 when one fails; without a CUDA device it prints ``SKIP``
and exits 0 (1 with ``--require-gpu``). Works from a source checkout without installing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: End-to-end budget of one CT-sized segmentation on one H100-class GPU (the issue's goal).
BUDGET_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medsegnas-segment-gpu")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 (not 0) without a CUDA GPU")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("SKIP segment GPU check: no CUDA device")
        return 1 if args.require_gpu else 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "MedSegNAS"), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "segment_bench.py"),
        "--device",
        "cuda",
        "--amp",
        "--repeat",
        "2",
        "--work",
        str(args.work),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    print(result.stdout)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        print(f"FAIL segment benchmark on CUDA (exit {result.returncode})")
        return 1
    summary = next(
        json.loads(line[len("SUMMARY ") :])
        for line in result.stdout.splitlines()
        if line.startswith("SUMMARY ")
    )
    ours, theirs = summary["runs"]["segment"], summary["runs"]["MONAI bundle run"]
    checks = [
        (ours["wall_s"] < BUDGET_S, f"segment end to end {ours['wall_s']:.1f} s (budget {BUDGET_S:.0f} s)"),
        (
            ours["min_dice_vs_monai"] >= 0.99,
            f"Dice vs MONAI >= 0.99 (lowest {ours['min_dice_vs_monai']:.4f})",
        ),
    ]
    failed = 0
    for ok, text in checks:
        print(("PASS " if ok else "FAIL ") + text)
        failed += not ok
    print(
        f"INFO peak GPU memory: segment {ours['gpu_peak_mib']} MiB, MONAI {theirs['gpu_peak_mib']} MiB; "
        f"time ratio {ours['ratio']:.2f}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
