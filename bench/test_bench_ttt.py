"""Score-first TTT throughput, phase by phase (spec §6.3), in tokens/s.

Scoring: one forward of a batch of 32 sliding windows of 2048 tokens in inference mode (per_token_nll;
tokens/s counts every forwarded token, of which each window scores its last 64). Training: one SGD
step (fwd + bwd, grad clip, momentum SGD) on a chunk's 16 x 2048 sequences with blocks 0-1 frozen,
settings from eval.ttt.TTTConfig. Same model variants as the training step.
"""
from __future__ import annotations

import pytest
import torch

from bench import flops
from bench.shapes import MODEL_VARIANTS


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_ttt_score(variant, shapes, build_model, token_batches, compile_fn, autocast, measure):
    cfg, model, compiled = build_model(variant)
    model.eval()
    nll = compile_fn(model.per_token_nll) if compiled else model.per_token_nll

    def score(x, y):
        with torch.inference_mode(), autocast():
            return nll(x, y)

    windows, seq_len = shapes.ttt_score_windows, cfg.seq_len
    tokens = windows * seq_len
    measure("ttt_score", variant, score, token_batches(windows, seq_len, cfg.vocab_size), tokens=tokens,
            shape=f"{shapes.model_preset} {windows} windows x T{seq_len}", step=True,
            flops=flops.forward_flops_per_token(cfg, seq_len) * tokens)


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_ttt_train(variant, shapes, build_model, token_batches, compile_fn, autocast, measure, import_or_skip):
    ttt = import_or_skip("eval.ttt").TTTConfig()
    cfg, model, compiled = build_model(variant)
    frozen = tuple(f"blocks.{i}." for i in range(ttt.freeze_blocks))
    params = []
    for name, p in model.named_parameters():  # as eval.ttt.ScoreFirstTTT: everything but the frozen blocks trains
        p.requires_grad_(not name.startswith(frozen))
        if p.requires_grad:
            params.append(p)
    optimizer = torch.optim.SGD(params, lr=ttt.lr, momentum=ttt.momentum)
    forward = compile_fn(model) if compiled else model
    model.train()

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ttt.grad_clip)
        optimizer.step()
        return loss

    seqs, seq_len = shapes.ttt_train_seqs, cfg.seq_len
    tokens = seqs * seq_len
    measure("ttt_train", variant, step, token_batches(seqs, seq_len, cfg.vocab_size), tokens=tokens,
            shape=f"{shapes.model_preset} B{seqs} T{seq_len}, blocks 0-{ttt.freeze_blocks - 1} frozen", step=True,
            flops=flops.train_flops_per_token(cfg, seq_len, frozen_layers=ttt.freeze_blocks) * tokens)
