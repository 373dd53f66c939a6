"""Each Triton kernel against its eager twin and the torch baselines, at training and eval/TTT shapes.

Baselines per op: attention — the eager twin (SDPA, backend of torch's choosing) and SDPA forced to
the flash and to the cuDNN backend, forward, backward and both (the Triton kernel's line count in the shape
column); MLP, RMSNorm, softcapped CE — the eager twin and torch.compile of it; int6 linear — the eager twin
(unpacks every call) and dequantize-once + bf16 cuBLAS F.linear (the bar at TTT sizes).
Training-shape cases time forward + backward (gradients by torch.autograd.grad, so nothing accumulates).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench import flops
from bench.shapes import get_shapes
from kernels import reference
from kernels.int6_layout import pack_int6, unpack_int6

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


def _sdpa(backend_name: str, q, k, v):
    """SDPA restricted to one backend, in the (B, T, H, D) layout of the eager twin."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend_name)):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=q.size(2) != k.size(2))
    return y.transpose(1, 2)


def sdpa_flash(q, k, v):
    """SDPA forced to the flash backend (FlashAttention-2), GQA in the kernel."""
    return _sdpa("FLASH_ATTENTION", q, k, v)


def sdpa_cudnn(q, k, v):
    """SDPA forced to the cuDNN backend; its inputs are given with K/V already repeated to the query heads
    (outside the timing), since cuDNN's GQA support varies by version: its backward then skips the sum over
    each group's dK/dV, a small advantage over the others."""
    return _sdpa("CUDNN_ATTENTION", q, k, v)


# Triton variants: the default backward (deterministic two-stage dQ, XSA fused) and the selectable slower paths
TRITON_ATTENTION_VARIANTS = {"triton": {}, "triton_atomic": dict(dq_mode="atomic"),
                             "triton_separate": dict(dq_mode="separate"), "triton_xsa_unfused": dict(fuse_xsa=False)}
ATTENTION_KERNEL_FILES = ("kernels/attention.py", "kernels/attention_backward.py", "kernels/xsa.py")
# the headline cases first (a time-guarded GPU check keeps what finished): fwd+bwd, default kernel vs SDPA
ATTENTION_CASES = [(v, xsa, mode) for mode in ("fwd+bwd", "bwd", "fwd") for xsa in (False, True)
                   for v in ("triton", "sdpa_flash", "sdpa_cudnn", "triton_atomic", "triton_separate", "eager",
                             "triton_xsa_unfused")
                   if not (xsa and v.startswith("sdpa"))  # SDPA has no XSA epilogue
                   and not (v == "triton_xsa_unfused" and not xsa)
                   and not (mode == "fwd" and v in ("triton_atomic", "triton_separate"))]  # same forward


def attention_kernel_lines() -> int:
    """Lines of the Triton attention family (kernels, launchers, custom ops), shown beside its speed-up."""
    root = Path(__file__).resolve().parents[1]
    return sum(len((root / f).read_text().splitlines()) for f in ATTENTION_KERNEL_FILES)


def _attention_op(variant: str, xsa: bool, variant_fn):
    if variant.startswith("sdpa"):
        return sdpa_flash if variant == "sdpa_flash" else sdpa_cudnn
    if variant == "eager":
        twin = variant_fn("attention", "eager")
        return lambda q, k, v: twin(q, k, v, xsa)
    kernel = variant_fn("attention", "triton")
    options = TRITON_ATTENTION_VARIANTS[variant]
    return lambda q, k, v: kernel(q, k, v, xsa=xsa, **options)


@pytest.mark.parametrize("variant,xsa,mode", ATTENTION_CASES)
def test_attention(variant, xsa, mode, shapes, measure, variant_fn):
    """Forward, backward alone (the forward's graph kept, gradients only) and forward+backward, in TFLOP/s by
    FlashAttention's count (backward = 2.5 forwards), against SDPA's flash and cuDNN backends."""
    s = shapes
    if variant == "sdpa_cudnn" and s.device != "cuda":
        pytest.skip("SDPA's cuDNN backend needs a CUDA GPU")
    op = _attention_op(variant, xsa, variant_fn)
    kv_heads = s.num_heads if variant == "sdpa_cudnn" else s.num_kv_heads
    grad_needed = mode != "fwd"
    sets = []
    for _ in range(s.input_sets):
        q = _randn((s.attn_batch, s.seq_len, s.num_heads, s.head_dim), s, grad=grad_needed)
        k, v = (_randn((s.attn_batch, s.seq_len, kv_heads, s.head_dim), s, grad=grad_needed) for _ in "kv")
        if mode == "fwd":
            sets.append((q, k, v))
        elif mode == "fwd+bwd":
            sets.append((q, k, v, torch.randn_like(q)))
        else:  # the forward runs once here; each timed call is one backward through the kept graph
            sets.append((op(q, k, v), q, k, v, torch.randn_like(q)))
    if mode == "fwd+bwd":
        fn = forward_backward(op, 3)
    elif mode == "bwd":
        def fn(out, q, k, v, grad_out):
            return torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
    else:
        def fn(q, k, v):
            with torch.no_grad():
                return op(q, k, v)
    forward = flops.attention_kernel_flops(s.attn_batch, s.seq_len, s.num_heads, s.head_dim, backward=False)
    case_flops = {"fwd": forward, "bwd": forward * flops.FA_BACKWARD_FACTOR,
                  "fwd+bwd": forward * (1 + flops.FA_BACKWARD_FACTOR)}[mode]
    measure(f"attention{'_xsa' if xsa else ''} {mode}", variant, fn, sets, tokens=s.attn_batch * s.seq_len,
            shape=f"B{s.attn_batch} T{s.seq_len} H{s.num_heads}/{s.num_kv_heads} D{s.head_dim} "
                  f"{_dtype_name(s.dtype)}; Triton kernel {attention_kernel_lines()} lines",
            flops=case_flops)


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


def _element_size(dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def _memory_dtypes(shapes, *full_dtypes):
    """The dtypes a memory-bound case runs in: those the model feeds the op on a GPU, fp32 in quick mode."""
    return [torch.float32] if shapes.quick else list(full_dtypes)


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_rms_norm(variant, shapes, measure, variant_fn):
    """The residual stream is fp32 in the model (fp32 params + bf16 branch outputs), so rms_norm sees fp32;
    bf16 is timed too for a bf16-residual model."""
    s = shapes
    op = variant_fn("rms_norm", variant)
    for dtype in _memory_dtypes(s, torch.float32, torch.bfloat16):
        sets = [(_randn((s.rows, s.model_dim), s, dtype, grad=True), _randn((s.rows, s.model_dim), s, dtype))
                for _ in range(s.input_sets)]
        element_bytes = s.rows * s.model_dim * _element_size(dtype)
        measure(f"rms_norm fwd+bwd {_dtype_name(dtype)}", variant, forward_backward(op, 1), sets, tokens=s.rows,
                shape=f"M{s.rows} d{s.model_dim} {_dtype_name(dtype)}",
                bytes_moved=5 * element_bytes)  # fwd: read x, write y; bwd: read x and dy, write dx


def _rope_tables(shapes, rope_dims: int):
    positions = torch.arange(shapes.seq_len, device=shapes.device, dtype=torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rope_dims, 2, device=shapes.device, dtype=torch.float32) / rope_dims)
    angles = positions[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


QK_ROPE_FUNCTIONS = {"eager": ("kernels.reference", "qk_norm_rope"), "triton": ("kernels.rope", "qk_norm_rope")}


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_qk_norm_rope(variant, shapes, measure, import_or_skip, compile_fn):
    """q of one layer (B, T, 8, 64) in bf16 (the q projection's output under autocast), rope dims 16, q gain."""
    s = shapes
    module, name = QK_ROPE_FUNCTIONS["eager" if variant == "compile" else variant]
    op = getattr(import_or_skip(module), name)
    op = compile_fn(op) if variant == "compile" else op
    rope_dims = 16
    cos, sin = _rope_tables(s, rope_dims)
    dtype = _memory_dtypes(s, torch.bfloat16)[0]
    batch = max(s.rows // s.seq_len, 1)
    shape = (batch, s.seq_len, s.num_heads, s.head_dim)
    sets = [(_randn(shape, s, dtype, grad=True), torch.ones(s.num_heads, device=s.device, requires_grad=True),
             _randn(shape, s, dtype)) for _ in range(s.input_sets)]

    def fn(x, gain, grad_out):
        y = op(x, cos, sin, rope_dims, gain)
        return torch.autograd.grad(y, (x, gain), grad_out)
    element_bytes = batch * s.seq_len * s.num_heads * s.head_dim * _element_size(dtype)
    measure(f"qk_norm_rope fwd+bwd {_dtype_name(dtype)}", variant, fn, sets, tokens=batch * s.seq_len,
            shape=f"B{batch} T{s.seq_len} H{s.num_heads} D{s.head_dim} rope{rope_dims} {_dtype_name(dtype)}",
            bytes_moved=5 * element_bytes)  # fwd: read x, write y; bwd: read x and dy, write dx


def test_copy_ceiling(shapes, measure):
    """A device-to-device copy of the residual stream's size: the GB/s ceiling beside the memory-bound cases."""
    s = shapes
    dtype = _memory_dtypes(s, torch.float32)[0]
    sets = [(_randn((s.rows, s.model_dim), s, dtype), torch.empty(s.rows, s.model_dim, device=s.device, dtype=dtype))
            for _ in range(s.input_sets)]
    measure("copy ceiling", "torch", lambda src, dst: dst.copy_(src), sets, tokens=s.rows,
            shape=f"M{s.rows} d{s.model_dim} {_dtype_name(dtype)}",
            bytes_moved=2 * s.rows * s.model_dim * _element_size(dtype))  # read + write


@pytest.mark.parametrize("variant", ["eager", "compile", "triton"])
def test_softcap_cross_entropy(variant, shapes, measure, variant_fn):
    s = shapes
    op = variant_fn("softcap_cross_entropy", variant)

    def fn(x, weight, targets, grad_out):
        nll = op(x, weight, targets, s.logit_softcap)
        return torch.autograd.grad(nll, (x, weight), grad_out)
    # x reaches the head in the autocast dtype (the op casts the final norm's fp32 output); the tied weight is fp32
    sets = [(_randn((s.rows, s.model_dim), s, grad=True),
             _randn((s.vocab_size, s.model_dim), s, torch.float32, grad=True, scale=0.05),
             torch.randint(0, s.vocab_size, (s.rows,), device=s.device),
             torch.full((s.rows,), 1.0 / s.rows, device=s.device)) for _ in range(s.input_sets)]
    measure("softcap_cross_entropy fwd+bwd", variant, fn, sets, tokens=s.rows,
            shape=f"M{s.rows} d{s.model_dim} V{s.vocab_size} {_dtype_name(s.dtype)}",
            flops=flops.linear_flops(s.rows, s.vocab_size, s.model_dim, backward=True))


def pytest_generate_tests(metafunc):
    """int6 shapes: M x every (N, K) pair of the mode's shape set (full or quick)."""
    if "int6_shape" in metafunc.fixturenames:
        s = get_shapes(metafunc.config.getoption("--bench-quick"))
        cases = [(m, n, k) for m in s.int6_rows for n, k in s.int6_features]
        metafunc.parametrize("int6_shape", cases, ids=[f"M{m}-N{n}-K{k}" for m, n, k in cases])


@pytest.mark.parametrize("mode", ["fwd", "fwd+dx"])
@pytest.mark.parametrize("variant", ["eager", "dequant_once", "triton"])
def test_int6_linear(variant, mode, int6_shape, shapes, measure, variant_fn):
    """y = x W^T (fwd), or y and then dx = dy W (fwd+dx: what TTT needs through frozen int6 blocks), W (N, K) int6.

    Baselines: the eager twin (unpacks and dequantizes W on every call, then cuBLAS) and `dequant_once`
    (W dequantized to the activation dtype once and cached: bf16 cuBLAS, the bar at large M)."""
    m, n, k = int6_shape
    s = shapes
    if variant == "dequant_once":
        def forward(x, packed, scales, weight):
            return F.linear(x, weight)
    else:
        op = variant_fn("int6_linear", variant)

        def forward(x, packed, scales, weight):
            return op(x, packed, scales, k)
    sets = []
    for _ in range(s.input_sets):
        q = torch.randint(-32, 32, (n, k), device=s.device, dtype=torch.int8)
        scales = torch.rand(n, device=s.device) * 0.01 + 1 / 31
        packed = pack_int6(q)
        weight = (unpack_int6(packed, k).float() * scales[:, None]).to(s.dtype)  # the dequantize-once baseline
        x = _randn((m, k), s, grad=mode != "fwd")
        sets.append((x, packed, scales, weight) if mode == "fwd" else (x, packed, scales, weight, _randn((m, n), s)))
    if mode != "fwd":
        def fn(x, packed, scales, weight, grad_out):
            return torch.autograd.grad(forward(x, packed, scales, weight), (x,), grad_out)
        measure(f"int6_linear fwd+dx M={m} N={n} K={k}", variant, fn, sets, tokens=m,
                shape=f"M{m} N{n} K{k} {_dtype_name(s.dtype)}", flops=2 * flops.linear_flops(m, n, k))
        return
    with torch.inference_mode():
        measure(f"int6_linear M={m} N={n} K={k}", variant, forward, sets, tokens=m,
                shape=f"M{m} N{n} K{k} {_dtype_name(s.dtype)}", flops=flops.linear_flops(m, n, k))
