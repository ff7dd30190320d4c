"""Small JSON caches under the user's cache folder, shared by runs (and by several processes).

The folder is ``$MEDSEGNAS_CACHE`` if set, else ``<MedSegNAS home>/cache`` (``$MEDSEGNAS_HOME``,
default ``~/.medsegnas``). Each entry is one JSON file, written atomically; an entry that cannot
be read or parsed (a truncated write of an older version, a hand edit) counts as absent and is
rebuilt. Nothing here is a security boundary: an entry only saves work that would give the same
answer, and every key includes the versions the answer depends on.

Importing this module loads only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic

__all__ = ["CACHE_ENV", "cache_dir", "cache_key", "read_entry", "write_entry", "versions"]

#: Environment variable naming the cache folder.
CACHE_ENV = "MEDSEGNAS_CACHE"


def cache_dir(kind: str) -> Path:
    """The folder of cache ``kind`` (not created)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / kind
    home = os.environ.get("MEDSEGNAS_HOME") or "~/.medsegnas"
    return Path(home).expanduser() / "cache" / kind


def versions(libraries: tuple[str, ...] = ("torch", "monai")) -> dict[str, str]:
    """The versions a cached answer depends on: MedSegNAS, Python and ``libraries`` (when imported)."""
    from . import __version__

    found = {"medsegnas": str(__version__), "python": sys.version.split()[0]}
    for name in libraries:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "?"))
    return found


def cache_key(*parts: Any, libraries: tuple[str, ...] = ("torch", "monai")) -> str:
    """A hex digest of ``parts`` (JSON-serialisable) and :func:`versions` of ``libraries``."""
    text = json.dumps([versions(libraries), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_entry(kind: str, key: str) -> dict[str, Any] | None:
    """The entry ``key`` of cache ``kind``, or None when it is absent or unreadable."""
    path = cache_dir(kind) / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data


def write_entry(kind: str, key: str, data: dict[str, Any]) -> bool:
    """Store ``data`` as entry ``key`` (atomically); False when the folder is not writable."""
    folder = cache_dir(kind)
    with contextlib.suppress(OSError, ValueError, TypeError):
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / f"{key}.json", {**data, "key": key})
        return True
    return False
