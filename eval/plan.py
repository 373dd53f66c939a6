"""The evaluation plan: what a run will do before it does it, its FLOPs, its projected time, and epochs for a budget.

`python -m eval` prints the plan at start: windows, score batches (per rank: the busiest rank's count, which sets
the time), tokens forwarded and positions the head reads, TTT chunks, SGD steps and trained tokens, and FLOPs by
the model count of model.flops (matmuls 2 FLOPs per weight per token, causal attention at half the window):
  - scoring: every forwarded token (padded rows included: they are computed) costs the forward without the head,
    each head position (model.nll_at's K per row) the tied head;
  - TTT training: every trained token costs forward + backward with the frozen blocks' weight gradients left out.
The minimum per scored target is (window / stride) forwarded tokens plus one head position; per trained token it
is the training count itself. bench.eval_accounting counts what the code actually runs against these.

Time: `project(plan, batch_s, step_s)` is the scoring and training seconds of the plan at measured seconds per
score batch and per SGD step (one rank; ranks run in parallel); `epochs_for_budget` the largest epoch count whose
projected total fits a time budget (--ttt-budget-s).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from eval.windows import WindowPlan, chunk_window_bounds, num_chunks, plan_windows


class BudgetError(ValueError):
    """No epoch count fits the time budget: scoring alone is projected past it."""


@dataclass(frozen=True)
class ScorePlan:
    """One scoring pass over the windows (sliding eval, or TTT's scoring split by chunks)."""
    windows: int
    scored_targets: int
    batch: int
    score_batches: int  # per rank, the busiest rank
    forwarded_tokens: int  # all ranks, padded rows included
    head_positions: int  # all ranks
    flops: float


@dataclass(frozen=True)
class TTTPlan:
    chunks: int
    train_chunks: int
    seqs_per_chunk: int
    seqs_per_rank: int
    epochs: int
    tokens_per_epoch: int  # trained chunks x chunk tokens (all ranks)
    flops_per_trained_token: float

    @property
    def trained_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    @property
    def sgd_steps(self) -> int:
        """Per rank (every rank takes every step): trained chunks x epochs."""
        return self.train_chunks * self.epochs

    @property
    def flops(self) -> float:
        return self.trained_tokens * self.flops_per_trained_token

    def with_epochs(self, epochs: int) -> "TTTPlan":
        return dataclasses.replace(self, epochs=epochs)


@dataclass(frozen=True)
class EvalPlan:
    targets: int
    window: int
    stride: int
    world: int
    sliding: ScorePlan | None  # the pre-TTT sliding score (None when skipped)
    ttt_score: ScorePlan | None  # TTT's chunk-by-chunk scoring (None without TTT)
    ttt: TTTPlan | None

    def describe(self) -> list[str]:
        """The lines `python -m eval` prints before the first window is scored."""
        lines = []
        for name, s in (("sliding", self.sliding), ("TTT scoring", self.ttt_score)):
            if s is None:
                continue
            lines.append(
                f"plan: {name}: {s.windows:,} windows of {self.window} every {self.stride} -> {s.scored_targets:,} "
                f"scored targets | {s.score_batches:,} batches of {s.batch} per rank (x{self.world}) | "
                f"{_si(s.forwarded_tokens)} tokens forwarded, head at {_si(s.head_positions)} positions | "
                f"{_si(s.flops)}FLOP = {_si(s.flops / max(s.scored_targets, 1))}FLOP per scored target")
        if self.ttt is not None:
            t = self.ttt
            lines.append(
                f"plan: TTT training: {t.chunks:,} chunks, {t.train_chunks:,} trained ({t.seqs_per_chunk} sequences each, "
                f"{t.seqs_per_rank} per rank) x {t.epochs} epochs = {t.sgd_steps:,} SGD steps | "
                f"{_si(t.trained_tokens)} tokens trained | {_si(t.flops)}FLOP = "
                f"{_si(t.flops_per_trained_token)}FLOP per trained token")
        total = sum(s.flops for s in (self.sliding, self.ttt_score) if s) + (self.ttt.flops if self.ttt else 0.0)
        lines.append(f"plan: total {_si(total)}FLOP")
        return lines

    def with_epochs(self, epochs: int) -> "EvalPlan":
        return dataclasses.replace(self, ttt=self.ttt.with_epochs(epochs)) if self.ttt else self

    def to_dict(self) -> dict:
        """The plan's figures (JSON-ready), TTT's derived totals included."""
        out = dataclasses.asdict(self)
        if self.ttt is not None:
            out["ttt"].update(trained_tokens=self.ttt.trained_tokens, sgd_steps=self.ttt.sgd_steps, flops=self.ttt.flops)
        return out


def _si(value: float) -> str:
    """3 significant figures with an SI prefix: 1.98 G, 150 P, 219 M."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def score_plan(cfg, windows: WindowPlan, groups: np.ndarray, batch: int, world: int) -> ScorePlan:
    """Batches, forwarded tokens, head positions and FLOPs of scoring `windows` group by group (`groups`: window
    index bounds, one group per TTT chunk, or [0, n] for one pass), each group split contiguously over ranks."""
    from model.flops import forward_flops_per_token

    sizes = np.diff(groups)
    per_rank_batches = np.zeros(world, dtype=np.int64)
    for rank in range(world):
        share = sizes * (rank + 1) // world - sizes * rank // world
        per_rank_batches[rank] = int((-(-share // batch)).sum())
    rows = int(per_rank_batches.sum()) * batch
    head = _head_positions(windows, groups, batch, world, rows)
    head_flops = 2 * cfg.vocab_size * cfg.model_dim
    body = forward_flops_per_token(cfg, windows.window) - head_flops
    return ScorePlan(windows=len(windows), scored_targets=windows.scored_count(), batch=batch,
                     score_batches=int(per_rank_batches.max()), forwarded_tokens=rows * windows.window,
                     head_positions=head, flops=rows * windows.window * body + head * head_flops)


def _head_positions(windows: WindowPlan, groups: np.ndarray, batch: int, world: int, rows: int) -> int:
    """rows x stride, plus (window - stride) per row of every batch holding a window that scores more than `stride`
    targets (the first window), as eval.scoring reads the head."""
    wide = np.flatnonzero(windows.lengths - windows.score_from > windows.stride)
    wide_batches = set()
    for w in wide.tolist():
        g = int(np.searchsorted(groups, w, side="right")) - 1
        lo, hi = int(groups[g]), int(groups[g + 1])
        for rank in range(world):
            r_lo = lo + (hi - lo) * rank // world
            r_hi = lo + (hi - lo) * (rank + 1) // world
            if r_lo <= w < r_hi:
                wide_batches.add((g, rank, (w - r_lo) // batch))
    return rows * windows.stride + len(wide_batches) * batch * (windows.window - windows.stride)


def make_plan(cfg, num_targets: int, *, window: int, stride: int, batch: int, seed_quirk: bool = False,
              world: int = 1, sliding: bool = True, ttt=None) -> EvalPlan:
    """The plan of `python -m eval` for a model config `cfg` (model.config.ModelConfig) and a stream of
    `num_targets` targets: the pre-TTT sliding pass when `sliding`, TTT (an eval.ttt.TTTConfig) when given."""
    windows = plan_windows(num_targets, window, stride, seed_quirk)
    sliding_plan = score_plan(cfg, windows, np.array([0, len(windows)]), batch, world) if sliding else None
    ttt_score = ttt_plan = None
    if ttt is not None:
        ttt_score = score_plan(cfg, windows, chunk_window_bounds(windows, ttt.chunk_tokens), batch, world)
        ttt_plan = plan_ttt(cfg, num_targets, window, ttt, world)
    return EvalPlan(num_targets, window, stride, world, sliding_plan, ttt_score, ttt_plan)


def plan_ttt(cfg, num_targets: int, window: int, ttt, world: int) -> TTTPlan:
    """Chunks, SGD steps and trained tokens of score-first TTT (the last chunk is scored, never trained)."""
    chunks = num_chunks(num_targets, ttt.chunk_tokens)
    train_chunks = chunks - 1
    seqs = ttt.chunk_tokens // window
    return TTTPlan(chunks=chunks, train_chunks=train_chunks, seqs_per_chunk=seqs, seqs_per_rank=seqs // world,
                   epochs=ttt.epochs, tokens_per_epoch=train_chunks * ttt.chunk_tokens,
                   flops_per_trained_token=min_train_flops_per_token(cfg, window, ttt.freeze_blocks,
                                                                     getattr(ttt, "detach_frozen", False)))


def min_train_flops_per_token(cfg, window: int, freeze_blocks: int, detach_frozen: bool = False) -> float:
    """FLOPs per trained token of TTT: model.flops' training count with the frozen blocks' weight gradients left
    out (their backward still passes the gradient on to the embeddings); with `detach_frozen` their backward is
    skipped too, so each costs only its forward (2 FLOPs per weight, one attention forward)."""
    from model import flops

    total = flops.train_flops_per_token(cfg, window, frozen_layers=freeze_blocks)
    if detach_frozen:
        per_layer_attention = flops.attention_forward_flops_per_token(cfg, window) / cfg.num_layers
        total -= freeze_blocks * (2 * flops.layer_matmul_params(cfg) + 2 * per_layer_attention)
    return total


def min_score_flops_per_target(cfg, window: int, stride: int) -> float:
    """The least forward FLOPs per scored target at this window and stride: each window of `window` tokens
    (every block over every token) serves `stride` targets, and the head runs once per target."""
    from model.flops import forward_flops_per_token

    head = 2 * cfg.vocab_size * cfg.model_dim
    return (forward_flops_per_token(cfg, window) - head) * window / stride + head


def project(plan: EvalPlan, batch_s: float, step_s: float, *, epochs: int | None = None,
            sliding: bool = False, elapsed_s: float = 0.0) -> dict:
    """Projected seconds of the plan's TTT (scoring + `epochs` of training; the sliding pass too when `sliding`)
    at `batch_s` seconds per score batch and `step_s` per SGD step on one rank, after `elapsed_s` already spent."""
    if plan.ttt is None or plan.ttt_score is None:
        raise ValueError("project: the plan has no TTT")
    epochs = plan.ttt.epochs if epochs is None else epochs
    score_s = plan.ttt_score.score_batches * batch_s
    if sliding and plan.sliding is not None:
        score_s += plan.sliding.score_batches * batch_s
    train_s = plan.ttt.train_chunks * epochs * step_s
    return {"epochs": epochs, "score_s": score_s, "train_s": train_s, "elapsed_s": elapsed_s,
            "total_s": elapsed_s + score_s + train_s}


def epochs_for_budget(plan: EvalPlan, budget_s: float, batch_s: float, step_s: float, *, elapsed_s: float = 0.0,
                      max_epochs: int = 50) -> dict:
    """The largest epoch count in [0, max_epochs] whose projected total (elapsed + scoring + training) fits
    `budget_s`, with its projection; BudgetError when even no training does not fit."""
    if budget_s <= 0:
        raise ValueError(f"the time budget must be positive, got {budget_s}")
    base = project(plan, batch_s, step_s, epochs=0, elapsed_s=elapsed_s)
    if base["total_s"] > budget_s:
        raise BudgetError(f"the {budget_s:.0f} s budget cannot hold this evaluation: scoring alone is projected at "
                          f"{base['score_s']:.1f} s after {elapsed_s:.1f} s spent ({base['total_s']:.1f} s in all)")
    per_epoch = plan.ttt.train_chunks * step_s
    fit = max_epochs if per_epoch <= 0 else int(math.floor((budget_s - base["total_s"]) / per_epoch + 1e-9))
    return project(plan, batch_s, step_s, epochs=max(0, min(max_epochs, fit)), elapsed_s=elapsed_s)
