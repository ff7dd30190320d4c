"""The settings a search and a training run share, and how presets and config files fill them.

:class:`PipelineConfig` holds the schedule, data-pipeline and runtime fields of
:class:`~MedSegNASLib.nas.search.SearchConfig` and :class:`~MedSegNASLib.nas.train.TrainConfig`
with their rules; each subclass adds its own fields, defaults, presets and checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from ..errors import MedSegNASError
from .common import is_int, is_number, is_positive_number

__all__ = ["PipelineConfig", "check_pipeline_settings"]


@dataclass
class PipelineConfig:
    """Settings of a run of the data pipeline (:mod:`.pipeline`); a preset fills them, ``--config`` overrides.

    Schedule: ``epochs``, ``warmup_epochs`` (less than ``epochs``), ``val_interval`` (epochs between
    validations; the last epoch always validates), ``checkpoint_every`` (steps between checkpoints
    of ``checkpoints/last.pt`` besides the end of every epoch and stop requests; 0: epoch ends
    only).

    Data: ``batch_size`` (cases per step and process), ``crops_per_case`` (class-balanced patches
    per case), ``patch_size`` (voxels; None: automatic, at most ``max_patch_size`` and within
    ``memory_budget_mb``, None: 85% of the GPU or half the RAM up to 16 GB), ``spacing`` (mm along
    R, A, S; None: automatic), ``intensity`` (a :class:`~MedSegNASLib.data.preprocessing.IntensitySpec`
    dict; None: automatic), ``orientation``, ``augment``, ``fold`` / ``n_folds`` (validation fold),
    ``num_workers``, ``cache_rate``.

    Optimisation: ``momentum`` (SGD), ``lr_milestones`` (fractions of the epochs where the
    learning rate halves once more).

    Runtime: ``amp`` ("auto": on CUDA only; true on CPU is an error), ``deterministic``
    (deterministic GPU kernels, slower), ``val_overlap`` / ``val_sw_batch_size`` (sliding-window
    validation), ``seed``.

    Subclasses set :attr:`KIND` (the word in messages), :attr:`PRESETS`, the checks of their own
    fields (:attr:`INTEGER_MINIMUMS`, :attr:`POSITIVE_FIELDS`, :attr:`NON_NEGATIVE_FIELDS`,
    :meth:`extra_problems`, :meth:`check_values`) and may extend :meth:`preset_values`.
    """

    KIND: ClassVar[str] = "pipeline"
    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: ``(field, minimum)`` of the integer fields, in the order their problems are listed.
    INTEGER_MINIMUMS: ClassVar[tuple[tuple[str, int], ...]] = (
        ("epochs", 1),
        ("warmup_epochs", 0),
        ("val_interval", 1),
        ("checkpoint_every", 0),
        ("batch_size", 1),
        ("crops_per_case", 1),
        ("fold", 0),
        ("n_folds", 2),
        ("num_workers", 0),
        ("val_sw_batch_size", 1),
        ("seed", 0),
    )
    POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = ()
    NON_NEGATIVE_FIELDS: ClassVar[tuple[str, ...]] = ("momentum",)
    #: Why ``warmup_epochs`` must be less than ``epochs`` (appended to that problem).
    WARMUP_REASON: ClassVar[str] = ""

    preset: str = "full"
    epochs: int = 1
    warmup_epochs: int = 0
    val_interval: int = 1
    checkpoint_every: int = 0
    batch_size: int = 1
    crops_per_case: int = 1
    patch_size: list[int] | None = None
    max_patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    memory_budget_mb: float | None = None
    spacing: list[float] | None = None
    intensity: dict[str, Any] | None = None
    orientation: str = "RAS"
    augment: bool = True
    fold: int = 0
    n_folds: int = 5
    num_workers: int = 0
    cache_rate: float = 1.0
    momentum: float = 0.9
    lr_milestones: list[float] = field(default_factory=list)
    amp: bool | str = "auto"
    deterministic: bool = False
    val_overlap: float = 0.25
    val_sw_batch_size: int = 1
    seed: int = 0

    @classmethod
    def preset_values(cls, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """The field values of preset ``name`` with ``overrides`` (known keys, checked) applied."""
        return {"preset": name, **cls.PRESETS[name], **overrides}

    @classmethod
    def from_preset(cls, name: str, overrides: Mapping[str, Any] | None = None):
        """The preset ``name`` with ``overrides`` applied, checked."""
        if name not in cls.PRESETS:
            raise MedSegNASError(
                f"unknown {cls.KIND} preset {name!r}; choose one of {', '.join(cls.PRESETS)}"
            )
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise MedSegNASError(
                f"unknown {cls.KIND} config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        if "preset" in overrides and overrides["preset"] != name:
            raise MedSegNASError("choose the preset with --preset, not in the config file")
        config = cls(**cls.preset_values(name, overrides))
        config.check()
        return config

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """A configuration from :meth:`to_dict` (keys that are not fields are ignored), checked."""
        config = cls(**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}})
        config.check()
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def problems(self) -> list[str]:
        """What is wrong with the values, one sentence each (empty: nothing)."""
        problems: list[str] = []
        for name, minimum in self.INTEGER_MINIMUMS:
            value = getattr(self, name)
            if not is_int(value) or value < minimum:
                problems.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not problems and self.warmup_epochs >= self.epochs:
            problems.append(
                f"warmup_epochs ({self.warmup_epochs}) must be less than epochs ({self.epochs})"
                + self.WARMUP_REASON
            )
        for name in self.POSITIVE_FIELDS:
            if not is_positive_number(getattr(self, name)):
                problems.append(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in self.NON_NEGATIVE_FIELDS:
            value = getattr(self, name)
            if not is_number(value) or value < 0:
                problems.append(f"{name} must be a number >= 0, got {value!r}")
        if not is_number(self.cache_rate) or not 0 <= self.cache_rate <= 1:
            problems.append(f"cache_rate must be in [0, 1], got {self.cache_rate!r}")
        if not is_number(self.val_overlap) or not 0 <= self.val_overlap < 1:
            problems.append(f"val_overlap must be in [0, 1), got {self.val_overlap!r}")
        if not (
            isinstance(self.lr_milestones, list)
            and all(is_number(m) and 0 < m < 1 for m in self.lr_milestones)
        ):
            problems.append(
                f"lr_milestones must be a list of fractions in (0, 1), got {self.lr_milestones!r}"
            )
        check_pipeline_settings(self, problems)
        return problems + self.extra_problems()

    def extra_problems(self) -> list[str]:
        """The problems of a subclass' own fields."""
        return []

    def check_values(self) -> None:
        """Checks that need the other values valid (a subclass' compound fields); raise MedSegNASError."""

    def check(self) -> None:
        """Raise :class:`MedSegNASError` listing every invalid value."""
        problems = self.problems()
        if problems:
            raise MedSegNASError(f"invalid {self.KIND} config: " + "; ".join(problems))
        self.check_values()
        if self.intensity is not None:
            from ..data.preprocessing import IntensitySpec

            try:
                IntensitySpec(**self.intensity)
            except (TypeError, ValueError) as exc:
                raise MedSegNASError(f"invalid {self.KIND} config: intensity: {exc}") from None


def check_pipeline_settings(config: Any, problems: list[str]) -> None:
    """Append to ``problems`` what is wrong with the data-pipeline settings of ``config``.

    Search and training share these fields (``amp``, ``patch_size``, ``max_patch_size``,
    ``spacing``, ``memory_budget_mb``, ``intensity``) and their rules.
    """
    if config.amp not in ("auto", True, False):
        problems.append(f"amp must be 'auto', true or false, got {config.amp!r}")
    for name in ("patch_size", "max_patch_size"):
        value = getattr(config, name)
        if value is None and name == "patch_size":
            continue
        if not (isinstance(value, list) and len(value) == 3 and all(is_int(v) and v >= 1 for v in value)):
            problems.append(f"{name} must be a list of three positive integers, got {value!r}")
    if config.spacing is not None and not (
        isinstance(config.spacing, list)
        and len(config.spacing) == 3
        and all(is_positive_number(v) for v in config.spacing)
    ):
        problems.append(f"spacing must be three positive numbers (mm) or null, got {config.spacing!r}")
    if config.memory_budget_mb is not None and not is_positive_number(config.memory_budget_mb):
        problems.append(
            f"memory_budget_mb must be a positive number or null, got {config.memory_budget_mb!r}"
        )
    if config.intensity is not None and not isinstance(config.intensity, Mapping):
        problems.append(
            f"intensity must be a mapping such as {{'kind': 'zscore'}} or null, got {config.intensity!r}"
        )
