"""Several processes for search and training: ``torchrun`` set-up, data sharding, reductions.

One process per device, started by ``torchrun --nproc_per_node N -m MedSegNASLib.cli search ...``.
``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (NCCL on GPUs, gloo on CPUs).
Without those variables everything here degrades to one process and no communication, so the
same job body runs alone or in a group.

Conventions of the jobs that use this module:

* only rank 0 writes the run directory (status, events, checkpoints, artifacts); the other
  ranks run with a :class:`~MedSegNASLib.jobs.JobContext` that writes nothing
  (:func:`run_worker_rank`);
* every rank sees the same sequence of global sample indices each epoch and takes its own slice
  (:class:`EpochSampler`), so a run is reproducible for a given world size;
* a stop request (``torchrun`` forwards SIGTERM to every rank) is agreed on at step boundaries
  with :func:`any_rank`, so all ranks save and stop after the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import MedSegNASError

__all__ = [
    "DistInfo",
    "EpochSampler",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_object",
    "derive_seed",
    "init_distributed",
    "resolve_device",
    "run_worker_rank",
    "shard_evenly",
    "shutdown_distributed",
    "torchrun_rank",
]

#: How long a collective waits for the other ranks before failing (a crashed rank is reported
#: by ``torchrun``, which stops the group; this only bounds a silent hang).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in its group.

    Attributes:
        rank: global rank (0 writes the run directory).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the torch device this process computes on.
        backend: ``"nccl"``, ``"gloo"``, or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_rank() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the ``torchrun`` environment, ``(0, 0, 1)`` without it."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return int(value) if value not in (None, "") else default
        except ValueError:
            raise MedSegNASError(f"environment variable {name}={value!r} is not an integer") from None

    world = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise MedSegNASError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, local, world


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """The device for ``--device auto|cpu|cuda``: ``auto`` takes this rank's GPU when there is one.

    Raises:
        MedSegNASError: ``cuda`` was asked for on a machine where torch sees no GPU.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise MedSegNASError(f"--device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MedSegNASError(
            "--device cuda was asked for, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use --device cpu"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise MedSegNASError(
            f"process with LOCAL_RANK={local_rank} has no GPU of its own: this machine has {count}; "
            f"start at most {count} processes per node"
        )
    return torch.device("cuda", local_rank)


def init_distributed(preference: str = "auto") -> DistInfo:
    """Join the ``torchrun`` process group if there is one, and pick this process's device.

    NCCL is used when the device is a GPU, gloo otherwise. A single process (no ``WORLD_SIZE``
    or ``WORLD_SIZE=1``) joins nothing. Calling it again in a process that already joined returns
    the same description.
    """
    rank, local_rank, world = torchrun_rank()
    device = resolve_device(preference, local_rank)
    if world == 1:
        return DistInfo(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if not dist.is_available():
            raise MedSegNASError("this torch build has no torch.distributed support; run one process")
        init_kwargs: dict[str, Any] = {"backend": backend, "timeout": COLLECTIVE_TIMEOUT}
        if device.type == "cuda":
            init_kwargs["device_id"] = device
        dist.init_process_group(**init_kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def shutdown_distributed() -> None:
    """Leave the process group (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; returned for chaining. Identity for one process."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on at least one rank (every rank must call this together)."""
    if not _active():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; only for objects the job itself made)."""
    if not _active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (e.g. ``(seed, stream, epoch, index)``)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


class EpochSampler(torch.utils.data.Sampler[int]):
    """Sample order of one epoch, shuffled from ``(seed, stream, epoch)`` and sharded by rank.

    Like :class:`torch.utils.data.DistributedSampler`: the global order is padded (by repeating
    its start) to a multiple of ``world_size`` so that every rank takes the same number of
    samples, and rank ``r`` takes positions ``r, r + world_size, ...``. Unlike it, iteration can
    start part-way through an epoch (:meth:`set_epoch` with ``start``), which is what an exact
    resume from a mid-epoch checkpoint needs.

    Args:
        num_samples: size of the dataset.
        seed: run seed.
        stream: tells independent sample streams of one run apart (e.g. weights vs architecture).
        rank, world_size: this process's slice.
        shuffle: shuffle each epoch (else the natural order).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        stream: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples < 1:
            raise ValueError("EpochSampler needs at least one sample")
        self.num_samples = int(num_samples)
        self.seed, self.stream = int(seed), int(stream)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        """Samples this rank takes in a whole epoch."""
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next iteration yields ``epoch``'s samples from this rank's position ``start`` on."""
        self.epoch, self.start = int(epoch), int(start)

    def global_order(self, epoch: int) -> list[int]:
        """The padded sample order of ``epoch`` over all ranks."""
        if self.shuffle:
            rng = np.random.default_rng(derive_seed(self.seed, self.stream, epoch))
            order = rng.permutation(self.num_samples).tolist()
        else:
            order = list(range(self.num_samples))
        total = len(self) * self.world_size
        return (order * (-(-total // len(order))))[:total]

    def __iter__(self) -> Iterator[int]:
        mine = self.global_order(self.epoch)[self.rank :: self.world_size]
        return iter(mine[self.start :])


def shard_evenly(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s share of ``items`` without padding (for metrics that are summed over ranks)."""
    return list(items[rank::world_size])


def run_worker_rank(body: Callable[[Any], Any], resuming: bool) -> int:
    """Run a job body on a rank other than 0: no run directory, no output, SIGTERM = stop request.

    Rank 0 runs the same body under :func:`~MedSegNASLib.jobs.run_job_command` and owns the run
    directory. Here progress and logs go nowhere (rank 0 reports them), checkpoints are not
    written, and SIGTERM/SIGINT set the stop flag that the body agrees on with rank 0 at the next
    step boundary.

    Returns:
        The job exit code: 0 done, 1 failed, 3 cancelled.
    """
    from ..jobs.context import JobCancelled, JobContext, ProgressDisplay
    from ..jobs.runner import EXIT_CANCELLED, EXIT_DONE, EXIT_FAILED

    with open(os.devnull, "w") as quiet:
        ctx = JobContext(None, resuming=resuming, display=ProgressDisplay(stream=quiet))
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(
                    signum, lambda *_: ctx.request_stop("stop requested (signal)")
                )
        try:
            body(ctx)
        except JobCancelled:
            return EXIT_CANCELLED
        except MedSegNASError as exc:
            print(f"error (rank {os.environ.get('RANK', '?')}): {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    return EXIT_DONE
