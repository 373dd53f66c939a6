"""quant.rans and quant.codec: exact round trips, sizes at the entropy, and one clear error for bad input."""
import numpy as np
import pytest

from quant import codec, rans


def laplace_int6(rng, n, b=6.0):
    return np.clip(np.round(rng.laplace(0, b, n)), -32, 31).astype(np.int8).view(np.uint8)


def plan_segments(parts):
    """rANS Segments (cheapest precision each) for a list of uint8 arrays, laid out back to back."""
    segments, offset = [], 0
    for part in parts:
        _, freq, precision, _ = codec.rans_plan(part)
        segments.append(rans.Segment(freq, precision, len(part), offset))
        offset += len(part)
    return segments


def entropy_bytes(data):
    counts = np.bincount(data, minlength=256)
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts / len(data))).sum() / 8)


@pytest.mark.parametrize("lanes", [1, 7, 64])
def test_round_trip_over_awkward_segments(lanes):
    rng = np.random.default_rng(0)
    parts = [laplace_int6(rng, 20_000), np.full(300, 7, np.uint8), rng.integers(0, 256, 5000).astype(np.uint8),
             np.array([255], np.uint8), laplace_int6(rng, 3, b=1.0), rng.integers(0, 2, 999).astype(np.uint8)]
    segments = plan_segments(parts)
    symbols = np.concatenate(parts)
    stream = rans.encode(symbols, segments, lanes)
    assert rans.stream_size(stream, 0) == len(stream)
    out = np.zeros(len(symbols), np.uint8)
    rans.decode(stream, 0, segments, out)
    assert np.array_equal(out, symbols)


def test_coded_size_is_at_the_entropy():
    rng = np.random.default_rng(1)
    data = laplace_int6(rng, 200_000)
    size, freq, precision, table = codec.rans_plan(data)
    stream = rans.encode(data, [rans.Segment(freq, precision, len(data), 0)], rans.choose_lanes(len(data)))
    h = entropy_bytes(data)
    assert len(table) < 100 and size - len(table) <= h * 1.001 + 1
    assert len(stream) + len(table) <= h * 1.002 + len(table) + 12 + 8 * rans.choose_lanes(len(data))


def test_quantized_frequencies_sum_to_the_precision_and_keep_every_symbol():
    rng = np.random.default_rng(2)
    for counts in (np.bincount(rng.integers(0, 256, 300), minlength=256),  # many rare symbols at precision 8
                   np.bincount(laplace_int6(rng, 100_000), minlength=256), np.eye(256, dtype=np.int64)[3] * 9):
        for precision in range(int(np.count_nonzero(counts) - 1).bit_length() or 1, 17):
            if precision < rans.MIN_PRECISION:
                continue
            freq = rans.quantize_counts(counts, precision)
            assert freq.sum() == 1 << precision and np.array_equal(freq > 0, counts > 0)
            table = rans.encode_table(freq, precision)
            back, p, end = rans.decode_table(table, 0)
            assert np.array_equal(back, freq) and p == precision and end == len(table)
            assert rans.table_size(freq, rans.runs_size(counts)) == len(table)
    with pytest.raises(ValueError, match="do not fit precision"):
        rans.quantize_counts(np.ones(256, np.int64), 7)


@pytest.mark.parametrize("table, problem", [(b"\x07\x01\x00\x00\x00", "precision 7"), (b"\x08\x00", "0 runs"),
                                            (b"\x08\x01\xff\x01\x05", "run past 256"),
                                            (b"\x08\x01\x00\x00\x05", "sum to 6"), (b"\x08\x01", "truncated")])
def test_malformed_tables_are_rejected(table, problem):
    with pytest.raises(rans.RansError, match=problem):
        rans.decode_table(table, 0)


def test_corrupt_streams_are_rejected():
    rng = np.random.default_rng(3)
    data = laplace_int6(rng, 50_000)
    segments = plan_segments([data])
    stream = bytearray(rans.encode(data, segments, 16))
    for pos in (20, len(stream) // 2, len(stream) - 1):
        bad = bytearray(stream)
        bad[pos] ^= 0x10
        with pytest.raises(rans.RansError):
            rans.decode(bytes(bad), 0, segments, np.zeros(len(data), np.uint8))
    with pytest.raises(rans.RansError, match="truncated"):
        rans.decode(bytes(stream[:-4]), 0, segments, np.zeros(len(data), np.uint8))


def test_codec_picks_the_smallest_method_per_segment_and_round_trips():
    rng = np.random.default_rng(4)
    text = b'{"name": "x", "shape": [4, 4]} ' * 40  # repetitive: zstd
    noise = rng.integers(0, 256, 4000).astype(np.uint8).tobytes()  # uniform: raw
    weights = laplace_int6(rng, 30_000).tobytes()  # int6-like: rANS
    body = text + noise + weights
    coded, report = codec.encode(body, [len(text), len(text) + len(noise)], level=3)
    assert [r["method"] for r in report] == ["zstd", "raw", "rans"]
    assert report[2]["coded"] < entropy_bytes(np.frombuffer(weights, np.uint8)) * 1.01 + 100
    assert bytes(codec.decode(coded, len(body))) == body
    assert codec.read_prefix(coded, 100) == body[:100]
    with pytest.raises(codec.CodecError, match="1 bytes follow"):
        codec.decode(coded + b"\x00", len(body))
    with pytest.raises(codec.CodecError):
        codec.decode(coded[:-5], len(body))
    with pytest.raises(codec.CodecError, match="more than the header"):
        codec.decode(coded, len(body) - 1)
    with pytest.raises(codec.CodecError, match="not in raw or zstd"):
        codec.read_prefix(coded, len(body))
    empty, _ = codec.encode(b"", [], level=3)
    assert codec.decode(empty, 0) == bytearray()
