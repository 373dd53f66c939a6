"""Fused softcapped cross-entropy over the tied head: per-token NLL without materializing (N, V) logits.

Why: the head is x E^T -> 30*tanh(z/30) -> cross-entropy. Materializing fp32 logits costs N*V*4 bytes
(256 MiB for 64K eval tokens at V = 1024); fusing the logit matmul, the softcap and an online
logsumexp keeps only per-token scalars in memory.

Forward kernel: one program per BLOCK_T tokens; it loops over vocab blocks, computes the logit tile
with tl.dot (looping over the model dim), softcaps it (with an fp32 tanh as exact at any softcap: `_tanh`),
keeps a running max and sum of exponentials, and picks out the target's logit. Outputs nll (N,) fp32 and
the logsumexp lse (N,) fp32, which the backward reuses.

Backward: grad_out g (N,) -> dz = (softmax(z) - onehot(target)) * g, then through the softcap
da = dz * (1 - tanh^2). A kernel recomputes the logits and writes da for one chunk of tokens into a
(chunk, V) buffer in the activation dtype; then dx[chunk] = da @ W and dW += da^T x[chunk]
(torch.matmul, dW accumulated in fp32 across chunks). Memory bound of the backward beyond its
inputs and outputs: chunk * V * e bytes for da (chunk chosen so this is <= 32 MiB, e.g. 8192 tokens
at V = 1024 in fp32) plus an fp32 (V, d) dW accumulator.

Targets: a target of IGNORE_INDEX (-100, F.cross_entropy's default ignore_index, which the eager twin and
the seed use) scores 0 and passes no gradient. Other out-of-range targets cannot be checked on the GPU
without a host sync; the kernels give such tokens NaN loss instead (and the host raises when the targets
already live on the CPU).

FLOPs: forward 2*N*V*d (+ O(N*V) softcap/exp); backward 2*N*V*d (recompute) + 4*N*V*d (dx and dW).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.autocast import cast_for_autocast
from kernels.launch import fixed_launch
from kernels.rows import as_rows

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DLOGITS_BUFFER_BYTES = 32 * 1024 * 1024  # bound of the backward's per-chunk (chunk, V) buffer
IGNORE_INDEX = -100  # a token with this target scores 0 and passes no gradient (F.cross_entropy's default)
_IGNORE_INDEX = tl.constexpr(IGNORE_INDEX)  # the kernels' copy (a jit function reads constexpr globals only)


def _cfg(bt, bv, bd, warps, stages):
    return triton.Config({"BLOCK_T": bt, "BLOCK_V": bv, "BLOCK_D": bd}, num_warps=warps, num_stages=stages)


# bf16/fp16 on a GPU autotune over these; python -m bench.aot compiles them for sm_80 and sm_90a (bench/AOT.md).
GPU_CONFIGS = [_cfg(64, 128, 64, 4, 3), _cfg(128, 128, 64, 8, 3), _cfg(128, 64, 64, 4, 4), _cfg(64, 64, 64, 4, 4),
               _cfg(128, 256, 64, 8, 3), _cfg(64, 256, 64, 8, 3)]
# fp32 on a GPU is the correctness path ("ieee" CUDA-core dots under matmul precision "highest"): one small config
# that spills in neither kernel nor precision, instead of a sweep over bf16-sized tiles (some over the shared
# memory limit in fp32).
FP32_CONFIG = _cfg(32, 64, 32, 4, 2)
_CONFIGS = [_cfg(64, 64, 64, 4, 1)] if _INTERPRET else GPU_CONFIGS  # one for the interpreter: it cannot benchmark


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots follow torch's matmul precision setting (TF32 unless 'highest'); others ignore this."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _logit_tile(x_ptr, w_ptr, offs_t, offs_v, N, V, D, stride_xn, stride_wv,
                UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Raw logits x W^T (fp32) of tokens offs_t and vocab rows offs_v, looping over the model dim."""
    x_rows = x_ptr + offs_t[:, None].to(tl.int64) * stride_xn
    w_rows = w_ptr + offs_v[:, None].to(tl.int64) * stride_wv
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d[None, :] < D
        x = tl.load(x_rows + offs_d[None, :], mask=(offs_t[:, None] < N) & d_ok, other=0.0)
        w = tl.load(w_rows + offs_d[None, :], mask=(offs_v[:, None] < V) & d_ok, other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def _tanh(u):
    """tanh in fp32 within a few ulps relative at every magnitude, so z = softcap * tanh(a / softcap) is as exact as
    the logit a whatever the softcap (2 * sigmoid(2u) - 1 is off by ~1e-7 absolute near 0, which the softcap
    multiplies back: 1e-3 on a logit at softcap 1e4). Triton has no portable tanh (libdevice is CUDA-only, absent
    from the interpreter), so: below |u| = 0.5, u + u^3 P(u^2), P a cubic fit (least squares in fp64, weighted
    for relative error) of (tanh(u) - u) / u^3 on [0, 0.5], 1.2 ulp; above, sign(u) (1 - e) / (1 + e) with
    e = exp(-2|u|) <= 0.37 (no overflow, no cancellation), 4 ulp with a correctly rounded exp."""
    s = u * u
    small = u + u * s * (-0.33333153866549975 + s * (0.13326094510353004 + s * (-0.05305931216253941
                                                                              + s * 0.017268825437060483)))
    e = tl.exp(-2.0 * tl.abs(u))
    large = (1.0 - e) / (1.0 + e)
    return tl.where(tl.abs(u) < 0.5, small, tl.where(u < 0, -large, large))


@triton.jit
def _softcap_ce_forward_kernel(
    x_ptr, w_ptr, targets_ptr, nll_ptr, lse_ptr,
    N, V, D, stride_xn, stride_wv, softcap,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """nll[t] = logsumexp_v z[t, v] - z[t, target[t]], z = softcap * tanh(x W^T / softcap)."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < N
    target = tl.load(targets_ptr + offs_t, mask=t_ok, other=0)
    run_max = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        a = _logit_tile(x_ptr, w_ptr, offs_t, offs_v, N, V, D, stride_xn, stride_wv,
                        UPCAST, DOT_PRECISION, BLOCK_T, BLOCK_V, BLOCK_D)
        z = softcap * _tanh(a / softcap)
        z = tl.where(offs_v[None, :] < V, z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        target_logit += tl.sum(tl.where(offs_v[None, :] == target[:, None], z, 0.0), axis=1)
    lse = run_max + tl.log(run_sum)
    nll = tl.where((target >= 0) & (target < V), lse - target_logit, float("nan"))
    nll = tl.where(target == _IGNORE_INDEX, 0.0, nll)
    tl.store(nll_ptr + offs_t, nll, mask=t_ok)
    tl.store(lse_ptr + offs_t, lse, mask=t_ok)


@triton.jit
def _softcap_ce_dlogits_kernel(
    x_ptr, w_ptr, targets_ptr, lse_ptr, grad_ptr, da_ptr,
    N, V, D, stride_xn, stride_wv, stride_dan, softcap,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """da[t, v] = (softmax(z)[t, v] - [v == target[t]]) * grad[t] * (1 - tanh^2), for one (T, V) tile."""
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    t_ok = offs_t < N
    target = tl.load(targets_ptr + offs_t, mask=t_ok, other=0)
    lse = tl.load(lse_ptr + offs_t, mask=t_ok, other=0.0)
    grad = tl.load(grad_ptr + offs_t, mask=t_ok, other=0.0).to(tl.float32)
    grad = tl.where(target == _IGNORE_INDEX, 0.0, grad)  # an ignored token passes no gradient
    a = _logit_tile(x_ptr, w_ptr, offs_t, offs_v, N, V, D, stride_xn, stride_wv,
                    UPCAST, DOT_PRECISION, BLOCK_T, BLOCK_V, BLOCK_D)
    t = _tanh(a / softcap)
    prob = tl.exp(softcap * t - lse[:, None])
    dz = prob - tl.where(offs_v[None, :] == target[:, None], 1.0, 0.0)
    da = dz * grad[:, None] * (1.0 - t * t)
    ptrs = da_ptr + offs_t[:, None].to(tl.int64) * stride_dan + offs_v[None, :]
    tl.store(ptrs, da.to(da_ptr.dtype.element_ty), mask=t_ok[:, None] & (offs_v[None, :] < V))


_softcap_ce_forward_tuned = triton.autotune(configs=_CONFIGS, key=["V", "D"])(_softcap_ce_forward_kernel)
_softcap_ce_dlogits_tuned = triton.autotune(configs=_CONFIGS, key=["V", "D"])(_softcap_ce_dlogits_kernel)

# --------------------------------------------------------------------------------------------------
# Host launchers (accept preallocated outputs so tests can poison them; explicit blocks skip autotune)
# --------------------------------------------------------------------------------------------------


def _meta(dtype):
    return {"UPCAST": _INTERPRET or dtype == torch.float32, "DOT_PRECISION": _dot_precision(dtype)}


def _fixed_launch(dtype: torch.dtype, blocks) -> dict | None:
    """Launch kwargs that skip the autotuner (kernels.launch.fixed_launch, which checks explicit blocks)."""
    return fixed_launch("cross_entropy", dtype, blocks, ("BLOCK_T", "BLOCK_V", "BLOCK_D"), FP32_CONFIG, _INTERPRET)


def softcap_ce_forward(x2d, weight, targets1d, softcap, nll=None, lse=None, blocks=None):
    """(nll, lse), both (N,) fp32, for x2d (N, d), weight (V, d) of x's dtype, targets1d (N,) int64."""
    fixed = _fixed_launch(x2d.dtype, blocks)
    n, d = x2d.shape
    v = weight.size(0)
    nll = torch.empty(n, device=x2d.device, dtype=torch.float32) if nll is None else nll
    lse = torch.empty(n, device=x2d.device, dtype=torch.float32) if lse is None else lse
    if n == 0:
        return nll, lse
    args = (x2d, weight, targets1d, nll, lse, n, v, d, x2d.stride(0), weight.stride(0), float(softcap))
    if fixed is None:
        _softcap_ce_forward_tuned[lambda c: (triton.cdiv(n, c["BLOCK_T"]),)](*args, **_meta(x2d.dtype))
    else:
        _softcap_ce_forward_kernel[(triton.cdiv(n, fixed["BLOCK_T"]),)](*args, **_meta(x2d.dtype), **fixed)
    return nll, lse


def softcap_ce_dlogits(x2d, weight, targets1d, lse, grad, softcap, out, blocks=None):
    """Write da (N, V) = d nll-weighted-by-grad / d (x W^T) into `out` (N, V)."""
    fixed = _fixed_launch(x2d.dtype, blocks)
    n, d = x2d.shape
    v = weight.size(0)
    if n == 0:
        return out
    args = (x2d, weight, targets1d, lse, grad, out, n, v, d, x2d.stride(0), weight.stride(0), out.stride(0),
            float(softcap))
    if fixed is None:
        _softcap_ce_dlogits_tuned[lambda c: (triton.cdiv(n, c["BLOCK_T"]), triton.cdiv(v, c["BLOCK_V"]))](
            *args, **_meta(x2d.dtype))
    else:
        _softcap_ce_dlogits_kernel[(triton.cdiv(n, fixed["BLOCK_T"]), triton.cdiv(v, fixed["BLOCK_V"]))](
            *args, **_meta(x2d.dtype), **fixed)
    return out


def _default_chunk_tokens(vocab: int, dtype: torch.dtype) -> int:
    """Tokens per backward chunk so the (chunk, V) buffer stays within _DLOGITS_BUFFER_BYTES."""
    return max(128, _DLOGITS_BUFFER_BYTES // (vocab * torch.finfo(dtype).bits // 8) // 128 * 128)


def softcap_ce_backward(x2d, weight, targets1d, lse, grad, softcap, dx=None, chunk_tokens=None, blocks=None):
    """(dx (N, d) in x's dtype, dW (V, d) fp32), processing the tokens in chunks of `chunk_tokens`."""
    n, d = x2d.shape
    v = weight.size(0)
    chunk = chunk_tokens or _default_chunk_tokens(v, x2d.dtype)
    dx = torch.empty_like(x2d) if dx is None else dx
    dw = torch.zeros((v, d), device=x2d.device, dtype=torch.float32)
    da = torch.empty((min(chunk, n), v), device=x2d.device, dtype=x2d.dtype)
    for t0 in range(0, n, chunk):
        t1 = min(t0 + chunk, n)
        da_c = softcap_ce_dlogits(x2d[t0:t1], weight, targets1d[t0:t1], lse[t0:t1], grad[t0:t1], softcap,
                                  da[: t1 - t0], blocks)
        torch.matmul(da_c, weight, out=dx[t0:t1])
        dw += torch.matmul(da_c.t(), x2d[t0:t1]).float()
    return dx, dw


# --------------------------------------------------------------------------------------------------
# torch.library registration (opaque to torch.compile) and the public function
# --------------------------------------------------------------------------------------------------


def _flat(x, weight, targets):
    return as_rows(x, x.size(-1)), weight.contiguous(), targets.reshape(-1).contiguous()


@torch.library.custom_op("triton_golf::softcap_cross_entropy", mutates_args=())
def _softcap_ce_op(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2d, w, t = _flat(x, weight, targets)
    nll, lse = softcap_ce_forward(x2d, w, t, softcap)
    return nll.reshape(targets.shape), lse.reshape(targets.shape)


@_softcap_ce_op.register_fake
def _(x, weight, targets, softcap):
    return (targets.new_empty(targets.shape, dtype=torch.float32),
            targets.new_empty(targets.shape, dtype=torch.float32))


@torch.library.custom_op("triton_golf::softcap_cross_entropy_backward", mutates_args=())
def _softcap_ce_backward_op(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                            grad: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    x2d, w, t = _flat(x, weight, targets)
    dx, dw = softcap_ce_backward(x2d, w, t, lse.reshape(-1).contiguous(),
                                 grad.reshape(-1).float().contiguous(), softcap)
    return dx.reshape(x.shape), dw.to(weight.dtype)


@_softcap_ce_backward_op.register_fake
def _(x, weight, targets, lse, grad, softcap):
    return torch.empty_like(x), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    x, weight, targets, softcap = inputs
    ctx.save_for_backward(x, weight, targets, output[1])
    ctx.softcap = softcap


def _backward(ctx, grad_nll, grad_lse):
    x, weight, targets, lse = ctx.saved_tensors
    dx, dw = _softcap_ce_backward_op(x, weight, targets, lse, grad_nll, ctx.softcap)
    return (dx if ctx.needs_input_grad[0] else None), (dw if ctx.needs_input_grad[1] else None), None, None


_softcap_ce_op.register_autograd(_backward, setup_context=_setup_context)


def softcap_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          softcap: float) -> torch.Tensor:
    """Per-token NLL (fp32, shape of `targets`) of the tied head with logit softcap.

    x: (..., d) final normed hidden states (fp32/bf16/fp16), cast to the autocast dtype under autocast (as
    F.linear in the eager twin: the final norm's output is fp32); weight: (vocab, d), cast to x's dtype;
    targets: int64 with targets.numel() == x.numel() // d, values in [0, vocab) or IGNORE_INDEX (-100: loss 0,
    no gradient, as F.cross_entropy in the twin); others give NaN (ValueError when the targets are on the CPU).
    logits = softcap * tanh(x W^T / softcap). FLOPs: 2*N*V*d forward, 6*N*V*d backward.
    """
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"softcap_cross_entropy: x must be fp32, bf16 or fp16, got {x.dtype}")
    if weight.dim() != 2 or weight.size(1) != x.size(-1):
        raise ValueError(f"softcap_cross_entropy: weight {tuple(weight.shape)} does not match x's last dim "
                         f"{x.size(-1)}")
    if targets.dtype != torch.int64 or targets.numel() * x.size(-1) != x.numel():
        raise ValueError(f"softcap_cross_entropy: targets must be int64 with one entry per token of x "
                         f"{tuple(x.shape)}, got {targets.dtype} {tuple(targets.shape)}")
    if softcap <= 0:
        raise ValueError(f"softcap_cross_entropy: softcap must be positive, got {softcap}")
    if targets.device.type == "cpu" and targets.numel() and not torch.compiler.is_compiling():
        bad = targets[((targets < 0) | (targets >= weight.size(0))) & (targets != IGNORE_INDEX)]
        if bad.numel():
            raise ValueError(f"softcap_cross_entropy: targets {bad.unique()[:4].tolist()} outside the vocab "
                             f"[0, {weight.size(0)}) (and not the ignore index {IGNORE_INDEX})")
    x = cast_for_autocast(x)
    nll, _ = _softcap_ce_op(x, weight.to(x.dtype), targets, float(softcap))
    return nll
