"""``medsegnas train --interactive``: a DeepEdit-style UNet on a phantom, exported as an interactive bundle.

A real job worker trains 2 epochs of 3 steps on 32^3 phantoms: the network takes the image, one
guidance channel per label and one previous-mask channel per segment; the bundle declares those
channels, its predictions are the no-click results (what ``medsegnas segment`` gives with it, and
where a refinement session from the automatic result starts), and the interactive session opens it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import finish, job_argv, start_worker
from MedSegNASLib.data.io import read_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.interactive.clicks import parse_clicks, voxel_to_ras
from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model
from MedSegNASLib.jobs import RunDir

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="training workers are stopped with POSIX signals"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

QUICK = {
    "epochs": 2,
    "val_interval": 1,
    "checkpoint_every": 0,
    "crops_per_case": 1,
    "max_patch_size": [32, 32, 32],
}


@pytest.fixture(scope="module")
def interactive_run(phantom_dataset: Callable[..., Path], json_file, tmp_path_factory) -> tuple[RunDir, Path]:
    phantom = phantom_dataset(cases=4, size=32, seed=3)
    config = json_file("quick_interactive.json", QUICK)
    argv = job_argv("train", phantom, config, "--network", "unet", "--interactive", "--no-register")
    run = start_worker(argv, tmp_path_factory.mktemp("runs") / "interactive")
    assert finish(run, timeout=600) == 0
    return run, phantom


def test_interactive_training_exports_a_bundle_with_guidance_channels(interactive_run):
    run, phantom = interactive_run
    job = json.loads((run.path / "job.json").read_text())
    assert job["config"]["interactive"]["label_names"] == {
        "background": 0,
        **{label.name: label.value for label in PHANTOM_LABELS[1:]},
    }
    bundle = run.artifacts / "model"
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    declared = metadata["medsegnas"]["interactive"]
    assert declared["encoding"] == "deepedit" and declared["image_channels"] == 1 and declared["sigma"] == 3
    assert declared["previous_mask"] is True  # RITM's mask guidance: one channel per segment
    image_input = metadata["network_data_format"]["inputs"]["image"]
    assert image_input["num_channels"] == 10 and image_input["channel_def"]["6"] == "previous:liver"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    first_conv = next(v for k, v in state.items() if v.ndim == 5)
    assert first_conv.shape[1] == 10  # the network really takes image + 5 guidance + 4 previous masks
    # The automatic (no-click) predictions of the validation case are written as for any training.
    summary = json.loads((run.artifacts / "summary.json").read_text())
    (case,) = summary["validation_cases"]
    prediction = read_volume(run.artifacts / "predictions" / f"{case}.nii.gz")
    assert set(np.unique(prediction.array)) <= {0, 1, 2, 3, 4}

    model = load_interactive_model(bundle)
    assert model.kind == "local" and model.label_names == declared["label_names"] and model.previous_mask
    image = read_volume(phantom / "imagesTr" / f"{case}.nii.gz")
    session = InteractiveSession(model, image, start="auto")
    click = parse_clicks(
        [{"label": "liver", "positive": True, "ras": voxel_to_ras([16, 16, 16], image.affine)[0].tolist()}]
    )
    mask, box = session.update(click, "liver")
    assert mask.shape == tuple(b - a for a, b in box)


def test_an_interactive_bundle_segments_without_clicks_as_its_automatic_start(interactive_run, tmp_path):
    """``medsegnas segment`` takes an interactive bundle (its no-click mode, the image channel only),
    and a refinement session starting from the automatic result starts from exactly that label map."""
    from MedSegNASLib import cli

    run, phantom = interactive_run
    bundle = run.artifacts / "model"
    (case,) = json.loads((run.artifacts / "summary.json").read_text())["validation_cases"]
    image_path = phantom / "imagesTr" / f"{case}.nii.gz"
    out = tmp_path / "auto.nii.gz"
    # --model the run directory: its exported bundle, as evaluate takes it
    assert cli.main(["segment", str(image_path), "--model", str(run.path), "-o", str(out)]) == 0
    automatic = read_volume(out).array[0]
    training_prediction = read_volume(run.artifacts / "predictions" / f"{case}.nii.gz").array[0]
    assert np.array_equal(automatic, training_prediction)
    assert (automatic > 0).any()
    model = load_interactive_model(bundle)
    session = InteractiveSession(model, read_volume(image_path), start="auto")
    for name in model.segment_names:
        assert np.array_equal(session.masks[name], automatic == model.label_names[name]), name


def test_evaluate_interactive_reports_noc_dice_per_click_and_a_plot(interactive_run, tmp_path, capsys):
    from MedSegNASLib import cli

    run, phantom = interactive_run
    out = tmp_path / "interactive.json"
    argv = ["evaluate", "--interactive", "--model", str(run.path), "--dataset", str(phantom)]
    assert cli.main([*argv, "--max-clicks", "3", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert set(report["organs"]) == {label.name for label in PHANTOM_LABELS[1:]}
    for row in report["organs"].values():
        assert len(row["dice_per_click"]) == 4 and all(0 <= d <= 1 for d in row["dice_per_click"])
        assert 0 <= row["noc85"] <= 3 and row["noc85"] <= row["noc90"] <= 3
        assert row["seconds_per_click"] > 0 and row["cases"] == 1
        # The same start for both users: the curves share Dice after 0 clicks.
        assert row["paint_dice_per_click"][0] == row["dice_per_click"][0]
    assert report["settings"]["start"] == "auto" and report["settings"]["max_clicks"] == 3
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "NoC@90" in capsys.readouterr().out


def test_paint_stroke_is_a_sphere_in_millimetres():
    from MedSegNASLib.interactive.evaluate import paint_stroke

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    painted = paint_stroke(np.zeros((21, 21, 21), bool), (10, 10, 10), True, affine, 4.0)
    assert painted[10, 10, 10] and painted[14, 10, 10] and not painted[15, 10, 10]
    assert painted[10, 10, 12] and not painted[10, 10, 13]  # 2 mm slices: 4 mm is two slices
    erased = paint_stroke(painted, (10, 10, 10), False, affine, 2.0)
    assert not erased[10, 10, 10] and erased[14, 10, 10]
