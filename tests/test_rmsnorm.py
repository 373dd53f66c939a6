"""Triton fused RMSNorm (kernels/rmsnorm.py) against its eager twin kernels.reference.rms_norm."""
import pytest
import torch
import torch.nn.functional as F

from kernels import reference
from kernels import rmsnorm

BF16_SKIP = "bf16 is not emulated by the Triton interpreter"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _skip_bf16_on_cpu(dtype, device):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip(BF16_SKIP)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("shape,scale,eps", [
    ((1, 64), 1.0, None),
    ((17, 96), 0.5, None),
    ((100, 100), 1 / 3 ** 0.5, 1e-5),   # last dim not a power of 2: masked lanes
    ((2, 65, 64), 0.7, None),             # batch dims (B, T, d)
    ((130, 512), 1.0, 1e-6),
])
def test_forward_backward_match_eager_twin(shape, scale, eps, dtype, device):
    _skip_bf16_on_cpu(dtype, device)
    torch.manual_seed(0)
    x = (torch.randn(shape, device=device) * 3).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = rmsnorm.rms_norm(x, scale, eps)
    y_ref = reference.rms_norm(x_ref, scale, eps)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, dy)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy)
    torch.testing.assert_close(dx, dx_ref, **TOL[dtype])


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("shape", [(3, 0), (2, 5, 0), (0, 8), (0, 0)])
def test_empty_rows_or_width(shape, backend, device):
    """Zero rows or a zero-width last dim: an empty output and gradient of x's shape, on both backends."""
    fn = reference.rms_norm if backend == "eager" else rmsnorm.rms_norm
    x = torch.randn(shape, device=device, requires_grad=True)
    y = fn(x, 0.5)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert y.shape == dx.shape == x.shape


def test_default_eps_matters_and_matches_f_rms_norm(device):
    """With tiny activations eps dominates: the default must be F.rms_norm's."""
    x = torch.full((3, 64), 1e-4, device=device)
    torch.testing.assert_close(rmsnorm.rms_norm(x), F.rms_norm(x, (64,)), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(rmsnorm.rms_norm(x), rmsnorm.rms_norm(x, eps=1e-6), rtol=1e-2)


def test_default_eps_for_bf16_is_float32_eps():
    """F.rms_norm computes bf16 in fp32 with fp32's eps (checked on eager torch, no kernel involved)."""
    x = torch.full((2, 8), 1e-4, dtype=torch.bfloat16)
    eps = rmsnorm.default_eps(torch.bfloat16)
    expected = x.float() * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(F.rms_norm(x, (8,)).float(), expected, atol=0, rtol=1e-2)


def test_every_output_element_is_written(device):
    torch.manual_seed(1)
    x = torch.randn(37, 100, device=device)
    y = torch.full_like(x, float("nan"))
    rstd = torch.full((37,), float("nan"), device=device)
    rmsnorm._rms_norm_forward(x, 0.5, 1e-6, y=y, rstd=rstd)
    torch.testing.assert_close(y, reference.rms_norm(x, 0.5, 1e-6), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd, torch.rsqrt(x.square().mean(-1) + 1e-6), atol=1e-5, rtol=1e-5)
    dx = torch.full_like(x, float("nan"))
    rmsnorm._rms_norm_backward(torch.randn_like(x), x, rstd, 0.5, dx=dx)
    assert torch.isfinite(dx).all()


def test_non_contiguous_input(device):
    x = torch.randn(64, 40, device=device).t()  # (40, 64), row stride 1
    torch.testing.assert_close(rmsnorm.rms_norm(x, 2.0), reference.rms_norm(x, 2.0), atol=1e-5, rtol=1e-5)


def test_rejects_bad_input():
    with pytest.raises(TypeError, match="rms_norm"):
        rmsnorm.rms_norm(torch.ones(4, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="rms_norm"):
        rmsnorm.rms_norm(torch.tensor(1.0))


def test_opcheck(device):
    x = torch.randn(5, 64, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.triton_golf.rms_norm, (x, 0.5, 1e-6))
    rstd = torch.rand(5, device=device) + 0.5
    torch.library.opcheck(torch.ops.triton_golf.rms_norm_backward, (torch.randn(5, 64, device=device), x.detach(),
                                                                      rstd, 0.5))


def test_compiles_fullgraph_forward_and_backward(device):
    torch.manual_seed(2)
    x = torch.randn(3, 7, 64, device=device, requires_grad=True)
    weight = torch.randn(64, device=device)  # a non-trivial loss: sum(y^2) alone has a near-zero gradient
    compiled = torch.compile(lambda t: (rmsnorm.rms_norm(t, 0.5) * weight).sum(), fullgraph=True,
                             backend="aot_eager")
    loss = compiled(x)
    (dx,) = torch.autograd.grad(loss, x)
    x_ref = x.detach().clone().requires_grad_()
    loss_ref = (reference.rms_norm(x_ref, 0.5) * weight).sum()
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dx, x_ref.grad, atol=1e-5, rtol=1e-5)
