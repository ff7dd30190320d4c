"""Datasets for the Search and train section: exported from scene volumes and segmentations, or loaded.

:func:`export_scene_dataset` writes chosen ``(volume node, segmentation node)`` pairs of the scene
as a Medical Segmentation Decathlon (MSD) dataset that ``medsegnas search``/``train`` (and
``medsegnas dataset check``) read like any other::

    <folder>/dataset.json          name, modality, labels {"0": "background", "1": <segment name>, ...},
                                   label_colors, training [{"image", "label"}], numTraining
    <folder>/imagesTr/<case>.nii.gz   the volume, with its geometry (linear transforms hardened)
    <folder>/labelsTr/<case>.nii.gz   the label map on the volume's voxel grid

Rules (checked before anything is written; the error names the node and what to do):

* at least 2 pairs (training needs cases to train and to validate on);
* every segmentation has at least one segment, and no two segments of one segmentation share a name;
* labels are matched across cases **by segment name** (case and spaces ignored): one label value per
  name, numbered in order of first appearance, whatever the segments' IDs or label values in each
  segmentation. A case may lack some labels (e.g. no tumor in it), but every case must share at least
  one segment name with the others; a case that shares none is named differently (e.g. "Segment_1"
  vs "liver") and is refused rather than silently made into other classes: rename its segments;
* each label map is made on the volume's grid (Slicer resamples the segmentation, nearest neighbour,
  through transforms); a segment that loses all its voxels there does not lie on the volume
  (wrong pair, or unmatched geometry) and is refused; volumes must have one channel and voxels.

The dataset folder is written beside its final place and renamed into it at the end, so a failed
export leaves nothing behind, and an existing non-empty folder is never overwritten.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json_atomic
from ..errors import DatasetError, MedSegNASError
from .panel_terminology import apply_terminology

__all__ = ["export_scene_dataset", "load_dataset_case", "scene_segmentation_pairs", "segment_names"]


def scene_segmentation_pairs(scene: Any) -> list[tuple[Any, Any]]:
    """``(volume node, segmentation node)`` for every segmentation node of the scene that has segments
    and a reference volume (the volume it was drawn on / made for), in scene order: the rows the
    panel offers to build a dataset from."""
    nodes = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    pairs = []
    for index in range(nodes.GetNumberOfItems()):
        segmentation_node = nodes.GetItemAsObject(index)
        volume = segmentation_node.GetNodeReference(
            segmentation_node.GetReferenceImageGeometryReferenceRole()
        )
        if (
            volume is not None
            and volume.IsA("vtkMRMLScalarVolumeNode")
            and not volume.IsA("vtkMRMLLabelMapVolumeNode")
            and segmentation_node.GetSegmentation().GetNumberOfSegments() > 0
        ):
            pairs.append((volume, segmentation_node))
    return pairs


def segment_names(segmentation_node: Any) -> list[str]:
    """The names of a segmentation's segments, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _label_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _case_stem(name: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "case"
    unique, number = stem, 2
    while unique.lower() in used:
        unique, number = f"{stem}_{number}", number + 1
    used.add(unique.lower())
    return unique


def _segments_of(segmentation_node: Any) -> list[tuple[str, str, tuple[float, float, float]]]:
    """(segment ID, name, color) of every segment; refuses none and duplicate names."""
    segmentation = segmentation_node.GetSegmentation()
    found, seen = [], {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        name = (segment.GetName() or segment_id).strip()
        key = _label_key(name)
        if key in seen:
            raise DatasetError(
                f"segmentation '{segmentation_node.GetName()}' has two segments named '{name}'; "
                "a label must be one segment: rename or merge them (Segment Editor)"
            )
        seen[key] = segment_id
        found.append((segment_id, name, tuple(float(c) for c in segment.GetColor())))
    if not found:
        raise DatasetError(
            f"segmentation '{segmentation_node.GetName()}' has no segments: draw or load its labels first"
        )
    return found


def _check_names_shared(cases: Sequence[tuple[Any, list[tuple[str, str, Any]]]]) -> None:
    """Every case shares at least one segment name with another case (else its naming differs)."""
    keys = [{_label_key(name) for _, name, _ in segments} for _, segments in cases]
    isolated = []
    for index, (segmentation_node, segments) in enumerate(cases):
        others = set().union(*(k for j, k in enumerate(keys) if j != index))
        if not keys[index] & others:
            names = ", ".join(f"'{name}'" for _, name, _ in segments)
            isolated.append(f"'{segmentation_node.GetName()}' has {names}")
    if isolated:
        raise DatasetError(
            f"segment names differ between the cases ({'; '.join(isolated)}): labels are matched by name, "
            "so every case must share a segment name with another; rename its segments (Segment Editor)"
        )


def export_scene_dataset(
    pairs: Sequence[tuple[Any, Any]],
    folder: str | os.PathLike[str],
    *,
    name: str = "SceneDataset",
    modality: str = "CT",
    description: str = "Exported from 3D Slicer scene volumes and segmentations by MedSegNAS",
) -> Path:
    """Write scene ``(volume node, segmentation node)`` pairs as an MSD dataset (see module doc).

    Args:
        pairs: one pair per case; the segmentation is exported on the volume's voxel grid.
        folder: the dataset folder to create (missing or empty).
        name: the dataset's ``name``.
        modality: the images' modality (``modality {"0": ...}``), e.g. ``CT`` or ``MRI``.
        description: the dataset's ``description``.

    Returns:
        The written ``dataset.json``.

    Raises:
        DatasetError: fewer than 2 pairs, a segmentation without segments or with two of one name,
            a case sharing no segment name with the others, a multi-channel or empty volume, a
            segment that does not lie on its volume, or a non-empty target folder.
        MedSegNASError: a volume or segmentation the bridge cannot export (non-linear transform...).
    """
    from ..data.io import write_volume
    from ..data.volume import LabelInfo
    from .slicer_bridge import segments_to_labelmap, volume_node_to_volume

    pairs = [(volume, segmentation) for volume, segmentation in pairs]
    if len(pairs) < 2:
        raise DatasetError(
            f"a dataset needs at least 2 cases (volume with segmentation) to train and validate on; got {len(pairs)}"
        )
    for volume_node, segmentation_node in pairs:
        if volume_node is None or segmentation_node is None:
            raise DatasetError("every case needs both a volume and a segmentation node")
        if volume_node.GetImageData() is None:
            raise DatasetError(f"volume '{volume_node.GetName()}' has no voxels")
    cases = [(segmentation, _segments_of(segmentation)) for _, segmentation in pairs]
    _check_names_shared(cases)

    # One value per segment name, in order of first appearance.
    labels: dict[str, LabelInfo] = {}
    for _, segments in cases:
        for _, segment_name, color in segments:
            key = _label_key(segment_name)
            if key not in labels:
                labels[key] = LabelInfo(len(labels) + 1, segment_name, color)

    folder = Path(folder).expanduser().absolute()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DatasetError(f"{folder} already exists and is not empty; choose a new folder for the dataset")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        training, used = [], set()
        for (volume_node, segmentation_node), (_, segments) in zip(pairs, cases, strict=True):
            volume = volume_node_to_volume(volume_node)
            if volume.num_channels != 1:
                raise DatasetError(
                    f"volume '{volume_node.GetName()}' has {volume.num_channels} channels; "
                    "export one-channel volumes (one image per modality is not supported here)"
                )
            values = [
                (segment_id, labels[_label_key(segment_name)].value)
                for segment_id, segment_name, _ in segments
            ]
            label_map = segments_to_labelmap(segmentation_node, volume_node, values)
            present = set(np.unique(label_map.array).tolist())
            for segment_id, segment_name, _ in segments:
                value = labels[_label_key(segment_name)].value
                if value not in present and _segment_has_voxels(segmentation_node, segment_id):
                    raise DatasetError(
                        f"segment '{segment_name}' of '{segmentation_node.GetName()}' has no voxel on the grid of "
                        f"volume '{volume_node.GetName()}': they do not overlap (wrong pair, or a transform "
                        "missing); pair the segmentation with the volume it was drawn on"
                    )
            stem = _case_stem(volume_node.GetName() or "case", used)
            image = write_volume(volume, staging / "imagesTr" / f"{stem}.nii.gz")
            label = write_volume(label_map, staging / "labelsTr" / f"{stem}.nii.gz")
            training.append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
        table = sorted(labels.values(), key=lambda label: label.value)
        write_json_atomic(
            staging / "dataset.json",
            {
                "name": name,
                "description": description,
                "reference": "3D Slicer scene",
                "tensorImageSize": "3D",
                "modality": {"0": modality},
                "labels": {"0": "background", **{str(label.value): label.name for label in table}},
                "label_colors": {str(label.value): [round(255 * c) for c in label.color] for label in table},
                "numTraining": len(training),
                "numTest": 0,
                "training": training,
                "test": [],
            },
        )
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder / "dataset.json"


def _segment_has_voxels(segmentation_node: Any, segment_id: str) -> bool:
    """Whether the segment has any voxel in its own geometry (an empty segment is not an error)."""
    import vtk

    from .slicer_bridge import _ensure_segmentation_converters

    _ensure_segmentation_converters()
    segmentation_node.CreateBinaryLabelmapRepresentation()
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    representation = (
        segment.GetRepresentation(segmentation_node.GetSegmentation().GetSourceRepresentationName())
        if segment is not None
        else None
    )
    if representation is None or not representation.IsA("vtkOrientedImageData"):
        return True  # a closed surface: assume it has content
    image = vtk.vtkImageData()
    image.ShallowCopy(representation)
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return False
    from vtk.util import numpy_support

    layer_value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else 1
    return bool(np.any(numpy_support.vtk_to_numpy(scalars) == layer_value))


def load_dataset_case(
    dataset: str | os.PathLike[str], case_index: int = 0, scene: Any | None = None
) -> tuple[Any, Any | None]:
    """Load training case ``case_index`` of a dataset as a volume node and a segmentation node.

    Args:
        dataset: ``dataset.json``, its folder, or a datalist.
        case_index: index into the dataset's training cases.
        scene: MRML scene (default: the application's).

    Returns:
        ``(volume node, segmentation node)``; the segmentation is ``None`` for an unlabelled case.
    """
    from ..data.datasets import load_dataset
    from ..data.io import read_volume
    from .slicer_bridge import _resolve_scene, labelmap_to_segmentation_node, volume_to_volume_node

    description = load_dataset(dataset)
    if not 0 <= case_index < len(description.cases):
        raise MedSegNASError(
            f"dataset {description.path} has {len(description.cases)} training case(s); no case {case_index}"
        )
    case = description.cases[case_index]
    scene = _resolve_scene(scene)
    volume_node = volume_to_volume_node(read_volume(case.images[0]), scene, name=case.name)
    segmentation_node = None
    if case.label is not None:
        segmentation_node = labelmap_to_segmentation_node(
            case.label,
            description.labels or None,
            scene,
            reference_volume_node=volume_node,
            name=f"{case.name} labels",
        )
        apply_terminology(segmentation_node)
    return volume_node, segmentation_node
