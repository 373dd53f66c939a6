"""Sliding-window and TTT-chunk planning: which tokens each window feeds and which targets it scores.

Positions are input indices into the validation stream `tokens[0..M]` (M = len(tokens) - 1 targets):
a window starting at `start` feeds tokens [start, start+length) and predicts tokens [start+1, start+length+1).
Its scored input positions are [start+score_from, start+length), so the target token indices it scores
are [start+score_from+1, start+length]. All planning is numpy int64 arrays (the seed run has ~969k windows).

Exact-once rule (the default): window starts are 0, stride, 2*stride, ... and each window scores only the
targets no earlier window scored; windows with nothing new are dropped. Every target is scored exactly once
and, after the first window, with between window-stride and window-1 tokens of context.

Seed quirk (`seed_quirk=True`, spec §6.2, for parity with PR 598's numbers): keep every start < M whose
window has at least `stride` targets; the first window scores all of its targets, every other window scores
its last `stride`. The trailing short windows all end at M, so the last `stride` targets are scored
once per trailing window (32 times at the seed shapes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    """Windows over a stream of `num_targets` targets; parallel int64 arrays, one entry per window."""
    num_targets: int
    window: int
    stride: int
    starts: np.ndarray
    lengths: np.ndarray
    score_from: np.ndarray
    device_tables: dict = field(default_factory=dict, repr=False, compare=False)  # eval.scoring's cache

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def first_scored(self) -> np.ndarray:
        """Input position of each window's first scored target."""
        return self.starts + self.score_from

    @property
    def ends(self) -> np.ndarray:
        """One past each window's last input position (= its last target token index)."""
        return self.starts + self.lengths

    def scored_count(self) -> int:
        """Total scored targets (equals num_targets under the exact-once rule)."""
        return int((self.lengths - self.score_from).sum())

    def head_width(self, lo: int, hi: int) -> int:
        """How many positions per row the head must read for windows [lo, hi): `stride` when each of them
        scores at most its last `stride` positions (every window but the first), else the whole `window`.
        Two widths only, so a compiled scorer sees two static shapes."""
        if hi <= lo:
            return self.stride
        return self.stride if int((self.lengths[lo:hi] - self.score_from[lo:hi]).max()) <= self.stride else self.window

    def scored_through(self, lo: int, hi: int) -> tuple[int, int]:
        """Target indices (first, last) scored by windows [lo, hi) together: windows are ordered and each one's
        scored range starts at or before the end of the ones before it, so their union has no gap."""
        return int(self.first_scored[lo]) + 1, int(self.ends[lo:hi].max())


def plan_windows(num_targets: int, window: int, stride: int, seed_quirk: bool = False) -> WindowPlan:
    """Plan sliding windows of `window` tokens every `stride` tokens over `num_targets` targets."""
    if num_targets < 1:
        raise ValueError(f"need at least one target to score, got num_targets={num_targets}")
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got stride={stride} window={window}")
    starts = np.arange(0, num_targets, stride, dtype=np.int64)
    lengths = np.minimum(window, num_targets - starts)
    if seed_quirk:
        keep = (lengths >= stride) | (starts == 0)
        starts, lengths = starts[keep], lengths[keep]
        score_from = np.where(starts == 0, 0, np.maximum(lengths - stride, 0))
    else:
        ends = starts + lengths  # non-decreasing, so the previous window's end is the furthest scored so far
        prev_end = np.concatenate([[0], ends[:-1]])
        keep = ends > prev_end
        keep[0] = True
        starts, lengths, prev_end = starts[keep], lengths[keep], prev_end[keep]
        score_from = np.maximum(prev_end - starts, 0)
    return WindowPlan(num_targets, window, stride, starts, lengths, score_from.astype(np.int64))


def num_chunks(num_targets: int, chunk_tokens: int) -> int:
    """How many TTT chunks of `chunk_tokens` target positions cover the stream (the last may be short)."""
    if chunk_tokens < 1:
        raise ValueError(f"TTT chunk size must be positive, got {chunk_tokens}")
    return -(-num_targets // chunk_tokens)


def chunk_window_bounds(plan: WindowPlan, chunk_tokens: int) -> np.ndarray:
    """Window index bounds per chunk: chunk ci owns windows [bounds[ci], bounds[ci+1]).

    A window belongs to the chunk holding its first scored input position (spec §6.3). Windows are
    ordered by that position, so each chunk owns a contiguous (possibly empty) run of windows.
    """
    n = num_chunks(plan.num_targets, chunk_tokens)
    chunk_of_window = plan.first_scored // chunk_tokens
    return np.searchsorted(chunk_of_window, np.arange(n + 1), side="left").astype(np.int64)


def chunk_target_range(chunk_index: int, chunk_tokens: int, num_targets: int) -> tuple[int, int]:
    """Input positions [lo, hi) of chunk `chunk_index`; its target token indices are lo+1 .. hi."""
    lo = chunk_index * chunk_tokens
    if not 0 <= lo < num_targets:
        raise ValueError(f"chunk {chunk_index} starts at {lo}, outside the {num_targets} targets")
    return lo, min(lo + chunk_tokens, num_targets)


def contiguous_share(lo: int, hi: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous slice of the index range [lo, hi) split as evenly as possible."""
    n = hi - lo
    return lo + n * rank // world, lo + n * (rank + 1) // world
