"""Score-before-train guard for test-time training (the legality rule of spec §6.4).

The rule: a TTT step may train only on validation targets that were already scored. The guard lives in
the TTT code path: scoring records each scored target range, and every training step first asks the
guard to confirm that all of its targets lie in the scored prefix. It raises LegalityError otherwise,
so an out-of-order loop fails loudly instead of reporting an illegal score.

Positions are target token indices in the validation stream (1..M).
"""
from __future__ import annotations

import heapq


class LegalityError(RuntimeError):
    """A TTT step would train on validation targets that have not been scored yet."""


class LegalityGuard:
    """Tracks the scored prefix: every target position 1..scored_through has been scored."""

    def __init__(self) -> None:
        self.scored_through = 0
        self._pending: list[tuple[int, int]] = []  # scored ranges not yet joined to the prefix (other ranks)

    def record_scored(self, first_target: int, last_target: int) -> None:
        """Record that target positions first_target..last_target (inclusive) have been scored."""
        if last_target < first_target:
            return
        if first_target < 1:
            raise ValueError(f"target positions start at 1, got a scored range from {first_target}")
        heapq.heappush(self._pending, (first_target, last_target))
        while self._pending and self._pending[0][0] <= self.scored_through + 1:
            _, last = heapq.heappop(self._pending)
            self.scored_through = max(self.scored_through, last)

    def check_train(self, first_target: int, last_target: int) -> None:
        """Raise LegalityError unless targets first_target..last_target are all already scored."""
        if last_target > self.scored_through:
            raise LegalityError(
                f"illegal TTT step: it trains on target positions {first_target}..{last_target}, but only "
                f"positions 1..{self.scored_through} have been scored; score a chunk before training on it")
