"""Exact BPB bookkeeping: float64 sums of NLL, scored tokens and target bytes (spec §2.4).

val_loss = Σnll / T and val_bpb = Σnll / (ln 2 · B). The final BPB is always computed from the summed
totals, never averaged over chunks or ranks. The accumulator keeps its sums on the scoring device so a
batch adds without a host sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from eval.distributed import all_reduce_sum_


@dataclass(frozen=True)
class ScoreTotals:
    """Summed natural-log NLL, scored target count and target byte count."""
    nll_sum: float = 0.0
    token_count: float = 0.0
    byte_count: float = 0.0

    def __add__(self, other: "ScoreTotals") -> "ScoreTotals":
        return ScoreTotals(self.nll_sum + other.nll_sum, self.token_count + other.token_count,
                           self.byte_count + other.byte_count)

    @property
    def loss(self) -> float:
        """Mean NLL per scored token (nats); nan when nothing was scored."""
        return self.nll_sum / self.token_count if self.token_count else math.nan

    @property
    def bpb(self) -> float:
        """Bits per byte: Σnll / (ln 2 · B); nan when no bytes were scored."""
        return self.nll_sum / (math.log(2) * self.byte_count) if self.byte_count else math.nan

    def to_dict(self) -> dict:
        return {"val_loss": self.loss, "val_bpb": self.bpb, "nll_sum": self.nll_sum,
                "tokens": int(self.token_count), "bytes": int(self.byte_count)}


class ScoreAccumulator:
    """Running float64 (Σnll, T, B) on `device`; `totals()` all-reduces over ranks and returns host floats."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)

    def add(self, nll: torch.Tensor, scored: torch.Tensor, target_bytes: torch.Tensor) -> None:
        """Add per-position `nll` where the bool mask `scored` is set, with each position's byte count."""
        nll = nll.to(torch.float64)
        self.sums[0] += torch.where(scored, nll, torch.zeros_like(nll)).sum()
        self.sums[1] += scored.sum()
        self.sums[2] += torch.where(scored, target_bytes, torch.zeros_like(target_bytes)).sum().to(torch.float64)

    def totals(self, reduce: bool = True) -> ScoreTotals:
        sums = self.sums.clone()
        if reduce:
            all_reduce_sum_(sums)
        nll, tokens, nbytes = sums.tolist()
        return ScoreTotals(nll, tokens, nbytes)
