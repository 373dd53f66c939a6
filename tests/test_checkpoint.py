"""Checkpoints: atomic, pickle-free, and a resumed CPU run continues bit-identically."""
import json

import pytest
import torch

from model.config import get_config
from common.checkpoint import atomic_torch_save, load_checkpoint
from train.config import get_train_config
from train.loop import run_training

SMALL_MODEL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32)




def configs(preset: str = "tiny"):
    # warmdown and momentum warmup both straddle the resume point, and grad_accum 2 exercises the loader state;
    # the seed preset adds its warm-up, the bigram.scale gradient the checkpoint must carry and a bf16 tok_emb
    tcfg = get_train_config(preset, steps=8, batch_tokens=4 * 32, grad_accum=2, warmdown_steps=5,
                            muon_momentum_warmup_steps=6, val_every=4, val_max_tokens=4 * 32, checkpoint_every=0,
                            late_qat_threshold=0.5, compile=False, **({"warmup_steps": 2} if preset == "seed" else {}))
    model = {**SMALL_MODEL, "bigram_dim": 64} if preset == "seed" else SMALL_MODEL  # 64: a live bigram path
    return tcfg, get_config("tiny", **model)


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r.get("train_loss"), r.get("val_loss")) for r in rows if "train_loss" in r}


@pytest.mark.parametrize("preset", ["tiny", "seed"])
def test_resume_is_bit_identical(corpus, tmp_path, preset):
    tcfg, mcfg = configs(preset)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(tcfg, mcfg, corpus, straight, progress=False)
    half = run_training(tcfg, mcfg, corpus, split, stop_at_step=4, progress=False)
    assert half["event"] == "stopped" and not (split / "final_model.pt").exists()
    ckpt = load_checkpoint(split / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["loader"]["offset"] > 0 and set(ckpt["optimizers"]) == {"muon", "adamw"}
    run_training(tcfg, mcfg, corpus, split, resume=split / "checkpoint.pt", progress=False)

    assert losses(split) == losses(straight) and len(losses(straight)) == 8
    a = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=True)
    b = torch.load(split / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 8 and a["late_qat"] and b["late_qat"]
    assert set(a["orphan_grads"]) == ({"bigram.scale"} if preset == "seed" else set())
    for key in ("model", "ema", "orphan_grads"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    fa = torch.load(straight / "final_model.pt", map_location="cpu", weights_only=True)["model"]
    fb = torch.load(split / "final_model.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_resume_refuses_a_different_model(corpus, tmp_path):
    tcfg, mcfg = configs()
    run_training(tcfg, mcfg, corpus, tmp_path / "a", stop_at_step=1, progress=False)
    other = get_config("tiny", **{**SMALL_MODEL, "mlp_hidden": 192})
    with pytest.raises(ValueError, match="model config differs"):
        run_training(tcfg, other, corpus, tmp_path / "a", resume=tmp_path / "a" / "checkpoint.pt", progress=False)


def test_atomic_save_and_clear_load_errors(tmp_path):
    path = atomic_torch_save({"x": torch.arange(3)}, tmp_path / "sub" / "f.pt")
    assert [p.name for p in path.parent.iterdir()] == ["f.pt"]  # no temp file left behind
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    with pytest.raises(ValueError, match="not a training checkpoint"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a training checkpoint .not a torch-saved file"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")

    class Unpicklable:
        pass

    with pytest.raises(Exception):
        atomic_torch_save({"x": Unpicklable()}, tmp_path / "bad.pt")  # local class: pickling fails
    assert not any(p.name.startswith(".bad.pt") for p in tmp_path.iterdir())
