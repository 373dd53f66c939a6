"""Int6 matrices by size (eval.int6_cache): the kernel at small M, cached dense weights at large M, one crossover."""
import pytest
import torch

import kernels.reference as ref
from eval.int6_cache import INT6_KERNEL_MAX_ROWS, Int6BySize, crossover_from_bench, dequantize, route_int6_by_size
from model.layers import Linear
from kernels.int6_layout import pack_int6


def int6_linear_layer(n: int = 48, k: int = 70) -> tuple[Linear, torch.Tensor]:
    """A Linear holding int6 weights (odd K: the packed rows end in a partial group), and its dense weight."""
    q = torch.randint(-31, 32, (n, k), dtype=torch.int8)
    scales = torch.rand(n) * 0.01 + 0.02
    layer = Linear(k, n, backend="eager")
    layer.set_int6(pack_int6(q), scales)
    return layer, q.float() * scales[:, None]


def test_dequantize_gives_the_scaled_integers():
    layer, dense = int6_linear_layer()
    got = dequantize(layer.int6_packed, layer.int6_scales, 70, torch.float32)
    torch.testing.assert_close(got, dense, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [1, 7, INT6_KERNEL_MAX_ROWS, INT6_KERNEL_MAX_ROWS + 1, 600])
def test_routing_by_rows_matches_the_int6_twin_forward_and_backward(rows, monkeypatch):
    layer, dense = int6_linear_layer()
    kernel_calls = []
    real = ref.int6_linear
    monkeypatch.setattr(layer.ops, "int6_linear", lambda *a: kernel_calls.append(a[0].shape) or real(*a))
    assert route_int6_by_size(torch.nn.Sequential(layer)) == 1 and isinstance(layer.ops, Int6BySize)
    x = torch.randn(rows, 70, requires_grad=True)
    y = layer(x)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    xr = x.detach().clone().requires_grad_(True)
    yr = real(xr, layer.int6_packed, layer.int6_scales, 70)
    (dxr,) = torch.autograd.grad(yr, xr, torch.ones_like(yr))
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dxr, rtol=1e-5, atol=1e-5)
    assert len(kernel_calls) == (1 if rows <= INT6_KERNEL_MAX_ROWS else 0)
    assert layer.ops.dense.dtype == torch.float32 and layer.ops.relu2_mlp is ref.relu2_mlp  # other ops pass through


def test_routing_again_rewraps_the_original_ops_and_skips_float_layers():
    layer, _ = int6_linear_layer()
    plain = Linear(8, 8, backend="eager")
    model = torch.nn.Sequential(layer, plain)
    route_int6_by_size(model)
    first = layer.ops
    assert route_int6_by_size(model, max_rows=4) == 1
    assert layer.ops.ops is first.ops and layer.ops.max_rows == 4 and not isinstance(plain.ops, Int6BySize)


def test_crossover_from_bench_cases():
    def case(m, variant, ms, n=512, k=512):
        return {"case": f"int6_linear M={m} N={n} K={k}", "variant": variant, "ms": ms}
    cases = [case(16, "triton", 0.01), case(16, "dequant_once", 0.02), case(16, "triton", 0.01, n=1536),
             case(16, "dequant_once", 0.03, n=1536), case(4096, "triton", 0.05), case(4096, "dequant_once", 0.06),
             case(4096, "triton", 0.20, n=1536), case(4096, "dequant_once", 0.10, n=1536),
             case(65536, "triton", 2.0), case(65536, "dequant_once", 1.0),
             {"case": "int6_linear fwd+dx M=16 N=512 K=512", "variant": "triton", "ms": 9.0}]
    assert crossover_from_bench(cases) == 16  # at 4096 the kernel loses on one shape
    assert crossover_from_bench(cases[:2]) == 16 and crossover_from_bench([case(16, "triton", 1.0)]) is None
    assert crossover_from_bench([case(16, "triton", 1.0), case(16, "dequant_once", 0.5)]) == 0
