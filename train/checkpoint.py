"""Training checkpoints and the final model file: atomic torch.save, loadable with weights_only=True.

A checkpoint holds everything a resumed run needs to continue bit-identically on CPU: the model config and the
live weights ("config", "model", the same keys as a final model file, so quant and eval accept either), the EMA,
both optimizers' states, the loader position, the step, the training time so far, the late-QAT flag and the torch
RNG states (as uint8 tensors; the job uses no numpy or python randomness). Nothing in it needs pickle.
"""
from __future__ import annotations

from pathlib import Path

import torch

from train.atomic import atomic_write_with

FORMAT = "triton-golf-train-checkpoint-v1"
REQUIRED_KEYS = ("format", "config", "train_config", "model", "ema", "optimizers", "loader", "step", "rng")


def atomic_torch_save(obj, path) -> Path:
    """torch.save to a temp file in the target directory, fsync, then os.replace."""
    return atomic_write_with(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, *, model_config: dict, train_config: dict, model_state: dict, ema_state: dict,
                    optimizer_states: dict, loader_state: dict, step: int, train_time_ms: float,
                    late_qat: bool, metrics: dict | None = None) -> Path:
    return atomic_torch_save({
        "format": FORMAT,
        "config": model_config,
        "train_config": train_config,
        "model": model_state,
        "ema": ema_state,
        "optimizers": optimizer_states,
        "loader": {k: int(v) for k, v in loader_state.items()},
        "step": int(step),
        "train_time_ms": float(train_time_ms),
        "late_qat": bool(late_qat),
        "rng": rng_state(),
        "metrics": metrics or {},
    }, path)


def load_checkpoint(path) -> dict:
    """Load and check a training checkpoint (CPU tensors); clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights-only files
        raise ValueError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a training checkpoint (format tag {FORMAT!r} missing)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing keys {missing}")
    return ckpt


def save_model_file(path, model_config: dict, state_dict: dict) -> Path:
    """The trained-model file quant and eval read: {"config": ModelConfig.to_dict(), "model": state_dict}."""
    return atomic_torch_save({"config": model_config,
                              "model": {k: v.detach().cpu() for k, v in state_dict.items()}}, path)
