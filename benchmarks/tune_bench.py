"""``medsegnas tune`` against the preset's defaults at equal total compute, on held-out phantom cases.

    python benchmarks/tune_bench.py                                   # tiny: CPU, minutes
    python benchmarks/tune_bench.py --cases 12 --test 4 --size 64 --trials 12 --budget-steps 60 \\
        --final-steps 240 --seeds 0 1 2 --device cuda

For each seed:

* **tuned**: ``medsegnas tune`` (``--trials`` trials of ``--budget-steps`` steps, TPE + median
  pruner, the default space) then its final retrain of the best configuration for
  ``--final-steps`` steps;
* **default**: ``medsegnas train`` with the preset's settings for as many steps as the tune may
  spend in all (``trials x budget-steps + final-steps``; pruned trials spend fewer, so the default
  gets at least the tune's compute, counted in optimisation steps);
* **default, final steps**: the preset's settings for ``--final-steps`` only, as many steps as the
  tuned configuration's retrain (what the configuration itself is worth, search cost aside).

Both see the same development cases (a ``dataset_dev.json`` listing the first ``--cases``
labelled phantom cases; each keeps the best network on its validation fold) and are scored on
the ``--test`` held-out labelled cases, which nothing selects on: the exported bundle segments
each test image (the segment engine, as ``medsegnas segment``) and the Dice per class is taken
against its label map. Reported: mean foreground Dice per seed and over the seeds, steps, and
wall time of each arm (on this machine, as loaded as it is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cli(args: list[str], env: dict[str, str]) -> float:
    """Run ``medsegnas ARGS`` (a job in its --run-dir); return its wall time in seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"medsegnas {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def make_dataset(
    folder: Path, cases: int, test: int, size: int, env: dict[str, str]
) -> tuple[Path, list[dict]]:
    """A phantom of ``cases + test`` labelled cases; ``dataset_dev.json`` lists the first ``cases``."""
    _cli(["phantom", str(folder), "--cases", str(cases + test), "--size", str(size), "--unlabeled", "0",
          "--test-cases", "0"], env)  # fmt: skip
    data = json.loads((folder / "dataset.json").read_text())
    held_out = data["training"][cases:]
    dev = {**data, "training": data["training"][:cases], "numTraining": cases}
    path = folder / "dataset_dev.json"
    path.write_text(json.dumps(dev, indent=2))
    return path, held_out


def test_dice(bundle: Path, folder: Path, held_out: list[dict], device: str) -> dict[str, float]:
    """Mean Dice per foreground class of ``bundle`` on the held-out cases (NaN-free classes)."""
    from MedSegNASLib.data.io import read_volume
    from MedSegNASLib.inference.engine import SegmentOptions, segment_volume
    from MedSegNASLib.inference.model import load_model

    model = load_model(bundle)
    per_class: dict[int, list[float]] = {}
    for case in held_out:
        image = read_volume(folder / case["image"], dtype=np.float32)
        truth = np.asarray(read_volume(folder / case["label"]).array).astype(np.int64)
        labels = np.asarray(segment_volume(image, model, SegmentOptions(device=device)).labels.array).astype(
            np.int64
        )
        for value in np.unique(truth):
            if value == 0:
                continue
            a, b = labels == value, truth == value
            per_class.setdefault(int(value), []).append(
                2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
            )
    return {str(k): float(np.mean(v)) for k, v in sorted(per_class.items())}


def trial_steps(run: Path) -> int:
    """Optimisation steps the tune's trials took (pruned ones up to their last report)."""
    rows = json.loads((run / "artifacts" / "trials.json").read_text())["trials"]
    total = 0
    for row in rows:
        if row["steps"]:
            total += int(row["steps"])
        elif row["intermediate"]:
            total += max(int(k) for k in row["intermediate"])
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", type=int, default=6, help="development cases (train + validation; default 6)"
    )
    parser.add_argument("--test", type=int, default=3, help="held-out test cases (default 3)")
    parser.add_argument("--size", type=int, default=48, help="phantom side in voxels (default 48)")
    parser.add_argument("--network", default="unet", help="unet, segresnet or swinunetr (default unet)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--budget-steps", type=int, default=36)
    parser.add_argument("--final-steps", type=int, default=72)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the runs (default: a temporary one)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="tune_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDSEGNAS_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "MedSegNAS"), env.get("PYTHONPATH", "")])
    sys.path.insert(0, str(ROOT / "MedSegNAS"))
    dataset, held_out = make_dataset(work / "phantom", args.cases, args.test, args.size, env)
    config = work / "fixed.json"
    config.write_text(json.dumps({"max_patch_size": [args.size] * 3, "crops_per_case": 1}))
    common = ["--dataset", str(dataset), "--network", args.network, "--preset", args.preset, "--device",
              args.device, "--no-register"]  # fmt: skip
    results = []
    for seed in args.seeds:
        tune_run = work / f"tune-{seed}"
        tune_s = _cli(["tune", *common, "--config", str(config), "--seed", str(seed), "--trials", str(args.trials),
                       "--budget-steps", str(args.budget_steps), "--final-steps", str(args.final_steps),
                       "--run-dir", str(tune_run)], env)  # fmt: skip
        job = json.loads((tune_run / "job.json").read_text())["config"]
        train_cases = len(job["train"]["dataset"]["split"]["train"])
        batch = int(job["train"]["train"]["batch_size"])
        equal_steps = args.trials * args.budget_steps + args.final_steps
        epochs = max(1, math.ceil(equal_steps / math.ceil(train_cases / batch)))
        default_config = work / f"default-{seed}.json"
        default_config.write_text(json.dumps({**json.loads(config.read_text()), "epochs": epochs,
                                              "val_interval": max(1, epochs // 8)}))  # fmt: skip
        train_run = work / f"default-{seed}"
        train_s = _cli(["train", *common, "--config", str(default_config), "--seed", str(seed), "--run-dir",
                        str(train_run)], env)  # fmt: skip
        short_epochs = max(1, math.ceil(args.final_steps / math.ceil(train_cases / batch)))
        short_config = work / f"default-short-{seed}.json"
        short_config.write_text(json.dumps({**json.loads(config.read_text()), "epochs": short_epochs,
                                            "val_interval": max(1, short_epochs // 4)}))  # fmt: skip
        short_run = work / f"default-short-{seed}"
        _cli(
            [
                "train",
                *common,
                "--config",
                str(short_config),
                "--seed",
                str(seed),
                "--run-dir",
                str(short_run),
            ],
            env,
        )
        summary = json.loads((tune_run / "artifacts" / "summary.json").read_text())
        default_summary = json.loads((train_run / "artifacts" / "summary.json").read_text())
        tuned = test_dice(tune_run / "artifacts" / "model", dataset.parent, held_out, args.device)
        default = test_dice(train_run / "artifacts" / "model", dataset.parent, held_out, args.device)
        short = test_dice(short_run / "artifacts" / "model", dataset.parent, held_out, args.device)
        row = {
            "seed": seed,
            "tuned_test_dice": statistics.fmean(tuned.values()),
            "default_test_dice": statistics.fmean(default.values()),
            "default_final_steps_test_dice": statistics.fmean(short.values()),
            "tuned_per_class": tuned,
            "default_per_class": default,
            "tuned_steps": trial_steps(tune_run) + int(summary["steps"]),
            "default_steps": int(default_summary["steps"]),
            "tuned_wall_s": round(tune_s, 1),
            "default_wall_s": round(train_s, 1),
            "best_params": summary["tune"]["best_params"],
        }
        results.append(row)
        print(json.dumps({k: row[k] for k in row if not k.endswith("per_class")}), flush=True)

    report = {
        "setting": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": results,
        "tuned_mean": statistics.fmean(r["tuned_test_dice"] for r in results),
        "default_mean": statistics.fmean(r["default_test_dice"] for r in results),
        "default_final_steps_mean": statistics.fmean(r["default_final_steps_test_dice"] for r in results),
        "tuned_wall_s": sum(r["tuned_wall_s"] for r in results),
        "default_wall_s": sum(r["default_wall_s"] for r in results),
    }
    print(
        f"\nseed  tuned  default  default@final  (test Dice, {args.test} held-out cases; steps tuned/default; wall s)"
    )
    for r in results:
        print(f"{r['seed']:>4}  {r['tuned_test_dice']:.3f}  {r['default_test_dice']:.3f}    "
              f"{r['default_final_steps_test_dice']:.3f}         "
              f"{r['tuned_steps']}/{r['default_steps']}  {r['tuned_wall_s']:.0f}/{r['default_wall_s']:.0f}")  # fmt: skip
    print(
        f"mean  {report['tuned_mean']:.3f}  {report['default_mean']:.3f}    {report['default_final_steps_mean']:.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
