#!/usr/bin/env python3
"""Render the extension's and the modules' icons (128x128 RGBA PNG) with matplotlib.

    python Resources/make_icons.py            # writes the three icons next to their modules
    python Resources/make_icons.py --out DIR  # writes them into DIR instead (for a preview)

Icons are drawn from code so that they can be changed and re-rendered without an image editor:

- ``MedSegNAS/Resources/Icons/MedSegNAS.png``: an organ outline with a segmented region, under a
  searched-network motif (DiNTS-like grid of cells: grey candidate edges, the chosen path in color).
- ``SSLPretrain/Resources/Icons/SSLPretrain.png``: a CT-like slice cut into patches, some masked
  (self-supervised inpainting), with the regular and the shifted Swin windows drawn over it.
- ``Resources/Icons/MedSegNAS.png``: the extension icon, both motifs on one rounded tile.
- ``MedSegNAS/Resources/Icons/SegmentEditorMedSegNAS.png``: the Segment Editor effect's button: the
  organ with its segment, a positive (green +) and a negative (red -) click.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, and the same pixels everywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Circle, FancyBboxPatch, Polygon, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ICON_SIZE_PX = 128
_DPI = 100

# Colors shared by the icons (Slicer's light and dark themes both show them well).
ORGAN_FILL = "#c8523f"
ORGAN_EDGE = "#7a2418"
SEGMENT_FILL = "#f2b134"
PATH_COLOR = "#1f77d0"
CANDIDATE_COLOR = "#8a8f98"
MASK_COLOR = "#6a4bc4"
WINDOW_COLOR = "#f2b134"
SHIFTED_WINDOW_COLOR = "#28a07a"
CLICK_POSITIVE = "#2e9e3e"
CLICK_NEGATIVE = "#d03232"


def organ_outline(center: tuple[float, float], scale: float, n_points: int = 200) -> np.ndarray:
    """Closed kidney/liver-like outline, ``(n_points, 2)`` in axis units (the axes span 0..1)."""
    theta = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
    # A circle bent by low-order harmonics: the cos(theta) term makes the hilum notch on one side.
    radius = 1.0 + 0.18 * np.cos(2 * theta) - 0.22 * np.cos(theta) + 0.06 * np.sin(3 * theta)
    x = center[0] + scale * 1.15 * radius * np.cos(theta)
    y = center[1] + scale * 0.85 * radius * np.sin(theta)
    return np.stack([x, y], axis=1)


def draw_organ(ax: Axes, center: tuple[float, float], scale: float) -> None:
    """An organ with an inner segmented region (what the model predicts)."""
    ax.add_patch(
        Polygon(
            organ_outline(center, scale),
            closed=True,
            facecolor=ORGAN_FILL,
            edgecolor=ORGAN_EDGE,
            linewidth=2.2,
            alpha=0.95,
        )
    )
    inner = organ_outline((center[0] + 0.04 * scale, center[1] - 0.05 * scale), 0.55 * scale)
    ax.add_patch(Polygon(inner, closed=True, facecolor=SEGMENT_FILL, edgecolor="white", linewidth=1.2))


def draw_search_graph(ax: Axes, x0: float, y0: float, width: float, height: float) -> None:
    """A DiNTS-like search space: cells on a (resolution level x layer) grid, one path chosen."""
    n_layers, n_levels = 4, 3
    xs = np.linspace(x0, x0 + width, n_layers)
    ys = np.linspace(y0 + height, y0, n_levels)  # level 0 (full resolution) on top
    chosen = [0, 1, 2, 1]  # resolution level of the chosen cell in each layer
    for layer in range(n_layers - 1):
        for level in range(n_levels):
            for nxt in (level - 1, level, level + 1):
                if 0 <= nxt < n_levels:
                    ax.plot(
                        [xs[layer], xs[layer + 1]],
                        [ys[level], ys[nxt]],
                        color=CANDIDATE_COLOR,
                        linewidth=1.3,
                        alpha=0.7,
                        solid_capstyle="round",
                    )
    ax.plot(
        xs,
        [ys[level] for level in chosen],
        color=PATH_COLOR,
        linewidth=4.2,
        solid_capstyle="round",
        solid_joinstyle="round",
    )
    for layer in range(n_layers):
        for level in range(n_levels):
            on_path = chosen[layer] == level
            ax.plot(
                xs[layer],
                ys[level],
                marker="o",
                markersize=9.5 if on_path else 6.5,
                markerfacecolor=PATH_COLOR if on_path else "white",
                markeredgecolor="white" if on_path else CANDIDATE_COLOR,
                markeredgewidth=1.6,
            )


def draw_patch_grid(ax: Axes, x0: float, y0: float, size: float, n_patches: int = 6) -> None:
    """A body slice cut into ``n_patches`` x ``n_patches`` patches with masked ones and Swin windows."""
    # The slice: a bright body ellipse with a darker organ on a black background, as in a CT.
    pixels = 96
    yy, xx = np.mgrid[-1 : 1 : pixels * 1j, -1 : 1 : pixels * 1j]
    body = (xx / 0.92) ** 2 + (yy / 0.75) ** 2 < 1.0
    organ = ((xx + 0.25) / 0.38) ** 2 + ((yy - 0.05) / 0.3) ** 2 < 1.0
    spine = (xx**2 + (yy + 0.5) ** 2) < 0.03
    image = np.where(body, 0.62, 0.04) - 0.22 * organ + 0.35 * spine
    image += 0.05 * np.sin(9 * xx) * np.cos(7 * yy) * body  # a little texture
    ax.imshow(
        np.clip(image, 0, 1),
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(x0, x0 + size, y0, y0 + size),
        origin="lower",
        interpolation="bilinear",
        zorder=1,
    )
    step = size / n_patches
    masked = {(0, 3), (1, 1), (2, 4), (3, 0), (3, 3), (4, 2), (5, 5), (1, 5)}
    for row in range(n_patches):
        for col in range(n_patches):
            if (row, col) in masked:
                ax.add_patch(
                    Rectangle(
                        (x0 + col * step, y0 + row * step),
                        step,
                        step,
                        facecolor=MASK_COLOR,
                        edgecolor="none",
                        alpha=0.92,
                        zorder=2,
                    )
                )
    for k in range(n_patches + 1):  # patch borders
        ax.plot([x0 + k * step] * 2, [y0, y0 + size], color="white", linewidth=0.7, alpha=0.55, zorder=3)
        ax.plot([x0, x0 + size], [y0 + k * step] * 2, color="white", linewidth=0.7, alpha=0.55, zorder=3)
    window = 3 * step  # regular windows: 2x2 windows of 3x3 patches
    for row in range(2):
        for col in range(2):
            ax.add_patch(
                Rectangle(
                    (x0 + col * window, y0 + row * window),
                    window,
                    window,
                    facecolor="none",
                    edgecolor=WINDOW_COLOR,
                    linewidth=2.6,
                    zorder=4,
                )
            )
    half = window / 2  # the shifted window, offset by half a window (Swin's next block)
    ax.add_patch(
        Rectangle(
            (x0 + half, y0 + half),
            window,
            window,
            facecolor="none",
            edgecolor=SHIFTED_WINDOW_COLOR,
            linewidth=2.6,
            linestyle=(0, (3, 1.5)),
            zorder=5,
        )
    )


def _figure() -> tuple[plt.Figure, Axes]:
    fig = plt.figure(figsize=(ICON_SIZE_PX / _DPI, ICON_SIZE_PX / _DPI), dpi=_DPI)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def render_medsegnas(ax: Axes) -> None:
    draw_organ(ax, center=(0.5, 0.36), scale=0.3)
    draw_search_graph(ax, x0=0.14, y0=0.52, width=0.72, height=0.38)


def render_sslpretrain(ax: Axes) -> None:
    draw_patch_grid(ax, x0=0.05, y0=0.05, size=0.9)


def render_extension(ax: Axes) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (0.04, 0.04),
            0.92,
            0.92,
            boxstyle="round,pad=0,rounding_size=0.16",
            facecolor="#1d2b3a",
            edgecolor="#5b7a99",
            linewidth=2.0,
        )
    )
    draw_organ(ax, center=(0.5, 0.34), scale=0.26)
    draw_search_graph(ax, x0=0.2, y0=0.55, width=0.6, height=0.3)


def draw_click(ax: Axes, center: tuple[float, float], positive: bool) -> None:
    """A click marker: a disc with + (positive, green) or - (negative, red)."""
    color = CLICK_POSITIVE if positive else CLICK_NEGATIVE
    ax.add_patch(Circle(center, 0.13, facecolor=color, edgecolor="white", linewidth=2.5))
    arm = 0.075
    ax.plot(
        [center[0] - arm, center[0] + arm],
        [center[1]] * 2,
        color="white",
        linewidth=5,
        solid_capstyle="round",
    )
    if positive:
        ax.plot(
            [center[0]] * 2,
            [center[1] - arm, center[1] + arm],
            color="white",
            linewidth=5,
            solid_capstyle="round",
        )


def render_editor_effect(ax: Axes) -> None:
    draw_organ(ax, center=(0.46, 0.46), scale=0.36)
    draw_click(ax, (0.3, 0.72), positive=True)
    draw_click(ax, (0.8, 0.24), positive=False)


ICONS: dict[str, Callable[[Axes], None]] = {
    "MedSegNAS/Resources/Icons/SegmentEditorMedSegNAS.png": render_editor_effect,
    "MedSegNAS/Resources/Icons/MedSegNAS.png": render_medsegnas,
    "SSLPretrain/Resources/Icons/SSLPretrain.png": render_sslpretrain,
    "Resources/Icons/MedSegNAS.png": render_extension,
}


def save_icon(render: Callable[[Axes], None], path: Path) -> None:
    """Render one icon to ``path`` (128x128 RGBA PNG), replacing the file atomically."""
    fig, ax = _figure()
    render(ax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp_name, dpi=_DPI, transparent=True)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; icons are ordinary repository files
        os.replace(tmp_name, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write all icons into this folder instead of the repository")
    args = parser.parse_args(argv)
    for relative_path, render in ICONS.items():
        target = args.out / relative_path.replace("/", "_") if args.out else ROOT / relative_path
        save_icon(render, target)
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
