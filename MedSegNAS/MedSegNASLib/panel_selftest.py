"""Data for the module's self-test (Slicer's "Reload and Test"): a tiny phantom dataset and bundle.

``MedSegNAS.py``'s ``MedSegNASTest`` runs the panel's own path on them inside Slicer; keeping their
construction here keeps the module file to its Slicer glue.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["phantom_bundle", "phantom_dataset"]

#: The tiny untrained UNet of the self-test: it runs in seconds on a CPU and labels a few voxels.
PHANTOM_UNET: dict = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 5,
    "channels": [8, 16],
    "strides": [2],
    "num_res_units": 1,
}


def phantom_dataset(folder: str | os.PathLike[str], size: int = 32) -> Path:
    """A one-case phantom dataset (``dataset.json``) in ``folder``."""
    from .data.phantom import write_phantom_dataset

    return write_phantom_dataset(folder, cases=1, size=size, unlabeled=0, test_cases=0)


def phantom_bundle(folder: str | os.PathLike[str], name: str = "phantom_unet") -> Path:
    """A MONAI bundle ``folder/name`` of :data:`PHANTOM_UNET` (random weights) with the phantom's labels."""
    from monai.networks.nets import UNet

    from .data.phantom import PHANTOM_LABELS
    from .data.preprocessing import PreprocessingSpec
    from .models.export import export_bundle

    spec = PreprocessingSpec(
        channels=["CT"],
        spacing=[6.0, 6.0, 8.0],
        patch_size=[32, 32, 32],
        intensity={"kind": "ct_window", "a_min": -100.0, "a_max": 250.0},
    )
    weights = UNet(**{key: value for key, value in PHANTOM_UNET.items() if key != "_target_"}).state_dict()
    return export_bundle(
        Path(folder) / name,
        network_def=PHANTOM_UNET,
        state_dict=weights,
        labels=PHANTOM_LABELS,
        preprocessing=spec,
        name="phantom UNet",
    )
