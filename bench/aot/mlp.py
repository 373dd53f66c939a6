"""Fused ReLU^2 MLP (kernels/mlp.py): the up-projection epilogue (forward) and the dA epilogue (backward).

bf16 launches autotune (FORWARD_CONFIGS / BACKWARD_CONFIGS); fp32 launches run the config `_fixed_launch` picks,
in each dot precision torch's TF32 switch can select. Sizes: the seed's micro-batch of tokens (M), MLP hidden
(N) and model dim (K).
"""
from __future__ import annotations

from bench.aot.case import DTYPES, fp32_dot_precisions, launch_cases, mock
from kernels import mlp

KERNEL = "mlp._relu2_matmul_kernel"


def _args(epilogue: int, dtype, s):
    """Launch arguments of kernels/mlp.py `_launch` at the seed's M (tokens), N = hidden, K = model dim."""
    act, f32 = mock(dtype), mock(DTYPES["fp32"])
    m, h, d = s.tokens, s.mlp_hidden, s.model_dim
    if epilogue == mlp._EPILOGUE_RELU2_FORWARD:  # x2 @ w_up.t(): b strides (1, d)
        return (act, act, act, act, act, act, act, act, act, m, h, d, d, 1, 1, d)
    return (act, act, act, act, act, act, act, f32, f32, m, h, d, d, 1, h, 1)  # d_out2 @ w_down


def cases(s):
    out = []
    for name, epilogue, tuned in (("fwd", mlp._EPILOGUE_RELU2_FORWARD, mlp._forward_tuned),
                                  ("bwd", mlp._EPILOGUE_RELU2_BACKWARD, mlp._backward_tuned)):
        for dt, dtype in DTYPES.items():
            precisions = fp32_dot_precisions(mlp._input_precision) if dt == "fp32" else [mlp._input_precision(dtype)]
            for precision in precisions:
                flags = dict(EPILOGUE=epilogue, UPCAST=False, INPUT_PRECISION=precision, GROUP_M=mlp._GROUP_M)
                variant = f"{name} {dt}" + (f" {precision}" if dt == "fp32" else "")
                out += launch_cases(KERNEL, variant, tuned, _args(epilogue, dtype, s), flags,
                                    mlp._fixed_launch(dtype, None))
    return out
