"""Build an evaluation model from a compressed artifact or a trained model / training checkpoint file.

An artifact is recognised by its magic bytes (quant.artifact.MAGIC) and read with quant.artifact (pickle-free,
dequantized to float); any other file must be a weights-only torch file holding {"config", "model"}
(common.checkpoint.read_model_file, which verifies its checksum). Nothing is built before it is checked
(model.validate, quant.validate): the config's fields must be within bounds and the file's tensors exactly the
names and shapes that config builds, so a damaged or hostile file cannot make the loader allocate more than the
file holds. For an artifact the check runs on its manifest, before the payload is even decompressed. Weights must
be finite.
With `int6_kernel`, the int6 block matrices are also handed to their Linear layers (set_int6) so the forward
runs the int6-dequant matmul on the packed weights instead of the float copies. A parameter the file holds in
bf16 stays bf16 in the built model (`keep_stored_dtypes`): PR #598 trained, stored and test-time-trained its
tok_emb in bf16 (train.config.TrainConfig.tok_emb_dtype), and an artifact restores each tensor's dtype.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch


class ModelSource(NamedTuple):
    """A checked model file or artifact, not yet built into a model."""
    config: object          # model.config.ModelConfig
    state: dict             # name -> float tensor
    int6: dict              # name -> (packed uint8, fp32 scales); artifacts read with int6_kernel only
    provenance: dict | None  # common.provenance fields, None for files written before they were recorded
    kind: str               # "artifact" | "model_file"


def is_artifact(path: str | os.PathLike) -> bool:
    """True when the file starts with the artifact magic."""
    from quant.artifact import MAGIC
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _check_finite(state: dict, where: str) -> None:
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{where}: non-finite weights in {bad[:3]}{' ...' if len(bad) > 3 else ''}; the file is "
                         "damaged or came from a diverged run")


def read_model_source(path: str | os.PathLike, *, int6_kernel: bool = False) -> ModelSource:
    """Read and check an artifact or model file without building the model (see the module docstring)."""
    from model.validate import check_model_tensors
    from quant.validate import manifest_shapes

    path = Path(path)
    where = str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not an artifact or model file")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    int6, checked = {}, {}
    if is_artifact(path):
        kind = "artifact"

        def check_manifest(manifest: dict) -> None:
            checked["cfg"] = check_model_tensors(manifest.get("config"), manifest_shapes(manifest, where), where)
            provenance = manifest.get("provenance")
            if provenance is not None and not isinstance(provenance, dict):
                raise ValueError(f"{where}: the manifest's provenance is a {type(provenance).__name__}, not a dict")
            checked["provenance"] = provenance

        if int6_kernel:
            from quant.artifact import load_artifact_int6
            _, state, int6 = load_artifact_int6(path, check_manifest=check_manifest)
        else:
            from quant.artifact import load_artifact
            _, state = load_artifact(path, check_manifest=check_manifest)
        cfg, provenance = checked["cfg"], checked["provenance"]
    else:
        kind = "model_file"
        if int6_kernel:
            raise ValueError(f"{path}: --int6-kernel needs a quantized artifact (quant.artifact), "
                             "not a float model file")
        from common.checkpoint import read_model_file
        try:
            model_file = read_model_file(path)
        except ValueError as e:
            if "not a torch-saved file" in str(e):
                raise ValueError(f"{path}: not a triton-golf artifact, model file or training checkpoint "
                                 f"(unrecognised contents)") from e
            raise
        state, provenance = model_file.state, model_file.provenance
        cfg = check_model_tensors(model_file.config, {k: tuple(v.shape) for k, v in state.items()}, where)
    _check_finite(state, where)
    return ModelSource(cfg, state, int6, provenance, kind)


def keep_stored_dtypes(model: torch.nn.Module, state: dict) -> list[str]:
    """Store every parameter of `model` that `state` holds in bf16 in bf16 too (after load_state_dict, which
    copies into the model's fp32 parameters); returns their names."""
    names = []
    for name, p in model.named_parameters():
        stored = state.get(name)
        if stored is not None and stored.dtype == torch.bfloat16 and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
            names.append(name)
    return names


def build_model(source: ModelSource, *, device: str | torch.device = "cpu", backend: str | None = None,
                int6_prefixes: tuple[str, ...] | None = None, where: str = "model"):
    """The GPT in eval mode on `device` for a checked source (its int6 matrices set where asked)."""
    import dataclasses

    from model.gpt import GPT

    cfg = dataclasses.replace(source.config, backend=backend) if backend is not None else source.config
    model = GPT(cfg)
    try:
        model.load_state_dict(source.state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{where}: weights do not fit the model its config describes ({e})") from e
    keep_stored_dtypes(model, source.state)
    model.to(device)
    modules = dict(model.named_modules())
    for name, (packed, scales) in source.int6.items():
        if int6_prefixes is not None and not name.startswith(int6_prefixes):
            continue
        module_name = name.removesuffix(".weight")
        if module_name not in modules or not hasattr(modules[module_name], "set_int6"):
            raise ValueError(f"{where}: int6 tensor {name} does not belong to a model Linear layer")
        modules[module_name].set_int6(packed, scales)
    model.eval()
    return model, cfg


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu", backend: str | None = None,
               int6_kernel: bool = False, int6_prefixes: tuple[str, ...] | None = None):
    """(GPT in eval mode on `device`, its ModelConfig, the source kind "artifact" | "model_file").

    `int6_prefixes` limits the int6 kernel to the matrices whose names start with one of them (TTT keeps
    int6 only on its frozen blocks: the trained ones need float weights)."""
    source = read_model_source(path, int6_kernel=int6_kernel)
    model, cfg = build_model(source, device=device, backend=backend, int6_prefixes=int6_prefixes, where=str(path))
    return model, cfg, source.kind
