"""``medsegnas train``: retraining a searched DiNTS architecture or a MONAI baseline, on small phantoms.

An uninterrupted tiny UNet run (a real worker process) is the reference: its bundle must open the
way MONAI opens bundles and load its weights strictly, its predictions must lie on the images'
grids, its summary must name the labels. A run stopped with SIGTERM and resumed must repeat the
reference's losses step by step. A DiNTS run from an arch.json exports a DiNTS bundle; bad inputs
fail before training with one line; the init hook is called and recorded; a 2-process gloo run
writes its run directory once.
"""

from __future__ import annotations

import functools
import json
import os
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
from MedSegNASLib.data.io import read_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS, write_phantom_dataset
from MedSegNASLib.jobs import EXIT_CANCELLED, JobContext, RunDir
from MedSegNASLib.models.registry import ModelRegistry
from MedSegNASLib.nas import SearchSpace, decode, save_arch_json
from MedSegNASLib.nas.distributed import init_distributed
from MedSegNASLib.nas.train import build_network, learning_rate_factor, resolve_train_config, run_train

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="training workers are stopped with POSIX signals"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: 2 epochs of 3 steps (3 training cases, 1 crop each), a checkpoint after every step.
QUICK = {
    "epochs": 2,
    "val_interval": 1,
    "checkpoint_every": 1,
    "crops_per_case": 1,
    "max_patch_size": [32, 32, 32],
}
FOREGROUND = [label.name for label in PHANTOM_LABELS[1:]]
wait_for = functools.partial(conftest.wait_for, timeout=180.0)


@pytest.fixture(scope="module")
def phantom(phantom_dataset: Callable[..., Path]) -> Path:
    """4 labelled 32^3 phantom cases: fold 0 validates on 1, the other 3 train."""
    return phantom_dataset(cases=4, size=32, seed=3)


@pytest.fixture(scope="module")
def quick_config(json_file: Callable[[str, object], Path]) -> Path:
    return json_file("quick.json", QUICK)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry of this module only (``MEDSEGNAS_HOME``)."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def arch_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid architecture of the tiny space: the decode of a freshly initialised supernet."""
    torch.manual_seed(4)
    space = SearchSpace.preset("tiny")
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    save_arch_json(decode(space.build_search_network(1, 5), space), path)
    return path


def train_argv(dataset: Path, config: Path, *extra: str) -> list[str]:
    return job_argv("train", dataset, config, *extra)


def start(argv: list[str], run_dir: Path, home: Path) -> RunDir:
    return start_worker(argv, run_dir, MEDSEGNAS_HOME=str(home))


def progress_events(run: RunDir, stage: str = "train") -> list[dict]:
    return events_of(run, "progress", stage=stage)


def check_bundle(bundle: Path, target: str) -> dict:
    """The bundle opens as MONAI opens it and its weights load strictly; returns its metadata."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    assert type(network).__name__ == target
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state, strict=True)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [label["name"] for label in metadata["medsegnas"]["labels"]] == ["background", *FOREGROUND]
    assert list(metadata["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == [
        "background",
        *FOREGROUND,
    ]
    assert set(metadata["medsegnas"]["metrics"]["val_dice"]) == set(FOREGROUND)
    return metadata


def check_predictions(artifacts: Path, dataset: Path, summary: dict) -> None:
    """One label map per validation case, on the image's own grid, with the dataset's label values."""
    assert summary["validation_cases"]
    for case in summary["validation_cases"]:
        prediction = read_volume(artifacts / "predictions" / f"{case}.nii.gz")
        image = read_volume(dataset / "imagesTr" / f"{case}.nii.gz")
        assert prediction.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
        assert set(np.unique(prediction.array)) <= {0, 1, 2, 3, 4}


@pytest.fixture(scope="module")
def reference_run(
    phantom: Path, quick_config: Path, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> RunDir:
    """An uninterrupted tiny UNet run, as a background worker like the Slicer panel starts it."""
    run = start(
        train_argv(phantom, quick_config, "--network", "unet"), tmp_path_factory.mktemp("runs") / "unet", home
    )
    assert finish(run) == 0
    return run


# ------------------------------------------------------------------------------- whole runs
def test_unet_run_exports_a_bundle_predictions_summary_and_registers(
    reference_run: RunDir, phantom: Path, home: Path
) -> None:
    run = reference_run
    assert run.read_status()["state"] == "done"
    artifacts = run.artifacts
    metadata = check_bundle(artifacts / "model", "UNet")
    assert metadata["medsegnas"]["preprocessing"]["patch_size"] == [32, 32, 32]

    summary = json.loads((artifacts / "summary.json").read_text())
    assert summary["network"] == "unet" and summary["epochs"] == 2 and summary["steps"] == 6
    assert set(summary["best_val_dice"]) == set(FOREGROUND)
    assert summary["best_epoch"] in (1, 2) and summary["parameters"] > 1e5
    assert summary["wall_s"] > 0 and summary["memory"]["measured_peak_mb"] > 0
    assert len(summary["train_cases"]) == 3 and len(summary["validation_cases"]) == 1
    assert not set(summary["train_cases"]) & set(summary["validation_cases"])
    assert summary["optimizer"] == "adamw" and summary["lr_schedule"] == "cosine"
    check_predictions(artifacts, phantom, summary)

    # registered under <network>-<run dir name>, and the registry's copy opens too
    assert summary["registry_id"] == "unet-unet"
    record = ModelRegistry(home).get("unet-unet")
    assert record.network == "UNet" and [label["name"] for label in record.labels][1:] == FOREGROUND
    check_bundle(ModelRegistry(home).model_path("unet-unet"), "UNet")

    validations = json.loads((artifacts / "val_dice.json").read_text())["validations"]
    assert [v["epoch"] for v in validations] == [1, 2] and validations == summary["validations"]
    assert (artifacts / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((artifacts / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.pt", "last.pt"]
    best = JobContext(run).load_checkpoint("best.pt")
    assert best["epoch"] == summary["best_epoch"]

    events = progress_events(run)
    assert [e["step"] for e in events] == [1, 2, 3, 4, 5, 6] and {e["total"] for e in events} == {6}
    assert [e["epoch"] for e in events] == [1, 1, 1, 2, 2, 2]
    # the step that ends a validated epoch carries the Dice of every class
    assert set(FOREGROUND) == {k.split("/", 1)[1] for k in events[2]["metrics"] if k.startswith("val_dice/")}
    assert "val_dice" in events[3]["metrics"] and "loss" in events[0]["metrics"]
    assert events[0]["metrics"]["lr"] == pytest.approx(3e-3)  # tiny preset AdamW rate, epoch 0 of cosine


def test_dints_run_from_arch_json_exports_a_dints_bundle(
    phantom: Path, quick_config: Path, arch_json: Path, home: Path, tmp_path: Path
) -> None:
    run = start(train_argv(phantom, quick_config, "--arch", str(arch_json)), tmp_path / "dints", home)
    assert finish(run) == 0
    metadata = check_bundle(run.artifacts / "model", "DiNTS")
    arch = json.loads(arch_json.read_text())
    bundled = json.loads((run.artifacts / "model" / "configs" / "arch.json").read_text())
    assert bundled["arch_code_a"] == arch["arch_code_a"] and bundled["node_a"] == arch["node_a"]
    assert metadata["medsegnas"]["arch_code"]["arch_code_c"] == arch["arch_code_c"]
    config = json.loads((run.artifacts / "model" / "configs" / "inference.json").read_text())
    assert config["network_def"]["dints_space"]["channel_mul"] == 1.0  # retrained twice as wide, as published

    summary = json.loads((run.artifacts / "summary.json").read_text())
    assert summary["network"] == "dints" and summary["optimizer"] == "sgd"
    assert set(summary["best_val_dice"]) == set(FOREGROUND)
    assert summary["registry_id"] == "dints-dints"
    check_predictions(run.artifacts, phantom, summary)


def test_init_hook_is_called_once_and_recorded_and_explicit_split_is_used(
    phantom: Path, tmp_path: Path, monkeypatch
) -> None:
    """The API the SSL fine-tuning builds on: chosen cases, a hook on the fresh network, a named model."""
    monkeypatch.setenv("MEDSEGNAS_HOME", str(tmp_path / "home"))
    request = {
        "dataset": str(phantom),
        "dataroot": None,
        "preset": "tiny",
        "overrides": {**QUICK, "epochs": 1},
        "seed": 1,
        "arch": None,
        "network": "unet",
        "train_cases": ["phantom_000"],
        "validation_cases": ["phantom_002", "phantom_003"],
        "register": True,
        "name": "few-shot-unet",
    }
    resolved = resolve_train_config(request, device_type="cpu")
    assert resolved["dataset"]["split"] == {
        "train": ["phantom_000"],
        "validation": ["phantom_002", "phantom_003"],
    }
    calls: list[torch.nn.Module] = []
    reference, _ = build_network(resolved)

    def init_network(network: torch.nn.Module) -> dict:
        calls.append(network)
        assert network.state_dict().keys() == reference.state_dict().keys()
        with torch.no_grad():
            first = next(network.parameters())
            first.fill_(0.01)  # what a pretrained encoder would do: change weights before training
        return {"pretrained": "encoder.pt", "loaded_tensors": 1}

    run = RunDir(tmp_path / "run")
    run.ensure_layout()
    summary = run_train(JobContext(run), resolved, init_distributed("cpu"), init_network=init_network)
    assert len(calls) == 1
    assert summary["init"] == {"pretrained": "encoder.pt", "loaded_tensors": 1}
    written = json.loads((run.artifacts / "summary.json").read_text())
    assert written["init"] == summary["init"] and written["train_cases"] == ["phantom_000"]
    assert set(summary["best_val_dice"]) == set(FOREGROUND)
    assert summary["registry_id"] == "few-shot-unet"
    assert ModelRegistry(tmp_path / "home").get("few-shot-unet").source.startswith("train run ")


# ------------------------------------------------------------------------------- bad input
def failing_train(tmp_path: Path, argv_extra: list[str], dataset: Path, config: dict, capsys) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    run = RunDir(tmp_path / "run")
    code = cli.main(train_argv(dataset, config_path, "--run-dir", str(run.path), *argv_extra))
    assert code == 1
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, error_lines
    if run.path.exists():  # errors found while resolving are recorded like any job failure
        status = run.read_status()
        assert status["state"] == "failed" and status["error"] in error_lines[0]
        assert not (run.checkpoints / "last.pt").exists() and not progress_events(run)
    return error_lines[0]


def test_patch_sizes_the_network_cannot_take_fail_before_training(
    tmp_path: Path, phantom: Path, capsys
) -> None:
    error = failing_train(
        tmp_path / "a", ["--network", "unet"], phantom, {**QUICK, "patch_size": [36, 32, 32]}, capsys
    )
    assert (
        "patch size (36, 32, 32) is not divisible by 8 along axis 0 (36)" in error
        and "try (40, 32, 32)" in error
    )
    error = failing_train(
        tmp_path / "b", ["--network", "swinunetr"], phantom, {**QUICK, "patch_size": [48, 48, 48]}, capsys
    )
    assert "SwinUNETR needs multiples of 32" in error
    error = failing_train(
        tmp_path / "c", ["--network", "swinunetr"], phantom, {**QUICK, "patch_size": [32, 64, 64]}, capsys
    )
    assert "too small for SwinUNETR: every side needs at least 64 voxels" in error


def test_missing_corrupt_or_mismatched_arch_json_fails_before_training(
    tmp_path: Path, phantom: Path, arch_json: Path, capsys
) -> None:
    missing = tmp_path / "nowhere" / "arch.json"
    error = failing_train(tmp_path / "a", ["--arch", str(missing)], phantom, QUICK, capsys)
    assert f"arch code file {missing} does not exist" in error
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"node_a": [[1, 0')
    error = failing_train(tmp_path / "b", ["--arch", str(corrupt)], phantom, QUICK, capsys)
    assert str(corrupt) in error and "not valid JSON" in error
    mismatched = tmp_path / "mismatched.json"
    code = json.loads(arch_json.read_text())
    code["search_space"]["num_blocks"] = 6  # the codes are for 4 blocks
    mismatched.write_text(json.dumps(code))
    error = failing_train(tmp_path / "c", ["--arch", str(mismatched)], phantom, QUICK, capsys)
    assert str(mismatched) in error and "for a 6 blocks x 3 depths search space" in error


def test_single_case_dataset_fails_before_training(tmp_path: Path, capsys) -> None:
    dataset = tmp_path / "one"
    write_phantom_dataset(dataset, cases=1, size=16, unlabeled=0, test_cases=0)
    error = failing_train(tmp_path, ["--network", "unet"], dataset, QUICK, capsys)
    assert "has 1 labelled case(s); training needs at least 2" in error


def test_neither_or_both_of_arch_and_network_is_refused(
    tmp_path: Path, phantom: Path, arch_json: Path, capsys
) -> None:
    error = failing_train(tmp_path / "a", [], phantom, QUICK, capsys)
    assert "--arch ARCH.json" in error and "--network unet|segresnet|swinunetr" in error
    error = failing_train(
        tmp_path / "b", ["--arch", str(arch_json), "--network", "unet"], phantom, QUICK, capsys
    )
    assert "not both" in error
    assert not (tmp_path / "a" / "run").exists(), "a refused command line creates no run directory"


# ------------------------------------------------------------------------------- resume
def test_sigterm_then_resume_finishes_with_the_reference_losses_and_a_bundle(
    reference_run: RunDir, phantom: Path, quick_config: Path, home: Path, tmp_path: Path
) -> None:
    argv = train_argv(phantom, quick_config, "--network", "unet", "--no-register")
    run = start(argv, tmp_path / "stopped", home)
    wait_for(lambda: len(progress_events(run)) >= 2 or run.process.poll() is not None, what="step 2")
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.process.wait(timeout=120) == EXIT_CANCELLED
    assert run.read_status()["state"] == "cancelled"
    stopped_at = progress_events(run)[-1]["step"]
    assert stopped_at < 6 and JobContext(run).load_checkpoint()["progress"]["global_step"] == stopped_at

    resumed = start([*argv, "--resume"], run.path, home)
    assert finish(resumed) == 0
    assert [e["step"] for e in progress_events(resumed)] == list(range(1, 7)), "no step may be done twice"
    reference = {e["step"]: e["metrics"] for e in progress_events(reference_run)}
    for event in progress_events(resumed):
        for key in ("loss", "lr"):
            assert event["metrics"][key] == pytest.approx(reference[event["step"]][key], rel=1e-4, abs=1e-6)
    summary = json.loads((resumed.artifacts / "summary.json").read_text())
    assert summary["registry_id"] is None  # --no-register
    check_bundle(resumed.artifacts / "model", "UNet")


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_then_resume_finishes(
    phantom: Path, quick_config: Path, arch_json: Path, home: Path, tmp_path: Path
) -> None:
    argv = train_argv(phantom, quick_config, "--arch", str(arch_json), "--no-register")
    run = start(argv, tmp_path / "killed", home)
    wait_for(
        lambda: (
            any(e["type"] == "checkpoint" for e in run.read_events()[0]) or run.process.poll() is not None
        ),
        what="the first checkpoint",
    )
    os.killpg(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=30)
    assert not (run.artifacts / "model").exists()
    resumed = start([*argv, "--resume"], run.path, home)
    assert finish(resumed) == 0
    check_bundle(resumed.artifacts / "model", "DiNTS")


# ------------------------------------------------------------------------------- parts
def test_learning_rate_schedules() -> None:
    # MONAI's DiNTS retraining: halved past 20, 40, 60 and 80% of the epochs
    assert [learning_rate_factor(e, 10, "multistep", [0.2, 0.4, 0.6, 0.8]) for e in range(10)] == [
        1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625
    ]  # fmt: skip
    cosine = [learning_rate_factor(e, 10, "cosine", warmup_epochs=2) for e in range(10)]
    assert cosine[:2] == pytest.approx([1 / 3, 2 / 3]) and cosine[2] == 1.0
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:], strict=False)) and cosine[-1] > 0


# ------------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_two_cpu_processes_with_gloo_train_and_rank0_writes(
    phantom: Path, quick_config: Path, home: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "MedSegNASLib.cli", *train_argv(phantom, quick_config, "--network", "unet", "--run-dir", str(run_dir)),
    ]  # fmt: skip
    env = {**os.environ, **WORKER_ENV, "MEDSEGNAS_HOME": str(home)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    run = RunDir(run_dir)
    assert run.read_status()["state"] == "done"
    events = progress_events(run)
    # 3 training cases over 2 ranks (padded to 4): 2 steps per epoch, each written once, lr x 2 processes
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert events[0]["metrics"]["lr"] == pytest.approx(2 * 3e-3)
    summary = json.loads((run.artifacts / "summary.json").read_text())
    assert summary["world_size"] == 2 and set(summary["best_val_dice"]) == set(FOREGROUND)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["best.pt", "last.pt"]
    check_bundle(run.artifacts / "model", "UNet")
    assert summary["registry_id"] == "unet-ddp"
