"""Exceptions whose message is shown to the user as it is (one line, no traceback).

The CLI maps :class:`MedSegNASError` to exit code 1 and prints ``error: <message>`` on stderr;
any other exception is a bug and prints a traceback only with ``--debug``.
"""

from __future__ import annotations


class MedSegNASError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class ImageReadError(MedSegNASError):
    """A file or folder could not be read as a 3D medical image (corrupt, truncated, wrong format)."""


class ImageFormatError(MedSegNASError):
    """An image was read but cannot be used: wrong dimensionality, empty, or non-finite values."""


class DatasetError(MedSegNASError):
    """A dataset description (``dataset.json`` or datalist) or the files it names are invalid."""


class JobError(MedSegNASError):
    """A job cannot be launched, resumed or cancelled (locked, missing run directory, ...)."""
