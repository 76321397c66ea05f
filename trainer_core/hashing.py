"""File hashes the way sd-webui shows them, cached so a 7 GB checkpoint is hashed once.

- `short_hash`: first 10 hex of SHA-256 of the whole file (A1111 "Model hash").
- `safetensors_payload_hash`: first 12 hex of SHA-256 of the data after the header (A1111 "Lora hashes"), so
  metadata edits do not change a LoKr's identity.
Cache key: absolute path + size + mtime_ns, stored as JSON in the user cache dir.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path

from .atomic import atomic_write_text
from .paths import cache_dir

_LOCK = threading.Lock()
_CHUNK = 4 * 2**20


def _cache_file() -> Path:
    return cache_dir() / "hashes.json"


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _cached(path: Path, kind: str, compute) -> str:
    key = _cache_key(path, kind)
    with _LOCK:
        cache = _load_cache()
        if key in cache:
            return cache[key]
    value = compute(path)
    _store(key, value)
    return value


def _store(key: str, value: str) -> None:
    with _LOCK:
        cache = _load_cache()
        cache[key] = value
        try:
            atomic_write_text(_cache_file(), json.dumps(cache, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only cache dir only costs us a re-hash next time


def _cache_key(path: Path, kind: str) -> str:
    st = path.stat()
    return f"{kind}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def cached_sha256(path: str | Path) -> str | None:
    """The full SHA-256 if it was computed before for this exact file (path, size, mtime), else None."""
    path = Path(path)
    with _LOCK:
        return _load_cache().get(_cache_key(path, "sha256"))


def remember_sha256(path: str | Path, digest: str) -> None:
    """Record a SHA-256 computed elsewhere (e.g. by the merge while it streamed the file)."""
    _store(_cache_key(Path(path), "sha256"), digest)


def sha256_file(path: Path, start: int = 0) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def short_hash(path: str | Path) -> str:
    """A1111 model hash: first 10 hex digits of the file's SHA-256."""
    return _cached(Path(path), "sha256", sha256_file)[:10]


def full_sha256(path: str | Path) -> str:
    return _cached(Path(path), "sha256", sha256_file)


def safetensors_payload_hash(path: str | Path) -> str:
    """A1111 LoRA hash: first 12 hex of SHA-256 over the bytes after the safetensors header."""

    def compute(p: Path) -> str:
        with open(p, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
        return sha256_file(p, start=8 + n)

    return _cached(Path(path), "payload", compute)[:12]
