"""Eager-PyTorch twins of every kernel: the definition of what each Triton kernel must compute.

The model runs on these when `backend="eager"`; the kernel tests compare every Triton op against
them. Layout convention for attention tensors: (batch, seq, heads, head_dim), as FlashAttention.
All functions are differentiable through ordinary autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.autocast import autocast_dtype, cast_for_autocast, cast_to_one_dtype
from kernels.int6_layout import unpack_int6


def rms_norm(x: torch.Tensor, scale: float = 1.0, eps: float | None = None) -> torch.Tensor:
    """Weightless RMSNorm over the last dim, times a constant `scale` (the layer's LN-scale factor), in x's dtype
    (CUDA's autocast computes F.rms_norm in fp32; the result comes back to x's dtype, as the kernel's does)."""
    y = F.rms_norm(x, (x.size(-1),), eps=eps).to(x.dtype)
    return y * scale if scale != 1.0 else y


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int) -> torch.Tensor:
    """Partial RoPE: rotate pairs (i, i + rope_dims/2) of the first `rope_dims` dims; the rest pass through.

    x: (B, T, H, D); cos, sin: (T, rope_dims/2). Rotation (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos).
    """
    if rope_dims == 0:
        return x
    half = rope_dims // 2
    c = cos[None, :, None, :].to(x.dtype)
    s = sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rope_dims], x[..., rope_dims:]
    return torch.cat((x1 * c + x2 * s, -x1 * s + x2 * c, rest), dim=-1)


def qk_norm_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_dims: int,
                 gain: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head weightless RMSNorm, partial RoPE, then an optional per-head gain (H,).

    This is what the model applies to q (with q_gain) and to k (without) before attention.
    """
    y = rotate_half_split(rms_norm(x), cos, sin, rope_dims)
    if gain is not None:
        y = y * gain.to(y.dtype)[None, None, :, None]
    return y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, xsa: bool = False) -> torch.Tensor:
    """Causal grouped-query attention with scale 1/sqrt(head_dim), optionally exclusive (XSA).

    q: (B, T, Hq, D); k, v: (B, T, Hkv, D) with Hq a multiple of Hkv; query head h reads KV head
    h // (Hq // Hkv) (the repeat_interleave convention). With `xsa`, each head's output y has its
    component along the token's own unit value vector removed: y - <y, v_hat> v_hat.
    Under autocast q, k, v are cast to the autocast dtype (kernels.autocast). Returns (B, T, Hq, D).
    """
    q, k, v = cast_to_one_dtype(q, k, v)
    B, T, Hq, D = q.shape
    Hkv = k.size(2)
    group = Hq // Hkv
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=group > 1
    ).transpose(1, 2)
    if xsa:
        y = exclusive_projection(y, v)
    return y


def exclusive_projection(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """XSA epilogue: remove from each head's output its component along the token's own value direction.

    y and v are cast to one dtype for autocast; the result is in that dtype (CUDA's autocast runs the norm in
    fp32, and the result comes back, as the kernel's does)."""
    y, v = cast_to_one_dtype(y, v)
    out_dtype = y.dtype
    B, T, Hq, D = y.shape
    Hkv = v.size(2)
    yg = y.reshape(B, T, Hkv, Hq // Hkv, D)
    v_hat = F.normalize(v, dim=-1, eps=1e-12).unsqueeze(3)
    yg = yg - (yg * v_hat).sum(-1, keepdim=True) * v_hat
    return yg.reshape(B, T, Hq, D).to(out_dtype)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Bias-free linear layer, weight cast to the activation dtype (fp32 storage, bf16 compute under autocast)."""
    x = cast_for_autocast(x)
    return F.linear(x, weight.to(x.dtype))


def relu2_mlp(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
              alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The seed's MLP: down( relu(up(x))^2 * alpha + beta ). alpha, beta: (hidden,)."""
    u = linear(x, w_up)
    a = torch.relu(u).square() * alpha.to(u.dtype) + beta.to(u.dtype)  # fp32 on CUDA autocast (pow's policy)
    return linear(a, w_down)


def softcap_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          softcap: float) -> torch.Tensor:
    """Per-token NLL (fp32, shape of `targets`) of the tied head with logit softcap.

    x: (..., d) final normed hidden states; weight: (vocab, d); logits = softcap * tanh(x W^T / softcap).
    targets: in [0, vocab), or -100 (F.cross_entropy's default ignore_index: loss 0, no gradient).
    """
    x = cast_for_autocast(x)
    logits = F.linear(x, weight.to(x.dtype)).float()
    logits = softcap * torch.tanh(logits / softcap)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return nll.reshape(targets.shape)


def int6_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """y = x @ dequant(W)^T for int6 weights packed 4-per-3-bytes (kernels.int6_layout) with per-row scales."""
    q = unpack_int6(packed, in_features)
    w = q.to(torch.float32) * scales.to(torch.float32)[:, None]
    x = cast_for_autocast(x)
    return F.linear(x, w.to(x.dtype))


def residual_norm(x: torch.Tensor, scale: float = 1.0, *, branch: torch.Tensor | None = None,
                  branch_scale: torch.Tensor | None = None, skip: torch.Tensor | None = None,
                  skip_gate: torch.Tensor | None = None, skip_weight: torch.Tensor | None = None,
                  x0: torch.Tensor | None = None, mix: torch.Tensor | None = None, keep_residual: bool = False,
                  eps: float | None = None):
    """The residual-stream glue of a block, ending in its RMSNorm: (h, n), or (r, h, n) with `keep_residual`.

      r = x + branch_scale * branch                        (a sublayer's pending residual update; optional)
      h = g * r + (1 - g) * skip_weight * skip, g = sigmoid(skip_gate)   (U-Net skip gate; optional;
                                                            skip=None reads r itself as the skip)
      h = mix[0] * h + mix[1] * x0                         (residual mix with the embedding x0; optional)
      n = rms_norm(h) * scale, in the autocast dtype under autocast (the dtype the next matmul reads)

    x, skip, x0: (..., D) in the residual stream's dtype; branch: (..., D) in any float dtype; branch_scale,
    skip_gate, skip_weight: (D,); mix: (2, D). r and h are in x's dtype.
    """
    r = x if branch is None else x + branch_scale.to(x.dtype) * branch
    h = r
    if skip_gate is not None:
        gate = torch.sigmoid(skip_gate).to(x.dtype)
        h = gate * h + (1 - gate) * (skip_weight.to(x.dtype) * (r if skip is None else skip))
    if mix is not None:
        m = mix.to(x.dtype)
        h = m[0] * h + m[1] * x0
    n = rms_norm(h, scale, eps).to(autocast_dtype(h))
    return (r, h, n) if keep_residual else (h, n)
