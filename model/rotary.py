"""Partial-RoPE angle tables with the seed's NTK-style base rescaling (seed-spec §3.5).

For a forward of length T > rope_train_seq_len the base becomes base * (T / train_len)^(d / (d - 2)),
d = rope_dims; this is all that "YaRN" means in PR #598. The table for the configured seq_len is built
once at construction, outside any inference_mode, so it can be saved for backward later (§8.7 trap);
other lengths are computed on the fly and never cached.
"""
from __future__ import annotations

import torch
from torch import nn


def rope_base_for(seq_len: int, base: float, rope_dims: int, train_seq_len: int) -> float:
    """The (possibly NTK-rescaled) RoPE base used for sequences of length `seq_len`."""
    if seq_len <= train_seq_len or rope_dims == 0:
        return float(base)
    return float(base) * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))


def rope_tables(seq_len: int, rope_dims: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, rope_dims/2), fp32: theta = pos * base^(-2i/rope_dims)."""
    inv_freq = base ** (-torch.arange(0, rope_dims, 2, dtype=torch.float64, device=device) / rope_dims)
    angles = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


class Rotary(nn.Module):
    def __init__(self, rope_dims: int, base: float, train_seq_len: int, seq_len: int):
        super().__init__()
        self.rope_dims, self.base, self.train_seq_len, self.seq_len = rope_dims, base, train_seq_len, seq_len
        cos, sin = rope_tables(seq_len, rope_dims, self.base_for(seq_len))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def base_for(self, seq_len: int) -> float:
        return rope_base_for(seq_len, self.base, self.rope_dims, self.train_seq_len)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len == self.seq_len:
            return self.cos, self.sin
        return rope_tables(seq_len, self.rope_dims, self.base_for(seq_len), device=self.cos.device)
