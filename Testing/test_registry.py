"""The model registry: importing, downloading, listing, trusting and resolving MONAI bundles.

Every test uses its own ``MEDSEGNAS_HOME`` under ``tmp_path`` and real files: bundles are built
with a tiny MONAI UNet, archives with ``zipfile``, downloads go through a real HTTP server on
127.0.0.1 (a thread of the test process, stopped at the end of each test and after at most a
minute in any case). Nothing contacts the internet. Concurrency is checked with two real
processes importing into the same home at the same moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from MedSegNASLib import cli
from MedSegNASLib.models import ModelFileError, UnsafeArchiveError
from MedSegNASLib.models.registry import (
    CATALOG_ENV,
    HOME_ENV,
    Checksum,
    ChecksumError,
    DownloadError,
    ModelRegistry,
    RegistryError,
    folder_digest,
    load_catalog,
    register_model,
    resolve_model,
)
from monai.networks.nets import UNet

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
SPLEEN_LABELS = {0: "background", 1: "spleen"}


# ----------------------------------------------------------------------------- helpers


def tiny_network_def(out_channels: int = 2) -> dict:
    return {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": out_channels,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }


def make_bundle(
    folder: Path,
    *,
    name: str = "tiny_spleen",
    labels: dict[int, str] = SPLEEN_LABELS,
    config_extra: dict | None = None,
    weights: object | None = None,
    with_weights: bool = True,
) -> Path:
    """A MONAI bundle folder with a tiny UNet: metadata, inference config and its weights."""
    (folder / "configs").mkdir(parents=True)
    metadata = {
        "name": name,
        "version": "0.1.2",
        "task": "spleen segmentation (test)",
        "description": "tiny test bundle",
        "monai_version": "1.6.1",
        "network_data_format": {
            "inputs": {
                "image": {"type": "image", "modality": "CT", "num_channels": 1, "spatial_shape": [16, 16, 16]}
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "num_channels": len(labels),
                    "channel_def": {str(k): v for k, v in labels.items()},
                }
            },
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": tiny_network_def(len(labels)),
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1},
        **(config_extra or {}),
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    if with_weights:
        (folder / "models").mkdir()
        if weights is None:
            torch.manual_seed(0)
            net = UNet(spatial_dims=3, in_channels=1, out_channels=len(labels), channels=(4, 8), strides=(2,))
            weights = net.state_dict()
        torch.save(weights, folder / "models" / "model.pt")
    return folder


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    """Zip a bundle folder the way the model zoo does: everything under one top-level folder."""
    top = top or folder.name
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}")
    return archive


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves one folder; supports ``Range: bytes=N-``; can cut the first response short."""

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})  # type: ignore[attr-defined]
        path = Path(server.directory) / self.path.lstrip("/")  # type: ignore[attr-defined]
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes=") : -1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_first_response_at is not None:  # type: ignore[attr-defined]
            cut, server.cut_first_response_at = server.cut_first_response_at, None  # type: ignore[attr-defined]
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server(directory: Path, *, cut_first_response_at: int | None = None) -> Iterator[tuple[str, object]]:
    """A real HTTP server on 127.0.0.1 serving ``directory``; yields (base URL, server).

    It stops when the block ends, and on its own after 60 s in case a test hangs.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.directory = str(directory)  # type: ignore[attr-defined]
    server.requests = []  # type: ignore[attr-defined]
    server.cut_first_response_at = cut_first_response_at  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, server.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(path))
    monkeypatch.delenv(CATALOG_ENV, raising=False)
    return path


def registry_ids(home: Path) -> list[str]:
    index = json.loads((home / "models" / "registry.json").read_text())
    return sorted(index["models"])


def leftovers(home: Path) -> list[str]:
    """Everything in the models folder except the index, its lock and registered model folders."""
    models = home / "models"
    if not models.exists():
        return []
    registered = set(registry_ids(home)) if (models / "registry.json").exists() else set()
    return sorted(
        p.name for p in models.iterdir() if p.name not in {"registry.json", ".registry.lock", *registered}
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ import


def test_import_folder_records_metadata_labels_and_is_independent_of_the_source(
    home: Path, tmp_path: Path
) -> None:
    source = make_bundle(tmp_path / "src" / "tiny_spleen")
    record = ModelRegistry().import_model(source)

    assert record.id == "tiny_spleen" and record.name == "tiny_spleen" and record.version == "0.1.2"
    assert record.source == f"folder {source.resolve()}"
    assert record.sha256_of == "folder" and record.sha256 == folder_digest(source)
    assert record.modality == "CT" and record.input_channels == 1 and record.output_channels == 2
    assert record.network == "UNet" and record.task == "spleen segmentation (test)"
    assert [(x["value"], x["name"]) for x in record.labels] == [(0, "background"), (1, "spleen")]
    # The spleen gets Slicer's spleen color, not a palette color.
    assert record.labels[1]["color"] == pytest.approx([157 / 255, 108 / 255, 162 / 255], abs=1e-3)
    assert record.trusted is False and record.problems == [] and record.trust_state == "safe"
    assert record.size_bytes == sum(p.stat().st_size for p in source.rglob("*") if p.is_file())

    # A copy: deleting the source does not affect the registered model.
    for path in sorted(source.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    copied = home / "models" / "tiny_spleen"
    assert (copied / "models" / "model.pt").is_file() and (copied / "configs" / "inference.json").is_file()
    assert registry_ids(home) == ["tiny_spleen"] and leftovers(home) == []


def test_import_zip_checks_the_sha256_and_keeps_nothing_on_mismatch(home: Path, tmp_path: Path) -> None:
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), tmp_path / "tiny.zip")
    registry = ModelRegistry()

    with pytest.raises(ChecksumError, match=r"sha256 .* expected 0{64}.*nothing was kept"):
        registry.import_model(archive, checksum="sha256:" + "0" * 64)
    assert registry.list() == [] and leftovers(home) == []
    assert not (home / "models" / "tiny_spleen").exists()

    record = registry.import_model(archive, checksum=sha256_of(archive), model_id="spleen-zip")
    assert record.id == "spleen-zip" and record.sha256 == sha256_of(archive) and record.sha256_of == "archive"
    assert record.verified == f"sha256:{sha256_of(archive)}"
    assert record.source == f"zip {archive.resolve()}"
    assert (home / "models" / "spleen-zip" / "configs" / "metadata.json").is_file()
    # A sha1 (the model zoo's published algorithm) is checked the same way.
    record = registry.import_model(
        archive, checksum=Checksum("sha1", sha1_of(archive)), model_id="spleen-sha1"
    )
    assert record.verified == f"sha1:{sha1_of(archive)}"
    assert registry_ids(home) == ["spleen-sha1", "spleen-zip"] and leftovers(home) == []


def test_import_from_url_downloads_verifies_and_cleans_up(home: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), served / "tiny_spleen_v0.1.2.zip")
    progress: list[tuple[int, int | None]] = []
    registry = ModelRegistry()
    with http_server(served) as (base, server):
        url = f"{base}/tiny_spleen_v0.1.2.zip"
        with pytest.raises(ChecksumError, match="nothing was kept"):
            registry.import_model(url, checksum="sha256:" + "f" * 64)
        assert registry.list() == [] and leftovers(home) == []
        assert list((home / "cache" / "downloads").iterdir()) == []

        record = registry.import_model(
            url, checksum=sha256_of(archive), progress=lambda d, t: progress.append((d, t))
        )
        with pytest.raises(DownloadError, match="HTTP 404"):
            registry.import_model(f"{base}/missing.zip", model_id="other")
    assert record.source == f"url {url}" and record.sha256 == sha256_of(archive)
    assert progress[-1] == (archive.stat().st_size, archive.stat().st_size)
    assert [r["path"] for r in server.requests] == [  # type: ignore[attr-defined]
        "/tiny_spleen_v0.1.2.zip",
        "/tiny_spleen_v0.1.2.zip",
        "/missing.zip",
    ]
    assert list((home / "cache" / "downloads").iterdir()) == [] and leftovers(home) == []
    assert registry_ids(home) == ["tiny_spleen"]


def test_an_interrupted_download_resumes_where_it_stopped(home: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), served / "tiny.zip")
    half = archive.stat().st_size // 2
    registry = ModelRegistry()
    with http_server(served, cut_first_response_at=half) as (base, server):
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            registry.import_model(f"{base}/tiny.zip", checksum=sha256_of(archive))
        (partial,) = (home / "cache" / "downloads").iterdir()
        assert partial.name.endswith(".part") and partial.stat().st_size == half
        assert registry.list() == [] and leftovers(home) == []

        record = registry.import_model(f"{base}/tiny.zip", checksum=sha256_of(archive))
    assert [r["range"] for r in server.requests] == [None, f"bytes={half}-"]  # type: ignore[attr-defined]
    assert record.sha256 == sha256_of(archive) and list((home / "cache" / "downloads").iterdir()) == []


def test_duplicate_ids_are_refused_unless_renamed_or_forced(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_bundle(tmp_path / "a" / "tiny_spleen")
    second = make_bundle(tmp_path / "b" / "tiny_spleen", labels={0: "background", 1: "liver"})
    registry = ModelRegistry()
    registry.import_model(first)

    code, _, err = run_cli(capsys, "models", "import", str(second))
    assert code == 1 and "'tiny_spleen' is already registered" in err and "--name" in err and "--force" in err
    assert err.count("\n") == 1
    assert [x["name"] for x in registry.get("tiny_spleen").labels] == ["background", "spleen"]
    assert leftovers(home) == []

    code, out, _ = run_cli(capsys, "models", "import", str(second), "--name", "liver")
    assert code == 0 and "imported 'liver'" in out
    code, _, _ = run_cli(capsys, "models", "import", str(second), "--force")
    assert code == 0
    assert [x["name"] for x in registry.get("tiny_spleen").labels] == ["background", "liver"]
    assert registry_ids(home) == ["liver", "tiny_spleen"] and leftovers(home) == []

    code, _, err = run_cli(capsys, "models", "import", str(second), "--name", "../escape")
    assert code == 1 and "model id '../escape' is not allowed" in err


def test_corrupt_and_path_traversal_archives_are_refused_and_leave_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), tmp_path / "good.zip")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, _, err = run_cli(capsys, "models", "import", str(corrupt))
    assert code == 1 and str(corrupt) in err and err.count("\n") == 1

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("../../escaped.txt", b"outside")
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./\.\./escaped\.txt' has a '\.\.' path component"):
        ModelRegistry().import_model(evil)
    assert not list(tmp_path.rglob("escaped.txt"))

    not_a_bundle = tmp_path / "plain"
    not_a_bundle.mkdir()
    (not_a_bundle / "readme.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="configs/metadata.json is missing"):
        ModelRegistry().import_model(not_a_bundle)
    no_weights = make_bundle(tmp_path / "nw" / "tiny_spleen", with_weights=False)
    with pytest.raises(ModelFileError, match="has no weights file models/model.pt"):
        ModelRegistry().import_model(no_weights)
    with pytest.raises(ModelFileError, match="nor an http"):
        ModelRegistry().import_model(tmp_path / "does-not-exist")
    assert ModelRegistry().list() == [] and leftovers(home) == []


def test_a_folder_with_a_link_outside_itself_is_refused(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    bundle = make_bundle(tmp_path / "b" / "tiny_spleen")
    (bundle / "docs").mkdir()
    (bundle / "docs" / "notes.txt").symlink_to(secret)
    with pytest.raises(UnsafeArchiveError, match="is a link to .*outside the bundle"):
        ModelRegistry().import_model(bundle)
    assert leftovers(home) == [] and not (home / "models" / "tiny_spleen").exists()


class _TouchPayload:
    """A pickled object whose unpickling would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bundles_that_need_code_are_imported_untrusted_with_their_problems_and_run_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_marker, pickle_marker = tmp_path / "config-ran", tmp_path / "pickle-ran"
    bundle = make_bundle(
        tmp_path / "b" / "evil_bundle",
        name="evil_bundle",
        config_extra={
            "pwn": f"$__import__('os').system('touch {config_marker}')",
            "preprocessing": "$@pwn",  # segment builds this item, so 'pwn' matters
            "datalist": f"$__import__('os').system('touch {config_marker}')",  # only MONAI's workflow
        },
        weights={"weight": torch.zeros(2), "payload": _TouchPayload(pickle_marker)},
    )
    for refusing in ([], ["--strict"]):  # refused by default, as with --strict
        code, out, err = run_cli(capsys, "models", "import", str(bundle), *refusing)
        assert code == 1 and "needs code to run" in err and "--keep-untrusted" in err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "pwn: " in err
        assert ModelRegistry().list() == [] and leftovers(home) == []

    code, out, err = run_cli(capsys, "models", "import", str(bundle), "--keep-untrusted")
    assert code == 0 and "imported 'evil_bundle'" in out
    assert "needs code to run" in err and "medsegnas models trust evil_bundle" in err
    assert "pwn" in err and "weights file" in err
    record = ModelRegistry().get("evil_bundle")
    assert record.trust_state == "needs --trust" and record.needs_trust
    assert any(p.startswith("pwn: ") and "__import__" in p for p in record.problems)
    assert any("posix.system" in p or "os.system" in p for p in record.problems)
    assert not any(p.startswith("datalist") for p in record.problems)
    assert {p.split(":")[0] for p in record.workflow_problems} == {"datalist"}
    assert "item(s) of its inference config that medsegnas segment does not use" in out
    assert not config_marker.exists() and not pickle_marker.exists()

    resolved = resolve_model("evil_bundle")
    assert resolved.trusted is False and resolved.record is not None and resolved.record.needs_trust

    code, out, _ = run_cli(capsys, "models", "info", "evil_bundle")
    assert code == 0 and "trust:       needs --trust" in out and "needs code to run:" in out and "pwn" in out
    assert "MONAI's own workflow would need --trust for:\n  - datalist:" in out
    code, out, _ = run_cli(capsys, "models", "trust", "evil_bundle")
    assert code == 0 and "now trusted" in out
    assert resolve_model("evil_bundle").trusted is True
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0 and "evil_bundle" in out and "trusted" in out
    code, out, _ = run_cli(capsys, "models", "trust", "evil_bundle", "--revoke")
    assert code == 0 and resolve_model("evil_bundle").trusted is False
    assert not config_marker.exists() and not pickle_marker.exists()


def test_trust_flag_at_import_is_stored_and_shown(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "b" / "tiny_spleen")
    code, out, _ = run_cli(capsys, "models", "import", str(bundle), "--trust", "--name", "trusted-one")
    assert code == 0 and "trusted" in out
    code, out, _ = run_cli(capsys, "models", "import", str(bundle), "--name", "plain-one")
    assert code == 0 and "safe: runs without executing any code" in out
    index = json.loads((home / "models" / "registry.json").read_text())["models"]
    assert index["trusted-one"]["trusted"] is True and index["plain-one"]["trusted"] is False

    code, out, _ = run_cli(capsys, "models", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "trusted" in rows["trusted-one"] and "safe" in rows["plain-one"]
    code, out, _ = run_cli(capsys, "models", "info", "trusted-one", "--json")
    info = json.loads(out)
    assert info["trusted"] is True and info["trust_state"] == "trusted" and info["present"] is True
    assert info["labels"][1]["name"] == "spleen" and info["current_problems"] == []


def test_list_info_and_remove(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "models", "list")
    assert code == 0 and "no models in" in out
    make_bundle(tmp_path / "b" / "tiny_spleen")
    ModelRegistry().import_model(tmp_path / "b" / "tiny_spleen")

    code, out, _ = run_cli(capsys, "models", "list", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == ["tiny_spleen"]
    code, out, _ = run_cli(capsys, "models", "info", "tiny_spleen")
    assert code == 0
    for expected in (
        "version:     0.1.2",
        "network:     UNet",
        "CT, 1 input channel(s)",
        "trust:       safe",
    ):
        assert expected in out
    assert "  1  spleen" in out and "rgb 0.616 0.424 0.635" in out  # Slicer's spleen color

    code, _, err = run_cli(capsys, "models", "info", "nope")
    assert code == 1 and "no model with id 'nope'" in err and "tiny_spleen" in err
    code, out, _ = run_cli(capsys, "models", "remove", "tiny_spleen")
    assert code == 0 and "removed 'tiny_spleen'" in out
    assert registry_ids(home) == []
    assert sorted(p.name for p in (home / "models").iterdir()) == [".registry.lock", "registry.json"]
    code, _, err = run_cli(capsys, "models", "remove", "tiny_spleen")
    assert code == 1 and "no model with id 'tiny_spleen' to remove" in err


# --------------------------------------------------------------------------- concurrency

_IMPORT_SCRIPT = """
import dataclasses, sys, time
from pathlib import Path
import MedSegNASLib.models.bundle  # import MONAI before the start signal, so the imports race
from MedSegNASLib.models.registry import ModelRegistry, RegistryError
start, names, source, tag = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
registry = ModelRegistry()
while not start.exists():
    time.sleep(0.01)
for name in names:
    try:
        record = registry.import_model(source, model_id=name)
        print("ok", name, flush=True)
    except RegistryError as exc:
        print("refused", name, exc, flush=True)
# Many quick index updates in a row: without the lock, the two processes' read-modify-write
# cycles overlap and records get lost.
for i in range(40):
    with registry._locked_index() as records:
        records[f"{tag}-{i}"] = dataclasses.replace(record, id=f"{tag}-{i}")
"""


def test_two_processes_importing_at_once_keep_registry_json_valid(home: Path, tmp_path: Path) -> None:
    source = make_bundle(tmp_path / "b" / "tiny_spleen")
    start = tmp_path / "go"
    env = dict(os.environ, **{HOME_ENV: str(home)})
    names = {"p": ["a1", "a2", "same"], "q": ["b1", "b2", "same"]}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _IMPORT_SCRIPT, str(start), ",".join(n), str(source), tag],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, n in names.items()
    ]
    time.sleep(0.5)
    start.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    lines = [line for out, _ in outputs for line in out.splitlines()]
    imported = ["a1", "a2", "b1", "b2", "same"]
    assert sorted(line.split()[1] for line in lines if line.startswith("ok")) == imported
    (refused,) = [line for line in lines if line.startswith("refused")]
    assert "'same' is already registered" in refused
    index = json.loads((home / "models" / "registry.json").read_text())["models"]
    quick = [f"{tag}-{i}" for tag in names for i in range(40)]
    assert sorted(index) == sorted(imported + quick)
    for model_id in imported:
        assert index[model_id]["id"] == model_id
        assert (home / "models" / model_id / "models" / "model.pt").is_file()
    assert [p.name for p in (home / "models").glob(".staging-*")] == []


# ----------------------------------------------------------------------------- resolve


def test_resolve_model_accepts_ids_folders_and_archives(home: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b" / "tiny_spleen")
    archive = zip_folder(bundle, tmp_path / "tiny.zip")
    ModelRegistry().import_model(bundle, model_id="spleen", trusted=True)

    by_id = resolve_model("spleen")
    assert by_id.kind == "registry" and by_id.trusted is True and by_id.record is not None
    assert by_id.path == home / "models" / "spleen" and by_id.record.id == "spleen"

    by_folder = resolve_model(str(tmp_path / "b"))  # a folder whose only sub-folder is the bundle
    assert by_folder.kind == "folder" and by_folder.path == bundle and by_folder.trusted is False
    assert by_folder.record is None

    by_archive = resolve_model(str(archive))
    expected = home / "cache" / "bundles" / sha256_of(archive) / "tiny_spleen"
    assert by_archive.kind == "archive" and by_archive.path == expected and by_archive.trusted is False
    assert (expected / "models" / "model.pt").is_file()
    mtime = expected.stat().st_mtime_ns
    assert resolve_model(archive).path == expected and expected.stat().st_mtime_ns == mtime  # unpacked once

    with pytest.raises(ModelFileError, match=r"'nope' is neither a registered model id \(known: spleen"):
        resolve_model("nope")
    (home / "models" / "spleen" / "configs" / "inference.json").unlink()
    for path in sorted((home / "models" / "spleen").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (home / "models" / "spleen").rmdir()
    with pytest.raises(RegistryError, match="registered but its folder .* is missing"):
        resolve_model("spleen")


def test_register_model_adds_a_searched_model_with_a_fresh_id(home: Path, tmp_path: Path) -> None:
    exported = make_bundle(tmp_path / "run" / "artifacts" / "model", name="searched_dints")
    first = register_model(exported, source=f"search run {tmp_path / 'run'}")
    second = register_model(exported, source=f"search run {tmp_path / 'run'}")
    assert (first.id, second.id) == ("searched_dints", "searched_dints-2")
    assert first.source == f"search run {tmp_path / 'run'}" and first.trust_state == "safe"
    with pytest.raises(RegistryError, match="already registered"):
        register_model(exported, source="x", name="searched_dints", if_exists="error")
    assert registry_ids(home) == ["searched_dints", "searched_dints-2"]


# ----------------------------------------------------------------------------- catalog


def test_shipped_catalog_lists_model_zoo_bundles_with_checksums_and_labels() -> None:
    raw = json.loads((ROOT / "MedSegNAS" / "MedSegNASLib" / "models" / "catalog.json").read_text())
    assert "Project-MONAI/model-zoo" in raw["source"] and "model_info.json" in raw["source"]
    catalog = load_catalog()
    for name in (
        "spleen_ct_segmentation",
        "pancreas_ct_dints_segmentation",
        "multi_organ_segmentation",
        "wholeBody_ct_segmentation",
        "swin_unetr_btcv_segmentation",
        "prostate_mri_anatomy",
        "brats_mri_segmentation",
    ):
        assert name in catalog
    for name, entry in catalog.items():
        assert entry.url.startswith("https://") and entry.url.endswith(".zip"), name
        assert entry.checksum.algorithm == "sha1" and len(entry.checksum.hexdigest) == 40, name
        assert entry.version in entry.url and entry.modality and entry.input_channels >= 1, name
        assert entry.labels and entry.license, name
        values = [label["value"] for label in entry.labels]
        assert values == sorted(set(values)), name
        colors = [tuple(label["color"]) for label in entry.labels]
        assert len(set(colors)) == len(colors), f"{name}: two labels share a color"
    spleen = catalog["spleen_ct_segmentation"]
    assert [x["name"] for x in spleen.labels] == ["background", "spleen"]
    assert spleen.checksum.hexdigest == "8e99230050906d0d3cec484010598aa138201892" and not spleen.needs_trust
    assert catalog["multi_organ_segmentation"].labels[3]["name"] == "liver"
    assert len(catalog["wholeBody_ct_segmentation"].labels) == 105
    assert catalog["renalStructures_UNEST_segmentation"].needs_trust  # its network is bundle code


def _write_catalog(path: Path, url: str, checksum: str, *, weights: dict | None = None) -> Path:
    entry = {
        "version": "0.1.2",
        "url": url,
        "checksum": {"algorithm": "sha1", "value": checksum},
        "modality": "CT",
        "input_channels": 1,
        "labels": [
            {"value": 0, "name": "background", "color": [0, 0, 0]},
            {"value": 1, "name": "spleen", "color": [0.1, 0.2, 0.3]},
        ],
        "license": "Apache-2.0",
        **({"weights": weights} if weights else {}),
    }
    path.write_text(json.dumps({"format_version": 1, "source": "test", "models": {"tiny_spleen": entry}}))
    return path


def test_download_from_a_catalog_through_the_cli(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = zip_folder(make_bundle(tmp_path / "b" / "tiny_spleen"), served / "tiny_spleen_v0.1.2.zip")
    with http_server(served) as (base, _server):
        url = f"{base}/tiny_spleen_v0.1.2.zip"
        bad = _write_catalog(tmp_path / "bad.json", url, "0" * 40)
        code, _, err = run_cli(capsys, "models", "download", "tiny_spleen", "--catalog", str(bad))
        (error_line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and "sha1" in error_line and sha1_of(archive) in error_line
        assert "nothing was kept" in error_line and err.rstrip().endswith(error_line)
        assert leftovers(home) == [] and ModelRegistry().list() == []

        monkeypatch.setenv(CATALOG_ENV, str(_write_catalog(tmp_path / "good.json", url, sha1_of(archive))))
        code, out, _ = run_cli(capsys, "models", "catalog")
        assert code == 0 and "tiny_spleen" in out and "0.1.2" in out
        code, _, err = run_cli(capsys, "models", "download", "liver_thing")
        assert code == 1 and "'liver_thing' is not in the model catalog (available: tiny_spleen)" in err
        code, out, _ = run_cli(capsys, "models", "download", "tiny_spleen")
    assert code == 0 and "imported 'tiny_spleen'" in out and f"sha1:{sha1_of(archive)}" in out
    record = ModelRegistry().get("tiny_spleen")
    assert record.source == f"catalog tiny_spleen 0.1.2 ({url})" and record.catalog_name == "tiny_spleen"
    assert record.labels[1]["color"] == [0.1, 0.2, 0.3]  # the catalog's color for the same label


def test_download_fetches_weights_the_archive_lacks(home: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    bundle = make_bundle(tmp_path / "b" / "tiny_spleen")
    weights = served / "model_tiny.pt"
    weights.write_bytes((bundle / "models" / "model.pt").read_bytes())
    (bundle / "models" / "model.pt").unlink()
    (bundle / "models").rmdir()
    archive = zip_folder(bundle, served / "tiny.zip")
    with http_server(served) as (base, _server):
        md5 = hashlib.md5(weights.read_bytes()).hexdigest()
        catalog = load_catalog(
            _write_catalog(
                tmp_path / "c.json",
                f"{base}/tiny.zip",
                sha1_of(archive),
                weights={"path": "models/model.pt", "url": f"{base}/model_tiny.pt", "md5": md5},
            )
        )
        wrong_md5 = dict(catalog["tiny_spleen"].weights or {}, md5="0" * 32)
        bad = {"tiny_spleen": dataclasses.replace(catalog["tiny_spleen"], weights=wrong_md5)}
        with pytest.raises(ChecksumError, match=f"md5 {md5}, expected 0{{32}}"):
            ModelRegistry().download("tiny_spleen", catalog=bad)
        assert ModelRegistry().list() == [] and leftovers(home) == []
        record = ModelRegistry().download("tiny_spleen", catalog=catalog)
    assert (home / "models" / record.id / "models" / "model.pt").read_bytes() == weights.read_bytes()


def test_catalog_entries_without_url_checksum_or_labels_are_refused(tmp_path: Path) -> None:
    good = json.loads(_write_catalog(tmp_path / "c.json", "https://example.org/x.zip", "a" * 40).read_text())
    for field, value, message in (
        ("url", None, "'url' is missing"),
        ("url", "file:///etc/passwd", "is not an http"),
        ("checksum", {"algorithm": "sha1", "value": "abc"}, "is not 40 hex digits"),
        ("checksum", {"algorithm": "crc32", "value": "abc"}, "not supported"),
        ("labels", [], "'labels' is missing"),
        ("labels", [{"value": 1, "name": "x", "color": [2, 0, 0]}], "RGB color in"),
    ):
        broken = json.loads(json.dumps(good))
        broken["models"]["tiny_spleen"][field] = value
        path = tmp_path / "broken.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(RegistryError, match=message):
            load_catalog(path)


def test_checksum_parsing() -> None:
    assert Checksum.parse("SHA1:" + "AB" * 20) == Checksum("sha1", "ab" * 20)
    assert Checksum.parse("c" * 64).algorithm == "sha256" and Checksum.parse("d" * 32).algorithm == "md5"
    with pytest.raises(ChecksumError, match="ALGORITHM:HEX"):
        Checksum.parse("abc")
    with pytest.raises(ChecksumError, match="not 64 hex digits"):
        Checksum("sha256", "z" * 64)


def test_pickle_payload_helper_really_runs_with_a_plain_unpickler(tmp_path: Path) -> None:
    """Control for the untrusted-bundle test: the payload is live, so 'marker absent' means refused."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_TouchPayload(marker)))  # noqa: S301 (the point of the control)
    assert marker.exists()


def test_weights_named_in_large_files_are_found_and_a_missing_one_is_named(
    home: Path, tmp_path: Path
) -> None:
    """Bundles that name their weights otherwise (pediatric: ``models/dynunet_FT.pt``, listed in
    ``large_files.yaml``) import; without the file the error names the file the bundle lists."""
    source = make_bundle(tmp_path / "src" / "renamed", name="renamed")
    (source / "models" / "model.pt").rename(source / "models" / "dynunet_FT.pt")
    (source / "large_files.yaml").write_text(
        "large_files:\n  - path: models/dynunet_FT.pt\n    url: https://example.invalid/w.pt\n"
    )
    record = ModelRegistry().import_model(source)
    assert record.id == "renamed" and record.trust_state == "safe"
    assert (home / "models" / "renamed" / "models" / "dynunet_FT.pt").is_file()

    (source / "models" / "dynunet_FT.pt").unlink()
    with pytest.raises(ModelFileError, match=r"no weights file models/dynunet_FT\.pt .*large_files.yaml"):
        ModelRegistry().import_model(source, model_id="renamed2")
    assert registry_ids(home) == ["renamed"]
