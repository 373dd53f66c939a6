"""How small ANY lossless artifact of a bench.heavy_tailed state dict can be: the oracle cross-entropy.

Every float tensor of `heavy_tailed_state` is drawn row by row: row r is m_r + c_r * T with T ~ Student-t(nu),
c_r = s_r * sqrt((nu - 2) / nu) (m_r, s_r the row's drawn mean and sd: bench.heavy_tailed.RowLaw). Quantized
with a stored scale S (int6_per_row: the row's fp16 scale; int8_per_tensor: the tensor's one scale), symbol k
of [lo, hi] (int6: -32..31, int8: -127..127) is round(w / S) clamped, so its probability under the generator is
    p(k) = F((k + 1/2) S) - F((k - 1/2) S),   F(w) = T_nu((w - m_r) / c_r),
the end symbols taking the whole tails (the clamp). The expected length of any lossless code of the symbols is
at least their entropy, which is at least their entropy given (nu, m_r, s_r, S); `oracle_bits` estimates the
latter by the cross-entropy -sum log2 p(k) of the stored symbols under that law (a coder told the generator's
parameters for free; the bound is on the expected length over the generator's draws, and one draw's
cross-entropy estimates it with a sampling sd of 754 B on the seed-size draw: the law's variance of -log2 p
summed over its rows). Two things it leaves out: the clip (hence S) is chosen from the row's values, a tiny
dependence the law ignores; and the floats, scales and manifest are not bounded here.

The lower bound the CLI prints for a whole artifact is
    format 3 bytes - (order-0 bound of the int6/int8 symbols - oracle bytes of them),
i.e. it assumes the floats, scales and manifest cost at least what format 3 spends on them, and charges the
int6/int8 symbols the oracle instead of their order-0 bound (quant.bounds: entropy + count side information).
Format 3 itself codes those symbols in a little less than that bound (its rANS tables cost less than the
bound's side information: 16,281,899 B against 16,287,552 B on the seed-size draw, summing quant.codec's
report over the segments at the manifest's int6/int8 data spans), so subtracting the bound rather than format
3's own spend makes the figure 5,653 B lower than it need be: conservative.

Student-t tail masses come from the regularized incomplete beta function (its continued fraction, numpy only):
P(T > t) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2) / 2 for t >= 0, accurate to ~1e-14 relative far into the tails
(checked against scipy.stats.t during development; scipy is not a dependency).

Measured 2026-12-03 with `python -m bench.heavy_tailed oracle --preset seed --seed 0` (48 s and 59 s in two runs
on 2 shared CPU cores):
    role                      scheme           symbols     order-0 B    oracle B   ratio
    bigram.embed.weight       int8_per_tensor    262,144      216,801     215,041  0.9919
    blocks.attn.k.weight      int6_per_row     1,441,792      916,842     909,235  0.9917
    blocks.attn.o.weight      int6_per_row     2,883,584    1,927,826   1,918,964  0.9954
    blocks.attn.q.weight      int6_per_row     2,883,584    1,907,023   1,897,702  0.9951
    blocks.attn.v.weight      int6_per_row     1,441,792      912,994     905,232  0.9915
    blocks.mlp.down.weight    int6_per_row     8,650,752    4,487,586   4,394,979  0.9794
    blocks.mlp.up.weight      int6_per_row     8,650,752    5,547,254   5,415,490  0.9762
    tok_emb.weight            int8_per_tensor    524,288      352,363     336,525  0.9551
    value_embed.embed.weight  int8_per_tensor    131,072       18,864      10,846  0.5749
    TOTAL (69 tensors)                        26,869,760   16,287,552  16,004,015  0.9826
    format 3 artifact 16,836,008 B (0.9871 x seed-style); seed-style torch.save + zstd-22 17,055,255 B
    lower bound on any lossless artifact: 16,836,008 - 283,537 = 16,552,471 B = 0.9705 x seed-style
    format 4 artifact (width contexts, the default) 16,663,635 B = 0.9770 x seed-style, 111,164 B above the bound
    (the run with the format 4 line: 51 s on 2 cores, after the merge of quant.width_contexts)
So no lossless coder, even one told the generator's parameters, reaches 0.96 x seed-style on this draw: 0.96
is 16,373,045 B, 462,963 B under format 3, and the oracle finds only 283,537 B (1.74% of the symbols' order-0
bound) for any model of the symbols to win. Format 4's width contexts take 172,373 B of those 283,537 B.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kernels.int6_layout import INT6_MAX, INT6_MIN
from quant.schemes import INT8_MAX, QuantizedTensor

SYMBOL_RANGES = {"int6_per_row": (INT6_MIN, INT6_MAX), "int8_per_tensor": (-INT8_MAX, INT8_MAX)}
CF_TOLERANCE = 1e-14
CF_MAX_ITERATIONS = 20_000
_TINY = 1e-300


def _beta_continued_fraction(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """The continued fraction of I_x(a, b) (modified Lentz), elementwise; converges fast for x < (a+1)/(a+b+2).
    Each element stops at its own first step within CF_TOLERANCE of 1 (rounding keeps later steps ~1e-14
    off 1 when a is large, so a test on all elements at once may never pass)."""
    def guard(v):
        return np.where(np.abs(v) < _TINY, _TINY, v)

    out = np.empty_like(x)
    idx = np.arange(x.size)
    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d.copy()
    for m in range(1, CF_MAX_ITERATIONS):
        even = m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        step = d * c
        h *= step
        done = np.abs(step - 1.0) < CF_TOLERANCE
        out[idx[done]] = h[done]
        if done.all():
            return out
        keep = ~done
        idx, x, c, d, h = idx[keep], x[keep], c[keep], d[keep], h[keep]
    raise RuntimeError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def regularized_beta(a: float, b: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """I_x(a, b) for arrays x in [0, 1] with y = 1 - x given (so both stay exact near 0 and 1)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_front = a * np.log(x) + b * np.log(y) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    front = np.exp(log_front)
    direct = x < (a + 1.0) / (a + b + 2.0)
    out = np.empty_like(x)
    if direct.any():
        out[direct] = front[direct] * _beta_continued_fraction(a, b, x[direct]) / a
    if (~direct).any():
        out[~direct] = 1.0 - front[~direct] * _beta_continued_fraction(b, a, y[~direct]) / b
    return out


def student_t_sf(t: np.ndarray, nu: float) -> np.ndarray:
    """P(T > t) for T ~ Student-t(nu) (standard: location 0, scale 1), elementwise; t may be +-inf."""
    t = np.asarray(t, dtype=np.float64)
    a = np.abs(t)
    upper = np.zeros_like(a)  # P(T > |t|); 0 at |t| = inf
    finite = np.isfinite(a)
    t2 = a[finite] ** 2
    upper[finite] = 0.5 * regularized_beta(nu / 2.0, 0.5, nu / (nu + t2), t2 / (nu + t2))
    return np.where(t >= 0, upper, 1.0 - upper)


def student_t_cdf(t: np.ndarray, nu: float) -> np.ndarray:
    """P(T <= t) for T ~ Student-t(nu), elementwise (by symmetry, exact in the left tail)."""
    return student_t_sf(-np.asarray(t, dtype=np.float64), nu)


def symbol_probs(scales: np.ndarray, means: np.ndarray, sds: np.ndarray, nu: float, lo: int, hi: int
                 ) -> np.ndarray:
    """(n_rows, hi - lo + 1) probabilities of the symbols lo..hi of rows drawn as means + sds * unit-variance
    Student-t(nu), quantized as clamp(round(w / scale), lo, hi) with each row's scale."""
    scales, means, sds = (np.asarray(v, dtype=np.float64).reshape(-1, 1) for v in (scales, means, sds))
    c = sds * math.sqrt((nu - 2.0) / nu)
    edges = ((np.arange(lo, hi) + 0.5) * scales - means) / c       # the hi - lo inner edges of every row
    inf = np.full((edges.shape[0], 1), np.inf)
    lower, upper = np.hstack([-inf, edges]), np.hstack([edges, inf])
    q_lower, q_upper = student_t_sf(np.abs(lower), nu), student_t_sf(np.abs(upper), nu)  # tail masses beyond
    # P(lower < T <= upper) from tail masses alone, so a bin deep in either tail keeps its relative precision
    return np.where(lower >= 0, q_lower - q_upper, np.where(upper <= 0, q_upper - q_lower, 1.0 - q_lower - q_upper))


def oracle_bits(qt: QuantizedTensor, law) -> float:
    """Cross-entropy in bits of an int6/int8 tensor's stored symbols under the law its rows were drawn from
    (`law`: a bench.heavy_tailed.RowLaw, with nu, means and sds)."""
    if qt.scheme not in SYMBOL_RANGES:
        raise ValueError(f"oracle_bits: {qt.name} is {qt.scheme}, not one of {sorted(SYMBOL_RANGES)}")
    lo, hi = SYMBOL_RANGES[qt.scheme]
    symbols = qt.data.numpy().reshape(qt.shape[0], -1).astype(np.int64)
    scales = qt.scale.float().numpy().reshape(-1)
    if scales.size == 1:
        scales = np.full(symbols.shape[0], scales[0])
    probs = symbol_probs(scales, law.means.numpy(), law.sds.numpy(), law.nu, lo, hi)
    p = np.take_along_axis(probs, symbols - lo, axis=1)
    return float(-np.log2(np.maximum(p, _TINY)).sum())


@dataclass
class OracleRow:
    group: str          # the tensors' role
    scheme: str
    tensors: int
    symbols: int
    order0: float       # bytes: quant.bounds' order-0 bound (entropy + side information) of the symbols
    oracle: float       # bytes: oracle_bits / 8


def oracle_rows(qtensors: list[QuantizedTensor], laws: dict, group_of=lambda name: name) -> list[OracleRow]:
    """One OracleRow per (group_of(name), scheme) over the int6/int8 tensors that `laws` knows, sorted."""
    from quant.bounds import stream_bound_bits, tensor_streams

    rows: dict[tuple[str, str], OracleRow] = {}
    for qt in qtensors:
        if qt.scheme not in SYMBOL_RANGES or qt.name not in laws:
            continue
        symbols, alphabet = tensor_streams(qt)[0]  # the values stream (the scales' planes follow)
        row = rows.setdefault((group_of(qt.name), qt.scheme), OracleRow(group_of(qt.name), qt.scheme, 0, 0, 0, 0))
        row.tensors += 1
        row.symbols += symbols.size
        row.order0 += stream_bound_bits(symbols, alphabet) / 8
        row.oracle += oracle_bits(qt, laws[qt.name]) / 8
    return [rows[k] for k in sorted(rows)]


def format_oracle_report(rows: list[OracleRow], artifact_bytes: int, seed_style: int,
                         format4_bytes: int | None = None) -> str:
    """The per-group table, the totals and the lower bound on any lossless artifact (module docstring);
    `artifact_bytes` is format 3's, and format 4's (the default artifact) is set beside the bound when given."""
    lines = [f"{'role':<28} {'scheme':<16} {'tensors':>7} {'symbols':>11} {'order-0 B':>12} {'oracle B':>12} "
             f"{'ratio':>7}"]

    def line(label, scheme, rs):
        o0, orc = sum(r.order0 for r in rs), sum(r.oracle for r in rs)
        return (f"{label:<28} {scheme:<16} {sum(r.tensors for r in rs):>7} {sum(r.symbols for r in rs):>11,} "
                f"{o0:>12,.0f} {orc:>12,.0f} {orc / o0:>7.4f}")

    lines += [line(r.group, r.scheme, [r]) for r in rows]
    lines.append("-" * 99)
    lines.append(line("TOTAL", "int6+int8", rows))
    order0, oracle = sum(r.order0 for r in rows), sum(r.oracle for r in rows)
    bound = artifact_bytes - (order0 - oracle)
    lines += [
        f"oracle saving on the int6/int8 symbols: {order0 - oracle:,.0f} B ({1 - oracle / order0:.2%} of their "
        f"order-0 bound)",
        f"format 3 artifact {artifact_bytes:,} B; seed-style torch.save + zstd-22 {seed_style:,} B; "
        f"format 3 / seed-style {artifact_bytes / seed_style:.4f}",
        f"lower bound on any lossless artifact = format 3 - (order-0 - oracle) = {bound:,.0f} B = "
        f"{bound / seed_style:.4f} x seed-style",
        "  (assumes: the floats, scales and manifest cost what format 3 spends on them, format 3 spends the "
        "order-0 bound on the int6/int8 symbols; the oracle is told the generator's per-row nu, mean, sd and the "
        "stored scales for free and ignores the clip's small dependence on the row)",
    ]
    if format4_bytes is not None:
        lines.append(f"format 4 artifact (width contexts, the default) {format4_bytes:,} B = "
                     f"{format4_bytes / seed_style:.4f} x seed-style, {format4_bytes - bound:,.0f} B above the bound")
    return "\n".join(lines)


def oracle_report(config, state: dict[str, torch.Tensor], laws: dict, group_of=lambda name: name) -> str:
    """Quantize `state` as the artifact does, encode formats 3 and 4, and format the oracle report."""
    from quant.artifact import compress_body, encode_body
    from quant.bounds import seed_style_bytes
    from quant.schemes import quantize_state_dict

    qtensors = quantize_state_dict(state)
    rows = oracle_rows(qtensors, laws, group_of)
    format3 = len(compress_body(encode_body(qtensors, config.to_dict(), format_version=3), format_version=3))
    format4 = len(compress_body(encode_body(qtensors, config.to_dict(), format_version=4), format_version=4))
    return format_oracle_report(rows, format3, seed_style_bytes(qtensors, list(state)), format4)
