"""Int6 bit-packing: 4 signed 6-bit values in 3 bytes, the in-memory layout the int6-dequant kernel reads.

Layout (row-major, each row packed on its own):
  - values q in [-32, 31] are biased to u = q + 32 in [0, 63];
  - a row of K values is padded with zeros (u = 32, i.e. q = 0) to a multiple of 4;
  - each group of 4 consecutive values (u0, u1, u2, u3) forms the 24-bit word
        w = u0 | u1 << 6 | u2 << 12 | u3 << 18
    stored little-endian as bytes (w & 0xFF, (w >> 8) & 0xFF, (w >> 16) & 0xFF);
  - a packed row of K values therefore takes 3 * ceil(K / 4) bytes, and a (N, K) matrix packs to a
    contiguous uint8 tensor of shape (N, 3 * ceil(K / 4)).
So value j of a row lives in group j // 4, at bit offset 6 * (j % 4) of that group's 24-bit word.
This is 3/8 of the bytes of the bf16 weight. (The artifact on disk stores int6 values one per byte,
which zstd compresses better; packing happens when an artifact is loaded for evaluation.)
"""
from __future__ import annotations

import torch

INT6_MIN, INT6_MAX = -32, 31


def packed_row_bytes(in_features: int) -> int:
    """Bytes taken by one packed row of `in_features` int6 values."""
    return 3 * ((in_features + 3) // 4)


def pack_int6(q: torch.Tensor) -> torch.Tensor:
    """Pack an integer tensor (N, K) with values in [-32, 31] into uint8 (N, 3 * ceil(K/4))."""
    if q.dim() != 2:
        raise ValueError(f"pack_int6 expects a 2-D tensor, got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < INT6_MIN or int(q.max()) > INT6_MAX):
        raise ValueError(f"pack_int6: values outside [{INT6_MIN}, {INT6_MAX}]")
    n, k = q.shape
    pad = (-k) % 4
    u = (q.to(torch.int32) + 32)
    if pad:
        u = torch.cat([u, torch.full((n, pad), 32, dtype=torch.int32, device=q.device)], dim=1)
    u = u.reshape(n, (k + pad) // 4, 4)
    word = u[..., 0] | (u[..., 1] << 6) | (u[..., 2] << 12) | (u[..., 3] << 18)
    out = torch.stack([word & 0xFF, (word >> 8) & 0xFF, (word >> 16) & 0xFF], dim=-1)
    return out.reshape(n, packed_row_bytes(k)).to(torch.uint8).contiguous()


def unpack_int6(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of `pack_int6`: uint8 (N, 3 * ceil(K/4)) -> int8 (N, K) with values in [-32, 31]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_int6 expects a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    n = packed.size(0)
    if packed.size(1) != packed_row_bytes(in_features):
        raise ValueError(f"unpack_int6: row of {packed.size(1)} bytes does not hold {in_features} int6 values")
    b = packed.to(torch.int32).reshape(n, packed.size(1) // 3, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    u = torch.stack([(word >> s) & 0x3F for s in (0, 6, 12, 18)], dim=-1).reshape(n, 4 * word.size(1))
    return (u[:, :in_features] - 32).to(torch.int8)
