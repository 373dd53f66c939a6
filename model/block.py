"""One transformer block of the seed (seed-spec §3.4-3.6): residual mix with x0, attention, ReLU² MLP.

All arithmetic goes through the kernel namespace `ops` (kernels.ops.get_ops). The residual glue rides on the
norms: `ops.residual_norm` adds a pending sublayer update, the U-Net skip gate and the residual mix, then norms
(one pass over the rows with the Triton kernel, one Inductor fusion under torch.compile). So a block returns its
MLP update *pending*, (mlp_out, mlp_scale), and the next block's first norm (or the final norm) adds it.
"""
from __future__ import annotations

import torch
from torch import nn

from kernels.ops import get_ops
from model.layers import Linear


class Attention(nn.Module):
    """q/k/v projections (+ value embedding on v), QK norm + partial RoPE, q gain, causal GQA, optional XSA."""

    def __init__(self, model_dim: int, num_heads: int, num_kv_heads: int, rope_dims: int, qk_gain_init: float,
                 xsa: bool, backend):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = model_dim // num_heads
        self.rope_dims, self.xsa = rope_dims, xsa
        kv_dim = num_kv_heads * self.head_dim
        self.q = Linear(model_dim, model_dim, backend)
        self.k = Linear(model_dim, kv_dim, backend)
        self.v = Linear(model_dim, kv_dim, backend)
        self.o = Linear(model_dim, model_dim, backend, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((num_heads,), float(qk_gain_init)))
        self.ops = get_ops(backend)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.k(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.v(x)
        if ve is not None:
            v = v + ve.to(v.dtype)
        v = v.view(B, T, self.num_kv_heads, self.head_dim)
        q = self.ops.qk_norm_rope(q, cos, sin, self.rope_dims, self.q_gain)
        k = self.ops.qk_norm_rope(k, cos, sin, self.rope_dims, None)
        y = self.ops.attention(q, k, v, xsa=self.xsa)
        return self.o(y.reshape(B, T, -1))


class MLP(nn.Module):
    """down( relu(up(x))^2 * alpha + beta ), down zero-initialized."""

    def __init__(self, model_dim: int, hidden: int, backend):
        super().__init__()
        self.up = Linear(model_dim, hidden, backend)
        self.down = Linear(hidden, model_dim, backend, zero_init=True)
        self.alpha = nn.Parameter(torch.ones(hidden))
        self.beta = nn.Parameter(torch.zeros(hidden))
        self.ops = get_ops(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up.has_int6 or self.down.has_int6:
            u = self.up(x)
            a = torch.relu(u).square() * self.alpha.to(u.dtype) + self.beta.to(u.dtype)
            return self.down(a)
        return self.ops.relu2_mlp(x, self.up.effective_weight(), self.down.effective_weight(), self.alpha, self.beta)


class Block(nn.Module):
    """x -> h = mix0 * x + mix1 * x0; h += attn_scale * attn(norm(h)); h += mlp_scale * mlp(norm(h))."""

    def __init__(self, layer: int, model_dim: int, num_heads: int, num_kv_heads: int, mlp_hidden: int,
                 rope_dims: int, qk_gain_init: float, xsa: bool, ln_scale: bool, backend):
        super().__init__()
        self.norm_scale = (layer + 1) ** -0.5 if ln_scale else 1.0
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(model_dim), torch.zeros(model_dim)]))
        self.attn_scale = nn.Parameter(torch.ones(model_dim))
        self.mlp_scale = nn.Parameter(torch.ones(model_dim))
        self.attn = Attention(model_dim, num_heads, num_kv_heads, rope_dims, qk_gain_init, xsa, backend)
        self.mlp = MLP(model_dim, mlp_hidden, backend)
        self.ops = get_ops(backend)

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ve: torch.Tensor | None = None, pending: tuple | None = None, skip: tuple | None = None,
                keep_input: bool = False):
        """Run the block on the stream x + scale * branch, `pending` = (branch, scale) (None: x itself).

        skip = (gate_logits, weight, source) first gates in a U-Net skip, g * input + (1 - g) * weight * source
        (source None: the block's own input). Returns (input, h, update): the block's input materialized when
        `keep_input` (an encoder output a decoder reads later; else None), the stream after attention, and
        the MLP update (mlp_out, mlp_scale) left pending: the block's output is h + mlp_scale * mlp_out.
        """
        branch, branch_scale = pending if pending is not None else (None, None)
        gate, weight, source = skip if skip is not None else (None, None, None)
        out = self.ops.residual_norm(x, self.norm_scale, branch=branch, branch_scale=branch_scale, skip=source,
                                     skip_gate=gate, skip_weight=weight, x0=x0, mix=self.resid_mix,
                                     keep_residual=keep_input)
        kept, (h, n) = (out[0], out[1:]) if keep_input else (None, out)
        h, n = self.ops.residual_norm(h, self.norm_scale, branch=self.attn(n, cos, sin, ve),
                                      branch_scale=self.attn_scale)
        return kept, h, (self.mlp(n), self.mlp_scale)
