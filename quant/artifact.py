"""The compressed model artifact: a pickle-free, deterministic, checksummed file (seed-spec §5.2 replacement).

File layout (all integers little-endian):
    magic   b"TGOLF\\x00"                   6 bytes
    version u16 (4, FORMAT_VERSION; 2 and 3 are still read)  2 bytes
    size    u64: body bytes                  8 bytes
    sha256  of the fields above, the next   32 bytes (rejects flips a decoder would decode "correctly" anyway,
            and the coded bytes                       and flipped header fields before any decoding;
                                                      formats 3, 4; format 2: of the coded bytes alone)
    sha256  of the body                     32 bytes
    the coded body.
The body is u32 manifest length | manifest (UTF-8 JSON, sorted keys) | payload (tensor bytes). The manifest holds
the format version, the model config dict, the int6 storage mode and, per tensor (sorted by name): name, shape,
original dtype, scheme, stored dtype, and the [offset, length] of its data and of its fp16 scale(s) in the
payload. Payload order groups tensors by scheme (int6 values, int8 values, fp16, fp32, raw) and puts all scales
last; every floating-point array (passthrough tensors, scales) is stored as byte planes (byte 0 of every
element, then byte 1, ...). There are no timestamps: equal weights give equal bytes.

Format 4 (the default) codes the body in segments (quant.codec): the manifest, each tensor's values, each byte
plane of its floats and scales, each with the smallest of raw, zstd, order-0 interleaved rANS with the
segment's own frequency table (quant.rans) and, for the 2-D int6/int8 matrices, rANS with one table per width
context (quant.width_contexts: a rank-1 model of each symbol's log-width from its row and column). Format 3 is
the same without width contexts; format 2 coded the body as zstd-22 frames: one for the manifest, then the
payload in independent frames of PAYLOAD_FRAME_BYTES (128 KiB; zstd-22 on near-random bytes is chaotic, and
independent one-block frames were 3.1% smaller than one frame on a trained seed proxy). All three are read.
Measured with `python -m quant` (bytes, 2026-12-03; the bound is quant.bounds' order-0 bound of the stored
symbols with side information; seed-style is torch.save of the same quantized tensors + zstd-22):
                                  tiny demo, 300 steps   seed preset, 400 CPU steps  seed-size heavy-tailed
    format 2                             679,533                7,804,124                 17,024,248
    format 3                             673,682                7,427,476                 16,836,008
    format 4                             668,194                7,004,198                 16,663,635
    order-0 bound                        683,159                7,442,189                 16,825,405
    seed-style torch.save + zstd-22      716,939                8,091,061                 17,055,255
    format 4 / seed-style                 0.9320                   0.8657                     0.9770
  (the seed preset trained on the embedded corpus with batch 2048, seq 512, 400 steps, EMA weights (README,
  Artifact): every int6 row at the scale floor, so rows keep widths of their own and width contexts save 5.7%
  over format 3 (after 16 steps: 5,846,839 vs 5,928,693, 1.4%); the heavy-tailed state
  dict is bench.heavy_tailed's draw from the trained tiny model's rows, 4.84 bits per int6 value, where zstd-22
  alone per tensor is already within 1.4% of the order-0 bound. Its rows are independent draws, so the width
  of a row is all a coder can learn, and `python -m bench.heavy_tailed oracle` bounds every lossless coder
  from below with the generator's own per-row law.)
  Decoding the seed-size heavy-tailed file takes 0.47-0.63 s (three decode_artifact calls, 2 cores).

Int6 values are stored either one per int8 byte ("int8", the default) or bit-packed 4-in-3 bytes with
kernels.int6_layout ("packed"). The coders see symbols in the int8 containers; packing smears each value across byte
boundaries (format 1, zstd, seed-size state dicts, `python -m quant --compare-storage`: GPT init 5,150,896
(int8) vs 5,719,524 (packed) bytes).

Loading never unpickles: the payload is read with torch.frombuffer. Truncated, bit-flipped, wrong-magic or
unknown-version files raise ArtifactError naming the file and the problem; format 1 files are refused with
"re-run python -m quant".
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
import zstandard

from common.atomic import atomic_write
from kernels.int6_layout import pack_int6, packed_row_bytes, unpack_int6
from quant import codec
from quant.schemes import (DEFAULT_SCALE_FLOOR, SCHEMES, QuantizedTensor, dequantize,
                           quantize_state_dict)

MAGIC = b"TGOLF\x00"
FORMAT_VERSION = 4
READ_VERSIONS = (2, 3, 4)  # formats 2 (zstd frames) and 3 (order-0 segments) are still read and can still be written
MATRIX_SCHEMES = ("int6_per_row", "int8_per_tensor")
HEADER = struct.Struct("<6sHQ32s32s")
MANIFEST_LEN = struct.Struct("<I")
INT6_STORAGES = ("int8", "packed")
DEFAULT_INT6_STORAGE = "int8"
DEFAULT_LEVEL = 22
MAX_BODY_BYTES = 1 << 31  # refuse to inflate anything claiming to be over 2 GiB
PAYLOAD_FRAME_BYTES = 1 << 17  # zstd's largest block: every payload frame is one block (see the docstring)
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool)}
_PAYLOAD_GROUP = {scheme: i for i, scheme in enumerate(SCHEMES)}


class ArtifactError(ValueError):
    """An artifact file that cannot be read: wrong magic, unknown version, truncated or corrupt."""


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype} cannot be stored in an artifact (supported: {sorted(_DTYPES)})")
    return name


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def stored_data(qt: QuantizedTensor, int6_storage: str = DEFAULT_INT6_STORAGE) -> torch.Tensor:
    """The tensor whose bytes hold `qt`'s values on disk (int6 values bit-packed when int6_storage="packed")."""
    if int6_storage not in INT6_STORAGES:
        raise ValueError(f"unknown int6 storage {int6_storage!r}; choose one of {INT6_STORAGES}")
    if qt.scheme == "int6_per_row" and int6_storage == "packed":
        return pack_int6(qt.data)
    return qt.data


def _payload_bytes(t: torch.Tensor) -> bytes:
    """A tensor's bytes as the payload holds them: floating-point elements as byte planes (byte 0 of every
    element, then byte 1, ...), so zstd sees the near-constant sign/exponent bytes apart from the mantissas."""
    t = t.detach().cpu().contiguous()
    if not t.is_floating_point() or t.element_size() == 1 or not t.numel():
        return _tensor_bytes(t)
    return _tensor_bytes(t.reshape(-1).view(torch.uint8).view(-1, t.element_size()).t())


def stored_bytes(qt: QuantizedTensor, int6_storage: str = DEFAULT_INT6_STORAGE) -> bytes:
    """All payload bytes of one tensor: its stored values, then its fp16 scale(s) if any."""
    scale = _payload_bytes(qt.scale.to(torch.float16)) if qt.scale is not None else b""
    return _payload_bytes(stored_data(qt, int6_storage)) + scale


def encode_body(qtensors: list[QuantizedTensor], config: dict, int6_storage: str = DEFAULT_INT6_STORAGE,
                provenance: dict | None = None, format_version: int = FORMAT_VERSION) -> bytes:
    """The uncompressed body (manifest length, manifest, payload) for already-quantized tensors; `provenance`
    (common.provenance: tokenizer fingerprint, data identity) goes into the manifest, compacted, when given."""
    if int6_storage not in INT6_STORAGES:
        raise ValueError(f"unknown int6 storage {int6_storage!r}; choose one of {INT6_STORAGES}")
    qtensors = sorted(qtensors, key=lambda qt: qt.name)
    stored = {qt.name: stored_data(qt, int6_storage) for qt in qtensors}
    chunks, entries, offset = [], {}, 0
    for qt in sorted(qtensors, key=lambda qt: (_PAYLOAD_GROUP[qt.scheme], qt.name)):
        raw = _payload_bytes(stored[qt.name])
        entries[qt.name] = {"name": qt.name, "shape": list(qt.shape), "dtype": _dtype_name(qt.dtype),
                            "scheme": qt.scheme, "stored_dtype": _dtype_name(stored[qt.name].dtype),
                            "data": [offset, len(raw)], "scale": None}
        chunks.append(raw)
        offset += len(raw)
    for qt in qtensors:
        if qt.scale is not None:
            raw = _payload_bytes(qt.scale.to(torch.float16))
            entries[qt.name]["scale"] = [offset, len(raw)]
            chunks.append(raw)
            offset += len(raw)
    if format_version not in READ_VERSIONS:
        raise ValueError(f"artifact format {format_version} cannot be written (choose one of {READ_VERSIONS})")
    manifest = {"format_version": format_version, "config": config, "int6_storage": int6_storage,
                "tensors": [entries[qt.name] for qt in qtensors]}
    if provenance is not None:
        from common.provenance import artifact_provenance
        manifest["provenance"] = artifact_provenance(provenance)
    try:
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":"),
                                    allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact manifest is not JSON-serializable (check the config dict): {e}") from e
    return MANIFEST_LEN.pack(len(manifest_bytes)) + manifest_bytes + b"".join(chunks)


def compress_body(body: bytes, level: int = DEFAULT_LEVEL, format_version: int = FORMAT_VERSION) -> bytes:
    """The complete artifact bytes for a body: the header, then the coded body. Formats 4 (the default) and 3 code
    each segment of segment_cuts(body) with its smallest method (quant.codec: width contexts in format 4 only,
    rANS, zstd at `level`, raw);
    format 2 writes one zstd frame holding the manifest length and manifest, then the payload in independent
    frames of PAYLOAD_FRAME_BYTES. The body's manifest should name the same format_version."""
    if format_version in (3, 4):
        return code_body(body, level, format_version)[0]
    if format_version == 2:
        split = min(len(body), MANIFEST_LEN.size + MANIFEST_LEN.unpack_from(body)[0]) if len(body) >= 4 else len(body)
        pieces = [body[:split]] + [body[i:i + PAYLOAD_FRAME_BYTES]
                                   for i in range(split, len(body), PAYLOAD_FRAME_BYTES)]
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        coded = b"".join(cctx.compress(piece) for piece in pieces)
    else:
        raise ValueError(f"artifact format {format_version} cannot be written (choose one of {READ_VERSIONS})")
    return seal(body, coded, format_version)


def seal(body: bytes, coded: bytes, format_version: int = FORMAT_VERSION) -> bytes:
    """Header + coded bytes. Formats 3 and 4's first digest covers the header's other fields too, so a flipped size or
    body digest is caught before the body is decoded; format 2's covers the coded bytes alone."""
    body_digest = hashlib.sha256(body).digest()
    return HEADER.pack(MAGIC, format_version, len(body), _coded_digest(format_version, len(body), body_digest, coded),
                       body_digest) + coded


def _coded_digest(version: int, body_size: int, body_digest: bytes, coded: bytes) -> bytes:
    if version == 2:
        return hashlib.sha256(coded).digest()
    return hashlib.sha256(struct.pack("<6sHQ", MAGIC, version, body_size) + body_digest + coded).digest()


def code_body(body: bytes, level: int = DEFAULT_LEVEL,
              format_version: int = FORMAT_VERSION) -> tuple[bytes, list[dict]]:
    """(format 3 or 4 artifact bytes, quant.codec's report of each segment's offset, length, method, coded
    size). Format 4 lets the int6/int8 matrices use width contexts (quant.width_contexts); format 3 does not."""
    if format_version not in (3, 4):
        raise ValueError(f"code_body writes formats 3 and 4, not {format_version}")
    matrices = body_matrices(body) if format_version == 4 else None
    coded, report = codec.encode(body, segment_cuts(body), level, matrices)
    return seal(body, coded, format_version), report


def _body_manifest(body: bytes):
    """(parsed manifest or None when it does not parse, payload offset) of a body."""
    start = MANIFEST_LEN.size + MANIFEST_LEN.unpack_from(body)[0]
    try:
        return json.loads(body[MANIFEST_LEN.size:start].decode("utf-8")), start
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, start


def body_matrices(body: bytes) -> dict[int, int]:
    """manifest_matrices of a body (none when its manifest does not parse)."""
    if len(body) < MANIFEST_LEN.size:
        return {}
    return manifest_matrices(*_body_manifest(body))


def manifest_matrices(manifest, start: int) -> dict[int, int]:
    """{body offset: rows} of the segments format 4 may code with width contexts: the data spans of the 2-D
    int6/int8 matrices stored one value per byte (not bit-packed int6)."""
    out = {}
    try:
        for e in manifest["tensors"]:
            shape, (offset, length) = e["shape"], e["data"]
            if (e["scheme"] in MATRIX_SCHEMES and e["stored_dtype"] == "int8" and len(shape) == 2
                    and isinstance(shape[0], int) and shape[0] > 0 and length == shape[0] * shape[1]):
                out[start + offset] = shape[0]
    except (KeyError, TypeError, ValueError):
        return {}
    return out


def segment_cuts(body: bytes) -> list[int]:
    """Where formats 3 and 4 cut a body into segments: the manifest's end, and within the payload every tensor's data
    and scale span, split further between the byte planes of floating-point arrays (each plane is a
    distribution of its own). A body whose manifest does not parse is cut at the manifest's end alone."""
    if len(body) < MANIFEST_LEN.size:
        return []
    manifest, start = _body_manifest(body)
    return manifest_cuts(manifest, start, len(body))


def manifest_cuts(manifest, start: int, body_size: int) -> list[int]:
    """segment_cuts from a parsed manifest (None or malformed: the manifest's end alone); `start` is the
    payload's offset in the body. The decoder requires exactly these segments, so a file cannot make it hold
    more segment tables than its manifest's tensors need."""
    cuts = [start]
    try:
        spans = []
        for e in manifest["tensors"]:
            spans.append((e["data"], _DTYPES[e["stored_dtype"]]))
            if e.get("scale") is not None:
                spans.append((e["scale"], torch.float16))
        for (offset, length), dtype in spans:
            planes = torch.empty((), dtype=dtype).element_size() if dtype.is_floating_point else 1
            step = length // planes if length % planes == 0 else length
            cuts += [start + offset + k * step for k in range(planes + 1) if step]
    except (KeyError, TypeError, ValueError):
        return [start]
    return sorted({c for c in cuts if isinstance(c, int) and start <= c <= body_size})


def encode_artifact(qtensors: list[QuantizedTensor], config: dict, int6_storage: str = DEFAULT_INT6_STORAGE,
                    level: int = DEFAULT_LEVEL) -> bytes:
    """Artifact bytes for already-quantized tensors."""
    return compress_body(encode_body(qtensors, config, int6_storage), level)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically (common.atomic)."""
    atomic_write(path, [data])


def save_artifact(state_dict: dict[str, torch.Tensor], config_dict: dict, path: str | os.PathLike, *,
                  clip: str = "per-row", int6_storage: str = DEFAULT_INT6_STORAGE,
                  scale_floor: float = DEFAULT_SCALE_FLOOR, level: int = DEFAULT_LEVEL) -> int:
    """Quantize `state_dict`, write the artifact atomically to `path`, and return the bytes written."""
    qtensors = quantize_state_dict(state_dict, clip=clip, scale_floor=scale_floor)
    data = encode_artifact(qtensors, config_dict, int6_storage, level)
    write_atomic(path, data)
    return len(data)


def _manifest_precheck(read_prefix, body_size: int, where: str, check_manifest=None) -> dict:
    """Before the body is decoded in full (quant.validate): read only its manifest (the body starts with
    u32 length + manifest; `read_prefix(n)` gives the body's first n bytes), refuse payload bytes no tensor
    uses (so a body is never larger than its tensors need), and run the caller's `check_manifest(manifest)`
    (e.g. the model config's bounds). If the manifest moves in the body layout, keep this check ahead of the
    payload's decoding. Returns the manifest."""
    from quant.validate import check_manifest_spans

    try:
        (mlen,) = MANIFEST_LEN.unpack(read_prefix(MANIFEST_LEN.size))
        if MANIFEST_LEN.size + mlen > body_size:
            raise ArtifactError(f"{where}: manifest length {mlen} runs past the {body_size}-byte body")
        text = read_prefix(MANIFEST_LEN.size + mlen)[MANIFEST_LEN.size:]
        try:
            manifest = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{where}: manifest is not valid UTF-8 JSON ({e})") from e
        check_manifest_spans(manifest, body_size - MANIFEST_LEN.size - mlen, where)
        if check_manifest is not None:
            check_manifest(manifest)
    except ArtifactError:
        raise
    except ValueError as e:
        raise ArtifactError(str(e)) from e
    return manifest


def _decompress(raw: bytes, where: str, check_manifest=None) -> tuple[bytes, int]:
    """(verified body, format version) of artifact bytes."""
    if len(raw) < HEADER.size:
        raise ArtifactError(f"{where}: truncated artifact: {len(raw)} bytes, the header alone needs {HEADER.size}")
    magic, version, body_size, frame_digest, body_digest = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ArtifactError(f"{where}: not a triton-golf artifact (magic {magic!r}, expected {MAGIC!r})")
    if version == 1:
        raise ArtifactError(f"{where}: artifact format version 1 is no longer supported; re-run python -m quant")
    if version not in READ_VERSIONS:
        raise ArtifactError(f"{where}: unsupported artifact format version {version} (this code reads "
                            f"versions {', '.join(map(str, READ_VERSIONS))})")
    if body_size > MAX_BODY_BYTES:
        raise ArtifactError(f"{where}: header claims a {body_size}-byte body, over the {MAX_BODY_BYTES} limit; "
                            "the file is corrupt")
    coded = raw[HEADER.size:]
    if _coded_digest(version, body_size, body_digest, coded) != frame_digest:
        raise ArtifactError(f"{where}: checksum mismatch in the compressed bytes: the artifact is truncated or "
                            "corrupt")
    try:
        if version == 2:
            from quant.validate import read_frame_prefix

            _manifest_precheck(lambda n: read_frame_prefix(coded, n, where), body_size, where, check_manifest)
            body = _decompress_frames(coded, body_size, where)
        else:
            manifest = _manifest_precheck(lambda n: codec.read_prefix(coded, n), body_size, where, check_manifest)
            start = MANIFEST_LEN.size + MANIFEST_LEN.unpack(codec.read_prefix(coded, MANIFEST_LEN.size))[0]
            matrices = manifest_matrices(manifest, start) if version == 4 else None
            body = codec.decode(coded, body_size, manifest_cuts(manifest, start, body_size), matrices)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"{where}: corrupt or truncated compressed body ({e})") from e
    except codec.CodecError as e:
        raise ArtifactError(f"{where}: corrupt or truncated coded body ({e})") from e
    if len(body) != body_size:
        raise ArtifactError(f"{where}: body is {len(body)} bytes, the header says {body_size}; the file is corrupt")
    if hashlib.sha256(body).digest() != body_digest:
        raise ArtifactError(f"{where}: checksum mismatch: the artifact is corrupt")
    return body, version


def _decompress_frames(data: bytes, body_size: int, where: str) -> bytearray:
    """The body from all its frames (manifest, payload pieces), inflating at most body_size + 1 bytes."""
    body = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True) as reader:
        while len(body) <= body_size:
            chunk = reader.read(body_size + 1 - len(body))
            if not chunk:
                break
            body += chunk
    if len(body) < body_size:
        raise ArtifactError(f"{where}: truncated artifact: the compressed body ends after {len(body)} of "
                            f"{body_size} bytes")
    if len(body) > body_size:
        raise ArtifactError(f"{where}: the compressed body holds more than the header's {body_size} bytes; "
                            "the file is corrupt")
    return body


def artifact_body(raw: bytes, where: str = "artifact") -> bytes:
    """The verified, decompressed body (u32 manifest length | manifest | payload) of artifact bytes."""
    return _decompress(raw, where)[0]


def _entry_tensor(payload: bytes, span, dtype: torch.dtype, shape: tuple[int, ...], what: str) -> torch.Tensor:
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and v >= 0 for v in span)):
        raise ArtifactError(f"{what}: bad payload span {span!r}")
    offset, length = span
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = 1
    for d in shape:
        numel *= d
    if offset + length > len(payload) or length != numel * itemsize:
        raise ArtifactError(f"{what}: payload span {span} does not hold {tuple(shape)} {dtype} "
                            f"(payload is {len(payload)} bytes)")
    if length == 0:
        return torch.empty(shape, dtype=dtype)
    buf = torch.frombuffer(bytearray(payload[offset:offset + length]), dtype=torch.uint8)  # fresh, aligned copy
    if dtype.is_floating_point and itemsize > 1:  # stored as byte planes (_payload_bytes)
        buf = buf.view(itemsize, -1).t().reshape(-1)
    return buf.view(dtype).reshape(shape)


def _parse_entry(e, payload: bytes, int6_storage: str, where: str) -> QuantizedTensor:
    if not isinstance(e, dict) or not isinstance(e.get("name"), str):
        raise ArtifactError(f"{where}: malformed tensor entry in the manifest: {e!r:.200}")
    what = f"{where}: tensor {e['name']!r}"
    try:
        shape = tuple(int(d) for d in e["shape"])
        dtype, stored_dtype = _DTYPES[e["dtype"]], _DTYPES[e["stored_dtype"]]
        scheme = e["scheme"]
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{what}: malformed manifest entry ({err!r})") from err
    if scheme not in SCHEMES or any(d < 0 for d in shape):
        raise ArtifactError(f"{what}: unknown scheme {scheme!r} or bad shape {shape}")
    expected = {"int6_per_row": torch.uint8 if int6_storage == "packed" else torch.int8,
                "int8_per_tensor": torch.int8, "fp32": torch.float32, "fp16": torch.float16}.get(scheme, dtype)
    if stored_dtype != expected:
        raise ArtifactError(f"{what}: scheme {scheme} is stored as {expected}, manifest says {stored_dtype}")
    data_shape = shape
    if scheme == "int6_per_row":
        if len(shape) != 2:
            raise ArtifactError(f"{what}: int6 tensor must be 2-D, manifest says {shape}")
        if int6_storage == "packed":
            data_shape = (shape[0], packed_row_bytes(shape[1]))
    data = _entry_tensor(payload, e["data"], stored_dtype, data_shape, what)
    if scheme == "int6_per_row" and int6_storage == "packed":
        data = unpack_int6(data, shape[1])
    elif scheme == "int6_per_row" and data.numel() and (int(data.min()) < -32 or int(data.max()) > 31):
        raise ArtifactError(f"{what}: int6 values outside [-32, 31]")
    scale = None
    if scheme in ("int6_per_row", "int8_per_tensor"):
        scale_shape = (shape[0],) if scheme == "int6_per_row" else ()
        scale = _entry_tensor(payload, e.get("scale"), torch.float16, scale_shape, what + " scale")
    return QuantizedTensor(name=e["name"], scheme=scheme, shape=shape, dtype=dtype, data=data, scale=scale)


def decode_artifact(raw: bytes, where: str = "artifact", check_manifest=None) -> tuple[dict, list[QuantizedTensor]]:
    """Parse artifact bytes into (config dict, quantized tensors); `where` names the source in errors.

    `check_manifest(manifest)` runs before the payload is decompressed (see _manifest_precheck)."""
    body, version = _decompress(raw, where, check_manifest)
    if len(body) < MANIFEST_LEN.size:
        raise ArtifactError(f"{where}: body too short for a manifest")
    (mlen,) = MANIFEST_LEN.unpack_from(body)
    if MANIFEST_LEN.size + mlen > len(body):
        raise ArtifactError(f"{where}: manifest length {mlen} runs past the {len(body)}-byte body")
    try:
        manifest = json.loads(body[MANIFEST_LEN.size:MANIFEST_LEN.size + mlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where}: manifest is not valid UTF-8 JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format_version") != version:
        raise ArtifactError(f"{where}: manifest format_version is not the header's {version}")
    int6_storage = manifest.get("int6_storage")
    if int6_storage not in INT6_STORAGES or not isinstance(manifest.get("tensors"), list):
        raise ArtifactError(f"{where}: manifest lacks a valid int6_storage or tensor list")
    payload = body[MANIFEST_LEN.size + mlen:]
    qtensors = [_parse_entry(e, payload, int6_storage, where) for e in manifest["tensors"]]
    if len({qt.name for qt in qtensors}) != len(qtensors):
        raise ArtifactError(f"{where}: duplicate tensor names in the manifest")
    config = manifest.get("config")
    if not isinstance(config, dict):
        raise ArtifactError(f"{where}: manifest has no model config dict")
    return config, qtensors


def _read(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    return path.read_bytes()


def load_artifact(path: str | os.PathLike, check_manifest=None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict of dequantized tensors in their original dtypes) from an artifact file."""
    config, qtensors = decode_artifact(_read(path), where=str(path), check_manifest=check_manifest)
    return config, {qt.name: dequantize(qt) for qt in qtensors}


def load_artifact_int6(path: str | os.PathLike, check_manifest=None):
    """(config, dequantized state dict, int6) where int6 maps each int6 matrix name to
    (pack_int6(q) uint8 (N, 3*ceil(K/4)), per-row scales fp32 (N,)) for the int6-dequant kernel path."""
    config, qtensors = decode_artifact(_read(path), where=str(path), check_manifest=check_manifest)
    state = {qt.name: dequantize(qt) for qt in qtensors}
    int6 = {qt.name: (pack_int6(qt.data), qt.scale.float()) for qt in qtensors if qt.scheme == "int6_per_row"}
    return config, state, int6
