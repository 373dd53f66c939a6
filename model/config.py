"""Model hyper-parameters: one dataclass and two presets.

`seed` is PR #598's "11L GEPA" exactly as run (seed-spec §3.1: 27,030,108 parameters); `tiny` is a small
model with the same architecture for CPU smoke runs and tests. Everything the model builds is decided by
these fields, so a trained model file can carry its config as a plain JSON-able dict.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_hidden: int = 1536
    rope_dims: int = 16              # rotated dims per head (partial RoPE, half-split pairs)
    rope_base: float = 10000.0
    rope_train_seq_len: int = 1024   # NTK base rescaling kicks in above this sequence length
    seq_len: int = 2048
    logit_softcap: float = 30.0
    xsa_last_n: int = 4              # exclusive self-attention on the last n layers
    ve_layers: tuple[int, ...] = (9, 10)  # layers whose values get the shared value embedding
    ve_dim: int = 128
    bigram_buckets: int = 2048
    bigram_dim: int = 128
    qk_gain_init: float = 1.5
    ln_scale: bool = True            # scale block norms by 1/sqrt(layer + 1)
    tok_emb_init_std: float = 0.005
    ve_emb_init_std: float = 0.01
    bigram_scale_init: float = 0.05
    ve_scale_init: float = 0.1
    backend: str = "eager"           # kernels.ops whole-model policy: "eager" or "triton"
    kernels: str = ""                # per-family overrides on top of it, e.g. "rms_norm=inductor" (kernels.ops)

    def __post_init__(self):
        self.ve_layers = tuple(int(i) for i in self.ve_layers)
        problems = []
        if self.model_dim % self.num_heads:
            problems.append(f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}")
        elif self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        elif self.rope_dims % 2 or not 0 <= self.rope_dims <= self.head_dim:
            problems.append(f"rope_dims {self.rope_dims} must be even and at most head_dim {self.head_dim}")
        if self.rope_dims == 2:
            problems.append("rope_dims 2 makes the NTK exponent rope_dims/(rope_dims-2) infinite")
        if not 0 <= self.xsa_last_n <= self.num_layers:
            problems.append(f"xsa_last_n {self.xsa_last_n} is outside [0, num_layers={self.num_layers}]")
        bad = [i for i in self.ve_layers if not 0 <= i < self.num_layers]
        if bad or len(set(self.ve_layers)) != len(self.ve_layers):
            problems.append(f"ve_layers {self.ve_layers} must be distinct layer indices below {self.num_layers}")
        if self.bigram_buckets < 2:
            problems.append("bigram_buckets must be at least 2 (the last bucket is reserved for position 0)")
        if self.num_layers < 2:
            problems.append("num_layers must be at least 2 (encoder and decoder halves)")
        try:  # the kernel policy: a known backend and well-formed overrides, stored in canonical order
            self.kernels = self.kernel_policy.overrides_from(self.backend)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def kernel_policy(self):
        """The kernels.ops.KernelPolicy of this model: `backend` for every op family, `kernels` overriding some."""
        from kernels.ops import KernelPolicy
        return KernelPolicy.resolve(self.backend, self.kernels)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_encoder_layers(self) -> int:
        return self.num_layers // 2

    @property
    def num_decoder_layers(self) -> int:
        return self.num_layers - self.num_encoder_layers

    @property
    def num_skips(self) -> int:
        return min(self.num_encoder_layers, self.num_decoder_layers)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ve_layers"] = list(self.ve_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig.from_dict: unknown fields {unknown}")
        return cls(**d)


PRESETS: dict[str, dict] = {
    "seed": {},
    # ~0.8M params: 4 layers (2 encoder + 2 decoder), every seed feature present and every linear >= 64 wide,
    # so the same init rules apply as in the seed.
    "tiny": dict(num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2, mlp_hidden=384, rope_dims=16,
                 rope_train_seq_len=128, seq_len=128, xsa_last_n=2, ve_layers=(2, 3), ve_dim=64,
                 bigram_buckets=256, bigram_dim=64),
}


def config_from_preset(cls, presets: dict, preset: str, overrides: dict, kind: str):
    """`cls(**presets[preset])` with `overrides` applied; unknown presets and field names are errors."""
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; choose one of {sorted(presets)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}")
    return cls(**{**presets[preset], **overrides})


def get_config(preset: str = "seed", **overrides) -> ModelConfig:
    """The preset's ModelConfig with `overrides` applied (unknown names are an error)."""
    return config_from_preset(ModelConfig, PRESETS, preset, overrides, "model")

