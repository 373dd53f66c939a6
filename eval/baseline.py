"""The unigram baseline: val_bpb of a model that ignores context and predicts the train-set token frequencies.

A trained LM must beat it clearly; the demo prints it beside the trained model's score. Add-one smoothing
keeps tokens unseen in train finite. Bytes are counted with the same exact LUTs as every other val_bpb.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.shards import list_shards, read_shard
from train.data.tokenizer import bits_per_byte, build_byte_luts, load_tokenizer, target_bytes


def unigram_bpb(data_dir: str | Path, tokenizer_path: str | Path) -> float:
    """val_bpb on all val shards of the add-one-smoothed unigram distribution of all train shards."""
    sp = load_tokenizer(tokenizer_path)
    vocab = sp.vocab_size()
    counts = np.ones(vocab, dtype=np.float64)
    for path in list_shards(data_dir, "train"):
        counts += np.bincount(np.asarray(read_shard(path, vocab)), minlength=vocab)[:vocab]
    log_p = np.log(counts / counts.sum())
    val = np.concatenate([np.asarray(read_shard(p, vocab)) for p in list_shards(data_dir, "val")]).astype(np.int64)
    prev, target = torch.from_numpy(val[:-1]), torch.from_numpy(val[1:])
    nll_sum = float(-log_p[val[1:]].sum())
    byte_count = int(target_bytes(prev, target, build_byte_luts(sp, vocab)).sum())
    return bits_per_byte(nll_sum, len(target), byte_count)

