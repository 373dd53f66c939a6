"""Checks an artifact loader runs before it decompresses or builds anything (after model.validate's config and
tensor checks, which it shares with the model-file loader):
  - `manifest_shapes`: the manifest's tensor entries are well formed, one per name;
  - `check_payload_spans` / `check_manifest_spans` (before the payload is decompressed): the tensors' byte spans do
    not overlap and leave no gap, so a body can hold no byte that no tensor uses;
  - `read_frame_prefix`: the manifest at the start of the zstd body is read without inflating the rest.
Every failure is a ValueError naming the file and the problem.
"""
from __future__ import annotations

from model.validate import is_int


def manifest_shapes(manifest: dict, where: str) -> dict[str, tuple[int, ...]]:
    """{name: shape} of an artifact manifest's tensor entries (the original, unquantized shapes)."""
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise ValueError(f"{where}: the artifact manifest has no tensor list")
    shapes = {}
    for entry in tensors:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("shape"), list) or not all(is_int(d) and d >= 0 for d in entry["shape"]):
            raise ValueError(f"{where}: malformed tensor entry in the artifact manifest: {entry!r:.120}")
        if entry["name"] in shapes:
            raise ValueError(f"{where}: tensor {entry['name']!r} appears twice in the artifact manifest")
        shapes[entry["name"]] = tuple(entry["shape"])
    return shapes


def check_payload_spans(spans: list[tuple[str, object]], payload_bytes: int, where: str) -> None:
    """`spans` are (label, [offset, length]) of every byte range the tensors read; they must not overlap and
    must leave no payload byte that no tensor uses."""
    ranges = []
    for label, span in spans:
        if not (isinstance(span, list) and len(span) == 2 and all(is_int(v) and v >= 0 for v in span)):
            raise ValueError(f"{where}: {label}: bad payload span {span!r:.60}")
        ranges.append((span[0], span[1], label))
    ranges.sort()
    position = 0
    for offset, length, label in ranges:
        if offset < position:
            raise ValueError(f"{where}: {label}: payload span [{offset}, {length}] overlaps another tensor's")
        if offset > position:
            raise ValueError(f"{where}: payload bytes [{position}, {offset}) belong to no tensor")
        position = offset + length
    if position < payload_bytes:  # (spans past the end are named by the decoder's per-tensor size check)
        raise ValueError(f"{where}: the payload has {payload_bytes - position:,} bytes past its last tensor that no "
                         "tensor uses")


def check_manifest_spans(manifest: dict, payload_bytes: int, where: str) -> None:
    """check_payload_spans over an artifact manifest's tensor entries (their data and scale spans)."""
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(tensors, list):
        raise ValueError(f"{where}: the artifact manifest has no tensor list")
    spans = []
    for entry in tensors:
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: malformed tensor entry in the artifact manifest: {entry!r:.120}")
        label = f"tensor {str(entry.get('name'))!r:.80}"
        spans.append((label, entry.get("data")))
        if entry.get("scale") is not None:
            spans.append((label + " scale", entry["scale"]))
    check_payload_spans(spans, payload_bytes, where)


def read_frame_prefix(frame: bytes, size: int, where: str) -> bytes:
    """The first `size` bytes a zstd frame decompresses to, decompressing no more than needed."""
    import zstandard

    try:
        with zstandard.ZstdDecompressor().stream_reader(frame) as reader:
            out = bytearray()
            while len(out) < size:
                chunk = reader.read(size - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as e:
        raise ValueError(f"{where}: corrupt or truncated compressed body ({e})") from e
    if len(out) < size:
        raise ValueError(f"{where}: the compressed body ends after {len(out)} bytes, before its manifest does")
    return bytes(out)
