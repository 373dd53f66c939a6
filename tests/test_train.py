"""The training job end to end on a very small model over a small embedded corpus (in-process, CPU)."""
import json
import math

import pytest
import torch

import train.__main__ as cli
from model.config import get_config
from model.gpt import GPT
from train.config import get_train_config
from train.loop import TrainingDiverged, run_training

# a model small enough for a few dozen CPU steps in a second or two
SMALL_MODEL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32)



def small_configs(**train):
    tcfg = get_train_config("tiny", **{**dict(steps=8, batch_tokens=4 * 32, warmdown_steps=4, val_every=4,
                                              val_max_tokens=8 * 32, checkpoint_every=4), **train})
    return tcfg, get_config("tiny", **SMALL_MODEL)


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_outputs(corpus, tmp_path, capsys):
    tcfg, mcfg = small_configs(steps=12, matrix_lr=0.05)
    out = tmp_path / "run"
    summary = run_training(tcfg, mcfg, corpus, out, progress=False)
    rows = read_metrics(out)
    train_rows = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 4, 8, 12]
    assert rows[0]["val_loss"] == pytest.approx(math.log(1024), abs=0.05)
    assert train_rows[-1]["train_loss"] < train_rows[0]["train_loss"] - 0.5
    assert all(r["tokens_per_s"] > 0 and 0 <= r["lr_mult"] <= 1 for r in train_rows)
    assert train_rows[-1]["lr_mult"] == pytest.approx(1 / 4)
    # final model = EMA weights, in the shared {"config", "model"} layout, loadable without pickle
    final = torch.load(out / "final_model.pt", map_location="cpu", weights_only=True)
    model = GPT(get_config("tiny", **SMALL_MODEL))
    model.load_state_dict(final["model"])
    assert final["config"] == mcfg.to_dict()
    live = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert not torch.equal(live["blocks.0.attn.q.weight"], final["model"]["blocks.0.attn.q.weight"])
    assert final["model"]["bigram.scale"].item() == pytest.approx(0.05)  # in no optimizer
    assert (out / "loss_curve.png").stat().st_size > 1000
    last_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last_line["event"] == "final" and last_line["step"] == 12
    assert last_line["val_bpb"] == pytest.approx(summary["val_bpb"]) and math.isfinite(last_line["ema_val_bpb"])


def test_cli_runs_and_reports(corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "3", "--batch-tokens", "128",
            "--val-every", "0", "--val-max-tokens", "128", "--no-progress"]
    args += [f"--model={k}={v}" for k, v in SMALL_MODEL.items()]
    assert cli.main(args) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 3 and final["params"] == GPT(get_config("tiny", **SMALL_MODEL)).num_params()
    assert (out / "final_model.pt").is_file()


def test_missing_data_fails_before_training(tmp_path, corpus):
    tcfg, mcfg = small_configs()
    with pytest.raises(FileNotFoundError, match="no train shards"):
        run_training(tcfg, mcfg, tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        run_training(tcfg, mcfg, corpus, tmp_path / "out", tokenizer_path=tmp_path / "nope.model", progress=False)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_tokenizer_vocab_mismatch_is_clear(corpus, tmp_path):
    tcfg, _ = small_configs()
    mcfg = get_config("tiny", **SMALL_MODEL, vocab_size=512)
    with pytest.raises(ValueError, match="tokenizer vocab size 1024 does not match model vocab_size 512"):
        run_training(tcfg, mcfg, corpus, tmp_path / "out", progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_forward = GPT.forward

    def forward_going_nan(self, x, y):
        loss = real_forward(self, x, y)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(GPT, "forward", forward_going_nan)
    tcfg, mcfg = small_configs(checkpoint_every=2, val_every=0)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"train loss is nan at step 6.*checkpoint.pt \(step 4\)"):
        run_training(tcfg, mcfg, corpus, out, progress=False)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (out / "final_model.pt").exists()


def test_late_qat_turns_on_below_threshold(corpus, tmp_path):
    tcfg, mcfg = small_configs(steps=6, warmdown_steps=6, late_qat_threshold=0.5, val_every=0)
    summary = run_training(tcfg, mcfg, corpus, tmp_path / "qat", progress=False)
    events = [r for r in read_metrics(tmp_path / "qat") if r.get("event") == "late_qat_enabled"]
    assert summary["late_qat"] and [e["step"] for e in events] == [4]  # multiplier 2/6 < 0.5 at step 4
