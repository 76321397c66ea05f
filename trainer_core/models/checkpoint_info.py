"""What a model file is, from its header alone (no torch, fast enough for a file picker on the GUI thread)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .architectures import ARCHITECTURES, fingerprint
from .safetensors_header import read_header

DTYPE_NAMES = {
    "F16": "fp16",
    "BF16": "bf16",
    "F32": "fp32",
    "F64": "fp64",
    "F8_E4M3": "fp8",
    "F8_E5M2": "fp8",
}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    kind: str  # "sdxl-single-file" | "diffusers-folder" | "lokr" | "unknown"
    arch: str | None
    dtype: str  # dominant float dtype, "mixed" when no dtype holds 90% of the bytes
    tensor_count: int
    size_bytes: int
    problem: str | None  # why it is not usable as an SDXL checkpoint, if it is not
    metadata: dict[str, str]

    @property
    def usable_as_base(self) -> bool:
        return self.kind in ("sdxl-single-file", "diffusers-folder") and self.problem is None


def _dominant_dtype(byte_counts: Counter) -> str:
    floats = {k: v for k, v in byte_counts.items() if k in DTYPE_NAMES}
    total = sum(floats.values())
    if not total:
        return "none"
    name, count = max(floats.items(), key=lambda kv: kv[1])
    return DTYPE_NAMES[name] if count >= 0.9 * total else "mixed"


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    """Header-level description. Raises CheckpointError for missing, truncated or non-safetensors files."""
    path = Path(path)
    if path.is_dir():
        return _describe_folder(path)
    header = read_header(path)
    shapes = {k: v.shape for k, v in header.tensors.items()}
    fp = fingerprint(shapes)
    bytes_by_dtype: Counter = Counter()
    for entry in header.tensors.values():
        bytes_by_dtype[entry.dtype] += entry.nbytes
    problem = None if fp.kind in ("sdxl-single-file", "lokr") else f"not an SDXL checkpoint: {fp.reason}"
    kind = fp.kind if fp.kind in ("sdxl-single-file", "lokr") else "unknown"
    return CheckpointInfo(path, kind, fp.arch, _dominant_dtype(bytes_by_dtype), len(header.tensors),
                          header.file_size, problem, header.metadata)  # fmt: skip


def _describe_folder(folder: Path) -> CheckpointInfo:
    index = folder / "model_index.json"
    if not index.is_file():
        raise CheckpointError("folder has no model_index.json; expected a diffusers SDXL folder", path=folder)
    try:
        cls = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except ValueError:
        raise CheckpointError("model_index.json is not valid JSON", path=folder) from None
    count, size, bytes_by_dtype = 0, 0, Counter()
    for f in sorted(folder.glob("*/*.safetensors")):
        h = read_header(f)
        count += len(h.tensors)
        size += h.file_size
        for e in h.tensors.values():
            bytes_by_dtype[e.dtype] += e.nbytes
    problem = None if "XL" in cls else f"not an SDXL pipeline ({cls or 'no _class_name'})"
    if problem is None and count == 0:
        problem = "no .safetensors weights in the component folders"
    arch = None
    unet_cfg = folder / "unet" / "config.json"
    if unet_cfg.is_file():
        cfg = json.loads(unet_cfg.read_text(encoding="utf-8"))
        for a in ARCHITECTURES.values():
            ref = json.loads((a.config_dir / "unet" / "config.json").read_text(encoding="utf-8"))
            # kxl-tiny and kxl-demo share block widths; the text width (cross_attention_dim) tells them apart
            if all(cfg.get(k) == ref.get(k) for k in ("block_out_channels", "cross_attention_dim")):
                arch = a.name
    return CheckpointInfo(
        folder, "diffusers-folder", arch, _dominant_dtype(bytes_by_dtype), count, size, problem, {}
    )
