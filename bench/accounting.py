"""Hardware-independent accounting of a training step: FLOPs per trained token and kernel launches.

`python -m bench.accounting [--preset seed] [--write]` prints (and with --write stores in bench/ACCOUNTING.md):
  - FLOPs per trained token, counted by `torch.utils.flop_counter.FlopCounterMode` over one forward+backward of
    the model on the meta device (no memory, no time), beside the model count of bench.flops (6N + causal
    attention). On meta tensors SDPA runs its math path — two bmm per head over the whole T x T square — so
    half of the counted bmm FLOPs are the causal mask's waste and are taken off ("causal");
  - kernel launches per forward+backward (eager ops) and per optimizer step (clip + Muon + AdamW + EMA, as
    train.loop runs them), batched Muon and matrix by matrix: every op that reaches a kernel is counted with a
    TorchDispatchMode (views, allocations and metadata ops launch nothing and are not counted). On a GPU, each
    counted op is about one launch (a foreach op may split into a few); compiled regions launch fewer.
Both are what a GPU's time goes to before any GPU measures it; a test holds the FLOP count to the model count.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ACCOUNTING_PATH = Path(__file__).resolve().parent / "ACCOUNTING.md"
_NO_LAUNCH_PREFIXES = ("aten::empty", "aten::detach", "aten::lift_fresh", "aten::_local_scalar_dense",
                       "aten::set_", "aten::resize_", "aten::_to_copy_meta_never")


class KernelOpCounter(TorchDispatchMode):
    """Counts the ops that reach a kernel below autograd (views, allocations and metadata ops excluded)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not func.is_view and not name.startswith(_NO_LAUNCH_PREFIXES):
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def meta_model(preset: str = "seed", **overrides):
    """(config, GPT on the meta device) with the eager ops (a Triton custom op carries no FLOP formula)."""
    from model.config import get_config
    from model.gpt import GPT

    cfg = get_config(preset, backend="eager", **overrides)
    with torch.device("meta"):
        model = GPT(cfg)
    return cfg, model


def _batch(cfg, seqs: int = 1):
    tokens = torch.zeros(seqs, cfg.seq_len + 1, dtype=torch.long, device="meta")
    return tokens[:, :-1], tokens[:, 1:]


def flops_per_token(preset: str = "seed", **overrides) -> dict:
    """FLOPs per trained token: FlopCounterMode's count, its causal correction, and the model count."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench import flops

    cfg, model = meta_model(preset, **overrides)
    x, y = _batch(cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, y).backward()
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    tokens = x.numel()
    counted = counter.get_total_flops() / tokens
    causal = counted - by_op.get("aten.bmm", 0) / 2 / tokens
    return {"counted": counted, "causal": causal, "model": flops.train_flops_per_token(cfg, cfg.seq_len),
            "by_op": {op: n / tokens for op, n in by_op.items()}}


def forward_backward_launches(preset: str = "seed", **overrides) -> int:
    """Ops reaching kernels in one eager forward+backward of the model."""
    cfg, model = meta_model(preset, **overrides)
    x, y = _batch(cfg)
    counter = KernelOpCounter()
    with counter:
        model(x, y).backward()
    return counter.total


def optimizer_step_launches(preset: str = "seed", batched: bool = True, **overrides) -> dict[str, int]:
    """Ops reaching kernels per part of one optimizer step as train.loop takes it (clip, Muon, AdamW, EMA),
    counted on the second step (the first also creates the optimizer state). AdamW is counted on its foreach
    path (group option foreach=True: the multi-tensor path a GPU takes; the fused CUDA kernel launches fewer
    still); the clip runs per tensor on meta tensors (a GPU takes its foreach path, a handful of launches)."""
    from train.config import get_train_config
    from train.ema import EMA
    from train.optim import build_optimizers

    cfg, model = meta_model(preset, **overrides)
    tc = get_train_config(preset)
    muon, adam = build_optimizers(
        model, cfg.num_encoder_layers, matrix_lr=tc.matrix_lr, scalar_lr=tc.scalar_lr, tok_lr=tc.tok_lr,
        decoder_lr_mult=tc.decoder_lr_mult, muon_momentum=tc.muon_momentum, muon_wd=tc.muon_wd,
        adam_wd=tc.adam_wd, adam_betas=(tc.adam_beta1, tc.adam_beta2), adam_eps=tc.adam_eps, ns_steps=tc.ns_steps)
    muon.batched = batched
    for group in adam.param_groups:
        group.update(foreach=True, fused=None)
    average = EMA(model, tc.ema_decay)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    parts = {"clip": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip),
             "muon": muon.step, "adamw": adam.step, "ema": lambda: average.update(model)}
    for part in parts.values():  # warm-up: optimizer state is created on the first step
        part()
    counts = {}
    for name, part in parts.items():
        counter = KernelOpCounter()
        with counter:
            part()
        counts[name] = counter.total
    return counts


def report(preset: str = "seed") -> str:
    """The accounting as a markdown section."""
    f = flops_per_token(preset)
    fb = forward_backward_launches(preset)
    batched = optimizer_step_launches(preset, batched=True)
    unbatched = optimizer_step_launches(preset, batched=False)
    return "\n".join([
        "# Step accounting (hardware-independent)", "",
        f"Generated by `python -m bench.accounting --preset {preset} --write`; FLOPs by "
        "`torch.utils.flop_counter.FlopCounterMode` on the meta device, kernel ops by a TorchDispatchMode "
        "(bench/accounting.py says what is counted and how the optimizer's code paths are chosen).", "",
        "| figure | value |", "|---|---|",
        f"| FLOPs per trained token, FlopCounterMode (SDPA math path, full T x T) | {f['counted'] / 1e6:.2f} M |",
        f"| FLOPs per trained token, causal (half the attention bmm taken off) | {f['causal'] / 1e6:.2f} M |",
        f"| FLOPs per trained token, model count (6N + causal attention, bench.flops) | {f['model'] / 1e6:.2f} M |",
        f"| kernel ops per forward+backward (eager ops, before any compile) | {fb} |",
        f"| kernel ops per Muon step, batched Newton-Schulz (default) | {batched['muon']} |",
        f"| kernel ops per Muon step, matrix by matrix (`Muon(batched=False)`, as PR #598) | {unbatched['muon']} |",
        f"| kernel ops per AdamW step (foreach path) | {batched['adamw']} |",
        f"| kernel ops per EMA update (foreach) | {batched['ema']} |",
        f"| kernel ops per grad clip (per-tensor path of meta tensors; foreach on a GPU) | {batched['clip']} |", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accounting", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", help="model preset (default seed)")
    parser.add_argument("--write", action="store_true", help=f"also write {ACCOUNTING_PATH.name}")
    args = parser.parse_args(argv)
    text = report(args.preset)
    print(text)
    if args.write:
        from common.atomic import atomic_write
        atomic_write(ACCOUNTING_PATH, [text.encode()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
