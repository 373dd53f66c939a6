"""Turn documents into challenge-format shards, and train a SentencePiece BPE the way the challenge's was trained.

Every document is encoded and prefixed with BOS (id 1), with no EOS (seed-spec §1.1); documents are concatenated
back to back into fineweb_val_*.bin and fineweb_train_*.bin. Tokenizer training uses the challenge's settings
(seed-spec §2.1): BPE, byte_fallback, split_digits, nmt_nfkc, no dummy prefix, character_coverage 0.999,
pad=0 bos=1 eos=2 unk=3.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from common.atomic import atomic_write
from common.shards import SHARD_TOKENS, ShardWriter

BOS_ID = 1
_MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length; longer training "sentences" are split
_ENCODE_BATCH_DOCS = 256


def _training_sentences(documents: Iterable[str]):
    """Documents as SentencePiece training sentences: NULs replaced and stripped (as the challenge did), and
    documents over the trainer's sentence limit split at paragraph / line boundaries so they are not dropped."""
    for doc in documents:
        text = doc.replace("\x00", " ").strip()
        if not text:
            continue
        if len(text.encode("utf-8")) <= _MAX_SENTENCE_BYTES:
            yield text
            continue
        for line in text.split("\n"):
            line = line.strip()
            while line:
                head = line.encode("utf-8")[:_MAX_SENTENCE_BYTES].decode("utf-8", errors="ignore")
                yield head
                line = line[len(head):].strip()


def train_tokenizer(documents: Iterable[str], out_path, vocab_size: int = 1024, num_threads: int = 2):
    """Train a SentencePiece BPE on `documents` with the challenge's settings; write it atomically to `out_path`.

    Returns the loaded SentencePieceProcessor. ValueError (nothing written) when the documents cannot support
    `vocab_size` pieces: SentencePiece would return a smaller vocabulary without a word."""
    import sentencepiece as spm

    out_path = Path(out_path)
    model = io.BytesIO()
    spm.set_random_generator_seed(1337)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_training_sentences(documents), model_writer=model,
            model_type="bpe", vocab_size=int(vocab_size), character_coverage=0.999, byte_fallback=True,
            split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False,
            input_sentence_size=0, num_threads=int(num_threads), minloglevel=2)
    except RuntimeError as exc:
        raise ValueError(f"SentencePiece training for {out_path} failed: {exc}") from exc
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    if sp.vocab_size() != int(vocab_size):  # the trainer shrinks the vocab silently when the text runs out
        raise ValueError(f"the documents support only {sp.vocab_size()} tokenizer pieces, fewer than the "
                         f"{vocab_size} asked for; ask for {sp.vocab_size()} or fewer, or give more text")
    atomic_write(out_path, [model.getvalue()])
    return sp


def first_n_are_val(num_val_docs: int) -> Callable[[int], bool]:
    """Split rule of the challenge: the first `num_val_docs` documents are validation, the rest train."""
    return lambda index: index < num_val_docs


def _batches(documents: Iterable[str], size: int):
    batch = []
    for doc in documents:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_token_shards(documents: Iterable[str], sp, out_dir, is_val: Callable[[int], bool],
                       shard_tokens: int = SHARD_TOKENS) -> dict:
    """Encode documents (BOS-prefixed) into val/train shards in `out_dir`, replacing any shards already there.

    Returns counts: docs/tokens/bytes per split and the shard paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("fineweb_train_*.bin"), *out_dir.glob("fineweb_val_*.bin")]:
        stale.unlink()
    if int(sp.bos_id()) != BOS_ID:
        raise ValueError(f"tokenizer BOS id is {sp.bos_id()}, the shard format needs BOS id {BOS_ID}")
    writers = {"val": ShardWriter(out_dir, "val", shard_tokens), "train": ShardWriter(out_dir, "train", shard_tokens)}
    stats = {"docs_val": 0, "docs_train": 0, "text_bytes_val": 0, "text_bytes_train": 0}
    index = 0
    for batch in _batches(documents, _ENCODE_BATCH_DOCS):
        for text, ids in zip(batch, sp.encode(batch, out_type=int)):
            split = "val" if is_val(index) else "train"
            tokens = np.empty(len(ids) + 1, dtype=np.int64)
            tokens[0], tokens[1:] = BOS_ID, ids
            writers[split].add(tokens)
            stats[f"docs_{split}"] += 1
            stats[f"text_bytes_{split}"] += len(text.encode("utf-8"))
            index += 1
    for split, writer in writers.items():
        stats[f"shards_{split}"] = [p.name for p in writer.close()]
        stats[f"tokens_{split}"] = writer.num_tokens
    return stats
