"""The one rule for launching a tuned kernel without its autotuner, shared by the matmul-shaped kernel families.

Explicit blocks win (tests, the AOT report): a `triton.Config` brings its warps and stages too, a tuple names the
block sizes only (Triton's default warps and stages). Without them, the interpreter may run one fixed tile (it
cannot benchmark), fp32 on a GPU runs the family's one small non-spilling config, and everything else autotunes.
"""
from __future__ import annotations

import torch
import triton


def fixed_launch(dtype: torch.dtype, blocks, block_names: tuple[str, ...], fp32_config: triton.Config,
                 interpret: bool, interpret_blocks: tuple[int, ...] | None = None) -> dict | None:
    """Launch kwargs that skip the autotuner, or None to autotune (see the module docstring for the order).
    `interpret`: whether the family's kernels were decorated under the interpreter (each family module reads it
    at import, so a test can set it there)."""
    if isinstance(blocks, triton.Config):
        return blocks.all_kwargs()
    if blocks is not None:
        return dict(zip(block_names, blocks))
    if interpret and interpret_blocks is not None:
        return dict(zip(block_names, interpret_blocks))
    if dtype == torch.float32 and not interpret:
        return fp32_config.all_kwargs()
    return None
