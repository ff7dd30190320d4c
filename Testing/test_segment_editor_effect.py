"""The "MedSegNAS" Segment Editor effect (``MedSegNAS/SegmentEditorMedSegNASLib/SegmentEditorEffect.py``),
registered by the MedSegNAS module and driven as a user drives it in the offscreen harness.

Real: slicer-core's MRML scene, segmentation and Segment Editor logic (masking, hidden segments,
undo), the registry with two tiny bundles (an automatic UNet and an interactive one, random
weights), the ``medsegnas segment`` job behind Auto and the interactive worker process behind the
clicks. What a user checks: the segment of the same name is updated and a hidden segment is not;
each click changes the selected segment as the model answers it, inside its region, through the
editor's masking; undo takes one click back; Finish keeps the result and stops the worker;
deactivating the effect stops the next one; no callback holds the GUI for 0.5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import panel_session  # noqa: E402
from panel_session import ROOT  # noqa: E402

slicer = pytest.importorskip("slicer")

#: The longest an effect callback (activation, a click, a timer tick) may hold the GUI.
CALLBACK_LIMIT_S = 0.5


@pytest.fixture
def slicer_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    yield from panel_session.session(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.interactive.export import (
        declare_interactive,
        interactive_label_names,
        interactive_section,
    )
    from MedSegNASLib.models.export import export_bundle
    from segment_fixtures import TINY_SPEC, UNET_DEF, build

    folder = tmp_path_factory.mktemp("effect-bundles")
    names = interactive_label_names(PHANTOM_LABELS)
    network_def = {**UNET_DEF, "in_channels": 1 + len(names)}
    interactive = export_bundle(
        folder / "interactive",
        network_def=network_def,
        state_dict=build(network_def, seed=3).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny interactive",
        extra_metadata={"interactive": interactive_section(names, 1)},
    )
    declare_interactive(interactive, interactive_section(names, 1))
    plain = export_bundle(
        folder / "plain",
        network_def=UNET_DEF,
        state_dict=build(UNET_DEF, seed=5).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny automatic",
    )
    return {"interactive": interactive, "plain": plain}


def _register(bundles: dict[str, Path]) -> None:
    from MedSegNASLib.models.registry import ModelRegistry

    registry = ModelRegistry()  # $MEDSEGNAS_HOME: the test's registry
    registry.import_model(bundles["interactive"], model_id="tiny-interactive")
    registry.import_model(bundles["plain"], model_id="tiny-automatic")


def _scene(tmp_path: Path):
    """A CT phantom (LPS-stored) with a segmentation: 'Liver' (a sketch) and a hidden 'tumour'."""
    from MedSegNASLib.data.io import read_volume
    from MedSegNASLib.panels.slicer_bridge import volume_to_volume_node
    from segment_fixtures import write_test_images

    image = read_volume(write_test_images(tmp_path / "case", size=48)["lps"])
    volume = volume_to_volume_node(image, slicer.mrmlScene, name="CT")
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName("Segmentation")
    slicer.mrmlScene.AddNode(segmentation)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return volume, segmentation


def _read(segmentation, volume, segment_id) -> np.ndarray:
    from MedSegNASLib.panels.slicer_bridge import segments_to_labelmap

    return segments_to_labelmap(segmentation, volume, [(segment_id, 1)]).array[0].astype(bool)


def _set(editor, segment_id, mask, volume) -> None:
    from MedSegNASLib.panels.segment_editor_logic import apply_segment_mask

    apply_segment_mask(editor.logic, segment_id, mask, volume)


def _voxel_ras(volume, ijk) -> tuple[float, float, float]:
    from MedSegNASLib.panels.slicer_bridge import volume_node_to_volume

    affine = volume_node_to_volume(volume).affine
    return tuple(float(v) for v in (affine @ [*ijk, 1.0])[:3])


def _expected_click(bundle: Path, volume, before: np.ndarray, clicks, protected: np.ndarray) -> np.ndarray:
    """What the effect must show after ``clicks`` outside ``protected``: the model's answer, in
    process, from ``before``, inside its region (the hidden segment's voxels are the editor's to decide)."""
    from MedSegNASLib.interactive.clicks import parse_clicks
    from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model
    from MedSegNASLib.panels.slicer_bridge import volume_node_to_volume

    session = InteractiveSession(load_interactive_model(bundle), volume_node_to_volume(volume), start="empty")
    session.seed("liver", before)
    mask, box = session.update(parse_clicks(clicks))
    expected = before.copy()
    expected[tuple(slice(a, b) for a, b in box)] = mask
    return expected & ~protected


def _answered(session, clicks: int) -> bool:
    """The worker has answered the first ``clicks`` clicks and the mask is applied."""
    return session.state == "ready" and len(session.clicks) == clicks and session._sent_clicks == clicks


@pytest.mark.slow
def test_auto_then_clicks_undo_finish_and_deactivate(slicer_app, bundles, tmp_path: Path) -> None:
    app = slicer_app
    _register(bundles)
    app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    app.complete_startup()  # the module registers its effect once Slicer has started
    editor = app.segment_editor()
    assert "MedSegNAS" in editor.effects
    effect = editor.effects["MedSegNAS"].self()
    assert "left click" in effect.helpText() and not effect.icon().isNull()

    volume, segmentation = _scene(tmp_path)
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    segments = segmentation.GetSegmentation()
    liver = segments.AddEmptySegment("", "Liver", (0.8, 0.5, 0.4))
    tumour = segments.AddEmptySegment("", "tumour", (1.0, 1.0, 0.0))
    shape = volume.GetImageData().GetDimensions()
    sketch, tumour_mask = np.zeros(shape, bool), np.zeros(shape, bool)
    sketch[10:20, 10:20, 10:20] = True
    tumour_mask[20:30, 18:28, 20:30] = True
    _set(editor, liver, sketch, volume)
    _set(editor, tumour, tumour_mask, volume)
    segmentation.GetDisplayNode().SetSegmentVisibility(tumour, False)  # hidden: protected
    editor.node.SetOverwriteMode(editor.node.OverwriteVisibleSegments)
    editor.setCurrentSegmentID(liver)

    app.slot_times.clear()
    editor.setActiveEffectByName("MedSegNAS")
    assert [effect.refineModelComboBox.itemData(i) for i in range(effect.refineModelComboBox.count)] == [
        "tiny-interactive"
    ]
    assert effect.autoModelComboBox.count == 2
    session = effect.session
    assert session is not None and session.worker.process.poll() is None  # started on activation
    assert "Starting the interactive worker" in effect.statusLabel.text

    # Auto with the automatic model: a background job; its labels go to the segments of the same names.
    effect.autoModelComboBox.currentIndex = effect.autoModelComboBox.findData("tiny-automatic")
    effect.autoModelComboBox.activated.emit(effect.autoModelComboBox.currentIndex)
    app.click(effect.autoButton)
    assert effect.autoButton.text == "Cancel Auto"
    app.wait_until(lambda: effect.autoRun is None, 300, "the Auto job")
    assert "Auto done" in effect.statusLabel.text, effect.statusLabel.text
    from MedSegNASLib.panels.slicer_bridge import _label_map_array

    runs = sorted((Path.home() / "MedSegNAS" / "runs").glob("segment-*"))
    assert len(runs) == 1
    labels = _label_map_array(runs[0] / "artifacts" / "segmentation.seg.nrrd")[0]
    assert (labels == 1).any() and segments.GetNumberOfSegments() == 5  # liver matched; 3 organs added
    assert segments.GetSegment(liver).GetName() == "Liver"
    after_auto = _read(segmentation, volume, liver)
    assert np.array_equal(after_auto & ~tumour_mask, (labels == 1) & ~tumour_mask)
    assert np.array_equal(_read(segmentation, volume, tumour), tumour_mask)  # hidden: untouched
    spleen = segmentation.GetSegmentation().GetSegmentIdBySegmentName("spleen")
    assert np.array_equal(_read(segmentation, volume, spleen) & ~tumour_mask, (labels == 2) & ~tumour_mask)

    # Refine: the worker was seeded with the segment as it is now (Auto's result, any tool's).
    app.wait_until(lambda: session.state == "ready", 300, "the interactive worker")
    assert session.label == "liver"  # matched by name
    first = _voxel_ras(volume, (24, 24, 24))
    assert editor.press("Red", first) is True
    app.wait_until(lambda: _answered(session, 1), 120, "click 1")
    clicks = [{"label": "liver", "positive": True, "ras": list(session.clicks[0][1])}]
    assert np.allclose(clicks[0]["ras"], first, atol=1e-3)  # XY of the view -> the RAS clicked
    after_one = _read(segmentation, volume, liver)
    expected = _expected_click(bundles["interactive"], volume, after_auto, clicks, tumour_mask)
    assert np.array_equal(after_one & ~tumour_mask, expected)
    assert not np.array_equal(after_one, after_auto)

    second = _voxel_ras(volume, (30, 20, 16))
    assert editor.press("Yellow", second, shift=True) is True  # shift+left: negative
    app.wait_until(lambda: _answered(session, 2), 120, "click 2")
    after_two = _read(segmentation, volume, liver)
    third = _voxel_ras(volume, (12, 30, 28))
    assert editor.press("Green", third, button="right") is True  # right click: negative
    app.wait_until(lambda: _answered(session, 3), 120, "click 3")
    assert [p for p, _ras in session.clicks] == [True, False, False]
    assert (effect.markers.count(True), effect.markers.count(False)) == (1, 2)
    assert "3 click(s) (1 positive, 2 negative)" in effect.statusLabel.text
    assert "last update" in effect.statusLabel.text
    assert np.array_equal(_read(segmentation, volume, tumour), tumour_mask)

    editor.undo()  # one click back
    assert np.array_equal(_read(segmentation, volume, liver), after_two)
    editor.undo()
    assert np.array_equal(_read(segmentation, volume, liver), after_one)
    undone = after_one

    # A click after undo starts from the segment as it now is, with that click only.
    fourth = _voxel_ras(volume, (18, 22, 20))
    assert editor.press("Red", fourth) is True
    app.wait_until(lambda: _answered(session, 1), 120, "the click after undo")
    assert (effect.markers.count(True), effect.markers.count(False)) == (1, 0)
    clicks = [{"label": "liver", "positive": True, "ras": list(session.clicks[0][1])}]
    after_one = _read(segmentation, volume, liver)
    expected = _expected_click(bundles["interactive"], volume, undone, clicks, tumour_mask)
    assert np.array_equal(after_one & ~tumour_mask, expected)

    worker = session.worker.process
    app.click(effect.finishButton)
    assert effect.session is None
    app.wait_until(lambda: worker.poll() is not None, 60, "the worker to end after Finish")
    assert np.array_equal(_read(segmentation, volume, liver), after_one)  # kept as an ordinary segment
    assert (effect.markers.count(True), effect.markers.count(False)) == (0, 0)

    # A click after Finish starts a new session; deactivating the effect stops its worker.
    editor.press("Red", first)
    assert effect.session is not None and effect.session is not session
    worker = effect.session.worker.process
    editor.setActiveEffectByName("")  # while it still starts: asked to stop, killed after a grace time
    app.wait_until(lambda: worker.poll() is not None, 60, "the worker to end after deactivation")
    assert slicer.mrmlScene.GetFirstNodeByName("MedSegNAS positive clicks") is None
    assert np.array_equal(_read(segmentation, volume, tumour), tumour_mask)

    assert app.slot_errors == []
    slow = {name: round(t, 3) for name, t in app.slot_times.items() if t > CALLBACK_LIMIT_S}
    assert slow == {}, f"callbacks that held the GUI: {slow}"


def test_refine_without_an_interactive_model_says_what_is_missing(slicer_app, tmp_path: Path) -> None:
    app = slicer_app
    app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    app.complete_startup()
    editor = app.segment_editor()
    volume, segmentation = _scene(tmp_path)
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    editor.setCurrentSegmentID(segmentation.GetSegmentation().AddEmptySegment("", "liver"))
    editor.setActiveEffectByName("MedSegNAS")
    effect = editor.active.self()
    assert effect.session is None and effect.refineModelComboBox.count == 0
    assert "needs a source volume, a selected segment and an interactive model" in effect.statusLabel.text
    assert editor.press("Red", _voxel_ras(volume, (24, 24, 24))) is True  # consumed, nothing started
    assert effect.session is None and not effect.autoButton.enabled
    editor.setActiveEffectByName("")
    assert app.slot_errors == []


def test_effect_picture_shows_the_view_with_clicks_and_the_options(tmp_path: Path) -> None:
    """``tools/render_effect.py`` (the README picture) as a user runs it: a slice view with the green
    and red click markers beside the effect's options, on a white page."""
    import os
    import subprocess

    from PIL import Image

    out = tmp_path / "effect.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render_effect.py"), "--out", str(out), "--view-size", "240"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if "cannot render offscreen" in result.stderr:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-2000:]
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert pixels.shape[1] > 240 + 300 and pixels.shape[0] >= 240
    view, options = pixels[:240, :240], pixels[:, 250:]
    green = (view[..., 1] > 140) & (view[..., 0] < 80) & (view[..., 2] < 90)
    red = (view[..., 0] > 190) & (view[..., 1] < 70) & (view[..., 2] < 70)
    assert green.sum() > 20 and red.sum() > 20  # the two click markers
    assert (np.abs(view[..., 0] - view[..., 2]) < 4).mean() > 0.5  # mostly the grey CT (and black)
    assert (options == 255).all(axis=-1).mean() > 0.5 and (options < 100).all(axis=-1).sum() > 500  # text


@pytest.mark.slow
def test_auto_with_an_interactive_model_then_a_click_before_the_worker_is_ready(
    slicer_app, bundles, tmp_path: Path
) -> None:
    """An interactive model's Auto (its worker, no clicks) fills an empty segmentation; a click made
    while the refine worker still starts is kept and answered once it is ready."""
    from MedSegNASLib.interactive.clicks import Click
    from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model
    from MedSegNASLib.panels.slicer_bridge import volume_node_to_volume

    app = slicer_app
    _register(bundles)
    app.load_module("MedSegNAS", ROOT / "MedSegNAS")
    app.complete_startup()
    editor = app.segment_editor()
    volume, segmentation = _scene(tmp_path)
    editor.setSegmentationNode(segmentation)
    editor.setSourceVolumeNode(volume)
    app.slot_times.clear()
    editor.setActiveEffectByName("MedSegNAS")
    effect = editor.active.self()
    assert effect.session is None  # no segment yet: Refine waits for one
    combo = effect.autoModelComboBox
    combo.currentIndex = combo.findData("tiny-interactive")
    combo.activated.emit(combo.currentIndex)
    app.click(effect.autoButton)
    app.wait_until(lambda: effect.autoRun is None, 300, "Auto with the interactive model")
    assert "Auto done" in effect.statusLabel.text, effect.statusLabel.text
    image = volume_node_to_volume(volume)
    reference = InteractiveSession(load_interactive_model(bundles["interactive"]), image, start="auto")
    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 4
    for name, mask in reference.masks.items():
        assert np.array_equal(_read(segmentation, volume, segments.GetSegmentIdBySegmentName(name)), mask), (
            name
        )

    spleen = segments.GetSegmentIdBySegmentName("spleen")
    editor.setCurrentSegmentID(spleen)
    before = _read(segmentation, volume, spleen)
    ras = _voxel_ras(volume, (20, 26, 22))
    assert editor.press("Red", ras) is True  # the session starts with this click
    session = effect.session
    assert session.state == "starting" and len(session.clicks) == 1
    assert (
        "Starting the interactive worker" in effect.statusLabel.text
        and "1 click(s)" in effect.statusLabel.text
    )
    app.wait_until(lambda: _answered(session, 1), 300, "the queued click")
    reference.seed("spleen", before)
    mask, box = reference.update([Click("spleen", True, tuple(session.clicks[0][1]))])
    expected = before.copy()
    expected[tuple(slice(a, b) for a, b in box)] = mask
    assert np.array_equal(_read(segmentation, volume, spleen), expected)
    editor.setActiveEffectByName("")
    app.wait_until(lambda: session.worker.process.poll() is not None, 60, "the worker to end")
    assert app.slot_errors == []
    slow = {name: round(t, 3) for name, t in app.slot_times.items() if t > CALLBACK_LIMIT_S}
    assert slow == {}, f"callbacks that held the GUI: {slow}"
