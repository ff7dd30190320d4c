"""``medsegnas benchmark nas``: a fair comparison of the searched network with its controls, as a job.

For each of K seeds, on a dataset with a labelled test split that nothing is selected on:

* **searched**: a DiNTS search (``medsegnas search``, optionally within ``--max-params``), then the
  searched architecture retrained (``medsegnas train --arch``);
* **random**: N random architectures of the same space (:func:`~.search_budget.sample_architectures`)
  no larger than the searched network, retrained the same way (the control every NAS result
  needs: Li & Talwalkar 2019; Yang et al. 2020);
* **baseline**: MONAI's UNet and SegResNet scaled to the searched network's parameter count
  (``*-matched``) and at the preset's standard sizes (``*-standard``);

all trained with the same training preset and config (same steps, patch, data, seed), each the
best checkpoint by validation Dice, then scored on the test cases (``evaluate --split test``).

Every search and training is its own run directory under ``RUN/subruns/``: an interrupted
benchmark resumed with ``--resume`` resumes the sub-run it was in and skips the finished ones.

Results in ``RUN/artifacts/``: ``benchmark.json`` (one row per trained model and seed: ``model``,
``kind``, ``seed``, ``params``, ``test_dice_mean``, ``test_dice`` per organ, ``test_hd95_mm``,
``train_seconds``, ``flops_per_window``, ``cpu_latency_ms``, ``gpu_latency_ms``, ...; and a
``summary``: mean and sd over seeds per model, the paired comparison of searched vs the best
baseline and vs the random architectures), ``benchmark.md`` (the table) and
``dice_vs_params.png`` (one marker per model and seed).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic, write_json_atomic
from ..errors import DatasetError, JobError, MedSegNASError

__all__ = [
    "BASELINES",
    "match_baseline_size",
    "register",
    "summarize_rows",
    "format_table",
]

#: Baselines compared with the searched network (each size-matched and at its standard size).
BASELINES = ("unet", "segresnet")

#: Model names of the table, in order, with what they are.
MODEL_TEXT = {
    "dints-searched": "DiNTS, searched",
    "dints-random": "DiNTS, random architecture",
    "unet-matched": "UNet, size-matched",
    "segresnet-matched": "SegResNet, size-matched",
    "unet-standard": "UNet, standard size",
    "segresnet-standard": "SegResNet, standard size",
    "dints-zero-cost": "DiNTS, zero-cost proxy pick",
    "dints-proxy-data": "DiNTS, searched on proxy data",
}

CHECKPOINT_FORMAT = "medsegnas-benchmark-nas"


# --------------------------------------------------------------------------------------------
# Size matching
# --------------------------------------------------------------------------------------------


def _count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _baseline_kwargs(network: str, width: int, standard: Mapping[str, Any]) -> dict[str, Any]:
    """``standard`` (the preset's arguments) with its width replaced: UNet channels ``width * 2**i``,
    SegResNet ``init_filters = width``."""
    kwargs = json.loads(json.dumps(dict(standard)))
    if network == "unet":
        kwargs["channels"] = [width * 2**i for i in range(len(kwargs["channels"]))]
    else:
        kwargs["init_filters"] = width
    return kwargs


def _baseline_parameters(network: str, kwargs: Mapping[str, Any], in_channels: int, num_classes: int) -> int:
    from monai.networks.nets import SegResNet, UNet

    cls = UNet if network == "unet" else SegResNet
    return _count(cls(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **kwargs))


def match_baseline_size(
    network: str, target_params: int, preset: str, in_channels: int, num_classes: int
) -> tuple[dict[str, Any], int]:
    """MONAI arguments of ``network`` (``unet`` or ``segresnet``) of the preset's shape whose width
    makes its parameter count closest to ``target_params``.

    UNet keeps its levels and residual units, with channels ``w, 2w, 4w, ...``; SegResNet keeps its
    blocks with ``init_filters = w`` (a multiple of 8: its group norm has 8 groups).

    Returns:
        ``(kwargs, parameters)``.
    """
    from .train import BASELINE_NETWORKS

    if network not in BASELINES:
        raise MedSegNASError(f"unknown baseline {network!r}; choose from {', '.join(BASELINES)}")
    standard = BASELINE_NETWORKS[preset][network]
    step = 8 if network == "segresnet" else 1

    def size(width: int) -> int:
        return _baseline_parameters(
            network, _baseline_kwargs(network, width, standard), in_channels, num_classes
        )

    low, high = step, step
    while size(high) < target_params and high < 4096:
        low, high = high, high * 2
    while high - low > step:  # parameters grow with the width: bisect on multiples of step
        mid = (low + high) // 2 // step * step
        if mid in (low, high):
            break
        if size(mid) < target_params:
            low = mid
        else:
            high = mid
    width = min((low, high), key=lambda w: abs(size(w) - target_params))
    return _baseline_kwargs(network, width, standard), size(width)


# --------------------------------------------------------------------------------------------
# Measurements of a trained network
# --------------------------------------------------------------------------------------------


def measure_network(network, in_channels: int, window: Sequence[int], repeats: int = 3) -> dict[str, Any]:
    """FLOPs of one forward pass on one window (batch 1; a multiply-add counts 2) and the median
    latency of ``repeats`` timed passes after one warm-up, on the CPU (and on a GPU when present)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network = network.eval()
    x = torch.zeros(1, in_channels, *window)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            network(x)
        flops = float(counter.get_total_flops())

        def latency(device: str) -> float:
            net, data = network.to(device), x.to(device)
            times = []
            for index in range(repeats + 1):
                if device == "cuda":
                    torch.cuda.synchronize()
                tick = time.perf_counter()
                net(data)
                if device == "cuda":
                    torch.cuda.synchronize()
                if index:
                    times.append(time.perf_counter() - tick)
            return round(1000 * statistics.median(times), 2)

        cpu = latency("cpu")
        gpu = latency("cuda") if torch.cuda.is_available() else None
    network.to("cpu")
    return {
        "flops_per_window": flops,
        "cpu_latency_ms": cpu,
        "gpu_latency_ms": gpu,
        "cpu_threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# Summary, paired comparison, table and plot
# --------------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "sd": sd, "n": len(finite)}


def _group(row: Mapping[str, Any]) -> str:
    return "dints-random" if row["kind"] == "random" else str(row["model"])


def _paired(
    rows: Sequence[Mapping[str, Any]], model_a: str, others: Sequence[Mapping[str, Any]], what: str
) -> dict[str, Any]:
    """Searched minus ``others`` on the same test cases, paired per (seed, case) Dice."""
    from scipy import stats

    diffs: list[float] = []
    by_seed_other: dict[int, list[Mapping[str, Any]]] = {}
    for row in others:
        by_seed_other.setdefault(int(row["seed"]), []).append(row)
    for row in rows:
        if row["model"] != model_a:
            continue
        mates = by_seed_other.get(int(row["seed"]), [])
        for case, value in (row.get("test_dice_cases") or {}).items():
            values = [m["test_dice_cases"].get(case) for m in mates if m.get("test_dice_cases")]
            values = [v for v in values if v is not None]
            if value is not None and values:
                diffs.append(float(value) - float(np.mean(values)))
    result: dict[str, Any] = {"versus": what, "pairs": len(diffs)}
    if not diffs:
        return result
    result.update(
        {
            "mean_difference": float(np.mean(diffs)),
            "sd_difference": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0,
            "searched_better": int(sum(d > 0 for d in diffs)),
            "searched_worse": int(sum(d < 0 for d in diffs)),
        }
    )
    nonzero = [d for d in diffs if d != 0]
    if len(nonzero) >= 5:
        result["wilcoxon_p"] = float(stats.wilcoxon(nonzero).pvalue)
    else:
        result["wilcoxon_p"] = None
        result["note"] = "fewer than 5 non-zero pairs: no significance test"
    return result


def summarize_rows(rows: Sequence[Mapping[str, Any]], organs: Sequence[str]) -> dict[str, Any]:
    """Mean and sd over seeds (and random architectures) per model, and the paired comparisons."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_group(row), []).append(row)
    models: dict[str, Any] = {}
    for name, members in groups.items():
        entry: dict[str, Any] = {
            "kind": members[0]["kind"],
            "runs": len(members),
            "seeds": sorted({int(m["seed"]) for m in members}),
        }
        for key in (
            "test_dice_mean",
            "test_hd95_mean_mm",
            "params",
            "flops_per_window",
            "cpu_latency_ms",
            "gpu_latency_ms",
            "train_seconds",
            "search_seconds",
        ):
            entry[key] = _mean_sd([m.get(key) for m in members])
        entry["test_dice"] = {o: _mean_sd([m["test_dice"].get(o) for m in members]) for o in organs}
        entry["test_hd95_mm"] = {o: _mean_sd([m["test_hd95_mm"].get(o) for m in members]) for o in organs}
        models[name] = entry
    summary: dict[str, Any] = {"models": models, "comparisons": []}
    baselines = [
        n for n, e in models.items() if e["kind"] == "baseline" and e["test_dice_mean"]["mean"] is not None
    ]
    if "dints-searched" in models and baselines:
        best = max(baselines, key=lambda n: models[n]["test_dice_mean"]["mean"])
        summary["best_baseline"] = best
        summary["comparisons"].append(
            _paired(
                rows, "dints-searched", [r for r in rows if r["model"] == best], f"best baseline ({best})"
            )
        )
    randoms = [r for r in rows if r["kind"] == "random"]
    if "dints-searched" in models and randoms:
        comparison = _paired(
            rows, "dints-searched", randoms, "mean of the random architectures of the same seed"
        )
        searched = {int(r["seed"]): r["test_dice_mean"] for r in rows if r["model"] == "dints-searched"}
        beaten = [
            r["test_dice_mean"] < searched[int(r["seed"])]
            for r in randoms
            if int(r["seed"]) in searched
            and r["test_dice_mean"] is not None
            and searched[int(r["seed"])] is not None
        ]
        comparison["random_architectures_beaten"] = f"{sum(beaten)} of {len(beaten)}"
        summary["comparisons"].append(comparison)
    if "dints-zero-cost" in models and "dints-searched" in models:
        summary["comparisons"].append(
            _paired(
                rows, "dints-searched", [r for r in rows if r["model"] == "dints-zero-cost"], "zero-cost pick"
            )
        )
    proxy_data = _proxy_data_effect(rows)
    if proxy_data:
        summary["proxy_data"] = proxy_data
    correlation = proxy_correlations(randoms)
    if correlation:
        summary["proxy_kendall_tau"] = correlation
    return summary


def _proxy_data_effect(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Search time saved and test Dice kept by searching on proxy data, per seed and on average."""
    full = {int(r["seed"]): r for r in rows if r["model"] == "dints-searched"}
    pairs = []
    for row in rows:
        other = full.get(int(row["seed"]))
        if row["model"] != "dints-proxy-data" or other is None:
            continue
        pairs.append(
            {
                "seed": int(row["seed"]),
                "search_seconds_full": other.get("search_seconds"),
                "search_seconds_proxy": row.get("search_seconds"),
                "test_dice_full": other.get("test_dice_mean"),
                "test_dice_proxy": row.get("test_dice_mean"),
                "proxy_cases": row.get("proxy_cases"),
            }
        )
    if not pairs:
        return {}
    saved = [
        1 - p["search_seconds_proxy"] / p["search_seconds_full"] for p in pairs if p["search_seconds_full"]
    ]
    kept = [p["test_dice_proxy"] / p["test_dice_full"] for p in pairs if p["test_dice_full"]]
    return {
        "per_seed": pairs,
        "search_time_saved_fraction": _mean_sd(saved),
        "test_dice_kept_fraction": _mean_sd(kept),
    }


def proxy_correlations(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Kendall tau (scipy) of each zero-cost proxy with test Dice over ``rows`` that have both."""
    from scipy import stats

    from .search_zero_cost import PROXIES

    scored = [r for r in rows if r.get("proxies") and r.get("test_dice_mean") is not None]
    result: dict[str, Any] = {}
    if len(scored) < 3:
        return result
    dice = [r["test_dice_mean"] for r in scored]
    for proxy in PROXIES:
        values = [r["proxies"].get(proxy) for r in scored]
        if any(v is None or not math.isfinite(v) for v in values):
            result[proxy] = {"tau": None, "p": None, "n": len(values), "note": "non-finite scores"}
            continue
        tau = stats.kendalltau(values, dice)
        result[proxy] = {
            "tau": None if math.isnan(tau.statistic) else float(tau.statistic),
            "p": None if math.isnan(tau.pvalue) else float(tau.pvalue),
            "n": len(values),
        }
    return result


def _fmt(stat: Mapping[str, Any] | None, digits: int = 3, scale: float = 1.0) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    if stat["n"] > 1:
        return f"{stat['mean'] * scale:.{digits}f} ± {stat['sd'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f}"


def format_table(summary: Mapping[str, Any], organs: Sequence[str]) -> str:
    """The summary as a markdown table (mean ± sd over seeds and random architectures) and the comparisons."""
    order = [name for name in MODEL_TEXT if name in summary["models"]]
    head = (
        "| model | runs | parameters (M) | GFLOPs / window | CPU ms / window | GPU ms / window | search s | "
        "train s | test Dice | test HD95 (mm) | " + " | ".join(organs) + " |"
    )
    lines = [head, "|" + "---|" * (10 + len(organs))]
    for name in order:
        e = summary["models"][name]
        cells = [
            MODEL_TEXT[name],
            str(e["runs"]),
            _fmt(e["params"], 2, 1e-6),
            _fmt(e["flops_per_window"], 1, 1e-9),
            _fmt(e["cpu_latency_ms"], 0),
            _fmt(e["gpu_latency_ms"], 1),
            _fmt(e["search_seconds"], 0),
            _fmt(e["train_seconds"], 0),
            _fmt(e["test_dice_mean"]),
            _fmt(e["test_hd95_mean_mm"], 1),
            *[_fmt(e["test_dice"][o]) for o in organs],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("proxy_kendall_tau"):
        lines += [
            "",
            "| zero-cost proxy | Kendall tau with test Dice | p | architectures |",
            "|---|---|---|---|",
        ]
        for proxy, entry in summary["proxy_kendall_tau"].items():
            tau = "-" if entry["tau"] is None else f"{entry['tau']:+.2f}"
            p = "-" if entry["p"] is None else f"{entry['p']:.2g}"
            lines.append(f"| {proxy} | {tau} | {p} | {entry['n']} |")
    effect = summary.get("proxy_data")
    if effect:
        lines += [
            "",
            f"Proxy data: search time saved {_fmt(effect['search_time_saved_fraction'], 0, 100)} %, retrained test "
            f"Dice kept {_fmt(effect['test_dice_kept_fraction'], 0, 100)} % (searched on "
            f"{len(effect['per_seed'][0]['proxy_cases'] or [])} k-centre cases vs all).",
        ]
    for comparison in summary.get("comparisons", []):
        if "mean_difference" not in comparison:
            continue
        p = comparison.get("wilcoxon_p")
        lines.append("")
        lines.append(
            f"Searched vs {comparison['versus']}: mean per-case Dice difference "
            f"{comparison['mean_difference']:+.3f} ± {comparison['sd_difference']:.3f} over {comparison['pairs']} "
            f"(seed, case) pairs; searched better in {comparison['searched_better']}, worse in "
            f"{comparison['searched_worse']}"
            + (f"; Wilcoxon p = {p:.3g}" if p is not None else "; too few pairs for a test")
            + (
                f"; random architectures beaten: {comparison['random_architectures_beaten']}"
                if "random_architectures_beaten" in comparison
                else ""
            )
            + "."
        )
    return "\n".join(lines) + "\n"


def plot_dice_vs_params(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    """Test Dice against parameters, one marker per model and seed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    style = {
        "dints-searched": ("*", "tab:red", 160),
        "dints-random": ("o", "0.55", 40),
        "dints-zero-cost": ("D", "tab:purple", 60),
        "dints-proxy-data": ("P", "tab:orange", 80),
        "unet-matched": ("s", "tab:blue", 60),
        "unet-standard": ("s", "none", 60),
        "segresnet-matched": ("^", "tab:green", 70),
        "segresnet-standard": ("^", "none", 70),
    }
    edge = {"unet-standard": "tab:blue", "segresnet-standard": "tab:green"}
    figure = Figure(figsize=(7, 4.5), dpi=110)
    axis = figure.add_subplot(1, 1, 1)
    for name in MODEL_TEXT:
        members = [r for r in rows if _group(r) == name and r.get("test_dice_mean") is not None]
        if not members:
            continue
        marker, color, size = style[name]
        axis.scatter(
            [r["params"] / 1e6 for r in members],
            [r["test_dice_mean"] for r in members],
            marker=marker,
            s=size,
            c=color,
            edgecolors=edge.get(name, "black"),
            linewidths=1.0,
            label=MODEL_TEXT[name],
            zorder=3 if name == "dints-searched" else 2,
        )
    axis.set_xscale("log")
    # Plain numbers at 1-2-5 steps: the log axis's default minor labels read "3 x 10^0".
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    sizes = [r["params"] / 1e6 for r in rows if r.get("params")]
    if sizes:
        steps = [m * 10.0**e for e in range(-3, 4) for m in (1, 2, 5)]
        low, high = min(sizes) / 1.25, max(sizes) * 1.25
        axis.set_xlim(low, high)
        ticks = [t for t in steps if low <= t <= high]
        axis.xaxis.set_major_locator(FixedLocator(ticks))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel("parameters (millions, log scale)")
    axis.set_ylabel("mean test Dice")
    axis.set_title(title, fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds are integers separated by commas, e.g. 0,1,2; got {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give distinct non-negative seeds, e.g. 0,1,2; got {text!r}")
    return seeds


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}"
        )
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark nas``."""
    from ..jobs.runner import add_job_arguments
    from .commands import DEVICE_CHOICES, add_dataset_arguments

    benchmark = subparsers.add_parser(
        "benchmark", help="benchmarks that need many runs (benchmark nas: searched vs random and baselines)"
    )
    kinds = benchmark.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    nas = kinds.add_parser(
        "nas",
        help="searched DiNTS network vs random architectures of the space and size-matched baselines",
        description="For each seed: search and retrain, retrain N random architectures of the same space no larger "
        "than the searched one, train UNet and SegResNet scaled to its size and at their standard sizes, all with "
        "the same training settings; score every model on the dataset's labelled test cases (never used for any "
        "choice). Results: RUN/artifacts/benchmark.json, benchmark.md and dice_vs_params.png. Every search and "
        "training is a run directory under RUN/subruns/; --resume continues where the benchmark stopped.",
    )
    add_dataset_arguments(nas)
    nas.add_argument("--seeds", type=_seeds, default=[0], metavar="A,B", help="seeds (default: 0)")
    nas.add_argument(
        "--random", type=int, default=3, metavar="N", help="random architectures per seed (default: 3)"
    )
    nas.add_argument(
        "--baselines",
        type=_names,
        default=list(BASELINES),
        metavar="A,B",
        help="unet,segresnet (default: both)",
    )
    nas.add_argument(
        "--preset",
        choices=["tiny", "small", "full"],
        default="tiny",
        help="search and train preset (default: tiny)",
    )
    nas.add_argument(
        "--search-config", type=Path, default=None, metavar="FILE", help="search settings (JSON/YAML)"
    )
    nas.add_argument(
        "--train-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="training settings for every model (JSON/YAML)",
    )
    nas.add_argument(
        "--max-params", type=int, default=None, metavar="N", help="size budget of the search (parameters)"
    )
    nas.add_argument(
        "--proxy-cases",
        type=int,
        default=None,
        metavar="N",
        help="also search on N training cases chosen by k-centre greedy (proxy data), retrain on all, and report "
        "the search time saved and the test Dice kept",
    )
    nas.add_argument(
        "--zero-cost",
        action="store_true",
        help="also score every architecture with zero-cost proxies at initialisation, retrain the proxy's pick "
        "and report the rank correlation of each proxy with test Dice",
    )
    nas.add_argument(
        "--device", choices=DEVICE_CHOICES, default="auto", help="where to train (default: auto)"
    )
    add_job_arguments(nas)
    nas.set_defaults(func=benchmark_nas_command)


def benchmark_nas_command(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset
    from ..jobs.runner import run_job_command
    from .commands import load_config_file

    if args.random < 0:
        raise MedSegNASError(f"--random must be >= 0, got {args.random}")
    if args.run_dir is None and not args.detach:
        raise JobError("benchmark nas writes many runs: give --run-dir RUN, or --detach")
    dataset_path = str(args.dataset.expanduser().absolute())
    dataroot = None if args.dataroot is None else str(args.dataroot.expanduser().absolute())
    dataset = load_dataset(dataset_path, dataroot=dataroot)
    test = [case for case in dataset.test if case.label is not None]
    if not test:
        raise DatasetError(
            f"{dataset.path} has no labelled test case; the benchmark scores every model on a held-out test split "
            "(e.g. medsegnas phantom --test-cases 4 writes labelsTs/)"
        )
    config = {
        "dataset": dataset_path,
        "dataroot": dataroot,
        "seeds": list(args.seeds),
        "random": int(args.random),
        "baselines": list(args.baselines),
        "preset": args.preset,
        "search_overrides": load_config_file(args.search_config) if args.search_config else {},
        "train_overrides": load_config_file(args.train_config) if args.train_config else {},
        "max_params": args.max_params,
        "zero_cost": bool(args.zero_cost),
        "proxy_cases": args.proxy_cases,
        "device": args.device,
        "test_cases": [case.name for case in test],
    }
    for key in ("network_kwargs", "seed"):
        if key in config["train_overrides"]:
            raise MedSegNASError(
                f"--train-config may not set {key}: the benchmark sets it per model and seed"
            )

    if args.resume and args.run_dir is not None:
        from ..jobs.rundir import RunDir

        previous = RunDir(args.run_dir)
        recorded = previous.read_job().get("config") if previous.is_run_dir() else None
        if recorded is not None and recorded != json.loads(json.dumps(config)):
            changed = sorted(k for k in config if recorded.get(k) != json.loads(json.dumps(config[k])))
            raise JobError(
                f"{args.run_dir} was started with other settings ({', '.join(changed)} differ); resume it with the "
                "same arguments, or start a new run"
            )

    def body(ctx) -> dict[str, Any]:
        return _run_benchmark(ctx, config)

    return run_job_command("benchmark", args, body, config, inputs={"dataset": dataset_path})


class _SubRuns:
    """Runs ``medsegnas search`` / ``train`` in this process, each in its own run directory."""

    def __init__(self, ctx, root: Path, device: str) -> None:
        self.ctx, self.root, self.device = ctx, root, device
        root.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list[str]) -> Path:
        from ..cli import build_parser
        from ..jobs.rundir import RunDir
        from ..jobs.runner import EXIT_CANCELLED

        path = self.root / name
        run = RunDir(path)
        state = run.read_status().get("state") if run.is_run_dir() else None
        if state == "done":
            return path
        resume = False
        if run.is_run_dir():
            job = run.read_job()
            resume = isinstance(job.get("config"), dict) and "request" in job["config"]
            if not resume:  # stopped before its configuration was recorded: start it again
                shutil.rmtree(path)
        self.ctx.log(f"{'resuming' if resume else 'starting'} sub-run {name}")
        full = [*argv, "--device", self.device, "--run-dir", str(path), *(["--resume"] if resume else [])]
        args = build_parser().parse_args(full)
        code = args.func(args)
        if code == EXIT_CANCELLED:
            self.ctx.request_stop(f"sub-run {name} was cancelled")
            self.ctx.raise_if_stop_requested()
        if code != 0:
            error = RunDir(path).read_status().get("error") or f"exit code {code}"
            raise MedSegNASError(f"sub-run {name} failed: {error}")
        return path


def job_seconds(run_path: Path) -> float | None:
    """Seconds a job ran over all its sessions (start or resume to done, cancel, error or its last
    event), from its ``events.jsonl``; the configuration resolved before a session is not included."""
    from datetime import datetime

    from ..jobs.rundir import RunDir

    events, _ = RunDir(run_path).read_events()
    total, begin, last = 0.0, None, None
    for event in events:
        moment = datetime.fromisoformat(event["time"]).timestamp()
        message = str(event.get("message", ""))
        if event["type"] == "log" and (" started (pid " in message or " resumed (pid " in message):
            if begin is not None and last is not None:
                total += last - begin  # the previous session ended without a final event (killed)
            begin = moment
        elif event["type"] in ("done", "cancelled", "error") and begin is not None:
            total, begin = total + moment - begin, None
        last = moment
    if begin is not None and last is not None:
        total += last - begin
    return round(total, 1) if events else None


def _write_config(folder: Path, name: str, data: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(folder / name, dict(data))


def _row_from_evaluation(report, organs: Sequence[str]) -> dict[str, Any]:
    dice = {o: report.per_class[o]["dice_mean"] for o in organs}
    hd95 = {o: report.per_class[o]["hd95_mm_mean"] for o in organs}
    per_case: dict[str, list[float]] = {}
    for row in report.rows:
        if math.isfinite(row["dice"]):
            per_case.setdefault(row["case"], []).append(float(row["dice"]))

    def clean(value: float) -> float | None:
        return None if value is None or not math.isfinite(value) else round(float(value), 5)

    finite_hd = [v for v in hd95.values() if v is not None and math.isfinite(v)]
    return {
        "test_dice_mean": clean(report.mean_foreground_dice()),
        "test_dice": {o: clean(v) for o, v in dice.items()},
        "test_hd95_mm": {o: clean(v) for o, v in hd95.items()},
        "test_hd95_mean_mm": clean(float(np.mean(finite_hd))) if finite_hd else None,
        "test_dice_cases": {case: round(float(np.mean(v)), 5) for case, v in per_case.items()},
        "test_cases": list(report.info.get("cases", [])),
    }


def _run_benchmark(ctx, config: Mapping[str, Any]) -> dict[str, Any]:
    from ..evaluation.evaluate import evaluate_model
    from ..jobs.rundir import to_jsonable
    from .decode import load_arch_json, save_arch_json
    from .search_budget import ParameterTable, sample_architectures
    from .train import build_network

    run_dir = ctx.run_dir
    if run_dir is None:
        raise JobError("benchmark nas needs a run directory (--run-dir)")
    started = time.monotonic()
    artifacts = run_dir.artifacts
    subruns = _SubRuns(ctx, run_dir.path / "subruns", config["device"])
    configs = run_dir.path / "configs"
    state = (ctx.load_checkpoint() if ctx.resuming else None) or {}
    if state and state.get("format") != CHECKPOINT_FORMAT:
        raise JobError("the checkpoint is not a benchmark checkpoint; start a new run")
    rows: list[dict[str, Any]] = list(state.get("rows", []))
    done = {(r["model"], int(r["seed"])) for r in rows}
    seeds, n_random = list(config["seeds"]), int(config["random"])
    baselines = list(config["baselines"])
    per_seed = 2 + n_random + 2 * len(baselines) + (2 if config["zero_cost"] else 0)
    per_seed += 2 if config.get("proxy_cases") else 0
    total = len(seeds) * per_seed
    position = len(rows) + sum(1 for s in seeds if (run_dir.path / "subruns" / f"search-s{s}").is_dir())
    organs: list[str] = []
    dataset_args = ["--dataset", config["dataset"]] + (
        ["--dataroot", config["dataroot"]] if config["dataroot"] else []
    )
    train_overrides = dict(config["train_overrides"])

    def save() -> None:
        ctx.save_checkpoint({"format": CHECKPOINT_FORMAT, "rows": to_jsonable(rows)})

    def step(stage: str, **info: Any) -> None:
        nonlocal position
        position += 1
        ctx.progress(min(position, total), total, stage=stage, **info)

    def write_results(final: bool) -> dict[str, Any]:
        summary = summarize_rows(rows, organs)
        report = {
            "protocol": {
                "seeds": seeds,
                "random_architectures_per_seed": n_random,
                "baselines": baselines,
                "preset": config["preset"],
                "search_overrides": config["search_overrides"],
                "train_overrides": train_overrides,
                "max_params": config["max_params"],
                "test_cases": config["test_cases"],
                "selection": "architecture chosen on the search's validation cases; every network's checkpoint by "
                "validation Dice; test cases only scored",
                "random_budget": "random architectures are no larger than the searched network of the same seed",
                "latency": "median of 3 forward passes of one window (batch 1) after one warm-up, on this machine",
                "seconds": "search_seconds and train_seconds: the sub-run's job time over all its sessions (from its "
                "events), including its validations, export and validation predictions",
                "complete": final,
            },
            "organs": organs,
            "rows": rows,
            "summary": summary,
            "wall_s_this_process": round(time.monotonic() - started, 1),
        }
        path = write_json_atomic(artifacts / "benchmark.json", to_jsonable(report))
        table = format_table(summary, organs)
        write_atomic(artifacts / "benchmark.md", lambda handle: handle.write(table.encode("utf-8")))
        if rows:
            plot_dice_vs_params(
                rows,
                artifacts / "dice_vs_params.png",
                "Test Dice vs parameters (one marker per model and seed)",
            )
        return {"path": path, "table": table, "summary": summary}

    def train_and_score(
        model: str, kind: str, seed: int, argv_extra: list[str], extra_overrides: dict, facts: dict
    ) -> None:
        nonlocal organs
        if (model, seed) in done:
            return
        overrides = {**train_overrides, **extra_overrides}
        config_file = _write_config(configs, f"train-{model}-s{seed}.json", overrides)
        argv = ["train", *dataset_args, "--preset", config["preset"], "--config", str(config_file),
                "--seed", str(seed), "--no-register", *argv_extra]  # fmt: skip
        path = subruns.run(f"train-{model}-s{seed}", argv)
        ctx.raise_if_stop_requested()
        summary = json.loads((path / "artifacts" / "summary.json").read_text())
        resolved = json.loads((path / "job.json").read_text())["config"]
        report = evaluate_model(
            path, config["dataset"], split="test", device=config["device"], dataroot=config["dataroot"],
            stop=ctx.raise_if_stop_requested,
        )  # fmt: skip
        if not organs:
            organs = [item["name"] for item in resolved["dataset"]["labels"][1:]]
        network, _ = build_network(resolved)
        measured = measure_network(network, len(resolved["dataset"]["modalities"]), summary["patch_size"])
        row = {
            "model": model,
            "kind": kind,
            "seed": seed,
            "params": int(summary["parameters"]),
            **_row_from_evaluation(report, organs),
            "train_seconds": job_seconds(path),
            "train_steps": summary["steps"],
            "val_dice_mean": summary["best_val_dice_mean"],
            **measured,
            "window": summary["patch_size"],
            "run": str(run_dir.relative(path)),
            **facts,
        }
        rows.append(row)
        done.add((model, seed))
        save()
        write_results(final=False)
        ctx.log(
            f"{model} seed {seed}: test Dice {row['test_dice_mean']}, {row['params'] / 1e6:.2f} M parameters"
        )
        step("train", model=model, seed=seed, test_dice=row["test_dice_mean"])

    for seed in seeds:
        # ---- search -------------------------------------------------------------------------
        search_overrides = dict(config["search_overrides"])
        if config["max_params"] is not None:
            search_overrides["max_params"] = int(config["max_params"])
        search_file = _write_config(configs, f"search-s{seed}.json", search_overrides)
        fresh_search = not (run_dir.path / "subruns" / f"search-s{seed}").is_dir()
        search_path = subruns.run(
            f"search-s{seed}",
            [
                "search",
                *dataset_args,
                "--preset",
                config["preset"],
                "--config",
                str(search_file),
                "--seed",
                str(seed),
            ],
        )
        if fresh_search:
            step("search", seed=seed)
        ctx.raise_if_stop_requested()
        search_summary = json.loads((search_path / "artifacts" / "summary.json").read_text())
        arch_path = search_path / "artifacts" / "arch.json"
        searched = load_arch_json(arch_path)
        searched_params = int(search_summary["parameters"]["searched_channel_mul_1"])
        search_seconds = job_seconds(search_path)
        resolved_search = json.loads((search_path / "job.json").read_text())["config"]
        in_channels = len(resolved_search["dataset"]["modalities"])
        num_classes = int(resolved_search["dataset"]["num_classes"])
        table = ParameterTable.build(searched.search_space, in_channels, num_classes, channel_mul=1.0)
        randoms = sample_architectures(
            searched.search_space, n_random, seed, table=table, max_params=searched_params
        )
        proxies: list[dict[str, float] | None] = [None] * (n_random + 1)
        pending = ["dints-searched", *(f"dints-random-{i}" for i in range(n_random))]
        if config["zero_cost"] and any((m, seed) not in done for m in pending):
            from .search_zero_cost import score_architectures, training_patches

            images, labels = training_patches(resolved_search, 4, seed)
            proxies = score_architectures(
                [searched, *randoms], images, labels, num_classes, seed=seed, stop=ctx.raise_if_stop_requested
            )
        train_and_score(
            "dints-searched", "searched", seed, ["--arch", str(arch_path)], {},
            {"search_seconds": search_seconds, "arch": str(run_dir.relative(arch_path)),
             "active_paths": len(searched.active_paths()), "proxies": proxies[0]},
        )  # fmt: skip

        # ---- random architectures of the same space, no larger than the searched one -------------
        arch_folder = artifacts / "architectures"
        arch_folder.mkdir(parents=True, exist_ok=True)
        for index, code in enumerate(randoms):
            path = arch_folder / f"random-{index}-s{seed}.json"
            if not path.exists():
                save_arch_json(code, path)
            train_and_score(
                f"dints-random-{index}", "random", seed, ["--arch", str(path)], {},
                {"arch": str(run_dir.relative(path)), "active_paths": len(code.active_paths()),
                 "proxies": proxies[index + 1]},
            )  # fmt: skip

        # ---- proxy data: the same search on a k-centre subset of the training cases ------------
        if config.get("proxy_cases"):
            px_overrides = {**search_overrides, "proxy_cases": int(config["proxy_cases"])}
            px_file = _write_config(configs, f"search-proxy-data-s{seed}.json", px_overrides)
            fresh = not (run_dir.path / "subruns" / f"search-proxy-data-s{seed}").is_dir()
            px_path = subruns.run(
                f"search-proxy-data-s{seed}",
                ["search", *dataset_args, "--preset", config["preset"], "--config", str(px_file), "--seed",
                 str(seed)],
            )  # fmt: skip
            if fresh:
                step("search", seed=seed, method="proxy data")
            px_summary = json.loads((px_path / "artifacts" / "summary.json").read_text())
            px_arch = px_path / "artifacts" / "arch.json"
            train_and_score(
                "dints-proxy-data", "searched", seed, ["--arch", str(px_arch)], {},
                {"search_seconds": job_seconds(px_path), "arch": str(run_dir.relative(px_arch)),
                 "proxy_cases": (px_summary.get("proxy_data") or {}).get("selected")},
            )  # fmt: skip

        # ---- training-free search: the proxy's pick among candidates of the same size budget ----
        if config["zero_cost"]:
            zc_overrides = {**dict(config["search_overrides"]), "max_params": searched_params}
            zc_file = _write_config(configs, f"search-zero-cost-s{seed}.json", zc_overrides)
            fresh = not (run_dir.path / "subruns" / f"search-zero-cost-s{seed}").is_dir()
            zc_path = subruns.run(
                f"search-zero-cost-s{seed}",
                ["search", *dataset_args, "--preset", config["preset"], "--config", str(zc_file), "--seed",
                 str(seed), "--zero-cost"],
            )  # fmt: skip
            if fresh:
                step("search", seed=seed, method="zero-cost")
            zc_summary = json.loads((zc_path / "artifacts" / "summary.json").read_text())
            zc_arch = zc_path / "artifacts" / "arch.json"
            train_and_score(
                "dints-zero-cost", "searched", seed, ["--arch", str(zc_arch)], {},
                {"search_seconds": job_seconds(zc_path), "arch": str(run_dir.relative(zc_arch)),
                 "proxy": zc_summary["proxy"], "proxies": zc_summary["best_scores"]},
            )  # fmt: skip

        # ---- baselines: size-matched and standard ----------------------------------------------
        for network in baselines:
            kwargs, matched = match_baseline_size(
                network, searched_params, config["preset"], in_channels, num_classes
            )
            train_and_score(
                f"{network}-matched", "baseline", seed, ["--network", network], {"network_kwargs": kwargs},
                {"matched_to_params": searched_params},
            )  # fmt: skip
            train_and_score(f"{network}-standard", "baseline", seed, ["--network", network], {}, {})

    result = write_results(final=True)
    for name, kind in (
        ("benchmark.json", "table"),
        ("benchmark.md", "table"),
        ("dice_vs_params.png", "image"),
    ):
        if (artifacts / name).exists():
            ctx.artifact(artifacts / name, kind)
    print(result["table"])
    sys.stdout.flush()
    return {
        "benchmark": str(run_dir.relative(result["path"])),
        "rows": len(rows),
        "best_baseline": result["summary"].get("best_baseline"),
        "comparisons": result["summary"].get("comparisons"),
    }
