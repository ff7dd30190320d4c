"""``medsegnas segment`` on bad input: one ``error:`` line naming the problem, exit code 1, no output.

Every case runs the real command in a subprocess, as a user would. "No output" means no file at
the output path and no temporary file next to it.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import segment_fixtures as sf
import torch
from MedSegNASLib.data.phantom import PHANTOM_LABELS
from MedSegNASLib.models.export import export_bundle

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def _good(path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _nifti(path, rng.normal(0.0, 50.0, size=(20, 18, 16)).astype(np.float32))


def _cases(folder: Path) -> dict[str, tuple[list[Path], Path, list[str]]]:
    """name -> (inputs, output, fragments the error line must contain)."""
    good = _good(folder / "good.nii.gz")
    truncated = folder / "truncated.nii.gz"
    raw = gzip.decompress(good.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    text = folder / "notes.nii.gz"
    text.write_text("this is not an image\n")
    nan = np.zeros((10, 10, 10), dtype=np.float32)
    nan[2, 3, 4] = np.nan
    inf = np.zeros((10, 10, 10), dtype=np.float32)
    inf[5, 5, 5] = np.inf
    a_file = folder / "a_file"
    a_file.write_text("x")
    (folder / "existing_folder.nii.gz").mkdir()
    out = folder / "out" / "labels.nii.gz"
    return {
        "truncated": ([truncated], out, ["truncated.nii.gz", "truncated"]),
        "not an image": ([text], out, ["notes.nii.gz"]),
        "missing": ([folder / "nothere.nii.gz"], out, ["nothere.nii.gz", "not found"]),
        "2D": (
            [_nifti(folder / "slice.nii.gz", np.zeros((16, 16), np.float32))],
            out,
            ["slice.nii.gz", "2D"],
        ),
        "5D": (
            [_nifti(folder / "five.nii.gz", np.zeros((6, 6, 6, 2, 2), np.float32))],
            out,
            ["five.nii.gz", "5D"],
        ),
        # (the I/O layer reports a zero-length NIfTI axis as an unreadable file)
        "empty": (
            [_nifti(folder / "zero_axis.nii.gz", np.zeros((0, 6, 6), np.float32))],
            out,
            ["zero_axis.nii.gz"],
        ),
        "one voxel": (
            [_nifti(folder / "voxel.nii.gz", np.zeros((1, 1, 1), np.float32))],
            out,
            ["voxel.nii.gz", "single voxel"],
        ),
        "NaN": ([_nifti(folder / "nan.nii.gz", nan)], out, ["nan.nii.gz", "NaN"]),
        "inf": ([_nifti(folder / "inf.nii.gz", inf)], out, ["inf.nii.gz", "infinite"]),
        "channels": ([good, good], out, ["2 channel(s)", "takes 1"]),
        "output under a file": ([good], a_file / "labels.nii.gz", ["a_file", "not a folder"]),
        "output is a folder": (
            [good],
            folder / "existing_folder.nii.gz",
            ["existing_folder.nii.gz", "is a folder"],
        ),
        "output type": ([good], folder / "labels.png", ["labels.png", "file type"]),
    }


def _run(inputs: list[Path], output: Path, bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "MedSegNASLib.cli",
            "segment",
            *map(str, inputs),
            "--model",
            str(bundle),
            "-o",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_each_bad_input_gives_one_error_line_exit_1_and_no_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bundle = export_bundle(
        tmp_path / "bundle",
        network_def=sf.UNET_DEF,
        state_dict=sf.build(sf.UNET_DEF).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=sf.TINY_SPEC,
        name="untrained",
    )
    folder = tmp_path / "inputs"
    folder.mkdir()
    cases = _cases(folder)
    before = {p for p in tmp_path.rglob("*")}
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(
            zip(cases, pool.map(lambda case: _run(case[0], case[1], bundle), cases.values()), strict=True)
        )
    problems = []
    for name, (_, output, fragments) in cases.items():
        result = results[name]
        lines = result.stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        if result.returncode != 1:
            problems.append(f"{name}: exit code {result.returncode}, stderr {result.stderr[-500:]!r}")
        elif not last.startswith("error: ") or "Traceback" in result.stderr or "internal error" in last:
            problems.append(f"{name}: not a one-line error: {result.stderr[-500:]!r}")
        elif not all(fragment in last for fragment in fragments):
            problems.append(f"{name}: message {last!r} does not name {fragments}")
        if output.is_file():
            problems.append(f"{name}: {output} was written")
    assert not problems, "\n".join(problems)
    after = {p for p in tmp_path.rglob("*")}
    assert after == before  # nothing written anywhere: no output, no temporary file


def test_a_good_input_with_the_same_bundle_works(tmp_path: Path) -> None:
    """Positive control for the test above: the same command line with a good image succeeds."""
    torch.manual_seed(0)
    bundle = export_bundle(
        tmp_path / "bundle",
        network_def=sf.UNET_DEF,
        state_dict=sf.build(sf.UNET_DEF).state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=sf.TINY_SPEC,
        name="untrained",
    )
    good = _good(tmp_path / "good.nii.gz")
    output = tmp_path / "out" / "labels.nii.gz"
    result = _run([good], output, bundle)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = nib.load(str(output))
    assert labels.shape == (20, 18, 16)
    np.testing.assert_allclose(labels.affine, nib.load(str(good)).affine, atol=1e-4)


def test_a_bad_image_is_reported_before_a_bad_model(tmp_path: Path) -> None:
    """The image is read while the model loads; when both are bad, the image's error is the one
    reported (as when the image was read first), and nothing is written."""
    text = tmp_path / "notes.nii.gz"
    text.write_text("this is not an image\n")
    output = tmp_path / "out" / "labels.nii.gz"
    result = _run([text], output, tmp_path / "no_such_bundle")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("error: ") and "notes.nii.gz" in last, result.stderr[
        -800:
    ]
    assert "no_such_bundle" not in last
    good = _good(tmp_path / "good.nii.gz")
    result = _run([good], output, tmp_path / "no_such_bundle")  # a good image: the model's error
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "no_such_bundle" in last, result.stderr[-800:]
    assert not output.exists() and not output.parent.exists()
