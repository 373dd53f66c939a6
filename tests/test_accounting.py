"""Hardware-independent step accounting (bench.accounting): the FLOP count and the optimizer's kernel ops."""
import pytest

from bench import accounting


def test_flop_counter_matches_the_model_count_for_the_seed():
    f = accounting.flops_per_token("seed")
    assert f["causal"] == pytest.approx(f["model"], rel=0.05)  # FlopCounterMode vs 6N + causal attention
    assert f["model"] == pytest.approx(228.66e6, rel=1e-3)
    assert f["counted"] > f["causal"]  # the meta SDPA path computes the whole T x T square


def test_batched_muon_takes_at_most_100_kernel_ops_per_step():
    batched = accounting.optimizer_step_launches("seed", batched=True)
    unbatched = accounting.optimizer_step_launches("seed", batched=False)
    assert batched["muon"] <= 100
    assert unbatched["muon"] >= 10 * batched["muon"]  # PR #598's matrix-by-matrix loop: thousands
    assert batched["ema"] <= 4 and batched["adamw"] <= 60
