"""How close the segment benchmark's network runs to this CPU's float32 peak, and the time floor
that sets for a float32 segmentation of the benchmark CT.

    python benchmarks/cpu_floor.py                      # 2 threads, 5 repeats
    python benchmarks/cpu_floor.py --monai-seconds 28   # also: the issue's time budgets against the floor

Issue 17 asks for a warm segmentation in at most 0.15 x MONAI's whole-process time, in float32 and
with MONAI's label map. The network has to run on the same windows as MONAI's sliding window
(same count, same size, same overlap), so its floating-point work is fixed; this script measures
how fast this machine can do that work at best:

1. The work: float32 operations of one 96^3 window through the benchmark's UNet (MONAI's UNet
   16-32-64-128-256, 2 residual units, batch norm: :data:`segment_bench.NETWORK_DEF`), counted by
   ``torch.utils.flop_counter`` (a multiply-add counts 2), times the number of windows MONAI's
   sliding window runs on the benchmark CT's model grid (:func:`window_count`).
2. The reference rate, in the same run: a large float32 matrix product (``torch.mm``, 2048^2) and
   a large 3x3x3 convolution (64 -> 64 channels, 48^3), the best this CPU's BLAS and oneDNN reach
   on these threads.
3. The network's rate: windows of 96^3 in batches of 2 (what ``segment`` runs on the CPU), the
   median of ``--repeat`` timed calls after a warm-up; once as MONAI's bundle workflow runs it
   (``torch.no_grad``, the default layout) and once as ``segment`` does
   (:func:`~MedSegNASLib.inference.optimize.prepare_for_inference`: batch norm folded, channels-last,
   ``torch.inference_mode``, glibc keeping freed memory).

It prints the rates, the network's rate as a fraction of each reference (the ratio), and the time
the benchmark's windows would take at the network's rate and at the reference rates: no float32
implementation of the same windows can be faster than the matrix-product floor on these cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segment_bench  # noqa: E402  (the benchmark's network definition)

#: The benchmark CT (512 x 512 x 150 at 0.8 x 0.8 x 2.5 mm) on the bundle's 1.5 x 1.5 x 2 mm grid.
MODEL_GRID = tuple(
    round(n * s / m)
    for n, s, m in zip(
        segment_bench.CT_SHAPE, segment_bench.CT_SPACING, segment_bench.MODEL_SPACING, strict=True
    )
)


def window_count(grid: tuple[int, ...], roi: tuple[int, ...], overlap: float = 0.5) -> int:
    """Windows MONAI's ``sliding_window_inference`` runs over ``grid`` (its scan intervals)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(grid, roi, len(grid), (overlap,) * len(grid))
    return len(dense_patch_slices(grid, roi, interval))


def _median_seconds(call, repeat: int) -> tuple[float, float, float]:
    """Median, min and max wall seconds of ``call()`` over ``repeat`` runs after one warm-up."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def network_flops(network: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Float operations (a multiply-add counts 2) of one forward pass on a tensor of ``shape``."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(shape))
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (default 2: the issue's machine)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement (median)")
    parser.add_argument(
        "--batch", type=int, default=2, help="96^3 windows per network call (segment's CPU batch)"
    )
    parser.add_argument(
        "--monai-seconds",
        type=float,
        default=None,
        help="MONAI's whole-process time on this machine (segment_bench.py): prints the issue's budgets",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegNAS"))
    from MedSegNASLib.inference.optimize import prepare_for_inference, reuse_freed_memory
    from monai.networks.nets import UNet

    definition = {k: v for k, v in segment_bench.NETWORK_DEF.items() if k != "_target_"}
    network = UNet(**definition).eval()
    roi = tuple(segment_bench.PATCH)
    windows = window_count(MODEL_GRID, roi)
    flops_window = network_flops(network, (1, 1, *roi))
    work = flops_window * windows
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); model grid {MODEL_GRID}, {windows} windows of {roi}"
    )
    print(f"work: {flops_window / 1e9:.2f} GFLOP per window, {work / 1e9:.0f} GFLOP for the CT")

    with torch.no_grad():
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        mm = _median_seconds(lambda: torch.mm(a, b), args.repeat * 4)
        mm_rate = 2 * 2048**3 / mm[0]
        conv = torch.nn.Conv3d(64, 64, 3, padding=1).eval()
        x = torch.randn(1, 64, 48, 48, 48)
        conv_s = _median_seconds(lambda: conv(x), args.repeat)
        conv_rate = 2 * 64 * 64 * 27 * 48**3 / conv_s[0]
        batch = torch.randn(args.batch, 1, *roi)
        plain_s = _median_seconds(lambda: network(batch), args.repeat)
    plain_rate = flops_window * args.batch / plain_s[0]
    reuse_freed_memory()
    prepared = prepare_for_inference(network, torch.device("cpu"))
    batch = batch.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        net_s = _median_seconds(lambda: prepared(batch), args.repeat)
    net_rate = flops_window * args.batch / net_s[0]

    rows = [
        ("matrix product 2048^2", mm, mm_rate),
        ("3x3x3 convolution 64->64 at 48^3", conv_s, conv_rate),
        (f"UNet as MONAI runs it, {args.batch} x 96^3", plain_s, plain_rate),
        (f"UNet as segment runs it, {args.batch} x 96^3", net_s, net_rate),
    ]
    for name, (median, low, high), rate in rows:
        print(
            f"{name:40s} {median * 1000:8.1f} ms ({low * 1000:.1f}-{high * 1000:.1f})  {rate / 1e9:6.1f} GFLOP/s"
        )
    best_rate = max(mm_rate, conv_rate)  # the best float32 rate measured on these cores
    print(
        f"ratio segment's network / best reference: {net_rate / best_rate:.2f}; "
        f"segment's network / MONAI's: {net_rate / plain_rate:.2f}"
    )
    floor = work / best_rate
    print(
        f"the CT's {windows} windows: {work / plain_rate:.1f} s as MONAI runs them, {work / net_rate:.1f} s as "
        f"segment does, {floor:.1f} s at the best reference rate (the float32 floor measured here)"
    )
    if args.monai_seconds:
        for goal in (0.30, 0.15):
            budget = goal * args.monai_seconds
            verdict = "above" if budget > floor else "below"
            print(
                f"budget {goal:.2f} x MONAI = {budget:.1f} s: {verdict} the float32 inference floor of {floor:.1f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
