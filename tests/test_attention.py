"""Triton causal GQA attention and XSA (kernels/attention.py, attention_backward.py, xsa.py) against the eager
twin and torch SDPA.

Forward and backward on odd sequence lengths, block edges, GQA groups 1, 2 and 3 (head packs 1 and 2),
head_dim 32 and 64, every dQ mode of the backward, XSA fused and separate, with NaN-poisoned outputs to prove
every element is written, and the deterministic dQ path run twice for bit-identical gradients.
fp32 under the CPU interpreter; bf16 on GPU.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from kernels import attention as tri
from kernels import attention_backward as tri_bwd
from kernels import reference as ref
from kernels import xsa as tri_xsa

BF16_SKIP = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                               reason="bf16 is not emulated by the Triton interpreter")
DTYPES = [torch.float32, pytest.param(torch.bfloat16, marks=[BF16_SKIP, pytest.mark.gpu])]

# (B, T, Hq, Hkv, D): odd lengths, block edges (BLOCK 64), GQA 4/2, 8/4 and 6/2, MHA 4/4, head_dim 32 and 64
CASES = [(2, 1, 4, 2, 64), (2, 17, 8, 4, 32), (2, 64, 4, 4, 64), (2, 65, 4, 2, 32),
         (1, 100, 4, 2, 64), (1, 128, 8, 4, 32), (2, 130, 4, 2, 64), (1, 33, 6, 2, 32)]
DQ_MODES = list(tri.DQ_MODES)


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


@pytest.mark.parametrize("dq_mode", DQ_MODES)
@pytest.mark.parametrize("B,T,Hq,Hkv,D", [(2, 65, 4, 2, 32), (1, 100, 2, 1, 64), (1, 33, 6, 2, 32)])
def test_attention_every_dq_mode_matches_twin(B, T, Hq, Hkv, D, dq_mode, device):
    inputs = _qkv(B, T, Hq, Hkv, D, device, seed=4)
    grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(5)).to(device)
    got = _forward_backward(lambda q, k, v: tri.attention(q, k, v, dq_mode=dq_mode), inputs, grad)
    want = _forward_backward(ref.attention, inputs, grad)
    _assert_matches(got, want, want, torch.float32)


@pytest.mark.parametrize("fuse_xsa", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("xsa_case", [(2, 65, 4, 2, 64), (1, 17, 8, 4, 32), (1, 9, 4, 4, 32), (1, 40, 6, 2, 32)])
def test_attention_with_xsa_matches_twin(xsa_case, fuse_xsa, device):
    B, T, Hq, Hkv, D = xsa_case
    inputs = _qkv(B, T, Hq, Hkv, D, device, seed=5)
    grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(6)).to(device)
    got = _forward_backward(lambda q, k, v: tri.attention(q, k, v, xsa=True, fuse_xsa=fuse_xsa), inputs, grad)
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs, grad)
    _assert_matches(got, want, want, torch.float32)


def test_fused_xsa_handles_zero_value_rows(device):
    """A zero (or tiny) value vector takes F.normalize's eps clamp in the fused epilogue and its backward."""
    B, T, Hq, Hkv, D = 1, 20, 4, 2, 32
    q, k, v = [t.detach() for t in _qkv(B, T, Hq, Hkv, D, device, seed=15)]
    v[0, 3] = 0.0
    v[0, 4, 1] *= 1e-14
    inputs = [t.requires_grad_() for t in (q, k, v)]
    grad = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(16)).to(device)
    got = _forward_backward(lambda q, k, v: tri.attention(q, k, v, xsa=True), inputs, grad)
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs, grad)
    for a, b in zip(got, want):  # dv reaches ~1e12 at the clamped rows: compare those relatively
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("xsa", [False, True], ids=["plain", "xsa"])
def test_attention_poisoned_outputs_fully_written_with_uneven_blocks(xsa, device):
    """Explicit blocks, including the unequal shapes the GPU autotuner may pick, head packs 1 and 2 and every dQ
    mode, fill every element of out, lse, the XSA coefficients and the gradients."""
    B, T, Hq, Hkv, D = 2, 100, 4, 2, 32
    q, k, v = [t.detach() for t in _qkv(B, T, Hq, Hkv, D, device, seed=7)]
    do = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(8)).to(device)
    nan = float("nan")
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=xsa),
                             [t.clone().requires_grad_() for t in (q, k, v)], do)
    scores = torch.einsum("bthd,bshd->bhts", q, k.repeat_interleave(Hq // Hkv, dim=2)) / D ** 0.5
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    want_lse = scores.masked_fill(~causal, float("-inf")).logsumexp(-1)
    runs = ((64, 32, 2, (32, 64), "two_stage"), (64, 64, 1, (64, 64), "atomic"),
            (128, 64, 2, (16, 32), "separate"))
    for block_m, block_n, pack, blocks, dq_mode in runs:
        out = torch.full_like(q, nan)
        lse = torch.full((B, Hq, T), nan, device=device)
        coef = torch.full((B, Hq, T) if xsa else (0,), nan, device=device)
        tri.attention_forward(q, k, v, out=out, lse=lse, xsa=xsa, coef=coef, block_m=block_m, block_n=block_n,
                              pack=pack)
        grads = [torch.full_like(t, nan) for t in (q, k, v)]
        tri_bwd.attention_backward(do, q, k, v, out, lse, coef=coef if xsa else None, dq=grads[0], dk=grads[1],
                                   dv=grads[2], blocks=blocks, dq_blocks=(64, 32), dq_mode=dq_mode)
        _assert_matches([out, *grads], want, want, torch.float32)
        torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-5)
        if xsa:  # c = <y, v_hat>, with y the plain attention output
            y = ref.attention(q, k, v)
            v_hat = F.normalize(v, dim=-1).repeat_interleave(Hq // Hkv, dim=2)
            torch.testing.assert_close(coef, (y * v_hat).sum(-1).transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("xsa", [False, True], ids=["plain", "xsa"])
def test_deterministic_dq_is_bit_identical_across_runs(xsa, device):
    """The two-stage dQ sums the key blocks' partials in a fixed order: two backward runs agree bit for bit."""
    B, T, Hq, Hkv, D = 1, 130, 4, 2, 64
    q, k, v = [t.detach() for t in _qkv(B, T, Hq, Hkv, D, device, seed=17)]
    do = torch.randn(B, T, Hq, D, generator=torch.Generator().manual_seed(18)).to(device)
    out, lse, coef = tri.attention_forward(q, k, v, xsa=xsa)
    first = tri_bwd.attention_backward(do, q, k, v, out, lse, coef=coef if xsa else None, dq_mode="two_stage")
    second = tri_bwd.attention_backward(do, q, k, v, out, lse, coef=coef if xsa else None, dq_mode="two_stage")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_two_stage_scratch_rows_count_each_key_blocks_queries():
    """Key block j keeps the partials of query rows j * block_n .. T-1, packed one block after another."""
    assert tri_bwd.two_stage_rows(128, 64) == 128 + 64
    assert tri_bwd.two_stage_rows(130, 64) == 130 + 66 + 2
    assert tri_bwd.two_stage_rows(1, 128) == 1


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
    out = tri_xsa.xsa_forward(y, v, out=torch.full_like(y, float("nan")), block_r=64)
    dy, dv = tri_xsa.xsa_backward(grad, y, v, dy=torch.full_like(y, float("nan")),
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
    with pytest.raises(ValueError, match="dq_mode 'fast' unknown"):
        tri.attention(q, k, v, dq_mode="fast")
    with pytest.raises(ValueError, match="block_m 32 must be a multiple of pack 2 x block_n 32"):
        tri.attention_forward(q, k, v, block_m=32, block_n=32)
    with pytest.raises(ValueError, match="head pack 4 must divide the KV group size 2"):
        tri.attention_forward(q, k, v, pack=4)
    with pytest.raises(ValueError, match="key block must be a multiple of the query block"):
        tri_bwd.attention_backward(q, q, k, v, q, torch.zeros(1, 4, 8, device=device), blocks=(64, 32))
    big = [torch.empty(1, 2 ** 23, h, 64, device="meta") for h in (4, 2, 2)]  # 2^31 elements, no memory
    with pytest.raises(ValueError, match="spans 2147483648 elements; the kernels need < 2\\^31"):
        tri.attention(*big)


def test_attention_ops_pass_opcheck(device):
    q, k, v = [t.detach().requires_grad_() for t in _qkv(1, 17, 4, 2, 32, device, seed=11)]
    torch.library.opcheck(tri.causal_gqa_attention, (q, k, v))
    torch.library.opcheck(tri.causal_gqa_attention, (q, k, v, True, "atomic"))
    torch.library.opcheck(tri_xsa._xsa_op, (q, v))


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
@pytest.mark.parametrize("dq_mode", DQ_MODES)
def test_attention_large_bf16_matches_sdpa_on_gpu(dq_mode, device):
    """The seed's shape (T 2048, 8/4 heads, D 64) in bf16 through the autotuned kernels, every dQ mode;
    the deterministic mode twice, bit for bit (where thousands of programs really race)."""
    inputs = _qkv(2, 2048, 8, 4, 64, device, torch.bfloat16, seed=14)
    grad = torch.randn(2, 2048, 8, 64, device=device, dtype=torch.bfloat16)

    def fn(q, k, v):
        return tri.attention(q, k, v, xsa=True, dq_mode=dq_mode)
    got = _forward_backward(fn, inputs, grad)
    twin = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs, grad)
    inputs32 = [x.detach().float().requires_grad_() for x in inputs]
    want = _forward_backward(lambda q, k, v: ref.attention(q, k, v, xsa=True), inputs32, grad.float())
    _assert_matches(got, want, twin, torch.bfloat16, factor=3.0)
    if dq_mode == "two_stage":
        again = _forward_backward(fn, inputs, grad)
        assert all(torch.equal(a, b) for a, b in zip(got, again))
