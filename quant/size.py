"""Size accounting of a submission: code bytes + compressed model bytes <= 16,000,000 (decimal; seed-spec §5.2).

Code bytes are the UTF-8 bytes of the source a submission ships to train, compress and evaluate its model.
The seed counted its single train_gpt.py; ours is the standalone train_gpt.py that `python -m quant bundle`
writes and `python -m quant submit` ships (quant.bundle), so by default quant.bundle_cli.bundle_code builds it in
memory, for the preset whose model config the model file has (seed otherwise), and counts its bytes.
`--code-files` counts given files instead; `default_code_files` lists the package's own .py files, every one
under

    common/  kernels/  model/  train/  eval/  quant/  pipelines/

except the quant files that only report and are not needed to produce or read an artifact:
quant/__main__.py (the CLI), quant/size.py (this file), quant/roundtrip.py (the quant-gap report) and
quant/bounds.py (the entropy-bound report): what a submission would count if it shipped the package unbundled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zstandard

from quant.schemes import QuantizedTensor

CAP_BYTES = 16_000_000
CODE_DIRS = ("common", "kernels", "model", "train", "eval", "quant", "pipelines")
REPORT_ONLY_FILES = ("quant/__main__.py", "quant/size.py", "quant/roundtrip.py", "quant/bounds.py")
REPO_ROOT = Path(__file__).resolve().parents[1]
_ESTIMATE_LEVEL = 3  # per-tensor compression used only to apportion the real compressed size


def default_code_files(root: str | os.PathLike = REPO_ROOT) -> list[Path]:
    """The .py files counted as code bytes (see the module docstring), sorted, relative to `root`."""
    root = Path(root)
    files = []
    for d in CODE_DIRS:
        for p in sorted((root / d).rglob("*.py")):
            rel = p.relative_to(root)
            if "__pycache__" not in rel.parts and rel.as_posix() not in REPORT_ONLY_FILES:
                files.append(rel)
    return sorted(files)


def code_bytes(files: list[str | os.PathLike], root: str | os.PathLike = REPO_ROOT) -> int:
    """Total UTF-8 byte length of `files` (relative paths resolve against `root`)."""
    total = 0
    for f in files:
        path = Path(f) if Path(f).is_absolute() else Path(root) / f
        if not path.is_file():
            raise FileNotFoundError(f"code file not found: {path}")
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"code file {path} is not valid UTF-8: {e}") from e
        total += len(raw)
    return total


def size_summary(artifact_bytes: int, code_bytes_: int, cap: int = CAP_BYTES) -> dict:
    """The JSON-able verdict: artifact, code and total bytes, headroom under the cap, and whether it fits."""
    total = artifact_bytes + code_bytes_
    return {"artifact_bytes": artifact_bytes, "code_bytes": code_bytes_, "total_bytes": total,
            "headroom_bytes": cap - total, "cap_bytes": cap, "ok": total <= cap}


@dataclass
class SizeRow:
    name: str
    scheme: str
    shape: tuple[int, ...]
    raw_bytes: int         # numel x original element size
    stored_bytes: int      # payload bytes: values + scales
    est_compressed: float  # this tensor's share of the real compressed size (estimated)


def size_rows(qtensors: list[QuantizedTensor], stored: dict[str, bytes], artifact_bytes: int) -> list[SizeRow]:
    """One row per tensor. `stored` maps name -> its payload bytes (values + scales). The compressed size is
    apportioned by each tensor's size when compressed alone at a fast zstd level (an estimate, not exact)."""
    cctx = zstandard.ZstdCompressor(level=_ESTIMATE_LEVEL)
    alone = {qt.name: len(cctx.compress(stored[qt.name])) for qt in qtensors}
    denom = sum(alone.values()) or 1
    rows = []
    for qt in sorted(qtensors, key=lambda qt: qt.name):
        numel = 1
        for d in qt.shape:
            numel *= d
        rows.append(SizeRow(qt.name, qt.scheme, qt.shape, numel * qt.dtype.itemsize, len(stored[qt.name]),
                            artifact_bytes * alone[qt.name] / denom))
    return rows


def format_size_table(rows: list[SizeRow], summary: dict, code_what: str) -> str:
    """The human-readable per-tensor table, per-scheme totals, the cap verdict and what the code bytes count."""
    lines = [f"{'tensor':<34} {'scheme':<16} {'shape':<13} {'raw B':>11} {'stored B':>11} {'~zstd B':>11} "
             f"{'share':>6}"]
    total_c = sum(r.est_compressed for r in rows) or 1.0
    for r in rows:
        shape = "x".join(str(d) for d in r.shape) or "()"
        lines.append(f"{r.name:<34} {r.scheme:<16} {shape:<13} {r.raw_bytes:>11,} {r.stored_bytes:>11,} "
                     f"{r.est_compressed:>11,.0f} {100 * r.est_compressed / total_c:>5.1f}%")
    lines.append("-" * 118)
    by_scheme: dict[str, list[SizeRow]] = {}
    for r in rows:
        by_scheme.setdefault(r.scheme, []).append(r)
    for scheme, rs in sorted(by_scheme.items()):
        lines.append(f"{'  ' + scheme + f' ({len(rs)} tensors)':<64} {sum(r.raw_bytes for r in rs):>11,} "
                     f"{sum(r.stored_bytes for r in rs):>11,} {sum(r.est_compressed for r in rs):>11,.0f}")
    lines.append(f"{'  all tensors':<64} {sum(r.raw_bytes for r in rows):>11,} "
                 f"{sum(r.stored_bytes for r in rows):>11,} {total_c:>11,.0f}")
    s = summary
    lines += [
        f"compressed model (artifact file) {s['artifact_bytes']:>14,} B",
        f"code                             {s['code_bytes']:>14,} B",
        f"total                            {s['total_bytes']:>14,} B   cap {s['cap_bytes']:,}   "
        f"headroom {s['headroom_bytes']:,}   {'OK' if s['ok'] else 'OVER THE CAP'}",
        "code counted: " + code_what,
    ]
    return "\n".join(lines)
