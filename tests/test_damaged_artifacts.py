"""A loop over damaged artifacts (issue 12): truncations at many offsets, single-bit flips at many offsets, and
re-sealed edits (valid checksums, hostile contents). Each ends `python -m eval` (in-process) with exit status 1
and one error line, and no load allocates more than twice what loading the honest artifact does.

Memory is measured deterministically, as the sum of
  - the peak of Python allocations during the command (tracemalloc: the file's bytes, the decompressed body,
    payload copies, the manifest), and
  - the bytes of every tensor storage created during it (a TorchDispatchMode sees every aten op's outputs and
    counts each new storage once: dequantized weights, model parameters, temporaries; their sum bounds torch's
    peak from above).
The honest figure is that of building the evaluation model from the intact artifact (eval.loading.load_model),
measured after one warm-up load (the first load imports modules, which tracemalloc would count).
"""
import json
import tracemalloc
from unittest import mock

import numpy as np
import pytest
import torch
import zstandard
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import eval.__main__ as eval_cli
from eval.loading import load_model
from model.config import get_config
from model.gpt import GPT
from quant import codec, width_contexts
from quant.artifact import FORMAT_VERSION, HEADER, MANIFEST_LEN, compress_body, encode_body, seal
from quant.schemes import QuantizedTensor, quantize_state_dict

SMALL = dict(model_dim=64, mlp_hidden=128, seq_len=32, rope_train_seq_len=32, bigram_dim=32, ve_dim=32,
             num_layers=2, ve_layers=(1,), xsa_last_n=1, num_heads=2, num_kv_heads=1, bigram_buckets=64)
PAD_BYTES = 32 << 20  # a re-sealed body with this many zero bytes appended: a bomb if it were decompressed


class NewStorageBytes(TorchDispatchMode):
    """Sums the bytes of every tensor storage an aten op creates (not its inputs' storages) while active."""

    def __init__(self):
        super().__init__()
        self.seen: set[int] = set()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage.data_ptr() not in inputs and storage.data_ptr() not in self.seen:
                    self.seen.add(storage.data_ptr())
                    self.bytes += storage.nbytes()
        return out


def measured(fn) -> tuple[object, int]:
    """(fn()'s result or the exception it raised, bytes allocated: Python peak + new tensor storages)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    counter = NewStorageBytes()
    try:
        with counter:
            result = fn()
    except BaseException as e:  # noqa: BLE001 - SystemExit is the expected outcome
        result = e
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    return result, peak + counter.bytes


@pytest.fixture(scope="module")
def honest():
    """(quantized tensors, config dict, artifact bytes) of a small model with non-zero block matrices whose rows
    differ in width (as trained ones do), so that format 4 codes some of them with width contexts."""
    torch.manual_seed(0)
    model = GPT(get_config("tiny", **SMALL))
    with torch.no_grad():
        for _, linear in model.block_linears():
            linear.weight.normal_(0, 0.05).mul_(torch.exp(0.8 * torch.randn(linear.weight.shape[0], 1)))
    qtensors = quantize_state_dict(model.state_dict())
    config = model.cfg.to_dict()
    raw = compress_body(encode_body(qtensors, config), level=3)
    body, cuts, matrices = coding_inputs(raw)
    assert any(s["method"] == "width-contexts" for s in codec.encode(body, cuts, 3, matrices)[1])
    return qtensors, config, raw


def coding_inputs(raw: bytes):
    """(body, cuts, matrices) that quant.codec codes an artifact's body with."""
    from quant.artifact import body_matrices, segment_cuts
    body = honest_body(raw)
    return body, segment_cuts(body), body_matrices(body)


def honest_body(raw: bytes) -> bytes:
    """The decompressed body (u32 manifest length | manifest | payload), through the artifact's own reader."""
    import quant.artifact as artifact
    return artifact.artifact_body(raw) if hasattr(artifact, "artifact_body") else artifact._decompress(raw, "raw")


def edit_manifest(raw: bytes, edit) -> bytes:
    """Re-sealed artifact whose manifest `edit(manifest)` changed (body = u32 length | manifest | payload)."""
    body = honest_body(raw)
    (mlen,) = MANIFEST_LEN.unpack_from(body)
    manifest = json.loads(body[MANIFEST_LEN.size:MANIFEST_LEN.size + mlen])
    edit(manifest)
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return compress_body(MANIFEST_LEN.pack(len(text)) + text + body[MANIFEST_LEN.size + mlen:], level=3)


def with_tensor(qtensors, name, **changes):
    return [QuantizedTensor(**{**qt.__dict__, **changes}) if qt.name == name else qt for qt in qtensors]


def resealed_variants(qtensors, config, raw) -> dict[str, bytes]:
    """Checksum-valid artifacts with hostile or inconsistent contents."""
    def body(qts=qtensors, cfg=config):
        return encode_body(qts, cfg)

    emb = next(qt for qt in qtensors if qt.name == "tok_emb.weight")
    fp32 = next(qt for qt in qtensors if qt.scheme in ("fp32", "fp16") and qt.data.numel() > 1)
    int6 = next(qt for qt in qtensors if qt.scheme == "int6_per_row")
    junk = QuantizedTensor(name="zzz.junk", scheme="fp16", shape=(PAD_BYTES // 2,), dtype=torch.float16,
                           data=torch.zeros(PAD_BYTES // 2, dtype=torch.float16))
    bodies = {
        "vocab_size 50M": body(cfg={**config, "vocab_size": 50_000_000}),
        "num_layers 100000": body(cfg={**config, "num_layers": 100_000}),
        "seq_len 2^20 (RoPE tables)": body(cfg={**config, "seq_len": 1 << 20}),
        "model_dim as text": body(cfg={**config, "model_dim": "64"}),
        "unknown config field": body(cfg={**config, "dropout": 0.1}),
        "config not a dict": body(cfg=[1, 2, 3]),
        "model_dim 128 (shapes no longer fit)": body(cfg={**config, "model_dim": 128}),
        "tensor shape doubled": body(qts=with_tensor(qtensors, emb.name, shape=(2 * emb.shape[0], emb.shape[1]))),
        "tensor missing": body(qts=[qt for qt in qtensors if qt.name != emb.name]),
        "32 MiB extra tensor": body(qts=[*qtensors, junk]),
        "non-finite weights": body(qts=with_tensor(qtensors, fp32.name, data=torch.full_like(fp32.data, float("nan")))),
        "int6 values out of range": body(qts=with_tensor(qtensors, int6.name, data=torch.full_like(int6.data, 100))),
        "32 MiB of zeros after the payload": encode_body(qtensors, config) + bytes(PAD_BYTES),
    }
    variants = {name: compress_body(b, level=3) for name, b in bodies.items()}
    honest = honest_body(raw)  # coded in 64-byte segments: more segment tables than the manifest's tensors need
    fine = codec.encode(honest, list(range(64, len(honest), 64)), level=3)[0]
    variants["segments finer than the manifest's cuts"] = seal(honest, fine)
    for name, codes_edit in {"a width code of 16": lambda c: np.concatenate([[16], c[1:]]),
                             "one width code missing": lambda c: c[1:]}.items():
        variants[name] = seal(honest, coded_with_width_codes(honest, codes_edit))

    def shift_first_span(m):
        m["tensors"][0]["data"][0] += 1

    def overlap_spans(m):
        m["tensors"][1]["data"][0] = m["tensors"][0]["data"][0]

    def huge_span(m):
        m["tensors"][0]["data"][1] = 1 << 40

    def set_field(key, value):
        return lambda m: m.__setitem__(key, value)

    for name, edit in {"span shifted by one byte": shift_first_span, "spans overlap": overlap_spans,
                       "span of 2^40 bytes": huge_span, "format_version +1": set_field("format_version", FORMAT_VERSION + 1),
                       "int6_storage packed": set_field("int6_storage", "packed"),
                       "tensors not a list": set_field("tensors", {"a": 1}),
                       "provenance not a dict": set_field("provenance", "x")}.items():
        variants[name] = edit_manifest(raw, edit)
    return variants


def coded_with_width_codes(body: bytes, codes_edit) -> bytes:
    """The body coded as format 4 does, but every width-context segment's stored codes edited by `codes_edit`."""
    from quant.artifact import body_matrices, segment_cuts

    honest_plan = width_contexts.plan

    def edited_plan(symbols, rows):
        plan = honest_plan(symbols, rows)
        plan.frame = zstandard.ZstdCompressor().compress(codes_edit(plan.codes).astype(np.uint8).tobytes())
        return plan

    with mock.patch.object(width_contexts, "plan", edited_plan):
        return codec.encode(body, segment_cuts(body), 3, body_matrices(body))[0]


def damaged_variants(qtensors, config, raw) -> dict[str, bytes]:
    n = len(raw)
    cuts = sorted({0, 1, 5, HEADER.size - 1, HEADER.size, HEADER.size + 1, n - 1, *range(7, n, max(1, n // 40))})
    variants = {f"truncated to {k} bytes": raw[:k] for k in cuts}
    g = torch.Generator().manual_seed(0)
    flips = list(range(HEADER.size)) + torch.randint(HEADER.size, n, (80,), generator=g).tolist()
    for i, pos in enumerate(flips):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << (i % 8)
        variants[f"bit {i % 8} of byte {pos} flipped"] = bytes(flipped)
    variants.update(resealed_variants(qtensors, config, raw))
    return variants


def test_damaged_artifacts_fail_in_one_line_within_twice_the_honest_memory(honest, corpus, tmp_path, capsys):
    qtensors, config, raw = honest
    path = tmp_path / "model.tgz"
    path.write_bytes(raw)
    load_model(path)  # warm up: the first load imports modules (tens of MB that tracemalloc would count)
    _, honest_bytes = measured(lambda: load_model(path))
    variants = damaged_variants(qtensors, config, raw)
    assert len(variants) > 200 and PAD_BYTES > 4 * honest_bytes  # the padded bodies would break the bound
    worst = {}
    for name, data in variants.items():
        path.write_bytes(data)
        outcome, used = measured(lambda: eval_cli.main([str(path), "--data", str(corpus), "--no-progress"]))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert isinstance(outcome, SystemExit) and outcome.code == 1, (name, outcome)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (name, lines)
        assert used <= 2 * honest_bytes, (name, used, honest_bytes)
        worst[name] = used
    print(f"{len(variants)} damaged artifacts; honest load {honest_bytes:,} B; worst damaged "
          f"{max(worst.values()):,} B ({max(worst, key=worst.get)})")
