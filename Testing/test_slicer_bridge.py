"""The Slicer bridge with the real MRML classes of the ``slicer-core`` wheel.

What a user of the extension would check: a volume keeps its voxels and geometry on the way
file -> node -> file (and agrees with Slicer's own reader), a model's label map becomes a
segmentation with the right names and colors that converts back voxel for voxel and survives a
``.seg.nrrd`` round trip, re-running a model replaces its result, and metrics land in a typed table.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the Slicer bridge needs slicer-core (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from MedSegNASLib.data.io import read_volume, write_volume  # noqa: E402
from MedSegNASLib.data.volume import LPS_TO_RAS, LabelInfo, Volume  # noqa: E402
from MedSegNASLib.errors import ImageFormatError, ImageReadError, MedSegNASError  # noqa: E402
from MedSegNASLib.panels import slicer_bridge as bridge  # noqa: E402

SHAPE = (24, 20, 16)  # I, J, K
SPACING = (0.8, 1.1, 2.5)
ATOL = 1e-6

LABELS = [
    LabelInfo(1, "liver", (0.85, 0.4, 0.3)),
    LabelInfo(2, "spleen", (0.6, 0.2, 0.7)),
    LabelInfo(3, "left kidney", (0.2, 0.8, 0.3)),  # absent from the label map below
    LabelInfo(5, "pancreas", (0.95, 0.85, 0.1)),
]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (
        math.cos(rx),
        math.sin(rx),
        math.cos(ry),
        math.sin(ry),
        math.cos(rz),
        math.sin(rz),
    )
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _oblique_affine() -> np.ndarray:
    """IJK -> RAS: rotated about all three axes, anisotropic voxels, off-centre origin."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.35, -0.25, 0.5) @ np.diag(SPACING)
    affine[:3, 3] = (-12.25, 40.5, 7.75)
    return affine


def _intensities() -> np.ndarray:
    """A (I, J, K) int16 image whose voxels all differ along each axis (a transposition shows)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (i * 7 + j * 131 + k * 1733 - 900).astype(np.int16)


def _label_map() -> np.ndarray:
    """(I, J, K) uint8 labels 1, 2 and 5 in blocks of different sizes (3 absent), touching blocks."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:10, 3:12, 1:7] = 1
    labels[10:20, 3:8, 1:5] = 2
    labels[5:22, 13:19, 9:15] = 5
    labels[0, 0, 0] = 5  # a corner voxel: the grid must not be off by one
    return labels


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def lps_nrrd(tmp_path):
    """An oblique, anisotropic NRRD stored in LPS by ITK (as most scanners' NRRDs are)."""
    affine_lps = LPS_TO_RAS @ _oblique_affine()
    image = sitk.GetImageFromArray(_intensities().transpose(2, 1, 0))  # SimpleITK arrays are K, J, I
    image.SetSpacing(SPACING)
    image.SetOrigin(affine_lps[:3, 3].tolist())
    image.SetDirection((affine_lps[:3, :3] / np.array(SPACING)).ravel().tolist())
    path = tmp_path / "ct_oblique.nrrd"
    sitk.WriteImage(image, str(path), True)
    return path


@pytest.fixture
def ras_nifti(tmp_path):
    """The same image as a NIfTI written by nibabel with a RAS affine (sform and qform)."""
    image = nib.Nifti1Image(_intensities(), _oblique_affine())
    image.set_qform(_oblique_affine(), code=1)
    image.set_sform(_oblique_affine(), code=1)
    path = tmp_path / "ct_oblique.nii.gz"
    nib.save(image, str(path))
    return path


@pytest.fixture
def reference_node(scene, lps_nrrd):
    return bridge.volume_to_volume_node(read_volume(lps_nrrd), scene, "CT")


def _slicer_reads(path, scene):
    """Slicer's own volume reader (vtkMRMLVolumeArchetypeStorageNode) on ``path``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read by Slicer")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def _slicer_exports_segment(segmentation_node, segment_id, reference_node) -> np.ndarray | None:
    """Slicer's own export of one segment on the reference grid, as an (I, J, K) array."""
    scene = segmentation_node.GetScene()
    labelmap_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported by Slicer")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation_node,
        [segment_id],
        labelmap_node,
        reference_node,
        slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
    )
    np.testing.assert_allclose(_ijk_to_ras(labelmap_node), _ijk_to_ras(reference_node), atol=ATOL)
    array = slicer.util.arrayFromVolume(labelmap_node).transpose(2, 1, 0).copy()
    scene.RemoveNode(labelmap_node)
    return array


def _segments(segmentation_node) -> dict[str, tuple[str, tuple[float, float, float]]]:
    segmentation = segmentation_node.GetSegmentation()
    result = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        result[segment_id] = (segment.GetName(), tuple(segment.GetColor()))
    return result


def _expected_segments(values) -> dict[str, tuple[str, tuple[float, float, float]]]:
    table = {label.value: label for label in LABELS}
    return {f"label_{v}": (table[v].name, table[v].color) for v in values}


def _assert_segments(segmentation_node, values) -> None:
    found = _segments(segmentation_node)
    expected = _expected_segments(values)
    assert list(found) == list(expected)
    for segment_id, (name, color) in expected.items():
        assert found[segment_id][0] == name
        np.testing.assert_allclose(found[segment_id][1], color, atol=1e-6)


# --------------------------------------------------------------------------- volumes and geometry


@pytest.mark.parametrize("fixture_name", ["lps_nrrd", "ras_nifti"])
def test_volume_file_node_file_keeps_voxels_and_geometry(fixture_name, request, scene, tmp_path):
    path = request.getfixturevalue(fixture_name)
    volume = read_volume(path)
    assert volume.array.shape == (1, *SHAPE)
    np.testing.assert_array_equal(volume.array[0], _intensities())
    np.testing.assert_allclose(volume.affine, _oblique_affine(), atol=1e-5)  # NIfTI stores float32

    node = bridge.volume_to_volume_node(volume, scene, "CT")
    assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    assert node.GetScene() is scene and node.GetDisplayNode() is not None
    np.testing.assert_allclose(_ijk_to_ras(node), volume.affine, atol=ATOL)
    # Slicer's own accessor sees the voxels where we put them (arrayFromVolume is K, J, I).
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node).transpose(2, 1, 0), volume.array[0])

    back = bridge.volume_node_to_volume(node)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_allclose(back.affine, volume.affine, atol=ATOL)

    written = bridge.export_volume_node(node, tmp_path / f"exported{''.join(path.suffixes)}")
    reread = read_volume(written)
    np.testing.assert_array_equal(reread.array, volume.array)
    np.testing.assert_allclose(
        reread.affine, volume.affine, atol=1e-5 if fixture_name == "ras_nifti" else ATOL
    )


@pytest.mark.parametrize("fixture_name", ["lps_nrrd", "ras_nifti"])
def test_our_reader_agrees_with_slicers_reader(fixture_name, request, scene):
    """Cross-check of the I/O convention: Slicer's own reader gives the same IJKToRAS and voxels."""
    path = request.getfixturevalue(fixture_name)
    volume = read_volume(path)
    slicer_node = _slicer_reads(path, scene)
    np.testing.assert_allclose(_ijk_to_ras(slicer_node), volume.affine, atol=ATOL)
    from_slicer = bridge.volume_node_to_volume(slicer_node)
    np.testing.assert_array_equal(from_slicer.array, volume.array)


def test_exported_file_is_read_by_slicer_on_the_same_grid(scene, reference_node, tmp_path):
    written = bridge.export_volume_node(reference_node, tmp_path / "input.nii.gz")
    slicer_node = _slicer_reads(written, scene)
    np.testing.assert_allclose(_ijk_to_ras(slicer_node), _ijk_to_ras(reference_node), atol=1e-5)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(slicer_node), slicer.util.arrayFromVolume(reference_node)
    )


def test_vector_volume_channels_round_trip(scene):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(3, *SHAPE), dtype=np.uint8)
    node = bridge.volume_to_volume_node(Volume(rgb, _oblique_affine()), scene, "color")
    assert node.IsA("vtkMRMLVectorVolumeNode")
    # Slicer's accessor gives (K, J, I, components).
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node)[2, 5, 7], rgb[:, 7, 5, 2])
    back = bridge.volume_node_to_volume(node)
    np.testing.assert_array_equal(back.array, rgb)


def test_linear_parent_transform_is_hardened_into_the_affine(scene, reference_node, tmp_path):
    to_parent = np.eye(4)
    to_parent[:3, :3] = _rotation(0.1, 0.2, -0.3)
    to_parent[:3, 3] = (5.0, -3.0, 12.0)
    transform_node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    reference_node.SetAndObserveTransformNodeID(transform_node.GetID())

    volume = bridge.volume_node_to_volume(reference_node)
    np.testing.assert_allclose(volume.affine, to_parent @ _oblique_affine(), atol=ATOL)
    written = read_volume(bridge.export_volume_node(reference_node, tmp_path / "hardened.nrrd"))
    np.testing.assert_allclose(written.affine, to_parent @ _oblique_affine(), atol=ATOL)
    np.testing.assert_array_equal(written.array[0], _intensities())


def test_non_linear_parent_transform_is_refused(scene, reference_node):
    transform_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 2, point[1], point[2])
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    transform_node.SetAndObserveTransformToParent(warp)
    reference_node.SetAndObserveTransformNodeID(transform_node.GetID())
    with pytest.raises(MedSegNASError, match="non-linear transform 'warp'"):
        bridge.volume_node_to_volume(reference_node)


# --------------------------------------------------------------------------- segmentations


def test_label_map_to_segmentation_and_back(scene, reference_node):
    labels = _label_map()
    segmentation_node = bridge.labelmap_to_segmentation_node(
        Volume(labels[None], _oblique_affine()),
        LABELS,
        scene,
        reference_volume_node=reference_node,
        name="pred",
    )
    assert segmentation_node.GetName() == "pred" and segmentation_node.GetScene() is scene
    _assert_segments(segmentation_node, [1, 2, 5])  # "left kidney" is absent from the map: no segment
    assert segmentation_node.GetDisplayNode() is not None
    liver = segmentation_node.GetSegmentation().GetSegment("label_1")
    # Explicit names and colors: Slicer must not overwrite them from a terminology entry.
    assert not liver.GetNameAutoGenerated() and not liver.GetColorAutoGenerated()
    role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReferenceID(role) == reference_node.GetID()
    # Each segment holds exactly its label's voxels (Slicer's own accessor, on the reference grid).
    for value in (1, 2, 5):
        exported = _slicer_exports_segment(segmentation_node, f"label_{value}", reference_node)
        np.testing.assert_array_equal(exported > 0, labels == value)

    for table in (LABELS, None):  # by segment name, and by the value stored in the segment
        back = bridge.segmentation_node_to_labelmap(segmentation_node, reference_node, table)
        assert back.array.shape == (1, *SHAPE) and back.array.dtype == np.uint8
        np.testing.assert_array_equal(back.array[0], labels)
        np.testing.assert_allclose(back.affine, _oblique_affine(), atol=ATOL)


def test_label_map_file_with_empty_and_unknown_labels(scene, reference_node, tmp_path):
    labels = _label_map().astype(np.uint16)
    labels[20:23, 0:2, 12:16] = 300  # a value the label table does not know, above uint8
    path = write_volume(Volume(labels[None], _oblique_affine()), tmp_path / "pred.nii.gz")
    segmentation_node = bridge.labelmap_to_segmentation_node(
        path, LABELS, scene, reference_volume_node=reference_node, name="pred", keep_empty_segments=True
    )
    segments = _segments(segmentation_node)
    assert list(segments) == ["label_1", "label_2", "label_3", "label_5", "label_300"]
    assert segments["label_3"][0] == "left kidney" and segments["label_300"][0] == "Label 300"
    assert not _slicer_exports_segment(segmentation_node, "label_3", reference_node).any()
    # Without a table every voxel comes back, 300 included; with it, only the table's classes.
    everything = bridge.segmentation_node_to_labelmap(segmentation_node, reference_node).array
    assert everything.dtype == np.uint16
    np.testing.assert_array_equal(everything[0], labels)
    table_classes = bridge.segmentation_node_to_labelmap(segmentation_node, reference_node, LABELS).array
    assert table_classes.dtype == np.uint8
    np.testing.assert_array_equal(table_classes[0], np.where(labels == 300, 0, labels))


def test_segmentation_saved_as_seg_nrrd_reloads_in_a_fresh_scene(scene, reference_node, lps_nrrd, tmp_path):
    labels = _label_map()
    segmentation_node = bridge.labelmap_to_segmentation_node(
        Volume(labels[None], _oblique_affine()),
        LABELS,
        scene,
        reference_volume_node=reference_node,
        name="pred",
    )
    path = bridge.save_segmentation(segmentation_node, tmp_path / "pred.seg.nrrd")
    assert path.is_file() and [p.name for p in tmp_path.glob("*.seg.nrrd")] == ["pred.seg.nrrd"]

    fresh_scene = slicer.vtkMRMLScene()
    loaded = bridge.load_segmentation(path, fresh_scene)
    assert loaded.GetName() == "pred" and loaded.GetDisplayNode() is not None
    _assert_segments(loaded, [1, 2, 5])
    fresh_reference = bridge.volume_to_volume_node(read_volume(lps_nrrd), fresh_scene, "CT")
    for table in (LABELS, None):
        back = bridge.segmentation_node_to_labelmap(loaded, fresh_reference, table)
        np.testing.assert_array_equal(back.array[0], labels)
        np.testing.assert_allclose(back.affine, _oblique_affine(), atol=ATOL)

    # Our reader opens the file Slicer wrote: same voxels, grid and label table.
    as_read = read_volume(path)
    np.testing.assert_array_equal(as_read.array[0], labels)
    np.testing.assert_allclose(as_read.affine, _oblique_affine(), atol=ATOL)
    table = {label.value: label for label in LABELS}
    assert [(label.value, label.name) for label in as_read.meta["labels"]] == [
        (v, table[v].name) for v in (1, 2, 5)
    ]


def test_seg_nrrd_written_by_a_worker_opens_in_slicer(scene, reference_node, tmp_path):
    """The worker's output file (write_volume with a label table) read by Slicer's segmentation reader."""
    labels = _label_map()
    path = write_volume(Volume(labels[None], _oblique_affine()), tmp_path / "worker.seg.nrrd", labels=LABELS)
    loaded = bridge.load_segmentation(path, scene)
    found = sorted(name for name, _ in _segments(loaded).values())
    assert found == sorted(label.name for label in LABELS)
    back = bridge.segmentation_node_to_labelmap(loaded, reference_node, LABELS)
    np.testing.assert_array_equal(back.array[0], labels)
    # Without a label table the values come from the segment IDs/tags the file carries.
    assert sorted(loaded.GetSegmentation().GetSegmentIDs()) == [
        bridge.segment_id_for_label(label.value) for label in LABELS
    ]
    np.testing.assert_array_equal(
        bridge.segmentation_node_to_labelmap(loaded, reference_node).array[0], labels
    )

    # Imported through the bridge, the label table stored in the file is used when none is given.
    imported = bridge.labelmap_to_segmentation_node(path, None, scene, reference_volume_node=reference_node)
    _assert_segments(imported, [1, 2, 5])
    np.testing.assert_array_equal(
        bridge.segmentation_node_to_labelmap(imported, reference_node).array[0], labels
    )


def test_rerun_replaces_the_segmentation_node(scene, reference_node):
    first = _label_map()
    node = bridge.labelmap_to_segmentation_node(
        Volume(first[None], _oblique_affine()),
        LABELS,
        scene,
        reference_volume_node=reference_node,
        name="pred",
    )
    second = np.zeros(SHAPE, dtype=np.uint8)
    second[4:9, 4:9, 4:9] = 3
    replaced = bridge.labelmap_to_segmentation_node(
        Volume(second[None], _oblique_affine()),
        LABELS,
        scene,
        reference_volume_node=reference_node,
        name="pred",
        replace_node=node,
    )
    assert replaced is node
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    _assert_segments(replaced, [3])
    np.testing.assert_array_equal(
        bridge.segmentation_node_to_labelmap(replaced, reference_node).array[0], second
    )

    # A bad re-run result is refused before the previous result is touched.
    with pytest.raises(ImageFormatError, match="non-integer"):
        bridge.labelmap_to_segmentation_node(
            Volume(np.full((1, *SHAPE), 0.5), _oblique_affine()),
            LABELS,
            scene,
            reference_volume_node=reference_node,
            replace_node=node,
        )
    _assert_segments(node, [3])


def test_label_map_node_round_trip_and_hand_drawn_segments(scene, reference_node):
    labels = _label_map()
    labelmap_node = bridge.volume_to_volume_node(
        Volume(labels[None].astype(np.int64), _oblique_affine()),
        scene,
        "pred-labels",
        labelmap=True,
        labels=LABELS,
    )
    assert labelmap_node.IsA("vtkMRMLLabelMapVolumeNode")
    color_node = labelmap_node.GetDisplayNode().GetColorNode()
    assert color_node.GetColorName(5) == "pancreas"
    np.testing.assert_array_equal(bridge.volume_node_to_volume(labelmap_node).array[0], labels)

    # A segment drawn by hand (no stored value) gets the next free value when no table is given.
    segmentation_node = bridge.labelmap_to_segmentation_node(
        bridge.volume_node_to_volume(labelmap_node), LABELS, scene, reference_volume_node=reference_node
    )
    drawn = np.zeros(SHAPE, dtype=np.uint8)
    drawn[0:2, 15:20, 0:3] = 1
    segment_id = segmentation_node.GetSegmentation().AddEmptySegment("tumor", "tumor")
    drawn_node = bridge.volume_to_volume_node(
        Volume(drawn[None], _oblique_affine()), scene, "drawn", labelmap=True
    )
    drawn_image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(drawn_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        drawn_image, segmentation_node, segment_id
    )
    back = bridge.segmentation_node_to_labelmap(segmentation_node, reference_node).array[0]
    np.testing.assert_array_equal(back, np.where(drawn > 0, 6, labels))

    # A segment copied into another segmentation under a new ID keeps its value (the segment tag).
    merged_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "merged")
    merged_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    pancreas = slicer.vtkSegment()
    pancreas.DeepCopy(segmentation_node.GetSegmentation().GetSegment("label_5"))
    merged_node.GetSegmentation().AddSegment(pancreas, "pancreas from model A")
    merged = bridge.segmentation_node_to_labelmap(merged_node, reference_node).array[0]
    np.testing.assert_array_equal(merged, np.where(labels == 5, 5, 0))


def test_bad_inputs_give_clear_errors(scene, reference_node, tmp_path):
    fractional = Volume(np.full((1, *SHAPE), 0.5, dtype=np.float32), _oblique_affine())
    with pytest.raises(ImageFormatError, match="non-integer"):
        bridge.labelmap_to_segmentation_node(fractional, LABELS, scene, reference_volume_node=reference_node)
    with pytest.raises(MedSegNASError, match="value 2 twice"):
        bridge.labelmap_to_segmentation_node(
            Volume(_label_map()[None], _oblique_affine()),
            [*LABELS, LabelInfo(2, "duplicate", (0, 0, 0))],
            scene,
            reference_volume_node=reference_node,
        )
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    if not hasattr(slicer, "mrmlScene"):  # outside the application a scene must be given
        with pytest.raises(MedSegNASError, match="no MRML scene"):
            bridge.metrics_to_table_node({"dice": [0.5]})
    with pytest.raises(ImageReadError, match="does not exist"):
        bridge.load_segmentation(tmp_path / "missing.seg.nrrd", scene)
    not_a_segmentation = tmp_path / "broken.seg.nrrd"
    not_a_segmentation.write_text("this is not a NRRD file\n")
    with pytest.raises(ImageReadError, match="broken.seg.nrrd"):
        bridge.load_segmentation(not_a_segmentation, scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


# --------------------------------------------------------------------------- tables


def test_metrics_table_has_typed_columns(scene):
    rows = [
        {"label": "liver", "value": 1, "dice": 0.93, "voxels": 432},
        {"label": "spleen", "value": 2, "dice": None, "voxels": 200},
        {"label": "pancreas", "value": 5, "dice": 0.5, "hausdorff95_mm": 4.25, "voxels": 612},
    ]
    table_node = bridge.metrics_to_table_node(rows, scene, "Dice")
    assert table_node.GetName() == "Dice" and table_node.GetScene() is scene
    table = table_node.GetTable()
    names = [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    assert names == ["label", "value", "dice", "voxels", "hausdorff95_mm"]
    assert table_node.GetNumberOfRows() == 3
    types = {name: table_node.GetColumnProperty(name, "type") for name in names}
    assert types == {
        "label": "string",
        "value": "int",
        "dice": "double",
        "voxels": "int",
        "hausdorff95_mm": "double",
    }
    assert [table.GetValueByName(r, "label").ToString() for r in range(3)] == ["liver", "spleen", "pancreas"]
    assert [table.GetValueByName(r, "value").ToInt() for r in range(3)] == [1, 2, 5]
    dice = [table.GetValueByName(r, "dice").ToDouble() for r in range(3)]
    assert dice[0] == pytest.approx(0.93) and math.isnan(dice[1]) and dice[2] == pytest.approx(0.5)
    hausdorff = [table.GetValueByName(r, "hausdorff95_mm").ToDouble() for r in range(3)]
    assert math.isnan(hausdorff[0]) and hausdorff[2] == pytest.approx(4.25)

    # Columns form, replacing the same node: one table node with only the new columns.
    replaced = bridge.metrics_to_table_node(
        {"epoch": [1, 2], "loss": [np.float32(0.75), 0.5]}, scene, "Dice", replace_node=table_node
    )
    assert replaced is table_node and scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert replaced.GetNumberOfColumns() == 2 and replaced.GetNumberOfRows() == 2
    assert replaced.GetColumnProperty("epoch", "type") == "int"
    assert replaced.GetColumnProperty("loss", "type") == "double"
    assert replaced.GetTable().GetValueByName(0, "loss").ToDouble() == pytest.approx(0.75)


def test_present_labels_of_any_memory_layout() -> None:
    """The labels found in a map, whichever axis order the reader's array has (a transposed view
    is counted in memory order, without a copy: a result load stays fast on a large map)."""
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[1, 2, 3], labels[5, 0, 0], labels[0, 4, 1] = 7, 2, 255
    for array in (
        labels,
        labels.transpose(2, 1, 0),
        np.asfortranarray(labels),
        labels[::2],
        labels.astype(np.int32),
    ):
        expected = sorted(int(v) for v in np.unique(array) if v)
        assert bridge._present_values(array) == expected
    assert bridge._present_values(np.zeros((0, 3, 3), np.uint8)) == []
