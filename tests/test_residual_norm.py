"""Fused residual glue + RMSNorm (kernels/residual_norm.py) against its eager twin kernels.reference.residual_norm."""
import pytest
import torch

from kernels import reference
from kernels import residual_norm as rn

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
GRAD_TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=5e-2, rtol=5e-2)}

# the call forms the model makes (model/block.py, model/gpt.py), plus each piece alone
FORMS = {
    "norm_only": dict(),
    "branch": dict(branch=True),                                        # mid-block, final norm
    "mix": dict(mix=True),                                              # first block entry
    "branch_mix_keep": dict(branch=True, mix=True, keep=True),          # encoder entry (its input kept as a skip)
    "branch_skip_mix": dict(branch=True, skip=True, mix=True),          # decoder entry with a skip
    "branch_skip_self_mix": dict(branch=True, skip_self=True, mix=True),  # first decoder: its own input as skip
    "skip_keep": dict(skip=True, keep=True),
}

BACKENDS = {"eager": reference.residual_norm, "triton": rn.residual_norm}


def make_inputs(form: dict, shape, dtype, device, branch_dtype=None, seed=0):
    """(x, kwargs) with every tensor a leaf that requires grad; per-channel vectors away from their inits."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]

    def t(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dt).requires_grad_()

    x = t(*shape, scale=2.0)
    kw = {}
    if form.get("branch"):
        kw.update(branch=t(*shape, dt=branch_dtype or dtype), branch_scale=t(d, dt=torch.float32))
    if form.get("skip") or form.get("skip_self"):
        kw.update(skip_gate=t(d, dt=torch.float32), skip_weight=t(d, dt=torch.float32))
        if form.get("skip"):
            kw["skip"] = t(*shape)
    if form.get("mix"):
        kw.update(x0=t(*shape), mix=t(2, d, dt=torch.float32))
    return x, kw


def run(fn, x, kw, scale, keep, grads_out, eps=None):
    outs = fn(x, scale, keep_residual=keep, eps=eps, **kw)
    inputs = [x, *kw.values()]
    return outs, torch.autograd.grad(outs, inputs, grads_out)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape,scale", [((5, 64), 1.0), ((3, 41, 100), 0.5), ((300, 96), 1 / 3 ** 0.5)])
def test_forward_backward_match_eager_twin(form, shape, scale, dtype, device):
    """Odd widths (masked lanes), batch dims, and 300 rows: more row tiles than backward programs, so each
    program's tile loop runs more than once."""
    x, kw = make_inputs(FORMS[form], shape, dtype, device)
    keep = FORMS[form].get("keep", False)
    outs_ref = reference.residual_norm(x, scale, keep_residual=keep, **kw)
    grads_out = [torch.randn_like(o) for o in outs_ref]
    outs, grads = run(rn.residual_norm, x, kw, scale, keep, grads_out)
    outs_ref, grads_ref = run(reference.residual_norm, x, kw, scale, keep, grads_out)
    assert len(outs) == len(outs_ref) == (3 if keep else 2)
    for o, r in zip(outs, outs_ref):
        assert o.dtype == r.dtype and o.shape == r.shape
        torch.testing.assert_close(o, r, **TOL[dtype])
    for name, gk, gr in zip(["x", *kw], grads, grads_ref):
        atol = GRAD_TOL[dtype]["atol"] * max(gr.abs().max().item(), 1.0)
        torch.testing.assert_close(gk, gr, rtol=GRAD_TOL[dtype]["rtol"], atol=atol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape", [(0, 8), (2, 0, 8), (3, 0), (0, 0)])
def test_empty_rows_or_width(form, shape, backend, device):
    """Zero rows: empty outputs, and per-channel gradients that are sums over no rows, so exactly zero (the Triton
    backward once returned an unwritten buffer there). Zero width: every output and gradient empty."""
    x, kw = make_inputs(FORMS[form], shape, torch.float32, device)
    keep = FORMS[form].get("keep", False)
    outs = BACKENDS[backend](x, 0.5, keep_residual=keep, **kw)
    assert [o.shape for o in outs] == [x.shape] * (3 if keep else 2)
    inputs = [x, *kw.values()]
    grads = torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs])
    for name, t, g in zip(["x", *kw], inputs, grads):
        assert g.shape == t.shape and (g == 0).all(), f"d{name}: {g}"


def test_mixed_dtypes_under_autocast(device):
    """The training path: fp32 stream, bf16 branch (a sublayer's output), n in bf16 under autocast (the dtype the
    next matmul reads), r and h kept in fp32."""
    x, kw = make_inputs(FORMS["branch_skip_mix"], (7, 64), torch.float32, device, branch_dtype=torch.bfloat16)
    with torch.autocast(device, dtype=torch.bfloat16):
        h, n = rn.residual_norm(x, 0.5, **kw)
        h_ref, n_ref = reference.residual_norm(x, 0.5, **kw)
    assert (h.dtype, n.dtype) == (h_ref.dtype, n_ref.dtype) == (torch.float32, torch.bfloat16)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(n.float(), n_ref.float(), atol=1e-2, rtol=1e-2)  # one bf16 rounding apart at most
    dn = torch.randn_like(n)
    (dbranch,) = torch.autograd.grad(n, kw["branch"], dn)
    (dbranch_ref,) = torch.autograd.grad(n_ref, kw["branch"], dn)
    assert dbranch.dtype == torch.bfloat16
    torch.testing.assert_close(dbranch.float(), dbranch_ref.float(), atol=1e-2, rtol=1e-2)


def test_unused_outputs_pass_no_gradient(device):
    """Only n used (the final norm): the backward runs without dh / dr and still matches the twin."""
    x, kw = make_inputs(FORMS["branch_mix_keep"], (9, 64), torch.float32, device)
    _, _, n = rn.residual_norm(x, 0.7, keep_residual=True, **kw)
    _, _, n_ref = reference.residual_norm(x, 0.7, keep_residual=True, **kw)
    dn = torch.randn_like(n)
    grads = torch.autograd.grad(n, [x, *kw.values()], dn)
    grads_ref = torch.autograd.grad(n_ref, [x, *kw.values()], dn)
    for gk, gr in zip(grads, grads_ref):
        torch.testing.assert_close(gk, gr, atol=2e-5, rtol=1e-5)


def test_every_output_element_is_written(device):
    """Outputs poisoned with NaN before the launch: every element must be overwritten, forward and backward."""
    x, kw = make_inputs(FORMS["branch_skip_mix"], (37, 100), torch.float32, device)
    x, kw = x.detach(), {k: v.detach() for k, v in kw.items()}
    nan = (lambda t: torch.full_like(t, float("nan")))
    outputs = (nan(x), nan(x), nan(x), torch.full((37,), float("nan"), device=device))
    r, h, n, rstd = rn._residual_norm_forward(x, kw["branch"], kw["branch_scale"], kw["skip"], kw["skip_gate"],
                                              kw["skip_weight"], kw["x0"], kw["mix"], 0.5, 1e-6, False, True,
                                              torch.float32, outputs=outputs)
    r_ref, h_ref, n_ref = reference.residual_norm(x, 0.5, keep_residual=True, eps=1e-6, **kw)
    for got, want in ((r, r_ref), (h, h_ref), (n, n_ref)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd, torch.rsqrt(h_ref.square().mean(-1) + 1e-6), atol=1e-5, rtol=1e-5)
    grads = (nan(x), nan(x), nan(x), nan(x))
    dx, dbranch, dskip, dx0, partials = rn._residual_norm_backward(
        torch.randn_like(x), torch.randn_like(x), torch.randn_like(x), x, kw["branch"], kw["branch_scale"],
        kw["skip"], kw["skip_gate"], kw["skip_weight"], kw["x0"], kw["mix"], rstd, 0.5, False, outputs=grads)
    for t in (dx, dbranch, dskip, dx0, partials):
        assert torch.isfinite(t).all()


def test_non_contiguous_rows(device):
    """Row-strided inputs (a slice of a wider tensor) are read in place."""
    wide = torch.randn(12, 160, device=device)
    x, branch = wide[:, :64], wide[:, 80:144]
    scale_vec = torch.randn(64, device=device)
    h, n = rn.residual_norm(x, 2.0, branch=branch, branch_scale=scale_vec)
    h_ref, n_ref = reference.residual_norm(x, 2.0, branch=branch, branch_scale=scale_vec)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(n, n_ref, atol=1e-5, rtol=1e-5)


def test_rejects_bad_input(device):
    x = torch.randn(4, 8, device=device)
    with pytest.raises(TypeError, match="residual_norm"):
        rn.residual_norm(x.double())
    with pytest.raises(ValueError, match="branch must be a float tensor of shape"):
        rn.residual_norm(x, branch=torch.randn(4, 7, device=device), branch_scale=torch.ones(8, device=device))
    with pytest.raises(ValueError, match="branch needs branch_scale"):
        rn.residual_norm(x, branch=x)
    with pytest.raises(ValueError, match="skip needs skip_gate"):
        rn.residual_norm(x, skip=x)
    with pytest.raises(ValueError, match="x0 must have x's dtype"):
        rn.residual_norm(x, x0=x.half(), mix=torch.ones(2, 8, device=device))


def test_opcheck(device):
    x, kw = make_inputs(FORMS["branch_skip_mix"], (5, 64), torch.float32, device)
    args = (x, kw["branch"], kw["branch_scale"], kw["skip"], kw["skip_gate"], kw["skip_weight"], kw["x0"], kw["mix"],
            0.5, 1e-6, False, True, torch.float32)
    torch.library.opcheck(torch.ops.triton_golf.residual_norm, args)
    d = [t.detach() for t in args[:8]]
    rstd = torch.rand(5, device=device) + 0.5
    torch.library.opcheck(torch.ops.triton_golf.residual_norm_backward,
                          (None, torch.randn_like(d[0]), torch.randn_like(d[0]), *d, rstd, 0.5, False))


def test_compiles_fullgraph_forward_and_backward(device):
    x, kw = make_inputs(FORMS["branch_skip_self_mix"], (3, 7, 64), torch.float32, device)
    weight = torch.randn(64, device=device)

    def loss(fn):
        h, n = fn(x, 0.5, **kw)
        return (n * weight).sum() + (h * weight).sum()

    compiled = torch.compile(lambda: loss(rn.residual_norm), fullgraph=True, backend="aot_eager")
    got = compiled()
    grads = torch.autograd.grad(got, [x, *kw.values()])
    want = loss(reference.residual_norm)
    grads_ref = torch.autograd.grad(want, [x, *kw.values()])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    for gk, gr in zip(grads, grads_ref):
        torch.testing.assert_close(gk, gr, atol=2e-5, rtol=1e-5)
