"""Causal GQA attention (kernels/attention.py, attention_backward.py, xsa.py): every kernel at every config it
can launch with.

- forward: head packs 2 (the seed's group of 2) and 1 (odd groups), XSA fused and not; bf16 over the configs
  the autotuner keeps for the pack, fp32 at its fixed "ieee" config;
- backward: the preprocess (delta, and XSA's backward when fused), the main kernel in each dQ mode
  (two_stage, atomic, separate) with and without XSA, bf16 over its per-arch config list at the launcher's
  BLOCK_N (each arch compiles only its own list), fp32 at the fixed config; the two-stage reduce; the
  "separate" path's dQ kernel;
- the standalone XSA pass (forward and backward).
Sizes: the seed's (B, T, Hq, D) = (tokens / seq, seq, 8, 64) with 4 KV heads, q/k/v/o contiguous as the model
makes them.
"""
from __future__ import annotations

import math

import triton

from bench.aot.case import DTYPES, Case, fixed_case, mock
from bench.aot.compile import ARCHS
from kernels import attention as attn
from kernels import attention_backward as bwd
from kernels import xsa

DQ_MODES = ("two_stage", "atomic", "separate")


def _strides(t, h, d):
    return (t * h * d, h * d, d)


def _config_cases(kernel: str, variant: str, fn, args: tuple, flags: dict, configs, archs: tuple = ()) -> list:
    """One case per triton.Config; a default (launched untuned) when the list holds only that one."""
    return [Case(kernel, variant, fn.fn, args, {**flags, **c.all_kwargs()}, default=len(configs) == 1, archs=archs)
            for c in configs]


def _forward(s, dt, dtype, x, f32, qs, ks) -> list:
    t, hq, hkv, d = s.seq_len, s.num_heads, s.num_kv_heads, s.head_dim
    args = (x, x, x, x, f32, f32, *qs, *ks, *ks, *qs, hq, t, hq // hkv, attn.LOG2E / math.sqrt(d), attn.XSA_EPS)
    out = []
    for pack in sorted({attn.head_pack(hq // hkv), 1}, reverse=True):
        for fused in (False, True):
            flags = dict(HEAD_DIM=d, PACK=pack, XSA=fused, **attn.kernel_flags(dtype))
            variant = f"{dt} pack{pack}{' xsa' if fused else ''}"
            label = "attention._attn_fwd_kernel"
            if dtype == DTYPES["fp32"]:
                out.append(fixed_case(label, variant, attn._attn_fwd_kernel, args, flags, **attn.GPU_FP32_LAUNCH))
            else:
                kept = attn._prune_fwd(attn._attn_fwd_kernel.configs, {}, PACK=pack)
                out += _config_cases(label, variant, attn._attn_fwd_kernel, args, flags, kept)
    return out


def _backward(s, dt, dtype, x, f32, qs, ks) -> list:
    t, hq, hkv, d = s.seq_len, s.num_heads, s.num_kv_heads, s.head_dim
    group, sm_scale = hq // hkv, 1.0 / math.sqrt(d)
    fp32 = dtype == DTYPES["fp32"]
    out = []
    for fused in (False, True):
        out.append(fixed_case("attention_backward._attn_bwd_preprocess_kernel", f"{dt}{' xsa' if fused else ''}",
                              bwd._attn_bwd_preprocess_kernel,
                              (x, x, x, f32, x, f32, f32, *qs, *qs, *ks, hq, hkv, t, group, attn.XSA_EPS),
                              dict(HEAD_DIM=d, BLOCK_T=bwd.ROW_BLOCK, XSA=fused)))
    label = "attention_backward._attn_bwd_kernel"
    for mode in DQ_MODES:
        for fused in (False, True):
            variant = f"{dt} {mode}{' xsa' if fused else ''}"
            if fp32:
                block_n, launch = bwd.GPU_FP32_MAIN
            else:
                block_n, launch = bwd.BWD_BLOCK_N[d], None
            rows = {"two_stage": bwd.two_stage_rows(t, block_n), "atomic": t, "separate": 0}[mode]
            args = (x, x, x, x, f32, f32, f32, x, x, f32, *qs, *ks, *ks, *qs, *ks, *ks, hq, hkv, t, group, rows,
                    attn.LOG2E * sm_scale, sm_scale)
            flags = dict(HEAD_DIM=d, BLOCK_N=block_n, DQ_MODE=bwd.DQ_MODE_IDS[mode], XSA=fused,
                         **attn.kernel_flags(dtype))
            if fp32:
                out.append(fixed_case(label, variant, bwd._attn_bwd_kernel, args, flags, **launch))
                continue
            for arch, cc in ARCHS.items():
                configs = [triton.Config(dict(BLOCK_M=m), num_warps=w, num_stages=st)
                           for m, w, st in bwd.bwd_gpu_configs(cc // 10)]
                out += _config_cases(label, f"{variant} {arch} list", bwd._attn_bwd_kernel, args, flags, configs,
                                     archs=(arch,))
    block_n = bwd.GPU_FP32_MAIN[0] if fp32 else bwd.BWD_BLOCK_N[d]
    out.append(fixed_case("attention_backward._attn_bwd_dq_reduce_kernel", dt, bwd._attn_bwd_dq_reduce_kernel,
                          (f32, x, *qs, hq, t, bwd.two_stage_rows(t, block_n), sm_scale),
                          dict(HEAD_DIM=d, BLOCK_T=bwd.ROW_BLOCK, BLOCK_N=block_n)))
    dq_args = (x, x, x, x, f32, f32, x, *qs, *ks, *ks, *qs, *qs, hq, t, group, attn.LOG2E * sm_scale, sm_scale)
    dq_flags = dict(HEAD_DIM=d, **attn.kernel_flags(dtype))
    label = "attention_backward._attn_bwd_dq_kernel"
    if fp32:
        out.append(fixed_case(label, f"{dt} separate", bwd._attn_bwd_dq_kernel, dq_args, dq_flags, **bwd.GPU_FP32_DQ))
    else:
        out += _config_cases(label, f"{dt} separate", bwd._attn_bwd_dq_kernel, dq_args, dq_flags,
                             bwd._attn_bwd_dq_kernel.configs)
    return out


def _standalone_xsa(s, dt, x, qs, ks) -> list:
    b, t, hq, hkv, d = s.tokens // s.seq_len, s.seq_len, s.num_heads, s.num_kv_heads, s.head_dim
    n_rows, block_d = b * t * hkv, 1 << (d - 1).bit_length()
    blocks = dict(BLOCK_R=xsa.XSA_BLOCK_ROWS, BLOCK_D=block_d)
    return [fixed_case("xsa._xsa_fwd_kernel", dt, xsa._xsa_fwd_kernel,
                       (x, x, x, n_rows, hkv, hq // hkv, *qs, *ks, *qs, t, d, xsa.XSA_EPS), blocks),
            fixed_case("xsa._xsa_bwd_kernel", dt, xsa._xsa_bwd_kernel,
                       (x, x, x, x, x, n_rows, hkv, hq // hkv, *qs, *ks, t, d, xsa.XSA_EPS), blocks)]


def cases(s):
    qs, ks = _strides(s.seq_len, s.num_heads, s.head_dim), _strides(s.seq_len, s.num_kv_heads, s.head_dim)
    out = []
    for dt, dtype in DTYPES.items():
        x, f32 = mock(dtype), mock(DTYPES["fp32"])
        out += _forward(s, dt, dtype, x, f32, qs, ks)
        out += _backward(s, dt, dtype, x, f32, qs, ks)
        out += _standalone_xsa(s, dt, x, qs, ks)
    return out
