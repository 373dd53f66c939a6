"""Triton fused ReLU^2 MLP and linear (kernels/mlp.py) against the eager twins in kernels.reference."""
import pytest
import torch

from kernels import mlp
from kernels import reference
from kernels.autocast import autocast_dtype

BF16_SKIP = "bf16 is not emulated by the Triton interpreter"


def _params(d, h, d_out, device, seed=0):
    """Random MLP parameters (fp32 storage); alpha/beta away from their 1/0 init so both are exercised."""
    g = torch.Generator().manual_seed(seed)
    w_up = torch.randn(h, d, generator=g) / d ** 0.5
    w_down = torch.randn(d_out, h, generator=g) / h ** 0.5
    alpha = torch.rand(h, generator=g) + 0.5
    beta = torch.randn(h, generator=g) * 0.1
    return [t.to(device).requires_grad_() for t in (w_up, w_down, alpha, beta)]


def _run(fn, x, params, d_out_grad):
    """Forward and all five grads (x, w_up, w_down, alpha, beta) of fn."""
    leaves = [x.detach().clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, d_out_grad)


def _assert_close_scaled(actual, expected, tol, name):
    """|actual - expected| <= tol * max|expected| (+ tol): grads of different tensors have very different scales."""
    err = (actual.float() - expected.float()).abs().max().item()
    bound = tol * (expected.float().abs().max().item() + 1.0)
    assert err <= bound, f"{name}: max abs err {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("lead,d,h,d_out", [
    ((1,), 64, 192, 64),
    ((17,), 96, 192, 96),
    ((100,), 64, 192, 64),
    ((130,), 96, 192, 96),
    ((2, 50), 64, 192, 64),   # batch dims (B, T, d)
    ((3, 7), 64, 100, 80),    # hidden not a multiple of the tile; d_out != d
])
def test_forward_and_all_grads_match_eager_twin(lead, d, h, d_out, device):
    torch.manual_seed(0)
    x = torch.randn(*lead, d, device=device)
    params = _params(d, h, d_out, device)
    dy = torch.randn(*lead, d_out, device=device)
    out, grads = _run(mlp.relu2_mlp, x, params, dy)
    out_ref, grads_ref = _run(reference.relu2_mlp, x, params, dy)
    assert out.shape == out_ref.shape == (*lead, d_out)
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)
    for name, g, g_ref in zip(("x", "w_up", "w_down", "alpha", "beta"), grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype, name
        _assert_close_scaled(g, g_ref, 1e-5, name)


@pytest.mark.parametrize("d,h,d_out", [(0, 24, 16), (16, 0, 16), (16, 24, 0)])
def test_zero_width_dims_match_eager_twin(d, h, d_out, device):
    """A zero model, hidden or output width: an empty or exact result like the twin's (d = 0 leaves
    u = 0, so out = beta W_down^T and the gradients of w_down and beta are not zero)."""
    x = torch.randn(5, d, device=device)
    params = _params(d, h, d_out, device)
    dy = torch.randn(5, d_out, device=device)
    out, grads = _run(mlp.relu2_mlp, x, params, dy)
    out_ref, grads_ref = _run(reference.relu2_mlp, x, params, dy)
    assert out.shape == out_ref.shape == (5, d_out)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    for name, g, g_ref in zip(("x", "w_up", "w_down", "alpha", "beta"), grads, grads_ref):
        assert g.shape == g_ref.shape, name
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("blocks", [(64, 48, 64), (16, 16, 8), mlp._config(64, 64, 24, 4, 2)])
def test_blocks_that_are_not_powers_of_two_are_rejected_up_front(blocks, device):
    """Forced blocks must each be a power of two >= 16: a clear error before Triton compiles, not inside it."""
    w_up, w_down, alpha, beta = (p.detach() for p in _params(64, 96, 64, device))
    x = torch.randn(8, 64, device=device)
    with pytest.raises(ValueError, match="relu2_mlp: blocks .* must each be a power of two >= 16"):
        mlp._relu2_up(x, w_up, alpha, beta, blocks=blocks)
    with pytest.raises(ValueError, match="relu2_mlp: blocks .* must each be a power of two >= 16"):
        mlp._relu2_down_grad(x, w_down, torch.zeros(8, 96, device=device), alpha, beta, blocks=blocks)


def test_relu_gate_is_exercised():
    """Sanity of the test data: a good share of pre-activations is negative, so relu's zero branch is tested."""
    torch.manual_seed(0)
    x = torch.randn(100, 64)
    w_up = _params(64, 192, 64, "cpu")[0]
    u = x @ w_up.detach().t()
    assert 0.3 < (u < 0).float().mean().item() < 0.7


def test_forward_kernel_writes_every_element(device):
    torch.manual_seed(1)
    x = torch.randn(70, 96, device=device)
    w_up, _, alpha, beta = (p.detach() for p in _params(96, 130, 96, device))
    u = torch.full((70, 130), float("nan"), device=device)
    act = torch.full((70, 130), float("nan"), device=device)
    mlp._relu2_up(x, w_up, alpha, beta, u=u, act=act, blocks=(64, 64, 64))
    u_ref = x @ w_up.t()
    torch.testing.assert_close(u, u_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(act, torch.relu(u_ref).square() * alpha + beta, atol=1e-4, rtol=1e-4)


def test_backward_kernel_writes_every_element(device):
    torch.manual_seed(2)
    m, d, h = 70, 64, 130
    d_out = torch.randn(m, d, device=device)
    u = torch.randn(m, h, device=device)
    _, w_down, alpha, beta = (p.detach() for p in _params(d, h, d, device))
    tiles = 2  # ceil(70 / 64)
    bufs = [torch.full((m, h), float("nan"), device=device) for _ in range(2)]
    bufs += [torch.full((tiles, h), float("nan"), device=device) for _ in range(2)]
    d_u, act, part_alpha, part_beta = mlp._relu2_down_grad(d_out, w_down, u, alpha, beta, *bufs, blocks=(64, 64, 64))
    d_act = d_out @ w_down
    r = torch.relu(u)
    torch.testing.assert_close(d_u, d_act * alpha * 2 * r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(act, r.square() * alpha + beta, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_alpha.sum(0), (d_act * r.square()).sum(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(part_beta.sum(0), d_act.sum(0), atol=1e-4, rtol=1e-4)


def test_other_tile_shapes(device):
    """Non-square tiles and BLOCK_K smaller than d: more K iterations and more partial-sum rows."""
    torch.manual_seed(3)
    x = torch.randn(90, 96, device=device)
    w_up, w_down, alpha, beta = (p.detach() for p in _params(96, 192, 96, device))
    u, act = mlp._relu2_up(x, w_up, alpha, beta, blocks=(32, 128, 32))
    torch.testing.assert_close(u, x @ w_up.t(), atol=1e-4, rtol=1e-4)
    d_out = torch.randn(90, 96, device=device)
    d_u, _, part_alpha, part_beta = mlp._relu2_down_grad(d_out, w_down, u, alpha, beta, blocks=(32, 128, 32))
    assert part_alpha.shape == (3, 192)
    d_act = d_out @ w_down
    torch.testing.assert_close(d_u, d_act * alpha * 2 * torch.relu(u), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(part_beta.sum(0), d_act.sum(0), atol=1e-4, rtol=1e-4)


def test_linear_matches_eager_twin(device):
    torch.manual_seed(4)
    x = torch.randn(2, 17, 96, device=device, requires_grad=True)
    w = torch.randn(80, 96, device=device, requires_grad=True)
    y = mlp.linear(x, w)
    torch.testing.assert_close(y, reference.linear(x, w), atol=1e-5, rtol=1e-5)
    dx, dw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    torch.testing.assert_close(dw, torch.ones(80, 34, device=device) @ x.detach().reshape(34, 96))
    torch.testing.assert_close(dx, torch.ones(2, 17, 80, device=device) @ w.detach())


def test_rejects_bad_shapes_and_dtypes():
    w_up, w_down, alpha, beta = (p.detach() for p in _params(64, 192, 64, "cpu"))
    x = torch.randn(5, 64)
    with pytest.raises(ValueError, match="w_up"):
        mlp.relu2_mlp(torch.randn(5, 32), w_up, w_down, alpha, beta)
    with pytest.raises(ValueError, match="w_down"):
        mlp.relu2_mlp(x, w_up, w_down.t(), alpha, beta)
    with pytest.raises(ValueError, match="beta"):
        mlp.relu2_mlp(x, w_up, w_down, alpha, beta[:-1])
    with pytest.raises(TypeError, match="float64"):
        mlp.relu2_mlp(x.double(), w_up, w_down, alpha, beta)


def test_opcheck(device):
    torch.manual_seed(5)
    x = torch.randn(9, 64, device=device, requires_grad=True)
    params = _params(64, 96, 64, device)
    torch.library.opcheck(torch.ops.triton_golf.relu2_mlp, (x, *params))
    w_up, w_down, alpha, beta = (p.detach() for p in params)
    u = x.detach() @ w_up.t()
    torch.library.opcheck(torch.ops.triton_golf.relu2_mlp_backward,
                          (torch.randn(9, 64, device=device), x.detach(), u, w_up, w_down, alpha, beta))


def test_compiles_fullgraph_forward_and_backward(device):
    torch.manual_seed(6)
    x = torch.randn(2, 9, 64, device=device)
    params = _params(64, 96, 64, device)
    dy = torch.randn(2, 9, 64, device=device)
    compiled = torch.compile(mlp.relu2_mlp, fullgraph=True, backend="aot_eager")
    out, grads = _run(compiled, x, params, dy)
    out_ref, grads_ref = _run(reference.relu2_mlp, x, params, dy)
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)
    for name, g, g_ref in zip(("x", "w_up", "w_down", "alpha", "beta"), grads, grads_ref):
        _assert_close_scaled(g, g_ref, 1e-5, name)


@pytest.mark.gpu
@pytest.mark.parametrize("lead,d,h", [((1,), 64, 192), ((130,), 96, 192), ((4, 2048), 512, 1536)])
def test_bf16_within_twice_the_eager_bf16_error(lead, d, h, device):
    """bf16 kernel vs an fp32 reference: at most 2x the eager bf16 twin's error (3x for grads)."""
    if device == "cpu":
        pytest.skip(BF16_SKIP)
    torch.manual_seed(7)
    x = torch.randn(*lead, d, device=device)
    params = _params(d, h, d, device)
    dy = torch.randn(*lead, d, device=device)
    bf16 = lambda fn: (lambda x, *p: fn(x.bfloat16(), *p))  # noqa: E731  (params stay fp32, cast inside)
    out, grads = _run(bf16(mlp.relu2_mlp), x, params, dy.bfloat16())
    out_twin, grads_twin = _run(bf16(reference.relu2_mlp), x, params, dy.bfloat16())
    out_ref, grads_ref = _run(reference.relu2_mlp, x.double(), [p.double() for p in params], dy.double())
    assert out.dtype == torch.bfloat16

    def err(a, b):
        return (a.double() - b).abs().max().item()
    assert err(out, out_ref) <= 2 * err(out_twin, out_ref) + 1e-6
    for name, g, g_twin, g_ref in zip(("x", "w_up", "w_down", "alpha", "beta"), grads, grads_twin, grads_ref):
        assert err(g, g_ref) <= 3 * err(g_twin, g_ref) + 1e-6, name


@pytest.mark.gpu
def test_autocast_casts_like_f_linear(device):
    if device == "cpu":
        pytest.skip("autocast test targets CUDA")
    torch.manual_seed(8)
    x = torch.randn(33, 64, device=device)
    params = _params(64, 192, 64, device)
    dy = torch.randn(33, 64, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, grads = _run(mlp.relu2_mlp, x, params, dy)
        out_twin, grads_twin = _run(reference.relu2_mlp, x, params, dy)
    assert out.dtype == out_twin.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_twin, atol=3e-2, rtol=2e-2)
    for name, g, g_twin in zip(("x", "w_up", "w_down", "alpha", "beta"), grads, grads_twin):
        assert g.dtype == g_twin.dtype == torch.float32, name
        _assert_close_scaled(g, g_twin, 3e-2, name)


def _label(config):
    return "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) + \
        f"w{config.num_warps}s{config.num_stages}"


def test_backward_configs_share_the_fixed_row_tile():
    """The backward sizes its partial-sum buffer from _BACKWARD_BLOCK_M before the autotuner picks a config."""
    assert {c.kwargs["BLOCK_M"] for c in mlp.BACKWARD_CONFIGS} == {mlp._BACKWARD_BLOCK_M}


def test_fp32_on_gpu_runs_the_pinned_config_and_bf16_autotunes(monkeypatch):
    monkeypatch.setattr(mlp, "_INTERPRET", False)  # the launch decision as on a GPU (nothing is launched)
    assert mlp._fixed_launch(torch.float32, None) == mlp.FP32_CONFIG.all_kwargs()
    assert mlp._fixed_launch(torch.bfloat16, None) is None
    assert mlp._fixed_launch(torch.bfloat16, (32, 64, 32)) == {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32}


@pytest.mark.parametrize("config", [*mlp.FORWARD_CONFIGS, *mlp.BACKWARD_CONFIGS, mlp.FP32_CONFIG], ids=_label)
def test_each_gpu_config_forced_matches_the_twin(config, device):
    """Both epilogues with every GPU config, forced with its warps and stages: bf16 on a GPU (fp32 for FP32_CONFIG,
    exact dots), fp32 on the CPU."""
    dtype = torch.bfloat16 if device == "cuda" and config is not mlp.FP32_CONFIG else torch.float32
    torch.set_float32_matmul_precision("highest")
    m, d, h = 130, 96, 200  # no multiple of any tile
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(9)).to(device)
    d_out = torch.randn(m, d, generator=torch.Generator().manual_seed(10)).to(device)
    w_up, w_down, alpha, beta = (p.detach() for p in _params(d, h, d, device, seed=11))
    u, act = mlp._relu2_up(x.to(dtype), w_up.to(dtype), alpha.to(dtype), beta.to(dtype), blocks=config)
    d_u, _, part_alpha, part_beta = mlp._relu2_down_grad(d_out.to(dtype), w_down.to(dtype), u, alpha.to(dtype),
                                                         beta.to(dtype), blocks=config)
    u_ref = x @ w_up.t()
    d_act = d_out @ w_down
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(u.float(), u_ref, **tol)
    torch.testing.assert_close(act.float(), torch.relu(u.float()).square() * alpha + beta, **tol)
    torch.testing.assert_close(d_u.float(), d_act * alpha * 2 * torch.relu(u.float()), **tol)
    torch.testing.assert_close(part_beta.sum(0), d_act.sum(0), **tol)
    assert part_alpha.shape == (-(-m // config.kwargs["BLOCK_M"]), h)


def test_autocast_dtype_decision_on_cpu():
    """kernels.autocast: what every matmul op casts x to (the MLP, the head and the int6 matmul)."""
    x = torch.randn(3, 4)
    assert autocast_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype(x) == torch.bfloat16
        assert autocast_dtype(x.double()) == torch.float64  # autocast leaves fp64 alone
        assert autocast_dtype(torch.zeros(2, dtype=torch.int64)) == torch.int64
