"""Fake int6 quantization with a straight-through estimator (late QAT and TTT adaptation).

The grid is the exporter's per-row int6 grid (seed-spec §4.4, §8.4): s_r = max(max|w_r| / 31, 1/31),
q = clamp(round(w / s_r), -32, 31). The 1/31 scale floor is kept for exact replication of PR #598.
"""
from __future__ import annotations

import torch

INT6_MIN, INT6_MAX = -32, 31
SCALE_FLOOR = 1.0 / 31.0


def int6_row_scales(w: torch.Tensor) -> torch.Tensor:
    """Per-row scale (rows, 1) in fp32: max(max|w_r| / 31, 1/31)."""
    return (w.detach().float().abs().amax(dim=1, keepdim=True) / INT6_MAX).clamp_min(SCALE_FLOOR)


def fake_quant_delta(w: torch.Tensor) -> torch.Tensor:
    """(snapped w - w), detached: what the int6 grid moves each weight by in the forward pass."""
    if w.dim() != 2:
        raise ValueError(f"fake_quant_int6 expects a 2-D weight, got shape {tuple(w.shape)}")
    scale = int6_row_scales(w)
    q = torch.clamp(torch.round(w.detach().float() / scale), INT6_MIN, INT6_MAX) * scale
    return (q.to(w.dtype) - w).detach()


def fake_quant_int6(w: torch.Tensor) -> torch.Tensor:
    """w snapped to the per-row int6 grid in the forward pass; the gradient passes straight through to w."""
    return w + fake_quant_delta(w)
