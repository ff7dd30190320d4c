"""Throughput and peak memory of an SSL pretraining step: SSLPretrain's against the research code's.

    python benchmarks/ssl_bench.py                                 # 64^3, feature size 24, batch 2
    python benchmarks/ssl_bench.py --feature-size 48 --steps 10    # the published model, on a GPU

Both steps train the same Swin UNETR encoder (MONAI ``SwinTransformer``) with the three pretext
tasks on the same random crops, with the same batch, optimiser (AdamW, warm-up cosine), gradient
clipping and, on CUDA, float16 autocast with a gradient scaler:

``ours``
    :class:`SSLPretrainLib.pretrain.Pretrainer.train_step`: both views of every crop in one
    forward pass, quarter turns and block masks made batched (one ``rot90`` per distinct turn,
    one ``where`` per fill), log-sum-exp NT-Xent in float32, pooled bottleneck head.
``reference``
    written here the way Tang et al.'s published pretraining code does it (an imitation, not
    their code): a Python loop over samples for the turns (``rot_rand``) and for the block
    masking (``aug_rand``: one noise tensor, min-max scaled, per block; a second pass copying
    another sample's blocks), one forward pass per view, the contrastive loss as
    ``exp(sim / T)`` over a broadcast cosine-similarity matrix without subtracting the maximum,
    a head reading bottleneck tokens 0 and 1 and an instance-norm decoder.

Crops are made before timing (data loading is not measured). Each method runs in its own fresh
process so that one's memory does not hide the other's. Reported: crops ("volumes") per second
over the timed steps after warm-up, and peak memory: on CUDA ``torch.cuda.max_memory_allocated``,
on CPU the growth of the process' peak resident memory during the timed steps (Linux ``VmHWM``
reset through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

# -- memory of this process --------------------------------------------------------------------


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- the reference step (an imitation of the research code's style) -----------------------------


def _reference_model(feature_size: int):
    """Swin encoder + the research code's head: tokens 0 / 1 of the bottleneck, instance-norm decoder."""
    import torch
    from SSLPretrainLib.encoder import build_swin_encoder
    from torch import nn

    class ReferenceSSLHead(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.swinViT = build_swin_encoder(feature_size, 1)
            self.rotation_head = nn.Linear(dim, 4)
            self.contrastive_head = nn.Linear(dim, 512)
            layers: list[nn.Module] = []
            width = dim
            for _ in range(5):
                layers += [
                    nn.Conv3d(width, width // 2, kernel_size=3, stride=1, padding=1),
                    nn.InstanceNorm3d(width // 2),
                    nn.LeakyReLU(),
                    nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                ]
                width //= 2
            layers.append(nn.Conv3d(width, 1, kernel_size=1, stride=1))
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            x_out = self.swinViT(x.contiguous())[4]
            _, c, h, w, d = x_out.shape
            tokens = x_out.flatten(start_dim=2, end_dim=4).transpose(1, 2)
            x_rot = self.rotation_head(tokens[:, 0])
            x_contrastive = self.contrastive_head(tokens[:, 1])
            x_rec = self.conv(x_out.flatten(start_dim=2, end_dim=4).view(-1, c, h, w, d))
            return x_rot, x_contrastive, x_rec

    return ReferenceSSLHead(16 * feature_size), torch


def _reference_rot_rand(x_s, device):
    import numpy as np
    import torch

    img_n = x_s.size()[0]
    x_aug = x_s.detach().clone()
    x_rot = torch.zeros(img_n).long().to(device)
    for i in range(img_n):
        x = x_s[i]
        orientation = np.random.randint(0, 4)
        if orientation:
            x = x.rot90(orientation, (2, 3))
        x_aug[i] = x
        x_rot[i] = orientation
    return x_aug, x_rot


def _reference_patch_drop(x, device, x_rep=None, max_drop=0.3, max_block_sz=0.25, tolr=0.05):
    import numpy as np
    import torch

    c, h, w, z = x.size()
    n_drop_pix = np.random.uniform(0, max_drop) * h * w * z
    mx_blk_height, mx_blk_width, mx_blk_slices = (
        int(h * max_block_sz),
        int(w * max_block_sz),
        int(z * max_block_sz),
    )
    tolr = (int(tolr * h), int(tolr * w), int(tolr * z))
    total_pix = 0
    while total_pix < n_drop_pix:
        rnd_r, rnd_c, rnd_s = (
            random.randint(0, h - tolr[0]),
            random.randint(0, w - tolr[1]),
            random.randint(0, z - tolr[2]),
        )
        rnd_h = min(random.randint(tolr[0], mx_blk_height) + rnd_r, h)
        rnd_w = min(random.randint(tolr[1], mx_blk_width) + rnd_c, w)
        rnd_z = min(random.randint(tolr[2], mx_blk_slices) + rnd_s, z)
        if x_rep is None:
            noise = torch.empty(
                (c, rnd_h - rnd_r, rnd_w - rnd_c, rnd_z - rnd_s), dtype=x.dtype, device=device
            ).normal_()
            noise = (noise - torch.min(noise)) / (torch.max(noise) - torch.min(noise))
            x[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z] = noise
        else:
            x[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z] = x_rep[:, rnd_r:rnd_h, rnd_c:rnd_w, rnd_s:rnd_z]
        total_pix += (rnd_h - rnd_r) * (rnd_w - rnd_c) * (rnd_z - rnd_s)
    return x


def _reference_aug_rand(samples, device):
    img_n = samples.size()[0]
    x_aug = samples.detach().clone()
    for i in range(img_n):
        x_aug[i] = _reference_patch_drop(x_aug[i], device)
        idx_rnd = random.randint(0, img_n - 1)
        if idx_rnd != i:
            x_aug[i] = _reference_patch_drop(x_aug[i], device, x_aug[idx_rnd])
    return x_aug


def _reference_contrast(x_i, x_j, temperature: float):
    import torch
    from torch.nn import functional as F

    batch_size = x_i.shape[0]
    neg_mask = (~torch.eye(batch_size * 2, batch_size * 2, dtype=bool, device=x_i.device)).float()
    z = torch.cat([F.normalize(x_i, dim=1), F.normalize(x_j, dim=1)], dim=0)
    sim = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    pos = torch.cat([torch.diag(sim, batch_size), torch.diag(sim, -batch_size)], dim=0)
    nom = torch.exp(pos / temperature)
    denom = neg_mask * torch.exp(sim / temperature)
    return torch.sum(-torch.log(nom / torch.sum(denom, dim=1))) / (2 * batch_size)


def _reference_stepper(config, device):
    import torch
    from monai.optimizers import WarmupCosineSchedule
    from torch.nn import functional as F

    torch.manual_seed(config.seed)
    model, _ = _reference_model(config.feature_size)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = WarmupCosineSchedule(optimizer, warmup_steps=config.warmup_steps, t_total=config.steps)
    amp = device.type == "cuda" and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(x, _step: int):
        model.train()
        x1, rot1 = _reference_rot_rand(x, device)
        x2, rot2 = _reference_rot_rand(x, device)
        x1_augment = _reference_aug_rand(x1, device)
        x2_augment = _reference_aug_rand(x2, device)
        with torch.autocast(device_type=device.type, enabled=amp):
            rot1_p, contrastive1_p, rec_x1 = model(x1_augment)
            rot2_p, contrastive2_p, rec_x2 = model(x2_augment)
            rot_p, rots = torch.cat([rot1_p, rot2_p], dim=0), torch.cat([rot1, rot2], dim=0)
            imgs_recon, imgs = torch.cat([rec_x1, rec_x2], dim=0), torch.cat([x1, x2], dim=0)
            loss = (
                F.cross_entropy(rot_p, rots)
                + _reference_contrast(contrastive1_p, contrastive2_p, config.temperature)
                + F.l1_loss(imgs_recon, imgs)
            )
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss.detach()

    return step


def _our_stepper(config, device):
    from SSLPretrainLib.pretrain import Pretrainer

    trainer = Pretrainer(config, in_channels=1, device=device)
    return lambda x, step: trainer.train_step(x, step).total


# -- one method in this process --------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict:
    import torch
    from SSLPretrainLib.config import resolve_config
    from SSLPretrainLib.pretrain import select_device

    device = select_device(args.device)
    config = resolve_config(
        "full",
        {
            "feature_size": args.feature_size,
            "roi": [args.roi] * 3,
            "batch_size": args.batch,
            "steps": 1000,
            "warmup_steps": 10,
            "amp": not args.no_amp,
        },
    )
    random.seed(0)
    import numpy as np

    np.random.seed(0)
    generator = torch.Generator().manual_seed(0)
    crops = [
        torch.rand(args.batch, 1, *config.roi, generator=generator) for _ in range(args.steps + args.warmup)
    ]
    step = (_our_stepper if args.worker == "ours" else _reference_stepper)(config, device)

    def run(index: int):
        loss = step(crops[index].to(device), index)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return loss

    for index in range(args.warmup):
        run(index)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _status_mib("VmRSS:")
    reset = _reset_peak_rss()
    losses = []
    start = time.perf_counter()
    for index in range(args.warmup, args.warmup + args.steps):
        losses.append(float(run(index)))
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        memory_kind = "CUDA max allocated"
    else:
        peak = _status_mib("VmHWM:")
        peak_mib = (
            peak - rss_before if reset and peak is not None and rss_before is not None else float("nan")
        )
        memory_kind = "peak RSS growth"
    return {
        "method": args.worker,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "amp": device.type == "cuda" and config.amp,
        "seconds_per_step": seconds / args.steps,
        "volumes_per_s": args.batch * args.steps / seconds,
        "peak_mib": peak_mib,
        "memory_kind": memory_kind,
        "losses_finite": all(np.isfinite(losses)),
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi", type=int, default=64, help="crop side in voxels (default: 64)")
    parser.add_argument("--feature-size", type=int, default=24, help="Swin feature size (default: 24)")
    parser.add_argument("--batch", type=int, default=2, help="crops per step (two views each; default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.roi < 64 or args.roi % 32:
        parser.error(
            "--roi must be a multiple of 32 and at least 64 (the reference head reads two bottleneck tokens)"
        )
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0

    results = {}
    for method in ("ours", "reference"):
        command = [sys.executable, __file__, "--worker", method, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        results[method] = json.loads(
            next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:]
        )

    ours, reference = results["ours"], results["reference"]
    print(
        f"SSL pretraining step, {args.roi}^3 crops, feature size {args.feature_size}, batch {args.batch} "
        f"(x2 views), {args.steps} timed step(s) after {args.warmup}; device {ours['device']}, "
        f"AMP {'on' if ours['amp'] else 'off'}, {ours['threads']} CPU thread(s)"
    )
    print(f"{'method':<11}{'s/step':>9}{'volumes/s':>11}{'peak MiB':>11}  memory measured as")
    for method, res in results.items():
        print(
            f"{method:<11}{res['seconds_per_step']:>9.3f}{res['volumes_per_s']:>11.3f}{res['peak_mib']:>11.0f}"
            f"  {res['memory_kind']}{'' if res['losses_finite'] else '  (NON-FINITE LOSS)'}"
        )
    print(
        f"ratio ours/reference: throughput {ours['volumes_per_s'] / reference['volumes_per_s']:.2f}x, "
        f"peak memory {ours['peak_mib'] / reference['peak_mib']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
