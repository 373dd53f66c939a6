"""Shard format (seed-spec §1.1): round trip, header layout, every malformed-file error, listing, val tokens."""
import numpy as np
import pytest
import torch

from common.shards import (HEADER_BYTES, MAGIC, VERSION, ShardError, ShardWriter, list_shards,
                               load_validation_tokens, read_header, read_shard, shard_name, write_shard)


def _raw_shard(path, header_words, body: bytes = b""):
    header = np.zeros(256, dtype="<i4")
    header[:len(header_words)] = header_words
    path.write_bytes(header.tobytes() + body)
    return path


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([1, 5, 65535, 0, 1023, 7], dtype=np.int64)
    path = write_shard(tmp_path / shard_name("train", 3), tokens)
    assert path.name == "fineweb_train_000003.bin"
    raw = path.read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * len(tokens)
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert (header[0], header[1], header[2]) == (MAGIC, VERSION, len(tokens))
    assert not header[3:].any()
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u2").tolist() == tokens.tolist()
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()
    assert read_header(path) == {"magic": MAGIC, "version": VERSION, "num_tokens": 6}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_empty_shard_round_trips(tmp_path):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", np.zeros(0, dtype=np.uint16))
    assert read_shard(path, vocab_size=10).size == 0


@pytest.mark.parametrize("case, make, message", [
    ("truncated header", lambda p: p.write_bytes(b"\0" * 100), "truncated header"),
    ("wrong magic", lambda p: _raw_shard(p, [1234, 1, 0]), "wrong magic 1234"),
    ("wrong version", lambda p: _raw_shard(p, [MAGIC, 2, 0]), "wrong version 2"),
    ("odd byte count", lambda p: _raw_shard(p, [MAGIC, 1, 1], b"\1\0\2"), "odd byte count"),
    ("truncated body", lambda p: _raw_shard(p, [MAGIC, 1, 4], b"\1\0\2\0"), "truncated"),
    ("extra bytes", lambda p: _raw_shard(p, [MAGIC, 1, 1], b"\1\0\2\0"), "size mismatch"),
])
def test_malformed_shards_raise_naming_file_and_problem(tmp_path, case, make, message):
    path = tmp_path / "fineweb_train_000000.bin"
    make(path)
    with pytest.raises(ShardError, match=message) as info:
        read_shard(path)
    assert str(path) in str(info.value)


def test_id_out_of_range_names_id_and_position(tmp_path):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", np.array([1, 2, 1024, 3]))
    assert read_shard(path, vocab_size=1025).tolist() == [1, 2, 1024, 3]
    with pytest.raises(ShardError, match=r"token id 1024 at position 2 is out of range for vocab_size 1024"):
        read_shard(path, vocab_size=1024)


def test_writer_rejects_bad_tokens(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "a.bin", np.array([1, 70000]))
    with pytest.raises(ValueError, match="uint16"):
        write_shard(tmp_path / "a.bin", np.array([-1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        write_shard(tmp_path / "a.bin", np.zeros((2, 2), dtype=np.int64))
    assert not (tmp_path / "a.bin").exists()


def test_missing_shard_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="shard not found"):
        read_shard(tmp_path / "nope.bin")


def test_list_shards_sorted_and_errors(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / shard_name("train", i), np.arange(4))
    write_shard(tmp_path / shard_name("val", 0), np.arange(4))
    assert [p.name for p in list_shards(tmp_path, "train")] == [shard_name("train", i) for i in range(3)]
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no val shards \(fineweb_val_\*\.bin\) in .*empty"):
        list_shards(tmp_path / "empty", "val")
    with pytest.raises(FileNotFoundError, match="data directory not found"):
        list_shards(tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="split"):
        list_shards(tmp_path, "test")


def test_load_validation_tokens_concatenates_and_truncates(tmp_path):
    write_shard(tmp_path / shard_name("val", 0), np.arange(0, 10))
    write_shard(tmp_path / shard_name("val", 1), np.arange(10, 23))
    val = load_validation_tokens(tmp_path, seq_len=4)
    assert val.dtype == torch.int64
    assert val.tolist() == list(range(21))  # 23 tokens -> 1 + floor(22/4)*4 = 21
    with pytest.raises(ValueError, match="fewer than one sequence"):
        load_validation_tokens(tmp_path, seq_len=23)
    with pytest.raises(ShardError, match="out of range"):
        load_validation_tokens(tmp_path, seq_len=4, vocab_size=20)


def test_shard_writer_splits_into_full_shards(tmp_path):
    writer = ShardWriter(tmp_path, "train", shard_tokens=5)
    writer.add(np.arange(3))
    writer.add(np.arange(3, 12))
    paths = writer.close()
    assert [p.name for p in paths] == [shard_name("train", i) for i in range(3)]
    assert [read_shard(p).tolist() for p in paths] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert writer.num_tokens == 12
