"""Read a trained model file or training checkpoint: a torch.save'd {"config": dict, "model": state_dict}.

Both final_model.pt (written by train, holding the EMA weights under "model") and train.checkpoint files have
these two keys; anything else in the file (optimizer, EMA, loader, RNG state) is ignored. Loading uses
weights_only=True, so no arbitrary pickle code runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def load_model_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict of tensors) from a model file or training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "config" not in obj or "model" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with keys 'config' and 'model', found {keys}")
    config, state = obj["config"], obj["model"]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' is a {type(config).__name__}, expected a dict (ModelConfig.to_dict())")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'model' is not a state dict of tensors")
    return config, dict(state)
