"""Small real bundles and images for the bundle-export and segmentation tests.

* :func:`train_network`: 100-150 optimizer steps (seconds on 2 cores) on class-balanced 32^3
  crops of two 48^3 phantom cases, so that label maps show the organs (a random network gives
  noise or nothing, which would make a Dice comparison meaningless).
* :func:`export_unet_bundle` / :func:`export_dints_bundle`: trained tiny networks exported with
  :func:`MedSegNASLib.models.export.export_bundle` (6 x 6 x 8 mm voxels, 32^3 windows).
* :func:`write_test_images`: one phantom test case stored three ways: as generated (oblique,
  LPS-stored, anisotropic), axis-aligned LPS-stored with other voxel sizes, and that same
  axis-aligned image stored RAS with permuted axes.
* :func:`monai_bundle_run`: ``python -m monai.bundle run`` of a bundle on a folder of images.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from MedSegNASLib.data.io import write_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS, generate_phantom_case
from MedSegNASLib.data.preprocessing import PreprocessingSpec
from MedSegNASLib.data.volume import Volume

TINY_SPEC = PreprocessingSpec(
    channels=["CT"],
    spacing=[6.0, 6.0, 8.0],
    intensity={"kind": "ct_window", "a_min": -100.0, "a_max": 250.0},
    patch_size=[32, 32, 32],
)
UNET_DEF = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 5,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}
#: Inferer settings of the test bundles: like the spleen bundle's (sw_batch_size 4, overlap 0.5).
INFERER = {"sw_batch_size": 4, "overlap": 0.5, "mode": "constant"}


def build(network_def: dict, seed: int = 0) -> torch.nn.Module:
    """The network of a MONAI config, initialised from ``seed``."""
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    return ConfigParser({"net": network_def}).get_parsed_content("net")


def _training_cases(spec: PreprocessingSpec, seeds: list[int], size: int = 48) -> list[dict]:
    from monai.data import MetaTensor
    from monai.transforms import Compose

    prepare = Compose(
        [
            *spec.geometry_transforms(["image", "label"], ["bilinear", "nearest"]),
            spec.intensity_transform("image"),
        ]
    )
    cases = []
    for seed in seeds:
        image, label = generate_phantom_case(seed, size)
        data = {
            "image": MetaTensor(
                torch.from_numpy(image.array.astype(np.float32)), affine=torch.from_numpy(image.affine)
            ),
            "label": MetaTensor(
                torch.from_numpy(label.array.astype(np.float32)), affine=torch.from_numpy(label.affine)
            ),
        }
        cases.append(prepare(data))
    return cases


def train_network(
    network: torch.nn.Module, spec: PreprocessingSpec = TINY_SPEC, steps: int = 150, seed: int = 0
):
    """A few optimizer steps on phantom cases (in eval mode afterwards)."""
    from monai.losses import DiceCELoss
    from monai.transforms import RandCropByLabelClassesd

    torch.manual_seed(seed)
    cases = _training_cases(spec, [seed + 11, seed + 12])
    crop = RandCropByLabelClassesd(  # each class equally often: every organ is learnt
        ["image", "label"], "label", spatial_size=spec.patch_size, num_classes=5, num_samples=2
    )
    crop.set_random_state(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    network.train()
    for step in range(steps):
        samples = crop(cases[step % len(cases)])
        x = torch.stack([s["image"].as_tensor() for s in samples])
        y = torch.stack([s["label"].as_tensor() for s in samples])
        optimizer.zero_grad()
        loss_fn(network(x), y).backward()
        optimizer.step()
    return network.eval()


def export_unet_bundle(folder: Path, *, steps: int = 150) -> Path:
    from MedSegNASLib.models.export import export_bundle

    network = train_network(build(UNET_DEF), steps=steps)
    return export_bundle(
        folder,
        network_def=UNET_DEF,
        state_dict=network.state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny phantom UNet",
        description="test bundle",
        inferer=INFERER,
        extra_metadata={"metrics": {"val_dice": 0.5}},
    )


def tiny_arch_code():
    """A decoded architecture of a 2 x 2 DiNTS space (random architecture weights, fixed seed)."""
    from MedSegNASLib.nas.decode import decode
    from MedSegNASLib.nas.search_space import SearchSpace

    torch.manual_seed(3)
    space = SearchSpace(num_blocks=2, num_depths=2, channel_mul=0.25, use_downsample=True)
    supernet = space.build_supernet()
    with torch.no_grad():
        supernet.log_alpha_a.normal_(0.0, 1.0)
        supernet.log_alpha_c.normal_(0.0, 1.0)
    return decode(supernet, space)


def export_dints_bundle(folder: Path, *, steps: int = 100) -> Path:
    from MedSegNASLib.models.export import dints_network_def, export_bundle

    code = tiny_arch_code()
    network_def = dints_network_def(code, in_channels=1, num_classes=5, channel_mul=0.25)
    network = train_network(build(network_def, seed=1), steps=steps, seed=1)
    return export_bundle(
        folder,
        network_def=network_def,
        state_dict=network.state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny phantom DiNTS",
        inferer=INFERER,
        arch_code=code,
    )


def write_test_images(folder: Path, seed: int = 21, size: int = 48) -> dict[str, Path]:
    """The same phantom case stored three ways (NIfTI), plus its label map on the first grid.

    ``lps`` and ``ras_permuted`` are the same voxels at the same positions: ``ras_permuted``'s
    array is ``lps``'s flipped on i and j, then transposed to (k, i, j) (:func:`ras_to_lps`).

    Returns:
        ``{"oblique": ..., "lps": ..., "ras_permuted": ..., "truth": ...}`` (truth outside ``folder``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    image, label = generate_phantom_case(seed, size)
    paths = {"oblique": write_volume(image, folder / "oblique.nii.gz")}
    # Axis-aligned, LPS-stored, other voxel sizes: the same voxels on a new grid.
    lps = np.eye(4)
    lps[:3, :3] = np.diag([-7.5, -6.5, 9.5])
    lps[:3, 3] = image.affine[:3, 3]
    paths["lps"] = write_volume(Volume(image.array, lps), folder / "lps.nii.gz")
    # The LPS image's voxels stored RAS (i and j flipped) with the axes permuted (k, i, j on disk):
    # physically the same image, so every label map of it must be the LPS one, re-stored.
    flipped = lps.copy()
    flipped[:3, 0], flipped[:3, 1] = -lps[:3, 0], -lps[:3, 1]
    flipped[:3, 3] = lps[:3, 3] + lps[:3, 0] * (size - 1) + lps[:3, 1] * (size - 1)
    permuted = np.ascontiguousarray(image.array[:, ::-1, ::-1, :].transpose(0, 3, 1, 2))
    ras = np.eye(4)
    ras[:3, :3] = flipped[:3, [2, 0, 1]]
    ras[:3, 3] = flipped[:3, 3]
    paths["ras_permuted"] = write_volume(Volume(permuted, ras), folder / "ras_permuted.nii.gz")
    paths["truth"] = write_volume(label, folder.parent / f"{folder.name}_truth.nii.gz")
    return paths


def ras_to_lps(array: np.ndarray) -> np.ndarray:
    """A ``ras_permuted`` label map ``(K, I, J)`` as ``lps`` stores it ``(I, J, K)``."""
    return np.ascontiguousarray(array.transpose(1, 2, 0)[::-1, ::-1, :])


def monai_bundle_run(bundle: Path, dataset_dir: Path, output_dir: Path, config: str = "inference.json"):
    """``python -m monai.bundle run`` from the bundle folder, as its README says."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            f"configs/{config}",
            "--dataset_dir",
            str(dataset_dir),
            "--output_dir",
            str(output_dir),
        ],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    total = int(x.sum() + y.sum())
    return 2.0 * float(np.logical_and(x, y).sum()) / total if total else 1.0
