"""The challenge's token shard format (seed-spec §1.1): read, validate, write, list, and the validation token stream.

A shard is a 1024-byte header of 256 little-endian int32 words (magic 20240520, version 1, token count N, zeros)
followed by N little-endian uint16 token ids, so its size is exactly 1024 + 2N bytes. Shards are memory-mapped and
checked in chunks, so reading never loads every shard into RAM at once. Writes are atomic (temp file + os.replace).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.atomic import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
SHARD_TOKENS = 10**8  # tokens per full shard at export, as in the challenge
SPLITS = ("train", "val")
_CHECK_CHUNK_TOKENS = 1 << 24  # ids are range-checked 16M tokens (32 MB) at a time


class ShardError(ValueError):
    """A token shard is malformed: truncated, wrong magic/version, odd byte count, or ids outside the vocabulary."""


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split` ('train' or 'val'): fineweb_{split}_{index:06d}.bin."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"fineweb_{split}_{index:06d}.bin"


def write_shard(path, tokens) -> Path:
    """Write `tokens` (1-D integer array, ids in [0, 65535]) as a shard at `path`, atomically. Returns the path."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{path}: tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
        raise ValueError(f"{path}: token ids must fit in uint16 [0, 65535], got range "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    if tokens.size >= 2**31:
        raise ValueError(f"{path}: {tokens.size} tokens do not fit the int32 header count")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, tokens.size
    return atomic_write(path, [header.tobytes(), tokens.astype("<u2", copy=False).tobytes()])


def read_header(path) -> dict:
    """Read and validate a shard's header against its file size; returns {'magic', 'version', 'num_tokens'}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({size} bytes, a shard header is {HEADER_BYTES} bytes)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise ShardError(f"{path}: wrong magic {magic} (expected {MAGIC}); not a token shard")
    if version != VERSION:
        raise ShardError(f"{path}: wrong version {version} (expected {VERSION})")
    body = size - HEADER_BYTES
    if body % 2:
        raise ShardError(f"{path}: odd byte count {body} after the header (tokens are 2-byte uint16)")
    if num_tokens < 0 or body != 2 * num_tokens:
        state = "truncated" if 0 <= num_tokens and body < 2 * num_tokens else "size mismatch"
        raise ShardError(f"{path}: {state}: header declares {num_tokens} tokens "
                         f"({HEADER_BYTES + 2 * num_tokens} bytes) but the file has {size} bytes")
    return {"magic": magic, "version": version, "num_tokens": num_tokens}


def read_shard(path, vocab_size: int | None = None) -> np.ndarray:
    """Memory-map a validated shard as a read-only uint16 array. With `vocab_size`, every id must be < vocab_size."""
    path = Path(path)
    num_tokens = read_header(path)["num_tokens"]
    if num_tokens == 0:
        return np.zeros(0, dtype=np.uint16)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
    if vocab_size is not None:
        for start in range(0, num_tokens, _CHECK_CHUNK_TOKENS):
            chunk = tokens[start:start + _CHECK_CHUNK_TOKENS]
            biggest = int(chunk.max())
            if biggest >= vocab_size:
                where = start + int(np.argmax(chunk >= vocab_size))
                raise ShardError(f"{path}: token id {int(tokens[where])} at position {where} is out of range "
                                 f"for vocab_size {vocab_size}")
    return tokens


def list_shards(data_dir, split: str) -> list[Path]:
    """The sorted `fineweb_{split}_*.bin` files in `data_dir`; FileNotFoundError when there are none."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_dir}")
    shards = sorted(data_dir.glob(f"fineweb_{split}_*.bin"))
    if not shards:
        raise FileNotFoundError(f"no {split} shards (fineweb_{split}_*.bin) in {data_dir}")
    return shards


def load_validation_tokens(data_dir, seq_len: int, vocab_size: int | None = None):
    """All val shards concatenated, truncated to 1 + floor((N-1)/seq_len)*seq_len tokens, as a torch.LongTensor."""
    import torch

    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    parts = [read_shard(p, vocab_size) for p in list_shards(data_dir, "val")]
    total = sum(len(p) for p in parts)
    usable = ((total - 1) // seq_len) * seq_len if total > 0 else 0
    if usable <= 0:
        raise ValueError(f"val shards in {data_dir} hold {total} tokens, fewer than one sequence of "
                         f"{seq_len} + 1 tokens")
    tokens = np.concatenate(parts)[: usable + 1]
    return torch.from_numpy(tokens.astype(np.int64))


class ShardWriter:
    """Streams documents' tokens into consecutive shards of one split: fineweb_{split}_000000.bin, ...

    add() appends tokens, flushing a full shard every `shard_tokens`; close() writes the remainder and returns
    the paths written.
    """

    def __init__(self, out_dir, split: str, shard_tokens: int = SHARD_TOKENS):
        if shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        shard_name(split, 0)  # validates split
        self.out_dir, self.split, self.shard_tokens = Path(out_dir), split, shard_tokens
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.paths: list[Path] = []
        self.num_tokens = 0

    def add(self, tokens) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and tokens.dtype != np.uint16 and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
            raise ValueError(f"{self.split} shard in {self.out_dir}: token ids must fit in uint16 [0, 65535]")
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self.fill)
            self.buffer[self.fill:self.fill + take] = tokens[:take]
            self.fill += take
            self.num_tokens += take
            tokens = tokens[take:]
            if self.fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if self.fill:
            path = self.out_dir / shard_name(self.split, len(self.paths))
            self.paths.append(write_shard(path, self.buffer[:self.fill]))
            self.fill = 0

    def close(self) -> list[Path]:
        self._flush()
        return self.paths
