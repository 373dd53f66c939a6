"""Fused causal grouped-query attention (FlashAttention-2 style), forward and backward, in Triton.

Forward: one program per (query block, batch * query head); online softmax in the exp2 domain
(log2(e) folded into the 1/sqrt(D) scale); fully masked KV blocks beyond the diagonal are never
visited, and only the diagonal blocks pay for the causal mask. It stores the log-sum-exp
(B, Hq, T) fp32 for the backward. GQA: query head h reads KV head h // (Hq // Hkv) straight from
k and v; repeated K/V are never materialized.

Backward: delta = rowsum(dO * O) by a small kernel; dK/dV by one program per (KV block, batch *
KV head) that loops over the query heads of its group (so no atomics); dQ by one program per
(query block, batch * query head). Both recompute P from the LSE.

XSA (exclusive self-attention) is a separate cheap epilogue op here, exclusive_projection(y, v). The fused
QK-norm + partial-RoPE ops live in kernels/rope.py and are re-exported because kernels/triton_ops.py
imports the whole attention family from this file.

FLOPs (causal, forward): 2 * B * Hq * T^2 * D (two matmuls over half the T x T square);
backward: 2.5x that by the usual count (five matmuls over the half square); this implementation
executes seven (QK^T and dO V^T are computed in both the dK/dV and the dQ kernel), i.e. 3.5x.
XSA: about 4 * B * T * Hq * D forward and 10 * B * T * Hq * D backward (memory-bound).
"""
import math
import os

import torch
import triton
import triton.language as tl

from kernels.rope import qk_norm_rope, rotate_half_split  # noqa: F401  (attention family re-exports)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (32, 64, 128)
XSA_EPS = 1e-12  # F.normalize's eps in the twin
XSA_BLOCK_ROWS = 64 if INTERPRET else 16  # the interpreter pays per program; a GPU wants many programs


def _configs(gpu: list[tuple[int, int, int, int]]):
    """Autotune configs (BLOCK_M, BLOCK_N, num_warps, num_stages): one 64 x 64 under the interpreter (it cannot
    benchmark, and tests pick explicit blocks), a short list on GPU so first-call tuning stays cheap."""
    chosen = [(64, 64, 4, 1)] if INTERPRET else gpu
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in chosen]


# BLOCK_M = queries, BLOCK_N = keys. Forward and dQ need BLOCK_M % BLOCK_N == 0, dK/dV BLOCK_N % BLOCK_M == 0.
FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 2), (64, 32, 4, 2),
                        (128, 128, 8, 2)])
DKDV_CONFIGS = _configs([(32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3)])
DQ_CONFIGS = _configs([(128, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3)])


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, lo, hi, T,
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
            s = tl.where(offs_m[:, None] >= offs_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=FWD_CONFIGS, key=["T", "HEAD_DIM"])
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                     stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                     stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
                     Hq, T, GROUP, qk_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q_base = q_ptr + b * stride_qb + h * stride_qh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # keys [0, start_m) lie entirely in the past of every query in the block (BLOCK_M % BLOCK_N == 0)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                                    0, start_m, T, qk_scale, BLOCK_N, False, UPCAST, PRECISION)
    # the diagonal: keys [start_m, min(start_m + BLOCK_M, T)) with the causal mask; later keys are skipped
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                                    start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, BLOCK_N, True,
                                    UPCAST, PRECISION)
    acc = acc / l_i[:, None]
    o_base = o_ptr + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) / 1.4426950408889634  # natural-log LSE of the scaled scores
    tl.store(lse_ptr + pid_bh * T + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, stride_ob, stride_ot, stride_oh,
                           stride_dob, stride_dot, stride_doh, Hq, T,
                           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, t] = sum_d dO * O, fp32."""
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m[:, None] < T
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=row_ok, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=row_ok, other=0.0).to(tl.float32)
    tl.store(delta_ptr + pid_bh * T + offs_m, tl.sum(o * do, 1), mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                         offs_n, offs_d, lo, hi, T, qk_scale,
                         BLOCK_M: tl.constexpr, CAUSAL_MASK: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr):
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        qt = tl.load(q_base + offs_m[None, :] * stride_qt + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        if UPCAST:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        # rows past T get lse = +inf, hence P = 0: they contribute nothing
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        pt = tl.math.exp2(tl.dot(k, qt, input_precision=PRECISION) * qk_scale - lse2[None, :])  # (N, M)
        if CAUSAL_MASK:
            pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=["T", "HEAD_DIM", "GROUP"])
@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                          stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                          stride_vb, stride_vt, stride_vh, stride_dob, stride_dot, stride_doh,
                          stride_dkb, stride_dkt, stride_dkh, stride_dvb, stride_dvt, stride_dvh,
                          Hq, Hkv, T, GROUP, qk_scale, sm_scale,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    pid_bh = tl.program_id(1)
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < T
    k = tl.load(k_ptr + b * stride_kb + hk * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=key_ok, other=0.0)
    v = tl.load(v_ptr + b * stride_vb + hk * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=key_ok, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    diag_end = tl.minimum(start_n + BLOCK_N, T)  # BLOCK_N % BLOCK_M == 0, so the stages tile exactly
    for g in range(GROUP):  # every query head of this KV head's group, accumulated in registers
        h = hk * GROUP + g
        q_base = q_ptr + b * stride_qb + h * stride_qh
        do_base = do_ptr + b * stride_dob + h * stride_doh
        lse_base = lse_ptr + (b * Hq + h) * T
        delta_base = delta_ptr + (b * Hq + h) * T
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt,
                                      stride_dot, offs_n, offs_d, start_n, diag_end, T, qk_scale,
                                      BLOCK_M, True, UPCAST, PRECISION)
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt,
                                      stride_dot, offs_n, offs_d, start_n + BLOCK_N, T, T, qk_scale,
                                      BLOCK_M, False, UPCAST, PRECISION)
    dk = dk * sm_scale
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=key_ok)
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=key_ok)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d, lo, hi,
                       T, qk_scale, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if CAUSAL_MASK:
            kv_ok = offs_n[None, :] < T
            kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None], mask=kv_ok, other=0.0)
            vt = tl.load(v_base + offs_n[None, :] * stride_vt + offs_d[:, None], mask=kv_ok, other=0.0)
        else:
            kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None])
            vt = tl.load(v_base + offs_n[None, :] * stride_vt + offs_d[:, None])
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        p = tl.math.exp2(tl.dot(q, kt, input_precision=PRECISION) * qk_scale - lse2[:, None])
        if CAUSAL_MASK:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=["T", "HEAD_DIM"])
@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                        stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                        stride_vb, stride_vt, stride_vh, stride_dob, stride_dot, stride_doh,
                        stride_dqb, stride_dqt, stride_dqh,
                        Hq, T, GROUP, qk_scale, sm_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // GROUP
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse2 = tl.load(lse_ptr + pid_bh * T + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + pid_bh * T + offs_m, mask=row_ok, other=0.0)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                            0, start_m, T, qk_scale, BLOCK_N, False, UPCAST, PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                            start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, BLOCK_N, True,
                            UPCAST, PRECISION)
    dq = dq * sm_scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
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


def _kernel_flags(dtype: torch.dtype) -> dict:
    """UPCAST: fp32 math inside the kernel (the interpreter cannot do bf16); PRECISION: exact fp32 dots."""
    return dict(UPCAST=INTERPRET, PRECISION="ieee" if dtype == torch.float32 else "tf32")


def _blocks(blocks: tuple[int, int] | None, dtype: torch.dtype) -> dict:
    """Launch kwargs for explicit (query, key) block sizes, or {} to let the autotuner choose.

    fp32 on a GPU is a correctness path (exact "ieee" dots, slow to compile): it gets fixed 64 x 64 blocks
    instead of a tuning sweep. Half-precision inputs on a GPU are autotuned.
    """
    if blocks is None and dtype == torch.float32 and not INTERPRET:
        blocks = (64, 64)
    if blocks is None:
        return {}
    block_m, block_n = blocks
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None,
                      lse: torch.Tensor | None = None, block_m: int | None = None,
                      block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal GQA attention: returns (o (B, T, Hq, D) in q's dtype, lse (B, Hq, T) fp32).

    `out`/`lse` may be preallocated (tests pass NaN-filled tensors to prove every element is written);
    block_m must be a multiple of block_n.
    """
    _check_qkv(q, k, v)
    B, T, Hq, D = q.shape
    Hkv = k.size(2)
    out = q.new_empty(q.shape) if out is None else out
    lse = q.new_empty((B, Hq, T), dtype=torch.float32) if lse is None else lse
    if out.shape != q.shape or out.stride(-1) != 1 or lse.shape != (B, Hq, T) or not lse.is_contiguous():
        raise ValueError(f"attention: out must be {tuple(q.shape)} with a contiguous last axis and lse a "
                         f"contiguous ({B}, {Hq}, {T}); got {tuple(out.shape)} and {tuple(lse.shape)}")
    if T == 0 or B * Hq == 0:
        return out, lse
    sm_scale = 1.0 / math.sqrt(D)
    if (block_m is None) != (block_n is None):
        raise ValueError("attention: pass both block_m and block_n, or neither")
    if block_m is not None and block_m % block_n:
        raise ValueError(f"attention: block_m {block_m} must be a multiple of block_n {block_n}")
    blocks = _blocks(None if block_m is None else (block_m, block_n), q.dtype)
    kernel = _attn_fwd_kernel.fn if blocks else _attn_fwd_kernel

    def grid(meta):
        return (triton.cdiv(T, meta["BLOCK_M"]), B * Hq)
    kernel[grid](q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                 Hq, T, Hq // Hkv, sm_scale * LOG2E, HEAD_DIM=D, **_kernel_flags(q.dtype), **blocks)
    return out, lse


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, dq: torch.Tensor | None = None, dk: torch.Tensor | None = None,
                       dv: torch.Tensor | None = None, dkdv_blocks: tuple[int, int] | None = None,
                       dq_blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of causal GQA attention from dO, the saved output and LSE.

    Block sizes are (queries, keys) per kernel, None for the autotuner: the dK/dV kernel needs keys a
    multiple of queries, the dQ kernel queries a multiple of keys. dq/dk/dv may be preallocated.
    """
    _check_qkv(q, k, v)
    B, T, Hq, D = q.shape
    Hkv = k.size(2)
    if do.shape != q.shape or do.stride(-1) != 1:
        raise ValueError(f"attention backward: dO {tuple(do.shape)} must match q {tuple(q.shape)} with a "
                         f"contiguous head_dim axis")
    dq = q.new_empty(q.shape) if dq is None else dq
    dk = k.new_empty(k.shape) if dk is None else dk
    dv = v.new_empty(v.shape) if dv is None else dv
    if T == 0 or B * Hq == 0:
        return dq, dk, dv
    dkdv_fixed = _blocks(dkdv_blocks, q.dtype)
    dq_fixed = _blocks(dq_blocks, q.dtype)
    if dkdv_blocks and dkdv_blocks[1] % dkdv_blocks[0]:
        raise ValueError(f"attention backward: dK/dV key block must be a multiple of its query block; "
                         f"got {dkdv_blocks}")
    if dq_blocks and dq_blocks[0] % dq_blocks[1]:
        raise ValueError(f"attention backward: dQ query block must be a multiple of its key block; got {dq_blocks}")
    sm_scale = 1.0 / math.sqrt(D)
    flags = _kernel_flags(q.dtype)
    delta = torch.empty((B, Hq, T), dtype=torch.float32, device=q.device)
    delta_block = 64
    _attn_bwd_delta_kernel[(triton.cdiv(T, delta_block), B * Hq)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], Hq, T, HEAD_DIM=D, BLOCK_M=delta_block)

    dkdv_kernel = _attn_bwd_dkdv_kernel.fn if dkdv_fixed else _attn_bwd_dkdv_kernel
    dkdv_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * Hkv)](
        q, k, v, do, lse, delta, dk, dv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3], Hq, Hkv, T, Hq // Hkv, sm_scale * LOG2E, sm_scale,
        HEAD_DIM=D, **flags, **dkdv_fixed)
    dq_kernel = _attn_bwd_dq_kernel.fn if dq_fixed else _attn_bwd_dq_kernel
    dq_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * Hq)](
        q, k, v, do, lse, delta, dq, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dq.stride()[:3], Hq, T, Hq // Hkv, sm_scale * LOG2E, sm_scale, HEAD_DIM=D, **flags, **dq_fixed)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# XSA epilogue: out_h = y_h - <y_h, v_hat> v_hat, v_hat = v / max(||v||, eps) of the token's KV head.
# One program handles BLOCK_R (token, KV head) rows, loads v once and loops over the group's query heads.
# Backward (I - v_hat v_hat^T is symmetric): dy = P g; d v_hat = -sum_h (<y_h,v_hat> g_h + <g_h,v_hat> y_h);
# dv = (I - v_hat v_hat^T) d v_hat / ||v||, or d v_hat / eps where ||v|| < eps (F.normalize's clamp).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _xsa_fwd_kernel(y_ptr, v_ptr, out_ptr, n_rows, Hkv, GROUP, stride_yb, stride_yt, stride_yh,
                    stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh, T, D, eps,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # row = (b * T + t) * Hkv + hk
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (offs_d[None, :] < D)
    hk = rows % Hkv
    t = (rows // Hkv) % T
    b = rows // (Hkv * T)
    v = tl.load(v_ptr + (b * stride_vb + t * stride_vt + hk * stride_vh)[:, None] + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    u = v / tl.maximum(tl.sqrt(tl.sum(v * v, 1)), eps)[:, None]
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
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (offs_d[None, :] < D)
    hk = rows % Hkv
    t = (rows // Hkv) % T
    b = rows // (Hkv * T)
    v_off = (b * stride_vb + t * stride_vt + hk * stride_vh)[:, None] + offs_d[None, :]
    v = tl.load(v_ptr + v_off, mask=mask, other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(v * v, 1))
    denom = tl.maximum(norm, eps)
    u = v / denom[:, None]
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
    # through v_hat = v / max(||v||, eps): tangential part / ||v|| when unclamped, plain / eps when clamped
    radial = tl.where(norm >= eps, tl.sum(du * u, 1), 0.0)
    dv = (du - radial[:, None] * u) / denom[:, None]
    tl.store(dv_ptr + v_off, dv.to(dv_ptr.dtype.element_ty), mask=mask)


def _check_xsa(y: torch.Tensor, v: torch.Tensor) -> None:
    if y.dim() != 4 or v.dim() != 4 or y.shape[:2] != v.shape[:2] or y.size(3) != v.size(3):
        raise ValueError(f"exclusive_projection: y must be (B, T, Hq, D) and v (B, T, Hkv, D); "
                         f"got {tuple(y.shape)} and {tuple(v.shape)}")
    if v.size(2) == 0 or y.size(2) % v.size(2) != 0:
        raise ValueError(f"exclusive_projection: query heads {y.size(2)} must be a multiple of KV heads {v.size(2)}")
    if y.dtype != v.dtype:
        raise ValueError(f"exclusive_projection: y and v must share a dtype; got {y.dtype} and {v.dtype}")


def _xsa_launch_shape(v: torch.Tensor, block_r: int):
    B, T, Hkv, D = v.shape
    n_rows = B * T * Hkv
    return n_rows, (triton.cdiv(n_rows, block_r),), triton.next_power_of_2(D)


def xsa_forward(y: torch.Tensor, v: torch.Tensor, out: torch.Tensor | None = None,
                block_r: int = XSA_BLOCK_ROWS) -> torch.Tensor:
    """y - <y, v_hat> v_hat per head; `out` may be preallocated (tests poison it)."""
    _check_xsa(y, v)
    y, v = y.contiguous(), v.contiguous()
    out = torch.empty_like(y) if out is None else out
    n_rows, grid, block_d = _xsa_launch_shape(v, block_r)
    if n_rows == 0:
        return out
    _xsa_fwd_kernel[grid](y, v, out, n_rows, v.size(2), y.size(2) // v.size(2), *y.stride()[:3],
                          *v.stride()[:3], *out.stride()[:3], v.size(1), v.size(3), XSA_EPS,
                          BLOCK_R=block_r, BLOCK_D=block_d)
    return out


def xsa_backward(grad: torch.Tensor, y: torch.Tensor, v: torch.Tensor, dy: torch.Tensor | None = None,
                 dv: torch.Tensor | None = None, block_r: int = XSA_BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dv) of the XSA epilogue; dy/dv may be preallocated contiguous tensors (tests poison them)."""
    _check_xsa(y, v)
    grad, y, v = grad.contiguous(), y.contiguous(), v.contiguous()
    dy = torch.empty_like(y) if dy is None else dy
    dv = torch.empty_like(v) if dv is None else dv
    if not (dy.is_contiguous() and dv.is_contiguous()):
        raise ValueError("exclusive_projection backward: preallocated dy and dv must be contiguous")
    n_rows, grid, block_d = _xsa_launch_shape(v, block_r)
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
    """XSA epilogue (B, T, Hq, D): the twin of reference.exclusive_projection."""
    _check_xsa(y, v)
    return _xsa_op(y, v)

# ----------------------------------------------------------------------------------------------
# torch.library registration and the public function
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("triton_golf::causal_gqa_attention", mutates_args=())
def causal_gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of causal GQA attention; the op autograd and torch.compile see."""
    return attention_forward(q, k, v)


@causal_gqa_attention.register_fake
def _(q, k, v):
    B, T, Hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, Hq, T), dtype=torch.float32)


@torch.library.custom_op("triton_golf::causal_gqa_attention_backward", mutates_args=())
def causal_gqa_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  o: torch.Tensor, lse: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(do if do.stride(-1) == 1 else do.contiguous(), q, k, v, o, lse)


@causal_gqa_attention_backward.register_fake
def _(do, q, k, v, o, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    return causal_gqa_attention_backward(do, q, k, v, o, lse)


causal_gqa_attention.register_autograd(_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, xsa: bool = False) -> torch.Tensor:
    """Causal GQA attention (B, T, Hq, D), scale 1/sqrt(D), optionally XSA: the twin of reference.attention."""
    _check_qkv(q, k, v)
    y, _ = causal_gqa_attention(q, k, v)
    return exclusive_projection(y, v) if xsa else y
