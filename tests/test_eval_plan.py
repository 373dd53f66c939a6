"""The evaluation plan, its FLOPs against the minimum, the projection and --ttt-budget-s (with a fake clock)."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import write_fineweb_val
from eval.plan import BudgetError, epochs_for_budget, make_plan, min_score_flops_per_target, project
from eval.ttt import ScoreFirstTTT, TTTConfig, ttt_evaluate
from model.config import get_config
from model.gpt import GPT

VOCAB, SEQ = 64, 32
TINY = dict(vocab_size=VOCAB, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64, num_heads=2, num_kv_heads=1,
            mlp_hidden=128, seq_len=SEQ, rope_train_seq_len=SEQ, bigram_buckets=64, bigram_dim=32, ve_dim=32)


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(get_config("tiny", **TINY))


def stream(num_tokens: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (num_tokens,), generator=g)
    tokens[1::2] = (tokens[0::2][:len(tokens[1::2])] * 7 + 3) % VOCAB
    return tokens, torch.randint(1, 4, (num_tokens - 1,), generator=g)


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TickingClock(FakeClock):
    """Every reading is a second later than the one before."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_seed_plan_counts_the_issue_figures():
    cfg = get_config("seed")
    one = make_plan(cfg, 62_021_632, window=2048, stride=64, batch=32, ttt=TTTConfig(), world=1)
    t, s = one.ttt, one.ttt_score
    assert s.windows == 969_057 and s.scored_targets == 62_021_632
    assert (t.chunks, t.train_chunks, t.seqs_per_chunk, t.sgd_steps) == (1_893, 1_892, 16, 18_920)
    assert t.trained_tokens == 1_892 * 32_768 * 10
    assert s.score_batches == 30_284 and s.forwarded_tokens == 30_284 * 32 * 2048  # 16 per chunk, 12 in the last
    assert s.head_positions == 30_284 * 32 * 64 + 32 * (2048 - 64)  # the first window's batch reads every position
    assert s.flops / s.scored_targets == pytest.approx(min_score_flops_per_target(cfg, 2048, 64), rel=0.01)
    eight = make_plan(cfg, 62_021_632, window=2048, stride=64, batch=32, ttt=TTTConfig(), world=8)
    assert eight.ttt_score.score_batches == 1_893 * 2 and eight.ttt.seqs_per_rank == 2
    assert eight.ttt_score.forwarded_tokens > s.forwarded_tokens  # 64 windows per rank and chunk: more padding
    text = "\n".join(one.describe())
    assert "969,057 windows" in text and "18,920 SGD steps" in text and "PFLOP" in text


@pytest.mark.parametrize("world", [1, 3])
def test_plan_matches_what_the_scoring_runs(world, monkeypatch):
    """Rows forwarded and head positions read, counted at the model: exactly the plan's figures (every rank)."""
    import eval.ttt
    tokens, nbytes = stream(1 + 5 * 128 + 45)
    config = TTTConfig(chunk_tokens=128, epochs=1, lr=0.01, freeze_blocks=1)
    plan = make_plan(get_config("tiny", **TINY), len(tokens) - 1, window=SEQ, stride=16, batch=3, world=world,
                     ttt=config, sliding=False)
    seen = {"rows": 0, "head": 0, "batches": []}
    for rank in range(world):
        monkeypatch.setattr(eval.ttt, "rank_and_world", lambda rank=rank: (rank, world))
        model = tiny_model()
        ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, config=config, stride=16, batch=3)
        real = ttt.nll_fn
        batches = 0

        def counting(x, at, y):
            nonlocal batches
            seen["rows"] += x.size(0)
            seen["head"] += at.numel()
            batches += 1
            return real(x, at, y)
        ttt.nll_fn = counting
        for ci in range(ttt.num_chunks):
            ttt.score_chunk(ci)
        seen["batches"].append(batches)
    assert seen["rows"] * SEQ == plan.ttt_score.forwarded_tokens
    assert seen["head"] == plan.ttt_score.head_positions
    assert max(seen["batches"]) == plan.ttt_score.score_batches


def test_flops_per_scored_target_and_trained_token_are_within_10_percent_of_the_minimum():
    """FlopCounterMode on the seed model (meta device): scoring only at the scored positions costs the minimum for
    the model and stride; the head over every position (the earlier path) costs exactly (2048 - 64) head positions
    more per window; TTT training costs the model count (frozen blocks without weight gradients)."""
    from bench.eval_accounting import score_flops_per_target, train_flops_per_token

    scored = score_flops_per_target("seed", stride=64)
    assert scored["causal"] == pytest.approx(scored["minimum"], rel=0.10)
    assert scored["causal"] <= scored["minimum"] * 1.0001
    every = score_flops_per_target("seed", stride=64, all_positions=True)
    head = 2 * 1024 * 512
    assert every["causal"] - scored["causal"] == pytest.approx((2048 - 64) * head / 64, rel=1e-9)
    trained = train_flops_per_token("seed", freeze_blocks=2)
    assert trained["causal"] == pytest.approx(trained["minimum"], rel=0.10)
    detached = train_flops_per_token("seed", freeze_blocks=2, detach_frozen=True)  # opt-in: no backward through them
    assert detached["causal"] == pytest.approx(detached["minimum"], rel=0.10)
    assert detached["minimum"] < trained["minimum"] and detached["causal"] < trained["causal"]


def test_flat_optimizer_step_launches_fewer_kernel_ops():
    from bench.eval_accounting import ttt_step_kernel_ops

    flat, per_tensor = ttt_step_kernel_ops("tiny", flat=True), ttt_step_kernel_ops("tiny", flat=False)
    assert flat < per_tensor
    assert flat == ttt_step_kernel_ops("seed", flat=True)  # one flat buffer: the count does not grow with tensors


def test_epochs_for_budget_picks_the_largest_count_that_fits():
    plan = make_plan(get_config("tiny", **TINY), 10 * 128, window=SEQ, stride=16, batch=4, sliding=False,
                     ttt=TTTConfig(chunk_tokens=128, epochs=3))
    assert plan.ttt.train_chunks == 9 and plan.ttt_score.score_batches == 10 * 2
    # scoring 20 batches x 0.5 s = 10 s; one epoch = 9 steps x 1 s; 5 s already spent
    assert project(plan, 0.5, 1.0, elapsed_s=5.0)["total_s"] == pytest.approx(5 + 10 + 27)
    choice = epochs_for_budget(plan, 42.0, 0.5, 1.0, elapsed_s=5.0)
    assert choice["epochs"] == 3 and choice["total_s"] == pytest.approx(42.0)
    assert epochs_for_budget(plan, 41.9, 0.5, 1.0, elapsed_s=5.0)["epochs"] == 2
    assert epochs_for_budget(plan, 1e6, 0.5, 1.0, max_epochs=7)["epochs"] == 7
    assert epochs_for_budget(plan, 15.0, 0.5, 1.0, elapsed_s=5.0)["epochs"] == 0
    with pytest.raises(BudgetError, match="scoring alone"):
        epochs_for_budget(plan, 14.0, 0.5, 1.0, elapsed_s=5.0)


def _ticking(ttt: ScoreFirstTTT, clock: FakeClock, batch_s: float, micro_s: float) -> None:
    """Make every score batch cost `batch_s` and every training forward `micro_s` of fake time."""
    score, train = ttt.nll_fn, ttt.train_fn

    def scored(*args):
        clock.now += batch_s
        return score(*args)

    def trained(*args):
        clock.now += micro_s
        return train(*args)
    ttt.nll_fn, ttt.train_fn = scored, trained


def test_budget_picks_epochs_with_a_fake_clock_and_the_run_keeps_to_it():
    tokens, nbytes = stream(1 + 6 * 128)  # 6 chunks of 128: 5 trained, 4 sequences of 32 each
    config = TTTConfig(chunk_tokens=128, epochs=1, lr=0.02, freeze_blocks=1, batch_seqs=2)
    clock = FakeClock()
    model = tiny_model(seed=2)
    ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, config=config, stride=16, batch=4, clock=clock,
                        started_at=clock.now - 7.0)  # 7 s spent before TTT (loading, the pre-TTT score)
    _ticking(ttt, clock, batch_s=0.5, micro_s=0.25)  # a step is 2 micro-batches: 0.5 s
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # windows per chunk 8 (2 batches of 4), 6 chunks -> 12 batches = 6 s; probe time (3 x 0.5 + 3 x 0.5 = 3 s) is
    # spent too. 7 + 3 + 6 = 16 s; every epoch is 5 steps x 0.5 s = 2.5 s: a 26 s budget holds 4 epochs.
    choice = ttt.fit_epochs_to_budget(26.0, max_epochs=9)
    assert (choice["batch_s"], choice["step_s"]) == (0.5, 0.5)
    assert choice["epochs"] == 4 and ttt.config.epochs == 4 and choice["total_s"] == pytest.approx(26.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the probe left no trace
    assert not ttt.optimizer.state
    result = ttt.run()
    assert result["budget"]["epochs"] == 4 and result["ttt"]["epochs"] == 4
    assert result["wall_seconds"] == pytest.approx(26.0)  # the fake run took exactly the projected time
    projections = [r["projected_total_s"] for r in result["chunk_log"]]
    assert projections[2] == pytest.approx(26.0)
    # the probe changed nothing: the same run with 4 epochs set by hand gives the same score
    plain = ttt_evaluate(tiny_model(seed=2), tokens, target_bytes=nbytes, config=dataclasses.replace(config, epochs=4),
                         stride=16, batch=4)
    assert result["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-6)


def test_budget_smaller_than_the_scoring_is_a_clear_error():
    tokens, nbytes = stream(1 + 3 * 128)
    clock = TickingClock()
    model = tiny_model()
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    with pytest.raises(BudgetError, match="cannot hold"):
        ttt_evaluate(model, tokens, target_bytes=nbytes, config=TTTConfig(chunk_tokens=128, freeze_blocks=1),
                     stride=16, batch=4, budget_s=1e-6, clock=clock)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_projection_after_the_first_chunks_uses_measured_rates():
    tokens, nbytes = stream(1 + 5 * 128)
    clock = FakeClock()
    ttt = ScoreFirstTTT(tiny_model(), tokens, target_bytes=nbytes, stride=16, batch=4, clock=clock,
                        config=TTTConfig(chunk_tokens=128, epochs=2, lr=0.01, freeze_blocks=1, batch_seqs=4))
    _ticking(ttt, clock, batch_s=1.0, micro_s=3.0)
    result = ttt.run()
    log = result["chunk_log"]
    assert log[0]["projected_total_s"] is None  # nothing trained yet, no probe: no training rate
    # 5 chunks x 2 batches x 1 s + 4 trained chunks x 2 epochs x 3 s = 34 s
    assert [r["projected_total_s"] for r in log[1:]] == pytest.approx([34.0] * 4)
    assert result["wall_seconds"] == pytest.approx(34.0)
    assert result["score_seconds"] == pytest.approx(10.0) and result["train_seconds"] == pytest.approx(24.0)
    assert np.isclose(result["train_tokens_per_s"], 4 * 2 * 128 / 24.0)


@pytest.fixture
def cli_files(tmp_path, real_tokenizer, fineweb_sample):
    """(model file, data folder) for `python -m eval`: a tiny 1024-vocab GPT and a val shard of FineWeb text."""
    write_fineweb_val(tmp_path, real_tokenizer, fineweb_sample, 32 * 20)
    torch.manual_seed(0)
    model = GPT(get_config("tiny", **{**TINY, "vocab_size": 1024}))
    path = tmp_path / "model.pt"
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, path)
    return path, tmp_path


def test_cli_prints_the_plan_and_the_projection_and_fits_epochs_to_a_budget(cli_files, capsys):
    import json

    from eval.__main__ import main
    model, data = cli_files
    main([str(model), "--data", str(data), "--stride", "16", "--batch", "4", "--max-tokens", "512", "--ttt",
          "--ttt-chunk", "128", "--ttt-lr", "0.01", "--ttt-freeze", "1", "--skip-baseline", "--no-progress",
          "--ttt-budget-s", "1e9", "--ttt-max-epochs", "2"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert "plan: TTT scoring: 31 windows" in out and "plan: sliding" not in out and "plan: TTT training: 4 chunks, 3 trained" in out
    assert "ttt budget 1000000000s: 2 epochs (at most 2)" in out and "projected total" in out
    assert summary["ttt"]["ttt"]["epochs"] == 2 and summary["ttt"]["budget"]["epochs"] == 2
    assert summary["plan"]["ttt"]["sgd_steps"] == 3 * 10  # the plan as printed, before the budget chose 2 epochs


def test_cli_budget_errors_are_one_line(cli_files, capsys):
    from eval.__main__ import main
    model, data = cli_files
    args = [str(model), "--data", str(data), "--stride", "16", "--max-tokens", "256", "--no-progress",
            "--ttt-budget-s", "0.001"]
    for extra, message in (([], "--ttt-budget-s sizes the TTT epochs: it needs --ttt"),
                           (["--ttt", "--ttt-chunk", "64"], "budget cannot hold this evaluation")):
        with pytest.raises(SystemExit) as exit_info:
            main(args + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and message in err and "Traceback" not in err
