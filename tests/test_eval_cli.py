"""`python -m eval`: model files and artifacts, sliding + TTT reports, int6 kernel path, clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_fineweb_val
from eval.__main__ import main
from eval.loading import is_artifact, load_model
from model.config import get_config
from model.gpt import GPT

REPO = Path(__file__).resolve().parents[1]


def make_model(vocab_size: int = 1024) -> GPT:
    """A tiny GPT whose block matrices are non-zero (the seed init zeroes the out-projections)."""
    torch.manual_seed(0)
    cfg = get_config("tiny", vocab_size=vocab_size, num_layers=2, ve_layers=(1,), xsa_last_n=1, model_dim=64,
                     num_heads=2, num_kv_heads=1, mlp_hidden=128, seq_len=32, rope_train_seq_len=32,
                     bigram_buckets=64, bigram_dim=32, ve_dim=32)
    model = GPT(cfg)
    with torch.no_grad():
        for _, linear in model.block_linears():
            linear.weight.normal_(0, 0.05)
    return model


def save_model_file(model: GPT, path: Path) -> Path:
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict()}, path)
    return path


@pytest.fixture
def data_dir(tmp_path, real_tokenizer, fineweb_sample):
    """A val shard of BOS-prefixed FineWeb documents (about 1.3k tokens) and the challenge tokenizer."""
    return write_fineweb_val(tmp_path, real_tokenizer, fineweb_sample, 32 * 40)


def last_json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_model_file_sliding_and_ttt_reports(tmp_path, data_dir, capsys):
    model_path = save_model_file(make_model(), tmp_path / "final_model.pt")
    log = tmp_path / "out" / "ttt.jsonl"
    main([str(model_path), "--data", str(data_dir), "--stride", "32", "--batch", "8", "--max-tokens", "512",
          "--ttt", "--ttt-chunk", "128", "--ttt-epochs", "1", "--ttt-lr", "0.01", "--log", str(log),
          "--json", str(tmp_path / "summary.json"), "--no-progress"])
    summary = last_json_line(capsys)
    assert summary["kind"] == "model_file" and summary["targets"] == 512
    assert summary["post_ttt_val_bpb"] == summary["val_bpb"] and summary["pre_ttt_val_bpb"] > 0
    assert 0 < summary["val_bpb"] < 20
    assert summary["ttt"]["chunks"] == 4 and summary["ttt"]["tokens"] == 512
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["chunk"] for r in records] == [0, 1, 2, 3]
    assert {"tokens", "bytes", "chunk_bpb", "running_bpb", "lr"} <= set(records[0])
    assert records[-1]["running_bpb"] == pytest.approx(summary["val_bpb"])
    assert Path(summary["plot"]).stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["val_bpb"] == summary["val_bpb"]


def test_artifact_and_int6_kernel_agree(tmp_path, data_dir, capsys):
    from quant.artifact import save_artifact
    model = make_model()
    artifact = tmp_path / "model.tgz"
    save_artifact(model.state_dict(), model.cfg.to_dict(), artifact)
    assert is_artifact(artifact) and not is_artifact(save_model_file(model, tmp_path / "m.pt"))
    args = ["--data", str(data_dir), "--stride", "32", "--max-tokens", "256", "--no-progress"]
    main([str(tmp_path / "m.pt"), *args])
    float_bpb = last_json_line(capsys)["val_bpb"]
    main([str(artifact), *args])
    dequant = last_json_line(capsys)
    main([str(artifact), *args, "--int6-kernel"])
    int6 = last_json_line(capsys)
    assert dequant["kind"] == "artifact" and "pre_ttt_val_bpb" in dequant
    assert int6["val_bpb"] == pytest.approx(dequant["val_bpb"], rel=1e-4)
    assert dequant["val_bpb"] == pytest.approx(float_bpb, rel=0.05)
    loaded, _, _ = load_model(artifact, int6_kernel=True)
    assert all(linear.has_int6 for _, linear in loaded.block_linears())


def test_tokenizer_vocab_mismatch_is_a_clear_error(tmp_path, data_dir, capsys):
    model_path = save_model_file(make_model(vocab_size=512), tmp_path / "small_vocab.pt")
    with pytest.raises(SystemExit) as exit_info:
        main([str(model_path), "--data", str(data_dir), "--no-progress"])
    assert exit_info.value.code == 1
    assert "vocab size 1024 does not match model vocab_size 512" in capsys.readouterr().err


def test_int6_kernel_needs_an_artifact(tmp_path, data_dir, capsys):
    model_path = save_model_file(make_model(), tmp_path / "final_model.pt")
    with pytest.raises(SystemExit) as exit_info:
        main([str(model_path), "--data", str(data_dir), "--int6-kernel", "--no-progress"])
    assert exit_info.value.code == 1 and "needs a quantized artifact" in capsys.readouterr().err


def test_int6_kernel_with_ttt_runs_the_frozen_blocks_on_int6(tmp_path, data_dir, capsys):
    from quant.artifact import save_artifact
    model = make_model()
    artifact = tmp_path / "model.tgz"
    save_artifact(model.state_dict(), model.cfg.to_dict(), artifact)
    args = [str(artifact), "--data", str(data_dir), "--stride", "32", "--max-tokens", "256", "--ttt",
            "--ttt-chunk", "64", "--ttt-epochs", "2", "--ttt-lr", "0.01", "--ttt-freeze", "1", "--no-progress"]
    main(args)
    plain = last_json_line(capsys)
    main(args + ["--int6-kernel"])
    with_kernel = last_json_line(capsys)
    assert with_kernel["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-4)
    assert with_kernel["val_bpb"] != with_kernel["pre_ttt_val_bpb"]  # TTT trained the unfrozen blocks
    loaded, _, _ = load_model(artifact, int6_kernel=True, int6_prefixes=("blocks.0.",))
    assert {name.split(".")[1]: linear.has_int6 for name, linear in loaded.block_linears()} == {"0": True, "1": False}


def test_cli_rejects_a_file_that_is_neither_artifact_nor_model(tmp_path, data_dir):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all")
    proc = subprocess.run([sys.executable, "-m", "eval", str(junk), "--data", str(data_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "junk.bin" in proc.stderr and "error" in proc.stderr and "Traceback" not in proc.stderr
