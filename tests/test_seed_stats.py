"""quant.seed_stats: the t distribution's tail against closed forms and published critical values, and the
record test on numbers worked out here."""
import math
import statistics

import pytest

from quant.seed_stats import regularized_beta, seed_stats, t_tail


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.0, -1.7])
def test_t_tail_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(t):
    assert t_tail(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-12)
    assert t_tail(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("t, df, tail", [
    (6.964557, 2, 0.01),     # t_{0.99, 2}: the 1% one-sided critical value for three seeds
    (4.540703, 3, 0.01),     # t_{0.99, 3}
    (3.169273, 10, 0.005),   # t_{0.995, 10}
    (2.042272, 30, 0.025),   # t_{0.975, 30}
    (1.644854, 1e7, 0.05),   # the normal limit
])
def test_t_tail_matches_published_critical_values(t, df, tail):
    assert t_tail(t, df) == pytest.approx(tail, rel=1e-5)


def test_regularized_beta_edges_and_symmetry():
    assert regularized_beta(2.0, 3.0, 0.0) == 0.0 and regularized_beta(2.0, 3.0, 1.0) == 1.0
    assert regularized_beta(2.0, 3.0, 0.4) == pytest.approx(1 - regularized_beta(3.0, 2.0, 0.6), abs=1e-14)
    x = 0.37  # I_x(1, b) = 1 - (1 - x)^b
    assert regularized_beta(1.0, 4.5, x) == pytest.approx(1 - (1 - x) ** 4.5, abs=1e-14)
    with pytest.raises(ValueError):
        regularized_beta(0.0, 1.0, 0.5)


def test_record_test_on_three_seeds():
    losses, bpbs = [1.9010, 1.9030, 1.9020], [1.1260, 1.1270, 1.1265]
    s = seed_stats(losses, bpbs, baseline_val_loss=1.9150)
    assert s.val_loss_mean == pytest.approx(1.9020) and s.val_bpb_std == pytest.approx(statistics.stdev(bpbs))
    assert s.val_loss_std == pytest.approx(0.001)
    t = (1.9150 - 0.005 - 1.9020) / (0.001 / math.sqrt(3))  # = 13.856...
    assert s.t == pytest.approx(t) and s.df == 2
    assert s.p_value == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-9) and s.significant
    near = seed_stats(losses, bpbs, baseline_val_loss=1.9080)  # only 0.006 better on average: not shown
    assert near.t == pytest.approx((1.9080 - 0.005 - 1.9020) / (0.001 / math.sqrt(3)))
    assert 0.01 < near.p_value < 0.5 and not near.significant
    worse = seed_stats(losses, bpbs, baseline_val_loss=1.9000)
    assert worse.p_value > 0.99 and not worse.significant


def test_one_run_has_no_spread_and_no_test():
    s = seed_stats([1.9], [1.12], baseline_val_loss=2.0)
    assert (s.val_loss_std, s.val_bpb_std, s.p_value) == (None, None, None) and not s.significant
    tied = seed_stats([1.9, 1.9], [1.1, 1.1], baseline_val_loss=2.0)  # no spread: the gap decides
    assert tied.t == math.inf and tied.p_value == 0.0
