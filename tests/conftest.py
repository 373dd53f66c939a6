"""Test setup: Triton's CPU interpreter unless a GPU is present, and shared fixtures.

TRITON_INTERPRET must be set before any kernel module is imported (it is read at @triton.jit time).
"""
import os
import pathlib

try:  # decide before importing triton: GPU when present, else the interpreter
    import torch as _torch
    _HAS_CUDA = _torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu"
SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
REAL_TOKENIZER = SHARED / "data" / "fineweb_1024_bpe.model"
FINEWEB_SAMPLE = SHARED / "data" / "fineweb_sample" / "fineweb_textfixer_300.jsonl"


@pytest.fixture
def device():
    """The device kernels are tested on: CUDA when present, else the CPU under the Triton interpreter."""
    return DEVICE


@pytest.fixture
def real_tokenizer():
    """Path to the challenge's sp1024 tokenizer in ../shared; skips when the shared folder is absent."""
    if not REAL_TOKENIZER.exists():
        pytest.skip(f"challenge tokenizer not found at {REAL_TOKENIZER}")
    return REAL_TOKENIZER


@pytest.fixture
def fineweb_sample():
    """Path to the 300-document FineWeb sample in ../shared; skips when absent."""
    if not FINEWEB_SAMPLE.exists():
        pytest.skip(f"FineWeb sample not found at {FINEWEB_SAMPLE}")
    return FINEWEB_SAMPLE


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when CUDA is absent."""
    if DEVICE == "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """One intra-op thread per test: the shapes are tiny, and on a small shared CPU more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (torch, CUDA, random, numpy): a test that depends on its
    draws fails every time or never, not one run in six."""
    import random

    import numpy as np
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)  # seeds CUDA too when present
    yield


@pytest.fixture(autouse=True)
def restore_matmul_flags():
    """Save and restore the global TF32 / matmul-precision switches (the training loop sets them), so one test's
    settings never change another test's tolerances on a GPU."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])


def write_fineweb_val(folder, tokenizer_path, sample_path, targets: int) -> pathlib.Path:
    """A val shard of BOS-prefixed FineWeb documents holding `targets` + 1 tokens, with the challenge tokenizer
    beside it (the data folder `python -m eval` reads); returns the folder."""
    import json

    from common.shards import write_shard
    from train.data.tokenizer import load_tokenizer
    folder = pathlib.Path(folder)
    sp = load_tokenizer(tokenizer_path)
    ids = []
    with open(sample_path, encoding="utf-8") as f:
        for line in f:
            ids += [1] + sp.encode(json.loads(line)["text"])
            if len(ids) > targets:
                break
    write_shard(folder / "fineweb_val_000000.bin", ids[:1 + targets])
    (folder / "tokenizer.model").write_bytes(pathlib.Path(tokenizer_path).read_bytes())
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small embedded corpus (150 KB of CPython text, its own tokenizer), built once per test session."""
    from train.data.embedded import ensure_embedded_corpus
    return ensure_embedded_corpus(tmp_path_factory.mktemp("corpus") / "embedded", max_bytes=150_000)
