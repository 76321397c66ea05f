"""Deterministic, streaming safetensors writer.

The safetensors library serialises metadata from a hash map, so the same tensors give different header bytes from
one process to the next. Demo files must be byte-reproducible and the merge must stream SDXL-size outputs without
holding them, so we write the (simple, documented) format ourselves:
8-byte little-endian header length, JSON header (sorted keys, space-padded to a multiple of 8), tensor data.
Tensors are laid out by descending element size, then name, so every tensor stays naturally aligned.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from .safetensors_header import DTYPE_SIZES

TORCH_TO_ST = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8",
    "torch.bool": "BOOL", "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2",
}  # fmt: skip
ST_ITEMSIZE = DTYPE_SIZES  # one table of element sizes, owned by the header reader


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str  # safetensors dtype string, e.g. "F16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = ST_ITEMSIZE[self.dtype]
        for s in self.shape:
            n *= s
        return n


def st_dtype(tensor_or_dtype: Any) -> str:
    key = str(getattr(tensor_or_dtype, "dtype", tensor_or_dtype))
    try:
        return TORCH_TO_ST[key]
    except KeyError:
        raise ValueError(f"dtype {key} cannot be stored in safetensors") from None


def plan_order(entries: list[PlannedTensor], keep_order: bool = False) -> list[PlannedTensor]:
    """Largest element size first (keeps every tensor aligned); within a size, by name or in the given order.

    `keep_order` lets a streaming merge lay tensors out in its input's file order, so the input is read
    sequentially.
    """
    if keep_order:
        return sorted(entries, key=lambda e: -ST_ITEMSIZE[e.dtype])  # stable: given order within a size
    return sorted(entries, key=lambda e: (-ST_ITEMSIZE[e.dtype], e.name))


def build_header(
    entries: list[PlannedTensor], metadata: Mapping[str, str] | None, keep_order: bool = False
) -> tuple[bytes, list[PlannedTensor]]:
    ordered = plan_order(entries, keep_order)
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    offset = 0
    for e in ordered:
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ordered


def tensor_buffer(tensor: Any) -> memoryview:
    """A zero-copy little-endian view of a CPU tensor's bytes (bf16/fp8 through an integer view numpy can hold)."""
    import torch

    t = tensor.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        t = t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.uint8)
    if t.dim() == 0:
        t = t.reshape(1)
    return memoryview(t.numpy()).cast("B")


class StreamingWriter:
    """Write tensors one at a time into a file whose header was computed up front.

    `write()` must be called in `order` (the planned layout); `close()` checks every tensor arrived. Use as a
    context manager inside `atomic_path` so an interrupted stream never leaves a file under the final name.
    `direct=True` (multi-GB outputs) writes through `direct_io.SequentialWriter`: unbuffered where the file
    system allows it, with the disk writes overlapping the caller's work.
    """

    def __init__(
        self,
        path: str | Path,
        entries: list[PlannedTensor],
        metadata: Mapping[str, str] | None = None,
        keep_order: bool = False,
        direct: bool = False,
    ):
        head, self.order = build_header(entries, metadata, keep_order)
        if direct:
            from ..direct_io import SequentialWriter

            self._fh = SequentialWriter(path)
        else:
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in close()/__exit__
        self._fh.write(head)
        self._next = 0
        self._closed = False

    def write(self, name: str, tensor: Any) -> None:
        expected = self.order[self._next]
        if name != expected.name:
            raise ValueError(f"tensor '{name}' written out of order; expected '{expected.name}'")
        if st_dtype(tensor) != expected.dtype or tuple(tensor.shape) != expected.shape:
            raise ValueError(
                f"tensor '{name}' is {st_dtype(tensor)}{tuple(tensor.shape)}, planned {expected.dtype}{expected.shape}"
            )
        self._fh.write(tensor_buffer(tensor))
        self._next += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fh.close()
        if self._next != len(self.order):
            raise ValueError(f"only {self._next} of {len(self.order)} planned tensors were written")

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:
            if not self._closed:
                self._closed = True
                abort = getattr(self._fh, "abort", self._fh.close)
                abort()
            return
        self.close()


def save_safetensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write `tensors` deterministically and atomically."""
    entries = [PlannedTensor(k, st_dtype(v), tuple(v.shape)) for k, v in tensors.items()]
    path = Path(path)
    with atomic_path(path) as tmp, StreamingWriter(tmp, entries, metadata) as w:
        for e in w.order:
            w.write(e.name, tensors[e.name])
    return path
