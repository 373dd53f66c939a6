"""Where a model came from: its tokenizer's fingerprint and its training data's identity, recorded in checkpoints,
model files and artifacts, and checked where a mix-up would silently give wrong figures.

- The tokenizer fingerprint is the sha256 of the SentencePiece .model file. Two tokenizers of the same vocab
  size pass the vocab check but count different bytes per token, so scoring a model with another tokenizer
  gives a wrong val_bpb (3.91 instead of 2.24 on the demo model): eval refuses it.
- The data identity is the shard files' names and sizes and the val token count (from the shard headers: no
  token is read). A resumed run continues the loader's position in that stream, so resuming on other data
  would switch corpora mid-run: `python -m train --resume` refuses it.
- One fact of the training itself, recorded in final model files (and a checkpoint's own "late_qat"): whether
  late QAT fired (LATE_QAT_KEY). PR #598's late-QAT flag stayed on after training, so its TTT fake-quantized
  every linear layer; `python -m eval` does the same by default for a model that records it (`recorded_late_qat`;
  None for files written before it was recorded).
Files written before provenance was recorded load with a warning line saying what could not be checked.
An artifact's bytes count toward the 16,000,000-byte cap, so it keeps a compact form (`artifact_provenance`):
the tokenizer fingerprint, a sha256 of the data identity, the val token count and the late-QAT fact (~190
bytes, no paths).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

TOKENIZER_KEY, DATA_KEY, LATE_QAT_KEY = "tokenizer_sha256", "data", "late_qat"


class ProvenanceError(ValueError):
    """A model, checkpoint or artifact meets a tokenizer or data directory other than the one it was made with."""


def tokenizer_fingerprint(path) -> str:
    """sha256 (hex) of the tokenizer model file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_identity(data_dir) -> dict:
    """{"train": [[name, bytes], ...], "val": [[name, bytes], ...], "val_tokens": N} of a shard directory."""
    from common.shards import list_shards, read_header

    identity = {split: [[p.name, p.stat().st_size] for p in list_shards(data_dir, split)] for split in ("train", "val")}
    identity["val_tokens"] = sum(read_header(Path(data_dir) / name)["num_tokens"] for name, _ in identity["val"])
    return identity


def run_provenance(data_dir, tokenizer_path) -> dict:
    """What a training run records: the tokenizer fingerprint, the data identity and the data directory."""
    return {TOKENIZER_KEY: tokenizer_fingerprint(tokenizer_path), DATA_KEY: data_identity(data_dir),
            "data_dir": str(Path(data_dir).resolve())}


def artifact_provenance(provenance: dict) -> dict:
    """The compact provenance an artifact's manifest keeps: no shard list, no path (see the module docstring)."""
    compact = {key: provenance[key] for key in (TOKENIZER_KEY, "data_sha256", "val_tokens", LATE_QAT_KEY)
               if key in provenance}
    identity = provenance.get(DATA_KEY)
    if isinstance(identity, dict):
        text = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
        compact.update(data_sha256=hashlib.sha256(text).hexdigest(), val_tokens=identity.get("val_tokens"))
    return compact


def recorded_late_qat(provenance: dict | None) -> bool | None:
    """Whether the model's training fired late QAT, as its file records it; None when it records nothing."""
    value = (provenance or {}).get(LATE_QAT_KEY)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"provenance {LATE_QAT_KEY!r} is a {type(value).__name__}, expected true or false")
    return value


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_tokenizer(provenance: dict | None, tokenizer_path, where: str) -> bool:
    """Refuse a tokenizer other than the recorded one; False (after a warning line) when nothing is recorded."""
    recorded = (provenance or {}).get(TOKENIZER_KEY)
    if not recorded:
        warn(f"{where} records no tokenizer fingerprint (written before provenance was recorded): cannot check "
             f"that {tokenizer_path} is the tokenizer it was trained with")
        return False
    actual = tokenizer_fingerprint(tokenizer_path)
    if actual != recorded:
        raise ProvenanceError(f"{tokenizer_path} is not the tokenizer {where} was trained with (sha256 "
                              f"{actual[:12]}... vs recorded {recorded[:12]}...): its byte counts would give a "
                              "wrong val_bpb; pass --tokenizer with the training tokenizer")
    return True


def _describe_difference(recorded: dict, actual: dict) -> str:
    for split in ("train", "val"):
        old, new = [tuple(x) for x in recorded.get(split, [])], [tuple(x) for x in actual.get(split, [])]
        if old != new:
            gone = sorted(set(old) - set(new))
            added = sorted(set(new) - set(old))
            detail = []
            if gone:
                detail.append(f"recorded {gone[0][0]} ({gone[0][1]:,} bytes)" + (f" and {len(gone) - 1} more"
                                                                                  if len(gone) > 1 else ""))
            if added:
                detail.append(f"found {added[0][0]} ({added[0][1]:,} bytes)" + (f" and {len(added) - 1} more"
                                                                                if len(added) > 1 else ""))
            return f"{split} shards differ ({len(old)} recorded, {len(new)} found: {'; '.join(detail)})"
    return f"val token count differs ({recorded.get('val_tokens')} recorded, {actual.get('val_tokens')} found)"


def check_data(provenance: dict | None, data_dir, where: str) -> bool:
    """Refuse a data directory other than the recorded one; False (after a warning line) when nothing is recorded."""
    recorded = (provenance or {}).get(DATA_KEY)
    if not recorded:
        warn(f"{where} records no data identity (written before provenance was recorded): cannot check that "
             f"{data_dir} holds the data it was trained on")
        return False
    actual = data_identity(data_dir)
    if actual != recorded:
        source = (provenance or {}).get("data_dir")
        raise ProvenanceError(f"{data_dir} is not the data {where} was trained on: {_describe_difference(recorded, actual)}"
                              + (f"; it was trained on {source}" if source else ""))
    return True
