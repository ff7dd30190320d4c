"""``medsegnas tune``: AutoML of the training configuration with Optuna, as a resumable, distributed job.

The network half of AutoML (C2FNAS, DiNTS) searches the topology; this is the other half: the
training configuration of :mod:`.train` (learning rate and schedule, optimiser, loss and its
weights, augmentation strength, patch size, target spacing, intensity window, batch size).
Optuna does the searching: a TPE sampler proposes each trial's settings, a pruner
(median of the other trials' validation curves by default) stops bad trials early, and the
study lives in the run directory (``RUN/study.db``, SQLite) or in any storage Optuna takes
(``--storage``: an RDB URL such as ``postgresql://...``, or ``journal:///path/file.log`` for
Optuna's journal file backend).

A trial trains with the existing trainer (:func:`~MedSegNASLib.nas.train.run_train`, no export) on
a budget of ``--budget-steps`` optimisation steps, on proxy data when asked
(``--proxy-cases N``: the first N training cases), validates about :data:`TRIAL_VALIDATIONS`
times and reports each validation Dice to Optuna, which may prune it. Trial 0 is the preset's
own configuration (:func:`preset_parameters`, enqueued), so the tune starts from what ``train``
would do. Its run lives in
``RUN/trials/trial-NNNN/`` (checkpoints, events, ``job.json`` with the resolved configuration).

Resuming is exact:

* finished trials stay in the study and are never run again;
* a trial interrupted by a cancel (SIGTERM) is marked FAIL and re-queued with the same
  parameters (Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, which links
  the retry to the original); the retry continues the original trial's training from its
  checkpoint in the same trial folder;
* a trial left RUNNING by a killed worker (kill -9) is found on ``--resume`` (its worker's pid on
  this host is gone), marked FAIL and re-queued the same way; workers on other machines sharing
  an RDB study are covered by Optuna's heartbeat (stale RUNNING trials fail after
  :data:`HEARTBEAT_GRACE_S` s and are re-queued);
* the sampler is seeded with the run seed and the number of trials so far, so a resumed
  single-worker tune proposes what the uninterrupted one would have.

``--workers K`` runs K worker processes on this machine that share the study: this process and
K-1 children (each in ``RUN/worker-<i>.log``); Optuna's storage hands each trial to one worker.
More machines join with ``--storage URL`` (see the README).

When all trials are done: ``artifacts/trials.csv`` / ``trials.json`` (one row per trial),
``importances.json`` (:func:`optuna.importance.get_param_importances`), ``dice_vs_trial.png``,
``best_config.yaml`` (a ``medsegnas train --config`` file), then a final retrain of the best
configuration in ``RUN/final/`` (the preset's schedule, or ``--final-steps``) whose bundle is
registered and copied to ``artifacts/model`` with its ``summary.json``, validation predictions and
curves, so the panel's Runs section shows a tune run like a train run.

The default space (:data:`DEFAULT_SPACE`; ``--space FILE`` replaces it with a YAML/JSON mapping of
the same form): each key is a :class:`~MedSegNASLib.nas.train.TrainConfig` field or one of
:data:`DERIVED_PARAMETERS`; each value is ``{type: float|int, low, high, log}``,
``{type: categorical, choices: [...]}`` or ``{value: X}`` (fixed), with an optional
``when: {other_parameter: value or [values]}`` for conditional parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic, write_text_atomic
from ..errors import JobError, MedSegNASError
from ..jobs.context import JobCancelled, JobContext, ProgressDisplay
from ..jobs.rundir import RunDir, hostname, pid_alive, process_start_ticks

__all__ = [
    "DEFAULT_SPACE",
    "DERIVED_PARAMETERS",
    "TRIAL_VALIDATIONS",
    "check_space",
    "open_study",
    "preset_parameters",
    "register",
    "resolve_tune_config",
    "run_tune",
    "trial_overrides",
    "tune_command",
]

#: Validations (reports to the pruner) per trial, about evenly spaced over its budget.
TRIAL_VALIDATIONS = 4
#: Optuna heartbeat of RDB studies (s) and how long a silent RUNNING trial lives before it is failed.
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120
#: Retries of a trial whose worker vanished (heartbeat) before it counts as failed.
MAX_STALE_RETRIES = 2
#: Study name inside the storage (one study per tune run; a shared RDB holds many).
STUDY_PREFIX = "medsegnas-tune-"

#: Parameters that are not TrainConfig fields; each scales a setting measured on the dataset.
DERIVED_PARAMETERS: dict[str, str] = {
    "patch_scale": "patch side = the automatic patch side x scale (rounded down to the network's divisor)",
    "spacing_scale": "target spacing = the automatic spacing x scale (coarser: more context, less detail)",
    "window_scale": "CT window width x scale around the automatic window's centre (CT datasets only)",
}

#: The default search space (see the module docstring for the format).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "sgd_lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True, "when": {"optimizer": "sgd"}},
    "adamw_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "when": {"optimizer": "adamw"}},
    "lr_schedule": {"type": "categorical", "choices": ["cosine", "multistep", "constant"]},
    "loss": {"type": "categorical", "choices": ["dice_ce", "dice", "dice_focal"]},
    "lambda_ce": {"type": "float", "low": 0.25, "high": 4.0, "log": True, "when": {"loss": "dice_ce"}},
    "lambda_focal": {"type": "float", "low": 0.25, "high": 4.0, "log": True, "when": {"loss": "dice_focal"}},
    "augment_strength": {"type": "float", "low": 0.0, "high": 2.0},
    "patch_scale": {"type": "categorical", "choices": [0.5, 0.75, 1.0]},
    "spacing_scale": {"type": "categorical", "choices": [1.0, 1.25, 1.5]},
    "window_scale": {"type": "float", "low": 0.75, "high": 1.5},
    "batch_size": {"type": "categorical", "choices": [1, 2, 4]},
}

#: Settings a trial's budget decides; they are left out of ``best_config.yaml``.
_BUDGET_FIELDS = ("epochs", "val_interval", "warmup_epochs")
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "value", "when"}


# --------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------


def check_space(space: Any, source: str = "the space") -> dict[str, dict[str, Any]]:
    """The space as a plain dict after checking every entry; :class:`MedSegNASError` names the first problem."""
    from dataclasses import fields

    from .train import TrainConfig

    if not isinstance(space, Mapping) or not space:
        raise MedSegNASError(f"{source} must be a non-empty mapping of parameter -> spec")
    known = {f.name for f in fields(TrainConfig)} - {"preset"}
    checked: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        where = f"{source}: parameter {name!r}"
        if name not in known and name not in DERIVED_PARAMETERS:
            raise MedSegNASError(
                f"{where} is neither a train setting nor one of {', '.join(DERIVED_PARAMETERS)}"
            )
        if name in _BUDGET_FIELDS:
            raise MedSegNASError(f"{where}: the trial budget (--budget-steps) sets {name}")
        if not isinstance(spec, Mapping):
            raise MedSegNASError(f"{where} must be a mapping such as {{type: float, low: 0.1, high: 1}}")
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise MedSegNASError(f"{where} has unknown key(s) {', '.join(unknown)}")
        when = spec.get("when")
        if when is not None and (
            not isinstance(when, Mapping) or any(other not in checked for other in when)
        ):
            raise MedSegNASError(f"{where}: 'when' must name parameters listed before it, got {when!r}")
        if "value" in spec:
            checked[name] = copy.deepcopy(dict(spec))
            continue
        kind = spec.get("type")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise MedSegNASError(f"{where}: categorical needs a non-empty list of choices")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise MedSegNASError(f"{where}: choices must be numbers, strings, booleans or null")
        elif kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise MedSegNASError(f"{where}: {kind} needs numeric low and high")
            if not low < high:
                raise MedSegNASError(f"{where}: low ({low}) must be below high ({high})")
            if spec.get("log") and low <= 0:
                raise MedSegNASError(f"{where}: a log scale needs low > 0")
        else:
            raise MedSegNASError(
                f"{where}: type must be float, int or categorical (or give a value), got {kind!r}"
            )
        checked[name] = copy.deepcopy(dict(spec))
    return checked


def _active(spec: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    for other, wanted in (spec.get("when") or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if other not in chosen or chosen[other] not in allowed:
            return False
    return True


def suggest_parameters(trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The trial's parameters: each active entry of ``space`` suggested (or fixed) in order."""
    chosen: dict[str, Any] = {}
    for name, spec in space.items():
        if not _active(spec, chosen):
            continue
        if "value" in spec:
            chosen[name] = copy.deepcopy(spec["value"])
        elif spec["type"] == "categorical":
            chosen[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif spec["type"] == "int":
            chosen[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                log=bool(spec.get("log")),
            )  # fmt: skip
        else:
            chosen[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                step=spec.get("step"),
            )  # fmt: skip
    return chosen


def preset_parameters(space: Mapping[str, Mapping[str, Any]], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of the space that reproduce the preset's own settings (the first trial).

    Fields take the base configuration's values (``auto`` optimiser and schedule resolved for the
    network), derived scales 1; a parameter whose preset value lies outside its range or choices,
    or that its ``when`` leaves inactive, is left to the sampler.
    """
    train, network = resolved["train"]["train"], resolved["train"]["network"]
    values = {**train, "optimizer": network["optimizer"], "lr_schedule": network["lr_schedule"]}
    values.update({name: 1.0 for name in DERIVED_PARAMETERS})
    chosen: dict[str, Any] = {}
    for name, spec in space.items():
        if "value" in spec or not _active(spec, chosen) or name not in values:
            continue
        value = values[name]
        if spec["type"] == "categorical":
            if value in spec["choices"]:
                chosen[name] = value
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and spec["low"] <= value <= spec["high"]
        ):
            chosen[name] = int(value) if spec["type"] == "int" else float(value)
    return chosen


def trial_overrides(parameters: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Train config overrides for ``parameters``: fields as they are, derived ones applied to ``base``.

    Args:
        parameters: the trial's parameters (see :func:`suggest_parameters`).
        base: the tune's ``base`` record: automatic ``spacing`` (mm), ``intensity``,
            ``patch_size`` (voxels), network ``divisor`` and smallest side ``min_side``.
    """
    overrides = {k: copy.deepcopy(v) for k, v in parameters.items() if k not in DERIVED_PARAMETERS}
    if "spacing_scale" in parameters and "spacing" not in overrides:
        scale = float(parameters["spacing_scale"])
        overrides["spacing"] = [round(float(s) * scale, 4) for s in base["spacing"]]
    if "patch_scale" in parameters and "patch_size" not in overrides:
        divisor, smallest = int(base["divisor"]), int(base["min_side"])
        overrides["patch_size"] = [
            max(smallest, divisor, int(side * float(parameters["patch_scale"])) // divisor * divisor)
            for side in base["patch_size"]
        ]
    intensity = base["intensity"]
    if "window_scale" in parameters and "intensity" not in overrides and intensity["kind"] == "ct_window":
        centre = 0.5 * (intensity["a_min"] + intensity["a_max"])
        half = 0.5 * (intensity["a_max"] - intensity["a_min"]) * float(parameters["window_scale"])
        overrides["intensity"] = {
            **intensity,
            "a_min": round(centre - half, 1),
            "a_max": round(centre + half, 1),
        }
    return overrides


def budget_schedule(budget_steps: int, train_cases: int, batch_size: int) -> dict[str, int]:
    """``epochs`` and ``val_interval`` for a trial of about ``budget_steps`` steps (at least that many)."""
    steps_per_epoch = max(1, math.ceil(train_cases / batch_size))
    epochs = max(1, math.ceil(budget_steps / steps_per_epoch))
    return {"epochs": epochs, "val_interval": max(1, epochs // TRIAL_VALIDATIONS)}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _storage_url(run_dir: str | None, storage: str | None) -> str:
    if storage:
        return storage
    if run_dir is None:
        raise JobError("tune keeps its study in the run directory: give --run-dir RUN (or --storage URL)")
    return "sqlite:///" + str(Path(run_dir).expanduser().absolute() / "study.db")


def resolve_tune_config(
    request: Mapping[str, Any], *, device_type: str = "cpu", log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Check the space and the dataset, resolve the preset's configuration once (the base the
    derived parameters scale), before any trial.

    Args:
        request: ``dataset``, ``dataroot``, ``preset``, ``overrides`` (the ``--config`` mapping),
            ``seed``, ``arch`` / ``network``, ``space`` (mapping or None: :data:`DEFAULT_SPACE`),
            ``trials``, ``budget_steps``, ``final_steps`` (None: the preset's schedule),
            ``proxy_cases`` (None: all), ``pruner``, ``storage``, ``study_name``, ``register``,
            ``name``.

    Returns:
        ``request``, ``tune`` (space, trials, budget, storage, study name, pruner), ``base``
        (automatic spacing, intensity, patch, divisor, smallest side, split, memory budget),
        ``train`` (the base :func:`~MedSegNASLib.nas.train.resolve_train_config` result) and
        ``dataset`` (labels, split; for the panel).
    """
    from .train import TrainConfig, minimum_patch_side, resolve_train_config

    say = log or (lambda message: None)
    space = check_space(request.get("space") or DEFAULT_SPACE, request.get("space_source") or "the space")
    for key, minimum in (("trials", 1), ("budget_steps", 1)):
        if not isinstance(request.get(key), int) or request[key] < minimum:
            raise MedSegNASError(f"--{key.replace('_', '-')} must be an integer >= {minimum}")
    if request.get("final_steps") is not None and request["final_steps"] < 1:
        raise MedSegNASError("--final-steps must be an integer >= 1")
    if request.get("proxy_cases") is not None and request["proxy_cases"] < 1:
        raise MedSegNASError("--proxy-cases must be an integer >= 1")
    overrides = dict(request.get("overrides") or {})
    clash = sorted(set(overrides) & set(_BUDGET_FIELDS))
    if clash:
        raise MedSegNASError(
            f"--config may not set {', '.join(clash)}: the trial budget and --final-steps decide them"
        )
    train_request = {
        **{k: request.get(k) for k in ("dataset", "dataroot", "preset", "seed", "arch", "network")},
        "overrides": overrides,
        "train_cases": None,
        "validation_cases": None,
        "register": False,
        "name": None,
    }
    base = resolve_train_config(train_request, device_type=device_type, log=say)
    split = base["dataset"]["split"]
    proxy = split["train"][: request["proxy_cases"]] if request.get("proxy_cases") else list(split["train"])
    network = base["network"]
    config = TrainConfig.from_dict(base["train"])
    study_name = request.get("study_name") or STUDY_PREFIX + str(request.get("run_id") or "study")
    resolved = {
        "request": dict(request),
        "tune": {
            "space": space,
            "trials": int(request["trials"]),
            "budget_steps": int(request["budget_steps"]),
            "final_steps": request.get("final_steps"),
            "pruner": request.get("pruner") or "median",
            "storage": request.get("storage"),
            "study_name": study_name,
            "trial_train_cases": proxy,
            "validation_cases": list(split["validation"]),
        },
        "base": {
            "spacing": base["preprocessing"]["spacing"],
            "intensity": base["preprocessing"]["intensity"],
            "patch_size": base["train"]["patch_size"],
            "divisor": network["divisor"],
            "min_side": minimum_patch_side(network["name"], network["divisor"]),
            "memory_budget_mb": base["memory"]["budget_mb"],
            "batch_size": config.batch_size,
        },
        "train": base,
        "dataset": base["dataset"],
    }
    say(
        f"tuning {network['name']} on {len(proxy)} training case(s) (of {len(split['train'])}) / "
        f"{len(split['validation'])} validation: {request['trials']} trial(s) of {request['budget_steps']} steps, "
        f"{len(space)} parameter(s): {', '.join(space)}"
    )
    return json.loads(json.dumps(resolved))


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def _retry_callback():
    from optuna import storages

    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    return cls


def open_study(tune: Mapping[str, Any], run_dir: str | os.PathLike[str] | None, seed: int, *, create: bool):
    """The tune's Optuna study (created when ``create``), in ``tune['storage']`` or ``RUN/study.db``.

    ``journal:///PATH`` selects Optuna's journal file backend (no server, no SQL); anything else
    is an RDB URL (``sqlite:///``, ``postgresql://``, ``mysql://``), with a heartbeat so RUNNING
    trials of vanished workers are failed and re-queued.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the tune reports each trial itself
    url = _storage_url(None if run_dir is None else str(run_dir), tune.get("storage"))
    retry = _retry_callback()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat and retry callbacks are 'experimental' in Optuna
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage

            try:
                from optuna.storages.journal import JournalFileBackend
            except ImportError:  # Optuna < 4
                from optuna.storages import JournalFileStorage as JournalFileBackend
            path = url[len("journal:") :].lstrip("/")
            storage = JournalStorage(
                JournalFileBackend("/" + path if url.startswith("journal:///") else path)
            )
        else:
            kwargs: dict[str, Any] = {
                "heartbeat_interval": HEARTBEAT_INTERVAL_S,
                "grace_period": HEARTBEAT_GRACE_S,
                "engine_kwargs": {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
            }
            callback = retry(max_retry=MAX_STALE_RETRIES, inherit_intermediate_values=True)
            try:
                storage = optuna.storages.RDBStorage(url, heartbeat_stale_trial_callback=callback, **kwargs)
            except TypeError:  # Optuna < 4.9 names it failed_trial_callback
                storage = optuna.storages.RDBStorage(url, failed_trial_callback=callback, **kwargs)
            except (ImportError, ModuleNotFoundError) as exc:
                raise MedSegNASError(
                    f"cannot use storage {url}: {exc} (install its database driver)"
                ) from None
            except Exception as exc:
                raise MedSegNASError(
                    f"cannot open the study storage {url}: {type(exc).__name__}: {exc}"
                ) from None
    sampler = make_sampler(seed, 0)
    if create:
        return optuna.create_study(
            study_name=tune["study_name"], storage=storage, direction="maximize", sampler=sampler,
            pruner=make_pruner(tune), load_if_exists=True,
        )  # fmt: skip
    try:
        return optuna.load_study(
            study_name=tune["study_name"], storage=storage, sampler=sampler, pruner=make_pruner(tune)
        )
    except KeyError:
        raise MedSegNASError(f"no study {tune['study_name']!r} in {url}") from None


def make_sampler(seed: int, trials_so_far: int):
    """TPE, seeded with the run seed and the number of trials so far (the same proposals after a resume)."""
    import optuna

    from .distributed import derive_seed

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=derive_seed(seed, trials_so_far), n_startup_trials=5)


def make_pruner(tune: Mapping[str, Any]):
    """``median`` (Optuna's MedianPruner: after 2 finished trials, stop a trial whose best Dice is
    below the median at the same step), ``hyperband`` or ``none``."""
    import optuna

    kind = tune.get("pruner") or "median"
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(tune["budget_steps"]))
    return optuna.pruners.NopPruner()


def _retried_of(trial) -> int | None:
    return trial.system_attrs.get("failed_trial")


def _retried_numbers(trials: Sequence[Any]) -> set[int]:
    """Numbers of trials that another trial retries."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(trial.system_attrs.get("retry_history") or [])
    return numbers


def trial_counts(study) -> dict[str, int]:
    """``finished`` (complete, pruned, or failed for good), ``running``, ``waiting`` and ``complete``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    counts = {"finished": 0, "running": 0, "waiting": 0, "complete": 0}
    for trial in trials:
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            counts["finished"] += 1
            counts["complete"] += trial.state == TrialState.COMPLETE
        elif trial.state == TrialState.FAIL:
            # An interrupted trial is not finished: its retry (queued or done) counts instead.
            if trial.number not in retried and not trial.user_attrs.get("interrupted"):
                counts["finished"] += 1
        elif trial.state == TrialState.RUNNING:
            counts["running"] += 1
        elif trial.state == TrialState.WAITING:
            counts["waiting"] += 1
    return counts


def recover_interrupted_trials(
    study, say: Callable[[str], None], *, all_running_dead: bool = False, only_pid: int | None = None
) -> list[int]:
    """Re-queue the trials interrupted by a stop or a kill on this host; return their numbers.

    RUNNING trials whose worker (recorded host and pid) is this host's and no longer alive are
    marked FAIL (every RUNNING trial when ``all_running_dead``: the study in the run directory
    when the run's lock holder starts, before it starts workers); FAIL trials marked
    ``interrupted`` without a retry are re-queued with the same parameters by Optuna's retry
    callback (the retry continues from the trial's checkpoint). ``only_pid``: only the trials of
    that worker process on this host (a stopped worker re-queues its own trial, so that two
    workers never queue one trial twice).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    retry = _retry_callback()(max_retry=None, inherit_intermediate_values=True)
    trials = study.get_trials(deepcopy=False)
    retried = _retried_numbers(trials)
    requeued = []
    for trial in trials:
        worker = trial.user_attrs.get("worker") or {}
        if only_pid is not None and (worker.get("pid") != only_pid or worker.get("host") != hostname()):
            continue
        dead = trial.state == TrialState.RUNNING and (
            all_running_dead
            or (
                worker.get("host") == hostname() and not pid_alive(worker.get("pid"), worker.get("pid_start"))
            )
        )
        if dead:
            try:
                study._storage.set_trial_user_attr(trial._trial_id, "interrupted", "worker killed")
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # another process finished it meanwhile
            say(f"trial {trial.number} was left running by worker {worker.get('pid')} (killed?): re-queued")
        elif not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")):
            continue
        if trial.number in retried:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            retry(study, study._storage.get_trial(trial._trial_id))
        requeued.append(trial.number)
    return requeued


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


class _QuietDisplay(ProgressDisplay):
    """A trial's own progress stays in its events; the tune's display shows the summary."""

    def progress(self, record: dict[str, Any]) -> None:
        pass

    def log(self, message: str, level: str = "info") -> None:
        if level in ("warning", "error"):
            super().log(message, level)


class TrialContext(JobContext):
    """The job context of one trial's training: its own run folder, the tune's stop flag.

    Progress is forwarded to ``forward(step, total, metrics)`` (the tune's progress line).
    """

    def __init__(self, parent: JobContext, run_dir: RunDir, resuming: bool, forward) -> None:
        super().__init__(run_dir, resuming, display=_QuietDisplay())
        self.parent = parent
        self.forward = forward

    @property
    def stop_requested(self) -> bool:
        if self.parent.stop_requested and self._stop_reason is None:
            self._stop_reason = self.parent._stop_reason
        return self._stop_reason is not None

    def raise_if_stop_requested(self) -> None:
        _ = self.stop_requested
        super().raise_if_stop_requested()

    def progress(
        self, step: int, total: int, *, stage: str = "", epoch: int | None = None, **metrics: Any
    ) -> None:
        super().progress(step, total, stage=stage, epoch=epoch, **metrics)
        if stage == "train":
            self.forward(step, total, metrics)


class TuneWorker:
    """Runs trials of one study until the tune has its number of finished trials.

    Args:
        ctx: the job context (the tune's own in the leader; a context without run folder in an
            extra worker process): its stop flag ends the work, its progress shows the tune's.
        resolved: from :func:`resolve_tune_config`.
        run_dir: the tune's run folder (trial folders go under ``trials/``).
        dist_info: device of this process.
        report: whether this process reports the tune's progress (the leader).
    """

    def __init__(
        self,
        ctx: JobContext,
        resolved: Mapping[str, Any],
        run_dir: Path,
        dist_info,
        *,
        report: bool,
        study=None,
    ):
        self.ctx = ctx
        self.resolved = resolved
        self.tune = resolved["tune"]
        self.run_dir = Path(run_dir)
        self.dist_info = dist_info
        self.report = report
        self.seed = int(resolved["train"]["train"]["seed"])
        self.study = (
            study if study is not None else open_study(self.tune, self.run_dir, self.seed, create=False)
        )
        self.best = -math.inf
        self._finished_at_start = 0

    # -- the loop ---------------------------------------------------------------------------

    def work(self) -> int:
        """Run trials until enough are finished (or none is left to start); returns how many ran here."""
        from optuna.trial import TrialState

        from ..errors import MedSegNASError as UserError

        ran = 0
        while True:
            self.ctx.raise_if_stop_requested()
            counts = trial_counts(self.study)
            if counts["finished"] >= self.tune["trials"]:
                break
            if counts["waiting"] == 0 and counts["finished"] + counts["running"] >= self.tune["trials"]:
                break  # the last trials are running elsewhere
            self._finished_at_start = counts["finished"]
            self.study.sampler = make_sampler(self.seed, len(self.study.get_trials(deepcopy=False)))
            catch: tuple[type[BaseException], ...] = (UserError,)
            with contextlib.suppress(ImportError, AttributeError):
                import torch

                catch += (torch.OutOfMemoryError,)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.study.optimize(self._objective, n_trials=1, catch=catch, gc_after_trial=True)
            except JobCancelled:
                # Optuna marked the trial FAIL; re-queue it so --resume continues it from its checkpoint.
                recover_interrupted_trials(self.study, self.ctx.log, only_pid=os.getpid())
                raise
            ran += 1
            mine = [
                t for t in self.study.get_trials(deepcopy=False)
                if (t.user_attrs.get("worker") or {}).get("pid") == os.getpid() and t.state.is_finished()
            ]  # fmt: skip
            if mine:
                self._say_trial_end(mine[-1], TrialState)
        return ran

    def _say_trial_end(self, trial, TrialState) -> None:
        state = trial.state.name.lower()
        value = trial.value if trial.state == TrialState.COMPLETE else None
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            step = max(trial.intermediate_values)
            text = f"pruned at step {step} (Dice {trial.intermediate_values[step]:.3f})"
        elif value is not None:
            text = f"Dice {value:.3f}"
        else:
            text = f"{state}: {trial.user_attrs.get('error', '')}".rstrip(": ")
        self.ctx.log(f"trial {trial.number} {text}; parameters {json.dumps(trial.params)}")

    # -- one trial --------------------------------------------------------------------------

    def trial_request(self, overrides: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
        train = self.resolved["train"]
        request = dict(train["request"])
        schedule = budget_schedule(self.tune["budget_steps"], len(self.tune["trial_train_cases"]), batch_size)
        request["overrides"] = {**(request.get("overrides") or {}), **dict(overrides), **schedule}
        request["train_cases"] = list(self.tune["trial_train_cases"])
        request["validation_cases"] = list(self.tune["validation_cases"])
        request["register"] = False
        return request

    def _objective(self, trial) -> float:
        import optuna

        from .train import resolve_train_config, run_train

        # The retry link lives in the trial's system attributes (set by Optuna's retry callback).
        root = _retried_of(self.study._storage.get_trial(trial._trial_id))
        folder = self.run_dir / "trials" / f"trial-{(trial.number if root is None else root):04d}"
        pid = os.getpid()
        trial.set_user_attr("worker", {"host": hostname(), "pid": pid, "pid_start": process_start_ticks(pid)})
        trial.set_user_attr("trial_dir", str(folder.relative_to(self.run_dir)))
        parameters = suggest_parameters(trial, self.tune["space"])
        overrides = trial_overrides(parameters, self.resolved["base"])
        batch_size = int(overrides.get("batch_size", self.resolved["base"]["batch_size"]))
        run = RunDir(folder)
        run.ensure_layout()
        job = run.read_job()
        resuming = bool(job.get("config"))
        if resuming:
            resolved = job["config"]  # the checkpoint belongs to exactly this configuration
        else:
            try:
                resolved = resolve_train_config(
                    self.trial_request(overrides, batch_size), device_type=self.dist_info.device.type
                )
            except MedSegNASError as exc:
                trial.set_user_attr("error", str(exc))
                raise
            estimate, budget = resolved["memory"]["estimate_mb"], resolved["memory"]["budget_mb"]
            if estimate > budget:
                message = f"estimated memory {estimate:.0f} MB exceeds the budget of {budget:.0f} MB"
                trial.set_user_attr("error", message)
                raise optuna.TrialPruned(message)
            run.write_job(
                {"kind": "tune-trial", "trial": trial.number, "parameters": parameters, "config": resolved}
            )
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("patch_size", resolved["train"]["patch_size"])
        trial_total = max(1, self.tune["budget_steps"])

        def forward(step: int, total: int, metrics: Mapping[str, Any]) -> None:
            if not self.report:
                return
            done = self._finished_at_start * trial_total + min(trial_total, round(trial_total * step / total))
            shown = {"trial": trial.number, "loss": metrics.get("loss")}
            if math.isfinite(self.best):
                shown["val_dice"] = self.best
            self.ctx.progress(
                min(done, self.tune["trials"] * trial_total),
                self.tune["trials"] * trial_total,
                stage="tune",
                **shown,
            )

        def on_validation(record: Mapping[str, Any]) -> None:
            value = record["val_dice_mean"]
            trial.report(0.0 if value is None else float(value), int(record["step"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {record['step']}")

        ctx = TrialContext(self.ctx, run, resuming, forward)
        if resuming:
            self.ctx.log(f"trial {trial.number} continues trial {root} from {folder.name}")
        try:
            result = run_train(ctx, resolved, self.dist_info, on_validation=on_validation, export=False)
        except JobCancelled:
            trial.set_user_attr("interrupted", "cancelled")
            raise
        except MedSegNASError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        value = result["best_val_dice_mean"]
        trial.set_user_attr("steps", result["steps"])
        trial.set_user_attr("wall_s", result["wall_s"])
        trial.set_user_attr("best_epoch", result["best_epoch"])
        value = 0.0 if value is None else float(value)
        self.best = max(self.best, value, self.study_best())
        return value

    def study_best(self) -> float:
        try:
            return float(self.study.best_value)
        except ValueError:
            return -math.inf


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def trials_rows(study) -> list[dict[str, Any]]:
    """One plain record per trial: number, state, value, parameters, retry link, steps, time."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "params": dict(trial.params),
                "retry_of": _retried_of(trial),
                "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
                "steps": trial.user_attrs.get("steps"),
                "duration_s": None if duration is None else round(duration, 2),
                "trial_dir": trial.user_attrs.get("trial_dir"),
                "error": trial.user_attrs.get("error") or trial.user_attrs.get("interrupted"),
            }
        )
    return rows


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({name for row in rows for name in row["params"]})
    columns = ["number", "state", "value", *names, "retry_of", "steps", "duration_s", "trial_dir", "error"]
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (v := {**row, **row["params"]}.get(c)) is None else v for c in columns])
    return handle.getvalue()


def _importances(study, say: Callable[[str], None]) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {"importances": {}, "note": f"{len(complete)} complete trial(s): importances need at least 2"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. no parameter varied across complete trials
        say(f"parameter importances could not be computed: {exc}")
        return {"importances": {}, "note": str(exc)}
    return {
        "importances": {k: float(v) for k, v in values.items()},
        "method": "optuna.importance.get_param_importances (fANOVA) over the complete trials",
        "complete_trials": len(complete),
    }


def _plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..atomic import write_atomic

    figure = Figure(figsize=(7, 4), dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    styles = {"COMPLETE": ("o", "tab:blue"), "PRUNED": ("x", "tab:orange"), "FAIL": ("v", "tab:red")}
    for state, (marker, color) in styles.items():
        points = [
            (
                row["number"],
                row["value"] if row["value"] is not None else max(row["intermediate"].values(), default=0.0),
            )
            for row in rows
            if row["state"] == state
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            axis.scatter(xs, ys, marker=marker, color=color, label=state.lower())
    best, xs, ys = -math.inf, [], []
    for row in rows:
        if row["state"] == "COMPLETE" and row["value"] is not None:
            best = max(best, row["value"])
        if math.isfinite(best):
            xs.append(row["number"])
            ys.append(best)
    if xs:
        axis.step(xs, ys, where="post", color="black", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation Dice (mean over classes)")
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


def best_config(resolved: Mapping[str, Any], best_trial) -> dict[str, Any]:
    """The ``train --config`` mapping of the best trial: ``--config`` settings + its overrides
    (budget-dependent ``epochs``/``val_interval`` left out, or set for ``--final-steps``)."""
    overrides = {
        **(resolved["train"]["request"].get("overrides") or {}),
        **best_trial.user_attrs.get("overrides", {}),
    }
    for key in _BUDGET_FIELDS:
        overrides.pop(key, None)
    final_steps = resolved["tune"].get("final_steps")
    if final_steps:
        train_cases = len(resolved["train"]["dataset"]["split"]["train"])
        batch = int(overrides.get("batch_size", resolved["base"]["batch_size"]))
        steps_per_epoch = max(1, math.ceil(train_cases / batch))
        epochs = max(1, math.ceil(final_steps / steps_per_epoch))
        preset_interval = int(resolved["train"]["train"]["val_interval"])
        overrides.update(
            {"epochs": epochs, "val_interval": max(1, min(preset_interval, epochs // TRIAL_VALIDATIONS or 1))}
        )
    return json.loads(json.dumps(overrides))


def _config_yaml(config: Mapping[str, Any], resolved: Mapping[str, Any], best_trial) -> str:
    import yaml

    request = resolved["request"]
    what = f"--arch {request['arch']}" if request.get("arch") else f"--network {request.get('network')}"
    header = (
        f"# Best training configuration of medsegnas tune (trial {best_trial.number}, "
        f"validation Dice {best_trial.value:.4f} after {best_trial.user_attrs.get('steps')} steps).\n"
        f"# medsegnas train --dataset {request['dataset']} {what} --preset {request['preset']} "
        "--config THIS_FILE --run-dir RUN\n"
    )
    return header + yaml.safe_dump(dict(config), sort_keys=True)


def _final_retrain(
    ctx: JobContext, resolved: Mapping[str, Any], config: Mapping[str, Any], dist_info
) -> dict[str, Any]:
    """Train the best configuration on all training cases in ``RUN/final`` (resumable) and export it."""
    from .train import resolve_train_config, run_train

    final = RunDir(ctx.run_dir.path / "final")
    final.ensure_layout()
    summary = final.artifacts / "summary.json"
    if summary.is_file() and (final.artifacts / "model").is_dir():
        return json.loads(summary.read_text(encoding="utf-8"))
    job = final.read_job()
    resuming = bool(job.get("config"))
    if resuming:
        train_resolved = job["config"]
    else:
        request = dict(resolved["train"]["request"])
        request.update(
            overrides=dict(config),
            register=bool(resolved["request"].get("register", True)),
            name=resolved["request"].get("name")
            or f"tune-{resolved['train']['network']['name']}-{ctx.run_dir.run_id}",
        )
        train_resolved = resolve_train_config(request, device_type=dist_info.device.type, log=ctx.log)
        final.write_job({"kind": "train", "config": train_resolved, "from": "tune"})

    offset = resolved["tune"]["trials"] * resolved["tune"]["budget_steps"]

    def forward(step: int, total: int, metrics: Mapping[str, Any]) -> None:
        # After the tune's steps on the same axis, so the panel's curves continue.
        shown = {k: v for k, v in metrics.items() if k in ("loss", "val_dice") or k.startswith("val_dice/")}
        ctx.progress(offset + step, offset + total, stage="final", **shown)

    trial_ctx = TrialContext(ctx, final, resuming, forward)
    trial_ctx.display = ctx.display
    ctx.log("final retrain of the best configuration" + (" (continuing)" if resuming else ""))
    run_train(trial_ctx, train_resolved, dist_info)
    return json.loads(summary.read_text(encoding="utf-8"))


def _write_results(ctx: JobContext, resolved: Mapping[str, Any], study) -> dict[str, Any]:
    from optuna.trial import TrialState

    artifacts = ctx.run_dir.artifacts
    rows = trials_rows(study)
    write_json_atomic(artifacts / "trials.json", {"study": resolved["tune"]["study_name"], "trials": rows})
    write_text_atomic(artifacts / "trials.csv", _csv_text(rows))
    importances = _importances(study, ctx.log)
    write_json_atomic(artifacts / "importances.json", importances)
    network = resolved["train"]["network"]["name"]
    _plot(rows, artifacts / "dice_vs_trial.png", f"medsegnas tune: {network}, {len(rows)} trial(s)")
    for name, kind in (("trials.csv", "table"), ("trials.json", "table"), ("importances.json", "table"),
                       ("dice_vs_trial.png", "image")):  # fmt: skip
        ctx.artifact(artifacts / name, kind)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise MedSegNASError(
            f"no trial completed ({len(rows)} trial(s): see artifacts/trials.csv for the errors); widen the space "
            "or raise --budget-steps"
        )
    best = study.best_trial
    config = best_config(resolved, best)
    write_text_atomic(artifacts / "best_config.yaml", _config_yaml(config, resolved, best))
    ctx.artifact(artifacts / "best_config.yaml", "config")
    ctx.log(f"best trial {best.number}: Dice {best.value:.4f} with {json.dumps(best.params)}")
    return {"rows": rows, "importances": importances, "best": best, "config": config}


def _publish_final(ctx: JobContext, final: Mapping[str, Any], tune_info: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the final model, predictions, curves and summary into the tune's artifacts (the panel reads them)."""
    artifacts = ctx.run_dir.artifacts
    source = ctx.run_dir.path / "final" / "artifacts"
    for name in ("model", "predictions"):
        target = artifacts / name
        if target.exists():
            shutil.rmtree(target)
        if (source / name).is_dir():
            shutil.copytree(source / name, artifacts / f".{name}.tmp", dirs_exist_ok=True)
            os.replace(artifacts / f".{name}.tmp", target)
    for name in ("curves.png", "val_dice.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, artifacts / name)
    summary = {**final, "bundle": "artifacts/model", "final_run": "final", "tune": dict(tune_info)}
    path = write_json_atomic(artifacts / "summary.json", summary)
    if (artifacts / "model").is_dir():
        ctx.artifact(artifacts / "model", "model")
    if (artifacts / "predictions").is_dir():
        ctx.artifact(
            artifacts / "predictions",
            "labelmap",
            cases=sorted(p.name for p in (artifacts / "predictions").iterdir()),
        )
    ctx.artifact(path, "table")
    return summary


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _worker_command(run_dir: Path, index: int, device: str) -> list[str]:
    return [sys.executable, "-m", "MedSegNASLib.nas.tune", "--run-dir", str(run_dir), "--index", str(index),
            "--device", device]  # fmt: skip


def _start_workers(run_dir: Path, count: int, device: str) -> list[subprocess.Popen]:
    processes = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for index in range(1, count):
        with open(run_dir / f"worker-{index}.log", "ab") as log:
            processes.append(
                subprocess.Popen(
                    _worker_command(run_dir, index, device),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )  # fmt: skip
            )
    return processes


def _wait_for_workers(
    ctx: JobContext, processes: Sequence[subprocess.Popen], study, tune: Mapping[str, Any]
) -> None:
    """Wait for the extra workers, showing the study's progress; pass a stop on to them."""
    signalled = False
    total = tune["trials"] * tune["budget_steps"]
    while any(p.poll() is None for p in processes):
        if ctx.stop_requested and not signalled:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            signalled = True
        counts = trial_counts(study)
        ctx.progress(min(total, counts["finished"] * tune["budget_steps"]), total, stage="tune",
                     finished=counts["finished"], running=counts["running"])  # fmt: skip
        time.sleep(1.0)
    failed = [p.args[-3] for p in processes if p.returncode not in (0, 3)]
    if failed:
        ctx.log(f"worker(s) {', '.join(failed)} failed; see RUN/worker-<i>.log", level="warning")


def run_tune(ctx: JobContext, resolved: Mapping[str, Any], dist_info, *, workers: int = 1) -> dict[str, Any]:
    """The tune job body: create or reopen the study, run the trials (here and in ``workers - 1``
    extra processes), write the results, retrain the best configuration and export it."""
    if ctx.run_dir is None:
        raise JobError("tune writes its study, trials and results to a run directory: give --run-dir RUN")
    tune = resolved["tune"]
    seed = int(resolved["train"]["train"]["seed"])
    run_path = ctx.run_dir.path
    study = open_study(tune, run_path, seed, create=True)
    requeued = recover_interrupted_trials(study, ctx.log, all_running_dead=not tune.get("storage"))
    if not study.get_trials(deepcopy=False):
        # Trial 0 is the preset's own configuration, so the tune starts from what train would do.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.enqueue_trial(
                preset_parameters(tune["space"], resolved), user_attrs={"preset": True}, skip_if_exists=True
            )
    counts = trial_counts(study)
    if ctx.resuming:
        ctx.log(
            f"resuming the study {tune['study_name']}: {counts['finished']} of {tune['trials']} trial(s) finished"
            + (f", trial(s) {', '.join(map(str, requeued))} re-queued" if requeued else "")
        )
    started = time.monotonic()
    processes = _start_workers(run_path, workers, dist_info.device.type) if workers > 1 else []
    try:
        worker = TuneWorker(ctx, resolved, run_path, dist_info, report=True, study=study)
        ran_here = worker.work()
        _wait_for_workers(ctx, processes, study, tune)
    finally:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
    ctx.raise_if_stop_requested()
    counts = trial_counts(study)
    if counts["finished"] < tune["trials"]:
        raise JobError(
            f"only {counts['finished']} of {tune['trials']} trial(s) finished (a worker stopped early); "
            "continue with --resume"
        )
    results = _write_results(ctx, resolved, study)
    best = results["best"]
    final = _final_retrain(ctx, resolved, results["config"], dist_info)
    tune_info = {
        "trials": len(results["rows"]),
        "finished": counts["finished"],
        "complete": counts["complete"],
        "best_trial": best.number,
        "best_trial_val_dice": best.value,
        "best_params": dict(best.params),
        "importances": results["importances"].get("importances", {}),
        "budget_steps": tune["budget_steps"],
        "trials_here": ran_here,
        "workers": workers,
        "search_wall_s": round(time.monotonic() - started, 1),
        "study": tune["study_name"],
        "storage": tune.get("storage") or "sqlite:///RUN/study.db",
    }
    summary = _publish_final(ctx, final, tune_info)
    return {
        "best_trial": best.number,
        "best_params": dict(best.params),
        "best_trial_val_dice": best.value,
        "final_val_dice_mean": summary.get("best_val_dice_mean"),
        "registry_id": summary.get("registry_id"),
        "bundle": str(ctx.run_dir.artifacts / "model"),
        "best_config": str(ctx.run_dir.artifacts / "best_config.yaml"),
        "trials": len(results["rows"]),
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tune``."""
    from ..jobs.runner import add_job_arguments
    from .commands import add_dataset_arguments, add_training_arguments
    from .train import TRAIN_PRESETS

    tune = subparsers.add_parser(
        "tune",
        help="search the training configuration (lr, optimiser, loss, augmentation, patch, spacing...) with Optuna",
        description="AutoML of the training configuration: Optuna (TPE sampler, median pruner on the validation "
        "curves) runs --trials trainings of --budget-steps steps each with settings drawn from the search space "
        "(default: learning rate and schedule, optimiser, loss and weights, augmentation strength, patch size, "
        "target spacing, CT window, batch size within the memory budget; --space FILE replaces it), then retrains "
        "the best configuration and registers it. The study lives in RUN/study.db (or --storage URL); stop with "
        "SIGTERM or Ctrl-C and continue with --resume: finished trials are kept, an interrupted one continues from "
        "its checkpoint. Results: RUN/artifacts/best_config.yaml (a train --config file), trials.csv/json, "
        "importances.json, dice_vs_trial.png, model/ (the final bundle) and summary.json.",
    )
    add_dataset_arguments(tune)
    tune.add_argument(
        "--arch",
        type=Path,
        default=None,
        metavar="ARCH.json",
        help="tune the training of a searched DiNTS architecture",
    )
    tune.add_argument(
        "--network", default=None, metavar="NAME", help="or of a MONAI baseline: unet, segresnet or swinunetr"
    )
    add_training_arguments(
        tune,
        presets=TRAIN_PRESETS,
        default_preset="tiny",
        preset_help="base settings, baseline sizes and final schedule: tiny (CPU demo; default), small, full",
        config_help="JSON or YAML file with fixed training settings (e.g. max_patch_size, memory_budget_mb)",
    )
    tune.add_argument("--trials", type=int, default=20, metavar="N", help="trials to finish (default: 20)")
    tune.add_argument(
        "--budget-steps",
        type=int,
        default=200,
        metavar="S",
        help="optimisation steps per trial (default: 200)",
    )
    tune.add_argument("--final-steps", type=int, default=None, metavar="F",
                      help="steps of the final retrain of the best configuration (default: the preset's schedule)")  # fmt: skip
    tune.add_argument(
        "--space",
        type=Path,
        default=None,
        metavar="FILE",
        help="search space (YAML or JSON) replacing the default",
    )
    tune.add_argument("--proxy-cases", type=int, default=None, metavar="N",
                      help="trials train on the first N training cases only (proxy data); the final retrain on all")  # fmt: skip
    tune.add_argument(
        "--pruner",
        choices=("median", "hyperband", "none"),
        default="median",
        help="Optuna pruner (default: median)",
    )
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="Optuna storage: an RDB URL (postgresql://..., mysql://..., sqlite:///...) shared by workers on "
                      "several machines, or journal:///PATH (journal file); default: sqlite in RUN/study.db")  # fmt: skip
    tune.add_argument(
        "--study-name",
        default=None,
        metavar="NAME",
        help="study name in --storage (default: from the run id)",
    )
    tune.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="K",
        help="worker processes on this machine sharing the study (default: 1)",
    )
    tune.add_argument(
        "--show-space",
        action="store_true",
        help="print the search space (default or --space) as YAML and exit",
    )
    tune.add_argument("--register", action=argparse.BooleanOptionalAction, default=True,
                      help="register the final model in the model registry (default: yes)")  # fmt: skip
    tune.add_argument(
        "--name",
        default=None,
        metavar="ID",
        help="registry id of the final model (default: tune-<network>-<run id>)",
    )
    add_job_arguments(tune)
    tune.set_defaults(func=tune_command)


def _space_of(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    from .commands import load_config_file

    if args.space is None:
        return None, "the default space"
    return check_space(load_config_file(args.space), str(args.space)), str(args.space)


def tune_command(args: argparse.Namespace) -> int:
    """Check the request, resolve it (or read it back when resuming) and run the tune as a job."""
    from .commands import _request, _run_training_job
    from .train import _check_request

    space, source = _space_of(args)
    if args.show_space:
        import yaml

        print(yaml.safe_dump(space or DEFAULT_SPACE, sort_keys=False), end="")
        return 0
    from .distributed import torchrun_rank

    for flag, value in (("--workers", args.workers), ("--trials", args.trials), ("--budget-steps", args.budget_steps),
                        ("--final-steps", args.final_steps), ("--proxy-cases", args.proxy_cases)):  # fmt: skip
        if value is not None and value < 1:
            raise MedSegNASError(f"{flag} must be at least 1, got {value}")
    if torchrun_rank()[2] > 1:
        raise JobError("tune runs its trials in worker processes (--workers K), not under torchrun")
    if args.run_dir is None and not args.detach:
        raise JobError(
            "tune writes its study, trials and model to a run directory: give --run-dir RUN, or --detach"
        )
    request = _request(args)
    request.update(
        {
            "arch": None if args.arch is None else str(args.arch.expanduser().absolute()),
            "network": args.network,
            "space": space,
            "space_source": source,
            "trials": args.trials,
            "budget_steps": args.budget_steps,
            "final_steps": args.final_steps,
            "proxy_cases": args.proxy_cases,
            "pruner": args.pruner,
            "storage": args.storage,
            "study_name": args.study_name,
            "register": bool(args.register),
            "name": args.name,
            "run_id": None if args.run_dir is None else Path(args.run_dir).absolute().name,
        }
    )
    _check_request(request)
    inputs = {"dataset": request["dataset"], **({"arch": request["arch"]} if request["arch"] else {})}

    def run(ctx, resolved, dist_info):
        return run_tune(ctx, resolved, dist_info, workers=args.workers)

    return _run_training_job(
        "tune", args, request, inputs, resolve_tune_config, run,
        resume_options=", --arch/--network, --space, --trials, --budget-steps, --final-steps, --proxy-cases, "
        "--pruner, --storage, --study-name, --register, --name",
    )  # fmt: skip


def _worker_main(argv: Sequence[str] | None = None) -> int:
    """An extra worker process of ``--workers K``: run trials of the tune in ``--run-dir`` until done.

    It writes only its trial folders; the tune's own process reports. It stops on SIGTERM (saving
    its trial's checkpoint and re-queueing the trial) and when its parent dies.
    """
    parser = argparse.ArgumentParser(prog="python -m MedSegNASLib.nas.tune")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    _die_with_parent()
    from .distributed import init_distributed

    job = RunDir(args.run_dir).read_job()
    resolved = job.get("config")
    if not isinstance(resolved, dict) or "tune" not in resolved:
        print(f"error: {args.run_dir} holds no tune configuration", file=sys.stderr)
        return 1
    ctx = JobContext(None)
    parent = os.getppid()

    def on_signal(signum, frame) -> None:
        ctx.request_stop(f"stop requested ({signal.Signals(signum).name})")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    original_progress = ctx.progress

    def progress(*a, **k) -> None:  # a worker whose tune process died stops too (macOS has no PDEATHSIG)
        if os.getppid() != parent:
            ctx.request_stop("the tune process ended")
        original_progress(*a, **k)

    ctx.progress = progress  # type: ignore[method-assign]
    ctx.display = _QuietDisplay()
    try:
        ran = TuneWorker(ctx, resolved, args.run_dir, init_distributed(args.device), report=False).work()
    except JobCancelled as exc:
        print(f"worker {args.index} cancelled: {exc}", file=sys.stderr)
        return 3
    except MedSegNASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"worker {args.index} ran {ran} trial(s)", file=sys.stderr)
    return 0


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent (the tune process) dies, even by kill -9."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    sys.exit(_worker_main())
