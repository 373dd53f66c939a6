"""Several seeds' scores: mean, spread and the challenge's significance test for a record claim.

The challenge's rule for a new record: it must beat the current record by at least 0.005 nats, shown at
p < 0.01 over several runs. With n runs scoring val_loss x_1..x_n (mean m, sample standard deviation s), the
one-sided one-sample t-test of H0 "mean >= baseline - margin" has

    t = (baseline - margin - m) / (s / sqrt(n)),   df = n - 1,   p = P(T_df >= t)

and the claim holds when p < 0.01. The t distribution's tail comes from the regularized incomplete beta
function, P(T_df >= t) = I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, evaluated by its continued fraction
(modified Lentz), so nothing beyond the standard library is needed.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

RECORD_MARGIN_NATS = 0.005
RECORD_P_VALUE = 0.01
_EPS, _TINY, _MAX_TERMS = 1e-15, 1e-300, 1000


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), converging for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"regularized_beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_tail(t: float, df: float) -> float:
    """P(T >= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    upper = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return upper if t >= 0 else 1.0 - upper


@dataclass
class SeedStats:
    """Mean and spread of the seeds' scores and, given a baseline, the record test on val_loss."""
    n: int
    val_loss_mean: float
    val_bpb_mean: float
    val_loss_std: float | None       # sample standard deviation (n - 1); None for one run
    val_bpb_std: float | None
    baseline_val_loss: float | None = None
    margin_nats: float = RECORD_MARGIN_NATS
    t: float | None = None
    df: int | None = None
    p_value: float | None = None

    @property
    def significant(self) -> bool:
        """The challenge's record criterion: at least `margin_nats` better than the baseline at p < 0.01."""
        return self.p_value is not None and self.p_value < RECORD_P_VALUE

    def to_dict(self) -> dict:
        return dict(asdict(self), significant=self.significant)


def seed_stats(val_losses: list[float], val_bpbs: list[float], baseline_val_loss: float | None = None,
               margin_nats: float = RECORD_MARGIN_NATS) -> SeedStats:
    """The statistics of n runs' final scores; the t-test needs a baseline and at least two runs."""
    if not val_losses or len(val_losses) != len(val_bpbs):
        raise ValueError("seed_stats needs one val_loss and one val_bpb per run")
    n = len(val_losses)
    several = n > 1
    out = SeedStats(n, statistics.fmean(val_losses), statistics.fmean(val_bpbs),
                    statistics.stdev(val_losses) if several else None,
                    statistics.stdev(val_bpbs) if several else None, baseline_val_loss, margin_nats)
    if baseline_val_loss is None or not several:
        return out
    gap = baseline_val_loss - margin_nats - out.val_loss_mean
    stderr = out.val_loss_std / math.sqrt(n)
    out.t = gap / stderr if stderr > 0 else math.copysign(math.inf, gap) if gap else 0.0
    out.df = n - 1
    out.p_value = t_tail(out.t, out.df)
    return out
