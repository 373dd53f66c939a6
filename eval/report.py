"""Eval reports: the per-chunk JSONL log, a PNG of per-chunk and running bpb, and the final JSON summary.

The JSONL log is appended and flushed chunk by chunk so a long TTT run can be watched while it runs;
the PNG and the summary JSON are written atomically (temp file in the same folder, then os.replace).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


class ChunkLog:
    """Append-only JSONL log, one record per TTT chunk (chunk, tokens, bytes, chunk_bpb, running_bpb, lr)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.records: list[dict] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is not None:
            self._file.write(json.dumps(_finite(record)) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.path is not None:
            self._file.close()


def plot_chunks(records: list[dict], png_path: str | Path, baseline_bpb: float | None = None) -> bool:
    """Plot chunk bpb and running bpb against the chunk index; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    png_path = Path(png_path)
    chunks = [r["chunk"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(chunks, [r["chunk_bpb"] for r in records], lw=0.8, alpha=0.6, label="chunk bpb")
    ax.plot(chunks, [r["running_bpb"] for r in records], lw=1.8, label="running bpb (score-first TTT)")
    if baseline_bpb is not None:
        ax.axhline(baseline_bpb, color="gray", ls="--", lw=1, label=f"sliding, no TTT ({baseline_bpb:.4f})")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("TTT chunk")
    ax.set_ylabel("bits per byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=png_path.parent, prefix=png_path.name, suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; every other output is 0644
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def write_json(summary: dict, path: str | Path) -> None:
    """Write `summary` as pretty JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_finite(summary), f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def summary_line(summary: dict) -> str:
    """The one-line JSON printed last by `python -m eval`."""
    return json.dumps(_finite(summary), sort_keys=False)


def _finite(obj):
    """JSON-safe copy: nan/inf become None (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
