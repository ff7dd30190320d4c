"""Volumes with geometry, datasets and phantoms."""

from .datasets import (
    Dataset,
    DatasetCase,
    ValidationReport,
    load_dataset,
    split_folds,
    train_val_split,
    validate_dataset,
)
from .io import check_volume, image_format, read_geometry, read_volume, read_volumes, write_volume
from .phantom import PHANTOM_LABELS, generate_phantom_case, write_phantom_dataset
from .volume import LPS_TO_RAS, LabelInfo, Volume, affine_from_geometry

__all__ = ["LPS_TO_RAS", "LabelInfo", "Volume", "affine_from_geometry"]
__all__ += [
    "Dataset",
    "DatasetCase",
    "ValidationReport",
    "load_dataset",
    "split_folds",
    "train_val_split",
    "validate_dataset",
    "PHANTOM_LABELS",
    "generate_phantom_case",
    "write_phantom_dataset",
]
__all__ += ["check_volume", "image_format", "read_geometry", "read_volume", "read_volumes", "write_volume"]
