"""Score-first TTT: score-before-update parity, the legality guard in the loop, freezing, LR schedule, gains."""
import pytest
import torch

from eval.legality import LegalityError, LegalityGuard
from eval.scoring import evaluate
from eval.totals import ScoreTotals
from eval.ttt import ScoreFirstTTT, TTTConfig, ttt_evaluate
from model.config import get_config
from model.gpt import GPT

VOCAB, SEQ = 64, 32


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = get_config("tiny", **{**dict(vocab_size=VOCAB, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64,
                                       num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=SEQ,
                                       rope_train_seq_len=SEQ, bigram_buckets=64, bigram_dim=32, ve_dim=32),
                                    **overrides})
    return GPT(cfg)


def learnable_stream(num_tokens: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens where every odd position is a fixed function of the one before, so adaptation can help."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (num_tokens,), generator=g)
    tokens[1::2] = (tokens[0::2][:len(tokens[1::2])] * 7 + 3) % VOCAB
    return tokens, torch.randint(1, 4, (num_tokens - 1,), generator=g)


CONFIG = TTTConfig(chunk_tokens=128, epochs=3, lr=0.05, momentum=0.9, freeze_blocks=1)


def test_guard_tracks_the_scored_prefix_even_out_of_order():
    guard = LegalityGuard()
    guard.record_scored(1, 10)
    guard.record_scored(21, 30)  # another rank's later range arrives first
    with pytest.raises(LegalityError, match="11..20"):
        guard.check_train(11, 20)
    guard.record_scored(11, 20)
    guard.check_train(1, 30)
    assert guard.scored_through == 30
    with pytest.raises(LegalityError, match="1..30"):
        guard.check_train(25, 31)


def test_first_chunk_is_scored_before_any_update():
    tokens, nbytes = learnable_stream(1 + 4 * 128)
    base_model = tiny_model()  # GPT holds its ops module, so it cannot be deep-copied: build a twin instead
    result = ttt_evaluate(tiny_model(), tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)
    first, second = result["chunk_log"][0], result["chunk_log"][1]
    # chunk 0's windows score exactly targets 1..128 here, all with full-length windows ending <= 128
    unadapted_first = evaluate(base_model, tokens[:129], target_bytes=nbytes[:128], stride=16, batch=8)
    assert first["tokens"] == unadapted_first["tokens"] == 128 and first["bytes"] == unadapted_first["bytes"]
    assert first["nll_sum"] == pytest.approx(unadapted_first["nll_sum"], rel=1e-6)
    # the second chunk is scored after one round of adaptation, so it differs from the un-adapted score
    unadapted_both = evaluate(base_model, tokens[:257], target_bytes=nbytes[:256], stride=16, batch=8)
    assert second["nll_sum"] != pytest.approx(unadapted_both["nll_sum"] - unadapted_first["nll_sum"], rel=1e-4)
    assert result["tokens"] == 4 * 128 and result["bytes"] == int(nbytes.sum())


def test_training_before_scoring_raises_and_leaves_weights_untouched():
    tokens, nbytes = learnable_stream(1 + 4 * 128)
    model = tiny_model()
    ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LegalityError):
        ttt.train_chunk(0)
    ttt.score_chunk(0)
    with pytest.raises(LegalityError):
        ttt.train_chunk(1)  # chunk 1 not scored yet
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ttt.train_chunk(0)  # legal now
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_with_scoring_skipped_raises(monkeypatch):
    tokens, nbytes = learnable_stream(1 + 3 * 128)
    # a broken loop that "scores" nothing: its first training step must be refused
    monkeypatch.setattr(ScoreFirstTTT, "score_chunk", lambda self, ci: ScoreTotals())
    with pytest.raises(LegalityError, match="illegal TTT step"):
        ttt_evaluate(tiny_model(), tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)


def test_ttt_lowers_bpb_and_keeps_frozen_blocks_fixed():
    tokens, nbytes = learnable_stream(1 + 4 * 128, seed=2)
    model = tiny_model(seed=1)
    before = {k: v.clone() for k, v in model.named_parameters()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    pre = evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=8)
    post = ttt_evaluate(model, tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)
    assert post["val_bpb"] < pre["val_bpb"] - 0.01
    assert post["tokens"] == pre["tokens"] and post["bytes"] == pre["bytes"]
    for name, p in model.named_parameters():
        if name.startswith("blocks.0."):
            assert torch.equal(p, before[name]), name
    assert not torch.equal(model.tok_emb.weight, before["tok_emb.weight"])
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert post["trainable_params"] + post["frozen_params"] == model.num_params()
    assert post["frozen_params"] == sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.0."))
    logged = post["chunk_log"]
    assert [r["chunk"] for r in logged] == list(range(4)) and logged[-1]["lr"] is None
    assert logged[-1]["running_bpb"] == pytest.approx(post["val_bpb"])
    assert sum(r["tokens"] for r in logged) == post["tokens"]


def test_lr_schedule_is_cosine_over_chunks_with_optional_warmup():
    tokens, nbytes = learnable_stream(1 + 5 * 128)
    ttt = ScoreFirstTTT(tiny_model(), tokens, target_bytes=nbytes, config=CONFIG, stride=16)
    assert ttt.num_chunks == 5
    assert [ttt.lr_for(i) for i in (0, 2, 4)] == pytest.approx([0.05, 0.025, 0.0])
    warm = ScoreFirstTTT(tiny_model(), tokens, target_bytes=nbytes, stride=16,
                         config=TTTConfig(chunk_tokens=128, lr=0.05, warmup_frac=0.4))
    assert [warm.lr_for(i) for i in (0, 1, 2)] == pytest.approx([0.025, 0.05, 0.025])


def test_momentum_persists_and_qat_flag_is_restored():
    tokens, nbytes = learnable_stream(1 + 3 * 128)
    model = tiny_model()
    ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, stride=16, batch=8,
                        config=TTTConfig(chunk_tokens=128, epochs=1, lr=0.01, qat=True))
    optimizer = ttt.optimizer
    ttt.score_chunk(0)
    ttt.train_chunk(0)
    assert ttt.optimizer is optimizer and optimizer.state  # one optimizer, momentum buffers kept
    assert model.late_qat is False


def test_ttt_qat_fake_quantizes_the_seed_set_by_name(monkeypatch):
    """--ttt-qat covers what PR #598's class-wide QAT flag covers: the block matrices (the frozen blocks'
    too) and the bigram and value-embedding projections; scoring forwards use the plain weights."""
    import model.layers
    tokens, nbytes = learnable_stream(1 + 3 * 128)
    model_ = tiny_model(ve_dim=16)  # ve_dim != kv_dim (32), so the VE projection exists as in the seed preset
    want = {f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up",
                                                          "mlp.down")} | {"bigram.proj", "value_embed.proj"}
    assert {n for n, _ in model_.qat_linears()} == want
    names = {id(m.weight): n for n, m in model_.qat_linears()}
    quantized = {"train": set(), "eval": set()}
    real = model.layers.fake_quant_int6

    def recording(w):
        quantized["train" if model_.training else "eval"].add(names[id(w)])
        return real(w)

    monkeypatch.setattr(model.layers, "fake_quant_int6", recording)
    ttt = ScoreFirstTTT(model_, tokens, target_bytes=nbytes, stride=16, batch=8,
                        config=TTTConfig(chunk_tokens=128, epochs=1, lr=0.01, qat=True))
    ttt.score_chunk(0)
    ttt.train_chunk(0)
    ttt.score_chunk(1)
    assert quantized == {"train": want, "eval": set()}
    assert model_.late_qat is False


def test_chunk_size_must_align_with_the_window():
    tokens, nbytes = learnable_stream(1 + 300)
    with pytest.raises(ValueError, match="multiple of the window"):
        ScoreFirstTTT(tiny_model(), tokens, target_bytes=nbytes, config=TTTConfig(chunk_tokens=100), stride=16)


@pytest.mark.parametrize("seed_quirk,qat", [(False, False), (True, True)])
def test_fast_path_gives_the_reference_path_scores(seed_quirk, qat):
    """Head at the scored positions only + flat-gradient fused SGD (the default) against the head over every
    position + tensor-by-tensor SGD and clip (the earlier path): pre- and post-TTT val_bpb equal within fp32."""
    import dataclasses
    tokens, nbytes = learnable_stream(1 + 4 * 128 + 37, seed=2)
    config = dataclasses.replace(CONFIG, qat=qat, warmup_frac=0.3)
    scores = {}
    for fast in (True, False):
        model = tiny_model(seed=1)
        pre = evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=5, seed_quirk=seed_quirk,
                       all_positions=not fast)
        post = ttt_evaluate(model, tokens, target_bytes=nbytes, config=dataclasses.replace(config, flat_step=fast),
                            stride=16, batch=5, seed_quirk=seed_quirk, all_positions=not fast)
        assert all(p.grad is None for p in model.parameters())
        scores[fast] = (pre, post)
    for fast_result, reference in zip(scores[True], scores[False]):
        assert fast_result["tokens"] == reference["tokens"] and fast_result["bytes"] == reference["bytes"]
        assert fast_result["val_bpb"] == pytest.approx(reference["val_bpb"], rel=1e-6)
    assert scores[True][1]["val_bpb"] < scores[True][0]["val_bpb"]  # TTT did adapt


def test_one_host_read_per_chunk_and_none_inside(monkeypatch):
    """The loop reads values back to the host once per chunk (the chunk's score totals): no .item(), bool() or
    data-dependent shape op in scoring or training."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import eval.totals

    class HostReads(TorchDispatchMode):
        ops = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique", "aten.is_nonzero")

        def __init__(self):
            super().__init__()
            self.reads = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in self.ops:
                self.reads.append(str(func))
            return func(*args, **(kwargs or {}))

    totals_calls = []
    real_totals = eval.totals.ScoreAccumulator.totals
    monkeypatch.setattr(eval.totals.ScoreAccumulator, "totals",
                        lambda self, reduce=True: totals_calls.append(1) or real_totals(self, reduce))
    tokens, nbytes = learnable_stream(1 + 3 * 128)
    ttt = ScoreFirstTTT(tiny_model(), tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)
    counter = HostReads()
    with counter:
        for ci in range(2):
            ttt.score_chunk(ci)
            ttt.train_chunk(ci)
    assert counter.reads == [] and len(totals_calls) == 2


def test_budget_probe_learns_nothing_from_validation_tokens():
    """--ttt-budget-s times steps on random tokens: the guard has seen no scoring, training is still refused."""
    tokens, nbytes = learnable_stream(1 + 3 * 128)
    model = tiny_model()
    ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, config=CONFIG, stride=16, batch=8)
    ttt.fit_epochs_to_budget(1e6, max_epochs=2)
    assert ttt.guard.scored_through == 0 and ttt.config.epochs == 2
    with pytest.raises(LegalityError):
        ttt.train_chunk(0)


def test_detach_frozen_saves_nothing_in_the_frozen_blocks_and_is_opt_in():
    """TTTConfig(detach_frozen=True): the frozen block saves no activations for backward and the embeddings
    lose the gradient that reaches them through it (a different recipe, so never the default)."""
    import dataclasses
    tokens, nbytes = learnable_stream(1 + 4 * 128, seed=2)
    saved, embeddings = {}, {}
    for detach in (False, True):
        model = tiny_model(seed=1)
        ttt = ScoreFirstTTT(model, tokens, target_bytes=nbytes, stride=16, batch=8,
                            config=dataclasses.replace(CONFIG, detach_frozen=detach))
        inside, count = [], {"n": 0}
        model.blocks[0].register_forward_pre_hook(lambda *a: inside.append(1))
        model.blocks[0].register_forward_hook(lambda *a: inside.clear())

        def pack(t):
            count["n"] += bool(inside)
            return t
        model.train()
        x, y = ttt._rank_sequences(ttt.tokens[:128], ttt.tokens[1:129])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, y)
        saved[detach] = count["n"]
        ttt.score_chunk(0)
        ttt.train_chunk(0)
        ttt.restore_requires_grad()
        assert "forward" not in vars(model.blocks[0])  # the class forward is back
        embeddings[detach] = model.tok_emb.weight.detach().clone()
    assert saved[False] > 0 and saved[True] == 0
    assert not torch.equal(embeddings[False], embeddings[True])  # another recipe: other embeddings
    assert TTTConfig().detach_frozen is False
    post = ttt_evaluate(tiny_model(seed=1), tokens, target_bytes=nbytes, stride=16, batch=8,
                        config=dataclasses.replace(CONFIG, detach_frozen=True))
    pre = evaluate(tiny_model(seed=1), tokens, target_bytes=nbytes, stride=16, batch=8)
    assert post["val_bpb"] < pre["val_bpb"] - 0.01
