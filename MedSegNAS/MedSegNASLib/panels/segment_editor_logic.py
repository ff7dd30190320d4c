"""MRML logic of the MedSegNAS Segment Editor effect: results applied through the editor's own modification call.

Every change goes through :class:`slicer.vtkSlicerSegmentEditorLogic` ``ModifySegmentByLabelmap``
(what ``scriptedEffect.modifySelectedSegmentByLabelmap`` calls in Slicer), so the editor's settings
apply as for its own effects: the editable area (``MaskMode``: inside/outside all or visible
segments or one segment), the editable intensity range of the source volume, "modify other
segments" (``OverwriteMode``; segments hidden under "overwrite visible segments" stay untouched,
which is how Slicer protects — locks — segments), and undo (one state saved per click or per
automatic result). No masking is re-implemented here.

Masks come from the interactive worker on the source volume's voxel grid (``(I, J, K)`` boolean,
optionally a box of it). Existing segments are matched by name (case and surrounding spaces
ignored); a result never touches a segment it does not name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import MedSegNASError

__all__ = ["editor_logic", "find_segment", "mask_to_modifier", "apply_segment_mask", "apply_label_map"]


def editor_logic(segmentation_node: Any, source_volume_node: Any, editor_node: Any = None) -> Any:
    """A Segment Editor logic on ``segmentation_node`` with ``source_volume_node`` (both in one scene).

    Inside Slicer the effect uses the editor's own logic; this builds an equivalent one (tests,
    scripts). ``editor_node`` (a ``vtkMRMLSegmentEditorNode``) holds the masking settings; a new
    one is added to the scene when None.
    """
    from .slicer_bridge import _ensure_segmentation_converters

    _ensure_segmentation_converters()
    scene = segmentation_node.GetScene()
    if scene is None:
        raise MedSegNASError("the segmentation node is not in a scene")
    if editor_node is None:
        editor_node = slicer.vtkMRMLSegmentEditorNode()
        scene.AddNode(editor_node)
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(scene)
    logic.SetSegmentEditorNode(editor_node)
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    editor_node.SetAndObserveSourceVolumeNode(source_volume_node)
    return logic


def find_segment(segmentation_node: Any, name: str) -> str | None:
    """The ID of the segment named ``name`` (case and surrounding spaces ignored), or None."""
    wanted = name.strip().lower()
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        if segmentation.GetSegment(segment_id).GetName().strip().lower() == wanted:
            return segment_id
    return None


def mask_to_modifier(mask: np.ndarray, volume_node: Any, box: Sequence[Sequence[int]] | None = None) -> Any:
    """A binary ``vtkOrientedImageData`` of ``mask`` on the grid of ``volume_node``.

    Args:
        mask: boolean ``(I, J, K)``: the whole volume, or the box ``box`` of it.
        box: ``((i0, i1), (j0, j1), (k0, k1))`` half-open voxel ranges of ``mask`` in the volume.
    """
    mask = np.asarray(mask, dtype=bool)
    dims = volume_node.GetImageData().GetDimensions()
    box = tuple((int(a), int(b)) for a, b in box) if box is not None else tuple((0, d) for d in dims)
    if tuple(b - a for a, b in box) != mask.shape or any(
        a < 0 or b > d for (a, b), d in zip(box, dims, strict=True)
    ):
        raise MedSegNASError(f"mask of shape {mask.shape} does not fit box {box} of a {dims} volume")
    image = slicer.vtkOrientedImageData()
    image.SetExtent(box[0][0], box[0][1] - 1, box[1][0], box[1][1] - 1, box[2][0], box[2][1] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    # VTK stores i fastest: the (K, J, I) C-order array is the (I, J, K) array in Fortran order.
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    scalars[:] = np.ascontiguousarray(mask.astype(np.uint8).transpose(2, 1, 0)).ravel()
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise MedSegNASError("the source volume is under a non-linear transform; harden it first")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, matrix, matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def apply_segment_mask(
    logic: Any,
    segment_id: str,
    mask: np.ndarray,
    volume_node: Any,
    box: Sequence[Sequence[int]] | None = None,
    *,
    save_undo: bool = True,
) -> None:
    """Set segment ``segment_id`` to ``mask`` inside ``box`` (the whole volume when None), as the editor would.

    Outside ``box`` the segment is unchanged; inside it the editor's masking decides which voxels
    may change. One undo state is saved first unless ``save_undo`` is False.
    """
    segmentation_node = logic.GetSegmentationNode()
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise MedSegNASError(f"the segmentation has no segment {segment_id!r}")
    modifier = mask_to_modifier(mask, volume_node, box)
    if save_undo:
        logic.SaveStateForUndo()
    if box is None:
        logic.ModifySegmentByLabelmap(
            segmentation_node, segment_id, modifier, logic.ModificationModeSet, False, False
        )
        return
    # "Set" replaces the whole segment whatever the extent: clear the box, then add the new voxels
    # (both through the editor, so its masking applies to each).
    whole_box = mask_to_modifier(np.ones(modifier_shape(box), dtype=bool), volume_node, box)
    logic.ModifySegmentByLabelmap(
        segmentation_node, segment_id, whole_box, logic.ModificationModeRemove, False, False
    )
    logic.ModifySegmentByLabelmap(
        segmentation_node, segment_id, modifier, logic.ModificationModeAdd, False, False
    )


def modifier_shape(box: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    return tuple(int(b) - int(a) for a, b in box)  # type: ignore[return-value]


def apply_label_map(
    logic: Any,
    labels: np.ndarray,
    names: Mapping[str, int],
    volume_node: Any,
    colors: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, str]:
    """Put an automatic result into the segmentation: each named label into the segment of that name.

    Segments are matched by name and updated (added when missing); segments not named are left
    as they are (the editor's overwrite setting still decides about overlaps). One undo state for
    the whole result.

    Args:
        labels: ``(I, J, K)`` label values on the grid of ``volume_node``.
        names: segment name -> label value (background excluded).
        colors: segment name -> RGB in [0, 1], for segments that are added.

    Returns:
        segment name -> segment ID.
    """
    segmentation_node = logic.GetSegmentationNode()
    segmentation = segmentation_node.GetSegmentation()
    labels = np.asarray(labels)
    logic.SaveStateForUndo()
    ids: dict[str, str] = {}
    for name, value in names.items():
        segment_id = find_segment(segmentation_node, name)
        if segment_id is None:
            color = tuple((colors or {}).get(name, (0.5, 0.5, 0.5)))
            segment_id = segmentation.AddEmptySegment("", name, color)
        apply_segment_mask(logic, segment_id, labels == value, volume_node, save_undo=False)
        ids[name] = segment_id
    return ids
