"""Flattening a (..., D) tensor into the (rows, D) matrix a row-major kernel reads.

`t.reshape(-1, D)` cannot infer the row count when D == 0 (every row count fits zero elements) and raises; the
row count here comes from the leading dims instead, so zero-width features flatten like any other width.
"""
from __future__ import annotations

import math

import torch


def as_rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """t (..., d) as a (rows, d) matrix with unit column stride: a view when possible, else a contiguous copy."""
    t2 = t.reshape(math.prod(t.shape[:-1]), d)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
