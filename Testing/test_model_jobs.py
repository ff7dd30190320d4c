"""Model import and download as jobs (defect 8): real worker processes, a real HTTP server.

Inside Slicer a Python thread barely runs (the GUI's main thread holds the GIL while idle), so the
panel runs ``medsegnas models import|download`` as workers of the job protocol, followed by
:class:`~MedSegNASLib.panels.panel_jobs.JobFollower` like every other job. These tests launch them the way
the panel does (:func:`~MedSegNASLib.panels.panel_logic.launch_model_import_job`,
:func:`~MedSegNASLib.panels.panel_logic.launch_model_download_job`) and from a shell (``--detach``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from MedSegNASLib.jobs import RunDir
from MedSegNASLib.models.registry import CATALOG_ENV, HOME_ENV, ModelRegistry
from MedSegNASLib.panels.panel_jobs import JobFollower
from MedSegNASLib.panels.panel_logic import launch_model_download_job, launch_model_import_job
from test_registry import _write_catalog, http_server, make_bundle, sha1_of, zip_folder

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(path))
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    return path


def test_import_job_from_a_zip_then_again_renamed(home: Path, tmp_path: Path) -> None:
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), tmp_path / "tiny_spleen.zip")
    runs = tmp_path / "runs"

    run = launch_model_import_job(str(archive), runs, home=home)
    assert run.process is not None, "a worker process, not a thread"
    update = JobFollower(run).wait(timeout_s=180)
    assert update.state == "done", (update.text, run.worker_log.read_text())
    result = update.status["result"]
    assert result["model"] == "tiny_spleen" and result["trust_state"] == "safe"
    assert RunDir(run.path).read_job()["kind"] == "model-import"
    assert [record.id for record in ModelRegistry(home).list()] == ["tiny_spleen"]

    again = launch_model_import_job(str(archive), runs, home=home)
    update = JobFollower(again).wait(timeout_s=180)
    assert update.state == "done", again.worker_log.read_text()
    assert update.status["result"]["model"] == "tiny_spleen-2", "an id clash is renamed, not overwritten"


def test_download_job_verifies_the_catalog_checksum(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), served / "tiny_spleen_v0.1.2.zip")
    runs = tmp_path / "runs"
    with http_server(served) as (base, server):
        url = f"{base}/tiny_spleen_v0.1.2.zip"
        monkeypatch.setenv(CATALOG_ENV, str(_write_catalog(tmp_path / "bad.json", url, "0" * 40)))
        bad = launch_model_download_job("tiny_spleen", runs, home=home)
        update = JobFollower(bad).wait(timeout_s=180)
        assert update.state == "failed" and "sha1" in update.status["error"], bad.worker_log.read_text()
        assert ModelRegistry(home).list() == []

        monkeypatch.setenv(CATALOG_ENV, str(_write_catalog(tmp_path / "good.json", url, sha1_of(archive))))
        good = launch_model_download_job("tiny_spleen", runs, home=home)
        follower = JobFollower(good)
        update = follower.wait(timeout_s=180)
    assert update.state == "done", good.worker_log.read_text()
    assert update.status["result"]["model"] == "tiny_spleen"
    record = ModelRegistry(home).get("tiny_spleen")
    assert record.verified == f"sha1:{sha1_of(archive)}"
    assert any(request["path"].endswith(".zip") for request in server.requests)
    downloads = [e for e in good.read_events()[0] if e["type"] == "progress" and e["stage"] == "download"]
    assert downloads and downloads[-1]["step"] == downloads[-1]["total"] == archive.stat().st_size


def test_import_from_a_shell_with_detach(home: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b" / "tiny_spleen")
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "MedSegNASLib.cli", "models", "--home", str(home), "import", str(bundle)]
        + ["--name", "shell_spleen", "--detach", "--runs-root", str(runs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run = RunDir.open(result.stdout.strip().splitlines()[-1])
    update = JobFollower(run).wait(timeout_s=180)
    assert update.state == "done", run.worker_log.read_text()
    assert update.status["result"]["model"] == "shell_spleen"
    assert ModelRegistry(home).get("shell_spleen").source.endswith(str(bundle))
