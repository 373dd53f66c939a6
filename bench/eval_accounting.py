"""Hardware-independent accounting of the evaluation: FLOPs per scored target and per trained token, counted by
`torch.utils.flop_counter.FlopCounterMode`, against eval.plan's minimum; kernel ops per TTT optimizer step.

Everything runs on the meta device (no memory, no time) with the eager ops, through bench.accounting's model
builder and op counter. On meta tensors SDPA runs its math path over the whole T x T square, so half of the
counted bmm FLOPs are the causal mask's waste and are taken off ("causal"), as bench.accounting does.
  - scoring: one batch of windows through `GPT.nll_at` at the last `stride` positions (what eval.scoring runs
    for every batch but the first), or through `per_token_nll` over all positions (`all_positions`: the path
    before the head was limited to the scored positions), divided by the targets it scores;
  - TTT training: forward + backward of a chunk's sequences with the first `freeze_blocks` blocks frozen,
    divided by the tokens trained;
  - kernel ops of one TTT optimizer step (zero, average, clip, SGD) on the flat gradient buffer and tensor by
    tensor (eval.ttt_step), counted on the foreach path a GPU takes (the fused CUDA SGD launches fewer still).
`python -m bench.eval_accounting [--preset seed]` prints them.
"""
from __future__ import annotations

import argparse
import sys

import torch


def _causal(counter, units: int) -> dict:
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    counted = counter.get_total_flops()
    return {"counted": counted / units, "causal": (counted - by_op.get("aten.bmm", 0) / 2) / units,
            "by_op": {op: n / units for op, n in by_op.items()}}


def score_flops_per_target(preset: str = "seed", *, stride: int = 64, windows: int = 2, all_positions: bool = False,
                           **overrides) -> dict:
    """FLOPs per scored target of a batch of full windows that each score their last `stride` targets."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.accounting import meta_model
    from eval.plan import min_score_flops_per_target

    cfg, model = meta_model(preset, **overrides)
    model.eval()
    window = cfg.seq_len
    x = torch.zeros(windows, window, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if all_positions:
            model.per_token_nll(x, x)
        else:
            at = torch.arange(window - stride, window, device="meta").expand(windows, stride)
            model.nll_at(x, at, torch.zeros(windows, stride, dtype=torch.long, device="meta"))
    return {**_causal(counter, windows * stride), "minimum": min_score_flops_per_target(cfg, window, stride)}


def train_flops_per_token(preset: str = "seed", *, freeze_blocks: int = 2, seqs: int = 1, detach_frozen: bool = False,
                          **overrides) -> dict:
    """FLOPs per trained token of one TTT forward + backward with the first `freeze_blocks` blocks frozen (and run
    under no_grad with `detach_frozen`, eval.frozen_prefix)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bench.accounting import meta_model
    from eval.frozen_prefix import detach_frozen_blocks
    from eval.plan import min_train_flops_per_token

    cfg, model = meta_model(preset, **overrides)
    model.train()
    frozen = tuple(f"blocks.{i}." for i in range(freeze_blocks))
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen))
    if detach_frozen:
        detach_frozen_blocks(model, freeze_blocks)
    x = torch.zeros(seqs, cfg.seq_len, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, x).backward()
    return {**_causal(counter, x.numel()),
            "minimum": min_train_flops_per_token(cfg, cfg.seq_len, freeze_blocks, detach_frozen)}


def ttt_step_kernel_ops(preset: str = "seed", *, flat: bool = True, freeze_blocks: int = 2, **overrides) -> int:
    """Ops reaching kernels in one TTT optimizer step (zero, clip, SGD; one rank), the second step counted (the
    first creates the momentum buffers). The tensor-by-tensor path runs torch's foreach clip and SGD, as on a GPU.

    The count depends on how many tensors train, not on their sizes, so it runs on one-element CPU stand-ins for
    the preset's trainable tensors (meta tensors have no foreach path)."""
    from bench.accounting import KernelOpCounter, meta_model
    from eval.ttt_step import FlatGradSGD

    _, model = meta_model(preset, **overrides)
    frozen = tuple(f"blocks.{i}." for i in range(freeze_blocks))
    params = [torch.nn.Parameter(torch.zeros(1)) for name, _ in model.named_parameters() if not name.startswith(frozen)]
    step = FlatGradSGD(params, lr=0.002, momentum=0.9, grad_clip=1.0, flat=flat)
    if not flat:
        for group in step.optimizer.param_groups:
            group["foreach"] = True
    total = 0
    for _ in range(2):
        step.zero_grad()
        for p in params:  # what backward leaves: a gradient in every trainable tensor (not counted)
            if flat:
                p.grad.add_(1.0)
            else:
                p.grad = torch.ones_like(p)
        counter = KernelOpCounter()
        with counter:
            if flat:
                step.step()
                step.zero_grad()
            else:  # the reference clip as a GPU runs it (foreach norms); zero_grad sets grads to None (no op)
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                step.optimizer.step()
        total = sum(n for op, n in counter.ops.items() if not op.startswith("profiler."))  # markers, no kernels
    return total


def report(preset: str = "seed") -> str:
    score = score_flops_per_target(preset)
    score_all = score_flops_per_target(preset, all_positions=True)
    train = train_flops_per_token(preset)
    detached = train_flops_per_token(preset, detach_frozen=True)
    lines = ["# Evaluation accounting (hardware-independent)", "",
             f"Generated by `python -m bench.eval_accounting --preset {preset}`: FlopCounterMode on the meta device, "
             "causal attention corrected (bench/eval_accounting.py says how).", "", "| figure | value |", "|---|---|",
             f"| FLOPs per scored target, head at the scored positions only (stride 64) | {score['causal'] / 1e9:.4f} G |",
             f"| FLOPs per scored target, head at every position (the earlier path) | {score_all['causal'] / 1e9:.4f} G |",
             f"| FLOPs per scored target, minimum for the model and stride (eval.plan) | {score['minimum'] / 1e9:.4f} G |",
             f"| FLOPs per trained token, TTT with blocks 0-1 frozen | {train['causal'] / 1e6:.2f} M |",
             f"| FLOPs per trained token, minimum (model count, model.flops) | {train['minimum'] / 1e6:.2f} M |",
             f"| FLOPs per trained token, frozen blocks under no_grad (opt-in, another recipe) | "
             f"{detached['causal'] / 1e6:.2f} M (minimum {detached['minimum'] / 1e6:.2f} M) |",
             f"| kernel ops per TTT optimizer step, flat gradient buffer | {ttt_step_kernel_ops(preset, flat=True)} |",
             f"| kernel ops per TTT optimizer step, tensor by tensor (foreach) | "
             f"{ttt_step_kernel_ops(preset, flat=False)} |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_accounting", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed", help="model preset (default seed)")
    args = parser.parse_args(argv)
    print(report(args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
