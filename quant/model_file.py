"""Read a trained model file or training checkpoint: a torch.save'd {"config": dict, "model": state_dict}.

Both final_model.pt (written by train, holding the EMA weights under "model") and common.checkpoint files have
these two keys; anything else in the file (optimizer, EMA, loader, RNG state) is ignored. Loading uses
weights_only=True, so no arbitrary pickle code runs, and verifies the file's content checksum
(common.checkpoint.read_model_file, which also returns the file's provenance).
"""
from __future__ import annotations

import os

import torch


def load_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict of tensors) from a model file or training checkpoint."""
    from common.checkpoint import read_model_file

    model_file = read_model_file(path)
    return model_file.config, model_file.state
