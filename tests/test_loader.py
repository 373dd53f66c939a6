"""DistributedTokenLoader (seed-spec §1.3): sequential stream with wrap, rank spans, accum/world equivalence,
resume from state_dict, and clear errors."""
import json

import numpy as np
import pytest
import torch

from train.data.loader import DistributedTokenLoader, TokenStream
from common.shards import shard_name, write_shard


@pytest.fixture
def data_dir(tmp_path):
    """Three train shards of uneven length holding the token stream 0, 1, 2, ..., 99 (ids < 100)."""
    bounds = [0, 37, 60, 100]
    for i in range(3):
        write_shard(tmp_path / shard_name("train", i), np.arange(bounds[i], bounds[i + 1]))
    return tmp_path


def test_stream_crosses_shards_and_wraps(data_dir):
    stream = TokenStream(sorted(data_dir.glob("fineweb_train_*.bin")))
    got = np.concatenate([stream.take(30) for _ in range(8)])
    assert got.tolist() == [i % 100 for i in range(240)]


def test_single_rank_batches_follow_the_spec(data_dir):
    loader = DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4)
    x, y = loader.next_batch()
    assert x.dtype == torch.int64 and y.dtype == torch.int64 and x.shape == (2, 4)
    assert x.flatten().tolist() == list(range(0, 8))
    assert y.flatten().tolist() == list(range(1, 9))
    x, _ = loader.next_batch()  # the stream advanced by local + 1 = 9 tokens
    assert x.flatten().tolist() == list(range(9, 17))


def test_ranks_take_disjoint_spans_of_one_chunk(data_dir):
    xs = [DistributedTokenLoader(data_dir, 8, 2, rank=r, world_size=2).next_batch() for r in range(2)]
    assert xs[0][0].flatten().tolist() == [0, 1, 2, 3] and xs[0][1].flatten().tolist() == [1, 2, 3, 4]
    assert xs[1][0].flatten().tolist() == [5, 6, 7, 8] and xs[1][1].flatten().tolist() == [6, 7, 8, 9]


def test_grad_accum_equals_more_ranks(data_dir):
    single = DistributedTokenLoader(data_dir, batch_tokens=24, seq_len=3, grad_accum=2)
    ranks = [DistributedTokenLoader(data_dir, batch_tokens=24, seq_len=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(9):  # enough steps to cross every shard boundary and wrap
        per_step = [single.next_batch() for _ in range(2)]
        per_rank = [loader.next_batch() for loader in ranks]
        for (xa, ya), (xb, yb) in zip(per_step, per_rank):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_from_state_dict_continues_identically(data_dir):
    loader = DistributedTokenLoader(data_dir, batch_tokens=12, seq_len=4)
    for _ in range(5):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # plain ints, JSON-able
    expected = [loader.next_batch() for _ in range(6)]
    resumed = DistributedTokenLoader(data_dir, batch_tokens=12, seq_len=4)
    resumed.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, [resumed.next_batch() for _ in range(6)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_load_state_dict_rejects_other_shard_sets(data_dir):
    loader = DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4)
    with pytest.raises(ValueError, match="saved over 5 train shards but 3 are present"):
        loader.load_state_dict({"shard_index": 0, "offset": 0, "num_shards": 5})
    with pytest.raises(ValueError, match="offset 999 out of range"):
        loader.load_state_dict({"shard_index": 1, "offset": 999, "num_shards": 3})
    with pytest.raises(ValueError, match="missing keys"):
        loader.load_state_dict({"offset": 0})


def test_bad_arguments_and_missing_shards(data_dir, tmp_path_factory):
    with pytest.raises(ValueError, match=r"batch_tokens 10 is not divisible by world_size\*grad_accum\*seq_len"):
        DistributedTokenLoader(data_dir, batch_tokens=10, seq_len=4)
    with pytest.raises(ValueError, match="rank 2 out of range"):
        DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="no train shards"):
        DistributedTokenLoader(tmp_path_factory.mktemp("empty"), batch_tokens=8, seq_len=4)


def test_vocab_check_applies_to_streamed_shards(data_dir):
    loader = DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4, vocab_size=50)
    loader.next_batch()  # shard 0 holds ids < 37
    with pytest.raises(ValueError, match="out of range for vocab_size 50"):
        for _ in range(10):
            loader.next_batch()


@pytest.mark.gpu
def test_cuda_batches_match_cpu(data_dir):
    cpu = DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4).next_batch()
    gpu = DistributedTokenLoader(data_dir, batch_tokens=8, seq_len=4, device="cuda").next_batch()
    assert gpu[0].device.type == "cuda" and gpu[0].dtype == torch.int64
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
