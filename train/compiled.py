"""How the training job wraps its model for the step: torch.compile inside DDP, and the warm-up compile.

Order: DDP(torch.compile(model, fullgraph=True, dynamic=False)). The model compiles lazily on its first call,
which runs inside DDP's forward; dynamo then sees the active DDP module and its DDPOptimizer splits the one
captured graph at DDP's gradient-bucket boundaries (torch._dynamo.config.optimize_ddp, on by default). Each
piece gets its own compiled backward, so a bucket's all-reduce is launched as soon as the backward of the
layers it holds has run and overlaps the backward of the layers before them. The other order,
torch.compile(DDP(model)), cannot keep fullgraph=True: dynamo cannot trace DDP's own forward (logging, hooks).
tests/test_compiled_training.py counts the pieces the compiler receives.

The first call compiles (minutes for the seed model with Inductor); `warm_up` makes that call on a batch of
zeros of the training shape before the first timed step, so the compile time is reported apart and the
train_time_ms of the steps (and the wall-clock cap) counts training only. It takes no data from the loader
and leaves no gradient behind, so the run's losses are those of a run without it.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def training_module(model: nn.Module, *, compile: bool, backend="inductor", ddp: bool = False,
                    device: torch.device | None = None, bucket_cap_mb: float | None = None) -> nn.Module:
    """The module the training step calls: the model, compiled (fullgraph, static shapes; `backend` a
    torch.compile backend name or callable) when asked, wrapped in DDP when `ddp` (a process group is up).
    `bucket_cap_mb` None keeps DDP's default (25 MB)."""
    module = torch.compile(model, dynamic=False, fullgraph=True, backend=backend) if compile else model
    if ddp:
        on_cuda = device is not None and device.type == "cuda"
        extra = {} if bucket_cap_mb is None else {"bucket_cap_mb": bucket_cap_mb}
        module = DDP(module, device_ids=[device.index] if on_cuda else None, broadcast_buffers=False, **extra)
    return module


def warm_up(module: nn.Module, model: nn.Module, batch_shape: tuple[int, int], device: torch.device,
            autocast) -> float:
    """Seconds of one forward + backward of `module` on a zero batch of `batch_shape` (the compile, on the first
    call); the gradients it leaves are dropped. Every rank must call it (under DDP the backward all-reduces)."""
    x = torch.zeros(batch_shape, dtype=torch.long, device=device)
    start = time.perf_counter()
    with autocast():
        loss = module(x, x)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds

