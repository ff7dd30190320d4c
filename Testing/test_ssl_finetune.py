"""Fine-tuning from a pretrained encoder (``sslpretrain finetune``) and the few-shot comparison (``fewshot``).

What a user checks: that fine-tuning really starts from the pretrained weights (the tensors of
the network before its first step are those of ``encoder.pt``), that weights which do not fit
are refused instead of silently ignored, that MONAI's published weight layout loads completely,
that the exported bundle segments an image with ``medsegnas segment``, and that ``fewshot``
writes its table and plot for both initialisations.

Swin UNETR needs 64^3 patches (its bottleneck is 1/32 of the patch and its decoder normalises
over it), so the phantom volumes are 64^3; the runs are a handful of steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from MedSegNASLib.data import read_volume, write_phantom_dataset
from MedSegNASLib.errors import MedSegNASError
from MedSegNASLib.jobs import RunDir, refresh_status, run_job_command
from SSLPretrainLib.cli import main as sslpretrain
from SSLPretrainLib.encoder import (
    ENCODER_PREFIX,
    MonaiVersionWarning,
    build_swin_encoder,
    export_encoder,
    load_pretrained_encoder,
    read_pretrained_encoder,
)
from SSLPretrainLib.fewshot import (
    FewShotResult,
    fewshot_csv,
    fewshot_markdown,
    plan_fewshot,
    read_fewshot_csv,
    seeds_markdown,
    summarize_seeds,
)
from SSLPretrainLib.finetune import (
    encoder_initialiser,
    pretrained_facts,
    resolve_finetune_config,
    train_request,
)

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(sys.platform == "win32", reason="job workers need POSIX signals and flock"),
]

#: Two short pretraining steps: enough to make weights that differ from a fresh encoder.
PRETRAIN_SETTINGS = {"steps": 2, "warmup_steps": 1, "checkpoint_every": 2, "reconstructions": 0}
#: Fine-tuning settings of the tests: one epoch, scored at its end; a voxel size at which a
#: phantom volume fits one 64^3 window, so validation is one forward pass per case.
FINETUNE_SETTINGS = {"epochs": 1, "val_interval": 1, "spacing": [8.0, 8.0, 12.0]}


def swin_unetr(feature_size: int = 12, in_channels: int = 1, out_channels: int = 3) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(1)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size)


def encoder_tensors(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in network.state_dict().items() if k.startswith(ENCODER_PREFIX)}


def published_layout(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``encoder``'s weights named as in MONAI's released ``model_swinvit.pt`` (``SwinUNETR.load_from``)."""
    state = {}
    for key, value in encoder.state_dict().items():
        key = key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        state["module." + key] = value.clone()
    return state


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 labelled 64^3 cases (2 to train on, 1 to validate), 1 unlabelled volume, 1 test image."""
    folder = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(folder, cases=3, size=64, seed=5, unlabeled=1, test_cases=1)
    return folder


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory: pytest.TempPathFactory, phantom: Path) -> Path:
    """A real (two-step) ``sslpretrain pretrain --preset tiny`` run on the unlabelled volume."""
    root = tmp_path_factory.mktemp("pretrain")
    settings = root / "settings.json"
    settings.write_text(json.dumps(PRETRAIN_SETTINGS))
    run = root / "run"
    argv = ["pretrain", "--images", str(phantom / "imagesUnlabeled"), "--preset", "tiny"]
    assert sslpretrain([*argv, "--config", str(settings), "--run-dir", str(run), "--device", "cpu"]) == 0
    return run


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, phantom: Path, pretrain_run: Path):
    """A fine-tuning run, stopped right after its first step and finished with ``finetune --resume``.

    The first part runs the job body ``sslpretrain finetune`` runs (``run_train`` with
    :func:`encoder_initialiser`), with the initialiser wrapped to copy the network's encoder
    the moment it is initialised, before any training step.
    """
    from MedSegNASLib.nas.train import run_train
    from SSLPretrainLib.finetune import labelled_case_names

    names = labelled_case_names(phantom)
    facts = pretrained_facts(pretrain_run)
    request = train_request(
        dataset=phantom,
        dataroot=None,
        preset="tiny",
        overrides=FINETUNE_SETTINGS,
        seed=0,
        feature_size=facts["feature_size"],
        train_cases=names[:2],
        validation_cases=names[2:],
        register=False,
    )
    resolved = resolve_finetune_config(request, pretrained=facts, device_type="cpu")
    run = RunDir(tmp_path_factory.mktemp("finetune") / "run")
    captured: dict[str, dict[str, torch.Tensor]] = {}

    def body(ctx):
        from MedSegNASLib.nas.distributed import DistInfo

        initialise = encoder_initialiser(facts["path"], ctx.log)

        def initialise_and_look(network):
            report = initialise(network)
            captured["start"] = encoder_tensors(network)
            ctx.request_stop("stopping after the first step (test)")
            return report

        return run_train(ctx, resolved, DistInfo(), init_network=initialise_and_look)

    args = argparse.Namespace(run_dir=run.path, resume=False, detach=False, debug=True)
    assert run_job_command("finetune", args, body, resolved) == 3  # cancelled after step 1 of 2
    assert run.read_status()["state"] == "cancelled"
    assert sslpretrain(["finetune", "--run-dir", str(run.path), "--resume", "--device", "cpu"]) == 0
    return run, captured


# --------------------------------------------------------------------------------------------
# loading weights


def test_published_ssl_layout_loads_every_encoder_tensor_like_monai_load_from(tmp_path: Path) -> None:
    torch.manual_seed(7)
    encoder = build_swin_encoder(12)
    state = published_layout(encoder)
    heads = {
        "module.rotation_head.weight": torch.ones(4, 192),
        "module.contrastive_head.bias": torch.ones(512),
    }
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": {**state, **heads}, "epoch": 100}, path)

    network = swin_unetr()
    with pytest.warns(MonaiVersionWarning, match="does not record the MONAI version"):
        report = load_pretrained_encoder(network, path)
    assert report["layout"] == "monai-swin-ssl"
    assert report["loaded"] == report["total_encoder_tensors"] == 118  # every learned encoder tensor
    assert report["buffers_loaded"] == 8  # the relative position indices
    assert report["mismatched"] == [] and report["missing"] == []
    assert sorted(report["skipped"]) == ["contrastive_head.bias", "rotation_head.weight"]
    for key, value in encoder.state_dict().items():
        assert torch.equal(network.state_dict()[ENCODER_PREFIX + key], value), key

    # MONAI's own reader of that layout fills the encoder with the same values.
    reference = swin_unetr()
    reference.load_from({"state_dict": state})
    ours, theirs = encoder_tensors(network), encoder_tensors(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_weights_without_matching_keys_are_refused_and_change_nothing(
    tmp_path: Path, phantom: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A checkpoint of some other encoder: research-code names that match no Swin UNETR tensor.
    foreign = {
        "state_dict": {
            "module.encoder.stem.conv.weight": torch.ones(12, 1, 3, 3, 3),
            "module.encoder.stage1.0.norm.weight": torch.ones(12),
        },
        "monai_version": "1.6.1",
    }
    path = tmp_path / "other_encoder.pt"
    torch.save(foreign, path)
    network = swin_unetr()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(
        MedSegNASError, match=r"none of the 118 encoder tensors .* could be loaded from .*other_encoder\.pt"
    ):
        load_pretrained_encoder(network, path)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())

    # Weights of another feature size: every name matches, no shape does.
    other_size = tmp_path / "f24" / "encoder.pt"
    export_encoder(build_swin_encoder(24), other_size, feature_size=24, in_channels=1)
    with pytest.raises(MedSegNASError, match="feature size 24, the network has feature size 12"):
        load_pretrained_encoder(network, other_size)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())

    # The command refuses before it trains anything.
    run = tmp_path / "run"
    code = sslpretrain(
        [
            "finetune",
            "--pretrained",
            str(path),
            "--dataset",
            str(phantom),
            "--run-dir",
            str(run),
            "--no-register",
        ]
    )
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "other_encoder.pt" in error and "not a Swin UNETR encoder" in error
    assert not (run / "artifacts" / "model").exists()


def test_image_channels_that_differ_load_all_but_the_patch_embedding(tmp_path: Path) -> None:
    path = tmp_path / "encoder.pt"
    export_encoder(build_swin_encoder(12, in_channels=1), path, feature_size=12, in_channels=1)
    report = load_pretrained_encoder(swin_unetr(in_channels=2), path)
    assert report["loaded"] == 117 and report["total_encoder_tensors"] == 118
    assert [m["key"] for m in report["mismatched"]] == ["swinViT.patch_embed.proj.weight"]
    assert report["mismatched"][0]["pretrained_shape"] == [12, 1, 2, 2, 2]


def test_pretraining_run_and_its_checkpoint_give_the_same_encoder(pretrain_run: Path, tmp_path: Path) -> None:
    exported = read_pretrained_encoder(pretrain_run)
    assert exported.path == pretrain_run / "artifacts" / "encoder.pt"
    assert exported.layout == "sslpretrain-encoder" and exported.feature_size == 12
    # A stopped run has no encoder.pt yet: its last checkpoint serves.
    stopped = tmp_path / "stopped"
    shutil.copytree(pretrain_run / "checkpoints", stopped / "checkpoints")
    checkpoint = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["monai_version"] = "1.4.0"
    torch.save(checkpoint, stopped / "checkpoints" / "last.pt")
    with pytest.warns(MonaiVersionWarning, match="MONAI 1.4.0.*patch-merging"):
        from_checkpoint = read_pretrained_encoder(stopped)
    assert from_checkpoint.layout == "sslpretrain-checkpoint"
    assert from_checkpoint.encoder_keys == exported.encoder_keys
    for key in exported.encoder_keys:
        assert torch.equal(from_checkpoint.state_dict[key], exported.state_dict[key]), key
    with pytest.raises(MedSegNASError, match="holds no pretrained encoder"):
        read_pretrained_encoder(tmp_path / "stopped" / "checkpoints")


# --------------------------------------------------------------------------------------------
# fine-tuning


def test_finetuning_starts_from_the_pretrained_encoder(finetuned, pretrain_run: Path) -> None:
    run, captured = finetuned
    pretrained = torch.load(pretrain_run / "artifacts" / "encoder.pt", weights_only=True)
    start = captured["start"]
    assert start.keys() == pretrained.keys() and len(start) == 126
    different = [key for key in pretrained if not torch.equal(start[key], pretrained[key])]
    assert not different, (
        f"{len(different)} encoder tensors differ from encoder.pt at the start, e.g. {different[:3]}"
    )

    summary = json.loads((run.artifacts / "summary.json").read_text())
    assert summary["init"]["loaded"] == summary["init"]["total_encoder_tensors"] == 118
    assert summary["init"]["source"] == str(pretrain_run / "artifacts" / "encoder.pt")
    messages = [e.get("message", "") for e in run.read_events()[0] if e["type"] == "log"]
    assert any(m.startswith("loaded 118 of 118 encoder tensors from") for m in messages), messages
    metadata = json.loads((run.artifacts / "model" / "configs" / "metadata.json").read_text())
    assert metadata["medsegnas"]["init"]["loaded"] == 118
    # Training went on from there: the exported encoder moved away from the pretrained one.
    trained = torch.load(run.artifacts / "model" / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(trained[key], pretrained[key]) for key in pretrained)
    # The fine-tuned bundle is itself a starting point: its encoder loads into a new network.
    with warnings.catch_warnings():
        warnings.simplefilter("error", MonaiVersionWarning)  # the bundle's metadata names the MONAI version
        again = read_pretrained_encoder(run.artifacts / "model")
    assert again.layout == "swin-unetr" and again.feature_size == 12
    assert load_pretrained_encoder(swin_unetr(), again)["loaded"] == 118


def test_finetuned_bundle_runs_with_medsegnas_segment(finetuned, phantom: Path, tmp_path: Path) -> None:
    run, _ = finetuned
    image = sorted((phantom / "imagesTs").glob("*.nii.gz"))[0]
    out = tmp_path / "labels.nii.gz"
    command = [sys.executable, "-m", "MedSegNASLib.cli", "segment", str(image), "--model",
               str(run.artifacts / "model"), "-o", str(out), "--device", "cpu"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    labels, source = read_volume(out), read_volume(image)
    assert labels.spatial_shape == source.spatial_shape
    assert np.allclose(labels.affine, source.affine)
    labels_json = json.loads((phantom / "dataset.json").read_text())["labels"]
    assert set(np.unique(labels.array).tolist()) <= {int(v) for v in labels_json}


def test_finetune_reports_bad_requests_in_one_line(
    phantom: Path, pretrain_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["finetune", "--dataset", str(phantom), "--run-dir", str(tmp_path / "r"), "--no-register"]
    assert sslpretrain(base) == 1
    assert "--pretrained RUN_OR_FILE is needed" in capsys.readouterr().err
    assert sslpretrain([*base, "--pretrained", str(pretrain_run), "--labelled", "3"]) == 1
    assert "at least one must be left for validation" in capsys.readouterr().err
    assert sslpretrain([*base, "--pretrained", str(tmp_path / "missing")]) == 1
    assert "pretrained weights not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# few-shot


def test_fewshot_plan_holds_out_the_same_cases_for_every_training_set() -> None:
    names = [f"case{i}" for i in range(10)]
    plan = plan_fewshot(names, [4, 2, 8], seed=3, eval_cases=2)
    assert plan.shots == (2, 4, 8)
    assert len(plan.evaluation) == 2
    for n in plan.shots:
        training = plan.training(n)
        assert len(training) == n and not set(training) & set(plan.evaluation)
    assert plan.training(2) == plan.training(4)[:2] and plan.training(4) == plan.training(8)[:4]
    assert plan_fewshot(names, [2, 4, 8], seed=3, eval_cases=2) == plan  # the same seed, the same plan
    with pytest.raises(MedSegNASError, match="need 11"):
        plan_fewshot(names, [10], seed=0)


def test_fewshot_table_pairs_the_two_initialisations() -> None:
    results = [
        FewShotResult(
            2, "pretrained", {"liver": 0.70, "spleen": 0.50}, "runs/n002-pretrained", 40, loaded=118
        ),
        FewShotResult(2, "random", {"liver": 0.60, "spleen": 0.30}, "runs/n002-random", 40),
        FewShotResult(4, "random", {"liver": 0.80, "spleen": float("nan")}, "runs/n004-random", 40),
    ]
    rows = fewshot_csv(results, seed=0, eval_cases=3).splitlines()
    assert rows[0].split(",")[:5] == ["labelled_cases", "init", "mean_dice", "dice_liver", "dice_spleen"]
    assert rows[1].startswith("2,random,0.4500,0.6000,0.3000,40,0,3,,")
    assert rows[2].startswith("2,pretrained,0.6000,0.7000,0.5000,40,0,3,118,")
    assert rows[3].startswith("4,random,0.8000,0.8000,,")  # a class absent from the held-out cases
    markdown = fewshot_markdown(results, evaluation=["a", "b", "c"], steps=40, seed=0)
    assert "| 2 | 45.00 | 60.00 | +15.00 |" in markdown
    assert "| 4 | 80.00 | – | – |" in markdown  # the pretrained run of 4 cases is missing


def test_fewshot_seeds_pair_the_initialisations_and_report_the_spread() -> None:
    def seed_rows(random_liver: float, pretrained_liver: float | None) -> list[FewShotResult]:
        rows = [FewShotResult(2, "random", {"liver": random_liver, "spleen": 0.2}, "r", 40)]
        if pretrained_liver is not None:
            rows.append(
                FewShotResult(
                    2, "pretrained", {"liver": pretrained_liver, "spleen": 0.2}, "p", 40, loaded=118
                )
            )
        return rows

    # Seeds 0-2 as written by fewshot.csv and read back; seed 3 lacks its pretrained run.
    per_seed = {
        seed: read_fewshot_csv(fewshot_csv(rows, seed=seed, eval_cases=4))
        for seed, rows in enumerate(
            [seed_rows(0.6, 0.8), seed_rows(0.4, 0.5), seed_rows(0.5, 0.4), seed_rows(0.9, None)]
        )
    }
    assert per_seed[0][1].loaded == 118 and per_seed[0][1].dice == pytest.approx(
        {"liver": 0.8, "spleen": 0.2}
    )
    (summary,) = summarize_seeds(per_seed)
    assert summary.seeds == (0, 1, 2)  # seed 3 has no pair and does not count
    data = summary.to_dict()
    random_means = np.array([0.4, 0.3, 0.35])  # (liver + spleen) / 2 per seed
    pretrained_means = np.array([0.5, 0.35, 0.3])
    assert data["random"]["mean"] == pytest.approx(random_means.mean())
    assert data["random"]["sd"] == pytest.approx(random_means.std(ddof=1))
    assert data["difference"]["per_seed"] == pytest.approx(list(pretrained_means - random_means))
    assert data["difference"]["sd"] == pytest.approx((pretrained_means - random_means).std(ddof=1))
    assert data["pretrained_ahead"] == 2
    row = seeds_markdown([summary]).splitlines()[2]
    assert row == "| 2 | 3 | 35.0 ± 5.0 | 38.3 ± 10.4 | +3.3 ± 7.6 | 2 of 3 |"
    with pytest.raises(MedSegNASError, match="not a few-shot table"):
        read_fewshot_csv("a,b\n1,2\n")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four one-step fine-tunings in their own processes, each scored
def test_fewshot_seeds_benchmark_runs_every_seed_and_writes_the_table(
    tmp_path: Path, pretrain_run: Path
) -> None:
    data = tmp_path / "data"
    write_phantom_dataset(data, cases=3, size=64, seed=9, unlabeled=0, test_cases=0)
    settings = tmp_path / "spacing.json"
    settings.write_text(json.dumps({"spacing": FINETUNE_SETTINGS["spacing"]}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fewshot_seeds.py"
    argv = [sys.executable, str(script), "--out", str(tmp_path / "out"), "--dataset", str(data), "--pretrained",
            str(pretrain_run), "--seeds", "0,1", "--shots", "2", "--budget", "1", "--eval-cases", "1",
            "--config", str(settings)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "fewshot_seeds.json").read_text())
    (summary,) = report["summaries"]
    assert summary["labelled_cases"] == 2 and summary["seeds"] == [0, 1]
    for seed in ("0", "1"):
        assert [r["init"] for r in report["per_seed"][seed]] == ["random", "pretrained"]
        assert (tmp_path / "out" / f"fewshot-seed{seed}" / "runs" / "n002-pretrained").is_dir()
    # The two seeds hold out different cases, so their runs are not copies of each other.
    plans = [
        json.loads((tmp_path / "out" / f"fewshot-seed{seed}" / "job.json").read_text())["config"]["plan"]
        for seed in (0, 1)
    ]
    assert plans[0]["seed"] == 0 and plans[1]["seed"] == 1
    assert "| 2 | 2 |" in (tmp_path / "out" / "fewshot_seeds.md").read_text()
    assert (tmp_path / "out" / "fewshot_seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call reuses the finished runs.
    events = (tmp_path / "out" / "fewshot-seed0" / "events.jsonl").read_bytes()
    assert subprocess.run(argv, capture_output=True, timeout=600).returncode == 0
    assert (tmp_path / "out" / "fewshot-seed0" / "events.jsonl").read_bytes() == events


@pytest.mark.slow
def test_finetune_command_trains_and_exports(phantom: Path, pretrain_run: Path, tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    settings = tmp_path / "short.json"
    settings.write_text(json.dumps(FINETUNE_SETTINGS))
    argv = ["finetune", "--pretrained", str(pretrain_run), "--dataset", str(phantom), "--labelled", "2",
            "--config", str(settings), "--run-dir", str(run.path), "--device", "cpu", "--no-register"]  # fmt: skip
    assert sslpretrain(argv) == 0
    summary = json.loads((run.artifacts / "summary.json").read_text())
    assert summary["train_cases"] == ["phantom_000", "phantom_001"]
    assert summary["validation_cases"] == ["phantom_002"]
    assert summary["init"]["loaded"] == 118 and summary["init"]["layout"] == "sslpretrain-encoder"
    assert (run.artifacts / "model" / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_fewshot_writes_table_and_plot_and_resumes_without_redoing_runs(
    tmp_path: Path, pretrain_run: Path
) -> None:
    data = tmp_path / "data"
    write_phantom_dataset(data, cases=3, size=64, seed=9, unlabeled=0, test_cases=0)
    run = RunDir(tmp_path / "fewshot")
    settings = tmp_path / "spacing.json"
    settings.write_text(json.dumps({"spacing": FINETUNE_SETTINGS["spacing"]}))
    argv = [sys.executable, "-m", "SSLPretrainLib.cli", "fewshot", "--dataset", str(data), "--pretrained",
            str(pretrain_run), "--shots", "2", "--budget", "2", "--config", str(settings), "--device", "cpu",
            "--run-dir", str(run.path)]  # fmt: skip
    process = subprocess.Popen(
        argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    first = RunDir(run.path / "runs" / "n002-random")
    deadline = time.monotonic() + 400
    while not (first.is_run_dir() and first.read_status().get("state") == "done"):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the first fine-tuning run did not finish"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)  # stop it during the second run
    assert process.wait(timeout=120) == 3
    assert refresh_status(run)["state"] == "cancelled"
    events_before = first.events_jsonl.read_bytes()

    assert sslpretrain(["fewshot", "--run-dir", str(run.path), "--resume", "--device", "cpu"]) == 0
    assert first.events_jsonl.read_bytes() == events_before, "the finished run was run again"
    rows = (run.artifacts / "fewshot.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in rows[1:]] == [["2", "random"], ["2", "pretrained"]]
    for row in rows[1:]:
        assert 0.0 <= float(row.split(",")[2]) <= 1.0
    markdown = (run.artifacts / "fewshot.md").read_text()
    assert "| labelled cases | random init Dice | pretrained Dice | difference |" in markdown
    assert "phantom_" in markdown and "--budget 2" in markdown
    png = (run.artifacts / "fewshot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    result = run.read_status()["result"]
    assert [r["init"] for r in result["results"]] == ["random", "pretrained"]
    assert result["results"][1]["loaded"] == 118
