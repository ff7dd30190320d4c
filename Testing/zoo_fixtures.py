"""MONAI model-zoo bundles from their published configs, with random weights, against MONAI's run.

For each bundle of ``Testing/data/model_zoo`` (published ``configs/``, ``LICENSE``,
``large_files.yml``; no weights, no bundle code):

* :func:`prepare_bundle`: a runnable copy in a scratch folder: random weights (seeded) saved at
  the path the config's ``CheckpointLoader`` reads, a random DiNTS architecture code where the
  config loads one, and for the bundles that import their own code (``scripts.*``) small
  stand-ins written for these tests (:data:`STAND_INS`; not the bundles' code) under
  ``scripts/``, with the import paths the configs use.
* :func:`write_images`: oblique test images (phantom CT, MR-like or multi-channel) whose voxels
  are about the bundle's own voxel size, so each model grid is 32^3-64^3 voxels.
* :func:`monai_run`: ``python -m monai.bundle run`` of the published config with only the
  overrides a CPU-only test needs (:func:`monai_overrides`: data list, output folder; DiNTS'
  hard-coded CUDA device and checkpoint map location; imports that need packages or code the
  test does not have, which the inference path does not use).
* :func:`compare`: ``medsegnas segment --device cpu`` (``--trust`` where asked) on the same
  images: the share of voxels where the two label maps agree.

``benchmarks/model_zoo_table.py`` runs all of them and prints the README's table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

ZOO = Path(__file__).resolve().parent / "data" / "model_zoo"


@dataclass(frozen=True)
class ZooCase:
    """How to test one bundle.

    Attributes:
        kind: ``"ct"`` (one HU image), ``"mr"`` (one MR-like image with exact-zero air),
            ``"brats"`` (four MR-like channels, one file each), ``"renal"`` (three CT phases,
            one file each, and a label file the config loads).
        spacing: voxel size (mm) of the test image, about the bundle's own.
        size: test image voxels per axis.
        needs_code: the config imports bundle code (``scripts.*``); run with ``--trust``.
        slow: the network takes over a minute on 2 CPU cores.
        run_id: the config item ``monai.bundle run`` runs.
    """

    kind: str
    spacing: tuple[float, float, float]
    size: int = 40
    needs_code: bool = False
    slow: bool = False
    run_id: str = "run"


CASES: dict[str, ZooCase] = {
    "spleen_ct_segmentation": ZooCase("ct", (1.7, 1.6, 2.3)),
    "swin_unetr_btcv_segmentation": ZooCase("ct", (1.7, 1.6, 2.3), slow=True),
    "wholeBody_ct_segmentation": ZooCase("ct", (1.6, 1.7, 1.8), slow=True),
    "pancreas_ct_dints_segmentation": ZooCase("ct", (1.1, 1.2, 1.3), slow=True),
    "multi_organ_segmentation": ZooCase("ct", (1.1, 1.2, 1.3), slow=True),
    "pediatric_abdominal_ct_segmentation": ZooCase("ct", (1.6, 1.7, 3.2)),
    "prostate_mri_anatomy": ZooCase("mr", (0.6, 0.55, 0.7), size=36, slow=True),
    "brats_mri_segmentation": ZooCase("brats", (1.0, 1.0, 1.0), size=36, slow=True),
    "renalStructures_CECT_segmentation": ZooCase(
        "renal", (0.9, 0.85, 0.95), size=36, needs_code=True, slow=True, run_id="inference"
    ),
    "wholeBrainSeg_Large_UNEST_segmentation": ZooCase(
        "mr", (1.0, 1.0, 1.0), size=36, needs_code=True, run_id="evaluating"
    ),
}

# ------------------------------------------------------------------------------ stand-ins
#: Bundle code the configs import, replaced by small stand-ins written for these tests (same
#: import paths and constructor arguments; not the bundles' code, whose licence and size we do
#: not want in the repository). What matters for the engine is that it is *bundle* code: only
#: ``--trust`` may import it, from the bundle folder, as ``monai.bundle run`` does.
STAND_INS: dict[str, dict[str, str]] = {
    # imported by the config for its training helpers; inference uses nothing from it
    "pediatric_abdominal_ct_segmentation": {
        "scripts/__init__.py": "",
        "scripts/monai_utils.py": '"""Stand-in: the inference config imports it and uses nothing from it."""\n',
    },
    "wholeBrainSeg_Large_UNEST_segmentation": {
        "scripts/__init__.py": "",
        "scripts/networks/__init__.py": "",
        "scripts/networks/unest_base_patch_4.py": '''
            """Stand-in for the bundle's UNesT: a small convolutional network with the same
            constructor, whose position embedding is a 4-D parameter (as UNesT's are)."""
            import torch
            from torch import nn


            class UNesT(nn.Module):
                def __init__(self, in_channels, out_channels, patch_size=4, depths=(2, 2, 8),
                             embed_dim=(128, 256, 512), num_heads=(4, 8, 16)):
                    super().__init__()
                    width = 8
                    self.encode = nn.Sequential(
                        nn.Conv3d(in_channels, width, 3, padding=1), nn.InstanceNorm3d(width), nn.GELU(),
                        nn.Conv3d(width, width, 3, stride=2, padding=1), nn.InstanceNorm3d(width), nn.GELU(),
                    )
                    self.pos_embed = nn.Parameter(torch.randn(1, width, 1, 1) * 0.1)  # 4-D
                    self.decode = nn.ConvTranspose3d(width, width, 2, stride=2)
                    self.head = nn.Conv3d(width + in_channels, out_channels, 1)

                def forward(self, x):
                    features = self.encode(x)
                    features = features + self.pos_embed[..., None]
                    features = self.decode(features)
                    return self.head(torch.cat([features, x], dim=1))
            ''',
    },
    "renalStructures_CECT_segmentation": {
        "scripts/__init__.py": "",
        "scripts/my_transforms.py": '''
            """Stand-ins for the bundle's transforms: the phases stacked as channels; sigmoid
            channels merged into one label map (channel c -> label c, the lowest channel wins,
            channel 0 ignored)."""
            import torch
            from monai.transforms import MapTransform


            class ConcatImages(MapTransform):
                def __init__(self, keys_merge, keys_out, allow_missing_keys=True):
                    super().__init__(keys_merge, allow_missing_keys)
                    self.keys_merge, self.keys_out = list(keys_merge), keys_out

                def __call__(self, data):
                    data = dict(data)
                    data[self.keys_out] = torch.cat([torch.as_tensor(data[k]) for k in self.keys_merge])
                    first = self.keys_merge[0]
                    if hasattr(data[first], "meta"):
                        from monai.data import MetaTensor

                        data[self.keys_out] = MetaTensor(data[self.keys_out], meta=data[first].meta,
                                                         applied_operations=data[first].applied_operations)
                    return data


            class MergeClassesd(MapTransform):
                def __call__(self, data):
                    data = dict(data)
                    for key in self.key_iterator(data):
                        channels = data[key]
                        merged = torch.zeros_like(channels[:1])
                        for c in range(channels.shape[0] - 1, 0, -1):
                            merged = torch.where(channels[c:c + 1] > 0, torch.full_like(merged, c), merged)
                        data[key] = merged
                    return data
            ''',
    },
}


def inference_config(bundle: Path) -> Path:
    return next(p for p in sorted((bundle / "configs").glob("inference.*")))


def _parser(bundle: Path, overrides: dict | None = None):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inference_config(bundle)))
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def _checkpoint_path(parser) -> str:
    """``load_path`` of the config's ``CheckpointLoader`` (an item, or one of the handlers)."""
    candidates = ["checkpointloader"]
    for key in ("handlers", "validate#handlers"):
        if key in parser and isinstance(parser[key], list):
            candidates += [f"{key}#{n}" for n, item in enumerate(parser[key]) if isinstance(item, dict)]
    for item_id in candidates:
        if item_id in parser and "CheckpointLoader" in str(parser[item_id].get("_target_", "")):
            return str(parser.get_parsed_content(f"{item_id}#load_path"))
    raise KeyError("no CheckpointLoader in the config")


def _dints_arch_code(parser, seed: int) -> dict[str, np.ndarray]:
    """A random architecture of the config's DiNTS space, stored as the published search codes are."""
    from monai.networks.nets import TopologySearch

    space = parser["dints_space"]
    torch.manual_seed(seed)
    search = TopologySearch(
        channel_mul=space["channel_mul"],
        num_blocks=space["num_blocks"],
        num_depths=space["num_depths"],
        use_downsample=space["use_downsample"],
        device="cpu",
    )
    with torch.no_grad():
        search.log_alpha_a.normal_(0.0, 1.0)
        search.log_alpha_c.normal_(0.0, 1.0)
    node_a, arch_code_a, arch_code_c, _ = search.decode()
    return {
        "node_a": np.asarray(node_a, dtype=np.float32),
        "arch_code_a": np.asarray(arch_code_a, dtype=np.float32),
        "arch_code_c": np.asarray(arch_code_c, dtype=np.float32),
    }


def _drop_removed_arguments(bundle: Path) -> None:
    """SwinUNETR's ``img_size``, which MONAI 1.5 removed, is dropped from the copy (for MONAI's
    run and ours alike): the published config does not build with this MONAI otherwise."""
    import inspect

    from monai.bundle import ConfigParser
    from monai.networks.nets import SwinUNETR

    path = inference_config(bundle)
    config = ConfigParser.load_config_file(str(path))
    network = config.get("network_def") or {}
    if str(network.get("_target_", "")).endswith("SwinUNETR") and "img_size" in network:
        if "img_size" not in inspect.signature(SwinUNETR).parameters:
            del network["img_size"]
            path.write_text(json.dumps(config, indent=2))


def _forget_scripts() -> None:
    """Another bundle's ``scripts`` package, imported before, must not shadow this one's."""
    for module in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[module]


def prepare_bundle(name: str, folder: Path, seed: int = 0) -> Path:
    """A runnable copy of a published bundle in ``folder/name`` with random weights."""
    bundle = folder / name
    shutil.copytree(ZOO / name, bundle)
    for relative, text in STAND_INS.get(name, {}).items():
        path = bundle / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    _drop_removed_arguments(bundle)
    overrides: dict[str, Any] = {"imports": ["$import os", "$import glob"]}
    parser = _parser(bundle, overrides)
    if "dints_space" in parser:
        code = _dints_arch_code(parser, seed)
        path = Path(parser.get_parsed_content("arch_ckpt_path"))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(code, path)
        parser["arch_ckpt"] = code
        parser["dints_space#device"] = "$torch.device('cpu')"
    added = False
    _forget_scripts()
    if STAND_INS.get(name):
        sys.path.insert(0, str(bundle))
        added = True
    try:
        torch.manual_seed(seed)
        network = parser.get_parsed_content("network_def")
    finally:
        if added:
            sys.path.remove(str(bundle))
        _forget_scripts()
    weights = Path(_checkpoint_path(parser))
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), weights)
    return bundle


# -------------------------------------------------------------------------------- images


def _oblique_affine(spacing: tuple[float, float, float], size: int, seed: int) -> np.ndarray:
    """An oblique IJK -> RAS affine (a few degrees about each axis) with the given voxel sizes."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", [4.0 + seed % 3, -3.0, 6.0], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-spacing[0], -spacing[1], spacing[2]])  # LPS-like storage
    affine[:3, 3] = -affine[:3, :3] @ (np.array([size, size, size]) / 2.0)
    return affine


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def write_images(name: str, folder: Path, seed: int = 21) -> list[Path]:
    """The test image(s) of a bundle: one file per input channel, in the bundle's order."""
    from MedSegNASLib.data.phantom import generate_phantom_case

    case = CASES[name]
    image, label = generate_phantom_case(seed, case.size)
    hu = image.array[0].astype(np.float32)
    affine = _oblique_affine(case.spacing, case.size, seed)
    mr = np.clip(hu + 1000.0, 0.0, None) / 10.0  # air exactly 0, as in MR
    mr[mr < 5.0] = 0.0
    if case.kind == "ct":
        return [_save(hu.astype(np.int16), affine, folder / "ct.nii.gz")]
    if case.kind == "mr":
        return [_save(mr, affine, folder / "mr.nii.gz")]
    if case.kind == "brats":
        body = mr > 0
        channels = [mr, np.where(body, np.clip(300.0 - np.abs(hu - 50.0), 1.0, None), 0.0),
                    np.where(body, mr ** 0.5 * 10.0, 0.0), np.where(body, 2000.0 - mr, 0.0)]  # fmt: skip
        return [_save(c.astype(np.float32), affine, folder / f"mr{n}.nii.gz") for n, c in enumerate(channels)]
    if case.kind == "renal":
        phases = [hu, hu * 1.1 + 20.0, hu * 0.9 - 10.0]
        paths = [_save(p.astype(np.float32), affine, folder / f"{k}.nii.gz")
                 for p, k in zip(phases, ("artery", "vein", "excret"), strict=True)]  # fmt: skip
        _save(label.array[0].astype(np.uint8), affine, folder.parent / f"{folder.name}_label.nii.gz")
        return paths
    raise ValueError(case.kind)


# ------------------------------------------------------------------------------ MONAI run


def monai_overrides(name: str, bundle: Path, images: list[Path], output: Path) -> dict[str, Any]:
    """The overrides ``monai.bundle run`` needs here (nothing that changes the computation)."""
    case = CASES[name]
    config = json.loads(json.dumps(_parser(bundle).get()))
    if case.kind == "renal":
        label = images[0].parent.parent / f"{images[0].parent.name}_label.nii.gz"
        data = [
            {"artery": str(images[0]), "vein": str(images[1]), "excret": str(images[2]), "label": str(label)}
        ]
    elif case.kind == "brats":
        data = [{"image": [str(p) for p in images]}]
    else:
        data = [{"image": str(images[0])}]
    overrides: dict[str, Any] = {"dataset#data": data, "output_dir": str(output)}
    if case.kind == "renal":  # its SaveImaged names outputs by their path under dataset_dir
        overrides["dataset_dir"] = str(images[0].parent)
    imports = config.get("imports") or []
    # pandas (prostate's data list) and scripts.monai_utils (pediatric) serve the data list and
    # training only; the test gives the data list itself.
    kept = [i for i in imports if "pandas" not in i and "scripts" not in i]
    if kept != imports:
        overrides["imports"] = kept
    transforms = (config.get("preprocessing") or {}).get("transforms") or []
    for index, transform in enumerate(transforms):
        if isinstance(transform, dict) and transform.get("reader") == "ITKReader":
            # itk is not installed here; for NIfTI, nibabel gives MONAI the same voxels and affine
            overrides[f"preprocessing#transforms#{index}#reader"] = "NibabelReader"
    if "dints_space" in config:  # CPU-only: MONAI's run needs these by hand
        overrides["dints_space#device"] = "$torch.device('cpu')"
        overrides["arch_ckpt"] = "$torch.load(@arch_ckpt_path, map_location='cpu', weights_only=False)"
    return overrides


def monai_run(name: str, bundle: Path, images: list[Path], output: Path, timeout: int = 1800):
    """``python -m monai.bundle run`` from the bundle folder; returns ``(process, label file)``."""
    overrides = monai_overrides(name, bundle, images, output)
    extra = bundle / "test_overrides.json"
    extra.write_text(json.dumps(overrides))
    config = inference_config(bundle).relative_to(bundle)
    process = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", CASES[name].run_id,
         "--config_file", json.dumps([str(config), extra.name])],
        cwd=bundle, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    found = sorted(p for p in output.rglob("*.nii.gz") if "label" not in p.name) if output.exists() else []
    return process, (found[0] if found else None)


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def ours(name: str, bundle: Path, images: list[Path], output: Path, *, trust: bool = False) -> int:
    from MedSegNASLib.cli import main as medsegnas_main

    args = ["segment", *map(str, images), "--model", str(bundle), "-o", str(output), "--device", "cpu"]
    return medsegnas_main(args + (["--trust"] if trust else []))


#: How far from MONAI's value our label may be and still agree: MONAI saves what
#: ``Invertd(nearest_interp=False)`` makes of an argmax map (prostate) as interpolated floats;
#: a value half-way between two labels (x.5 up to float64 noise) rounds to either.
HALF_WAY = 0.5 + 1e-4


def agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Share of voxels where our label is MONAI's (rounded to the nearest label; either neighbour
    where MONAI's saved value lies half-way between two)."""
    ours, theirs = np.squeeze(ours), np.squeeze(theirs)
    if ours.shape != theirs.shape:
        raise AssertionError(f"label maps of different shapes: {ours.shape} vs {theirs.shape}")
    return float(np.mean(np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) < HALF_WAY))
