"""Pictures of DiNTS architectures: the decoded topology and path probabilities during a search.

Both functions draw on a bare :class:`matplotlib.figure.Figure` (no pyplot, no global state, works
in worker processes without a display) and write their files atomically. SVGs keep their text as
``<text>`` elements, so op names stay searchable and selectable.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from ..errors import MedSegNASError
from .decode import ArchCode

__all__ = ["OP_COLORS", "plot_path_probabilities", "plot_topology"]

#: Colour of each cell operation (Okabe-Ito palette: tells apart under common colour blindness).
OP_COLORS: dict[str, str] = {
    "skip": "#8c8c8c",
    "conv 3x3x3": "#D55E00",
    "P3D 3x3x1": "#0072B2",
    "P3D 3x1x3": "#009E73",
    "P3D 1x3x3": "#CC79A7",
    "conv 3x3": "#D55E00",
}
_ACTIVE_NODE = "#1f3b57"
_INACTIVE_NODE = "#d9d9d9"
_STEM_HEAD = "#555555"


def _fact_text(key: str, value: Any) -> str:
    """``epoch 12``, ``val_dice 0.82``, or for per-class Dice ``val Dice liver 0.82, spleen 0.76``."""
    if isinstance(value, dict):
        scores = ", ".join(
            f"{name} {score:.2f}" if isinstance(score, (int, float)) else f"{name} {score}"
            for name, score in value.items()
        )
        return f"val Dice {scores}" if key == "val_dice" else f"{key} {scores}"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


def _save_atomic(fig, path: str | PathLike[str], fmt: str, dpi: int = 150) -> Path:
    """Render ``fig`` as ``fmt`` (png, svg) to ``path`` atomically, cropped to its content."""
    import matplotlib

    # Text as <text> (searchable op names), stable ids and no date: same figure, same SVG bytes.
    style = {"svg.fonttype": "none", "svg.hashsalt": "medsegnas"}
    metadata = {"Date": None} if fmt == "svg" else None

    def render(handle) -> None:
        with matplotlib.rc_context(style):
            fig.savefig(
                handle,
                format=fmt,
                dpi=dpi,
                metadata=metadata,
                facecolor="white",
                bbox_inches="tight",
                pad_inches=0.15,
            )

    return write_atomic(path, render)


def _check_folder(*paths: str | PathLike[str] | None) -> None:
    for path in paths:
        if path is not None and not Path(path).parent.is_dir():
            raise MedSegNASError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def _level_label(level: int, use_downsample: bool, channels: int) -> str:
    scale = 2 ** (level + int(use_downsample))
    return f"level {level}\n1/{scale} res, {channels} ch"


def plot_topology(
    code: ArchCode,
    path_png: str | PathLike[str],
    *,
    path_svg: str | PathLike[str] | None = None,
    title: str | None = None,
    channel_mul: float = 1.0,
) -> Path:
    """Draw a decoded architecture as a grid: resolution levels as rows, blocks as columns.

    Level 0 (finest) is on top, under a row for the full-resolution image. Each active path is an
    arrow from its input node to its output node in the next column (straight: same level,
    slanted: one level up or down), coloured and labelled with its cell operation. Nodes no path
    reaches are faded. On the left the stem feeds the first column's active levels; on the right
    the head upsamples from the deepest active level of the last column to the segmentation.

    Args:
        code: the architecture.
        path_png: PNG to write (150 dpi).
        path_svg: also write an SVG (text kept as text).
        title: heading; by default blocks x depths, active path count and ``epoch``/``val_dice``
            from ``code.extra`` when present.
        channel_mul: width used for the channel counts in the row labels (1.0 = retrained network).
    Returns:
        ``path_png`` as a Path.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    _check_folder(path_png, path_svg)
    space = code.search_space
    blocks, depths = space.num_blocks, space.num_depths
    paths = code.active_paths()
    dx, image_y = 2.0, 1.25  # column spacing and the image row, in level units (levels at y = -level)
    stem_x, head_x = -1.7, blocks * dx + 1.7

    fig = Figure(figsize=(2.4 + (blocks + 2) * 1.3, 1.9 + (depths + 1) * 1.05))
    ax = fig.add_axes((0.09, 0.13, 0.89, 0.72))
    ax.set_xlim(stem_x - 0.9, head_x + 2.0)
    ax.set_ylim(-(depths - 1) - 0.35, image_y + 0.3)
    ax.axis("off")

    def arrow(start, end, color, *, width=1.6, style="-|>", dashed=False, shrink=9.0, z=2):
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle=style,
                mutation_scale=11,
                color=color,
                linewidth=width,
                linestyle=(0, (3, 2)) if dashed else "-",
                shrinkA=shrink,
                shrinkB=shrink,
                zorder=z,
            )
        )

    def box(x, y, text, width=1.3):
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - 0.2),
                width,
                0.4,
                boxstyle="round,pad=0.05",
                facecolor="#f2f2f2",
                edgecolor=_STEM_HEAD,
                linewidth=1.0,
                zorder=3,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, zorder=4)

    # Row labels and faint level guides.
    ax.text(stem_x - 0.85, image_y, "image\n1/1 res", ha="right", va="center", fontsize=8, color="#333333")
    for level in range(depths):
        ax.axhline(-level, color="#f0f0f0", linewidth=0.8, zorder=0)
        label = _level_label(level, space.use_downsample, space.channels(level, channel_mul))
        ax.text(stem_x - 0.85, -level, label, ha="right", va="center", fontsize=8, color="#333333")
    for block in range(blocks):
        ax.text(
            (block + 0.5) * dx, image_y - 0.05, f"block {block + 1}", ha="center", va="center", fontsize=8.5
        )

    # Stem: image -> every level of column 0 (levels the first block does not read get zeros).
    box(stem_x, image_y, "input")
    for level in range(depths):
        active = bool(code.node_a[0, level])
        arrow(
            (stem_x, image_y),
            (0, -level),
            _STEM_HEAD if active else _INACTIVE_NODE,
            width=1.0,
            dashed=not active,
        )
    ax.text(stem_x - 0.15, image_y - 0.45, "stem", ha="right", va="top", fontsize=8, color=_STEM_HEAD)

    # Head: last column -> upsampling chain from the deepest active level up to the segmentation.
    last = np.flatnonzero(code.node_a[blocks])
    deepest = int(last.max())
    for level in range(deepest + 1):
        ax.plot(head_x, -level, marker="s", markersize=9, color=_STEM_HEAD, zorder=3)
        if code.node_a[blocks, level]:
            arrow((blocks * dx, -level), (head_x, -level), _STEM_HEAD, width=1.0)
        if level > 0:
            arrow((head_x, -level), (head_x, -level + 1), _STEM_HEAD, width=1.0, shrink=6.0)
    arrow((head_x, 0), (head_x, image_y), _STEM_HEAD, width=1.0, shrink=6.0)
    box(head_x, image_y, "segmentation", width=1.75)
    ax.text(
        head_x + 0.25,
        -deepest / 2,
        "head: conv +\n2x upsample\nper level",
        ha="left",
        va="center",
        fontsize=7.5,
        color=_STEM_HEAD,
    )

    # Paths, coloured by operation; labels off the crossing point of the up/down pair.
    used_ops: list[str] = []
    for block, path, level_in, level_out, op in paths:
        color = OP_COLORS.get(op, "#333333")
        used_ops += [op] if op not in used_ops else []
        start, end = (block * dx, -level_in), ((block + 1) * dx, -level_out)
        arrow(start, end, color)
        t = 0.5 if level_in == level_out else 0.3
        ax.text(
            start[0] + t * (end[0] - start[0]),
            start[1] + t * (end[1] - start[1]),
            op,
            ha="center",
            va="center",
            fontsize=6.5,
            color=color,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
            gid=f"path-b{block}-p{path}",  # SVG group id, so tools (and tests) can find each path's label
        )

    # Nodes on top of the arrows.
    for column in range(blocks + 1):
        for level in range(depths):
            active = bool(code.node_a[column, level])
            ax.plot(
                column * dx,
                -level,
                marker="o",
                markersize=10 if active else 8,
                markerfacecolor=_ACTIVE_NODE if active else _INACTIVE_NODE,
                markeredgecolor="white" if active else "#bdbdbd",
                alpha=1.0 if active else 0.7,
                zorder=6,
            )

    handles = [
        Line2D([], [], color=OP_COLORS.get(op, "#333333"), linewidth=2, label=op) for op in space.op_names
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="", color=_ACTIVE_NODE, markersize=8, label="active node"),
        Line2D([], [], marker="o", linestyle="", color=_INACTIVE_NODE, markersize=8, label="inactive node"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(handles),
        frameon=False,
        fontsize=8,
    )

    if title is None:
        title = f"DiNTS architecture: {blocks} blocks x {depths} depths, {len(paths)} active paths"
        facts = [_fact_text(key, code.extra[key]) for key in ("epoch", "val_dice") if key in code.extra]
        if facts:
            title += " (" + ", ".join(facts) + ")"
    ax.set_title(title, fontsize=11, pad=4)

    if path_svg is not None:
        _save_atomic(fig, path_svg, "svg")
    return _save_atomic(fig, path_png, "png")


def plot_path_probabilities(
    history: Sequence[np.ndarray],
    path_png: str | PathLike[str],
    *,
    steps: Sequence[int] | None = None,
    step_name: str = "epoch",
    title: str | None = None,
) -> Path:
    """Heat map of path probabilities over a search: one row per (block, path), one column per record.

    Args:
        history: one (num_blocks, num_paths) array of path probabilities in [0, 1] per record, e.g.
            :func:`~MedSegNASLib.nas.decode.path_probabilities` after each epoch.
        path_png: PNG to write (150 dpi).
        steps: the epoch (or step) number of each record; default 0, 1, 2 ...
        step_name: what ``steps`` count, for the axis label.
        title: heading.
    Returns:
        ``path_png`` as a Path.
    """
    from matplotlib.figure import Figure

    _check_folder(path_png)
    if len(history) == 0:
        raise ValueError("plot_path_probabilities needs at least one record in history")
    records = [np.asarray(item, dtype=np.float64) for item in history]
    shape = records[0].shape
    if len(shape) != 2 or (shape[1] + 2) % 3 or any(r.shape != shape for r in records):
        shapes = sorted({r.shape for r in records})
        raise ValueError(
            f"history records must all be (num_blocks, 3 * num_depths - 2) arrays, got shapes {shapes}"
        )
    steps = list(range(len(records))) if steps is None else list(steps)
    if len(steps) != len(records):
        raise ValueError(f"{len(steps)} steps given for {len(records)} history records")
    blocks, num_paths = shape
    depths = (num_paths + 2) // 3
    levels = [((i + 1) // 3 - 1 + (i + 1) % 3, (i + 1) // 3) for i in range(num_paths)]

    grid = np.stack(records, axis=-1).reshape(blocks * num_paths, len(records))  # rows: block-major
    fig = Figure(figsize=(min(4.0 + 0.12 * len(records), 16.0), 1.6 + 0.13 * blocks * num_paths))
    ax = fig.add_axes((0.14, 0.06, 0.68, 0.86))
    image = ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        extent=(-0.5, len(records) - 0.5, blocks * num_paths - 0.5, -0.5),
    )
    for block in range(1, blocks):
        ax.axhline(block * num_paths - 0.5, color="white", linewidth=1.5)
    ax.set_yticks([block * num_paths + (num_paths - 1) / 2 for block in range(blocks)])
    ax.set_yticklabels([f"block {block + 1}" for block in range(blocks)], fontsize=8)
    ax.tick_params(axis="y", length=0)

    right = ax.secondary_yaxis("right")
    right.set_yticks(range(blocks * num_paths))
    names = {0: "", -1: " up", 1: " down"}
    right.set_yticklabels(
        [f"{a}\u2192{b}{names[np.sign(b - a)]}" for _ in range(blocks) for a, b in levels], fontsize=6
    )
    right.tick_params(length=0)

    tick_every = max(1, len(records) // 10)
    ax.set_xticks(range(0, len(records), tick_every))
    ax.set_xticklabels([str(steps[i]) for i in range(0, len(records), tick_every)], fontsize=8)
    ax.set_xlabel(step_name)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.12, shrink=min(1.0, 6.0 / fig.get_figheight()))
    bar.set_label("path probability")
    ax.set_title(
        title or f"DiNTS path probabilities: {blocks} blocks x {depths} depths (path: level in\u2192out)",
        fontsize=10,
        pad=8,
    )
    return _save_atomic(fig, path_png, "png")
