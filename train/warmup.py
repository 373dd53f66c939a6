"""PR #598's warm-up (seed-spec §1.3): real optimizer steps on the first batches, then everything put back.

The seed ran WARMUP_STEPS=20 full steps (forward, backward, optimizer step at the initial learning rates and
momentum, no clipping) to prime torch.compile, then restored the initial weights and optimizer states and
re-created its loader, so training starts from the same weights on the same first batch. What it did not put
back: the gradient of bigram.scale, the parameter in no optimizer. Its zero_grad cleared only the optimizers'
parameters, so that gradient (the sum over the warm-up steps) carried into training, added to every step's
gradient and counted toward the clip norm. `seed_warmup` does the same; the training loop then keeps or clears
it (TrainConfig.accumulate_bigram_scale_grad).
"""
from __future__ import annotations

import copy
import time

import torch

from train.step import backward_micro_batches


def seed_warmup(steps: int, train_model: torch.nn.Module, model: torch.nn.Module, optimizers: list, loader,
                grad_accum: int, world: int, autocast) -> float:
    """Run `steps` warm-up steps, then restore the weights, the optimizers' states (and hyper-parameters) and
    the loader's position; gradients of parameters in no optimizer stay as the steps left them. Returns seconds.
    Every rank must call it (under DDP the backward all-reduces)."""
    start = time.perf_counter()
    weights = {name: t.detach().clone() for name, t in model.state_dict().items()}
    states = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
    position = loader.state_dict()
    for _ in range(steps):
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        backward_micro_batches(train_model, loader, grad_accum, world, autocast)
        for opt in optimizers:
            opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    model.load_state_dict(weights)
    for opt, state in zip(optimizers, states, strict=True):
        opt.load_state_dict(state)
    loader.load_state_dict(position)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start
