#!/usr/bin/env python3
"""GPU check of ``medsegnas segment``: the CT-sized benchmark on CUDA with float16 autocast.

    python Testing/gpu_check_segment.py [--work DIR] [--require-gpu]

Runs ``benchmarks/segment_bench.py --device cuda --amp --repeat 1`` (512 x 512 x 150 phantom,
spleen-bundle-sized UNet, 96^3 windows; MONAI's bundle workflow and ``segment`` each in a fresh
process) and prints its table, then the same script's ``--warm`` run (the panel's warm worker
segmenting a second volume, against MONAI's whole process on it), then one line per check:

* ``segment`` end to end (process start to exit, imports included) under 10 s, as a bundle's
  first run (loaded the full way, MONAI imported) and as a later run (its compiled form, no
  MONAI: ``inference/compiled.py``);
* its label map agrees with MONAI's (Dice >= 0.99 per label);
* its peak GPU memory, next to MONAI's, and the warm worker's time on the second volume
  (reported, not judged).

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


def stream(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``command``, echoing its output line by line (a time limit around this check keeps what was
    printed), and return its exit code and standard output."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return process.wait(), "".join(lines)


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
        "1",
        "--work",
        str(args.work),
    ]
    code, output = stream(command, env)
    if code != 0:
        print(f"FAIL segment benchmark on CUDA (exit {code})")
        return 1
    summary = next(
        json.loads(line[len("SUMMARY ") :]) for line in output.splitlines() if line.startswith("SUMMARY ")
    )
    code, output = stream([*command, "--warm"], env)
    if code != 0:
        print(f"FAIL warm segment benchmark on CUDA (exit {code})")
        return 1
    warm_summary = next(
        json.loads(line[len("WARM ") :]) for line in output.splitlines() if line.startswith("WARM ")
    )
    ours, theirs = summary["runs"]["segment"], summary["runs"]["MONAI bundle run"]
    later = summary["runs"]["segment, compiled"]
    checks = [
        (
            ours["wall_s"] < BUDGET_S,
            f"segment end to end, first run {ours['wall_s']:.1f} s (budget {BUDGET_S:.0f} s)",
        ),
        (
            later["wall_s"] < BUDGET_S,
            f"segment end to end, later run (compiled) {later['wall_s']:.1f} s (budget {BUDGET_S:.0f} s)",
        ),
        (
            min(ours["min_dice_vs_monai"], later["min_dice_vs_monai"]) >= 0.99,
            f"Dice vs MONAI >= 0.99 (lowest {ours['min_dice_vs_monai']:.4f} first run, "
            f"{later['min_dice_vs_monai']:.4f} compiled)",
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
    print(
        f"INFO warm worker, second volume: {', '.join(f'{t:.2f}' for t in warm_summary['warm_s'])} s against MONAI's "
        f"whole process {', '.join(f'{t:.1f}' for t in warm_summary['monai_s'])} s (median ratio "
        f"{warm_summary['median_ratio']:.3f}; lowest Dice vs MONAI {warm_summary['min_dice_vs_monai']:.4f})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
