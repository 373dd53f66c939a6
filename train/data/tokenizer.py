"""The SentencePiece tokenizer and the exact val_bpb accounting (seed-spec §2.2-2.4).

BPB counts the UTF-8 bytes of the text each scored token stands for: a piece's own bytes, plus one byte for its
leading "▁" (a space) unless the token before it is a control token such as BOS. Byte-fallback pieces <0xXX> are one
byte; control, unknown and unused ids are zero-byte boundaries. The sums are taken in float64 over all targets and
the ratio is formed once at the end, never averaged over chunks or ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

SPACE_MARK = "\u2581"  # "▁", SentencePiece's word-initial space


def load_tokenizer(path):
    """Load a SentencePiece model file; FileNotFoundError / ValueError naming the file when it is missing or bad."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer model not found: {path}")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a readable SentencePiece model ({exc})") from exc


def check_vocab(sp, vocab_size: int) -> None:
    """Raise ValueError when the tokenizer's vocabulary size differs from the model's `vocab_size`."""
    if int(sp.vocab_size()) != int(vocab_size):
        raise ValueError(f"tokenizer vocab size {sp.vocab_size()} does not match model vocab_size {vocab_size}")


@dataclass
class ByteLUTs:
    """Per-id byte tables (length max(tokenizer vocab, model vocab)); ids past the tokenizer are 0-byte boundaries."""
    base_bytes: torch.Tensor          # int16: UTF-8 bytes of the piece without its leading "▁"
    has_leading_space: torch.Tensor   # bool: piece starts with "▁"
    is_boundary: torch.Tensor         # bool: control / unknown / unused id (BOS, EOS, PAD, UNK)

    def to(self, device) -> "ByteLUTs":
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))


def build_byte_luts(sp, vocab_size: int) -> ByteLUTs:
    """Build the byte tables from a SentencePiece processor (seed-spec §2.2)."""
    sp_size = int(sp.vocab_size())
    size = max(sp_size, int(vocab_size))
    base_bytes = torch.zeros(size, dtype=torch.int16)
    has_leading_space = torch.zeros(size, dtype=torch.bool)
    is_boundary = torch.ones(size, dtype=torch.bool)
    for i in range(sp_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE_MARK):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return ByteLUTs(base_bytes, has_leading_space, is_boundary)


def target_bytes(prev_ids: torch.Tensor, target_ids: torch.Tensor, luts: ByteLUTs) -> torch.Tensor:
    """Bytes each target stands for: base_bytes[y] + (has_leading_space[y] and not is_boundary[x]), as int32.

    prev_ids[i] is the input-side token at the target's position (the token just before target_ids[i])."""
    if prev_ids.shape != target_ids.shape:
        raise ValueError(f"prev_ids shape {tuple(prev_ids.shape)} != target_ids shape {tuple(target_ids.shape)}")
    if luts.base_bytes.device != target_ids.device:
        luts = luts.to(target_ids.device)
    prev_ids, target_ids = prev_ids.long(), target_ids.long()
    counts = luts.base_bytes[target_ids].to(torch.int32)
    counts += (luts.has_leading_space[target_ids] & ~luts.is_boundary[prev_ids]).to(torch.int32)
    return counts


def bits_per_byte(nll_sum: float, token_count: float, byte_count: float) -> float:
    """val_bpb = (nll_sum / token_count / ln 2) * (token_count / byte_count) = nll_sum / (ln 2 * byte_count)."""
    nll_sum, token_count, byte_count = float(nll_sum), float(token_count), float(byte_count)
    if token_count <= 0 or byte_count <= 0:
        raise ValueError(f"bits_per_byte needs positive token and byte counts, got tokens={token_count}, "
                         f"bytes={byte_count}")
    return (nll_sum / token_count / math.log(2.0)) * (token_count / byte_count)
