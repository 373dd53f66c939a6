"""The training token loader (seed-spec §1.3): one deterministic sequential stream over the sorted train shards.

The stream reads memory-mapped shards in order and wraps from the last back to the first; there is no shuffling
and no alignment to document boundaries. Each micro-step every rank draws the same contiguous chunk of
world*(local+1) tokens and keeps its own span [r*(local+1), (r+1)*(local+1)), so x = span[:-1], y = span[1:]
(the extra token is the last target). Hence one process with grad_accum=k sees over its k micro-steps exactly the
tokens that ranks 0..k-1 of a k-process run see in one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.shards import list_shards, read_shard


class TokenStream:
    """Endless sequential token stream over `shard_paths` (memory-mapped, validated when opened)."""

    def __init__(self, shard_paths, vocab_size: int | None = None):
        self.shard_paths = [Path(p) for p in shard_paths]
        if not self.shard_paths:
            raise FileNotFoundError("TokenStream needs at least one shard")
        self.vocab_size = vocab_size
        self.shard_index = 0
        self.offset = 0
        self._tokens = None

    def _current(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = read_shard(self.shard_paths[self.shard_index], self.vocab_size)
        return self._tokens

    def _advance_shard(self) -> None:
        self.shard_index = (self.shard_index + 1) % len(self.shard_paths)
        self.offset = 0
        self._tokens = None

    def seek(self, shard_index: int, offset: int) -> None:
        """Move to token `offset` of shard `shard_index`."""
        if not 0 <= shard_index < len(self.shard_paths):
            raise ValueError(f"shard_index {shard_index} out of range for {len(self.shard_paths)} shards")
        self.shard_index, self._tokens = shard_index, None
        if not 0 <= offset <= len(self._current()):
            raise ValueError(f"offset {offset} out of range for {self.shard_paths[shard_index]} "
                             f"({len(self._current())} tokens)")
        self.offset = offset

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens as a uint16 array, crossing (and wrapping over) shard boundaries as needed."""
        out = np.empty(n, dtype=np.uint16)
        filled, empty_run = 0, 0
        while filled < n:
            tokens = self._current()
            available = len(tokens) - self.offset
            if available <= 0:
                empty_run += 1
                if empty_run > len(self.shard_paths):
                    raise ValueError(f"all {len(self.shard_paths)} shards are empty; nothing to stream")
                self._advance_shard()
                continue
            empty_run = 0
            k = min(available, n - filled)
            out[filled:filled + k] = tokens[self.offset:self.offset + k]
            filled += k
            self.offset += k
        return out


class DistributedTokenLoader:
    """Yields (x, y) int64 micro-batches of shape (local // seq_len, seq_len) for this rank, local =
    batch_tokens // (world_size * grad_accum). `state_dict()` / `load_state_dict()` save and restore the position."""

    def __init__(self, data_dir, batch_tokens: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 grad_accum: int = 1, device="cpu", vocab_size: int | None = None):
        if seq_len <= 0 or batch_tokens <= 0 or world_size <= 0 or grad_accum <= 0:
            raise ValueError(f"batch_tokens ({batch_tokens}), seq_len ({seq_len}), world_size ({world_size}) and "
                             f"grad_accum ({grad_accum}) must all be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if batch_tokens % (world_size * grad_accum * seq_len):
            raise ValueError(f"batch_tokens {batch_tokens} is not divisible by world_size*grad_accum*seq_len = "
                             f"{world_size}*{grad_accum}*{seq_len} = {world_size * grad_accum * seq_len}")
        self.rank, self.world_size, self.seq_len = rank, world_size, seq_len
        self.local_tokens = batch_tokens // (world_size * grad_accum)
        self.device = torch.device(device)
        self.stream = TokenStream(list_shards(data_dir, "train"), vocab_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.local_tokens + 1
        chunk = self.stream.take(self.world_size * span)
        local = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span].astype(np.int64))
        x = local[:-1].reshape(-1, self.seq_len)
        y = local[1:].reshape(-1, self.seq_len)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict:
        """The stream position as plain ints (JSON-able)."""
        return {"shard_index": self.stream.shard_index, "offset": self.stream.offset,
                "num_shards": len(self.stream.shard_paths)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by state_dict(); the shard set must be the same size."""
        missing = {"shard_index", "offset", "num_shards"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing keys {sorted(missing)}")
        if int(state["num_shards"]) != len(self.stream.shard_paths):
            raise ValueError(f"loader state was saved over {state['num_shards']} train shards but "
                             f"{len(self.stream.shard_paths)} are present now")
        self.stream.seek(int(state["shard_index"]), int(state["offset"]))
