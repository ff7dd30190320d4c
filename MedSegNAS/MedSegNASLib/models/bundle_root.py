"""Where a bundle's folder is: :func:`find_bundle_root`, without MONAI (the registry resolves
``--model`` with it before anything decides whether MONAI is needed)."""

from __future__ import annotations

from pathlib import Path

from .safety import ModelFileError

__all__ = ["METADATA_NAME", "find_bundle_root"]

#: The metadata file every MONAI bundle has under ``configs/``.
METADATA_NAME = "metadata.json"


def find_bundle_root(folder: str | Path) -> Path:
    """The bundle folder: ``folder`` itself, or its only sub-folder, holding ``configs/metadata.json``.

    (A bundle zip usually unpacks to ``<name>/configs/...``.)

    Raises:
        ModelFileError: no such folder, or no ``configs/metadata.json`` there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"bundle folder {folder} does not exist or is not a folder")
    if (folder / "configs" / METADATA_NAME).is_file():
        return folder
    candidates = [d for d in folder.iterdir() if d.is_dir() and (d / "configs" / METADATA_NAME).is_file()]
    if len(candidates) == 1:
        return candidates[0]
    raise ModelFileError(f"{folder} is not a MONAI bundle: configs/{METADATA_NAME} is missing")
