"""`--preset seed` trains and evaluates as PR #598's run did: the warm-up, the never-cleared bigram.scale
gradient and its share of the clip norm, tok_emb in bf16, late QAT that fires without touching the training
forwards and turns TTT's fake-quant on, and `--print-config` beside the seed's values (in-process, CPU)."""
import json
import math

import pytest
import torch

import train.__main__ as train_cli
from model.config import get_config
from common.checkpoint import load_checkpoint, read_model_file
from train.config import LEGACY_VALUES, TrainConfig, get_train_config
from train.data.loader import DistributedTokenLoader
from train.loop import run_training
from train.step import build_training_model, build_training_optimizers

from test_cuda_autocast import POLICIES

# the GPU's default training policy (compiled: Triton + Inductor families) and the eager one; the not-compiled
# CUDA policy differs only in families tests/test_cuda_autocast.py already runs (each Triton case is ~20 s here)
CUDA_POLICIES = [p for p in POLICIES if p[0] in ("cuda-compiled-default", "eager")]
CUDA_POLICY_IDS = [p[0] for p in CUDA_POLICIES]

# the tiny architecture at CPU-test size; bigram_dim 64 keeps the bigram projection orthogonal (below 64 the
# seed zero-inits it, and a zero projection over a zero table would leave bigram.scale without any gradient)
SMALL_MODEL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=64, ve_dim=32)
ACCUM = 2


def seed_configs(**train):
    """The seed preset's training config (grad clip 0.3, warm-up, orphan gradient, bf16 tok_emb) at tiny sizes."""
    sizes = dict(steps=2, batch_tokens=4 * 32, accum_total=ACCUM, warmup_steps=2, warmdown_steps=0, val_every=0,
                 val_max_tokens=2 * 32, checkpoint_every=0, compile=False)
    return get_train_config("seed", **{**sizes, **train}), get_config("tiny", **SMALL_MODEL)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_gradients(model, loader) -> tuple[float, float]:
    """(bigram.scale's gradient, global norm of every other gradient) of one optimizer step's micro-batches at
    the model's weights. Each tensor's norm is taken in its own dtype, as torch's clip_grad_norm_ does (the bf16
    tok_emb's gradient norm is a bf16 number)."""
    model.zero_grad(set_to_none=True)
    for _ in range(ACCUM):
        x, y = loader.next_batch()
        (model(x, y) / ACCUM).backward()
    others = math.sqrt(sum(float(p.grad.norm()) ** 2 for name, p in model.named_parameters()
                           if p.grad is not None and name != "bigram.scale"))
    return model.bigram.scale.grad.item(), others


def write_artifact(model_file, path):
    """The artifact `python -m quant` writes for a model file (its provenance copied into the manifest)."""
    from quant.artifact import compress_body, encode_body, write_atomic
    from quant.schemes import quantize_state_dict

    body = encode_body(quantize_state_dict(model_file.state), model_file.config, provenance=model_file.provenance)
    write_atomic(path, compress_body(body, 3))
    return path


def clip_factor(norm: float, max_norm: float) -> float:
    return min(1.0, max_norm / (norm + 1e-6))  # torch.nn.utils.clip_grad_norm_


@pytest.mark.parametrize("accumulate", [True, False])
def test_orphan_gradient_accumulates_over_warmup_and_steps_and_counts_in_the_clip(corpus, tmp_path, accumulate):
    """Two warm-up steps, then two training steps (stopped after the first and resumed, so the checkpoint must
    carry the gradient), against a hand computation of bigram.scale's gradient and the clip factor.

    By hand: at the initial weights the bigram table is zero, so bigram.scale's gradient is exactly 0 on any
    batch; after one warm-up optimizer step it is not. The seed's warm-up leaves W = g(θ0', b2) on bigram.scale
    (θ0' = the weights after warm-up step 1), restores θ0 and rewinds the loader. Step 1 (batch b1, at θ0):
    pre-clip norm n1 = sqrt(|others|² + W²), the clip scales every gradient, the orphan's too: o1 = c1·W.
    Step 2 (batch b2, at θ1): n2 = sqrt(|others|² + (o1 + g2)²), o2 = c2·(o1 + g2). Cleared (the flag): the
    orphan is its step's gradient alone and no checkpoint keeps one."""
    tcfg, mcfg = seed_configs(accumulate_bigram_scale_grad=accumulate)
    out = tmp_path / "run"
    run_training(tcfg, mcfg, corpus, out, stop_at_step=1, progress=False)
    after_step1 = load_checkpoint(out / "checkpoint.pt")
    run_training(tcfg, mcfg, corpus, out, resume=out / "checkpoint.pt", progress=False)
    after_step2 = load_checkpoint(out / "checkpoint.pt")
    logged = {r["step"]: r["grad_norm"] for r in metrics(out) if "grad_norm" in r}

    def loader():
        return DistributedTokenLoader(corpus, tcfg.batch_tokens, mcfg.seq_len, 0, 1, ACCUM, torch.device("cpu"),
                                      mcfg.vocab_size)

    model = build_training_model(tcfg, mcfg, "cpu")
    muon, adam = build_training_optimizers(model, tcfg)
    warm = loader()
    g_init, others1 = step_gradients(model, warm)  # warm-up step 1 = training step 1: θ0 on b1
    muon.step()
    adam.step()  # the seed's warm-up: no clip, initial learning rates and momentum
    w, _ = step_gradients(model, warm)  # warm-up step 2: θ0' on b2
    assert g_init == 0.0 and abs(w) > 1e-3

    model.load_state_dict(after_step1["model"])  # θ1
    steps = loader()
    steps.next_batch(), steps.next_batch()  # step 2 reads b2 (ACCUM micro-batches per step)
    g2, others2 = step_gradients(model, steps)
    if accumulate:
        n1 = math.hypot(others1, w)
        o1 = clip_factor(n1, tcfg.grad_clip) * w
        n2 = math.hypot(others2, o1 + g2)
        o2 = clip_factor(n2, tcfg.grad_clip) * (o1 + g2)
        assert after_step1["orphan_grads"]["bigram.scale"].item() == pytest.approx(o1, rel=1e-5)
        assert after_step2["orphan_grads"]["bigram.scale"].item() == pytest.approx(o2, rel=1e-5)
        assert clip_factor(n1, tcfg.grad_clip) < 0.5  # the seed's clip (0.3) is active at these sizes
    else:
        n1, n2 = others1, math.hypot(others2, g2)
        assert after_step1["orphan_grads"] == {} and after_step2["orphan_grads"] == {}
    assert logged[1] == pytest.approx(n1, rel=1e-6) and logged[2] == pytest.approx(n2, rel=1e-6)
    # the orphan's share of the norm is far above the tolerance: the two behaviours are told apart
    assert abs(math.hypot(others1, w) - others1) > 100 * 1e-6 * others1


def test_warmup_restores_weights_optimizers_and_loader(corpus, tmp_path):
    """With the orphan gradient cleared, warm-up steps change nothing: the run equals one without them."""
    runs = {}
    for warmup in (0, 3):
        tcfg, mcfg = seed_configs(steps=3, warmup_steps=warmup, accumulate_bigram_scale_grad=False)
        run_training(tcfg, mcfg, corpus, tmp_path / str(warmup), progress=False)
        runs[warmup] = load_checkpoint(tmp_path / str(warmup) / "checkpoint.pt")
    assert [r["train_loss"] for r in metrics(tmp_path / "0") if "train_loss" in r] == \
        [r["train_loss"] for r in metrics(tmp_path / "3") if "train_loss" in r]
    for name, tensor in runs[0]["model"].items():
        assert torch.equal(tensor, runs[3]["model"][name]), name


def test_seed_preset_keeps_tok_emb_in_bf16_from_training_to_ttt(corpus, tmp_path):
    """tok_emb is stored, updated (AdamW state included) and saved in bf16; quantization restores bf16 and
    evaluation keeps it, so TTT updates it in bf16 too (one flat gradient buffer per dtype)."""
    from eval.loading import build_model, read_model_source
    from eval.ttt import TTTConfig, ttt_evaluate
    from common.shards import load_validation_tokens
    from train.data.tokenizer import build_byte_luts, load_tokenizer

    tcfg, mcfg = seed_configs(steps=3)
    out = tmp_path / "run"
    run_training(tcfg, mcfg, corpus, out, progress=False)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["model"]["tok_emb.weight"].dtype == torch.bfloat16
    initial = build_training_model(tcfg, mcfg, "cpu").tok_emb.weight
    assert initial.dtype == torch.bfloat16 and not torch.equal(initial, ckpt["model"]["tok_emb.weight"])
    adam_state = [s for s in ckpt["optimizers"]["adamw"]["state"].values() if "exp_avg" in s]
    assert torch.bfloat16 in {s["exp_avg"].dtype for s in adam_state}
    final = read_model_file(out / "final_model.pt")
    assert final.state["tok_emb.weight"].dtype == torch.bfloat16
    assert {t.dtype for n, t in final.state.items() if n != "tok_emb.weight"} == {torch.float32}

    model, _ = build_model(read_model_source(write_artifact(final, tmp_path / "model.tgz")))
    assert model.tok_emb.weight.dtype == torch.bfloat16 and model.blocks[0].attn.q.weight.dtype == torch.float32
    before = model.tok_emb.weight.detach().clone()
    tokens = load_validation_tokens(corpus, mcfg.seq_len, mcfg.vocab_size)[:1 + 4 * 64]
    luts = build_byte_luts(load_tokenizer(corpus / "tokenizer.model"), mcfg.vocab_size)
    # a large LR: at the seed's 0.002 an SGD step is far below a bf16 step of these small weights
    result = ttt_evaluate(model, tokens, luts, config=TTTConfig(chunk_tokens=64, epochs=1, lr=0.5), stride=16,
                          batch=4)
    assert math.isfinite(result["val_bpb"]) and model.tok_emb.weight.dtype == torch.bfloat16
    assert not torch.equal(before, model.tok_emb.weight)  # TTT trained it, in bf16


def test_late_qat_fires_records_itself_and_leaves_the_training_forwards_alone(corpus, tmp_path, capsys):
    """Seed preset: late QAT fires below the threshold (logged, recorded in checkpoint, model file and artifact)
    but, as in PR #598's run, the training forwards are not fake-quantized: the weights equal a run where it
    never fires. Evaluation then turns TTT's fake-quant on by default; --no-ttt-qat turns it off."""
    from eval.__main__ import resolve_ttt_qat
    from eval.loading import read_model_source

    runs = {}
    for threshold in (0.5, 0.0):
        tcfg, mcfg = seed_configs(steps=4, warmdown_steps=4, late_qat_threshold=threshold)
        summary = run_training(tcfg, mcfg, corpus, tmp_path / str(threshold), progress=False)
        runs[threshold] = (summary, read_model_file(tmp_path / str(threshold) / "final_model.pt"))
    fired, never = runs[0.5], runs[0.0]
    events = [r for r in metrics(tmp_path / "0.5") if r.get("event") == "late_qat_enabled"]
    assert [e["step"] for e in events] == [3] and events[0]["in_training"] is False  # multiplier 1/4 < 0.5
    assert fired[0]["late_qat"] and not never[0]["late_qat"]
    assert all(torch.equal(t, never[1].state[n]) for n, t in fired[1].state.items())
    assert fired[1].provenance["late_qat"] is True and never[1].provenance["late_qat"] is False
    assert load_checkpoint(tmp_path / "0.5" / "checkpoint.pt")["late_qat"] is True

    from_artifact = read_model_source(write_artifact(fired[1], tmp_path / "fired.tgz")).provenance
    assert resolve_ttt_qat(None, from_artifact) == (True, "model file")
    assert resolve_ttt_qat(False, from_artifact) == (False, "flag")
    assert resolve_ttt_qat(None, never[1].provenance) == (False, "model file")
    old = {k: v for k, v in fired[1].provenance.items() if k != "late_qat"}  # written before it was recorded
    assert resolve_ttt_qat(None, old) == (False, "not recorded")
    # the eval CLI on that artifact: TTT fake-quantizes by default, says why, and records where it came from
    from eval.__main__ import main as eval_main
    cli = [str(tmp_path / "fired.tgz"), "--data", str(corpus), "--stride", "16", "--batch", "4", "--max-tokens",
           "128", "--ttt", "--ttt-chunk", "64", "--ttt-epochs", "1", "--skip-baseline", "--no-progress"]
    for extra, want in (([], (True, "model file")), (["--no-ttt-qat"], (False, "flag"))):
        summary = eval_main(cli + extra)
        assert (summary["ttt"]["ttt"]["qat"], summary["ttt"]["qat_from"]) == want
    assert "ttt fake-quant: on (the model file records" in capsys.readouterr().out

    # and with late_qat_in_training (tiny's default) the fired flag does fake-quantize the training forwards
    tcfg, mcfg = seed_configs(steps=4, warmdown_steps=4, late_qat_threshold=0.5, late_qat_in_training=True)
    run_training(tcfg, mcfg, corpus, tmp_path / "in_training", progress=False)
    trained = read_model_file(tmp_path / "in_training" / "final_model.pt").state
    assert not torch.equal(trained["blocks.0.attn.q.weight"], never[1].state["blocks.0.attn.q.weight"])


def test_print_config_lists_exactly_the_deviations(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU defaults (compile on)
    assert train_cli.main(["--preset", "seed", "--print-config"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["differs"] == ["model.backend", "eval.seed_quirk", "quant.clip", "quant.container"]
    assert summary["values"]["train.accumulate_bigram_scale_grad"] is True
    assert summary["values"]["train.tok_emb_dtype"] == "bfloat16" and summary["values"]["eval.ttt_qat"] == "auto"
    assert any(line.startswith("train.late_qat_threshold") and " ok " in line for line in lines)
    assert train_cli.main(["--preset", "seed", "--print-config", "--no-accumulate-bigram-scale-grad"]) == 0
    flagged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "train.accumulate_bigram_scale_grad" in flagged["differs"]


def test_print_config_states_the_quantizer_defaults():
    from quant.artifact import DEFAULT_LEVEL
    from quant.schemes import DEFAULT_CLIP, DEFAULT_SCALE_FLOOR
    from train.seed_run import QUANT_DEFAULTS

    assert (QUANT_DEFAULTS["clip"], QUANT_DEFAULTS["scale_floor"], QUANT_DEFAULTS["zstd_level"]) == (
        DEFAULT_CLIP, DEFAULT_SCALE_FLOOR, DEFAULT_LEVEL)


def test_presets_and_saved_configs():
    seed, tiny = get_train_config("seed"), get_train_config("tiny")
    assert (seed.warmup_steps, seed.accumulate_bigram_scale_grad, seed.tok_emb_dtype, seed.late_qat_threshold,
            seed.late_qat_in_training) == (20, True, "bfloat16", 0.15, False)
    assert (tiny.warmup_steps, tiny.accumulate_bigram_scale_grad, tiny.tok_emb_dtype,
            tiny.late_qat_threshold) == (0, False, "float32", 0.0)
    # late QAT fires where PR #598's log says it did: `late_qat:enabled step:6476 scale:0.1497`
    from train.schedule import lr_multiplier
    fires = next(s for s in range(seed.steps) if 0 < lr_multiplier(s, seed.steps, seed.warmdown_steps)
                 < seed.late_qat_threshold)
    assert fires == 6476 and lr_multiplier(fires, seed.steps, seed.warmdown_steps) == pytest.approx(0.1497, abs=1e-4)
    # a config saved before these fields existed resumes as that code trained
    old = {k: v for k, v in seed.to_dict().items() if k not in LEGACY_VALUES}
    assert TrainConfig.from_dict(old) == TrainConfig(**{**old, **LEGACY_VALUES})
    with pytest.raises(ValueError, match="tok_emb_dtype"):
        get_train_config("seed", tok_emb_dtype="float16")


def test_bundle_defaults_carry_the_seed_behaviour(monkeypatch):
    """`python -m quant bundle --preset seed` writes a train_gpt.py whose defaults carry the seed's behaviours,
    each settable by its environment variable; TTT_QAT is auto|1|0 (older bundles' booleans still read)."""
    from quant.bundle_cli import preset_defaults
    from train.challenge_env import EvalSettings, settings_from_env

    defaults = preset_defaults("seed", 0.0, 0.0)  # PR #598's: no wall-clock cap, TTT_EPOCHS as set
    s = settings_from_env(defaults, {})
    assert (s.train.tok_emb_dtype, s.train.late_qat_threshold, s.train.late_qat_in_training) == ("bfloat16", 0.15,
                                                                                                 False)
    assert s.train.accumulate_bigram_scale_grad and s.train.warmup_steps == 20 and s.eval.ttt_qat == "auto"
    assert "--ttt-qat" not in s.eval.eval_argv() and "--no-ttt-qat" not in s.eval.eval_argv()
    s = settings_from_env(defaults, {"ACCUMULATE_BIGRAM_SCALE_GRAD": "0", "TTT_QAT": "0", "EVAL_SEED_QUIRK": "1"})
    assert not s.train.accumulate_bigram_scale_grad
    assert "--no-ttt-qat" in s.eval.eval_argv() and "--seed-quirk" in s.eval.eval_argv()
    assert EvalSettings(ttt_qat=True).ttt_qat == "on" and EvalSettings(ttt_qat=False).ttt_qat == "off"
    with pytest.raises(ValueError, match="TTT_QAT"):
        settings_from_env(defaults, {"TTT_QAT": "maybe"})
    with pytest.raises(ValueError, match="tok_emb_dtype"):
        settings_from_env(defaults, {"TOK_EMB_DTYPE": "float16"})


def test_ttt_sgd_moves_bf16_parameters_on_the_cpu():
    """torch 2.13's fused CPU SGD leaves bf16 parameters of 16+ elements unchanged; the TTT step avoids it."""
    from eval.ttt_step import FlatGradSGD

    p = torch.nn.Parameter(torch.full((64,), 0.005, dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.ones(3))
    step = FlatGradSGD([q, p], lr=0.5, momentum=0.9, grad_clip=0.0)
    p.grad.fill_(0.04)
    q.grad.fill_(1.0)
    step.step()
    assert torch.all(p.detach() == torch.tensor(0.005 - 0.5 * 0.04, dtype=torch.bfloat16))
    assert torch.allclose(q.detach(), torch.full((3,), 0.5))


@pytest.mark.parametrize("name,backend,kernels,dtype", CUDA_POLICIES, ids=CUDA_POLICY_IDS)
def test_seed_behaviours_under_cuda_autocast(name, backend, kernels, dtype, corpus, tmp_path):
    """The seed preset's training (bf16 tok_emb, warm-up, orphan gradient, late QAT firing) and its default
    evaluation (TTT with fake-quant, bf16 tok_emb kept) under CUDA's autocast dtypes, for every CUDA policy."""
    from cuda_autocast import cuda_autocast_policy
    from eval.loading import build_model, read_model_source
    from eval.ttt import TTTConfig, ttt_evaluate

    tcfg, _ = seed_configs(steps=2, warmup_steps=1, warmdown_steps=2, late_qat_threshold=0.9, accum_total=1,
                           batch_tokens=2 * 32, val_max_tokens=32)
    mcfg = get_config("tiny", **SMALL_MODEL, num_heads=2, num_kv_heads=1, backend=backend, kernels=kernels)
    with cuda_autocast_policy(dtype):
        summary = run_training(tcfg, mcfg, corpus, tmp_path / "run", progress=False)
        final = read_model_file(tmp_path / "run" / "final_model.pt")
        model, _ = build_model(read_model_source(tmp_path / "run" / "final_model.pt"))
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(0, 1024, (1 + 2 * 64,), generator=g)
        nbytes = torch.randint(1, 4, (2 * 64,), generator=g)
        post = ttt_evaluate(model, tokens, target_bytes=nbytes, stride=16, batch=4,
                            config=TTTConfig(chunk_tokens=64, epochs=1, lr=0.05, qat=True))
    assert summary["late_qat"] and all(0 < summary[k] < 10 for k in ("train_loss", "val_loss", "ema_val_loss"))
    assert final.state["tok_emb.weight"].dtype == torch.bfloat16 and final.provenance["late_qat"] is True
    assert model.tok_emb.weight.dtype == torch.bfloat16 and 0 < post["val_bpb"] < 20
