"""Fused per-head QK RMSNorm + partial RoPE + per-head gain, and plain partial RoPE, in Triton.

qk_norm_rope(x, cos, sin, rope_dims, gain) = gain_h * R(rms_norm(x)) in one pass over x (B, T, H, D):
R rotates pairs (i, i + rope_dims/2) of the first rope_dims dims, (x1, x2) -> (x1 c + x2 s, -x1 s + x2 c),
and passes the rest through; RMSNorm is weightless with F.rms_norm's default eps
(kernels.rmsnorm.default_eps: float32's eps for bf16/fp16 inputs too). Each program handles BLOCK_R rows of D; the rotation partner x[d +- rope_dims/2] is a second
(cache-hit) gather load, so no shuffles are needed. Math is fp32, rounded once at the store.

Backward: dx = rstd * (dxn - xn * mean(dxn * xn)) with dxn = R^T(gain * dy), and d gain_h = sum dy * R(xn)
reduced per row in the kernel, then over (B, T) on the host. R^T is R with sin negated, which is also the
whole backward of rotate_half_split. cos/sin (model buffers) get no gradient.
FLOPs: about 10 * B * T * H * D forward; it is memory-bound (one read and one write of x).
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.rmsnorm import default_eps

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROPE_BLOCK_ROWS = 64 if INTERPRET else 16  # the interpreter pays per program; a GPU wants many programs


@triton.jit
def _rope_tile(x_ptr, cos_ptr, sin_ptr, row_off, offs_d, mask, t, HALF: tl.constexpr, sin_sign):
    """Load the (rows, d) tile at int64 row offsets row_off (BLOCK_R, 1) and its rotation partners; return
    (x, R(x)) in fp32 (R's sin scaled by sin_sign)."""
    x = tl.load(x_ptr + row_off + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    y = x
    if HALF > 0:
        first = offs_d < HALF
        rotated = offs_d < 2 * HALF
        partner = tl.where(first, offs_d + HALF, tl.where(rotated, offs_d - HALF, offs_d))
        xp = tl.load(x_ptr + row_off + partner[None, :], mask=mask, other=0.0).to(tl.float32)
        freq = tl.where(first, offs_d, offs_d - HALF)
        tab = t[:, None] * HALF + freq[None, :]
        rot_mask = mask & rotated[None, :]
        c = tl.load(cos_ptr + tab, mask=rot_mask, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + tab, mask=rot_mask, other=0.0).to(tl.float32)
        sign = tl.where(first, 1.0, -1.0) * sin_sign
        y = x * c + sign[None, :] * xp * s
    return x, y


@triton.jit
def _rope_fwd_kernel(x_ptr, cos_ptr, sin_ptr, gain_ptr, out_ptr, n_rows, H, T, D, eps, sin_sign,
                     HALF: tl.constexpr, NORM: tl.constexpr, HAS_GAIN: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = (b * T + t) * H + h
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    t = (rows // H) % T
    row_off = rows.to(tl.int64)[:, None] * D  # int64: B * T * H * D passes 2^31 at long sequences and batches
    x, y = _rope_tile(x_ptr, cos_ptr, sin_ptr, row_off, offs_d, mask, t, HALF, sin_sign)
    if NORM:  # rms_norm commutes with the rotation (a per-row scalar), so scale after rotating
        y = y * tl.math.rsqrt(tl.sum(x * x, 1) / D + eps)[:, None]
    if HAS_GAIN:
        y = y * tl.load(gain_ptr + rows % H, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + row_off + offs_d[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _qk_norm_rope_bwd_kernel(grad_ptr, x_ptr, cos_ptr, sin_ptr, gain_ptr, dx_ptr, dgain_rows_ptr,
                             n_rows, H, T, D, eps, HALF: tl.constexpr, HAS_GAIN: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (offs_d[None, :] < D)
    t = (rows // H) % T
    row_off = rows.to(tl.int64)[:, None] * D
    x = tl.load(x_ptr + row_off + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, 1) / D + eps)
    # dxn = R^T(gain * dy): R with sin negated, applied to the incoming gradient
    g, dxn = _rope_tile(grad_ptr, cos_ptr, sin_ptr, row_off, offs_d, mask, t, HALF, -1.0)
    if HAS_GAIN:
        _, rx = _rope_tile(x_ptr, cos_ptr, sin_ptr, row_off, offs_d, mask, t, HALF, 1.0)
        tl.store(dgain_rows_ptr + rows, tl.sum(g * rx, 1) * rstd, mask=row_ok)
        dxn = dxn * tl.load(gain_ptr + rows % H, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    xn = x * rstd[:, None]
    dx = rstd[:, None] * (dxn - xn * (tl.sum(dxn * xn, 1) / D)[:, None])
    tl.store(dx_ptr + row_off + offs_d[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int,
           gain: Optional[torch.Tensor], name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be (B, T, H, D); got shape {tuple(x.shape)}")
    D = x.size(3)
    if rope_dims < 0 or rope_dims % 2 or rope_dims > D:
        raise ValueError(f"{name}: rope_dims {rope_dims} must be even and within [0, head_dim={D}]")
    want = (x.size(1), rope_dims // 2)
    if tuple(cos.shape) != want or tuple(sin.shape) != want:
        raise ValueError(f"{name}: cos/sin must be (T, rope_dims/2) = {want}; got {tuple(cos.shape)}, "
                         f"{tuple(sin.shape)}")
    if gain is not None and tuple(gain.shape) != (x.size(2),):
        raise ValueError(f"{name}: gain must be (H,) = ({x.size(2)},); got {tuple(gain.shape)}")


def _launch(x: torch.Tensor, block_r: int):
    B, T, H, D = x.shape
    n_rows = B * T * H
    return n_rows, (triton.cdiv(n_rows, block_r),), triton.next_power_of_2(D)


def rope_forward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int,
                 gain: Optional[torch.Tensor] = None, norm: bool = True, sin_sign: float = 1.0,
                 out: Optional[torch.Tensor] = None, block_r: int = ROPE_BLOCK_ROWS) -> torch.Tensor:
    """gain * R(rms_norm(x)) (norm=True) or R(x) (norm=False); cos/sin/gain already in x's dtype.

    `out` may be a preallocated contiguous tensor (tests poison it); sin_sign=-1 applies R^T.
    """
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x) if out is None else out
    n_rows, grid, block_d = _launch(x, block_r)
    if x.numel() == 0:  # no rows or zero head dim: nothing to write
        return out
    _rope_fwd_kernel[grid](x, cos, sin, x if gain is None else gain.contiguous(), out, n_rows, x.size(2),
                           x.size(1), x.size(3), default_eps(x.dtype), sin_sign, HALF=rope_dims // 2,
                           NORM=norm, HAS_GAIN=gain is not None, BLOCK_R=block_r, BLOCK_D=block_d)
    return out


def qk_norm_rope_backward(grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          rope_dims: int, gain: Optional[torch.Tensor] = None, dx: Optional[torch.Tensor] = None,
                          block_r: int = ROPE_BLOCK_ROWS) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(dx, dgain or None) of qk_norm_rope; dx may be preallocated contiguous (tests poison it)."""
    grad, x, cos, sin = grad.contiguous(), x.contiguous(), cos.contiguous(), sin.contiguous()
    dx = torch.empty_like(x) if dx is None else dx
    n_rows, grid, block_d = _launch(x, block_r)
    dgain_rows = torch.zeros(n_rows if gain is not None else 1, dtype=torch.float32, device=x.device)
    if x.numel():  # no rows or zero head dim: nothing to write, and the gain's gradient is a sum of nothing: 0
        _qk_norm_rope_bwd_kernel[grid](grad, x, cos, sin, x if gain is None else gain.contiguous(), dx, dgain_rows,
                                       n_rows, x.size(2), x.size(1), x.size(3), default_eps(x.dtype),
                                       HALF=rope_dims // 2, HAS_GAIN=gain is not None, BLOCK_R=block_r,
                                       BLOCK_D=block_d)
    if gain is None:
        return dx, None
    return dx, dgain_rows.view(-1, x.size(2)).sum(0).to(gain.dtype)


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_golf::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int,
                     gain: Optional[torch.Tensor]) -> torch.Tensor:
    return rope_forward(x, cos, sin, rope_dims, gain, norm=True)


@_qk_norm_rope_op.register_fake
def _(x, cos, sin, rope_dims, gain):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("triton_golf::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward_op(grad: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                              rope_dims: int, gain: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dgain); dgain is an empty placeholder when there is no gain (an op cannot return None)."""
    dx, dgain = qk_norm_rope_backward(grad, x, cos, sin, rope_dims, gain)
    return dx, dgain if dgain is not None else x.new_empty(0)


@_qk_norm_rope_backward_op.register_fake
def _(grad, x, cos, sin, rope_dims, gain):
    dgain = torch.empty_like(gain) if gain is not None else x.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dgain


def _qk_setup_context(ctx, inputs, output):
    x, cos, sin, rope_dims, gain = inputs
    ctx.rope_dims, ctx.has_gain = rope_dims, gain is not None
    ctx.save_for_backward(x, cos, sin, gain)


def _qk_backward(ctx, grad):
    x, cos, sin, gain = ctx.saved_tensors
    dx, dgain = _qk_norm_rope_backward_op(grad, x, cos, sin, ctx.rope_dims, gain)
    return dx, None, None, None, dgain if ctx.has_gain else None


_qk_norm_rope_op.register_autograd(_qk_backward, setup_context=_qk_setup_context)


@torch.library.custom_op("triton_golf::rotate_half_split", mutates_args=())
def _rotate_op(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int) -> torch.Tensor:
    return rope_forward(x, cos, sin, rope_dims, norm=False)


@_rotate_op.register_fake
def _(x, cos, sin, rope_dims):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _rotate_setup_context(ctx, inputs, output):
    x, cos, sin, rope_dims = inputs
    ctx.rope_dims = rope_dims
    ctx.save_for_backward(cos, sin)


def _rotate_backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    return _rotate_op(grad, cos, -sin, ctx.rope_dims), None, None, None  # R^T = R with sin negated


_rotate_op.register_autograd(_rotate_backward, setup_context=_rotate_setup_context)


# ----------------------------------------------------------------------------------------------
# Public functions (same signatures and semantics as the twins in kernels/reference.py)
# ----------------------------------------------------------------------------------------------
def qk_norm_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int,
                 gain: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head weightless RMSNorm, partial RoPE, then an optional per-head gain (H,); x is (B, T, H, D)."""
    _check(x, cos, sin, rope_dims, gain, "qk_norm_rope")
    return _qk_norm_rope_op(x, cos.to(x.dtype), sin.to(x.dtype), rope_dims,
                            None if gain is None else gain.to(x.dtype))


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int) -> torch.Tensor:
    """Partial RoPE of pairs (i, i + rope_dims/2) of the first rope_dims dims; x is (B, T, H, D)."""
    _check(x, cos, sin, rope_dims, None, "rotate_half_split")
    if rope_dims == 0:
        return x
    return _rotate_op(x, cos.to(x.dtype), sin.to(x.dtype), rope_dims)
