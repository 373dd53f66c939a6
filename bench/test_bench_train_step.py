"""One full training step of the model (forward, backward, clip, Muon + AdamW step, EMA update) in tokens/s.

Variants (bench.shapes.MODEL_VARIANTS): eager ops, eager ops under torch.compile, Triton kernels, and
Triton kernels under torch.compile — same preset, same weights, same batches, same process. One step is
one micro-batch of 48 x 2048 tokens at the seed preset, under bf16 autocast (spec §3.12), with the
optimizers, hyper-parameters and EMA of train.optim / train.config / train.ema, as train.loop runs them.
"""
from __future__ import annotations

import pytest
import torch

from bench import flops
from bench.shapes import MODEL_VARIANTS


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_train_step(variant, shapes, build_model, token_batches, compile_fn, autocast, measure, import_or_skip):
    optim, train_config, ema = (import_or_skip(f"train.{name}") for name in ("optim", "config", "ema"))
    cfg, model, compiled = build_model(variant)
    model.bigram.scale.requires_grad_(True)  # as train.loop: in no optimizer, but its gradient counts toward the clip
    tc = train_config.get_train_config(shapes.model_preset)
    optimizers = optim.build_optimizers(
        model, cfg.num_encoder_layers, matrix_lr=tc.matrix_lr, scalar_lr=tc.scalar_lr, tok_lr=tc.tok_lr,
        decoder_lr_mult=tc.decoder_lr_mult, muon_momentum=tc.muon_momentum, muon_wd=tc.muon_wd,
        adam_wd=tc.adam_wd, adam_betas=(tc.adam_beta1, tc.adam_beta2), adam_eps=tc.adam_eps, ns_steps=tc.ns_steps)
    average = ema.EMA(model, tc.ema_decay)
    forward = compile_fn(model) if compiled else model
    model.train()

    def step(x, y):
        with autocast():
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)  # bigram.scale
        average.update(model)
        return loss

    seqs, seq_len = shapes.train_batch_seqs, cfg.seq_len
    tokens = seqs * seq_len
    measure("train_step", variant, step, token_batches(seqs, seq_len, cfg.vocab_size), tokens=tokens,
            shape=f"{shapes.model_preset} B{seqs} T{seq_len}", step=True,
            flops=flops.train_flops_per_token(cfg, seq_len) * tokens)
