"""torchrun plumbing for eval: rank/world, exact float64 sum all-reduce, gradient averaging.

Eval has no DDP wrapper, so TTT averages gradients by hand (spec §8.8). Every helper is a no-op in a
single process, so the same code path runs on one CPU and under torchrun.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torchrun."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: str) -> tuple[int, int, str]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (rank, world, device for this rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        return (*rank_and_world(), device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    """Leave the process group (torchrun aborts ranks that exit while still in one)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (float64 sums stay exact up to float64 rounding)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Average .grad over ranks in place (one flat all-reduce)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of `tensor` over ranks, in place (so every rank takes the same decision)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
