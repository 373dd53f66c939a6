"""The embedded default corpus: real English prose that ships inside CPython, tokenized offline into shards.

No third-party text is committed to the repository and nothing is downloaded. The documents are the Python
documentation topics in `pydoc_data.topics` (one document per topic, sorted by name) followed by the standard
library's prose docstrings, collected with `ast` without importing anything (one document per module, modules
sorted by path, docstrings of at least MIN_DOCSTRING_CHARS characters in source order). Together they are about
1.8 MB on CPython 3.11. A 1024-vocab BPE is trained on them with the challenge's settings, every 20th document goes
to val, and the result is cached in embedded-<python major.minor> under $TRITON_GOLF_CACHE (default
~/.cache/triton-golf) with a manifest.json recording what was built.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common.atomic import atomic_write
from train.data.tokenize_text import train_tokenizer, write_token_shards

MANIFEST_FORMAT = 1
MIN_DOCSTRING_CHARS = 200
VAL_EVERY = 20  # document i goes to val when i % VAL_EVERY == 0
EMBEDDED_SHARD_TOKENS = 1 << 18  # small shards, so the corpus spans several train shards like the real data
VOCAB_SIZE = 1024
_SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
SOURCE = ("CPython {version}: pydoc_data.topics (Python documentation topics) + standard-library docstrings "
          f"(>= {MIN_DOCSTRING_CHARS} chars, collected with ast, modules sorted by path)")


def default_root() -> Path:
    """$TRITON_GOLF_CACHE/embedded-X.Y, or ~/.cache/triton-golf/embedded-X.Y."""
    base = os.environ.get("TRITON_GOLF_CACHE") or Path.home() / ".cache" / "triton-golf"
    return Path(base) / f"embedded-{sys.version_info.major}.{sys.version_info.minor}"


def module_docstring_document(path) -> str | None:
    """The prose docstrings of one .py file (module, classes, functions; in source order), or None when it has
    none of at least MIN_DOCSTRING_CHARS characters or does not parse."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: (n.lineno, n.col_offset))
    docstrings = [ast.get_docstring(n) for n in [tree, *nodes]]
    prose = [d.strip() for d in docstrings if d and len(d.strip()) >= MIN_DOCSTRING_CHARS]
    return "\n\n".join(prose) if prose else None


def stdlib_module_paths() -> list[Path]:
    """The standard library's .py files (no tests, no site-packages), sorted by relative path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in stdlib.rglob("*.py") if not _SKIPPED_DIRS & set(p.relative_to(stdlib).parts)]
    return sorted(paths, key=lambda p: p.relative_to(stdlib).as_posix())


def iter_embedded_documents(max_bytes: int | None = None) -> Iterator[str]:
    """The corpus documents in their fixed order; stops once `max_bytes` of UTF-8 text have been yielded."""
    from pydoc_data.topics import topics

    def sources():
        for name in sorted(topics):
            yield topics[name].strip()
        for path in stdlib_module_paths():
            yield module_docstring_document(path)

    total = 0
    for text in sources():
        if not text:
            continue
        if max_bytes is not None and total >= max_bytes:
            return
        total += len(text.encode("utf-8"))
        yield text


def _is_complete(root: Path, max_bytes: int | None) -> bool:
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (manifest.get("format") == MANIFEST_FORMAT and manifest.get("max_bytes") == max_bytes
            and all((root / name).is_file() for name in manifest.get("files", [])))


def build_embedded_corpus(root, max_bytes: int | None = None) -> dict:
    """Build the corpus into `root` (replacing it; built in a sibling temp dir, then renamed). Returns the manifest."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_dir = Path(tempfile.mkdtemp(prefix=f".{root.name}.build-", dir=root.parent))
    try:
        docs = list(iter_embedded_documents(max_bytes))
        if len(docs) < 2:
            raise ValueError(f"embedded corpus has {len(docs)} documents; need at least 2 for a train/val split")
        sp = train_tokenizer(docs, build_dir / "tokenizer.model", vocab_size=VOCAB_SIZE)
        stats = write_token_shards(docs, sp, build_dir, is_val=lambda i: i % VAL_EVERY == 0,
                                   shard_tokens=EMBEDDED_SHARD_TOKENS)
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": SOURCE.format(version=sys.version.split()[0]),
            "max_bytes": max_bytes,
            "text_bytes": stats["text_bytes_train"] + stats["text_bytes_val"],
            "docs": len(docs), "docs_train": stats["docs_train"], "docs_val": stats["docs_val"],
            "tokens_train": stats["tokens_train"], "tokens_val": stats["tokens_val"],
            "vocab_size": int(sp.vocab_size()),
            "val_rule": f"document index % {VAL_EVERY} == 0",
            "files": ["tokenizer.model", *stats["shards_train"], *stats["shards_val"]],
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        atomic_write(build_dir / "manifest.json", [(json.dumps(manifest, indent=2) + "\n").encode("utf-8")])
        os.chmod(build_dir, 0o755)
        if root.exists():
            shutil.rmtree(root)
        os.replace(build_dir, root)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return manifest


@contextlib.contextmanager
def _build_lock(root: Path):
    """Serialize builders of the same corpus across processes (e.g. parallel test runs); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_embedded_corpus(root=None, rebuild: bool = False, max_bytes: int | None = None) -> Path:
    """The directory holding the embedded corpus (train/val shards, tokenizer.model, manifest.json), built once and
    cached; rebuilt when `rebuild` is set, any file is missing, or it was built with a different `max_bytes`."""
    root = Path(root) if root is not None else default_root()
    if not rebuild and _is_complete(root, max_bytes):
        return root
    with _build_lock(root):
        if rebuild or not _is_complete(root, max_bytes):  # another process may have built it meanwhile
            build_embedded_corpus(root, max_bytes)
    return root
