"""Build an evaluation model from a compressed artifact or a trained model / training checkpoint file.

An artifact is recognised by its magic bytes (quant.artifact.MAGIC) and read with quant.artifact (pickle-free,
dequantized to float); any other file must be a weights-only torch file holding {"config", "model"}
(quant.model_file). With `int6_kernel`, the int6 block matrices are also handed to their Linear layers
(set_int6) so the forward runs the int6-dequant matmul on the packed weights instead of the float copies.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def is_artifact(path: str | os.PathLike) -> bool:
    """True when the file starts with the artifact magic."""
    from quant.artifact import MAGIC
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", backend: str | None = None,
               int6_kernel: bool = False, int6_prefixes: tuple[str, ...] | None = None):
    """(GPT in eval mode on `device`, its ModelConfig, the source kind "artifact" | "model_file").

    `int6_prefixes` limits the int6 kernel to the matrices whose names start with one of them (TTT keeps
    int6 only on its frozen blocks: the trained ones need float weights)."""
    from model.config import ModelConfig
    from model.gpt import GPT

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    int6 = {}
    if is_artifact(path):
        kind = "artifact"
        if int6_kernel:
            from quant.artifact import load_artifact_int6
            config, state, int6 = load_artifact_int6(path)
        else:
            from quant.artifact import load_artifact
            config, state = load_artifact(path)
    else:
        kind = "model_file"
        if int6_kernel:
            raise ValueError(f"{path}: --int6-kernel needs a quantized artifact (quant.artifact), "
                             "not a float model file")
        from quant.model_file import load_model_file
        config, state = load_model_file(path)
    try:
        cfg = ModelConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its model config is not a valid ModelConfig ({e})") from e
    if backend is not None:
        cfg.backend = backend
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model its config describes ({e})") from e
    model.to(device)
    modules = dict(model.named_modules())
    for name, (packed, scales) in int6.items():
        if int6_prefixes is not None and not name.startswith(int6_prefixes):
            continue
        module_name = name.removesuffix(".weight")
        if module_name not in modules or not hasattr(modules[module_name], "set_int6"):
            raise ValueError(f"{path}: int6 tensor {name} does not belong to a model Linear layer")
        modules[module_name].set_int6(packed, scales)
    model.eval()
    return model, cfg, kind
