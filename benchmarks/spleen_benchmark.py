#!/usr/bin/env python3
"""The NAS benchmark protocol at real scale: MSD Task09 Spleen on a GPU node.

    python benchmarks/spleen_benchmark.py --root DATA --out RUN                 # download, split, run
    python benchmarks/spleen_benchmark.py --root DATA --out RUN --resume        # continue a stopped run
    python benchmarks/spleen_benchmark.py --root DATA --prepare-only            # download and split only

1. Downloads Task09_Spleen with MONAI's Decathlon helper (``monai.apps.DecathlonDataset(...,
   download=True)``: the archive's MD5 is checked against MONAI's table; an archive or folder
   already in ``--root`` is reused, so the download happens once).
2. The MSD test images have no labels, so ``--test-cases`` of the 41 labelled cases (a seeded
   permutation, 9 by default) are held out as the test split; they are written to
   ``DATA/Task09_Spleen/medsegnas_benchmark.json`` (an MSD dataset.json with a labelled ``test``
   list) and never used for any choice.
3. Runs ``medsegnas benchmark nas`` on it (``--preset small``: 8 x 4 space, 96^3 patches; K seeds,
   N random architectures, UNet and SegResNet size-matched and standard) as a job in ``--out``;
   ``--zero-cost`` and ``--proxy-cases`` add the training-free pick and the proxy-data search.

Published figures to compare with: DiNTS on MSD spleen (Liu et al., CVPR 2021), Auto3DSeg's DiNTS
5-fold validation Dice 0.930 on Spleen (a fixed architecture, full schedule).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "Task09_Spleen"
SPLIT_FILE = "medsegnas_benchmark.json"


def download(root: Path) -> Path:
    """``root/Task09_Spleen`` after MONAI's checked download (skipped when it is already there)."""
    from monai.apps import DecathlonDataset

    root.mkdir(parents=True, exist_ok=True)
    task_dir = root / TASK
    if not (task_dir / "dataset.json").is_file():
        # section "training", no caching: only the download, the MD5 check and the extraction matter here.
        DecathlonDataset(
            root_dir=str(root), task=TASK, section="training", download=True, cache_rate=0.0, val_frac=0.0
        )
    return task_dir


def write_benchmark_split(task_dir: Path, test_cases: int, seed: int = 0) -> Path:
    """Hold out ``test_cases`` labelled cases of an MSD task as a labelled test split; returns the JSON path.

    The choice is a permutation of the case names seeded with ``seed``: the same on every machine."""
    import numpy as np

    meta = json.loads((task_dir / "dataset.json").read_text())
    training = sorted(meta["training"], key=lambda entry: entry["image"])
    if not 1 <= test_cases < len(training) - 2:
        raise SystemExit(
            f"--test-cases must be between 1 and {len(training) - 3} for {len(training)} labelled cases"
        )
    order = np.random.default_rng(seed).permutation(len(training))
    held = set(order[:test_cases].tolist())
    split = {
        **meta,
        "description": f"{meta.get('description', TASK)}; MedSegNAS benchmark split: {test_cases} labelled cases "
        f"held out as the test split (seed {seed})",
        "training": [entry for i, entry in enumerate(training) if i not in held],
        "test": [entry for i, entry in enumerate(training) if i in held],
        "numTraining": len(training) - test_cases,
        "numTest": test_cases,
    }
    path = task_dir / SPLIT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(split, indent=2))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="where Task09_Spleen is (or is downloaded to)"
    )
    parser.add_argument("--out", type=Path, help="run directory of the benchmark job")
    parser.add_argument(
        "--test-cases", type=int, default=9, help="labelled cases held out for testing (default 9)"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--random", type=int, default=5)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--search-config", type=Path, default=None)
    parser.add_argument("--train-config", type=Path, default=None)
    parser.add_argument("--max-params", type=int, default=None)
    parser.add_argument("--zero-cost", action="store_true")
    parser.add_argument("--proxy-cases", type=int, default=None)
    parser.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--prepare-only", action="store_true", help="download and write the split, then stop")
    args = parser.parse_args(argv)

    task_dir = download(args.root.expanduser().absolute())
    split = write_benchmark_split(task_dir, args.test_cases, args.split_seed)
    print(f"dataset with a labelled test split: {split}", flush=True)
    if args.prepare_only:
        return 0
    if args.out is None:
        parser.error("--out RUN is needed to run the benchmark")
    command = [sys.executable, "-m", "MedSegNASLib.cli", "benchmark", "nas", "--dataset", str(split),
               "--seeds", args.seeds, "--random", str(args.random), "--preset", args.preset,
               "--device", args.device, "--run-dir", str(args.out)]  # fmt: skip
    for flag, value in (("--search-config", args.search_config), ("--train-config", args.train_config),
                        ("--max-params", args.max_params), ("--proxy-cases", args.proxy_cases)):  # fmt: skip
        if value is not None:
            command += [flag, str(value)]
    command += ["--zero-cost"] if args.zero_cost else []
    command += ["--resume"] if args.resume else []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "MedSegNAS"), os.environ.get("PYTHONPATH", "")]),
    }
    print("+ " + " ".join(command), flush=True)
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
