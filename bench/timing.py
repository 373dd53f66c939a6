"""GPU timing: warm-up, median of repeats, inputs rotated so no case runs twice on L2-resident data.

Kernels are timed with `triton.testing.do_bench` (which also flushes L2 before every repeat); whole
training/TTT steps, which take tens to hundreds of ms, with one CUDA-event pair per step. Every
timed call takes the next of several input sets, so repeated calls never reuse the same tensors.
Peak memory is `torch.cuda.max_memory_allocated` over one call after a reset: it includes the
inputs that are resident (the same for every variant of a case), so compare it across variants.
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

import torch

KERNEL_WARMUP_MS = 25
KERNEL_REP_MS = 100
STEP_WARMUP = 3
STEP_REPS = 10


def rotating(fn: Callable, input_sets: Sequence[tuple]) -> Callable[[], object]:
    """A no-argument callable that calls fn(*input_sets[i % n]) with i advancing on every call."""
    if not input_sets:
        raise ValueError("rotating: need at least one input set")
    counter = iter(range(1 << 62))
    return lambda: fn(*input_sets[next(counter) % len(input_sets)])


def kernel_ms(fn: Callable, input_sets: Sequence[tuple]) -> float:
    """Median milliseconds of one call, by triton.testing.do_bench with rotating inputs."""
    from triton.testing import do_bench

    return float(do_bench(rotating(fn, input_sets), warmup=KERNEL_WARMUP_MS, rep=KERNEL_REP_MS,
                          return_mode="median"))


def step_ms(fn: Callable, input_sets: Sequence[tuple], warmup: int = STEP_WARMUP, reps: int = STEP_REPS) -> float:
    """Median milliseconds of one step over `reps` CUDA-event-timed calls, after `warmup` untimed ones."""
    call = rotating(fn, input_sets)
    for _ in range(warmup):
        call()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def peak_memory_mib(fn: Callable, args: tuple) -> float:
    """torch.cuda.max_memory_allocated (MiB) over one call, with the peak counter reset just before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20
