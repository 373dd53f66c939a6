"""Fused residual glue + RMSNorm: a block's residual update, U-Net skip gate and residual mix, its norm and the
cast to the matmul dtype, in one pass over the rows (eager twin: kernels.reference.residual_norm).

Per row (D = model dim, every per-channel vector (D,) loaded once per program):
    r = x + branch_scale * branch                          HAS_BRANCH   (the previous sublayer's pending update)
    h = g * r + (1 - g) * skip_weight * skip, g = sigmoid(skip_gate)     HAS_SKIP (skip = r when SKIP_SELF)
    h = mix[0] * h + mix[1] * x0                           HAS_MIX
    n = h * rstd * scale, rstd = 1 / sqrt(mean(h^2) + eps) (stored in the autocast dtype under autocast)
Outputs: h (the residual stream after the glue), n (the sublayer's input), rstd (fp32, saved for the backward),
and r when KEEP_RESIDUAL (an encoder output that a decoder's skip reads later).

Why: unfused, every piece of glue is a separate elementwise pass over the fp32 residual stream, the norm is an
opaque custom op, and the q/k/v and MLP matmuls each cast the norm's fp32 output to bf16. Here each input is
read once and each output written once: a block entry reads x, branch, x0 (+ skip) and writes h and n
(bf16); the model's sublayer exits are left pending and folded into the next call (model/block.py), so the
residual add costs no pass of its own. SmearGate is not folded in: it reads the previous token's row, which
belongs to another program.

Backward (one launch): a grid of at most a few programs per SM, each looping over row tiles; it recomputes
r and h from the inputs (no saved activations beyond rstd), writes dx, dbranch, dskip, dx0 and accumulates the
per-channel gradients (branch_scale, skip_gate, skip_weight, mix) in registers, stored as per-program fp32
partials that the host sums (deterministic: no atomics). With n = h * rstd * scale:
    dh = dh_out + scale * rstd * (dn - h * rstd^2 * mean(dn * h))
    ds = mix[0] * dh,  dx0 = mix[1] * dh,  dmix = (sum dh * s, sum dh * x0)      (s = h before the mix)
    dr = g * ds (+ (1 - g) * w * ds when SKIP_SELF) + dr_out,  dskip = (1 - g) * w * ds,
    dskip_weight = (1 - g) * sum ds * skip,  dskip_gate = g (1 - g) * sum ds * (r - w * skip)
    dx = dr,  dbranch = branch_scale * dr,  dbranch_scale = sum dr * branch
Memory traffic of a block entry (fp32 stream, bf16 branch and n, D = 512): forward 4 + 2 + 4 (+4 skip) bytes
read and 4 + 2 written per channel per row; the backward reads those inputs, dn and dh once and writes each
input's gradient once. FLOPs are negligible (~15 per element forward, ~30 backward).
"""
import os

import torch
import triton
import triton.language as tl

from kernels.autocast import autocast_dtype
from kernels.rmsnorm import default_eps
from kernels.rows import as_rows

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_BLOCK_D = 16384  # a row lives in registers; wider rows would spill
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TILE_ELEMENTS = 8192 if _INTERPRET else 4096  # elements per program: the interpreter pays per program
_BACKWARD_TILE_ELEMENTS = 8192 if _INTERPRET else 1024  # the backward holds ~15 tensors of the tile live
_INTERPRET_BACKWARD_PROGRAMS = 4  # few programs under the interpreter, so the tile loop runs several times
_BACKWARD_PROGRAMS_PER_SM = 4
_PARAM_GRADS = 5  # partial rows: branch_scale, skip_gate, skip_weight, mix[0], mix[1]


@triton.jit
def _residual_norm_forward_kernel(x_ptr, branch_ptr, branch_scale_ptr, skip_ptr, skip_gate_ptr, skip_weight_ptr,
                                  x0_ptr, mix_ptr, r_ptr, h_ptr, n_ptr, rstd_ptr, n_rows, D, stride_x, stride_branch,
                                  stride_skip, stride_x0, stride_r, stride_h, stride_n, scale, eps,
                                  HAS_BRANCH: tl.constexpr, HAS_SKIP: tl.constexpr, SKIP_SELF: tl.constexpr,
                                  HAS_MIX: tl.constexpr, KEEP_RESIDUAL: tl.constexpr,
                                  BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < n_rows
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    r = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BRANCH:
        branch_scale = tl.load(branch_scale_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        branch = tl.load(branch_ptr + rows[:, None] * stride_branch + cols[None, :], mask=mask, other=0.0)
        r = (r + branch_scale[None, :] * branch.to(tl.float32)).to(x_ptr.dtype.element_ty).to(tl.float32)
    if KEEP_RESIDUAL:
        tl.store(r_ptr + rows[:, None] * stride_r + cols[None, :], r.to(r_ptr.dtype.element_ty), mask=mask)
    h = r
    if HAS_SKIP:
        gate = tl.sigmoid(tl.load(skip_gate_ptr + cols, mask=col_mask, other=0.0).to(tl.float32))
        weight = tl.load(skip_weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        if SKIP_SELF:
            skip = r
        else:
            skip = tl.load(skip_ptr + rows[:, None] * stride_skip + cols[None, :], mask=mask, other=0.0)
            skip = skip.to(tl.float32)
        h = gate[None, :] * h + ((1.0 - gate) * weight)[None, :] * skip
    if HAS_MIX:
        mix0 = tl.load(mix_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        mix1 = tl.load(mix_ptr + D + cols, mask=col_mask, other=0.0).to(tl.float32)
        x0 = tl.load(x0_ptr + rows[:, None] * stride_x0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        h = mix0[None, :] * h + mix1[None, :] * x0
    h = h.to(h_ptr.dtype.element_ty)
    tl.store(h_ptr + rows[:, None] * stride_h + cols[None, :], h, mask=mask)
    h = h.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(h * h, axis=1) / D + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    n = h * (rstd * scale)[:, None]
    tl.store(n_ptr + rows[:, None] * stride_n + cols[None, :], n.to(n_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_norm_backward_kernel(dr_ptr, dh_ptr, dn_ptr, x_ptr, branch_ptr, branch_scale_ptr, skip_ptr,
                                   skip_gate_ptr, skip_weight_ptr, x0_ptr, mix_ptr, rstd_ptr,
                                   dx_ptr, dbranch_ptr, dskip_ptr, dx0_ptr, partial_ptr,
                                   n_rows, D, stride_dr, stride_dh, stride_dn, stride_x, stride_branch, stride_skip,
                                   stride_x0, stride_dx, stride_dbranch, stride_dskip, stride_dx0, scale,
                                   HAS_BRANCH: tl.constexpr, HAS_SKIP: tl.constexpr, SKIP_SELF: tl.constexpr,
                                   HAS_MIX: tl.constexpr, HAS_DR: tl.constexpr, HAS_DH: tl.constexpr,
                                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    zeros = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_branch_scale, acc_gate, acc_weight, acc_mix0, acc_mix1 = zeros, zeros, zeros, zeros, zeros
    branch_scale, gate, weight, mix0, mix1 = zeros, zeros, zeros, zeros, zeros
    if HAS_BRANCH:
        branch_scale = tl.load(branch_scale_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_SKIP:
        gate = tl.sigmoid(tl.load(skip_gate_ptr + cols, mask=col_mask, other=0.0).to(tl.float32))
        weight = tl.load(skip_weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if HAS_MIX:
        mix0 = tl.load(mix_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        mix1 = tl.load(mix_ptr + D + cols, mask=col_mask, other=0.0).to(tl.float32)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_R), programs):
        rows = (tile * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        row_mask = rows < n_rows
        mask = row_mask[:, None] & col_mask[None, :]
        # recompute the forward's r, skip, s (h before the mix) and h, rounded as the forward stored them
        r = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        branch = zeros[None, :]
        if HAS_BRANCH:
            branch = tl.load(branch_ptr + rows[:, None] * stride_branch + cols[None, :], mask=mask,
                             other=0.0).to(tl.float32)
            r = (r + branch_scale[None, :] * branch).to(x_ptr.dtype.element_ty).to(tl.float32)
        s = r
        skip = r
        if HAS_SKIP:
            if not SKIP_SELF:
                skip = tl.load(skip_ptr + rows[:, None] * stride_skip + cols[None, :], mask=mask,
                               other=0.0).to(tl.float32)
            s = gate[None, :] * r + ((1.0 - gate) * weight)[None, :] * skip
        h = s
        x0 = zeros[None, :]
        if HAS_MIX:
            x0 = tl.load(x0_ptr + rows[:, None] * stride_x0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            h = mix0[None, :] * s + mix1[None, :] * x0
        h = h.to(x_ptr.dtype.element_ty).to(tl.float32)
        # through the norm
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        dn = tl.load(dn_ptr + rows[:, None] * stride_dn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean_dn_h = tl.sum(dn * h, axis=1) / D
        dh = (scale * rstd)[:, None] * (dn - h * (rstd * rstd * mean_dn_h)[:, None])
        if HAS_DH:
            dh += tl.load(dh_ptr + rows[:, None] * stride_dh + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # through the mix, the skip gate and the branch update
        ds = dh
        if HAS_MIX:
            acc_mix0 += tl.sum(dh * s, axis=0)
            acc_mix1 += tl.sum(dh * x0, axis=0)
            tl.store(dx0_ptr + rows[:, None] * stride_dx0 + cols[None, :],
                     (mix1[None, :] * dh).to(dx0_ptr.dtype.element_ty), mask=mask)
            ds = mix0[None, :] * dh
        dr = ds
        if HAS_SKIP:
            acc_gate += tl.sum(ds * (r - weight[None, :] * skip), axis=0)
            acc_weight += tl.sum(ds * skip, axis=0)
            dskip = ((1.0 - gate) * weight)[None, :] * ds
            dr = gate[None, :] * ds
            if SKIP_SELF:
                dr += dskip
            else:
                tl.store(dskip_ptr + rows[:, None] * stride_dskip + cols[None, :],
                         dskip.to(dskip_ptr.dtype.element_ty), mask=mask)
        if HAS_DR:
            dr += tl.load(dr_ptr + rows[:, None] * stride_dr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * stride_dx + cols[None, :], dr.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_BRANCH:
            acc_branch_scale += tl.sum(dr * branch, axis=0)
            tl.store(dbranch_ptr + rows[:, None] * stride_dbranch + cols[None, :],
                     (branch_scale[None, :] * dr).to(dbranch_ptr.dtype.element_ty), mask=mask)
    # per-channel partials of this program: sums over its rows, per-channel factors applied once here
    out = partial_ptr + pid * D + cols
    stride_param = programs * D
    tl.store(out, acc_branch_scale, mask=col_mask)
    tl.store(out + stride_param, acc_gate * gate * (1.0 - gate), mask=col_mask)
    tl.store(out + 2 * stride_param, acc_weight * (1.0 - gate), mask=col_mask)
    tl.store(out + 3 * stride_param, acc_mix0, mask=col_mask)
    tl.store(out + 4 * stride_param, acc_mix1, mask=col_mask)


def _launch_config(d: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_R rows per tile, BLOCK_D, num_warps) on a GPU: forward ~4K elements per tile (8 rows of the seed's
    512, so the per-channel vectors are loaded once per 8 rows) over 8 warps; backward ~1K over 8 warps, 4
    elements per thread, since it holds ~15 tile-sized values live. python -m bench.aot, seed shapes: at most 104
    registers forward and 125 backward, no spill on sm_80 / sm_90a with Triton 3.6 and 3.7 (a 2K forward tile
    over 4 warps spilled 4 B on sm_80 with 3.6; a 2K backward tile over 8 warps took 209 registers).
    Under the interpreter, which pays per program, ~8K elements."""
    block = triton.next_power_of_2(d)
    if block > _MAX_BLOCK_D:
        raise ValueError(f"residual_norm: last dim {d} exceeds the kernel's one-row-in-registers limit {_MAX_BLOCK_D}")
    rows = max((_BACKWARD_TILE_ELEMENTS if backward else _TILE_ELEMENTS) // block, 1)
    per_warp = 128 if backward else 512  # elements of the tile per warp
    return rows, block, min(max(rows * block // per_warp, 1), 8)


def _backward_programs(tiles: int, device: torch.device) -> int:
    """Programs of the backward grid: a few per SM (each loops over tiles), fewer under the interpreter."""
    if _INTERPRET or device.type != "cuda":
        return min(tiles, _INTERPRET_BACKWARD_PROGRAMS)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return min(tiles, sms * _BACKWARD_PROGRAMS_PER_SM)


def _rows(t: torch.Tensor | None, d: int) -> torch.Tensor | None:
    """(rows, D) with unit column stride (a view when possible), or None."""
    return None if t is None else as_rows(t, d)


def _stride(t: torch.Tensor | None) -> int:
    return t.stride(0) if t is not None else 0


def _residual_norm_forward(x2, branch2, branch_scale, skip2, skip_gate, skip_weight, x02, mix, scale, eps,
                           skip_self, keep_residual, out_dtype, outputs=None):
    """Row-major launcher: returns (r, h, n, rstd) with r empty unless keep_residual; pass `outputs` to fill
    given buffers (the tests poison them)."""
    rows, d = x2.shape
    if outputs is None:
        r = torch.empty_like(x2) if keep_residual else x2.new_empty(0)
        outputs = (r, torch.empty_like(x2), x2.new_empty((rows, d), dtype=out_dtype),
                   x2.new_empty((rows,), dtype=torch.float32))
    r, h, n, rstd = outputs
    if x2.numel() > 0:  # zero rows or zero width: nothing to write (a zero-width row's rstd is never read)
        block_r, block, warps = _launch_config(d)
        any_ptr = x2  # a valid pointer for the arguments a constexpr flag leaves unread
        _residual_norm_forward_kernel[(triton.cdiv(rows, block_r),)](
            x2, any_ptr if branch2 is None else branch2, any_ptr if branch_scale is None else branch_scale,
            any_ptr if skip2 is None else skip2, any_ptr if skip_gate is None else skip_gate,
            any_ptr if skip_weight is None else skip_weight, any_ptr if x02 is None else x02,
            any_ptr if mix is None else mix, r if keep_residual else any_ptr, h, n, rstd, rows, d,
            x2.stride(0), _stride(branch2), _stride(skip2), _stride(x02), r.stride(0) if keep_residual else 0,
            h.stride(0), n.stride(0), scale, eps,
            HAS_BRANCH=branch2 is not None, HAS_SKIP=skip_gate is not None, SKIP_SELF=skip_self,
            HAS_MIX=mix is not None, KEEP_RESIDUAL=keep_residual, BLOCK_R=block_r, BLOCK_D=block, num_warps=warps)
    return r, h, n, rstd


def _residual_norm_backward(dr2, dh2, dn2, x2, branch2, branch_scale, skip2, skip_gate, skip_weight, x02, mix,
                            rstd, scale, skip_self, outputs=None):
    """Row-major launcher: returns (dx, dbranch, dskip, dx0, partials (5, programs, D) fp32); absent inputs get
    empty gradients; pass `outputs` (dx, dbranch, dskip, dx0) to fill given buffers."""
    rows, d = x2.shape
    programs = 0  # zero rows or zero width: no program, and the per-channel sums over no partials are zeros
    if x2.numel() > 0:
        block_r, block, warps = _launch_config(d, backward=True)
        programs = _backward_programs(triton.cdiv(rows, block_r), x2.device)
    if outputs is None:
        outputs = tuple(torch.empty_like(t) if t is not None else x2.new_empty(0)
                        for t in (x2, branch2, None if skip_self else skip2, x02))
    dx, dbranch, dskip, dx0 = outputs
    partials = x2.new_empty((_PARAM_GRADS, programs, d), dtype=torch.float32)  # every program stores its rows
    if programs > 0:
        any_ptr = x2
        _residual_norm_backward_kernel[(programs,)](
            any_ptr if dr2 is None else dr2, any_ptr if dh2 is None else dh2, dn2, x2,
            any_ptr if branch2 is None else branch2, any_ptr if branch_scale is None else branch_scale,
            any_ptr if skip2 is None else skip2, any_ptr if skip_gate is None else skip_gate,
            any_ptr if skip_weight is None else skip_weight, any_ptr if x02 is None else x02,
            any_ptr if mix is None else mix, rstd, dx, dbranch if branch2 is not None else any_ptr,
            dskip if skip2 is not None else any_ptr, dx0 if x02 is not None else any_ptr, partials, rows, d,
            _stride(dr2), _stride(dh2), dn2.stride(0), x2.stride(0), _stride(branch2), _stride(skip2),
            _stride(x02), dx.stride(0), _stride(dbranch if branch2 is not None else None),
            _stride(dskip if skip2 is not None else None), _stride(dx0 if x02 is not None else None), scale,
            HAS_BRANCH=branch2 is not None, HAS_SKIP=skip_gate is not None, SKIP_SELF=skip_self,
            HAS_MIX=mix is not None, HAS_DR=dr2 is not None, HAS_DH=dh2 is not None,
            BLOCK_R=block_r, BLOCK_D=block, num_warps=warps)
    return dx, dbranch, dskip, dx0, partials


# ----------------------------------------------------------------------------- custom ops

@torch.library.custom_op("triton_golf::residual_norm", mutates_args=())
def _residual_norm_op(x: torch.Tensor, branch: torch.Tensor | None, branch_scale: torch.Tensor | None,
                      skip: torch.Tensor | None, skip_gate: torch.Tensor | None, skip_weight: torch.Tensor | None,
                      x0: torch.Tensor | None, mix: torch.Tensor | None, scale: float, eps: float, skip_self: bool,
                      keep_residual: bool, out_dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (r, h, n, rstd): r empty unless keep_residual; rstd (fp32, x.shape[:-1]) is saved for backward."""
    d = x.shape[-1]
    vec = (lambda t: None if t is None else t.contiguous())
    r, h, n, rstd = _residual_norm_forward(
        _rows(x, d), _rows(branch, d), vec(branch_scale), _rows(skip, d), vec(skip_gate), vec(skip_weight),
        _rows(x0, d), vec(mix), scale, eps, skip_self, keep_residual, out_dtype)
    return (r.reshape(x.shape) if keep_residual else r, h.reshape(x.shape), n.reshape(x.shape),
            rstd.reshape(x.shape[:-1]))


@_residual_norm_op.register_fake
def _(x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, scale, eps, skip_self, keep_residual,
      out_dtype):
    r = torch.empty_like(x) if keep_residual else x.new_empty(0)
    return (r, torch.empty_like(x), x.new_empty(x.shape, dtype=out_dtype),
            x.new_empty(x.shape[:-1], dtype=torch.float32))


@torch.library.custom_op("triton_golf::residual_norm_backward", mutates_args=())
def _residual_norm_backward_op(dr: torch.Tensor | None, dh: torch.Tensor | None, dn: torch.Tensor, x: torch.Tensor,
                               branch: torch.Tensor | None, branch_scale: torch.Tensor | None,
                               skip: torch.Tensor | None, skip_gate: torch.Tensor | None,
                               skip_weight: torch.Tensor | None, x0: torch.Tensor | None, mix: torch.Tensor | None,
                               rstd: torch.Tensor, scale: float, skip_self: bool) -> list[torch.Tensor]:
    """Returns [dx, dbranch, dskip, dx0, param_sums]: empty for absent inputs; param_sums (5, D) fp32 holds the
    per-channel gradients of branch_scale, skip_gate, skip_weight, mix[0], mix[1] (one tensor: no copies)."""
    d = x.shape[-1]
    vec = (lambda t: None if t is None else t.contiguous())
    dx, dbranch, dskip, dx0, partials = _residual_norm_backward(
        _rows(dr, d), _rows(dh, d), _rows(dn, d), _rows(x, d), _rows(branch, d), vec(branch_scale), _rows(skip, d),
        vec(skip_gate), vec(skip_weight), _rows(x0, d), vec(mix), rstd.reshape(-1), scale, skip_self)

    def grad(t, g):  # outputs may not alias each other: a fresh empty tensor for each absent input
        return x.new_empty(0) if t is None else g.reshape(t.shape)

    return [grad(x, dx), grad(branch, dbranch), grad(skip, dskip), grad(x0, dx0), partials.sum(1)]


@_residual_norm_backward_op.register_fake
def _(dr, dh, dn, x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, rstd, scale, skip_self):
    like = (lambda t: torch.empty_like(t) if t is not None else x.new_empty(0))
    return [like(x), like(branch), like(skip), like(x0), x.new_empty((_PARAM_GRADS, x.shape[-1]), dtype=torch.float32)]


def _setup_context(ctx, inputs, output):
    x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, scale, _, skip_self, keep_residual, _ = inputs
    r, _, _, rstd = output
    ctx.mark_non_differentiable(rstd)
    if not keep_residual:
        ctx.mark_non_differentiable(r)
    ctx.set_materialize_grads(False)  # an unused h or r passes no gradient: the kernel skips reading it
    ctx.save_for_backward(x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, rstd)
    ctx.scale, ctx.skip_self = scale, skip_self


def _backward(ctx, dr, dh, dn, d_rstd_unused):
    x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, rstd = ctx.saved_tensors
    if dn is None:
        dn = torch.zeros_like(x)
    dx, dbranch, dskip, dx0, sums = torch.ops.triton_golf.residual_norm_backward(
        dr, dh, dn, x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, rstd, ctx.scale, ctx.skip_self)
    grads = (dx, dbranch, sums[0], dskip, sums[1], sums[2], dx0, sums[3:5])
    inputs = (x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix)
    return (*(None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs)), None, None, None, None, None)


_residual_norm_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API

def residual_norm(x: torch.Tensor, scale: float = 1.0, *, branch: torch.Tensor | None = None,
                  branch_scale: torch.Tensor | None = None, skip: torch.Tensor | None = None,
                  skip_gate: torch.Tensor | None = None, skip_weight: torch.Tensor | None = None,
                  x0: torch.Tensor | None = None, mix: torch.Tensor | None = None, keep_residual: bool = False,
                  eps: float | None = None):
    """Same semantics as kernels.reference.residual_norm: (h, n), or (r, h, n) with `keep_residual`.

    x, skip, x0: (..., D) float32/bfloat16/float16 of one dtype and shape; branch: (..., D) of any of those
    dtypes; branch_scale, skip_gate, skip_weight: (D,); mix: (2, D). n is in the autocast dtype under autocast.
    """
    if x.dim() < 1 or x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"residual_norm: x must be a float32/bfloat16/float16 tensor with >= 1 dim, got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    d = x.shape[-1]
    for name, t, shape in (("branch", branch, x.shape), ("skip", skip, x.shape), ("x0", x0, x.shape),
                           ("branch_scale", branch_scale, (d,)), ("skip_gate", skip_gate, (d,)),
                           ("skip_weight", skip_weight, (d,)), ("mix", mix, (2, d))):
        if t is not None and (tuple(t.shape) != tuple(shape) or t.dtype not in _SUPPORTED_DTYPES):
            raise ValueError(f"residual_norm: {name} must be a float tensor of shape {tuple(shape)}, got "
                             f"{t.dtype} {tuple(t.shape)}")
    for name, t in (("skip", skip), ("x0", x0)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"residual_norm: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    if (branch is None) != (branch_scale is None) or (skip_gate is None) != (skip_weight is None) \
            or (x0 is None) != (mix is None) or (skip is not None and skip_gate is None):
        raise ValueError("residual_norm: branch needs branch_scale, skip_gate needs skip_weight, x0 needs mix, "
                         "and skip needs skip_gate")
    out_dtype = autocast_dtype(x)
    r, h, n, _ = torch.ops.triton_golf.residual_norm(
        x, branch, branch_scale, skip, skip_gate, skip_weight, x0, mix, float(scale),
        float(default_eps(x.dtype) if eps is None else eps), skip_gate is not None and skip is None,
        bool(keep_residual), out_dtype)
    return (r, h, n) if keep_residual else (h, n)
