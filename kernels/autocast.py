"""The one dtype rule at every op boundary, for every policy (triton, eager, inductor).

torch does not autocast custom ops, and CUDA's autocast runs some of the eager twins' ops in fp32 (rms_norm,
pow, softmax, norms: torch's CUDA autocast lists) where the CPU's does not. So no op may lean on autocast for
its dtypes; instead, at every op boundary:
  - an op whose contract needs one dtype (the matmuls: linear, MLP, cross-entropy head, int6; attention's
    q, k, v; XSA's y, v) casts those inputs to the autocast dtype (`cast_for_autocast`, `cast_to_one_dtype`);
  - every eager twin returns the dtype its Triton op returns (`kernels.reference` casts its result back where a
    torch op inside it may have run in fp32): norms and RoPE return their input's dtype, the matmuls and
    attention the autocast dtype, the head's NLL fp32, and residual_norm's normed output the autocast dtype.
tests/cuda_autocast.py applies CUDA's autocast lists to CPU runs, so the CPU suite sees what a GPU would.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

_AUTOCAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_cpu_autocast: Callable[[], contextlib.AbstractContextManager] | None = None


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast every forward pass runs under (training, validation, scoring, TTT): bf16 on CUDA, as in the
    seed run; none on the CPU (fp32) unless `set_cpu_autocast` gave one."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return _cpu_autocast() if _cpu_autocast is not None else contextlib.nullcontext()


def set_cpu_autocast(factory: Callable[[], contextlib.AbstractContextManager] | None) -> None:
    """What `autocast_for` gives on the CPU (None: no autocast). The CUDA-autocast rehearsal of the test suite
    (tests/cuda_autocast.py) sets CPU autocast with CUDA's lists here, so every stage runs as on a GPU."""
    global _cpu_autocast
    _cpu_autocast = factory


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast matmul computes `x` in: the autocast dtype when autocast is on for x's device and x
    is an fp32/fp16/bf16 tensor (autocast leaves fp64 alone), else x's own dtype. Meta tensors (FLOP and
    launch counting) see no autocast."""
    device = x.device.type
    if device != "meta" and x.dtype in _AUTOCAST_DTYPES and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def cast_for_autocast(x: torch.Tensor) -> torch.Tensor:
    """x in `autocast_dtype(x)` (x itself when that is its dtype)."""
    return x.to(autocast_dtype(x))


def cast_to_one_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs of an op that needs one dtype, each cast for autocast: under autocast they come out in one
    dtype; without it they stay as given and the op's own check decides."""
    return tuple(cast_for_autocast(t) for t in tensors)
