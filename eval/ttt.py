"""Legal score-first test-time training over the sliding-window eval (spec §6.3, §6.4).

The validation stream is cut into chunks of C target positions. For chunk ci, in order:
  1. score: every window whose first scored position lies in the chunk is scored (model.eval(), no_grad)
     and its sums join the totals; the LegalityGuard records the scored target range;
  2. adapt (all chunks but the last): `epochs` SGD steps, each on the whole chunk as non-overlapping
     seq_len sequences aligned to the chunk start (inputs [ci*C, (ci+1)*C), targets shifted by one).
     Each step first asks the guard that all of its targets were already scored (LegalityError if not).
One SGD(lr, momentum) optimizer is created up front, so momentum carries across chunks; the LR follows
lr * ½(1 + cos(π·ci/(n_chunks-1))), optionally after a linear warmup over the first `warmup_frac` of chunks.
Parameters of the first `freeze_blocks` blocks stay frozen; every other parameter trains, including the
bigram scale that training keeps frozen (598's TTT optimizer took all non-frozen parameters: 22,301,260 of
27,030,108 at the seed shapes, spec §6.3). Under torchrun the chunk's windows and
training sequences are split across ranks, score sums all-reduced and gradients averaged (no DDP in eval).

Without waste: scoring reads the head only at the scored positions (eval.scoring); the optimizer step runs on
one flat gradient buffer with fused SGD (eval.ttt_step); the loop reads one value back to the host per chunk
(the chunk's score totals) and times its phases with CUDA events read after that sync (eval.phase_clock);
forwards are torch.compile'd by default on CUDA. The frozen blocks still pass gradients back (dgrad, no weight
gradient): the embeddings before them train, and 598's TTT trained them through those blocks
(`detach_frozen=True` runs them under no_grad instead: cheaper, but another recipe; eval.frozen_prefix).
`TTTConfig(flat_step=False)` with `all_positions=True` is the earlier, slower path, kept as the reference.

Time: `fit_epochs_to_budget` (eval.budget) times a score batch and an SGD step on random tokens, then picks the
largest epoch count whose projected total fits the budget. Each chunk record carries the projected total from
the rates measured so far.

The model is adapted in place: pass a copy if the caller still needs the original weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from eval.budget import fit_epochs_to_budget, measure_rates
from eval.distributed import rank_and_world
from eval.frozen_prefix import detach_frozen_blocks
from eval.legality import LegalityGuard
from eval.phase_clock import PhaseClock
from eval.scoring import (_prepare, _progress_bar, autocast_for, compile_default, compiled_nll, model_device,
                          model_seq_len, score_windows)
from eval.totals import ScoreAccumulator, ScoreTotals
from eval.ttt_step import FlatGradSGD, late_qat_for_training
from eval.windows import chunk_target_range, chunk_window_bounds, contiguous_share, num_chunks, plan_windows


@dataclass(frozen=True)
class TTTConfig:
    """Score-first TTT settings; defaults are PR 598's (spec §6.3). `flat_step=False`: the tensor-by-tensor
    optimizer step (the reference path, eval.ttt_step). `detach_frozen`: the frozen blocks under no_grad
    (eval.frozen_prefix; changes the gradients of the embeddings, so not 598's recipe)."""
    chunk_tokens: int = 32768
    epochs: int = 10
    lr: float = 0.002
    momentum: float = 0.9
    freeze_blocks: int = 2
    grad_clip: float = 1.0
    warmup_frac: float = 0.0
    batch_seqs: int = 32
    qat: bool = False
    flat_step: bool = True
    detach_frozen: bool = False


class ScoreFirstTTT:
    """The TTT loop, exposed step by step: `score_chunk(ci)` then `train_chunk(ci)`, or `run()` for all."""

    def __init__(self, model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *,
                 target_bytes: torch.Tensor | None = None, config: TTTConfig = TTTConfig(),
                 window: int | None = None, stride: int = 64, batch: int = 32, seed_quirk: bool = False,
                 compile: bool | None = None, all_positions: bool = False,
                 clock: Callable[[], float] = time.perf_counter, started_at: float | None = None):
        self.model, self.config, self.batch, self.all_positions = model, config, batch, all_positions
        self.device = model_device(model)
        self.clock = clock
        self.started_at = clock() if started_at is None else started_at
        # fixed shapes everywhere (padded score batches, whole-chunk train micro-batches), so compiling is cheap
        compile = compile_default(compile, self.device)
        self.nll_fn = compiled_nll(model, compile, all_positions) or (
            model.per_token_nll if all_positions else model.nll_at)
        self.train_fn = torch.compile(model, dynamic=False) if compile else model
        self.tokens, self.target_bytes = _prepare(val_tokens, luts, target_bytes, self.device)
        self.window = window or model_seq_len(model)
        if config.chunk_tokens % self.window:
            raise ValueError(f"TTT chunk size {config.chunk_tokens} must be a multiple of the window/sequence "
                             f"length {self.window} (training sequences are aligned to the chunk start)")
        self.num_targets = len(self.tokens) - 1
        self.seed_quirk = seed_quirk
        self.plan = plan_windows(self.num_targets, self.window, stride, seed_quirk)
        self.bounds = chunk_window_bounds(self.plan, config.chunk_tokens)
        self.num_chunks = num_chunks(self.num_targets, config.chunk_tokens)
        self.rank, self.world = rank_and_world()
        sizes = np.diff(self.bounds)
        share = sizes * (self.rank + 1) // self.world - sizes * self.rank // self.world
        self.chunk_batches = -(-share // batch)  # this rank's score batches per chunk
        self.guard = LegalityGuard()
        self.totals = ScoreTotals()
        self._saved_requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        frozen = tuple(f"blocks.{i}." for i in range(config.freeze_blocks))
        self.params = []
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
            if p.requires_grad:
                self.params.append(p)
        self.trainable_params = sum(p.numel() for p in self.params)
        self.frozen_params = sum(p.numel() for p in model.parameters()) - self.trainable_params
        self.step = FlatGradSGD(self.params, lr=config.lr, momentum=config.momentum, grad_clip=config.grad_clip,
                                flat=config.flat_step)
        self.optimizer = self.step.optimizer
        self._undo_detach = detach_frozen_blocks(model, config.freeze_blocks) if config.detach_frozen else None
        self.phases = PhaseClock(self.device, clock)
        self.trained_tokens = 0
        self.rates: dict | None = None  # seconds per score batch / SGD step, from measure_rates
        self.budget: dict | None = None  # the epochs chosen for a time budget, from fit_epochs_to_budget

    def lr_for(self, chunk_index: int) -> float:
        """Cosine over the chunk index (no warmup in 598; PRs 612+ warm up over the first 5% of chunks)."""
        cfg = self.config
        lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * chunk_index / max(self.num_chunks - 1, 1)))
        warmup = math.ceil(cfg.warmup_frac * self.num_chunks)
        if chunk_index < warmup:
            lr = cfg.lr * (chunk_index + 1) / warmup
        return lr

    def score_chunk(self, chunk_index: int) -> ScoreTotals:
        """Score chunk `chunk_index`'s windows with the current weights; add them to the totals."""
        w_lo, w_hi = int(self.bounds[chunk_index]), int(self.bounds[chunk_index + 1])
        lo, hi = contiguous_share(w_lo, w_hi, self.rank, self.world)
        accumulator = ScoreAccumulator(self.device)
        self.model.eval()
        mark = self.phases.start("score")
        with torch.no_grad():
            score_windows(self.model, self.tokens, self.target_bytes, self.plan, lo, hi, self.batch,
                          accumulator, guard=self.guard, nll_fn=self.nll_fn, all_positions=self.all_positions)
        self.phases.stop(mark, int(self.chunk_batches[chunk_index]))
        chunk = accumulator.totals()  # the chunk's one host sync; all-reduced: every rank has scored this chunk
        self.phases.settle()
        if self.world > 1 and w_hi > w_lo:
            self.guard.record_scored(*self.plan.scored_through(w_lo, w_hi))
        self.totals = self.totals + chunk
        return chunk

    def train_chunk(self, chunk_index: int, lr: float | None = None) -> None:
        """`epochs` SGD steps on chunk `chunk_index`'s tokens; each step is checked by the legality guard."""
        cfg = self.config
        lo, hi = chunk_target_range(chunk_index, cfg.chunk_tokens, self.num_targets)
        if (hi - lo) % self.window:
            raise ValueError(f"chunk {chunk_index} holds {hi - lo} tokens, not a multiple of {self.window}; "
                             "the short last chunk is never trained on")
        self.guard.check_train(lo + 1, hi)
        x_mine, y_mine = self._rank_sequences(self.tokens[lo:hi], self.tokens[lo + 1:hi + 1])
        self.step.set_lr(self.lr_for(chunk_index) if lr is None else lr)
        self.model.train()
        mark = self.phases.start("train")
        with late_qat_for_training(self.model, cfg.qat):
            for _ in range(cfg.epochs):
                self.guard.check_train(lo + 1, hi)
                self._sgd_step(x_mine, y_mine)
        self.phases.stop(mark, cfg.epochs)
        if not cfg.flat_step:
            self.step.zero_grad()  # free the per-tensor gradients between chunks (the flat buffer stays)
        self.trained_tokens += (hi - lo) * cfg.epochs
        self.model.eval()

    def _rank_sequences(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a chunk's training sequences (inputs, targets), each (seqs, window)."""
        x_all, y_all = inputs.view(-1, self.window), targets.view(-1, self.window)
        if len(x_all) % self.world:
            raise ValueError(f"{len(x_all)} TTT sequences per chunk do not split evenly over {self.world} ranks")
        per_rank = len(x_all) // self.world
        return (x_all[self.rank * per_rank:(self.rank + 1) * per_rank],
                y_all[self.rank * per_rank:(self.rank + 1) * per_rank])

    def _sgd_step(self, x_mine: torch.Tensor, y_mine: torch.Tensor) -> None:
        """One SGD step on this rank's sequences (micro-batches of batch_seqs), gradients averaged over ranks."""
        per_rank, micro = len(x_mine), self.config.batch_seqs
        self.step.zero_grad()
        for b0 in range(0, per_rank, micro):
            x, y = x_mine[b0:b0 + micro], y_mine[b0:b0 + micro]
            with autocast_for(self.device):
                loss = self.train_fn(x, y)
            (loss.float() * (len(x) / per_rank)).backward()
        self.step.step()

    def projected_total_s(self, chunk_index: int) -> float | None:
        """Projected wall seconds of the whole run (from `started_at`) once chunk `chunk_index` is scored and not
        yet trained: elapsed + this rank's remaining batches and steps at the rates measured so far."""
        batch_s = self.phases.rate("score") or (self.rates or {}).get("batch_s")
        step_s = self.phases.rate("train") or (self.rates or {}).get("step_s")
        if batch_s is None or (step_s is None and self.config.epochs):
            return None
        remaining_batches = int(self.chunk_batches[chunk_index + 1:].sum())
        remaining_steps = self.config.epochs * max(self.num_chunks - 1 - chunk_index, 0)
        return self.clock() - self.started_at + remaining_batches * batch_s + remaining_steps * (step_s or 0.0)

    def run(self, progress: bool = False, on_chunk: Callable[[dict], None] | None = None) -> dict:
        """Score then adapt every chunk in order; returns the totals, timing and the per-chunk log."""
        bar = _progress_bar(self.num_chunks, "score-first TTT", progress and self.rank == 0)
        if bar is not None:
            bar.unit = "chunk"
        records = []
        try:
            for ci in range(self.num_chunks):
                chunk = self.score_chunk(ci)
                last = ci == self.num_chunks - 1
                lr = None if last else self.lr_for(ci)
                record = {"chunk": ci, "windows": int(self.bounds[ci + 1] - self.bounds[ci]),
                          "tokens": int(chunk.token_count), "bytes": int(chunk.byte_count),
                          "nll_sum": chunk.nll_sum, "chunk_bpb": chunk.bpb, "running_bpb": self.totals.bpb,
                          "running_loss": self.totals.loss, "lr": lr,
                          "elapsed_s": self.clock() - self.started_at, "projected_total_s": self.projected_total_s(ci)}
                records.append(record)
                if on_chunk is not None:
                    on_chunk(record)
                if bar is not None:
                    bar.set_postfix(bpb=f"{self.totals.bpb:.4f}")
                    bar.update(1)
                if not last:
                    self.train_chunk(ci, lr)
        finally:
            if bar is not None:
                bar.close()
            self.phases.finish()
            self.restore_requires_grad()
        score_s, train_s = self.phases.seconds("score"), self.phases.seconds("train")
        return {**self.totals.to_dict(), "chunks": self.num_chunks, "windows": len(self.plan),
                "window": self.window, "stride": self.plan.stride, "ttt": asdict(self.config),
                "trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
                "score_seconds": score_s, "train_seconds": train_s,
                "wall_seconds": self.clock() - self.started_at, "budget": self.budget,
                "score_tokens_per_s": self.totals.token_count / max(score_s, 1e-9),
                "train_tokens_per_s": self.trained_tokens / max(train_s, 1e-9),
                "chunk_log": records}

    def restore_requires_grad(self) -> None:
        """Give back the model as it came: requires_grad flags restored, no gradient tensors left on it."""
        self.step.release()
        if self._undo_detach is not None:
            self._undo_detach()
            self._undo_detach = None
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._saved_requires_grad[name])

    # ---- time budget (eval.budget) -------------------------------------------------------------------
    def measure_rates(self, reps: int = 2) -> dict:
        """Seconds per score batch and per SGD step, timed on random tokens (eval.budget.measure_rates)."""
        return measure_rates(self, reps)

    def fit_epochs_to_budget(self, budget_s: float, max_epochs: int = 50, reps: int = 2) -> dict:
        """Set the epoch count to the largest whose projected total fits `budget_s` (eval.budget)."""
        return fit_epochs_to_budget(self, budget_s, max_epochs, reps)


def ttt_evaluate(model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *,
                 target_bytes: torch.Tensor | None = None, config: TTTConfig = TTTConfig(),
                 window: int | None = None, stride: int = 64, batch: int = 32, seed_quirk: bool = False,
                 progress: bool = False, on_chunk: Callable[[dict], None] | None = None,
                 compile: bool | None = None, all_positions: bool = False, budget_s: float | None = None,
                 max_epochs: int = 50, started_at: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """Sliding-window val_bpb with legal score-first TTT (adapts `model` in place); see ScoreFirstTTT.run.
    With `budget_s`, the epoch count is the largest that fits (ScoreFirstTTT.fit_epochs_to_budget)."""
    ttt = ScoreFirstTTT(model, val_tokens, luts, target_bytes=target_bytes, config=config, window=window,
                        stride=stride, batch=batch, seed_quirk=seed_quirk, compile=compile,
                        all_positions=all_positions, clock=clock, started_at=started_at)
    if budget_s is not None:
        try:
            ttt.fit_epochs_to_budget(budget_s, max_epochs)
        except BaseException:
            ttt.restore_requires_grad()
            raise
    return ttt.run(progress=progress, on_chunk=on_chunk)
