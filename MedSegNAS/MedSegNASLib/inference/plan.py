"""Peak memory and time of a segmentation, known before it runs, and the fallback when it does not fit.

    plan = estimate_segmentation(volume, model, options)      # a SegmentPlan
    print(plan.to_text())
    options, plan = choose_fallback(volume, model, options)   # what fits, or MedSegNASError

What the estimate is made of (CPU run; every figure in bytes or seconds):

* **Windows**: the engine's own planning (:func:`~.engine.layout_windows`: model grid, which
  windows hold body voxels, ``--box``) and batch size (:func:`~.engine.windows_per_call`).
* **Network**: one batch of windows through the network, measured (:func:`calibrate`: the rise
  of the process' resident memory high-water mark, or CUDA's peak allocation, and the wall time)
  and cached per network structure, device, threads, batch, window and precision in the user
  cache folder (:mod:`~MedSegNASLib.user_cache`). Without a calibration the activation memory is
  the safety check's figure (the sum of every layer's output on the ``meta`` device, cached with
  the bundle check) times :data:`LIVE_ACTIVATION_SHARE`, and the time is not known.
* **Arrays** the engine holds: the image on the model grid (float32, every input channel), the
  window sum (float32, every output channel, padded grid), the per-voxel window count, the label
  maps (uint8), with the resampling and inversion temporaries in proportion (:data:`MEMORY_FACTORS`).
* **Process**: its resident memory now (the imports, the model, the image read) and its high-water
  mark so far (reading a compressed image and loading weights briefly take more).
* **Time**: what this process has spent so far (imports, reading, loading), the windows' batches
  at the calibrated time per batch, and per-voxel rates of resampling, inversion and writing
  measured on a 2-core machine (:data:`SECONDS_PER_MVOXEL`).

:func:`choose_fallback` compares the peak with the memory this machine has (available memory plus
what this process holds, a cgroup limit, ``$MEDSEGNAS_MEMORY_LIMIT``; on CUDA
``torch.cuda.mem_get_info``) and, when it does not fit, tries in turn: fewer windows per batch,
``--fast`` (twice the voxel size), the window sum in CPU memory (CUDA). It says which it picked,
and raises a clear error when nothing fits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MedSegNASError

__all__ = [
    "Calibration",
    "SegmentPlan",
    "available_memory",
    "calibrate",
    "choose_fallback",
    "estimate_segmentation",
    "process_memory",
]

#: Cache kind (folder under the user cache) of calibrations.
CALIBRATION_CACHE = "segment-calibration"
#: Environment variable: memory limit in bytes (suffixes K, M, G accepted) the plan must fit in.
MEMORY_LIMIT_ENV = "MEDSEGNAS_MEMORY_LIMIT"
#: Share of the summed layer outputs (meta device) alive at once, for an uncalibrated network.
LIVE_ACTIVATION_SHARE = 0.4
#: Share of the available memory a plan may use (the rest: other programs, the page cache).
MEMORY_HEADROOM = 0.9
#: Seconds per million voxels of each stage on the 2-core development machine with its cores to
#: itself (measured on the 512 x 512 x 150 phantom, 2 threads: resampling 0.2-0.5 s for 14 M
#: model-grid voxels, inversion 0.8-1.2 s and writing 0.1-0.2 s for 39 M input voxels;
#: resampling per model-grid voxel and channel, inversion, post-processing and writing per input
#: voxel). A loaded machine is slower at these as at everything; the network's calibration, timed
#: when the plan is made, is the part that sees the load.
SECONDS_PER_MVOXEL = {"preprocess": 0.03, "invert": 0.03, "postprocess": 0.15, "write": 0.005}
#: Extra memory per voxel besides the arrays named in :func:`estimate_segmentation` (bytes):
#: resampling temporaries per model-grid voxel and channel, inversion temporaries per input voxel.
MEMORY_FACTORS = {"resample": 4.0, "invert": 2.0}


@dataclass
class Calibration:
    """One batch of windows through the network, measured.

    Attributes:
        batch: windows in the batch; roi: window size (voxels).
        seconds: wall time of the batch once the network is warm (the second call).
        warmup_seconds: what the first call takes more (oneDNN/cuDNN set-up), paid once a run.
        activation_bytes: memory the call took at its peak above what the process held before
            (the batch, its output, every intermediate alive at once).
        source: ``"measured"``, ``"cache"`` or ``"estimate"`` (no measurement: time unknown).
    """

    batch: int
    roi: tuple[int, ...]
    seconds: float | None
    activation_bytes: int
    source: str = "measured"
    warmup_seconds: float = 0.0

    def scaled(self, batch: int) -> tuple[float | None, int]:
        """(seconds, bytes) for ``batch`` windows per call: linear in the windows."""
        factor = batch / max(1, self.batch)
        return (None if self.seconds is None else self.seconds * factor), int(self.activation_bytes * factor)


@dataclass
class SegmentPlan:
    """What a segmentation will take on this machine (see :func:`estimate_segmentation`).

    Attributes:
        device: where the windows run; stitch_device: where their sum is kept.
        input_shape / model_grid: voxels; windows / windows_run: all windows and those with body.
        sw_batch_size: windows per network call; batches: network calls.
        peak_bytes: expected peak memory of the process (CPU) or of the GPU (CUDA).
        memory: the parts of the peak (bytes).
        seconds: expected wall time from process start to the label map written (None: unknown,
            the network is not calibrated); times: its parts.
        available_bytes: memory the run may use (see :func:`available_memory`).
        fallback: what :func:`choose_fallback` changed to fit ("" when nothing).
        calibration: how the network's figures were found.
    """

    device: str
    stitch_device: str
    input_shape: list[int]
    model_grid: list[int]
    windows: int
    windows_run: int
    sw_batch_size: int
    batches: int
    fast: bool
    peak_bytes: int
    memory: dict[str, int]
    seconds: float | None
    times: dict[str, float]
    available_bytes: int
    calibration: dict[str, Any]
    fallback: str = ""
    notes: list[str] = field(default_factory=list)
    #: the engine's window layout for these options (passed on to ``segment_volume``)
    layout: Any = field(default=None, repr=False, compare=False)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.available_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the job result's ``plan``)."""
        data = dataclasses.asdict(dataclasses.replace(self, layout=None))
        data.pop("layout", None)
        data["fits"] = self.fits
        return data

    def summary(self) -> str:
        """One line for a status bar: ``planned: peak 1.2 of 20.3 GiB, about 8 s`` (and the fallback)."""
        gib = 1024**3
        time_text = "time unknown" if self.seconds is None else f"about {self.seconds:.0f} s"
        text = (
            f"planned: peak {self.peak_bytes / gib:.1f} of {self.available_bytes / gib:.1f} GiB, {time_text}"
        )
        return text + (f"; fallback: {self.fallback}" if self.fallback else "")

    def to_text(self) -> str:
        """A few lines for a person: peak memory, time, their parts, the fallback."""
        gib = 1024**3
        where = self.device + (" (window sum in CPU memory)" if self.stitch_device != self.device else "")
        lines = [
            f"plan on {where}: {' x '.join(map(str, self.input_shape))} input voxels, model grid "
            f"{' x '.join(map(str, self.model_grid))}" + (" (--fast)" if self.fast else ""),
            f"  windows: {self.windows_run} of {self.windows} run, {self.sw_batch_size} per call, "
            f"{self.batches} call(s)",
            f"  peak memory: {self.peak_bytes / gib:.2f} GiB of {self.available_bytes / gib:.2f} GiB available"
            + ("" if self.fits else "  -- DOES NOT FIT"),
            "    " + ", ".join(f"{k} {v / gib:.2f}" for k, v in self.memory.items() if v) + " GiB",
        ]
        if self.seconds is None:
            lines.append("  time: unknown (network not calibrated; medsegnas segment --plan measures it)")
        else:
            lines.append(f"  time: {self.seconds:.1f} s")
            lines.append(
                "    " + ", ".join(f"{k} {v:.1f}" for k, v in self.times.items() if v >= 0.05) + " s"
            )
        source = self.calibration.get("source", "?")
        calibrated = self.calibration.get("seconds")
        lines.append(
            f"  network: {self.calibration.get('batch')} window(s) "
            + (f"in {calibrated:.2f} s, " if calibrated is not None else "")
            + f"{self.calibration.get('activation_bytes', 0) / gib:.2f} GiB ({source})"
        )
        if self.fallback:
            lines.append(f"  fallback: {self.fallback}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- machine


def _parse_bytes(text: str) -> int | None:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMGT" else text
    try:
        return int(float(number) * scale)
    except ValueError:
        return None


def _cgroup_room() -> int | None:
    """Memory this cgroup may still take (cgroup v2 ``memory.max - memory.current``), or None."""
    base = "/sys/fs/cgroup"
    try:
        with open(f"{base}/memory.max") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open(f"{base}/memory.current") as handle:
            current = int(handle.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None


def process_memory() -> tuple[int, int]:
    """(resident bytes now, resident high-water mark bytes) of this process."""
    rss = peak = 0
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    if not rss:
        import psutil

        info = psutil.Process().memory_info()
        rss = int(info.rss)
        peak = int(getattr(info, "peak_wset", 0) or 0)
        if not peak:
            import resource  # Unix: ru_maxrss in KiB (Linux) or bytes (macOS)

            with contextlib.suppress(Exception):
                value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                peak = value if os.uname().sysname == "Darwin" else value * 1024
    return rss, max(peak, rss)


def available_memory(device: Any = "cpu") -> tuple[int, str]:
    """Bytes a run on ``device`` may use in all, and where the figure comes from.

    CPU: what this process holds plus the memory available to new allocations (psutil), within
    the cgroup's limit, times :data:`MEMORY_HEADROOM`; ``$MEDSEGNAS_MEMORY_LIMIT`` caps it.
    CUDA: the GPU's free memory plus what this process's allocator holds.
    """
    import psutil

    limit_text = os.environ.get(MEMORY_LIMIT_ENV)
    override = _parse_bytes(limit_text) if limit_text else None
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        room = int(free + torch.cuda.memory_reserved())
        how = "free GPU memory (torch.cuda.mem_get_info)"
    else:
        held = process_memory()[0]
        free = int(psutil.virtual_memory().available)
        cgroup = _cgroup_room()
        how = "available memory (psutil)"
        if cgroup is not None and cgroup < free:
            free, how = cgroup, "the cgroup's memory limit"
        room = int((held + free) * MEMORY_HEADROOM)
    if override is not None and override < room:
        return override, f"${MEMORY_LIMIT_ENV}"
    return room, how


# ----------------------------------------------------------------------------- calibration


def _network_signature(network: Any) -> str:
    """What the time and memory of a forward pass depend on: the network's class and the names and
    shapes of its weight tensors (2-D and up). Batch-norm folding before inference
    (:func:`~.optimize.fold_batch_norm`) changes neither, so a folded network keeps its calibration."""
    parts = [type(network).__qualname__]
    parts += [f"{name}{tuple(p.shape)}{p.dtype}" for name, p in network.named_parameters() if p.dim() >= 2]
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def _calibration_key(model: Any, device: Any, batch: int, roi: tuple[int, ...], options: Any) -> str:
    import torch

    from ..user_cache import cache_key
    from .engine import autocast_dtype

    return cache_key(
        "calibration",
        getattr(model, "network_signature", None) or _network_signature(model.network),
        str(device),
        torch.get_num_threads(),
        batch,
        list(roi),
        model.in_channels,
        str(autocast_dtype(device, getattr(options, "amp", None))),
        bool(getattr(options, "tta", False)),
        # A forward pass's time and memory are torch's: the same whether MONAI built the network
        # or it was loaded compiled (without MONAI).
        libraries=("torch",),
    )


def cached_calibration(
    model: Any, device: Any, batch: int, roi: tuple[int, ...], options: Any
) -> Calibration | None:
    """The stored calibration of this network, device, thread count, batch and window, if any."""
    from ..user_cache import read_entry

    entry = read_entry(CALIBRATION_CACHE, _calibration_key(model, device, batch, roi, options))
    if entry is None:
        return None
    try:
        return Calibration(
            int(entry["batch"]),
            tuple(entry["roi"]),
            float(entry["seconds"]),
            int(entry["activation_bytes"]),
            "cache",
            float(entry.get("warmup_seconds", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def calibrate(model: Any, options: Any, *, batch: int | None = None, store: bool = True) -> Calibration:
    """Run one batch of windows through ``model``'s network as the engine does; time and memory.

    CPU: the rise of the resident high-water mark (Linux; reset first, so call it in a process
    whose earlier peak does not matter, as ``segment --plan``) over the resident memory before.
    CUDA: ``torch.cuda.max_memory_allocated`` over the allocation before. The result is stored
    in the calibration cache (``store``).
    """
    import torch

    from .engine import Progress, _Runner, layout_windows, select_device, windows_per_call  # noqa: F401
    from .optimize import prepare_for_inference

    device = select_device(getattr(options, "device", "auto"))
    if getattr(options, "threads", None):
        torch.set_num_threads(int(options.threads))
    roi = tuple(int(r) for r in (options.roi or model.roi_size or (96, 96, 96)))
    batch = int(batch or windows_per_call(model, options, device, roi))
    runner = _Runner(model, options, Progress(), device, batch, torch.device("cpu"))
    prepare_for_inference(model.network, device)
    try:
        with torch.inference_mode():
            windows = torch.zeros((batch, model.in_channels, *roi), dtype=torch.float32)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            else:
                _reset_peak()
                before = process_memory()[0]
            calls = []
            for _ in range(2):  # the first call sets up oneDNN/cuDNN for this shape
                started = time.perf_counter()
                output = runner.forward(windows.to(device))
                if device.type == "cuda":
                    torch.cuda.synchronize()
                calls.append(time.perf_counter() - started)
                del output
            seconds, warmup = calls[1], max(0.0, calls[0] - calls[1])
            if device.type == "cuda":
                used = torch.cuda.max_memory_allocated() - before
            else:
                used = process_memory()[1] - before
            del windows
    finally:
        model.network.to("cpu", memory_format=torch.contiguous_format)
    result = Calibration(batch, roi, seconds, max(0, int(used)), "measured", warmup)
    if store:
        from ..user_cache import write_entry

        write_entry(
            CALIBRATION_CACHE,
            _calibration_key(model, device, batch, roi, options),
            {
                "batch": batch,
                "roi": list(roi),
                "seconds": seconds,
                "warmup_seconds": warmup,
                "activation_bytes": result.activation_bytes,
            },
        )
    return result


def _uncalibrated(model: Any, batch: int, roi: tuple[int, ...]) -> Calibration:
    """Activation memory without a measurement: the bundle check's summed layer outputs, scaled."""
    size = getattr(model, "network_size", None)
    if size is not None and size.activation_bytes:
        per_voxel = size.activation_bytes / (size.batch * math.prod(size.patch))
    else:
        # No figure: about 20 float32 values of every voxel of the window per output channel
        # pair (a UNet-sized network), an order of magnitude only.
        per_voxel = 4 * 20 * max(8, model.num_outputs)
    return Calibration(
        batch, roi, None, int(per_voxel * batch * math.prod(roi) * LIVE_ACTIVATION_SHARE), "estimate"
    )


# ----------------------------------------------------------------------------- estimate


def estimate_segmentation(
    volume: Any,
    model: Any,
    options: Any = None,
    *,
    calibration: Calibration | None = None,
    measure: bool = False,
    elapsed_seconds: float = 0.0,
    write: bool = True,
    process_bytes: tuple[int, int] | None = None,
) -> SegmentPlan:
    """The expected peak memory and wall time of ``segment_volume(volume, model, options)``.

    A pure function of its inputs and this machine (no file is written, except a calibration
    stored when ``measure`` runs one): the warm worker and the panels call it as ``segment`` does.

    Args:
        volume: the image (``Volume``: channels and grid; its body voxels decide which windows run).
        model: the opened bundle (``SegmentationModel``).
        options: ``SegmentOptions`` (default: the bundle's settings).
        calibration: the network's figures for this batch (default: the cache, else measured when
            ``measure``, else an estimate without time).
        measure: run :func:`calibrate` when nothing is cached.
        elapsed_seconds: time already spent by the process (start-up, reading, loading), added to
            the estimate.
        write: a label map file is written (its time is added).
        process_bytes: (resident, high-water mark) of the process the run will use, before any
            calibration (default: this process, now).

    Returns:
        the plan; its ``peak_bytes`` includes what the process holds now.
    """

    import torch

    from .engine import SegmentOptions, layout_windows, select_device, windows_per_call

    # What the process holds before the plan (a calibration's freed memory stays with the process
    # under reuse_freed_memory and is not part of a run that finds its calibration cached).
    held, peak_so_far = process_bytes or process_memory()
    options = options or SegmentOptions()
    device = select_device(options.device)
    if options.threads:  # as the run sets them: the calibration is per thread count
        torch.set_num_threads(int(options.threads))
    layout = layout_windows(volume, model, options)
    roi = layout.roi
    plan = layout.plan
    batch = windows_per_call(model, options, device, roi)
    windows = len(plan.starts) if plan is not None else 1
    run = len(plan.keep) if plan is not None else 1
    batches = math.ceil(run / batch) if run else 0
    window_shape = tuple(int(r) for r in roi) if roi is not None else tuple(layout.m_grid.shape)
    # The engine splits the windows into calls of nearly equal size: the largest call is what
    # is calibrated and what the activation memory scales with.
    largest_call = math.ceil(run / batches) if batches else 1
    if calibration is None:
        calibration = cached_calibration(model, device, largest_call, window_shape, options)
    if calibration is None and measure:
        calibration = calibrate(model, options, batch=largest_call)
    if calibration is None:
        calibration = _uncalibrated(model, largest_call, window_shape)
    step_seconds, activation = calibration.scaled(largest_call)

    m_shape = np.array(layout.m_grid.shape)
    m_voxels = int(np.prod(m_shape))
    padded = int(np.prod(np.maximum(m_shape, np.array(window_shape)))) if roi is not None else m_voxels
    in_voxels = int(np.prod(layout.in_grid.shape))
    if plan is not None and model.pointwise:
        box_voxels = int(np.prod([b - a for a, b in plan.box]))
    else:
        box_voxels = m_voxels
    channels, outputs = int(model.in_channels), int(model.num_outputs)
    stitch_on_cpu = device.type != "cuda" or bool(getattr(options, "stitch_on_cpu", False))
    stitch_device = "cpu" if stitch_on_cpu else device.type
    four = 4

    image = channels * m_voxels * four
    resample = int(MEMORY_FACTORS["resample"] * channels * box_voxels) + (
        0 if model.pointwise else channels * (in_voxels + m_voxels) * 8
    )
    window_sum = outputs * padded * four
    counts = padded * four
    labels = m_voxels + in_voxels
    invert = int(MEMORY_FACTORS["invert"] * in_voxels)
    # The source array as torch sees it: unsigned and bool voxels become float32.
    source = 0
    if volume.array.dtype.kind in "ub" and volume.array.dtype.itemsize > 1 or volume.array.dtype == np.bool_:
        source = channels * in_voxels * four

    if device.type == "cuda":
        on_gpu = {
            "network": sum(p.numel() * p.element_size() for p in model.network.parameters()),
            "image": image + channels * in_voxels * four,
            "activations": activation,
        }
        if not stitch_on_cpu:
            on_gpu |= {"window sum": window_sum + counts, "labels": labels}
        memory = on_gpu
        peak = sum(on_gpu.values())
    else:
        during_inference = image + window_sum + counts + activation
        during_preprocess = image + resample + source
        during_inversion = window_sum + labels + invert
        memory = {
            "process now": held,
            "image on model grid": image,
            "window sum": window_sum + counts,
            "activations": activation,
            "resampling": resample + source,
            "inversion": labels + invert,
        }
        peak = max(peak_so_far, held + max(during_inference, during_preprocess, during_inversion))

    rates = SECONDS_PER_MVOXEL
    times = {
        "so far": float(elapsed_seconds),
        "preprocess": rates["preprocess"] * channels * box_voxels / 1e6,
        # a call's time grows with its windows: the windows run at the calibrated rate
        "infer": (step_seconds / largest_call * run + calibration.warmup_seconds)
        if step_seconds is not None
        else float("nan"),
        "invert": rates["invert"] * in_voxels / 1e6,
        "postprocess": (
            rates["postprocess"] * in_voxels / 1e6
            if getattr(options, "postprocess", None) is not None and options.postprocess.active
            else 0.0
        ),
        "write": rates["write"] * in_voxels / 1e6 if write else 0.0,
    }
    seconds = None if step_seconds is None else float(sum(times.values()))
    if step_seconds is None:
        times.pop("infer")
    room, how = available_memory(device)
    return SegmentPlan(
        device=device.type,
        stitch_device=stitch_device,
        input_shape=list(layout.in_grid.shape),
        model_grid=list(layout.m_grid.shape),
        windows=windows,
        windows_run=run,
        sw_batch_size=batch,
        batches=batches,
        fast=bool(options.fast),
        peak_bytes=int(peak),
        memory={k: int(v) for k, v in memory.items()},
        seconds=seconds,
        times={k: round(float(v), 3) for k, v in times.items()},
        available_bytes=int(room),
        calibration={
            "batch": calibration.batch,
            "roi": list(calibration.roi),
            "seconds": calibration.seconds,
            "activation_bytes": calibration.activation_bytes,
            "source": calibration.source,
            "warmup_seconds": calibration.warmup_seconds,
        },
        notes=[f"memory available: {how}"],
        layout=layout,
    )


def choose_fallback(
    volume: Any,
    model: Any,
    options: Any = None,
    *,
    calibration: Calibration | None = None,
    measure: bool = False,
    elapsed_seconds: float = 0.0,
    process_bytes: tuple[int, int] | None = None,
) -> tuple[Any, SegmentPlan]:
    """The options to run with and their plan: ``options`` when they fit, else the first fallback
    that fits (fewer windows per call, halving down to one; then ``--fast``; on CUDA then the
    window sum in CPU memory, with one window per call).

    ``process_bytes``: (resident, high-water mark) of the process the run adds to, as
    :func:`process_memory` gives (default: this process now).

    Raises:
        MedSegNASError: nothing fits; the message gives the smallest peak found and the memory.
    """
    from .engine import SegmentOptions

    options = options or SegmentOptions()
    # every estimate counts the process as it is before calibrating
    before = process_bytes or process_memory()
    first = estimate_segmentation(
        volume,
        model,
        options,
        calibration=calibration,
        measure=measure,
        elapsed_seconds=elapsed_seconds,
        process_bytes=before,
    )
    if not first.fits and first.calibration["source"] == "estimate":
        # The uncalibrated figure is a rough one: measure before refusing or degrading the run.
        first = estimate_segmentation(
            volume, model, options, measure=True, elapsed_seconds=elapsed_seconds, process_bytes=before
        )
    if first.fits:
        return options, first
    calibration = Calibration(
        first.calibration["batch"],
        tuple(first.calibration["roi"]),
        first.calibration["seconds"],
        first.calibration["activation_bytes"],
        first.calibration["source"],
        first.calibration["warmup_seconds"],
    )
    candidates: list[tuple[Any, str]] = []
    batch = first.sw_batch_size
    while batch > 1:
        batch = max(1, batch // 2)
        candidates.append((dataclasses.replace(options, sw_batch_size=batch), f"{batch} window(s) per call"))
    smallest = dataclasses.replace(options, sw_batch_size=1)
    if not options.fast:
        candidates.append(
            (dataclasses.replace(smallest, fast=True), "--fast (twice the voxel size), 1 window per call")
        )
    if first.device == "cuda" and not options.stitch_on_cpu:
        candidates.append(
            (dataclasses.replace(smallest, stitch_on_cpu=True), "window sum in CPU memory, 1 window per call")
        )
        if not options.fast:
            candidates.append(
                (
                    dataclasses.replace(smallest, stitch_on_cpu=True, fast=True),
                    "--fast and window sum in CPU memory, 1 window per call",
                )
            )
    best = first
    for candidate, what in candidates:
        plan = estimate_segmentation(
            volume,
            model,
            candidate,
            calibration=calibration,
            elapsed_seconds=elapsed_seconds,
            process_bytes=before,
        )
        if plan.peak_bytes < best.peak_bytes:
            best = plan
        if plan.fits:
            plan.fallback = (
                f"{what}: the plan with {first.sw_batch_size} window(s) per call needs "
                f"{first.peak_bytes / 1024**3:.2f} GiB, {first.available_bytes / 1024**3:.2f} GiB available"
            )
            return candidate, plan
    gib = 1024**3
    raise MedSegNASError(
        f"not enough memory to segment: the run needs about {first.peak_bytes / gib:.2f} GiB "
        f"({'; '.join(f'{k} {v / gib:.2f}' for k, v in first.memory.items() if v)} GiB) and "
        f"{first.available_bytes / gib:.2f} GiB is available ({first.notes[0].removeprefix('memory available: ')}); "
        f"the smallest fallback ({'--fast, ' if not options.fast else ''}1 window per call) still needs "
        f"{best.peak_bytes / gib:.2f} GiB. Close other programs, use --box to segment a region, or a machine "
        "with more memory"
    )
