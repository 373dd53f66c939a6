"""Causal GQA attention (kernels/attention.py): forward, the backward's delta / dK-dV / dQ kernels, XSA.

bf16 launches are autotuned over the module's config lists; fp32 launches use the fixed blocks of
`attention._blocks` (exact "ieee" dots). Sizes: the seed's (B, T, Hq, D) = (tokens / seq, seq, 8, 64) with
4 KV heads (GQA group 2), q/k/v/o contiguous as the model makes them.
"""
from __future__ import annotations

import math

from bench.aot.case import DTYPES, autotuned_cases, fixed_case, mock
from kernels import attention as attn

DELTA_BLOCK_M = 64  # attention_backward's delta_block


def _strides(t, h, d):
    return (t * h * d, h * d, d)


def cases(s):
    b, t, hq, hkv, d = s.tokens // s.seq_len, s.seq_len, s.num_heads, s.num_kv_heads, s.head_dim
    group, sm_scale = hq // hkv, 1.0 / math.sqrt(d)
    qs, ks = _strides(t, hq, d), _strides(t, hkv, d)
    out = []
    for dt, dtype in DTYPES.items():
        x, f32 = mock(dtype), mock(DTYPES["fp32"])
        flags = dict(HEAD_DIM=d, **attn._kernel_flags(dtype))
        fixed = attn._blocks(None, dtype)  # {} when the launch autotunes
        fwd = (x, x, x, x, f32, *qs, *ks, *ks, *qs, hq, t, group, sm_scale * attn.LOG2E)
        dkdv = (x, x, x, x, f32, f32, x, x, *qs, *ks, *ks, *qs, *ks, *ks, hq, hkv, t, group,
                sm_scale * attn.LOG2E, sm_scale)
        dq = (x, x, x, x, f32, f32, x, *qs, *ks, *ks, *qs, *qs, hq, t, group, sm_scale * attn.LOG2E, sm_scale)
        for name, kernel, args in (("fwd", attn._attn_fwd_kernel, fwd), ("dkdv", attn._attn_bwd_dkdv_kernel, dkdv),
                                   ("dq", attn._attn_bwd_dq_kernel, dq)):
            label = f"attention.{kernel.fn.__name__}"
            if fixed:
                out.append(fixed_case(label, dt, kernel, args, flags, **fixed))
            else:
                out += autotuned_cases(label, dt, kernel, args, flags)
        out.append(fixed_case("attention._attn_bwd_delta_kernel", dt, attn._attn_bwd_delta_kernel,
                              (x, x, f32, *qs, *qs, hq, t), {}, HEAD_DIM=d, BLOCK_M=DELTA_BLOCK_M))
        n_rows, block_d = b * t * hkv, 1 << (d - 1).bit_length()
        xsa = dict(BLOCK_R=attn.XSA_BLOCK_ROWS, BLOCK_D=block_d)
        out.append(fixed_case("attention._xsa_fwd_kernel", dt, attn._xsa_fwd_kernel,
                              (x, x, x, n_rows, hkv, group, *qs, *ks, *qs, t, d, attn.XSA_EPS), xsa))
        out.append(fixed_case("attention._xsa_bwd_kernel", dt, attn._xsa_bwd_kernel,
                              (x, x, x, x, x, n_rows, hkv, group, *qs, *ks, t, d, attn.XSA_EPS), xsa))
    return out
