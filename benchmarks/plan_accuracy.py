"""How close ``medsegnas segment --plan`` comes to the run it plans: peak memory and wall time.

    python benchmarks/plan_accuracy.py                         # phantom + model-zoo cases
    python benchmarks/plan_accuracy.py --cases phantom --ct-shape 512 512 150

For each case, in fresh processes as a user runs them: ``segment --plan --json`` (the first one
measures a batch of windows and caches it), then ``segment -o ...`` timed from process start to
exit, its own peak resident memory. Prints estimate, measured value and their ratio.

Cases:

* ``phantom``: ``benchmarks/segment_bench.py``'s CT phantom (512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm
  by default; ``--ct-shape`` for a smaller one) and its spleen-sized UNet bundle.
* the model-zoo configs the tests use (``Testing/zoo_fixtures.py``: published configs with random
  weights, 32^3-64^3 model grids): ``spleen_ct_segmentation``, ``pediatric_abdominal_ct_segmentation``,
  ``wholeBrainSeg_Large_UNEST_segmentation`` (stand-in network, ``--trust``) by default.

The calibration cache is a fresh folder for each run of this script (``$MEDSEGNAS_CACHE``), so
the first ``--plan`` of each case measures; the timings depend on the machine's load (say so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ZOO_DEFAULT = [
    "spleen_ct_segmentation",
    "pediatric_abdominal_ct_segmentation",
    "wholeBrainSeg_Large_UNEST_segmentation",
]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain"), str(ROOT / "Testing"), env.get("PYTHONPATH", "")]
    )
    env["MEDSEGNAS_CACHE"] = str(cache)
    env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
    return env


def _segment(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float, int]:
    """``medsegnas segment ARGS`` in a fresh process: (exit code, stdout, stderr, wall s, peak RSS bytes).

    The peak is the command's own (``Testing/child_process.py``: ``wait4`` straight from this
    process would report this process's memory when it is the larger).
    """
    sys.path[:0] = [str(ROOT / "Testing")]
    from child_process import run_child_captured

    run, stdout, stderr = run_child_captured(
        [sys.executable, "-m", "MedSegNASLib.cli", "segment", *args], env
    )
    return run.returncode, stdout, stderr, run.wall_s, run.peak_bytes


def _cases(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str]]]:
    """(name, segment arguments without -o) of every case, building what they need."""
    sys.path[:0] = [str(ROOT / "MedSegNAS"), str(ROOT / "Testing"), str(ROOT / "benchmarks")]
    cases = []
    if "phantom" in args.cases:
        import segment_bench

        folder = work / f"phantom-{'x'.join(map(str, args.ct_shape))}"
        folder.mkdir(parents=True, exist_ok=True)
        image, _ = segment_bench.make_ct_phantom(folder, shape=tuple(args.ct_shape))
        bundle = segment_bench.make_bundle(args.bundle_work or folder, args.train_steps)
        cases.append((f"phantom {'x'.join(map(str, args.ct_shape))}", [str(image), "--model", str(bundle)]))
    zoo = [name for name in args.cases if name != "phantom"]
    if zoo:
        import zoo_fixtures

        for name in zoo:
            folder = work / "zoo" / name
            if not (folder / "bundle" / name).is_dir():
                zoo_fixtures.prepare_bundle(name, folder / "bundle")
            images = zoo_fixtures.write_images(name, folder / "images")
            extra = ["--trust"] if zoo_fixtures.CASES[name].needs_code else []
            cases.append((name, [*map(str, images), "--model", str(folder / "bundle" / name), *extra]))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medsegnas-plan-accuracy")
    parser.add_argument("--cases", nargs="+", default=["phantom", *ZOO_DEFAULT])
    parser.add_argument("--ct-shape", type=int, nargs=3, default=[512, 512, 150], metavar=("I", "J", "K"))
    parser.add_argument("--train-steps", type=int, default=10, help="training steps of the phantom's UNet")
    parser.add_argument("--bundle-work", type=Path, default=None, help="folder holding (or to hold) bundle/")
    parser.add_argument("--threads", type=int, default=None, help="--threads for every run")
    args = parser.parse_args(argv)

    work = args.work.expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="plan-cache-", dir=work))
    env = _env(cache)
    threads = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    for name, case_args in _cases(args, work):
        base = [*case_args, "--device", "cpu", *threads]
        code, out, err, plan_wall, _ = _segment([*base, "--plan", "--json"], env)
        if code != 0:
            print(f"{name}: --plan failed:\n{err[-2000:]}", file=sys.stderr)
            continue
        plan = json.loads(out.strip().splitlines()[-1])
        output = work / f"{name.replace(' ', '_')}.nii.gz"
        code, _, err, wall, peak = _segment([*base, "-o", str(output)], env)
        if code != 0:
            print(f"{name}: run failed:\n{err[-2000:]}", file=sys.stderr)
            continue
        done = [line for line in err.splitlines() if line.startswith("done in")]
        rows.append(
            {
                "case": name,
                "windows": f"{plan['windows_run']}/{plan['windows']}",
                "peak_est_mib": plan["peak_bytes"] / 2**20,
                "peak_mib": peak / 2**20,
                "memory_ratio": plan["peak_bytes"] / peak,
                "time_est_s": plan["seconds"],
                "time_s": wall,
                "time_ratio": plan["seconds"] / wall,
                "plan_s": plan_wall,
                "stages": done[-1] if done else "",
                "plan_times": plan["times"],
                "plan_memory_mib": {k: round(v / 2**20) for k, v in plan["memory"].items()},
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {os.cpu_count()} CPUs; device cpu")
    print(
        f"{'case':42s}{'windows':>9s}{'peak est':>10s}{'peak':>8s}{'ratio':>7s}"
        f"{'time est':>10s}{'time':>8s}{'ratio':>7s}{'--plan':>8s}"
    )
    for row in rows:
        print(
            f"{row['case']:42s}{row['windows']:>9s}{row['peak_est_mib']:>8.0f}Mi{row['peak_mib']:>6.0f}Mi"
            f"{row['memory_ratio']:>7.2f}{row['time_est_s']:>9.1f}s{row['time_s']:>7.1f}s{row['time_ratio']:>7.2f}"
            f"{row['plan_s']:>7.1f}s"
        )
    within = [r for r in rows if abs(r["memory_ratio"] - 1) <= 0.25 and abs(r["time_ratio"] - 1) <= 0.25]
    print(f"within 25% on both: {len(within)} of {len(rows)}")
    print("SUMMARY " + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
