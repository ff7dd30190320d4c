"""VISTA3D point prompts without the bundle's code: the same masks as MONAI's own pipeline.

The model zoo's ``vista3d`` published config (Testing/data/model_zoo/vista3d) with random weights,
with two test-only overrides so that a CPU test stays small: ``encoder_embed_dim=8`` in its
``network_def`` (6 million parameters instead of 218 million) and a 32^3 ``patch_size``. The
reference is MONAI's ConfigParser building that config's own ``preprocessing`` and the
``VistaPostTransformd``/``Invertd``/``nan_to_num`` of its ``postprocessing``, with
``monai.apps.vista3d.inferer.point_based_window_inferer`` called directly with the arguments the
bundle's ``scripts.inferer.Vista3dInferer`` passes, and the points mapped from file voxels to the
preprocessed image as its ``scripts.evaluator.Vista3dEvaluator`` does (that code is not run).
The ``$import scripts`` line is dropped, NIfTI is read by NibabelReader (no GPU reader here) and
``Invertd`` inverts the preprocessing object that ran rather than a deep copy of it.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from MedSegNASLib.data.io import read_volume, write_volume
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.interactive.clicks import parse_clicks, voxel_to_ras
from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model

ZOO = Path(__file__).parent / "data" / "model_zoo" / "vista3d"
SMALL_NETWORK = "$monai.networks.nets.vista3d132(encoder_embed_dim=8, in_channels=@input_channels)"
SPLEEN = 3  # metadata channel_def


@pytest.fixture(scope="module")
def vista_bundle(tmp_path_factory) -> Path:
    """The published bundle folder (small network, 32^3 patch) plus random weights (seeded)."""
    from monai.networks.nets import vista3d132

    root = tmp_path_factory.mktemp("zoo") / "vista3d"
    shutil.copytree(ZOO, root)
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["network_def"] = SMALL_NETWORK
    config["patch_size"] = [32, 32, 32]
    path.write_text(json.dumps(config, indent=4))
    torch.manual_seed(13)
    network = vista3d132(encoder_embed_dim=8, in_channels=1)
    (root / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def ct_image(tmp_path_factory) -> Path:
    """A 40 x 36 x 30 CT-like image stored LPS-style with 1.6 x 1.4 x 2 mm voxels: a body and a 'spleen'."""
    rng = np.random.default_rng(13)
    grid = np.indices((40, 36, 30)).astype(np.float32)
    body = ((grid[0] - 20) ** 2 / 300 + (grid[1] - 18) ** 2 / 250 + (grid[2] - 15) ** 2 / 200) < 1
    spleen = ((grid[0] - 26) ** 2 + (grid[1] - 14) ** 2 + (grid[2] - 15) ** 2) < 36
    hu = np.where(body, 30.0, -1000.0) + np.where(spleen, 90.0, 0.0) + rng.normal(0, 20, body.shape)
    affine = np.array([[-1.6, 0, 0, 40.0], [0, -1.4, 0, 25.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1]])
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_volume(Volume(hu[None].astype(np.float32), affine), path)
    return path


VOXEL_CLICKS = [([26, 14, 15], True), ([24, 15, 14], True), ([12, 25, 15], False)]


def _ras_clicks(affine: np.ndarray, label: str = "spleen") -> list[dict]:
    return [
        {"label": label, "positive": positive, "ras": voxel_to_ras(voxel, affine)[0].tolist()}
        for voxel, positive in VOXEL_CLICKS
    ]


def _monai_pipeline(bundle: Path, image: Path) -> np.ndarray:
    """The published config's preprocessing, MONAI's point-window inferer, VistaPost + Invertd."""
    from monai.apps.vista3d.inferer import point_based_window_inferer
    from monai.bundle import ConfigParser

    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["imports"] = [i for i in config["imports"] if "scripts" not in i]
    config["preprocessing_transforms"][0]["reader"] = "NibabelReader"
    config["bundle_root"] = str(bundle)
    config["device"] = "$torch.device('cpu')"
    # Invertd of the very preprocessing object that ran (a deep copy has other transform ids,
    # which MONAI 1.6's inverse refuses outright).
    config["postprocessing"]["transforms"][2]["transform"] = "@preprocessing"
    parser = ConfigParser(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocessing = parser.get_parsed_content("preprocessing")
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
        network.eval()
        data = preprocessing(
            {
                "image": str(image),
                "label_prompt": [SPLEEN],
                "points": [v for v, _ in VOXEL_CLICKS],
                "point_labels": [int(p) for _, p in VOXEL_CLICKS],
            }
        )
        inputs = data["image"][None]
        # Vista3dEvaluator: file voxels -> voxels of the preprocessed image.
        to_grid = np.linalg.inv(np.asarray(inputs.affine[0] if inputs.affine.ndim == 3 else inputs.affine))
        to_grid = to_grid @ np.asarray(data["image"].meta["original_affine"], dtype=np.float64)
        points = np.asarray(data["points"], dtype=np.float64)
        points = (to_grid @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        class_vector = torch.as_tensor([data["label_prompt"]])[0].unsqueeze(-1)
        with torch.no_grad():
            pred = point_based_window_inferer(
                inputs=inputs,
                roi_size=parser.get_parsed_content("patch_size"),
                sw_batch_size=1,
                transpose=True,
                with_coord=True,
                predictor=network,
                mode="gaussian",
                sw_device="cpu",
                device="cpu",
                overlap=0.3,
                point_coords=torch.from_numpy(points)[None],
                point_labels=torch.as_tensor([data["point_labels"]]),
                class_vector=class_vector,
                prompt_class=copy.deepcopy(class_vector),
                prev_mask=None,
                labels=None,
                label_set=None,
            )
        post = {
            "image": data["image"],
            "pred": pred[0],
            "label_prompt": class_vector,
            "points": torch.from_numpy(points),
            "point_labels": torch.as_tensor(data["point_labels"]),
        }
        for index in (1, 2, 3):  # VistaPostTransformd, Invertd, nan_to_num (0: disabled ToDeviced)
            post = parser.get_parsed_content(f"postprocessing#transforms#{index}")(post)
    return post["pred"][0].numpy()


def test_vista_bundle_loads_safely_and_names_its_labels(vista_bundle):
    model = load_interactive_model(vista_bundle)
    assert model.kind == "vista3d"
    assert model.label_names["spleen"] == SPLEEN and model.label_names["airway"] == 132
    assert model.region == (32, 32, 32)
    assert "background" not in model.segment_names and len(model.segment_names) == 132


def test_vista_session_matches_monai_pipeline(vista_bundle, ct_image):
    volume = read_volume(ct_image)
    session = InteractiveSession(load_interactive_model(vista_bundle), volume, start="empty")
    clicks = parse_clicks(_ras_clicks(volume.affine))
    mask, box = session.update(clicks, "spleen")
    reference = _monai_pipeline(vista_bundle, ct_image)
    # The reference is a label map on the file's grid: the spleen's value inside the windows,
    # 0 elsewhere inside them, 255 outside every window (the session keeps the old mask there).
    assert set(np.unique(reference)) <= {0.0, SPLEEN, 255.0}
    assert np.any(reference == SPLEEN) and np.any(reference == 0)
    np.testing.assert_array_equal(session.masks["spleen"], reference == SPLEEN)
    window = tuple(slice(a, b) for a, b in box)
    assert mask.shape == tuple(b - a for a, b in box)
    assert np.all(reference[window][~mask] != SPLEEN)
    assert not np.any(session.masks["liver"])  # other segments untouched (and start empty)


def test_window_size_is_bounded(vista_bundle):
    with pytest.raises(MedSegNASError, match="each side must be 16-512"):
        load_interactive_model(vista_bundle, region=8)


def test_grouped_labels_and_unknown_labels_are_refused(vista_bundle, ct_image):
    volume = read_volume(ct_image)
    session = InteractiveSession(load_interactive_model(vista_bundle), volume, start="empty")
    with pytest.raises(MedSegNASError, match="groups several"):
        session.update(parse_clicks(_ras_clicks(volume.affine, "lung")), "lung")
    with pytest.raises(MedSegNASError, match="not 'spline'"):
        session.update(parse_clicks(_ras_clicks(volume.affine, "spline")), "spline")


def test_medsegnas_interactive_runs_vista_clicks(vista_bundle, ct_image, tmp_path):
    """The CLI through the worker: a positive click inside the blob marks voxels near it as spleen."""
    volume = read_volume(ct_image)
    centre = [26, 14, 15]
    clicks = [{"label": "spleen", "positive": True, "ras": voxel_to_ras(centre, volume.affine)[0].tolist()}]
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    out = tmp_path / "out.nii.gz"
    cmd = [
        sys.executable,
        "-m",
        "MedSegNASLib.cli",
        "interactive",
        str(ct_image),
        "--model",
        str(vista_bundle),
    ]
    cmd += ["--clicks", str(tmp_path / "clicks.json"), "-o", str(out), "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = read_volume(out)
    assert result.spatial_shape == volume.spatial_shape
    np.testing.assert_allclose(result.affine, volume.affine, atol=1e-5)
    values = set(np.unique(result.array).astype(int))
    assert values <= {0, SPLEEN}, values
    # Mechanics, not quality (random weights): the result changed only near the click, within
    # the 32-voxel window at 1.5 mm (48 mm) around it, and it is not empty there.
    changed = np.argwhere(result.array[0] == SPLEEN)
    assert len(changed) > 0
    distance_mm = np.linalg.norm(
        voxel_to_ras(changed, volume.affine) - voxel_to_ras(centre, volume.affine), axis=1
    )
    assert distance_mm.max() < 48.0 * np.sqrt(3) / 2 + 3.0


def test_published_vista_bundle_verdict_names_its_code_and_the_untrusted_interactive_path():
    """What models import/info print for the published config: its own code, segment's verdict, interactive's."""
    from MedSegNASLib.interactive.vista import interactive_problems, trust_verdict
    from MedSegNASLib.models import inspect_bundle, load_config_file

    verdict = trust_verdict(ZOO)
    assert verdict is not None and "\n" not in verdict
    # segment reads 'preprocessing' as a list of transforms; this one is a Compose of an expression.
    assert "segment does not run it, not even with --trust" in verdict
    assert "scripts.inferer.Vista3dInferer" in verdict and "MONAI's own run of it needs trust" in verdict
    assert "run untrusted in medsegnas interactive" in verdict
    # The full-size published network (218 million parameters) passes the dry build on the meta device.
    info = inspect_bundle(ZOO, require_weights=False)
    assert interactive_problems(info.root, load_config_file(info.inference_config), info.metadata) == []


def test_vista_network_arguments_are_bounded(tmp_path):
    """An oversized network in a VISTA3D-looking config is refused before anything is built."""
    from MedSegNASLib.interactive.vista import interactive_problems
    from MedSegNASLib.models import inspect_bundle, load_config_file

    root = tmp_path / "vista3d"
    shutil.copytree(ZOO, root)
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["network_def"] = "$monai.networks.nets.vista3d132(encoder_embed_dim=4096, in_channels=1)"
    path.write_text(json.dumps(config))
    info = inspect_bundle(root, require_weights=False)
    problems = interactive_problems(info.root, load_config_file(info.inference_config), info.metadata)
    assert problems and "encoder_embed_dim" in problems[0]
