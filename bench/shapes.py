"""The shapes (and model variants) each benchmark runs at: the seed model's training and eval/TTT
shapes, or tiny ones for --quick.

Full shapes follow the seed preset (spec §3.1: d 512, 8 query / 4 KV heads of 64, MLP 1536, vocab
1024, softcap 30) at seq 2048. One training micro-batch is 98,304 tokens (48 x 2048: one GPU's share
of a record step, 786,432 / 8), and attention runs at that batch too. The int6 linears run at the
model's (N, K) = (out, in) pairs — q/o (512, 512), k/v (256, 512), MLP up (1536, 512) and down
(512, 1536) — at M = 16 (a decode-sized batch), 4,096 and 65,536 (32 windows x 2048). Quick shapes are
interpreter-sized: they only prove that every case runs, in fp32 (the Triton interpreter computes bf16
wrongly); on a CUDA machine they run on the GPU (the kernels are not interpreted there).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class BenchShapes:
    quick: bool
    device: str
    dtype: torch.dtype
    input_sets: int  # rotating input sets per kernel case
    step_input_sets: int  # rotating batches per model-level case
    # attention (B, T, H, D) with H query heads sharing num_kv_heads KV heads
    attn_batch: int
    seq_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    # row-wise ops (MLP, RMSNorm, cross-entropy): `rows` tokens of width model_dim
    rows: int
    model_dim: int
    mlp_hidden: int
    vocab_size: int
    logit_softcap: float
    # int6 linear: M rows times every (N, K) = (out_features, in_features) pair
    int6_rows: tuple[int, ...]
    int6_features: tuple[tuple[int, int], ...]
    # model-level cases (sequence length comes from the preset's config, after model_overrides)
    model_preset: str
    train_batch_seqs: int
    ttt_train_seqs: int
    ttt_score_windows: int
    model_overrides: dict = field(default_factory=dict)


FULL = BenchShapes(
    quick=False, device="cuda", dtype=torch.bfloat16, input_sets=4, step_input_sets=2,
    attn_batch=48, seq_len=2048, num_heads=8, num_kv_heads=4, head_dim=64,
    rows=48 * 2048, model_dim=512, mlp_hidden=1536, vocab_size=1024, logit_softcap=30.0,
    int6_rows=(16, 4096, 32 * 2048), int6_features=((512, 512), (256, 512), (1536, 512), (512, 1536)),
    model_preset="seed", train_batch_seqs=48, ttt_train_seqs=16, ttt_score_windows=32,
)

QUICK = BenchShapes(
    quick=True, device="cpu", dtype=torch.float32, input_sets=1, step_input_sets=1,
    attn_batch=1, seq_len=64, num_heads=2, num_kv_heads=1, head_dim=64,
    rows=32, model_dim=64, mlp_hidden=128, vocab_size=256, logit_softcap=30.0,
    int6_rows=(8,), int6_features=((64, 64), (32, 64)),
    model_preset="tiny", train_batch_seqs=1, ttt_train_seqs=1, ttt_score_windows=1,
    # the interpreter runs every kernel program in Python: 3 layers of 32 tokens keep each step to seconds
    model_overrides=dict(num_layers=3, xsa_last_n=1, ve_layers=(2,), seq_len=32),
)


# model-level variants: name -> (kernel backend, torch.compile or not); all run on the same batches
MODEL_VARIANTS = {"eager": ("eager", False), "compile": ("eager", True),
                  "triton": ("triton", False), "triton+compile": ("triton", True)}


def _policy_variants() -> dict[str, tuple[str, str]]:
    """The candidate kernel policies of the training step, all under torch.compile: name -> (backend, overrides).
    "default+compile" is kernels.ops.default_kernels("cuda", True) (glue to Inductor, attention / MLP / CE / int6
    to Triton); each other candidate moves one family across. With "compile" (every family to Inductor) and
    "triton+compile" (every family to Triton) they are what picks the default once a GPU has measured them."""
    from kernels.ops import KernelPolicy, default_kernels

    backend, glue = default_kernels("cuda", True)
    default = KernelPolicy.resolve(backend, glue)
    moved = {"": "", "fused_norm+": "residual_norm=triton",  # the fused residual-norm kernel vs Inductor's fusion
             "sdpa+": "attention=inductor",  # SDPA (flash) vs the Triton attention
             "cublas_mlp+": "mlp=inductor",  # cuBLAS with Inductor's epilogue vs the Triton MLP
             "inductor_ce+": "cross_entropy=inductor"}  # Inductor's CE (materialized logits) vs the fused Triton CE
    return {f"default+{name}compile": (backend, default.override(change).overrides_from(backend))
            for name, change in moved.items()}


POLICY_VARIANTS = _policy_variants()


def get_shapes(quick: bool) -> BenchShapes:
    """The quick or full (GPU) shape set. Quick runs on the GPU when there is one: there the kernels are
    compiled, not interpreted, and cannot take CPU tensors."""
    if not quick:
        return FULL
    return dataclasses.replace(QUICK, device="cuda") if torch.cuda.is_available() else QUICK
