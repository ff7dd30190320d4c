"""``medsegnas evaluate --interactive``: the simulated-user protocol on held-out cases.

For each case and organ: start from the model's automatic result (``--start auto``) or from
nothing (``--start empty``); each next click goes to the centre of the largest error region
(:func:`~.simulate.next_click`), positive for a missed region, negative for a false positive; up to
``--max-clicks`` (20) clicks. Reported per organ (means over the cases): NoC@85 and NoC@90 (clicks
to reach Dice 0.85 / 0.90, the budget when never reached), Dice after each number of clicks
(``dice_per_click[k]`` after ``k`` clicks), seconds per click (one click set answered by the
session, the code the interactive worker runs).

The comparison: the same simulated user with a **paint brush** instead of the model, each click a
sphere of ``--brush-mm`` radius (Slicer's Paint effect; positive paints, negative erases) at the
same kind of place, from the same start: ``paint_dice_per_click`` and ``paint_noc85/90``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedSegNASError
from .clicks import Click, voxel_to_ras
from .simulate import clicks_to_reach, dice, next_click

__all__ = ["evaluate_interactive", "paint_stroke", "plot_dice_per_click"]


def paint_stroke(
    mask: np.ndarray, voxel: Sequence[int], positive: bool, affine: np.ndarray, radius_mm: float
) -> np.ndarray:
    """``mask`` with a sphere of ``radius_mm`` (physical, on the grid of ``affine``) painted or erased at ``voxel``."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    reach = np.ceil(radius_mm / spacing).astype(int)
    low = np.maximum(np.asarray(voxel) - reach, 0)
    high = np.minimum(np.asarray(voxel) + reach + 1, mask.shape)
    grid = np.indices(tuple(high - low)).reshape(3, -1).T + low
    offsets = (grid - np.asarray(voxel)) @ affine[:3, :3].T
    inside = (offsets**2).sum(axis=1) <= radius_mm**2
    out = mask.copy()
    chosen = grid[inside]
    out[chosen[:, 0], chosen[:, 1], chosen[:, 2]] = positive
    return out


def _simulate(
    start: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    max_clicks: int,
    apply: Callable[[list[Click], np.ndarray, Any], np.ndarray],
    label: str,
) -> tuple[list[float], list[float]]:
    """Dice after 0..max_clicks clicks and the seconds each click took."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    mask = start
    scores = [dice(mask, truth)]
    seconds: list[float] = []
    clicks: list[Click] = []
    while len(scores) <= max_clicks:
        click = next_click(mask, truth, spacing)
        if click is None:  # perfect: every further click keeps it
            scores += [1.0] * (max_clicks + 1 - len(scores))
            break
        ras = voxel_to_ras(click.voxel, affine)[0]
        clicks.append(Click(label, click.positive, (float(ras[0]), float(ras[1]), float(ras[2]))))
        started = time.perf_counter()
        mask = apply(clicks, mask, click)
        seconds.append(time.perf_counter() - started)
        scores.append(dice(mask, truth))
    return scores, seconds


def evaluate_interactive(
    model_spec: str | Path,
    dataset: str | Path,
    *,
    split: str = "validation",
    cases: Sequence[str] | None = None,
    start: str = "auto",
    max_clicks: int = 20,
    brush_mm: float = 5.0,
    region: int | None = None,
    change_at_click_only: bool = True,
    click_reach_mm: float | None = None,
    trust: bool = False,
    dataroot: str | Path | None = None,
    progress: Callable[..., None] | None = None,
    log: Callable[[str], None] | None = None,
    stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the simulated-user protocol; returns the report (see the module docstring).

    ``change_at_click_only``, ``click_reach_mm`` (None: the session's default, 0: no limit): see
    :class:`~.session.InteractiveSession` (a previous-mask model).

    Raises:
        MedSegNASError: a non-interactive model, an unusable dataset or split, or no organ of the
            model in the dataset's label table.
    """
    from ..data.io import read_volume, read_volumes
    from ..evaluation.evaluate import (
        _model_metadata,
        _recorded_validation,
        open_dataset,
        resolve_model_source,
        select_cases,
    )
    from .session import CLICK_REACH_MM, InteractiveSession, load_interactive_model

    reach = CLICK_REACH_MM if click_reach_mm is None else float(click_reach_mm)

    say = log or (lambda message: None)
    if max_clicks < 1:
        raise MedSegNASError(f"--max-clicks must be at least 1, got {max_clicks}")
    if reach < 0:
        raise MedSegNASError(f"--click-reach must be 0 (no limit) or a distance in mm, got {reach}")
    source = resolve_model_source(model_spec)
    model = load_interactive_model(source, trust=trust, region=region)
    data = open_dataset(dataset, dataroot)
    recorded = _recorded_validation(_model_metadata(Path(source))) if Path(source).is_dir() else None
    chosen, where = select_cases(data, split, cases, validation_names=recorded)
    say(f"{len(chosen)} case(s): {where}")
    dataset_values = {info.name.strip().lower(): info.value for info in data.labels}
    organs = [name for name in model.segment_names if name.strip().lower() in dataset_values]
    if not organs:
        raise MedSegNASError(
            f"none of the model's segments ({', '.join(model.segment_names)}) is a label of {data.path}"
        )
    per_case: list[dict[str, Any]] = []
    for done, case in enumerate(chosen, start=1):
        if stop:
            stop()
        image = (
            read_volume(case.images[0], dtype=np.float32)
            if len(case.images) == 1
            else read_volumes(case.images)
        )
        labels = np.asarray(read_volume(case.label).array[0])  # type: ignore[arg-type]
        session = InteractiveSession(
            model, image, start=start, change_at_click_only=change_at_click_only, click_reach_mm=reach
        )
        for organ in organs:
            truth = labels == dataset_values[organ.strip().lower()]
            initial = session.masks[organ].copy()

            def network_click(
                clicks: list[Click], mask: np.ndarray, click: Any, organ: str = organ, session: Any = session
            ) -> np.ndarray:
                session.update(clicks, organ)
                return session.masks[organ]

            def brush_click(
                clicks: list[Click], mask: np.ndarray, click: Any, affine: np.ndarray = image.affine
            ) -> np.ndarray:
                return paint_stroke(mask, click.voxel, click.positive, affine, brush_mm)

            scores, seconds = _simulate(initial, truth, image.affine, max_clicks, network_click, organ)
            paint, _ = _simulate(initial, truth, image.affine, max_clicks, brush_click, organ)
            per_case.append(
                {
                    "case": case.name,
                    "organ": organ,
                    "dice_per_click": [round(s, 4) for s in scores],
                    "paint_dice_per_click": [round(s, 4) for s in paint],
                    "seconds_per_click": float(np.mean(seconds)) if seconds else None,
                }
            )
            say(
                f"{case.name} {organ}: Dice {scores[0]:.3f} -> {scores[-1]:.3f} after {max_clicks} clicks "
                f"(paint {paint[-1]:.3f}); NoC@90 {clicks_to_reach(scores, 0.9, max_clicks)}"
            )
        if progress:
            progress(done, len(chosen), case=case.name)
    report: dict[str, Any] = {"organs": {}, "settings": {}, "cases": per_case}
    for organ in organs:
        rows = [r for r in per_case if r["organ"] == organ]
        curves = np.array([r["dice_per_click"] for r in rows])
        paints = np.array([r["paint_dice_per_click"] for r in rows])
        timed = [r["seconds_per_click"] for r in rows if r["seconds_per_click"] is not None]
        report["organs"][organ] = {
            "noc85": float(np.mean([clicks_to_reach(c, 0.85, max_clicks) for c in curves])),
            "noc90": float(np.mean([clicks_to_reach(c, 0.90, max_clicks) for c in curves])),
            "dice_per_click": [round(float(v), 4) for v in curves.mean(axis=0)],
            "seconds_per_click": round(float(np.mean(timed)), 4) if timed else None,
            "paint_noc85": float(np.mean([clicks_to_reach(c, 0.85, max_clicks) for c in paints])),
            "paint_noc90": float(np.mean([clicks_to_reach(c, 0.90, max_clicks) for c in paints])),
            "paint_dice_per_click": [round(float(v), 4) for v in paints.mean(axis=0)],
            "cases": len(rows),
        }
    organs_report = report["organs"].values()
    report["mean"] = {
        key: round(float(np.mean([o[key] for o in organs_report])), 4)
        for key in ("noc85", "noc90", "paint_noc85", "paint_noc90")
    }
    report["settings"] = {
        "model": str(model_spec),
        "dataset": str(dataset),
        "split": split,
        "cases_from": where,
        "start": start,
        "max_clicks": max_clicks,
        "brush_mm": brush_mm,
        "region": list(model.region) if model.region else None,
        "change_at_click_only": change_at_click_only if model.previous_mask else None,
        "click_reach_mm": reach if model.previous_mask and change_at_click_only else None,
    }
    return report


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table: one row per organ."""
    lines = [
        f"{'organ':<16} {'NoC@85':>7} {'NoC@90':>7} {'Dice@0':>7} {'@1':>6} {'@3':>6} {'@5':>6} {'s/click':>8} {'paint NoC@90':>13}"
    ]
    for organ, row in report["organs"].items():
        curve = row["dice_per_click"]
        at = [curve[k] if k < len(curve) else math.nan for k in (0, 1, 3, 5)]
        seconds = row["seconds_per_click"]
        lines.append(
            f"{organ:<16} {row['noc85']:>7.1f} {row['noc90']:>7.1f} {at[0]:>7.3f} {at[1]:>6.3f} {at[2]:>6.3f} "
            f"{at[3]:>6.3f} {(seconds if seconds is not None else math.nan):>8.3f} {row['paint_noc90']:>13.1f}"
        )
    return "\n".join(lines)


def plot_dice_per_click(report: dict[str, Any], path: str | Path) -> Path:
    """Dice vs clicks, one panel per organ: the model and the paint-brush comparison (PNG, written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    from ..atomic import write_atomic

    organs = list(report["organs"])
    # One Dice axis for all panels, from a tenth below the lowest point: differences of a few
    # hundredths (the usual gain of a click) stay visible; a start from nothing keeps 0.
    lowest = min(
        min(row["dice_per_click"] + row["paint_dice_per_click"]) for row in report["organs"].values()
    )
    bottom = max(0.0, math.floor((lowest - 0.05) * 10) / 10)
    figure = Figure(figsize=(3.2 * len(organs), 3.0), dpi=100)
    axes = figure.subplots(1, len(organs), squeeze=False)[0]
    for ax, organ in zip(axes, organs, strict=True):
        row = report["organs"][organ]
        ax.plot(
            range(len(row["dice_per_click"])), row["dice_per_click"], "o-", ms=3, label="interactive model"
        )
        ax.plot(
            range(len(row["paint_dice_per_click"])),
            row["paint_dice_per_click"],
            "s--",
            ms=3,
            label="paint strokes",
        )
        ax.axhline(0.9, color="grey", lw=0.8, ls=":")
        ax.set_title(organ)
        ax.set_xlabel("clicks")
        ax.set_ylim(bottom, 1)
    axes[0].set_ylabel("Dice")
    axes[0].legend(loc="best", fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))
