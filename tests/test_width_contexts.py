"""quant.width_contexts through quant.codec: exact round trips on awkward matrices, the gain where rows and
columns differ in width, and one clear error for every malformed or misplaced width-context segment."""
import numpy as np
import pytest
import torch
import zstandard

from quant import codec, width_contexts
from quant.artifact import (HEADER, ArtifactError, artifact_body, body_matrices, compress_body, decode_artifact,
                            encode_body, seal, segment_cuts)
from quant.rans import read_varint, varint
from quant.schemes import quantize_state_dict


def widths_matrix(rng, rows, cols, row_spread=0.7, col_spread=0.5, base=4.0, lo=-32, hi=31):
    """Int symbols (as uint8) of a Laplace matrix whose rows and columns have log-normal widths of their own."""
    width = base * np.exp(row_spread * rng.standard_normal((rows, 1)) + col_spread * rng.standard_normal((1, cols)))
    values = np.clip(np.round(rng.laplace(0.0, 1.0, (rows, cols)) * width), lo, hi)
    return values.astype(np.int8).view(np.uint8)


def code_matrices(parts, shapes):
    """(body, coded, report, matrices) of uint8 matrices laid back to back, each a segment that may use width
    contexts."""
    body = b"".join(p.tobytes() for p in parts)
    offsets = np.cumsum([0] + [p.size for p in parts[:-1]]).tolist()
    matrices = {o: s[0] for o, s in zip(offsets, shapes)}
    coded, report = codec.encode(body, offsets[1:], level=3, matrices=matrices)
    return body, coded, report, matrices


def test_round_trip_over_awkward_matrices():
    rng = np.random.default_rng(0)
    shapes = [(200, 300), (1, 1), (1, 300), (300, 1), (7, 13), (40, 40), (50, 64), (97, 257)]
    parts = [widths_matrix(rng, *shapes[0]), np.zeros(1, np.uint8), widths_matrix(rng, 1, 300),
             widths_matrix(rng, 300, 1), widths_matrix(rng, 7, 13),
             np.full(1600, 5, np.uint8),                                      # one symbol: tables alone
             np.repeat(np.array([0, 1, 2, 3], np.uint8)[:, None], 800, 1).reshape(-1),  # one symbol per row
             widths_matrix(rng, 97, 257, 1.5, 0.0, lo=-127, hi=127, base=8.0)]  # int8's range
    body, coded, report, matrices = code_matrices(parts, shapes)
    methods = [r["method"] for r in report]
    assert methods[0] == methods[7] == "width-contexts", methods
    assert bytes(codec.decode(coded, len(body), cuts=list(matrices)[1:], matrices=matrices)) == body


@pytest.mark.parametrize("rows, cols, columns", [(1, 1, True), (5, 1, True), (1, 9, False), (37, 23, True),
                                                 (37, 23, False), (200, 3, True)])
def test_unsort_inverts_the_coding_order_in_blocks(monkeypatch, rows, cols, columns):
    """The decoder's block-wise unsort (counts only, no index per symbol) undoes the encoder's stable sort by
    context, whatever the block size."""
    rng = np.random.default_rng(rows * 100 + cols)
    row_codes = rng.integers(0, 16, rows).astype(np.uint8)
    col_codes = rng.integers(0, 16, cols).astype(np.uint8) if columns else None
    matrix = rng.integers(0, 256, rows * cols).astype(np.uint8)
    coded = matrix[width_contexts.sort_order(width_contexts.contexts_of(row_codes, col_codes, cols))]
    for block in (1, 7, 1 << 16):
        monkeypatch.setattr(width_contexts, "UNSORT_BLOCK", block)
        span = coded.copy()
        width_contexts.unsort(span, row_codes, col_codes)
        assert np.array_equal(span, matrix)


@pytest.mark.parametrize("row_spread, col_spread, most", [(0.7, 0.0, 0.97), (0.0, 0.7, 0.97), (0.7, 0.5, 0.955)])
def test_width_contexts_beat_order_0_where_rows_or_columns_differ(row_spread, col_spread, most):
    """The rank-1 width model pays for itself on rows and on columns of different widths, and the encoder's
    size estimate (tables, codes, each context's share of the stream) is what the file spends."""
    rng = np.random.default_rng(1)
    part = widths_matrix(rng, 256, 384, row_spread, col_spread)
    body, coded, report, matrices = code_matrices([part], [part.shape])
    order0 = codec.rans_plan(part.reshape(-1))[0]
    assert report[0]["method"] == "width-contexts"
    assert report[0]["coded"] <= most * order0
    stream_overhead = 12 + 8 * 64  # the stream header and at most 64 lanes of final states (98k symbols)
    assert report[0]["coded"] <= len(coded) <= report[0]["coded"] + stream_overhead + len(varint(3)) + 8
    assert bytes(codec.decode(coded, len(body), matrices=matrices)) == body


def test_identical_widths_keep_order_0():
    """Where every row and column has one width the contexts cannot pay for their tables: order-0 rANS stays."""
    rng = np.random.default_rng(2)
    part = widths_matrix(rng, 128, 128, 0.0, 0.0)
    _, _, report, _ = code_matrices([part], [part.shape])
    assert report[0]["method"] == "rans"


def single_width_segment(rng):
    part = widths_matrix(rng, 64, 800, 1.2, 0.0, base=2.0)
    body, coded, report, matrices = code_matrices([part], [part.shape])
    assert report[0]["method"] == "width-contexts"
    return body, coded, matrices


def rebuilt_with_codes(coded, codes: bytes, columns: int | None = None) -> bytes:
    """The coded single-segment body with its codes' frame (and optionally its columns flag) replaced."""
    pos = 0
    for _ in range(3):  # segment count, method, length
        _, pos = read_varint(coded, pos)
    flag, after_flag = read_varint(coded, pos)
    frame_len, frame_at = read_varint(coded, after_flag)
    frame = zstandard.ZstdCompressor(level=3).compress(codes)
    return (bytes(coded[:pos]) + varint(flag if columns is None else columns) + varint(len(frame)) + frame
            + bytes(coded[frame_at + frame_len:]))


def test_malformed_width_segments_fail_with_one_clear_error():
    rng = np.random.default_rng(3)
    body, coded, matrices = single_width_segment(rng)
    n = len(body)
    with pytest.raises(codec.CodecError, match="where no matrix starts"):
        codec.decode(coded, n)  # format 3 names no matrices: a width segment is refused
    with pytest.raises(codec.CodecError, match="where no matrix starts"):
        codec.decode(coded, n, matrices={1: 64})
    with pytest.raises(codec.CodecError, match="not a matrix of 7 rows"):
        codec.decode(coded, n, matrices={0: 7})
    with pytest.raises(codec.CodecError, match="width code 16 is over 15"):
        codec.decode(rebuilt_with_codes(coded, bytes([16] * 64), columns=0), n, matrices=matrices)
    with pytest.raises(codec.CodecError, match="codes frame holds 63 bytes, its header says 64"):
        codec.decode(rebuilt_with_codes(coded, bytes(63), columns=0), n, matrices=matrices)
    with pytest.raises(codec.CodecError, match="columns flag 2"):
        codec.decode(rebuilt_with_codes(coded, bytes(64), columns=2), n, matrices=matrices)
    with pytest.raises(codec.CodecError):
        codec.decode(coded[:len(coded) // 2], n, matrices=matrices)
    flipped = bytearray(coded)
    flipped[-9] ^= 0x40  # a word of the stream
    with pytest.raises(codec.CodecError):
        codec.decode(bytes(flipped), n, matrices=matrices)


def varied_state_dict():
    """A small state dict whose matrices have rows of different widths (as trained ones do)."""
    g = torch.Generator().manual_seed(4)
    rows = torch.exp(0.8 * torch.randn(96, 1, generator=g))
    return {"blocks.0.mlp.up.weight": 0.05 * rows * torch.randn(96, 64, generator=g),
            "tok_emb.weight": 0.05 * torch.exp(0.8 * torch.randn(300, 1, generator=g))
            * torch.randn(300, 256, generator=g),
            "blocks.0.mlp.alpha": torch.ones(64)}


def test_format_4_writes_width_contexts_and_format_3_is_still_read_and_never_holds_them():
    qts = quantize_state_dict(varied_state_dict())
    config = {"model_dim": 64}
    v4 = compress_body(encode_body(qts, config), level=3)
    v3 = compress_body(encode_body(qts, config, format_version=3), level=3, format_version=3)
    assert HEADER.unpack_from(v4)[1] == 4 and HEADER.unpack_from(v3)[1] == 3 and len(v4) < len(v3)
    for raw in (v3, v4):
        _, decoded = decode_artifact(raw)
        for a, b in zip(sorted(qts, key=lambda q: q.name), decoded, strict=True):
            assert a.name == b.name and torch.equal(a.data, b.data)
    body4 = artifact_body(v4)
    assert sorted(body_matrices(body4).values()) == [96, 300]
    body3 = bytearray(body4)  # the same body and coding with the manifest saying 3, sealed as format 3
    body3[body3.index(b'"format_version":4')+17] = ord("3")
    body3 = bytes(body3)
    relabelled = seal(body3, codec.encode(body3, segment_cuts(body3), 3, body_matrices(body3))[0], 3)
    with pytest.raises(ArtifactError, match="where no matrix starts"):
        decode_artifact(relabelled)
