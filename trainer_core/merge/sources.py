"""Uniform single-file (SGM key) view of a merge input, whatever its format.

A single-file checkpoint is read directly; a diffusers folder is mapped through the SDXL layout (q/k/v fused,
text_projection transposed, VAE attention reshaped) so both look identical to the merge. Tensors are read with
`readinto` at their offsets rather than through a memory map: mapped pages of three 7 GB inputs would count as
resident memory and break the "a few tensors, not models" budget.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..models.architectures import fingerprint, layout_for
from ..models.safetensors_header import DTYPE_SIZES, SafetensorsHeader, TensorEntry, read_header, shown
from ..models.safetensors_writer import TORCH_TO_ST
from ..models.sdxl_layout import CONV1X1, FUSE_QKV, TE2_LOGIT_SCALE, TRANSPOSE, te1_canonical
from .stream_hash import SequentialHasher

ST_TO_TORCH = {st: name.removeprefix("torch.") for name, st in TORCH_TO_ST.items()}
DIFFUSERS_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}


def check_readable(header: SafetensorsHeader) -> None:
    """Refuse, by name, a tensor whose (valid safetensors) dtype has no torch type the merge reads and writes."""
    for key, entry in header.tensors.items():
        if entry.dtype not in ST_TO_TORCH:
            raise CheckpointError(f"tensor '{shown(key)}' has dtype {entry.dtype}, which the merge cannot read "
                                  f"(supported: {', '.join(ST_TO_TORCH)})", path=header.path)  # fmt: skip


def read_tensor(fh, entry: TensorEntry, scratch=None, hasher=None):
    """One tensor from an open file at its header offsets, in its stored dtype.

    With `scratch` (a uint8 CPU tensor at least `entry.nbytes` long) the bytes land there and the result is a view
    of it, valid until the next read into the same scratch: reusing one buffer avoids faulting in fresh pages for
    every multi-hundred-MB tensor, which costs more than the fp16 -> fp32 conversion itself.
    """
    import torch

    dtype = getattr(torch, ST_TO_TORCH[entry.dtype])
    if entry.nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    if scratch is None:
        raw = torch.empty(entry.nbytes, dtype=torch.uint8)
    else:
        raw = scratch[: entry.nbytes]
    view = memoryview(raw.numpy()).cast("B")
    fh.seek(entry.start)
    if fh.readinto(view) != entry.nbytes:
        raise CheckpointError(
            f"unexpected end of file while reading a tensor at byte {entry.start}", path=fh.name
        )
    if hasher is not None:
        hasher.feed(entry.start, view)
    return raw.view(dtype).reshape(entry.shape)


def _advise_sequential(fh) -> None:
    """Merges read inputs front to back: a larger kernel read-ahead keeps a cold disk streaming."""
    import os

    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


WILLNEED_BYTES = 256 * 2**20


def _advise_willneed(fh, start: int, length: int) -> None:
    import os

    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fh.fileno(), start, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass


@dataclass
class SourceTensor:
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES.get(self.dtype, 8)


class ModelSource(ABC):
    """An SDXL model as {single-file key: tensor}. Use as a context manager; `get` returns the stored dtype."""

    path: Path
    arch: str
    kind: str
    tensors: dict[str, SourceTensor]

    @abstractmethod
    def get(self, key: str, scratch: Any = None) -> Any:
        """The tensor stored under single-file key `key` (possibly a view of `scratch`, see read_tensor)."""

    def finish_hash(self) -> str | None:
        """Full-file SHA-256 when the source hashed its reads, else None."""
        return None

    def file_order(self) -> list[str]:
        return list(self.tensors)

    @abstractmethod
    def close(self) -> None:
        """Release the open file handles."""

    def __enter__(self) -> ModelSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


class SingleFileSource(ModelSource):
    kind = "single-file"

    def __init__(self, path: Path):
        self.path = path
        self.header: SafetensorsHeader = read_header(path)
        shapes = {k: v.shape for k, v in self.header.tensors.items()}
        fp = fingerprint(shapes)
        if fp.kind != "sdxl-single-file" or fp.arch is None:
            raise CheckpointError(f"not an SDXL checkpoint: {fp.reason}", path=path)
        self.arch = fp.arch
        check_readable(self.header)
        self.tensors = {k: SourceTensor(v.shape, v.dtype) for k, v in self.header.tensors.items()}
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        _advise_sequential(self._fh)
        self._advised_until = 0
        self.hasher: SequentialHasher | None = None

    def hash_while_reading(self) -> None:
        self.hasher = SequentialHasher(self.path)

    def get(self, key: str, scratch: Any = None) -> Any:
        entry = self.header.tensors[key]
        if entry.end > self._advised_until - WILLNEED_BYTES // 4:
            # Ask the kernel to fetch the next stretch in the background: reads alternate between inputs, and
            # without this a cold disk serves many small interleaved requests instead of long sequential ones.
            _advise_willneed(self._fh, entry.start, WILLNEED_BYTES)
            self._advised_until = entry.start + WILLNEED_BYTES
        return read_tensor(self._fh, entry, scratch, self.hasher)

    def finish_hash(self) -> str | None:
        if self.hasher is None:
            return None
        digest = self.hasher.finish()
        self.hasher = None
        return digest

    def file_order(self) -> list[str]:
        return sorted(self.header.tensors, key=lambda k: self.header.tensors[k].start)

    def close(self) -> None:
        self._fh.close()
        if self.hasher is not None:
            self.hasher.close()


class DiffusersFolderSource(ModelSource):
    kind = "diffusers-folder"

    def __init__(self, folder: Path):
        from ..models.loading import _folder_arch

        self.path = folder
        self.arch = _folder_arch(folder)
        self.layout = layout_for(self.arch)
        self._headers: dict[str, SafetensorsHeader] = {}
        self._files: dict[str, Any] = {}
        self._where: dict[tuple[str, str], str] = {}  # (component, canonical key) -> file key
        for comp, fname in DIFFUSERS_FILES.items():
            f = folder / comp / fname
            if not f.is_file():
                raise CheckpointError(f"diffusers folder has no {comp}/{fname} (sharded or .bin weights are not "
                                      "supported; convert with `kxl model convert`)", path=folder)  # fmt: skip
            self._headers[comp] = read_header(f)
            check_readable(self._headers[comp])
            self._files[comp] = open(f, "rb")  # noqa: SIM115 - closed in close()
            for k in self._headers[comp].tensors:
                canon = te1_canonical(k) if comp == "text_encoder" else k
                self._where[(comp, canon)] = k
        self.tensors = {}
        for m in self.layout.mappings:
            if not m.diffusers:
                if m.sgm == TE2_LOGIT_SCALE:
                    self.tensors[m.sgm] = SourceTensor(
                        (), self._entry(m.component, "text_projection.weight").dtype
                    )
                continue
            entries = [self._entry(m.component, d) for d in m.diffusers]
            if any(e is None for e in entries):
                continue  # reported as a missing key by the merge's key-set check
            self.tensors[m.sgm] = SourceTensor(
                self.layout.sgm_shape(m, self._shape_view(m)), entries[0].dtype
            )

    def _entry(self, comp: str, dkey: str) -> TensorEntry | None:
        canon = te1_canonical(dkey) if comp == "text_encoder" else dkey
        file_key = self._where.get((comp, canon))
        return None if file_key is None else self._headers[comp].tensors[file_key]

    def _shape_view(self, m) -> dict:
        return {m.component: {d: self._entry(m.component, d).shape for d in m.diffusers}}

    def get(self, key: str, scratch: Any = None) -> Any:
        import torch

        m = self.layout.by_sgm[key]
        if not m.diffusers:  # logit_scale: diffusers drops it; OpenCLIP's value, which SDXL base ships
            return torch.tensor(4.6052, dtype=getattr(torch, ST_TO_TORCH[self.tensors[key].dtype]))
        parts = [read_tensor(self._files[m.component], self._entry(m.component, d)) for d in m.diffusers]
        if m.transform == TRANSPOSE:
            return parts[0].t().contiguous()
        if m.transform == FUSE_QKV:
            return torch.cat(parts, dim=0)
        if m.transform == CONV1X1:
            return parts[0].reshape(*parts[0].shape, 1, 1)
        return parts[0]

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


def open_source(path: str | Path) -> ModelSource:
    path = Path(path)
    if not path.exists():
        raise CheckpointError("file not found", path=path)
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise CheckpointError("folder is not a diffusers SDXL model (no model_index.json)", path=path)
        return DiffusersFolderSource(path)
    return SingleFileSource(path)


def describe_source(path: str | Path) -> dict[str, Any]:
    """Small JSON-able description used in the recipe metadata."""
    with open_source(path) as src:
        return {"name": src.name, "kind": src.kind, "arch": src.arch, "tensors": len(src.tensors)}


def metadata_of(path: Path) -> dict[str, str]:
    try:
        return read_header(path).metadata if path.is_file() else {}
    except CheckpointError:
        return {}


def recipe_from_metadata(meta: dict[str, str]) -> dict[str, Any] | None:
    raw = meta.get("kxl.merge_recipe")
    return json.loads(raw) if raw else None
