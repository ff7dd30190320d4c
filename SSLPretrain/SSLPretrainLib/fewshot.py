"""``sslpretrain fewshot``: Dice against the number of labelled cases, pretrained vs random initialisation.

For each number of labelled cases ``N`` in ``shots`` the same Swin UNETR is fine-tuned twice,
from the pretrained encoder and from random initialisation, with the same budget (steps), the
same seed and the same training cases, and both are scored on the same held-out cases:

* the labelled training cases are shuffled once with the seed (:func:`plan_fewshot`); the last
  ``eval_cases`` of that order are held out for evaluation and never trained on, the training
  sets are the first ``N`` of the order, so each is contained in the next (nested subsets);
* every fine-tuning is its own ``finetune`` run directory, ``RUN/runs/n<N>-<init>/``: a finished
  one is not run again and a stopped one continues from its checkpoint, so ``--resume`` after a
  stop or a crash goes on where it was;
* a run trains for ``budget`` steps (whole epochs: ``epochs = round(budget / steps per epoch)``)
  and is scored once, at its end, with the training job's validation (sliding-window Dice per
  class on the resampled held-out cases): no checkpoint is chosen by its held-out score;
* results: ``RUN/artifacts/fewshot.csv`` (one row per run), ``fewshot.md`` (the table of the
  issue: Dice of random init and of pretrained per ``N``) and ``fewshot.png`` (Dice against
  labelled cases), all written atomically and rewritten after each finished run.

Dice is the mean over foreground classes of the per-case Dice on the held-out cases, in percent
in the Markdown table and the plot, as a fraction in the CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from MedSegNASLib.atomic import write_atomic, write_text_atomic
from MedSegNASLib.errors import JobError, MedSegNASError

#: The two initialisations compared, in table order.
INITS: tuple[str, ...] = ("random", "pretrained")
#: Default numbers of labelled cases.
DEFAULT_SHOTS: tuple[int, ...] = (2, 4, 8)


def parse_shots(text: str | Sequence[int]) -> list[int]:
    """``"2,4,8"`` -> ``[2, 4, 8]`` (sorted, without repeats); every entry an integer >= 1."""
    items = text.split(",") if isinstance(text, str) else list(text)
    shots: set[int] = set()
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise MedSegNASError(
                f"--shots must be whole numbers separated by commas (e.g. 2,4,8), got {text!r}"
            ) from None
        if value < 1:
            raise MedSegNASError(f"--shots entries must be >= 1 labelled case, got {value}")
        shots.add(value)
    if not shots:
        raise MedSegNASError("--shots needs at least one number of labelled cases, e.g. 2,4,8")
    return sorted(shots)


@dataclass(frozen=True)
class FewShotPlan:
    """Which cases each fine-tuning trains on and which cases score them.

    Attributes:
        shots: numbers of labelled cases, ascending.
        order: the labelled case names in the seeded order the training sets are taken from.
        evaluation: the held-out case names (the end of ``order``), never trained on.
        seed: the seed of the order and of every fine-tuning.
    """

    shots: tuple[int, ...]
    order: tuple[str, ...]
    evaluation: tuple[str, ...]
    seed: int

    def training(self, shots: int) -> list[str]:
        """The ``shots`` training cases: the first ``shots`` of :attr:`order`."""
        return list(self.order[:shots])

    def to_dict(self) -> dict[str, Any]:
        return {
            "shots": list(self.shots),
            "order": list(self.order),
            "evaluation": list(self.evaluation),
            "seed": self.seed,
            "training": {str(n): self.training(n) for n in self.shots},
        }


def plan_fewshot(
    case_names: Sequence[str], shots: Sequence[int], *, seed: int = 0, eval_cases: int | None = None
) -> FewShotPlan:
    """Split labelled cases into nested training sets and one fixed held-out evaluation set.

    Args:
        case_names: the labelled training cases of the dataset (in dataset order).
        shots: numbers of labelled cases to fine-tune with.
        seed: shuffles the cases (``numpy.random.default_rng(seed)``).
        eval_cases: how many cases to hold out; default all that the largest training set
            leaves.

    Raises:
        MedSegNASError: too few labelled cases for the largest training set plus one held-out case.
    """
    shots = parse_shots(shots)
    names = list(case_names)
    if len(set(names)) != len(names):
        raise MedSegNASError(
            "the dataset has two labelled cases with the same name; case names must be unique"
        )
    largest = shots[-1]
    available = len(names) - largest
    if eval_cases is None:
        eval_cases = available
    if eval_cases < 1 or eval_cases > available:
        need = largest + max(eval_cases, 1)
        raise MedSegNASError(
            f"the dataset has {len(names)} labelled case(s); {largest} for training plus "
            f"{max(eval_cases, 1)} held out for evaluation need {need}: use smaller --shots"
            + (" or fewer --eval-cases" if eval_cases > 1 else "")
        )
    permutation = np.random.default_rng(int(seed)).permutation(len(names))
    order = [names[i] for i in permutation]
    evaluation = tuple(order[len(order) - eval_cases :])
    return FewShotPlan(tuple(shots), tuple(order[:largest]), evaluation, int(seed))


# --------------------------------------------------------------------------------------------
# Results: table and plot
# --------------------------------------------------------------------------------------------


@dataclass
class FewShotResult:
    """The score of one fine-tuning run on the held-out cases.

    Attributes:
        shots: labelled cases trained on.
        init: ``"pretrained"`` or ``"random"``.
        dice: foreground label name -> mean Dice (0..1) over the held-out cases (NaN: absent).
        run: the run directory (relative to the few-shot run directory).
        steps: training steps.
        seconds: wall time of the run (``None`` when unknown).
        loaded: encoder tensors loaded from the pretrained weights (pretrained runs).
    """

    shots: int
    init: str
    dice: dict[str, float]
    run: str = ""
    steps: int | None = None
    seconds: float | None = None
    loaded: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float:
        """Mean over the foreground classes with a finite Dice (NaN when there is none)."""
        values = [v for v in self.dice.values() if v is not None and math.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "shots": self.shots,
            "init": self.init,
            "dice": {
                k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in self.dice.items()
            },
            "mean_dice": None if not math.isfinite(self.mean_dice) else self.mean_dice,
            "run": self.run,
            "steps": self.steps,
            "seconds": self.seconds,
            "loaded": self.loaded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotResult:
        dice = {str(k): (float("nan") if v is None else float(v)) for k, v in dict(data["dice"]).items()}
        return cls(
            int(data["shots"]),
            str(data["init"]),
            dice,
            str(data.get("run", "")),
            data.get("steps"),
            data.get("seconds"),
            data.get("loaded"),
        )


def _label_names(results: Sequence[FewShotResult]) -> list[str]:
    names: list[str] = []
    for result in results:
        for name in result.dice:
            if name not in names:
                names.append(name)
    return names


def _sorted(results: Sequence[FewShotResult]) -> list[FewShotResult]:
    rank = {init: i for i, init in enumerate(INITS)}
    return sorted(results, key=lambda r: (r.shots, rank.get(r.init, len(rank)), r.init))


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def fewshot_csv(
    results: Sequence[FewShotResult], *, seed: int | None = None, eval_cases: int | None = None
) -> str:
    """CSV text: one row per run, Dice as fractions; columns ``labelled_cases, init, mean_dice,
    dice_<label>..., steps, seed, eval_cases, encoder_tensors_loaded, seconds, run``."""
    labels = _label_names(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "labelled_cases",
            "init",
            "mean_dice",
            *(f"dice_{name}" for name in labels),
            "steps",
            "seed",
            "eval_cases",
            "encoder_tensors_loaded",
            "seconds",
            "run",
        ]
    )
    for result in _sorted(results):
        writer.writerow(
            [
                result.shots,
                result.init,
                _number(result.mean_dice),
                *(_number(result.dice.get(name)) for name in labels),
                "" if result.steps is None else result.steps,
                "" if seed is None else seed,
                "" if eval_cases is None else eval_cases,
                "" if result.loaded is None else result.loaded,
                "" if result.seconds is None else f"{result.seconds:.1f}",
                result.run,
            ]
        )
    return buffer.getvalue()


def fewshot_markdown(
    results: Sequence[FewShotResult],
    *,
    evaluation: Sequence[str] = (),
    steps: int | None = None,
    seed: int | None = None,
    pretrained: str | None = None,
    command: str | None = None,
) -> str:
    """The Markdown report: Dice (%) of random init and pretrained per number of labelled cases,
    their difference, then Dice per class; a missing run shows as ``–``."""
    by_key = {(r.shots, r.init): r for r in results}
    shots = sorted({r.shots for r in results})
    labels = _label_names(results)
    lines = ["# Few-shot fine-tuning: pretrained encoder vs random initialisation", ""]
    facts = []
    if evaluation:
        facts.append(
            f"Dice (%) on {len(evaluation)} held-out case(s) ({', '.join(evaluation)}), never trained on"
        )
    else:
        facts.append("Dice (%) on the held-out cases")
    facts.append("mean over the foreground classes")
    if steps is not None:
        facts.append(f"every run {steps} training steps")
    if seed is not None:
        facts.append(f"seed {seed}")
    lines.append("; ".join(facts) + ". Both initialisations train on the same cases with the same settings.")
    if pretrained:
        lines += ["", f"Pretrained encoder: {pretrained}."]
    if command:
        lines += ["", "Reproduce with:", "", f"    {command}"]
    lines += [
        "",
        "| labelled cases | random init Dice | pretrained Dice | difference |",
        "|---:|---:|---:|---:|",
    ]
    for n in shots:
        random_result, pretrained_result = by_key.get((n, "random")), by_key.get((n, "pretrained"))
        random_dice = random_result.mean_dice if random_result else None
        pretrained_dice = pretrained_result.mean_dice if pretrained_result else None
        if (
            random_dice is not None
            and pretrained_dice is not None
            and math.isfinite(random_dice + pretrained_dice)
        ):
            difference = f"{100 * (pretrained_dice - random_dice):+.2f}"
        else:
            difference = "–"
        lines.append(f"| {n} | {_percent(random_dice)} | {_percent(pretrained_dice)} | {difference} |")
    if labels:
        lines += [
            "",
            "Per class (Dice %):",
            "",
            "| labelled cases | init | " + " | ".join(labels) + " |",
            "|---:|---|" + "---:|" * len(labels),
        ]
        for result in _sorted(results):
            cells = " | ".join(_percent(result.dice.get(name)) for name in labels)
            lines.append(f"| {result.shots} | {result.init} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_fewshot(
    results: Sequence[FewShotResult], path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw mean Dice (%) against labelled cases, one line per initialisation, to a PNG (atomically).

    Uses a bare :class:`matplotlib.figure.Figure` (Agg rendering, no pyplot state), so it works
    in worker processes without a display.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.add_subplot()
    styles = {"random": ("#7f7f7f", "s", "random init"), "pretrained": ("#1f77b4", "o", "pretrained encoder")}
    shots = sorted({r.shots for r in results})
    for init in INITS:
        points = sorted(
            (r.shots, 100 * r.mean_dice) for r in results if r.init == init and math.isfinite(r.mean_dice)
        )
        if not points:
            continue
        color, marker, label = styles[init]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker=marker, color=color, label=label, linewidth=1.8)
        for x, y in points:
            ax.annotate(
                f"{y:.1f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
                color=color,
            )
    if shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(n) for n in shots])
        ax.set_xlim(shots[0] / 1.3, shots[-1] * 1.3)
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel("Dice on held-out cases (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Few-shot fine-tuning of Swin UNETR")
    if any(math.isfinite(r.mean_dice) for r in results):
        ax.legend(loc="best")  # away from the points, wherever they lie
    fig.tight_layout()
    return write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=120, facecolor="white"))


def write_fewshot_report(
    results: Sequence[FewShotResult],
    folder: str | os.PathLike[str],
    *,
    evaluation: Sequence[str] = (),
    steps: int | None = None,
    seed: int | None = None,
    pretrained: str | None = None,
    command: str | None = None,
) -> dict[str, Path]:
    """Write ``fewshot.csv``, ``fewshot.md`` and ``fewshot.png`` into ``folder`` (each atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / "fewshot.csv", "markdown": folder / "fewshot.md", "plot": folder / "fewshot.png"}
    write_text_atomic(paths["csv"], fewshot_csv(results, seed=seed, eval_cases=len(evaluation) or None))
    write_text_atomic(
        paths["markdown"],
        fewshot_markdown(
            results, evaluation=evaluation, steps=steps, seed=seed, pretrained=pretrained, command=command
        ),
    )
    plot_fewshot(results, paths["plot"])
    return paths


def read_fewshot_csv(text: str) -> list[FewShotResult]:
    """The rows of a ``fewshot.csv`` (as :func:`fewshot_csv` writes it) back as results.

    Raises:
        MedSegNASError: the text is not a few-shot CSV (a missing column, a non-number).
    """
    reader = csv.DictReader(io.StringIO(text))
    needed = {"labelled_cases", "init", "mean_dice"}
    if reader.fieldnames is None or not needed <= set(reader.fieldnames):
        raise MedSegNASError(f"not a few-shot table: its columns must include {', '.join(sorted(needed))}")
    labels = [name[len("dice_") :] for name in reader.fieldnames if name.startswith("dice_")]
    results = []
    for row in reader:
        try:
            dice = {
                name: float(row[f"dice_{name}"]) if row[f"dice_{name}"] else float("nan") for name in labels
            }
            results.append(
                FewShotResult(
                    int(row["labelled_cases"]),
                    row["init"],
                    dice,
                    row.get("run", ""),
                    int(row["steps"]) if row.get("steps") else None,
                    float(row["seconds"]) if row.get("seconds") else None,
                    int(row["encoder_tensors_loaded"]) if row.get("encoder_tensors_loaded") else None,
                )
            )
        except (KeyError, ValueError) as exc:
            raise MedSegNASError(f"not a few-shot table: row {reader.line_num}: {exc}") from None
    return results


@dataclass(frozen=True)
class SeedSummary:
    """Mean Dice of one (labelled cases, initialisation) over seeds, and of the paired difference.

    Attributes:
        shots: labelled training cases.
        random, pretrained: mean Dice (0..1) of each initialisation, one value per seed (seed order).
        seeds: the seeds that have both runs.
    """

    shots: int
    seeds: tuple[int, ...]
    random: tuple[float, ...]
    pretrained: tuple[float, ...]

    @staticmethod
    def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
        array = np.asarray(values, dtype=float)
        # Sample standard deviation (ddof=1): the spread another seed would show; 0 for one seed.
        return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0

    @property
    def differences(self) -> tuple[float, ...]:
        """pretrained - random, per seed (paired: same cases, same seed)."""
        return tuple(p - r for p, r in zip(self.pretrained, self.random, strict=True))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labelled_cases": self.shots, "seeds": list(self.seeds)}
        for name, values in (
            ("random", self.random),
            ("pretrained", self.pretrained),
            ("difference", self.differences),
        ):
            mean, sd = self._mean_sd(values)
            out[name] = {"per_seed": list(values), "mean": mean, "sd": sd}
        out["pretrained_ahead"] = sum(d > 0 for d in self.differences)
        return out


def summarize_seeds(results_by_seed: Mapping[int, Sequence[FewShotResult]]) -> list[SeedSummary]:
    """Pair the two initialisations per seed and number of labelled cases, across seeds.

    A seed counts for a number of labelled cases only when both of its runs finished with a
    finite Dice, so every difference is paired.
    """
    shots = sorted({r.shots for rows in results_by_seed.values() for r in rows})
    summaries = []
    for n in shots:
        seeds, random_dice, pretrained_dice = [], [], []
        for seed in sorted(results_by_seed):
            by_init = {r.init: r.mean_dice for r in results_by_seed[seed] if r.shots == n}
            pair = by_init.get("random"), by_init.get("pretrained")
            if all(v is not None and math.isfinite(v) for v in pair):
                seeds.append(int(seed))
                random_dice.append(float(pair[0]))
                pretrained_dice.append(float(pair[1]))
        if seeds:
            summaries.append(SeedSummary(n, tuple(seeds), tuple(random_dice), tuple(pretrained_dice)))
    return summaries


def seeds_markdown(summaries: Sequence[SeedSummary]) -> str:
    """The few-shot table over seeds: Dice (%) mean ± sd per initialisation and of the difference."""
    lines = [
        "| labelled cases | seeds | random init Dice | pretrained Dice | difference | pretrained ahead |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        data = summary.to_dict()
        cells = [f"{100 * data[k]['mean']:.1f} ± {100 * data[k]['sd']:.1f}" for k in ("random", "pretrained")]
        diff = data["difference"]
        lines.append(
            f"| {summary.shots} | {len(summary.seeds)} | {cells[0]} | {cells[1]} | "
            f"{100 * diff['mean']:+.1f} ± {100 * diff['sd']:.1f} | "
            f"{data['pretrained_ahead']} of {len(summary.seeds)} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

#: Job kind: names run directories ``fewshot-<date>-<id>``.
JOB_KIND = "fewshot"
#: Folder of the fine-tuning runs inside the few-shot run directory.
RUNS_FOLDER = "runs"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshot``."""
    from MedSegNASLib.jobs import add_job_arguments

    from .finetune import add_common_arguments

    parser = subparsers.add_parser(
        "fewshot",
        help="Dice against the number of labelled cases: pretrained encoder vs random initialisation",
        description="For each number of labelled cases in --shots, fine-tune a Swin UNETR from the pretrained "
        "encoder and from random initialisation with the same budget (steps), seed and training cases, "
        "score both on the same held-out cases, and write RUN/artifacts/fewshot.csv, fewshot.md and "
        "fewshot.png. Every fine-tuning is its own run directory under RUN/runs/; --resume continues after a "
        "stop without redoing finished runs.",
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--shots",
        default=",".join(map(str, DEFAULT_SHOTS)),
        metavar="N,N,...",
        help="numbers of labelled training cases (default: 2,4,8)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        metavar="STEPS",
        help="training steps of every run (default: the preset's epochs over the largest training set)",
    )
    parser.add_argument(
        "--eval-cases",
        type=int,
        default=None,
        metavar="K",
        help="held-out cases to score on (default: every labelled case the largest training set leaves)",
    )
    add_job_arguments(parser)
    parser.set_defaults(func=fewshot_command, job_entry=["-m", "SSLPretrainLib.cli"])


def epochs_for_budget(budget: int, cases: int, batch_size: int) -> int:
    """Epochs that spend about ``budget`` steps on ``cases`` training cases (at least 1).

    One epoch is ``ceil(cases / batch_size)`` steps (one process), so the steps actually taken,
    ``epochs * ceil(cases / batch_size)``, differ from ``budget`` by less than half an epoch.
    """
    per_epoch = max(1, math.ceil(cases / batch_size))
    return max(1, int(round(budget / per_epoch)))


def run_name(shots: int, init: str) -> str:
    """``n002-pretrained``: the fine-tuning run of ``shots`` cases from ``init``."""
    return f"n{shots:03d}-{init}"


def _command_line(request: Mapping[str, Any], budget: int) -> str:
    parts = [
        "sslpretrain fewshot",
        f"--dataset {request['dataset']}",
        f"--pretrained {request['pretrained']}",
        "--run-dir RUN",
        f"--shots {','.join(map(str, request['shots']))}",
        f"--budget {budget}",
        f"--preset {request['preset']}",
        f"--seed {request['seed']}",
    ]
    if request.get("eval_cases") is not None:
        parts.append(f"--eval-cases {request['eval_cases']}")
    if request.get("config"):
        parts.append(f"--config {request['config']}")
    return " ".join(parts)


def resolve_fewshot(request: Mapping[str, Any]) -> dict[str, Any]:
    """Check the request and fix everything the runs share: plan, budget, pretrained encoder.

    ``request``: ``dataset``, ``dataroot``, ``pretrained``, ``preset``, ``overrides``, ``config``
    (path, for the record), ``seed``, ``shots``, ``budget`` (None: default), ``eval_cases``.
    """
    from MedSegNASLib.nas.train import TrainConfig

    from .finetune import labelled_case_names, pretrained_facts

    overrides = dict(request.get("overrides") or {})
    for key in ("epochs", "val_interval"):
        if key in overrides:
            raise MedSegNASError(
                f"--config may not set {key}: every few-shot run trains for --budget steps and is scored once, "
                "at its end"
            )
    config = TrainConfig.from_preset(str(request["preset"]), overrides)
    seed = int(request["seed"]) if request.get("seed") is not None else int(config.seed)
    names = labelled_case_names(request["dataset"], request.get("dataroot"))
    plan = plan_fewshot(names, request["shots"], seed=seed, eval_cases=request.get("eval_cases"))
    budget = request.get("budget")
    if budget is None:
        budget = config.epochs * math.ceil(plan.shots[-1] / config.batch_size)
    if int(budget) != budget or budget < 1:
        raise MedSegNASError(f"--budget must be a whole number of steps >= 1, got {budget!r}")
    facts = pretrained_facts(request["pretrained"])
    request = {**dict(request), "seed": seed, "budget": int(budget)}
    return json.loads(
        json.dumps(
            {
                "request": request,
                "plan": plan.to_dict(),
                "budget": int(budget),
                "batch_size": config.batch_size,
                "pretrained": facts,
                "command": _command_line(request, int(budget)),
            }
        )
    )


def _sub_request(fewshot: Mapping[str, Any], shots: int) -> dict[str, Any]:
    """The training request of a run on `shots` cases (the same for both initialisations)."""
    from .finetune import train_request

    request, plan = fewshot["request"], fewshot["plan"]
    epochs = epochs_for_budget(fewshot["budget"], shots, fewshot["batch_size"])
    overrides = {**dict(request.get("overrides") or {}), "epochs": epochs, "val_interval": epochs}
    return train_request(
        dataset=request["dataset"],
        dataroot=request.get("dataroot"),
        preset=request["preset"],
        overrides=overrides,
        seed=request["seed"],
        # Both inits build the same network: the pretrained encoder's feature size.
        feature_size=fewshot["pretrained"]["feature_size"],
        train_cases=plan["training"][str(shots)],
        validation_cases=plan["evaluation"],
        name=None,
        register=False,
    )


def _read_result(run_path: Path) -> dict[str, Any]:
    from MedSegNASLib.jobs import RunDir

    status = RunDir(run_path).read_status()
    result = dict(status.get("result") or {})
    summary_path = run_path / "artifacts" / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        result.setdefault("steps", summary.get("steps"))
        result.setdefault("wall_s", summary.get("wall_s"))
    return result


def _run_one(
    ctx, fewshot: Mapping[str, Any], shots: int, init: str, run_path: Path, device: str, debug: bool
) -> dict[str, Any]:
    """Fine-tune (or finish, or reuse) the run of ``shots`` cases from ``init``; its result."""
    from MedSegNASLib.jobs import EXIT_CANCELLED, EXIT_DONE, JobCancelled, RunDir, run_job_command
    from MedSegNASLib.nas.distributed import init_distributed

    from .finetune import JOB_KIND as FINETUNE_KIND
    from .finetune import resolve_finetune_config, run_finetune

    sub = RunDir(run_path)
    status = sub.read_status() if sub.is_run_dir() else {}
    if status.get("state") == "done":
        return _read_result(run_path)
    request = _sub_request(fewshot, shots)
    recorded = (sub.read_job() or {}).get("config") if sub.is_run_dir() else None
    resume = isinstance(recorded, dict) and "finetune" in recorded and bool(status)
    if resume:
        if recorded["finetune"]["request"] != json.loads(json.dumps(request)):
            raise MedSegNASError(
                f"{run_path} was started with other settings than this few-shot run; delete it to start it over"
            )
        resolved = recorded
        ctx.log(f"{run_path.name}: resuming the stopped fine-tuning run")
    else:
        if sub.is_run_dir():  # failed before training started: start it over
            import shutil

            shutil.rmtree(run_path)
        pretrained = fewshot["pretrained"] if init == "pretrained" else None
        resolved = resolve_finetune_config(request, pretrained=pretrained, device_type=device, log=None)
        ctx.log(
            f"{run_path.name}: fine-tuning from {'the pretrained encoder' if pretrained else 'random initialisation'} "
            f"on {shots} case(s), {resolved['train']['epochs']} epoch(s)"
        )

    def body(sub_ctx) -> dict[str, Any]:
        return run_finetune(sub_ctx, resolved, init_distributed(device))

    args = argparse.Namespace(run_dir=run_path, resume=resume, detach=False, debug=debug)
    code = run_job_command(FINETUNE_KIND, args, body, resolved, inputs={"dataset": request["dataset"]})
    if code == EXIT_CANCELLED:
        raise JobCancelled(f"stopped during {run_path.name}; continue with --resume")
    if code != EXIT_DONE:
        error = sub.read_status().get("error") or f"exit code {code}"
        raise MedSegNASError(f"fine-tuning run {run_path} failed: {error}")
    return _read_result(run_path)


def _result_row(shots: int, init: str, run: str, result: Mapping[str, Any]) -> FewShotResult:
    dice = {
        str(k): (float("nan") if v is None else float(v))
        for k, v in (result.get("best_val_dice") or {}).items()
    }
    init_report = result.get("init") or {}
    return FewShotResult(
        shots=shots,
        init=init,
        dice=dice,
        run=run,
        steps=result.get("steps"),
        seconds=result.get("wall_s"),
        loaded=init_report.get("loaded") if init == "pretrained" else None,
    )


def run_fewshot(
    ctx, fewshot: Mapping[str, Any], *, device: str = "auto", debug: bool = False
) -> dict[str, Any]:
    """The job body: every (shots, init) fine-tuning in turn, then the table and the plot."""
    if ctx.run_dir is None:
        raise MedSegNASError("fewshot needs a run directory (--run-dir RUN) for its fine-tuning runs")
    plan = fewshot["plan"]
    shots_list = [int(n) for n in plan["shots"]]
    runs_root = ctx.run_dir.path / RUNS_FOLDER
    runs_root.mkdir(parents=True, exist_ok=True)
    artifacts = ctx.run_dir.artifacts
    pretrained = fewshot["pretrained"]
    ctx.log(
        f"few-shot fine-tuning: {len(shots_list)} training set size(s) {shots_list} x (random, pretrained), "
        f"{fewshot['budget']} steps each, scored on {len(plan['evaluation'])} held-out case(s): "
        f"{', '.join(plan['evaluation'])}"
    )
    jobs = [(n, init) for n in shots_list for init in INITS]
    results: list[FewShotResult] = []
    described = (
        f"{pretrained['path']} ({pretrained['layout']} layout, feature size {pretrained['feature_size']})"
    )
    paths: dict[str, Path] = {}
    for done, (shots, init) in enumerate(jobs, start=1):
        ctx.raise_if_stop_requested()
        name = run_name(shots, init)
        result = _run_one(ctx, fewshot, shots, init, runs_root / name, device, debug)
        row = _result_row(shots, init, f"{RUNS_FOLDER}/{name}", result)
        results.append(row)
        paths = write_fewshot_report(
            results,
            artifacts,
            evaluation=plan["evaluation"],
            steps=fewshot["budget"],
            seed=fewshot["request"]["seed"],
            pretrained=described,
            command=fewshot["command"],
        )
        mean = row.mean_dice
        ctx.progress(
            done,
            len(jobs),
            stage="fewshot",
            labelled=shots,
            init=init,
            dice=None if not math.isfinite(mean) else round(mean, 4),
        )
    for kind, path in paths.items():
        ctx.artifact(path, "table" if kind != "plot" else "image")
    return {
        "results": [r.to_dict() for r in results],
        "csv": ctx.run_dir.relative(paths["csv"]),
        "markdown": ctx.run_dir.relative(paths["markdown"]),
        "plot": ctx.run_dir.relative(paths["plot"]),
        "evaluation": list(plan["evaluation"]),
    }


def fewshot_command(args: argparse.Namespace) -> int:
    """Resolve the plan (or read it back when resuming) and run the few-shot comparison as a job."""
    from MedSegNASLib.jobs import RunDir, run_job_command
    from MedSegNASLib.nas.distributed import resolve_device, torchrun_rank

    from .finetune import read_train_overrides

    if torchrun_rank()[2] > 1:
        raise JobError(
            "fewshot runs as one process (its fine-tuning runs one after the other); start it without torchrun"
        )
    if args.run_dir is None and not args.detach:
        raise JobError(
            "fewshot writes its runs, table and plot to a run directory: give --run-dir RUN, or --detach"
        )
    if args.detach:
        return run_job_command(JOB_KIND, args, lambda ctx: None, None)  # type: ignore[arg-type]
    if args.resume:
        run = RunDir(args.run_dir)
        job = run.read_job() if run.is_run_dir() else {}
        fewshot = (job or {}).get("config")
        if (job or {}).get("kind") != JOB_KIND or not isinstance(fewshot, dict) or "plan" not in fewshot:
            raise JobError(
                f"cannot resume {args.run_dir}: it holds no few-shot run that got as far as its plan"
            )
    else:
        if args.dataset is None or args.pretrained is None:
            raise MedSegNASError("fewshot needs --dataset DATA and --pretrained RUN_OR_FILE")
        request = {
            "dataset": str(args.dataset.expanduser().absolute()),
            "dataroot": None if args.dataroot is None else str(args.dataroot.expanduser().absolute()),
            "pretrained": str(args.pretrained.expanduser().absolute()),
            "preset": args.preset,
            "overrides": read_train_overrides(args.config),
            "config": None if args.config is None else str(args.config.expanduser().absolute()),
            "seed": args.seed,
            "shots": parse_shots(args.shots),
            "budget": args.budget,
            "eval_cases": args.eval_cases,
        }
        fewshot = resolve_fewshot(request)
    device = resolve_device(args.device).type
    inputs = {"dataset": fewshot["request"]["dataset"], "pretrained": fewshot["pretrained"]["path"]}
    return run_job_command(
        JOB_KIND,
        args,
        lambda ctx: run_fewshot(ctx, fewshot, device=device, debug=bool(getattr(args, "debug", False))),
        fewshot,
        inputs=inputs,
    )
