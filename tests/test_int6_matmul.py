"""Int6-dequant matmul (kernels/int6_matmul.py) against its eager twin kernels.reference.int6_linear.

Forward and dx on odd shapes (K not a multiple of 4 exercises the packed-row padding), every int6 value
from -32 to 31, poisoned outputs, the torch.library registration and torch.compile(fullgraph=True).
"""
import pytest
import torch
import triton

from kernels import int6_matmul as int6
from kernels import reference
from kernels.int6_matmul import _prune_by_m, int6_linear, int6_linear_backward, int6_linear_forward
from kernels.int6_layout import pack_int6

BLOCKS = (64, 64, 64)
SHAPES = [(1, 64, 64), (17, 96, 200), (100, 130, 128), (17, 64, 70)]  # (M, N, K); K = 70: padded rows
DTYPES = [torch.float32, torch.bfloat16]  # bf16 runs on a GPU only (see _skip_bf16_on_cpu)


def _skip_bf16_on_cpu(dtype, device):
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("bf16 is not emulated by the Triton interpreter")


def _int6_weight(n, k, device, seed):
    """Random packed int6 weight (every value -32..31 present when n*k >= 64) and random row scales."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-32, 32, (n, k), generator=g)
    q.view(-1)[:64] = torch.arange(-32, 32)[: min(64, n * k)]
    scales = torch.rand(n, generator=g) * 0.05 + 0.01
    return q, pack_int6(q).to(device), scales.to(device)


def _assert_close(out, ref_fp32, ref_eager, dtype):
    """fp32: tight; low precision: kernel error at most ~2x the eager twin's error vs fp32 (plus slack)."""
    out, ref_fp32, ref_eager = out.float(), ref_fp32.float(), ref_eager.float()
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref_fp32, atol=1e-4, rtol=1e-4)
    else:
        scale = ref_fp32.abs().max().item()
        eager_err = (ref_eager - ref_fp32).abs().max().item()
        assert (out - ref_fp32).abs().max().item() <= 2 * eager_err + 1e-3 * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_forward_matches_eager_and_writes_every_element(m, n, k, dtype, device):
    _skip_bf16_on_cpu(dtype, device)
    _, packed, scales = _int6_weight(n, k, device, seed=m + n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(device)
    out = torch.full((m, n), float("nan"), device=device, dtype=dtype)
    int6_linear_forward(x.to(dtype), packed, scales, k, out=out, blocks=BLOCKS)
    assert torch.isfinite(out).all()
    _assert_close(out, reference.int6_linear(x, packed, scales, k),
                  reference.int6_linear(x.to(dtype), packed, scales, k), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_backward_dx_matches_eager_and_writes_every_element(m, n, k, dtype, device):
    _skip_bf16_on_cpu(dtype, device)
    _, packed, scales = _int6_weight(n, k, device, seed=m * n + k)
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(n)).to(device)

    def eager_dx(d):
        x = torch.zeros(m, k, device=device, dtype=d.dtype, requires_grad=True)
        reference.int6_linear(x, packed, scales, k).backward(d)
        return x.grad

    out = torch.full((m, k), float("nan"), device=device, dtype=dtype)
    int6_linear_backward(dy.to(dtype), packed, scales, k, out=out, blocks=BLOCKS)
    assert torch.isfinite(out).all()
    _assert_close(out, eager_dx(dy), eager_dx(dy.to(dtype)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_op_batched_forward_and_backward(dtype, device):
    """(B, T, K) input through the autotuned public op, with autograd, against the eager twin."""
    _skip_bf16_on_cpu(dtype, device)
    n, k = 130, 200
    _, packed, scales = _int6_weight(n, k, device, seed=7)
    x = torch.randn(3, 37, k, generator=torch.Generator().manual_seed(1)).to(device)
    dy = torch.randn(3, 37, n, generator=torch.Generator().manual_seed(2)).to(device)

    def run(fn, xin, dyin):
        xin = xin.detach().requires_grad_()
        y = fn(xin, packed, scales, k)
        y.backward(dyin)
        return y, xin.grad

    y, dx = run(int6_linear, x.to(dtype), dy.to(dtype))
    assert y.shape == (3, 37, n) and y.dtype == dtype and dx.shape == x.shape
    y_ref, dx_ref = run(reference.int6_linear, x, dy)
    y_eager, dx_eager = run(reference.int6_linear, x.to(dtype), dy.to(dtype))
    _assert_close(y, y_ref, y_eager, dtype)
    _assert_close(dx, dx_ref, dx_eager, dtype)


def test_scales_get_no_gradient(device):
    _, packed, scales = _int6_weight(64, 64, device, seed=3)
    scales = scales.clone().requires_grad_()
    x = torch.randn(5, 64, device=device, requires_grad=True)
    int6_linear(x, packed, scales, 64).sum().backward()
    assert x.grad is not None and scales.grad is None


def test_bad_inputs_raise_clear_errors(device):
    _, packed, scales = _int6_weight(64, 64, device, seed=4)
    x = torch.randn(2, 64, device=device)
    with pytest.raises(ValueError, match="do not hold 60 int6 values"):
        int6_linear(torch.randn(2, 60, device=device), packed, scales, 60)
    with pytest.raises(ValueError, match="x has 64 features, weight expects 68"):
        int6_linear(x, torch.zeros(64, 51, dtype=torch.uint8, device=device), scales, 68)
    with pytest.raises(ValueError, match="scales must be a float"):
        int6_linear(x, packed, scales[:10], 64)
    with pytest.raises(ValueError, match="2-D uint8"):
        int6_linear(x, packed.to(torch.int32), scales, 64)


@pytest.mark.parametrize("blocks", [(16, 16, 48), (64, 64, 18), (16, 16, 8), int6._cfg(16, 32, 96, 4, 2)])
def test_blocks_that_are_not_powers_of_two_are_rejected_up_front(blocks, device):
    """Blocks that pass the size floor (and BLOCK_K % 4) but are no power of two: a clear error before Triton
    compiles, forward and backward."""
    _, packed, scales = _int6_weight(64, 64, device, seed=4)
    with pytest.raises(ValueError, match="int6_matmul: blocks .* must each be a power of two >= 16"):
        int6_linear_forward(torch.randn(2, 64, device=device), packed, scales, 64, blocks=blocks)
    with pytest.raises(ValueError, match="int6_matmul: blocks .* must each be a power of two >= 16"):
        int6_linear_backward(torch.randn(2, 64, device=device), packed, scales, 64, blocks=blocks)


@pytest.mark.parametrize("m, n, k", [(3, 5, 0), (3, 0, 8), (0, 5, 8)])
def test_empty_dims_match_eager_twin(m, n, k, device):
    """K = 0 (y = 0), N = 0 or M = 0 (empty y): the twin's result and an x-shaped gradient."""
    _, packed, scales = _int6_weight(n, k, device, seed=6)
    dy = torch.randn(2, m, n, device=device)
    grads = []
    for fn in (int6_linear, reference.int6_linear):
        x = torch.randn(2, m, k, device=device, requires_grad=True)
        y = fn(x, packed, scales, k)
        assert y.shape == (2, m, n)
        torch.testing.assert_close(y, torch.zeros(2, m, n, device=device))
        grads.append(torch.autograd.grad(y, x, dy)[0])
    assert grads[0].shape == (2, m, k)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_opcheck(device):
    _, packed, scales = _int6_weight(64, 68, device, seed=5)
    x = torch.randn(4, 68, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.triton_golf.int6_linear.default, (x, packed, scales, 68),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    dy = torch.randn(4, 64, device=device)
    torch.library.opcheck(torch.ops.triton_golf.int6_linear_backward.default, (dy, packed, scales, 68),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph(device):
    _, packed, scales = _int6_weight(96, 64, device, seed=6)
    x = torch.randn(2, 9, 64, device=device, requires_grad=True)

    def f(inp):
        return (int6_linear(inp, packed, scales, 64) ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (dx,) = torch.autograd.grad(loss, x)
    x_ref = x.detach().requires_grad_()
    loss_ref = (reference.int6_linear(x_ref, packed, scales, 64) ** 2).sum()
    loss_ref.backward()
    torch.testing.assert_close(loss, loss_ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(dx, x_ref.grad, atol=1e-4, rtol=1e-4)


def test_autotune_prune_splits_small_and_large_m():
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": 64, "BLOCK_K": 64}) for bm in (16, 32, 64, 128)]
    assert [c.kwargs["BLOCK_M"] for c in _prune_by_m(configs, {"M": 64})] == [16, 32]
    assert [c.kwargs["BLOCK_M"] for c in _prune_by_m(configs, {"M": 65})] == [64, 128]
    assert _prune_by_m(configs[:1], {"M": 4096}) == configs[:1]  # the interpreter's single config is kept


@pytest.mark.gpu
def test_large_shape_autotuned_gpu(device):
    """Eval-sized call (M = 8192 tokens, 1536 x 512) through the autotuned path, bf16."""
    _, packed, scales = _int6_weight(1536, 512, device, seed=8)
    x = torch.randn(8192, 512, device=device, dtype=torch.bfloat16)
    y = int6_linear(x, packed, scales, 512)
    ref = reference.int6_linear(x.float(), packed, scales, 512)
    assert (y.float() - ref).abs().max().item() <= 2e-2 * ref.abs().max().item()


def _label(config):
    return "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")) + \
        f"w{config.num_warps}s{config.num_stages}"


def test_backward_configs_reduce_at_least_32_deep():
    """The backward's reduction tile is BLOCK_N: 16 deep is the pattern of an upstream miscompile (triton #10645)."""
    assert all(c.kwargs["BLOCK_N"] >= 32 for c in int6.BACKWARD_CONFIGS)


@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("config", int6.BACKWARD_CONFIGS, ids=_label)
def test_backward_dx_with_each_gpu_config_forced(config, m, device):
    """Every backward GPU config, forced with its warps and stages, at small M: bf16 on a GPU, fp32 on the CPU."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    n, k = 70, 136  # neither a multiple of any tile
    _, packed, scales = _int6_weight(n, k, device, seed=m + config.kwargs["BLOCK_K"])
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(m)).to(device)

    def eager_dx(d):
        x = torch.zeros(m, k, device=device, dtype=d.dtype, requires_grad=True)
        reference.int6_linear(x, packed, scales, k).backward(d)
        return x.grad

    out = torch.full((m, k), float("nan"), device=device, dtype=dtype)
    int6_linear_backward(dy.to(dtype), packed, scales, k, out=out, blocks=config)
    assert torch.isfinite(out).all()
    _assert_close(out, eager_dx(dy), eager_dx(dy.to(dtype)), dtype)


@pytest.mark.parametrize("config", int6.FORWARD_CONFIGS, ids=_label)
def test_forward_with_each_gpu_config_forced(config, device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    m, n, k = 17, 70, 136
    _, packed, scales = _int6_weight(n, k, device, seed=config.kwargs["BLOCK_N"])
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(3)).to(device)
    out = torch.full((m, n), float("nan"), device=device, dtype=dtype)
    int6_linear_forward(x.to(dtype), packed, scales, k, out=out, blocks=config)
    assert torch.isfinite(out).all()
    _assert_close(out, reference.int6_linear(x, packed, scales, k),
                  reference.int6_linear(x.to(dtype), packed, scales, k), dtype)


def test_fp32_on_gpu_runs_the_pinned_config_and_bf16_autotunes(monkeypatch):
    monkeypatch.setattr(int6, "_INTERPRET", False)  # the launch decision as on a GPU (nothing is launched)
    assert int6._fixed_launch(torch.float32, None) == int6.FP32_CONFIG.all_kwargs()
    assert int6._fixed_launch(torch.bfloat16, None) is None
    assert int6._fixed_launch(torch.bfloat16, (16, 32, 64)) == {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}


def test_pinned_fp32_config_matches_eager(device):
    """FP32_CONFIG (what fp32 runs on a GPU) forward and dx, in fp32 and exact dots."""
    torch.set_float32_matmul_precision("highest")
    m, n, k = 37, 70, 136
    _, packed, scales = _int6_weight(n, k, device, seed=9)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(4)).to(device)
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(5)).to(device)
    y = int6_linear_forward(x, packed, scales, k, blocks=int6.FP32_CONFIG)
    torch.testing.assert_close(y, reference.int6_linear(x, packed, scales, k), atol=1e-4, rtol=1e-4)
    xr = x.clone().requires_grad_()
    reference.int6_linear(xr, packed, scales, k).backward(dy)
    dx = int6_linear_backward(dy, packed, scales, k, blocks=int6.FP32_CONFIG)
    torch.testing.assert_close(dx, xr.grad, atol=1e-4, rtol=1e-4)


def test_autocast_hands_the_kernel_the_autocast_dtype(monkeypatch):
    """Under autocast the op gets x in the autocast dtype (F.linear's behaviour in the twin); checked on the CPU
    with a stand-in op, so no bf16 kernel runs in the interpreter."""
    seen = []

    def op(x, packed, scales, in_features):
        seen.append(x.dtype)
        return x.new_zeros((*x.shape[:-1], packed.size(0)))

    monkeypatch.setattr(int6, "_int6_linear_op", op)
    _, packed, scales = _int6_weight(32, 64, "cpu", seed=10)
    x = torch.randn(3, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert int6_linear(x, packed, scales, 64).dtype == torch.bfloat16
    int6_linear(x, packed, scales, 64)
    assert seen == [torch.bfloat16, torch.float32]


@pytest.mark.gpu
def test_autocast_output_dtype_and_values_gpu(device):
    """Under bf16 autocast an fp32 activation (a frozen block's q/k/v input) gives a bf16 output, as F.linear does,
    and dx comes back in fp32."""
    _, packed, scales = _int6_weight(256, 512, device, seed=11)
    x = torch.randn(4, 64, 512, device=device, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = int6_linear(x, packed, scales, 512)
        y_twin = reference.int6_linear(x, packed, scales, 512)
    assert y.dtype == y_twin.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_twin.float(), atol=3e-2, rtol=2e-2)
    (dx,) = torch.autograd.grad(y.float().sum(), x)
    assert dx.dtype == torch.float32
