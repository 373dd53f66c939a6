"""Int6-dequant matmul (kernels/int6_matmul.py): forward y = x W^T and backward dx = dy W from packed weights.

bf16 launches autotune, and the autotuner prunes by M (small-M tiles at M <= 64 rows, large-M tiles above): each
kernel is compiled at a small and a large M with the configs `_prune_by_m` keeps there. fp32 launches run the
config `_fixed_launch` picks, in each dot precision torch's matmul-precision setting can select. Every seed int6
matrix (N, K in 256 / 512 / 1536, packed rows of 3K/4 bytes) has 16-divisible sizes and strides, so Triton
specializes them all alike: the MLP up-projection (N = hidden, K = model dim) stands for them.
"""
from __future__ import annotations

import torch

from bench.aot.case import DTYPES, fp32_dot_precisions, launch_cases, mock
from kernels import int6_matmul as int6


def cases(s):
    n, k = s.mlp_hidden, s.model_dim
    groups = int6.packed_row_bytes(k) // 3
    out = []
    for dt, dtype in DTYPES.items():
        x, packed, scales = mock(dtype), mock(torch.uint8), mock(DTYPES["fp32"])
        fixed = int6._fixed_launch(dtype, None)
        precisions = fp32_dot_precisions(int6._dot_precision) if dt == "fp32" else [int6._dot_precision(dtype)]
        for m in (s.small_m, s.tokens) if fixed is None else (s.tokens,):
            for precision in precisions:
                flags = {"UPCAST": dtype == torch.float32, "DOT_PRECISION": precision}
                variant = dt + (f" M={m}" if fixed is None else "") + (f" {precision}" if dt == "fp32" else "")
                common = (m, n, k, groups, int6._m_bucket(m))
                out += launch_cases("int6._int6_linear_forward_kernel", variant, int6._int6_linear_forward_tuned,
                                    (x, packed, scales, x, *common, k, 3 * groups, n), flags, fixed, {"M": m})
                out += launch_cases("int6._int6_linear_backward_kernel", variant, int6._int6_linear_backward_tuned,
                                    (x, packed, scales, x, *common, n, 3 * groups, k), flags, fixed, {"M": m})
    return out
