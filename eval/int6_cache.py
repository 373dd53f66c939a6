"""Int6 weights by size: the int6-dequant kernel at small M, dense weights dequantized once and cached at large M.

Why: a weight-only int6 matmul saves weight bytes, which only matters while the matmul is memory-bound. For the
seed's shapes (K = 512, N up to 1536) the arithmetic intensity reaches the H100's ridge near M = 300 rows
(../shared/spec/anchors.md §3), so above a few hundred rows the fused kernel can at best tie cuBLAS. Scoring
batches (32 windows x 2048 = 65,536 rows) and TTT micro-batches (16 x 2048) are far above that: there the
matrices run as dense weights in the autocast dtype (bf16 on CUDA, fp32 on the CPU), dequantized once per
evaluation (int6 matrices never train: TTT keeps them on its frozen blocks) and multiplied by cuBLAS.

The crossover is one number, `INT6_KERNEL_MAX_ROWS`: calls with at most that many rows take the kernel. Its
value is the roofline estimate above until a GPU measures it: `crossover_from_bench(cases)` reads the benchmark's
`int6_linear` cases (bench/test_bench_kernels.py: the Triton kernel against `dequant_once`, the cached dense
weight through cuBLAS) and returns the largest measured M at which the kernel still wins at every shape.

`route_int6_by_size(model)` gives every Linear holding int6 weights an op namespace whose `int6_linear` picks
the path by the call's row count (static under torch.compile: one branch per compiled shape). GPT.set_backend /
set_kernels give every module a fresh op namespace, so route after switching kernels, not before.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

INT6_KERNEL_MAX_ROWS = 256  # at most this many rows: the int6-dequant kernel; more: cached dense weights


def dequantize(packed: torch.Tensor, scales: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The dense (N, K) weight of packed int6 rows (kernels.int6_layout) with per-row scales, in `dtype`."""
    from kernels.int6_layout import unpack_int6

    return (unpack_int6(packed, in_features).to(torch.float32) * scales.to(torch.float32)[:, None]).to(dtype)


class Int6BySize:
    """A Linear's op namespace with `int6_linear` routed by size; every other op is the wrapped namespace's."""

    def __init__(self, ops, dense: torch.Tensor, max_rows: int):
        self.ops, self.dense, self.max_rows = ops, dense, max_rows

    def __getattr__(self, name):
        try:
            ops = self.__dict__["ops"]
        except KeyError:  # a copy being built (copy.deepcopy) has no ops yet
            raise AttributeError(name) from None
        return getattr(ops, name)

    def int6_linear(self, x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, in_features: int):
        if x.numel() // in_features <= self.max_rows:
            return self.ops.int6_linear(x, packed, scales, in_features)
        weight = self.dense
        if not torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
        return F.linear(x, weight)


def route_int6_by_size(model: torch.nn.Module, max_rows: int = INT6_KERNEL_MAX_ROWS,
                       dtype: torch.dtype | None = None) -> int:
    """Route every int6 Linear of `model` by size (see the module docstring); returns how many were routed.

    `dtype` of the cached weights: default bf16 on CUDA (the autocast dtype of eval), else fp32."""
    routed = 0
    for module in model.modules():
        if not getattr(module, "has_int6", False):
            continue
        ops = module.ops.ops if isinstance(module.ops, Int6BySize) else module.ops
        device = module.int6_packed.device
        cached = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        dense = dequantize(module.int6_packed, module.int6_scales, module.in_features, cached)
        module.ops = Int6BySize(ops, dense, max_rows)
        routed += 1
    return routed


def crossover_from_bench(cases: list[dict]) -> int | None:
    """The largest M at which the Triton int6 kernel beat the cached dense weight (`dequant_once`) at every (N, K)
    in the benchmark's forward int6_linear cases; None when the cases do not hold both variants."""
    times: dict[tuple[int, str], dict[str, float]] = {}
    for case in cases:
        match = re.fullmatch(r"int6_linear M=(\d+) N=(\d+) K=(\d+)", case.get("case") or "")
        if match and case.get("variant") in ("triton", "dequant_once") and case.get("ms"):
            times.setdefault((int(match[1]), f"{match[2]}x{match[3]}"), {})[case["variant"]] = case["ms"]
    rows = sorted({m for m, _ in times})
    wins = {m: all(t["triton"] <= t["dequant_once"] for (mm, _), t in times.items() if mm == m and len(t) == 2)
            for m in rows if any(len(t) == 2 for (mm, _), t in times.items() if mm == m)}
    if not wins:
        return None
    best = 0
    for m in sorted(wins):
        if not wins[m]:
            break
        best = m
    return best
