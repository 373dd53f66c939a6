"""Exponential moving average of all model weights in an fp32 copy (seed-spec §4.4): ema <- d*ema + (1-d)*theta.

Updated after every optimizer step; the final model is the EMA cast back to each tensor's storage dtype.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = model.state_dict()
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        current = [live[k].detach().float() for k in keys]
        torch._foreach_mul_(shadow, self.decay)
        torch._foreach_add_(shadow, current, alpha=1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(state))
            raise ValueError(f"EMA state keys differ from the model's: missing {missing}, "
                             f"unexpected {sorted(set(state) - set(self.shadow))}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The EMA weights cast to the dtypes of the model's own tensors (what the final model file holds)."""
        live = model.state_dict()
        return {k: v.to(live[k].dtype).clone() for k, v in self.shadow.items()}
