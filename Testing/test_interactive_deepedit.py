"""MONAI DeepEdit bundles in an interactive session: the same input and output as MONAI's own pipeline.

The model zoo's ``spleen_deepedit_annotation`` published config (Testing/data/model_zoo) with
random weights. The reference is MONAI's ConfigParser building that config's own ``preprocessing``
and ``postprocessing``; only the bundle's ``scripts`` transform (its own code, which converts clicks
given as voxels of the file to voxels of the RAS-oriented image) is replaced by the same arithmetic
written here, the ``ignite`` import is dropped (nothing of it is built) and the NIfTI input is read
by MONAI's NibabelReader instead of ITKReader (the ``itk`` package is not a dependency).
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from MedSegNASLib.data.io import read_volume, write_volume
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.interactive.clicks import deepedit_points, parse_clicks, voxel_to_ras
from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model

ZOO = Path(__file__).parent / "data" / "model_zoo" / "spleen_deepedit_annotation"


class VoxelClicksToOrientedImage:
    """What the bundle's scripts.transforms.OrientationGuidanceMultipleLabelDeepEditd computes:
    click voxels of the file -> voxels of the oriented image (inverse new affine @ original affine)."""

    def __init__(self, ref_image: str = "image", label_names=None) -> None:
        self.ref_image, self.label_names = ref_image, label_names or {}

    def __call__(self, data):
        d = dict(data)
        meta = d[self.ref_image].meta
        to_oriented = np.linalg.inv(np.asarray(meta["affine"], dtype=np.float64)) @ np.asarray(
            meta["original_affine"], dtype=np.float64
        )
        for name in self.label_names:
            points = np.asarray(d.get(name, []), dtype=np.float64)
            if len(points):
                d[name] = (to_oriented @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        return d


@pytest.fixture(scope="module")
def deepedit_bundle(tmp_path_factory) -> Path:
    """The published bundle folder plus random weights (models/model.pt, a plain state dict)."""
    from monai.networks.nets import DynUNet

    root = tmp_path_factory.mktemp("zoo") / "spleen_deepedit_annotation"
    shutil.copytree(ZOO, root)
    config = json.loads((ZOO / "configs" / "inference.json").read_text())
    kwargs = {k: v for k, v in config["network_def"].items() if k != "_target_"}
    kwargs.update(in_channels=3, out_channels=2)
    torch.manual_seed(13)
    network = DynUNet(**kwargs)
    # Random instance-norm-free weights give near-constant outputs; spread them so the argmax varies.
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(3.0)
    (root / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def ct_image(tmp_path_factory) -> Path:
    """A 40 x 36 x 30 CT-like image stored LPS-style (flips to reach RAS) with 1.5 x 1.2 x 2 mm voxels."""
    rng = np.random.default_rng(13)
    grid = np.indices((40, 36, 30)).astype(np.float32)
    body = ((grid[0] - 20) ** 2 / 300 + (grid[1] - 18) ** 2 / 250 + (grid[2] - 15) ** 2 / 200) < 1
    spleen = ((grid[0] - 26) ** 2 + (grid[1] - 14) ** 2 + (grid[2] - 15) ** 2) < 36
    hu = np.where(body, 30.0, -1000.0) + np.where(spleen, 90.0, 0.0) + rng.normal(0, 20, body.shape)
    affine = np.array([[-1.5, 0, 0, 40.0], [0, -1.2, 0, 25.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_volume(Volume(hu[None].astype(np.float32), affine), path)
    return path


def _monai_pipeline(
    bundle: Path, image: Path, voxel_clicks: dict[str, list[list[int]]], *, run_network: bool
):
    """The published config's preprocessing (+ network + postprocessing), by MONAI's ConfigParser."""
    from monai.bundle import ConfigParser

    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["imports"] = [i for i in config["imports"] if "ignite" not in i]
    config["deepedit_transforms"][0]["_target_"] = f"{__name__}.VoxelClicksToOrientedImage"
    config["preprocessing_transforms"][0]["reader"] = "NibabelReader"  # itk is not installed; a NIfTI input
    config["bundle_root"] = str(bundle)
    config["device"] = "$torch.device('cpu')"
    config["postprocessing"]["transforms"] = config["postprocessing"]["transforms"][:4]  # no SaveImaged
    parser = ConfigParser(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocessing = parser.get_parsed_content("preprocessing")
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
        network.eval()
        data = preprocessing({"image": str(image), **voxel_clicks})
        inputs = data["image"].clone()
        if not run_network:
            return inputs.numpy(), None
        with torch.no_grad():
            data["pred"] = network(data["image"][None])[0]
        data = parser.get_parsed_content("postprocessing")(data)
    return inputs.numpy(), data["pred"][0].numpy()


VOXEL_CLICKS = {"spleen": [[26, 14, 15], [24, 15, 14]], "background": [[8, 30, 20]]}


def _ras_clicks(affine: np.ndarray) -> list[dict]:
    """VOXEL_CLICKS as RAS clicks: two on the spleen, one \"not spleen\" (DeepEdit's background)."""
    return [
        {"label": "spleen", "positive": True, "ras": voxel_to_ras(v, affine)[0].tolist()}
        for v in VOXEL_CLICKS["spleen"]
    ] + [
        {
            "label": "spleen",
            "positive": False,
            "ras": voxel_to_ras(VOXEL_CLICKS["background"][0], affine)[0].tolist(),
        }
    ]


def test_deepedit_guidance_input_matches_monai_pipeline(deepedit_bundle, ct_image):
    model = load_interactive_model(deepedit_bundle)
    assert model.kind == "deepedit" and model.label_names == {"spleen": 1, "background": 0}
    assert model.spatial_size == (128, 128, 128) and model.image_channels == 1
    volume = read_volume(ct_image)
    expected_input, _ = _monai_pipeline(
        deepedit_bundle, ct_image, copy.deepcopy(VOXEL_CLICKS), run_network=False
    )

    session = InteractiveSession(model, volume, start="empty")
    points = deepedit_points(parse_clicks(_ras_clicks(volume.affine)), model.label_names, session.affine)
    ours = session.deepedit_input(points)
    assert ours.shape == expected_input.shape == (3, 128, 128, 128)
    assert expected_input[1].max() == 1.0 and expected_input[2].max() == 1.0  # both channels have clicks
    np.testing.assert_allclose(ours, expected_input, atol=1e-5)


@pytest.mark.slow  # two DynUNet passes at 128^3 on the CPU: over a minute on 2 shared cores
def test_deepedit_session_output_matches_monai_pipeline(deepedit_bundle, ct_image):
    volume = read_volume(ct_image)
    _, expected_labels = _monai_pipeline(
        deepedit_bundle, ct_image, copy.deepcopy(VOXEL_CLICKS), run_network=True
    )
    session = InteractiveSession(load_interactive_model(deepedit_bundle), volume, start="empty")
    mask, box = session.update(parse_clicks(_ras_clicks(volume.affine)), "spleen")
    assert box == ((0, 40), (0, 36), (0, 30))
    spleen = expected_labels == 1
    assert 0 < spleen.sum() < spleen.size  # the comparison is not trivially all one label
    assert np.array_equal(mask, spleen)
