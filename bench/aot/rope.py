"""Fused QK RMSNorm + partial RoPE (kernels/rope.py): forward for q (norm + gain), k (norm) and plain
rotate_half_split, and the qk_norm_rope backward with and without gain, at rope dims 16 and head_dim 64."""
from __future__ import annotations

from bench.aot.case import DTYPES, fixed_case, mock
from kernels import rope


def cases(s):
    b, t, d, half = s.tokens // s.seq_len, s.seq_len, s.head_dim, s.rope_dims // 2
    block = dict(BLOCK_R=rope.ROPE_BLOCK_ROWS, BLOCK_D=1 << (d - 1).bit_length())
    out = []
    for dt, dtype in DTYPES.items():
        x, f32 = mock(dtype), mock(DTYPES["fp32"])
        for name, heads, norm, gain in (("q", s.num_heads, True, True), ("k", s.num_kv_heads, True, False),
                                        ("rotate", s.num_heads, False, False)):
            args = (x, x, x, x, x, b * t * heads, heads, t, d, 1e-6, 1.0)
            out.append(fixed_case("rope._rope_fwd_kernel", f"{name} {dt}", rope._rope_fwd_kernel, args,
                                  dict(HALF=half, NORM=norm, HAS_GAIN=gain), **block))
        for name, heads, gain in (("q", s.num_heads, True), ("k", s.num_kv_heads, False)):
            args = (x, x, x, x, x, x, f32, b * t * heads, heads, t, d, 1e-6)
            out.append(fixed_case("rope._qk_norm_rope_bwd_kernel", f"{name} {dt}", rope._qk_norm_rope_bwd_kernel,
                                  args, dict(HALF=half, HAS_GAIN=gain), **block))
    return out
