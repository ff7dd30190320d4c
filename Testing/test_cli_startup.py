"""``medsegnas`` starts without the heavy libraries: building the command line (every command
registered, as for ``medsegnas segment --help``) must not import torch, MONAI, matplotlib,
Optuna, TensorBoard, nor the image readers (nibabel, SimpleITK) and SciPy; each command imports
what it needs when it runs. A ``segment`` process that loads a bundle the full way skips the parts of MONAI's import it never uses
(pytorch-ignite, matplotlib), gives the label map of an in-process run, where MONAI is whole, and
ends as soon as the label map is written (no interpreter teardown), its report flushed. Checked
in fresh interpreters, as a user or the panels start them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "monai", "matplotlib", "optuna", "tensorboard", "ignite", "nibabel", "SimpleITK", "scipy")

PROBE = """
import json, sys
import MedSegNASLib.cli as cli
parser = cli.build_parser()
commands = sorted(parser._subparsers._group_actions[0].choices)
print(json.dumps({"commands": commands, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "MedSegNAS"), str(ROOT / "SSLPretrain"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_building_the_command_line_imports_no_heavy_library() -> None:
    probe = run_python(PROBE)
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert {"segment", "search", "train", "tune", "evaluate", "models", "demo"} <= set(report["commands"])
    assert sorted(set(HEAVY) & set(report["loaded"])) == []


def test_segment_help_lists_the_box_options_without_heavy_imports() -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['medsegnas', 'segment', '--help']\n"
        "try:\n    runpy.run_module('MedSegNASLib.cli', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--box X0,Y0,Z0,X1,Y1,Z1" in result.stdout and "--box-voxels" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED []"


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
def test_a_segment_process_skips_ignite_and_matplotlib_and_gives_the_same_labels(
    tmp_path, monkeypatch
) -> None:
    import segment_fixtures as sf
    from MedSegNASLib.cli import main as medsegnas_main
    from MedSegNASLib.models.registry import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    image = sf.write_test_images(tmp_path / "images")["lps"]
    bundle = sf.export_unet_bundle(tmp_path / "bundle", steps=5)
    in_process = tmp_path / "in_process.nii.gz"
    assert (
        medsegnas_main(
            ["segment", str(image), "--model", str(bundle), "-o", str(in_process), "--device", "cpu"]
        )
        == 0
    )
    separate = tmp_path / "separate.nii.gz"
    argv = [
        "medsegnas",
        "segment",
        str(image),
        "--model",
        str(bundle),
        "-o",
        str(separate),
        "--device",
        "cpu",
    ]
    # As ``python -m MedSegNASLib.cli ...`` (what the panels start), then what it imported, seen
    # from the process's end: a segment process ends at once through os._exit (cli.end_process).
    code = (
        "import os, runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "def ending(code):\n"
        "    print('LOADED', sorted({m.split('.')[0] for m in sys.modules} & {'monai', 'ignite', 'matplotlib'}))\n"
        "    print('ENDED AT ONCE', code, flush=True)\n"
        "    real_exit(code)\n"
        "real_exit, os._exit = os._exit, ending\n"
        "try:\n    runpy.run_module('MedSegNASLib.cli', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exit:\n    print('TEARDOWN', exit.code)\n"
    )
    # A cache without the bundle's compiled form (the in-process run stored it in the session's):
    # this process loads the bundle the full way (test_segment_compiled.py checks the other way).
    monkeypatch.setenv("MEDSEGNAS_CACHE", str(tmp_path / "empty-cache"))
    with tempfile.TemporaryDirectory() as cwd:
        monkeypatch.chdir(cwd)
        run = run_python(code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-2:] == ["LOADED ['monai']", "ENDED AT ONCE 0"]
    assert "done in" in run.stdout + run.stderr  # the run's own report was flushed before the end
    ours, affine = sf.read_labels(separate)
    theirs, their_affine = sf.read_labels(in_process)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(affine, their_affine)
