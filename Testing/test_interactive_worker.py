"""The interactive worker, its client and ``medsegnas interactive`` on a tiny MedSegNAS interactive bundle.

The bundle: a small UNet with 1 image + 5 guidance channels (random weights: these tests check the
protocol, the geometry and the local region, not accuracy), exported like a trained one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import WORKER_ENV
from MedSegNASLib.data.io import read_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.interactive.clicks import parse_clicks, voxel_to_ras
from MedSegNASLib.interactive.export import declare_interactive, interactive_label_names, interactive_section
from MedSegNASLib.interactive.session import InteractiveSession, load_interactive_model
from MedSegNASLib.interactive.worker import InteractiveWorker, worker_argv
from MedSegNASLib.models.export import export_bundle
from segment_fixtures import TINY_SPEC, UNET_DEF, build, write_test_images

ENV = {**os.environ, **WORKER_ENV}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    names = interactive_label_names(PHANTOM_LABELS)
    network_def = {**UNET_DEF, "in_channels": 1 + len(names)}
    interactive = export_bundle(
        folder / "interactive",
        network_def=network_def,
        state_dict=build(network_def, seed=3).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny interactive",
        extra_metadata={"interactive": interactive_section(names, 1)},
    )
    declare_interactive(interactive, interactive_section(names, 1))
    plain = export_bundle(
        folder / "plain",
        network_def=UNET_DEF,
        state_dict=build(UNET_DEF).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny automatic",
    )
    return {"interactive": interactive, "plain": plain}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_test_images(tmp_path_factory.mktemp("images") / "case", size=48)


def test_bundle_declares_its_guidance_channels_and_plain_bundles_are_refused(bundles):
    metadata = json.loads((bundles["interactive"] / "configs" / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 6 and image["channel_def"]["1"] == "guidance:background"
    assert metadata["medsegnas"]["interactive"]["label_names"]["spleen"] == 2
    model = load_interactive_model(bundles["interactive"])
    assert model.kind == "local" and model.region == (32, 32, 32) and model.image_channels == 1
    with pytest.raises(MedSegNASError, match="not interactive"):
        load_interactive_model(bundles["plain"])


def test_the_same_ras_clicks_give_the_same_mask_whatever_the_storage_order(bundles, images):
    """lps.nii.gz and ras_permuted.nii.gz hold the same voxels at the same places, stored differently."""
    model = load_interactive_model(bundles["interactive"], region=16)
    lps, permuted = read_volume(images["lps"]), read_volume(images["ras_permuted"])
    clicks = parse_clicks(
        [
            {"label": "liver", "positive": True, "ras": voxel_to_ras([20, 24, 30], lps.affine)[0].tolist()},
            {"label": "liver", "positive": False, "ras": voxel_to_ras([30, 20, 28], lps.affine)[0].tolist()},
        ]
    )
    masks = []
    for volume in (lps, permuted):
        session = InteractiveSession(model, volume, start="empty")
        session.update(clicks, "liver")
        masks.append(session.masks["liver"])
    assert masks[0].any()
    # ras_permuted's array is lps's flipped on i and j, then stored as (k, i, j).
    assert np.array_equal(masks[1], masks[0][::-1, ::-1, :].transpose(2, 0, 1))


def test_worker_updates_only_a_local_region_and_survives_bad_requests(bundles, images):
    volume = read_volume(images["lps"])
    seeded = np.zeros(volume.spatial_shape, dtype=bool)
    seeded[10:30, 10:30, 10:30] = True
    with InteractiveWorker(bundles["interactive"], [images["lps"]], region=16, start="empty") as worker:
        info = worker.wait_ready(timeout=120)
        assert info["segments"] == ["liver", "spleen", "right kidney", "left kidney"]
        worker.seed("liver", seeded)
        assert np.array_equal(worker.mask("liver"), seeded)
        click = {
            "label": "liver",
            "positive": True,
            "ras": voxel_to_ras([12, 12, 12], volume.affine)[0].tolist(),
        }
        mask, box, seconds = worker.update([click], "liver")
        assert seconds < 30
        assert mask.shape == tuple(b - a for a, b in box)
        # 16 model voxels of 6 x 6 x 8 mm around the click: a box of the 7.5 x 6.5 x 9.5 mm input grid,
        # far smaller than the 48^3 image; everything outside it keeps the seeded mask.
        assert all(b - a <= 18 for a, b in box) and all(a <= 12 < b for a, b in box)
        after = worker.mask("liver")
        outside = np.ones(volume.spatial_shape, dtype=bool)
        outside[tuple(slice(a, b) for a, b in box)] = False
        assert np.array_equal(after[outside], seeded[outside])
        assert np.array_equal(after[tuple(slice(a, b) for a, b in box)], mask)
        with pytest.raises(MedSegNASError, match="not 'pancreas'"):
            worker.update([{**click, "label": "liver"}], "pancreas")
        with pytest.raises(MedSegNASError, match="'ras'"):
            worker.update([{"label": "liver", "positive": True, "ras": [1, 2]}], "liver")
        worker.update([click], "liver")  # still serving
        process = worker.process
    assert process.returncode == 0 and not worker.folder.exists()


def test_worker_exits_when_idle_and_when_its_parent_dies(bundles, images):
    argv = worker_argv(bundles["interactive"], [images["lps"]], start="empty", idle_timeout=1.0)
    # stdin stays open (end-of-file would end the worker at once): only the idle timeout stops it.
    idle = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    stdout = idle.stdout.read()
    idle.wait(timeout=60)
    idle.stdin.close()
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert idle.returncode == 0 and lines[0]["event"] == "ready" and lines[-1] == {"event": "idle-exit"}

    # A parent that starts the worker, says its pid, then is killed without a word.
    parent_code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen({argv[:-2] + ['--idle-timeout', '600']!r}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "print(p.pid, flush=True); print(p.stdout.readline().decode().strip(), flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=ENV)
    worker_pid = int(parent.stdout.readline())
    assert json.loads(parent.stdout.readline())["event"] == "ready"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{worker_pid}/stat") as handle:  # a zombie (exited, not reaped) counts as gone
            if handle.read().split()[2] == "Z":
                break
        time.sleep(0.2)
    else:
        os.kill(worker_pid, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 20 s")


def test_cli_interactive_writes_the_refined_label_map(bundles, images, tmp_path):
    volume = read_volume(images["lps"])
    clicks = tmp_path / "clicks.json"
    clicks.write_text(
        json.dumps(
            [
                {
                    "label": "spleen",
                    "positive": True,
                    "ras": voxel_to_ras([30, 20, 24], volume.affine)[0].tolist(),
                },
                {
                    "label": "liver",
                    "positive": True,
                    "ras": voxel_to_ras([14, 24, 24], volume.affine)[0].tolist(),
                },
            ]
        )
    )
    out = tmp_path / "refined.nii.gz"
    cli = [sys.executable, "-m", "MedSegNASLib.cli", "interactive", str(images["lps"])]
    done = subprocess.run(
        [
            *cli,
            "--model",
            str(bundles["interactive"]),
            "--clicks",
            str(clicks),
            "-o",
            str(out),
            "--start",
            "empty",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = read_volume(out)
    assert result.spatial_shape == volume.spatial_shape and np.allclose(result.affine, volume.affine)
    assert set(np.unique(result.array)) <= {0, 1, 2, 3, 4}
    assert "spleen: 1 click(s)" in done.stderr and "liver: 1 click(s)" in done.stderr

    clicks.write_text(
        json.dumps([{"label": "spleen", "positive": True, "ras": [0, 0]}])
    )  # refused before any work
    bad = subprocess.run(
        [*cli, "--model", str(bundles["interactive"]), "--clicks", str(clicks), "-o", str(out)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
        f"error: {clicks}[0]: 'ras'"
    )


def test_random_weights_stay_deterministic_between_loads(bundles):
    first = load_interactive_model(bundles["interactive"]).network.state_dict()
    second = load_interactive_model(bundles["interactive"]).network.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_automatic_start_on_an_image_smaller_than_the_region(bundles, images):
    """The no-click result pads an image smaller than the region (a UNet needs sizes it can halve)."""
    volume = read_volume(images["lps"])
    small = Volume(np.ascontiguousarray(volume.array[:, 10:30, 12:30, 14:30]), volume.affine)  # 20 x 18 x 16
    session = InteractiveSession(load_interactive_model(bundles["interactive"]), small, start="auto")
    assert session.grid_shape[0] < 32 and session.masks["liver"].shape == (20, 18, 16)
