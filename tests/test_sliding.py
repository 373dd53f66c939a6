"""Sliding-window scoring: window planning, exact-once coverage, parity with the plain eval, rank splits."""
import numpy as np
import pytest
import torch

import eval.scoring as scoring
from eval.scoring import evaluate, plain_evaluate
from eval.totals import ScoreTotals
from eval.windows import chunk_window_bounds, num_chunks, plan_windows
from model.config import get_config
from model.gpt import GPT

VOCAB = 64


def tiny_model(seed: int = 0, seq_len: int = 32) -> GPT:
    torch.manual_seed(seed)
    cfg = get_config("tiny", vocab_size=VOCAB, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64,
                     num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=seq_len, rope_train_seq_len=seq_len,
                     bigram_buckets=64, bigram_dim=32, ve_dim=32)
    return GPT(cfg)


def stream(num_tokens: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A token stream and random per-target byte counts (0..3, zeros like BOS included)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (num_tokens,), generator=g)
    return tokens, torch.randint(0, 4, (num_tokens - 1,), generator=g)


class TargetEcho(torch.nn.Module):
    """Stand-in scorer whose "NLL" at each position is the target id: Σnll then names which targets were scored."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def per_token_nll(self, x, y):
        return y.float() + 0 * self.anchor

    def nll_at(self, x, positions, targets):
        return targets.float() + 0 * self.anchor


def coverage(plan) -> np.ndarray:
    """How many times each target (input position 0..M-1) is scored by `plan`."""
    counts = np.zeros(plan.num_targets, dtype=np.int64)
    for s, n, f in zip(plan.starts, plan.lengths, plan.score_from):
        counts[s + f:s + n] += 1
    return counts


@pytest.mark.parametrize("num_targets,window,stride", [
    (1000, 32, 8), (1001, 32, 8), (997, 32, 7), (31, 32, 8), (32, 32, 8), (33, 32, 8), (5, 32, 32),
    (300, 32, 32), (301, 16, 1), (129, 64, 64), (130, 64, 63)])
def test_exact_once_plan_scores_every_target_once_with_enough_context(num_targets, window, stride):
    plan = plan_windows(num_targets, window, stride)
    assert (coverage(plan) == 1).all()
    assert plan.scored_count() == num_targets
    assert (plan.lengths <= window).all() and (plan.score_from < plan.lengths).all()
    assert (plan.starts % stride == 0).all()
    # a window's first scored target has `score_from` tokens of context: all of the stream before it, or at
    # least window - stride tokens (and never more than window - 1, as windows are at most `window` long)
    for s, f in zip(plan.starts, plan.score_from):
        assert f >= min(s + f, window - stride)


def test_seed_quirk_reproduces_pr598_window_and_chunk_counts():
    m, window, stride, chunk = 62_021_632, 2048, 64, 32_768  # spec §6.2, §6.3
    quirk = plan_windows(m, window, stride, seed_quirk=True)
    assert len(quirk) == 969_088
    assert quirk.scored_count() == m + 1_984
    assert (quirk.score_from[1:] == quirk.lengths[1:] - 64).all()
    bounds = chunk_window_bounds(quirk, chunk)
    assert num_chunks(m, chunk) == 1_893 and len(bounds) == 1_894
    per_chunk = np.diff(bounds)
    assert per_chunk[0] == 481 and per_chunk[1] == 512 and per_chunk[-1] == 415 and per_chunk.sum() == len(quirk)
    exact = plan_windows(m, window, stride)
    assert len(exact) == 969_088 - 31 and exact.scored_count() == m


def test_seed_quirk_scores_the_tail_repeatedly():
    plan = plan_windows(200, 32, 8, seed_quirk=True)
    counts = coverage(plan)
    assert (counts[:200 - 8] == 1).all() and (counts[200 - 8:] == 4).all()  # 3 short windows + the last full one


def test_plan_rejects_bad_shapes():
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 32, 64)
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 32, 0)
    with pytest.raises(ValueError, match="at least one target"):
        plan_windows(0, 32, 8)


def test_sliding_with_stride_equal_window_matches_plain_eval():
    model = tiny_model()
    tokens, nbytes = stream(1 + 32 * 9)
    sliding = evaluate(model, tokens, target_bytes=nbytes, stride=32, batch=4)
    plain = plain_evaluate(model, tokens, target_bytes=nbytes, batch=4)
    assert sliding["windows"] == 9
    assert sliding["tokens"] == plain["tokens"] == 32 * 9
    assert sliding["bytes"] == plain["bytes"] == int(nbytes.sum())
    assert sliding["nll_sum"] == pytest.approx(plain["nll_sum"], rel=1e-6)
    assert sliding["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-6)


@pytest.mark.parametrize("num_tokens", [1 + 32 * 7, 1 + 32 * 7 + 13, 20])
def test_stride_scores_every_target_and_byte_exactly_once(num_tokens):
    tokens, nbytes = stream(num_tokens, seed=num_tokens)
    echo = evaluate(TargetEcho(), tokens, target_bytes=nbytes, window=32, stride=8, batch=5)
    m = num_tokens - 1
    assert echo["tokens"] == m
    assert echo["bytes"] == int(nbytes.sum())
    assert echo["nll_sum"] == float(tokens[1:].sum())  # each target's id summed once: none missed, none repeated
    real = evaluate(tiny_model(), tokens, target_bytes=nbytes, window=32, stride=8, batch=5)
    assert real["tokens"] == m and real["bytes"] == int(nbytes.sum())
    assert real["val_bpb"] == pytest.approx(real["nll_sum"] / (np.log(2) * int(nbytes.sum())))


def test_seed_quirk_flag_counts_the_duplicate_tail():
    tokens, nbytes = stream(1 + 200)
    quirk = evaluate(TargetEcho(), tokens, target_bytes=nbytes, window=32, stride=8, batch=6, seed_quirk=True)
    assert quirk["tokens"] == 200 + 3 * 8
    assert quirk["nll_sum"] == float(tokens[1:].sum() + 3 * tokens[-8:].sum())


def test_batch_size_and_padding_do_not_change_the_sums():
    model = tiny_model(seed=3)
    tokens, nbytes = stream(1 + 150, seed=4)
    results = [evaluate(model, tokens, target_bytes=nbytes, window=32, stride=16, batch=b) for b in (1, 3, 64)]
    for r in results[1:]:
        assert r["tokens"] == results[0]["tokens"] and r["bytes"] == results[0]["bytes"]
        assert r["nll_sum"] == pytest.approx(results[0]["nll_sum"], rel=1e-5)


def test_contiguous_rank_split_adds_up_to_the_single_process_sums(monkeypatch):
    model = tiny_model(seed=5)
    tokens, nbytes = stream(1 + 170, seed=6)
    single = evaluate(model, tokens, target_bytes=nbytes, window=32, stride=8, batch=4)
    parts = []
    for rank in range(3):  # world 3: windows split contiguously; the all-reduce is the sum of the parts
        monkeypatch.setattr(scoring, "rank_and_world", lambda rank=rank: (rank, 3))
        parts.append(evaluate(model, tokens, target_bytes=nbytes, window=32, stride=8, batch=4))
    merged = sum((ScoreTotals(p["nll_sum"], p["tokens"], p["bytes"]) for p in parts), ScoreTotals())
    assert merged.token_count == single["tokens"] and merged.byte_count == single["bytes"]
    assert merged.nll_sum == pytest.approx(single["nll_sum"], rel=1e-6)
    assert all(p["tokens"] > 0 for p in parts)


def test_real_luts_give_the_bytes_of_the_text(real_tokenizer):
    from train.data.tokenizer import build_byte_luts, load_tokenizer
    sp = load_tokenizer(real_tokenizer)
    text = "Hello world, the quick brown fox. Digits 12345 too."  # ASCII: this tokenizer maps accents to unk
    ids = [1] + sp.encode(text) + [1] + sp.encode("second doc")
    tokens = torch.tensor(ids)
    echo = evaluate(TargetEcho(), tokens, build_byte_luts(sp, 1024), window=8, stride=4, batch=3)
    assert echo["tokens"] == len(ids) - 1
    assert echo["bytes"] == len(text.encode("utf-8")) + len("second doc")


def test_nll_at_is_per_token_nll_at_those_positions():
    model = tiny_model(seed=7)
    tokens, _ = stream(1 + 3 * 32, seed=8)
    x, y = tokens[:-1].view(3, 32), tokens[1:].view(3, 32)
    at = torch.tensor([[31, 30, 0], [5, 5, 17], [16, 29, 2]])
    want = model.per_token_nll(x, y).gather(1, at)
    torch.testing.assert_close(model.nll_at(x, at, y.gather(1, at)), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="positions"):
        model.nll_at(x, at, y)


@pytest.mark.parametrize("seed_quirk", [False, True])
@pytest.mark.parametrize("num_tokens,stride,batch", [(1 + 150, 16, 3), (1 + 32 * 5 + 7, 8, 4), (20, 8, 2)])
def test_head_at_scored_positions_matches_the_head_everywhere(num_tokens, stride, batch, seed_quirk):
    """The default scoring (head and loss only where windows score) against the earlier full-head path: same
    targets, same bytes, same NLL (short streams, tail windows and padded batches included)."""
    model = tiny_model(seed=9)
    tokens, nbytes = stream(num_tokens, seed=num_tokens)
    fast = evaluate(model, tokens, target_bytes=nbytes, stride=stride, batch=batch, seed_quirk=seed_quirk)
    full = evaluate(model, tokens, target_bytes=nbytes, stride=stride, batch=batch, seed_quirk=seed_quirk,
                    all_positions=True)
    assert (fast["tokens"], fast["bytes"]) == (full["tokens"], full["bytes"])
    assert fast["nll_sum"] == pytest.approx(full["nll_sum"], rel=1e-6)


def test_head_width_and_scored_ranges_without_gaps():
    for num_targets, window, stride, quirk in [(1000, 32, 8, False), (997, 32, 7, True), (31, 32, 8, False),
                                               (300, 32, 32, False), (200, 32, 8, True)]:
        plan = plan_windows(num_targets, window, stride, quirk)
        assert plan.head_width(0, 1) == (window if plan.lengths[0] > stride else stride)  # the first window
        assert all(plan.head_width(lo, lo + 3) == stride for lo in range(1, len(plan)))
        for lo in range(len(plan)):  # each window's scored range starts at or before the furthest end so far
            first, last = plan.scored_through(0, lo + 1)
            assert first == 1 and last == int(plan.ends[:lo + 1].max())
            if lo:
                assert plan.first_scored[lo] <= plan.ends[:lo].max()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_head_at_scored_positions_on_cuda_under_bf16_autocast(backend, device):
    """On the GPU (bf16 autocast, Triton kernels compiled for real): the scored-positions head against the full
    head, eagerly (compiling the tiny model would cost the GPU check more than the check is worth)."""
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=VOCAB, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64,
                     num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=64, rope_train_seq_len=64,
                     bigram_buckets=64, bigram_dim=32, ve_dim=32, backend=backend)
    model = GPT(cfg).to(device)
    tokens, nbytes = stream(1 + 64 * 6 + 9, seed=11)
    fast = evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=8, compile=False)
    full = evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=8, compile=False, all_positions=True)
    assert (fast["tokens"], fast["bytes"]) == (full["tokens"], full["bytes"])
    assert fast["val_bpb"] == pytest.approx(full["val_bpb"], rel=1e-2)
