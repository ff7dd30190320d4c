"""Volume I/O: exact geometry round trips, checks against nibabel/SimpleITK/Slicer, bad files,
channel stacking and atomic writes. Every file is real and tiny (at most 16^3 voxels)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from MedSegNASLib.data import LPS_TO_RAS, LabelInfo, Volume
from MedSegNASLib.data.io import (
    NIFTI_CHANNELS_MARKER,
    check_volume,
    read_geometry,
    read_volume,
    read_volumes,
    write_volume,
)
from MedSegNASLib.errors import ImageFormatError, ImageReadError, MedSegNASError
from scipy.spatial.transform import Rotation

SPACING = (0.7, 1.3, 3.1)
SHAPE = (9, 7, 5)  # I, J, K: all different so that a transposed array cannot pass
ROTATION = Rotation.from_euler("xyz", [17.0, -23.0, 41.0], degrees=True).as_matrix()


def _affine(direction: np.ndarray, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(SPACING)
    affine[:3, 3] = origin
    return affine


#: IJK -> RAS affines: as a DICOM-derived file stores them (LPS axes), RAS-aligned axes, an
#: oblique acquisition, and a sagittal one (permuted, flipped axes).
ORIENTATIONS = {
    "lps_stored": _affine(np.diag([-1.0, -1.0, 1.0]), (112.3, 87.65, -45.9)),
    "ras_oriented": _affine(np.eye(3), (-80.25, -120.5, 30.125)),
    "oblique": _affine(ROTATION, (-112.345678, 87.654321, -45.6789)),
    "sagittal": _affine(
        np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), (50.5, -99.9, 140.3)
    ),
}
FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"]


def _affine_tolerance(suffix: str, affine: np.ndarray) -> float:
    """NIfTI-1 stores its affine as float32 (rounding ~6e-8 relative); the others store float64."""
    if suffix.startswith(".nii"):
        return 1e-6 + 1.2e-7 * float(np.abs(affine).max())
    return 1e-6


def _voxels(dtype, shape=SHAPE, channels=1) -> np.ndarray:
    """Distinct values per voxel (no accidental symmetry), within the dtype's range."""
    values = np.arange(channels * int(np.prod(shape))).reshape(channels, *shape)
    if np.dtype(dtype) == np.uint8:
        return (values % 251).astype(np.uint8)
    if np.dtype(dtype) == np.int16:
        return (values * 37 - 1000).astype(np.int16)
    return (values * 0.37 - 12.5).astype(dtype)


def _label_map(dtype=np.uint8) -> np.ndarray:
    labels = np.zeros((1, *SHAPE), dtype=dtype)
    labels[0, 1:4, 1:5, 1:3] = 1
    labels[0, 5:8, 2:6, 2:5] = 3
    labels[0, 2:3, 0:2, 4:5] = 7
    return labels


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word.lower() in message.lower(), message


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


# --------------------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32], ids=["uint8", "int16", "float32"])
@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip_keeps_voxels_and_geometry(tmp_path: Path, suffix: str, dtype, orientation: str) -> None:
    affine = ORIENTATIONS[orientation]
    original = Volume(_voxels(dtype), affine)
    first = read_volume(write_volume(original, tmp_path / f"first{suffix}"))
    second = read_volume(write_volume(first, tmp_path / f"second{suffix}"))
    tolerance = _affine_tolerance(suffix, affine)
    for volume in (first, second):
        assert volume.array.dtype == np.dtype(dtype)
        assert volume.array.shape == (1, *SHAPE)
        np.testing.assert_array_equal(volume.array, original.array)
        np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=tolerance)
    np.testing.assert_allclose(second.affine, first.affine, rtol=0, atol=tolerance)
    assert read_geometry(tmp_path / f"second{suffix}")[0] == SHAPE
    np.testing.assert_allclose(
        read_geometry(tmp_path / f"second{suffix}")[1], second.affine, rtol=0, atol=1e-12
    )
    if suffix == ".mhd":
        assert (tmp_path / "second.zraw").is_file()  # the voxels live in the companion file


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("dtype", [np.uint8, np.int16], ids=["uint8", "int16"])
def test_seg_nrrd_round_trip_keeps_labels_table_and_geometry(tmp_path: Path, dtype, orientation: str) -> None:
    affine = ORIENTATIONS[orientation]
    table = [
        LabelInfo(0, "background", (0.0, 0.0, 0.0)),
        LabelInfo(1, "liver", (0.8666, 0.5098, 0.3961)),
        LabelInfo(3, "right kidney", (0.7255, 0.4, 0.3255)),
        LabelInfo(7, "tumor", (0.1, 0.9, 0.2)),
    ]
    first = read_volume(
        write_volume(Volume(_label_map(dtype), affine), tmp_path / "a.seg.nrrd", labels=table)
    )
    second = read_volume(write_volume(first, tmp_path / "b.seg.nrrd"))  # table comes from meta
    for volume in (first, second):
        assert volume.array.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(volume.array, _label_map(dtype))
        np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-6)
        assert volume.meta["format"] == "seg.nrrd"
        assert volume.meta["labels"] == table[1:]  # the background is not a segment


# --------------------------------------------------------------------------- against other readers


def test_nifti_affine_equals_nibabel(tmp_path: Path) -> None:
    path = write_volume(Volume(_voxels(np.int16), ORIENTATIONS["oblique"]), tmp_path / "oblique.nii.gz")
    volume = read_volume(path)
    image = nib.load(path)
    # Exactly what the file stores (its float32 sform), in RAS like ours.
    np.testing.assert_allclose(volume.affine, image.affine, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(volume.array[0], np.asanyarray(image.dataobj))


def test_reads_nibabel_written_nifti_with_its_affine(tmp_path: Path) -> None:
    # An independent writer: nibabel stores RAS directly; voxel (i, j, k) of its array must be ours.
    affine = ORIENTATIONS["sagittal"].copy()
    affine[:3, :3] = ROTATION @ affine[:3, :3]
    data = _voxels(np.float32)[0]
    path = tmp_path / "from_nibabel.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_allclose(volume.affine, nib.load(path).affine, rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=_affine_tolerance(".nii", affine))


def test_nifti_keeps_nan_and_applies_scaling_like_itk(tmp_path: Path) -> None:
    # ITK's NIfTI reader would turn the NaN into 0; the voxels must be what the file stores.
    stored = _voxels(np.int16)[0]
    image = nib.Nifti1Image(stored, ORIENTATIONS["ras_oriented"])
    image.header.set_slope_inter(0.5, -10.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    volume = read_volume(tmp_path / "scaled.nii.gz")
    assert volume.array.dtype == np.float32  # as ITK and Slicer make scaled data
    np.testing.assert_array_equal(volume.array[0], stored * np.float32(0.5) - np.float32(10.0))
    with_nan = _voxels(np.float32)
    with_nan[0, 3, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(with_nan[0], np.eye(4)), tmp_path / "nan.nii")
    np.testing.assert_array_equal(read_volume(tmp_path / "nan.nii", validate=False).array, with_nan)


def test_nrrd_geometry_equals_simpleitk_lps(tmp_path: Path) -> None:
    affine = ORIENTATIONS["oblique"]
    path = write_volume(Volume(_voxels(np.float32), affine), tmp_path / "oblique.nrrd")
    image = sitk.ReadImage(str(path))
    direction_lps = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction_lps, (LPS_TO_RAS[:3, :3] @ affine[:3, :3]) / SPACING, atol=1e-12)
    np.testing.assert_allclose(image.GetOrigin(), [-affine[0, 3], -affine[1, 3], affine[2, 3]], atol=1e-12)
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-12)
    # The same voxel lands at the same physical point (ITK's LPS = our RAS with x, y negated).
    index = (4, 2, 3)
    point_lps = np.array(image.TransformIndexToPhysicalPoint(index))
    point_ras = (affine @ [*index, 1.0])[:3]
    np.testing.assert_allclose(point_lps * [-1, -1, 1], point_ras, atol=1e-9)
    assert image.GetPixel(*index) == read_volume(path).array[(0, *index)]


def test_nrrd_in_ras_space_is_converted(tmp_path: Path) -> None:
    # A NRRD whose header declares RAS space (as some tools write): the affine is its header's.
    data = _voxels(np.int16)[0]
    columns = ORIENTATIONS["oblique"][:3, :3].T
    directions = " ".join("(" + ",".join(repr(float(v)) for v in column) + ")" for column in columns)
    origin = ",".join(repr(float(v)) for v in ORIENTATIONS["oblique"][:3, 3])
    header = textwrap.dedent(
        f"""\
        NRRD0004
        type: short
        dimension: 3
        space: right-anterior-superior
        sizes: {SHAPE[0]} {SHAPE[1]} {SHAPE[2]}
        space directions: {directions}
        kinds: domain domain domain
        endian: little
        encoding: raw
        space origin: ({origin})

        """
    )
    path = tmp_path / "ras.nrrd"
    path.write_bytes(header.encode() + data.transpose(2, 1, 0).astype("<i2").tobytes())
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array[0], data)
    np.testing.assert_allclose(volume.affine, ORIENTATIONS["oblique"], rtol=0, atol=1e-9)
    assert volume.meta["original_space"] == "right-anterior-superior"


# --------------------------------------------------------------------------- DICOM


def _write_dicom_series(folder: Path, data: np.ndarray, affine_ras: np.ndarray, series_uid: str) -> None:
    """MR slices with an oblique Image Plane module, written by SimpleITK/GDCM."""
    folder.mkdir(parents=True, exist_ok=True)
    affine_lps = LPS_TO_RAS @ affine_ras
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    direction = affine_lps[:3, :3] / spacing
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(data.shape[2]):
        image = sitk.GetImageFromArray(np.ascontiguousarray(data[:, :, k].T))
        image.SetSpacing(spacing[:2].tolist())
        position = affine_lps[:3, 3] + k * affine_lps[:3, 2]
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.9.7777.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": "\\".join(f"{v:.12f}" for v in (*direction[:, 0], *direction[:, 1])),
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_oblique_geometry_and_voxels(tmp_path: Path) -> None:
    data = _voxels(np.int16)[0]
    affine = ORIENTATIONS["oblique"]
    _write_dicom_series(tmp_path / "series", data, affine, "1.2.826.0.1.3680043.9.7777.2")
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.array[0], data)
    # IPP/IOP are decimal strings: 10 and 12 decimals here.
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-6)
    assert volume.meta["format"] == "dicom" and volume.meta["modality"] == "MR"
    assert volume.meta["series_uid"] == "1.2.826.0.1.3680043.9.7777.2"
    shape, header_affine = read_geometry(tmp_path / "series")
    assert shape == SHAPE
    np.testing.assert_allclose(header_affine, volume.affine, rtol=0, atol=1e-9)
    # One file stands for its series.
    one_file = read_volume(tmp_path / "series" / "slice002.dcm")
    np.testing.assert_array_equal(one_file.array, volume.array)


def test_dicom_folder_with_two_series_needs_a_series_uid(tmp_path: Path) -> None:
    data = _voxels(np.int16)[0]
    _write_dicom_series(tmp_path / "mixed", data, ORIENTATIONS["lps_stored"], "1.2.3.4.100")
    _write_dicom_series(tmp_path / "mixed", data[:, :, :3] + 5, ORIENTATIONS["oblique"], "1.2.3.4.200")
    with pytest.raises(ImageReadError) as exc:
        read_volume(tmp_path / "mixed")
    _assert_one_line_naming(exc, tmp_path / "mixed", "1.2.3.4.100", "1.2.3.4.200", "series_uid")
    chosen = read_volume(tmp_path / "mixed", series_uid="1.2.3.4.200")
    np.testing.assert_array_equal(chosen.array[0], data[:, :, :3] + 5)
    with pytest.raises(ImageReadError) as exc:
        read_volume(tmp_path / "mixed", series_uid="9.9.9")
    _assert_one_line_naming(exc, tmp_path / "mixed", "9.9.9", "1.2.3.4.100")


def test_dicom_series_with_a_missing_slice_is_rejected(tmp_path: Path) -> None:
    _write_dicom_series(tmp_path / "gap", _voxels(np.int16)[0], ORIENTATIONS["oblique"], "1.2.3.4.300")
    (tmp_path / "gap" / "slice002.dcm").unlink()
    with pytest.raises(ImageFormatError) as exc:
        read_volume(tmp_path / "gap")
    _assert_one_line_naming(exc, tmp_path / "gap", "missing or unevenly spaced")


def test_folder_without_dicom_and_dicom_writing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError) as exc:
        read_volume(tmp_path / "empty")
    _assert_one_line_naming(exc, tmp_path / "empty", "no DICOM")
    with pytest.raises(MedSegNASError) as exc:
        write_volume(Volume(_voxels(np.int16), np.eye(4)), tmp_path / "out.dcm")
    _assert_one_line_naming(exc, tmp_path / "out.dcm", "DICOM is not supported")


# --------------------------------------------------------------------------- Slicer segmentations


def _slicer():
    return pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e .[test])")


def _segment_layer(segment, slicer) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (I, J, K) and IJK -> RAS matrix of a segment's binary labelmap layer."""
    import vtk
    from vtk.util import numpy_support

    layer = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    matrix = vtk.vtkMatrix4x4()
    layer.GetImageToWorldMatrix(matrix)
    extent = layer.GetExtent()
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk_to_ras[:3, 3] = ijk_to_ras[:3, :3] @ [extent[0], extent[2], extent[4]] + ijk_to_ras[:3, 3]
    dims = (extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1)
    voxels = (
        numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0)
    )
    return voxels, ijk_to_ras


def test_written_seg_nrrd_loads_in_slicer_with_names_colors_values_geometry(tmp_path: Path) -> None:
    slicer = _slicer()
    table = [
        LabelInfo(1, "liver", (0.8666, 0.5098, 0.3961)),
        LabelInfo(3, "right kidney", (0.7255, 0.4, 0.3255)),
        LabelInfo(7, "tumor", (0.1, 0.9, 0.2)),
    ]
    affine = ORIENTATIONS["oblique"]
    path = write_volume(Volume(_label_map(np.int16), affine), tmp_path / "organs.seg.nrrd", labels=table)
    header = path.read_bytes().split(b"\n\n")[0].decode()  # the header is plain text
    for key in ("Segment0_LabelValue:=1", "Segment2_Name:=tumor", "Segmentation_MasterRepresentation:="):
        assert key in header

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for index, label in enumerate(table):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
        assert segment.GetName() == label.name
        assert segment.GetLabelValue() == label.value
        np.testing.assert_allclose(segment.GetColor(), label.color, atol=1e-9)
        voxels, ijk_to_ras = _segment_layer(segment, slicer)
        np.testing.assert_array_equal(voxels == label.value, _label_map()[0] == label.value)
        np.testing.assert_allclose(ijk_to_ras, affine, rtol=0, atol=1e-9)


def test_reads_slicer_written_seg_nrrd(tmp_path: Path) -> None:
    slicer = _slicer()
    import vtk
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    data = _label_map(np.uint8)[0]
    image = vtk.vtkImageData()
    image.SetDimensions(*SHAPE)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(data.transpose(2, 1, 0).ravel()))
    labelmap.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ORIENTATIONS["oblique"][r, c])
    labelmap.SetIJKToRASMatrix(matrix)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    segmentation = node.GetSegmentation()
    expected = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(index))
        segment.SetName(f"organ {segment.GetLabelValue()}")
        expected[segment.GetLabelValue()] = (segment.GetName(), segment.GetColor())
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert storage.WriteData(node) == 1

    volume = read_volume(tmp_path / "slicer.seg.nrrd")
    assert {label.value: label.name for label in volume.meta["labels"]} == {
        value: name for value, (name, _) in expected.items()
    }
    for label in volume.meta["labels"]:
        np.testing.assert_allclose(label.color, expected[label.value][1], atol=1e-5)  # Slicer writes 6 digits
    # Slicer crops to the segments' bounding box: every labelled voxel keeps its position.
    for value in expected:
        ours = np.argwhere(volume.array[0] == value)
        theirs = np.argwhere(data == value)
        assert len(ours) == len(theirs)
        ours_ras = (volume.affine @ np.c_[ours, np.ones(len(ours))].T)[:3].T
        theirs_ras = (ORIENTATIONS["oblique"] @ np.c_[theirs, np.ones(len(theirs))].T)[:3].T
        np.testing.assert_allclose(np.sort(ours_ras, axis=0), np.sort(theirs_ras, axis=0), atol=1e-6)


def test_plain_nrrd_with_labels_keeps_the_table(tmp_path: Path) -> None:
    table = [
        LabelInfo(1, "liver", (0.9, 0.1, 0.2)),
        LabelInfo(3, "kidney", (0.2, 0.3, 0.9)),
        LabelInfo(7, "x", (0, 0, 1)),
    ]
    path = write_volume(Volume(_label_map(), np.eye(4)), tmp_path / "labels.nrrd", labels=table)
    volume = read_volume(path)
    assert volume.meta["labels"] == table and volume.meta["format"] == "seg.nrrd"
    # NIfTI has no place for a table: the voxels are written, the table is not.
    nifti = read_volume(
        write_volume(Volume(_label_map(), np.eye(4)), tmp_path / "labels.nii.gz", labels=table)
    )
    np.testing.assert_array_equal(nifti.array, _label_map())
    assert "labels" not in nifti.meta


def test_seg_nrrd_label_table_errors(tmp_path: Path) -> None:
    label_map = Volume(_label_map(), ORIENTATIONS["oblique"])
    with pytest.raises(MedSegNASError) as exc:
        write_volume(label_map, tmp_path / "x.seg.nrrd", labels=[LabelInfo(1, "liver", (1.0, 0.0, 0.0))])
    _assert_one_line_naming(exc, tmp_path / "x.seg.nrrd", "[3, 7]", "label table")
    with pytest.raises(MedSegNASError) as exc:
        write_volume(Volume(_voxels(np.float32), np.eye(4)), tmp_path / "f.seg.nrrd")
    _assert_one_line_naming(exc, tmp_path / "f.seg.nrrd", "integer")
    with pytest.raises(MedSegNASError) as exc:
        write_volume(Volume(np.concatenate([_label_map()] * 2), np.eye(4)), tmp_path / "two.seg.nrrd")
    _assert_one_line_naming(exc, tmp_path / "two.seg.nrrd", "one label-map channel", "has 2")
    assert not list(tmp_path.iterdir())
    # Without a table: one generated segment per value present.
    volume = read_volume(write_volume(label_map, tmp_path / "auto.seg.nrrd"))
    assert [(label.value, label.name) for label in volume.meta["labels"]] == [
        (1, "Segment_1"),
        (3, "Segment_3"),
        (7, "Segment_7"),
    ]


# --------------------------------------------------------------------------- channels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_multichannel_round_trip(tmp_path: Path, suffix: str) -> None:
    original = Volume(_voxels(np.float32, channels=3), ORIENTATIONS["oblique"])
    path = write_volume(original, tmp_path / f"multi{suffix}")
    volume = read_volume(path)
    assert volume.array.shape == (3, *SHAPE)
    np.testing.assert_array_equal(volume.array, original.array)
    np.testing.assert_allclose(
        volume.affine, original.affine, atol=_affine_tolerance(suffix, original.affine)
    )
    assert read_geometry(path)[0] == SHAPE
    if suffix == ".nii.gz":
        image = nib.load(path)  # MSD layout: (x, y, z, channel)
        assert image.shape == (*SHAPE, 3)
        assert image.header["descrip"].tobytes().rstrip(b"\0").decode() == NIFTI_CHANNELS_MARKER


def test_4d_nifti_time_series_rejected_unless_channels_requested(tmp_path: Path) -> None:
    path = tmp_path / "brats_like.nii.gz"
    data = _voxels(np.float32, channels=4).transpose(1, 2, 3, 0)  # (x, y, z, 4) as MSD stores it
    nib.save(nib.Nifti1Image(data, ORIENTATIONS["ras_oriented"]), path)
    with pytest.raises(ImageFormatError) as exc:
        read_volume(path)
    _assert_one_line_naming(exc, path, "expected a 3D image, got a 4D image of shape (9, 7, 5, 4)")
    volume = read_volume(path, fourth_axis_channels=True)
    np.testing.assert_array_equal(volume.array, data.transpose(3, 0, 1, 2))
    assert read_geometry(path, fourth_axis_channels=True)[0] == SHAPE


def test_nifti_component_axis_reads_as_channels(tmp_path: Path) -> None:
    path = tmp_path / "vectors.nii.gz"
    data = _voxels(np.float32, channels=2).transpose(1, 2, 3, 0)[:, :, :, None, :]  # dim[5] = 2
    nib.save(nib.Nifti1Image(data, ORIENTATIONS["ras_oriented"]), path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, data[:, :, :, 0, :].transpose(3, 0, 1, 2))


def test_read_volumes_stacks_channels_and_names_mismatched_files(tmp_path: Path) -> None:
    affine = ORIENTATIONS["oblique"]
    t1 = write_volume(Volume(_voxels(np.int16), affine), tmp_path / "t1.nrrd")
    t2 = write_volume(Volume(_voxels(np.int16) + 1, affine), tmp_path / "t2.nrrd")
    stacked = read_volumes([t1, t2])
    assert stacked.array.shape == (2, *SHAPE)
    np.testing.assert_array_equal(stacked.array[1], _voxels(np.int16)[0] + 1)
    np.testing.assert_allclose(stacked.affine, affine, atol=1e-9)

    nudged = affine.copy()
    nudged[:3, 3] += 5e-5  # within the 1e-4 mm tolerance
    close = write_volume(Volume(_voxels(np.int16), nudged), tmp_path / "close.nrrd")
    assert read_volumes([t1, close]).num_channels == 2

    shifted = affine.copy()
    shifted[0, 3] += 0.01
    moved = write_volume(Volume(_voxels(np.int16), shifted), tmp_path / "moved.nrrd")
    with pytest.raises(ImageFormatError) as exc:
        read_volumes([t1, moved])
    _assert_one_line_naming(exc, moved, str(t1), "0.01 mm")

    smaller = write_volume(Volume(_voxels(np.int16, shape=(9, 7, 4)), affine), tmp_path / "smaller.nrrd")
    with pytest.raises(ImageFormatError) as exc:
        read_volumes([t1, smaller])
    _assert_one_line_naming(exc, smaller, str(t1), "(9, 7, 4)", "(9, 7, 5)")


# --------------------------------------------------------------------------- bad files


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_files_are_read_errors(tmp_path: Path, suffix: str) -> None:
    path = write_volume(Volume(_voxels(np.float32, shape=(16, 16, 16)), np.eye(4)), tmp_path / f"cut{suffix}")
    _truncate(path)
    with pytest.raises(ImageReadError) as exc:
        read_volume(path)
    _assert_one_line_naming(exc, path, "truncated")


@pytest.mark.parametrize(
    "name, content",
    [
        ("random.nii", os.urandom(4000)),
        ("notes.nii", b"patient notes, not an image\n" * 20),
        ("notes.nrrd", b"patient notes, not an image\n" * 20),
        ("random.mha", os.urandom(4000)),
    ],
)
def test_files_that_are_not_images(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as exc:
        read_volume(path)
    _assert_one_line_naming(exc, path, "not a readable image")


def test_missing_file_and_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as exc:
        read_volume(tmp_path / "absent.nii.gz")
    _assert_one_line_naming(exc, tmp_path / "absent.nii.gz", "not found")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ImageReadError) as exc:
        read_volume(tmp_path / "scan.png")
    _assert_one_line_naming(exc, tmp_path / "scan.png", "unsupported file type", ".nii.gz")
    with pytest.raises(MedSegNASError) as exc:
        write_volume(Volume(_voxels(np.int16), np.eye(4)), tmp_path / "scan.png")
    _assert_one_line_naming(exc, tmp_path / "scan.png", "cannot write")


@pytest.mark.parametrize(
    "shape, problem",
    [
        ((64, 64), "expected a 3D image, got a 2D image of shape (64, 64)"),
        ((6, 5, 4, 3, 2), "expected a 3D image, got a 5D image of shape (6, 5, 4, 3, 2)"),
        ((64, 64, 1), "every axis needs at least 2 voxels (a single 2D slice?)"),
        ((1, 1, 1), "single voxel"),
        ((6, 5, 0), "empty image"),
    ],
)
def test_images_of_the_wrong_shape(tmp_path: Path, shape: tuple[int, ...], problem: str) -> None:
    path = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), path)
    with pytest.raises(ImageFormatError) as exc:
        read_volume(path)
    _assert_one_line_naming(exc, path, problem)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda a: np.full_like(a, np.nan), "all 4096 voxels are NaN"),
        (lambda a: np.where(a > a.max() - 3, np.nan, a), "3 of 4096 voxels are NaN"),
        (lambda a: np.where(a < a.min() + 2, -np.inf, a), "2 of 4096 voxels are infinite"),
    ],
    ids=["all_nan", "some_nan", "inf"],
)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_non_finite_voxels(tmp_path: Path, suffix: str, make, problem: str) -> None:
    array = make(np.arange(4096, dtype=np.float32).reshape(1, 16, 16, 16))
    path = write_volume(Volume(array, np.eye(4)), tmp_path / f"bad{suffix}")
    with pytest.raises(ImageFormatError) as exc:
        read_volume(path)
    _assert_one_line_naming(exc, path, problem)
    unchecked = read_volume(path, validate=False)  # the caller may still look at it
    np.testing.assert_array_equal(unchecked.array, array)


def test_check_volume_on_arrays() -> None:
    with pytest.raises(ImageFormatError, match="case_7: empty image"):
        check_volume(Volume(np.zeros((1, 0, 4, 4), np.float32), np.eye(4)), name="case_7")
    with pytest.raises(ImageFormatError, match="case_7: the image is a single voxel"):
        check_volume(Volume(np.zeros((1, 1, 1, 1), np.float32), np.eye(4)), name="case_7")
    with pytest.raises(ImageFormatError, match="at least 4 voxels"):
        check_volume(Volume(np.zeros((1, 3, 8, 8), np.float32), np.eye(4)), name="case_7", min_size=4)
    with pytest.raises(ImageFormatError, match="invalid geometry"):
        check_volume(Volume(np.zeros((1, 4, 4, 4), np.float32), np.diag([1.0, 0.0, 1.0, 1.0])), name="case_7")
    partly_nan = np.zeros((1, 4, 4, 4), np.float32)
    partly_nan[0, 0, 0, 0] = np.nan
    check_volume(Volume(partly_nan, np.eye(4)), name="case_7", allow_nan=True)
    with pytest.raises(ImageFormatError, match="1 of 64 voxels are NaN"):
        check_volume(Volume(partly_nan, np.eye(4)), name="case_7")
    check_volume(Volume(np.zeros((2, 4, 4, 4), np.uint8), np.eye(4)), name="constant is fine")


def test_sheared_affine_cannot_be_written(tmp_path: Path) -> None:
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(MedSegNASError) as exc:
        write_volume(Volume(_voxels(np.int16), sheared), tmp_path / "shear.nrrd")
    _assert_one_line_naming(exc, tmp_path / "shear.nrrd", "not orthogonal")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- atomic writes


def test_unwritable_destination_is_a_clear_error_without_leftovers(tmp_path: Path) -> None:
    volume = Volume(_voxels(np.int16), np.eye(4))
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(MedSegNASError) as exc:
        write_volume(volume, tmp_path / "a_file" / "out.nii.gz")
    _assert_one_line_naming(exc, tmp_path / "a_file" / "out.nii.gz", "cannot write into folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(MedSegNASError) as exc:
                write_volume(volume, locked / "out.nrrd")
            _assert_one_line_naming(exc, locked / "out.nrrd", "cannot write into folder")
            assert not list(locked.iterdir())
        finally:
            locked.chmod(0o755)


_WRITE_UNDER_FILE_SIZE_LIMIT = """
import resource, sys
import numpy as np
from MedSegNASLib.data import Volume
from MedSegNASLib.data.io import write_volume
from MedSegNASLib.errors import MedSegNASError
# Any write past 64 KiB fails (EFBIG; Python ignores SIGXFSZ): a full disk in the middle of a file.
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
noise = np.random.default_rng(0).random((1, 48, 48, 48), dtype=np.float32)
try:
    write_volume(Volume(noise, np.eye(4)), sys.argv[1])
except MedSegNASError as exc:
    print(exc)
    sys.exit(1)
"""


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_failure_mid_write_keeps_the_old_file(tmp_path: Path, suffix: str) -> None:
    target = write_volume(Volume(_voxels(np.int16), ORIENTATIONS["oblique"]), tmp_path / f"result{suffix}")
    before = target.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_FILE_SIZE_LIMIT, str(target)], capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(target) in result.stdout and "writing failed" in result.stdout
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []
    np.testing.assert_array_equal(read_volume(target).array[0], _voxels(np.int16)[0])
    # A first write that fails leaves nothing behind.
    fresh = tmp_path / f"fresh{suffix}"
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_FILE_SIZE_LIMIT, str(fresh)], capture_output=True
    )
    assert result.returncode == 1
    assert not fresh.exists() and _leftovers(tmp_path) == []


def test_overwrite_replaces_content_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "image.mhd"
    write_volume(Volume(_voxels(np.int16), np.eye(4)), target)
    write_volume(Volume(_voxels(np.int16) * 2, ORIENTATIONS["oblique"]), target)
    volume = read_volume(target)
    np.testing.assert_array_equal(volume.array, _voxels(np.int16) * 2)
    np.testing.assert_allclose(volume.affine, ORIENTATIONS["oblique"], atol=1e-9)
    assert sorted(p.name for p in target.parent.iterdir()) == ["image.mhd", "image.zraw"]
