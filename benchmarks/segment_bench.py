"""``medsegnas segment`` against MONAI's bundle workflow on a CT-sized phantom: time, memory, agreement.

    python benchmarks/segment_bench.py                        # CPU, 512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm
    python benchmarks/segment_bench.py --device cuda --amp    # the GPU check
    python benchmarks/segment_bench.py --profile              # where our time goes (cProfile, top 25)
    git archive HEAD~3 MedSegNAS | tar -x -C /tmp/before       # an older version ...
    python benchmarks/segment_bench.py --repeat 2 --baseline-src /tmp/before/MedSegNAS   # ... in the same run
    python benchmarks/segment_bench.py --warm --repeat 3       # the panel's warm worker on a second volume

What it does, in one run:

1. Builds (once, cached in ``--work``) a CT-sized phantom: a MedSegNAS phantom case resampled onto
   an axis-aligned, LPS-stored 512 x 512 x 150 grid of 0.8 x 0.8 x 2.5 mm, int16 HU with noise,
   and its organ labels.
2. Builds (once) a bundle with a network of the size of MONAI's spleen_ct_segmentation bundle
   (UNet 16-32-64-128-256, 2 residual units, batch norm, 4.8 M parameters; 96^3 windows at
   1.5 x 1.5 x 2 mm, overlap 0.5), briefly trained on other phantom cases (``--train-steps``) so
   that its label maps are organ-shaped, exported with :func:`~MedSegNASLib.models.export.export_bundle`.
3. Runs the bundle through MONAI (``monai.bundle`` ``run``, the function behind ``python -m
   monai.bundle run``) and through ``medsegnas segment``, each in a fresh process, timed from
   process start to exit, with the process' own peak resident memory (``Testing/child_process.py``) and, on a GPU,
   peak GPU memory (``torch.cuda.max_memory_allocated``). On a CPU with Intel AMX it also runs
   ``segment --amp`` (bfloat16). The runs alternate ``--repeat`` times; the best time of each is
   reported (the machine may be shared; CPU time is printed too).
   ``segment`` runs twice per round: as a bundle's first run (loaded the full way, then compiled
   for the next runs: its compiled entry is removed before each of these runs) and as a later run
   (``segment, compiled``: the compiled form, no MONAI import; see ``inference/compiled.py``).
4. Prints the time ratios (x / MONAI), memory, and the Dice per label against MONAI's label map
   (and against the phantom's truth); and the cold whole-process figures of every interleaved
   pair (:func:`report_cold`): median and range of the wall-time and peak-memory ratios, and the
   start-up from process start to the model being ready (issue 17's goals: <= 0.30, <= 0.5).

Goal on CPU: ratio <= 0.5 with Dice >= 0.99 on every label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CT_SHAPE = (512, 512, 150)
CT_SPACING = (0.8, 0.8, 2.5)
MODEL_SPACING = [1.5, 1.5, 2.0]
PATCH = [96, 96, 96]
#: The side of a bundle's later runs, which load its compiled form (``segment`` is its first run).
COMPILED_SIDE = "segment, compiled"
NETWORK_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 5,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data and model


def make_ct_phantom(folder: Path, seed: int = 1000, shape=CT_SHAPE, spacing=CT_SPACING) -> tuple[Path, Path]:
    """A phantom case on a clinical CT grid: image ``folder/data/ct.nii.gz`` and labels ``folder/truth.nii.gz``."""
    import torch
    from MedSegNASLib.data.io import write_volume
    from MedSegNASLib.data.phantom import generate_phantom_case
    from MedSegNASLib.data.volume import Volume, affine_from_geometry
    from MedSegNASLib.inference.geometry import Grid, index_map, resample

    image_path, truth_path = folder / "data" / "ct.nii.gz", folder / "truth.nii.gz"
    if image_path.is_file() and truth_path.is_file():
        return image_path, truth_path
    _log(f"building a {' x '.join(map(str, shape))} CT phantom ...")
    image, label = generate_phantom_case(seed, 128)
    body = np.argwhere(label.array[0] > 0).mean(axis=0)
    centre = (image.affine @ np.append(body, 1.0))[:3]
    direction = np.diag([-1.0, -1.0, 1.0])  # LPS-stored, like a DICOM-derived CT
    half = (np.array(shape) - 1) / 2.0 * np.array(spacing)
    origin = centre - direction @ half
    ct_grid = Grid(tuple(shape), affine_from_geometry(spacing, origin, direction))
    src_grid = Grid(image.spatial_shape, image.affine)
    matrix = index_map(src_grid, ct_grid)
    shifted = torch.from_numpy(image.array.astype(np.float32) + 1000.0)  # zero padding = air
    hu = resample(shifted, matrix, shape, padding_mode="zeros")[0].numpy() - 1000.0
    rng = np.random.default_rng(seed)
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    labels = resample(
        torch.from_numpy(label.array.astype(np.float32)), matrix, shape, mode="nearest", padding_mode="zeros"
    )
    write_volume(Volume(np.clip(hu, -1024, 3071).astype(np.int16)[None], ct_grid.affine), image_path)
    write_volume(Volume(labels.numpy().round().astype(np.uint8), ct_grid.affine), truth_path)
    return image_path, truth_path


def make_bundle(folder: Path, train_steps: int, seed: int = 0, device: str = "cpu") -> Path:
    """A spleen-bundle-sized UNet, briefly trained on phantom cases, exported as a MONAI bundle."""
    import torch
    from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case
    from MedSegNASLib.data.preprocessing import PreprocessingSpec
    from MedSegNASLib.models.export import export_bundle
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss
    from monai.transforms import Compose, EnsureChannelFirstd, RandCropByLabelClassesd

    bundle = folder / "bundle"
    if (bundle / "models" / "model.pt").is_file():
        return bundle
    torch.manual_seed(seed)
    spec = PreprocessingSpec(
        channels=["CT"],
        spacing=MODEL_SPACING,
        intensity={"kind": "ct_window", "a_min": -100.0, "a_max": 250.0},
        patch_size=PATCH,
    )
    network = ConfigParser({"net": NETWORK_DEF}).get_parsed_content("net")
    _log(f"training the benchmark UNet for {train_steps} steps on phantom cases ...")
    # Resampling and intensity once per case; only the crop is drawn per step (resampling every
    # step took 2 s a step on a GPU machine's CPU, more than the whole training on its GPU).
    prepare = Compose(
        [
            EnsureChannelFirstd(["image", "label"], channel_dim=0),
            *spec.geometry_transforms(["image", "label"], ["bilinear", "nearest"]),
            spec.intensity_transform("image"),
        ]
    )
    # (in a Compose, which seeds the crop as it did when the Compose held every step: same bundle)
    transforms = Compose(
        [
            RandCropByLabelClassesd(  # every organ equally often: all are learnt in few steps
                ["image", "label"], "label", spatial_size=[64, 64, 64], num_classes=5, num_samples=2
            )
        ]
    )
    from monai.data import MetaTensor

    cases = []
    for case_seed in range(3):
        image, label = generate_phantom_case(seed * 10 + case_seed, 96)
        cases.append(
            prepare(
                {
                    "image": MetaTensor(
                        torch.from_numpy(image.array.astype(np.float32)),
                        affine=torch.from_numpy(image.affine),
                    ),
                    "label": MetaTensor(
                        torch.from_numpy(label.array.astype(np.float32)),
                        affine=torch.from_numpy(label.affine),
                    ),
                }
            )
        )
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    transforms.set_random_state(seed)
    network.train()
    started = time.perf_counter()
    for step in range(train_steps):
        samples = transforms(cases[step % len(cases)])
        x = torch.stack([s["image"].as_tensor() for s in samples]).to(device)
        y = torch.stack([s["label"].as_tensor() for s in samples]).to(device)
        optimizer.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == train_steps - 1:
            _log(
                f"  step {step + 1}/{train_steps} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)"
            )
    network.eval().to("cpu")
    return export_bundle(
        bundle,
        network_def=NETWORK_DEF,
        state_dict=network.state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=spec,
        name="benchmark abdomen UNet",
        description="Spleen-bundle-sized UNet briefly trained on MedSegNAS phantoms (benchmark only).",
        extra_metadata={"train_steps": train_steps},
    )


# ----------------------------------------------------------------------------- runs

_MONAI_RUNNER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from monai.bundle import run
cfg = json.loads(sys.argv[1])
if cfg.get("threads"):
    torch.set_num_threads(cfg["threads"])
started = time.perf_counter()
overrides = {"evaluator#amp": cfg["amp"]}
if cfg.get("profile"):
    import cProfile, pstats
    profiler = cProfile.Profile()
    profiler.enable()
run(run_id="run", init_id="initialize", config_file=cfg["config"], bundle_root=cfg["bundle"],
    dataset_dir=cfg["data"], output_dir=cfg["out"], logging_file=False, **overrides)
if cfg.get("profile"):
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print("RESULT " + json.dumps({"pipeline_s": time.perf_counter() - started, "gpu_peak": peak}))
"""

_OURS_RUNNER = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
cfg = json.loads(sys.argv[1])
import MedSegNASLib.cli as cli
# The process is ``medsegnas`` itself, as a user or the panels start it: it imports MONAI without
# the parts segmentation never uses and ends at once when the label map is written
# (cli.end_process, whose call reports the result here first; older trees have neither).
sys.argv[0] = "medsegnas"
started = time.perf_counter()
argv = ["segment", cfg["image"], "--model", cfg["bundle"], "-o", cfg["out"], "--device", cfg["device"]]
if cfg.get("threads"):
    argv += ["--threads", str(cfg["threads"])]
argv += cfg.get("extra", [])
if cfg.get("profile"):
    import cProfile, pstats
    profiler = cProfile.Profile()
    profiler.enable()

def report(rc):
    if cfg.get("profile"):
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print("RESULT " + json.dumps({"pipeline_s": time.perf_counter() - started, "gpu_peak": peak, "rc": rc}))

if hasattr(cli, "console_main"):
    end_process = cli.end_process
    cli.end_process = lambda rc: (report(rc), end_process(rc))
    cli.console_main(argv)
else:
    report(cli.main(argv))
"""


def _run_measured(code: str, config: dict, env: dict) -> dict:
    """Run a runner ``code`` on ``config`` in a fresh process: its RESULT, wall and CPU seconds, own peak RSS."""
    if str(Path(__file__).resolve().parents[1] / "Testing") not in sys.path:
        sys.path.append(str(Path(__file__).resolve().parents[1] / "Testing"))
    from child_process import run_child_captured

    run, stdout, stderr = run_child_captured([sys.executable, "-c", code, json.dumps(config)], env)
    if run.returncode != 0:
        raise SystemExit(f"run failed (exit {run.returncode}):\n{stderr[-3000:]}")
    result: dict = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = run.wall_s
    result["cpu_s"] = run.cpu_s
    result["peak_rss_mib"] = run.peak_bytes / 2**20
    result["stderr"] = stderr
    result["stdout"] = stdout
    return result


# ----------------------------------------------------------------------------- cold runs, start-up

#: Prepended to a runner: prints ``READY {"ready_s": ...}`` with the seconds from process creation
#: to the model being ready (weights loaded into the network): MONAI's ``CheckpointLoader`` has run,
#: or ``medsegnas segment`` has opened the bundle.
_READY_PROBE = """
import json as _json, os as _os, sys as _sys, time as _time
def _since_start():
    with open(f"/proc/{_os.getpid()}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / _os.sysconf("SC_CLK_TCK")
def _mark(result):
    print("READY " + _json.dumps({"ready_s": _since_start()}), flush=True)
    return result
if SIDE == "monai":
    import monai.handlers as _handlers
    _original = _handlers.CheckpointLoader.__call__
    _handlers.CheckpointLoader.__call__ = lambda self, engine: _mark(_original(self, engine))
else:
    import MedSegNASLib.inference.model as _model
    _load = _model.load_resolved_model
    _model.load_resolved_model = lambda *a, **k: _mark(_load(*a, **k))
"""


def with_ready_probe(code: str, side: str) -> str:
    """``code`` (a runner) that also reports when its model is ready (see :data:`_READY_PROBE`)."""
    return f"SIDE = {side!r}\n" + _READY_PROBE + code


def ready_seconds(run: dict) -> float | None:
    """Process start to model ready (s) of a run made with :func:`with_ready_probe`."""
    for line in run.get("stdout", "").splitlines():
        if line.startswith("READY "):
            return float(json.loads(line[len("READY ") :])["ready_s"])
    return None


def report_cold(runs: dict[str, list[dict]], reference: str = "MONAI bundle run") -> dict:
    """Cold whole-process figures of every side against ``reference``, per interleaved pair:
    median and range of the wall-time ratio, of the peak-memory ratio, and the start-up (process
    start to model ready). Prints a table and the issue-17 goals (cold <= 0.30, memory <= 0.5)."""
    import statistics

    def spread(values: list[float], fmt: str) -> str:
        if not values:
            return "-"
        return (
            f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"
        )

    summary: dict = {}
    print(f"cold whole processes, {len(runs[reference])} interleaved pair(s): median (range)")
    for name, results in runs.items():
        pairs = list(zip(results, runs[reference], strict=False))
        wall = [r["wall_s"] for r in results]
        ready = [x for x in (ready_seconds(r) for r in results) if x is not None]
        time_ratio = [r["wall_s"] / m["wall_s"] for r, m in pairs]
        memory_ratio = [r["peak_rss_mib"] / m["peak_rss_mib"] for r, m in pairs]
        summary[name] = {
            "wall_s": wall,
            "ready_s": ready,
            "time_ratio_median": statistics.median(time_ratio),
            "memory_ratio_median": statistics.median(memory_ratio),
        }
        print(
            f"  {name:24s} wall {spread(wall, '{:.1f}')} s; start-up to model ready {spread(ready, '{:.1f}')} s; "
            f"time / MONAI {spread(time_ratio, '{:.2f}')}; peak memory / MONAI {spread(memory_ratio, '{:.2f}')}"
        )
    for side in ("segment", COMPILED_SIDE):
        ours = summary.get(side)
        if ours is None:
            continue
        cold_ok = ours["time_ratio_median"] <= 0.30
        memory_ok = ours["memory_ratio_median"] <= 0.5
        print(
            f"{side}: goal cold time ratio <= 0.30: {'met' if cold_ok else 'NOT met'} "
            f"({ours['time_ratio_median']:.2f}); goal peak memory ratio <= 0.5: "
            f"{'met' if memory_ok else 'NOT met'} ({ours['memory_ratio_median']:.2f})"
        )
    return summary


def dice_table(a: np.ndarray, b: np.ndarray, values) -> dict[int, float]:
    table = {}
    for value in values:
        x, y = a == value, b == value
        total = int(x.sum() + y.sum())
        table[value] = float(2.0 * np.logical_and(x, y).sum() / total) if total else float("nan")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medsegnas-segment-bench")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA, on both sides")
    parser.add_argument("--train-steps", type=int, default=60, help="training steps of the benchmark model")
    parser.add_argument(
        "--repeat", type=int, default=1, help="alternating runs per side; the best time counts"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads on both sides")
    parser.add_argument(
        "--no-bf16", action="store_true", help="on the CPU, skip the extra `segment --amp` (bfloat16) run"
    )
    parser.add_argument("--profile", action="store_true", help="print where our time goes (cProfile)")
    parser.add_argument(
        "--profile-monai", action="store_true", help="print where MONAI's time goes (cProfile)"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run `segment` from another source tree (the folder holding its MedSegNASLib, e.g. "
        "MedSegNAS/ of an older checkout made with `git archive`), alternating with the others: "
        "before/after figures from one run",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="instead: the warm segmentation worker on a second volume vs MONAI's whole process on it "
        "(see warm_benchmark)",
    )
    parser.add_argument(
        "--shape", type=int, nargs=3, default=None, metavar=("I", "J", "K"), help="--warm: phantom grid size"
    )
    parser.add_argument("--ours-extra", nargs=argparse.REMAINDER, default=[], help="more `segment` options")
    args = parser.parse_args(argv)
    if args.warm:
        return warm_benchmark(args)

    import nibabel as nib
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.inference.engine import cpu_has_fast_bfloat16

    work = args.work.expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    image_path, truth_path = make_ct_phantom(work)
    bundle = make_bundle(work, args.train_steps, device=args.device)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # MONAI's config picks CUDA when it sees one
    monai_cfg = {
        "config": str(bundle / "configs" / "inference.json"),
        "bundle": str(bundle),
        "data": str(image_path.parent),
        "out": str(work / "monai_out"),
        "threads": args.threads,
        "amp": bool(args.amp),
    }
    ours_cfg = {
        "image": str(image_path),
        "bundle": str(bundle),
        "device": args.device,
        "threads": args.threads,
        "profile": False,
    }
    precision = [] if args.amp or args.device == "cpu" else ["--no-amp"]
    sides = {
        "MONAI bundle run": (
            with_ready_probe(_MONAI_RUNNER, "monai"),
            monai_cfg,
            work / "monai_out" / "ct_seg.nii.gz",
        ),
        "segment": (
            with_ready_probe(_OURS_RUNNER, "segment"),
            ours_cfg | {"out": str(work / "ours.nii.gz"), "extra": precision + args.ours_extra},
            work / "ours.nii.gz",
        ),
    }
    envs = {name: env for name in sides}
    # A bundle's first run loads it the full way (and compiles it, inference/compiled.py); later
    # runs load the compiled form, without MONAI. Each side has a cache folder of its own, filled
    # by one untimed run (the bundle's size check, calibrations); the first-run side's compiled
    # entries are removed before each of its runs.
    full_cache, compiled_cache = work / "cache-first-run", work / "cache-compiled"
    envs["segment"] = env | {"MEDSEGNAS_CACHE": str(full_cache)}
    sides[COMPILED_SIDE] = (
        with_ready_probe(_OURS_RUNNER, "segment"),
        ours_cfg | {"out": str(work / "ours_compiled.nii.gz"), "extra": precision + args.ours_extra},
        work / "ours_compiled.nii.gz",
    )
    envs[COMPILED_SIDE] = env | {"MEDSEGNAS_CACHE": str(compiled_cache)}
    for name in ("segment", COMPILED_SIDE):
        _log(f"untimed run filling the cache of {name} ...")
        _run_measured(sides[name][0], sides[name][1], envs[name])
    if args.baseline_src is not None:
        baseline_env = dict(env)
        source = str(args.baseline_src.expanduser().absolute())
        baseline_env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        sides["segment (baseline)"] = (
            _OURS_RUNNER,
            ours_cfg | {"out": str(work / "baseline.nii.gz"), "extra": precision + args.ours_extra},
            work / "baseline.nii.gz",
        )
        envs["segment (baseline)"] = baseline_env
    if args.device == "cpu" and not args.no_bf16 and cpu_has_fast_bfloat16():
        sides["segment --amp"] = (
            _OURS_RUNNER,
            ours_cfg | {"out": str(work / "ours_amp.nii.gz"), "extra": ["--amp", *args.ours_extra]},
            work / "ours_amp.nii.gz",
        )
        envs["segment --amp"] = env
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for attempt in range(args.repeat):
        for name, (code, config, _) in sides.items():
            _log(f"[{attempt + 1}/{args.repeat}] {name} ...")
            if name == "segment":
                shutil.rmtree(full_cache / "compiled", ignore_errors=True)
            runs[name].append(_run_measured(code, config, envs[name]))
            _log(f"  {runs[name][-1]['wall_s']:.1f} s")
    if args.profile:
        profiled = _run_measured(_OURS_RUNNER, sides["segment"][1] | {"profile": True}, env)
        print(profiled["stderr"][-12000:])
    if args.profile_monai:
        profiled = _run_measured(_MONAI_RUNNER, monai_cfg | {"profile": True}, env)
        print(profiled["stderr"][-16000:])
    best = {name: min(results, key=lambda r: r["wall_s"]) for name, results in runs.items()}
    cold = report_cold(runs)

    truth = np.asarray(nib.load(str(truth_path)).dataobj)
    maps = {name: np.asarray(nib.load(str(path)).dataobj) for name, (_, _, path) in sides.items()}
    values = [label.value for label in PHANTOM_LABELS if label.value]
    names = {label.value: label.name for label in PHANTOM_LABELS}
    reference = maps["MONAI bundle run"]

    print(
        f"CT phantom {' x '.join(map(str, CT_SHAPE))} at {' x '.join(map(str, CT_SPACING))} mm, "
        f"int16 NIfTI; device {args.device}; bundle: UNet 16-32-64-128-256, 96^3 windows, overlap 0.5"
    )
    width = 22
    print(f"{'':26s}" + "".join(f"{name:>{width}s}" for name in sides))
    rows = [
        ("wall time (s)", "wall_s", "{:.1f}", 1.0),
        ("  after imports (s)", "pipeline_s", "{:.1f}", 1.0),
        ("CPU time (s)", "cpu_s", "{:.1f}", 1.0),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}", 1.0),
    ]
    if args.device == "cuda":
        rows.append(("peak GPU memory (MiB)", "gpu_peak", "{:.0f}", 1.0 / 2**20))
    for label, key, fmt, scale in rows:
        print(f"{label:26s}" + "".join(f"{fmt.format(best[name][key] * scale):>{width}s}" for name in sides))
    monai_time = best["MONAI bundle run"]["wall_s"]
    ratios = {name: best[name]["wall_s"] / monai_time for name in sides}
    print(f"{'time ratio (x / MONAI)':26s}" + "".join(f"{ratios[name]:>{width}.2f}" for name in sides))
    print(f"{'Dice vs MONAI / truth':26s}")
    agreement = {name: dice_table(maps[name], reference, values) for name in sides}
    for value in values:
        truth_dice = {name: dice_table(maps[name], truth, [value])[value] for name in sides}
        cells = "".join(
            f"{agreement[name][value]:>{width - 8}.4f} / {truth_dice[name]:.2f}" for name in sides
        )
        print(f"  {names[value]:24s}{cells}")
    for name in sides:
        for line in best[name]["stderr"].splitlines() if name.startswith("segment") else []:
            if "windows of" in line or "model grid" in line or line.startswith("done in"):
                print(f"{name}: {line.strip()}")
    present = [v for v in values if not np.isnan(agreement["segment"][v])]
    ok = ratios["segment"] <= 0.5 and all(agreement["segment"][v] >= 0.99 for v in present)
    print("goal for segment (ratio <= 0.5, Dice >= 0.99):", "met" if ok else "not met")
    summary = {
        name: {
            "wall_s": round(best[name]["wall_s"], 2),
            "cpu_s": round(best[name]["cpu_s"], 2),
            "peak_rss_mib": round(best[name]["peak_rss_mib"]),
            "gpu_peak_mib": round(best[name].get("gpu_peak", 0) / 2**20),
            "ratio": round(ratios[name], 3),
            "min_dice_vs_monai": min((agreement[name][v] for v in present), default=float("nan")),
        }
        for name in sides
    }
    print("SUMMARY " + json.dumps({"device": args.device, "runs": summary, "cold": cold}))
    return 0


# ----------------------------------------------------------------------------- --warm


def warm_benchmark(args: argparse.Namespace) -> int:
    """``--warm``: what a second Segment click in Slicer costs, against MONAI's whole process.

    A warm segmentation worker (:mod:`MedSegNASLib.inference.worker`, as the panel runs it) is
    started and segments a first phantom (process start, imports, model loading: not counted);
    then, ``--repeat`` times in turn, MONAI's bundle workflow segments a *second* phantom (other
    seed, same grid) in a fresh process, and the worker segments it too, timed from the request
    sent to the reply read (the client's view: the image is read from disk, the label map written).
    Prints the median and best ratio (goal <= 0.15) and the Dice per label of the worker's label map
    against MONAI's (goal >= 0.999).
    """
    import statistics

    import nibabel as nib
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.inference.worker import SegmentWorker

    shape = tuple(args.shape) if args.shape else CT_SHAPE
    work = args.work.expanduser().absolute()
    work.mkdir(parents=True, exist_ok=True)
    suffix = "" if shape == CT_SHAPE else "_" + "x".join(map(str, shape))
    first_image, _ = make_ct_phantom(work / f"first{suffix}", seed=1000, shape=shape)
    second_image, truth_path = make_ct_phantom(work / f"second{suffix}", seed=1001, shape=shape)
    bundle = make_bundle(work, args.train_steps, device=args.device)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    monai_cfg = {
        "config": str(bundle / "configs" / "inference.json"),
        "bundle": str(bundle),
        "data": str(second_image.parent),
        "out": str(work / f"monai_second{suffix}"),
        "threads": args.threads,
        "amp": bool(args.amp),
    }
    options = {"device": args.device}
    if args.threads:
        options["threads"] = args.threads
    if args.device != "cpu" and not args.amp:
        options["amp"] = False
    monai_times, warm_times, replies = [], [], []
    worker_env = {k: v for k, v in env.items() if k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    with SegmentWorker(env=worker_env) as worker:
        started = time.perf_counter()
        worker.wait_ready(600)
        first = worker.segment(first_image, bundle, work / "warm_first.nii.gz", timeout=1800, **options)
        _log(f"worker started and segmented the first volume in {time.perf_counter() - started:.1f} s")
        for attempt in range(args.repeat):
            _log(f"[{attempt + 1}/{args.repeat}] MONAI bundle run on the second volume ...")
            monai = _run_measured(_MONAI_RUNNER, monai_cfg, env)
            monai_times.append(monai["wall_s"])
            _log(f"  {monai['wall_s']:.1f} s; warm worker ...")
            clock = time.perf_counter()
            reply = worker.segment(second_image, bundle, work / "warm_second.nii.gz", timeout=1800, **options)
            warm_times.append(time.perf_counter() - clock)
            replies.append(reply)
            _log(f"  {warm_times[-1]:.1f} s (warm: {reply['warm']})")
    ratios = [w / m for w, m in zip(warm_times, monai_times, strict=True)]
    values = [label.value for label in PHANTOM_LABELS if label.value]
    names = {label.value: label.name for label in PHANTOM_LABELS}
    ours = np.asarray(nib.load(str(work / "warm_second.nii.gz")).dataobj)
    reference = np.asarray(nib.load(str(Path(monai_cfg["out"]) / "ct_seg.nii.gz")).dataobj)
    truth = np.asarray(nib.load(str(truth_path)).dataobj)
    agreement, against_truth = dice_table(ours, reference, values), dice_table(ours, truth, values)
    print(
        f"CT phantom {' x '.join(map(str, shape))} at {' x '.join(map(str, CT_SPACING))} mm; device {args.device}; "
        f"bundle: UNet 16-32-64-128-256, 96^3 windows, overlap 0.5; {args.repeat} pair(s)"
    )
    print(f"first request (cold worker: model load {first['model_load_seconds']:.1f} s) not counted")
    print("MONAI bundle run, whole process (s): " + ", ".join(f"{t:.1f}" for t in monai_times))
    print("warm worker, second volume (s):     " + ", ".join(f"{t:.1f}" for t in warm_times))
    print(f"  worker stages (last): {replies[-1]['seconds']}")
    print(f"ratio warm / MONAI: median {statistics.median(ratios):.3f}, best {min(ratios):.3f}")
    for value in values:
        print(
            f"  {names[value]:24s} Dice vs MONAI {agreement[value]:.4f}, vs truth {against_truth[value]:.2f}"
        )
    present = [v for v in values if not np.isnan(agreement[v])]
    ok = statistics.median(ratios) <= 0.15 and all(agreement[v] >= 0.999 for v in present)
    print("goal (median ratio <= 0.15, Dice vs MONAI >= 0.999):", "met" if ok else "not met")
    summary = {
        "shape": list(shape),
        "monai_s": [round(t, 2) for t in monai_times],
        "warm_s": [round(t, 2) for t in warm_times],
        "median_ratio": round(statistics.median(ratios), 3),
        "min_dice_vs_monai": min((agreement[v] for v in present), default=float("nan")),
        "warm": all(r["warm"] for r in replies),
    }
    print("WARM " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
