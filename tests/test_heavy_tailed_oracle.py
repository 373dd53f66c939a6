"""bench.heavy_tailed_oracle: the numpy Student-t CDF, the recorded per-row laws, and the oracle cross-entropy."""
import hashlib
import math
import re

import numpy as np
import pytest
import torch

from bench.heavy_tailed import heavy_tailed_state, heavy_tailed_state_with_laws, role
from bench.heavy_tailed_oracle import (SYMBOL_RANGES, oracle_bits, oracle_report, regularized_beta, student_t_cdf,
                                       student_t_sf, symbol_probs)
from model.config import get_config
from quant.bounds import tensor_streams
from quant.schemes import quantize_state_dict

# sha256 of heavy_tailed_state(get_config("tiny"), seed=0) (names and bytes in order) as drawn before the laws
# were recorded; if torch's generator ever changes, the figures in bench.heavy_tailed_oracle need re-measuring
TINY_DRAW_SHA256 = "040358f46c4fd58d6581d1fe62e3c0ada278335186f3c5403184e8595fbfc1e6"
XS = np.concatenate([-np.logspace(-6, 8, 60), [0.0], np.logspace(-6, 8, 60)])


def state_digest(state):
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(name.encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_regularized_beta_closed_forms():
    x = np.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(regularized_beta(1.0, 1.0, x, 1 - x), x, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(regularized_beta(3.5, 1.0, x, 1 - x), x ** 3.5, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(regularized_beta(1.0, 2.5, x, 1 - x), 1 - (1 - x) ** 2.5, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("nu", [1.0, 2.0, 2.5, 4.0, 30.0, 100.0])
def test_cdf_is_symmetric_with_median_zero(nu):
    assert student_t_cdf(np.array([0.0]), nu)[0] == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(student_t_cdf(XS, nu) + student_t_cdf(-XS, nu), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(student_t_sf(np.array([np.inf, -np.inf]), nu), [0.0, 1.0])
    assert np.all(np.diff(student_t_cdf(np.sort(XS), nu)) >= 0)


def test_cauchy_and_nu_2_closed_forms_into_the_tails():
    pos = XS[XS > 0]  # the closed forms of the CDF cancel in the left tail (hence atol); the tail masses do not
    np.testing.assert_allclose(student_t_cdf(XS, 1.0), 0.5 + np.arctan(XS) / np.pi, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(student_t_sf(pos, 1.0), np.arctan2(1.0, pos) / np.pi, rtol=1e-13)  # tail mass
    root = np.sqrt(2.0 + XS ** 2)
    np.testing.assert_allclose(student_t_cdf(XS, 2.0), 0.5 + XS / (2 * root), rtol=1e-13, atol=1e-16)
    root = np.sqrt(2.0 + pos ** 2)
    np.testing.assert_allclose(student_t_sf(pos, 2.0), 1.0 / (root * (root + pos)), rtol=1e-13)
    x = np.linspace(-30, 30, 61)  # nu = 3: 1/2 + (atan(x/sqrt3) + sqrt3 x / (3 + x^2)) / pi
    np.testing.assert_allclose(student_t_cdf(x, 3.0),
                               0.5 + (np.arctan(x / math.sqrt(3)) + math.sqrt(3) * x / (3 + x ** 2)) / np.pi,
                               rtol=1e-13, atol=1e-16)


def test_large_nu_is_normal():
    x = np.linspace(-6, 6, 49)
    normal = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    np.testing.assert_allclose(student_t_cdf(x, 1e6), normal, rtol=0, atol=1e-6)


def test_symbol_probs_sum_to_one_and_are_cdf_differences():
    scales, means, sds = np.array([0.05, 0.2]), np.array([0.01, -0.3]), np.array([0.4, 1.5])
    p = symbol_probs(scales, means, sds, 4.0, -32, 31)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-14)
    c = sds[1] * math.sqrt(2 / 4)
    inner = student_t_cdf(((np.arange(-32, 31) + 0.5) * scales[1] - means[1]) / c, 4.0)
    np.testing.assert_allclose(p[1, 1:-1], np.diff(inner), rtol=1e-10, atol=1e-15)
    assert p[1, 0] == pytest.approx(inner[0], rel=1e-12)  # the end symbols take the whole tails
    assert p[1, -1] == pytest.approx(1 - inner[-1], rel=1e-10, abs=1e-15)


@pytest.mark.parametrize("scheme, nu, scale", [("int6_per_row", 4.0, 0.05), ("int8_per_tensor", 20.0, 0.01)])
def test_cross_entropy_of_a_draw_matches_the_laws_entropy(scheme, nu, scale):
    """Symbols drawn from one row law: their mean -log2 p under that law is the law's entropy (4 sds)."""
    lo, hi = SYMBOL_RANGES[scheme]
    mean, sd, n = 0.02, 0.3, 20_000
    torch.manual_seed(0)  # StudentT samples from the global generator
    z = torch.distributions.StudentT(torch.tensor(nu)).sample((n,)).double().numpy()
    symbols = np.clip(np.round((mean + sd * math.sqrt((nu - 2) / nu) * z) / scale), lo, hi).astype(np.int64)
    p = symbol_probs([scale], [mean], [sd], nu, lo, hi)[0]
    bits = -np.log2(p[symbols - lo])
    nz = p[p > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    spread = math.sqrt(float((nz * np.log2(nz) ** 2).sum()) - entropy ** 2)
    assert abs(bits.mean() - entropy) < 4 * spread / math.sqrt(n)
    assert entropy > 3  # a law wide enough that the check means something


@pytest.fixture(scope="module")
def tiny_draw():
    cfg = get_config("tiny")
    state, laws = heavy_tailed_state_with_laws(cfg, seed=0)
    return cfg, state, laws, quantize_state_dict(state)


def test_recording_the_laws_leaves_the_draw_unchanged(tiny_draw):
    _, state, laws, _ = tiny_draw
    assert state_digest(state) == TINY_DRAW_SHA256
    assert state_digest(heavy_tailed_state(get_config("tiny"), seed=0)) == TINY_DRAW_SHA256
    drawn = [name for name, t in state.items() if t.is_floating_point() and t.numel() > 1 and name in laws]
    assert set(laws) == set(drawn) and "tok_emb.weight" in laws
    for name, law in laws.items():
        rows = state[name].shape[0] if state[name].dim() >= 2 else 1
        assert law.means.shape == law.sds.shape == (rows,) and bool((law.sds > 0).all())


def test_oracle_is_below_the_order0_entropy_of_every_tensor(tiny_draw):
    _, _, laws, qtensors = tiny_draw
    checked = set()
    for qt in qtensors:
        if qt.scheme not in SYMBOL_RANGES or qt.name not in laws:
            continue
        symbols = tensor_streams(qt)[0][0]
        counts = np.unique(symbols, return_counts=True)[1].astype(np.float64)
        order0 = float(-(counts * np.log2(counts / symbols.size)).sum())
        bits = oracle_bits(qt, laws[qt.name])
        assert 0.8 * order0 < bits < order0, qt.name
        checked.add(qt.scheme)
    assert checked == set(SYMBOL_RANGES)
    fp = next(qt for qt in qtensors if qt.scheme not in SYMBOL_RANGES)
    with pytest.raises(ValueError, match="oracle_bits"):
        oracle_bits(fp, laws.get(fp.name))


def test_report_bounds_the_artifact_between_oracle_and_format3_and_format4_lies_between(tiny_draw):
    cfg, state, laws, _ = tiny_draw
    text = oracle_report(cfg, state, laws, group_of=role)
    total = re.search(r"TOTAL\s+int6\+int8\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)", text)
    order0, oracle = (int(total.group(i).replace(",", "")) for i in (3, 4))
    artifact = int(re.search(r"format 3 artifact ([\d,]+) B", text).group(1).replace(",", ""))
    bound = int(re.search(r"= ([\d,]+) B = ([\d.]+) x seed-style", text).group(1).replace(",", ""))
    assert oracle < order0 < artifact
    assert abs(bound - (artifact - (order0 - oracle))) <= 2  # rounding of the printed figures
    format4 = int(re.search(r"format 4 artifact \(width contexts, the default\) ([\d,]+) B", text).group(1)
                  .replace(",", ""))
    assert bound < format4 < artifact  # width contexts win over format 3, and no coder beats the oracle
    assert "blocks.mlp.up.weight" in text and "assumes" in text


def test_cli_refuses_an_unknown_preset_in_one_line(capsys):
    from bench.heavy_tailed import main

    with pytest.raises(SystemExit):
        main(["oracle", "--preset", "nope"])
    assert "error: argument --preset: invalid choice: 'nope'" in capsys.readouterr().err
