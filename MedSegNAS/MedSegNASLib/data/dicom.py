"""Find the files of one DICOM series (for :func:`MedSegNASLib.data.io.read_volume`).

Series are discovered with GDCM through SimpleITK (the same code path Slicer's ITK readers use):
``GetGDCMSeriesIDs`` lists the series of a folder (not its subfolders) and
``GetGDCMSeriesFileNames`` returns a series' files sorted along the slice normal.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from ..errors import ImageReadError

#: DICOM tag of SeriesInstanceUID, in SimpleITK's metadata key spelling.
SERIES_UID_TAG = "0020|000e"


def list_dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """All DICOM series directly inside ``folder``: SeriesInstanceUID -> sorted slice files.

    Returns an empty dict when the folder holds no readable DICOM image.
    """
    folder = str(folder)
    return {
        uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    }


def _series_uid_of_file(path: Path) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file") from exc
    if not reader.HasMetaDataKey(SERIES_UID_TAG):
        raise ImageReadError(f"{path}: the DICOM file has no SeriesInstanceUID (0020,000E)")
    return reader.GetMetaData(SERIES_UID_TAG).strip().rstrip("\x00")


def dicom_series_files(path: str | Path, series_uid: str | None = None) -> tuple[str, list[str]]:
    """The files of the DICOM series that ``path`` designates.

    Args:
        path: a folder holding one series (or several, then ``series_uid`` picks one), or one
            DICOM file, which stands for the series it belongs to (looked up in its folder).
        series_uid: SeriesInstanceUID to read when the folder holds several series.

    Returns:
        ``(series_uid, files)`` with the files sorted along the slice normal.

    Raises:
        ImageReadError: no series found, several series and no ``series_uid``, or an unknown
            ``series_uid``; the message lists the series found.
    """
    path = Path(path)
    if path.is_file():
        folder = path.parent
        series_uid = series_uid or _series_uid_of_file(path)
    else:
        folder = path
    series = list_dicom_series(folder)
    if not series:
        raise ImageReadError(
            f"{path}: no DICOM image series found in folder {folder} (subfolders are not searched)"
        )
    listing = ", ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
    if series_uid is None:
        if len(series) > 1:
            raise ImageReadError(
                f"{path}: the folder holds {len(series)} DICOM series: {listing}; choose one with series_uid="
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        raise ImageReadError(f"{path}: no DICOM series with SeriesInstanceUID {series_uid}; found: {listing}")
    return series_uid, series[series_uid]
