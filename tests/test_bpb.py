"""Exact val_bpb byte accounting (seed-spec §2.2-2.4): hand-counted tables, the real challenge tokenizer on real text,
byte-fallback pieces, the BPB formula and the tokenizer errors."""
import json
import math

import pytest
import torch

from train.data.tokenize_text import train_tokenizer
from train.data.tokenizer import (bits_per_byte, build_byte_luts, check_vocab, load_tokenizer, target_bytes)


class _HandMadeVocab:
    """A SentencePiece look-alike with a few known pieces, so byte counts can be checked by hand."""
    pieces = ["<pad>", "<s>", "</s>", "<unk>", "<0x41>", "\u2581hello", "wor", "\u2581\u00e9", "\u2581"]
    kinds = {0: "control", 1: "control", 2: "control", 3: "unknown", 4: "byte"}

    def vocab_size(self):
        return len(self.pieces)

    def id_to_piece(self, i):
        return self.pieces[i]

    def is_control(self, i):
        return self.kinds.get(i) == "control"

    def is_unknown(self, i):
        return self.kinds.get(i) == "unknown"

    def is_unused(self, i):
        return False

    def is_byte(self, i):
        return self.kinds.get(i) == "byte"


def _doc_bytes(ids, luts):
    ids = torch.tensor(ids)
    return int(target_bytes(ids[:-1], ids[1:], luts).sum())


def test_hand_counted_tables_and_bytes():
    luts = build_byte_luts(_HandMadeVocab(), vocab_size=12)
    assert len(luts.base_bytes) == 12  # padded to the model vocab
    assert luts.base_bytes.tolist() == [0, 0, 0, 0, 1, 5, 3, 2, 0, 0, 0, 0]
    assert luts.has_leading_space.tolist() == [False] * 5 + [True, False, True, True] + [False] * 3
    assert luts.is_boundary.tolist() == [True] * 4 + [False] * 5 + [True] * 3
    # stream: BOS ▁hello wor ▁é <0x41> ▁ BOS ▁hello
    ids = torch.tensor([1, 5, 6, 7, 4, 8, 1, 5])
    per_target = target_bytes(ids[:-1], ids[1:], luts)
    # ▁hello after BOS: 5 (no space); wor 3; ▁é 2+1; byte 1; ▁ 0+1; BOS 0; ▁hello after BOS 5
    assert per_target.tolist() == [5, 3, 3, 1, 1, 0, 5]
    assert per_target.dtype == torch.int32
    with pytest.raises(ValueError, match="shape"):
        target_bytes(ids[:-1], ids[:3], luts)


def test_bits_per_byte_formula():
    assert bits_per_byte(math.log(2) * 100, token_count=40, byte_count=100) == pytest.approx(1.0)
    nll, tokens, nbytes = 1234.5, 500, 1217
    expected = (nll / tokens / math.log(2)) * (tokens / nbytes)
    assert bits_per_byte(nll, tokens, nbytes) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="positive"):
        bits_per_byte(1.0, 10, 0)


def _check_real_text(sp, luts, texts):
    checked = 0
    for text in texts:
        ids = sp.encode(text)
        if sp.unk_id() in ids:  # an <unk> stands for unknown text: 0 bytes by definition; not comparable
            continue
        assert _doc_bytes([1, *ids], luts) == len(sp.decode(ids).encode("utf-8")), text[:80]
        checked += 1
    return checked


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2012, 3,456 people paid $78.90 each -- roughly 1/3 of the town.",
    "Tabs\tand\nnewlines   and  runs of   spaces are normalized.",
    "\u201cSmart quotes\u201d, an em dash \u2014 and full-width \uff21\uff22\uff23 go through NFKC.",
    " leading space and trailing space ",
]


def test_real_tokenizer_bytes_equal_decoded_utf8(real_tokenizer):
    sp = load_tokenizer(real_tokenizer)
    check_vocab(sp, 1024)
    luts = build_byte_luts(sp, 1024)
    assert _check_real_text(sp, luts, SENTENCES) == len(SENTENCES)


def test_real_tokenizer_on_fineweb_docs(real_tokenizer, fineweb_sample):
    sp = load_tokenizer(real_tokenizer)
    luts = build_byte_luts(sp, 1024)
    with open(fineweb_sample, encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for _, line in zip(range(60), f)]
    assert _check_real_text(sp, luts, docs) >= 20
    # several BOS-prefixed documents in one stream: the bytes add up per document
    clean = [d for d in docs if sp.unk_id() not in sp.encode(d)][:5]
    stream = [t for d in clean for t in [1, *sp.encode(d)]]
    assert _doc_bytes(stream, luts) == sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in clean)


def test_byte_fallback_pieces_count_one_byte(tmp_path):
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly boxes"
    docs = [f"{words} {i} {words[::-1]}" for i in range(200)]
    sp = train_tokenizer(docs, tmp_path / "tok.model", vocab_size=320)
    luts = build_byte_luts(sp, sp.vocab_size())
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256
    assert luts.base_bytes[byte_ids].tolist() == [1] * 256
    assert not luts.has_leading_space[byte_ids].any() and not luts.is_boundary[byte_ids].any()
    text = "the snowman \u2603 and \u00e9t\u00e9 jump"  # ☃ and é are unseen: they fall back to UTF-8 bytes
    ids = sp.encode(text)
    assert sum(sp.is_byte(i) for i in ids) >= 5
    assert _doc_bytes([1, *ids], luts) == len(sp.decode(ids).encode("utf-8")) == len(text.encode("utf-8"))


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        load_tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model: not a readable SentencePiece model"):
        load_tokenizer(bad)


def test_check_vocab_names_both_sizes(real_tokenizer):
    with pytest.raises(ValueError, match="tokenizer vocab size 1024 does not match model vocab_size 2048"):
        check_vocab(load_tokenizer(real_tokenizer), 2048)
