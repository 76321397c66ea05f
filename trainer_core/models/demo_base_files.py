"""The shipped demo base (resources/demo_base): manifest, compact fine-tune files, and writing the demo checkpoints.

Three fp16 single files would not fit the 25 MB the demo may ship: the two 49408-row CLIP token tables alone are
6 MB per model. So the base ships whole and gamma / beta ship as "deltas": every tensor that differs from the
base, except that a token table is stored as only its changed rows (`<key>:rows` int64 ids, `<key>:values` fp16
rows). Fine-tunes only move rows of tokens their captions use (no weight decay on embeddings), so that loses
nothing: `expand_delta` rebuilds the full checkpoint bit for bit, and the manifest's sha256 of the full file
proves it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..paths import resources_dir

DEMO_BASE_SUBDIR = "demo_base"
MANIFEST_NAME = "manifest.json"
ROLES = ("original", "gamma", "beta")
ROW_SUFFIX, VALUES_SUFFIX = ":rows", ":values"
TOKEN_TABLE_SUFFIX = "token_embedding.weight"

CHECKPOINT_NAMES = {
    "original": "kxl-tiny-sdxl-base.safetensors",
    "gamma": "kxl-tiny-gamma-rev2.safetensors",
    "beta": "kxl-tiny-beta7.safetensors",
}
"""Names in a demo workspace's models/ folder (the card's SDXL base, gamma rev2 and beta7); the app relies on them."""


def demo_base_dir() -> Path:
    return resources_dir() / DEMO_BASE_SUBDIR


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path | None = None) -> dict[str, Any]:
    folder = folder or demo_base_dir()
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError("the trained demo model is not installed (no manifest)", path=path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        roles = manifest["roles"]
        for role in ROLES:
            roles[role]["file"], roles[role]["sha256"], roles[role]["checkpoint_sha256"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"damaged demo manifest ({exc.__class__.__name__}: {exc})", path=path) from None
    return manifest


def make_delta(base: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, Any]:
    """The compact form of `tuned` relative to `base` (both SGM state dicts with the same keys, fp16)."""
    import torch

    out: dict[str, Any] = {}
    for key, value in tuned.items():
        ref = base[key]
        if torch.equal(ref, value):
            continue
        if key.endswith(TOKEN_TABLE_SUFFIX):
            rows = torch.nonzero((ref != value).any(dim=1)).flatten().to(torch.int64)
            out[key + ROW_SUFFIX] = rows
            out[key + VALUES_SUFFIX] = value[rows].contiguous()
        else:
            out[key] = value.contiguous()
    return out


def expand_delta(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `make_delta`: the full state dict, same key order as `base`."""
    out = dict(base)
    for key, value in delta.items():
        if key.endswith(VALUES_SUFFIX):
            continue
        if key.endswith(ROW_SUFFIX):
            name = key[: -len(ROW_SUFFIX)]
            table = base[name].clone()
            table[value] = delta[name + VALUES_SUFFIX]
            out[name] = table
        elif key in base:
            out[key] = value
        else:
            raise CheckpointError(f"delta tensor '{key}' is not in the base checkpoint")
    return out


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def _verify(path: Path, want: str, what: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"{what} is missing", path=path, hint="reinstall Kohaku XL Workbench")
    got = sha256_file(path)
    if got != want:
        raise CheckpointError(
            f"{what} does not match the demo manifest (sha256 {got[:12]}…, expected {want[:12]}…)",
            path=path,
            hint="reinstall Kohaku XL Workbench; the shipped demo model is damaged",
        )


def write_trained_demo_checkpoints(folder: str | Path, source: Path | None = None) -> dict[str, Path]:
    """Write the trained original / gamma / beta checkpoints into `folder`, each verified against the manifest."""
    from .safetensors_writer import save_safetensors

    source = source or demo_base_dir()
    manifest = read_manifest(source)
    roles = manifest["roles"]
    for role in ROLES:  # every shipped file first, so a damaged one leaves nothing written
        _verify(source / roles[role]["file"], roles[role]["sha256"], f"the shipped demo {role}")
    base_src = source / roles["original"]["file"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    base, _ = _read(base_src)
    for role in ROLES:
        src = source / roles[role]["file"]
        dest = folder / CHECKPOINT_NAMES[role]
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            if role == "original":
                shutil.copyfile(src, tmp)
            else:
                delta, meta = _read(src)
                save_safetensors(tmp, expand_delta(base, delta), meta)
            # The rebuilt file must be the one the training script wrote, byte for byte.
            _verify(tmp, roles[role]["checkpoint_sha256"], f"the demo {role} checkpoint")
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        out[role] = dest
    return out
