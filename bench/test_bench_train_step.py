"""One training step of the model in tokens/s: forward+backward alone, the whole step, and the optimizer alone.

Variants (bench.shapes.MODEL_VARIANTS): eager ops, eager ops under torch.compile (attention = the eager twin's
SDPA, flash on a GPU in bf16), Triton kernels, and Triton kernels under torch.compile; and the candidate kernel
policies under torch.compile (bench.shapes.POLICY_VARIANTS: the default policy and one family moved at a time) —
same preset, same weights, same batches, same process. One step is one micro-batch of 48 x 2048 tokens at the seed preset, under
bf16 autocast (spec §3.12), with the optimizers, hyper-parameters and EMA of train.optim / train.config /
train.ema, as train.loop runs them. Each variant's test measures two cases on one (compiled) model:
`train_fwd_bwd` (forward + backward) and `train_step` (that + clip + Muon + AdamW + EMA); `optimizer_step`
times the clip + Muon + AdamW + EMA part alone on gradients already in place.
"""
from __future__ import annotations

import pytest
import torch

from bench import flops
from bench.shapes import MODEL_VARIANTS, POLICY_VARIANTS


def _optimizers(model, cfg, shapes, import_or_skip):
    """(optimizers, EMA, train config) exactly as train.loop builds them for the preset, after giving tok_emb
    the preset's storage dtype (bf16 for the seed, as PR #598's run: train.step.build_training_model)."""
    step, train_config, ema = (import_or_skip(f"train.{name}") for name in ("step", "config", "ema"))
    tc = train_config.get_train_config(shapes.model_preset)
    model.tok_emb.to(getattr(torch, tc.tok_emb_dtype))
    optimizers = step.build_training_optimizers(model, tc)
    return optimizers, ema.EMA(model, tc.ema_decay), tc


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_train_step(variant, shapes, build_model, token_batches, compile_fn, autocast, measure, import_or_skip):
    cfg, model, compiled = build_model(variant)
    _measure_train_step(variant, cfg, model, compiled, shapes, token_batches, compile_fn, autocast, measure,
                        import_or_skip)


@pytest.mark.parametrize("variant", list(POLICY_VARIANTS))
def test_train_step_policy(variant, shapes, build_model, token_batches, compile_fn, autocast, measure,
                           import_or_skip):
    """The candidate kernel policies (bench.shapes.POLICY_VARIANTS), compiled. Quick mode runs the default only:
    the others move single families across, paths the test suite covers."""
    if shapes.quick and variant != "default+compile":
        pytest.skip("quick mode: the default policy stands for the candidates")
    cfg, model, compiled = build_model("triton+compile")  # same weights; then the policy's routing
    model.set_kernels(*POLICY_VARIANTS[variant])
    _measure_train_step(variant, cfg, model, compiled, shapes, token_batches, compile_fn, autocast, measure,
                        import_or_skip)


def _measure_train_step(variant, cfg, model, compiled, shapes, token_batches, compile_fn, autocast, measure,
                        import_or_skip):
    model.bigram.scale.requires_grad_(True)  # as train.loop: in no optimizer, but its gradient counts toward the clip
    optimizers, average, tc = _optimizers(model, cfg, shapes, import_or_skip)
    forward = compile_fn(model) if compiled else model
    model.train()

    def forward_backward(x, y):
        with autocast():
            loss = forward(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

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
    batches = token_batches(seqs, seq_len, cfg.vocab_size)
    shape = f"{shapes.model_preset} B{seqs} T{seq_len}"
    step_flops = flops.train_flops_per_token(cfg, seq_len) * tokens
    measure("train_fwd_bwd", variant, forward_backward, batches, tokens=tokens, shape=shape, step=True,
            flops=step_flops)
    measure("train_step", variant, step, batches, tokens=tokens, shape=shape, step=True, flops=step_flops)


def test_optimizer_step(shapes, build_model, measure, import_or_skip):
    """Clip + Muon + AdamW + EMA on the preset's parameters with random gradients in place (no model call)."""
    cfg, model, _ = build_model("eager")
    model.bigram.scale.requires_grad_(True)
    optimizers, average, tc = _optimizers(model, cfg, shapes, import_or_skip)
    generator = torch.Generator(device=shapes.device).manual_seed(5)
    grads = [torch.randn(p.shape, device=shapes.device, generator=generator) * 1e-3 for p in model.parameters()]

    def step():
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        average.update(model)

    params = sum(p.numel() for p in model.parameters())
    measure("optimizer_step", "muon+adamw", step, [()], tokens=shapes.train_batch_seqs * cfg.seq_len,
            shape=f"{shapes.model_preset} {params:,} params", step=True)
