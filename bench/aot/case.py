"""What to compile: one `Case` per (kernel, launch variant, config), built by the spec modules.

A case holds the JIT function and the arguments a launcher would pass it (tensors as Triton's MockTensor of
the launch dtype, integers at the seed model's sizes), so Triton specializes it exactly as a real launch
would (16-divisible pointers and integers, integers equal to 1 as constants). The sizes come from the seed
presets in model/config.py and train/config.py, the configs from the kernel modules: the report follows
the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from triton.runtime.jit import JITFunction, MockTensor


@dataclass(frozen=True)
class SeedShapes:
    """The sizes the seed model launches its kernels at (seed-spec §1.3, §3)."""

    model_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_dims: int
    mlp_hidden: int
    vocab: int
    seq_len: int
    tokens: int  # per micro-batch on one GPU (48 x 2048)
    small_m: int  # a row count on the small-M side of the int6 autotune split


def seed_shapes() -> SeedShapes:
    from model.config import get_config
    from train.config import get_train_config

    cfg, tcfg = get_config("seed"), get_train_config("seed")
    return SeedShapes(model_dim=cfg.model_dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                      head_dim=cfg.head_dim, rope_dims=cfg.rope_dims, mlp_hidden=cfg.mlp_hidden,
                      vocab=cfg.vocab_size, seq_len=cfg.seq_len, tokens=tcfg.batch_tokens // tcfg.accum_total,
                      small_m=64)


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def fp32_dot_precisions(precision_of) -> list[str]:
    """The dot precisions a launcher's `precision_of(torch.float32)` gives under torch's two fp32 matmul settings
    ("highest": exact, "high": TF32), deduplicated, in that order."""
    saved = torch.get_float32_matmul_precision()
    try:
        out = []
        for setting in ("highest", "high"):
            torch.set_float32_matmul_precision(setting)
            out.append(precision_of(torch.float32))
        return list(dict.fromkeys(out))
    finally:
        torch.set_float32_matmul_precision(saved)


def launch_cases(kernel: str, variant: str, tuned, args: tuple, flags: dict, fixed: dict | None,
                 named_args: dict | None = None) -> list:
    """The cases of one launch path: the fixed launch kwargs the launcher picks (a default config), or, when it
    picks none (`fixed` is None), every config of its autotuner `tuned`."""
    if fixed is not None:
        return [fixed_case(kernel, variant, tuned, args, flags, **fixed)]
    return autotuned_cases(kernel, variant, tuned, args, flags, named_args)


def mock(dtype: torch.dtype) -> MockTensor:
    """A stand-in tensor of `dtype` (data_ptr 0: 16-byte aligned, as torch's allocations are)."""
    return MockTensor(dtype)


@dataclass
class Case:
    """One compile: `fn[grid](*args, **kwargs)` as the launcher would call it.

    kernel: short name ("mlp._relu2_matmul_kernel"); variant: the launch path ("fwd bf16"); default: launched
    with this config without autotuning (a spill there is an error); kwargs: constexprs and
    num_warps / num_stages (launch options); archs: the only archs that launch it (a per-arch config list),
    empty for all.
    """

    kernel: str
    variant: str
    fn: Any
    args: tuple
    kwargs: dict
    default: bool
    config: str = field(default="")
    archs: tuple = ()

    def __post_init__(self):
        if not self.config:
            self.config = config_label(self.kwargs)


def config_label(kwargs: dict) -> str:
    """"BLOCK_M=128 BLOCK_N=64 w4 s3" from launch kwargs (block sizes first, then warps and stages)."""
    blocks = [f"{k}={v}" for k, v in kwargs.items() if k.startswith("BLOCK")]
    launch = [f"w{kwargs.get('num_warps', 4)}", f"s{kwargs.get('num_stages', 3)}"]
    return " ".join(blocks + launch)


def autotuned_cases(kernel: str, variant: str, tuned, args: tuple, flags: dict, named_args: dict | None = None):
    """Cases for every config of the autotuner `tuned` that its early_config_prune keeps for `named_args`."""
    configs = tuned.configs
    prune = getattr(tuned, "early_config_prune", None)
    if prune is not None and named_args is not None:
        configs = prune(configs, named_args)
    return [Case(kernel, variant, tuned.fn, args, {**flags, **c.all_kwargs()}, default=len(tuned.configs) == 1)
            for c in configs]


def fixed_case(kernel: str, variant: str, fn, args: tuple, flags: dict, config=None, **launch) -> Case:
    """A case launched without autotuning (a default config): `config` is a triton.Config or None (launch kwargs
    given directly); a JIT function's defaults num_warps=4, num_stages=3 apply when not given."""
    kwargs = {**flags, **(config.all_kwargs() if config is not None else {}), **launch}
    kwargs.setdefault("num_warps", 4)
    kwargs.setdefault("num_stages", 3)
    while not isinstance(fn, JITFunction):  # an Autotuner (or Heuristics) launched directly: its .fn
        if not hasattr(fn, "fn"):
            raise TypeError(f"{kernel}: {fn!r} is not a Triton JIT function or a wrapper of one")
        fn = fn.fn
    return Case(kernel, variant, fn, args, kwargs, default=True)
