"""Training hyper-parameters: one dataclass, presets `seed` (PR #598's run, seed-spec §1.3 and §4) and `tiny`.

The dataclass defaults are the `seed` preset: the values of PR #598's run command and of its script where the
command sets nothing (`python -m train --preset seed --print-config` prints them beside the seed's, from
train.seed_run). `grad_accum` is micro-steps per optimizer step on each rank; None means
`accum_total // world_size` (the seed runs 8 micro-batches of 48 x 2048 tokens per step whatever the world
size divides 8 into).

Four fields reproduce what PR #598's run did beyond its hyper-parameters:
  - `warmup_steps`: its 20 compile-priming steps (real steps on the first batches, then the weights, the
    optimizer states and the loader are put back; train.warmup);
  - `accumulate_bigram_scale_grad`: bigram.scale is in no optimizer, so the seed never cleared its gradient:
    it sums over the warm-up and every training step and counts toward the clip norm (seed-spec §8.3);
  - `late_qat_in_training`: the seed's late-QAT flag fired at step 6476 (threshold 0.15) but never reached its
    compiled training graph (§8.2); it did make its TTT fake-quantize (the model file records that it fired);
  - `tok_emb_dtype`: the seed cast its model to bf16 and restored only the linears and control tensors, so
    tok_emb (and the tied head) was stored and updated in bf16 (§3.12).
A training config saved before a field existed reads it as the value that reproduces what that code did
(LEGACY_VALUES), so a resumed old run keeps training as it started.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from model.config import config_from_preset


@dataclass
class TrainConfig:
    model_preset: str = "seed"
    steps: int = 7000
    batch_tokens: int = 786_432          # tokens per optimizer step, all ranks and micro-steps together
    accum_total: int = 8                 # micro-batches per step summed over ranks (grad_accum = this / world)
    grad_accum: int | None = None
    warmdown_steps: int = 3500
    warmdown_shape: str = "linear"       # or "cosine"
    max_wallclock_seconds: float = 0.0   # > 0: stop at this training time and size the warmdown in time
    grad_clip: float = 0.3
    ema_decay: float = 0.997
    val_every: int = 500
    val_max_tokens: int = 0              # 0: the whole val split
    val_batch_seqs: int = 32
    log_every: int = 1
    checkpoint_every: int = 500
    # optimizers (seed-spec §4.1)
    matrix_lr: float = 0.025
    scalar_lr: float = 0.025
    tok_lr: float = 0.035
    decoder_lr_mult: float = 2.0
    muon_momentum: float = 0.99
    muon_momentum_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_wd: float = 0.04
    adam_wd: float = 0.04
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    ns_steps: int = 5
    late_qat_threshold: float = 0.15     # late QAT fires once the LR multiplier drops below this; 0 = never
    late_qat_in_training: bool = False   # once fired, fake-quantize the training forwards (seed's run: it did not)
    warmup_steps: int = 20               # seed's compile-priming steps, undone before step 1 (train.warmup)
    accumulate_bigram_scale_grad: bool = True  # seed: bigram.scale's gradient is never cleared (see above)
    tok_emb_dtype: str = "bfloat16"      # storage dtype of tok_emb (seed: bf16); "float32" keeps it in fp32
    seed: int = 42
    compile: bool = False                # torch.compile the model (GPU runs)

    def __post_init__(self):
        if self.tok_emb_dtype not in TOK_EMB_DTYPES:
            raise ValueError(f"tok_emb_dtype must be one of {TOK_EMB_DTYPES}, got {self.tok_emb_dtype!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A saved config; fields it lacks (saved before they existed) take LEGACY_VALUES, then the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown fields {unknown}")
        return cls(**{**LEGACY_VALUES, **d})

    def local_grad_accum(self, world_size: int) -> int:
        if self.grad_accum is not None:
            if self.grad_accum < 1:
                raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
            return self.grad_accum
        if self.accum_total % world_size:
            raise ValueError(f"world size {world_size} does not divide accum_total {self.accum_total}; "
                             f"pass --grad-accum explicitly")
        return self.accum_total // world_size


# what the training loop did before each of these fields existed: a config saved then reads them so
LEGACY_VALUES = dict(late_qat_in_training=True, warmup_steps=0, accumulate_bigram_scale_grad=False,
                     tok_emb_dtype="float32")
TOK_EMB_DTYPES = ("bfloat16", "float32")

TRAIN_PRESETS: dict[str, dict] = {
    "seed": {},
    # ~2 min on one CPU thread: 16 x 128-token sequences per step, short momentum warmup, and an EMA whose
    # horizon (~33 steps) fits inside the 150-step warmdown (0.997 would still be averaging early weights).
    "tiny": dict(model_preset="tiny", steps=300, batch_tokens=16 * 128, accum_total=1, warmdown_steps=150,
                 ema_decay=0.97, val_every=100, val_max_tokens=0, val_batch_seqs=16, log_every=1,
                 checkpoint_every=100, muon_momentum_warmup_steps=60, matrix_lr=0.04, scalar_lr=0.04, tok_lr=0.05,
                 # none of the seed's run-specific behaviours: an explicit --late-qat-threshold trains with QAT
                 late_qat_threshold=0.0, late_qat_in_training=True, warmup_steps=0,
                 accumulate_bigram_scale_grad=False, tok_emb_dtype="float32"),
}


def get_train_config(preset: str = "seed", **overrides) -> TrainConfig:
    cfg = config_from_preset(TrainConfig, TRAIN_PRESETS, preset, overrides, "training")
    if cfg.warmdown_shape not in ("linear", "cosine"):
        raise ValueError(f"warmdown_shape must be 'linear' or 'cosine', got {cfg.warmdown_shape!r}")
    return cfg
