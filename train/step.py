"""The pieces of one optimizer step shared by the training loop and the seed's warm-up (train.warmup).

`build_training_model` makes the model the way the training job does (seeded init, then PR #598's storage
and gradient settings, TrainConfig), so a test can rebuild a run's step-0 weights exactly.
`build_training_optimizers` makes its Muon + AdamW; `backward_micro_batches` runs one step's forward + backward
over this rank's micro-batches.
"""
from __future__ import annotations

import contextlib

import torch

from model.config import ModelConfig
from model.gpt import GPT
from train.config import TrainConfig
from train.optim import build_optimizers, orphan_parameters


def build_training_model(tcfg: TrainConfig, mcfg: ModelConfig, device) -> GPT:
    """GPT(mcfg) initialized under torch.manual_seed(tcfg.seed), on `device`, with:
      - tok_emb stored in tcfg.tok_emb_dtype (PR #598: bf16, its whole model was cast to bf16 and only the
        linears and control tensors restored to fp32, seed-spec §3.12);
      - bigram.scale trainable: it gets a gradient (which counts toward the clip norm) but no optimizer
        updates it (train.optim.EXCLUDED_FROM_OPTIMIZERS), as in PR #598."""
    torch.manual_seed(tcfg.seed)
    model = GPT(mcfg).to(device)
    model.tok_emb.to(getattr(torch, tcfg.tok_emb_dtype))
    for p in orphan_parameters(model).values():
        p.requires_grad_(True)
    return model


def build_training_optimizers(model: GPT, tcfg: TrainConfig) -> tuple:
    """(Muon, AdamW) over `model`'s parameters with tcfg's learning rates, momentum and weight decays."""
    return build_optimizers(
        model, model.cfg.num_encoder_layers, matrix_lr=tcfg.matrix_lr, scalar_lr=tcfg.scalar_lr, tok_lr=tcfg.tok_lr,
        decoder_lr_mult=tcfg.decoder_lr_mult, muon_momentum=tcfg.muon_momentum, muon_wd=tcfg.muon_wd,
        adam_wd=tcfg.adam_wd, adam_betas=(tcfg.adam_beta1, tcfg.adam_beta2), adam_eps=tcfg.adam_eps,
        ns_steps=tcfg.ns_steps)


def backward_micro_batches(train_model: torch.nn.Module, loader, grad_accum: int, world: int,
                           autocast) -> torch.Tensor:
    """Forward + backward of this rank's `grad_accum` micro-batches of one optimizer step, each loss scaled by
    1/grad_accum so the gradients add up to the step's mean; under DDP only the last micro-batch all-reduces.
    Returns the sum of the unscaled losses (a 0-d tensor: no host sync)."""
    loss_sum = None
    for micro in range(grad_accum):
        x, y = loader.next_batch()
        last_micro = micro == grad_accum - 1
        sync = train_model.no_sync() if world > 1 and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast():
                loss = train_model(x, y)
            (loss / grad_accum).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum
