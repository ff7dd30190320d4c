"""Read and write 3D medical images with exact geometry, as :class:`~.volume.Volume` objects.

Geometry always comes from SimpleITK (ITK's readers, the ones 3D Slicer uses), so a file opens
with the same geometry here as in Slicer, and SimpleITK writes every format. Voxels come from
ITK too, except NIfTI voxels, which nibabel reads: ITK's NIfTI reader silently turns NaN/inf
into 0 and zero-fills truncated files, which would hide exactly the bad data to be rejected.

**Coordinates.** ITK works in LPS (+x Left, +y Posterior, +z Superior): it converts NIfTI's
RAS and NRRD's declared ``space`` to LPS on read. A :class:`Volume` holds an IJK -> **RAS** affine
(Slicer's ``IJKToRAS``, MONAI's default), so reading applies ``affine = LPS_TO_RAS @ affine_lps``
and writing the inverse (its own inverse: both flip x and y). Voxels are never resampled or
reordered: ``array[c, i, j, k]`` is the voxel at file index ``(i, j, k)`` (``i`` fastest on disk).

**Formats** (chosen by the file name; a folder is a DICOM series):

=================  ==========  ============================================================
format             geometry    what it stores
=================  ==========  ============================================================
NIfTI .nii(.gz)    RAS, sform  float32 affine (so positions are exact to ~1e-7 relative, e.g.
                   and qform   ~4e-6 mm at 100 mm from the origin); several channels as a 4D
                               file (x, y, z, channel) like MSD multi-modal images, marked
                               ``descrip = "MedSegNAS channels"``; no label table.
NRRD .nrrd/.nhdr   any space,  float64 geometry (exact); channels as a vector axis
                   LPS written (``kinds: vector domain domain domain``); with ``labels`` the
                               Slicer segmentation keys below.
Slicer .seg.nrrd   as NRRD     a label map plus its label table as Slicer segmentation
                               metadata (``Segment{i}_Name``, ``_Color``, ``_LabelValue``, ...),
                               which Slicer opens as a segmentation with named, colored segments.
MetaImage .mha     LPS         float64 geometry (exact); channels as ``ElementNumberOfChannels``.
MetaImage .mhd     LPS         as .mha, with the voxels in a companion ``.raw``/``.zraw`` file.
DICOM folder/.dcm  LPS         read only: one series (GDCM, as in Slicer's DICOM scalar
                               volume plugin); a ``.dcm`` file stands for its whole series.
=================  ==========  ============================================================

**Channels.** ``array`` is ``(C, I, J, K)``. Vector images (NRRD vector axis, MetaImage channels,
NIfTI ``dim[5]`` components) read as channels. A 4D scalar image (NIfTI ``dim[4] > 1``) is
ambiguous: a time series or MSD-style modalities. It is read as channels when the file carries
the MedSegNAS marker or the caller says so (``fourth_axis_channels=True``); otherwise it is an
:class:`ImageFormatError`, as are 2D images and images of 5 and more dimensions.

**Atomic writes.** :func:`write_volume` writes into a temporary folder next to the target and
moves the result into place with ``os.replace``: a reader never sees a half-written file and a
failed write keeps the old file. ``.mhd`` writes two files: the data file is moved first, the
header last (an old header may briefly point to the new data; prefer ``.mha``, one file).
ITK's NIfTI writer does not report short writes (e.g. a full disk), so written NIfTI files are
checked for their full length before they replace anything.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import ImageFormatError, ImageReadError, MedSegNASError
from .dicom import dicom_series_files
from .volume import LPS_TO_RAS, LabelInfo, Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_CHANNELS_MARKER",
    "WRITABLE_SUFFIXES",
    "check_volume",
    "image_format",
    "read_geometry",
    "read_volume",
    "read_volumes",
    "write_volume",
]

#: File-name endings :func:`read_volume` accepts, longest first, and the format each names.
IMAGE_SUFFIXES: dict[str, str] = {
    ".seg.nrrd": "seg.nrrd",
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
}
#: File-name endings :func:`write_volume` accepts.
WRITABLE_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: NIfTI ``descrip`` of a file whose 4th axis holds channels (written by :func:`write_volume`).
NIFTI_CHANNELS_MARKER = "MedSegNAS channels"

#: Grids whose affines differ by more than this (mm) are not the same grid in :func:`read_volumes`.
GRID_TOLERANCE_MM = 1e-4
#: ITK direction matrices must be orthonormal; beyond this the affine has shear ITK cannot store.
_ORTHONORMAL_TOLERANCE = 1e-4

_FORMAT_NAMES = {
    "nifti": "NIfTI",
    "nrrd": "NRRD",
    "seg.nrrd": "Slicer segmentation (.seg.nrrd)",
    "metaimage": "MetaImage",
    "dicom": "DICOM",
}
#: The coordinate system each format's geometry is written in (NRRD says so in its header).
_FORMAT_SPACE = {"nifti": "RAS", "metaimage": "LPS", "dicom": "LPS"}

# Slicer segmentation metadata keys (vtkMRMLSegmentationStorageNode).
_SEGMENT_KEY = "Segment{index}_{field}"
_BINARY_LABELMAP = "Binary labelmap"
#: Distinct colors (RGB 0..1) for segments whose color nobody chose.
_AUTO_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.30, 0.24),
    (0.18, 0.55, 0.85),
    (0.30, 0.69, 0.31),
    (0.95, 0.77, 0.06),
    (0.61, 0.35, 0.71),
    (0.10, 0.74, 0.74),
    (0.95, 0.50, 0.13),
    (0.91, 0.45, 0.67),
    (0.55, 0.76, 0.29),
    (0.40, 0.40, 0.80),
    (0.80, 0.60, 0.40),
    (0.50, 0.85, 0.95),
)


# --------------------------------------------------------------------------- formats


def image_format(path: str | os.PathLike) -> str | None:
    """The format :func:`read_volume` would use for ``path`` from its name alone.

    Returns:
        ``"nifti"``, ``"nrrd"``, ``"seg.nrrd"``, ``"metaimage"``, ``"dicom"`` (also for a folder),
        or None when the name ends with no supported suffix.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    for suffix, fmt in IMAGE_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def _unsupported_suffix_message(path: Path) -> str:
    suffix = "".join(path.suffixes[-2:]) or "no extension"
    return (
        f"{path}: unsupported file type ({suffix}); MedSegNAS reads "
        f"{', '.join(IMAGE_SUFFIXES)} files and DICOM series folders"
    )


# --------------------------------------------------------------------------- ITK error messages

_ITK_LOCATION = re.compile(r"^(Exception thrown in SimpleITK \w+:|\S+\.(cxx|hxx|h|cpp):\d+:?$)")
_ITK_PREFIX = re.compile(
    r"^(ITK ERROR|ITK WARNING|sitk::ERROR|sitk::WARNING):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?"
)
_TEEM_PREFIX = re.compile(r"^\[\w+\]\s*(_?\w+:\s*)?")


def _condense_itk_error(exc: BaseException, path: Path) -> str:
    """One line out of an ITK exception (which spans several lines with source locations).

    Keeps the deepest cause, which is the most specific one (teem's last line, MetaIO's
    ``Reason:``), and turns ITK's generic phrasings into what they mean for the user.
    """
    lines = []
    for raw in str(exc).splitlines():
        line = raw.strip()
        if not line or _ITK_LOCATION.match(line):
            continue
        line = _TEEM_PREFIX.sub("", _ITK_PREFIX.sub("", line)).strip()
        if line and not line.endswith(":") and "trouble" not in line:
            lines.append(line)
    if not lines:
        return "unknown error"
    text = " ".join(lines)
    if "Unable to determine ImageIO reader" in text:
        return "not a readable image: corrupt, or not the format its name says"
    if "does not exist" in text:
        return "file not found"
    reason = lines[-1]
    if reason.startswith("Reason:"):
        reason = reason[len("Reason:") :].strip()
        # MetaIO reports a stale errno after a short read of an existing file.
        if reason == "No such file or directory" and path.exists():
            reason = "the data are truncated or corrupt"
    if re.search(r"expected \d+ bytes|read only|unexpected end|premature", reason, re.IGNORECASE):
        reason += " (the file is truncated or corrupt)"
    return reason[:300]


# --------------------------------------------------------------------------- NIfTI voxels


def _nifti_error(path: Path, exc: BaseException) -> ImageReadError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ImageReadError(f"{path}: the NIfTI voxel data are truncated or corrupt ({reason})")


def _read_nifti_voxels(path: Path) -> np.ndarray:
    """NIfTI voxels in file order ``(I, J, K, ...)``, read with nibabel.

    ITK's NIfTI reader (niftilib) silently turns NaN and inf voxels into 0 and fills a truncated
    file with zeros; nibabel keeps the stored values and raises on a short file, so the voxels
    come from nibabel while the geometry comes from ITK (as in Slicer). Scaled data
    (``scl_slope``/``scl_inter``) become float32, as ITK makes them.
    """
    try:
        image = nib.load(str(path), mmap=False)
        shape = tuple(int(s) for s in image.shape)
        if 0 in shape:
            raise ImageFormatError(f"{path}: empty image (shape {shape} has a zero-length axis)")
        scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
        voxels = np.asanyarray(image.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise _nifti_error(path, exc) from exc
    if voxels.dtype.names:  # RGB(A) voxels are a structured dtype: one channel per field
        voxels = np.stack([voxels[field] for field in voxels.dtype.names], axis=-1)
    return voxels.astype(np.float32) if scaled else voxels


def _verify_nifti_length(path: Path) -> None:
    """Raise ImageReadError when a NIfTI file holds fewer bytes than its header announces.

    ITK's NIfTI writer does not report short writes (e.g. a full disk). A ``.nii.gz`` is
    decompressed as a stream, which also checks its CRC and length.
    """
    try:
        header = nib.load(str(path)).header
        shape = header.get_data_shape()
        expected = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
        with open(path, "rb") as stream:
            gzipped = stream.read(2) == b"\x1f\x8b"
        total = 0
        if gzipped:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    total += len(chunk)
        else:
            total = path.stat().st_size
    except (EOFError, OSError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise _nifti_error(path, exc) from exc
    if total < expected:
        raise ImageReadError(f"{path}: truncated NIfTI file: {total} of {expected} bytes")


# --------------------------------------------------------------------------- geometry and layout


def _channel_count(
    size: Sequence[int], components: int, *, name: str, fourth_axis_channels: bool, fmt: str
) -> int:
    """Number of channels of an ITK image of ``size`` (ITK order: i, j, k, ...) and ``components``.

    Raises ImageFormatError for layouts that are not a 3D image with channels.
    """
    dims = [int(s) for s in size]
    while len(dims) > 3 and dims[-1] == 1:  # trailing singleton axes carry nothing
        dims.pop()
    shape = tuple(dims)
    if len(dims) < 3:
        raise ImageFormatError(f"{name}: expected a 3D image, got a {len(dims)}D image of shape {shape}")
    if len(dims) == 3:
        return components
    if components > 1:
        raise ImageFormatError(
            f"{name}: expected a 3D image, got a {len(dims)}D image of shape {shape} "
            f"with {components} components per voxel"
        )
    if len(dims) == 4 and fourth_axis_channels:
        return dims[3]
    if len(dims) == 5 and fmt == "nifti" and dims[3] == 1:
        return dims[4]  # NIfTI's dim[5] is its vector-component axis
    if len(dims) == 4:
        raise ImageFormatError(
            f"{name}: expected a 3D image, got a 4D image of shape {shape} (a time series or a stack of "
            "volumes); if its 4th axis holds channels such as MR sequences (MSD multi-modal files), read it "
            "with fourth_axis_channels=True, otherwise split it into 3D files"
        )
    raise ImageFormatError(f"{name}: expected a 3D image, got a {len(dims)}D image of shape {shape}")


def _affine_from_itk(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float], name: str
) -> np.ndarray:
    """IJK -> RAS affine from ITK geometry (LPS) of any dimension >= 3 (its first 3 axes)."""
    ndim = len(spacing)
    full_direction = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)
    if ndim > 3 and (np.any(full_direction[:3, 3:] != 0) or np.any(full_direction[3:, :3] != 0)):
        raise ImageFormatError(f"{name}: the axes beyond the 3rd are not independent of the spatial axes")
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = full_direction[:3, :3] @ np.diag(np.asarray(spacing[:3], dtype=np.float64))
    affine_lps[:3, 3] = np.asarray(origin[:3], dtype=np.float64)
    return LPS_TO_RAS @ affine_lps


def _itk_geometry(affine: np.ndarray, name: str) -> tuple[list[float], list[float], list[float]]:
    """(spacing, origin, direction) in ITK's LPS convention from an IJK -> RAS affine."""
    affine_lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    matrix = affine_lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(affine_lps)) or np.any(spacing <= 0):
        raise MedSegNASError(f"{name}: invalid affine (zero spacing or non-finite values)")
    direction = matrix / spacing
    if np.abs(direction.T @ direction - np.eye(3)).max() > _ORTHONORMAL_TOLERANCE:
        raise MedSegNASError(
            f"{name}: the affine's axes are not orthogonal (sheared grid); ITK-based formats cannot store it"
        )
    return spacing.tolist(), affine_lps[:3, 3].tolist(), direction.ravel().tolist()


# --------------------------------------------------------------------------- Slicer segmentations


def _segmentation_from_metadata(get: Callable[[str], str | None]) -> dict[str, Any]:
    """Label table and segment layout from Slicer segmentation keys (empty dict when none)."""
    labels: list[LabelInfo] = []
    ids: list[str] = []
    layers: list[int] = []
    index = 0
    while (segment_id := get(_SEGMENT_KEY.format(index=index, field="ID"))) is not None:

        def field(name: str, i: int = index) -> str | None:
            return get(_SEGMENT_KEY.format(index=i, field=name))

        color_text = field("Color") or field("DefaultColor") or "0.5 0.5 0.5"
        color = tuple(float(c) for c in color_text.split()[:3])
        value = field("LabelValue")
        layer = field("Layer")
        labels.append(
            LabelInfo(
                value=int(value) if value else 1,  # before Slicer 4.11 each segment had its own 0/1 layer
                name=field("Name") or segment_id,
                color=color if len(color) == 3 else (0.5, 0.5, 0.5),  # type: ignore[arg-type]
            )
        )
        ids.append(segment_id)
        layers.append(int(layer) if layer else index)
        index += 1
    if not labels:
        return {}
    offset_text = get("Segmentation_ReferenceImageExtentOffset")
    meta: dict[str, Any] = {"labels": labels, "segment_ids": ids, "segment_layers": layers}
    if offset_text:
        meta["reference_image_extent_offset"] = tuple(int(v) for v in offset_text.split())
    return meta


def _resolve_label_table(
    array: np.ndarray, labels: Sequence[LabelInfo] | None, name: str
) -> list[tuple[LabelInfo, bool]]:
    """Segments to write for a label map: ``(label, auto_generated)``, background (0) left out.

    Without a table, one segment per non-zero value present with generated names and colors.
    With a table, every non-zero value in the image must have an entry (else voxels would
    silently belong to no segment).
    """
    present = [int(v) for v in np.unique(array) if v != 0]
    if labels is None:
        return [
            (LabelInfo(value, f"Segment_{value}", _AUTO_COLORS[n % len(_AUTO_COLORS)]), True)
            for n, value in enumerate(present)
        ]
    table: dict[int, LabelInfo] = {}
    for label in labels:
        if int(label.value) in table:
            raise MedSegNASError(f"{name}: label value {label.value} appears twice in the label table")
        if any(ch in str(label.name) for ch in "\r\n") or not str(label.name).strip():
            raise MedSegNASError(
                f"{name}: label {label.value} has an empty or multi-line name {label.name!r}"
            )
        color = tuple(float(c) for c in label.color)
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise MedSegNASError(
                f"{name}: label '{label.name}' color {label.color} is not 3 values in [0, 1]"
            )
        table[int(label.value)] = label
    missing = [value for value in present if value not in table]
    if missing:
        raise MedSegNASError(
            f"{name}: the label map has values {missing} without an entry in the label table "
            f"(table values: {sorted(table)}); add them to the table or pass labels=None"
        )
    return [(label, False) for value, label in sorted(table.items()) if value != 0]


#: Segment tag holding the class value of a segment (written to .seg.nrrd, read by the bridge).
LABEL_VALUE_TAG = "MedSegNAS.LabelValue"


def segment_id_for_label(value: int) -> str:
    """The segment ID used for label ``value``: stable across runs, so re-runs update the same IDs."""
    return f"label_{int(value)}"


def _add_segmentation_metadata(image: sitk.Image, segments: list[tuple[LabelInfo, bool]]) -> None:
    """Slicer segmentation keys (as written by vtkMRMLSegmentationStorageNode) for one layer."""
    size = image.GetSize()
    # All segments of a shared layer must carry the layer's extent: Slicer crops the layer
    # image to the first segment's extent when it reads it.
    extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
    for index, (label, auto_generated) in enumerate(segments):
        fields = {
            "ID": segment_id_for_label(label.value),
            "Name": str(label.name),
            "NameAutoGenerated": "1" if auto_generated else "0",
            "Color": " ".join(repr(float(c)) for c in label.color),
            "ColorAutoGenerated": "1" if auto_generated else "0",
            "LabelValue": str(int(label.value)),
            "Layer": "0",
            "Extent": extent,
            # Slicer keeps tags through save/load and copies between segmentations, so the class
            # value survives even when segments are renamed or re-ordered.
            "Tags": f"{LABEL_VALUE_TAG}:{int(label.value)}|",
        }
        for field, value in fields.items():
            image.SetMetaData(_SEGMENT_KEY.format(index=index, field=field), value)
    image.SetMetaData("Segmentation_MasterRepresentation", _BINARY_LABELMAP)
    image.SetMetaData("Segmentation_ContainedRepresentationNames", _BINARY_LABELMAP + "|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    image.SetMetaData("Segmentation_ConversionParameters", "")


# --------------------------------------------------------------------------- reading


def _source(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    fmt = image_format(path)
    if fmt is None:
        raise ImageReadError(_unsupported_suffix_message(path))
    return path, fmt


def _file_reader(path: Path, fmt: str) -> sitk.ImageFileReader:
    """An ImageFileReader whose header has been read (ImageReadError with one line otherwise)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = _condense_itk_error(exc, path)
        raise ImageReadError(f"{path}: cannot read the {_FORMAT_NAMES[fmt]} file: {reason}") from exc
    return reader


def _metadata_getter(source: sitk.ImageFileReader | sitk.Image) -> Callable[[str], str | None]:
    keys = set(source.GetMetaDataKeys())
    return lambda key: source.GetMetaData(key) if key in keys else None


@dataclass(frozen=True)
class _Header:
    """What ITK knows about an image before reading its voxels."""

    size: tuple[int, ...]
    components: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    get: Callable[[str], str | None]

    @classmethod
    def of(cls, source: sitk.ImageFileReader | sitk.Image) -> _Header:
        if isinstance(source, sitk.Image):
            components, pixel_id = source.GetNumberOfComponentsPerPixel(), source.GetPixelID()
        else:
            components, pixel_id = source.GetNumberOfComponents(), source.GetPixelID()
        return cls(
            size=tuple(source.GetSize()),
            components=int(components),
            spacing=tuple(source.GetSpacing()),
            origin=tuple(source.GetOrigin()),
            direction=tuple(source.GetDirection()),
            pixel_type=sitk.GetPixelIDValueAsString(pixel_id),
            get=_metadata_getter(source),
        )


def _itk_voxels(image: sitk.Image) -> np.ndarray:
    """An ITK image's voxels in file order ``(I, J, K, further axes..., components)``."""
    voxels = sitk.GetArrayFromImage(image)  # numpy order is ITK's reversed: (..., k, j, i[, c])
    ndim = image.GetDimension()
    order = tuple(range(ndim - 1, -1, -1))
    if image.GetNumberOfComponentsPerPixel() > 1:
        order += (ndim,)
    return voxels.transpose(order)


def _channels_marked(get: Callable[[str], str | None], fmt: str) -> bool:
    if fmt == "seg.nrrd":
        return True  # a 4D segmentation stacks its layers (or, before Slicer 4.11, its segments)
    return fmt == "nifti" and (get("descrip") or "").strip() == NIFTI_CHANNELS_MARKER


def _nrrd_declared_space(path: Path) -> str | None:
    """The ``space:`` a NRRD header declares (ITK reports LPS after converting; this is for
    ``meta`` only, the geometry comes from ITK)."""
    with open(path, "rb") as stream:
        head = stream.read(8192)
    for line in head.split(b"\n\n", 1)[0].decode("latin-1").splitlines():
        if line.startswith("space:"):
            return line.partition(":")[2].strip()
    return None


#: Largest tolerated deviation of a DICOM slice gap from the mean gap, as a fraction of it.
SLICE_GAP_TOLERANCE = 0.01


def _check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, path: Path, uid: str) -> None:
    """Raise ImageFormatError when slices are missing or unevenly spaced along the slice normal.

    ITK stacks such slices on a regular grid anyway (its spacing is the first-to-last distance
    over the count - 1), which misplaces every slice in between.
    """
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    positions = []
    for index in range(len(reader.GetFileNames())):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return  # no Image Position (Patient): nothing to check against
        text = reader.GetMetaData(index, "0020|0032")
        positions.append([float(v) for v in text.replace("\x00", "").split("\\")[:3]])
    gaps = np.diff(np.asarray(positions) @ normal)
    if abs(float(gaps.mean())) < 1e-6:
        raise ImageFormatError(
            f"{path}: the slices of DICOM series {uid} share their positions (several acquisitions "
            "in one series?); split the series before reading it"
        )
    deviation = float(np.abs(gaps - gaps.mean()).max())
    if deviation > SLICE_GAP_TOLERANCE * abs(float(gaps.mean())):
        raise ImageFormatError(
            f"{path}: DICOM series {uid} has missing or unevenly spaced slices (gaps {gaps.min():.4g} to "
            f"{gaps.max():.4g} mm); one voxel grid cannot hold it (check the export, or resample it first)"
        )


def _read_dicom(
    path: Path, series_uid: str | None, *, header_only: bool
) -> tuple[sitk.Image, dict[str, Any]]:
    """A DICOM series as an ITK image.

    With ``header_only`` only the first and last slices are read: ITK's slice spacing is the
    distance between them over the slice count - 1, which the caller applies with the count.
    """
    uid, files = dicom_series_files(path, series_uid)
    reader = sitk.ImageSeriesReader()
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.SetFileNames([files[0], files[-1]] if header_only and len(files) > 2 else files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = _condense_itk_error(exc, path)
        raise ImageReadError(f"{path}: cannot read DICOM series {uid}: {reason}") from exc
    if not header_only and len(files) > 2:
        _check_slice_positions(reader, image, path, uid)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    first.ReadImageInformation()
    get = _metadata_getter(first)
    meta: dict[str, Any] = {"series_uid": uid, "files": len(files)}
    for key, tag in (
        ("modality", "0008|0060"),
        ("study_uid", "0020|000d"),
        ("series_description", "0008|103e"),
    ):
        value = get(tag)
        if value is not None:
            meta[key] = value.strip().rstrip("\x00")
    return image, meta


def read_volume(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    validate: bool = True,
    series_uid: str | None = None,
    fourth_axis_channels: bool = False,
) -> Volume:
    """Read a 3D image file or DICOM series with its geometry.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.seg.nrrd``, ``.mha``/``.mhd`` file,
            a folder holding a DICOM series, or one ``.dcm`` file of a series.
        dtype: numpy dtype to cast the voxels to (default: as stored).
        validate: run :func:`check_volume` (no NaN/inf, every axis >= 2 voxels).
        series_uid: SeriesInstanceUID to read from a folder holding several DICOM series.
        fourth_axis_channels: read a 4D scalar image's 4th axis as channels (MSD multi-modal
            files); by default a 4D image is rejected unless its header marks channels.

    Returns:
        Volume with ``array`` ``(C, I, J, K)``, the IJK -> RAS ``affine`` (mm) and ``meta``:
        ``path``, ``format``, ``original_space`` (the coordinate system the file stores its
        geometry in), ``pixel_type``; for segmentations ``labels`` (list of LabelInfo),
        ``segment_ids``, ``segment_layers`` (channel of each label); for DICOM ``series_uid``,
        ``modality``, ``files``.

    Raises:
        ImageReadError: missing, unsupported, corrupt or truncated file (one-line message).
        ImageFormatError: not a 3D image (2D, 4D time series, 5D+), or invalid content.
    """
    path, fmt = _source(path)
    name = str(path)
    meta: dict[str, Any] = {"path": name, "format": fmt}
    if fmt == "dicom":
        image, dicom_meta = _read_dicom(path, series_uid, header_only=False)
        meta.update(dicom_meta)
        header = _Header.of(image)
    else:
        reader = _file_reader(path, fmt)
        header = _Header.of(reader)
    channels = _channel_count(
        header.size,
        header.components,
        name=name,
        fourth_axis_channels=fourth_axis_channels or _channels_marked(header.get, fmt),
        fmt=fmt,
    )
    affine = _affine_from_itk(header.spacing, header.origin, header.direction, name)
    if fmt == "nifti":
        voxels = _read_nifti_voxels(path)
    else:
        if fmt != "dicom":
            try:
                image = reader.Execute()
            except RuntimeError as exc:
                reason = _condense_itk_error(exc, path)
                raise ImageReadError(f"{path}: cannot read the {_FORMAT_NAMES[fmt]} file: {reason}") from exc
        voxels = _itk_voxels(image)
    size_ijk = tuple(header.size[:3])
    if voxels.size != channels * math.prod(size_ijk):
        raise ImageReadError(
            f"{path}: voxel data of shape {voxels.shape} do not match the header {header.size}"
        )
    # File order (I, J, K, extra axes or components) -> (C, I, J, K): the extra axes are 1 x C.
    voxels = voxels.reshape(*size_ijk, channels).transpose(3, 0, 1, 2)
    if not voxels.dtype.isnative:
        voxels = voxels.astype(voxels.dtype.newbyteorder("="))
    if dtype is not None:
        voxels = voxels.astype(dtype, copy=False)

    meta["pixel_type"] = header.pixel_type
    if fmt in ("nrrd", "seg.nrrd"):
        meta["original_space"] = _nrrd_declared_space(path) or header.get("NRRD_space") or "LPS"
        segmentation = _segmentation_from_metadata(header.get)
        if segmentation:
            meta["format"] = "seg.nrrd"
            meta.update(segmentation)
    else:
        meta["original_space"] = _FORMAT_SPACE[fmt]
    volume = Volume(voxels, affine, meta)
    if validate:
        check_volume(volume, name=name)
    return volume


def read_geometry(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    fourth_axis_channels: bool = False,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Spatial shape ``(I, J, K)`` and IJK -> RAS affine of an image, from its header only.

    Fast enough to validate a whole dataset (the voxels are not read, so truncation is not
    detected here; :func:`read_volume` detects it). A DICOM series reads its first and last
    slices (so missing or unevenly spaced slices are not detected either).

    Raises:
        ImageReadError / ImageFormatError: as :func:`read_volume`.
    """
    path, fmt = _source(path)
    name = str(path)
    if fmt == "dicom":
        image, meta = _read_dicom(path, series_uid, header_only=True)
        header = _Header.of(image)
        size, spacing = list(header.size), list(header.spacing)
        if meta["files"] > 2:  # one slice per file (a multi-frame file is a series of one)
            size[2] = meta["files"]
            spacing[2] /= meta["files"] - 1
    else:
        header = _Header.of(_file_reader(path, fmt))
        size, spacing = list(header.size), list(header.spacing)
    _channel_count(
        size,
        header.components,
        name=name,
        fourth_axis_channels=fourth_axis_channels or _channels_marked(header.get, fmt),
        fmt=fmt,
    )
    shape = (int(size[0]), int(size[1]), int(size[2]))
    return shape, _affine_from_itk(spacing, header.origin, header.direction, name)


def read_volumes(paths: Sequence[str | os.PathLike], **kwargs: Any) -> Volume:
    """Read co-registered volumes (e.g. MR sequences of one case) stacked as channels.

    Args:
        paths: files on the same voxel grid; their channels are concatenated in this order.
        kwargs: passed to :func:`read_volume` for every file.

    Returns:
        Volume ``(sum of C, I, J, K)`` with the first file's affine; ``meta["paths"]`` lists the
        files and ``meta["channel_meta"]`` each file's own meta.

    Raises:
        ImageFormatError: the grids differ in shape, or in affine by more than 1e-4 mm; the
            message names both files.
    """
    if not paths:
        raise MedSegNASError("read_volumes: no files given")
    volumes = [read_volume(p, **kwargs) for p in paths]
    first, first_path = volumes[0], Path(paths[0])
    for volume, path in zip(volumes[1:], paths[1:], strict=True):
        if volume.spatial_shape != first.spatial_shape:
            raise ImageFormatError(
                f"{path}: voxel grid {volume.spatial_shape} differs from {first_path} "
                f"{first.spatial_shape}; channels must share one grid (resample first)"
            )
        deviation = float(np.abs(volume.affine - first.affine).max())
        if deviation > GRID_TOLERANCE_MM:
            raise ImageFormatError(
                f"{path}: geometry differs from {first_path} by up to {deviation:.4g} mm "
                f"(tolerance {GRID_TOLERANCE_MM} mm); channels must share one grid (resample first)"
            )
    array = np.concatenate([v.array for v in volumes], axis=0)
    meta = {
        "paths": [str(p) for p in paths],
        "format": first.meta.get("format"),
        "channel_meta": [v.meta for v in volumes],
    }
    return Volume(array, first.affine.copy(), meta)


# --------------------------------------------------------------------------- validation


def check_volume(volume: Volume, *, name: str, allow_nan: bool = False, min_size: int = 2) -> None:
    """Raise ImageFormatError when a volume cannot be used as a 3D image.

    Checks: at least one channel and one voxel, every spatial axis at least ``min_size`` voxels
    (a single voxel or a 2D slice is not a volume), real-valued voxels, no NaN (unless
    ``allow_nan``) and no infinite value, and a finite invertible affine. The message starts
    with ``name`` (the file) and counts the offending voxels.
    """
    shape = tuple(int(s) for s in volume.array.shape)
    spatial = shape[1:]
    dims = " x ".join(str(s) for s in spatial)
    if 0 in shape:
        raise ImageFormatError(f"{name}: empty image (shape {shape} has a zero-length axis)")
    if all(s == 1 for s in spatial):
        raise ImageFormatError(f"{name}: the image is a single voxel (1 x 1 x 1); a 3D volume is needed")
    if min(spatial) < min_size:
        hint = " (a single 2D slice?)" if sorted(spatial)[1] >= min_size else ""
        raise ImageFormatError(
            f"{name}: image of {dims} voxels is too small: every axis needs at least {min_size} voxels{hint}"
        )
    if not (np.issubdtype(volume.array.dtype, np.number) or volume.array.dtype == np.bool_):
        raise ImageFormatError(f"{name}: voxel type {volume.array.dtype} is not a real number type")
    if np.iscomplexobj(volume.array):
        raise ImageFormatError(
            f"{name}: complex-valued voxels ({volume.array.dtype}); a real image is needed"
        )
    if not (np.all(np.isfinite(volume.affine)) and abs(np.linalg.det(volume.affine[:3, :3])) > 0):
        raise ImageFormatError(f"{name}: invalid geometry (zero spacing or non-finite affine)")
    if np.issubdtype(volume.array.dtype, np.floating):
        total = volume.array.size
        nan_count = int(np.count_nonzero(np.isnan(volume.array)))
        if nan_count == total:
            raise ImageFormatError(f"{name}: all {total} voxels are NaN")
        if nan_count and not allow_nan:
            raise ImageFormatError(f"{name}: {nan_count} of {total} voxels are NaN; fix or mask them")
        inf_count = int(np.count_nonzero(np.isinf(volume.array)))
        if inf_count:
            raise ImageFormatError(f"{name}: {inf_count} of {total} voxels are infinite (+/-inf)")


# --------------------------------------------------------------------------- writing


def _write_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return IMAGE_SUFFIXES[suffix]
    if name.endswith(".dcm") or path.is_dir() or not path.suffix:
        raise MedSegNASError(
            f"{path}: writing DICOM is not supported; write {', '.join(WRITABLE_SUFFIXES)} "
            "(Slicer's DICOM module can export DICOM)"
        )
    raise MedSegNASError(f"{path}: cannot write this file type; use one of {', '.join(WRITABLE_SUFFIXES)}")


def _writable_array(array: np.ndarray, name: str) -> np.ndarray:
    """The voxels in a type ITK writes: bool -> uint8, float16 -> float32 (both lossless)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf" or array.dtype.itemsize > 8:
        raise MedSegNASError(
            f"{name}: cannot write voxels of type {array.dtype}; use an integer or float type"
        )
    return array


def _volume_to_image(volume: Volume, array: np.ndarray, fmt: str, name: str) -> sitk.Image:
    spacing, origin, direction = _itk_geometry(volume.affine, name)
    channels = array.shape[0]
    if channels == 1:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[0].transpose(2, 1, 0)))
    elif fmt == "nifti":
        # MSD layout: a 4D (x, y, z, channel) file, marked so that it reads back as channels.
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(0, 3, 2, 1)), isVector=False)
        direction4 = np.eye(4)
        direction4[:3, :3] = np.asarray(direction).reshape(3, 3)
        image.SetSpacing([*spacing, 1.0])
        image.SetOrigin([*origin, 0.0])
        image.SetDirection(direction4.ravel().tolist())
        image.SetMetaData("ITK_FileNotes", NIFTI_CHANNELS_MARKER)
        return image
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(3, 2, 1, 0)), isVector=True)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _write_atomically(
    path: Path, write: Callable[[Path], None], verify: Callable[[Path], None] | None
) -> None:
    """Write through a temporary folder beside ``path``, then move the file(s) into place."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise MedSegNASError(f"{path}: cannot write into folder {folder}: {exc.strerror or exc}") from exc
    try:
        staged = staging / path.name
        try:
            write(staged)
        except RuntimeError as exc:
            raise MedSegNASError(f"{path}: writing failed: {_condense_itk_error(exc, staged)}") from exc
        if not staged.is_file():
            raise MedSegNASError(f"{path}: writing failed: the writer produced no file")
        if verify is not None:
            try:
                verify(staged)
            except ImageReadError as exc:
                raise MedSegNASError(
                    f"{path}: writing failed (disk full?): the written file is incomplete"
                ) from exc
        # Companions (the .raw of a .mhd) first, so the named file appears only when complete.
        for companion in sorted(staging.iterdir()):
            if companion.name != path.name:
                os.replace(companion, folder / companion.name)
        os.replace(staged, path)
    except OSError as exc:
        raise MedSegNASError(f"{path}: writing failed: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_volume(
    volume: Volume,
    path: str | os.PathLike,
    *,
    labels: Sequence[LabelInfo] | None = None,
    compress: bool = True,
) -> Path:
    """Write a volume with its geometry; the format follows the file name (see module doc).

    Args:
        volume: the image; several channels are written as a NIfTI 4D file, an NRRD vector
            axis or MetaImage channels (a ``.seg.nrrd`` takes one label-map channel).
        path: target file; missing parent folders are created. An existing file is replaced
            atomically.
        labels: label table of a label map. Stored in ``.seg.nrrd`` and ``.nrrd`` files as Slicer
            segmentation metadata (value 0, the background, is not a segment); other formats have
            no place for it and ignore it. For ``.seg.nrrd`` the default is ``volume.meta["labels"]``
            or else one generated segment per value present.
        compress: gzip the voxels (NRRD, MetaImage). For NIfTI the name decides (``.nii.gz``).

    Returns:
        ``path`` as a Path.

    Raises:
        MedSegNASError: unsupported type or extension (DICOM is read only), sheared affine,
            inconsistent label table, unwritable folder, or a failed write (the old file is kept).
    """
    path = Path(path)
    name = str(path)
    fmt = _write_format(path)
    array = _writable_array(np.asarray(volume.array), name)
    wants_segmentation = fmt == "seg.nrrd" or (fmt == "nrrd" and labels is not None)
    if wants_segmentation:
        if array.shape[0] != 1:
            raise MedSegNASError(
                f"{name}: a segmentation holds one label-map channel, the volume has {array.shape[0]}"
            )
        if array.dtype.kind not in "iu":
            raise MedSegNASError(f"{name}: a segmentation needs integer labels, got {array.dtype} voxels")
        if array.size and int(array.min()) < 0:
            raise MedSegNASError(f"{name}: label values must be >= 0, found {int(array.min())}")
    image = _volume_to_image(volume, array, fmt, name)
    if wants_segmentation:
        table = labels
        if table is None and isinstance(volume.meta.get("labels"), list):
            table = volume.meta["labels"]
        _add_segmentation_metadata(image, _resolve_label_table(array, table, name))

    def write(target: Path) -> None:
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(target))
        writer.SetUseCompression(target.name.lower().endswith(".nii.gz") if fmt == "nifti" else compress)
        writer.Execute(image)

    _write_atomically(path, write, _verify_nifti_length if fmt == "nifti" else None)
    return path
