"""Self-supervised pretraining of a Swin UNETR encoder as a job of the MedSegNAS job protocol.

One training step (:meth:`Pretrainer.train_step`):

1. ``N`` crops ``(N, C, X, Y, Z)`` (from :class:`~.volumes.CropSampler`) become ``2N`` views:
   each turned by a random quarter turn and block-masked (:func:`~.augment.make_views`);
2. one forward pass of the ``2N`` views through encoder + head (both views in one batch, under
   autocast on CUDA);
3. ``w_rot CE + w_con NT-Xent + w_rec L1`` (:class:`~.losses.SSLLoss`);
4. backward (through a gradient scaler for float16), gradient clipping, AdamW, warm-up cosine
   learning rate. A step whose gradient is not finite is skipped (the scaler does this for
   float16; too many in a row fail the run with a clear message).

Every random choice of step ``s`` on process ``r`` is seeded by ``(seed, s, r)``, and a checkpoint
holds the model, optimiser, schedule, scaler, RNG state, step and MONAI version: a run stopped
(cancel, kill, crash) and resumed from its last checkpoint computes the same weights as one that
never stopped (bit-identical on CPU with the same thread count; on GPU up to non-deterministic
kernels unless ``deterministic`` is set).

Run directory (``RUN``): ``checkpoints/last.pt``; ``artifacts/tensorboard/`` (TensorBoard
logs, when the ``tensorboard`` package is installed); ``artifacts/reconstructions/`` (a few
crops as NIfTI: input, masked input and reconstruction, in the source image's physical space);
``artifacts/encoder.pt`` + ``encoder.json`` (see :mod:`.encoder`).

Several processes (``torchrun``, DDP; NCCL on GPUs, gloo on CPU): every process trains on its
own crops; process 0 alone writes the run directory. The contrastive negatives are the
process's own batch (as in the reference).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from MedSegNASLib.data.io import write_volume
from MedSegNASLib.data.preprocessing import PreprocessingSpec
from MedSegNASLib.data.volume import Volume
from MedSegNASLib.errors import JobError, MedSegNASError
from MedSegNASLib.jobs import JobCancelled, JobContext

from .augment import MaskSpec, make_views
from .config import LOSS_NAMES, PretrainConfig
from .encoder import export_encoder, monai_version, warn_if_other_monai
from .heads import SwinSSLModel
from .losses import SSLLoss
from .volumes import (
    NOISE_STREAM,
    SNAPSHOT_STREAM,
    VIEW_STREAM,
    CropSampler,
    ImageSource,
    StepDataset,
    preprocessing_spec,
    step_rng,
    step_torch_seed,
)

#: Job kind: names run directories ``pretrain-<date>-<id>``.
JOB_KIND = "pretrain"
CHECKPOINT_FORMAT = "sslpretrain-checkpoint-1"
#: Steps in a row with a non-finite gradient (without a gradient scaler) before the run fails.
MAX_NONFINITE_STEPS = 20


# -- processes and devices ------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands among the ``torchrun`` processes (``RANK``, ``WORLD_SIZE``, ...)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistributedInfo:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def select_device(name: str, dist: DistributedInfo | None = None) -> torch.device:
    """``auto`` (CUDA, else Apple MPS, else CPU), ``cpu``, ``cuda`` or ``mps``; with several
    processes on CUDA each takes GPU ``LOCAL_RANK``."""
    dist = dist or DistributedInfo()
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps and not dist.enabled else "cpu"
    if name == "cuda":
        if not cuda:
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise MedSegNASError(
                f"--device cuda: PyTorch ({torch.__version__}, {build}) sees no CUDA GPU; "
                "use --device cpu, or install a CUDA build of PyTorch"
            )
        if dist.local_rank >= torch.cuda.device_count():
            raise MedSegNASError(
                f"process LOCAL_RANK {dist.local_rank} has no GPU: only {torch.cuda.device_count()} visible"
            )
        return torch.device("cuda", dist.local_rank)
    if name == "mps":
        if not mps:
            raise MedSegNASError("--device mps: no Apple GPU (MPS) available; use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MedSegNASError(f"unknown device {name!r}; use auto, cpu, cuda or mps")


def init_distributed(dist: DistributedInfo, device: torch.device) -> None:
    """Join the ``torchrun`` process group (NCCL for CUDA, gloo otherwise); no-op for one process."""
    if not dist.enabled or torch.distributed.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


# -- model, optimiser and the step -----------------------------------------------------------


@dataclass
class StepResult:
    """One step's unweighted loss terms and total (0-d tensors on the device), gradient norm
    before clipping, and whether the optimiser applied the step."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    applied: bool | None


class Pretrainer:
    """Model, optimiser, learning-rate schedule, gradient scaler and the training step.

    Args:
        config: settings.
        in_channels: image channels.
        device: where to train.
        dist: process group position (the model is wrapped in DDP when ``world_size > 1``;
            :func:`init_distributed` must have been called).
    """

    def __init__(
        self,
        config: PretrainConfig,
        in_channels: int,
        device: torch.device,
        dist: DistributedInfo | None = None,
    ) -> None:
        from monai.optimizers import WarmupCosineSchedule

        self.config = config
        self.device = device
        self.dist = dist or DistributedInfo()
        torch.manual_seed(config.seed)  # the same initial weights everywhere
        self.model = SwinSSLModel(
            config.feature_size,
            in_channels,
            config.resolved_projection_dim,
            use_checkpoint=config.use_checkpoint,
        ).to(device)
        self.network: torch.nn.Module = self.model
        if self.dist.enabled:
            device_ids = [device.index] if device.type == "cuda" else None
            self.network = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = WarmupCosineSchedule(
            self.optimizer, warmup_steps=config.warmup_steps, t_total=config.steps, end_lr=config.end_lr
        )
        self.amp = device.type == "cuda" and config.amp
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.loss = SSLLoss(config.loss_weights, config.temperature)
        self.mask_spec = MaskSpec(config.mask_max_fraction, config.mask_max_block_fraction, config.mask_fill)
        self.step = 0
        self.nonfinite_in_a_row = 0

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def views(self, crops: torch.Tensor, step: int):
        """The pretext views of step ``step`` (seeded by the step: see :mod:`.augment`)."""
        seed, rank = self.config.seed, self.dist.rank
        generator = torch.Generator(device=crops.device)
        generator.manual_seed(step_torch_seed(seed, step, rank, NOISE_STREAM))
        return make_views(crops, step_rng(seed, step, rank, VIEW_STREAM), generator, self.mask_spec)

    def train_step(self, crops: torch.Tensor, step: int) -> StepResult:
        """One optimisation step on ``crops`` ``(N, C, X, Y, Z)`` (on :attr:`device`) as step ``step``."""
        self.network.train()
        views = self.views(crops, step)
        with self.autocast():
            outputs = self.network(views.views)
            total, terms = self.loss(outputs, views.rotations, views.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        applied: bool | None = None
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the step itself when the gradient is not finite
            self.scaler.update()
        elif bool(torch.isfinite(grad_norm)):
            self.optimizer.step()
            applied, self.nonfinite_in_a_row = True, 0
        else:
            applied = False
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
                raise MedSegNASError(
                    f"the gradient was not finite for {MAX_NONFINITE_STEPS} steps in a row (up to step {step + 1}); "
                    f"lower the learning rate (now {self.config.lr}) or check the images' intensities"
                )
        self.scheduler.step()
        self.step = step + 1
        detached = {name: value.detach() for name, value in terms.items()}
        return StepResult(total.detach(), detached, grad_norm.detach(), applied)

    @torch.no_grad()
    def reconstruct(self, views: torch.Tensor) -> torch.Tensor:
        """The model's reconstruction of ``views`` (float32), in evaluation mode."""
        self.model.eval()
        try:
            with self.autocast():
                return self.model(views).reconstruction.float()
        finally:
            self.model.train()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (loads with ``torch.load(weights_only=True)``)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "config": self.config.to_dict(),
            "feature_size": self.config.feature_size,
            "in_channels": self.model.in_channels,
            "world_size": self.dist.world_size,
            "monai_version": monai_version(),
            "torch_version": str(torch.__version__),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (the model must have the same architecture)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(state["step"])
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))


# -- the job ----------------------------------------------------------------------------------


@dataclass
class PretrainPlan:
    """What :func:`run_pretraining` needs, resolved by the command line.

    Attributes:
        config: settings.
        sources: the images.
        modality: ``CT`` or ``MR`` (decides the intensity normalisation).
        in_channels: image channels.
        device: where to train.
        dist: this process among the ``torchrun`` processes.
        checkpoint_file: the run's ``last.pt``; processes other than 0 read it to resume.
        resume: continue from ``checkpoint_file``.
    """

    config: PretrainConfig
    sources: list[ImageSource]
    modality: str
    in_channels: int
    device: torch.device
    dist: DistributedInfo = DistributedInfo()
    checkpoint_file: Path | None = None
    resume: bool = False

    @property
    def spec(self) -> PreprocessingSpec:
        return preprocessing_spec(self.config, self.modality, self.in_channels)


def _load_state(ctx: JobContext, plan: PretrainPlan) -> dict[str, Any] | None:
    if plan.dist.is_main:
        return ctx.load_checkpoint() if ctx.resuming else None
    if not plan.resume or plan.checkpoint_file is None or not plan.checkpoint_file.is_file():
        return None
    return torch.load(plan.checkpoint_file, map_location="cpu", weights_only=True)


def _check_resumable(state: dict[str, Any], plan: PretrainPlan, ctx: JobContext) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise JobError(f"the checkpoint is not an sslpretrain checkpoint (format {state.get('format')!r})")
    if state.get("config") != plan.config.to_dict():
        changed = sorted(
            key
            for key in set(state.get("config", {})) | set(plan.config.to_dict())
            if state.get("config", {}).get(key) != plan.config.to_dict().get(key)
        )
        raise JobError(
            f"this run was started with other settings ({', '.join(changed)} differ); resume it with the "
            "same --preset/--config (or with --resume alone), or start a new run"
        )
    if state.get("images") is not None and state["images"] != [s.name for s in plan.sources]:
        raise JobError(
            "the images differ from those this run was started with; resume with the same --images, "
            "or start a new run"
        )
    if state.get("world_size", 1) != plan.dist.world_size:
        ctx.log(
            f"resuming a run of {state.get('world_size', 1)} process(es) with {plan.dist.world_size}: "
            "the crops of each step change from here on",
            "warning",
        )
    message = warn_if_other_monai(state.get("monai_version"), "the checkpoint")
    if message and plan.dist.is_main:
        ctx.log(message, "warning")


def _open_tensorboard(ctx: JobContext, start_step: int):
    if ctx.run_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        ctx.log("TensorBoard logs are off: install the 'tensorboard' package to get them", "warning")
        return None
    # purge_step drops points a killed process logged after its last checkpoint.
    return SummaryWriter(log_dir=str(ctx.run_dir.artifacts / "tensorboard"), purge_step=start_step or None)


def _all_reduce(values: torch.Tensor, dist: DistributedInfo, op: str = "sum") -> torch.Tensor:
    if dist.enabled:
        reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(values, op=reduce_op)
    return values


def denormalise(array: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """Normalised intensities back to the image's units where the normalisation is a CT window
    (HU, clipped to the window); z-scored intensities stay as they are."""
    intensity = spec.intensity
    if intensity.kind != "ct_window":
        return array
    scale = (intensity.a_max - intensity.a_min) / (intensity.b_max - intensity.b_min)
    return (array - intensity.b_min) * scale + intensity.a_min


def write_reconstructions(
    trainer: Pretrainer, sampler: CropSampler, spec: PreprocessingSpec, folder: Path, count: int, step: int
) -> list[dict[str, Any]]:
    """Save ``count`` fixed crops as NIfTI: ``sample<i>_input``, ``_masked`` and ``_reconstruction``.

    The crops keep the source's orientation (no quarter turn) and carry their affine, so each
    file lies on its source image in Slicer; CT intensities are written in HU. Returns one
    record per sample (source name, files) also written to ``reconstructions.json``.
    """
    crops = sampler.snapshot_crops(count)
    batch = torch.from_numpy(np.stack([crop for crop, _, _ in crops])).to(trainer.device)
    generator = torch.Generator(device=batch.device)
    generator.manual_seed(step_torch_seed(trainer.config.seed, 0, 0, SNAPSHOT_STREAM))
    rng = step_rng(trainer.config.seed, 1, 0, SNAPSHOT_STREAM)
    views = make_views(
        batch, rng, generator, trainer.mask_spec, turns=np.zeros(2 * len(crops), dtype=np.int64)
    )
    n = len(crops)
    reconstruction = trainer.reconstruct(views.views[:n]).cpu().numpy()
    masked, target = views.views[:n].cpu().numpy(), views.targets[:n].cpu().numpy()
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (_, affine, source) in enumerate(crops):
        files = {}
        for role, array in (
            ("input", target[i]),
            ("masked", masked[i]),
            ("reconstruction", reconstruction[i]),
        ):
            path = folder / f"sample{i}_{role}.nii.gz"
            write_volume(Volume(denormalise(array, spec).astype(np.float32), affine), path)
            files[role] = path.name
        records.append(
            {
                "sample": i,
                "source": source.name,
                "source_files": [str(path) for path in source.paths],
                "files": files,
                "masked_fraction": float((views.masks[i] > 0).float().mean()),
            }
        )
    index = {"step": step, "samples": records}
    (folder / "reconstructions.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return records


def _tensorboard_images(writer, folder: Path, records: list[dict[str, Any]], step: int) -> None:
    """The middle axial slice of input | masked | reconstruction of each sample, side by side."""
    from MedSegNASLib.data.io import read_volume

    for record in records:
        slices = []
        for role in ("input", "masked", "reconstruction"):
            array = read_volume(folder / record["files"][role]).array[0]
            slices.append(array[:, :, array.shape[2] // 2].T[::-1])
        image = np.concatenate(slices, axis=1)
        low, high = np.percentile(slices[0], [0.5, 99.5])
        image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
        writer.add_image(f"reconstruction/sample{record['sample']}", image[None].copy(), step)


def _report(
    ctx: JobContext, writer, result: StepResult, trainer: Pretrainer, step: int, total: int, skipped: int
) -> dict[str, float]:
    values = torch.stack([result.total.float(), *(result.terms[name].float() for name in LOSS_NAMES)])
    values = _all_reduce(values, trainer.dist) / trainer.dist.world_size
    losses = dict(zip(("loss", *LOSS_NAMES), (float(v) for v in values.cpu()), strict=True))
    metrics = {**losses, "lr": trainer.lr, "grad_norm": float(result.grad_norm)}
    if skipped:
        metrics["skipped_steps"] = skipped
    if trainer.dist.is_main:
        ctx.progress(step, total, stage="pretrain", **metrics)
        if writer is not None:
            for name, value in metrics.items():
                group = "loss" if name in losses else "train"
                writer.add_scalar(f"{group}/{name}", value, step)
    return metrics


def run_pretraining(ctx: JobContext, plan: PretrainPlan) -> dict[str, Any]:
    """The job body: pretrain, checkpoint, report, export (see the module docstring).

    Process 0 reports through ``ctx`` and writes the run directory; the other processes only
    train. Raises :class:`JobCancelled` after saving a checkpoint when a stop is requested (on
    any process).
    """
    config, device = plan.config, plan.device
    deterministic = config.deterministic if config.deterministic is not None else device.type == "cpu"
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _pretrain(ctx, plan)
    finally:  # the setting is process-wide: leave it as found (a GUI or test process goes on)
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _pretrain(ctx: JobContext, plan: PretrainPlan) -> dict[str, Any]:
    config, dist, device = plan.config, plan.dist, plan.device
    main = dist.is_main
    spec = plan.spec
    sampler = CropSampler(plan.sources, config, spec, rank=dist.rank, world_size=dist.world_size)
    trainer = Pretrainer(config, plan.in_channels, device, dist)
    state = _load_state(ctx, plan)
    if state is not None:
        _check_resumable(state, plan, ctx)
        trainer.load_state_dict(state)
        if main:
            ctx.log(f"resuming at step {trainer.step} of {config.steps}")
    image_names = [source.name for source in plan.sources]
    start, total = trainer.step, config.steps
    if main and start == 0:
        parameters = sum(p.numel() for p in trainer.model.parameters())
        ctx.log(
            f"pretraining a Swin UNETR encoder (feature size {config.feature_size}, {parameters / 1e6:.1f} M "
            f"parameters with the head) on {len(plan.sources)} image(s), {plan.modality}, crops "
            f"{'x'.join(map(str, config.roi))}, batch {config.batch_size} x {dist.world_size} process(es), "
            f"{device.type}{' with AMP' if trainer.amp else ''}"
        )
    writer = _open_tensorboard(ctx, start) if main else None
    recon_dir = ctx.run_dir.artifacts / "reconstructions" if ctx.run_dir is not None else None

    def save_checkpoint() -> None:
        if main:
            ctx.save_checkpoint({**trainer.state_dict(), "images": image_names, "modality": plan.modality})

    def snapshot(step: int) -> None:
        if main and recon_dir is not None and config.reconstructions > 0:
            records = write_reconstructions(trainer, sampler, spec, recon_dir, config.reconstructions, step)
            ctx.artifact(recon_dir, "reconstructions", step=step, samples=len(records))
            if writer is not None:
                _tensorboard_images(writer, recon_dir, records, step)

    loader = torch.utils.data.DataLoader(
        StepDataset(sampler, start, total),
        batch_size=None,
        shuffle=False,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    skipped = 0
    metrics: dict[str, float] = {}
    try:
        for step, batch in zip(range(start, total), loader, strict=True):
            result = trainer.train_step(batch["images"].to(device, non_blocking=True), step)
            done = step + 1
            if result.applied is False:
                skipped += 1
            stop_flag = torch.tensor([1.0 if ctx.stop_requested else 0.0], device=device)
            stop = bool(_all_reduce(stop_flag, dist, "max").item())
            if done % config.log_every == 0 or done == total or done % config.checkpoint_every == 0 or stop:
                metrics = _report(ctx, writer, result, trainer, done, total, skipped)
            if done % config.checkpoint_every == 0 or done == total or stop:
                save_checkpoint()
            if config.reconstruction_every and done % config.reconstruction_every == 0 and done < total:
                snapshot(done)
            if stop:
                if writer is not None:
                    writer.flush()
                if not ctx.stop_requested:
                    ctx.request_stop("stop requested on another process")
                ctx.raise_if_stop_requested()
                raise JobCancelled("stop requested")  # pragma: no cover - raise_if_stop_requested raised
        if not main:
            return {"steps": total}
        snapshot(total)
        artifacts = ctx.run_dir.artifacts if ctx.run_dir is not None else None
        result_info: dict[str, Any] = {"steps": total, "losses": metrics, "monai_version": monai_version()}
        if artifacts is not None:
            encoder_path = export_encoder(
                trainer.model.swinViT,
                artifacts / "encoder.pt",
                feature_size=config.feature_size,
                in_channels=plan.in_channels,
                extra={"steps": total, "modality": plan.modality, "preprocessing": spec.to_dict()},
            )
            ctx.artifact(
                encoder_path, "encoder", feature_size=config.feature_size, in_channels=plan.in_channels
            )
            result_info["encoder"] = ctx.run_dir.relative(encoder_path)
        return result_info
    finally:
        if writer is not None:
            writer.close()
