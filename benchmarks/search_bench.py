"""Time and peak memory of MedSegNAS' DiNTS search steps against a step written like MONAI's tutorial.

    python benchmarks/search_bench.py                          # tiny space, 48^3 patches, CPU
    python benchmarks/search_bench.py --preset full --patch 96 --device cuda --amp

Both run in this one process, on the same phantom patches, from the same initial supernet
weights, with the same learning rates: ``--steps`` pairs of (weight step, architecture step) in
the search phase, repeated ``--rounds`` times, alternating which implementation goes first.

* **ours**: :class:`MedSegNASLib.nas.search.SupernetTrainer` (vectorised regularisers, weights-only
  SGD, lambda applied to every regulariser, architecture gradients clipped).
* **reference**: written the way MONAI's DiNTS tutorial search script writes its loop: the weight
  optimiser over ``model.weight_parameters()``, ``requires_grad`` switched parameter by parameter,
  ``get_prob_a(child=True)``, ``get_topology_entropy`` and two ``get_ram_cost_usage`` calls (full
  and current) every architecture step, ``loss.item()`` after each step, lambda on the entropies
  only without AMP (on all terms with AMP), as the tutorial does.

Reported per implementation: median seconds per step pair over the rounds, and the peak memory
growth during the measured steps; the ratios are the medians of the per-round ratios. On CUDA that is ``torch.cuda.max_memory_allocated`` above the
memory allocated before the steps; on CPU the growth of the process' peak resident memory
(``VmHWM``, reset through ``/proc/self/clear_refs``; glibc is told to return large freed blocks
to the system at once, so that one implementation's freed memory does not hide the other's).
Then the ratios ours / reference (goal: both <= 1.0) and the memory estimates against the measured
peak: MedSegNAS' probe estimate and MONAI's ``get_ram_cost_usage`` (with every path on). Last,
the time of the architecture regularisers alone, vectorised against MONAI's loops: the part of the
step where the two differ (on a 12 x 4 space it is most of the difference on a GPU).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------- memory
def _configure_glibc() -> bool:
    """Large freed blocks go straight back to the system (so RSS follows live memory)."""
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 64 * 1024)  # fixed: disables glibc's growing threshold
        libc.mallopt(m_trim_threshold, 128 * 1024)
        _configure_glibc.trim = libc.malloc_trim  # type: ignore[attr-defined]
        return True
    except (OSError, AttributeError):
        return False


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory growth (MiB) during a ``with`` block, on CUDA or from the process' RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.growth_mib = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        trim = getattr(_configure_glibc, "trim", None)
        if trim is not None:
            trim(0)
        self.base = _status_mib("VmRSS") or 0.0
        self.sampled = self.base
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.hwm = True
        except OSError:  # no peak reset: sample the RSS instead
            self.hwm = False
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _status_mib("VmRSS") or 0.0)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth_mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        elif self.hwm:
            self.growth_mib = (_status_mib("VmHWM") or 0.0) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.growth_mib = self.sampled - self.base


# ---------------------------------------------------------------------------------------- data
def make_batches(args: argparse.Namespace, count: int) -> tuple[list, list, int]:
    """``count`` weight batches and ``count`` architecture batches of phantom patches, and the class count."""
    from MedSegNASLib.data.datasets import load_dataset
    from MedSegNASLib.data.phantom import PHANTOM_LABELS, write_phantom_dataset
    from MedSegNASLib.data.preprocessing import PreprocessingSpec
    from MedSegNASLib.nas.pipeline import case_records, preprocessing_transforms, training_transforms

    values = [info.value for info in PHANTOM_LABELS]
    folder = Path(tempfile.mkdtemp(prefix="search-bench-"))
    write_phantom_dataset(folder, cases=4, size=args.size, seed=args.seed, unlabeled=0, test_cases=0)
    dataset = load_dataset(folder)
    spacing = float(np.median(_spacings(dataset))) if args.spacing is None else args.spacing
    spec = PreprocessingSpec(spacing=[spacing] * 3, patch_size=[args.patch] * 3)
    pre = preprocessing_transforms(spec, values, for_training=True)
    cases = [pre(record) for record in case_records(dataset.cases)]
    crop = training_transforms(spec, len(values), crops_per_case=args.crops, augment=False)
    batches: list[list[dict]] = [[], []]
    for stream in (0, 1):
        for index in range(count):
            crop.set_random_state(seed=1000 * stream + index)
            samples = crop(dict(cases[(2 * stream + index) % len(cases)]))
            image = torch.stack([s["image"] for s in samples])
            label = torch.stack([s["label"] for s in samples])
            batches[stream].append((image, label))
    return batches[0], batches[1], len(values)


def _spacings(dataset) -> list[float]:
    from MedSegNASLib.data.io import read_geometry

    return [
        float(np.linalg.norm(read_geometry(case.images[0])[1][:3, :3], axis=0).min())
        for case in dataset.cases
    ]


# ---------------------------------------------------------------------------------------- reference
class TutorialStyleStep:
    """A DiNTS search step in the style of MONAI's tutorial search loop (see the module docstring)."""

    def __init__(self, model, config, device: torch.device, amp: bool, epoch: int) -> None:
        from monai.losses import DiceCELoss

        self.model, self.device, self.amp = model, device, amp
        self.dints_space = model.dints_space
        self.config = config
        self.epoch = epoch
        self.optimizer = torch.optim.SGD(
            model.weight_parameters(), lr=config.lr_weights, momentum=0.9, weight_decay=0.00004
        )
        self.arch_optimizer_a = torch.optim.Adam(
            [self.dints_space.log_alpha_a], lr=config.lr_arch, betas=(0.5, 0.999), weight_decay=0.0
        )
        self.arch_optimizer_c = torch.optim.Adam(
            [self.dints_space.log_alpha_c], lr=config.lr_arch, betas=(0.5, 0.999), weight_decay=0.0
        )
        self.loss_func = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=0.00001,
            smooth_dr=0.00001,
        )
        self.scaler = torch.amp.GradScaler("cuda") if amp else None

    def weight_step(self, inputs, labels) -> float:
        for parameter in self.model.weight_parameters():
            parameter.requires_grad = True
        self.dints_space.log_alpha_a.requires_grad = False
        self.dints_space.log_alpha_c.requires_grad = False
        self.optimizer.zero_grad()
        if self.amp:
            with torch.autocast("cuda"):
                outputs = self.model(inputs)
                loss = self.loss_func(outputs, labels)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            outputs = self.model(inputs)
            loss = self.loss_func(outputs, labels)
            loss.backward()
            self.optimizer.step()
        self.inputs_shape = inputs.shape  # the tutorial sizes the memory terms with the weight batch
        return loss.item()

    def arch_step(self, inputs_search, labels_search) -> float:
        config, space = self.config, self.dints_space
        for parameter in self.model.weight_parameters():
            parameter.requires_grad = False
        space.log_alpha_a.requires_grad = True
        space.log_alpha_c.requires_grad = True
        probs_a, _ = space.get_prob_a(child=True)
        entropy_alpha_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        entropy_alpha_c = -(
            F.softmax(space.log_alpha_c, dim=-1) * F.log_softmax(space.log_alpha_c, dim=-1)
        ).mean()
        topology_loss = space.get_topology_entropy(probs_a)
        ram_cost_full = space.get_ram_cost_usage(self.inputs_shape, full=True)
        ram_cost_usage = space.get_ram_cost_usage(self.inputs_shape)
        ram_cost_loss = torch.abs(config.memory_target - ram_cost_usage / ram_cost_full)
        self.arch_optimizer_a.zero_grad()
        self.arch_optimizer_c.zero_grad()
        combination_weights = (self.epoch - config.warmup_epochs) / (config.epochs - config.warmup_epochs)
        if self.amp:
            with torch.autocast("cuda"):
                outputs_search = self.model(inputs_search)
                loss = self.loss_func(outputs_search, labels_search)
                loss += combination_weights * (
                    (entropy_alpha_a + entropy_alpha_c) + ram_cost_loss + 0.001 * topology_loss
                )
            self.scaler.scale(loss).backward()
            self.scaler.step(self.arch_optimizer_a)
            self.scaler.step(self.arch_optimizer_c)
            self.scaler.update()
        else:
            outputs_search = self.model(inputs_search)
            loss = self.loss_func(outputs_search, labels_search)
            loss += 1.0 * (
                combination_weights * (entropy_alpha_a + entropy_alpha_c)
                + ram_cost_loss
                + 0.001 * topology_loss
            )
            loss.backward()
            self.arch_optimizer_a.step()
            self.arch_optimizer_c.step()
        return loss.item()


class OursStep:
    """MedSegNAS' trainer behind the same two calls."""

    def __init__(self, network, config, device: torch.device, amp: bool, epoch: int) -> None:
        from MedSegNASLib.nas.search import SupernetTrainer

        self.trainer = SupernetTrainer(network, network, config, world_size=1, device=device, amp=amp)
        self.weight = (epoch - config.warmup_epochs) / (config.epochs - config.warmup_epochs)

    def weight_step(self, inputs, labels) -> float:
        return self.trainer.weight_step(inputs, labels)

    def arch_step(self, inputs, labels) -> float:
        return self.trainer.arch_step(inputs, labels, self.weight)["arch_loss"]


def regulariser_times(space, device: torch.device, shape, repeats: int = 10) -> dict[str, float]:
    """Milliseconds per architecture step spent on the regularisers (forward + backward) alone."""
    from MedSegNASLib.nas.search import DiNTSRegularizers

    search = space.build_supernet(device=str(device))
    ours = DiNTSRegularizers(search, device)

    def vectorised() -> None:
        terms = ours(search, shape, 0.8)
        (terms["path_entropy"] + terms["op_entropy"] + terms["memory"] + 0.001 * terms["topology"]).backward()

    def loops() -> None:
        probs_a, _ = search.get_prob_a(child=True)
        entropy_a = -(probs_a * torch.log(probs_a + 1e-5)).mean()
        entropy_c = -(
            F.softmax(search.log_alpha_c, dim=-1) * F.log_softmax(search.log_alpha_c, dim=-1)
        ).mean()
        topology = search.get_topology_entropy(probs_a)
        full, usage = search.get_ram_cost_usage(shape, full=True), search.get_ram_cost_usage(shape)
        (entropy_a + entropy_c + torch.abs(0.8 - usage / full) + 0.001 * topology).backward()

    result = {}
    for name, function in (("ours", vectorised), ("reference", loops)):
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick = time.perf_counter()
        for _ in range(repeats):
            function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result[name] = (time.perf_counter() - tick) / repeats * 1000
    return result


# ---------------------------------------------------------------------------------------- main
def run_steps(step, weight_batches, arch_batches, start: int, count: int, device: torch.device) -> float:
    """Seconds for ``count`` step pairs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    for index in range(start, start + count):
        images, labels = weight_batches[index % len(weight_batches)]
        step.weight_step(images.to(device), labels.to(device))
        images, labels = arch_batches[index % len(arch_batches)]
        step.arch_step(images.to(device), labels.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=["tiny", "small", "full"], default="tiny", help="search space and schedule"
    )
    parser.add_argument("--patch", type=int, default=48, help="patch side in voxels (default 48)")
    parser.add_argument("--crops", type=int, default=2, help="patches per step (default 2)")
    parser.add_argument("--size", type=int, default=64, help="phantom size in voxels (default 64)")
    parser.add_argument(
        "--spacing", type=float, default=None, help="resampling spacing in mm (default: phantom's)"
    )
    parser.add_argument("--steps", type=int, default=2, help="step pairs measured per round (default 2)")
    parser.add_argument(
        "--rounds", type=int, default=7, help="measured rounds per implementation (default 7)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    from MedSegNASLib.nas.search import SearchConfig, SearchMemoryModel

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    if args.amp and args.device != "cuda":
        parser.error("--amp needs --device cuda")
    device = torch.device(args.device)
    glibc = _configure_glibc() if device.type == "cpu" else False
    config = SearchConfig.from_preset(
        args.preset, {"patch_size": [args.patch] * 3, "crops_per_case": args.crops}
    )
    space = config.space
    space.check_patch_size((args.patch,) * 3)
    epoch = config.warmup_epochs + 1  # a search-phase epoch: both steps run

    weight_batches, arch_batches, num_classes = make_batches(args, args.steps + 1)
    torch.manual_seed(args.seed)
    initial = space.build_search_network(1, num_classes).state_dict()
    networks = {}
    for name in ("ours", "reference"):  # built and loaded the same way: no instance is favoured
        networks[name] = space.build_search_network(1, num_classes, device=str(device))
        networks[name].load_state_dict(initial)
    del initial
    steps = {
        "ours": OursStep(networks["ours"], config, device, args.amp, epoch),
        "reference": TutorialStyleStep(networks["reference"], config, device, args.amp, epoch),
    }
    for step in steps.values():  # first pair: optimiser state, allocator warm-up, kernel choice
        run_steps(step, weight_batches, arch_batches, 0, 1, device)

    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in order:
            with PeakMemory(device) as peak:
                seconds = run_steps(steps[name], weight_batches, arch_batches, 1, args.steps, device)
            times[name].append(seconds / args.steps)
            peaks[name].append(peak.growth_mib)

    model = SearchMemoryModel(space, 1, num_classes)
    patches = args.crops
    with torch.no_grad():
        shape = (patches, 1, *[args.patch] * 3)
        monai_full = float(networks["ours"].dints_space.get_ram_cost_usage(shape, full=True))
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "patch": [args.patch] * 3,
        "patches_per_step": patches,
        "amp": args.amp,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "seconds_per_step_pair": {name: statistics.median(v) for name, v in times.items()},
        "peak_growth_mib": {name: statistics.median(v) for name, v in peaks.items()},
        "peak_growth_mib_all": peaks,
        "seconds_all": times,
        "memory_measure": "cuda max_memory_allocated"
        if device.type == "cuda"
        else ("VmHWM growth (glibc tuned)" if glibc else "RSS growth"),
    }
    # ratios per round (both implementations measured back to back), then their median
    result["time_ratio"] = statistics.median(
        o / r for o, r in zip(times["ours"], times["reference"], strict=True)
    )
    result["memory_ratio"] = statistics.median(
        o / r for o, r in zip(peaks["ours"], peaks["reference"], strict=True)
    )
    result["regulariser_ms"] = regulariser_times(space, device, (patches, 1, *[args.patch] * 3))
    result["estimate_mib"] = model.estimate_mb([args.patch] * 3, patches, args.amp)
    # the parameters, gradients and optimiser states exist before the measured steps: compare activations
    result["estimate_activations_mib"] = result["estimate_mib"] - 4 * model.parameter_bytes / 2**20
    result["monai_estimate_full_mib"] = monai_full
    measured = result["peak_growth_mib"]["ours"]
    print(f"device {result['device']}, {result['threads']} threads, preset {args.preset} ({space.num_blocks}x"
          f"{space.num_depths}, channel_mul {space.channel_mul}), {patches} x {args.patch}^3 patches per step, "
          f"amp {args.amp}, {args.rounds} rounds x {args.steps} step pairs")  # fmt: skip
    for name in steps:
        print(
            f"{name:>9}: {result['seconds_per_step_pair'][name]:.3f} s per weight+architecture step pair, "
            f"peak memory growth {result['peak_growth_mib'][name]:.0f} MiB ({result['memory_measure']})"
        )
    print(
        f"ratio ours/reference (median over rounds): time {result['time_ratio']:.3f}, "
        f"peak memory {result['memory_ratio']:.3f} (goal <= 1.0)"
    )
    reg = result["regulariser_ms"]
    print(
        f"architecture regularisers alone (forward + backward, per architecture step): ours {reg['ours']:.1f} ms, "
        f"reference (MONAI's loops) {reg['reference']:.1f} ms"
    )
    print(
        f"memory estimate vs measured peak growth (ours): MedSegNAS probe {result['estimate_activations_mib']:.0f} MiB "
        f"of activations ({result['estimate_mib']:.0f} MiB with parameters and optimiser state), MONAI "
        f"get_ram_cost_usage(full) {monai_full:.0f} 'MB', measured {measured:.0f} MiB (measured/probe "
        f"{measured / result['estimate_activations_mib']:.2f}, measured/MONAI {measured / monai_full:.2f})"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
