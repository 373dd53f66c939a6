"""The seed's embedding-side extras: BigramHash, SmearGate, shared value embedding (seed-spec §3.2-3.3, §3.7)."""
from __future__ import annotations

import torch
from torch import nn

from model.layers import Linear

BIGRAM_MUL_CUR, BIGRAM_MUL_PREV = 36313, 27191


def bigram_buckets(ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket per position: (36313*t_i XOR 27191*t_{i-1}) mod (num_buckets-1); position 0 uses num_buckets-1.

    Computed in int32 (all products stay below 2^31 for vocab <= 2^14, so the XOR is non-negative).
    Only the current and previous *input* tokens are used, so the hash is causal.
    """
    t = ids.to(torch.int32)
    out = torch.full_like(t, num_buckets - 1)
    out[..., 1:] = torch.bitwise_xor(BIGRAM_MUL_CUR * t[..., 1:], BIGRAM_MUL_PREV * t[..., :-1]) % (num_buckets - 1)
    return out.long()


def projection_if_needed(dim: int, out_dim: int, backend: str) -> Linear | None:
    """The seed's rule for the bigram and value-embedding projections: a bias-free Linear dim -> out_dim only
    when the widths differ; equal widths feed the table straight through (PR #598 builds no projection)."""
    return Linear(dim, out_dim, backend) if dim != out_dim else None


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding, projected to model_dim and scaled by a frozen 0.05.

    `scale` has requires_grad=False: PR #598 left it out of every optimizer (§8.3), so it stays at its init
    during training; TTT unfreezes it explicitly. `proj` is None when dim == model_dim (as in the seed).
    """

    def __init__(self, num_buckets: int, dim: int, model_dim: int, scale_init: float, backend: str):
        super().__init__()
        self.num_buckets = num_buckets
        self.embed = nn.Embedding(num_buckets, dim)
        self.proj = projection_if_needed(dim, model_dim, backend)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(bigram_buckets(ids, self.num_buckets))
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(h.dtype)


class SmearGate(nn.Module):
    """x_t <- (1 - sigmoid(gate)) * x_t + sigmoid(gate) * x_{t-1}, with x_{-1} = 0; gate is per channel."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return (1 - g) * x + g * prev


class ValueEmbedding(nn.Module):
    """One token table shared by the VE layers: proj(embed(ids)) * scale * layer_scales[k], added to v.

    `proj` (dim -> kv_dim) exists only when dim != kv_dim, as in the seed: the `tiny` preset (64 == 64) has
    none, the `seed` preset (128 -> 256) has one.
    """

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, num_layers: int, scale_init: float, backend: str):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.proj = projection_if_needed(dim, kv_dim, backend)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.layer_scales = nn.Parameter(torch.ones(num_layers))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The shared (B, T, kv_dim) value embedding; callers multiply by layer_scales[k]."""
        h = self.embed(ids)
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(h.dtype)
