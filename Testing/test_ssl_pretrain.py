"""Self-supervised pretraining (``sslpretrain pretrain``): losses, head, pretext views, and real runs.

The runs use the phantom's unlabelled volumes, the ``tiny`` preset (feature size 12, 32^3
crops) and a few steps. They go through the real command line, real worker processes, real
signals and the real run directory; the resume test compares the weights of an interrupted run
(cancelled, then killed with SIGKILL, then resumed) with those of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import events_of
from MedSegNASLib.data import read_volume, write_phantom_dataset
from MedSegNASLib.jobs import RunDir, launch, refresh_status
from SSLPretrainLib.augment import NOISE, SWAP, MaskSpec, block_mask, make_views, rotate_quarter_turns
from SSLPretrainLib.cli import main as sslpretrain
from SSLPretrainLib.config import PretrainConfig, resolve_config
from SSLPretrainLib.encoder import ENCODER_PREFIX, MonaiVersionWarning, load_encoder_weights
from SSLPretrainLib.heads import SwinSSLModel, default_projection_dim
from SSLPretrainLib.losses import nt_xent_loss
from SSLPretrainLib.pretrain import Pretrainer
from SSLPretrainLib.volumes import CropSampler, collect_images, preprocessing_spec

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="job workers need POSIX signals and flock"),
]

WORKER_ENTRY = ["-m", "SSLPretrainLib.cli"]
#: The tiny runs: 6 steps, a checkpoint every 2.
RUN_SETTINGS = {"steps": 6, "warmup_steps": 2, "checkpoint_every": 2, "log_every": 1, "reconstructions": 2}


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def phantom(phantom_dataset: Callable[..., Path]) -> Path:
    """A phantom dataset: 1 labelled case and 3 unlabelled CT volumes of 48^3 voxels."""
    return phantom_dataset(cases=1, size=48, seed=3, unlabeled=3)


@pytest.fixture(scope="module")
def settings_file(json_file: Callable[[str, object], Path]) -> Path:
    return json_file("tiny.json", RUN_SETTINGS)


def pretrain_argv(phantom: Path, settings: Path) -> list[str]:
    return [
        "pretrain",
        "--images",
        str(phantom / "imagesUnlabeled"),
        "--config",
        str(settings),
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory: pytest.TempPathFactory, phantom: Path, settings_file: Path) -> RunDir:
    """A tiny pretraining run that nothing interrupts, in this process."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "uninterrupted")
    assert sslpretrain([*pretrain_argv(phantom, settings_file), "--run-dir", str(run.path)]) == 0
    return run


wait_for = functools.partial(conftest.wait_for, timeout=120.0)


def checkpoint_steps(run: RunDir) -> list[int]:
    return [event["step"] for event in events_of(run, "checkpoint")]


# --------------------------------------------------------------------------------------------
# NT-Xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent written directly (exp of the similarities), in float64."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    similarity = z @ z.T
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        numerator = math.exp(similarity[i, positive] / temperature)
        denominator = sum(math.exp(similarity[i, j] / temperature) for j in range(2 * n) if j != i)
        losses.append(-math.log(numerator / denominator))
    return torch.tensor(sum(losses) / len(losses))


def test_nt_xent_equals_the_reference_formula_at_moderate_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(4, 16, generator=generator), torch.randn(4, 16, generator=generator)
    for temperature in (0.5, 0.1):
        expected = reference_nt_xent(z1, z2, temperature)
        assert nt_xent_loss(z1, z2, temperature).item() == pytest.approx(expected.item(), rel=1e-5)
    # Identical views of well-separated crops: the loss is near its minimum, far below chance.
    separated = torch.eye(4, 16) * 10
    assert nt_xent_loss(separated, separated, 0.1).item() < 1e-3 < math.log(7)


def test_nt_xent_is_finite_at_temperature_0_005_with_similarities_near_1() -> None:
    """exp(1 / 0.005) = exp(200) overflows float32 in the direct form; the stable form does not."""
    base = torch.ones(4, 8)
    z1 = base + 1e-3 * torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    z2 = base + 1e-3 * torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    z1.requires_grad_(True)
    direct = torch.exp(torch.nn.functional.cosine_similarity(z1[:1], z2[:1]) / 0.005)
    assert not torch.isfinite(direct).all(), "the direct formula should overflow here (test premise)"
    loss = nt_xent_loss(z1, z2, temperature=0.005)
    assert torch.isfinite(loss)
    assert 0 <= loss.item() < 10 * math.log(7)
    loss.backward()
    assert torch.isfinite(z1.grad).all()
    # Half precision inputs (as under autocast) give the same finite value.
    assert torch.isfinite(nt_xent_loss(z1.detach().half(), z2.half(), 0.005))


# --------------------------------------------------------------------------------------------
# head and encoder


@pytest.mark.parametrize("feature_size", [12, 24, 48])
def test_head_dimensions_follow_the_feature_size(feature_size: int) -> None:
    from monai.networks.nets import SwinUNETR

    model = SwinSSLModel(feature_size)
    bottleneck = 16 * feature_size
    assert model.head.rotation.in_features == bottleneck and model.head.rotation.out_features == 4
    assert model.head.projection[0].in_features == bottleneck
    assert model.head.projection[-1].out_features == default_projection_dim(feature_size)
    assert model.head.decoder[0].in_channels == bottleneck
    if feature_size == 48:  # the reference's hard-coded sizes are right only here
        assert bottleneck == 768 and default_projection_dim(feature_size) == 512
    # The encoder is SwinUNETR's: same keys and shapes, loads strictly.
    reference = SwinUNETR(in_channels=1, out_channels=2, feature_size=feature_size).swinViT.state_dict()
    ours = model.swinViT.state_dict()
    assert {key: tuple(value.shape) for key, value in ours.items()} == {
        key: tuple(value.shape) for key, value in reference.items()
    }
    with torch.no_grad():
        outputs = model(torch.zeros(2, 1, 32, 32, 32))
    assert outputs.rotation_logits.shape == (2, 4)
    assert outputs.projection.shape == (2, default_projection_dim(feature_size))
    assert outputs.reconstruction.shape == (2, 1, 32, 32, 32)


# --------------------------------------------------------------------------------------------
# pretext views


def test_rotation_label_is_the_rotation_applied_and_views_differ() -> None:
    crops = torch.rand(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    views = make_views(crops, np.random.default_rng(5), torch.Generator().manual_seed(5), MaskSpec())
    assert views.views.shape == (6, 1, 32, 32, 32) and views.rotations.shape == (6,)
    assert set(views.rotations.tolist()) <= {0, 1, 2, 3}
    for i in range(6):
        crop = crops[i % 3]
        k = int(views.rotations[i])
        assert torch.equal(views.targets[i], torch.rot90(crop, k, dims=(1, 2)))
        for other in {0, 1, 2, 3} - {k}:
            assert not torch.equal(views.targets[i], torch.rot90(crop, other, dims=(1, 2)))
        # Outside the mask the view is the turned crop; inside it is not.
        kept = views.masks[i] == 0
        assert torch.equal(views.views[i][kept], views.targets[i][kept])
        assert not torch.equal(views.views[i], views.targets[i]) or not (~kept).any()
    for i in range(3):
        assert not torch.equal(views.views[i], views.views[i + 3]), "the two views of a crop are identical"
    # Same seeds, same views (what exact resume relies on).
    again = make_views(crops, np.random.default_rng(5), torch.Generator().manual_seed(5), MaskSpec())
    assert torch.equal(again.views, views.views) and torch.equal(again.rotations, views.rotations)


def test_quarter_turns_follow_torch_rot90_in_the_i_j_plane() -> None:
    volume = torch.arange(2 * 4 * 4 * 2, dtype=torch.float32).reshape(1, 2, 4, 4, 2).repeat(4, 1, 1, 1, 1)
    turned = rotate_quarter_turns(volume, np.array([0, 1, 2, 3]))
    for k in range(4):
        assert torch.equal(turned[k], torch.rot90(volume[k], k, dims=(1, 2)))
    with pytest.raises(ValueError, match="I == J"):
        rotate_quarter_turns(torch.zeros(1, 1, 32, 64, 32), np.array([1]))


def test_block_masks_cover_at_most_30_percent_in_blocks_of_at_most_a_quarter_axis() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(200):
        mask = block_mask((32, 32, 32), rng, max_fraction=0.3, max_block_fraction=0.25)
        fractions.append(np.count_nonzero(mask) / mask.size)
        assert fractions[-1] <= 0.3
        assert set(np.unique(mask)) <= {0, NOISE, SWAP}
    assert max(fractions) > 0.2 and np.mean(fractions) > 0.05  # masks are not trivially empty
    # A lone block (few blocks, so rarely touching) spans at most 8 = 32 / 4 voxels per axis.
    single = block_mask((32, 32, 32), np.random.default_rng(1), max_fraction=0.004, max_block_fraction=0.25)
    for box in ndimage.find_objects(ndimage.label(single > 0)[0]):
        assert all(s.stop - s.start <= 8 for s in box)


def test_swap_blocks_hold_another_samples_voxels_and_noise_blocks_do_not() -> None:
    crops = torch.stack([torch.full((1, 32, 32, 32), float(i)) for i in range(3)])
    views = make_views(
        crops, np.random.default_rng(2), torch.Generator().manual_seed(2), MaskSpec(fill="swap")
    )
    for i in range(6):
        swapped = views.views[i][views.masks[i] == SWAP]
        assert swapped.numel() > 0
        assert (swapped != float(i % 3)).all(), "swapped voxels must come from another crop"
    noisy = make_views(
        crops, np.random.default_rng(2), torch.Generator().manual_seed(2), MaskSpec(fill="noise")
    )
    values = noisy.views[0][noisy.masks[0] == NOISE]
    assert values.numel() > 0 and len(torch.unique(values)) > 10


# --------------------------------------------------------------------------------------------
# settings


def test_settings_refuse_unknown_keys_and_sizes_swin_cannot_take() -> None:
    from MedSegNASLib.errors import MedSegNASError

    assert resolve_config("tiny").feature_size == 12
    assert resolve_config("full").bottleneck_channels == 768
    with pytest.raises(MedSegNASError, match="unknown pretraining setting.*stepz"):
        resolve_config("tiny", {"stepz": 3})
    with pytest.raises(MedSegNASError, match="divisible by 32"):
        PretrainConfig(roi=[48, 48, 48])
    with pytest.raises(MedSegNASError, match="divisible by 12"):
        PretrainConfig(feature_size=16)
    merged = resolve_config("tiny", {"loss_weights": {"contrastive": 0.5}})
    assert merged.loss_weights == {"rotation": 1.0, "contrastive": 0.5, "reconstruction": 1.0}


# --------------------------------------------------------------------------------------------
# training sanity


def test_each_loss_term_decreases_when_overfitting_one_batch(phantom: Path) -> None:
    config = resolve_config("tiny", {"lr": 5e-4, "warmup_steps": 0, "steps": 1000, "mask_fill": "noise"})
    sources, _ = collect_images(phantom / "imagesUnlabeled")
    sampler = CropSampler(sources, config, preprocessing_spec(config, "CT", 1))
    crops = sampler.batch(0)["images"]
    trainer = Pretrainer(config, in_channels=1, device=torch.device("cpu"))
    history = []
    for _ in range(6):
        result = trainer.train_step(crops, step=0)  # step 0 every time: the same views
        history.append({name: float(value) for name, value in result.terms.items()})
    for name in ("rotation", "contrastive", "reconstruction"):
        first = np.mean([h[name] for h in history[:2]])
        last = np.mean([h[name] for h in history[-2:]])
        assert last < 0.8 * first, f"{name} did not decrease: {[round(h[name], 4) for h in history]}"


# --------------------------------------------------------------------------------------------
# real runs


def test_pretrain_tiny_writes_progress_checkpoints_reconstructions_and_encoder(
    uninterrupted_run: RunDir, phantom: Path
) -> None:
    from monai.networks.nets import SwinUNETR

    run = uninterrupted_run
    status = run.read_status()
    assert status["state"] == "done", status
    progress = events_of(run, "progress")
    assert [event["step"] for event in progress] == list(range(1, 7))
    for event in progress:
        metrics = event["metrics"]
        assert {"loss", "rotation", "contrastive", "reconstruction", "lr"} <= set(metrics)
        assert all(
            math.isfinite(metrics[name]) for name in ("loss", "rotation", "contrastive", "reconstruction")
        )
    assert checkpoint_steps(run) == [2, 4, 6]
    checkpoint = torch.load(run.checkpoints / "last.pt", weights_only=True)
    assert checkpoint["step"] == 6
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "monai_version"} <= set(checkpoint)
    import monai

    assert checkpoint["monai_version"] == monai.__version__
    assert list(run.artifacts.joinpath("tensorboard").glob("events.out.tfevents.*"))

    # encoder.pt: SwinUNETR's encoder keys, loads into a fresh SwinUNETR and changes its encoder.
    weights = load_encoder_weights(run.artifacts / "encoder.pt")
    assert weights.feature_size == 12 and weights.in_channels == 1
    assert all(key.startswith(ENCODER_PREFIX) for key in weights.state_dict)
    network = SwinUNETR(in_channels=1, out_channels=2, feature_size=12)
    encoder_keys = {key for key in network.state_dict() if key.startswith(ENCODER_PREFIX)}
    assert set(weights.state_dict) == encoder_keys
    network.swinViT.load_state_dict(weights.encoder_state_dict(), strict=True)
    assert torch.equal(
        network.state_dict()["swinViT.patch_embed.proj.weight"],
        checkpoint["model"]["swinViT.patch_embed.proj.weight"],
    )

    # Reconstructions: input, masked input and reconstruction lie on their source image.
    folder = run.artifacts / "reconstructions"
    index = json.loads((folder / "reconstructions.json").read_text())
    assert len(index["samples"]) == 2 and index["step"] == 6
    for sample in index["samples"]:
        source = read_volume(sample["source_files"][0])
        files = {role: read_volume(folder / name) for role, name in sample["files"].items()}
        assert {volume.spatial_shape for volume in files.values()} == {(32, 32, 32)}
        assert all(np.allclose(volume.affine, files["input"].affine) for volume in files.values())
        # Every crop voxel's RAS position is a source voxel, with the source's value (HU, windowed).
        grid = np.stack(np.meshgrid(*(np.arange(32),) * 3, indexing="ij"), -1).reshape(-1, 3)
        positions = files["input"].affine @ np.c_[grid, np.ones(len(grid))].T
        source_index = (np.linalg.inv(source.affine) @ positions)[:3]
        assert np.abs(source_index - np.round(source_index)).max() < 1e-3
        source_index = np.round(source_index).astype(int)
        inside = np.all(
            (source_index >= 0) & (source_index < np.array(source.spatial_shape)[:, None]), axis=0
        )
        assert inside.mean() > 0.5
        expected = np.clip(source.array[0][tuple(source_index[:, inside])], -1000, 1000)
        assert np.abs(files["input"].array[0].reshape(-1)[inside] - expected).max() < 0.1
        masked = files["masked"].array != files["input"].array
        assert 0 < masked.mean() <= 0.3
        assert np.isfinite(files["reconstruction"].array).all()


def test_cancelled_and_killed_run_resumes_to_the_uninterrupted_weights(
    uninterrupted_run: RunDir, phantom: Path, settings_file: Path, tmp_path: Path
) -> None:
    """SIGTERM (cancel), resume, SIGKILL, resume: the final weights equal the uninterrupted run's,
    and a checkpoint claiming another MONAI version is resumed with a warning."""
    argv = pretrain_argv(phantom, settings_file)
    run = RunDir(tmp_path / "interrupted")
    launch(argv, run, entry=WORKER_ENTRY)
    wait_for(lambda: checkpoint_steps(run), what="the first checkpoint")
    os.killpg(run.process.pid, signal.SIGTERM)
    assert run.process.wait(timeout=120) == 3  # cancelled, after saving its state
    assert refresh_status(run)["state"] == "cancelled"
    stopped_at = torch.load(run.checkpoints / "last.pt", weights_only=True)["step"]
    assert 2 <= stopped_at < 6

    # Pretend the checkpoint came from MONAI 1.4: the resumed run must say so.
    checkpoint = torch.load(run.checkpoints / "last.pt", weights_only=True)
    checkpoint["monai_version"] = "1.4.0"
    torch.save(checkpoint, run.checkpoints / "last.pt")

    launch([*argv, "--resume"], run, entry=WORKER_ENTRY)
    wait_for(
        lambda: any(step > stopped_at for step in checkpoint_steps(run)), what="a checkpoint after resuming"
    )
    os.killpg(run.process.pid, signal.SIGKILL)
    run.process.wait(timeout=60)
    assert refresh_status(run)["state"] == "failed"  # killed: no final word from the worker
    warnings = [e["message"] for e in events_of(run, "log") if e.get("level") == "warning"]
    assert any("MONAI 1.4.0" in message and "patch-merging" in message for message in warnings), warnings

    assert sslpretrain(["pretrain", "--run-dir", str(run.path), "--resume", "--device", "cpu"]) == 0
    assert run.read_status()["state"] == "done"
    steps = [event["step"] for event in events_of(run, "progress")]
    assert steps[-1] == 6 and steps.count(6) == 1
    interrupted = torch.load(run.checkpoints / "last.pt", weights_only=True)["model"]
    uninterrupted = torch.load(uninterrupted_run.checkpoints / "last.pt", weights_only=True)["model"]
    assert interrupted.keys() == uninterrupted.keys()
    different = [key for key in interrupted if not torch.equal(interrupted[key], uninterrupted[key])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"
    exported = torch.load(run.artifacts / "encoder.pt", weights_only=True)
    reference = torch.load(uninterrupted_run.artifacts / "encoder.pt", weights_only=True)
    assert all(torch.equal(exported[key], reference[key]) for key in reference)


def test_encoder_weights_from_another_monai_version_warn(uninterrupted_run: RunDir, tmp_path: Path) -> None:
    shutil.copy(uninterrupted_run.artifacts / "encoder.pt", tmp_path / "encoder.pt")
    info = json.loads((uninterrupted_run.artifacts / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**info, "monai_version": "1.4.0"}))
    with pytest.warns(MonaiVersionWarning, match="MONAI 1.4.0.*patch-merging"):
        weights = load_encoder_weights(tmp_path / "encoder.pt")
    assert weights.monai_version == "1.4.0"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", MonaiVersionWarning)
        load_encoder_weights(uninterrupted_run.artifacts / "encoder.pt")  # same version: silent


def test_pretrain_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sslpretrain(["pretrain", "--images", str(empty), "--run-dir", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --images") and "no images found" in error
    bad = tmp_path / "bad.json"
    bad.write_text('{"roi": [40, 40, 40]}')
    assert (
        sslpretrain(
            ["pretrain", "--images", str(empty), "--config", str(bad), "--run-dir", str(tmp_path / "r")]
        )
        == 1
    )
    assert "divisible by 32" in capsys.readouterr().err
    if not torch.cuda.is_available():
        phantom_dir = tmp_path / "ph"
        write_phantom_dataset(phantom_dir, cases=1, size=16, seed=0, unlabeled=1, test_cases=0)
        code = sslpretrain(
            ["pretrain", "--images", str(phantom_dir), "--run-dir", str(tmp_path / "c"), "--device", "cuda"]
        )
        assert code == 1
        assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err


def test_two_torchrun_processes_pretrain_together_on_cpu(
    phantom: Path, settings_file: Path, tmp_path: Path
) -> None:
    """``torchrun --nproc_per_node 2`` (DDP, gloo): process 0 writes the run, both train."""
    pytest.importorskip("torch.distributed.run")
    settings = tmp_path / "ddp.json"
    settings.write_text(json.dumps({**RUN_SETTINGS, "steps": 2, "checkpoint_every": 1, "reconstructions": 1}))
    run = RunDir(tmp_path / "ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 500),
        "-m", "SSLPretrainLib.cli", *pretrain_argv(phantom, settings), "--run-dir", str(run.path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run.read_status()["state"] == "done"
    checkpoint = torch.load(run.checkpoints / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and checkpoint["step"] == 2
    assert (run.artifacts / "encoder.pt").is_file()
    assert "2 process(es)" in " ".join(e["message"] for e in events_of(run, "log"))
