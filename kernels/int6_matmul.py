"""Int6-dequant matmul: y = x @ dequant(W)^T read straight from the 4-values-in-3-bytes packed weight.

Why: at evaluation and TTT time the block matrices are int6 (kernels.int6_layout, per-row scales). Reading
the packed bytes inside the matmul moves 3/8 of the bf16 weight bytes and never builds a dequantized
copy of W in memory.

Layout read (kernels/int6_layout.py): packed is uint8 (N, 3 * ceil(K / 4)); group g of row n holds values
4g..4g+3 as the little-endian 24-bit word u0 | u1 << 6 | u2 << 12 | u3 << 18, with u = q + 32.
A (BLOCK_N, BLOCK_K) weight tile is BLOCK_K / 4 groups per row: the kernel loads the three byte planes
(byte 3g + 0, 1, 2) as three strided gathers, rebuilds the word, splits it into the four 6-bit fields
and interleaves them back into value order with tl.join + tl.reshape. The exact integers q feed tl.dot
in the activation dtype (int6 is exact in bf16/fp16/tf32) with fp32 accumulation.

Forward: the per-row scale s_n factors out of the K-sum, so it multiplies the fp32 accumulator in the
epilogue. Backward (w.r.t. x only; the integer weights and their scales are frozen): dx = dy @ dequant(W),
a second kernel that walks the same packed rows along N and produces K-major output tiles; there the
scale sits inside the sum, so each unpacked row is scaled before the dot (as the eager twin does).

FLOPs: forward 2*M*N*K, backward 2*M*N*K (M = tokens, N = out features, K = in features).
Bytes moved (ideal): x M*K*e + packed N*ceil(K/4)*3 + y M*N*e (e = activation element size).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.autocast import cast_for_autocast
from kernels.launch import fixed_launch
from kernels.int6_layout import packed_row_bytes
from kernels.rows import as_rows

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_SMALL_M = 64  # at or below this many rows the matmul is memory/latency bound: small-M tile configs

# --------------------------------------------------------------------------------------------------
# Configs. On a GPU, bf16/fp16 autotune over a set split in small-M (weight-streaming: BLOCK_M 16/32, many N
# tiles) and large-M (tensor-core bound) families; fp32 runs one small config; the interpreter one tile (its
# autotuner cannot benchmark). python -m bench.aot compiles them all for sm_80 and sm_90a (bench/AOT.md).
# --------------------------------------------------------------------------------------------------


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


_LARGE_M = [_cfg(128, 128, 64, 8, 3), _cfg(128, 128, 64, 4, 4), _cfg(128, 64, 64, 4, 4),
            _cfg(64, 128, 64, 4, 4), _cfg(128, 256, 64, 8, 3), _cfg(256, 128, 64, 8, 3)]
FORWARD_CONFIGS = [_cfg(16, 16, 256, 4, 4), _cfg(16, 32, 128, 4, 4), _cfg(16, 64, 128, 4, 4),
                   _cfg(16, 64, 256, 4, 3), _cfg(32, 32, 128, 4, 4), _cfg(32, 64, 64, 4, 4)] + _LARGE_M
# The backward reduces over BLOCK_N: at least 32 deep. A 16-deep reduction tile with a bf16 mma.sync operand of
# kWidth 8 is the pattern of an upstream miscompile (triton PR #10645) that 3.6 may carry.
BACKWARD_CONFIGS = [_cfg(16, 32, 256, 4, 4), _cfg(16, 32, 128, 4, 4), _cfg(16, 64, 128, 4, 4),
                    _cfg(16, 64, 256, 4, 3), _cfg(32, 32, 128, 4, 4), _cfg(32, 64, 64, 4, 4)] + _LARGE_M
# fp32 on a GPU is the correctness path ("ieee" CUDA-core dots under matmul precision "highest"): one config that
# spills in neither kernel nor precision, instead of a sweep over bf16-sized tiles that spill and compile for
# tens of seconds each.
FP32_CONFIG = _cfg(32, 32, 32, 4, 2)
_INTERPRET_CONFIG = _cfg(64, 64, 64, 4, 1)


def _prune_by_m(configs, named_args, **kwargs):
    """Keep small-M tiles for M <= 64 rows and large-M tiles otherwise (a single config is kept as is)."""
    if len(configs) <= 1:
        return configs
    small = named_args["M"] <= _SMALL_M
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= 32) == small]
    return kept or configs


def _m_bucket(m: int) -> int:
    """Autotune key for M: the power of two above it, capped (large M all tune alike)."""
    return min(triton.next_power_of_2(max(m, 1)), 8192)


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision setting (TF32 unless 'highest'); others ignore this."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _unpack_int6_tile(packed_ptr, stride_pn, offs_n, k0, N, GROUPS,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Return the int32 values q (BLOCK_N, BLOCK_K) of columns k0..k0+BLOCK_K of rows offs_n.

    k0 is a multiple of 4. Rows >= N and groups past the row read as q = -32; callers mask the other
    operand (or the store) there, so those entries never reach a written output.
    """
    offs_g = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    mask = (offs_n[:, None] < N) & (offs_g[None, :] < GROUPS)
    ptrs = packed_ptr + offs_n[:, None].to(tl.int64) * stride_pn + 3 * offs_g[None, :]
    b0 = tl.load(ptrs, mask=mask, other=0).to(tl.int32)
    b1 = tl.load(ptrs + 1, mask=mask, other=0).to(tl.int32)
    b2 = tl.load(ptrs + 2, mask=mask, other=0).to(tl.int32)
    word = b0 | (b1 << 8) | (b2 << 16)
    u0 = word & 63
    u1 = (word >> 6) & 63
    u2 = (word >> 12) & 63
    u3 = (word >> 18) & 63
    # join(join(u0, u2), join(u1, u3))[..., a, b] = u_{2a+b}: row-major reshape restores value order
    u = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK_N, BLOCK_K))
    return u - 32


@triton.jit
def _int6_linear_forward_kernel(
    x_ptr, packed_ptr, scales_ptr, y_ptr,
    M, N, K, GROUPS, M_BUCKET,
    stride_xm, stride_pn, stride_ym,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[m, n] = s[n] * sum_k x[m, k] q[n, k]; one (BLOCK_M, BLOCK_N) output tile per program."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        if UPCAST:  # interpreter / fp32: compute in fp32
            x = x.to(tl.float32)
        q = _unpack_int6_tile(packed_ptr, stride_pn, offs_n, k0, N, GROUPS, BLOCK_N, BLOCK_K)
        acc = tl.dot(x, tl.trans(q.to(x.dtype)), acc, input_precision=DOT_PRECISION)
    s = tl.load(scales_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
    y = acc * s[None, :]
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _int6_linear_backward_kernel(
    dy_ptr, packed_ptr, scales_ptr, dx_ptr,
    M, N, K, GROUPS, M_BUCKET,
    stride_dym, stride_pn, stride_dxm,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[m, k] = sum_n dy[m, n] (s[n] q[n, k]); one (BLOCK_M, BLOCK_K) tile of dx per program."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    dy_rows = dy_ptr + offs_m[:, None].to(tl.int64) * stride_dym
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(dy_rows + offs_n[None, :], mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0)
        if UPCAST:
            dy = dy.to(tl.float32)
        q = _unpack_int6_tile(packed_ptr, stride_pn, offs_n, k0, N, GROUPS, BLOCK_N, BLOCK_K)
        s = tl.load(scales_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        w = (q.to(tl.float32) * s[:, None]).to(dy.dtype)
        acc = tl.dot(dy, w, acc, input_precision=DOT_PRECISION)
    dx_ptrs = dx_ptr + offs_m[:, None].to(tl.int64) * stride_dxm + offs_k[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_k[None, :] < K))


_int6_linear_forward_tuned = triton.autotune(
    configs=[_INTERPRET_CONFIG] if _INTERPRET else FORWARD_CONFIGS, key=["M_BUCKET", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_by_m})(_int6_linear_forward_kernel)
_int6_linear_backward_tuned = triton.autotune(
    configs=[_INTERPRET_CONFIG] if _INTERPRET else BACKWARD_CONFIGS, key=["M_BUCKET", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_by_m})(_int6_linear_backward_kernel)

# --------------------------------------------------------------------------------------------------
# Host launchers (accept a preallocated output so tests can poison it; explicit blocks skip autotune)
# --------------------------------------------------------------------------------------------------


def _fixed_launch(dtype: torch.dtype, blocks) -> dict | None:
    """Launch kwargs that skip the autotuner (kernels.launch.fixed_launch, which checks explicit blocks: powers of
    two >= 16, so BLOCK_K also holds whole 4-value groups)."""
    return fixed_launch("int6_matmul", dtype, blocks, ("BLOCK_M", "BLOCK_N", "BLOCK_K"), FP32_CONFIG, _INTERPRET)


def _launch(tuned, kernel, a, packed, scales, out, n, k, tile_axis, blocks):
    """Launch forward (tile_axis 'N') or backward (tile_axis 'K'); grid = (M tiles, tile_axis tiles)."""
    fixed = _fixed_launch(a.dtype, blocks)
    m = a.size(0)
    if out.numel() == 0:  # nothing to write (a zero-depth reduction still runs: y = 0, dx = 0)
        return out
    cols = n if tile_axis == "N" else k
    args = (a, packed, scales, out, m, n, k, packed.size(1) // 3, _m_bucket(m),
            a.stride(0), packed.stride(0), out.stride(0))
    meta = {"UPCAST": _INTERPRET or a.dtype == torch.float32, "DOT_PRECISION": _dot_precision(a.dtype)}
    if fixed is None:
        tuned[lambda c: (triton.cdiv(m, c["BLOCK_M"]), triton.cdiv(cols, c["BLOCK_" + tile_axis]))](*args, **meta)
    else:
        kernel[(triton.cdiv(m, fixed["BLOCK_M"]), triton.cdiv(cols, fixed["BLOCK_" + tile_axis]))](
            *args, **meta, **fixed)
    return out


def int6_linear_forward(x2d, packed, scales, in_features, out=None, blocks=None):
    """y (M, N) = x2d (M, K) @ dequant(packed, scales)^T, written into `out` when given; `blocks` (a
    (BLOCK_M, BLOCK_N, BLOCK_K) tuple or a triton.Config) forces the tiles."""
    n = packed.size(0)
    if out is None:
        out = torch.empty((x2d.size(0), n), device=x2d.device, dtype=x2d.dtype)
    return _launch(_int6_linear_forward_tuned, _int6_linear_forward_kernel,
                   x2d, packed, scales, out, n, in_features, "N", blocks)


def int6_linear_backward(dy2d, packed, scales, in_features, out=None, blocks=None):
    """dx (M, K) = dy2d (M, N) @ dequant(packed, scales), written into `out` when given (tiles as the forward)."""
    if out is None:
        out = torch.empty((dy2d.size(0), in_features), device=dy2d.device, dtype=dy2d.dtype)
    return _launch(_int6_linear_backward_tuned, _int6_linear_backward_kernel,
                   dy2d, packed, scales, out, packed.size(0), in_features, "K", blocks)


# --------------------------------------------------------------------------------------------------
# torch.library registration (opaque to torch.compile) and the public function
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("triton_golf::int6_linear", mutates_args=())
def _int6_linear_op(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    x2d = as_rows(x, in_features)
    y = int6_linear_forward(x2d, packed.contiguous(), scales.contiguous(), in_features)
    return y.reshape(*x.shape[:-1], packed.size(0))


@_int6_linear_op.register_fake
def _(x, packed, scales, in_features):
    return x.new_empty((*x.shape[:-1], packed.size(0)))


@torch.library.custom_op("triton_golf::int6_linear_backward", mutates_args=())
def _int6_linear_backward_op(dy: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor,
                             in_features: int) -> torch.Tensor:
    dy2d = as_rows(dy, packed.size(0))
    dx = int6_linear_backward(dy2d, packed.contiguous(), scales.contiguous(), in_features)
    return dx.reshape(*dy.shape[:-1], in_features)


@_int6_linear_backward_op.register_fake
def _(dy, packed, scales, in_features):
    return dy.new_empty((*dy.shape[:-1], in_features))


def _setup_context(ctx, inputs, output):
    _, packed, scales, in_features = inputs
    ctx.save_for_backward(packed, scales)
    ctx.in_features = in_features


def _backward(ctx, dy):
    packed, scales = ctx.saved_tensors
    dx = _int6_linear_backward_op(dy, packed, scales, ctx.in_features) if ctx.needs_input_grad[0] else None
    return dx, None, None, None  # integer weights and their scales are frozen: no gradient


_int6_linear_op.register_autograd(_backward, setup_context=_setup_context)


def int6_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """y = x @ dequant(W)^T for int6 weights packed 4-per-3-bytes (kernels.int6_layout) with per-row scales.

    x: (..., in_features) fp32/bf16/fp16; packed: uint8 (N, 3*ceil(in_features/4)); scales: (N,) float.
    Returns (..., N) in x's dtype, or the autocast dtype under autocast (as F.linear in the eager twin).
    Differentiable w.r.t. x only. FLOPs 2*M*N*K forward, same backward.
    """
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"int6_linear: packed must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if packed.size(1) != packed_row_bytes(in_features):
        raise ValueError(f"int6_linear: packed rows of {packed.size(1)} bytes do not hold {in_features} int6 values "
                         f"(expected {packed_row_bytes(in_features)})")
    if scales.shape != (packed.size(0),) or not scales.is_floating_point():
        raise ValueError(f"int6_linear: scales must be a float ({packed.size(0)},) tensor, got "
                         f"{scales.dtype} {tuple(scales.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"int6_linear: x must be fp32, bf16 or fp16, got {x.dtype}")
    if x.size(-1) != in_features:
        raise ValueError(f"int6_linear: x has {x.size(-1)} features, weight expects {in_features}")
    return _int6_linear_op(cast_for_autocast(x), packed, scales, in_features)
