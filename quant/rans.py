"""Interleaved rANS in numpy: order-0 entropy coding of byte symbols, one frequency table per segment.

The symbols of every rANS-coded segment of an artifact form one sequence; symbol k of it belongs to lane
k % lanes and is coded at step k // lanes. Each lane is a 64-bit rANS state in [2^32, 2^64) that spills 32-bit
words; at step t the decoder decodes symbols t*lanes .. t*lanes + lanes - 1 at once (numpy over the lanes), and
the lanes whose state fell under 2^32 read the next words of the one shared word stream, in lane order. The
encoder runs the steps backwards and orders its words so that the decoder reads them in its own order (the
interleaving of Giesen's "Interleaved entropy coders", vectorized over lanes instead of SIMD registers).
A 64-bit state against probabilities of at most 16 bits keeps the coding loss negligible (x / f >= 2^16), and
at most one 32-bit word moves per symbol, which is what makes a step a handful of vector operations.

A segment's probabilities are integer frequencies summing to 2^precision (precision 8..16, chosen per segment
by the encoder: finer tables cost more side information); every symbol that occurs has frequency >= 1. All
arithmetic is on integers, so the format is exact on every machine. Stream layout (little-endian):
    u32 lanes | u64 word count | lanes x u64 final states | words x u32
Decoding checks that every lane ends at the encoder's initial state 2^32 (a corrupted stream almost never does).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_LOW = 1 << 32  # lane states live in [STATE_LOW, 2^64)
STATE_LOW_U64 = np.uint64(STATE_LOW)
MIN_PRECISION, MAX_PRECISION = 8, 16
MAX_LANES = 1 << 16
_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


class RansError(ValueError):
    """A rANS table or stream that cannot be decoded."""


def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies (int64, len 256) proportional to `counts`, summing to 2^precision, >= 1 where count > 0.

    Rounds each share (at least 1), then puts a deficit on the most frequent symbol, or takes a surplus one
    unit at a time from the largest frequencies. Needs 2^precision >= the number of distinct symbols."""
    counts = np.asarray(counts, dtype=np.int64)
    total, scale = int(counts.sum()), 1 << precision
    if total <= 0 or int(np.count_nonzero(counts)) > scale:
        raise ValueError(f"{int(np.count_nonzero(counts))} distinct symbols do not fit precision {precision}")
    freq = np.where(counts > 0, np.maximum(1, (counts * scale + total // 2) // total), 0)
    surplus = int(freq.sum()) - scale
    if surplus <= 0:
        freq[int(np.argmax(counts))] -= surplus
    while surplus > 0:
        order = np.argsort(-freq, kind="stable")[:surplus]
        order = order[freq[order] > 1]
        freq[order] -= 1
        surplus -= len(order)
    return freq


def coded_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    """Bits the symbols with these counts take when coded with `freq` (ignoring the lanes' final states)."""
    used = counts > 0
    return float((counts[used] * (precision - np.log2(freq[used]))).sum())


def plan_table(counts: np.ndarray) -> tuple[int, np.ndarray, int, bytes]:
    """(coded bytes incl. table, frequencies, precision, table bytes) of the cheapest precision for symbols with
    these counts (int, len 256): each precision's table size plus the bits its rounded frequencies cost."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    runs = runs_size(counts)
    best = None
    low = max(MIN_PRECISION, int(np.count_nonzero(counts) - 1).bit_length())
    high = max(low, min(MAX_PRECISION, n.bit_length() + 1))  # finer than the counts gains nothing
    for precision in range(low, high + 1):
        freq = quantize_counts(counts, precision)
        size = int(np.ceil(coded_bits(counts, freq, precision) / 8)) + table_size(freq, runs)
        if best is None or size < best[0]:
            best = (size, freq, precision)
    size, freq, precision = best
    return size, freq, precision, encode_table(freq, precision)


def varint(value: int) -> bytes:
    """`value` (>= 0) as a LEB128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(buf, pos: int) -> tuple[int, int]:
    """(value, next position) of the LEB128 varint at buf[pos] (at most 9 bytes)."""
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise RansError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise RansError("varint longer than 9 bytes")


def encode_table(freq: np.ndarray, precision: int) -> bytes:
    """Side information of one segment: precision, then runs of used symbols (gap, length), then frequencies.

    Symbols are ordered as signed bytes (-128..127), so the int6 alphabet -32..31 is one run."""
    signed = np.roll(freq, -128)  # index i holds byte value (i + 128) % 256, i.e. signed value i - 128
    return varint(precision) + _runs_bytes(signed > 0) + _small_varints(signed[signed > 0] - 1)


def table_size(freq: np.ndarray, runs_bytes: int) -> int:
    """len(encode_table(freq, precision)) from the length of its runs part (fixed by which symbols occur)."""
    v = freq[freq > 0] - 1
    return 1 + runs_bytes + len(v) + int(np.count_nonzero(v >= 1 << 7)) + int(np.count_nonzero(v >= 1 << 14))


def runs_size(counts: np.ndarray) -> int:
    """Length of the runs part of the table of a segment with these symbol counts."""
    return len(_runs_bytes(np.roll(counts, -128) > 0))


def _runs_bytes(used_signed: np.ndarray) -> bytes:
    """varint run count, then (gap, length - 1) varints of the runs of used symbols in signed-byte order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], used_signed.astype(np.int8), [0]])))
    begins, ends = edges[0::2].tolist(), edges[1::2].tolist()
    out, position = bytearray(varint(len(begins))), 0
    for begin, end in zip(begins, ends):
        out += varint(begin - position) + varint(end - begin - 1)
        position = end
    return bytes(out)


def _small_varints(values: np.ndarray) -> bytes:
    """LEB128 varints of values in [0, 2^21), vectorized (the frequency part of a table)."""
    v = values.astype(np.int64)
    groups = np.stack([v & 0x7F, (v >> 7) & 0x7F, v >> 14], axis=1)
    length = 1 + (v >= 1 << 7) + (v >= 1 << 14)
    groups[:, :2] |= (np.arange(1, 3)[None, :] < length[:, None]) << 7
    keep = np.arange(3)[None, :] < length[:, None]
    return groups[keep].astype(np.uint8).tobytes()


def decode_table(buf, pos: int) -> tuple[np.ndarray, int, int]:
    """(freq int64 len 256, precision, next position) from encode_table's bytes; RansError when malformed."""
    precision, pos = read_varint(buf, pos)
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise RansError(f"table precision {precision} is outside [{MIN_PRECISION}, {MAX_PRECISION}]")
    n_runs, pos = read_varint(buf, pos)
    if not 1 <= n_runs <= 128:
        raise RansError(f"table has {n_runs} runs of symbols")
    used, position = [], 0
    for _ in range(n_runs):
        gap, pos = read_varint(buf, pos)
        length, pos = read_varint(buf, pos)
        begin, end = position + gap, position + gap + length + 1
        if end > 256:
            raise RansError("table symbols run past 256")
        used.extend(range(begin, end))
        position = end
    signed = np.zeros(256, dtype=np.int64)
    for i in used:
        f, pos = read_varint(buf, pos)
        signed[i] = f + 1
    if int(signed.sum()) != 1 << precision:
        raise RansError(f"table frequencies sum to {int(signed.sum())}, not 2^{precision}")
    return np.roll(signed, 128), precision, pos


@dataclass
class Segment:
    """One rANS-coded run of symbols: its frequencies, their precision, and where its symbols go in `out`."""
    freq: np.ndarray   # int64 (256,), sums to 2^precision
    precision: int
    length: int        # symbols
    out_offset: int    # where decode writes them in the output buffer


def _cumulative(freq: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint64)


def _pieces(starts: np.ndarray, segments: list[Segment], lo: int, hi: int):
    """(segment index, first lane, end lane) of the segments that positions [lo, hi) of the sequence cross."""
    i = int(np.searchsorted(starts, lo, side="right")) - 1
    while lo < hi:
        end = min(hi, int(starts[i]) + segments[i].length)
        yield i, lo, end
        lo, i = end, i + 1


def choose_lanes(n_symbols: int) -> int:
    """Lanes for a sequence: more lanes mean fewer (vectorized) steps but 8 bytes of final state each. At least
    2,048 symbols per lane and at most 4,096 lanes: the states stay near 0.3% of the coded size at 5 bits per
    symbol (0.5% on 27M int6 values at 1.4 bits) and decoding 27M symbols takes well under a second."""
    lanes = 1
    while lanes * 2 <= min(MAX_LANES // 16, max(1, n_symbols // 2048)):
        lanes *= 2
    return lanes


def encode(symbols: np.ndarray, segments: list[Segment], lanes: int) -> bytes:
    """The rANS stream of `symbols` (uint8, the segments' symbols back to back, in order)."""
    n = len(symbols)
    if sum(s.length for s in segments) != n:
        raise ValueError("segment lengths do not add up to the symbols")
    starts = np.cumsum([0] + [s.length for s in segments[:-1]]).astype(np.int64)
    freqs = [s.freq.astype(np.uint64) for s in segments]
    cums = [_cumulative(s.freq) for s in segments]
    x = np.full(lanes, STATE_LOW, dtype=np.uint64)
    words = []
    for t in range((n + lanes - 1) // lanes - 1, -1, -1):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        f = np.empty(hi - lo, dtype=np.uint64)
        c = np.empty(hi - lo, dtype=np.uint64)
        shift = np.empty(hi - lo, dtype=np.uint64)
        for i, a, b in _pieces(starts, segments, lo, hi):
            sym = symbols[a:b]
            f[a - lo:b - lo], c[a - lo:b - lo] = freqs[i][sym], cums[i][sym]
            shift[a - lo:b - lo] = segments[i].precision
        xs = x[:hi - lo]
        spill = (xs >> (np.uint64(64) - shift)) >= f
        words.append((xs[spill] & _U32).astype(np.uint32))
        xs[spill] >>= np.uint64(32)
        xs[:] = ((xs // f) << shift) + (xs % f) + c
    stream = np.concatenate(words[::-1]) if words else np.zeros(0, dtype=np.uint32)
    header = np.array([lanes], dtype="<u4").tobytes() + np.array([len(stream)], dtype="<u8").tobytes()
    return header + x.astype("<u8").tobytes() + stream.astype("<u4").tobytes()


def stream_size(buf, pos: int) -> int:
    """Bytes of the rANS stream starting at buf[pos], from its header; RansError when they run past `buf`."""
    if pos + 12 > len(buf):
        raise RansError("truncated rANS stream header")
    lanes = int(np.frombuffer(buf, dtype="<u4", count=1, offset=pos)[0])
    n_words = int(np.frombuffer(buf, dtype="<u8", count=1, offset=pos + 4)[0])
    if not 1 <= lanes <= MAX_LANES or n_words > len(buf):
        raise RansError(f"rANS stream header is corrupt ({lanes} lanes, {n_words} words)")
    size = 12 + 8 * lanes + 4 * n_words
    if pos + size > len(buf):
        raise RansError("truncated rANS stream")
    return size


def decode(buf, pos: int, segments: list[Segment], out: np.ndarray) -> None:
    """Decode the stream at buf[pos] into `out` (uint8), each segment's symbols at its out_offset.

    The step loop writes into preallocated buffers (numpy's `out=`): a handful of allocations per step, not
    a dozen, which is most of the time on small artifacts."""
    stream_size(buf, pos)
    lanes = int(np.frombuffer(buf, dtype="<u4", count=1, offset=pos)[0])
    n_words = int(np.frombuffer(buf, dtype="<u8", count=1, offset=pos + 4)[0])
    x = np.frombuffer(buf, dtype="<u8", count=lanes, offset=pos + 12).astype(np.uint64)
    words = np.frombuffer(buf, dtype="<u4", count=n_words, offset=pos + 12 + 8 * lanes)
    if np.any(x < np.uint64(STATE_LOW)):
        raise RansError("rANS lane state out of range")
    n = sum(s.length for s in segments)
    starts = np.cumsum([0] + [s.length for s in segments[:-1]]).astype(np.int64)
    slot = np.empty(lanes, dtype=np.int64)  # slots are < 2^16: the same bits read as int64 (indices) or uint64
    slot_u = slot.view(np.uint64)
    sym = np.empty(lanes, dtype=np.uint8)
    tmp = np.empty(lanes, dtype=np.uint64)
    low_mask = np.empty(lanes, dtype=bool)
    tables: dict[int, tuple] = {}
    read = 0
    ends = starts + np.array([s.length for s in segments], dtype=np.int64)
    current = 0  # the segment of the step's first symbol
    for t in range((n + lanes - 1) // lanes):
        lo, hi = t * lanes, min(n, (t + 1) * lanes)
        while ends[current] <= lo:
            current += 1
        pieces = [(current, lo, hi)] if hi <= ends[current] else _pieces(starts, segments, lo, hi)
        for i, a, b in pieces:
            if i not in tables:  # the slot -> symbol table of segment i, built once when its symbols start
                tables = {k: v for k, v in tables.items() if k >= i - 1}
                seg = segments[i]
                tables[i] = (np.repeat(np.arange(256, dtype=np.uint8), seg.freq), seg.freq.astype(np.uint64),
                             _cumulative(seg.freq), np.uint64(seg.precision), np.uint64((1 << seg.precision) - 1))
            slot_sym, freq, cum, shift, mask = tables[i]
            k0, k1 = a - lo, b - lo
            if k1 - k0 == lanes:
                xs, sl, su, sy, tm = x, slot, slot_u, sym, tmp
            else:
                xs, sl, su, sy, tm = x[k0:k1], slot[k0:k1], slot_u[k0:k1], sym[k0:k1], tmp[k0:k1]
            np.bitwise_and(xs, mask, out=su)
            np.take(slot_sym, sl, out=sy)
            np.right_shift(xs, shift, out=xs)
            np.take(freq, sy, out=tm)
            np.multiply(xs, tm, out=xs)
            np.add(xs, su, out=xs)
            np.take(cum, sy, out=tm)
            np.subtract(xs, tm, out=xs)
            offset = segments[i].out_offset + a - int(starts[i])
            out[offset:offset + b - a] = sy
        if hi - lo == lanes:
            np.less(x, STATE_LOW_U64, out=low_mask)
            low = low_mask.nonzero()[0]
        else:
            low = (x[:hi - lo] < STATE_LOW_U64).nonzero()[0]
        if read + len(low) > n_words:
            raise RansError("rANS stream ends early")
        x[low] = (x[low] << _SHIFT32) | words[read:read + len(low)]
        read += len(low)
    if read != n_words or np.any(x != np.uint64(STATE_LOW)):
        raise RansError("rANS stream does not decode to its initial state: it is corrupt")
