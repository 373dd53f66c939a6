"""The eager seed model: shapes and counts of seed-spec §3.11/§9, init invariants, causality, switches."""
import math

import pytest
import torch

from model.config import ModelConfig, get_config
from model.embeddings import bigram_buckets
from model.gpt import GPT
from model.qat import fake_quant_int6
from model.rotary import rope_base_for
from kernels.int6_layout import pack_int6

SEED_SHAPES = {
    "tok_emb.weight": (1024, 512), "bigram.embed.weight": (2048, 128), "bigram.proj.weight": (512, 128),
    "bigram.scale": (), "smear.gate": (512,), "skip_weights": (5, 512), "skip_gates": (5, 512),
    "value_embed.embed.weight": (1024, 128), "value_embed.proj.weight": (256, 128), "value_embed.scale": (),
    "value_embed.layer_scales": (2,),
}
BLOCK_SHAPES = {
    "resid_mix": (2, 512), "attn_scale": (512,), "mlp_scale": (512,), "attn.q.weight": (512, 512),
    "attn.k.weight": (256, 512), "attn.v.weight": (256, 512), "attn.o.weight": (512, 512), "attn.q_gain": (8,),
    "mlp.up.weight": (1536, 512), "mlp.down.weight": (512, 1536), "mlp.alpha": (1536,), "mlp.beta": (1536,),
}


@pytest.fixture(scope="module")
def seed_meta():
    with torch.device("meta"):
        return GPT(get_config("seed"))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(get_config("tiny"))


def tiny_batch(cfg, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def test_seed_parameter_count_and_names(seed_meta):
    assert seed_meta.num_params() == 27_030_108
    assert sum(p.numel() for p in seed_meta.blocks[0].parameters()) == 2_364_424
    ttt = sum(p.numel() for n, p in seed_meta.named_parameters() if not n.startswith(("blocks.0.", "blocks.1.")))
    assert ttt == 22_301_260
    want = dict(SEED_SHAPES)
    for i in range(11):
        want.update({f"blocks.{i}.{k}": v for k, v in BLOCK_SHAPES.items()})
    got = {n: tuple(t.shape) for n, t in seed_meta.state_dict().items()}
    assert got == want
    assert not seed_meta.bigram.scale.requires_grad


def test_seed_layout(seed_meta):
    assert [b.attn.xsa for b in seed_meta.blocks] == [False] * 7 + [True] * 4
    assert seed_meta.ve_slot == {9: 0, 10: 1}
    assert [b.norm_scale for b in seed_meta.blocks] == pytest.approx([1 / math.sqrt(i + 1) for i in range(11)])


def test_seed_init_invariants():
    torch.manual_seed(0)
    model = GPT(get_config("seed", num_layers=11))
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.o.weight) == 0
        assert torch.count_nonzero(block.mlp.down.weight) == 0
    for w in (model.bigram.proj.weight, model.value_embed.proj.weight):
        torch.testing.assert_close((w.T @ w).diagonal(), torch.full((w.size(1),), 1 / 22), rtol=1e-4, atol=1e-6)
    q = model.blocks[3].attn.q.weight
    torch.testing.assert_close(q @ q.T, torch.eye(512), atol=1e-4, rtol=0)
    assert model.bigram.scale.item() == pytest.approx(0.05)
    assert torch.count_nonzero(model.bigram.embed.weight) == 0
    assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.02)


def test_rope_base_rescaling():
    assert rope_base_for(2048, 10000.0, 16, 1024) == pytest.approx(22081.8, abs=0.1)
    assert rope_base_for(1024, 10000.0, 16, 1024) == 10000.0
    with torch.device("meta"):
        model = GPT(get_config("seed"))
    assert model.rotary.base_for(2048) == pytest.approx(22081.8, abs=0.1)


def test_bigram_hash():
    ids = torch.tensor([[5, 7, 1023, 0]])
    got = bigram_buckets(ids, 2048)
    assert got[0, 0] == 2047
    for i in range(1, 4):
        assert got[0, i] == ((36313 * ids[0, i].item()) ^ (27191 * ids[0, i - 1].item())) % 2047


def test_step0_loss_is_log_vocab(tiny):
    x, y = tiny_batch(tiny.cfg)
    loss = tiny(x, y)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - math.log(tiny.cfg.vocab_size)) < 0.05


def test_causality(tiny):
    torch.manual_seed(3)
    model = GPT(get_config("tiny"))
    with torch.no_grad():  # make the zero-init paths live so the test has teeth
        for block in model.blocks:
            block.attn.o.weight.normal_(std=0.05)
            block.mlp.down.weight.normal_(std=0.05)
        model.bigram.embed.weight.normal_(std=0.1)
    x, y = tiny_batch(model.cfg)
    nll = model.per_token_nll(x, y)
    assert nll.shape == x.shape
    t = 70
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % model.cfg.vocab_size
    nll2 = model.per_token_nll(x2, y)
    torch.testing.assert_close(nll2[:, :t], nll[:, :t], rtol=0, atol=1e-5)
    assert (nll2[:, t:] - nll[:, t:]).abs().max() > 1e-4


def test_backend_switch(tiny):
    x, y = tiny_batch(tiny.cfg)
    ref = tiny.per_token_nll(x, y)
    tiny.set_backend("eager")
    torch.testing.assert_close(tiny.per_token_nll(x, y), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        tiny.set_backend("cuda-magic")


def test_fake_quant_int6_grid_and_ste():
    w = torch.randn(8, 64) * torch.logspace(-2, 1, 8)[:, None]
    w.requires_grad_(True)
    fq = fake_quant_int6(w)
    scale = (w.detach().abs().amax(1, keepdim=True) / 31).clamp_min(1 / 31)
    levels = fq.detach() / scale  # fq = round(w / scale) * scale, so levels are integers up to fp32 rounding
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.round().min() >= -32 and levels.round().max() <= 31
    (fq * torch.arange(64.0)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(64.0).expand(8, 64))


def test_late_qat_only_in_train_mode():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.down.weight.normal_(std=0.05)
    x, y = tiny_batch(model.cfg)
    model.train()
    plain = model(x, y).item()
    model.set_late_qat(True)
    assert model.late_qat
    assert model(x, y).item() != plain
    model.eval()
    assert model(x, y).item() == plain
    model.set_late_qat(False)


def test_qat_set_is_every_linear_by_name(seed_meta, tiny):
    """Late QAT and --ttt-qat fake-quantize what PR #598's class-wide CastedLinear flag covers: the block
    matrices plus the bigram and value-embedding projections (where built)."""
    blocks = {f"blocks.{i}.{m}" for i in range(11) for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up",
                                                             "mlp.down")}
    assert {n for n, _ in seed_meta.qat_linears()} == blocks | {"bigram.proj", "value_embed.proj"}
    assert {n for n, _ in seed_meta.block_linears()} == blocks  # the int6 / Muon set stays the block matrices
    tiny_blocks = {f"blocks.{i}.{m}" for i in range(4) for m in ("attn.q", "attn.k", "attn.v", "attn.o",
                                                                 "mlp.up", "mlp.down")}
    assert {n for n, _ in tiny.qat_linears()} == tiny_blocks | {"bigram.proj"}  # tiny: 64 == 64, no VE proj
    try:
        tiny.set_late_qat(True)
        assert {n for n, m in tiny.named_modules() if getattr(m, "fake_quant", False)} == tiny_blocks | {"bigram.proj"}
        tiny.train()
        w = tiny.bigram.proj.weight
        assert not torch.equal(tiny.bigram.proj.effective_weight(), w)
        torch.testing.assert_close(tiny.bigram.proj.effective_weight(), fake_quant_int6(w))
    finally:
        tiny.set_late_qat(False)
        tiny.eval()
    assert not tiny.late_qat


def test_projections_only_where_the_widths_differ():
    """The seed builds the VE projection only when ve_dim != kv_dim (and the bigram one when bigram_dim !=
    model_dim); without one the table feeds v (or the residual) directly."""
    torch.manual_seed(0)
    tiny = GPT(get_config("tiny"))
    assert tiny.cfg.ve_dim == tiny.cfg.kv_dim == 64 and tiny.value_embed.proj is None
    assert not any(k.startswith("value_embed.proj") for k in tiny.state_dict())
    assert tiny.num_params() == 816_788
    ids = torch.randint(0, tiny.cfg.vocab_size, (2, 9))
    torch.testing.assert_close(tiny.value_embed(ids), tiny.value_embed.embed.weight[ids] * 0.1)
    wide = GPT(get_config("tiny", ve_dim=32, bigram_dim=128))
    assert tuple(wide.value_embed.proj.weight.shape) == (64, 32) and wide.bigram.proj is None
    with torch.no_grad():
        wide.bigram.embed.weight.normal_()  # zero at init: make the comparison below meaningful
    torch.testing.assert_close(wide.bigram(ids), wide.bigram.embed.weight[bigram_buckets(ids, 256)] * 0.05)
    x, y = tiny_batch(wide.cfg)
    assert torch.isfinite(wide(x, y))


def test_int6_weights_match_dequantized_float():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.down.weight.normal_(std=0.05)
            block.attn.o.weight.normal_(std=0.05)
    x, y = tiny_batch(model.cfg)
    quantized = {}
    with torch.no_grad():
        for name, lin in model.block_linears():
            s = (lin.weight.abs().amax(1) / 31).clamp_min(1 / 31)
            q = torch.clamp(torch.round(lin.weight / s[:, None]), -32, 31)
            quantized[name] = (pack_int6(q), s)
            lin.weight.copy_(q * s[:, None])
        want = model.per_token_nll(x, y)
        for name, lin in model.block_linears():
            lin.set_int6(*quantized[name])
            lin.weight.zero_()  # must not be read any more
        got = model.per_token_nll(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="packed weights of shape"):
        model.blocks[0].attn.q.set_int6(torch.zeros(3, 3, dtype=torch.uint8), torch.ones(3))


def test_config_roundtrip_and_errors():
    cfg = get_config("tiny", backend="eager")
    d = cfg.to_dict()
    assert isinstance(d["ve_layers"], list) and ModelConfig.from_dict(d) == cfg
    assert cfg.head_dim == 32
    with pytest.raises(ValueError, match="unknown model preset"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        get_config("tiny", not_a_field=1)
    with pytest.raises(ValueError, match="num_kv_heads"):
        get_config("tiny", num_kv_heads=3)
    with pytest.raises(ValueError, match="ve_layers"):
        get_config("tiny", ve_layers=(7,))
