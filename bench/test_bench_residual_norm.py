"""The fused residual glue + RMSNorm (kernels/residual_norm.py) against its eager twin and Inductor's fusion of it.

The case is a decoder block's entry, the heaviest call the model makes: pending residual add (bf16 sublayer
output), U-Net skip gate, residual mix with x0, norm, the norm's output in the autocast dtype; forward and
backward into every tensor input. The residual stream is fp32 as in the model. Named test_rms_norm_* so the GPU
check's memory stage (bench.gpu_stages, `test_rms_norm or ...`) runs it beside the plain RMSNorm.
"""
from __future__ import annotations

import pytest
import torch

from kernels import reference

VARIANTS = ("eager", "compile", "triton")


@pytest.mark.parametrize("variant", VARIANTS)
def test_rms_norm_residual(variant, shapes, measure, import_or_skip, compile_fn, autocast):
    s = shapes
    if variant == "triton":
        op = import_or_skip("kernels.residual_norm").residual_norm
    else:
        op = compile_fn(reference.residual_norm) if variant == "compile" else reference.residual_norm
    rows, d, device = s.rows, s.model_dim, s.device

    def tensor(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_()

    def make_set():
        x, branch, skip, x0 = tensor(rows, d), tensor(rows, d, dtype=s.dtype), tensor(rows, d), tensor(rows, d)
        params = (tensor(d), tensor(d), tensor(d), tensor(2, d))
        n_dtype = s.dtype  # the autocast dtype on the GPU, fp32 in quick mode
        return (x, branch, skip, x0, *params, torch.randn(rows, d, device=device, dtype=n_dtype),
                torch.randn(rows, d, device=device))

    def fwd_bwd(x, branch, skip, x0, branch_scale, skip_gate, skip_weight, mix, dn, dh):
        with autocast():
            h, n = op(x, 0.5, branch=branch, branch_scale=branch_scale, skip=skip, skip_gate=skip_gate,
                      skip_weight=skip_weight, x0=x0, mix=mix)
        return torch.autograd.grad((h, n), (x, branch, skip, x0, branch_scale, skip_gate, skip_weight, mix),
                                   (dh, dn))

    fp32, io = 4, torch.empty((), dtype=s.dtype).element_size()
    # forward: read x, branch, skip, x0, write h, n; backward: read dn, dh, x, branch, skip, x0, write dx, dbranch,
    # dskip, dx0 (the per-channel vectors are negligible)
    per_element = (3 * fp32 + io) + (fp32 + io) + (io + fp32 + 3 * fp32 + io) + (3 * fp32 + io)
    measure("rms_norm_residual fwd+bwd", variant, fwd_bwd, [make_set() for _ in range(s.input_sets)],
            tokens=rows, shape=f"M{rows} d{d} fp32 stream, {str(s.dtype).removeprefix('torch.')} branch",
            bytes_moved=per_element * rows * d)
