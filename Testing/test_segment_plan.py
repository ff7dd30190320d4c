"""``segment --plan``: peak memory and time known before a run, the fallback picked when memory is
short, a clear error when nothing fits; and the cache of the bundle's network size check.

Real bundles (a tiny UNet exported as a MONAI bundle), real processes (``medsegnas segment`` as a
user runs it, its own peak memory: ``child_process``), real cache files. The estimate's accuracy is
checked with generous bounds here (2 shared, loaded cores; ``benchmarks/plan_accuracy.py``
measures it properly).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.errors import MedSegNASError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from segment_fixtures import export_unet_bundle

    return export_unet_bundle(tmp_path_factory.mktemp("plan") / "bundle", steps=2)


@pytest.fixture(scope="module")
def ct_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 x 64 x 48 CT-like image at 8 x 8 x 10 mm: a body (0 HU) in air, model grid about 86^3."""
    from MedSegNASLib.data.io import write_volume

    rng = np.random.default_rng(3)
    array = np.full((1, 64, 64, 48), -1000, dtype=np.int16)
    array[0, 12:52, 16:48, 6:42] = rng.integers(-50, 200, size=(40, 32, 36), dtype=np.int16)
    path = tmp_path_factory.mktemp("plan_image") / "ct.nii.gz"
    write_volume(Volume(array, np.diag([8.0, 8.0, 10.0, 1.0])), path)
    return path


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain"), env.get("PYTHONPATH", "")]
    )
    env["MEDSEGNAS_CACHE"] = str(cache)
    env.update(extra)
    return env


def _segment(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float, int]:
    """``python -m MedSegNASLib.cli segment ARGS``: result, wall seconds, peak resident bytes."""
    from child_process import run_child_captured

    argv = [sys.executable, "-m", "MedSegNASLib.cli", "segment", *args]
    run, stdout, stderr = run_child_captured(argv, env)
    return subprocess.CompletedProcess(argv, run.returncode, stdout, stderr), run.wall_s, run.peak_bytes


def test_plan_then_run_in_real_processes(tiny_bundle: Path, ct_image: Path, tmp_path: Path) -> None:
    env = _env(tmp_path / "cache")
    common = [str(ct_image), "--model", str(tiny_bundle), "--device", "cpu", "--threads", "1"]
    planned, plan_wall, _ = _segment([*common, "--plan", "--json"], env)
    assert planned.returncode == 0, planned.stderr[-2000:]
    plan = json.loads(planned.stdout.strip().splitlines()[-1])
    assert plan["fits"] and plan["fallback"] == ""
    assert plan["calibration"]["source"] == "measured" and plan["calibration"]["activation_bytes"] > 0
    # --plan ran nothing but one batch: no label map, no run directory output
    assert not list(tmp_path.glob("*.nii.gz"))

    output = tmp_path / "labels.nii.gz"
    run, wall, peak = _segment([*common, "-o", str(output)], env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert output.is_file()
    assert "plan on cpu" in run.stderr and "peak memory" in run.stderr
    assert "(cache)" in run.stderr  # the run used the calibration --plan measured
    # Loaded 2-core machine: generous bounds (the benchmark measures the 25% goal).
    assert 0.6 < plan["peak_bytes"] / peak < 1.6, (plan["peak_bytes"], peak)
    assert 0.33 < plan["seconds"] / wall < 3.0, (plan["seconds"], wall, plan["times"])


def test_a_run_that_cannot_fit_fails_before_work_with_a_clear_error(
    tiny_bundle: Path, ct_image: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path / "cache", MEDSEGNAS_MEMORY_LIMIT="50M")
    output = tmp_path / "labels.nii.gz"
    run, _, _ = _segment(
        [str(ct_image), "--model", str(tiny_bundle), "--device", "cpu", "-o", str(output)], env
    )
    assert run.returncode == 1
    assert "not enough memory to segment" in run.stderr and "$MEDSEGNAS_MEMORY_LIMIT" in run.stderr
    assert "infer " not in run.stderr  # refused before any window ran
    assert not output.exists()
    planned, _, _ = _segment([str(ct_image), "--model", str(tiny_bundle), "--plan", "--json"], env)
    assert planned.returncode == 1 and json.loads(planned.stdout)["fits"] is False


# ----------------------------------------------------------------------------- fallback choice


@pytest.fixture(scope="module")
def opened(tiny_bundle: Path):
    from MedSegNASLib.inference.model import load_model

    return load_model(tiny_bundle)


def _wide_volume() -> Volume:
    """96 x 96 x 64 voxels of 8 x 8 x 10 mm, all body: many windows, a 128 x 128 x 80 model grid."""
    array = np.zeros((1, 96, 96, 64), dtype=np.int16)
    return Volume(array, np.diag([8.0, 8.0, 10.0, 1.0]))


def test_fallback_picks_fewer_windows_per_call_then_fast_then_fails(
    opened, monkeypatch: pytest.MonkeyPatch
) -> None:
    from MedSegNASLib.inference.engine import SegmentOptions
    from MedSegNASLib.inference.plan import (
        Calibration,
        choose_fallback,
        estimate_segmentation,
        process_memory,
    )

    gib = 1024**3
    volume = _wide_volume()
    options = SegmentOptions(device="cpu")
    roi = tuple(opened.roi_size)
    # A network taking 1 GiB of activations per window (given, as a calibration would measure it).
    heavy = Calibration(batch=1, roi=roi, seconds=0.5, activation_bytes=1 * gib)
    # A process holding what this one holds now, and no earlier, higher peak: the choice is then the
    # run's own memory (earlier tests in this pytest process may have left a high-water mark above it).
    held = process_memory()[0]
    process = (held, held)
    full = estimate_segmentation(volume, opened, options, calibration=heavy, process_bytes=process)
    assert full.sw_batch_size > 2 and full.windows_run > full.sw_batch_size
    largest_call = math.ceil(full.windows_run / math.ceil(full.windows_run / full.sw_batch_size))
    assert full.memory["activations"] == largest_call * gib

    # Room for 2 windows per call: the largest batch that fits is taken.
    monkeypatch.setenv("MEDSEGNAS_MEMORY_LIMIT", str(held + int(2.5 * gib)))
    chosen, plan = choose_fallback(volume, opened, options, calibration=heavy, process_bytes=process)
    assert chosen.sw_batch_size == 2 and not chosen.fast
    assert plan.fits and plan.fallback.startswith("2 window(s) per call")

    # Room for less than one window at full resolution, but --fast's smaller grids fit.
    one = estimate_segmentation(
        volume,
        opened,
        dataclasses.replace(options, sw_batch_size=1),
        calibration=heavy,
        process_bytes=process,
    )
    fast = estimate_segmentation(
        volume,
        opened,
        dataclasses.replace(options, sw_batch_size=1, fast=True),
        calibration=heavy,
        process_bytes=process,
    )
    assert fast.peak_bytes < one.peak_bytes - 8 * 1024**2
    monkeypatch.setenv("MEDSEGNAS_MEMORY_LIMIT", str((fast.peak_bytes + one.peak_bytes) // 2))
    chosen, plan = choose_fallback(volume, opened, options, calibration=heavy, process_bytes=process)
    assert chosen.fast and chosen.sw_batch_size == 1 and plan.fallback.startswith("--fast")
    assert "--fast" in plan.to_text()

    # Nothing fits: one clear error naming what was needed and what there is.
    monkeypatch.setenv("MEDSEGNAS_MEMORY_LIMIT", str(held // 2))
    with pytest.raises(MedSegNASError, match=r"not enough memory to segment: the run needs about .* GiB"):
        choose_fallback(volume, opened, options, calibration=heavy, process_bytes=process)


# ----------------------------------------------------------------------------- size-check cache


def _load(bundle: Path):
    from MedSegNASLib.inference.model import load_model
    from MedSegNASLib.models.capabilities import SIZE_CHECK_CACHE_STATS

    before = dict(SIZE_CHECK_CACHE_STATS)
    model = load_model(bundle)
    return model, {k: SIZE_CHECK_CACHE_STATS[k] - before[k] for k in before}


def test_size_check_is_cached_and_a_tampered_bundle_misses(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from MedSegNASLib.models.safety import UnsafeConfigError

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEGNAS_CACHE", str(cache))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)

    from MedSegNASLib.models.capabilities import SIZE_CHECK_STORED_SECONDS

    stored_before = SIZE_CHECK_STORED_SECONDS["seconds"]
    first, counts = _load(bundle)
    assert counts == {"hit": 0, "miss": 1, "skip": 0}
    entries = list((cache / "network-size-check").glob("*.json"))
    assert len(entries) == 1
    # the check's time is on record, for --plan to leave it out of the run's start-up ...
    stored_after_miss = SIZE_CHECK_STORED_SECONDS["seconds"]
    assert stored_after_miss > stored_before
    second, counts = _load(bundle)
    assert counts == {"hit": 1, "miss": 0, "skip": 0}
    assert SIZE_CHECK_STORED_SECONDS["seconds"] == stored_after_miss  # ... and a cached verdict costs none
    assert second.network_size == first.network_size and first.network_size.activation_bytes > 0

    # Tampered: the config now builds a network far over the parameter limit. The cached verdict
    # of the original must not be used; the check runs and refuses it.
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"]["channels"] = [4096, 4096, 4096]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsafeConfigError, match="MAX_NETWORK_PARAMETERS"):
        _load(bundle)
    # ... and refused again from the cache (the refusal is cached under the tampered key)
    with pytest.raises(UnsafeConfigError, match="MAX_NETWORK_PARAMETERS"):
        _load(bundle)
    assert len(list((cache / "network-size-check").glob("*.json"))) == 2


def test_a_corrupt_cache_entry_is_checked_again_and_rewritten(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDSEGNAS_CACHE", str(cache))
    first, _ = _load(tiny_bundle)
    (entry,) = (cache / "network-size-check").glob("*.json")
    entry.write_text('{"problem": null, "parameters": ')  # a truncated write
    model, counts = _load(tiny_bundle)
    assert counts["miss"] == 1 and counts["hit"] == 0
    assert model.network_size == first.network_size
    assert json.loads(entry.read_text())["parameters"] == first.network_size.parameters
    # an entry whose key does not match its name (copied over another) is not trusted either
    entry.write_text(json.dumps({"key": "0" * 64, "problem": None, "parameters": 1, "activation_bytes": 1}))
    model, counts = _load(tiny_bundle)
    assert counts["miss"] == 1 and model.network_size == first.network_size


def test_a_trusted_bundle_is_planned_without_a_size_check_record(tiny_bundle: Path) -> None:
    """``--trust`` builds with MONAI's own parser (no safety check): the plan still has a figure."""
    from MedSegNASLib.inference.engine import SegmentOptions
    from MedSegNASLib.inference.model import load_model
    from MedSegNASLib.inference.plan import estimate_segmentation

    model = load_model(tiny_bundle, trusted=True)
    assert model.network_size is None
    plan = estimate_segmentation(_wide_volume(), model, SegmentOptions(device="cpu"))
    assert plan.calibration["source"] in ("estimate", "cache") and plan.memory["activations"] > 0
    assert "peak memory" in plan.to_text()


def test_measured_peak_is_the_commands_own_not_the_parents() -> None:
    """A benchmark's or pytest's own memory must not show up as the command's peak (``wait4`` on a
    child of a big process reports the parent's high-water mark: CI measured 3 GiB that way)."""
    from child_process import run_child_captured

    ballast = np.ones(700 * 2**20, dtype=np.uint8)  # this process: at least 700 MiB resident
    small = [sys.executable, "-c", "print(sum(range(10)))"]
    run, stdout, _ = run_child_captured(small)
    assert run.returncode == 0 and stdout.strip() == "45"
    assert run.peak_bytes < 200 * 2**20, run.peak_bytes
    grows = [sys.executable, "-c", "import numpy; a = numpy.ones(300 * 2**20, dtype='uint8'); print(a.sum())"]
    run, stdout, _ = run_child_captured(grows)
    assert run.returncode == 0 and 300 * 2**20 < run.peak_bytes < 500 * 2**20, run.peak_bytes
    assert ballast[-1] == 1
