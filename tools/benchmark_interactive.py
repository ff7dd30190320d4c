"""Seconds per click of the interactive worker, and the ratio to re-running the model on the whole volume.

    python tools/benchmark_interactive.py                                  # default model, random weights
    python tools/benchmark_interactive.py --model runs/train-x/artifacts/model --image ct.nii.gz

Without ``--model`` the default interactive architecture (UNet of ``--preset small``, image + 5
guidance + 4 previous-mask channels, as ``train --interactive`` builds it; random weights: time does
not depend on them) is exported for a model grid of ``--spacing`` mm with a ``--region`` patch, and
a phantom of ``--size``^3 voxels is the image.
Each click set goes through the worker process as in Slicer (round trip measured here); the
whole-volume time is one sliding-window pass of the same network over the whole preprocessed image
(what a non-local refinement would cost per click). Prints wall and CPU seconds: on a shared
machine the wall time depends on the load, the CPU time (divided by the threads) much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _default_bundle(folder: Path, spacing: float, region: int) -> Path:
    import torch
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.data.preprocessing import PreprocessingSpec
    from MedSegNASLib.interactive.export import (
        declare_interactive,
        extra_channels,
        interactive_label_names,
        interactive_section,
    )
    from MedSegNASLib.models.export import export_bundle
    from MedSegNASLib.nas.train import BASELINE_NETWORKS
    from monai.bundle import ConfigParser

    names = interactive_label_names(PHANTOM_LABELS)
    section = interactive_section(names, 1, previous_mask=True)
    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1 + extra_channels(section),
        "out_channels": len(names),
        **BASELINE_NETWORKS["small"]["unet"],
    }
    torch.manual_seed(0)
    network = ConfigParser({"n": network_def}).get_parsed_content("n")
    spec = PreprocessingSpec(spacing=[spacing] * 3, patch_size=[region] * 3)
    bundle = export_bundle(
        folder / "model",
        network_def=network_def,
        state_dict=network.state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=spec,
        name="benchmark interactive unet",
        extra_metadata={"interactive": section},
    )
    declare_interactive(bundle, section)
    return bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", type=Path, help="an interactive bundle (default: the default architecture)"
    )
    parser.add_argument("--image", type=Path, help="the image (default: a phantom of --size^3)")
    parser.add_argument("--size", type=int, default=128, help="phantom voxels per axis (default 128)")
    parser.add_argument("--spacing", type=float, default=2.0, help="model grid spacing, default model (mm)")
    parser.add_argument("--region", type=int, default=64, help="local region side in voxels (default 64)")
    parser.add_argument("--clicks", type=int, default=5, help="click sets to time (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = parser.parse_args()

    import torch
    from MedSegNASLib.data.io import read_volume, write_volume
    from MedSegNASLib.data.phantom import generate_phantom_case
    from MedSegNASLib.interactive.clicks import parse_clicks, voxel_to_ras
    from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model
    from MedSegNASLib.interactive.worker import InteractiveWorker

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="interactive-bench-"))
    bundle = args.model or _default_bundle(folder, args.spacing, args.region)
    image_path = args.image
    if image_path is None:
        image, _ = generate_phantom_case(7, args.size)
        image_path = write_volume(image, folder / "image.nii.gz")
    volume = read_volume(image_path)

    with InteractiveWorker(
        bundle, [image_path], region=args.region, threads=args.threads, start="empty"
    ) as worker:
        info = worker.wait_ready(timeout=1800)
        label = info["segments"][0]
        rng = np.random.default_rng(0)
        centre = np.array(volume.spatial_shape) // 2
        clicks, walls, computes = [], [], []
        for _ in range(args.clicks):
            voxel = centre + rng.integers(-volume.spatial_shape[0] // 6, volume.spatial_shape[0] // 6 + 1, 3)
            clicks.append(
                {
                    "label": label,
                    "positive": bool(rng.random() < 0.7),
                    "ras": voxel_to_ras(voxel, volume.affine)[0].tolist(),
                }
            )
            started = time.perf_counter()
            _, box, seconds = worker.update(clicks, label)
            walls.append(time.perf_counter() - started)
            computes.append(seconds)

    # The whole volume, in this process: the same network, a sliding window over the whole model grid.
    model = load_interactive_model(bundle, region=args.region)
    session = InteractiveSession(model, volume, start="empty")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    session._automatic()
    whole_wall, whole_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # CPU time of one local pass, measured the same way here.
    click_cpu = []
    for _ in range(2):
        cpu0 = time.process_time()
        session.update(parse_clicks(clicks[:1]), label)
        click_cpu.append(time.process_time() - cpu0)
    result = {
        "model": str(bundle) if args.model else "default UNet (small preset), random weights",
        "image_shape": list(volume.spatial_shape),
        "model_grid": list(session.grid_shape),
        "region": [min(args.region, s) for s in session.grid_shape],
        "threads": args.threads,
        "worker_start_s": round(info["seconds"], 2),
        "seconds_per_click_wall": round(float(np.median(walls)), 3),
        "seconds_per_click_worker": round(float(np.median(computes)), 3),
        "cpu_seconds_per_click": round(float(np.median(click_cpu)), 3),
        "whole_volume_wall_s": round(whole_wall, 3),
        "whole_volume_cpu_s": round(whole_cpu, 3),
        "ratio_whole_to_click_wall": round(whole_wall / float(np.median(walls)), 2),
        "ratio_whole_to_click_cpu": round(whole_cpu / float(np.median(click_cpu)), 2),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
