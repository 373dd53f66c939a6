"""Exact validation scoring: sliding windows (spec §6.2, exact-once by default) and the plain eval.

`evaluate` is the sliding-window val_bpb: windows of `window` tokens every `stride` tokens, batched
`batch` windows per forward with the last batch zero-padded (so every batch has the same shape; padded
positions are never scored). The blocks run over whole windows, the tied head and the loss only at the
positions a window scores (`model.nll_at`: the last `stride` of 2048 in the seed eval, about 1.4% of the
forward FLOPs saved; `all_positions=True` keeps the full-head path). Bytes per target come from the spec
§2.3 tables, sums in float64 on the device (eval.totals). Compiled by default on CUDA. Under torchrun the
windows are split contiguously across ranks and the sums all-reduced.

`plain_evaluate` is the non-overlapping eval used during training (each target scored once with the
context of its own sequence); with stride == window the sliding eval scores exactly the same targets with
the same contexts, which the tests use as a cross-check.

Scoring runs under torch.no_grad(), not inference_mode: tensors created under inference_mode (e.g. RoPE
caches filled lazily) cannot later be saved for backward, which would break TTT in the same run (§8.7).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from eval.distributed import rank_and_world
from kernels.autocast import autocast_for  # noqa: F401  (eval.ttt and eval.budget import it from here)
from eval.legality import LegalityGuard
from eval.totals import ScoreAccumulator, ScoreTotals
from eval.windows import WindowPlan, contiguous_share, plan_windows


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_seq_len(model: torch.nn.Module) -> int:
    """The model's configured sequence length (model.cfg or model.config), the default window."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "seq_len"):
        raise ValueError("cannot infer the window from the model (no cfg.seq_len); pass window= explicitly")
    return int(cfg.seq_len)


def stream_target_bytes(val_tokens: torch.Tensor, luts) -> torch.Tensor:
    """Bytes of every target in the stream (length M = len(val_tokens) - 1), spec §2.3."""
    from train.data.tokenizer import target_bytes
    return target_bytes(val_tokens[:-1], val_tokens[1:], luts)


def _prepare(val_tokens: torch.Tensor, luts, target_bytes: torch.Tensor | None,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and move the token stream and the per-target bytes to `device`."""
    if val_tokens.dim() != 1 or len(val_tokens) < 2:
        raise ValueError(f"val_tokens must be a 1-D stream of at least 2 tokens, got shape {tuple(val_tokens.shape)}")
    if target_bytes is None:
        if luts is None:
            raise ValueError("pass either luts (ByteLUTs) or target_bytes (bytes per target)")
        target_bytes = stream_target_bytes(val_tokens.cpu(), luts)
    if len(target_bytes) != len(val_tokens) - 1:
        raise ValueError(f"target_bytes has {len(target_bytes)} entries, expected {len(val_tokens) - 1} "
                         "(one per target)")
    return val_tokens.to(device=device, dtype=torch.long), target_bytes.to(device=device, dtype=torch.int32)


def plan_on_device(plan: WindowPlan, device: torch.device) -> torch.Tensor:
    """The plan's (starts, lengths, score_from) as one (3, n) int64 tensor on `device`, cached per device,
    so batching never copies from the host."""
    key = str(device)
    if key not in plan.device_tables:
        plan.device_tables[key] = torch.from_numpy(np.stack([plan.starts, plan.lengths, plan.score_from])).to(device)
    return plan.device_tables[key]


def score_windows(model: torch.nn.Module, tokens: torch.Tensor, target_bytes: torch.Tensor, plan: WindowPlan,
                  lo: int, hi: int, batch: int, accumulator: ScoreAccumulator,
                  guard: LegalityGuard | None = None, on_batch: Callable[[int], None] | None = None,
                  nll_fn: Callable | None = None, all_positions: bool = False) -> None:
    """Score windows [lo, hi) of `plan` in batches of `batch` (last batch zero-padded) into `accumulator`.

    `tokens`/`target_bytes` must already live on the model's device. The model must be in eval mode and
    gradients off (the callers do that). Each batch's scored range is reported to `guard` once its NLL exists.
    The head and the loss run only where the batch's windows score (model.nll_at at `plan.head_width`
    positions per row: the last `stride`, or the whole window for the batch holding the first window);
    `all_positions` runs them over every position (model.per_token_nll) as before, the slower reference path.
    `nll_fn` replaces the model method (e.g. its torch.compile'd version; batches have one of two shapes).
    Nothing here reads a value back to the host: the sums stay on the device.
    """
    nll_fn = nll_fn or (model.per_token_nll if all_positions else model.nll_at)
    device = tokens.device
    positions = torch.arange(plan.window, device=device)
    rows = torch.arange(batch, device=device)
    table = plan_on_device(plan, device)
    for b0 in range(lo, hi, batch):
        b1 = min(b0 + batch, hi)
        picked = (b0 + rows).clamp_max(len(plan) - 1)  # rows past b1 are padding: they get length 0 below
        starts, score_from = table[0, picked], table[2, picked]
        lengths = torch.where(b0 + rows < b1, table[1, picked], 0)
        real = positions[None, :] < lengths[:, None]
        index = torch.where(real, starts[:, None] + positions[None, :], 0)
        x = torch.where(real, tokens[index], 0)
        with autocast_for(device):
            if all_positions:
                scored = real & (positions[None, :] >= score_from[:, None])
                nll = nll_fn(x, torch.where(real, tokens[index + 1], 0))
            else:
                # the last K real positions of each row; those before its score_from (or before 0) are not scored
                width = plan.head_width(b0, b1)
                at = lengths[:, None] - width + positions[None, :width]
                scored = at >= score_from[:, None]
                at = at.clamp_min(0)
                index = starts[:, None] + at
                nll = nll_fn(x, at, torch.where(scored, tokens[index + 1], 0))
        accumulator.add(nll.float(), scored, target_bytes[index])
        if guard is not None:
            guard.record_scored(*plan.scored_through(b0, b1))
        if on_batch is not None:
            on_batch(b1 - b0)


def evaluate(model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *, target_bytes: torch.Tensor | None = None,
             window: int | None = None, stride: int = 64, batch: int = 32, seed_quirk: bool = False,
             progress: bool = False, compile: bool | None = None, all_positions: bool = False) -> dict:
    """Sliding-window val_loss / val_bpb of `model` on the stream `val_tokens` (exact float64 sums).

    Pass the tokenizer's `luts` (train.data.tokenizer.ByteLUTs) or precomputed `target_bytes` (one count per
    target). `compile` scores through torch.compile of the scoring method (static shapes; None: on CUDA only).
    `all_positions` runs the head over every position, not only the scored ones (the reference path).
    Returns {"val_loss", "val_bpb", "nll_sum", "tokens", "bytes", "windows", "window", "stride", "seconds",
    "tokens_per_s"}; tokens/bytes/nll are global (all ranks) and "windows" is the global window count.
    """
    device = model_device(model)
    tokens, nbytes = _prepare(val_tokens, luts, target_bytes, device)
    window = window or model_seq_len(model)
    plan = plan_windows(len(tokens) - 1, window, stride, seed_quirk)
    rank, world = rank_and_world()
    lo, hi = contiguous_share(0, len(plan), rank, world)
    accumulator = ScoreAccumulator(device)
    bar = _progress_bar(hi - lo, "sliding eval", progress and rank == 0)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        score_windows(model, tokens, nbytes, plan, lo, hi, batch, accumulator,
                      on_batch=bar.update if bar is not None else None,
                      nll_fn=compiled_nll(model, compile_default(compile, device), all_positions),
                      all_positions=all_positions)
    totals = accumulator.totals()
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.set_postfix(bpb=f"{totals.bpb:.4f}")
        bar.close()
    model.train(was_training)
    return {**totals.to_dict(), "windows": len(plan), "window": window, "stride": stride,
            "seconds": seconds, "tokens_per_s": totals.token_count / max(seconds, 1e-9)}


def plain_evaluate(model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *,
                   target_bytes: torch.Tensor | None = None, seq_len: int | None = None, batch: int = 32) -> dict:
    """Non-overlapping eval: the stream cut into seq_len sequences, loss from model(x, y) (its mean loss).

    The stream must hold 1 + k*seq_len tokens (as common.shards.load_validation_tokens truncates it).
    Single process only; it exists as the training-time metric and as an independent cross-check.
    """
    device = model_device(model)
    tokens, nbytes = _prepare(val_tokens, luts, target_bytes, device)
    seq_len = seq_len or model_seq_len(model)
    num_targets = len(tokens) - 1
    if num_targets % seq_len:
        raise ValueError(f"plain eval needs 1 + k*seq_len tokens; got {len(tokens)} for seq_len {seq_len}")
    x_all = tokens[:-1].view(-1, seq_len)
    y_all = tokens[1:].view(-1, seq_len)
    nll_sum = 0.0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b0 in range(0, len(x_all), batch):
            x, y = x_all[b0:b0 + batch], y_all[b0:b0 + batch]
            with autocast_for(device):
                loss = model(x, y)
            nll_sum += float(loss.double()) * y.numel()
    model.train(was_training)
    return ScoreTotals(nll_sum, float(num_targets), float(nbytes.double().sum())).to_dict()


def compile_default(compile: bool | None, device: torch.device) -> bool:
    """Whether to torch.compile the scoring and TTT forwards: as asked, else on CUDA (not on the CPU, where
    the Triton kernels run in the interpreter and compiling costs more than it saves)."""
    return device.type == "cuda" if compile is None else bool(compile)


def compiled_nll(model: torch.nn.Module, enabled: bool, all_positions: bool = False) -> Callable | None:
    """torch.compile of the scoring method (model.nll_at, or per_token_nll with `all_positions`) with static
    shapes when enabled (None: call it eagerly)."""
    if not enabled:
        return None
    return torch.compile(model.per_token_nll if all_positions else model.nll_at, dynamic=False)


def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on rank 0 when asked for (None otherwise, or when tqdm is missing)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="win", dynamic_ncols=True)
