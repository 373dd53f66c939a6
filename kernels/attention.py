"""Fused causal grouped-query attention (FlashAttention-2 style) in Triton: forward kernel, launchers, custom ops.

Forward: one program per (block of query positions, batch, pack of PACK query heads of one KV group). The
pack's heads are stacked as rows of one BLOCK_M-row tile (BLOCK_M / PACK positions each), so every K/V tile
is loaded once for the pack, and the masked diagonal spans BLOCK_M / PACK positions instead of BLOCK_M (half
the wasted above-diagonal work per head at PACK 2; the seed's 8 query / 4 KV heads pack 2). Online
softmax in the exp2 domain (log2(e) folded into the 1/sqrt(D) scale); keys past the diagonal are never
visited and only the diagonal tile pays for the causal mask. Programs are launched longest rows first
(the last query block has the most keys), so the short ones fill the tail. It stores the log-sum-exp
(B, Hq, T) fp32 for the backward.

XSA fused into the epilogue (xsa=True): the program already holds y in fp32; it loads the token's own
value row, projects y off v_hat (kernels/xsa.py) and stores out plus the coefficient c = <y, v_hat>
(B, Hq, T) fp32, from which the backward rebuilds y = out + c v_hat. Against the separate XSA pass this
saves a read and a write of y (2 |y| bytes) and a launch in the forward, and in the backward a read of y,
the XSA kernel's launch and the dv add (kernels/attention_backward.py). `fuse_xsa=False` keeps the
separate pass selectable.

FLOPs (causal, forward): 2 * B * Hq * T^2 * D (two matmuls over half the T x T square). The backward
(five matmul units per tile, see kernels/attention_backward.py) is 2.5x that.
Offsets: batch and head bases are int64; offsets inside one batch element are int32, and the launchers
reject a batch element of 2^31 elements or more with a clear error.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.attention_backward import attention_backward
from kernels.attention_common import (DEFAULT_DQ_MODE, DQ_MODES, INTERPRET, LOG2E, check_dq_mode,  # noqa: F401
                                      check_int32_span, check_qkv, kernel_flags)  # (re-exported)
from kernels.autocast import cast_to_one_dtype
from kernels.rope import qk_norm_rope, rotate_half_split  # noqa: F401  (attention family re-exports)
from kernels.xsa import XSA_EPS, exclusive_projection, xsa_unit  # noqa: F401

# fp32 on a GPU is a correctness path: exact "ieee" dots run on CUDA cores, so small fixed blocks (spill-free), no sweep
GPU_FP32_LAUNCH = dict(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=1)

# (BLOCK_M tile rows, BLOCK_N keys, num_warps, num_stages); a tile holds PACK heads x BLOCK_M / PACK positions,
# and BLOCK_M / PACK must be a multiple of BLOCK_N. Spill-free at head_dim 64 on sm_80 and sm_90a (python -m
# bench.aot); 128 x 64 with 4 warps and 128 x 128 spilled on sm_80 and were dropped. Interpreter: one config (it
# cannot benchmark), valid for PACK 1 and 2.
FWD_GPU_CONFIGS = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 2), (64, 32, 4, 2)]
FWD_CONFIGS = [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s)
               for m, n, w, s in ([(128, 64, 4, 1)] if INTERPRET else FWD_GPU_CONFIGS)]


def _prune_fwd(configs, named_args, **kwargs):
    """Keep the configs whose tile fits the head pack: BLOCK_M / PACK positions, a multiple of BLOCK_N."""
    pack = kwargs["PACK"]
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] // pack) % c.kwargs["BLOCK_N"] == 0]
    if not kept:
        raise ValueError(f"attention: no forward config fits a pack of {pack} heads")
    return kept


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, pos, offs_d, lo, hi, T,
                    qk_scale, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if CAUSAL_MASK:  # the diagonal block: keys may pass T and the future must be masked
            kv_ok = offs_n < T
            kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None], mask=kv_ok[None, :], other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_ok[:, None], other=0.0)
        else:  # keys strictly before the query block: all in range, no mask
            kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None])
            v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :])
        if UPCAST:
            kt = kt.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if CAUSAL_MASK:
            s = tl.where(pos[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=FWD_CONFIGS, key=["T", "HEAD_DIM", "PACK", "XSA"],
                 prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, coef_ptr,
                     stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                     stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
                     Hq, T, GROUP, qk_scale, xsa_eps,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PACK: tl.constexpr,
                     XSA: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    POS: tl.constexpr = BLOCK_M // PACK
    packs = Hq // PACK
    b = (tl.program_id(0) // packs).to(tl.int64)
    h0 = (tl.program_id(0) % packs) * PACK
    hk = h0 // GROUP
    start_m = ((T - 1) // POS - tl.program_id(1)) * POS  # the longest rows first
    rows = tl.arange(0, BLOCK_M)
    pos = start_m + rows % POS  # row r: head h0 + r // POS at position pos
    head = h0 + rows // POS
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = pos < T
    q = tl.load(q_ptr + b * stride_qb + (pos * stride_qt + head * stride_qh)[:, None] + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # keys [0, start_m) lie entirely in the past of every query in the block (POS % BLOCK_N == 0)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, pos, offs_d,
                                    0, start_m, T, qk_scale, BLOCK_N, False, UPCAST, PRECISION)
    # the diagonal: keys [start_m, min(start_m + POS, T)) with the causal mask; later keys are skipped
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, pos, offs_d,
                                    start_m, tl.minimum(start_m + POS, T), T, qk_scale, BLOCK_N, True,
                                    UPCAST, PRECISION)
    y = acc / l_i[:, None]
    stat_off = (b * Hq + head) * T + pos
    if XSA:  # out = y - <y, v_hat> v_hat with the token's own value row; keep c for the backward
        v_row = tl.load(v_base + pos[:, None] * stride_vt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        u, _, _ = xsa_unit(v_row.to(tl.float32), xsa_eps)
        c = tl.sum(y * u, 1)
        y = y - c[:, None] * u
        tl.store(coef_ptr + stat_off, c, mask=row_ok)
    tl.store(o_ptr + b * stride_ob + (pos * stride_ot + head * stride_oh)[:, None] + offs_d[None, :],
             y.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + stat_off, (m_i + tl.math.log2(l_i)) / 1.4426950408889634, mask=row_ok)  # natural-log LSE


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
def head_pack(group: int) -> int:
    """Query heads stacked per forward tile: 2 when the KV group has an even size (the seed's 8/4), else 1."""
    return 2 if group % 2 == 0 else 1


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None,
                      lse: torch.Tensor | None = None, xsa: bool = False, coef: torch.Tensor | None = None,
                      block_m: int | None = None, block_n: int | None = None,
                      pack: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal GQA attention: (out (B, T, Hq, D) in q's dtype, lse (B, Hq, T) fp32, coef).

    xsa: the XSA epilogue is applied and coef (B, Hq, T) fp32 holds <y, v_hat>; otherwise coef is empty.
    out/lse/coef may be preallocated (tests pass NaN-filled tensors). block_m are tile rows (pack heads x
    block_m / pack positions), a multiple of pack * block_n; None for the autotuner.
    """
    check_qkv(q, k, v)
    B, T, Hq, D = q.shape
    group = Hq // k.size(2)
    pack = head_pack(group) if pack is None else pack
    if pack < 1 or group % pack:
        raise ValueError(f"attention: head pack {pack} must divide the KV group size {group}")
    out = q.new_empty(q.shape) if out is None else out
    lse = q.new_empty((B, Hq, T), dtype=torch.float32) if lse is None else lse
    stats = (B, Hq, T) if xsa else (0,)
    coef = q.new_empty(stats, dtype=torch.float32) if coef is None else coef
    if out.shape != q.shape or out.stride(-1) != 1 or lse.shape != (B, Hq, T) or not lse.is_contiguous():
        raise ValueError(f"attention: out must be {tuple(q.shape)} with a contiguous last axis and lse a "
                         f"contiguous ({B}, {Hq}, {T}); got {tuple(out.shape)} and {tuple(lse.shape)}")
    if coef.shape != stats or not coef.is_contiguous():
        raise ValueError(f"attention: coef must be a contiguous {stats}; got {tuple(coef.shape)}")
    check_int32_span(out)
    if T == 0 or B * Hq == 0:
        return out, lse, coef
    if (block_m is None) != (block_n is None):
        raise ValueError("attention: pass both block_m and block_n, or neither")
    if block_m is not None and (block_m % pack or (block_m // pack) % block_n):
        raise ValueError(f"attention: block_m {block_m} must be a multiple of pack {pack} x block_n {block_n}")
    fixed = {} if block_m is None else dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2)
    if block_m is None and q.dtype == torch.float32 and not INTERPRET:
        fixed = GPU_FP32_LAUNCH
    kernel = _attn_fwd_kernel.fn if fixed else _attn_fwd_kernel

    def grid(meta):  # heads fastest, so every head's longest block is dispatched before any shorter one
        return (B * Hq // pack, triton.cdiv(T, meta["BLOCK_M"] // pack))
    kernel[grid](q, k, v, out, lse, coef, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                 Hq, T, group, LOG2E / math.sqrt(D), XSA_EPS, HEAD_DIM=D, PACK=pack, XSA=xsa,
                 **kernel_flags(q.dtype), **fixed)
    return out, lse, coef


# ----------------------------------------------------------------------------------------------
# torch.library registration and the public function
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_golf::causal_gqa_attention", mutates_args=())
def causal_gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, xsa: bool = False,
                         dq_mode: str = DEFAULT_DQ_MODE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, coef) of causal GQA attention, XSA fused when `xsa`; the op autograd and torch.compile see.
    dq_mode picks the backward's dQ path (kernels/attention_backward.py)."""
    return attention_forward(q, k, v, xsa=xsa)


@causal_gqa_attention.register_fake
def _(q, k, v, xsa=False, dq_mode=DEFAULT_DQ_MODE):
    B, T, Hq, _ = q.shape
    stats = q.new_empty((B, Hq, T), dtype=torch.float32)
    return q.new_empty(q.shape), stats, (stats.new_empty((B, Hq, T)) if xsa else stats.new_empty((0,)))


@torch.library.custom_op("triton_golf::causal_gqa_attention_backward", mutates_args=())
def causal_gqa_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  o: torch.Tensor, lse: torch.Tensor, coef: torch.Tensor, xsa: bool,
                                  dq_mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:

    return attention_backward(do if do.stride(-1) == 1 else do.contiguous(), q, k, v, o, lse,
                                  coef=coef if xsa else None, dq_mode=dq_mode)


@causal_gqa_attention_backward.register_fake
def _(do, q, k, v, o, lse, coef, xsa, dq_mode):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, xsa, dq_mode = inputs
    o, lse, coef = output
    ctx.mark_non_differentiable(lse, coef)
    ctx.save_for_backward(q, k, v, o, lse, coef)
    ctx.xsa, ctx.dq_mode = xsa, dq_mode


def _backward(ctx, do, _dlse, _dcoef):
    q, k, v, o, lse, coef = ctx.saved_tensors
    dq, dk, dv = causal_gqa_attention_backward(do, q, k, v, o, lse, coef, ctx.xsa, ctx.dq_mode)
    return dq, dk, dv, None, None


causal_gqa_attention.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, xsa: bool = False, fuse_xsa: bool = True,
              dq_mode: str = DEFAULT_DQ_MODE) -> torch.Tensor:
    """Causal GQA attention (B, T, Hq, D), scale 1/sqrt(D), optionally XSA: the twin of reference.attention.

    fuse_xsa=False runs XSA as the separate pass (kernels/xsa.py); dq_mode selects the backward's dQ path.
    Under autocast q, k, v are cast to the autocast dtype (kernels.autocast's rule).
    """
    q, k, v = cast_to_one_dtype(q, k, v)
    check_qkv(q, k, v)
    check_dq_mode(dq_mode)
    fused = xsa and fuse_xsa
    y, _, _ = causal_gqa_attention(q, k, v, fused, dq_mode)
    return exclusive_projection(y, v) if xsa and not fused else y
