"""FLOP counts of the model and its ops, and MFU: pure arithmetic on a ModelConfig, shared by the benchmark
(bench/), the evaluation plan (eval/plan.py) and the step accounting; the device's measured bf16 peak lives in
bench.flops, which re-exports these.

Conventions (stated once so every figure in BENCHMARKS.md can be re-derived by hand):
  * a matmul of (M, K) by (K, N) is 2*M*N*K FLOPs; backward is twice forward (dgrad + wgrad), so a
    training step costs 3x the forward;
  * model FLOPs per training token = 6 * N_matmul + 3 * attention_forward, with N_matmul the weights
    every token is multiplied by (block linears, tied head, bigram and value-embedding projections);
  * causal attention forward per token = 2 (QK^T and PV) * 2 (multiply-add) * num_layers
    * T_ctx_avg * num_heads * head_dim, with T_ctx_avg = T / 2 for a causal mask;
  * the attention *kernel* figures use FlashAttention's convention instead (backward = 2.5x forward),
    so they compare with published kernel numbers; the model-level MFU keeps the 3x above.
MFU = achieved model FLOP/s / the bf16 dense peak measured in the same run (an 8192^3 matmul).
"""
from __future__ import annotations

FA_BACKWARD_FACTOR = 2.5  # FlashAttention benchmarks count the backward pass as 2.5 forwards


def matmul_params(cfg) -> int:
    """Weights each token is multiplied by once in a forward pass (`cfg`: a model.config.ModelConfig)."""
    q_out = cfg.num_heads * cfg.head_dim
    kv_out = cfg.num_kv_heads * cfg.head_dim
    d = cfg.model_dim
    per_layer = d * q_out + 2 * d * kv_out + q_out * d + 2 * d * cfg.mlp_hidden
    head = cfg.vocab_size * d  # tied embedding used as the output projection
    bigram_proj = cfg.bigram_dim * d if cfg.bigram_buckets else 0
    ve_proj = cfg.ve_dim * kv_out if cfg.ve_layers else 0
    return cfg.num_layers * per_layer + head + bigram_proj + ve_proj


def layer_matmul_params(cfg) -> int:
    """Weights of one transformer block's six linears (q, k, v, o, up, down)."""
    q_out, kv_out, d = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.model_dim
    return d * q_out + 2 * d * kv_out + q_out * d + 2 * d * cfg.mlp_hidden


def attention_forward_flops_per_token(cfg, seq_len: int) -> float:
    """Causal attention forward FLOPs per token: 2 * 2 * num_layers * (T / 2) * num_heads * head_dim."""
    return 2 * 2 * cfg.num_layers * (seq_len / 2) * cfg.num_heads * cfg.head_dim


def forward_flops_per_token(cfg, seq_len: int) -> float:
    """Model FLOPs per token of one inference forward (the TTT scoring phase)."""
    return 2 * matmul_params(cfg) + attention_forward_flops_per_token(cfg, seq_len)


def train_flops_per_token(cfg, seq_len: int, frozen_layers: int = 0) -> float:
    """Model FLOPs per token of forward + backward: 6 * N_matmul + 3 * attention forward.

    Frozen blocks (TTT freezes blocks 0-1) still pass gradients through (dgrad) but compute no weight
    gradient, so each of their matmul weights costs 4 FLOPs per token instead of 6.
    """
    frozen = frozen_layers * layer_matmul_params(cfg)
    return 6 * matmul_params(cfg) - 2 * frozen + 3 * attention_forward_flops_per_token(cfg, seq_len)


def attention_kernel_flops(batch: int, seq_len: int, num_heads: int, head_dim: int, backward: bool) -> float:
    """FLOPs of one causal attention call: forward 4 * B * H * D * T^2 / 2; backward 2.5x forward."""
    forward = 4 * batch * num_heads * head_dim * seq_len * seq_len / 2
    return forward * (1 + FA_BACKWARD_FACTOR) if backward else forward


def linear_flops(rows: int, out_features: int, in_features: int, backward: bool = False) -> float:
    """FLOPs of y = x W^T with x (rows, in): 2 * rows * out * in, x3 with backward."""
    forward = 2 * rows * out_features * in_features
    return 3 * forward if backward else forward


def mfu(tflops: float | None, peak_tflops: float | None) -> float | None:
    """Fraction of the measured bf16 peak; None when either figure is unknown."""
    if not tflops or not peak_tflops:
        return None
    return tflops / peak_tflops
