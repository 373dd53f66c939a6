"""LR multiplier and Muon momentum schedules (seed-spec §4.2-4.3).

No LR warmup: the multiplier is 1 until the warmdown, then falls linearly to 0 at the last step (PR #598's code;
its README's "cosine" is wrong, but cosine is available as an option). With a wallclock cap the warmdown is sized
in time: warmdown_ms = warmdown_steps * (average ms per step so far), multiplier = remaining_ms / warmdown_ms.
"""
from __future__ import annotations

import math

SHAPES = ("linear", "cosine")


def _shape(frac_left: float, shape: str) -> float:
    """Map the fraction of the warmdown still left (1 -> 0) to a multiplier."""
    frac_left = min(max(frac_left, 0.0), 1.0)
    if shape == "linear":
        return frac_left
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * frac_left))
    raise ValueError(f"unknown warmdown shape {shape!r}; choose one of {SHAPES}")


def lr_multiplier(step: int, total_steps: int, warmdown_steps: int, shape: str = "linear",
                  elapsed_ms: float = 0.0, max_wallclock_ms: float = 0.0) -> float:
    """LR multiplier for optimizer step `step` (0-based)."""
    if warmdown_steps <= 0:
        return 1.0
    if max_wallclock_ms > 0:
        step_ms = elapsed_ms / max(step, 1)
        warmdown_ms = warmdown_steps * step_ms
        remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
        return _shape(remaining_ms / warmdown_ms, shape) if remaining_ms <= warmdown_ms and warmdown_ms > 0 else 1.0
    start = max(total_steps - warmdown_steps, 0)
    if step < start:
        return 1.0
    return _shape((total_steps - step) / warmdown_steps, shape)


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear momentum warmup start -> end over `warmup_steps`, then constant."""
    if warmup_steps <= 0:
        return end
    return start + (end - start) * min(step / warmup_steps, 1.0)
