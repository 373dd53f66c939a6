"""Checks a loader runs before it builds a model from a file: the model config within bounds, and the file's tensors
exactly the ones that config builds, so building the model and loading its weights cost no more memory than the file
holds.

A config is read from a file a user may have received from anyone: `vocab_size=50000000` or `num_layers=100000`
would make `GPT(cfg)` allocate tens of gigabytes before any shape check could fail. So, in order:
  1. `validate_config`: every field has its type and lies within LIMITS (token ids are uint16 on disk, so the
     vocabulary is at most 65,536); ModelConfig's own consistency checks run last.
  2. `expected_tensors`: the state dict that config builds, found by building the model on the meta device
     (shapes only, no memory), plus the size of the buffers it allocates beside its weights (the RoPE tables,
     seq_len x rope_dims/2), which must stay within the weights' own size (MIN_BUFFER_BUDGET at least).
  3. `check_shapes`: the file's tensors are exactly those names and shapes (none missing, none extra).
An artifact's own checks (its manifest and payload spans) are quant.validate's. Every failure is a ValueError
naming the file and the problem.
"""
from __future__ import annotations

import dataclasses
import math

import torch

# (min, max) per integer field; the maxima are far above any model this project trains (the seed: vocab 1024,
# 11 layers, dim 512, mlp 1536, seq 2048) and far below what would exhaust a machine.
LIMITS = {
    "vocab_size": (2, 65_536),          # token ids are uint16 in the shards
    "num_layers": (2, 256),
    "model_dim": (1, 16_384),
    "num_heads": (1, 1_024),
    "num_kv_heads": (1, 1_024),
    "mlp_hidden": (1, 131_072),
    "rope_dims": (0, 16_384),
    "rope_train_seq_len": (1, 1 << 20),
    "seq_len": (1, 1 << 20),
    "xsa_last_n": (0, 256),
    "ve_dim": (1, 16_384),
    "bigram_buckets": (2, 1 << 22),
    "bigram_dim": (1, 16_384),
}
POSITIVE_FLOATS = ("rope_base", "logit_softcap")
FINITE_FLOATS = ("qk_gain_init", "tok_emb_init_std", "ve_emb_init_std", "bigram_scale_init", "ve_scale_init")
BACKENDS = ("eager", "triton")
MAX_PARAMS = 4_000_000_000
MIN_BUFFER_BUDGET = 1 << 22  # elements of non-weight buffers always allowed (4M: 16 MB in fp32)


def is_int(value) -> bool:
    """An int and not a bool (a config value of True must not pass as a layer count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config, where: str):
    """The ModelConfig a config dict describes, after checking its fields' types and bounds; ValueError if not."""
    from model.config import ModelConfig

    if not isinstance(config, dict):
        raise ValueError(f"{where}: the model config is a {type(config).__name__}, not a dict")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(str(k) for k in config if k not in known)
    if unknown:
        raise ValueError(f"{where}: the model config has unknown fields {unknown}")
    problems = []
    for name, (lo, hi) in LIMITS.items():
        if name in config:
            value = config[name]
            if not is_int(value):
                problems.append(f"{name} is {value!r:.40}, not an integer")
            elif not lo <= value <= hi:
                problems.append(f"{name} {value} is outside [{lo}, {hi}]")
    for name in POSITIVE_FLOATS + FINITE_FLOATS:
        if name in config:
            value = config[name]
            if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
                problems.append(f"{name} is {value!r:.40}, not a finite number")
            elif name in POSITIVE_FLOATS and value <= 0:
                problems.append(f"{name} {value} must be positive")
    if "ln_scale" in config and not isinstance(config["ln_scale"], bool):
        problems.append(f"ln_scale is {config['ln_scale']!r:.40}, not a boolean")
    if "backend" in config and config["backend"] not in BACKENDS:
        problems.append(f"backend {config['backend']!r:.40} is not one of {BACKENDS}")
    if "ve_layers" in config:
        layers = config["ve_layers"]
        if not isinstance(layers, (list, tuple)) or len(layers) > LIMITS["num_layers"][1] \
                or not all(is_int(i) for i in layers):
            problems.append(f"ve_layers is {layers!r:.60}, not a list of layer indices")
    if problems:
        raise ValueError(f"{where}: invalid model config: " + "; ".join(problems))
    try:
        return ModelConfig.from_dict(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid model config ({e})") from e


def expected_tensors(cfg, where: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict GPT(cfg) has, found without allocating; refuses a config whose model
    would be over MAX_PARAMS or whose buffers (RoPE tables) would outweigh its weights."""
    from model.gpt import GPT

    rope_elements = cfg.seq_len * (cfg.rope_dims // 2) * 2
    with torch.device("meta"):
        model = GPT(cfg)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    params = sum(math.prod(s) for s in shapes.values())
    if params > MAX_PARAMS:
        raise ValueError(f"{where}: the model config describes {params:,} parameters, over the {MAX_PARAMS:,} "
                         "this loader accepts")
    if rope_elements > max(params, MIN_BUFFER_BUDGET):
        raise ValueError(f"{where}: seq_len {cfg.seq_len} x rope_dims {cfg.rope_dims} would build RoPE tables "
                         f"of {rope_elements:,} values, more than the model's {params:,} weights")
    return shapes


def check_shapes(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """The file's tensors (name -> shape) must be exactly the model's."""
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        parts = ([f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
                ([f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"] if extra else [])
        raise ValueError(f"{where}: its tensors do not match the model its config describes: " + "; ".join(parts))
    wrong = [f"{n} is {tuple(shapes[n])}, the config needs {expected[n]}" for n in sorted(expected)
             if tuple(shapes[n]) != tuple(expected[n])]
    if wrong:
        raise ValueError(f"{where}: tensor shapes do not match the model config: " + "; ".join(wrong[:3])
                         + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))


def check_model_tensors(config, shapes: dict[str, tuple[int, ...]], where: str):
    """validate_config + expected_tensors + check_shapes: the ModelConfig, once the file is known to fit it."""
    cfg = validate_config(config, where)
    check_shapes(shapes, expected_tensors(cfg, where), where)
    return cfg
