"""Fused softcapped cross-entropy (kernels/cross_entropy.py): the forward NLL kernel and the dlogits kernel.

bf16 launches autotune (GPU_CONFIGS); fp32 launches run the config `_fixed_launch` picks, in each dot precision
torch's matmul-precision setting can select. Sizes: the seed's micro-batch of tokens, vocab 1024, model dim 512;
the dlogits kernel runs on chunks of `_default_chunk_tokens` tokens.
"""
from __future__ import annotations

import torch

from bench.aot.case import DTYPES, fp32_dot_precisions, launch_cases, mock
from kernels import cross_entropy as ce


def cases(s):
    v, d = s.vocab, s.model_dim
    out = []
    for dt, dtype in DTYPES.items():
        x, f32, i64 = mock(dtype), mock(DTYPES["fp32"]), mock(torch.int64)
        chunk = min(s.tokens, ce._default_chunk_tokens(v, dtype))
        fixed = ce._fixed_launch(dtype, None)
        for precision in fp32_dot_precisions(ce._dot_precision) if dt == "fp32" else [ce._dot_precision(dtype)]:
            flags = {"UPCAST": dtype == torch.float32, "DOT_PRECISION": precision}
            variant = dt + (f" {precision}" if dt == "fp32" else "")
            out += launch_cases("ce._softcap_ce_forward_kernel", variant, ce._softcap_ce_forward_tuned,
                                (x, x, i64, f32, f32, s.tokens, v, d, d, d, 30.0), flags, fixed)
            out += launch_cases("ce._softcap_ce_dlogits_kernel", variant, ce._softcap_ce_dlogits_tuned,
                                (x, x, i64, f32, f32, x, chunk, v, d, d, d, v, 30.0), flags, fixed)
    return out
