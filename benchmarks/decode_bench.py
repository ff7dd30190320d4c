"""Time and memory of MedSegNAS' sparse DiNTS decode against MONAI's ``TopologySearch.decode()``.

    python benchmarks/decode_bench.py                      # published 12 x 4 space
    python benchmarks/decode_bench.py --blocks 6 --depths 3

Each decode runs in its own fresh process (so one's memory does not hide the other's) on the same
seeded architecture weights. Reported per method: wall time of the decode call, peak of Python/numpy
allocations during it (``tracemalloc``, measured in a second call), and the growth of the process'
peak resident memory during the timed call (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``;
elsewhere ``ru_maxrss``, which can hide growth below the construction peak). The last line says
whether both decodes returned the same architecture.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mib()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(method: str, blocks: int, depths: int, seed: int) -> dict:
    import torch
    from MedSegNASLib.nas import SearchSpace, decode

    # The decode does not depend on the width; a narrow supernet only builds faster.
    space = SearchSpace(num_blocks=blocks, num_depths=depths, channel_mul=0.125, use_downsample=True)
    search = space.build_supernet()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        search.log_alpha_a.copy_(torch.randn(search.log_alpha_a.shape, generator=generator))
        search.log_alpha_c.copy_(torch.randn(search.log_alpha_c.shape, generator=generator))
    run = (lambda: search.decode()) if method == "monai" else (lambda: decode(search, space))

    rss_start = _current_rss_mib()
    reset = _reset_peak_rss()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    rss_growth = _peak_rss_mib() - (rss_start if reset else _peak_rss_mib())
    if not reset:  # ru_maxrss cannot be reset: report the absolute peak instead of a growth
        rss_growth = float("nan")

    tracemalloc.start()
    run()
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    if method == "monai":
        node_a, arch_code_a, arch_code_c, _ = result
    else:
        node_a, arch_code_a, arch_code_c = result.node_a, result.arch_code_a, result.arch_code_c
    return {
        "method": method,
        "seconds": seconds,
        "traced_peak_mib": traced_peak,
        "rss_growth_mib": rss_growth,
        "peak_rss_mib": _peak_rss_mib(),
        "code": [
            node_a.astype(int).tolist(),
            arch_code_a.astype(int).tolist(),
            arch_code_c.astype(int).tolist(),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--depths", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("medsegnas", "monai"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.blocks, args.depths, args.seed)))
        return 0

    results = {}
    for method in ("medsegnas", "monai"):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            method,
            f"--blocks={args.blocks}",
            f"--depths={args.depths}",
        ]
        out = subprocess.run([*cmd, f"--seed={args.seed}"], capture_output=True, text=True, check=True).stdout
        results[method] = json.loads(
            next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]
        )

    print(f"DiNTS decode, {args.blocks} blocks x {args.depths} depths, seed {args.seed}")
    print(f"{'method':<12}{'time s':>10}{'traced peak MiB':>18}{'RSS growth MiB':>17}{'peak RSS MiB':>15}")
    for method, res in results.items():
        print(
            f"{method:<12}{res['seconds']:>10.3f}{res['traced_peak_mib']:>18.1f}"
            f"{res['rss_growth_mib']:>17.1f}{res['peak_rss_mib']:>15.1f}"
        )
    ours, monai = results["medsegnas"], results["monai"]
    print(
        f"ratio monai/medsegnas: time {monai['seconds'] / ours['seconds']:.0f}x, "
        f"traced memory {monai['traced_peak_mib'] / max(ours['traced_peak_mib'], 1e-3):.0f}x"
    )
    print(f"same architecture: {ours['code'] == monai['code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
