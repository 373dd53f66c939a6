"""Atomic file writes: readers (and a crash) never see a partial shard, checkpoint, artifact or report.

The data goes to a temporary file in the destination's folder, is flushed and fsynced, then renamed over
the destination with os.replace (atomic on POSIX); on any error the temporary file is removed and the old
destination, if any, is left untouched.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable


def atomic_write_with(path: str | os.PathLike, writer: Callable[[BinaryIO], object]) -> Path:
    """Atomically replace `path` with what `writer(file)` writes; the file gets mode 0644."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes]) -> Path:
    """Atomically replace `path` with the concatenation of `chunks`."""
    def write_all(f: BinaryIO) -> None:
        for chunk in chunks:
            f.write(chunk)
    return atomic_write_with(path, write_all)
