"""The rehearsal's roofline model (bench/rehearsal/roofline.py): pure arithmetic, so it runs on the CPU build."""
import pytest
import torch

from bench.rehearsal.roofline import (GPU, GPUS, attention_backward_launches, attention_scratch_bytes,
                                      dq_mode_seconds, fastest_deterministic_dq_mode, launches_seconds)
from kernels.attention import DEFAULT_DQ_MODE
from kernels.attention_backward import two_stage_rows
from model.flops import attention_kernel_flops

SEED_Q = (48, 2048, 8, 64)  # per-GPU batch 48 of 2048 tokens, 8 query heads of 64; 4 KV heads


def test_roofline_is_the_slower_of_compute_and_memory():
    gpu = GPU("test", 100.0, 10.0, 1.0)
    assert launches_seconds([(1000.0, 10.0)], gpu) == 10.0  # compute-bound
    assert launches_seconds([(10.0, 1000.0)], gpu) == 100.0  # memory-bound
    assert launches_seconds([(1000.0, 10.0), (10.0, 1000.0)], gpu) == 110.0  # launches do not overlap


@pytest.mark.parametrize("mode,units", [("two_stage", 5), ("atomic", 5), ("separate", 7)])
def test_attention_backward_launches_count_matmul_units_and_scratch(mode, units):
    q = torch.empty(SEED_Q, dtype=torch.bfloat16, device="meta")
    launches = attention_backward_launches(q, 4, mode)
    forward = attention_kernel_flops(48, 2048, 8, 64, False)
    assert sum(f for f, _ in launches) == pytest.approx(forward * units / 2)  # the forward is 2 units
    scratch = 48 * 8 * two_stage_rows(2048, 128) * 64 * 4
    assert attention_scratch_bytes(q, mode) == {"two_stage": scratch, "atomic": 48 * 8 * 2048 * 64 * 4,
                                                "separate": 0}[mode]
    if mode == "two_stage":  # written by the main kernel, read by the reduce kernel
        assert launches[0][1] > scratch and launches[1][1] > scratch
        assert scratch == pytest.approx(1.71e9, rel=0.01)


def test_default_dq_mode_is_the_projections_fastest_deterministic_pick():
    for gpu in GPUS:
        seconds = dq_mode_seconds(SEED_Q, 4, gpu)
        assert fastest_deterministic_dq_mode(seconds) == DEFAULT_DQ_MODE, (gpu.name, seconds)
        assert seconds["two_stage"] > seconds["separate"] > seconds["atomic"]
