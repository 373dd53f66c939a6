"""Triton causal GQA attention and XSA (kernels/attention.py) against the eager twin and torch SDPA.

Forward and backward on odd sequence lengths, block edges, GQA groups 2 and 1, head_dim 32 and 64,
with NaN-poisoned outputs to prove every element is written. fp32 under the CPU interpreter; bf16 on GPU.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from kernels import attention as tri
from kernels import reference as ref

BF16_SKIP = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                               reason="bf16 is not emulated by the Triton interpreter")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=[BF16_SKIP, pytest.mark.gpu])]

# (B, T, Hq, Hkv, D): odd lengths, block edges (BLOCK 64), GQA 4/2 and 8/4, MHA 4/4, head_dim 32 and 64
CASES = [(2, 1, 4, 2, 64), (2, 17, 8, 4, 32), (2, 64, 4, 4, 64), (2, 65, 4, 2, 32),
         (1, 100, 4, 2, 64), (1, 128, 8, 4, 32), (2, 130, 4, 2, 64)]


def _qkv(B, T, Hq, Hkv, D, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, D, generator=g).to(device=device, dtype=dtype).requires_grad_()
            for H in (Hq, Hkv, Hkv)]


def _forward_backward(fn, inputs, grad):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _sdpa(q, k, v):
    """torch SDPA in (B, H, T, D), independent of the twin's wrapper."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True, enable_gqa=q.size(2) != k.size(2))
    return y.transpose(1, 2)


def _assert_matches(got, want_fp32, twin_low, dtype, factor=2.0, tol=1e-5):
    """fp32: relative ~1e-5. Low precision: kernel error vs an fp32 reference at most `factor` x the twin's."""
    for name, a, b, t in zip(("out", "dq", "dk", "dv"), got, want_fp32, twin_low):
        scale = b.abs().max().item() + 1e-6
        err = (a.float() - b).abs().max().item()
        if dtype == torch.float32:
            assert err <= tol * max(scale, 1.0), f"{name}: max err {err:.3g} (scale {scale:.3g})"
        else:
            twin_err = (t.float() - b).abs().max().item()
            assert err <= factor * twin_err + 1e-3 * scale, f"{name}: err {err:.3g} vs twin {twin_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D", CASES)
def test_attention_forward_backward_matches_twin_and_sdpa(B, T, Hq, Hkv, D, dtype, device):
    inputs = _qkv(B, T, Hq, Hkv, D, device, dtype)
    grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    got = _forward_backward(tri.attention, inputs, grad)
    twin = _forward_backward(ref.attention, inputs, grad)
    inputs32 = [x.detach().float().requires_grad_() for x in inputs]
    want = _forward_backward(_sdpa, inputs32, grad.float())
    assert all(torch.isfinite(t).all() for t in got)
    _assert_matches(got, want, twin, dtype, factor=2.0 if dtype == torch.float32 else 3.0)
    if dtype == torch.float32:  # the twin is SDPA too; check the kernel against it separately
        _assert_matches(got, [t.float() for t in twin], twin, dtype)


def test_attention_non_contiguous_inputs_and_output_grad(device):
    B, T, Hq, Hkv, D = 2, 33, 4, 2, 32
    g = torch.Generator().manual_seed(3)
    q, k, v = [torch.randn(B, H, T, D, generator=g).to(device).transpose(1, 2).requires_grad_()
               for H in (Hq, Hkv, Hkv)]  # (B, T, H, D) views with the head axis outermost
    grad = torch.randn(B, Hq, T, D, generator=g).to(device).transpose(1, 2)
    got = _forward_backward(tri.attention, (q, k, v), grad)
    want = _forward_backward(ref.attention, (q, k, v), grad)
    _assert_matches(got, want, want, torch.float32)


@pytest.mark.parametrize("xsa_case", [(2, 65, 4, 2, 64), (1, 17, 8, 4, 32), (1, 9, 4, 4, 32)])
def test_attention_with_xsa_matches_twin(xsa_case, device):
    B, T, Hq, Hkv, D = xsa_case
    inputs = _qkv(B, T, Hq, Hkv, D, device, seed=5)
    grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(6)).to(device)
    got = _forward_backward(lambda q, k, v: tri.attention(q, k, v, xsa=True), inputs, grad)
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs, grad)
    _assert_matches(got, want, want, torch.float32)


def test_attention_poisoned_outputs_fully_written_with_uneven_blocks(device):
    """Explicit blocks, including the unequal shapes the GPU autotuner may pick, fill every element."""
    B, T, Hq, Hkv, D = 2, 100, 4, 2, 32
    q, k, v = [t.detach() for t in _qkv(B, T, Hq, Hkv, D, device, seed=7)]
    do = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(8)).to(device)
    nan = float("nan")
    want = _forward_backward(ref.attention, [t.clone().requires_grad_() for t in (q, k, v)], do)
    for (bm, bn), dkdv, dq_blocks in (((64, 32), (32, 64), (64, 32)), ((64, 64), (64, 64), (64, 64))):
        out = torch.full_like(q, nan)
        lse = torch.full((B, Hq, T), nan, device=device)
        tri.attention_forward(q, k, v, out=out, lse=lse, block_m=bm, block_n=bn)
        grads = [torch.full_like(t, nan) for t in (q, k, v)]
        tri.attention_backward(do, q, k, v, out, lse, *grads, dkdv_blocks=dkdv, dq_blocks=dq_blocks)
        _assert_matches([out, *grads], want, want, torch.float32)
        scores = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(Hq // Hkv, dim=2)) / D ** 0.5
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        want_lse = scores.masked_fill(~causal, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 17, 8, 4, 64), (1, 40, 2, 1, 32)])
def test_exclusive_projection_forward_backward_matches_twin(shape, device):
    B, T, Hq, Hkv, D = shape
    g = torch.Generator().manual_seed(9)
    y = torch.randn(B, T, Hq, D, generator=g).to(device).requires_grad_()
    v = torch.randn(B, T, Hkv, D, generator=g).to(device)
    v[0, 3] = 0.0  # zero value vectors exercise F.normalize's eps clamp
    v[0, 4] *= 1e-14
    v.requires_grad_()
    grad = torch.randn(B, T, Hq, D, generator=g).to(device)
    got = _forward_backward(tri.exclusive_projection, (y, v), grad)
    want = _forward_backward(ref.exclusive_projection, (y, v), grad)
    for a, b in zip(got, want):  # dv reaches ~1e12 at the clamped rows: compare those relatively
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # away from the clamped rows the output is orthogonal to each token's own unit value vector
    v_hat = F.normalize(v.detach()[:, 5:], dim=-1).repeat_interleave(Hq // Hkv, dim=2)
    assert (got[0].detach()[:, 5:] * v_hat).sum(-1).abs().max() < 1e-5


def test_exclusive_projection_poisoned_outputs(device):
    B, T, Hq, Hkv, D = 1, 70, 4, 2, 32
    g = torch.Generator().manual_seed(10)
    y, grad = (torch.randn(B, T, Hq, D, generator=g).to(device) for _ in range(2))
    v = torch.randn(B, T, Hkv, D, generator=g).to(device)
    out = tri.xsa_forward(y, v, out=torch.full_like(y, float("nan")), block_r=64)
    dy, dv = tri.xsa_backward(grad, y, v, dy=torch.full_like(y, float("nan")),
                              dv=torch.full_like(v, float("nan")), block_r=64)
    yr, vr = y.clone().requires_grad_(), v.clone().requires_grad_()
    want = ref.exclusive_projection(yr, vr)
    want_dy, want_dv = torch.autograd.grad(want, (yr, vr), grad)
    for a, b in ((out, want), (dy, want_dy), (dv, want_dv)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attention_rejects_bad_input(device):
    q, k, v = [t.detach() for t in _qkv(1, 8, 4, 2, 32, device)]
    with pytest.raises(ValueError, match="head_dim 48"):
        tri.attention(torch.zeros(1, 8, 4, 48), torch.zeros(1, 8, 2, 48), torch.zeros(1, 8, 2, 48))
    with pytest.raises(ValueError, match="multiple of KV heads"):
        tri.attention(torch.zeros(1, 8, 3, 32, device=device), k, v)
    with pytest.raises(ValueError, match="shapes do not fit"):
        tri.attention(q, k[:, :4], v[:, :4])
    with pytest.raises(ValueError, match="one float dtype"):
        tri.attention(q, k.double(), v.double())
    with pytest.raises(ValueError, match="multiple of KV heads"):
        tri.exclusive_projection(torch.zeros(1, 8, 3, 32), v.cpu())
    with pytest.raises(ValueError, match="block_m 32 must be a multiple of block_n 64"):
        tri.attention_forward(q, k, v, block_m=32, block_n=64)
    with pytest.raises(ValueError, match="dK/dV key block must be a multiple"):
        tri.attention_backward(q, q, k, v, q, torch.zeros(1, 4, 8, device=device), dkdv_blocks=(64, 32))


def test_attention_ops_pass_opcheck(device):
    q, k, v = [t.detach().requires_grad_() for t in _qkv(1, 17, 4, 2, 32, device, seed=11)]
    torch.library.opcheck(tri.causal_gqa_attention, (q, k, v))
    torch.library.opcheck(tri._xsa_op, (q, v))


def test_attention_compiles_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    inputs = _qkv(1, 33, 4, 2, 32, device, seed=12)
    grad = torch.randn(1, 33, 4, 32, generator=torch.Generator().manual_seed(13)).to(device)

    def block(q, k, v):
        return tri.attention(q, k, v, xsa=True) * 2.0 + tri.attention(q, k, v)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = _forward_backward(compiled, inputs, grad)
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True) * 2.0 + ref.attention(q, k, v),
                             inputs, grad)
    _assert_matches(got, want, want, torch.float32)


@pytest.mark.gpu
def test_attention_large_bf16_matches_sdpa_on_gpu(device):
    """The seed's shape (T 2048, 8/4 heads, D 64) in bf16 through the autotuned kernels."""
    inputs = _qkv(2, 2048, 8, 4, 64, device, torch.bfloat16, seed=14)
    grad = torch.randn(2, 2048, 8, 64, device=device, dtype=torch.bfloat16)
    got = _forward_backward(lambda q, k, v: tri.attention(q, k, v, xsa=True), inputs, grad)
    twin = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs, grad)
    inputs32 = [x.detach().float().requires_grad_() for x in inputs]
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs32, grad.float())
    _assert_matches(got, want, twin, torch.bfloat16, factor=3.0)
