"""Backward of the fused causal GQA attention (kernels/attention.py), with the XSA epilogue's backward fused in.

Three launches:
1. Preprocess, one program per (token block, batch, KV head): delta = rowsum(dY * Y) for each query head of
   the group. With XSA it also turns the output gradient g into dY = g - <g, v_hat> v_hat, rebuilds
   Y = out + c v_hat from the forward's coefficient, and writes the XSA part of dV (fp32) for step 2 to add:
   the standalone XSA backward, its extra read of y and the dv add disappear.
2. The main kernel, one program per (batch, KV head, key block of BLOCK_N keys), heaviest first (key block 0
   meets every query block). K and V stay in registers while the program walks every query head of the
   group (each K/V tile is loaded once per group) and every query block at or after its diagonal; only the
   diagonal tiles pay for the causal mask. Per (BLOCK_N keys x BLOCK_M queries) tile it runs five matmul
   units: S^T = K Q^T; dV += P^T dO; dP^T = V dO^T; dK += dS^T Q; dQ_part = dS K. (The old path computed
   dQ in its own kernel, recomputing S and dP there: seven units, 3.5x the forward instead of 2.5x.)
3. dQ from the partials, by `dq_mode`:
   - "two_stage" (deterministic): each program stores its dQ_part to an fp32 scratch indexed by
     (key block, query row), packed triangularly (key block j holds rows j * BLOCK_N .. T-1), and a reduce
     kernel sums the partials of each query row over key blocks in a fixed order, scales and casts.
     Scratch: about T / (2 BLOCK_N) + 1/2 times an fp32 dQ (at the seed's B48 T2048 8 heads BLOCK_N 128:
     8.5 x 201 MB = 1.7 GB, transient), written once and read once.
   - "atomic": fp32 atomic adds of dQ_part into one fp32 dQ (FlashAttention-2's way), then a scale + cast.
     No scratch beyond one fp32 dQ, but the summation order, hence the last bits, varies run to run.
   - "separate" (default, deterministic): step 2 skips dQ (four units) and the old dQ kernel recomputes S and
     dP per query block (three units): seven in all, no scratch.
   Cost model (not measured; no GPU has run this): at the seed's shape the backward is about 0.5 TFLOP per
   layer and GPU; "two_stage" adds about 3.4 GB of memory traffic to it, "separate" adds 40 % of its
   FLOPs, "atomic" adds 1.7 GB of L2 reductions. Which is fastest is for a GPU to decide (bench
   `attention bwd` cases); the default stays deterministic unless a measurement shows it more than 5 %
   slower than "atomic"; among the deterministic two, the roofline projection (bench/rehearsal/roofline.py)
   picks "separate" at the seed's shapes on H100 and A100 until a GPU measures them. An ordered-semaphore
   variant (FlashAttention-3's deterministic mode) would avoid the scratch but relies on spin-waits and block
   scheduling order that cannot be tested without a GPU.
FLOPs: 2.5x the forward (five matmuls over the half square); "separate" executes 3.5x.
"""
import math

import torch
import triton
import triton.language as tl

from kernels.attention_common import (DEFAULT_DQ_MODE, INTERPRET, LOG2E, check_dq_mode, check_int32_span, check_qkv,
                                      kernel_flags)
from kernels.xsa import XSA_EPS, xsa_dv, xsa_unit

# main kernel: BLOCK_N keys per program is picked by the launcher (it fixes the two-stage scratch layout);
# the autotuner picks (BLOCK_M queries per step, num_warps, num_stages). BLOCK_N % BLOCK_M == 0.
BWD_BLOCK_N = {32: 128, 64: 128, 128: 64}  # per head_dim, half precision on a GPU


def bwd_gpu_configs(arch: int) -> list[tuple[int, int, int]]:
    """(BLOCK_M, num_warps, num_stages) of the main kernel on a GPU of compute capability `arch`.x: the ones that
    compile without spills at BLOCK_N 128, head_dim 64, in every dQ mode, with and without XSA, on triton 3.6 and
    3.7 (python -m bench.aot). sm_80 keeps the mma.sync operands in registers: only the single-stage 32-query
    step fits (247-255 registers); sm_90's wgmma reads them from shared memory and leaves room for software
    pipelining (180-252 registers)."""
    return [(32, 8, 1)] + ([(16, 8, 2), (32, 8, 2), (32, 8, 3), (64, 8, 1)] if arch >= 9 else [])


GPU_ARCH = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9
BWD_CONFIGS = [triton.Config(dict(BLOCK_M=m), num_warps=w, num_stages=s)
               for m, w, s in ([(64, 4, 1)] if INTERPRET else bwd_gpu_configs(GPU_ARCH))]
# the "separate" dQ kernel: (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages), BLOCK_M % BLOCK_N == 0
DQ_GPU_CONFIGS = [(128, 32, 8, 2), (64, 32, 4, 3)]
DQ_CONFIGS = [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s)
              for m, n, w, s in ([(64, 64, 4, 1)] if INTERPRET else DQ_GPU_CONFIGS)]
# fp32 on a GPU (exact "ieee" dots on CUDA cores, a correctness path): small fixed blocks that do not spill
GPU_FP32_MAIN = (16, dict(BLOCK_M=16, num_warps=4, num_stages=1))  # (BLOCK_N, launch kwargs)
GPU_FP32_DQ = dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)
ROW_BLOCK = 64 if INTERPRET else 32  # token rows per program of the memory-bound preprocess and reduce kernels
DQ_MODE_IDS = {"separate": 0, "atomic": 1, "two_stage": 2}


@triton.jit
def _attn_bwd_preprocess_kernel(o_ptr, do_ptr, v_ptr, coef_ptr, dy_ptr, delta_ptr, dvx_ptr,
                                stride_ob, stride_ot, stride_oh, stride_dob, stride_dot, stride_doh,
                                stride_vb, stride_vt, stride_vh, Hq, Hkv, T, GROUP, xsa_eps,
                                HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, XSA: tl.constexpr):
    """delta = rowsum(dY * Y) fp32 (B, Hq, T). XSA: dy (contiguous (B, T, Hq, D)) and dvx (fp32 (B, T, Hkv, D))."""
    b = (tl.program_id(0) // Hkv).to(tl.int64)
    hk = tl.program_id(0) % Hkv
    pos = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = pos < T
    if XSA:
        v = tl.load(v_ptr + b * stride_vb + hk * stride_vh + pos[:, None] * stride_vt + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        u, norm, denom = xsa_unit(v, xsa_eps)
        du = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        o = tl.load(o_ptr + b * stride_ob + h * stride_oh + pos[:, None] * stride_ot + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0).to(tl.float32)
        grad = tl.load(do_ptr + b * stride_dob + h * stride_doh + pos[:, None] * stride_dot + offs_d[None, :],
                       mask=row_ok[:, None], other=0.0).to(tl.float32)
        stat_off = (b * Hq + h) * T + pos
        if XSA:
            c = tl.load(coef_ptr + stat_off, mask=row_ok, other=0.0)
            gu = tl.sum(grad * u, 1)
            y = o + c[:, None] * u
            du -= c[:, None] * grad + gu[:, None] * y
            dy = (grad - gu[:, None] * u).to(dy_ptr.dtype.element_ty)  # what the main kernel will read
            tl.store(dy_ptr + ((b * T + pos) * Hq + h)[:, None] * HEAD_DIM + offs_d[None, :], dy,
                     mask=row_ok[:, None])
            delta = tl.sum(dy.to(tl.float32) * y, 1)
        else:
            delta = tl.sum(grad * o, 1)
        tl.store(delta_ptr + stat_off, delta, mask=row_ok)
    if XSA:
        tl.store(dvx_ptr + ((b * T + pos) * Hkv + hk)[:, None] * HEAD_DIM + offs_d[None, :],
                 xsa_dv(du, u, norm, denom, xsa_eps), mask=row_ok[:, None])


@triton.jit
def _attn_bwd_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, stride_qt, stride_dot,
                    offs_n, offs_d, lo, hi, T, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    CAUSAL_MASK: tl.constexpr, DQ_MODE: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr):
    for start_m in tl.range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # rows past T get lse = +inf, hence P = 0: they contribute nothing
        lse2 = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        pt = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse2[None, :])
        if CAUSAL_MASK:
            pt = tl.where(offs_m[None, :] >= offs_n[:, None], pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dk = tl.dot(dst, q, dk, input_precision=PRECISION)
        if DQ_MODE != 0:
            dq = tl.dot(tl.trans(dst), k, input_precision=PRECISION)
            dq_ptrs = dq_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            if DQ_MODE == 1:
                tl.atomic_add(dq_ptrs, dq, mask=row_ok[:, None], sem="relaxed")
            else:
                tl.store(dq_ptrs, dq, mask=row_ok[:, None])
    return dk, dv


@triton.autotune(configs=BWD_CONFIGS, key=["T", "HEAD_DIM", "GROUP", "BLOCK_N", "DQ_MODE", "XSA"],
                 reset_to_zero=["dq_ptr"])
@triton.jit
def _attn_bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dvx_ptr, dk_ptr, dv_ptr, dq_ptr,
                     stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
                     stride_vb, stride_vt, stride_vh, stride_dob, stride_dot, stride_doh,
                     stride_dkb, stride_dkt, stride_dkh, stride_dvb, stride_dvt, stride_dvh,
                     Hq, Hkv, T, GROUP, dq_rows, qk_scale, sm_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     DQ_MODE: tl.constexpr, XSA: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    b = (tl.program_id(0) // Hkv).to(tl.int64)
    hk = tl.program_id(0) % Hkv
    j = tl.program_id(1).to(tl.int64)  # key block; block 0 meets every query block, and launches first
    start_n = tl.program_id(1) * BLOCK_N
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
    # two-stage scratch rows: key block j holds query rows start_n .. T-1 after the rows of blocks 0 .. j-1
    dq_row0 = j * T - BLOCK_N * (j * (j + 1) // 2) if DQ_MODE == 2 else j * 0
    diag_end = tl.minimum(start_n + BLOCK_N, T)  # BLOCK_N % BLOCK_M == 0, so the stages tile exactly
    for g in range(GROUP):  # every query head of this KV head's group, accumulated in registers
        h = hk * GROUP + g
        bh = b * Hq + h
        q_base = q_ptr + b * stride_qb + h * stride_qh
        do_base = do_ptr + b * stride_dob + h * stride_doh
        dq_base = dq_ptr + (bh * dq_rows + dq_row0) * HEAD_DIM
        dk, dv = _attn_bwd_inner(dk, dv, k, v, q_base, do_base, lse_ptr + bh * T, delta_ptr + bh * T, dq_base,
                                 stride_qt, stride_dot, offs_n, offs_d, start_n, diag_end, T, qk_scale,
                                 HEAD_DIM, BLOCK_M, True, DQ_MODE, UPCAST, PRECISION)
        dk, dv = _attn_bwd_inner(dk, dv, k, v, q_base, do_base, lse_ptr + bh * T, delta_ptr + bh * T, dq_base,
                                 stride_qt, stride_dot, offs_n, offs_d, start_n + BLOCK_N, T, T, qk_scale,
                                 HEAD_DIM, BLOCK_M, False, DQ_MODE, UPCAST, PRECISION)
    dk = dk * sm_scale
    if XSA:  # the XSA epilogue's share of dV, from the preprocess kernel
        dv += tl.load(dvx_ptr + ((b * T + offs_n) * Hkv + hk)[:, None] * HEAD_DIM + offs_d[None, :],
                      mask=key_ok, other=0.0)
    tl.store(dk_ptr + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=key_ok)
    tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=key_ok)


@triton.jit
def _attn_bwd_dq_reduce_kernel(part_ptr, dq_ptr, stride_dqb, stride_dqt, stride_dqh, Hq, T, part_rows, sm_scale,
                               HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ = sm_scale * sum over key blocks j = 0, 1, ... (this fixed order) of the two-stage partials."""
    bh = tl.program_id(0).to(tl.int64)
    start = tl.program_id(1) * BLOCK_T
    pos = start + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = pos < T
    base = part_ptr + bh * part_rows * HEAD_DIM
    acc = tl.zeros([BLOCK_T, HEAD_DIM], dtype=tl.float32)
    for j in range(0, (tl.minimum(start + BLOCK_T, T) - 1) // BLOCK_N + 1):
        rows = (j * T - BLOCK_N * (j * (j + 1) // 2) + pos).to(tl.int64)
        ok = row_ok & (pos >= j * BLOCK_N)
        acc += tl.load(base + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
    tl.store(dq_ptr + (bh // Hq) * stride_dqb + (bh % Hq) * stride_dqh + pos[:, None] * stride_dqt + offs_d[None, :],
             (acc * sm_scale).to(dq_ptr.dtype.element_ty), mask=row_ok[:, None])


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
                        stride_dqb, stride_dqt, stride_dqh, Hq, T, GROUP, qk_scale, sm_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """The "separate" path's dQ: one program per (batch * query head, query block), longest rows first."""
    b = (tl.program_id(0) // Hq).to(tl.int64)
    h = tl.program_id(0) % Hq
    hk = h // GROUP
    start_m = ((T - 1) // BLOCK_M - tl.program_id(1)) * BLOCK_M  # the longest rows first
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
    stat_off = (b * Hq + h) * T + offs_m
    lse2 = tl.load(lse_ptr + stat_off, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + stat_off, mask=row_ok, other=0.0)
    k_base = k_ptr + b * stride_kb + hk * stride_kh
    v_base = v_ptr + b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                            0, start_m, T, qk_scale, BLOCK_N, False, UPCAST, PRECISION)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_vt, offs_m, offs_d,
                            start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, BLOCK_N, True,
                            UPCAST, PRECISION)
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------
# Host launcher
# ----------------------------------------------------------------------------------------------
def two_stage_rows(T: int, block_n: int) -> int:
    """Rows of the two-stage scratch per (batch, query head): key block j holds rows j * block_n .. T-1."""
    blocks = triton.cdiv(T, block_n)
    return blocks * T - block_n * blocks * (blocks - 1) // 2


def _main_blocks(blocks: tuple[int, int] | None, D: int, dtype: torch.dtype) -> tuple[int, dict]:
    """(BLOCK_N, fixed launch kwargs or {} for the autotuner) of the main kernel."""
    if blocks is None and dtype == torch.float32 and not INTERPRET:
        return GPU_FP32_MAIN
    if blocks is None:
        return (64 if INTERPRET else BWD_BLOCK_N[D]), {}
    block_m, block_n = blocks
    if block_n % block_m:
        raise ValueError(f"attention backward: the key block must be a multiple of the query block; got {blocks}")
    return block_n, dict(BLOCK_M=block_m, num_warps=4, num_stages=2)


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                       lse: torch.Tensor, coef: torch.Tensor | None = None, dq: torch.Tensor | None = None,
                       dk: torch.Tensor | None = None, dv: torch.Tensor | None = None,
                       blocks: tuple[int, int] | None = None, dq_blocks: tuple[int, int] | None = None,
                       dq_mode: str = DEFAULT_DQ_MODE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of causal GQA attention from dO, the saved output and LSE.

    coef: the forward's XSA coefficients when XSA was fused (then `o` and `do` are the XSA output and its
    gradient). blocks: (queries, keys) of the main kernel, keys a multiple of queries; dq_blocks: (queries,
    keys) of the "separate" dQ kernel, queries a multiple of keys; None for the autotuner.
    dq/dk/dv may be preallocated (tests poison them).
    """
    check_qkv(q, k, v)
    check_dq_mode(dq_mode)
    B, T, Hq, D = q.shape
    Hkv = k.size(2)
    group = Hq // Hkv
    if do.shape != q.shape or do.stride(-1) != 1 or o.shape != q.shape or o.stride(-1) != 1:
        raise ValueError(f"attention backward: dO {tuple(do.shape)} and O {tuple(o.shape)} must match q "
                         f"{tuple(q.shape)} with a contiguous head_dim axis")
    if coef is not None and (coef.shape != (B, Hq, T) or not coef.is_contiguous()):
        raise ValueError(f"attention backward: coef must be a contiguous ({B}, {Hq}, {T})")
    if dq_blocks and dq_blocks[0] % dq_blocks[1]:
        raise ValueError(f"attention backward: dQ query block must be a multiple of its key block; got {dq_blocks}")
    dq = q.new_empty(q.shape) if dq is None else dq
    dk = k.new_empty(k.shape) if dk is None else dk
    dv = v.new_empty(v.shape) if dv is None else dv
    check_int32_span(do, o, dq, dk, dv)
    if T == 0 or B * Hq == 0:
        return dq, dk, dv
    block_n, fixed = _main_blocks(blocks, D, q.dtype)
    sm_scale = 1.0 / math.sqrt(D)
    xsa = coef is not None
    f32 = dict(dtype=torch.float32, device=q.device)

    delta = torch.empty((B, Hq, T), **f32)
    dy = do.new_empty((B, T, Hq, D)) if xsa else delta  # unused pointers get any tensor
    dvx = torch.empty((B, T, Hkv, D), **f32) if xsa else delta
    _attn_bwd_preprocess_kernel[(B * Hkv, triton.cdiv(T, ROW_BLOCK))](  # batch x heads on the 2^31 axis
        o, do, v, coef if xsa else delta, dy, delta, dvx, *o.stride()[:3], *do.stride()[:3], *v.stride()[:3],
        Hq, Hkv, T, group, XSA_EPS, HEAD_DIM=D, BLOCK_T=ROW_BLOCK, XSA=xsa)
    do = dy if xsa else do

    if dq_mode == "two_stage":
        dq_rows = two_stage_rows(T, block_n)
        dq_acc = torch.empty((B * Hq, dq_rows, D), **f32)
    elif dq_mode == "atomic":
        dq_rows = T
        dq_acc = torch.zeros((B * Hq, T, D), **f32)
    else:  # the main kernel writes no dQ; its own argument, since the autotuner zeroes it between trials
        dq_rows, dq_acc = 0, torch.empty(1, **f32)
    kernel = _attn_bwd_kernel.fn if fixed else _attn_bwd_kernel
    kernel[(B * Hkv, triton.cdiv(T, block_n))](
        q, k, v, do, lse, delta, dvx, dk, dv, dq_acc, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], Hq, Hkv, T, group, dq_rows, LOG2E * sm_scale,
        sm_scale, HEAD_DIM=D, BLOCK_N=block_n, DQ_MODE=DQ_MODE_IDS[dq_mode], XSA=xsa, **kernel_flags(q.dtype),
        **fixed)

    if dq_mode == "two_stage":
        _attn_bwd_dq_reduce_kernel[(B * Hq, triton.cdiv(T, ROW_BLOCK))](
            dq_acc, dq, *dq.stride()[:3], Hq, T, dq_rows, sm_scale, HEAD_DIM=D, BLOCK_T=ROW_BLOCK, BLOCK_N=block_n)
    elif dq_mode == "atomic":
        dq.copy_(dq_acc.view(B, Hq, T, D).transpose(1, 2).mul_(sm_scale))
    else:
        dq_fixed = {} if dq_blocks is None else dict(BLOCK_M=dq_blocks[0], BLOCK_N=dq_blocks[1], num_warps=4,
                                                      num_stages=2)
        if dq_blocks is None and q.dtype == torch.float32 and not INTERPRET:
            dq_fixed = GPU_FP32_DQ
        dq_kernel = _attn_bwd_dq_kernel.fn if dq_fixed else _attn_bwd_dq_kernel
        dq_kernel[lambda meta: (B * Hq, triton.cdiv(T, meta["BLOCK_M"]))](
            q, k, v, do, lse, delta, dq, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
            *dq.stride()[:3], Hq, T, group, LOG2E * sm_scale, sm_scale, HEAD_DIM=D, **kernel_flags(q.dtype),
            **dq_fixed)
    return dq, dk, dv
