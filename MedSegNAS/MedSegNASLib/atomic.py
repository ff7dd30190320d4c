"""Atomic file writes: readers see the old file or the new one, never half of it.

Every result MedSegNAS writes (run status, checkpoints, datasets, pictures, models) goes through
:func:`write_atomic`: the content is written to a temporary file in the destination folder,
flushed to disk, then renamed over the destination. A crash, a full disk or a killed worker leaves
the previous file intact and no stray temporary file. Unlike ``tempfile.mkstemp`` the new file
gets the usual permissions (umask), so results stay readable by the group on shared cluster folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace ``path`` with what ``write(handle)`` writes to a binary file handle."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Create or replace ``path`` with UTF-8 ``text``."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int = 2) -> Path:
    """Create or replace ``path`` with ``data`` as strict JSON (NaN and infinity are refused)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")
