"""XSA (exclusive self-attention) epilogue in Triton: out_h = y_h - <y_h, v_hat> v_hat, forward and backward.

v_hat = v / max(||v||, eps) is the unit value vector of the token's own KV head (F.normalize's clamp), and
every query head of the KV group is projected off it. The math lives in three @triton.jit helpers that the
attention kernels reuse to fuse XSA into the attention forward epilogue and the backward's delta pass
(kernels/attention.py, kernels/attention_backward.py); the standalone op here is the twin of
reference.exclusive_projection for callers that hold y and v separately, and the attention op's unfused path.

Backward (I - v_hat v_hat^T is symmetric): dy = g - <g, v_hat> v_hat; d v_hat = -sum_h (<y_h, v_hat> g_h +
<g_h, v_hat> y_h); dv = (I - v_hat v_hat^T) d v_hat / ||v||, or d v_hat / eps where ||v|| < eps.
Memory-bound: forward reads y and v and writes out (about 2 |y| + |v| bytes), backward reads g, y, v and
writes dy, dv (3 |y| + 2 |v|).
"""
import os

import torch
import triton
import triton.language as tl

from kernels.autocast import cast_to_one_dtype

XSA_EPS = 1e-12  # F.normalize's eps in the twin
XSA_BLOCK_ROWS = 64 if os.environ.get("TRITON_INTERPRET") == "1" else 16  # the interpreter pays per program


@triton.jit
def xsa_unit(v, eps):
    """(v_hat, ||v||, max(||v||, eps)) per row of a (rows, D) fp32 tile."""
    norm = tl.sqrt(tl.sum(v * v, 1))
    denom = tl.maximum(norm, eps)
    return v / denom[:, None], norm, denom


@triton.jit
def xsa_dv(du, u, norm, denom, eps):
    """dv from d v_hat through v_hat = v / max(||v||, eps): the tangential part / ||v||, or du / eps when clamped."""
    radial = tl.where(norm >= eps, tl.sum(du * u, 1), 0.0)
    return (du - radial[:, None] * u) / denom[:, None]


@triton.jit
def _xsa_fwd_kernel(y_ptr, v_ptr, out_ptr, n_rows, Hkv, GROUP, stride_yb, stride_yt, stride_yh,
                    stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh, T, D, eps,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: BLOCK_R (token, KV head) rows; v is loaded once for the group's query heads."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = (b * T + t) * Hkv + hk
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (offs_d[None, :] < D)
    hk = rows % Hkv
    t = (rows // Hkv) % T
    b = rows // (Hkv * T)
    v = tl.load(v_ptr + (b * stride_vb + t * stride_vt + hk * stride_vh)[:, None] + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    u, _, _ = xsa_unit(v, eps)
    for g in range(GROUP):
        h = hk * GROUP + g
        y = tl.load(y_ptr + (b * stride_yb + t * stride_yt + h * stride_yh)[:, None] + offs_d[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        out = y - tl.sum(y * u, 1)[:, None] * u
        tl.store(out_ptr + (b * stride_ob + t * stride_ot + h * stride_oh)[:, None] + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _xsa_bwd_kernel(g_ptr, y_ptr, v_ptr, dy_ptr, dv_ptr, n_rows, Hkv, GROUP, stride_yb, stride_yt, stride_yh,
                    stride_vb, stride_vt, stride_vh, T, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """g, y, dy share y's strides (the launcher makes them so); dv shares v's."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (offs_d[None, :] < D)
    hk = rows % Hkv
    t = (rows // Hkv) % T
    b = rows // (Hkv * T)
    v_off = (b * stride_vb + t * stride_vt + hk * stride_vh)[:, None] + offs_d[None, :]
    v = tl.load(v_ptr + v_off, mask=mask, other=0.0).to(tl.float32)
    u, norm, denom = xsa_unit(v, eps)
    du = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for gi in range(GROUP):
        h = hk * GROUP + gi
        off = (b * stride_yb + t * stride_yt + h * stride_yh)[:, None] + offs_d[None, :]
        g = tl.load(g_ptr + off, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
        gu = tl.sum(g * u, 1)[:, None]
        yu = tl.sum(y * u, 1)[:, None]
        tl.store(dy_ptr + off, (g - gu * u).to(dy_ptr.dtype.element_ty), mask=mask)
        du -= yu * g + gu * y
    tl.store(dv_ptr + v_off, xsa_dv(du, u, norm, denom, eps).to(dv_ptr.dtype.element_ty), mask=mask)


def check_xsa(y: torch.Tensor, v: torch.Tensor) -> None:
    if y.dim() != 4 or v.dim() != 4 or y.shape[:2] != v.shape[:2] or y.size(3) != v.size(3):
        raise ValueError(f"exclusive_projection: y must be (B, T, Hq, D) and v (B, T, Hkv, D); "
                         f"got {tuple(y.shape)} and {tuple(v.shape)}")
    if v.size(2) == 0 or y.size(2) % v.size(2) != 0:
        raise ValueError(f"exclusive_projection: query heads {y.size(2)} must be a multiple of KV heads {v.size(2)}")
    if y.dtype != v.dtype:
        raise ValueError(f"exclusive_projection: y and v must share a dtype; got {y.dtype} and {v.dtype}")


def _launch_shape(v: torch.Tensor, block_r: int):
    B, T, Hkv, D = v.shape
    n_rows = B * T * Hkv
    return n_rows, (triton.cdiv(n_rows, block_r),), triton.next_power_of_2(D)


def xsa_forward(y: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None,
                block_r: int = XSA_BLOCK_ROWS) -> torch.Tensor:
    """y - <y, v_hat> v_hat per head; `out` may be preallocated (tests poison it)."""
    check_xsa(y, v)
    y, v = y.contiguous(), v.contiguous()
    out = torch.empty_like(y) if out is None else out
    n_rows, grid, block_d = _launch_shape(v, block_r)
    if n_rows == 0:
        return out
    _xsa_fwd_kernel[grid](y, v, out, n_rows, v.size(2), y.size(2) // v.size(2), *y.stride()[:3],
                          *v.stride()[:3], *out.stride()[:3], v.size(1), v.size(3), XSA_EPS,
                          BLOCK_R=block_r, BLOCK_D=block_d)
    return out


def xsa_backward(grad: torch.Tensor, y: torch.Tensor, v: torch.Tensor, dy: torch.Tensor | None = None,
                 dv: torch.Tensor | None = None, block_r: int = XSA_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dv) of the XSA epilogue; dy/dv may be preallocated contiguous tensors (tests poison them)."""
    check_xsa(y, v)
    grad, y, v = grad.contiguous(), y.contiguous(), v.contiguous()
    dy = torch.empty_like(y) if dy is None else dy
    dv = torch.empty_like(v) if dv is None else dv
    if not (dy.is_contiguous() and dv.is_contiguous()):
        raise ValueError("exclusive_projection backward: preallocated dy and dv must be contiguous")
    n_rows, grid, block_d = _launch_shape(v, block_r)
    if n_rows == 0:
        return dy, dv
    _xsa_bwd_kernel[grid](grad, y, v, dy, dv, n_rows, v.size(2), y.size(2) // v.size(2), *y.stride()[:3],
                          *v.stride()[:3], v.size(1), v.size(3), XSA_EPS, BLOCK_R=block_r, BLOCK_D=block_d)
    return dy, dv


@torch.library.custom_op("triton_golf::exclusive_projection", mutates_args=())
def _xsa_op(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return xsa_forward(y, v)


@_xsa_op.register_fake
def _(y, v):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


@torch.library.custom_op("triton_golf::exclusive_projection_backward", mutates_args=())
def _xsa_backward_op(grad: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return xsa_backward(grad, y, v)


@_xsa_backward_op.register_fake
def _(grad, y, v):
    return (torch.empty_like(y, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _xsa_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _xsa_backward(ctx, grad):
    y, v = ctx.saved_tensors
    return _xsa_backward_op(grad, y, v)


_xsa_op.register_autograd(_xsa_backward, setup_context=_xsa_setup_context)


def exclusive_projection(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA epilogue (B, T, Hq, D): the twin of reference.exclusive_projection (y, v cast to one dtype for
    autocast, kernels.autocast's rule)."""
    y, v = cast_to_one_dtype(y, v)
    check_xsa(y, v)
    return _xsa_op(y, v)
