"""Volumes with geometry, datasets and phantoms.

Importing this package loads neither nibabel nor SimpleITK; the names below import their module
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "volume": ("LPS_TO_RAS", "LabelInfo", "Volume", "affine_from_geometry"),
    "datasets": (
        "Dataset",
        "DatasetCase",
        "ValidationReport",
        "load_dataset",
        "split_folds",
        "train_val_split",
        "validate_dataset",
    ),
    "phantom": ("PHANTOM_LABELS", "generate_phantom_case", "write_phantom_dataset"),
    "io": ("check_volume", "image_format", "read_geometry", "read_volume", "read_volumes", "write_volume"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    # PEP 562: a name imports its module on first use, so that importing a sub-module (a command's
    # registration, say) does not pay for nibabel/SimpleITK/matplotlib it does not use.
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
