"""Quantization gap: val_bpb of the float model versus the dequantized artifact, on plain non-overlapping val.

Both models run the same evaluation: the validation tokens (common.shards.load_validation_tokens) are cut
into non-overlapping sequences of cfg.seq_len; every target is scored with GPT.per_token_nll and its bytes
counted with the tokenizer's byte tables (seed-spec §2.3); bpb = sum(nll) / (ln 2 * sum(bytes)) (§2.4).
This is not the sliding-window or TTT score; it isolates what quantization costs (seed-spec §7.3).
"""
from __future__ import annotations

import math
import os

import torch

from quant.artifact import load_artifact
from quant.model_file import load_model_file


@torch.no_grad()
def evaluate_bpb(state_dict: dict[str, torch.Tensor], cfg, tokens: torch.Tensor, luts, batch_seqs: int = 8,
                 device: str = "cpu") -> dict:
    """val_loss and val_bpb of a GPT with `state_dict` on `tokens` (1 + n*seq_len ids), non-overlapping."""
    from model.gpt import GPT
    from train.data.tokenizer import bits_per_byte, target_bytes

    model = GPT(cfg)
    model.load_state_dict(state_dict, strict=True)
    model.to(device).eval()
    seq_len = cfg.seq_len
    n_seqs = (tokens.numel() - 1) // seq_len
    if n_seqs < 1:
        raise ValueError(f"need at least {seq_len + 1} validation tokens, got {tokens.numel()}")
    nll_sum, token_count, byte_count = 0.0, 0, 0
    for start in range(0, n_seqs, batch_seqs):
        stop = min(start + batch_seqs, n_seqs)
        span = tokens[start * seq_len: stop * seq_len + 1]
        x = span[:-1].reshape(stop - start, seq_len)
        y = span[1:].reshape(stop - start, seq_len)
        nll = model.per_token_nll(x.to(device), y.to(device))
        nll_sum += float(nll.double().sum())
        token_count += y.numel()
        byte_count += int(target_bytes(x, y, luts).sum())
    return {"val_loss": nll_sum / token_count, "val_bpb": bits_per_byte(nll_sum, token_count, byte_count),
            "tokens": token_count, "bytes": byte_count}


def quant_gap(model_file: str | os.PathLike, artifact: str | os.PathLike, data_dir: str | os.PathLike,
              tokenizer: str | os.PathLike, max_tokens: int | None = None, batch_seqs: int = 8,
              device: str = "cpu") -> dict:
    """Evaluate the float model file and the dequantized artifact on the same val tokens; return both and the gap.

    `max_tokens` (optional) keeps only the first floor(max_tokens/seq_len) sequences, for quick checks.
    """
    from model.config import ModelConfig
    from common.shards import load_validation_tokens
    from train.data.tokenizer import build_byte_luts, check_vocab, load_tokenizer

    float_config, float_state = load_model_file(model_file)
    quant_config, quant_state = load_artifact(artifact)
    cfg = ModelConfig.from_dict(float_config)
    if ModelConfig.from_dict(quant_config) != cfg:
        raise ValueError(f"{artifact}: its model config differs from {model_file}'s; was it made from that file?")
    tokens = load_validation_tokens(data_dir, cfg.seq_len, cfg.vocab_size)
    if max_tokens is not None:
        keep = max(1, max_tokens // cfg.seq_len) * cfg.seq_len + 1
        tokens = tokens[:keep]
    sp = load_tokenizer(tokenizer)
    check_vocab(sp, cfg.vocab_size)
    luts = build_byte_luts(sp, cfg.vocab_size)
    float_result = evaluate_bpb(float_state, cfg, tokens, luts, batch_seqs, device)
    quant_result = evaluate_bpb(quant_state, cfg, tokens, luts, batch_seqs, device)
    gap = quant_result["val_bpb"] - float_result["val_bpb"]
    if not math.isfinite(gap):
        raise ValueError(f"quant gap is not finite (float {float_result}, quantized {quant_result})")
    return {"float_val_bpb": float_result["val_bpb"], "quant_val_bpb": quant_result["val_bpb"],
            "quant_gap_bpb": gap, "float_val_loss": float_result["val_loss"],
            "quant_val_loss": quant_result["val_loss"], "val_tokens": float_result["tokens"]}


def format_quant_gap(result: dict) -> str:
    """One line for the console."""
    return (f"quant gap on {result['val_tokens']:,} val tokens: float val_bpb {result['float_val_bpb']:.5f}  "
            f"dequantized val_bpb {result['quant_val_bpb']:.5f}  gap {result['quant_gap_bpb']:+.5f}")
