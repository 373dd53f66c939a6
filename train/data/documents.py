"""Read documents from text inputs for tokenization: JSONL ({"text": ...} per line), or plain text files.

A plain text file is one document, unless it contains blank-line-separated blocks, in which case each block is a
document. Empty documents are dropped. Order is the order of the inputs, then of the documents inside each.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def iter_documents(paths) -> Iterator[str]:
    """Yield every document's text from `paths` (files ending in .jsonl are JSON lines, anything else plain text)."""
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"input not found: {path}")
        if path.suffix == ".jsonl":
            yield from _iter_jsonl(path)
        else:
            yield from _iter_text(path)


def _iter_jsonl(path: Path) -> Iterator[str]:
    with path.open("r", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{line_no}: expected an object with a string \"text\" field")
            if record["text"].strip():
                yield record["text"]


def _iter_text(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    for block in _BLANK_LINES.split(text):
        if block.strip():
            yield block.strip("\n")
