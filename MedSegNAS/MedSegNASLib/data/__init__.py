"""Volumes with geometry, datasets and phantoms.

Importing this package loads neither nibabel nor SimpleITK; the names below import their module
on first use.
"""

from __future__ import annotations

from ..lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
