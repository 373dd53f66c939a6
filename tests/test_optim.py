"""Muon + AdamW grouping (seed-spec §4.1), the Muon step, the LR / momentum schedules and the EMA."""
import math

import pytest
import torch
from torch import nn

from model.config import get_config
from model.gpt import GPT
from train.ema import EMA
from train.optim import (Muon, build_optimizers, check_coverage, group_parameters, newton_schulz5,
                         newton_schulz5_batched)
from train.schedule import lr_multiplier, muon_momentum

OPT_ARGS = dict(matrix_lr=0.025, scalar_lr=0.025, tok_lr=0.035, decoder_lr_mult=2.0, muon_momentum=0.99,
                muon_wd=0.04, adam_wd=0.04, adam_betas=(0.9, 0.95), adam_eps=1e-8)


@pytest.fixture(scope="module")
def seed_meta():
    with torch.device("meta"):
        model = GPT(get_config("seed"))
    model.bigram.scale.requires_grad_(True)  # as the training job does
    return model


def test_seed_groups(seed_meta):
    groups = {k: [n for n, _ in v] for k, v in group_parameters(seed_meta, 5).items()}
    assert len(groups["muon_enc"]) == 5 * 6 and all(int(n.split(".")[1]) < 5 for n in groups["muon_enc"])
    assert len(groups["muon_dec"]) == 6 * 6 and all(int(n.split(".")[1]) >= 5 for n in groups["muon_dec"])
    assert groups["muon_bigram"] == ["bigram.proj.weight"]
    assert groups["adam_tok"] == ["tok_emb.weight"]
    assert len(groups["adam_scalar_enc"]) == 5 * 6 and len(groups["adam_scalar_dec"]) == 6 * 6
    assert sorted(groups["adam_scalar_other"]) == sorted([
        "smear.gate", "bigram.embed.weight", "skip_weights", "skip_gates", "value_embed.embed.weight",
        "value_embed.proj.weight", "value_embed.scale", "value_embed.layer_scales"])
    assert not any("bigram.scale" in names for names in groups.values())


def test_build_optimizers_lrs_and_coverage(seed_meta):
    muon, adam = build_optimizers(seed_meta, 5, **OPT_ARGS)
    assert {g["name"]: g["lr"] for g in muon.param_groups} == {
        "muon_enc": 0.025, "muon_dec": 0.05, "muon_bigram": 0.025}
    assert {g["name"]: g["lr"] for g in adam.param_groups} == {
        "adam_tok": 0.035, "adam_scalar_enc": 0.025, "adam_scalar_dec": 0.05, "adam_scalar_other": 0.025}
    n_opt = sum(p.numel() for opt in (muon, adam) for g in opt.param_groups for p in g["params"])
    assert n_opt == 27_030_108 - 1  # everything but the frozen bigram.scale


def test_coverage_check_fails_loudly():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    muon, adam = build_optimizers(model, 2, **OPT_ARGS)
    model.stray = nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="stray is in 0 optimizer groups"):
        check_coverage(model, [muon, adam])
    del model.stray
    adam.param_groups[0]["params"].append(model.smear.gate)
    with pytest.raises(RuntimeError, match="smear.gate is in 2 optimizer groups"):
        check_coverage(model, [muon, adam])


def test_newton_schulz_orthogonalizes():
    torch.manual_seed(0)
    for shape in ((64, 128), (192, 64)):
        g = torch.randn(*shape) * torch.logspace(-2, 0, shape[1])
        s = torch.linalg.svdvals(newton_schulz5(g))
        assert s.min() > 0.5 and s.max() < 1.3
        assert newton_schulz5(g).shape == g.shape


def test_muon_step_matches_hand_computation():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(96, 32))
    start = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.04)
    grads = [torch.randn(96, 32) for _ in range(2)]
    buf = torch.zeros(96, 32)
    want = start.clone()
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + g
        update = newton_schulz5(g + 0.9 * buf) * math.sqrt(96 / 32)
        want = want * (1 - 0.1 * 0.04) - 0.1 * update
    torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(4))], lr=0.1)


def test_seed_lr_schedule():
    f = lambda s: lr_multiplier(s, 7000, 3500)  # noqa: E731
    assert f(0) == 1.0 and f(3499) == 1.0 and f(3500) == 1.0
    assert f(6476) == pytest.approx(524 / 3500) and f(6999) == pytest.approx(1 / 3500)
    first_below = next(s for s in range(7000) if f(s) < 0.15)
    assert first_below == 6476  # the late-QAT trigger step of seed-spec §9
    assert lr_multiplier(5250, 7000, 3500, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(6476, 7000, 3500, "cosine") < 0.15
    # wallclock: 10 ms/step so far, warmdown 100 steps = 1000 ms; 500 ms left of a 10 s budget -> 0.5
    assert lr_multiplier(950, 7000, 100, elapsed_ms=9500, max_wallclock_ms=10000) == pytest.approx(0.5)
    assert lr_multiplier(10, 7000, 100, elapsed_ms=100, max_wallclock_ms=10000) == 1.0
    with pytest.raises(ValueError, match="warmdown shape"):
        lr_multiplier(6000, 7000, 3500, "step")


def test_muon_momentum_warmup():
    assert muon_momentum(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert muon_momentum(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert muon_momentum(5000, 0.92, 0.99, 1500) == pytest.approx(0.99)


def test_ema():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.state_dict()["weight"], w0 + 0.1)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_batched_newton_schulz_matches_one_matrix_at_a_time():
    g = torch.randn(5, 48, 80) * torch.logspace(-2, 0, 80)
    got = newton_schulz5_batched(g)
    for i in range(5):
        torch.testing.assert_close(got[i], newton_schulz5(g[i]), rtol=1e-5, atol=1e-6)
    tall = torch.randn(3, 80, 48)  # oriented wide inside, returned tall
    torch.testing.assert_close(newton_schulz5_batched(tall)[1], newton_schulz5(tall[1]), rtol=1e-5, atol=1e-6)


def _muon_run(batched: bool, steps: int = 3):
    """Two groups (different lr and decay) over mixed shapes, some sharing a shape across groups."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(32, 48), (48, 32), (32, 48), (16, 48), (48, 32), (32, 48)]
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = Muon([{"params": params[:3], "lr": 0.05}, {"params": params[3:], "lr": 0.02, "weight_decay": 0.1}],
               lr=0.05, momentum=0.9, weight_decay=0.04, batched=batched)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        params[4].grad = None  # a parameter without a gradient this step is left alone
        opt.step()
    return [p.detach() for p in params], opt


def test_batched_muon_step_matches_the_matrix_by_matrix_step():
    got, opt = _muon_run(batched=True)
    want, _ = _muon_run(batched=False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert opt.batched and "momentum_buffer" not in opt.state[opt.param_groups[1]["params"][1]]
