#!/usr/bin/env python3
"""GPU check of interactive refinement: per-click latency of the default interactive model on CUDA.

    python Testing/gpu_check_interactive.py [--size 256] [--region 96] [--clicks 10] [--require-gpu] [--cpu-smoke]

Exports the default interactive architecture (UNet of ``--preset small``, image + 5 guidance
channels, random weights: latency does not depend on them) for a 1.5 mm grid, opens a phantom of
``--size``^3 voxels in an interactive session on the GPU (the code the worker runs) and times each
click set (guidance + network on the local region + paste back; CUDA synchronised). Prints the
median and worst seconds per click and the whole-volume pass for comparison. Without a CUDA device
it prints ``SKIP`` and exits 0 (1 with ``--require-gpu``). ``--cpu-smoke`` runs the same on the
CPU: a check of this script on a machine without a GPU (a 64^3 phantom); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedSegNAS"))
sys.path.insert(0, str(ROOT / "tools"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--region", type=int, default=96)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--require-gpu", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()

    import numpy as np
    import torch

    device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        args.size = min(args.size, 64)
    elif not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 1 if args.require_gpu else 0

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    from benchmark_interactive import _default_bundle
    from MedSegNASLib.data.phantom import generate_phantom_case
    from MedSegNASLib.interactive.clicks import Click, voxel_to_ras
    from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model

    folder = Path(tempfile.mkdtemp(prefix="interactive-gpu-"))
    bundle = _default_bundle(folder, 1.5, args.region)
    image, _ = generate_phantom_case(7, args.size)
    model = load_interactive_model(bundle, region=args.region)
    session = InteractiveSession(model, image, start="empty", device=device)
    print(
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU (smoke run)'}: image {image.spatial_shape}, model grid {session.grid_shape}, region {model.region}"
    )
    rng = np.random.default_rng(0)
    centre = np.array(image.spatial_shape) // 2
    clicks, times = [], []
    for _ in range(args.clicks + 1):  # the first click warms cuDNN up and is not counted
        voxel = centre + rng.integers(-args.size // 6, args.size // 6 + 1, 3)
        ras = voxel_to_ras(voxel, image.affine)[0]
        clicks.append(Click("liver", bool(rng.random() < 0.7), tuple(float(v) for v in ras)))
        synchronize()
        started = time.perf_counter()
        session.update(clicks, "liver")
        synchronize()
        times.append(time.perf_counter() - started)
    synchronize()
    started = time.perf_counter()
    session._automatic()
    synchronize()
    whole = time.perf_counter() - started
    per_click = float(np.median(times[1:]))
    print(f"seconds per click: median {per_click:.3f}, worst {max(times[1:]):.3f} ({args.clicks} clicks)")
    print(f"whole volume: {whole:.3f} s; ratio whole / click {whole / per_click:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
