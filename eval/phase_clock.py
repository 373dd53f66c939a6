"""Time per evaluation phase (scoring, training) without adding host syncs to the loop.

On CUDA a phase is bracketed by two CUDA events and read back only once they have completed (`settle()` is
called right after the caller's own sync, the per-chunk read of the score totals, and never waits); elsewhere
the phase is timed with `clock` (time.perf_counter, or a fake clock in tests). Each timed span also carries
its units (score batches, SGD steps), so `rate()` gives seconds per unit for the projection of the rest of the
run, leaving out the first span of a phase (compilation and warm-up) once a later one has settled.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


class PhaseClock:
    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter):
        self.cuda = device.type == "cuda"
        self.clock = clock
        self.pending: list[tuple[str, object, object, int]] = []
        self.spans: dict[str, list[tuple[float, int]]] = {}

    def start(self, phase: str):
        """Mark the start of a span of `phase`; pass the result to `stop`."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return phase, event
        return phase, self.clock()

    def stop(self, mark, units: int) -> None:
        """End the span started by `mark`; it did `units` units of work (batches, steps)."""
        phase, begin = mark
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((phase, begin, end, units))
        else:
            self.spans.setdefault(phase, []).append((self.clock() - begin, units))

    def settle(self) -> None:
        """Read back the CUDA spans that have completed, in order (never blocks)."""
        while self.pending and self.pending[0][2].query():
            phase, begin, end, units = self.pending.pop(0)
            self.spans.setdefault(phase, []).append((begin.elapsed_time(end) / 1000.0, units))

    def finish(self) -> None:
        """Wait for every span (end of the run) and settle them all."""
        if self.pending:
            torch.cuda.synchronize()
        self.settle()

    def seconds(self, phase: str) -> float:
        """Settled seconds spent in `phase`."""
        return sum(s for s, _ in self.spans.get(phase, ()))

    def units(self, phase: str) -> int:
        return sum(u for _, u in self.spans.get(phase, ()))

    def rate(self, phase: str) -> float | None:
        """Seconds per unit of `phase` over its settled spans, the first left out once there are others;
        None before any span with units has settled."""
        spans = [(s, u) for s, u in self.spans.get(phase, ()) if u > 0]
        if len(spans) > 1:
            spans = spans[1:]
        units = sum(u for _, u in spans)
        return sum(s for s, _ in spans) / units if units else None
