"""Score-first TTT throughput, phase by phase (spec §6.3), through the evaluation's own code paths.

Scoring (`ttt_score`): one batch of 32 sliding windows of 2048 tokens under no_grad, blocks over whole windows and
the head only at each window's last `stride` (64) positions (GPT.nll_at, as eval.scoring runs every batch but the
first). tokens/s counts forwarded tokens (32 x 2048 per call); scored targets/s is that times stride / window
(bench.gpu_stages.projections reports it). FLOPs: eval.plan's count (blocks per forwarded token, head per scored
position), so MFU is of the useful work.
Training (`ttt_train`): one SGD step of eval.ttt.ScoreFirstTTT (`_sgd_step`: a chunk's 16 x 2048 sequences in
micro-batches, flat gradient buffer, global-norm clip, fused momentum SGD) with blocks 0-1 frozen, settings from
eval.ttt.TTTConfig. Same model variants as the training step. The projected full-validation time for 1 and 8
GPUs is computed from these two cases by bench.gpu_stages.projections (eval.plan's batches and steps).
"""
from __future__ import annotations

import pytest
import torch

from bench import flops
from bench.shapes import MODEL_VARIANTS

STRIDE = 64  # the seed eval's stride (spec §6.2); quick shapes use at most their window


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_ttt_score(variant, shapes, build_model, token_batches, compile_fn, autocast, measure):
    cfg, model, compiled = build_model(variant)
    model.eval()
    nll = compile_fn(model.nll_at) if compiled else model.nll_at
    windows, seq_len = shapes.ttt_score_windows, cfg.seq_len
    stride = min(STRIDE, seq_len // 2)
    at = torch.arange(seq_len - stride, seq_len, device=shapes.device).expand(windows, stride)

    def score(x, y):
        with torch.no_grad(), autocast():
            return nll(x, at, y[:, -stride:])

    head = 2 * cfg.vocab_size * cfg.model_dim
    forwarded = windows * seq_len
    measure("ttt_score", variant, score, token_batches(windows, seq_len, cfg.vocab_size), tokens=forwarded,
            shape=f"{shapes.model_preset} {windows} windows x T{seq_len}, head at the last {stride}", step=True,
            flops=(flops.forward_flops_per_token(cfg, seq_len) - head) * forwarded + head * windows * stride)


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_ttt_train(variant, shapes, build_model, token_batches, compile_fn, measure, import_or_skip):
    ttt_module = import_or_skip("eval.ttt")
    config = ttt_module.TTTConfig()
    cfg, model, compiled = build_model(variant)
    seqs, seq_len = shapes.ttt_train_seqs, cfg.seq_len
    stream = torch.randint(0, cfg.vocab_size, (seqs * seq_len + 1,), generator=torch.Generator().manual_seed(7))
    ttt = ttt_module.ScoreFirstTTT(model, stream.to(shapes.device), target_bytes=torch.ones(seqs * seq_len),
                                   config=ttt_module.TTTConfig(chunk_tokens=seqs * seq_len), window=seq_len,
                                   stride=seq_len, batch=1, compile=False)
    if compiled:
        ttt.train_fn = compile_fn(model)
    model.train()

    def step(x, y):  # autocast inside: eval.scoring.autocast_for (bf16 on CUDA), as in the evaluation
        ttt._sgd_step(x, y)

    tokens = seqs * seq_len
    try:
        measure("ttt_train", variant, step, token_batches(seqs, seq_len, cfg.vocab_size), tokens=tokens,
                shape=f"{shapes.model_preset} B{seqs} T{seq_len}, blocks 0-{config.freeze_blocks - 1} frozen, "
                      "flat grads + fused SGD", step=True,
                flops=flops.train_flops_per_token(cfg, seq_len, frozen_layers=config.freeze_blocks) * tokens)
    finally:
        ttt.restore_requires_grad()
