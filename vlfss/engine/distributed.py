"""Plain ``torch.distributed`` helpers for training and evaluation under ``torchrun`` (gloo on CPU, NCCL on GPU).

A single process (no ``WORLD_SIZE`` in the environment, or 1) gets a context with rank 0 of 1 and never
touches ``torch.distributed``, so the same code runs with and without torchrun. ``init_distributed`` joins the
job the environment describes; ``current_context`` describes a process group someone already initialised
(the evaluation harness runs inside either).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process sits in a (possibly one-process) job."""

    rank: int  # global rank 0..world-1
    world: int  # number of processes
    local_rank: int  # rank on this machine (the GPU index under NCCL)
    device: torch.device  # where this rank computes
    backend: str | None  # "gloo", "nccl", or None for a single process
    owns_group: bool = False  # True when this context created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the torchrun job described by the environment, if any; pick gloo (CPU) or NCCL (CUDA).

    ``device``: the configured device; under NCCL each rank uses ``cuda:<LOCAL_RANK>``.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext(0, 1, 0, torch.device(device), None)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device is cuda but no GPU is visible; set segmenter.device=cpu for gloo")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend)
        owns = True
    log.info("rank %d/%d (local %d) on %s with %s", rank, world, local, dev, backend)
    return DistContext(rank, world, local, dev, backend, owns)


def cleanup(ctx: DistContext) -> None:
    """Destroy the process group this context created."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _reduce_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """The mean of a Python float over all ranks (the value itself for one process)."""
    if not ctx.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_reduce_device(ctx))
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


def average_gradients(params: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average ``.grad`` over ranks in place (for updates DDP cannot see, e.g. first-order MAML).

    Parameters without a gradient on this rank contribute zeros, so every rank joins every collective.
    """
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_reduce_device(ctx))
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.device).clone()
        offset += n


def replicas_max_difference(tensors: Iterable[Tensor], ctx: DistContext) -> float:
    """Largest absolute difference of ``tensors`` between any rank and rank 0 (0.0 for one process)."""
    if not ctx.distributed:
        return 0.0
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors]).to(_reduce_device(ctx))
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(obj, ctx: DistContext):
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def current_context() -> DistContext:
    """Where this process sits in the already initialised process group (rank 0 of 1 when there is none).

    Unlike ``init_distributed`` it joins nothing: for code (e.g. ``evaluate``) called inside a job someone else
    started. Collectives run on the current CUDA device under NCCL, on the CPU otherwise.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, 0, torch.device("cpu"), None)
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), device, backend)


def all_reduce_sum(t: Tensor, ctx: DistContext) -> Tensor:
    """The element-wise sum of ``t`` over all ranks, on the CPU (``t`` itself for one process); a collective."""
    if not ctx.distributed:
        return t
    flat = t.to(_reduce_device(ctx))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return flat.cpu()
