"""`python -m train.data` and the embedded corpus: tokenize (JSONL + text, trained or given tokenizer), inspect,
embedded build/cache/determinism, and the one-line errors (offline download, bad inputs)."""
import json

import numpy as np
import pytest

from train.data.__main__ import main
from train.data.embedded import ensure_embedded_corpus, module_docstring_document, stdlib_module_paths
from train.data.loader import DistributedTokenLoader
from common.shards import list_shards, load_validation_tokens, read_shard, write_shard
from train.data.tokenizer import load_tokenizer

DOCS = [f"Document number {i} talks about {'rivers' if i % 2 else 'mountains'} and the weather in May."
        for i in range(40)]


def _split_docs(tokens: np.ndarray) -> list[list[int]]:
    """Split a BOS-prefixed token stream back into documents (without their BOS)."""
    starts = np.flatnonzero(tokens == 1).tolist()
    assert starts and starts[0] == 0
    return [tokens[a + 1:b].tolist() for a, b in zip(starts, starts[1:] + [len(tokens)])]


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_tokenize_jsonl_and_text_with_given_tokenizer(tmp_path, real_tokenizer, capsys):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:30]), encoding="utf-8")
    text = tmp_path / "more.txt"
    text.write_text("\n\n".join(DOCS[30:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenize", str(jsonl), str(text), "--out", str(out), "--tokenizer", str(real_tokenizer),
                 "--val-docs", "4", "--shard-tokens", "300"]) == 0
    sp = load_tokenizer(out / "tokenizer.model")
    val = np.concatenate([read_shard(p, 1024) for p in list_shards(out, "val")])
    train_shards = list_shards(out, "train")
    assert len(train_shards) > 1  # 300-token shards
    train = np.concatenate([read_shard(p, 1024) for p in train_shards])
    assert _split_docs(val) == [sp.encode(d) for d in DOCS[:4]]  # the first N documents are val
    assert _split_docs(train) == [sp.encode(d) for d in DOCS[4:]]
    assert "36 train docs" in capsys.readouterr().out


def test_tokenize_trains_a_tokenizer(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tokenize", str(jsonl), "--out", str(out), "--train-tokenizer", "300", "--val-docs", "2"]) == 0
    sp = load_tokenizer(out / "tokenizer.model")
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256
    assert sp.encode("12") == [sp.piece_to_id("1"), sp.piece_to_id("2")]  # split_digits
    train = read_shard(list_shards(out, "train")[0], sp.vocab_size())
    assert [sp.decode(d) for d in _split_docs(train)] == DOCS[2:]


def test_tokenize_errors_are_one_line(tmp_path, capsys):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"text": "a"}) + "\n{oops\n", encoding="utf-8")
    assert main(["tokenize", str(jsonl), "--out", str(tmp_path / "o"), "--train-tokenizer", "300"]) == 1
    assert f"{jsonl}:2: not valid JSON" in _one_error_line(capsys)
    good = tmp_path / "good.txt"
    good.write_text("one\n\ntwo\n", encoding="utf-8")
    assert main(["tokenize", str(good), "--out", str(tmp_path / "o"), "--train-tokenizer", "300",
                 "--val-docs", "2"]) == 1
    assert "all 2 documents would go to val" in _one_error_line(capsys)
    assert main(["tokenize", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"),
                 "--train-tokenizer", "300"]) == 1
    assert "input not found" in _one_error_line(capsys)


def test_inspect_reads_header_and_reports_bad_shards(tmp_path, capsys):
    shard = write_shard(tmp_path / "fineweb_val_000000.bin", np.array([1, 7, 8, 1, 9]))
    assert main(["inspect", str(shard)]) == 0
    out = capsys.readouterr().out
    assert "magic 20240520, version 1, tokens 5" in out and "BOS (id 1) count 2" in out
    shard.write_bytes(shard.read_bytes()[:-1])
    assert main(["inspect", str(shard)]) == 1
    assert "odd byte count" in _one_error_line(capsys)


def test_download_offline_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert main(["download", "--out", str(tmp_path), "--train-shards", "1"]) == 1
    assert "cannot reach huggingface.co (offline?)" in _one_error_line(capsys)


def test_download_connection_error_is_one_clear_line(tmp_path, monkeypatch, capsys):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    import train.data.download as download

    def refuse(*args, **kwargs):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(download, "_check_reachable", lambda: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    assert main(["download", "--out", str(tmp_path), "--train-shards", "1"]) == 1
    line = _one_error_line(capsys)
    assert "could not download datasets/manifest.json" in line and "Connection refused" in line
    assert not any(tmp_path.iterdir())


def test_module_docstrings_are_collected_without_import(tmp_path):
    long_a, long_b = "A" * 250, "B " * 110
    source = (f'"""{long_a}"""\nraise SystemExit("never imported")\n'
              f'def f():\n    """short"""\nclass C:\n    def g(self):\n        """{long_b}"""\n')
    (tmp_path / "mod.py").write_text(source, encoding="utf-8")
    assert module_docstring_document(tmp_path / "mod.py") == long_a + "\n\n" + long_b.strip()
    (tmp_path / "broken.py").write_text("def (:\n", encoding="utf-8")
    assert module_docstring_document(tmp_path / "broken.py") is None
    argparse_py = next(p for p in stdlib_module_paths() if p.name == "argparse.py")
    assert module_docstring_document(argparse_py).startswith("Command-line parsing library")


def test_embedded_subset_builds_caches_and_is_deterministic(tmp_path, capsys):
    root = ensure_embedded_corpus(tmp_path / "a", max_bytes=40_000)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["text_bytes"] >= 40_000 and manifest["docs_val"] >= 1 and manifest["docs_train"] >= 10
    assert manifest["tokens_train"] == sum(len(read_shard(p)) for p in list_shards(root, "train"))
    sp = load_tokenizer(root / "tokenizer.model")
    assert sp.vocab_size() == 1024
    x, y = DistributedTokenLoader(root, batch_tokens=256, seq_len=64, vocab_size=1024).next_batch()
    assert x.shape == (4, 64) and int(x[0, 0]) == 1  # the stream starts with a document's BOS
    assert len(load_validation_tokens(root, seq_len=64, vocab_size=1024)) % 64 == 1
    # cached: a second call does not rebuild; a missing file triggers a rebuild
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert ensure_embedded_corpus(root, max_bytes=40_000) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    (root / "fineweb_val_000000.bin").unlink()
    ensure_embedded_corpus(root, max_bytes=40_000)
    assert (root / "fineweb_val_000000.bin").is_file()
    # deterministic: a second build gives identical files
    other = ensure_embedded_corpus(tmp_path / "b", max_bytes=40_000)
    for name in manifest["files"]:
        assert (root / name).read_bytes() == (other / name).read_bytes(), name
    # the CLI prints the directory, and inspect reads its shards back
    assert main(["embedded", "--root", str(root), "--max-bytes", "40000"]) == 0
    assert capsys.readouterr().out.strip() == str(root)
    assert main(["inspect", str(root / "fineweb_val_000000.bin"), "--sample", "20"]) == 0
    assert "version 1" in capsys.readouterr().out


def test_embedded_full_corpus_figures():
    root = ensure_embedded_corpus()  # the real cache: built once (a few seconds), then reused by every caller
    manifest = json.loads((root / "manifest.json").read_text())
    assert 1_000_000 <= manifest["text_bytes"] <= 3_000_000
    assert len(list_shards(root, "train")) >= 2 and manifest["tokens_val"] > 10_000
    assert manifest["docs_val"] == (manifest["docs"] + 19) // 20


def test_download_layout_with_a_fake_hub(tmp_path, monkeypatch, real_tokenizer):
    """No network: a stand-in hf_hub_download serves files from a local folder laid out like the dataset repo."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    import train.data.download as download

    hub = tmp_path / "hub" / "datasets"
    manifest = {"datasets": [{"name": "fineweb10B_sp1024", "stats": {"files_val": 2, "files_train": 3}}]}
    (hub / "datasets" / "fineweb10B_sp1024").mkdir(parents=True)
    (hub / "manifest.json").write_text(json.dumps(manifest))
    (hub / "tokenizers").mkdir()
    (hub / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(real_tokenizer.read_bytes())
    for name in ["val_000000", "val_000001", "train_000000", "train_000001", "train_000002"]:
        write_shard(hub / "datasets" / "fineweb10B_sp1024" / f"fineweb_{name}.bin", np.array([1, 2, 3]))
    requested = []

    def fake_download(repo_id, filename, repo_type):
        assert (repo_id, repo_type) == ("willdepueoai/parameter-golf", "dataset")
        requested.append(filename)
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(download, "_check_reachable", lambda: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert main(["download", "--out", str(tmp_path / "data"), "--train-shards", "2"]) == 0
    shard_dir = tmp_path / "data" / "datasets" / "fineweb10B_sp1024"
    assert [p.name for p in list_shards(shard_dir, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert len(list_shards(shard_dir, "train")) == 2
    assert load_tokenizer(shard_dir / "tokenizer.model").vocab_size() == 1024
    assert len(requested) == 6
    assert main(["download", "--out", str(tmp_path / "data"), "--train-shards", "2"]) == 0
    assert len(requested) == 6  # files already present are not fetched again
