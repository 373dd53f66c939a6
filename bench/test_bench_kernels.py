"""Each Triton kernel against its eager twin and the torch baselines, at training and eval/TTT shapes.

Baselines per op: attention — the eager twin (SDPA, backend of torch's choosing) and SDPA forced to
the flash backend; MLP, RMSNorm, softcapped CE — the eager twin and torch.compile of it; int6 linear —
the eager twin (unpacks every call) and dequantize-once + bf16 cuBLAS F.linear (the bar at TTT sizes).
Training-shape cases time forward + backward (gradients by torch.autograd.grad, so nothing accumulates).
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from bench import flops
from bench.shapes import get_shapes
from kernels import reference
from quant.pack import pack_int6, unpack_int6

# op -> (kernel family module, function), imported per case: a missing family skips only its own cases
TRITON_FUNCTIONS = {
    "attention": ("kernels.attention", "attention"),
    "relu2_mlp": ("kernels.mlp", "relu2_mlp"),
    "rms_norm": ("kernels.rmsnorm", "rms_norm"),
    "softcap_cross_entropy": ("kernels.cross_entropy", "softcap_cross_entropy"),
    "int6_linear": ("kernels.int6_matmul", "int6_linear"),
}


@pytest.fixture
def variant_fn(import_or_skip, compile_fn):
    """variant_fn(op, variant) -> the callable benchmarked: the eager twin, its compiled form, or the kernel."""
    def pick(op: str, variant: str):
        if variant == "eager":
            return getattr(reference, op)
        if variant == "compile":
            return compile_fn(getattr(reference, op))
        if variant == "triton":
            module, name = TRITON_FUNCTIONS[op]
            return getattr(import_or_skip(module), name)
        raise ValueError(f"unknown variant {variant!r} for {op}")
    return pick


def forward_backward(op, num_grad_inputs: int):
    """fn(*inputs, grad_out) running op forward and backward into the first `num_grad_inputs` inputs."""
    def run(*args):
        *inputs, grad_out = args
        out = op(*inputs)
        return torch.autograd.grad(out, inputs[:num_grad_inputs], grad_out)
    return run


def _randn(shape, shapes, dtype=None, grad=False, scale=1.0):
    t = torch.randn(shape, device=shapes.device, dtype=dtype or shapes.dtype) * scale
    return t.requires_grad_(grad)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float32", "fp32")


def sdpa_flash(q, k, v):
    """SDPA restricted to its flash backend, in the (B, T, H, D) layout of the eager twin."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=q.size(2) != k.size(2))
    return y.transpose(1, 2)


ATTENTION_CASES = [(v, xsa, mode) for mode in ("fwd", "fwd+bwd") for xsa in (False, True)
                   for v in ("eager", "sdpa_flash", "triton") if not (xsa and v == "sdpa_flash")]


@pytest.mark.parametrize("variant,xsa,mode", ATTENTION_CASES)
def test_attention(variant, xsa, mode, shapes, measure, variant_fn):
    s = shapes
    backward = mode == "fwd+bwd"
    op = sdpa_flash if variant == "sdpa_flash" else variant_fn("attention", variant)
    call = (lambda q, k, v: op(q, k, v, xsa)) if variant != "sdpa_flash" else op
    sets = []
    for _ in range(s.input_sets):
        q = _randn((s.attn_batch, s.seq_len, s.num_heads, s.head_dim), s, grad=backward)
        k, v = (_randn((s.attn_batch, s.seq_len, s.num_kv_heads, s.head_dim), s, grad=backward) for _ in "kv")
        sets.append((q, k, v, torch.randn_like(q)) if backward else (q, k, v))
    if backward:
        fn = forward_backward(call, 3)
    else:
        def fn(q, k, v):
            with torch.no_grad():
                return call(q, k, v)
    measure(f"attention{'_xsa' if xsa else ''} {mode}", variant, fn, sets, tokens=s.attn_batch * s.seq_len,
            shape=f"B{s.attn_batch} T{s.seq_len} H{s.num_heads}/{s.num_kv_heads} D{s.head_dim} {_dtype_name(s.dtype)}",
            flops=flops.attention_kernel_flops(s.attn_batch, s.seq_len, s.num_heads, s.head_dim, backward))


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_relu2_mlp(variant, shapes, measure, variant_fn):
    s = shapes
    op = variant_fn("relu2_mlp", variant)
    sets = [(_randn((s.rows, s.model_dim), s, grad=True),
             _randn((s.mlp_hidden, s.model_dim), s, torch.float32, True, s.model_dim ** -0.5),
             _randn((s.model_dim, s.mlp_hidden), s, torch.float32, True, s.mlp_hidden ** -0.5),
             _randn((s.mlp_hidden,), s, torch.float32, True), _randn((s.mlp_hidden,), s, torch.float32, True),
             _randn((s.rows, s.model_dim), s)) for _ in range(s.input_sets)]
    measure("relu2_mlp fwd+bwd", variant, forward_backward(op, 5), sets, tokens=s.rows,
            shape=f"M{s.rows} d{s.model_dim} h{s.mlp_hidden} {_dtype_name(s.dtype)}",
            flops=2 * flops.linear_flops(s.rows, s.mlp_hidden, s.model_dim, backward=True))


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_rms_norm(variant, shapes, measure, variant_fn):
    s = shapes
    op = variant_fn("rms_norm", variant)
    sets = [(_randn((s.rows, s.model_dim), s, grad=True), _randn((s.rows, s.model_dim), s))
            for _ in range(s.input_sets)]
    element_bytes = s.rows * s.model_dim * torch.tensor([], dtype=s.dtype).element_size()
    measure("rms_norm fwd+bwd", variant, forward_backward(op, 1), sets, tokens=s.rows,
            shape=f"M{s.rows} d{s.model_dim} {_dtype_name(s.dtype)}",
            bytes_moved=5 * element_bytes)  # fwd: read x, write y; bwd: read x and dy, write dx


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_softcap_cross_entropy(variant, shapes, measure, variant_fn):
    s = shapes
    op = variant_fn("softcap_cross_entropy", variant)

    def fn(x, weight, targets, grad_out):
        nll = op(x, weight, targets, s.logit_softcap)
        return torch.autograd.grad(nll, (x, weight), grad_out)
    sets = [(_randn((s.rows, s.model_dim), s, grad=True), _randn((s.vocab_size, s.model_dim), s, grad=True, scale=0.05),
             torch.randint(0, s.vocab_size, (s.rows,), device=s.device),
             torch.full((s.rows,), 1.0 / s.rows, device=s.device)) for _ in range(s.input_sets)]
    measure("softcap_cross_entropy fwd+bwd", variant, fn, sets, tokens=s.rows,
            shape=f"M{s.rows} d{s.model_dim} V{s.vocab_size} {_dtype_name(s.dtype)}",
            flops=flops.linear_flops(s.rows, s.vocab_size, s.model_dim, backward=True))


def pytest_generate_tests(metafunc):
    """int6 shapes: M x every (N, K) pair of the mode's shape set (full or quick)."""
    if "int6_shape" in metafunc.fixturenames:
        s = get_shapes(metafunc.config.getoption("--bench-quick"))
        cases = [(m, n, k) for m in s.int6_rows for n, k in itertools.product(s.int6_features, repeat=2)]
        metafunc.parametrize("int6_shape", cases, ids=[f"M{m}-N{n}-K{k}" for m, n, k in cases])


@pytest.mark.parametrize("variant", ["eager", "dequant_once", "triton"])
def test_int6_linear(variant, int6_shape, shapes, measure, variant_fn):
    m, n, k = int6_shape
    s = shapes
    if variant == "dequant_once":
        def fn(x, packed, scales, weight):
            return F.linear(x, weight)
    else:
        op = variant_fn("int6_linear", variant)

        def fn(x, packed, scales, weight):
            return op(x, packed, scales, k)
    sets = []
    for _ in range(s.input_sets):
        q = torch.randint(-32, 32, (n, k), device=s.device, dtype=torch.int8)
        scales = torch.rand(n, device=s.device) * 0.01 + 1 / 31
        packed = pack_int6(q)
        weight = (unpack_int6(packed, k).float() * scales[:, None]).to(s.dtype)  # the dequantize-once baseline
        sets.append((_randn((m, k), s), packed, scales, weight))
    with torch.inference_mode():
        measure(f"int6_linear M={m} N={n} K={k}", variant, fn, sets, tokens=m,
                shape=f"M{m} N{n} K{k} {_dtype_name(s.dtype)}", flops=flops.linear_flops(m, n, k))
