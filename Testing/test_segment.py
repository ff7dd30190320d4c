"""``medsegnas segment`` gives the label map MONAI's own bundle workflow gives, on the input's grid.

Each bundle below is trained briefly on phantom cases (so its label maps are organ-shaped) and
exported with ``export_bundle``; MONAI runs it with ``python -m monai.bundle run`` on one
phantom test case stored three ways: oblique and LPS-stored as generated, axis-aligned LPS with
other voxel sizes, RAS-stored with permuted axes. ``segment`` must return the same grid and a
Dice of at least 0.99 for every label either of them predicts, with the default settings
(windows outside the body skipped, bfloat16 on CPUs with AMX) and in float32 with every window.
The DiNTS bundle is run from a YAML config without its MedSegNAS metadata, i.e. as a generic
model-zoo bundle whose preprocessing is read from its inference config.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
from MedSegNASLib.cli import main as medsegnas_main
from MedSegNASLib.data.io import read_volume
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.inference.postprocess import PostprocessSpec, postprocess_labels

pytest.importorskip("ignite", reason="MONAI's bundle workflow needs pytorch-ignite")
pytest.importorskip("fire", reason="python -m monai.bundle needs fire")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

VIEWS = ("oblique", "lps", "ras_permuted")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A registry home of this test only: nothing is read from or written to ``~/.medsegnas``."""
    from MedSegNASLib.models.registry import HOME_ENV

    path = tmp_path / "medsegnas-home"
    monkeypatch.setenv(HOME_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return sf.write_test_images(tmp_path_factory.mktemp("seg") / "images")


@pytest.fixture(scope="module")
def unet(tmp_path_factory, images) -> dict:
    """The exported UNet bundle and MONAI's label maps of the test images."""
    root = tmp_path_factory.mktemp("unet")
    bundle = sf.export_unet_bundle(root / "bundle")
    run = sf.monai_bundle_run(bundle, images["oblique"].parent, root / "monai")
    assert run.returncode == 0, run.stderr[-3000:]
    return {"bundle": bundle, "monai": root / "monai", "root": root}


def segment(*args: str) -> int:
    return medsegnas_main(["segment", *map(str, args)])


def assert_same_as_monai(ours_path: Path, monai_path: Path, image_path: Path) -> dict[int, float]:
    ours, ours_affine = sf.read_labels(ours_path)
    theirs, their_affine = sf.read_labels(monai_path)
    _, image_affine = sf.read_labels(image_path)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours_affine, image_affine, atol=1e-4)
    np.testing.assert_allclose(their_affine, image_affine, atol=1e-4)
    present = sorted((set(np.unique(ours)) | set(np.unique(theirs))) - {0})
    assert np.count_nonzero(theirs) > 0.01 * theirs.size, "the test network predicts too little to compare"
    scores = {int(v): sf.dice(ours, theirs, int(v)) for v in present}
    assert all(score >= 0.99 for score in scores.values()), scores
    return scores


@pytest.mark.parametrize("view", VIEWS)
def test_unet_bundle_matches_monai_bundle_run(unet, images, view, tmp_path) -> None:
    theirs_path = unet["monai"] / f"{view}_seg.nii.gz"
    theirs, _ = sf.read_labels(theirs_path)
    for options in ([], ["--no-crop"]):  # windows outside the body skipped (default) or all run
        out = tmp_path / f"{view}{len(options)}.nii.gz"
        assert segment(images[view], "--model", unet["bundle"], "-o", out, "--device", "cpu", *options) == 0
        assert_same_as_monai(out, theirs_path, images[view])
        ours, _ = sf.read_labels(out)
        assert np.mean(ours == theirs) > 0.9995  # float32 on the CPU: the same computation as MONAI's


def test_windows_per_network_call_do_not_change_the_labels(unet, images, tmp_path, capsys) -> None:
    """On the CPU the engine batches more windows per call than the bundle says (and evens the
    batch sizes out); one window per call must give the same label map, and both MONAI's."""
    outs = {}
    for name, options in {"default": [], "one per call": ["--sw-batch-size", "1"]}.items():
        outs[name] = tmp_path / f"{len(options)}.nii.gz"
        assert (
            segment(images["lps"], "--model", unet["bundle"], "-o", outs[name], "--device", "cpu", *options)
            == 0
        )
    windows = [line for line in capsys.readouterr().err.splitlines() if " windows of " in line]
    assert windows and int(windows[0].split()[0]) >= 3, windows  # several windows, so batches matter
    default, _ = sf.read_labels(outs["default"])
    single, _ = sf.read_labels(outs["one per call"])
    assert np.mean(default == single) > 0.9999  # float32 rounding of other batch shapes at most
    assert_same_as_monai(outs["default"], unet["monai"] / "lps_seg.nii.gz", images["lps"])


def test_cpu_batches_and_freed_memory_reuse() -> None:
    """Windows per CPU call: about two 96^3 windows' worth of voxels, at most twice the bundle's.
    After reuse_freed_memory, a worker that allocates and frees big tensors stops faulting fresh
    pages in for each one."""
    import subprocess
    import sys

    from MedSegNASLib.inference.engine import cpu_batch_size

    assert cpu_batch_size(4, (96, 96, 96)) == 2  # bigger CPU batches only cost memory
    assert cpu_batch_size(1, (96, 96, 96)) == 2
    assert cpu_batch_size(4, (160, 160, 160)) == 1  # one big window at a time
    assert cpu_batch_size(4, (32, 32, 32)) == 8  # small windows: at most twice the bundle's batch
    assert cpu_batch_size(1, (64, 64, 64)) == 2
    probe = (
        "import resource, sys, torch\n"
        "from MedSegNASLib.inference.optimize import reuse_freed_memory\n"
        "applied = reuse_freed_memory() if sys.argv[1] == 'reuse' else False\n"
        "for _ in range(10):\n"  # 64 MB blocks: the heap grows until freed blocks fit new ones
        "    torch.ones(1 << 24)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    torch.ones(1 << 24)\n"
        "print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("default", "reuse"):
        run = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        applied, faults[mode] = run.stdout.split()
    if sys.platform.startswith("linux") and applied == "True":
        pages = 20 * (1 << 26) // 4096
        assert int(faults["default"]) > pages // 2  # 20 x 64 MB mapped and faulted in afresh
        assert int(faults["reuse"]) < pages // 20  # the same pages reused


def test_the_same_image_stored_differently_gives_the_same_labels(unet, images, tmp_path) -> None:
    """``lps`` and ``ras_permuted`` hold the same voxels at the same places: same label map."""
    outs = {}
    for view in ("lps", "ras_permuted"):
        outs[view] = tmp_path / f"{view}.nii.gz"
        assert segment(images[view], "--model", unet["bundle"], "-o", outs[view]) == 0
    lps, lps_affine = sf.read_labels(outs["lps"])
    ras, ras_affine = sf.read_labels(outs["ras_permuted"])
    assert np.mean(sf.ras_to_lps(ras) == lps) > 0.999
    theirs, _ = sf.read_labels(unet["monai"] / "ras_permuted_seg.nii.gz")
    assert np.mean(sf.ras_to_lps(theirs) == lps) > 0.999


def test_bfloat16_on_amx_cpus_stays_close(unet, images, tmp_path) -> None:
    from MedSegNASLib.inference.engine import cpu_has_fast_bfloat16

    if not cpu_has_fast_bfloat16():
        pytest.skip("this CPU has no AMX: --amp keeps float32 on it")
    out = tmp_path / "amp.nii.gz"
    assert segment(images["oblique"], "--model", unet["bundle"], "-o", out, "--amp") == 0
    ours, _ = sf.read_labels(out)
    theirs, _ = sf.read_labels(unet["monai"] / "oblique_seg.nii.gz")
    for value in range(1, 5):
        if np.count_nonzero(theirs == value) >= 100:
            assert sf.dice(ours, theirs, value) > 0.95


def test_segmentation_finds_the_organs(unet, images) -> None:
    """The comparison above means something: the briefly trained network finds the organs."""
    labels, _ = sf.read_labels(unet["monai"] / "oblique_seg.nii.gz")
    truth, _ = sf.read_labels(images["truth"])
    scores = [sf.dice(labels, truth, value) for value in range(1, 5)]
    assert scores[0] > 0.6 and sum(score > 0.3 for score in scores) >= 3, scores


def test_seg_nrrd_output_has_named_colored_segments_and_the_same_voxels(unet, images, tmp_path) -> None:
    nifti, seg = tmp_path / "a.nii.gz", tmp_path / "a.seg.nrrd"
    assert segment(images["oblique"], "--model", unet["bundle"], "-o", nifti) == 0
    assert segment(images["oblique"], "--model", unet["bundle"], "-o", seg) == 0
    from_seg = read_volume(seg)
    from_nifti = read_volume(nifti)
    assert from_seg.same_grid(read_volume(images["oblique"]))
    np.testing.assert_array_equal(from_seg.array, from_nifti.array)
    assert from_seg.array.dtype == np.uint8
    names = {label.value: (label.name, label.color) for label in from_seg.meta["labels"]}
    for label in PHANTOM_LABELS[1:]:
        assert names[label.value][0] == label.name
        np.testing.assert_allclose(names[label.value][1], label.color, atol=1e-6)


def test_zip_bundle_and_job_events(unet, images, tmp_path, home) -> None:
    archive = Path(
        shutil.make_archive(str(tmp_path / "bundle"), "zip", unet["bundle"].parent, unet["bundle"].name)
    )
    unpacked = set(Path(tempfile.gettempdir()).glob("medsegnas-bundle-*"))
    run_dir = tmp_path / "run"
    out = tmp_path / "out.nii.gz"
    assert segment(images["lps"], "--model", archive, "-o", out, "--run-dir", run_dir) == 0
    assert_same_as_monai(out, unet["monai"] / "lps_seg.nii.gz", images["lps"])
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stages = {e.get("stage") for e in events if e["type"] == "progress"}
    assert {"load", "preprocess", "infer", "write"} <= stages
    infer = [e for e in events if e.get("stage") == "infer"]
    assert infer[-1]["step"] == infer[-1]["total"] and infer[-1]["metrics"]["windows"] >= 1
    artifacts = [e for e in events if e["type"] == "artifact"]
    assert artifacts and artifacts[0]["kind"] == "labelmap"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert set(Path(tempfile.gettempdir()).glob("medsegnas-bundle-*")) == unpacked  # no temporary copy
    # The archive is unpacked once into the registry's cache (keyed by its sha256), not per run.
    cached = list((home / "cache" / "bundles").glob("*/bundle/models/model.pt"))
    assert len(cached) == 1
    assert segment(images["lps"], "--model", archive, "-o", tmp_path / "again.nii.gz") == 0
    assert list((home / "cache" / "bundles").glob("*/bundle/models/model.pt")) == cached


def test_a_registered_model_runs_by_id_like_its_folder(unet, images, tmp_path, capsys) -> None:
    """``--model ID``: the registry's copy gives the folder's label map; unknown ids name close ones."""
    assert medsegnas_main(["models", "import", str(unet["bundle"]), "--name", "tiny-unet"]) == 0
    capsys.readouterr()
    by_id, by_folder = tmp_path / "by_id.nii.gz", tmp_path / "by_folder.nii.gz"
    assert segment(images["lps"], "--model", "tiny-unet", "-o", by_id, "--run-dir", tmp_path / "run") == 0
    assert segment(images["lps"], "--model", unet["bundle"], "-o", by_folder) == 0
    ours, affine = sf.read_labels(by_id)
    np.testing.assert_array_equal(ours, sf.read_labels(by_folder)[0])
    np.testing.assert_allclose(affine, sf.read_labels(images["lps"])[1], atol=1e-4)
    assert json.loads((tmp_path / "run" / "job.json").read_text())["config"]["model"] == "tiny-unet"
    capsys.readouterr()

    missing = tmp_path / "missing.nii.gz"
    assert segment(images["lps"], "--model", "tiny-unte", "-o", missing) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: model 'tiny-unte' is neither a registered model id")
    assert "did you mean tiny-unet?" in lines[-1] and "medsegnas models list" in lines[-1]
    assert "Traceback" not in "\n".join(lines) and not missing.exists()


def test_the_trust_stored_in_the_registry_applies_to_segment(unet, images, tmp_path, capsys) -> None:
    """An imported bundle that needs code is refused by id (naming --trust) and runs nothing, until
    it is trusted in the registry (or --trust is given); then its expression runs, as MONAI's would."""
    marker = tmp_path / "expression-ran"
    bundle = tmp_path / "needs_code"
    shutil.copytree(unet["bundle"], bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"]["channels"] = f"$__import__('os').system('touch {marker}') or [8, 16, 32]"
    config_path.write_text(json.dumps(config))
    assert medsegnas_main(["models", "import", str(bundle), "--name", "needs-code", "--keep-untrusted"]) == 0
    capsys.readouterr()
    out = tmp_path / "out.nii.gz"
    assert segment(images["oblique"], "--model", "needs-code", "-o", out) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: model 'needs-code' needs code to run") and "__import__" in message
    assert "--trust" in message and "medsegnas models trust needs-code" in message
    assert not marker.exists() and not out.exists()

    assert segment(images["oblique"], "--model", "needs-code", "-o", out, "--trust") == 0
    assert marker.exists() and out.exists()
    marker.unlink()
    out.unlink()
    assert medsegnas_main(["models", "trust", "needs-code"]) == 0
    assert segment(images["oblique"], "--model", "needs-code", "-o", out) == 0  # the stored flag
    assert marker.exists()
    assert_same_as_monai(out, unet["monai"] / "oblique_seg.nii.gz", images["oblique"])


def test_fast_tta_and_postprocessing(unet, images, tmp_path, capsys) -> None:
    from scipy import ndimage

    reference, _ = sf.read_labels(unet["monai"] / "oblique_seg.nii.gz")
    runs = {
        "fast": ["--fast"],  # twice the voxel size: coarser, on the same output grid
        "tta": ["--tta"],  # flips averaged: close to the plain prediction
        "clean": ["--postprocess", "largest-component,fill-holes"],
    }
    labels = {}
    for name, options in runs.items():
        out = tmp_path / f"{name}.nii.gz"
        assert segment(images["oblique"], "--model", unet["bundle"], "-o", out, *options) == 0
        labels[name], affine = sf.read_labels(out)
        assert labels[name].shape == reference.shape
    # --fast works on a grid of twice the voxel size (too coarse for this tiny model to be right).
    assert "voxels of 12 x 12 x 16 mm (--fast" in capsys.readouterr().err
    assert sf.dice(labels["tta"], reference, 1) > 0.8
    for value in np.unique(labels["clean"])[1:]:
        mask = labels["clean"] == value
        assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == 1  # one component per label
        assert np.array_equal(ndimage.binary_fill_holes(mask), mask)  # no enclosed holes
        assert np.all(reference[mask & (reference != value)] != value)
    assert np.all((labels["clean"] == reference) | (labels["clean"] == 0) | (reference == 0))


def test_options_that_cannot_work_are_refused_clearly(unet, images, tmp_path, capsys) -> None:
    import torch

    out = tmp_path / "out.nii.gz"
    # The UNet halves twice: a 21^3 window cannot go down and up again.
    assert segment(images["oblique"], "--model", unet["bundle"], "-o", out, "--roi", "21", "21", "21") == 1
    assert "cannot run on 21 x 21 x 21 windows" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert segment(images["oblique"], "--model", unet["bundle"], "-o", out, "--device", "cuda") == 1
        assert "--device cuda: no CUDA GPU" in capsys.readouterr().err
    assert not out.exists()


def test_postprocess_steps_on_a_known_label_map() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:10, 2:10, 2:10] = 1  # big component with a hole
    labels[5, 5, 5] = 0
    labels[15:17, 15:17, 15:17] = 1  # small second component (8 voxels)
    labels[12, 2, 2] = 2  # a lone voxel of label 2
    labels[12:15, 8:11, 8:11] = 2  # 27 voxels of label 2
    out = postprocess_labels(labels.copy(), PostprocessSpec.parse("largest-component,fill-holes"))
    assert out[5, 5, 5] == 1 and out[16, 16, 16] == 0 and out[12, 2, 2] == 0 and out[13, 9, 9] == 2
    out = postprocess_labels(labels.copy(), PostprocessSpec.parse("min-size=9"))
    assert out[16, 16, 16] == 0 and out[5, 5, 5] == 0 and out[3, 3, 3] == 1 and out[12, 2, 2] == 0
    with pytest.raises(ValueError, match="largest-component, fill-holes, min-size=N"):
        PostprocessSpec.parse("biggest")


@pytest.fixture(scope="module")
def dints_yaml(tmp_path_factory, images) -> dict:
    """The DiNTS bundle as a generic model-zoo bundle: YAML config, no MedSegNAS metadata."""
    yaml = pytest.importorskip("yaml")
    root = tmp_path_factory.mktemp("dints")
    bundle = sf.export_dints_bundle(root / "bundle")
    assert (bundle / "configs" / "arch.json").is_file()
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    (bundle / "configs" / "inference.json").unlink()
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["medsegnas"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    data = root / "data"
    data.mkdir()
    for view in ("oblique", "ras_permuted"):
        shutil.copy(images[view], data / images[view].name)
    run = sf.monai_bundle_run(bundle, data, root / "monai", config="inference.yaml")
    assert run.returncode == 0, run.stderr[-3000:]
    return {"bundle": bundle, "monai": root / "monai"}


@pytest.mark.parametrize("view", ("oblique", "ras_permuted"))
def test_dints_yaml_bundle_matches_monai_bundle_run(dints_yaml, images, view, tmp_path) -> None:
    out = tmp_path / f"{view}.nii.gz"
    assert segment(images[view], "--model", dints_yaml["bundle"], "-o", out) == 0
    assert_same_as_monai(out, dints_yaml["monai"] / f"{view}_seg.nii.gz", images[view])


def test_untrusted_bundle_code_never_runs(unet, images, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    bundle = tmp_path / "evil"
    shutil.copytree(unet["bundle"], bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"]["channels"] = f"$__import__('os').system('touch {marker}') or [8, 16, 32]"
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out.nii.gz"
    assert segment(images["oblique"], "--model", bundle, "-o", out) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error:") and "--trust" in message and "__import__" in message
    assert not marker.exists() and not out.exists()

    # A weights file whose pickle would run code: refused, nothing runs.
    bundle2 = tmp_path / "evil2"
    shutil.copytree(unet["bundle"], bundle2)
    payload = (
        b"\x80\x02cposix\nsystem\nq\x00X"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"q\x01\x85q\x02Rq\x03."
    )
    with zipfile.ZipFile(bundle2 / "models" / "model.pt", "w") as archive:
        archive.writestr("model/data.pkl", payload)
        archive.writestr("model/version", "3\n")
    assert segment(images["oblique"], "--model", bundle2, "-o", out) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.pt" in message and "--trust" in message
    assert not marker.exists() and not out.exists()


def test_separable_resampling_and_boundary_argmax_equal_grid_sample() -> None:
    """The fast paths for axis-aligned grids (flips, permutations, voxel sizes) give what the
    general ``grid_sample`` path gives: the same values to rounding, the same labels."""
    import torch
    from MedSegNASLib.inference.engine import argmax_channels
    from MedSegNASLib.inference.geometry import (
        argmax_of_interpolation,
        axis_aligned,
        resample,
        resample_slabs,
    )

    rng = np.random.default_rng(0)

    def reference(source, matrix, shape, **options):
        out = torch.empty((source.shape[0], *shape), dtype=torch.float32)
        for start, stop, values in resample_slabs(source, matrix, shape, **options):
            out[:, start:stop] = values
        return out

    for _ in range(12):
        src_shape = tuple(int(n) for n in rng.integers(6, 24, 3))
        matrix = np.eye(4)
        matrix[:3, :3] = 0.0
        for axis, source_axis in enumerate(rng.permutation(3)):  # a flip, scale and shift per axis
            matrix[source_axis, axis] = rng.uniform(0.4, 2.2) * rng.choice([-1.0, 1.0])
            matrix[source_axis, 3] = rng.uniform(-2.0, src_shape[source_axis] + 2.0)
        shape = tuple(int(n) for n in rng.integers(5, 20, 3))
        offset = tuple(int(n) for n in rng.integers(0, 4, 3))
        assert axis_aligned(matrix) is not None
        source = torch.from_numpy(rng.normal(0.0, 100.0, size=(2, *src_shape)).astype(np.float32))
        for mode in ("bilinear", "nearest"):
            for padding in ("border", "zeros"):
                options = {"mode": mode, "padding_mode": padding, "dst_offset": offset}
                fast = resample(source, matrix, shape, **options)
                np.testing.assert_allclose(fast, reference(source, matrix, shape, **options), atol=1e-3)
        # Smooth logits: large one-label regions and boundaries between them.
        logits = torch.from_numpy(rng.normal(0.0, 1.0, size=(5, *src_shape)).astype(np.float32))
        logits = torch.nn.functional.avg_pool3d(logits[None], 3, 1, 1)[0] * 8.0
        expected = argmax_channels(reference(torch.softmax(logits, 0), matrix, shape, dst_offset=offset))
        labels = argmax_channels(logits)
        for layout in (logits, logits[None].contiguous(memory_format=torch.channels_last_3d)[0]):
            got = argmax_of_interpolation(
                layout, labels, axis_aligned(matrix), shape, dst_offset=offset, chunk=97
            )
            assert torch.equal(got, expected)
    oblique = np.eye(4)
    oblique[:2, :2] = [[0.99, -0.14], [0.14, 0.99]]
    assert axis_aligned(oblique) is None
