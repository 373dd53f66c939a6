"""Fused softcapped cross-entropy (kernels/cross_entropy.py) against kernels.reference.softcap_cross_entropy.

Forward NLL and backward (dx, dW) on odd token counts, the real vocab (1024) and small vocabs that do
not fill a vocab block, multi-chunk backward, poisoned outputs, the torch.library registration and
torch.compile(fullgraph=True).
"""
import math

import pytest
import torch
import triton
import triton.language as tl

from kernels import cross_entropy as ce
from kernels import reference
from kernels.cross_entropy import IGNORE_INDEX, softcap_ce_backward, softcap_ce_forward, softcap_cross_entropy

BLOCKS = (64, 64, 64)
SOFTCAP = 30.0
CASES = [(1, 96), (37, 1024), (130, 130)]  # (tokens N, vocab V); d = 64 (and 100 below)
DTYPES = [torch.float32, torch.bfloat16]  # bf16 runs on a GPU only (see _skip_bf16_on_cpu)
BACKENDS = {"eager": reference.softcap_cross_entropy, "triton": softcap_cross_entropy}


def _skip_bf16_on_cpu(dtype, device):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 is not emulated by the Triton interpreter")


def _inputs(n, v, d, device, seed):
    """Hidden states, a head weight and targets.

    V = 1024 gets logits up to ~40 (the softcap saturates); smaller vocabs get logits of order 1, so a
    padded vocab column leaking into the logsumexp (z = 0 there) would show.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * (1.5 if v >= 1024 else 0.1)
    t = torch.randint(0, v, (n,), generator=g)
    return x.to(device), w.to(device), t.to(device)


def _eager(x, w, t, g):
    """Eager twin's nll and (dx, dW) for upstream gradient g."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    nll = reference.softcap_cross_entropy(x, w, t, SOFTCAP)
    nll.backward(g)
    return nll.detach(), x.grad, w.grad


def _loss_and_grads(fn, x, w, t, softcap, g):
    """nll and (dx, dW) of op `fn` for upstream gradient g, on fresh leaf copies of x and w."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    nll = fn(x, w, t, softcap)
    nll.backward(g)
    return nll.detach(), x.grad, w.grad


def _assert_close(out, ref_fp32, ref_eager, dtype, tol=1e-4):
    out, ref_fp32, ref_eager = out.float(), ref_fp32.float(), ref_eager.float()
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref_fp32, atol=tol, rtol=tol)
    else:
        scale = ref_fp32.abs().max().item()
        eager_err = (ref_eager - ref_fp32).abs().max().item()
        assert (out - ref_fp32).abs().max().item() <= 3 * eager_err + 1e-3 * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, v", CASES)
def test_forward_matches_eager_and_writes_every_token(n, v, dtype, device):
    _skip_bf16_on_cpu(dtype, device)
    x, w, t = _inputs(n, v, 64, device, seed=n + v)
    nll = torch.full((n,), float("nan"), device=device)
    lse = torch.full((n,), float("nan"), device=device)
    softcap_ce_forward(x.to(dtype), w.to(dtype), t, SOFTCAP, nll=nll, lse=lse, blocks=BLOCKS)
    assert torch.isfinite(nll).all() and torch.isfinite(lse).all()
    if dtype == torch.float32:
        z = SOFTCAP * torch.tanh(x @ w.t() / SOFTCAP)
        torch.testing.assert_close(lse, torch.logsumexp(z, dim=-1), atol=1e-4, rtol=1e-5)
    _assert_close(nll, reference.softcap_cross_entropy(x, w, t, SOFTCAP),
                  reference.softcap_cross_entropy(x.to(dtype), w.to(dtype), t, SOFTCAP), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, v, chunk", [(37, 1024, None), (130, 130, 64), (1, 96, None)])
def test_backward_matches_eager_and_writes_every_element(n, v, chunk, dtype, device):
    """dx and dW with a per-token upstream gradient; chunk 64 over 130 tokens runs three chunks."""
    _skip_bf16_on_cpu(dtype, device)
    x, w, t = _inputs(n, v, 64, device, seed=3 * n + v)
    g = torch.rand(n, generator=torch.Generator().manual_seed(n)).to(device) + 0.5
    _, lse = softcap_ce_forward(x.to(dtype), w.to(dtype), t, SOFTCAP, blocks=BLOCKS)
    dx = torch.full((n, 64), float("nan"), device=device, dtype=dtype)
    dx, dw = softcap_ce_backward(x.to(dtype), w.to(dtype), t, lse, g, SOFTCAP, dx=dx, chunk_tokens=chunk,
                                 blocks=BLOCKS)
    assert torch.isfinite(dx).all() and dw.shape == (v, 64)
    _, dx_ref, dw_ref = _eager(x, w, t, g)
    _, dx_eager, dw_eager = _eager(x.to(dtype), w.to(dtype), t, g)
    _assert_close(dx, dx_ref, dx_eager, dtype, tol=1e-5)
    _assert_close(dw, dw_ref, dw_eager, dtype, tol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_op_batched_with_fp32_weight(dtype, device):
    """(B, T, d) input, (B, T) targets, d = 100 (not a block multiple), fp32 weight cast to x's dtype."""
    _skip_bf16_on_cpu(dtype, device)
    x, w, t = _inputs(2 * 29, 130, 100, device, seed=11)
    x, t = x.reshape(2, 29, 100), t.reshape(2, 29)
    g = torch.rand(2, 29, generator=torch.Generator().manual_seed(5)).to(device)
    xk, wk = x.to(dtype).requires_grad_(), w.clone().requires_grad_()
    nll = softcap_cross_entropy(xk, wk, t, SOFTCAP)
    assert nll.shape == (2, 29) and nll.dtype == torch.float32
    nll.backward(g)
    assert xk.grad.dtype == dtype and wk.grad.dtype == torch.float32
    ref = _eager(x, w, t, g)
    eager = _eager(x.to(dtype), w, t, g)
    for got, r, e in zip((nll, xk.grad, wk.grad), ref, eager):
        _assert_close(got, r, e, dtype)


def test_out_of_range_targets(device):
    """Targets outside [0, V) other than the ignore index: a ValueError when on the CPU, else NaN loss (the kernel,
    which cannot raise without a host sync); the ignore index scores 0 in the same launch."""
    x, w, t = _inputs(5, 96, 64, device, seed=2)
    if device == "cpu":
        for bad in (96, -1):
            with pytest.raises(ValueError, match="outside the vocab"):
                softcap_cross_entropy(x, w, torch.tensor([0, 1, bad, 3, IGNORE_INDEX], device=device), SOFTCAP)
    nll = torch.full((5,), float("nan"), device=device)
    softcap_ce_forward(x, w, torch.tensor([0, -1, 96, 3, IGNORE_INDEX], device=device), SOFTCAP, nll=nll,
                       blocks=BLOCKS)
    assert nll[1].isnan() and nll[2].isnan() and torch.isfinite(nll[[0, 3]]).all() and nll[4].item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_scores_zero_and_passes_no_gradient(backend, device):
    """Target -100 (F.cross_entropy's default ignore_index, which the seed's loss uses) is one contract on both
    backends: loss 0 and no gradient for that token; the other tokens score as if it were absent."""
    torch.set_float32_matmul_precision("highest")
    x, w, t = _inputs(9, 96, 64, device, seed=17)
    t[[1, 4, 5]] = IGNORE_INDEX
    g = torch.rand(9, generator=torch.Generator().manual_seed(7)).to(device) + 0.5
    nll, dx, dw = _loss_and_grads(BACKENDS[backend], x, w, t, SOFTCAP, g)
    kept = t != IGNORE_INDEX
    assert (nll[~kept] == 0).all() and (dx[~kept] == 0).all()
    want = _loss_and_grads(reference.softcap_cross_entropy, x[kept], w, t[kept], SOFTCAP, g[kept])
    for got, ref in zip((nll[kept], dx[kept], dw), want):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_ignore_index_in_the_kernels(device):
    """The launchers (the path a GPU takes, no host check): an ignored token's nll is 0 and its dx row is 0,
    written over poisoned buffers."""
    x, w, t = _inputs(37, 130, 64, device, seed=18)
    t[::3] = IGNORE_INDEX
    nll = torch.full((37,), float("nan"), device=device)
    _, lse = softcap_ce_forward(x, w, t, SOFTCAP, nll=nll, blocks=BLOCKS)
    dx = torch.full_like(x, float("nan"))
    softcap_ce_backward(x, w, t, lse, torch.ones(37, device=device), SOFTCAP, dx=dx, blocks=BLOCKS)
    assert (nll[::3] == 0).all() and (dx[::3] == 0).all()
    kept = t != IGNORE_INDEX
    torch.testing.assert_close(nll[kept], reference.softcap_cross_entropy(x[kept], w, t[kept], SOFTCAP),
                               atol=1e-4, rtol=1e-5)
    assert torch.isfinite(dx).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_width_hidden_states(backend, device):
    """d = 0: every logit is 0, so a token scores log(V) (0 when ignored); dx is (N, 0) and dW (V, 0)."""
    x, w = torch.zeros(4, 0, device=device), torch.zeros(96, 0, device=device)
    t = torch.tensor([0, 5, IGNORE_INDEX, 95], device=device)
    nll, dx, dw = _loss_and_grads(BACKENDS[backend], x, w, t, SOFTCAP, torch.ones(4, device=device))
    torch.testing.assert_close(nll, torch.tensor([math.log(96)] * 2 + [0.0] + [math.log(96)], device=device))
    assert dx.shape == (4, 0) and dw.shape == (96, 0)


def _fp64_softcap_ce(x, w, t, softcap):
    """The twin's formula kept in x's dtype throughout (the twin itself takes the logits to fp32)."""
    return torch.nn.functional.cross_entropy(softcap * torch.tanh(x @ w.t() / softcap), t, reduction="none")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("softcap", [1e4, 1e6])
def test_large_softcap_keeps_fp32_accuracy(backend, softcap, device):
    """A softcap far above the logits (z ~ a): loss and gradients within fp32 rounding of an fp64 reference, as
    torch's tanh gives (2 * sigmoid(2u) - 1 for tanh was 1e-3 off at softcap 1e4 and 0.1 at 1e6)."""
    torch.set_float32_matmul_precision("highest")
    x, w, t = _inputs(37, 130, 64, device, seed=16)
    w = w * 3  # logits of order 2
    g = torch.rand(37, generator=torch.Generator().manual_seed(8)).to(device) + 0.5
    got = _loss_and_grads(BACKENDS[backend], x, w, t, softcap, g)
    want = _loss_and_grads(_fp64_softcap_ce, x.double(), w.double(), t, softcap, g.double())
    for name, a, b in zip(("nll", "dx", "dW"), got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-6, msg=lambda m: f"{name}: {m}")


@triton.jit
def _tanh_kernel(u_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, ce._tanh(tl.load(u_ptr + offs, mask=mask)), mask=mask)


def test_tanh_is_accurate_relative_to_its_value(device):
    """The kernels' fp32 tanh within a few ulps (relative) from 1e-30 to saturation, either sign, both sides of its
    polynomial/exponential switch at |u| = 0.5; exact at 0 and +-inf."""
    mags = torch.cat([torch.logspace(-30, 0, 3000, dtype=torch.float64), torch.linspace(0.4, 0.6, 2001,
                                                                                        dtype=torch.float64),
                      torch.linspace(1, 20, 1000, dtype=torch.float64)])
    u = torch.cat([mags, -mags]).float()
    special = torch.tensor([0.0, float("inf"), float("-inf")])
    u_all = torch.cat([u, special]).to(device)
    out = torch.full_like(u_all, float("nan"))
    _tanh_kernel[(triton.cdiv(u_all.numel(), 1024),)](u_all, out, u_all.numel(), BLOCK=1024)
    want = torch.tanh(u.double()).to(device)
    rel = ((out[:u.numel()].double() - want).abs() / want.abs()).max().item()
    assert rel < 8 * 2.0 ** -24, f"max relative error {rel:.2e}"
    assert out[u.numel():].tolist() == [0.0, 1.0, -1.0]


def test_bad_inputs_raise_clear_errors(device):
    x, w, t = _inputs(4, 96, 64, device, seed=1)
    with pytest.raises(ValueError, match="does not match x's last dim"):
        softcap_cross_entropy(x, w[:, :32], t, SOFTCAP)
    with pytest.raises(ValueError, match="one entry per token"):
        softcap_cross_entropy(x, w, t[:3], SOFTCAP)
    with pytest.raises(ValueError, match="int64"):
        softcap_cross_entropy(x, w, t.int(), SOFTCAP)
    with pytest.raises(ValueError, match="softcap must be positive"):
        softcap_cross_entropy(x, w, t, 0.0)


@pytest.mark.parametrize("blocks", [(16, 24, 16), (64, 64, 48), ce._cfg(32, 64, 24, 4, 2)])
def test_blocks_that_are_not_powers_of_two_are_rejected_up_front(blocks, device):
    """Blocks that pass the size floor but are no power of two fail with a clear error before Triton compiles."""
    x, w, t = _inputs(4, 96, 64, device, seed=1)
    with pytest.raises(ValueError, match="must each be a power of two >= 16"):
        softcap_ce_forward(x, w, t, SOFTCAP, blocks=blocks)
    with pytest.raises(ValueError, match="must each be a power of two >= 16"):
        softcap_ce_backward(x, w, t, torch.zeros(4, device=device), torch.ones(4, device=device), SOFTCAP,
                            blocks=blocks)


def test_opcheck(device):
    x, w, t = _inputs(7, 96, 64, device, seed=9)
    x.requires_grad_()
    w.requires_grad_()
    torch.library.opcheck(torch.ops.triton_golf.softcap_cross_entropy.default, (x, w, t, SOFTCAP),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    _, lse = softcap_ce_forward(x.detach(), w.detach(), t, SOFTCAP)
    torch.library.opcheck(torch.ops.triton_golf.softcap_cross_entropy_backward.default,
                          (x.detach(), w.detach(), t, lse, torch.ones(7, device=device), SOFTCAP),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph(device):
    x, w, t = _inputs(2 * 9, 130, 64, device, seed=4)
    x, t = x.reshape(2, 9, 64).requires_grad_(), t.reshape(2, 9)
    w.requires_grad_()

    def f(inp, weight):
        return softcap_cross_entropy(inp, weight, t, SOFTCAP).mean()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w)
    dx, dw = torch.autograd.grad(loss, (x, w))
    loss_ref = reference.softcap_cross_entropy(x, w, t, SOFTCAP).mean()
    dx_ref, dw_ref = torch.autograd.grad(loss_ref, (x, w))
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dx, dx_ref, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(dw, dw_ref, atol=1e-6, rtol=1e-4)


@pytest.mark.gpu
def test_large_shape_autotuned_gpu(device):
    """Eval-sized call (16384 tokens, V 1024, d 512) through the autotuned path, bf16, with backward."""
    x, w, t = _inputs(16384, 1024, 512, device, seed=12)
    w = w / 8
    xk = x.bfloat16().requires_grad_()
    nll = softcap_cross_entropy(xk, w, t, SOFTCAP)
    nll.mean().backward()
    ref = reference.softcap_cross_entropy(x, w, t, SOFTCAP)
    assert (nll - ref).abs().max().item() <= 5e-2
    assert torch.isfinite(xk.grad).all()


def test_fp32_on_gpu_runs_the_pinned_config_and_bf16_autotunes(monkeypatch):
    monkeypatch.setattr(ce, "_INTERPRET", False)  # the launch decision as on a GPU (nothing is launched)
    assert ce._fixed_launch(torch.float32, None) == ce.FP32_CONFIG.all_kwargs()
    assert ce._fixed_launch(torch.bfloat16, None) is None
    assert ce._fixed_launch(torch.bfloat16, BLOCKS) == {"BLOCK_T": 64, "BLOCK_V": 64, "BLOCK_D": 64}


def test_pinned_fp32_config_matches_eager(device):
    """FP32_CONFIG (what fp32 runs on a GPU, with its warps and stages) through forward and backward."""
    torch.set_float32_matmul_precision("highest")
    x, w, t = _inputs(37, 130, 100, device, seed=13)
    g = torch.rand(37, generator=torch.Generator().manual_seed(6)).to(device) + 0.5
    nll, lse = softcap_ce_forward(x, w, t, SOFTCAP, blocks=ce.FP32_CONFIG)
    dx, dw = softcap_ce_backward(x, w, t, lse, g, SOFTCAP, blocks=ce.FP32_CONFIG)
    nll_ref, dx_ref, dw_ref = _eager(x, w, t, g)
    torch.testing.assert_close(nll, nll_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dx, dx_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dw, dw_ref, atol=1e-5, rtol=1e-4)


def test_autocast_hands_the_kernel_the_autocast_dtype(monkeypatch):
    """The final norm's fp32 output reaches the head; under autocast the op gets it (and the weight) in the autocast
    dtype, as F.linear in the twin. Checked on the CPU with a stand-in op: no bf16 kernel runs in the interpreter."""
    seen = []

    def op(x, weight, targets, softcap):
        seen.append((x.dtype, weight.dtype))
        zeros = torch.zeros(targets.shape, dtype=torch.float32)
        return zeros, zeros

    monkeypatch.setattr(ce, "_softcap_ce_op", op)
    x, w, t = _inputs(6, 96, 64, "cpu", seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert softcap_cross_entropy(x, w, t, SOFTCAP).dtype == torch.float32
    softcap_cross_entropy(x, w, t, SOFTCAP)
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]


@pytest.mark.gpu
def test_autocast_runs_the_head_in_bf16_gpu(device, monkeypatch):
    """Under bf16 autocast: the kernel runs on bf16 tiles, the NLL stays fp32 and matches the autocast twin, and the
    gradients come back in the inputs' fp32."""
    seen = []
    real_op = ce._softcap_ce_op

    def spy(x, weight, targets, softcap):
        seen.append(x.dtype)
        return real_op(x, weight, targets, softcap)

    monkeypatch.setattr(ce, "_softcap_ce_op", spy)
    x, w, t = _inputs(512, 1024, 512, device, seed=15)
    x, w = x.requires_grad_(), (w / 8).requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll = softcap_cross_entropy(x, w, t, SOFTCAP)
        nll_twin = reference.softcap_cross_entropy(x, w, t, SOFTCAP)
    assert seen == [torch.bfloat16] and nll.dtype == nll_twin.dtype == torch.float32
    torch.testing.assert_close(nll, nll_twin, atol=5e-2, rtol=2e-2)
    dx, dw = torch.autograd.grad(nll.sum(), (x, w))
    assert dx.dtype == dw.dtype == torch.float32
