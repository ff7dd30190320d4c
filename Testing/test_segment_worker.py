"""The warm segmentation worker (``medsegnas segment-worker``, ``MedSegNASLib.inference.worker``).

Real worker processes and a tiny UNet bundle (trained briefly on phantom cases, exported with
``export_bundle``): the second request skips model loading, every label map equals a cold
``medsegnas segment`` of the same image and options (whole image and ``--box``), bad requests get
an error line and the worker stays, cancel stops a running request and the model stays loaded,
models are kept by bundle (a replaced bundle is loaded again, least recently used evicted), and
the worker ends on ``stop``, end-of-file and its idle timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import segment_fixtures as sf
from MedSegNASLib.cli import main as medsegnas_main
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.inference.worker import SegmentWorker, request_argv

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    from MedSegNASLib.models.registry import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "medsegnas-home"))
    return tmp_path / "medsegnas-home"


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("warm")
    images = sf.write_test_images(root / "images")
    bundle = sf.export_unet_bundle(root / "bundle", steps=100)
    return {"images": images, "bundle": bundle}


def cold(image: Path, bundle: Path, output: Path, *extra: str) -> np.ndarray:
    assert (
        medsegnas_main(
            ["segment", str(image), "--model", str(bundle), "-o", str(output), "--device", "cpu", *extra]
        )
        == 0
    )
    return sf.read_labels(output)[0]


def test_second_request_is_warm_and_label_maps_equal_cold_runs(case, tmp_path) -> None:
    images, bundle = case["images"], case["bundle"]
    messages: list[dict] = []
    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}) as worker:
        ready = worker.wait_ready(timeout=120)
        assert ready["pid"] == worker.process.pid
        first = worker.segment(
            images["lps"], bundle, tmp_path / "a.nii.gz", device="cpu", on_message=messages.append
        )
        assert first["ok"] and first["warm"] is False
        assert first["labels"] == ["background", "liver", "spleen", "right kidney", "left kidney"]
        second = worker.segment(
            images["oblique"], bundle, tmp_path / "b.nii.gz", device="cpu", on_message=messages.append
        )
        assert second["warm"] is True and second["models_loaded"] == 1
        assert second["model_load_seconds"] < first["model_load_seconds"]
        # Each request's plan (peak memory, time) reaches the client before its segmentation runs.
        plans = [m for m in messages if m.get("event") == "plan"]
        assert (
            len(plans) == 2 and plans[0]["plan"]["fits"] and plans[0]["summary"].startswith("planned: peak")
        )
        first_progress = next(
            i
            for i, m in enumerate(messages)
            if m.get("event") == "progress" and m.get("stage") not in ("load",)
        )
        assert messages.index(plans[0]) < first_progress
        # RAS corners of two voxel centres of the LPS image, given as a user's ROI would be
        _, affine = sf.read_labels(images["lps"])
        low = affine[:3, :3] @ np.array([4, 6, 30]) + affine[:3, 3]
        high = affine[:3, :3] @ np.array([19, 21, 47]) + affine[:3, 3]
        box = [*map(float, low), *map(float, high)]
        boxed = worker.segment(images["lps"], bundle, tmp_path / "c.nii.gz", device="cpu", box=box)
        assert boxed["warm"] is True and boxed["windows_run"] < first["windows_run"]
        assert worker.process.poll() is None
    assert worker.process.returncode == 0 and not worker.folder.exists()  # stopped, folder removed

    progress = [m for m in messages if m.get("event") == "progress"]
    assert {"load", "preprocess", "infer", "write"} <= {m["stage"] for m in progress}
    assert {m["id"] for m in messages} == {first["id"], second["id"]}
    for name, image, extra in (
        ("a", images["lps"], ()),
        ("b", images["oblique"], ()),
        ("c", images["lps"], ("--box=" + ",".join(map(str, box)),)),
    ):
        warm = sf.read_labels(tmp_path / f"{name}.nii.gz")[0]
        reference = cold(image, bundle, tmp_path / f"cold_{name}.nii.gz", *extra)
        assert warm.any() and np.array_equal(warm, reference), name


def test_a_bundle_compiled_by_one_session_loads_compiled_in_the_next(case, tmp_path, monkeypatch) -> None:
    """The first request of a bundle loads it the full way and, after the reply, compiles it
    (inference/compiled.py); the next session's worker takes the compiled form (no MONAI import)
    and writes the same label map."""
    from MedSegNASLib.inference.commands import compiled_target
    from MedSegNASLib.inference.compiled import load_compiled
    from MedSegNASLib.inference.engine import SegmentOptions

    images, bundle = case["images"], case["bundle"]
    monkeypatch.setenv("MEDSEGNAS_CACHE", str(tmp_path / "cache"))  # the workers' cache and this test's
    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}) as worker:
        worker.wait_ready(timeout=120)
        first = worker.segment(images["oblique"], bundle, tmp_path / "first.nii.gz", device="cpu")
        assert first["ok"] and first["compiled"] is False
        assert worker.request({"op": "ping"})["ok"]  # answered once the work after the first reply is done
    assert load_compiled(bundle, *compiled_target(SegmentOptions(device="cpu"))) is not None
    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}) as worker:
        worker.wait_ready(timeout=120)
        again = worker.segment(images["oblique"], bundle, tmp_path / "again.nii.gz", device="cpu")
        assert again["ok"] and again["compiled"] is True and again["warm"] is False
    first_labels, again_labels = (sf.read_labels(tmp_path / f"{n}.nii.gz")[0] for n in ("first", "again"))
    assert first_labels.any() and np.array_equal(first_labels, again_labels)


def test_bad_requests_get_an_error_and_cancel_keeps_the_model(case, tmp_path) -> None:
    images, bundle = case["images"], case["bundle"]
    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}) as worker:
        worker.wait_ready(timeout=120)
        out = tmp_path / "x.nii.gz"
        for fields, error in (
            ({"image": str(tmp_path / "missing.nii.gz")}, "does not exist"),
            ({"box": [1, 2, 3]}, "six comma-separated numbers"),
            ({"overlap": 1.5}, "overlap must be in [0, 1)"),
            ({"colour": "red"}, "unknown request field(s) colour"),
            ({"output": str(tmp_path / "x.txt")}, "cannot write this file type"),
            ({"model": str(tmp_path / "no-bundle")}, "no-bundle"),
        ):
            request = {"image": str(images["lps"]), "model": str(bundle), "output": str(out), **fields}
            with pytest.raises(MedSegNASError, match=re.escape(error)):
                worker.request({"op": "segment", **request}, timeout=120)
        # A bundle whose config runs code: refused as `segment` refuses it, nothing run; with
        # "trust" (as --trust) its code runs.
        hostile, mark = Path(shutil.copytree(bundle, tmp_path / "hostile")), tmp_path / "ran"
        config = json.loads((hostile / "configs" / "inference.json").read_text())
        channels = config["network_def"]["channels"]
        config["network_def"]["channels"] = (
            f"$__import__('pathlib').Path({str(mark)!r}).touch() or {channels}"
        )
        (hostile / "configs" / "inference.json").write_text(json.dumps(config))
        request = {"op": "segment", "image": str(images["lps"]), "model": str(hostile), "output": str(out)}
        with pytest.raises(MedSegNASError, match="is not safe to run: network_def::channels"):
            worker.request(request, timeout=120)
        assert not mark.exists() and not out.exists()
        assert worker.request({**request, "trust": True}, timeout=300)["warm"] is False
        assert mark.exists() and out.exists()
        out.unlink()

        worker.send({"op": "nonsense"})
        assert "unknown op 'nonsense'" in worker.wait(30)["error"]
        worker.process.stdin.write(b"not json\n")
        worker.process.stdin.flush()
        assert worker.wait(30)["error"].startswith("bad request")
        assert not out.exists()

        # A request and its cancel sent at once: the cancel is read at the first batch of windows.
        request = {"image": [str(images["lps"])], "model": str(bundle), "output": str(out), "crop": False}
        ident = worker.send({"op": "segment", **request})
        worker.send({"op": "cancel", "target": ident})
        replies = []
        while not any(r.get("id") == ident and "ok" in r for r in replies):
            replies.append(worker.wait(120))
        reply = next(r for r in replies if r.get("id") == ident and "ok" in r)
        assert reply["ok"] is False and reply["cancelled"] is True, reply
        assert not out.exists()
        again = worker.segment(images["lps"], bundle, out, device="cpu")
        assert again["warm"] is True and out.exists()  # loaded by the cancelled request, kept


def test_models_are_kept_by_bundle_and_evicted(case, tmp_path) -> None:
    images, bundle = case["images"], case["bundle"]
    copy = Path(shutil.copytree(bundle, tmp_path / "copy"))
    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}, max_models=1) as worker:
        run = lambda model: worker.segment(images["lps"], model, tmp_path / "o.nii.gz", device="cpu")  # noqa: E731
        assert run(bundle)["warm"] is False
        assert run(copy)["warm"] is False  # another bundle: the first is evicted (at most 1)
        assert run(bundle)["models_loaded"] == 1 and not run(copy)["warm"]
        assert run(copy)["warm"] is True
        weights = next((copy / "models").glob("model.*"))
        os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # the bundle was replaced
        assert run(copy)["warm"] is False


def test_worker_ends_on_stop_end_of_file_and_idle(tmp_path) -> None:
    entry = [sys.executable, "-m", "MedSegNASLib.cli", "segment-worker"]
    # stdin closed at once: end-of-file ends the worker before its idle timeout
    idle = subprocess.run([*entry, "--idle-timeout", "600"], input="", stdout=subprocess.PIPE, text=True,
                          env=ENV, timeout=120)  # fmt: skip
    lines = [json.loads(x) for x in idle.stdout.splitlines()]
    assert idle.returncode == 0 and lines[0]["event"] == "ready" and len(lines) == 1

    process = subprocess.Popen(
        [*entry, "--idle-timeout", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV
    )
    stdout = process.stdout.read()  # stdin stays open: only the idle timeout ends it
    process.wait(timeout=60)
    process.stdin.close()
    assert process.returncode == 0 and json.loads(stdout.splitlines()[-1]) == {"event": "idle-exit"}

    with SegmentWorker(env={"OMP_NUM_THREADS": "1"}) as worker:
        worker.wait_ready(timeout=120)
        assert worker.request({"op": "ping"})["models_loaded"] == 0
        assert worker.request({"op": "cancel"})["cancelling"] is None  # nothing runs: nothing to cancel
        worker.send({"op": "stop"})
        assert worker.wait(30) == {"id": worker._next_id, "ok": True, "event": "stopped"}
        assert worker.process.wait(30) == 0


def test_request_fields_become_the_cli_options() -> None:
    argv = request_argv(
        {"op": "segment", "image": ["a.nii", "b.nii"], "output": "o.nii.gz", "model": "m", "fast": True,
         "crop": False, "amp": False, "box": [-1, 2, 3, 4, 5, 6], "roi": [32, 32, 16], "postprocess": "fill-holes"}
    )  # fmt: skip
    assert argv == ["segment", "a.nii", "b.nii", "--model", "m", "--output", "o.nii.gz", "--fast",
                    "--postprocess=fill-holes", "--roi", "32", "32", "16", "--box=-1,2,3,4,5,6", "--no-crop",
                    "--no-amp"]  # fmt: skip
