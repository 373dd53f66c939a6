"""Fused ReLU^2 MLP (seed-spec §3.6) and the bias-free linear layer for the Triton backend.

out = down(relu(up(x))^2 * alpha + beta), with x: (..., d), W_up: (h, d), W_down: (d, h), alpha, beta: (h,).

Forward (custom op `triton_golf::relu2_mlp`):
  1. Triton matmul u = x W_up^T whose epilogue writes u and a = relu(u)^2 * alpha + beta in one pass
     (no separate relu / square / scale / shift kernels over the M x h hidden activations).
  2. out = a W_down^T with torch.matmul (cuBLAS): a plain GEMM with nothing to fuse, which cuBLAS
     already runs at the roofline; a Triton copy could only match it.
  Saved for backward: x and u, not a. The backward epilogue loads the u tile anyway and recomputes a
  there, so the op keeps one M x h hidden tensor alive per layer instead of two, at the cost of one
  extra M x h write in backward (cheap next to the 8*M*d*h backward FLOPs).

Backward (custom op `triton_golf::relu2_mlp_backward`):
  1. Triton matmul dA = dOut W_down whose epilogue loads u and writes dU = dA * alpha * 2 relu(u), the
     recomputed a, and per-row-tile column sums of dA * relu(u)^2 and dA. Those partials (a few
     (M / BLOCK_M) x h fp32 rows) are summed by torch into d_alpha and d_beta: deterministic, no atomics.
  2. dW_down = dOut^T a, dW_up = dU^T x and dX = dU W_up with torch.matmul (cuBLAS): plain GEMMs, two
     of them reducing over the token dim, where cuBLAS's split-K beats a simple Triton tiling.

FLOPs (M tokens, d model dim, h hidden): forward 4*M*d*h, backward 8*M*d*h (plus O(M*h) elementwise).

`linear(x, weight)` delegates to F.linear (cuBLAS): a plain GEMM gains nothing from a Triton kernel, and
staying a native op lets torch.compile fuse around it. It is the eager twin's formula on purpose.

Under autocast the public function casts x to the autocast dtype (custom ops are not autocast by torch),
matching what F.linear does in the eager twin; parameters are then cast to x's dtype like the twin.
Accumulation is fp32 (tl.dot), epilogue math is fp32, stores are in the activation dtype.
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.autocast import cast_for_autocast
from kernels.launch import fixed_launch
from kernels.rows import as_rows

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_EPILOGUE_RELU2_FORWARD = 1   # u -> (u, a = relu(u)^2 * alpha + beta)
_EPILOGUE_RELU2_BACKWARD = 2  # dA -> (dU, a, column partial sums for d_alpha and d_beta)
_GROUP_M = 8
_BACKWARD_BLOCK_M = 128       # fixed on GPU: the partial-sum buffer has one row per row tile


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _relu2_matmul_kernel(
    a_ptr, b_ptr, out_ptr, u_ptr, act_ptr, alpha_ptr, beta_ptr, part_alpha_ptr, part_beta_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn,
    EPILOGUE: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """acc = A[M, K] @ B[K, N] (fp32 accumulation), then a ReLU^2 epilogue; M x N outputs are contiguous.

    EPILOGUE 1: out <- a = relu(u)^2 * alpha + beta and u_ptr <- u = acc.
    EPILOGUE 2: acc is dA; loads u; out <- dU = dA * alpha * 2 relu(u); act_ptr <- a (recomputed);
                part_alpha/part_beta[pid_m, n] <- sum over the tile's rows of dA * relu(u)^2 and of dA.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M row tiles share each B column panel while it is hot in L2
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_size_m
    pid_n = (pid % pids_per_group) // group_size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok = rm < M
    col_ok = rn < N
    a_ptrs = a_ptr + rm.to(tl.int64)[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn.to(tl.int64)[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter computes bf16 wrongly; on GPU the tiles feed tensor cores as they are
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rm.to(tl.int64)[:, None] * N + rn[None, :]
    alpha = tl.load(alpha_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:
        u_stored = acc.to(u_ptr.dtype.element_ty)
        tl.store(u_ptr + offsets, u_stored, mask=mask)
        r = tl.maximum(u_stored.to(tl.float32), 0.0)  # from the stored u: backward recomputes the same a
        tl.store(out_ptr + offsets, (r * r * alpha + beta).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        r = tl.maximum(u, 0.0)
        d_act = tl.where(mask, acc, 0.0)
        tl.store(out_ptr + offsets, (d_act * alpha * 2.0 * r).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(act_ptr + offsets, (r * r * alpha + beta).to(act_ptr.dtype.element_ty), mask=mask)
        tl.store(part_alpha_ptr + pid_m * N + rn, tl.sum(d_act * r * r, axis=0), mask=col_ok)
        tl.store(part_beta_ptr + pid_m * N + rn, tl.sum(d_act, axis=0), mask=col_ok)


def _config(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# H100/A100 bf16 tile candidates (python -m bench.aot compiles them all: bench/AOT.md). The backward's BLOCK_M is
# fixed (the partial-sum buffer has one row per row tile), and its epilogue (load u; write dU, a and two column
# sums) spills on sm_80 and sm_90a at 128 x 128 and wider tiles and at 128 x 64 with 4 warps: its list keeps
# the tiles that do not. The forward's 128 x 256 and 256 x 128 tiles spill a few bytes on sm_80 only.
FORWARD_CONFIGS = [_config(*c) for c in ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 64, 64, 4, 4),
                                         (64, 128, 64, 4, 4), (128, 128, 32, 4, 4), (256, 128, 64, 8, 3),
                                         (64, 256, 32, 4, 4))]
BACKWARD_CONFIGS = [_config(_BACKWARD_BLOCK_M, bn, bk, w, s) for bn, bk, w, s in ((64, 64, 8, 3), (64, 32, 8, 4),
                                                                                  (32, 64, 4, 4), (64, 128, 8, 3))]
# fp32 on a GPU is the correctness path ("ieee" dots on CUDA cores unless TF32 is allowed): one small config that
# neither spills nor compiles for seconds, instead of a sweep over bf16-sized tiles (as attention does).
FP32_CONFIG = _config(64, 64, 32, 4, 2)
_INTERPRET_BLOCKS = (64, 64, 64)  # the interpreter runs one fixed tile (its autotuner cannot benchmark)

_forward_tuned = triton.autotune(configs=FORWARD_CONFIGS, key=["M", "N", "K"])(_relu2_matmul_kernel)
_backward_tuned = triton.autotune(configs=BACKWARD_CONFIGS, key=["M", "N", "K"])(_relu2_matmul_kernel)


# ----------------------------------------------------------------------------- launchers

def _input_precision(dtype: torch.dtype) -> str:
    """fp32 tiles honour torch's TF32 switch (off by default, like the eager twin's matmuls); ignored for bf16/fp16."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


def _fixed_launch(dtype: torch.dtype, blocks) -> dict | None:
    """Launch kwargs that skip the autotuner (kernels.launch.fixed_launch): the interpreter runs one fixed tile."""
    return fixed_launch("relu2_mlp", dtype, blocks, ("BLOCK_M", "BLOCK_N", "BLOCK_K"), FP32_CONFIG, _INTERPRET,
                        _INTERPRET_BLOCKS)


def _launch(epilogue, a, b, out, u, act, alpha, beta, part_alpha, part_beta, blocks, tuned):
    """Run the kernel on A (M, K) @ B (K, N); `blocks` = (BLOCK_M, BLOCK_N, BLOCK_K) or None (see _fixed_launch)."""
    M, K = a.shape
    N = b.shape[1]
    args = (a, b, out, u, act, alpha, beta, part_alpha, part_beta, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1))
    flags = dict(EPILOGUE=epilogue, UPCAST=_INTERPRET, INPUT_PRECISION=_input_precision(a.dtype), GROUP_M=_GROUP_M)
    fixed = _fixed_launch(a.dtype, blocks)
    if fixed is None:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        tuned[grid](*args, **flags)
        return
    grid = (triton.cdiv(M, fixed["BLOCK_M"]) * triton.cdiv(N, fixed["BLOCK_N"]),)
    _relu2_matmul_kernel[grid](*args, **flags, **fixed)


def _relu2_up(x2, w_up, alpha, beta, u=None, act=None, blocks=None):
    """u = x2 @ w_up^T and act = relu(u)^2 * alpha + beta, both (M, h); pass u/act to fill given buffers."""
    M, h = x2.shape[0], w_up.shape[0]
    u = x2.new_empty((M, h)) if u is None else u
    act = x2.new_empty((M, h)) if act is None else act
    if u.numel() > 0:  # nothing to write (d = 0 still runs: u = 0, act = beta)
        _launch(_EPILOGUE_RELU2_FORWARD, x2, w_up.t(), act, u, act, alpha, beta, act, act, blocks, _forward_tuned)
    return u, act


def _relu2_down_grad(d_out2, w_down, u, alpha, beta, d_u=None, act=None, part_alpha=None, part_beta=None,
                     blocks=None):
    """From dA = d_out2 @ w_down: returns dU, recomputed act, and the (tiles, h) d_alpha / d_beta partials."""
    M, h = u.shape
    fixed = _fixed_launch(d_out2.dtype, blocks)
    block_m = fixed["BLOCK_M"] if fixed is not None else _BACKWARD_BLOCK_M
    tiles = triton.cdiv(M, block_m)
    d_u = u.new_empty((M, h)) if d_u is None else d_u
    act = u.new_empty((M, h)) if act is None else act
    part_alpha = u.new_empty((tiles, h), dtype=torch.float32) if part_alpha is None else part_alpha
    part_beta = u.new_empty((tiles, h), dtype=torch.float32) if part_beta is None else part_beta
    if u.numel() > 0:  # nothing to write (d_out = 0 still runs: dA = 0)
        _launch(_EPILOGUE_RELU2_BACKWARD, d_out2, w_down, d_u, u, act, alpha, beta, part_alpha, part_beta,
                blocks, _backward_tuned)
    return d_u, act, part_alpha, part_beta


# ----------------------------------------------------------------------------- custom ops

@torch.library.custom_op("triton_golf::relu2_mlp", mutates_args=())
def _relu2_mlp_op(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, alpha: torch.Tensor,
                  beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, u); u is the saved pre-activation, never exposed by the public function."""
    lead, d, h = x.shape[:-1], x.shape[-1], w_up.shape[0]
    u, act = _relu2_up(as_rows(x, d).contiguous(), w_up, alpha.contiguous(), beta.contiguous())
    out = torch.matmul(act, w_down.t())
    return out.reshape(*lead, w_down.shape[0]), u.reshape(*lead, h)


@_relu2_mlp_op.register_fake
def _(x, w_up, w_down, alpha, beta):
    lead = x.shape[:-1]
    return x.new_empty((*lead, w_down.shape[0])), x.new_empty((*lead, w_up.shape[0]))


@torch.library.custom_op("triton_golf::relu2_mlp_backward", mutates_args=())
def _relu2_mlp_backward_op(d_out: torch.Tensor, x: torch.Tensor, u: torch.Tensor, w_up: torch.Tensor,
                           w_down: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dw_up, dw_down, d_alpha, d_beta)."""
    d, h = x.shape[-1], w_up.shape[0]
    x2 = as_rows(x, d)
    d_out2 = as_rows(d_out, w_down.shape[0]).contiguous()
    d_u, act, part_alpha, part_beta = _relu2_down_grad(
        d_out2, w_down, as_rows(u, h).contiguous(), alpha.contiguous(), beta.contiguous())
    dw_down = torch.matmul(d_out2.t(), act)
    dw_up = torch.matmul(d_u.t(), x2)
    dx = torch.matmul(d_u, w_up).reshape(x.shape)
    return dx, dw_up, dw_down, part_alpha.sum(0).to(alpha.dtype), part_beta.sum(0).to(beta.dtype)


@_relu2_mlp_backward_op.register_fake
def _(d_out, x, u, w_up, w_down, alpha, beta):
    return (torch.empty_like(x), torch.empty_like(w_up), torch.empty_like(w_down), torch.empty_like(alpha),
            torch.empty_like(beta))


def _relu2_mlp_setup_context(ctx, inputs, output):
    x, w_up, w_down, alpha, beta = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1], w_up, w_down, alpha, beta)


def _relu2_mlp_backward(ctx, d_out, d_u_unused):
    return torch.ops.triton_golf.relu2_mlp_backward(d_out, *ctx.saved_tensors)


_relu2_mlp_op.register_autograd(_relu2_mlp_backward, setup_context=_relu2_mlp_setup_context)


# ----------------------------------------------------------------------------- public API

def _check_mlp_inputs(x, w_up, w_down, alpha, beta):
    if x.dim() < 1 or x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"relu2_mlp: x must be a float32/bfloat16/float16 tensor with >= 1 dim, got "
                        f"{x.dtype} of shape {tuple(x.shape)}")
    d = x.shape[-1]
    if w_up.dim() != 2 or w_up.shape[1] != d:
        raise ValueError(f"relu2_mlp: w_up must be (hidden, {d}) for x of last dim {d}, got {tuple(w_up.shape)}")
    h = w_up.shape[0]
    if w_down.dim() != 2 or w_down.shape[1] != h:
        raise ValueError(f"relu2_mlp: w_down must be (d_out, {h}) for hidden {h}, got {tuple(w_down.shape)}")
    for name, vec in (("alpha", alpha), ("beta", beta)):
        if tuple(vec.shape) != (h,):
            raise ValueError(f"relu2_mlp: {name} must have shape ({h},), got {tuple(vec.shape)}")


def relu2_mlp(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
              alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The seed's MLP: down( relu(up(x))^2 * alpha + beta ), fused as the module docstring describes.

    x: (..., d); w_up: (h, d); w_down: (d_out, h); alpha, beta: (h,). Returns (..., d_out) in x's dtype
    (the autocast dtype under autocast). FLOPs: forward 4*M*d*h, backward 8*M*d*h for M = x.numel() / d.
    """
    _check_mlp_inputs(x, w_up, w_down, alpha, beta)
    x = cast_for_autocast(x)
    dt = x.dtype
    out, _ = torch.ops.triton_golf.relu2_mlp(x, w_up.to(dt), w_down.to(dt), alpha.to(dt), beta.to(dt))
    return out


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Bias-free linear layer: delegates to F.linear (cuBLAS), honestly the eager twin's formula.

    A plain GEMM has no epilogue to fuse; cuBLAS is already at the roofline and stays visible to
    torch.compile. FLOPs: 2*M*in*out forward, 4*M*in*out backward.
    """
    return F.linear(x, weight.to(x.dtype))
