"""Checks a loader runs before it allocates: the model config within bounds, and the file's tensors exactly the
ones that config builds, so building the model and loading its weights cost no more memory than the file holds.

A config is read from a file a user may have received from anyone: `vocab_size=50000000` or `num_layers=100000`
would make `GPT(cfg)` allocate tens of gigabytes before any shape check could fail. So, in order:
  1. `validate_config`: every field has its type and lies within LIMITS (token ids are uint16 on disk, so the
     vocabulary is at most 65,536); ModelConfig's own consistency checks run last.
  2. `expected_tensors`: the state dict that config builds, found by building the model on the meta device
     (shapes only, no memory), plus the size of the buffers it allocates beside its weights (the RoPE tables,
     seq_len x rope_dims/2), which must stay within the weights' own size (MIN_BUFFER_BUDGET at least).
  3. `check_shapes`: the file's tensors are exactly those names and shapes (none missing, none extra).
  4. `check_payload_spans` (artifacts, before the payload is decompressed): the tensors' byte spans do not
     overlap and leave no gap, so a body can hold no byte that no tensor uses.
Every failure is a ValueError naming the file and the problem.
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


def _is_int(value) -> bool:
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
            if not _is_int(value):
                problems.append(f"{name} is {value!r:.40}, not an integer")
            elif not lo <= value <= hi:
                problems.append(f"{name} {value} is outside [{lo}, {hi}]")
    for name in POSITIVE_FLOATS + FINITE_FLOATS:
        if name in config:
            value = config[name]
            if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
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
                or not all(_is_int(i) for i in layers):
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


def manifest_shapes(manifest: dict, where: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of an artifact manifest's tensor entries (the original, unquantized shapes)."""
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise ValueError(f"{where}: the artifact manifest has no tensor list")
    shapes = {}
    for entry in tensors:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("shape"), list) or not all(_is_int(d) and d >= 0 for d in entry["shape"]):
            raise ValueError(f"{where}: malformed tensor entry in the artifact manifest: {entry!r:.120}")
        if entry["name"] in shapes:
            raise ValueError(f"{where}: tensor {entry['name']!r} appears twice in the artifact manifest")
        shapes[entry["name"]] = tuple(entry["shape"])
    return shapes


def check_payload_spans(spans: list[tuple[str, object]], payload_bytes: int, where: str) -> None:
    """`spans` are (label, [offset, length]) of every byte range the tensors read; they must not overlap and
    must leave no payload byte that no tensor uses."""
    ranges = []
    for label, span in spans:
        if not (isinstance(span, list) and len(span) == 2 and all(_is_int(v) and v >= 0 for v in span)):
            raise ValueError(f"{where}: {label}: bad payload span {span!r:.60}")
        ranges.append((span[0], span[1], label))
    ranges.sort()
    position = 0
    for offset, length, label in ranges:
        if offset < position:
            raise ValueError(f"{where}: {label}: payload span [{offset}, {length}] overlaps another tensor's")
        if offset > position:
            raise ValueError(f"{where}: payload bytes [{position}, {offset}) belong to no tensor")
        position = offset + length
    if position < payload_bytes:  # (spans past the end are named by the decoder's per-tensor size check)
        raise ValueError(f"{where}: the payload has {payload_bytes - position:,} bytes past its last tensor that no "
                         "tensor uses")


def check_manifest_spans(manifest: dict, payload_bytes: int, where: str) -> None:
    """check_payload_spans over an artifact manifest's tensor entries (their data and scale spans)."""
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(tensors, list):
        raise ValueError(f"{where}: the artifact manifest has no tensor list")
    spans = []
    for entry in tensors:
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: malformed tensor entry in the artifact manifest: {entry!r:.120}")
        label = f"tensor {str(entry.get('name'))!r:.80}"
        spans.append((label, entry.get("data")))
        if entry.get("scale") is not None:
            spans.append((label + " scale", entry["scale"]))
    check_payload_spans(spans, payload_bytes, where)


def read_frame_prefix(frame: bytes, size: int, where: str) -> bytes:
    """The first `size` bytes a zstd frame decompresses to, decompressing no more than needed."""
    import zstandard

    try:
        with zstandard.ZstdDecompressor().stream_reader(frame) as reader:
            out = bytearray()
            while len(out) < size:
                chunk = reader.read(size - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as e:
        raise ValueError(f"{where}: corrupt or truncated compressed body ({e})") from e
    if len(out) < size:
        raise ValueError(f"{where}: the compressed body ends after {len(out)} bytes, before its manifest does")
    return bytes(out)
