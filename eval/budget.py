"""TTT epochs sized to a time budget (`python -m eval --ttt --ttt-budget-s SECONDS`).

The challenge caps evaluation at 10 minutes; faster scoring and training leave time for more TTT epochs. Before
the first chunk, `measure_rates` times one score batch and one SGD step of a ScoreFirstTTT on this device, on
random tokens (each after one untimed call that pays for compilation and warm-up): validation tokens are never
used, so nothing is learned from a token before it is scored, and the weights and the optimizer's momentum are
restored afterwards. `fit_epochs_to_budget` then projects the whole run with eval.plan (this rank's score batches
and SGD steps, plus the time already spent since the run started) and sets the largest epoch count, up to a cap,
whose projected total fits the budget. Under torchrun every rank takes the slowest rank's rates, so all choose
the same count.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from eval.distributed import all_reduce_max_
from eval.scoring import autocast_for
from eval.ttt_step import late_qat_for_training


def measure_rates(ttt, reps: int = 2) -> dict:
    """{"batch_s", "step_s", "reps"}: seconds per score batch and per SGD step of `ttt` (an eval.ttt.ScoreFirstTTT),
    timed on random tokens; also stored as ttt.rates (the projection falls back on them before chunks settle)."""
    vocab = int(ttt.model.cfg.vocab_size)
    g = torch.Generator().manual_seed(0)
    width = ttt.window if ttt.all_positions else ttt.plan.stride
    x = torch.randint(vocab, (ttt.batch, ttt.window), generator=g).to(ttt.device)
    at = torch.arange(ttt.window - width, ttt.window, device=ttt.device).expand(ttt.batch, width)
    y = torch.randint(vocab, (ttt.batch, width), generator=g).to(ttt.device)
    seqs = ttt.config.chunk_tokens // ttt.window // ttt.world
    xs = torch.randint(vocab, (seqs, ttt.window), generator=g).to(ttt.device)
    ys = torch.randint(vocab, (seqs, ttt.window), generator=g).to(ttt.device)

    def score():
        with torch.no_grad(), autocast_for(ttt.device):
            ttt.nll_fn(x, x) if ttt.all_positions else ttt.nll_fn(x, at, y)

    saved = [p.detach().clone() for p in ttt.params]
    ttt.model.eval()
    batch_s = _time(ttt, score, reps)
    ttt.model.train()
    with late_qat_for_training(ttt.model, ttt.config.qat):
        step_s = _time(ttt, lambda: ttt._sgd_step(xs, ys), reps)
    ttt.model.eval()
    with torch.no_grad():
        for p, value in zip(ttt.params, saved):
            p.copy_(value)
    ttt.optimizer.state.clear()  # fresh momentum, as if the probe never ran
    ttt.step.zero_grad()
    rates = torch.tensor([batch_s, step_s], dtype=torch.float64, device=ttt.device)
    batch_s, step_s = all_reduce_max_(rates).tolist()
    ttt.rates = {"batch_s": batch_s, "step_s": step_s, "reps": reps}
    return ttt.rates


def _time(ttt, fn: Callable[[], None], reps: int) -> float:
    """Seconds per call of fn after one untimed call, by ttt.clock (the device synchronized around the reps)."""
    fn()
    _sync(ttt.device)
    t0 = ttt.clock()
    for _ in range(reps):
        fn()
    _sync(ttt.device)
    return (ttt.clock() - t0) / reps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit_epochs_to_budget(ttt, budget_s: float, max_epochs: int = 50, reps: int = 2) -> dict:
    """Measure the rates, then set ttt.config.epochs to the largest count in [0, max_epochs] whose projected total
    (time spent since ttt.started_at + scoring + training) fits `budget_s`. Returns (and stores as ttt.budget) the
    choice with its projection and rates; eval.plan.BudgetError when scoring alone is projected past the budget."""
    from eval.plan import epochs_for_budget, make_plan

    rates = measure_rates(ttt, reps)
    plan = make_plan(ttt.model.cfg, ttt.num_targets, window=ttt.window, stride=ttt.plan.stride, batch=ttt.batch,
                     seed_quirk=ttt.seed_quirk, world=ttt.world, sliding=False, ttt=ttt.config)
    choice = epochs_for_budget(plan, budget_s, rates["batch_s"], rates["step_s"],
                               elapsed_s=ttt.clock() - ttt.started_at, max_epochs=max_epochs)
    ttt.config = dataclasses.replace(ttt.config, epochs=choice["epochs"])
    ttt.budget = {**choice, "budget_s": budget_s, "max_epochs": max_epochs, **rates}
    return ttt.budget
