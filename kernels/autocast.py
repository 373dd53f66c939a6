"""Autocast for the matmul kernels: torch does not autocast custom ops, so their public functions cast x here.

Under `torch.autocast` the eager twins' F.linear computes in the autocast dtype (bf16 in the seed run) whatever
its input dtype; the final RMSNorm and the residual stream are fp32, so without this cast the Triton head
(softcap_cross_entropy) and the int6 matmuls would run in fp32, off the tensor cores' bf16 path.
"""
from __future__ import annotations

import torch


def autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an autocast matmul computes `x` in: the autocast dtype when autocast is on for x's device and x
    is an fp32/fp16/bf16 tensor (autocast leaves fp64 alone), else x's own dtype."""
    device = x.device.type
    if x.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def cast_for_autocast(x: torch.Tensor) -> torch.Tensor:
    """x in `autocast_dtype(x)` (x itself when that is its dtype)."""
    return x.to(autocast_dtype(x))
