"""Runs every worker kind in the Python that runs it, to find imports the panels' install list misses.

    python Testing/closure_driver.py WORKDIR [--phases imports,fast,slow]

Started by ``test_dependency_closure.py`` in a fresh virtual environment that holds only what
Slicer 5.10 bundles, torch and ``medsegnas doctor --requirements``, with the Lib folders on
``PYTHONPATH`` (as Slicer puts them, not pip-installed). Uses nothing but the Lib and the
standard library. Phases:

* ``imports``: every import statement of ``MedSegNASLib`` and ``SSLPretrainLib``, also those inside
  functions (imported when a button or worker needs them), is imported here; the ones Slicer
  itself provides (``slicer``, ``vtk``, ``qt``...) and the optional ones (inside ``try`` ...
  ``except ImportError``) are left out;
* ``fast``: the jobs phantom, segment, evaluate, model import (a zip) and model download (a
  catalog served on 127.0.0.1, checksum verified), each with ``--run-dir`` as the panel runs them;
* ``slow``: search, train, pretrain, finetune and fewshot at toy sizes.

All jobs run in this one process (one torch import), each through its command-line entry. Prints
one line per check and ``CLOSURE OK`` at the end; exits 1 at the first failure, with its reason.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import http.server
import importlib
import json
import os
import sys
import threading
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB_FOLDERS = (ROOT / "MedSegNAS" / "MedSegNASLib", ROOT / "SSLPretrain" / "SSLPretrainLib")
#: Modules Slicer's application provides to the panel layer (not pip packages).
SLICER_PROVIDED = {"slicer", "vtk", "qt", "ctk", "PythonQt", "PyTorchUtils", "MedSegNAS", "SSLPretrain"}
PROJECT = {"MedSegNASLib", "SSLPretrainLib"}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside ``try: ... except ImportError`` (optional by design) or ``if TYPE_CHECKING``."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
                ):
                    return True
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def imported_modules() -> dict[str, str]:
    """Absolute module name -> first file importing it, of every unguarded import in the Libs."""
    found: dict[str, str] = {}
    for folder in LIB_FOLDERS:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                if _guarded(node, parents):
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in SLICER_PROVIDED | PROJECT and top not in sys.stdlib_module_names:
                        found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def check_imports() -> None:
    modules = imported_modules()
    for name, where in sorted(modules.items()):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise SystemExit(f"FAIL import {name} (imported by {where}): {exc}") from None
    packages = sorted({name.split(".")[0] for name in modules})
    print(f"ok imports: {len(modules)} modules of {', '.join(packages)}", flush=True)


# ---------------------------------------------------------------------------------------- jobs


def run_job(kind: str, entry: str, argv: list[str], run_dir: Path) -> dict:
    """Run one job through its command line in this process; its run must end ``done``."""
    module = importlib.import_module(entry)
    started = time.monotonic()
    try:
        code = module.main([*argv, "--run-dir", str(run_dir)])
    except SystemExit as exc:  # argparse
        code = exc.code
    except Exception:
        traceback.print_exc()
        code = "exception"
    status_file = run_dir / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    if code != 0 or status.get("state") != "done":
        raise SystemExit(f"FAIL job {kind}: exit {code}, state {status.get('state')}: {status.get('error')}")
    print(f"ok job {kind} ({time.monotonic() - started:.0f} s)", flush=True)
    return status.get("result") or {}


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return archive


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """A real HTTP server on 127.0.0.1 serving ``folder`` (stops with the block)."""
    handler = lambda *a, **k: _Quiet(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check_swin_unetr() -> None:
    """The network of pretrain, finetune and fewshot, one forward pass: MONAI imports ``einops`` only
    when a Swin UNETR runs (``optional_import``), which the import phase cannot see."""
    import torch
    from monai.networks.nets import SwinUNETR

    network = SwinUNETR(in_channels=1, out_channels=2, feature_size=12).eval()
    with torch.no_grad():
        shape = tuple(network(torch.zeros(1, 1, 64, 64, 64)).shape)
    print(f"ok Swin UNETR forward {shape}", flush=True)


def phase_fast(work: Path, state: dict) -> None:
    check_swin_unetr()
    data = work / "data"
    run_job("phantom", "MedSegNASLib.cli", ["phantom", str(data), "--cases", "4", "--size", "32",
            "--unlabeled", "2", "--test-cases", "1"], work / "runs" / "phantom")  # fmt: skip
    state["data"] = data
    bundle = tiny_bundle(work / "bundle" / "tiny_unet")
    image = sorted((data / "imagesTr").iterdir())[0]
    run_job("segment", "MedSegNASLib.cli", ["segment", str(image), "--model", str(bundle), "-o",
            str(work / "seg.nii.gz"), "--device", "cpu"], work / "runs" / "segment")  # fmt: skip
    run_job("evaluate", "MedSegNASLib.cli", ["evaluate", "--model", str(bundle), "--dataset", str(data),
            "--split", "all", "--cases", "phantom_000", "--device", "cpu"], work / "runs" / "evaluate")  # fmt: skip
    served = work / "served"
    served.mkdir()
    archive = _zip(bundle, served / "tiny_unet.zip")
    home = work / "home"
    result = run_job("model-import", "MedSegNASLib.cli", ["models", "--home", str(home), "import", str(archive),
                     "--rename"], work / "runs" / "model-import")  # fmt: skip
    assert result["model"] == "tiny_phantom_UNet", result
    with serve(served) as base:
        catalog = work / "catalog.json"
        entry = {
            "version": "0.1.0",
            "url": f"{base}/tiny_unet.zip",
            "checksum": {"algorithm": "sha1", "value": hashlib.sha1(archive.read_bytes()).hexdigest()},
            "modality": "CT",
            "input_channels": 1,
            "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]}],
            "license": "Apache-2.0",
        }
        catalog.write_text(
            json.dumps({"format_version": 1, "source": "test", "models": {"tiny_unet": entry}})
        )
        result = run_job("model-download", "MedSegNASLib.cli", ["models", "--home", str(home), "download",
                         "tiny_unet", "--name", "downloaded", "--catalog", str(catalog)],
                         work / "runs" / "model-download")  # fmt: skip
    assert result["model"] == "downloaded", result


def tiny_bundle(folder: Path) -> Path:
    """An untrained phantom UNet bundle written by the Lib's exporter (what train exports)."""
    from MedSegNASLib.data.phantom import PHANTOM_LABELS
    from MedSegNASLib.models.export import export_bundle
    from MedSegNASLib.nas.train import build_network  # noqa: F401 (the network code train uses)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from segment_fixtures import INFERER, TINY_SPEC, UNET_DEF, build

    return export_bundle(
        folder,
        network_def=UNET_DEF,
        state_dict=build(UNET_DEF, seed=0).eval().state_dict(),
        labels=PHANTOM_LABELS,
        preprocessing=TINY_SPEC,
        name="tiny phantom UNet",
        inferer=INFERER,
    )


def phase_slow(work: Path, state: dict) -> None:
    data = state.get("data") or work / "data"
    if "data" not in state:
        run_job("phantom", "MedSegNASLib.cli", ["phantom", str(data), "--cases", "4", "--size", "32",
                "--unlabeled", "2", "--test-cases", "1"], work / "runs" / "phantom")  # fmt: skip
    quick = work / "quick.json"
    quick.write_text(json.dumps({"epochs": 2, "warmup_epochs": 1, "val_interval": 1, "checkpoint_every": 1,
                                 "crops_per_case": 1, "max_patch_size": [32, 32, 32]}))  # fmt: skip
    common = ["--dataset", str(data), "--preset", "tiny", "--config", str(quick), "--device", "cpu"]
    search = work / "runs" / "search"
    run_job("search", "MedSegNASLib.cli", ["search", *common], search)
    for picture in ("topology.png",):
        if not (search / "artifacts" / picture).is_file():
            raise SystemExit(f"FAIL job search: no artifacts/{picture} (matplotlib)")
    if not any((search / "artifacts" / "tensorboard").glob("events.*")):
        raise SystemExit("FAIL job search: no TensorBoard events")
    os.environ["MEDSEGNAS_HOME"] = str(work / "home")
    quick_train = work / "quick_train.json"
    quick_train.write_text(json.dumps({"epochs": 1, "val_interval": 1, "checkpoint_every": 1,
                                       "crops_per_case": 1, "max_patch_size": [32, 32, 32]}))  # fmt: skip
    train_common = [
        "--dataset",
        str(data),
        "--preset",
        "tiny",
        "--config",
        str(quick_train),
        "--device",
        "cpu",
    ]
    run_job("train", "MedSegNASLib.cli", ["train", *train_common, "--arch", str(search / "artifacts" / "arch.json")],
            work / "runs" / "train")  # fmt: skip
    settings = work / "pretrain.json"
    settings.write_text(
        json.dumps({"steps": 2, "warmup_steps": 1, "checkpoint_every": 2, "reconstructions": 1})
    )
    pretrain = work / "runs" / "pretrain"
    run_job("pretrain", "SSLPretrainLib.cli", ["pretrain", "--images", str(data / "imagesUnlabeled"), "--preset",
            "tiny", "--config", str(settings), "--device", "cpu"], pretrain)  # fmt: skip
    finetune = work / "finetune.json"
    finetune.write_text(json.dumps({"epochs": 1, "val_interval": 1, "spacing": [8.0, 8.0, 12.0]}))
    run_job("finetune", "SSLPretrainLib.cli", ["finetune", "--pretrained", str(pretrain), "--dataset", str(data),
            "--labelled", "2", "--config", str(finetune), "--device", "cpu", "--no-register"],
            work / "runs" / "finetune")  # fmt: skip
    spacing = work / "spacing.json"
    spacing.write_text(json.dumps({"spacing": [8.0, 8.0, 12.0]}))
    run_job("fewshot", "SSLPretrainLib.cli", ["fewshot", "--dataset", str(data), "--pretrained", str(pretrain),
            "--shots", "2", "--budget", "1", "--config", str(spacing), "--device", "cpu"],
            work / "runs" / "fewshot")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--phases", default="imports,fast,slow")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    phases = args.phases.split(",")
    state: dict = {}
    if "imports" in phases:
        check_imports()
    if "fast" in phases:
        phase_fast(args.workdir, state)
    if "slow" in phases:
        phase_slow(args.workdir, state)
    print("CLOSURE OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
