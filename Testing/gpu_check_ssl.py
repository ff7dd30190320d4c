"""GPU check of SSL pretraining: a 96^3 AMP pretraining step, a short pretraining job, the benchmark.

    python Testing/gpu_check_ssl.py                 # all three (about 2-3 minutes on one H100)
    python Testing/gpu_check_ssl.py --no-job --no-bench

1. ``step``: :class:`SSLPretrainLib.pretrain.Pretrainer` with the published model (feature size
   48) on 96^3 crops, batch 2 (4 views), float16 autocast + gradient scaler: seconds per step,
   volumes per second and peak GPU memory over the timed steps; fails on a non-finite loss or
   when no step was applied. Also checks NT-Xent at temperature 0.005 under autocast.
2. ``job``: ``sslpretrain pretrain --preset full`` on a 96^3 phantom for 3 steps on CUDA: done,
   checkpoint with the gradient scaler's state, ``encoder.pt`` that loads into a SwinUNETR on
   the GPU, reconstructions written.
3. ``bench``: ``benchmarks/ssl_bench.py`` at 64^3 with feature size 48 (ours vs the research-code
   style step, same model size and batch).

Prints one ``PASS``/``FAIL`` line per check and exits 1 if any failed; without a CUDA device it
prints ``SKIP`` and exits 0 (``--require-gpu``: exits 1 instead). Works from a source checkout
without installing the package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PATHS = [str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain")]
sys.path[:0] = [path for path in SOURCE_PATHS if path not in sys.path]


def child_env() -> dict[str, str]:
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*SOURCE_PATHS, *([existing] if existing else [])])}


def check_step(args: argparse.Namespace) -> str:
    import math

    import torch
    from SSLPretrainLib.config import resolve_config
    from SSLPretrainLib.losses import nt_xent_loss
    from SSLPretrainLib.pretrain import Pretrainer

    device = torch.device("cuda")
    config = resolve_config(
        "full",
        {"feature_size": args.feature_size, "batch_size": args.batch, "steps": 1000, "warmup_steps": 1},
    )
    trainer = Pretrainer(config, in_channels=1, device=device)
    generator = torch.Generator().manual_seed(0)
    crops = [torch.rand(args.batch, 1, 96, 96, 96, generator=generator) for _ in range(args.steps + 2)]
    for index in range(2):
        trainer.train_step(crops[index].to(device), index)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    losses = []
    start = time.perf_counter()
    for index in range(2, 2 + args.steps):
        losses.append(trainer.train_step(crops[index].to(device), index).total)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    values = [float(loss) for loss in losses]
    if not all(math.isfinite(v) for v in values):
        raise AssertionError(f"non-finite loss at 96^3 with AMP: {values}")
    if trainer.scaler.get_scale() <= 0 or trainer.optimizer.state_dict()["state"] == {}:
        raise AssertionError("the gradient scaler skipped every step")
    with torch.autocast("cuda", dtype=torch.float16):
        projections = torch.ones(4, 512, device=device) + 1e-3 * torch.randn(4, 512, device=device)
        small_t = nt_xent_loss(projections[:2].half(), projections[2:].half(), temperature=0.005)
    if not torch.isfinite(small_t):
        raise AssertionError("NT-Xent not finite at T=0.005 under autocast")
    return (
        f"96^3 AMP step, feature size {args.feature_size}, batch {args.batch} (x2 views) on "
        f"{torch.cuda.get_device_name(device)}: {seconds * 1000:.0f} ms/step, "
        f"{args.batch / seconds:.2f} volumes/s, peak {peak_gib:.2f} GiB allocated, last loss {values[-1]:.3f}"
    )


def check_job(args: argparse.Namespace) -> str:
    import torch
    from MedSegNASLib.data import write_phantom_dataset
    from monai.networks.nets import SwinUNETR

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_phantom_dataset(folder / "data", cases=1, size=96, seed=0, unlabeled=2, test_cases=0)
        settings = {
            "steps": 3,
            "checkpoint_every": 1,
            "reconstructions": 1,
            "spacing": None,
            "num_workers": 0,
        }
        (folder / "settings.json").write_text(json.dumps(settings))
        run = folder / "run"
        command = [
            sys.executable, "-m", "SSLPretrainLib.cli", "pretrain", "--images", str(folder / "data"),
            "--preset", "full", "--config", str(folder / "settings.json"), "--device", "cuda", "--run-dir", str(run),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=540)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise AssertionError(f"pretrain exited {done.returncode}: {done.stderr[-2000:]}")
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "done", status
        checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert checkpoint["step"] == 3 and checkpoint["scaler"], "no gradient scaler state in the checkpoint"
        weights = torch.load(run / "artifacts" / "encoder.pt", weights_only=True)
        network = SwinUNETR(in_channels=1, out_channels=2, feature_size=48).cuda()
        loaded = network.load_state_dict(weights, strict=False)
        assert not loaded.unexpected_keys and len(weights) > 0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            output = network(torch.zeros(1, 1, 96, 96, 96, device="cuda"))
        assert output.shape == (1, 2, 96, 96, 96)
        reconstructions = sorted(p.name for p in (run / "artifacts" / "reconstructions").glob("*.nii.gz"))
        assert len(reconstructions) == 3, reconstructions
        losses = status["result"]["losses"]
    return (
        f"pretrain --preset full (3 steps, 96^3, CUDA, AMP) done in {seconds:.0f} s with process start; "
        f"loss {losses['loss']:.3f}; encoder.pt ({len(weights)} tensors) loads into SwinUNETR on the GPU"
    )


def check_bench(args: argparse.Namespace) -> str:
    command = [
        sys.executable, str(ROOT / "benchmarks" / "ssl_bench.py"), "--device", "cuda", "--roi", "64",
        "--feature-size", str(args.feature_size), "--batch", str(args.batch), "--steps", "10", "--warmup", "3",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=540)
    if done.returncode:
        raise AssertionError(f"ssl_bench exited {done.returncode}: {done.stderr[-2000:]}")
    return "benchmark:\n" + done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed 96^3 steps (default: 5)")
    parser.add_argument("--no-job", action="store_true", help="skip the pretraining job")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark")
    parser.add_argument("--require-gpu", action="store_true", help="fail instead of skipping without CUDA")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("SKIP gpu_check_ssl: no CUDA device")
        return 1 if args.require_gpu else 0
    checks = [("step", check_step)]
    if not args.no_job:
        checks.append(("job", check_job))
    if not args.no_bench:
        checks.append(("bench", check_bench))
    failed = 0
    for name, check in checks:
        try:
            print(f"PASS ssl {name}: {check(args)}", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL ssl {name}:\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
