"""Triton fused QK RMSNorm + partial RoPE + gain, and plain partial RoPE (kernels/rope.py), against the twins.

Forward and backward (x and gain) on odd shapes, rope_dims 0 / 16 / full head, head_dim 32 / 64 / 48,
with NaN-poisoned outputs, opcheck and bad-input errors. fp32 under the CPU interpreter; bf16 on GPU.
"""
import os

import pytest
import torch

from kernels import reference as ref
from kernels import rope as tri
from model.rotary import rope_tables

BF16_SKIP = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                               reason="bf16 is not emulated by the Triton interpreter")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=[BF16_SKIP, pytest.mark.gpu])]
# (B, T, H, D, rope_dims)
CASES = [(2, 17, 4, 64, 16), (1, 100, 8, 64, 16), (2, 9, 4, 32, 32), (1, 5, 2, 48, 8), (2, 7, 4, 64, 0)]


def _inputs(B, T, H, D, rope_dims, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3.0 * torch.randn(B, T, H, D, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    gain = (1.5 + 0.3 * torch.randn(H, generator=g)).to(device).requires_grad_()  # fp32 like the model's q_gain
    cos, sin = rope_tables(T, rope_dims, 22081.8, device=device)
    grad = torch.randn(B, T, H, D, generator=g).to(device=device, dtype=dtype)
    return x, gain, cos, sin, grad


def _grads(out, inputs, grad):
    return (out, *torch.autograd.grad(out, inputs, grad))


def _assert_close(got, want, dtype):
    for a, b in zip(got, want):
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        else:  # the kernel computes in fp32 and rounds once; the twin rounds every step in bf16
            torch.testing.assert_close(a.float(), b.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_gain", [True, False])
@pytest.mark.parametrize("B,T,H,D,rope_dims", CASES)
def test_qk_norm_rope_forward_backward_matches_twin(B, T, H, D, rope_dims, with_gain, dtype, device):
    x, gain, cos, sin, grad = _inputs(B, T, H, D, rope_dims, device, dtype)
    g = gain if with_gain else None
    wrt = (x, gain) if with_gain else (x,)
    got = _grads(tri.qk_norm_rope(x, cos, sin, rope_dims, g), wrt, grad)
    want = _grads(ref.qk_norm_rope(x, cos, sin, rope_dims, g), wrt, grad)
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,H,D,rope_dims", CASES)
def test_rotate_half_split_forward_backward_matches_twin(B, T, H, D, rope_dims, dtype, device):
    x, _, cos, sin, grad = _inputs(B, T, H, D, rope_dims, device, dtype, seed=1)
    got = _grads(tri.rotate_half_split(x, cos, sin, rope_dims), (x,), grad)
    want = _grads(ref.rotate_half_split(x, cos, sin, rope_dims), (x,), grad)
    _assert_close(got, want, dtype)


def test_rope_rotation_preserves_pair_norms_and_passes_the_rest_through(device):
    x, _, cos, sin, _ = _inputs(1, 20, 2, 64, 16, device, seed=2)
    y = tri.rotate_half_split(x.detach(), cos, sin, 16)
    torch.testing.assert_close(y[..., 16:], x.detach()[..., 16:], atol=0, rtol=0)
    pair_norm = lambda t: t[..., :8] ** 2 + t[..., 8:16] ** 2  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x.detach()), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y[:, 0], x.detach()[:, 0], atol=0, rtol=0)  # position 0: angle 0


def test_rope_poisoned_outputs_fully_written(device):
    B, T, H, D, rope_dims = 2, 33, 4, 64, 16  # 264 rows: not a multiple of the 64-row block
    x, gain, cos, sin, grad = [t.detach() for t in _inputs(B, T, H, D, rope_dims, device, seed=3)]
    nan = float("nan")
    out = tri.rope_forward(x, cos, sin, rope_dims, gain, out=torch.full_like(x, nan), block_r=64)
    dx, dgain = tri.qk_norm_rope_backward(grad, x, cos, sin, rope_dims, gain, dx=torch.full_like(x, nan),
                                          block_r=64)
    xr, gr = x.clone().requires_grad_(), gain.clone().requires_grad_()
    want = _grads(ref.qk_norm_rope(xr, cos, sin, rope_dims, gr), (xr, gr), grad)
    _assert_close((out, dx, dgain), want, torch.float32)


@pytest.mark.parametrize("B,T,H,D", [(2, 3, 4, 0), (0, 3, 4, 8)])
def test_qk_norm_rope_empty_head_dim_or_batch_matches_twin(B, T, H, D, device):
    """Zero head dim or zero batch: an empty output and dx, and a gain gradient of zeros (a sum over nothing)."""
    x, gain, cos, sin, grad = _inputs(B, T, H, D, 0, device)
    got = _grads(tri.qk_norm_rope(x, cos, sin, 0, gain), (x, gain), grad)
    want = _grads(ref.qk_norm_rope(x, cos, sin, 0, gain), (x, gain), grad)
    assert got[0].shape == got[1].shape == x.shape and torch.equal(got[2], torch.zeros(H, device=device))
    _assert_close(got, want, torch.float32)


def test_rope_rejects_bad_input(device):
    x, gain, cos, sin, _ = _inputs(1, 6, 2, 32, 16, device)
    with pytest.raises(ValueError, match="rope_dims 15 must be even"):
        tri.qk_norm_rope(x, cos, sin, 15)
    with pytest.raises(ValueError, match="rope_dims 64 must be even and within"):
        tri.rotate_half_split(x, cos, sin, 64)
    with pytest.raises(ValueError, match=r"cos/sin must be \(T, rope_dims/2\)"):
        tri.qk_norm_rope(x, cos[:5], sin[:5], 16)
    with pytest.raises(ValueError, match="gain must be"):
        tri.qk_norm_rope(x, cos, sin, 16, torch.ones(3))
    with pytest.raises(ValueError, match="x must be"):
        tri.qk_norm_rope(x[0], cos, sin, 16)


def test_rope_ops_pass_opcheck(device):
    x, gain, cos, sin, _ = _inputs(1, 5, 2, 32, 16, device, seed=4)
    torch.library.opcheck(tri._qk_norm_rope_op, (x, cos, sin, 16, gain))
    torch.library.opcheck(tri._qk_norm_rope_op, (x, cos, sin, 16, None))
    torch.library.opcheck(tri._rotate_op, (x, cos, sin, 16))


def test_rope_compiles_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    x, gain, cos, sin, grad = _inputs(1, 9, 2, 64, 16, device, seed=5)

    def qk(ops, x, gain):
        return ops.qk_norm_rope(x, cos, sin, 16, gain) + ops.rotate_half_split(x, cos, sin, 16)

    compiled = torch.compile(lambda x, gain: qk(tri, x, gain), fullgraph=True, backend="aot_eager")
    got = _grads(compiled(x, gain), (x, gain), grad)
    want = _grads(qk(ref, x, gain), (x, gain), grad)
    _assert_close(got, want, torch.float32)


@pytest.mark.gpu
def test_offsets_past_2_31_elements_gpu(device):
    """B * T * H * D above 2^31 (a 4M-token batch of 8 heads): int32 offsets would wrap and write rows near the
    start; the last tokens must match the twin run on just those tokens (forward and backward)."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with at least 40 GiB of memory (4 GiB tensors, their gradients and the twin's copies)")
    H, D, rope_dims, tail = 8, 64, 16, 64
    T = 2**31 // (H * D) + tail  # the last `tail` tokens lie entirely past element 2^31
    x = torch.randn(1, T, H, D, device=device, dtype=torch.bfloat16)
    gain = torch.linspace(0.5, 1.5, H, device=device, dtype=torch.bfloat16)
    cos, sin = (t.to(torch.bfloat16) for t in rope_tables(T, rope_dims, 22081.8, device=device))
    out = tri.rope_forward(x, cos, sin, rope_dims, gain)
    want = ref.qk_norm_rope(x[:, -tail:].float(), cos[-tail:].float(), sin[-tail:].float(), rope_dims, gain.float())
    torch.testing.assert_close(out[:, -tail:].float(), want, atol=3e-2, rtol=2e-2)
    del out
    grad = torch.randn_like(x)
    dx, _ = tri.qk_norm_rope_backward(grad, x, cos, sin, rope_dims, gain)
    xt = x[:, -tail:].float().requires_grad_()
    ref.qk_norm_rope(xt, cos[-tail:].float(), sin[-tail:].float(), rope_dims, gain.float()).backward(
        grad[:, -tail:].float())
    torch.testing.assert_close(dx[:, -tail:].float(), xt.grad, atol=5e-2, rtol=5e-2)
