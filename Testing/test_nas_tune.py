"""``medsegnas tune``: Optuna search of the training configuration, on a 32^3 phantom.

End to end (trials, results, best config, final retrain, registry), kill -9 then ``--resume``
(finished trials kept, the killed trial re-queued and continued from its checkpoint), and two
worker processes sharing one study (SQLite, and Optuna's journal file backend) never running a
trial twice. Plus the parts without training: the space, the derived parameters, the budget,
the new loss and augmentation settings.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import conftest
import pytest
import yaml
from conftest import events_of, finish, start_worker
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.jobs import RunDir, cancel, refresh_status
from MedSegNASLib.models.registry import ModelRegistry
from MedSegNASLib.nas.commands import load_config_file
from MedSegNASLib.nas.train import TrainConfig, build_loss, resolve_train_config
from MedSegNASLib.nas.tune import (
    DEFAULT_SPACE,
    budget_schedule,
    check_space,
    open_study,
    preset_parameters,
    trial_counts,
    trial_overrides,
)

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(sys.platform == "win32", reason="tune workers are stopped with POSIX signals"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: 32^3 patches, one crop per case, a checkpoint after every step (so a kill loses nothing).
QUICK = {"max_patch_size": [32, 32, 32], "crops_per_case": 1, "checkpoint_every": 1}
#: A small space that every trial can train in (batch 1 keeps the steps cheap).
SPACE = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "sgd_lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True, "when": {"optimizer": "sgd"}},
    "adamw_lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "when": {"optimizer": "adamw"}},
    "loss": {"type": "categorical", "choices": ["dice_ce", "dice", "dice_focal"]},
    "augment_strength": {"type": "float", "low": 0.0, "high": 1.5},
    "window_scale": {"type": "float", "low": 0.8, "high": 1.25},
    "batch_size": {"value": 1},
}
wait_for = functools.partial(conftest.wait_for, timeout=240.0)


@pytest.fixture(scope="module")
def phantom(phantom_dataset: Callable[..., Path]) -> Path:
    """4 labelled 32^3 phantom cases: 3 train, 1 validates."""
    return phantom_dataset(cases=4, size=32, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tune")
    (folder / "quick.json").write_text(json.dumps(QUICK))
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"config": folder / "quick.json", "space": folder / "space.yaml", "home": folder / "home"}


def tune_argv(dataset: Path, files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "tune", "--dataset", str(dataset), "--network", "unet", "--preset", "tiny", "--config",
        str(files["config"]), "--space", str(files["space"]), "--device", "cpu", "--seed", "1", *extra,
    ]  # fmt: skip


def start(argv: list[str], run_dir: Path, files: dict[str, Path]) -> RunDir:
    return start_worker(argv, run_dir, MEDSEGNAS_HOME=str(files["home"]))


def study_of(run: RunDir):
    job = run.read_job()["config"]
    return open_study(job["tune"], run.path, 1, create=False)


def trainings_started(run: RunDir, trial_dir: str) -> int:
    """How many times a trainer started (fresh or resumed) in a trial folder."""
    events, _ = RunDir(run.path / trial_dir).read_events()
    return sum(
        1
        for e in events
        if e["type"] == "log" and e["message"].startswith(("training unet", "resuming at epoch"))
    )


# --------------------------------------------------------------------------------------------
# Without training


def test_space_checks_name_the_problem() -> None:
    assert check_space(DEFAULT_SPACE) == DEFAULT_SPACE
    for space, words in (
        ({"learning_rate": {"type": "float", "low": 1, "high": 2}}, "neither a train setting"),
        ({"epochs": {"value": 3}}, "budget"),
        ({"sgd_lr": {"type": "float", "low": 0.1, "high": 0.01}}, "must be below high"),
        ({"sgd_lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
        ({"loss": {"type": "choice", "choices": ["dice"]}}, "type must be float, int or categorical"),
        (
            {"lambda_ce": {"type": "float", "low": 0.5, "high": 2, "when": {"loss": "dice_ce"}}},
            "listed before",
        ),
        ({"loss": {"type": "categorical", "choices": []}}, "non-empty list"),
    ):
        with pytest.raises(MedSegNASError, match=words):
            check_space(space)


def test_derived_parameters_scale_the_automatic_settings() -> None:
    base = {
        "spacing": [1.0, 1.0, 2.5],
        "intensity": {"kind": "ct_window", "a_min": -100.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0},
        "patch_size": [96, 96, 64],
        "divisor": 16,
        "min_side": 32,
    }
    overrides = trial_overrides(
        {"patch_scale": 0.5, "spacing_scale": 1.5, "window_scale": 0.5, "adamw_lr": 1e-3}, base
    )
    assert overrides["adamw_lr"] == 1e-3 and "patch_scale" not in overrides
    assert overrides["spacing"] == [1.5, 1.5, 3.75]
    assert overrides["patch_size"] == [48, 48, 32]  # multiples of 16, at least 32
    assert overrides["intensity"]["a_min"] == 0.0 and overrides["intensity"]["a_max"] == 200.0
    # an MR dataset (z-score) has no window to scale
    mr = {**base, "intensity": {"kind": "zscore"}}
    assert "intensity" not in trial_overrides({"window_scale": 2.0}, mr)
    assert TrainConfig.from_preset("tiny", overrides).patch_size == [48, 48, 32]


def test_the_first_trial_is_the_presets_configuration() -> None:
    resolved = {
        "train": {
            "train": TrainConfig.from_preset("tiny").to_dict(),
            "network": {"name": "unet", "optimizer": "adamw", "lr_schedule": "cosine"},
        }
    }
    assert preset_parameters(DEFAULT_SPACE, resolved) == {
        "optimizer": "adamw",
        "adamw_lr": 3e-3,  # the tiny preset's AdamW rate
        "lr_schedule": "cosine",
        "loss": "dice_ce",
        "lambda_ce": 1.0,
        "augment_strength": 1.0,
        "patch_scale": 1.0,
        "spacing_scale": 1.0,
        "window_scale": 1.0,
        "batch_size": 1,
    }
    # a preset value outside the space is left to the sampler
    narrow = {**DEFAULT_SPACE, "adamw_lr": {**DEFAULT_SPACE["adamw_lr"], "high": 1e-3}}
    assert "adamw_lr" not in preset_parameters(narrow, resolved)


def test_budget_gives_at_least_the_steps_and_a_few_validations() -> None:
    assert budget_schedule(8, train_cases=3, batch_size=1) == {"epochs": 3, "val_interval": 1}
    assert budget_schedule(200, train_cases=10, batch_size=2) == {"epochs": 40, "val_interval": 10}
    schedule = budget_schedule(5, train_cases=4, batch_size=4)
    assert schedule["epochs"] * 1 >= 5


def test_loss_and_augmentation_settings_default_to_the_published_ones() -> None:
    from MedSegNASLib.data.preprocessing import PreprocessingSpec
    from MedSegNASLib.nas.pipeline import training_transforms
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

    config = TrainConfig.from_preset("tiny")
    assert config.loss == "dice_ce" and config.augment_strength == 1.0
    assert isinstance(build_loss(config), DiceCELoss)
    assert isinstance(build_loss(TrainConfig.from_preset("tiny", {"loss": "dice"})), DiceLoss)
    focal = build_loss(TrainConfig.from_preset("tiny", {"loss": "dice_focal", "lambda_focal": 2.0}))
    assert isinstance(focal, DiceFocalLoss) and focal.lambda_focal == 2.0
    with pytest.raises(MedSegNASError, match="loss must be one of"):
        TrainConfig.from_preset("tiny", {"loss": "tversky"})
    with pytest.raises(MedSegNASError, match="augment_strength must be a number >= 0"):
        TrainConfig.from_preset("tiny", {"augment_strength": -1})

    spec = PreprocessingSpec(patch_size=[16, 16, 16])
    names = lambda t: [type(step).__name__ for step in t.transforms]  # noqa: E731
    default = training_transforms(spec, 3, crops_per_case=1, augment=True)
    strong = training_transforms(spec, 3, crops_per_case=1, augment=True, strength=2.0)
    off = training_transforms(spec, 3, crops_per_case=1, augment=True, strength=0.0)
    assert names(default) == names(strong) and "RandAffined" in names(default)
    assert names(off) == names(training_transforms(spec, 3, crops_per_case=1, augment=False))
    assert default.transforms[2].prob == pytest.approx(0.2) and strong.transforms[2].prob == pytest.approx(
        0.4
    )


def test_show_space_prints_the_default_space_as_yaml(capsys) -> None:
    from MedSegNASLib.cli import main

    assert main(["tune", "--dataset", "x", "--network", "unet", "--show-space"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == DEFAULT_SPACE


# --------------------------------------------------------------------------------------------
# Jobs


def test_tune_end_to_end_writes_results_best_config_and_a_registered_model(
    phantom: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    run = start(tune_argv(phantom, files, "--trials", "3", "--budget-steps", "3", "--final-steps", "3"),
                tmp_path / "tune", files)  # fmt: skip
    assert finish(run) == 0
    assert refresh_status(run)["state"] == "done"
    artifacts = run.artifacts

    rows = json.loads((artifacts / "trials.json").read_text())["trials"]
    assert [row["number"] for row in rows] == [0, 1, 2]
    assert rows[0]["params"] == {"optimizer": "adamw", "adamw_lr": 3e-3, "loss": "dice_ce",
                                 "augment_strength": 1.0, "window_scale": 1.0}  # fmt: skip
    assert all(row["state"] in ("COMPLETE", "PRUNED") for row in rows)
    assert set((artifacts / "trials.csv").read_text().splitlines()[0].split(",")) >= {
        "number",
        "state",
        "value",
        "loss",
    }
    for row in rows:
        assert set(row["params"]) <= set(SPACE) and row["params"]["loss"] in ("dice_ce", "dice", "dice_focal")
        assert trainings_started(run, row["trial_dir"]) == 1
    assert (artifacts / "dice_vs_trial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    importances = json.loads((artifacts / "importances.json").read_text())
    assert set(importances["importances"]) <= set(SPACE)

    # best_config.yaml is a train --config file holding the best trial's settings
    summary = json.loads((artifacts / "summary.json").read_text())
    best = next(row for row in rows if row["number"] == summary["tune"]["best_trial"])
    assert best["state"] == "COMPLETE" and best["value"] == max(
        r["value"] for r in rows if r["state"] == "COMPLETE"
    )
    config = load_config_file(artifacts / "best_config.yaml")
    assert config["loss"] == best["params"]["loss"] and config["optimizer"] == best["params"]["optimizer"]
    assert config["augment_strength"] == best["params"]["augment_strength"]
    resolved = resolve_train_config(
        {"dataset": str(phantom), "preset": "tiny", "network": "unet", "overrides": config, "register": False}
    )
    assert resolved["train"]["loss"] == best["params"]["loss"]

    # the final retrain: a bundle in the run's artifacts, registered, with the panel's summary keys
    assert (artifacts / "model" / "configs" / "metadata.json").is_file()
    assert summary["network"] == "unet" and summary["steps"] >= 3 and summary["tune"]["trials"] == 3
    registry = ModelRegistry(files["home"])
    assert (
        summary["registry_id"].startswith("tune-unet")
        and registry.get(summary["registry_id"]).network == "UNet"
    )
    assert (registry.model_path(summary["registry_id"]) / "configs" / "metadata.json").is_file()
    # the panel's Runs section shows it like a train run, with a line about the tune
    from MedSegNASLib.panels.panel_runs import run_details

    details = run_details(run.path)
    assert details.model == artifacts / "model" and len(details.predictions) == 1
    text = details.text()
    assert text.startswith(f"tune run {run.run_id}: done") and "Tune: 3 trial(s), best trial" in text
    assert "Best mean validation Dice" in text
    done = events_of(run, "done")[-1]["result"]
    assert done["best_params"] == best["params"]
    assert events_of(run, "progress", stage="tune") and events_of(run, "progress", stage="final")


@pytest.mark.parametrize("stop", ["kill -9", pytest.param("cancel", marks=pytest.mark.slow)])
def test_kill_9_or_cancel_then_resume_continues_the_study_without_repeating_trials(
    phantom: Path, files: dict[str, Path], tmp_path: Path, stop: str
) -> None:
    argv = tune_argv(phantom, files, "--trials", "3", "--budget-steps", "9", "--final-steps", "1",
                     "--pruner", "none", "--no-register")  # fmt: skip
    run = start(argv, tmp_path / "tune", files)
    # stop while trial 1 trains, after it saved a checkpoint
    wait_for(
        lambda: (run.path / "trials" / "trial-0001" / "checkpoints" / "last.pt").exists(), what="trial 1"
    )
    from optuna.trial import TrialState

    if stop == "kill -9":
        os.kill(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=30)
        assert refresh_status(run)["state"] == "failed"
        states = {t.number: t.state for t in study_of(run).get_trials()}
        assert states[0] == TrialState.COMPLETE and states[1] == TrialState.RUNNING
    else:  # SIGTERM: the trial saves its checkpoint, is marked FAIL and re-queued by the worker itself
        assert cancel(run, grace_s=120) == "cancelled" and run.process.wait(timeout=30) == 3
        trials = study_of(run).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
        assert trials[2].system_attrs["failed_trial"] == 1 and trials[2].params == trials[1].params
    steps_before = [e["step"] for e in RunDir(run.path / "trials" / "trial-0001").read_events()[0]
                    if e["type"] == "checkpoint"]  # fmt: skip

    resumed = start([*argv, "--resume"], run.path, files)
    assert finish(resumed) == 0
    study = study_of(resumed)
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    # trial 0 ran once; trial 1 failed as interrupted and its retry continued it in the same folder
    assert by_number[1].state == TrialState.FAIL
    assert by_number[1].user_attrs["interrupted"] == ("worker killed" if stop == "kill -9" else "cancelled")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == by_number[1].params
    assert retries[0].user_attrs["trial_dir"] == "trials/trial-0001"
    assert trainings_started(resumed, "trials/trial-0000") == 1
    trial_1 = RunDir(run.path / "trials" / "trial-0001").read_events()[0]
    resumes = [e for e in trial_1 if e["type"] == "log" and e["message"].startswith("resuming at epoch")]
    assert len(resumes) == 1 and steps_before
    assert retries[0].user_attrs["steps"] == 9  # the whole budget: steps before the kill were kept
    assert trial_counts(study)["finished"] == 3 and trial_counts(study)["running"] == 0
    assert len(list((run.path / "trials").iterdir())) == 3
    assert sorted(
        row["number"] for row in json.loads((run.artifacts / "trials.json").read_text())["trials"]
    ) == [t.number for t in trials]


@pytest.mark.parametrize(
    "backend",
    ["sqlite", pytest.param("journal", marks=pytest.mark.slow)],  # journal: about a minute on 2 cores
)
def test_two_workers_share_one_study_and_never_run_a_trial_twice(
    phantom: Path, files: dict[str, Path], tmp_path: Path, backend: str
) -> None:
    extra = ["--storage", f"journal://{tmp_path / 'study.log'}"] if backend == "journal" else []
    run = start(tune_argv(phantom, files, "--trials", "6", "--budget-steps", "6", "--final-steps", "1",
                          "--workers", "2", "--no-register", *extra), tmp_path / "tune", files)  # fmt: skip
    assert finish(run, timeout=380) == 0
    study = study_of(run)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert trial_counts(study)["finished"] >= 6 and not [t for t in trials if not t.state.is_finished()]
    folders = [t.user_attrs["trial_dir"] for t in finished]
    assert len(folders) == len(set(folders)), "two trials trained in one folder"
    for folder in folders:
        assert trainings_started(run, folder) == 1, f"{folder} was trained more than once"
    workers = {t.user_attrs["worker"]["pid"] for t in finished}
    assert len(workers) == 2, f"trials ran in {len(workers)} process(es): {workers}"
    assert (run.path / "worker-1.log").is_file()
    assert (backend == "journal") == (tmp_path / "study.log").is_file()
    assert (backend == "sqlite") == (run.path / "study.db").is_file()


def test_bad_input_fails_with_one_line_before_any_run_folder(phantom: Path, tmp_path: Path, capsys) -> None:
    from MedSegNASLib.cli import main

    base = ["tune", "--dataset", str(phantom), "--network", "unet", "--run-dir", str(tmp_path / "run")]
    assert main([*base, "--trials", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --trials must be at least 1, got 0"
    bad = tmp_path / "space.yaml"
    bad.write_text("sgd_lr: {type: float, low: 0.1, high: 0.01}\n")
    assert main([*base, "--space", str(bad)]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {bad}: parameter 'sgd_lr'") and "below high" in message
    assert not (tmp_path / "run").exists()
