"""Training checkpoints and the final model file: atomic torch.save, loadable with weights_only=True, checksummed.

A checkpoint holds everything a resumed run needs to continue bit-identically on CPU: the model config and the
live weights ("config", "model", the same keys as a final model file, so quant and eval accept either), the EMA,
both optimizers' states, the loader position, the step, the training time so far, whether late QAT has fired, the
accumulated gradients of the parameters in no optimizer ("orphan_grads": PR #598's bigram.scale, train.warmup;
absent in older checkpoints) and the torch RNG states (as uint8 tensors; the job uses no numpy or python
randomness). Nothing in it needs pickle.

Both kinds of file also carry "provenance" (common.provenance: tokenizer fingerprint, data identity) and
"content_sha256", a sha256 over every value in the file (tensor bytes, in key order). torch's zip reader checks
no checksum, so without it a flipped exponent bit loads as an inf weight and trains on; with it the load fails
with "checksum mismatch". Files without the checksum (written before it existed) load with a warning line.
Every load error is one line saying what the file is not; none suggests loading without weights_only.
"""
from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from common.atomic import atomic_write_with

FORMAT = "triton-golf-train-checkpoint-v1"
REQUIRED_KEYS = ("format", "config", "train_config", "model", "ema", "optimizers", "loader", "step", "rng")
DIGEST_KEY = "content_sha256"
_ZIP_MAGIC = b"PK\x03\x04"


class ModelFile(NamedTuple):
    """What quant and eval read from a final model file or a training checkpoint."""
    config: dict
    state: dict
    provenance: dict | None
    kind: str  # "model file" | "training checkpoint"


def _feed(h, obj) -> None:
    """Hash `obj` canonically: dict keys sorted, tensors as dtype + shape + raw bytes, other values by repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{str(t.dtype)}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(f"K{key!r}".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(f"V{obj!r}".encode())


def content_digest(obj: dict) -> str:
    """sha256 (hex) over every value of a checkpoint or model-file dict except the digest itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != DIGEST_KEY})
    return h.hexdigest()


def atomic_torch_save(obj, path) -> Path:
    """torch.save to a temp file in the target directory, fsync, then os.replace."""
    return atomic_write_with(path, lambda f: torch.save(obj, f))


def sealed_save(obj: dict, path) -> Path:
    """atomic_torch_save with the content checksum added."""
    return atomic_torch_save({**obj, DIGEST_KEY: content_digest(obj)}, path)


def _load_verified(path, what: str) -> dict:
    """torch.load(weights_only=True) a dict and verify its checksum; ValueError in one line when it is not `what`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        raise ValueError(f"{path}: not a {what} (not a torch-saved file: it starts with {head!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text advises turning weights_only off: not repeated here, the file is simply not ours
        raise ValueError(f"{path}: not a {what}: it holds Python objects beyond tensors and plain values, "
                         "which are never loaded") from exc
    except Exception as exc:  # RuntimeError from the zip reader, EOFError, ...: a damaged or truncated file
        reason = str(exc).split(". ")[0].split("\n")[0][:160]
        raise ValueError(f"{path}: not a readable {what}: the file is damaged or truncated ({reason})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a {what} (it holds a {type(obj).__name__}, not a dict)")
    recorded = obj.get(DIGEST_KEY)
    if recorded is None:
        print(f"warning: {path} carries no content checksum (written before checksums were recorded); "
              "a damaged value would go unnoticed", file=sys.stderr, flush=True)
    elif recorded != content_digest(obj):
        raise ValueError(f"{path}: checksum mismatch: the {what}'s contents changed after it was written "
                         "(a damaged file); use another copy")
    return obj


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
                    late_qat: bool, metrics: dict | None = None, provenance: dict | None = None,
                    orphan_grads: dict | None = None) -> Path:
    return sealed_save({
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
        "orphan_grads": {name: g.detach().cpu().clone() for name, g in (orphan_grads or {}).items()},
        "rng": rng_state(),
        "metrics": metrics or {},
        "provenance": provenance,
    }, path)


def load_checkpoint(path) -> dict:
    """Load and check a training checkpoint (CPU tensors): one-line errors for a missing, foreign or damaged file."""
    ckpt = _load_verified(path, "training checkpoint")
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a training checkpoint (format tag {FORMAT!r} missing)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint is missing keys {missing}")
    return ckpt


def save_model_file(path, model_config: dict, state_dict: dict, provenance: dict | None = None) -> Path:
    """The trained-model file quant and eval read: {"config": ModelConfig.to_dict(), "model": state_dict,
    "provenance": ..., "content_sha256": ...}."""
    return sealed_save({"config": model_config,
                        "model": {k: v.detach().cpu() for k, v in state_dict.items()},
                        "provenance": provenance}, path)


def read_model_file(path) -> ModelFile:
    """(config, state dict, provenance, kind) from a final model file or a training checkpoint (whose "model" is
    the live weights); one-line errors for anything else."""
    obj = _load_verified(path, "model file or training checkpoint")
    if "config" not in obj or "model" not in obj:
        raise ValueError(f"{path}: not a model file or training checkpoint (expected keys 'config' and 'model', "
                         f"found {sorted(map(str, obj))[:8]})")
    config, state = obj["config"], obj["model"]
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' is a {type(config).__name__}, expected a dict (ModelConfig.to_dict())")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'model' is not a state dict of tensors")
    provenance = obj.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"{path}: 'provenance' is a {type(provenance).__name__}, not a dict")
    kind = "training checkpoint" if obj.get("format") == FORMAT else "model file"
    if kind == "training checkpoint" and isinstance(obj.get("late_qat"), bool):  # its own record of late QAT
        from common.provenance import LATE_QAT_KEY
        provenance = {**(provenance or {}), LATE_QAT_KEY: obj["late_qat"]}
    return ModelFile(config, dict(state), provenance, kind)
