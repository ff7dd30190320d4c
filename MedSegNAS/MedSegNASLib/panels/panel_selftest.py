"""Data for the module's self-test (Slicer's "Reload and Test"): a tiny phantom dataset and bundle.

``MedSegNAS.py``'s ``MedSegNASTest`` runs the panel's own path on them inside Slicer; keeping their
construction here keeps the module file to its Slicer glue.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["phantom_bundle", "phantom_dataset", "phantom_organ_names", "segment_with_phantom_bundle"]

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
    from ..data.phantom import write_phantom_dataset

    return write_phantom_dataset(folder, cases=1, size=size, unlabeled=0, test_cases=0)


def phantom_organ_names() -> list[str]:
    """The names of the phantom's organ labels (background left out), in label order."""
    from ..data.phantom import PHANTOM_LABELS

    return [label.name for label in PHANTOM_LABELS if label.value]


def phantom_bundle(folder: str | os.PathLike[str], name: str = "phantom_unet") -> Path:
    """A MONAI bundle ``folder/name`` of :data:`PHANTOM_UNET` (random weights) with the phantom's labels."""
    from monai.networks.nets import UNet

    from ..data.phantom import PHANTOM_LABELS
    from ..data.preprocessing import PreprocessingSpec
    from ..models.export import export_bundle

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


def segment_with_phantom_bundle(
    volume_node: Any, folder: str | os.PathLike[str], timeout_s: float = 300.0
) -> tuple[dict[str, Any], Any | None]:
    """Segment ``volume_node`` with :func:`phantom_bundle` (written in ``folder``) as the panel does:
    a background ``segment`` job on the CPU (runs in ``folder/runs``), waited for.

    Returns:
        the job's final status and, when it is ``done``, the segmentation node it loaded.
    """
    from .panel_logic import JobFollower, launch_segment_job, load_segment_result

    job = launch_segment_job(volume_node, phantom_bundle(folder), Path(folder) / "runs", {"device": "cpu"})
    status = JobFollower(job).wait(timeout_s=timeout_s).status
    return status, load_segment_result(job, volume_node) if status.get("state") == "done" else None
