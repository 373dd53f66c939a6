"""The one rule for launching a tuned kernel without its autotuner, shared by the matmul-shaped kernel families.

Explicit blocks win (tests, the AOT report): a `triton.Config` brings its warps and stages too, a tuple names the
block sizes only (Triton's default warps and stages). Either is checked up front: every block a power of two
(tl.arange's rule) of at least 16 (tl.dot's smallest tile), so a bad one fails with a clear error here instead of
deep inside Triton's compiler. Without them, the interpreter may run one fixed tile (it cannot benchmark), fp32
on a GPU runs the family's one small non-spilling config, and everything else autotunes.
"""
from __future__ import annotations

import torch
import triton

MIN_BLOCK = 16  # tl.dot's smallest tile side


def check_blocks(family: str, blocks, block_names: tuple[str, ...]) -> None:
    """ValueError unless explicit `blocks` (a tuple, or a triton.Config naming every block) hold one power of two
    >= MIN_BLOCK per name in `block_names`; `family` names the kernel family in the message."""
    values = tuple(blocks.kwargs.get(k) for k in block_names) if isinstance(blocks, triton.Config) else tuple(blocks)
    if len(values) != len(block_names) or not all(
            isinstance(b, int) and b >= MIN_BLOCK and b & (b - 1) == 0 for b in values):
        raise ValueError(f"{family}: blocks ({', '.join(block_names)}) must each be a power of two >= {MIN_BLOCK}, "
                         f"got {blocks}")


def fixed_launch(family: str, dtype: torch.dtype, blocks, block_names: tuple[str, ...], fp32_config: triton.Config,
                 interpret: bool, interpret_blocks: tuple[int, ...] | None = None) -> dict | None:
    """Launch kwargs that skip the autotuner, or None to autotune (see the module docstring for the order).
    `interpret`: whether the family's kernels were decorated under the interpreter (each family module reads it
    at import, so a test can set it there). ValueError on bad explicit blocks (check_blocks)."""
    if blocks is not None:
        check_blocks(family, blocks, block_names)
    if isinstance(blocks, triton.Config):
        return blocks.all_kwargs()
    if blocks is not None:
        return dict(zip(block_names, blocks))
    if interpret and interpret_blocks is not None:
        return dict(zip(block_names, interpret_blocks))
    if dtype == torch.float32 and not interpret:
        return fp32_config.all_kwargs()
    return None
