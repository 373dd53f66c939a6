"""What the attention forward (kernels/attention.py) and backward (kernels/attention_backward.py) share: the
interpreter flag, the exp2-domain constant, the supported head dims, the backward's dQ modes and default, the
argument checks and the kernel flags. Both import it; neither imports the other's helpers.
"""
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)
INT32_SPAN = 2 ** 31
# the backward's dQ paths (kernels/attention_backward.py); deterministic by default until a GPU measures otherwise
DQ_MODES = ("two_stage", "atomic", "separate")
# The fastest deterministic dQ mode by the roofline projection at the seed's shapes on H100 and A100
# (bench/rehearsal/roofline.py, bench/REHEARSAL.md: "two_stage" moves a 1.7 GB fp32 scratch per layer at
# batch 48); a GPU measurement replaces it (bench `attention bwd` cases).
DEFAULT_DQ_MODE = "separate"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k, v must be (B, T, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: shapes do not fit (B, T, Hq, D) / (B, T, Hkv, D): q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.size(2) == 0 or q.size(2) % k.size(2) != 0:
        raise ValueError(f"attention: query heads {q.size(2)} must be a multiple of KV heads {k.size(2)}")
    if q.size(3) not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"attention: head_dim {q.size(3)} unsupported by the Triton kernel; "
                         f"use one of {SUPPORTED_HEAD_DIMS}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"attention: q, k, v must share one float dtype (fp32/bf16/fp16); "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("attention: the head_dim axis of q, k, v must be contiguous (stride 1)")
    check_int32_span(q, k, v)


def check_int32_span(*tensors: torch.Tensor) -> None:
    """The kernels index inside one batch element with int32 (batch and head bases are int64)."""
    for t in tensors:
        span = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape[1:], t.stride()[1:]))
        if t.numel() and span >= INT32_SPAN:
            raise ValueError(f"attention: one batch element spans {span} elements; the kernels need < 2^31")


def check_dq_mode(dq_mode: str) -> None:
    if dq_mode not in DQ_MODES:
        raise ValueError(f"attention: dq_mode {dq_mode!r} unknown; use one of {DQ_MODES}")


def kernel_flags(dtype: torch.dtype) -> dict:
    """UPCAST: fp32 math inside the kernel (the interpreter cannot do bf16); PRECISION: exact fp32 dots."""
    return dict(UPCAST=INTERPRET, PRECISION="ieee" if dtype == torch.float32 else "tf32")
