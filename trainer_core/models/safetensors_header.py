"""Read and validate a safetensors header without torch (cheap enough for the GUI thread's file pickers).

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__"},
then the data. A file cut short by a failed download is caught here, by comparing the offsets with the file size,
before any loader memory-maps it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

MAX_HEADER_BYTES = 100 * 2**20  # safetensors itself refuses headers over 100 MB
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def read_header(path: str | Path) -> SafetensorsHeader:
    """Parse and validate the header; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("file not found", path=path)
    if path.is_dir():
        raise CheckpointError("is a folder, expected a .safetensors file", path=path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            "is a pickle checkpoint; pickles can run arbitrary code, so only safetensors are loaded",
            path=path,
            hint="convert it to .safetensors with a trusted tool, or pass --allow-pickle to read it with "
            "torch.load(weights_only=True)",
        )
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"too short to be a safetensors file ({size} bytes)", path=path)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n + 8 > size:
            raise CheckpointError(
                f"not a safetensors file, or truncated (header says {n} bytes, file has {size})", path=path
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"corrupt safetensors header ({exc})", path=path) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not a JSON object)", path=path)
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors: dict[str, TensorEntry] = {}
    data_len = size - data_start
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt header entry for tensor '{name}'", path=path) from None
        if end > data_len:
            raise CheckpointError(
                f"truncated: tensor '{name}' ends at byte {data_start + end:,} but the file has {size:,} bytes",
                path=path,
                hint="the download or copy was cut short; fetch the file again",
            )
        entry = TensorEntry(dtype, shape, data_start + begin, data_start + end)
        item = DTYPE_SIZES.get(dtype)
        if item is not None and entry.numel * item != entry.nbytes:
            raise CheckpointError(f"corrupt header: tensor '{name}' size does not match its shape", path=path)
        tensors[name] = entry
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, size)
