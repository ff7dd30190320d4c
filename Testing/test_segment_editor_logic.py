"""The Segment Editor effect's MRML logic with slicer-core's real classes: the editor's own
modification call decides (editable area, protected hidden segments), undo per click, name matching."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.panels.segment_editor_logic import (
    apply_label_map,
    apply_segment_mask,
    editor_logic,
    find_segment,
)
from MedSegNASLib.panels.slicer_bridge import segments_to_labelmap

SHAPE = (20, 18, 16)


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    volume = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(volume)
    image = vtk.vtkImageData()
    image.SetDimensions(*SHAPE)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    volume.SetAndObserveImageData(image)
    volume.SetSpacing(1.5, 1.0, 2.0)
    volume.SetOrigin(-10.0, 5.0, 3.0)
    segmentation = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(segmentation)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    logic = editor_logic(segmentation, volume)
    return scene, volume, segmentation, logic


def _box(low, high):
    mask = np.zeros(SHAPE, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] = True
    return mask


def _read(segmentation, volume, segment_id):
    return segments_to_labelmap(segmentation, volume, [(segment_id, 1)]).array[0].astype(bool)


def test_clicks_update_a_local_box_and_each_click_undoes(scene):
    _, volume, segmentation, logic = scene
    liver = segmentation.GetSegmentation().AddEmptySegment("", "Liver", (0.8, 0.5, 0.4))
    sketch = _box((2, 2, 2), (12, 12, 12))
    apply_segment_mask(logic, liver, sketch, volume)  # e.g. a manual sketch
    box = ((8, 16), (8, 16), (4, 12))
    local = np.ones((8, 8, 8), dtype=bool)  # the worker's answer inside its box
    apply_segment_mask(logic, liver, local, volume, box)
    expected = sketch.copy()
    expected[8:16, 8:16, 4:12] = True
    assert np.array_equal(_read(segmentation, volume, liver), expected)
    apply_segment_mask(logic, liver, np.zeros((8, 8, 8), bool), volume, box)  # a negative click
    expected[8:16, 8:16, 4:12] = False
    assert np.array_equal(_read(segmentation, volume, liver), expected)
    logic.Undo()  # one click back
    expected[8:16, 8:16, 4:12] = True
    assert np.array_equal(_read(segmentation, volume, liver), expected)
    with pytest.raises(MedSegNASError, match="does not fit"):
        apply_segment_mask(logic, liver, local, volume, ((15, 23), (8, 16), (4, 12)))


def test_editable_area_and_hidden_segments_are_honoured(scene):
    _, volume, segmentation, logic = scene
    seg = segmentation.GetSegmentation()
    kidney = seg.AddEmptySegment("", "kidney", (0.7, 0.4, 0.3))
    spleen = seg.AddEmptySegment("", "spleen", (0.6, 0.4, 0.6))
    kidney_mask = _box((0, 0, 0), (8, 8, 8))
    apply_segment_mask(logic, kidney, kidney_mask, volume)
    editor = logic.GetSegmentEditorNode()

    # Editable area "outside all segments": the kidney's voxels cannot become spleen.
    editor.SetMaskMode(segmentation.EditAllowedOutsideAllSegments)
    spleen_result = _box((4, 4, 4), (14, 14, 14))
    apply_segment_mask(logic, spleen, spleen_result, volume)
    assert np.array_equal(_read(segmentation, volume, spleen), spleen_result & ~kidney_mask)
    assert np.array_equal(_read(segmentation, volume, kidney), kidney_mask)

    # Everywhere editable, overwrite visible segments, kidney hidden (protected): kidney intact.
    editor.SetMaskMode(segmentation.EditAllowedEverywhere)
    editor.SetOverwriteMode(editor.OverwriteVisibleSegments)
    segmentation.GetDisplayNode().SetSegmentVisibility(kidney, False)
    apply_segment_mask(logic, spleen, spleen_result, volume)
    assert np.array_equal(_read(segmentation, volume, kidney), kidney_mask)
    # Visible again: the new spleen takes the overlap from the kidney (the editor's overwrite).
    segmentation.GetDisplayNode().SetSegmentVisibility(kidney, True)
    apply_segment_mask(logic, spleen, spleen_result, volume)
    assert np.array_equal(_read(segmentation, volume, kidney), kidney_mask & ~spleen_result)


def test_automatic_result_matches_segments_by_name_and_leaves_others(scene):
    _, volume, segmentation, logic = scene
    seg = segmentation.GetSegmentation()
    liver = seg.AddEmptySegment("", " LIVER ", (0.8, 0.5, 0.4))
    tumour = seg.AddEmptySegment("", "tumour", (1.0, 1.0, 0.0))
    tumour_mask = _box((15, 10, 10), (19, 14, 14))
    apply_segment_mask(logic, tumour, tumour_mask, volume)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:9, 1:9, 1:9] = 1
    labels[10:14, 2:6, 2:6] = 2
    ids = apply_label_map(logic, labels, {"liver": 1, "spleen": 2}, volume, {"spleen": (0.6, 0.4, 0.6)})
    assert ids["liver"] == liver and find_segment(segmentation, "Spleen") == ids["spleen"]
    assert seg.GetNumberOfSegments() == 3
    assert np.array_equal(_read(segmentation, volume, liver), labels == 1)
    assert np.array_equal(_read(segmentation, volume, ids["spleen"]), labels == 2)
    assert np.array_equal(_read(segmentation, volume, tumour), tumour_mask)  # not named: untouched
    logic.Undo()  # the whole automatic result is one step
    assert not _read(segmentation, volume, liver).any()
