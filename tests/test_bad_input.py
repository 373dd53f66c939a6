"""Bad input gets one clear line and loses nothing (issue 12), case by case, through each CLI's main(argv):
the exit code, the one-line message, and the files that must stay unchanged."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval.__main__ as eval_cli
import train.__main__ as train_cli
from model.config import get_config
from model.gpt import GPT
from quant.__main__ import main as quant_main
from common.checkpoint import load_checkpoint, save_model_file
from train.data.__main__ import main as data_main
from common.provenance import run_provenance

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32,
             num_layers=2, ve_layers=(1,), xsa_last_n=1, num_heads=2, num_kv_heads=1, bigram_buckets=64)
RUN_ARGS = ["--steps", "4", "--batch-tokens", "128", "--val-every", "0", "--val-max-tokens", "64",
            "--checkpoint-every", "2", "--no-progress", *[f"--model={k}={json.dumps(v).replace(' ', '')}"
                                                          for k, v in SMALL.items()]]


def one_error_line(capsys) -> str:
    """The one `error:` line a failed command printed last on stderr (after any progress or warning lines),
    checked to be traceback-free and never to advise unsafe loading."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    assert "Traceback" not in err and "weights_only" not in err
    return lines[-1]


def exit_code(fn, argv) -> int:
    """A CLI's exit status whether it returns it or raises SystemExit."""
    try:
        result = fn(argv)
    except SystemExit as e:
        return e.code
    return result if isinstance(result, int) else 0


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def small_model() -> GPT:
    torch.manual_seed(0)
    model = GPT(get_config("tiny", **SMALL))
    with torch.no_grad():
        for _, linear in model.block_linears():
            linear.weight.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    """A stopped two-step training run on the small corpus: checkpoint.pt (step 2) + metrics.jsonl."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert train_cli.main(["--data", str(corpus), "--out", str(out), "--stop-at-step", "2", *RUN_ARGS]) == 0
    return out


@pytest.fixture
def model_file(tmp_path, corpus):
    """A final model file (vocab 1024, like the corpus tokenizer) recording the corpus's provenance."""
    model = small_model()
    return save_model_file(tmp_path / "final_model.pt", model.cfg.to_dict(), model.state_dict(),
                           run_provenance(corpus, corpus / "tokenizer.model"))


# ---- 1. one error line, no traceback, non-zero exit, in every CLI ----

def test_every_cli_fails_in_one_line_as_a_process(tmp_path):
    """The process-level contract: stderr is one `error:` line, no traceback, exit status non-zero."""
    commands = {
        "train": ["train", "--model", "nope=1", "--data", str(tmp_path)],
        "train.data": ["train.data", "inspect", str(tmp_path)],
        "quant": ["quant", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.tgz")],
        "eval": ["eval", str(tmp_path / "missing.pt"), "--data", str(tmp_path)],
        "bench": ["bench", "--quick", "--json", str(tmp_path)],
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, argv in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode != 0, name
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, err)


def test_quant_checks_its_output_before_the_work(tmp_path, model_file, capsys, monkeypatch):
    import quant.__main__ as quant_cli

    def no_work(*args, **kwargs):
        raise AssertionError("quantized before checking --out")

    monkeypatch.setattr(quant_cli, "quantize_state_dict", no_work)
    assert quant_main([str(model_file), "--out", str(tmp_path)]) == 1
    assert "is a directory" in one_error_line(capsys)
    assert quant_main([str(model_file), "--out", str(model_file / "sub" / "m.tgz")]) == 1
    assert "is not a directory" in one_error_line(capsys)
    assert quant_main([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.tgz")]) == 1
    assert "model file not found" in one_error_line(capsys)


def test_train_errors_are_one_line(tmp_path, corpus, capsys):
    assert train_cli.main(["--data", str(corpus), "--out", str(tmp_path / "o"), "--model", "nope=1"]) == 1
    assert "unknown ModelConfig fields ['nope']" in one_error_line(capsys)
    assert train_cli.main(["--data", str(corpus), "--out", str(tmp_path / "o"), "--model", "num_layers=100000"]) == 1
    assert "num_layers 100000 is outside" in one_error_line(capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert train_cli.main(["--resume", str(junk), "--data", str(corpus)]) == 1
    assert "not a training checkpoint" in one_error_line(capsys)
    (tmp_path / "file").write_text("x")
    assert train_cli.main(["--data", str(corpus), "--out", str(tmp_path / "file")]) == 1
    assert "is not a directory" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CUDA device torch lacks")
def test_eval_refuses_a_cuda_device_it_does_not_have(model_file, corpus, capsys):
    assert exit_code(eval_cli.main, [str(model_file), "--data", str(corpus), "--device", "cuda"]) == 1
    assert "no CUDA device" in one_error_line(capsys)


def test_ctrl_c_names_the_checkpoint_to_resume(corpus, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_forward = GPT.forward

    def forward_then_ctrl_c(self, x, y):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_forward(self, x, y)

    monkeypatch.setattr(GPT, "forward", forward_then_ctrl_c)
    out = tmp_path / "run"
    assert train_cli.main(["--data", str(corpus), "--out", str(out), *RUN_ARGS]) == 130
    line = one_error_line(capsys)
    assert f"the last checkpoint is {out / 'checkpoint.pt'} (step 2)" in line and "--resume" in line
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2


# ---- 2. the loader builds nothing it has not checked (more in test_damaged_artifacts.py) ----

@pytest.mark.parametrize("field,value,message", [("vocab_size", 50_000_000, "vocab_size 50000000 is outside"),
                                                  ("num_layers", 100_000, "num_layers 100000 is outside")])
def test_huge_config_is_refused_before_the_model_is_built(tmp_path, corpus, capsys, monkeypatch, field, value,
                                                           message):
    from quant.artifact import save_artifact
    model = small_model()

    def no_model(self, cfg):
        raise AssertionError(f"GPT built for an unchecked config ({field}={getattr(cfg, field)})")

    monkeypatch.setattr(GPT, "__init__", no_model)
    config = dict(model.cfg.to_dict(), **{field: value})
    artifact = tmp_path / "model.tgz"
    save_artifact(model.state_dict(), config, artifact, level=1)
    model_path = tmp_path / "model.pt"
    torch.save({"config": config, "model": model.state_dict()}, model_path)
    for path in (artifact, model_path):
        assert exit_code(eval_cli.main, [str(path), "--data", str(corpus)]) == 1
        assert message in one_error_line(capsys)


# ---- 3. a corrupt file is named as such ----

def test_damaged_first_bytes_and_pickles_are_named_without_unsafe_advice(tmp_path, model_file, corpus, capsys):
    damaged = tmp_path / "damaged.tgz"
    damaged.write_bytes(b"\x00" * 8 + model_file.read_bytes()[8:])
    assert exit_code(eval_cli.main, [str(damaged), "--data", str(corpus)]) == 1
    assert "not a triton-golf artifact, model file or training checkpoint" in one_error_line(capsys)

    pickled = tmp_path / "pickled.pt"
    torch.save({"config": Path("any/class/a/weights-only/load/refuses"), "model": {}}, pickled)
    assert quant_main([str(pickled), "--out", str(tmp_path / "m.tgz")]) == 1
    assert "holds Python objects beyond tensors" in one_error_line(capsys)  # (and no weights_only advice)


def flip_first_value(path: Path, tensor: torch.Tensor) -> None:
    """Flip the top exponent bit of `tensor`'s first float where torch.save stored it (uncompressed) in `path`."""
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()[:16])
    assert at > 0
    raw[at + 3] ^= 0x40
    path.write_bytes(bytes(raw))


def test_flipped_bit_in_a_checkpoint_or_model_file_is_reported(run_dir, tmp_path, corpus, model_file, capsys):
    ckpt = tmp_path / "checkpoint.pt"
    shutil.copy(run_dir / "checkpoint.pt", ckpt)
    flip_first_value(ckpt, torch.load(ckpt, weights_only=True)["model"]["tok_emb.weight"])
    assert train_cli.main(["--resume", str(ckpt), "--data", str(corpus), "--out", str(tmp_path / "o")]) == 1
    assert "checksum mismatch" in one_error_line(capsys)
    flip_first_value(model_file, torch.load(model_file, weights_only=True)["model"]["tok_emb.weight"])
    assert exit_code(eval_cli.main, [str(model_file), "--data", str(corpus)]) == 1
    assert "checksum mismatch" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


# ---- 4. provenance: tokenizer fingerprint and data identity ----

def test_eval_refuses_another_tokenizer_of_the_same_size(tmp_path, model_file, corpus, real_tokenizer, capsys):
    artifact = tmp_path / "model.tgz"
    assert quant_main([str(model_file), "--out", str(artifact), "--level", "1"]) == 0
    capsys.readouterr()
    for path in (model_file, artifact):
        assert exit_code(eval_cli.main, [str(path), "--data", str(corpus), "--tokenizer", str(real_tokenizer)]) == 1
        assert "is not the tokenizer" in one_error_line(capsys)


def test_resume_needs_the_same_data(run_dir, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DATA_DIR", raising=False)
    before = digests(run_dir)
    ckpt = str(run_dir / "checkpoint.pt")
    assert train_cli.main(["--resume", ckpt]) == 1
    assert f"--resume needs --data DIR, the data the checkpoint was trained on ({corpus.resolve()})" in \
        one_error_line(capsys)
    other = tmp_path / "other"
    shutil.copytree(corpus, other)
    from common.shards import write_shard
    write_shard(other / "fineweb_train_000099.bin", [1, 5, 6, 7])
    assert train_cli.main(["--resume", ckpt, "--data", str(other)]) == 1
    line = one_error_line(capsys)
    assert "is not the data" in line and "train shards differ" in line and "fineweb_train_000099.bin" in line
    assert digests(run_dir) == before


# ---- 5. nothing overwritten without asking ----

def test_train_refuses_an_out_folder_holding_a_run(run_dir, corpus, capsys):
    before = digests(run_dir)
    assert train_cli.main(["--data", str(corpus), "--out", str(run_dir), *RUN_ARGS]) == 1
    line = one_error_line(capsys)
    assert "already holds a run (checkpoint.pt, metrics.jsonl)" in line and "--overwrite" in line
    assert digests(run_dir) == before


def test_quant_refuses_to_replace_a_file_without_overwrite(tmp_path, model_file, capsys):
    before = model_file.read_bytes()
    assert quant_main([str(model_file), "--out", str(model_file)]) == 1
    assert "is the file this command reads" in one_error_line(capsys)
    assert model_file.read_bytes() == before
    artifact = tmp_path / "model.tgz"
    artifact.write_bytes(b"keep me")
    assert quant_main([str(model_file), "--out", str(artifact)]) == 1
    assert "exists; pass --overwrite" in one_error_line(capsys)
    assert artifact.read_bytes() == b"keep me"
    assert quant_main([str(model_file), "--out", str(artifact), "--overwrite", "--level", "1"]) == 0
    assert artifact.read_bytes() != b"keep me"


# ---- 6. arguments checked before work; a NaN figure fails the command ----

@pytest.mark.parametrize("flags", [["--ttt-chunk", "0"], ["--ttt-lr", "nan"], ["--ttt-epochs", "-1"],
                                   ["--window", "0"], ["--max-tokens", "-5"], ["--batch", "0"],
                                   ["--cpu-threads", "0"], ["--ttt-momentum", "2"]])
def test_eval_refuses_bad_arguments_while_parsing(model_file, corpus, capsys, flags):
    assert exit_code(eval_cli.main, [str(model_file), "--data", str(corpus), "--ttt", *flags]) == 2
    assert f"argument {flags[0]}" in one_error_line(capsys)


@pytest.mark.parametrize("flags,message", [(["--ttt-freeze", "99", "--stride", "32"], "the model has only 2 blocks"),
                                           (["--ttt-chunk", "100", "--stride", "32"], "must be a multiple of the window 32"),
                                           (["--stride", "64"], "larger than the window 32")])
def test_eval_refuses_settings_the_model_cannot_take_before_scoring(model_file, corpus, capsys, monkeypatch,
                                                                     flags, message):
    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the settings were checked")

    monkeypatch.setattr(eval_cli, "evaluate", no_scoring)
    assert exit_code(eval_cli.main, [str(model_file), "--data", str(corpus), "--ttt", *flags]) == 1
    assert message in one_error_line(capsys)


@pytest.mark.parametrize("argv,flag", [(["--steps", "0"], "--steps"), (["--cpu-threads", "0"], "--cpu-threads"),
                                       (["--ema-decay", "nan"], "--ema-decay"),
                                       (["--stop-at-step", "-1"], "--stop-at-step")])
def test_train_refuses_bad_arguments_while_parsing(argv, flag, capsys):
    assert exit_code(train_cli.main, argv) == 2
    assert f"argument {flag}" in one_error_line(capsys)


def test_data_cli_refuses_bad_sizes(tmp_path, capsys):
    assert exit_code(data_main, ["inspect", str(tmp_path / "x.bin"), "--sample", "-5"]) == 2
    assert "argument --sample" in one_error_line(capsys)
    assert exit_code(data_main, ["tokenize", "x.txt", "--out", str(tmp_path), "--train-tokenizer", "100000"]) == 2
    assert "argument --train-tokenizer: must be in [260, 65536]" in one_error_line(capsys)
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(f"document {i} about rivers" for i in range(20)))
    out = tmp_path / "out"
    assert data_main(["tokenize", str(text), "--out", str(out), "--train-tokenizer", "5000", "--val-docs", "2"]) == 1
    assert "support only" in one_error_line(capsys)  # trained, but not silently shrunk
    assert not (out / "tokenizer.model").exists()


def test_a_nan_figure_makes_the_command_fail(model_file, corpus, capsys, monkeypatch):
    nan = float("nan")
    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, **k: {"val_loss": nan, "val_bpb": nan, "windows": 1,
                                                                "tokens_per_s": 1.0, "seconds": 0.1})
    assert exit_code(eval_cli.main, [str(model_file), "--data", str(corpus), "--stride", "32"]) == 1
    assert "non-finite figures in the result: val_loss, val_bpb, pre_ttt_val_bpb" in one_error_line(capsys)
    import train.loop
    monkeypatch.setattr(train.loop, "run_training", lambda *a, **k: {"step": 1, "train_loss": 1.0, "val_bpb": nan})
    assert train_cli.main(["--data", str(corpus), "--out", str(Path(model_file).parent / "r"), "--steps", "1"]) == 1
    assert "non-finite figures in the result: val_bpb" in one_error_line(capsys)


# ---- 7. small things a new user hit ----

def test_report_files_are_world_readable(tmp_path):
    from eval.report import plot_chunks, write_json
    pytest.importorskip("matplotlib")
    records = [{"chunk": i, "chunk_bpb": 2.0, "running_bpb": 2.0} for i in range(3)]
    assert plot_chunks(records, tmp_path / "ttt.png")
    write_json({"val_bpb": 2.0}, tmp_path / "summary.json")
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"ttt.png": 0o644,
                                                                               "summary.json": 0o644}


def test_demo_prints_the_readme_stage_table():
    from pipelines.demo import stage_table
    table = stage_table({"unigram_val_bpb": 3.3424, "train_steps": 300, "trained_val_bpb": 2.2691,
                         "ema_val_bpb": 2.2449, "artifact_bytes": 722984, "quantized_val_bpb": 2.2471,
                         "pre_ttt_val_bpb": 2.2403, "post_ttt_val_bpb": float("nan")})
    assert table.splitlines()[:2] == ["| stage | val_bpb |", "|---|---|"]
    assert "| trained, live weights at step 300 | 2.269 |" in table
    assert "| int6/int8 artifact, dequantized (722,984 bytes) | 2.247 |" in table
    assert table.splitlines()[-1] == "| artifact, sliding window + legal score-first TTT | n/a |"


def test_cached_corpus_is_not_reported_as_built(corpus, capsys):
    assert data_main(["embedded", "--root", str(corpus), "--max-bytes", "150000"]) == 0
    assert "cached (built once in" in capsys.readouterr().err


def test_train_flags_have_help_and_progress_bars_need_a_terminal(corpus, tmp_path, monkeypatch):
    parser = train_cli.build_parser()
    assert [a.dest for a in parser._actions if not a.help] == []
    seen = {}
    import train.loop
    monkeypatch.setattr(train.loop, "run_training", lambda *a, **k: seen.update(k) or {"step": 1})
    assert train_cli.main(["--data", str(corpus), "--out", str(tmp_path / "r")]) == 0
    assert seen["progress"] is False  # stderr is captured here, not a terminal
