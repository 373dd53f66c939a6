"""How small the artifact could be: order-0 entropy bounds of its stored symbols, beside zstd-22 and the artifact.

For every tensor the stored symbols are split into streams: int6 values (alphabet 64), int8 values (255), each
byte plane of a floating-point array (256: fp16/fp32 passthrough tensors, the fp16 scales) and the bytes of raw
tensors (256). A stream of n symbols with empirical order-0 entropy H costs at least
    n * H + log2 C(n + A - 1, A - 1) bits
the second term being the side information a decoder needs to know the counts (the number of count vectors n
symbols of an A-letter alphabet can have: a two-part code), and never more than the fixed-length code,
n * ceil(log2 A) bits. A tensor's bound is the sum over its streams; the per-row bound codes each row of an
int6/int8 matrix as a stream of its own (with its own side information). The artifact's bound adds the header
and the manifest as coded (the names and shapes a decoder needs).

Beside the bounds: each tensor's stored bytes (format 2's payload bytes, values then scales) compressed alone
with zstd-22, and what the artifact (format 4 by default) spends on it (quant.codec's segments). The bound is
order-0 per tensor: format 3's order-0 segments cannot go under it, but format 4's width contexts
(quant.width_contexts) model rows and columns of different widths and can. `seed_style_bytes` is the seed's own
serialization (torch.save of its dict layout + zstd-22), the figure the artifact is compared against.
"""
from __future__ import annotations

import bisect
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from quant.artifact import HEADER, MANIFEST_LEN, stored_bytes
from quant.schemes import QuantizedTensor

ALPHABETS = {"int6_per_row": 64, "int8_per_tensor": 255}


def side_bits(n: int, alphabet: int) -> float:
    """log2 of the number of count vectors of n symbols over `alphabet` letters: log2 C(n + A - 1, A - 1)."""
    if n == 0:
        return 0.0
    return (math.lgamma(n + alphabet) - math.lgamma(n + 1) - math.lgamma(alphabet)) / math.log(2)


def stream_bound_bits(symbols: np.ndarray, alphabet: int) -> float:
    """min(order-0 entropy + side information, fixed-length code) of one stream, in bits."""
    n = symbols.size
    if n == 0:
        return 0.0
    counts = np.unique(symbols, return_counts=True)[1].astype(np.float64)
    entropy = float(-(counts * np.log2(counts / n)).sum())
    return min(entropy + side_bits(n, alphabet), n * math.ceil(math.log2(alphabet)))


def _planes(t: torch.Tensor) -> list[np.ndarray]:
    """The byte planes of a tensor (one plane for 1-byte elements)."""
    t = t.detach().cpu().contiguous()
    if not t.numel():
        return []
    b = t.reshape(-1).view(torch.uint8).view(-1, t.element_size()).numpy()
    return [b[:, i] for i in range(b.shape[1])]


def tensor_streams(qt: QuantizedTensor, per_row: bool = False) -> list[tuple[np.ndarray, int]]:
    """(symbols, alphabet) of every stream of one tensor; with per_row, each row of int6/int8 values apart."""
    streams = []
    if qt.scheme in ALPHABETS:
        values = qt.data.numpy().reshape(qt.data.shape[0], -1) if qt.data.dim() >= 2 else qt.data.numpy()[None]
        rows = list(values) if per_row else [values.reshape(-1)]
        streams += [(row, ALPHABETS[qt.scheme]) for row in rows]
    else:
        streams += [(plane, 256) for plane in _planes(qt.data)]
    if qt.scale is not None:
        streams += [(plane, 256) for plane in _planes(qt.scale.to(torch.float16))]
    return streams


def tensor_bound(qt: QuantizedTensor, per_row: bool = False) -> float:
    """The tensor's order-0 bound in bytes (module docstring)."""
    return sum(stream_bound_bits(s, a) for s, a in tensor_streams(qt, per_row)) / 8


@dataclass
class BoundRow:
    name: str
    scheme: str
    numel: int
    bound: float        # bytes: order-0 per stream, with side information
    row_bound: float    # bytes: the same with every int6/int8 row a stream of its own
    zstd22: int         # bytes: the tensor's stored bytes alone through zstd-22
    coded: int          # bytes: what the artifact's segments spend on it


def coded_by_tensor(body: bytes, report: list[dict]) -> dict[str, int]:
    """The artifact's coded bytes per tensor (and "(manifest)") from quant.codec.encode's segment report."""
    (mlen,) = MANIFEST_LEN.unpack_from(body)
    start = MANIFEST_LEN.size + mlen
    manifest = json.loads(body[MANIFEST_LEN.size:start])
    owners = sorted((start + e[k][0], e["name"]) for e in manifest["tensors"] for k in ("data", "scale") if e[k])
    offsets = [o for o, _ in owners]
    out: dict[str, int] = {}
    for seg in report:
        i = bisect.bisect_right(offsets, seg["offset"]) - 1
        name = owners[i][1] if seg["offset"] >= start and i >= 0 else "(manifest)"
        out[name] = out.get(name, 0) + seg["coded"]
    return out


def bound_rows(qtensors: list[QuantizedTensor], coded: dict[str, int], int6_storage: str = "int8",
               level: int | None = 22) -> list[BoundRow]:
    """One BoundRow per tensor, sorted by name (zstd column 0 when level is None)."""
    cctx = zstandard.ZstdCompressor(level=level) if level is not None else None
    return [BoundRow(qt.name, qt.scheme, qt.data.numel(), tensor_bound(qt), tensor_bound(qt, per_row=True),
                     len(cctx.compress(stored_bytes(qt, int6_storage))) if cctx else 0, coded.get(qt.name, 0))
            for qt in sorted(qtensors, key=lambda qt: qt.name)]


def artifact_bound(rows: list[BoundRow], coded: dict[str, int]) -> float:
    """The whole artifact's bound in bytes: header + manifest as coded + every tensor's bound."""
    return HEADER.size + coded.get("(manifest)", 0) + sum(r.bound for r in rows)


def format_bounds_table(rows: list[BoundRow], coded: dict[str, int], artifact_bytes: int,
                        seed_style: int | None = None) -> str:
    """Per tensor and per scheme: bound, per-row bound, zstd-22 alone, the artifact's bytes; then the totals."""
    lines = [f"{'tensor':<34} {'scheme':<16} {'bound B':>11} {'row bound B':>12} {'zstd-22 B':>11} "
             f"{'artifact B':>11} {'/bound':>7}"]

    def line(label, rs):
        b, c = sum(r.bound for r in rs), sum(r.coded for r in rs)
        return (f"{label:<51} {b:>11,.0f} {sum(r.row_bound for r in rs):>12,.0f} "
                f"{sum(r.zstd22 for r in rs):>11,} {c:>11,} {c / b if b else float('nan'):>7.4f}")

    lines += [line(f"{r.name:<34} {r.scheme:<16}", [r]) for r in rows]
    lines.append("-" * 110)
    for scheme in sorted({r.scheme for r in rows}):
        rs = [r for r in rows if r.scheme == scheme]
        lines.append(line(f"  {scheme} ({len(rs)} tensors)", rs))
    lines.append(line("  all tensors", rows))
    bound = artifact_bound(rows, coded)
    lines.append(f"artifact bound (header {HEADER.size} + manifest {coded.get('(manifest)', 0):,} + tensors) "
                 f"{bound:,.0f} B; artifact file {artifact_bytes:,} B = {artifact_bytes / bound:.4f} x bound"
                 + (f"; seed-style torch.save + zstd-22 {seed_style:,} B, artifact = "
                    f"{artifact_bytes / seed_style:.4f} x seed-style" if seed_style else ""))
    return "\n".join(lines)


def seed_style_bytes(qtensors: list[QuantizedTensor], order: list[str], level: int = 22) -> int:
    """Compressed size of the seed's serialization of the same quantized tensors: torch.save of its dict
    layout (quantized values, fp16 scales, passthrough tensors, dtypes, per-tensor scheme), then zstd-22
    (seed-spec §5.2). `order` is the state dict's key order, the order the seed walks its tensors in."""
    by_name = {qt.name: qt for qt in qtensors}
    obj = {"__quant_format__": "mixed_clean_per_row_v1", "quantized": {}, "scales": {}, "dtypes": {},
           "passthrough": {}, "qmeta": {}, "passthrough_orig_dtypes": {}}
    for name in order:
        qt = by_name[name]
        if qt.scale is not None:
            obj["quantized"][name], obj["scales"][name] = qt.data, qt.scale
            obj["dtypes"][name] = str(qt.dtype).removeprefix("torch.")
            obj["qmeta"][name] = {"scheme": "per_row" if qt.scheme == "int6_per_row" else "per_tensor", "axis": 0}
        else:
            obj["passthrough"][name] = qt.data
            if qt.data.dtype != qt.dtype:
                obj["passthrough_orig_dtypes"][name] = str(qt.dtype).removeprefix("torch.")
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(zstandard.ZstdCompressor(level=level).compress(buf.getvalue()))
