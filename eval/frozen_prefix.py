"""Opt-in (`TTTConfig(detach_frozen=True)`, `--ttt-detach-frozen`): TTT's frozen blocks run under no_grad.

Why it is not the default: the frozen blocks (0 and 1) sit between the embeddings and the rest of the model, and
the embeddings train (598's TTT optimizer took every parameter outside the frozen blocks, spec §6.3). Their
gradient flows back through the frozen blocks, so the exact recipe needs those blocks' backward (dgrad, no weight
gradient) and the activations it reads. Under no_grad the blocks save nothing and skip that backward (about 18 of
219 MFLOP per trained token at the seed shapes, bench.eval_accounting), but the embeddings then learn only through the
paths that bypass the frozen blocks (x0 into every later block, the tied head): a different TTT recipe, with its
own score. Scoring is unchanged (it runs under no_grad anyway).
"""
from __future__ import annotations

from typing import Callable

import torch


def detach_frozen_blocks(model: torch.nn.Module, num_blocks: int) -> Callable[[], None]:
    """Run model.blocks[:num_blocks] under no_grad from now on; returns the function that undoes it."""
    wrapped = []
    for block in list(model.blocks)[:num_blocks]:
        forward = block.forward  # the bound class method

        def no_grad_forward(*args, _forward=forward, **kwargs):
            with torch.no_grad():
                return _forward(*args, **kwargs)
        block.forward = no_grad_forward
        wrapped.append(block)

    def undo() -> None:
        for block in wrapped:
            del block.forward  # back to the class's forward
        wrapped.clear()
    return undo
