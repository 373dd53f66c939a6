"""Download the challenge's published sp1024 FineWeb data from the Hugging Face dataset repo.

Layout under the repo's remote root (default "datasets", as in the challenge's data/cached_challenge_fineweb.py):
manifest.json, datasets/fineweb10B_sp1024/fineweb_{train,val}_XXXXXX.bin and tokenizers/fineweb_1024_bpe.model.
Files land in the same layout under the output directory. huggingface_hub resumes partial downloads and shows the
progress bars; any network failure becomes one DownloadError line.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
DATASET_DIR = "fineweb10B_sp1024"
TOKENIZER_FILE = "tokenizers/fineweb_1024_bpe.model"
DEFAULT_VAL_SHARDS = 1


class DownloadError(RuntimeError):
    """The challenge data could not be fetched (offline, huggingface_hub missing, file absent on the hub)."""


def _check_reachable() -> None:
    """Fail fast (instead of the hub's minute of retries) when the hub's host cannot even be resolved."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        raise DownloadError(f"cannot reach {host} (offline?): {exc}") from exc


def _fetch(remote_path: str, out_dir: Path, repo_id: str, remote_root: str) -> Path:
    """Fetch `remote_root/remote_path` into `out_dir/remote_path` (skipped when it is already there)."""
    destination = out_dir / remote_path
    if destination.is_file():
        return destination
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise DownloadError("huggingface_hub is not installed; install it with "
                            "`pip install huggingface_hub` (or `pip install -e '.[download]'`)") from exc
    from huggingface_hub.utils import logging as hub_logging

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("0", "false", ""):
        _check_reachable()

    hub_logging.set_verbosity_error()  # failures are reported once, below, not as per-retry warnings
    full = f"{remote_root}/{remote_path}" if remote_root else remote_path
    try:
        cached = Path(hf_hub_download(repo_id=repo_id, filename=full, repo_type="dataset"))
    except Exception as exc:  # the hub raises many types (HTTP, connection, offline, not found); report one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(f"could not download {full} from the Hugging Face dataset {repo_id} "
                            f"(offline or unreachable?): {type(exc).__name__}: {reason}") from exc
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:  # a hard link avoids a second copy of a 200 MB shard when the hub cache is on the same filesystem
        os.link(cached.resolve(strict=True), tmp)
    except OSError:
        shutil.copyfile(cached.resolve(strict=True), tmp)
    tmp.replace(destination)
    return destination


def _val_shard_count(manifest_path: Path) -> int:
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entry = next(d for d in manifest.get("datasets", []) if d.get("name") == DATASET_DIR)
        return int(entry["stats"]["files_val"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return DEFAULT_VAL_SHARDS


def download_challenge_data(out_dir, train_shards: int = 80, repo_id: str = REPO_ID,
                            remote_root: str = REMOTE_ROOT) -> Path:
    """Fetch the tokenizer, every val shard and the first `train_shards` train shards; returns the shard dir
    (out_dir/datasets/fineweb10B_sp1024). The tokenizer goes to out_dir/tokenizers/fineweb_1024_bpe.model and is
    also copied into the shard dir as tokenizer.model, so the shard dir alone is a complete data directory."""
    if train_shards < 0:
        raise ValueError(f"train_shards must be >= 0, got {train_shards}")
    out_dir = Path(out_dir)
    manifest = _fetch("manifest.json", out_dir, repo_id, remote_root)
    tokenizer = _fetch(TOKENIZER_FILE, out_dir, repo_id, remote_root)
    for i in range(_val_shard_count(manifest)):
        _fetch(f"datasets/{DATASET_DIR}/fineweb_val_{i:06d}.bin", out_dir, repo_id, remote_root)
    for i in range(train_shards):
        _fetch(f"datasets/{DATASET_DIR}/fineweb_train_{i:06d}.bin", out_dir, repo_id, remote_root)
    shard_dir = out_dir / "datasets" / DATASET_DIR
    if not (shard_dir / "tokenizer.model").is_file():  # train/eval default to DATA/tokenizer.model
        shutil.copyfile(tokenizer, shard_dir / ".tokenizer.model.tmp")
        (shard_dir / ".tokenizer.model.tmp").replace(shard_dir / "tokenizer.model")
    return shard_dir
