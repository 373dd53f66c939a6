"""Weightless RMSNorm (kernels/rmsnorm.py): forward and backward at the launch config `_launch_config` picks
for the seed's model dim (one row per program; fixed, so a default config)."""
from __future__ import annotations

from bench.aot.case import DTYPES, fixed_case, mock
from kernels import rmsnorm


def cases(s):
    d, rows = s.model_dim, s.tokens
    block_r, block_d, warps = rmsnorm._launch_config(d)
    launch = dict(BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps)
    out = []
    for dt, dtype in DTYPES.items():
        x, f32 = mock(dtype), mock(DTYPES["fp32"])
        out.append(fixed_case("rmsnorm._rms_norm_forward_kernel", dt, rmsnorm._rms_norm_forward_kernel,
                              (x, x, f32, rows, d, d, d, 0.5, 1e-6), {}, **launch))
        out.append(fixed_case("rmsnorm._rms_norm_backward_kernel", dt, rmsnorm._rms_norm_backward_kernel,
                              (x, x, f32, x, rows, d, d, d, d, 0.5), {}, **launch))
    return out
