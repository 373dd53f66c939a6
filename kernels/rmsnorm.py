"""Fused weightless RMSNorm times a constant LN-scale factor (seed-spec §3.2, §3.4, §3.9).

y = x * rstd * scale with rstd = 1 / sqrt(mean(x^2) + eps) over the last dim. One program per row on a GPU
(a tile of rows under the CPU interpreter, which pays per program): the whole row (512 dims in the seed)
sits in registers, statistics are fp32, and the per-row rstd (fp32) is saved so the backward needs one
pass: dx = scale * rstd * (dy - x * rstd^2 * mean(dy * x)).

eps=None follows F.rms_norm: the machine epsilon of the *compute* type, so float32's eps (1.19e-7) for
bf16/fp16 inputs as well (F.rms_norm upcasts them), not torch.finfo(bf16).eps.
Memory traffic (the cost of this op): forward reads x and writes y (+4 bytes per row); backward reads dy
and x and writes dx. FLOPs are negligible (~4 per element forward, ~7 backward).
"""
import os

import torch
import triton
import triton.language as tl

from kernels.rows import as_rows

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_BLOCK_D = 16384  # a row lives in registers; wider rows would spill
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_INTERPRET_TILE_ELEMENTS = 8192  # the interpreter pays per program: many rows per program there


@triton.jit
def _rms_norm_forward_kernel(x_ptr, y_ptr, rstd_ptr, n_rows, D, stride_x, stride_y, scale, eps,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols[None, :] < D)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    y = x * (rstd * scale)[:, None]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(dy_ptr, x_ptr, rstd_ptr, dx_ptr, n_rows, D, stride_dy, stride_x, stride_dx, scale,
                              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols[None, :] < D)
    dy = tl.load(dy_ptr + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    mean_dy_x = tl.sum(dy * x, axis=1) / D
    dx = (scale * rstd)[:, None] * (dy - x * (rstd * rstd * mean_dy_x)[:, None])
    tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch_config(d: int) -> tuple[int, int, int]:
    """(BLOCK_R rows per program, BLOCK_D, num_warps): one row per program on a GPU; under the interpreter,
    which pays per program, a tile of rows up to ~8K elements."""
    block = triton.next_power_of_2(d)
    if block > _MAX_BLOCK_D:
        raise ValueError(f"rms_norm: last dim {d} exceeds the kernel's one-row-in-registers limit {_MAX_BLOCK_D}")
    rows = max(_INTERPRET_TILE_ELEMENTS // block, 1) if _INTERPRET else 1
    return rows, block, min(max(block // 256, 1), 8)


def _rms_norm_forward(x2, scale, eps, y=None, rstd=None):
    """x2: (rows, D) with unit column stride. Returns (y, rstd fp32 (rows,)); pass y/rstd to fill buffers."""
    rows, d = x2.shape
    y = torch.empty_like(x2) if y is None else y
    rstd = x2.new_empty((rows,), dtype=torch.float32) if rstd is None else rstd
    if x2.numel() > 0:  # zero rows or zero width: nothing to write (a zero-width row's rstd is never read)
        block_r, block, warps = _launch_config(d)
        _rms_norm_forward_kernel[(triton.cdiv(rows, block_r),)](
            x2, y, rstd, rows, d, x2.stride(0), y.stride(0), scale, eps,
            BLOCK_R=block_r, BLOCK_D=block, num_warps=warps)
    return y, rstd


def _rms_norm_backward(dy2, x2, rstd, scale, dx=None):
    """dy2, x2: (rows, D) with unit column stride; rstd from the forward. Returns dx (rows, D)."""
    rows, d = x2.shape
    dx = torch.empty_like(x2) if dx is None else dx
    if x2.numel() > 0:
        block_r, block, warps = _launch_config(d)
        _rms_norm_backward_kernel[(triton.cdiv(rows, block_r),)](
            dy2, x2, rstd, dx, rows, d, dy2.stride(0), x2.stride(0), dx.stride(0), scale,
            BLOCK_R=block_r, BLOCK_D=block, num_warps=warps)
    return dx


@torch.library.custom_op("triton_golf::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, scale: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (y, rstd); rstd (fp32, x.shape[:-1]) is saved for backward, never exposed by the public function."""
    d = x.shape[-1]
    y, rstd = _rms_norm_forward(as_rows(x, d).contiguous(), scale, eps)
    return y.reshape(x.shape), rstd.reshape(x.shape[:-1])


@_rms_norm_op.register_fake
def _(x, scale, eps):
    return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("triton_golf::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, scale: float) -> torch.Tensor:
    d = x.shape[-1]
    dx = _rms_norm_backward(as_rows(dy, d).contiguous(), as_rows(x, d).contiguous(), rstd.reshape(-1), scale)
    return dx.reshape(x.shape)


@_rms_norm_backward_op.register_fake
def _(dy, x, rstd, scale):
    return torch.empty_like(x)


def _rms_norm_setup_context(ctx, inputs, output):
    x, scale, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1])
    ctx.scale = scale


def _rms_norm_grad(ctx, dy, d_rstd_unused):
    x, rstd = ctx.saved_tensors
    return torch.ops.triton_golf.rms_norm_backward(dy, x, rstd, ctx.scale), None, None


_rms_norm_op.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup_context)


def default_eps(dtype: torch.dtype) -> float:
    """F.rms_norm's eps=None: epsilon of the compute type (fp32 for bf16/fp16 inputs)."""
    return torch.finfo(torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype).eps


def rms_norm(x: torch.Tensor, scale: float = 1.0, eps: float | None = None) -> torch.Tensor:
    """Weightless RMSNorm over the last dim, times a constant `scale` (the layer's LN-scale factor).

    Same semantics as kernels.reference.rms_norm; x: (..., D) float32/bfloat16/float16, output in x's dtype.
    """
    if x.dim() < 1 or x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"rms_norm: x must be a float32/bfloat16/float16 tensor with >= 1 dim, got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    y, _ = torch.ops.triton_golf.rms_norm(x, float(scale), float(default_eps(x.dtype) if eps is None else eps))
    return y
