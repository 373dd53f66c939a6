"""quant.artifact: round trip within half a step, determinism, both int6 storages, corruption rejected, no pickle."""
import hashlib
import json
import pickle

import pytest
import torch
import zstandard

from quant import codec
from quant.artifact import (FORMAT_VERSION, HEADER, MAGIC, MANIFEST_LEN, ArtifactError, artifact_body,
                            compress_body, decode_artifact, encode_artifact, encode_body, load_artifact,
                            body_matrices, load_artifact_int6, save_artifact, seal, segment_cuts)
from kernels.int6_layout import pack_int6, unpack_int6
from quant.schemes import quantize_state_dict

CONFIG = {"num_layers": 1, "model_dim": 64, "ve_layers": [0], "backend": "eager", "rope_base": 10000.0}


def small_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 70, generator=g) * torch.logspace(-2, 0.5, 48)[:, None]
    w[::5, 3] *= 20  # outliers, so clipping is exercised
    return {
        "blocks.0.attn.q.weight": w,
        "blocks.0.mlp.down.weight": torch.randn(64, 33, generator=g) * 2.0,
        "tok_emb.weight": (torch.randn(520, 128, generator=g) * 0.02).to(torch.bfloat16),  # 66,560 > 65,536
        "blocks.0.mlp.alpha": torch.randn(96, generator=g),
        "blocks.0.attn.q_gain": torch.full((4,), 1.5),
        "bigram.scale": torch.tensor(0.05),
        "step_counter": torch.tensor([3, 4], dtype=torch.int64),
    }


@pytest.fixture(scope="module")
def artifact_bytes():
    return encode_artifact(quantize_state_dict(small_state_dict()), CONFIG, level=3)


@pytest.mark.parametrize("storage", ["int8", "packed"])
def test_round_trip_within_half_a_step(tmp_path, storage):
    sd = small_state_dict()
    path = tmp_path / "m.tgolf"
    written = save_artifact(sd, CONFIG, path, int6_storage=storage, level=3)
    assert written == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["m.tgolf"]  # atomic write leaves no temp file
    config, out = load_artifact(path)
    assert config == CONFIG and sorted(out) == sorted(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
    _, _, int6 = load_artifact_int6(path)
    assert sorted(int6) == ["blocks.0.attn.q.weight", "blocks.0.mlp.down.weight"]
    for name, (packed, scales) in int6.items():
        w, deq = sd[name], out[name]
        s = scales[:, None]
        assert scales.dtype == torch.float32 and packed.dtype == torch.uint8
        torch.testing.assert_close(unpack_int6(packed, w.shape[1]).float() * s, deq, rtol=0, atol=0)
        inside = (w >= -32 * s) & (w <= 31 * s)
        assert bool(((w - deq).abs() <= s / 2 * (1 + 1e-5))[inside].all()), name
    emb = sd["tok_emb.weight"].float()
    step = emb.abs().max() / 127
    bf16_rounding = emb.abs() * 2.0 ** -8  # dequantized values are cast back to bf16
    assert bool(((out["tok_emb.weight"].float() - emb).abs() <= step * 0.501 + bf16_rounding).all())
    assert torch.equal(out["blocks.0.attn.q_gain"], sd["blocks.0.attn.q_gain"])
    assert torch.equal(out["bigram.scale"], sd["bigram.scale"])
    assert torch.equal(out["blocks.0.mlp.alpha"], sd["blocks.0.mlp.alpha"].half().float())
    assert torch.equal(out["step_counter"], sd["step_counter"])


def test_both_int6_storages_decode_to_the_same_tensors():
    qts = quantize_state_dict(small_state_dict())
    _, a = decode_artifact(encode_artifact(qts, CONFIG, "int8", level=1))
    _, b = decode_artifact(encode_artifact(qts, CONFIG, "packed", level=1))
    for x, y in zip(a, b):
        assert x.name == y.name and torch.equal(x.data, y.data)
        assert (x.scale is None and y.scale is None) or torch.equal(x.scale, y.scale)


def test_deterministic_bytes_regardless_of_insertion_order(artifact_bytes):
    sd = small_state_dict()
    reordered = dict(reversed(list(sd.items())))
    assert encode_artifact(quantize_state_dict(reordered), dict(reversed(list(CONFIG.items()))), level=3) \
        == artifact_bytes


def test_level_22_on_a_small_payload(tmp_path):
    path = tmp_path / "m22.tgolf"
    n22 = save_artifact(small_state_dict(), CONFIG, path, level=22)
    n1 = len(encode_artifact(quantize_state_dict(small_state_dict()), CONFIG, level=1))
    assert n22 < n1
    assert sorted(load_artifact(path)[1]) == sorted(small_state_dict())


def test_body_layout_is_json_manifest_plus_raw_payload(artifact_bytes):
    magic, version, size, frame_digest, body_digest = HEADER.unpack_from(artifact_bytes)
    assert magic == MAGIC and version == FORMAT_VERSION == 4
    coded = artifact_bytes[HEADER.size:]
    body = artifact_body(artifact_bytes)
    assert bytes(codec.decode(coded, size, matrices=body_matrices(body))) == body
    assert hashlib.sha256(artifact_bytes[:16] + body_digest + coded).digest() == frame_digest  # header fields too
    flipped = bytearray(artifact_bytes)
    flipped[HEADER.size - 1] ^= 1  # the body digest: caught by the first digest, before any decoding
    with pytest.raises(ArtifactError, match="checksum mismatch in the compressed bytes"):
        decode_artifact(bytes(flipped))
    assert len(body) == size and hashlib.sha256(body).digest() == body_digest
    (mlen,) = MANIFEST_LEN.unpack_from(body)
    assert codec.read_prefix(coded, MANIFEST_LEN.size + mlen) == body[:MANIFEST_LEN.size + mlen]
    manifest = json.loads(body[MANIFEST_LEN.size:MANIFEST_LEN.size + mlen])
    assert manifest["format_version"] == 4 and manifest["config"] == CONFIG and manifest["int6_storage"] == "int8"
    names = [e["name"] for e in manifest["tensors"]]
    assert names == sorted(small_state_dict())
    payload_len = len(body) - MANIFEST_LEN.size - mlen
    spans = sorted(tuple(e[k]) for e in manifest["tensors"] for k in ("data", "scale") if e[k])
    assert sum(length for _, length in spans) == payload_len  # spans tile the payload exactly
    assert all(a[0] + a[1] == b[0] for a, b in zip(spans, spans[1:]))
    alpha = next(e for e in manifest["tensors"] if e["name"] == "blocks.0.mlp.alpha")  # fp16: two byte planes
    offset, length = alpha["data"]
    planes = torch.frombuffer(bytearray(body[mlen + 4 + offset:][:length]), dtype=torch.uint8).view(2, -1)
    want = small_state_dict()["blocks.0.mlp.alpha"].half()
    assert torch.equal(planes.t().contiguous().view(torch.float16).reshape(-1), want)
    cuts = segment_cuts(body)  # segments: the manifest, then each tensor span, floats split into byte planes
    assert cuts[0] == MANIFEST_LEN.size + mlen and MANIFEST_LEN.size + mlen + offset + length // 2 in cuts


def test_format_2_files_are_still_read():
    qts = quantize_state_dict(small_state_dict())
    old = compress_body(encode_body(qts, CONFIG, format_version=2), level=3, format_version=2)
    assert HEADER.unpack_from(old)[1] == 2
    frames = old[HEADER.size:]  # format 2: the manifest frame, then the payload in zstd frames
    head = zstandard.ZstdDecompressor().decompressobj().decompress(frames)
    assert artifact_body(old).startswith(head) and len(head) == MANIFEST_LEN.size + MANIFEST_LEN.unpack_from(head)[0]
    config, a = decode_artifact(old)
    _, b = decode_artifact(encode_artifact(qts, CONFIG, level=3))
    assert config == CONFIG and [x.name for x in a] == [y.name for y in b]
    for x, y in zip(a, b):
        assert torch.equal(x.data, y.data) and (x.scale is None or torch.equal(x.scale, y.scale))
    mismatched = compress_body(encode_body(qts, CONFIG, format_version=2), level=3)  # a v4 header, a v2 manifest
    with pytest.raises(ArtifactError, match="format_version is not the header's 4"):
        decode_artifact(mismatched)


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "m.tgolf"
    save_artifact(small_state_dict(), CONFIG, path, level=1)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load used while loading an artifact")
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert sorted(load_artifact(path)[1]) == sorted(small_state_dict())
    assert load_artifact_int6(path)[2]


@pytest.mark.parametrize("keep", [0, 5, HEADER.size - 1, HEADER.size, HEADER.size + 3, "half", -1])
def test_truncated_files_are_rejected(tmp_path, artifact_bytes, keep):
    n = len(artifact_bytes) // 2 if keep == "half" else keep % len(artifact_bytes) if keep < 0 else keep
    path = tmp_path / "cut.tgolf"
    path.write_bytes(artifact_bytes[:n])
    with pytest.raises(ArtifactError, match=r"cut\.tgolf.*(truncated|corrupt)"):
        load_artifact(path)


def test_every_bit_flip_is_rejected(artifact_bytes):
    g = torch.Generator().manual_seed(0)
    positions = list(range(HEADER.size + 8)) + torch.randint(HEADER.size, len(artifact_bytes), (60,),
                                                               generator=g).tolist()
    for pos in positions:
        bit = pos % 8
        flipped = bytearray(artifact_bytes)
        flipped[pos] ^= 1 << bit
        with pytest.raises(ArtifactError):
            decode_artifact(bytes(flipped), where=f"flip@{pos}")


def test_wrong_magic_unknown_version_and_trailing_bytes(artifact_bytes):
    with pytest.raises(ArtifactError, match="magic"):
        decode_artifact(b"PK\x03\x04" + artifact_bytes[4:])
    bumped = HEADER.pack(MAGIC, 99, *HEADER.unpack_from(artifact_bytes)[2:]) + artifact_bytes[HEADER.size:]
    with pytest.raises(ArtifactError, match="version 99"):
        decode_artifact(bumped)
    old = HEADER.pack(MAGIC, 1, *HEADER.unpack_from(artifact_bytes)[2:]) + artifact_bytes[HEADER.size:]
    with pytest.raises(ArtifactError, match="version 1 is no longer supported; re-run python -m quant"):
        decode_artifact(old)
    with pytest.raises(ArtifactError, match="corrupt"):
        decode_artifact(artifact_bytes + b"\x00junk")


def test_segments_other_than_the_manifests_cuts_are_rejected(artifact_bytes):
    body = artifact_body(artifact_bytes)
    cuts = segment_cuts(body)
    for other in ([c for c in cuts if c != cuts[2]], cuts + [cuts[1] + 1]):  # one cut missing, one extra
        coded = codec.encode(body, other, level=3)[0]
        with pytest.raises(ArtifactError, match="segments for a .* whose manifest makes"):
            decode_artifact(seal(body, coded))


def test_inconsistent_manifest_is_rejected():
    manifest = {"format_version": FORMAT_VERSION, "config": {}, "int6_storage": "int8",
                "tensors": [{"name": "x", "shape": [4], "dtype": "float32", "stored_dtype": "float32",
                             "scheme": "fp32", "data": [0, 100], "scale": None}]}
    text = json.dumps(manifest).encode()
    body = MANIFEST_LEN.pack(len(text)) + text + bytes(16)
    with pytest.raises(ArtifactError, match="does not hold"):
        decode_artifact(compress_body(body, level=1))
    text = json.dumps(dict(manifest, tensors=[dict(manifest["tensors"][0], scheme="int4")])).encode()
    with pytest.raises(ArtifactError, match="unknown scheme"):
        decode_artifact(compress_body(MANIFEST_LEN.pack(len(text)) + text + bytes(16), level=1))


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        load_artifact(tmp_path / "missing.tgolf")
    with pytest.raises(ValueError, match="JSON"):
        save_artifact(small_state_dict(), {"dtype": torch.float32}, tmp_path / "x.tgolf", level=1)
    with pytest.raises(ValueError, match="int6 storage"):
        save_artifact(small_state_dict(), CONFIG, tmp_path / "x.tgolf", int6_storage="int4", level=1)
    assert not list(tmp_path.iterdir())


def test_int6_kernel_path_matches_dequantized_weights(tmp_path):
    from kernels.reference import int6_linear
    path = tmp_path / "m.tgolf"
    save_artifact(small_state_dict(), CONFIG, path, level=1)
    _, state, int6 = load_artifact_int6(path)
    packed, scales = int6["blocks.0.attn.q.weight"]
    x = torch.randn(3, 70, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(int6_linear(x, packed, scales, 70), x @ state["blocks.0.attn.q.weight"].T)
    assert torch.equal(packed, pack_int6(unpack_int6(packed, 70)))
