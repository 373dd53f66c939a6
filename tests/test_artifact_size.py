"""The artifact against the seed's serialization of the same quantized tensors and against the entropy bound.

PR #598 saves its quantized tensors as a dict (quantized values, fp16 scales, passthrough tensors, dtypes,
per-tensor scheme) with torch.save and compresses the bytes with zstd level 22 (seed-spec §5.2;
quant.bounds.seed_style_bytes). Our artifact holds the same tensors; every byte it spends above that is a byte
of model lost under the 16,000,000 cap. quant.bounds gives the order-0 bound of the stored symbols.
"""
import time

import pytest
import torch
import zstandard

from bench.heavy_tailed import heavy_tailed_state
from model.config import get_config
from model.gpt import GPT
from quant.artifact import (HEADER, MANIFEST_LEN, PAYLOAD_FRAME_BYTES, code_body, compress_body, decode_artifact,
                            encode_artifact, encode_body)
from quant.bounds import artifact_bound, bound_rows, coded_by_tensor, seed_style_bytes
from quant.schemes import quantize_state_dict


def trained_like(seed: int, std: float = 0.04, **overrides) -> GPT:
    """A `tiny`-preset model (with overrides) whose every tensor is non-trivial: block matrices N(0, std^2) (init
    zeroes the out/down projections), a filled bigram table, MLP alpha/beta off their init."""
    torch.manual_seed(seed)
    model = GPT(get_config("tiny", **overrides))
    with torch.no_grad():
        for _, linear in model.block_linears():
            linear.weight.normal_(0, std)
        model.bigram.embed.weight.normal_(0, 0.02)
        for block in model.blocks:
            block.mlp.alpha.uniform_(0.5, 1.5)
            block.mlp.beta.normal_(0, 0.01)
    return model


# In the wider case (3.9M parameters) the format-1 layout (manifest first, one zstd frame) came out 29,606 bytes
# above the seed-style serialization (1,832,311 vs 1,802,705); format 2 writes 1,694,213.
WIDER = dict(model_dim=256, num_layers=6, mlp_hidden=768, ve_layers=(4, 5), xsa_last_n=2)


@pytest.mark.parametrize("seed, std, overrides", [(0, 0.04, {}), (0, 0.05, WIDER)], ids=["tiny", "wider"])
def test_artifact_no_larger_than_seed_torch_save_zstd22(seed, std, overrides):
    model = trained_like(seed, std, **overrides)
    state = model.state_dict()
    qtensors = quantize_state_dict(state)
    ours = len(encode_artifact(qtensors, model.cfg.to_dict()))  # header + all frames: everything on disk
    assert ours <= seed_style_bytes(qtensors, list(state))


def test_format_2_layout_beats_one_frame_and_frames_the_payload_in_blocks():
    """Format 2's layout choice: the manifest in its own frame and the payload in independent 128 KiB frames
    compress better than the same body in one zstd frame (quant.artifact's docstring has the figures)."""
    model = trained_like(0)
    body = encode_body(quantize_state_dict(model.state_dict()), model.cfg.to_dict(), format_version=2)
    one_frame = HEADER.size + len(zstandard.ZstdCompressor(level=22, write_content_size=True).compress(body))
    raw = compress_body(body, format_version=2)
    assert len(raw) < one_frame
    sizes, rest = [], raw[HEADER.size:]
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        sizes.append(len(dobj.decompress(rest)))
        rest = dobj.unused_data
    (mlen,) = MANIFEST_LEN.unpack_from(body)
    assert mlen > 1000 and sizes[0] == MANIFEST_LEN.size + mlen
    assert len(sizes) > 3 and sizes[1:-1] == [PAYLOAD_FRAME_BYTES] * (len(sizes) - 2)
    assert 0 < sizes[-1] <= PAYLOAD_FRAME_BYTES and sum(sizes) == len(body)


def coded_and_bound(qtensors, config, format_version: int = 4) -> tuple[bytes, float]:
    """(artifact bytes in this format, the artifact's order-0 bound in bytes) of quantized tensors."""
    body = encode_body(qtensors, config, format_version=format_version)
    data, segments = code_body(body, format_version=format_version)
    coded = coded_by_tensor(body, segments)
    return data, artifact_bound(bound_rows(qtensors, coded, level=None), coded)


def test_trained_like_tiny_is_at_the_bound_and_under_0_96_of_seed_style():
    """The `tiny` preset drawn from the heavy-tailed fit of the trained demo model (bench.heavy_tailed): format 4
    within 1% of its order-0 bound and under 0.96 x seed-style (the trained model itself, `python -m quant`:
    668,194 bytes, 0.978 x bound, 0.932 x seed-style)."""
    cfg = get_config("tiny")
    state = heavy_tailed_state(cfg, seed=0)
    qtensors = quantize_state_dict(state)
    data, bound = coded_and_bound(qtensors, cfg.to_dict())
    assert len(data) <= 1.01 * bound
    assert len(data) <= 0.96 * seed_style_bytes(qtensors, list(state))


def test_seed_size_trained_like_state_dict_is_under_the_bound_and_decodes_exactly_in_under_a_few_seconds():
    """The seed preset (27M parameters) drawn from the same fit: format 4 under its order-0 bound and at least
    0.8% under format 3 (width contexts: measured 16,663,635 vs 16,836,008 bytes, bound 16,825,405), an exact
    round trip, and a decode that stays within the evaluation clock's budget on one core. 0.96 x seed-style
    (17,055,255 bytes) is not asserted: no lossless coder reaches it on this state dict (`python -m
    bench.heavy_tailed oracle`; format 4 is 0.977 x seed-style)."""
    cfg = get_config("seed")
    qtensors = quantize_state_dict(heavy_tailed_state(cfg, seed=0))
    data, bound = coded_and_bound(qtensors, cfg.to_dict())
    assert len(data) <= bound
    format3 = len(compress_body(encode_body(qtensors, cfg.to_dict(), format_version=3), format_version=3))
    assert len(data) <= 0.992 * format3
    start = time.process_time()
    _, decoded = decode_artifact(data)
    assert time.process_time() - start < 5.0
    for a, b in zip(qtensors, decoded, strict=True):
        assert a.name == b.name and torch.equal(a.data, b.data)
        assert (a.scale is None and b.scale is None) or torch.equal(a.scale, b.scale)
