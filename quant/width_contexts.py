"""Width contexts: the coding model of artifact format 4 for a quantized matrix (int6 per row, int8 per tensor).

A trained weight matrix is not one distribution. Its rows (output units) and columns (input features) have
widths of their own, and a per-row int6 scale takes out only part of that: rows held at the scale floor keep
their own width, and the int8 per-tensor embeddings keep all of it. Order-0 coding with one table per matrix
pays for the mixture. Format 4 models the symbol at (row r, column c) with a rank-1 model of its log-width:

    context k = a_r + b_c,   a_r, b_c in 0..MAX_CODE (small integers stored in the file),

one rANS frequency table per context that occurs (quant.rans). The encoder picks the codes: a_r is
round(log2(mean |q| + 1/2 over row r) / step), centred on the median row and clipped to 0..MAX_CODE, and b_c
the same over columns, or all zero (rows only); `plan` measures the step / rows-only candidates and keeps
the smallest, and quant.codec keeps plain order-0 rANS, zstd or raw where they are smaller. The decoder never
computes a width: it reads the codes, so decoding involves no floating point.

Method data (after quant.codec's method and length varints; the matrix's row count comes from the manifest):
    varint columns flag (0: every b_c is 0, 1: column codes follow the row codes)
    varint frame length | zstd frame of the codes, one byte each: a_0 .. a_{R-1} [, b_0 .. b_{C-1}]
    one quant.rans table per context k = 0 .. 2*MAX_CODE that occurs, in increasing k
The matrix's symbols are coded context by context (context 0's symbols in row-major order, then context
1's, ...) as rANS segments of the artifact's one interleaved stream; the decoder writes them into the matrix's
span in that order and then puts every symbol back in its place (`unsort`).

Measured with `python -m quant` (bytes, 2026-12-03; quant.artifact has all three models), format 4 against
format 3 (order-0 segments only):
    trained tiny demo model           668,194 vs   673,682   (8 of its 25 matrices take width contexts)
    seed preset after 400 CPU steps 7,004,198 vs 7,427,476   (64 of 69; after 16 steps 5,846,839 vs 5,928,693)
    seed-size heavy-tailed draw    16,663,635 vs 16,836,008  (67 of 69; no lossless coder goes under
                                                              16,552,471 there: bench.heavy_tailed_oracle)
Per-row frequency classes chosen by Lloyd iterations instead of the row codes saved another 0.12% on the last,
and finer steps or 31 codes nothing: not kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zstandard

from quant import rans

MAX_CODE = 15
N_CONTEXTS = 2 * MAX_CODE + 1
STEPS = (0.25, 0.5)  # log2-width resolutions the encoder tries (quarter and half octaves)
CODES_LEVEL = 19


class WidthContextError(ValueError):
    """Method data of a width-context segment that cannot be decoded."""


@dataclass
class ContextPlan:
    """How one matrix is coded: its codes, the zstd frame holding them, and one table per context."""
    columns: bool
    codes: np.ndarray           # uint8: the R row codes, then the C column codes when `columns`
    frame: bytes                # zstd frame of `codes`
    contexts: np.ndarray        # uint8 (R*C,): the context of every symbol, row-major
    tables: list[tuple[int, np.ndarray, int, bytes]]  # (context, freq, precision, table bytes) per context used
    counts: np.ndarray          # int64 (N_CONTEXTS,): symbols per context
    size: int                   # bytes of the method data plus the symbols' estimated share of the stream

    def method_data(self) -> bytes:
        return (rans.varint(int(self.columns)) + rans.varint(len(self.frame)) + self.frame
                + b"".join(t[3] for t in self.tables))


def contexts_of(row_codes: np.ndarray, col_codes: np.ndarray | None, cols: int) -> np.ndarray:
    """Every symbol's context a_r + b_c (uint8, row-major) from the codes."""
    b = col_codes if col_codes is not None else np.zeros(cols, dtype=np.uint8)
    return (row_codes[:, None] + b[None, :]).reshape(-1)


def width_codes(magnitude_means: np.ndarray, step: float) -> np.ndarray:
    """Codes (uint8, 0..MAX_CODE) of log2 widths quantized to `step`, centred on their median."""
    log_width = np.log2(magnitude_means + 0.5)
    codes = np.rint((log_width - np.median(log_width)) / step) + MAX_CODE // 2
    return np.clip(codes, 0, MAX_CODE).astype(np.uint8)


def _candidate(symbols: np.ndarray, rows: int, row_codes, col_codes) -> ContextPlan:
    cols = symbols.size // rows
    codes = row_codes if col_codes is None else np.concatenate([row_codes, col_codes])
    frame = zstandard.ZstdCompressor(level=CODES_LEVEL).compress(codes.tobytes())
    contexts = contexts_of(row_codes, col_codes, cols)
    joint = np.bincount(contexts.astype(np.int64) * 256 + symbols, minlength=N_CONTEXTS * 256)
    joint = joint.reshape(N_CONTEXTS, 256)
    counts = joint.sum(axis=1)
    tables, size = [], 0
    for k in np.flatnonzero(counts).tolist():
        k_size, freq, precision, table = rans.plan_table(joint[k])
        tables.append((k, freq, precision, table))
        size += k_size
    columns = col_codes is not None
    size += len(rans.varint(int(columns))) + len(rans.varint(len(frame))) + len(frame)
    return ContextPlan(columns, codes, frame, contexts, tables, counts, size)


def plan(symbols: np.ndarray, rows: int) -> ContextPlan:
    """The smallest width-context coding of a matrix's symbols (uint8, row-major, `rows` rows) over STEPS
    x (rows only, rows and columns), each context's table chosen by quant.rans.plan_table."""
    if rows <= 0 or symbols.size % rows:
        raise ValueError(f"{symbols.size} symbols do not make a matrix of {rows} rows")
    magnitude = np.abs(symbols.view(np.int8).astype(np.int64)).reshape(rows, -1)
    row_means = magnitude.sum(axis=1) / magnitude.shape[1]
    col_means = magnitude.sum(axis=0) / magnitude.shape[0]
    best = None
    for step in STEPS:
        row_codes = width_codes(row_means, step)
        for col_codes in (None, width_codes(col_means, step)):
            candidate = _candidate(symbols, rows, row_codes, col_codes)
            if best is None or candidate.size < best.size:
                best = candidate
    return best


def sort_order(contexts: np.ndarray) -> np.ndarray:
    """The positions of a matrix's symbols in coding order (by context, row-major within one): the encoder's
    side of `unsort`."""
    return np.argsort(contexts, kind="stable")


def read_method_data(buf, pos: int, rows: int, length: int, inflate):
    """(row codes, column codes or None, [(context, freq, precision)] per context used, symbols per context, next
    position) of a width-context segment whose method data starts at buf[pos]; `inflate(frame, n, what)` is
    quant.codec's length-checked zstd inflation. WidthContextError when the data is malformed."""
    if rows <= 0 or length % rows:
        raise WidthContextError(f"a {length}-byte segment is not a matrix of {rows} rows")
    cols = length // rows
    columns, pos = rans.read_varint(buf, pos)
    if columns not in (0, 1):
        raise WidthContextError(f"columns flag {columns} is neither 0 nor 1")
    frame_len, pos = rans.read_varint(buf, pos)
    if pos + frame_len > len(buf):
        raise WidthContextError("the codes' frame runs past the end of the file")
    n_codes = rows + (cols if columns else 0)
    codes = np.frombuffer(inflate(buf[pos:pos + frame_len], n_codes, "a width-context segment's codes frame"),
                          dtype=np.uint8)
    pos += frame_len
    if codes.size and int(codes.max()) > MAX_CODE:
        raise WidthContextError(f"a width code {int(codes.max())} is over {MAX_CODE}")
    row_codes, col_codes = codes[:rows], (codes[rows:] if columns else None)
    counts = _context_counts_by_row(row_codes, col_codes, cols).sum(axis=0)
    tables = []
    for k in np.flatnonzero(counts).tolist():
        freq, precision, pos = rans.decode_table(buf, pos)
        tables.append((k, freq, precision))
    return row_codes, col_codes, tables, counts, pos


def _context_counts_by_row(row_codes: np.ndarray, col_codes: np.ndarray | None, cols: int) -> np.ndarray:
    """(R, N_CONTEXTS) int64: how many symbols of each row fall in each context (never an R x C array)."""
    if col_codes is not None:
        per_code = np.bincount(col_codes, minlength=MAX_CODE + 1)
    else:
        per_code = np.zeros(MAX_CODE + 1, dtype=np.int64)
        per_code[0] = cols  # every column has code 0
    out = np.zeros((len(row_codes), N_CONTEXTS), dtype=np.int64)
    shift = np.arange(MAX_CODE + 1)
    out[np.arange(len(row_codes))[:, None], row_codes[:, None].astype(np.int64) + shift[None, :]] = per_code
    return out


def _rank_among_equal(codes: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements hold the same code."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(codes)]))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - run_start
    return rank


UNSORT_BLOCK = 1 << 16  # symbols gathered per step of unsort: bounds its index arrays, whatever the matrix's size


def unsort(span: np.ndarray, row_codes: np.ndarray, col_codes: np.ndarray | None) -> None:
    """Put a matrix's symbols, decoded in coding order into `span`, back in row-major order (in place).

    The symbol at (r, c) with context k = a_r + b_c sits, in coding order, at the start of context k, plus the
    symbols of context k in the rows before r, plus the columns before c in row r with the same column code: all
    computed from (R x N_CONTEXTS) counts, so the extra memory is one copy of the matrix plus a block of
    UNSORT_BLOCK indices, not an index per symbol (a hostile file naming a huge matrix cannot multiply it)."""
    rows = len(row_codes)
    cols = span.size // rows
    b = col_codes.astype(np.int64) if col_codes is not None else np.zeros(cols, dtype=np.int64)
    by_row = _context_counts_by_row(row_codes, col_codes, cols)
    context_start = np.concatenate([[0], np.cumsum(by_row.sum(axis=0))[:-1]])
    before = np.cumsum(by_row, axis=0) - by_row + context_start[None, :]  # first slot of (row, context)
    column_rank = _rank_among_equal(b)
    coded_order = span.copy()
    block_rows = max(1, UNSORT_BLOCK // max(1, cols))
    for r0 in range(0, rows, block_rows):
        r1 = min(rows, r0 + block_rows)
        k = row_codes[r0:r1, None].astype(np.int64) + b[None, :]
        slots = np.take_along_axis(before[r0:r1], k, axis=1) + column_rank[None, :]
        span[r0 * cols:r1 * cols] = coded_order[slots.reshape(-1)]
