"""A bundle's second ``segment`` run loads its compiled form: no MONAI import, the same label map.

The first run of a bundle loads it the full way (MONAI's config parser, transforms and network)
and stores the compiled form (:mod:`MedSegNASLib.inference.compiled`); the next run of the same
bundle folder, in a fresh process as a user starts it, must import no MONAI and write the same
label map voxel for voxel. The compiled geometry and intensity steps are checked against MONAI's
own transforms on random grids and values; a changed bundle or a damaged cache entry must never
be used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
import torch
from MedSegNASLib.cli import main as medsegnas_main
from MedSegNASLib.inference import compiled as compiled_module
from MedSegNASLib.inference.compiled import (
    IntensityWindow,
    OrientationStep,
    SpacingStep,
    grid_steps_of,
    intensity_steps_of,
    load_compiled,
    steps_grid,
)
from MedSegNASLib.inference.geometry import Grid, model_grid

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
CPU = (torch.device("cpu"), "float32")


def random_grid(rng: np.random.Generator) -> tuple[tuple[int, ...], np.ndarray]:
    """A random image grid: axis-aligned with flips and permutations, or rotated; any spacing."""
    spacing = rng.uniform(0.4, 5.0, size=3)
    if rng.random() < 0.5:
        linear = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], size=3)
    else:
        linear, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = linear @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-300, 300, size=3)
    shape = tuple(int(s) for s in rng.integers(3, 90, size=3))
    return shape, affine


def test_compiled_steps_give_monais_grid_on_any_grid() -> None:
    from monai.transforms import Orientation, Orientationd, Spacing, Spacingd

    rng = np.random.default_rng(17)
    for trial in range(60):
        shape, affine = random_grid(rng)
        axcodes = ["RAS", "LPS", "PLI", "SRA"][trial % 4]
        pixdim = rng.uniform(0.6, 4.0, size=3)
        if trial % 5 == 0:  # within MONAI's tolerance of the image's own spacing: MONAI keeps the image's
            pixdim = np.linalg.norm(affine[:3, :3], axis=0) + rng.uniform(-5e-4, 5e-4, size=3)
        pixdim = [float(p) for p in pixdim]
        monai = (
            [Orientation(axcodes=axcodes), Spacing(pixdim=pixdim, mode="bilinear")]
            if trial % 2
            else [Orientationd("image", axcodes=axcodes), Spacingd("image", pixdim=pixdim, mode="nearest")]
        )
        steps = grid_steps_of(monai)
        assert steps == [
            OrientationStep(axcodes),
            SpacingStep(tuple(pixdim), "nearest" if trial % 2 == 0 else "bilinear", "border"),
        ]
        theirs = model_grid(Grid(shape, affine), monai)  # type: ignore[arg-type]
        ours_shape, ours_affine = steps_grid(steps, shape, affine)
        assert ours_shape == tuple(theirs.shape), (trial, shape, pixdim)
        np.testing.assert_allclose(ours_affine, theirs.affine, rtol=0, atol=1e-9)
        assert model_grid(Grid(shape, affine), steps).shape == theirs.shape  # the engine's entry point


def test_transforms_the_compiled_steps_do_not_reproduce_keep_the_full_path() -> None:
    from monai.transforms import NormalizeIntensity, Orientation, ScaleIntensityRanged, Spacing

    assert grid_steps_of([Orientation(as_closest_canonical=True)]) is None
    assert grid_steps_of([Spacing(pixdim=[1, 1, 1], diagonal=True)]) is None
    assert grid_steps_of([Spacing(pixdim=[1, 1, 1], scale_extent=True)]) is None
    assert grid_steps_of([Spacing(pixdim=[1, 1, 1], min_pixdim=0.5)]) is None
    assert intensity_steps_of([NormalizeIntensity(nonzero=True)]) is None
    assert intensity_steps_of([ScaleIntensityRanged("image", -100, 200, 0.0, 1.0, clip=True)]) == [
        IntensityWindow(-100.0, 200.0, 0.0, 1.0, True)
    ]


@pytest.mark.parametrize("clip", [True, False])
def test_intensity_window_equals_monais_bit_for_bit(clip: bool) -> None:
    from monai.transforms import ScaleIntensityRange

    generator = torch.Generator().manual_seed(3)
    values = torch.cat([torch.linspace(-3000, 4000, 20001), torch.randn(20000, generator=generator) * 700])
    for a_min, a_max, b_min, b_max in [(-57, 164, 0, 1), (-1000.5, 1000.25, -1, 1), (10, 205, 0.0, 1.0)]:
        theirs = ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=clip)(values[None].clone())
        (ours,) = intensity_steps_of([ScaleIntensityRange(a_min, a_max, b_min, b_max, clip=clip)]) or []
        assert torch.equal(torch.as_tensor(theirs).float(), ours(values[None].clone()))


def run_segment_process(argv: list[str], cache: Path, home: Path) -> subprocess.CompletedProcess:
    """``python -m MedSegNASLib.cli segment ...`` as the panels start it; prints what it imported at its end."""
    code = (
        "import os, runpy, sys\n"
        f"sys.argv = {['medsegnas', *argv]!r}\n"
        "def ending(code):\n"
        "    print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'monai', 'ignite'}), flush=True)\n"
        "    real_exit(code)\n"
        "real_exit, os._exit = os._exit, ending\n"
        "runpy.run_module('MedSegNASLib.cli', run_name='__main__', alter_sys=True)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain"), env.get("PYTHONPATH", "")]
    )
    env["MEDSEGNAS_CACHE"] = str(cache)
    env["MEDSEGNAS_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=home.parent
    )


@pytest.fixture(scope="module")
def bundle_and_images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compiled")
    images = sf.write_test_images(root / "images")
    return {"bundle": sf.export_unet_bundle(root / "bundle", steps=5), **images}


def test_the_second_run_imports_no_monai_and_writes_the_same_labels(
    bundle_and_images, tmp_path, monkeypatch, capsys
) -> None:
    cache, home = tmp_path / "cache", tmp_path / "home"
    monkeypatch.setenv("MEDSEGNAS_CACHE", str(cache))
    monkeypatch.setenv("MEDSEGNAS_HOME", str(home))
    bundle = bundle_and_images["bundle"]
    for view in ("oblique", "lps"):
        for extra in ([], ["--fast"]):
            name = f"{view}{len(extra)}"
            full = tmp_path / f"{name}_full.nii.gz"
            argv = [
                "segment",
                str(bundle_and_images[view]),
                "--model",
                str(bundle),
                "--device",
                "cpu",
                *extra,
            ]
            assert medsegnas_main([*argv, "-o", str(full)]) == 0  # the first run: the full way, then compiled
            if view == "oblique" and not extra:
                assert "compiled for the next runs" in capsys.readouterr().err
            again = tmp_path / f"{name}_compiled.nii.gz"
            run = run_segment_process([*argv, "-o", str(again)], cache, home)
            assert run.returncode == 0, run.stderr[-3000:]
            assert run.stdout.strip().splitlines()[-1] == "LOADED []", name
            assert "(compiled by an earlier run)" in run.stderr
            ours, affine = sf.read_labels(again)
            theirs, their_affine = sf.read_labels(full)
            assert np.count_nonzero(theirs) > 0
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
            np.testing.assert_allclose(affine, their_affine)


def test_a_changed_bundle_or_a_damaged_entry_is_never_used(
    bundle_and_images, tmp_path, monkeypatch, capsys
) -> None:
    import shutil

    monkeypatch.setenv("MEDSEGNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDSEGNAS_HOME", str(tmp_path / "home"))
    bundle = shutil.copytree(bundle_and_images["bundle"], tmp_path / "bundle")
    image = bundle_and_images["lps"]
    out = tmp_path / "out.nii.gz"
    assert (
        medsegnas_main(["segment", str(image), "--model", str(bundle), "-o", str(out), "--device", "cpu"])
        == 0
    )
    model = load_compiled(bundle, *CPU)
    assert model is not None and model.compiled_for == ("cpu", "float32")
    assert [lb.name for lb in model.labels][:2] == ["background", "liver"]

    # A label renamed in the metadata: the compiled form is for the old bundle.
    metadata_path = bundle / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    next(item for item in metadata["medsegnas"]["labels"] if item["value"] == 1)["name"] = "hepar"
    metadata_path.write_text(json.dumps(metadata))
    assert load_compiled(bundle, *CPU) is None
    capsys.readouterr()
    assert (
        medsegnas_main(["segment", str(image), "--model", str(bundle), "-o", str(out), "--device", "cpu"])
        == 0
    )
    assert "(compiled by an earlier run)" not in capsys.readouterr().err
    assert [lb.name for lb in load_compiled(bundle, *CPU).labels][:2] == ["background", "hepar"]

    # New weights (same size, a later time): not the compiled network.
    weights = next((bundle / "models").glob("*.pt"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert load_compiled(bundle, *CPU) is None
    assert (
        medsegnas_main(["segment", str(image), "--model", str(bundle), "-o", str(out), "--device", "cpu"])
        == 0
    )
    expected, _ = sf.read_labels(out)

    # A damaged network file: the full way again, the same labels, and the entry rewritten.
    entry = next((tmp_path / "cache" / "compiled").glob(f"{compiled_module.bundle_fingerprint(bundle)}*"))
    network_file = entry / "network-cpu-float32.pt"
    network_file.write_bytes(network_file.read_bytes()[:1000])
    assert load_compiled(bundle, *CPU) is None
    assert (
        medsegnas_main(["segment", str(image), "--model", str(bundle), "-o", str(out), "--device", "cpu"])
        == 0
    )
    again, _ = sf.read_labels(out)
    np.testing.assert_array_equal(again, expected)
    assert load_compiled(bundle, *CPU) is not None
    # only the bundle's present state keeps an entry (the older ones were removed when it was compiled)
    assert [p.name for p in (tmp_path / "cache" / "compiled").iterdir()] == [
        compiled_module.bundle_fingerprint(bundle)
    ]


def test_what_is_not_compiled_says_why(bundle_and_images) -> None:
    from MedSegNASLib.inference.model import load_model

    model = load_model(bundle_and_images["bundle"])
    grid = (np.array([8, 8, 8]), np.eye(4))
    cases = {
        "opened with --trust": dataclasses.replace(model, trusted=True),
        "a foreground crop": dataclasses.replace(model, crop_foreground=object()),
        "label-map steps": dataclasses.replace(model, input_label_steps=[object()]),
        "intensity transforms other than ScaleIntensityRange": dataclasses.replace(
            model, post_intensity=[object()]
        ),
    }
    for reason, changed in cases.items():
        stored, message = compiled_module.compile_model(
            changed, bundle_and_images["bundle"], torch.device("cpu"), None, *grid
        )
        assert not stored and message == f"not compiled: {reason}"


def test_nearest_inversion_at_half_voxel_ties_is_the_same_with_compiled_steps() -> None:
    """A nearest-neighbour inversion with input voxels half-way between model voxels goes through
    MONAI's resampler onto the oriented input grid (engine._monai_nearest_inversion); with the
    compiled steps it must find the same orientation step and give the same labels."""
    from types import SimpleNamespace

    from MedSegNASLib.inference.engine import _monai_nearest_inversion
    from monai.transforms import Orientation, Spacing

    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-stored, 1 mm: model voxels of 2 mm fall half-way
    affine[:3, 3] = [30.0, 20.0, -5.0]
    in_grid = Grid((20, 18, 16), affine)  # type: ignore[arg-type]
    monai = [Orientation(axcodes="RAS"), Spacing(pixdim=(2.0, 2.0, 2.0), mode="nearest")]
    steps = grid_steps_of(monai)
    m_grid = model_grid(in_grid, monai)
    labels = torch.randint(0, 4, m_grid.shape, generator=torch.Generator().manual_seed(5))
    theirs = _monai_nearest_inversion(
        labels, SimpleNamespace(geometry=monai, padding_mode="border"), m_grid, in_grid
    )
    ours = _monai_nearest_inversion(
        labels, SimpleNamespace(geometry=steps, padding_mode="border"), m_grid, in_grid
    )
    assert theirs.shape == in_grid.shape and len(np.unique(theirs)) == 4
    np.testing.assert_array_equal(ours, theirs)
