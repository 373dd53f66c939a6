"""The benchmark's FLOP figures: the model's counts and MFU (model.flops, re-exported here so bench code reads
`flops.<name>`), plus the device's measured bf16 peak that MFU divides by."""
from __future__ import annotations

from model.flops import (FA_BACKWARD_FACTOR, attention_forward_flops_per_token,  # noqa: F401  (re-exports)
                         attention_kernel_flops, forward_flops_per_token, layer_matmul_params, linear_flops,
                         matmul_params, mfu, train_flops_per_token)


def measure_bf16_peak_tflops(size: int = 8192) -> float:
    """The device's dense bf16 matmul throughput (TFLOP/s), timed with do_bench on size^3."""
    import torch

    from bench.timing import kernel_ms

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    ms = kernel_ms(torch.mm, [(a, b)])
    return 2 * size**3 / (ms * 1e-3) / 1e12
