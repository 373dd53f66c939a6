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

The model is adapted in place: pass a copy if the caller still needs the original weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from eval.distributed import average_gradients_, rank_and_world
from eval.legality import LegalityGuard
from eval.scoring import (_prepare, _progress_bar, autocast_for, compiled_nll, model_device, model_seq_len,
                          score_windows)
from eval.totals import ScoreAccumulator, ScoreTotals
from eval.windows import chunk_target_range, chunk_window_bounds, contiguous_share, num_chunks, plan_windows


@dataclass(frozen=True)
class TTTConfig:
    """Score-first TTT settings; defaults are PR 598's (spec §6.3)."""
    chunk_tokens: int = 32768
    epochs: int = 10
    lr: float = 0.002
    momentum: float = 0.9
    freeze_blocks: int = 2
    grad_clip: float = 1.0
    warmup_frac: float = 0.0
    batch_seqs: int = 32
    qat: bool = False


class ScoreFirstTTT:
    """The TTT loop, exposed step by step: `score_chunk(ci)` then `train_chunk(ci)`, or `run()` for all."""

    def __init__(self, model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *,
                 target_bytes: torch.Tensor | None = None, config: TTTConfig = TTTConfig(),
                 window: int | None = None, stride: int = 64, batch: int = 32, seed_quirk: bool = False,
                 compile: bool = False):
        self.model, self.config, self.batch = model, config, batch
        # fixed shapes everywhere (padded score batches, whole-chunk train micro-batches), so compiling is cheap
        self.nll_fn = compiled_nll(model, compile)
        self.train_fn = torch.compile(model, dynamic=False) if compile else model
        self.device = model_device(model)
        self.tokens, self.target_bytes = _prepare(val_tokens, luts, target_bytes, self.device)
        self.window = window or model_seq_len(model)
        if config.chunk_tokens % self.window:
            raise ValueError(f"TTT chunk size {config.chunk_tokens} must be a multiple of the window/sequence "
                             f"length {self.window} (training sequences are aligned to the chunk start)")
        self.num_targets = len(self.tokens) - 1
        self.plan = plan_windows(self.num_targets, self.window, stride, seed_quirk)
        self.bounds = chunk_window_bounds(self.plan, config.chunk_tokens)
        self.num_chunks = num_chunks(self.num_targets, config.chunk_tokens)
        self.rank, self.world = rank_and_world()
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
        self.optimizer = torch.optim.SGD(self.params, lr=config.lr, momentum=config.momentum)
        self.score_seconds = self.train_seconds = 0.0
        self.trained_tokens = 0

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
        t0 = time.perf_counter()
        with torch.no_grad():
            score_windows(self.model, self.tokens, self.target_bytes, self.plan, lo, hi, self.batch,
                          accumulator, guard=self.guard, nll_fn=self.nll_fn)
        chunk = accumulator.totals()  # all-reduced: every rank has finished scoring this chunk
        self.score_seconds += time.perf_counter() - t0
        if self.world > 1 and w_hi > w_lo:
            self.guard.record_scored(int(self.plan.first_scored[w_lo]) + 1, int(self.plan.ends[w_lo:w_hi].max()))
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
        x_all = self.tokens[lo:hi].view(-1, self.window)
        y_all = self.tokens[lo + 1:hi + 1].view(-1, self.window)
        if len(x_all) % self.world:
            raise ValueError(f"{len(x_all)} TTT sequences per chunk do not split evenly over {self.world} ranks")
        per_rank = len(x_all) // self.world
        x_mine = x_all[self.rank * per_rank:(self.rank + 1) * per_rank]
        y_mine = y_all[self.rank * per_rank:(self.rank + 1) * per_rank]
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_for(chunk_index) if lr is None else lr
        self.model.train()
        t0 = time.perf_counter()
        with _fake_quant(self.model, cfg.qat):
            for _ in range(cfg.epochs):
                self.guard.check_train(lo + 1, hi)
                self.optimizer.zero_grad(set_to_none=True)
                for b0 in range(0, per_rank, cfg.batch_seqs):
                    x, y = x_mine[b0:b0 + cfg.batch_seqs], y_mine[b0:b0 + cfg.batch_seqs]
                    with autocast_for(self.device):
                        loss = self.train_fn(x, y)
                    (loss.float() * (len(x) / per_rank)).backward()
                average_gradients_(self.params)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - t0
        self.trained_tokens += (hi - lo) * cfg.epochs
        self.model.eval()

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
                          "running_loss": self.totals.loss, "lr": lr}
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
            self.restore_requires_grad()
        return {**self.totals.to_dict(), "chunks": self.num_chunks, "windows": len(self.plan),
                "window": self.window, "stride": self.plan.stride, "ttt": asdict(self.config),
                "trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
                "score_seconds": self.score_seconds, "train_seconds": self.train_seconds,
                "score_tokens_per_s": self.totals.token_count / max(self.score_seconds, 1e-9),
                "train_tokens_per_s": self.trained_tokens / max(self.train_seconds, 1e-9),
                "chunk_log": records}

    def restore_requires_grad(self) -> None:
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._saved_requires_grad[name])


def ttt_evaluate(model: torch.nn.Module, val_tokens: torch.Tensor, luts=None, *,
                 target_bytes: torch.Tensor | None = None, config: TTTConfig = TTTConfig(),
                 window: int | None = None, stride: int = 64, batch: int = 32, seed_quirk: bool = False,
                 progress: bool = False, on_chunk: Callable[[dict], None] | None = None,
                 compile: bool = False) -> dict:
    """Sliding-window val_bpb with legal score-first TTT (adapts `model` in place); see ScoreFirstTTT.run."""
    ttt = ScoreFirstTTT(model, val_tokens, luts, target_bytes=target_bytes, config=config, window=window,
                        stride=stride, batch=batch, seed_quirk=seed_quirk, compile=compile)
    return ttt.run(progress=progress, on_chunk=on_chunk)


class _fake_quant:
    """Turn the model's fake int6 STE quantization (GPT.set_late_qat) on for TTT training forwards (--ttt-qat).

    598 ran its TTT adaptation with late QAT active (spec §6.3), and its flag is class-wide on CastedLinear, so
    it covers the block matrices and the bigram and value-embedding projections: GPT.qat_linears() is that
    set. Scoring always uses the plain float weights.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool):
        self.model, self.enabled = model, enabled
        self.previous = bool(getattr(model, "late_qat", False))

    def __enter__(self):
        if self.enabled:
            if not hasattr(self.model, "set_late_qat"):
                raise ValueError("--ttt-qat needs a model with set_late_qat(enabled) (model.gpt.GPT)")
            self.model.set_late_qat(True)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.model.set_late_qat(self.previous)
        return False
