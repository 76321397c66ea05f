"""Optional on-disk cache of VAE latent distributions, one small safetensors file per (image, bucket, VAE).

We cache the distribution (mean, std) rather than one sample, so every epoch still draws a fresh latent sample with
the step's generator, exactly as an uncached run does. Key = image path + size + mtime, bucket, resize/crop and a
VAE identity string (base model file + size + mtime), so editing an image or switching the base model misses.
Random crops would need one entry per crop, so `cache_latents` refuses `random_crop` (as sd-scripts does).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..buckets import BucketAssignment
from .data import ImageItem


def vae_identity(base_path: Path) -> str:
    st = base_path.stat()
    return f"{base_path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class LatentCache:
    def __init__(self, folder: str | Path, vae_id: str):
        self.folder = Path(folder)
        self.vae_id = vae_id
        self.hits = 0
        self.misses = 0

    def key(self, item: ImageItem, a: BucketAssignment) -> str:
        if (
            item.ref is not None
        ):  # a referenced image has no file: its shard bytes and fingerprint identify it
            r = item.ref
            source = f"{r.shard}@{r.offset}+{r.size}|{r.fp}|{r.shard_size}|{r.shard_mtime_ns}"
        else:
            st = item.path.stat()
            source = f"{item.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        raw = f"{source}|{a.bucket}|{a.resized}|{self.vae_id}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[Any, Any] | None:
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            self.misses += 1
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(str(path))
            mean, std = t["mean"], t["std"]
            if mean.shape != std.shape:
                raise ValueError("mean and std differ in shape")
        except Exception:  # noqa: BLE001 - a torn or foreign cache file is just a miss; put() replaces it
            self.misses += 1
            return None
        self.hits += 1
        return mean, std

    def put(self, key: str, mean: Any, std: Any) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / f"{key}.safetensors") as tmp:
            save_file({"mean": mean.detach().cpu().float().contiguous(),
                       "std": std.detach().cpu().float().contiguous()}, str(tmp))  # fmt: skip
