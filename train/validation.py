"""In-training validation: val loss and exact val_bpb (seed-spec §2.3-2.4) over non-overlapping seq_len windows.

The val sequences are split contiguously across ranks; Σnll, token and byte counts are summed in float64 and
all-reduced before the ratio is formed once.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from train.data.tokenizer import ByteLUTs, bits_per_byte, target_bytes


@torch.no_grad()
def evaluate(model, val_tokens: torch.Tensor, seq_len: int, luts: ByteLUTs, batch_seqs: int,
             device, autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> tuple[float, float]:
    """(val_loss, val_bpb) of `model` (an unwrapped GPT) on `val_tokens` (1 + k*seq_len tokens)."""
    num_seqs = (val_tokens.numel() - 1) // seq_len
    if num_seqs < 1:
        raise ValueError(f"validation needs at least {seq_len + 1} tokens, got {val_tokens.numel()}")
    first, last = num_seqs * rank // world_size, num_seqs * (rank + 1) // world_size
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, tokens, bytes
    was_training = model.training
    model.eval()
    luts = luts.to(device)
    for s in range(first, last, batch_seqs):
        e = min(s + batch_seqs, last)
        span = val_tokens[s * seq_len:e * seq_len + 1].to(device)
        x = span[:-1].reshape(-1, seq_len)
        y = span[1:].reshape(-1, seq_len)
        with autocast():
            nll = model.per_token_nll(x, y)
        sums[0] += nll.double().sum()
        sums[1] += y.numel()
        sums[2] += target_bytes(x, y, luts).double().sum()
    model.train(was_training)
    if world_size > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    nll_sum, tokens, nbytes = sums.tolist()
    return nll_sum / tokens, bits_per_byte(nll_sum, tokens, nbytes)
