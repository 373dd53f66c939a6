"""The roofline projection: FLOPs and bytes of every op call, a lower bound on its time per GPU, per op family.

A PROJECTION, never a measurement: each call takes at least max(FLOPs / peak, bytes / bandwidth), where bytes are
what the call must read and write once (its inputs and outputs; a Triton op's scratch besides). Summed over a
step's calls it bounds the step from below on one GPU (no overlap of calls, no launch gaps, no all-reduce).
Inductor fuses the glue ops (norms, casts, residual adds) across calls, so their per-call bytes overstate what a
compiled glue moves: the glue rows are an upper bound of its traffic and say so.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
from torch.utils.flop_counter import flop_registry

from bench.rehearsal.fake_cuda import io_tensors, tensor_bytes
from model.flops import attention_kernel_flops


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s
    hbm_bytes: float   # HBM bandwidth, B/s
    memory: float      # bytes


GPUS = (GPU("H100 SXM", 989e12, 3.35e12, 80e9), GPU("A100 SXM", 312e12, 2.0e12, 80e9))

# custom op -> family (kernels.ops.FAMILIES); backward ops share their forward's family
CUSTOM_FAMILY = {"rms_norm": "rms_norm", "residual_norm": "residual_norm", "qk_norm_rope": "qk_norm_rope",
                 "rotate_half_split": "qk_norm_rope", "causal_gqa_attention": "attention",
                 "exclusive_projection": "attention", "relu2_mlp": "mlp", "softcap_cross_entropy": "cross_entropy",
                 "int6_linear": "int6"}
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "_scaled_mm"}
SDPA = {"_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "scaled_dot_product_attention"}


def op_base(func) -> tuple[str, str]:
    """(namespace, op name without overload or _backward), e.g. ("triton_golf", "rms_norm")."""
    namespace, _, name = func._schema.name.partition("::")
    return namespace, name.removesuffix("_backward")


def family_of(func) -> str:
    """The op family (kernels.ops) of a Triton op; for aten ops a kind: matmul, attention (SDPA), glue."""
    namespace, name = op_base(func)
    if namespace == "triton_golf":
        return CUSTOM_FAMILY.get(name, name)
    if name in MATMULS:
        return "matmul (cuBLAS)"
    if name in SDPA:
        return "attention"
    return "glue (aten; unfused bytes)"


def _rows(x: torch.Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1)


def custom_flops(func, args) -> float:
    """Tensor-core FLOPs of one Triton op call (the memory-bound families count 0; the attention backward is
    `attention_backward_launches`)."""
    namespace, name = op_base(func)
    backward = func._schema.name.endswith("_backward")
    if name == "causal_gqa_attention":
        B, T, H, D = args[0].shape
        return attention_kernel_flops(B, T, H, D, False)
    if name == "relu2_mlp":
        x, w_up, w_down = (args[1], args[3], args[4]) if backward else args[:3]
        fwd = 2 * _rows(x) * (w_up.numel() + w_down.numel())
        return 2 * fwd if backward else fwd
    if name == "softcap_cross_entropy":
        x, weight = args[:2]
        fwd = 2 * _rows(x) * weight.numel()
        return 2 * fwd if backward else fwd
    if name == "int6_linear":
        x, scales, k = args[0], args[2], args[3]
        return 2 * _rows(x) * scales.numel() * k
    return 0.0


def attention_backward_launches(q: torch.Tensor, kv_heads: int, dq_mode: str) -> list[tuple[float, float]]:
    """(FLOPs, bytes) of each launch of the attention backward (kernels/attention_backward.py) by dQ mode, for
    q of shape (B, T, H, D) in its dtype; the preprocess pass (delta = rowsum(dO * O)) is counted with the main
    kernel's reads. Matmul units per (key, query) tile: the forward has 2, the backward's main kernel 5 with
    dQ_part (two_stage, atomic) or 4 without (separate), whose dQ kernel recomputes S and dP (3 units).
      - two_stage: the main kernel writes an fp32 scratch of dQ partials, a reduce kernel reads it once;
      - atomic: fp32 atomic adds into one fp32 dQ (its lines leave L2 at least once each way: the seed's
        accumulator is about 4x L2), then a scale + cast pass;
      - separate: no scratch; the dQ kernel reads q, k, v, dO, lse, delta again."""
    from kernels.attention_backward import BWD_BLOCK_N, two_stage_rows

    B, T, H, D = q.shape
    half = q.element_size()
    fwd = attention_kernel_flops(B, T, H, D, False)
    q_like = B * T * H * D * half          # q, dO, O, dQ
    kv_like = B * T * kv_heads * D * half  # k, v, dK, dV
    rows = B * H * T * 4                   # lse, delta (fp32)
    main_io = 3 * q_like + 4 * kv_like + 2 * rows  # reads q, dO, O, k, v, lse; writes dK, dV, delta
    acc = B * H * T * D * 4
    if dq_mode == "two_stage":
        scratch = B * H * two_stage_rows(T, BWD_BLOCK_N[D]) * D * 4
        return [(2.5 * fwd, main_io + scratch), (0.0, scratch + q_like)]
    if dq_mode == "atomic":
        return [(2.5 * fwd, main_io + 2 * acc), (0.0, acc + q_like)]
    if dq_mode == "separate":
        return [(2.0 * fwd, main_io), (1.5 * fwd, 2 * q_like + 2 * kv_like + 2 * rows + q_like)]
    raise ValueError(f"unknown dq_mode {dq_mode!r}")


def launches_seconds(launches: list[tuple[float, float]], gpu: GPU) -> float:
    """The roofline lower bound of launches run one after another."""
    return sum(max(f / gpu.bf16_flops, b / gpu.hbm_bytes) for f, b in launches)


def attention_scratch_bytes(q: torch.Tensor, dq_mode: str) -> int:
    """Bytes of the attention backward's transient fp32 dQ buffer by mode (two_stage: the partials; atomic: the
    accumulator; separate: none): the memory projection's largest temporary."""
    from kernels.attention_backward import BWD_BLOCK_N, two_stage_rows

    B, T, H, D = q.shape
    if dq_mode == "two_stage":
        return B * H * two_stage_rows(T, BWD_BLOCK_N[D]) * D * 4
    return B * H * T * D * 4 if dq_mode == "atomic" else 0


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    calls: int = 0
    seconds: dict = dataclasses.field(default_factory=lambda: defaultdict(float))  # per GPU name

    def add(self, launches: list[tuple[float, float]]) -> None:
        self.flops += sum(f for f, _ in launches)
        self.bytes += sum(b for _, b in launches)
        self.calls += 1
        for gpu in GPUS:
            self.seconds[gpu.name] += launches_seconds(launches, gpu)


def call_cost(func, args, kwargs, out, dq_mode: str | None = None) -> list[tuple[float, float]]:
    """(FLOPs, bytes) of each launch of one logged op call (one launch unless the op is the attention
    backward, whose launches depend on the dQ mode: `dq_mode` overrides the call's own)."""
    ins, outs = io_tensors(args, kwargs, out)
    seen, nbytes = set(), 0
    for t in ins + outs:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            nbytes += tensor_bytes(t)
    namespace, name = op_base(func)
    if namespace == "triton_golf":
        if name == "causal_gqa_attention" and func._schema.name.endswith("_backward"):
            return attention_backward_launches(args[1], args[2].size(2), dq_mode or args[8])
        flops = custom_flops(func, args)
    else:
        formula = flop_registry.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0.0
    return [(float(flops), float(nbytes))]


def aten_backward_cost(func, args, kwargs, out) -> tuple[float, float] | None:
    """(FLOPs, bytes) of the autograd backward of one forward aten call, estimated (the engine cannot run on
    fake CUDA tensors): matmuls 2x their FLOPs (dX and dW), every call reads its output's gradient and its
    saved inputs and writes its inputs' gradients. None for calls on no floating tensors (indices)."""
    ins, outs = io_tensors(args, kwargs, out)
    floats_in = [t for t in ins if t.is_floating_point()]
    if not floats_in or not any(t.is_floating_point() for t in outs):
        return None
    [(flops, _)] = call_cost(func, args, kwargs, out)
    nbytes = sum(map(tensor_bytes, outs)) + 2 * sum(map(tensor_bytes, floats_in))
    return 2 * flops if op_base(func)[1] in MATMULS else 0.0, float(nbytes)


def dq_mode_seconds(shape: tuple[int, int, int, int], kv_heads: int, gpu: GPU,
                    dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Projected seconds of one attention backward per dQ mode at q shape (B, T, H, D)."""
    from kernels.attention import DQ_MODES

    q = torch.empty(shape, dtype=dtype, device="meta")
    return {mode: launches_seconds(attention_backward_launches(q, kv_heads, mode), gpu) for mode in DQ_MODES}


def fastest_deterministic_dq_mode(seconds: dict[str, float]) -> str:
    """The dQ mode the projection picks as default: the fastest of the deterministic ones ("atomic" sums in a
    run-dependent order, so it stays opt-in until a GPU shows the deterministic ones more than 5 % slower)."""
    return min((m for m in seconds if m != "atomic"), key=lambda m: seconds[m])


