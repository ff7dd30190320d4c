#!/usr/bin/env python3
"""Render the README picture of the MedSegNAS Segment Editor effect, offscreen.

Writes ``--out`` (default ``Resources/Screenshots/MedSegNAS-effect.png``): on the left an axial
slice view drawn by Slicer's own slice rendering (``tools/slicer_views.py``, slicer-core) of a
phantom CT with its liver segment and two clicks marked as the effect marks them (green positive,
red negative); on the right the effect's options as the effect's own code builds them
(``SegmentEditorEffect.setupOptionsFrame``), run through the test harness's Slicer stand-ins
(``Testing/slicer_harness``) on Qt's offscreen platform, with the status line the effect shows for
those two clicks. The segment is the phantom's reference liver, not a model's answer: the picture
shows where things are, the numbers are in the README's tables.

    python tools/render_effect.py [--out PATH] [--view-size 360]
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "MedSegNAS", ROOT / "Testing", ROOT / "tools"):
    sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402

#: The clicks drawn: (label value whose region it is in or out of, positive).
PHANTOM_SEED, PHANTOM_SIZE = 2, 48
PANEL_WIDTH = 380


def _click_positions(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A positive click deep in the liver and a negative one just outside it, on one axial plane."""
    from scipy import ndimage

    liver = label == 1
    k = int(np.argmax(liver.sum(axis=(0, 1))))  # the plane where the liver is largest
    inside = ndimage.distance_transform_edt(liver[:, :, k])
    positive = np.unravel_index(int(np.argmax(inside)), inside.shape)
    outside = ndimage.distance_transform_edt(~liver[:, :, k])
    ring = np.argwhere((outside > 2.5) & (outside < 4.0) & (label[:, :, k] == 0))
    negative = ring[np.argmin(np.abs(ring - np.array(positive)).sum(axis=1))]
    to_ras = lambda ij: (affine @ [ij[0], ij[1], k, 1.0])[:3]  # noqa: E731
    return to_ras(positive), to_ras(negative), float(to_ras((0, 0))[2])


def render_view(size: int) -> tuple[np.ndarray, list[tuple[bool, np.ndarray]]]:
    import slicer_views as rendering
    from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case
    from MedSegNASLib.panels import slicer_bridge
    from PIL import Image, ImageDraw

    image, label = generate_phantom_case(PHANTOM_SEED, PHANTOM_SIZE)
    positive, negative, _ = _click_positions(label.array[0], label.affine)
    liver_only = type(label)(
        np.where(label.array == 1, 1, 0).astype(np.uint8), label.affine, dict(label.meta)
    )
    with rendering.SceneViews(size=(size, size)) as views:
        volume = slicer_bridge.volume_to_volume_node(image, views.scene, "CT")
        rendering.set_window_level(volume, *rendering.CT_ABDOMEN_WINDOW_LEVEL)
        slicer_bridge.labelmap_to_segmentation_node(
            liver_only, [PHANTOM_LABELS[0], PHANTOM_LABELS[1]], views.scene, reference_volume_node=volume
        )
        view = views.slice_view("Axial")
        view.show(volume)
        view.jump_to(positive)
        picture = view.render()
        pixels = [view.ras_to_pixel(positive), view.ras_to_pixel(negative)]
    drawing = Image.fromarray(picture)
    draw = ImageDraw.Draw(drawing)
    for (row, column), is_positive in zip(pixels, (True, False), strict=True):
        color = (46, 158, 62) if is_positive else (208, 50, 50)
        r = 7
        draw.ellipse((column - r, row - r, column + r, row + r), fill=color, outline=(255, 255, 255), width=2)
        draw.line((column - 4, row, column + 4, row), fill=(255, 255, 255), width=2)
        if is_positive:
            draw.line((column, row - 4, column, row + 4), fill=(255, 255, 255), width=2)
    return np.asarray(drawing), [(True, positive), (False, negative)]


def render_options(clicks: list[tuple[bool, np.ndarray]]) -> np.ndarray:
    import slicer_harness
    from MedSegNASLib.panels import editor_effect_logic as el
    from PySide6 import QtGui, QtWidgets
    from render_panels import SLICER_LIGHT_PALETTE

    app = slicer_harness.install()
    app.new_session()
    qapp = app.qapp
    qapp.setStyle(QtWidgets.QStyleFactory.create("Fusion"))
    palette = QtGui.QPalette()
    for key, color in SLICER_LIGHT_PALETTE.items():
        if isinstance(key, tuple):
            palette.setColor(
                getattr(QtGui.QPalette.ColorGroup, key[0]),
                getattr(QtGui.QPalette.ColorRole, key[1]),
                QtGui.QColor(color),
            )
        else:
            palette.setColor(getattr(QtGui.QPalette.ColorRole, key), QtGui.QColor(color))
    qapp.setPalette(palette)
    font = QtGui.QFont("DejaVu Sans Condensed")
    font.setPointSizeF(9.0)
    qapp.setFont(font)
    app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    app.complete_startup()
    adaptor = app.segment_editor().effects["MedSegNAS"]
    effect = adaptor.self()
    # What the registry would list after `medsegnas train --interactive` and an import of the zoo's spleen bundle.
    effect.autoModelComboBox.addItems(["abdomen-clicks (UNet, interactive)", "spleen_ct_segmentation"])
    effect.refineModelComboBox.addItem("abdomen-clicks (UNet, interactive)")
    effect.labelComboBox.addItems(
        ["(same name as the segment)", "liver", "spleen", "right kidney", "left kidney"]
    )
    session = types.SimpleNamespace(
        state="ready", clicks=[(p, tuple(ras)) for p, ras in clicks], label="liver", last_seconds=None
    )
    effect.statusLabel.text = el.status_text(session)
    effect.finishButton.enabled = True
    frame = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(frame)
    title = QtWidgets.QLabel("<b>Segment Editor</b> &gt; effect <b>MedSegNAS</b>")
    icon = QtWidgets.QLabel()
    icon.setPixmap(effect.icon().pixmap(32, 32))
    header = QtWidgets.QHBoxLayout()
    header.addWidget(icon)
    header.addWidget(title, 1)
    layout.addLayout(header)
    help_text = QtWidgets.QLabel(effect.helpText())
    help_text.setWordWrap(True)
    layout.addWidget(help_text)
    layout.addWidget(adaptor.optionsFrame())
    layout.addStretch(1)
    frame.setFixedWidth(PANEL_WIDTH)
    frame.adjustSize()
    frame.show()
    qapp.processEvents()
    image = frame.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB888)
    array = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return array[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def compose(view: np.ndarray, options: np.ndarray, gap: int = 10) -> np.ndarray:
    height = max(view.shape[0], options.shape[0])
    canvas = np.full((height, view.shape[1] + gap + options.shape[1], 3), 255, np.uint8)
    canvas[: view.shape[0], : view.shape[1]] = view
    canvas[: options.shape[0], view.shape[1] + gap :] = options
    return canvas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "Resources" / "Screenshots" / "MedSegNAS-effect.png"
    )
    parser.add_argument("--view-size", type=int, default=360, help="slice view side in pixels")
    args = parser.parse_args(argv)
    import slicer_views as rendering

    problem = rendering.offscreen_rendering_problem()
    if problem is not None:
        print(f"cannot render offscreen: {problem}", file=sys.stderr)
        return 1
    view, clicks = render_view(args.view_size)
    picture = compose(view, render_options(clicks))
    print(rendering.write_png(picture, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
