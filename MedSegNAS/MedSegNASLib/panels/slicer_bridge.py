"""The Slicer bridge: MRML nodes <-> :class:`~MedSegNASLib.data.volume.Volume`, segmentations and tables.

This is the only module of ``MedSegNASLib`` that imports ``slicer``; no other module may import it.
It uses only MRML and module-logic classes that exist both in the Slicer application and in the
``slicer-core`` wheel (no ``slicer.app``, ``slicer.modules`` or Qt), so the same code runs in the
GUI and in the tests.

Geometry: a volume node's ``IJKToRAS`` matrix is the :class:`Volume` affine (same IJK -> RAS mm
convention), and the node's image data is stored K-J-I (i fastest), which is transposed to the
``(C, I, J, K)`` array layout. A linear parent transform is applied to the affine (as "harden
transform" would); a non-linear one is refused.

Segmentations made from a label map have one segment per label value, with the stable segment ID
``label_<value>``, the name and color of the label table, and the value in the segment tag
:data:`LABEL_VALUE_TAG` (saved in ``.seg.nrrd`` files), so the label map can be rebuilt exactly.

Every function that creates nodes takes the scene as an argument; ``None`` means ``slicer.mrmlScene``
(only inside the Slicer application).
"""

from __future__ import annotations

import colorsys
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..data.io import LABEL_VALUE_TAG, read_volume, segment_id_for_label, write_volume
from ..data.volume import LabelInfo, Volume
from ..errors import ImageFormatError, ImageReadError, MedSegNASError

__all__ = [
    "LABEL_VALUE_TAG",
    "export_volume_node",
    "labelmap_to_segmentation_node",
    "load_segmentation",
    "metrics_to_table_node",
    "save_segmentation",
    "segment_id_for_label",
    "segmentation_node_to_labelmap",
    "segments_to_labelmap",
    "volume_node_to_volume",
    "volume_to_volume_node",
]

_SEGMENT_ID_PATTERN = re.compile(r"^label_(\d+)$")
_BINARY_LABELMAP = "Binary labelmap"


# --------------------------------------------------------------------------- scene and matrices


def _resolve_scene(scene: Any | None) -> Any:
    """``scene`` itself, or the application's scene when ``None`` (inside Slicer only)."""
    if scene is not None:
        return scene
    app_scene = getattr(slicer, "mrmlScene", None)
    if app_scene is None:
        raise MedSegNASError("no MRML scene given and none running: pass scene=slicer.vtkMRMLScene()")
    return app_scene


def _array_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtk_matrix_from_array(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _node_label(node: Any) -> str:
    return f"'{node.GetName()}' ({node.GetID() or 'not in a scene'})"


def _world_affine(node: Any) -> np.ndarray:
    """IJK -> world RAS (4, 4) of a volume node, its linear parent transforms applied.

    The extent start of the image data is folded in, so index (0, 0, 0) is the first stored voxel.
    """
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    affine = _array_from_vtk_matrix(ijk_to_ras)
    image = node.GetImageData()
    if image is not None:
        extent_start = np.array(image.GetExtent()[0::2], dtype=np.float64)
        if extent_start.any():
            affine[:3, 3] += affine[:3, :3] @ extent_start
    transform_node = node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise MedSegNASError(
                f"volume {_node_label(node)} is under the non-linear transform '{transform_node.GetName()}': "
                "harden it into the volume first (Data module: right-click, Harden transform) or remove it"
            )
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        affine = _array_from_vtk_matrix(to_world) @ affine
    return affine


# --------------------------------------------------------------------------- volumes


def volume_node_to_volume(node: Any) -> Volume:
    """A scalar, labelmap or vector volume node as a :class:`Volume` (voxels copied).

    Args:
        node: ``vtkMRMLScalarVolumeNode`` (or labelmap) or ``vtkMRMLVectorVolumeNode``.

    Returns:
        Volume with ``array`` of shape ``(C, I, J, K)`` in the node's scalar type (C = number of
        components: 1 for scalar volumes, 3 for RGB...), ``affine`` = IJKToRAS with any linear
        parent transform applied, and ``meta`` with ``node_name`` and ``labelmap`` (bool).

    Raises:
        ImageFormatError: the node has no voxels, or is a tensor volume.
        MedSegNASError: the node is under a non-linear transform.
    """
    if node.IsA("vtkMRMLDiffusionTensorVolumeNode"):
        raise ImageFormatError(
            f"volume {_node_label(node)} is a tensor volume; only scalar and vector volumes can be used"
        )
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None or scalars.GetNumberOfTuples() == 0:
        raise ImageFormatError(
            f"volume {_node_label(node)} has no voxel data; load or compute the image first"
        )
    size_i, size_j, size_k = image.GetDimensions()
    # VTK stores voxels with i varying fastest: as a C-order numpy array that is (K, J, I, components).
    kji = numpy_support.vtk_to_numpy(scalars).reshape(size_k, size_j, size_i, scalars.GetNumberOfComponents())
    array = np.array(kji.transpose(3, 2, 1, 0), order="C")  # always a copy: VTK owns the node's memory
    meta = {"node_name": node.GetName(), "labelmap": bool(node.IsA("vtkMRMLLabelMapVolumeNode"))}
    return Volume(array=array, affine=_world_affine(node), meta=meta)


def _compact_label_array(array: np.ndarray, what: str) -> np.ndarray:
    """Integer label array in the smallest of uint8 / uint16 / int16 / int32 that holds its values."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ImageFormatError(
                f"{what} has non-integer values; a label map must hold integer class values"
            )
    elif array.dtype.kind not in "iub":
        raise ImageFormatError(
            f"{what} has voxel type {array.dtype}; a label map must hold integer class values"
        )
    low = int(array.min()) if array.size else 0
    high = int(array.max()) if array.size else 0
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return array.astype(dtype, copy=False)
    raise ImageFormatError(f"{what} has label values from {low} to {high}, outside the 32-bit integer range")


def _image_data_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """vtkImageData (origin 0, spacing 1, as volume nodes want it) holding a ``(C, I, J, K)`` array."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    channels, size_i, size_j, size_k = array.shape
    # (C, I, J, K) -> (K, J, I, C) C-ordered: i fastest, channels interleaved, as VTK stores voxels.
    flat = np.ascontiguousarray(array.transpose(3, 2, 1, 0)).reshape(-1, channels)
    vtk_array = numpy_support.numpy_to_vtk(flat if channels > 1 else flat[:, 0], deep=True)
    vtk_array.SetName("ImageScalars")
    image = vtk.vtkImageData()
    image.SetDimensions(size_i, size_j, size_k)
    image.GetPointData().SetScalars(vtk_array)
    return image


def _present_values(array: np.ndarray) -> list[int]:
    """The non-zero values of an integer label array, increasing (bincount: fast on large maps)."""
    if array.size == 0:
        return []
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        # memory order: no copy of a transposed (NIfTI/NRRD axis order) view; the order of the voxels is irrelevant
        return [int(v) for v in np.flatnonzero(np.bincount(array.ravel(order="K"))) if v > 0]
    return [int(v) for v in np.unique(array) if v != 0]


def _palette_color(value: int) -> tuple[float, float, float]:
    """A distinct, deterministic color for a label value that has no color in the label table."""
    hue = (value * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.9)


def _color_table_node(scene: Any, name: str, labels: Sequence[LabelInfo]) -> Any:
    """A user color table node with an entry (name, color) per label; entry 0 is background."""
    color_node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{name}_ColorTable")
    color_node.SetTypeToUser()
    color_node.SetHideFromEditors(False)
    highest = max([label.value for label in labels] + [0])
    color_node.SetNumberOfColors(highest + 1)
    color_node.GetLookupTable().SetRange(0, highest)
    color_node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for label in labels:
        if label.value > 0:
            color_node.SetColor(label.value, label.name, *(float(c) for c in label.color), 1.0)
    return color_node


def volume_to_volume_node(
    volume: Volume,
    scene: Any | None = None,
    name: str = "Volume",
    *,
    labelmap: bool = False,
    labels: Sequence[LabelInfo] | None = None,
) -> Any:
    """Add a volume node holding ``volume`` (voxels copied, affine as IJKToRAS) to ``scene``.

    Args:
        volume: the image; one channel gives a scalar (or labelmap) node, several a vector node.
        scene: the MRML scene (``None``: ``slicer.mrmlScene``).
        name: node name.
        labelmap: make a ``vtkMRMLLabelMapVolumeNode`` (integer voxels, stored in the smallest
            integer type that holds them).
        labels: for a labelmap, names and colors of its values (a color table node is made).

    Returns:
        The new ``vtkMRMLScalarVolumeNode``, ``vtkMRMLLabelMapVolumeNode`` or
        ``vtkMRMLVectorVolumeNode``, with a display node.
    """
    scene = _resolve_scene(scene)
    array = volume.array
    if labelmap:
        if volume.num_channels != 1:
            raise ImageFormatError(f"a label map has one channel; volume '{name}' has {volume.num_channels}")
        array = _compact_label_array(array, f"label map '{name}'")
        node_class = "vtkMRMLLabelMapVolumeNode"
    else:
        node_class = "vtkMRMLScalarVolumeNode" if volume.num_channels == 1 else "vtkMRMLVectorVolumeNode"
    node = scene.AddNewNodeByClass(node_class, name)
    node.SetAndObserveImageData(_image_data_from_array(array))
    node.SetIJKToRASMatrix(_vtk_matrix_from_array(volume.affine))
    if labelmap:
        if labels is None and scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is None:
            # Outside the application the default "Labels" table is absent: make one for the values present.
            labels = [LabelInfo(v, f"Label {v}", _palette_color(v)) for v in _present_values(array) if v > 0]
        color_node = _color_table_node(scene, name, labels) if labels is not None else None
        display_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
        if color_node is not None:
            display_node.SetAndObserveColorNodeID(color_node.GetID())
        else:
            display_node.SetDefaultColorMap()
        node.SetAndObserveDisplayNodeID(display_node.GetID())
    else:
        node.CreateDefaultDisplayNodes()
    return node


def export_volume_node(
    node: Any, path: str | os.PathLike, *, labels: Sequence[LabelInfo] | None = None
) -> Path:
    """Write a volume node to ``path`` with its geometry (the worker-input path of the main flow).

    The format follows the extension (``.nii.gz``, ``.nrrd``, ``.seg.nrrd``, ``.mha``); the file is
    written atomically. Linear parent transforms are hardened into the written geometry.

    Returns:
        The written path.
    """
    return write_volume(volume_node_to_volume(node), Path(path), labels=list(labels) if labels else None)


# --------------------------------------------------------------------------- segmentations


def _ensure_segmentation_converters() -> None:
    """Register the segmentation representation converters when nothing has (the ``slicer-core`` case).

    The Slicer application registers them at startup; without them a segmentation cannot even hold
    an empty binary labelmap.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    for rule_class in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        factory.RegisterConverterRule(rule_class())


def _segment_tag(segment: Any, tag: str) -> str | None:
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag, value) else None


def _closed_surface_name() -> str:
    return slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()


def _label_map_array(label_map: str | os.PathLike | Volume) -> tuple[np.ndarray, np.ndarray, list[LabelInfo]]:
    """Read/validate a label map: the ``(I, J, K)`` integer array, the affine and the stored label table."""
    if isinstance(label_map, Volume):
        volume, what = label_map, "the label map"
    else:
        volume, what = read_volume(Path(label_map)), f"label map {label_map}"
    if volume.num_channels != 1:
        raise ImageFormatError(f"{what} has {volume.num_channels} channels; a label map has one")
    array = _compact_label_array(volume.array[0], what)
    if array.size and int(array.min()) < 0:
        raise ImageFormatError(f"{what} has negative values ({int(array.min())}); label values must be >= 0")
    stored_labels = volume.meta.get("labels")
    return array, volume.affine, list(stored_labels) if isinstance(stored_labels, list) else []


def _check_label_table(labels: Sequence[LabelInfo]) -> dict[int, LabelInfo]:
    table: dict[int, LabelInfo] = {}
    for label in labels:
        if label.value < 0:
            raise MedSegNASError(f"label table entry '{label.name}' has a negative value {label.value}")
        if label.value in table:
            raise MedSegNASError(
                f"label table has value {label.value} twice ('{table[label.value].name}' and '{label.name}')"
            )
        table[label.value] = label
    return table


def _place_next_to(scene: Any, node: Any, reference_node: Any) -> None:
    """Put ``node`` in the subject hierarchy folder/study of ``reference_node`` (when there is one)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    invalid = hierarchy.GetInvalidItemID()
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    item = hierarchy.GetItemByDataNode(node)
    if reference_item == invalid or item == invalid:
        return
    parent = hierarchy.GetItemParent(reference_item)
    if parent != invalid and parent != hierarchy.GetSceneItemID():
        hierarchy.SetItemParent(item, parent)


def labelmap_to_segmentation_node(
    label_map: str | os.PathLike | Volume,
    labels: Sequence[LabelInfo] | None,
    scene: Any | None = None,
    *,
    reference_volume_node: Any,
    name: str = "Segmentation",
    replace_node: Any | None = None,
    keep_empty_segments: bool = False,
) -> Any:
    """Turn a label map into a segmentation node with one named, colored segment per label.

    Segments are made for the non-zero values present in the map, in increasing value order, with
    ID ``label_<value>``, name and color from ``labels`` and the value in the :data:`LABEL_VALUE_TAG`
    tag. Values absent from the map get no segment unless ``keep_empty_segments`` (then every
    non-zero table entry has one); either way, a value keeps its ID and tag, so nothing shifts.
    A value present in the map but missing from the table still gets a segment ("Label <value>",
    a generated color): no voxel is dropped. Value 0 is background.

    The label map is imported as it is (one shared labelmap layer, Slicer's
    ``ImportLabelmapToSegmentationNode``); the segmentation's reference geometry and its node
    reference are set from ``reference_volume_node``, which should be the volume that was segmented.

    Args:
        label_map: a label-map file (any format :func:`read_volume` reads) or a one-channel Volume.
        labels: label table (value, name, color); ``None``: the table stored with the label map
            (``meta["labels"]``, e.g. from a ``.seg.nrrd``), else generated names and colors.
        scene: the MRML scene (``None``: ``slicer.mrmlScene``).
        reference_volume_node: the segmented volume node.
        name: name of the segmentation node.
        replace_node: an existing segmentation node to clear and refill (re-running a model); its
            display node, references and 3D-surface choice are kept.
        keep_empty_segments: also make (empty) segments for table entries absent from the map.

    Returns:
        The ``vtkMRMLSegmentationNode`` (``replace_node`` when given).
    """
    scene = _resolve_scene(scene)
    _ensure_segmentation_converters()
    array, affine, stored_labels = _label_map_array(label_map)
    table = _check_label_table(stored_labels if labels is None else labels)
    present = set(_present_values(array))
    wanted = sorted(present | ({v for v in table if v > 0} if keep_empty_segments else set()))

    # Everything that can fail on bad input is checked above, before a node to replace is touched.
    if replace_node is not None:
        if not replace_node.IsA("vtkMRMLSegmentationNode"):
            raise MedSegNASError(f"cannot replace {_node_label(replace_node)}: it is not a segmentation node")
        segmentation_node = replace_node
        had_surfaces = segmentation_node.GetSegmentation().ContainsRepresentation(_closed_surface_name())
        segmentation_node.GetSegmentation().RemoveAllSegments()
        segmentation_node.GetSegmentation().SetSourceRepresentationName(_BINARY_LABELMAP)
        segmentation_node.SetName(name)
    else:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        had_surfaces = False
    was_modifying = segmentation_node.StartModify()  # one update of views and panels, not one per segment
    try:
        _fill_segmentation(segmentation_node, array, affine, table, present, wanted, reference_volume_node)
        if had_surfaces:
            segmentation_node.CreateClosedSurfaceRepresentation()
    finally:
        segmentation_node.EndModify(was_modifying)
    _place_next_to(scene, segmentation_node, reference_volume_node)
    return segmentation_node


def _fill_segmentation(
    segmentation_node: Any,
    array: np.ndarray,
    affine: np.ndarray,
    table: Mapping[int, LabelInfo],
    present: set[int],
    wanted: Sequence[int],
    reference_volume_node: Any,
) -> None:
    """Add the segments ``wanted`` (named from ``table``) and import the label map into them."""
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    segmentation = segmentation_node.GetSegmentation()
    for value in wanted:
        label = table.get(value)
        segment = slicer.vtkSegment()
        segment.SetName(label.name if label else f"Label {value}")
        segment.SetColor(*(float(c) for c in (label.color if label else _palette_color(value))))
        # Explicit names and colors: Slicer must not replace them from a terminology entry.
        segment.SetNameAutoGenerated(label is None)
        segment.SetColorAutoGenerated(label is None)
        segment.SetTag(LABEL_VALUE_TAG, str(value))
        segmentation.AddSegment(segment, segment_id_for_label(value))

    if present:
        # The import maps label value n to the (n-1)-th ID of this list; "" leaves a value out.
        segment_ids = vtk.vtkStringArray()
        for value in range(1, max(present) + 1):
            segment_ids.InsertNextValue(segment_id_for_label(value) if value in present else "")
        labelmap_node = slicer.vtkMRMLLabelMapVolumeNode()  # temporary, never added to the scene
        labelmap_node.SetAndObserveImageData(_image_data_from_array(array[None]))
        labelmap_node.SetIJKToRASMatrix(_vtk_matrix_from_array(affine))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            labelmap_node, segmentation_node, segment_ids
        ):
            raise MedSegNASError(
                f"Slicer could not import the label map into segmentation {_node_label(segmentation_node)}"
            )


def _segment_values(segmentation_node: Any, labels: Sequence[LabelInfo] | None) -> list[tuple[str, int]]:
    """(segment ID, label value) for the segments to export, in segment order (later ones paint over).

    With ``labels``: a segment takes the value of the table entry with its name, else its stored
    value if that is in the table; other segments are left out. Without: the stored value
    (:data:`LABEL_VALUE_TAG`, else an ID ``label_<value>``), and segments with neither (drawn by
    hand) get the next values above the highest one used.
    """
    segmentation = segmentation_node.GetSegmentation()
    segment_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]

    def stored_value(segment_id: str) -> int | None:
        tag = _segment_tag(segmentation.GetSegment(segment_id), LABEL_VALUE_TAG)
        if tag is not None and tag.strip().isdigit():
            return int(tag)
        match = _SEGMENT_ID_PATTERN.match(segment_id)
        return int(match.group(1)) if match else None

    pairs: list[tuple[str, int]] = []
    if labels is not None:
        table = _check_label_table(labels)
        by_name = {label.name: label.value for label in labels}
        for segment_id in segment_ids:
            value = by_name.get(segmentation.GetSegment(segment_id).GetName())
            if value is None:
                value = stored_value(segment_id)
                value = value if value in table else None
            if value is not None and value > 0:
                pairs.append((segment_id, value))
        return pairs

    values = {segment_id: stored_value(segment_id) for segment_id in segment_ids}
    next_value = max([v for v in values.values() if v is not None] + [0]) + 1
    for segment_id in segment_ids:
        value = values[segment_id]
        if value is None or value <= 0:
            value, next_value = next_value, next_value + 1
        pairs.append((segment_id, value))
    return pairs


def segmentation_node_to_labelmap(
    segmentation_node: Any,
    reference_volume_node: Any,
    labels: Sequence[LabelInfo] | None = None,
) -> Volume:
    """The label map of a segmentation on exactly the grid of ``reference_volume_node``.

    Label values follow ``labels`` (matched by segment name, then by stored value) when given,
    else each segment's stored value (see :func:`labelmap_to_segmentation_node`). Where segments
    overlap, the later segment wins. Transforms between the segmentation and the volume are
    applied (nearest-neighbour resampling), as Slicer's own export does.

    Returns:
        Volume with a ``(1, I, J, K)`` uint8 array (uint16 when a value exceeds 255; int32 beyond
        65535) on the reference volume's grid, and the reference volume's affine (linear parent
        transforms applied, as :func:`volume_node_to_volume` gives it).
    """
    return segments_to_labelmap(
        segmentation_node, reference_volume_node, _segment_values(segmentation_node, labels)
    )


def segments_to_labelmap(
    segmentation_node: Any,
    reference_volume_node: Any,
    segment_values: Sequence[tuple[str, int]],
) -> Volume:
    """The label map of chosen segments, each painted with a chosen value, on the grid of a volume node.

    Args:
        segmentation_node: the segmentation.
        reference_volume_node: the volume node whose voxel grid the label map takes (it need not
            be in a scene).
        segment_values: ``(segment ID, label value > 0)`` pairs; where segments overlap, the later
            pair wins. Segments not listed are left out.

    Returns:
        Volume as :func:`segmentation_node_to_labelmap` returns it.
    """
    _ensure_segmentation_converters()
    reference_image = reference_volume_node.GetImageData()
    if reference_image is None:
        raise ImageFormatError(f"reference volume {_node_label(reference_volume_node)} has no voxel data")
    affine = _world_affine(reference_volume_node)
    size_i, size_j, size_k = reference_image.GetDimensions()
    pairs = list(segment_values)
    segmentation = segmentation_node.GetSegmentation()
    for segment_id, value in pairs:
        if segmentation.GetSegment(segment_id) is None:
            raise MedSegNASError(
                f"segmentation {_node_label(segmentation_node)} has no segment {segment_id!r}"
            )
        if int(value) <= 0:
            raise MedSegNASError(f"segment {segment_id!r}: label value {value} must be > 0 (0 is background)")
    highest = max([value for _, value in pairs] + [0])
    dtype = np.uint8 if highest <= 255 else np.uint16 if highest <= 65535 else np.int32
    meta = {"node_name": segmentation_node.GetName(), "labelmap": True}
    if not pairs:
        return Volume(np.zeros((1, size_i, size_j, size_k), dtype=dtype), affine, meta)
    if len(pairs) > np.iinfo(np.int16).max:
        raise MedSegNASError(f"segmentation {_node_label(segmentation_node)} has too many segments to export")

    if not segmentation_node.CreateBinaryLabelmapRepresentation():
        raise MedSegNASError(
            f"segmentation {_node_label(segmentation_node)} cannot be converted to a label map"
        )
    # Slicer merges into a signed 16-bit image: export segment n as n + 1, then map to the real values.
    segment_ids = vtk.vtkStringArray()
    label_values = vtk.vtkIntArray()
    for index, (segment_id, _) in enumerate(pairs):
        segment_ids.InsertNextValue(segment_id)
        label_values.InsertNextValue(index + 1)
    value_of_index = np.array([0] + [value for _, value in pairs], dtype=dtype)
    merged = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node,
        reference_volume_node,
        segment_ids,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
        merged,
        label_values,
    )
    scalars = merged.GetPointData().GetScalars()
    if scalars is None or tuple(merged.GetDimensions()) != (size_i, size_j, size_k):
        raise MedSegNASError(
            f"Slicer could not export segmentation {_node_label(segmentation_node)} "
            f"on the grid of {_node_label(reference_volume_node)}"
        )
    kji = numpy_support.vtk_to_numpy(scalars).reshape(size_k, size_j, size_i)
    array = value_of_index[np.ascontiguousarray(kji.transpose(2, 1, 0))][None]
    return Volume(array, affine, meta)


def save_segmentation(segmentation_node: Any, path: str | os.PathLike) -> Path:
    """Write a segmentation node to a ``.seg.nrrd`` file (names, colors, tags, reference geometry).

    Written through ``vtkMRMLSegmentationStorageNode`` into a temporary file in the same folder,
    then renamed, so an existing file is replaced only by a complete one.

    Returns:
        The written path.
    """
    path = Path(path).absolute()
    if not path.name.lower().endswith(".nrrd"):
        raise MedSegNASError(f"cannot save segmentation as {path}: use a .seg.nrrd file name")
    if not path.parent.is_dir():
        raise MedSegNASError(f"cannot save segmentation as {path}: folder {path.parent} does not exist")
    _ensure_segmentation_converters()
    source = segmentation_node.GetSegmentation().GetSourceRepresentationName()
    if source != _BINARY_LABELMAP:
        raise MedSegNASError(
            f"segmentation {_node_label(segmentation_node)} is stored as '{source}', not as a binary labelmap; "
            "set its source representation to binary labelmap before saving it as .seg.nrrd"
        )
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp.seg.nrrd")
    storage_node = slicer.vtkMRMLSegmentationStorageNode()
    storage_node.SetFileName(str(temporary))
    storage_node.SetUseCompression(1)
    try:
        if not storage_node.WriteData(segmentation_node):
            raise MedSegNASError(f"could not write segmentation {_node_label(segmentation_node)} to {path}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_segmentation(path: str | os.PathLike, scene: Any | None = None, *, name: str | None = None) -> Any:
    """Load a ``.seg.nrrd`` file into a new segmentation node (with storage and display nodes).

    Args:
        path: the segmentation file.
        scene: the MRML scene (``None``: ``slicer.mrmlScene``).
        name: node name (default: the file name without ``.seg.nrrd``).

    Raises:
        ImageReadError: the file is missing or is not a segmentation Slicer can read.
    """
    scene = _resolve_scene(scene)
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"segmentation file {path} does not exist")
    _ensure_segmentation_converters()
    if name is None:
        name = re.sub(r"(\.seg)?\.nrrd$", "", path.name, flags=re.IGNORECASE)
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage_node = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage_node.SetFileName(str(path))
    segmentation_node.SetAndObserveStorageNodeID(storage_node.GetID())
    if not storage_node.ReadData(segmentation_node):
        scene.RemoveNode(segmentation_node)
        scene.RemoveNode(storage_node)
        raise ImageReadError(f"{path} is not a segmentation file Slicer can read (expected a .seg.nrrd)")
    segmentation_node.CreateDefaultDisplayNodes()
    return segmentation_node


# --------------------------------------------------------------------------- tables


def _columns_from_rows(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
) -> dict[str, list[Any]]:
    """Column name -> values, from a list of row dicts (missing cells: None) or a dict of columns."""
    if isinstance(rows, Mapping):
        columns = {str(name): list(values) for name, values in rows.items()}
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise MedSegNASError(f"table columns have different lengths: {sorted(lengths)}")
        return columns
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(str(key) for key in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _vtk_column(name: str, values: list[Any]) -> vtk.vtkAbstractArray:
    """A typed VTK column: int (all integers), double (numbers, None -> NaN) or string."""
    present = [v for v in values if v is not None]
    is_int = all(isinstance(v, Integral) for v in present)
    is_number = all(isinstance(v, Real) for v in present)
    if present and is_int and None not in values and all(-(2**31) <= int(v) < 2**31 for v in present):
        column = vtk.vtkIntArray()
        for value in values:
            column.InsertNextValue(int(value))
    elif present and is_number:
        column = vtk.vtkDoubleArray()
        for value in values:
            column.InsertNextValue(math.nan if value is None else float(value))
    else:
        column = vtk.vtkStringArray()
        for value in values:
            column.InsertNextValue("" if value is None else str(value))
    column.SetName(name)
    return column


def metrics_to_table_node(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    scene: Any | None = None,
    name: str = "Metrics",
    *,
    replace_node: Any | None = None,
) -> Any:
    """A table node from rows (``[{"label": "liver", "dice": 0.93}, ...]``) or columns (``{"dice": [...]}``).

    Column types: ``int`` when every value is an integer (bool counts), ``double`` when every value
    is a number (missing -> NaN), ``string`` otherwise (missing -> ""). Column order: first seen.

    Args:
        rows: the table.
        scene: the MRML scene (``None``: ``slicer.mrmlScene``).
        name: node name.
        replace_node: an existing table node whose columns are replaced.

    Returns:
        The ``vtkMRMLTableNode``.
    """
    scene = _resolve_scene(scene)
    columns = _columns_from_rows(rows)
    if replace_node is not None:
        if not replace_node.IsA("vtkMRMLTableNode"):
            raise MedSegNASError(f"cannot replace {_node_label(replace_node)}: it is not a table node")
        table_node = replace_node
        table_node.SetName(name)
    else:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for column_name, values in columns.items():
        column = _vtk_column(column_name, values)
        table_node.AddColumn(column)  # records the column type in the schema (kept in .schema.tsv)
    table_node.EndModify(was_modifying)
    return table_node
