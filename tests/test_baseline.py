"""The unigram baseline matches a hand computation on tiny shards."""
import math

import numpy as np
import pytest

from eval.baseline import unigram_bpb
from common.shards import write_shard
from train.data.tokenizer import build_byte_luts, load_tokenizer, target_bytes


def test_unigram_bpb_matches_hand_computation(tmp_path, real_tokenizer):
    sp = load_tokenizer(real_tokenizer)
    rng = np.random.default_rng(0)
    train = rng.integers(4, 200, size=5000).astype(np.uint16)
    val = np.concatenate([[1], rng.integers(4, 300, size=999)]).astype(np.uint16)
    write_shard(tmp_path / "fineweb_train_000000.bin", train)
    write_shard(tmp_path / "fineweb_val_000000.bin", val)

    counts = np.ones(sp.vocab_size()) + np.bincount(train, minlength=sp.vocab_size())
    p = counts / counts.sum()
    nll = -np.log(p[val[1:]]).sum()
    import torch
    luts = build_byte_luts(sp, sp.vocab_size())
    nbytes = int(target_bytes(torch.from_numpy(val[:-1].astype(np.int64)),
                              torch.from_numpy(val[1:].astype(np.int64)), luts).sum())
    expected = nll / (math.log(2) * nbytes)
    assert unigram_bpb(tmp_path, real_tokenizer) == pytest.approx(expected, rel=1e-12)
