"""The coding layer of artifact formats 3 and 4: body bytes <-> coded bytes, one method per segment.

The body (u32 manifest length | manifest | payload, as in format 2) is cut into segments at the places the
caller names (quant.artifact cuts at the manifest's end, at every tensor's data and scale span, and between
the byte planes of floating-point arrays, so each segment holds symbols of one distribution). Each segment is
coded with whichever of these is smallest, measured:
    raw    the bytes as they are (near-uniform bytes: float mantissas, the low bytes of scales);
    zstd   one zstd frame (the manifest; repetitive data);
    rANS   order-0 interleaved rANS with the segment's own frequency table (quant.rans): the quantized weights;
    width  (format 4, the int6/int8 matrices the caller names) rANS with one table per width context
           (quant.width_contexts): matrices whose rows or columns differ in width.
zstd is measured at level 1, and at the requested level only where level 1 already beats raw and rANS: on
the int6 matrices of the seed-size heavy-tailed state dict (bench.heavy_tailed) level 22 came out 0.2-4% larger
than level 1, and over 27 MB it would take most of the encoding time.

Coded layout (varints are LEB128):
    varint segment count | per segment: varint method | varint decoded length | method data | rANS stream
where a raw segment's data is its bytes, a zstd segment's is varint coded length | frame, a rANS segment's
is its frequency table, and a width segment's is its codes and one table per context (quant.width_contexts);
the symbols of all rANS and width segments share the one interleaved stream at the end (a segment or context
of one repeated symbol is its table alone).
Decoding allocates the body once and never writes past the length the caller expects; given the cuts (the
artifact's manifest), it accepts only the segments encode makes for them, so no file holds more segment tables
than its tensors need. Any inconsistency is a CodecError naming the problem.
"""
from __future__ import annotations

import numpy as np
import zstandard

from quant import rans, width_contexts
from quant.rans import read_varint, varint

RAW, ZSTD, RANS, WIDTH = 0, 1, 2, 3
METHOD_NAMES = {RAW: "raw", ZSTD: "zstd", RANS: "rans", WIDTH: "width-contexts"}


class CodecError(ValueError):
    """Coded bytes that do not decode to a body of the expected length."""


def rans_plan(data: np.ndarray) -> tuple[int, np.ndarray, int, bytes]:
    """(coded bytes incl. table, frequencies, precision, table bytes) of the cheapest rANS precision for `data`."""
    return rans.plan_table(np.bincount(data, minlength=256))


def choose_method(data: bytes, level: int, rows: int | None = None) -> tuple[int, int, object]:
    """(method, measured coded size, what encode needs) of the smallest coding of one segment; `rows` (a
    matrix segment's row count) adds the width-context option."""
    options = [(len(data), RAW, None)]
    if data:
        symbols = np.frombuffer(data, dtype=np.uint8)
        size, freq, precision, table = rans_plan(symbols)
        options.append((size, RANS, (freq, precision, table)))
        if rows:
            context_plan = width_contexts.plan(symbols, rows)
            options.append((context_plan.size, WIDTH, context_plan))
        best_other = min(options)[0]
        fast = zstandard.ZstdCompressor(level=1).compress(data)
        frames = [fast]
        if len(fast) < best_other and level != 1:
            frames.append(zstandard.ZstdCompressor(level=level).compress(data))
        options += [(len(varint(len(frame))) + len(frame), ZSTD, frame) for frame in frames]
    size, method, extra = min(options, key=lambda o: (o[0], o[1]))
    return method, size, extra


def encode(body: bytes, cuts: list[int], level: int,
           matrices: dict[int, int] | None = None) -> tuple[bytes, list[dict]]:
    """(coded bytes, one {offset, length, method, coded} per segment) for `body` cut at `cuts` (body offsets);
    `matrices` ({segment offset: rows}) names the segments that may be coded with width contexts."""
    bounds = segment_bounds(len(body), cuts)
    out = bytearray(varint(len(bounds) - 1))
    report, rans_segments, rans_symbols = [], [], []
    for a, b in zip(bounds, bounds[1:]):
        data = body[a:b]
        method, size, extra = choose_method(data, level, (matrices or {}).get(a))
        out += varint(method) + varint(b - a)
        if method == RAW:
            out += data
        elif method == ZSTD:
            out += varint(len(extra)) + extra
        elif method == WIDTH:
            out += extra.method_data()
            coding_order = np.frombuffer(data, dtype=np.uint8)[width_contexts.sort_order(extra.contexts)]
            start = a
            for k, freq, precision, _ in extra.tables:
                n = int(extra.counts[k])
                if np.count_nonzero(freq) > 1:
                    rans_segments.append(rans.Segment(freq, precision, n, start))
                    rans_symbols.append(coding_order[start - a:start - a + n])
                start += n
        else:
            freq, precision, table = extra
            out += table
            if np.count_nonzero(freq) > 1:  # one symbol costs nothing and is not in the stream
                rans_segments.append(rans.Segment(freq, precision, b - a, a))
                rans_symbols.append(np.frombuffer(data, dtype=np.uint8))
        report.append({"offset": a, "length": b - a, "method": METHOD_NAMES[method], "coded": size})
    if rans_segments:
        symbols = np.concatenate(rans_symbols)
        out += rans.encode(symbols, rans_segments, rans.choose_lanes(len(symbols)))
    return bytes(out), report


def inflate(frame, length: int, what: str = "a zstd segment") -> bytes:
    """A zstd frame's content, refusing one that holds anything but exactly `length` bytes (`what` names the
    frame in the error)."""
    with zstandard.ZstdDecompressor().stream_reader(frame) as reader:
        data = reader.read(length + 1)
        while len(data) <= length:
            more = reader.read(length + 1 - len(data))
            if not more:
                break
            data += more
    if len(data) != length:
        raise CodecError(f"{what} holds {len(data)}{'+' if len(data) > length else ''} bytes, "
                         f"its header says {length}")
    return data


def read_prefix(coded, size: int) -> bytes:
    """The first `size` body bytes, from the raw or zstd segments at the start (the manifest's, for the
    loader's checks before the body is decoded in full)."""
    out = bytearray()
    count, pos = read_varint(coded, 0)
    for _ in range(count):
        if len(out) >= size:
            break
        method, pos = read_varint(coded, pos)
        length, pos = read_varint(coded, pos)
        if method == RAW:
            out += coded[pos:pos + length]
            pos += length
        elif method == ZSTD:
            coded_len, pos = read_varint(coded, pos)
            out += inflate(coded[pos:pos + coded_len], length)
            pos += coded_len
        else:
            raise CodecError(f"the body's first {size} bytes are not in raw or zstd segments")
    if len(out) < size:
        raise CodecError(f"the coded body ends after {len(out)} bytes, before its manifest does")
    return bytes(out[:size])


def segment_bounds(body_size: int, cuts: list[int]) -> list[int]:
    """The segments' boundaries (0, the cuts inside the body, body_size), as encode lays them."""
    return sorted({0, body_size, *(c for c in cuts if 0 < c < body_size)})


def decode(coded, body_size: int, cuts: list[int] | None = None,
           matrices: dict[int, int] | None = None) -> bytearray:
    """The body that `coded` holds; CodecError unless it decodes to exactly `body_size` bytes and, when `cuts`
    are given, its segments are exactly those encode makes for them. Width-context segments are accepted only
    at the offsets `matrices` ({offset: rows}) names (format 4); without it, none are."""
    bounds = segment_bounds(body_size, cuts) if cuts is not None else None
    try:
        return _decode(memoryview(coded), body_size, bounds, matrices or {})
    except (rans.RansError, width_contexts.WidthContextError) as e:
        raise CodecError(str(e)) from e
    except zstandard.ZstdError as e:
        raise CodecError(f"corrupt zstd segment ({e})") from e


def _decode(coded: memoryview, body_size: int, bounds: list[int] | None, matrices: dict[int, int]) -> bytearray:
    count, pos = read_varint(coded, 0)
    if count > body_size + 1 or (bounds is not None and count != len(bounds) - 1):
        raise CodecError(f"{count} segments for a {body_size}-byte body"
                         + (f" whose manifest makes {len(bounds) - 1}" if bounds is not None else ""))
    body = bytearray(body_size)
    view = np.frombuffer(body, dtype=np.uint8) if body_size else np.zeros(0, dtype=np.uint8)
    offset, rans_segments, to_unsort = 0, [], []
    for i in range(count):
        method, pos = read_varint(coded, pos)
        length, pos = read_varint(coded, pos)
        if offset + length > body_size:
            raise CodecError(f"the segments hold more than the header's {body_size} bytes")
        if bounds is not None and offset + length != bounds[i + 1]:
            raise CodecError(f"a segment at body offset {offset} ends at {offset + length}, not where the "
                             "manifest's tensors cut the body")
        if method == RAW:
            if pos + length > len(coded):
                raise CodecError("a raw segment runs past the end of the file")
            body[offset:offset + length] = coded[pos:pos + length]
            pos += length
        elif method == ZSTD:
            coded_len, pos = read_varint(coded, pos)
            if pos + coded_len > len(coded):
                raise CodecError("a zstd segment runs past the end of the file")
            body[offset:offset + length] = inflate(coded[pos:pos + coded_len], length)
            pos += coded_len
        elif method == RANS:
            freq, precision, pos = rans.decode_table(coded, pos)
            if np.count_nonzero(freq) > 1:
                rans_segments.append(rans.Segment(freq, precision, length, offset))
            else:
                view[offset:offset + length] = int(np.flatnonzero(freq)[0])
        elif method == WIDTH:
            if offset not in matrices:
                raise CodecError(f"a width-context segment at body offset {offset}, where no matrix starts")
            row_codes, col_codes, tables, counts, pos = width_contexts.read_method_data(
                coded, pos, matrices[offset], length, inflate)
            start = offset
            for k, freq, precision in tables:
                n = int(counts[k])
                if np.count_nonzero(freq) > 1:
                    rans_segments.append(rans.Segment(freq, precision, n, start))
                else:
                    view[start:start + n] = int(np.flatnonzero(freq)[0])
                start += n
            to_unsort.append((offset, length, row_codes, col_codes))
        else:
            raise CodecError(f"unknown segment method {method}")
        offset += length
    if offset != body_size:
        raise CodecError(f"the segments hold {offset} bytes, the header says {body_size}")
    if rans_segments:
        end = pos + rans.stream_size(coded, pos)
        rans.decode(coded, pos, rans_segments, view)
        pos = end
    if pos != len(coded):
        raise CodecError(f"{len(coded) - pos} bytes follow the coded body")
    for offset, length, row_codes, col_codes in to_unsort:
        width_contexts.unsort(view[offset:offset + length], row_codes, col_codes)
    return body
