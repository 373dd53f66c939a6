"""torch.distributed setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

NCCL on GPU, gloo on CPU. Without torchrun (or with WORLD_SIZE=1) nothing is initialized and the job runs as a
single process on CUDA when present, else on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistContext:
    """Join the process group torchrun describes in the environment (NCCL on GPU, gloo on CPU), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world <= 1:
        return DistContext(0, 1, 0, device, False)
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, False)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def teardown_distributed(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.barrier()  # no rank tears gloo down while another still talks to it (a crash at exit otherwise)
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean over ranks (SUM then divide: gloo has no AVG)."""
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t = t / world_size
    return t
