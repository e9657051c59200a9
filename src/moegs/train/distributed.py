"""Data-parallel training with ``torch.distributed`` (launch with ``torchrun``).

Every rank holds the whole model, renders different views, and the ranks
average their gradients after each backward pass. Densification statistics
are summed across ranks before the strategy decides, and every rank draws the
same random numbers, so all ranks clone, split and prune identically and the
models stay bit-identical. NCCL is used on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["init_from_env", "rank", "world_size", "is_main", "average_gradients", "all_reduce_"]


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def requested_world_size() -> int:
    """The world size torchrun asked for (``WORLD_SIZE``; 1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    Returns this rank's device, or ``None`` when not launched distributed.
    """
    if requested_world_size() <= 1:
        return None
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


@torch.no_grad()
def average_gradients(params: Iterable[Tensor]) -> None:
    """Average ``.grad`` of ``params`` over ranks (one flat all-reduce; missing grads count as zero)."""
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for p in params:
        k = p.numel()
        p.grad = flat[offset : offset + k].view_as(p).clone()
        offset += k


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``sum`` or ``max``) when distributed; a no-op otherwise."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t
