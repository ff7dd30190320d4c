"""``medsegnas search``: DiNTS search as a job, on small phantom datasets, with real processes and signals.

One uninterrupted tiny search (a real worker process) is the reference: its artifacts are checked,
and runs that are killed (SIGKILL after their first checkpoint) or stopped (SIGTERM) and then
resumed must repeat its losses step by step and end with the same architecture weights. The
regularisers are checked against MONAI's own loop implementations; bad inputs must fail before
any training; a 2-process gloo run must write its run directory once.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import WORKER_ENV, events_of, finish, job_argv, start_worker
from MedSegNASLib import cli
from MedSegNASLib.data.phantom import write_phantom_dataset
from MedSegNASLib.jobs import EXIT_CANCELLED, JobContext, RunDir
from MedSegNASLib.nas import SearchSpace, load_arch_json
from MedSegNASLib.nas.distributed import EpochSampler
from MedSegNASLib.nas.pipeline import DatasetStatistics, choose_patch_size, target_spacing
from MedSegNASLib.nas.search import DiNTSRegularizers, SearchConfig, lr_milestone_epochs

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="search workers are stopped with POSIX signals"),
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: A tiny search that takes a few seconds: 3 epochs (1 warm-up) of 2 steps, a checkpoint every step.
QUICK = {
    "epochs": 3,
    "warmup_epochs": 1,
    "val_interval": 2,
    "checkpoint_every": 1,
    "crops_per_case": 1,
    "max_patch_size": [32, 32, 32],
}


wait_for = functools.partial(conftest.wait_for, timeout=180.0)


@pytest.fixture(scope="module")
def phantom(phantom_dataset: Callable[..., Path]) -> Path:
    """6 labelled 32^3 phantom cases (2 validation, 2 weight and 2 architecture cases)."""
    return phantom_dataset(cases=6, size=32, seed=3)


@pytest.fixture(scope="module")
def quick_config(json_file: Callable[[str, object], Path]) -> Path:
    return json_file("quick.json", QUICK)


def search_argv(dataset: Path, config: Path, *extra: str) -> list[str]:
    return job_argv("search", dataset, config, *extra)


def progress_events(run: RunDir) -> list[dict]:
    return events_of(run, "progress")


def losses_by_step(run: RunDir) -> dict[int, list[dict[str, float]]]:
    """Every progress record of each step (a step done again after a resume appears twice)."""
    records: dict[int, list[dict[str, float]]] = {}
    for event in progress_events(run):
        metrics = {k: v for k, v in event["metrics"].items() if k in ("loss", "arch_loss", "lr")}
        records.setdefault(event["step"], []).append(metrics)
    return records


def final_alphas(run: RunDir) -> tuple[torch.Tensor, torch.Tensor]:
    state = JobContext(run).load_checkpoint()
    return state["model"]["dints_space.log_alpha_a"], state["model"]["dints_space.log_alpha_c"]


def assert_same_losses(resumed: RunDir, reference: dict[int, list[dict[str, float]]]) -> None:
    records = losses_by_step(resumed)
    assert sorted(records) == sorted(reference), "the resumed run must report every step of the reference run"
    for step, repeats in records.items():
        for record in repeats:  # steps redone after the kill must repeat the first attempt's losses
            for key, value in reference[step][0].items():
                assert record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


@pytest.fixture(scope="module")
def reference_run(phantom: Path, quick_config: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """An uninterrupted tiny search, run as a background worker like the Slicer panel runs it."""
    run = start_worker(search_argv(phantom, quick_config), tmp_path_factory.mktemp("runs") / "reference")
    assert finish(run) == 0
    return run


# ------------------------------------------------------------------------------- whole searches
def test_tiny_search_writes_decoded_architecture_pictures_and_summary(
    reference_run: RunDir, phantom: Path
) -> None:
    run = reference_run
    assert run.read_status()["state"] == "done"
    artifacts = run.artifacts
    for name in ("arch.json", "arch_last.json", "topology.png", "path_probabilities.png"):
        assert (artifacts / name).read_bytes()[:8] == PNG_MAGIC or name.endswith(".json"), name
    assert (artifacts / "topology.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert list((artifacts / "tensorboard").glob("events.out.tfevents.*"))

    job = run.read_job()
    resolved = job["config"]  # the resolved configuration is recorded before training
    assert resolved["search"]["preset"] == "tiny" and resolved["search"]["epochs"] == 3
    assert resolved["search"]["patch_size"] == [32, 32, 32]
    assert resolved["preprocessing"]["intensity"]["kind"] == "ct_window"
    assert (
        len(resolved["dataset"]["split"]["weights"]) == len(resolved["dataset"]["split"]["architecture"]) == 2
    )

    code = load_arch_json(artifacts / "arch.json")
    assert code.search_space == SearchSpace.preset("tiny")
    assert code.extra["epoch"] == 3 and code.extra["phase"] == "search"
    assert set(code.extra["val_dice"]) == {"liver", "spleen", "right kidney", "left kidney"}
    network = code.network(in_channels=1, num_classes=5)
    with torch.no_grad():
        logits = network(torch.randn(1, 1, 32, 32, 32))
    assert logits.shape == (1, 5, 32, 32, 32) and torch.isfinite(logits).all()

    summary = json.loads((artifacts / "summary.json").read_text())
    assert summary["parameters"]["searched_channel_mul_1"] == sum(p.numel() for p in network.parameters())
    assert summary["parameters"]["supernet"] > summary["parameters"]["searched_channel_mul_search"]
    assert summary["flops_per_patch"] > 1e8
    assert summary["memory"]["measured_peak_mb"] > 0 and summary["memory"]["estimate_mb"] > 0
    assert summary["steps"] == 6 and summary["epochs"] == 3
    assert summary["best_val_dice"] == code.extra["val_dice"]

    events = progress_events(run)
    assert [e["step"] for e in events] == [1, 2, 3, 4, 5, 6] and {e["total"] for e in events} == {6}
    assert [e["stage"] for e in events] == ["warmup"] * 2 + ["search"] * 4
    assert "arch_loss" in events[-1]["metrics"] and "arch_loss" not in events[0]["metrics"]
    assert events[-1]["metrics"]["lambda"] == pytest.approx(0.5)  # (epoch - warmup) / (epochs - warmup)


def test_sigkill_after_first_checkpoint_then_resume_repeats_the_reference(
    reference_run: RunDir, phantom: Path, quick_config: Path, tmp_path: Path
) -> None:
    run = start_worker(search_argv(phantom, quick_config), tmp_path / "killed")
    wait_for(
        lambda: (
            any(e["type"] == "checkpoint" for e in run.read_events()[0]) or run.process.poll() is not None
        ),
        what="the first checkpoint",
    )
    os.killpg(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=30)
    assert not (run.artifacts / "summary.json").exists(), "the worker was killed before it could finish"

    resumed = start_worker([*search_argv(phantom, quick_config), "--resume"], run.path)
    assert finish(resumed) == 0
    assert resumed.read_status()["state"] == "done"
    assert (resumed.artifacts / "topology.png").read_bytes()[:8] == PNG_MAGIC
    assert load_arch_json(resumed.artifacts / "arch.json").extra["epoch"] == 3

    assert_same_losses(resumed, losses_by_step(reference_run))
    for ours, theirs in zip(final_alphas(resumed), final_alphas(reference_run), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours, theirs = (
        load_arch_json(resumed.artifacts / "arch.json"),
        load_arch_json(reference_run.artifacts / "arch.json"),
    )
    assert np.array_equal(ours.arch_code_a, theirs.arch_code_a) and np.array_equal(
        ours.arch_code_c, theirs.arch_code_c
    )


def test_sigterm_saves_the_current_step_and_resume_repeats_the_reference(
    reference_run: RunDir, phantom: Path, quick_config: Path, tmp_path: Path
) -> None:
    run = start_worker(search_argv(phantom, quick_config), tmp_path / "stopped")
    wait_for(lambda: len(progress_events(run)) >= 3 or run.process.poll() is not None, what="step 3")
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.process.wait(timeout=120) == EXIT_CANCELLED
    assert run.read_status()["state"] == "cancelled"
    stopped_at = progress_events(run)[-1]["step"]
    state = JobContext(run).load_checkpoint()
    assert state["progress"]["global_step"] == stopped_at  # saved after the step it was working on

    resumed = start_worker([*search_argv(phantom, quick_config), "--resume"], run.path)
    assert finish(resumed) == 0
    steps = [e["step"] for e in progress_events(resumed)]
    assert steps == list(range(1, 7)), "no step may be done twice after a clean stop"
    assert_same_losses(resumed, losses_by_step(reference_run))
    for ours, theirs in zip(final_alphas(resumed), final_alphas(reference_run), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_resume_with_other_settings_is_refused(
    reference_run: RunDir, phantom: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**QUICK, "epochs": 4}))
    copy = tmp_path / "copy"
    shutil.copytree(reference_run.path, copy)
    code = cli.main(search_argv(phantom, other, "--run-dir", str(copy), "--resume"))
    assert code == 1
    assert "was started with other settings (overrides differ)" in capsys.readouterr().err


# ------------------------------------------------------------------------------- bad input
def failing_search(tmp_path: Path, dataset: Path, config: dict, capsys) -> tuple[str, RunDir]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    run = RunDir(tmp_path / "run")
    code = cli.main(search_argv(dataset, config_path, "--run-dir", str(run.path)))
    assert code == 1
    status = run.read_status()
    assert status["state"] == "failed"
    assert not (run.checkpoints / "last.pt").exists()
    assert not progress_events(run), "nothing may be trained before the input is checked"
    error = capsys.readouterr().err
    assert status["error"] in error
    return status["error"], run


def test_single_case_dataset_fails_before_training(tmp_path: Path, capsys) -> None:
    dataset = tmp_path / "one"
    write_phantom_dataset(dataset, cases=1, size=16, unlabeled=0, test_cases=0)
    error, _ = failing_search(tmp_path, dataset, QUICK, capsys)
    assert "has 1 labelled training case(s); a DiNTS search needs at least 3" in error
    assert "weight and architecture halves" in error


def test_declared_class_without_voxels_fails_before_training(tmp_path: Path, capsys) -> None:
    dataset = tmp_path / "absent"
    write_phantom_dataset(dataset, cases=3, size=16, unlabeled=0, test_cases=0)
    description = json.loads((dataset / "dataset.json").read_text())
    description["labels"]["5"] = "pancreas"
    (dataset / "dataset.json").write_text(json.dumps(description))
    error, _ = failing_search(tmp_path, dataset, QUICK, capsys)
    assert "declares class(es) 5 'pancreas' but no label map" in error


def test_patch_size_not_divisible_fails_before_reading_data(tmp_path: Path, phantom: Path, capsys) -> None:
    error, _ = failing_search(tmp_path, phantom, {**QUICK, "patch_size": [40, 48, 48]}, capsys)
    assert "patch size (40, 48, 48) is not divisible by 16 along axis 0 (40)" in error
    assert "try (48, 48, 48)" in error


def test_invalid_settings_are_listed_together(tmp_path: Path, phantom: Path, capsys) -> None:
    error, _ = failing_search(
        tmp_path, phantom, {"epochs": 2, "warmup_epochs": 2, "lr_arch": -1, "colour": 1}, capsys
    )
    assert "unknown search config key(s) colour" in error
    error, _ = failing_search(
        tmp_path / "b", phantom, {"epochs": 2, "warmup_epochs": 2, "lr_arch": -1}, capsys
    )
    assert (
        "warmup_epochs (2) must be less than epochs (2)" in error
        and "lr_arch must be a positive number" in error
    )


# ------------------------------------------------------------------------------- parts
def test_regularizers_equal_monai_loop_implementations() -> None:
    space = SearchSpace(num_blocks=5, num_depths=4, channel_mul=0.25)
    search = space.build_supernet()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        search.log_alpha_a.copy_(torch.randn(search.log_alpha_a.shape, generator=generator))
        search.log_alpha_c.copy_(torch.randn(search.log_alpha_c.shape, generator=generator))
    ours = DiNTSRegularizers(search, "cpu")
    child, path = search.get_prob_a(child=True)
    torch.testing.assert_close(ours.child_probabilities(search.log_alpha_a), child)
    torch.testing.assert_close(ours.path_probabilities(search.log_alpha_a), path)
    torch.testing.assert_close(ours.topology_loss(child), search.get_topology_entropy(child))
    shape = (2, 1, 64, 96, 32)
    for full in (False, True):
        theirs = search.get_ram_cost_usage(shape, full=full)
        torch.testing.assert_close(
            ours.memory_usage(search.log_alpha_a, search.log_alpha_c, shape, full=full), theirs
        )
    # gradients flow to both architecture parameters
    terms = ours(search, shape, memory_target=0.8)
    (terms["path_entropy"] + terms["op_entropy"] + terms["memory"] + 0.001 * terms["topology"]).backward()
    assert search.log_alpha_a.grad.abs().sum() > 0 and search.log_alpha_c.grad.abs().sum() > 0


def test_learning_rate_milestones_follow_the_published_rule() -> None:
    # lr halves once (e - warmup) / (epochs - warmup) exceeds 0.4 and again past 0.8
    assert lr_milestone_epochs(10, 5, [0.4, 0.8]) == [8, 10]
    assert lr_milestone_epochs(400, 200, [0.4, 0.8]) == [281, 361]
    for epochs, warmup in ((10, 5), (17, 3), (400, 200)):
        for f, milestone in zip((0.4, 0.8), lr_milestone_epochs(epochs, warmup, [0.4, 0.8]), strict=True):
            assert (
                (milestone - warmup) / (epochs - warmup) > f >= (milestone - 1 - warmup) / (epochs - warmup)
            )


def test_epoch_sampler_shards_evenly_and_restarts_mid_epoch() -> None:
    ranks = [EpochSampler(5, seed=1, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    shards = [list(sampler) for sampler in ranks]
    assert len(shards[0]) == len(shards[1]) == 3
    assert set(shards[0]) | set(shards[1]) == set(range(5))
    ranks[0].set_epoch(3, start=1)
    assert list(ranks[0]) == shards[0][1:]
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != shards[0] or list(EpochSampler(5, seed=1, rank=0, world_size=2)) != shards[0]


def test_spacing_intensity_and_patch_are_configured_from_the_data(phantom: Path, tmp_path: Path) -> None:
    from MedSegNASLib.data.datasets import load_dataset
    from MedSegNASLib.data.io import read_volume
    from MedSegNASLib.nas.pipeline import auto_intensity, collect_statistics

    dataset = load_dataset(phantom)
    stats = collect_statistics(dataset, dataset.cases, label_values=[0, 1, 2, 3, 4])
    spacing = np.stack([read_volume(c.label).spacing for c in dataset.cases])
    assert sorted(np.median(spacing, axis=0)) == pytest.approx(sorted(target_spacing(stats)), abs=1e-3)
    inside = np.concatenate(
        [read_volume(c.images[0]).array[read_volume(c.label).array > 0] for c in dataset.cases]
    ).astype(np.float64)
    window = auto_intensity(["CT"], stats)
    assert window.kind == "ct_window"
    assert window.a_min == pytest.approx(np.percentile(inside, 0.5), abs=3)
    assert window.a_max == pytest.approx(np.percentile(inside, 99.5), abs=3)
    assert (
        auto_intensity(["MRI"], stats).kind == "zscore"
        and auto_intensity(["T2", "ADC"], stats).kind == "zscore"
    )

    thick = DatasetStatistics(
        ["a", "b", "c"], np.array([[0.8, 0.8, 5.0], [0.7, 0.7, 3.0], [0.9, 0.9, 2.5]]), np.ones((3, 3))
    )
    assert target_spacing(thick) == pytest.approx([0.8, 0.8, 2.6])  # thick axis: 10th percentile, not 3.0

    def estimate(patch) -> float:  # MB, proportional to voxels
        return float(np.prod(patch)) / 1000.0

    patch = choose_patch_size(32, [200, 180, 70], [96, 96, 96], 500.0, estimate)
    assert all(side % 32 == 0 for side in patch) and estimate(patch) <= 500.0 and patch[2] <= 64
    assert choose_patch_size(16, [40, 200, 200], [96, 96, 96], 1e9, estimate) == [32, 96, 96]
    with pytest.raises(Exception, match="memory budget of 1 MB is too small"):
        choose_patch_size(32, [96, 96, 96], [96, 96, 96], 1.0, estimate)


def test_presets_and_overrides() -> None:
    tiny = SearchConfig.from_preset(
        "tiny", {"search_space": {"num_blocks": 3}, "epochs": 4, "warmup_epochs": 2}
    )
    assert tiny.space == SearchSpace(num_blocks=3, num_depths=3, channel_mul=0.25)
    full = SearchConfig.from_preset("full")
    assert full.space == SearchSpace.preset("full") and full.max_patch_size == [96, 96, 96]
    assert (full.lr_weights, full.momentum, full.weight_decay, full.lr_arch) == (0.025, 0.9, 4e-5, 1e-3)
    assert full.warmup_epochs * 2 == full.epochs and full.memory_target == 0.8


# ------------------------------------------------------------------------------- two processes
def test_two_cpu_processes_with_gloo_share_the_work_and_rank0_writes(
    reference_run: RunDir, phantom: Path, quick_config: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "MedSegNASLib.cli", *search_argv(phantom, quick_config, "--run-dir", str(run_dir)),
    ]  # fmt: skip
    env = {**os.environ, **WORKER_ENV}
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    run = RunDir(run_dir)
    assert run.read_status()["state"] == "done"
    events = progress_events(run)
    # 2 weight cases over 2 ranks: one step per epoch, each written once, at lr 0.025 x 2 processes
    assert [e["step"] for e in events] == [1, 2, 3]
    assert events[0]["metrics"]["lr"] == pytest.approx(0.05)
    summary = json.loads((run.artifacts / "summary.json").read_text())
    assert summary["world_size"] == 2
    dice = summary["best_val_dice"]
    assert set(dice) == {"liver", "spleen", "right kidney", "left kidney"}
    code = load_arch_json(run.artifacts / "arch.json")
    assert code.extra["epoch"] == 3
    # each rank scores its own validation case; the all-reduced counts cover both, as in one process
    reference = load_arch_json(reference_run.artifacts / "arch.json").extra["val_cases_per_class"]
    assert code.extra["val_cases_per_class"] == reference and sum(reference.values()) >= 2
    assert [p.name for p in run.checkpoints.iterdir()] == ["last.pt"]
