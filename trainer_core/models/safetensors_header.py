"""Read and validate a safetensors header without torch (cheap enough for the GUI thread's file pickers).

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__"},
then the data. A file cut short by a failed download is caught here, by comparing the offsets with the file size,
before any loader memory-maps it.
"""

from __future__ import annotations

import json
import shlex
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
            hint=pickle_hint(path),
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
    if not isinstance(metadata, dict):
        raise CheckpointError(
            "corrupt safetensors header: '__metadata__' is not a table of strings", path=path
        )
    data_start = 8 + n
    data_len = size - data_start
    tensors = {name: _entry(path, name, info, data_start, data_len, size) for name, info in header.items()}
    _check_no_overlap(path, tensors)
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()}, data_start, size)


def pickle_hint(path: Path) -> str:
    """What to do with a pickle checkpoint: the one command of ours that reads pickles, spelled out for `path`."""
    target = path.with_suffix(".safetensors")
    return (f"convert it once, if you trust where it came from: `kxl model convert {shlex.quote(str(path))} "
            f"{shlex.quote(str(target))} --allow-pickle` (reads it with torch.load(weights_only=True)), "
            "or convert it with another trusted tool, then use the .safetensors file")  # fmt: skip


def shown(name: str, limit: int = 160) -> str:
    """A tensor name fit for a one-line message: a crafted header may hold control characters or megabytes."""
    text = name if name.isprintable() else ascii(name)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: Path, name: str, info: object, data_start: int, data_len: int, size: int) -> TensorEntry:
    """One header entry, checked against the format: a known dtype, a shape of non-negative whole numbers, and
    non-negative whole-number offsets inside the data section whose span is exactly numel * itemsize bytes."""

    def bad(problem: str, hint: str | None = None) -> CheckpointError:
        return CheckpointError(f"corrupt safetensors header: tensor '{shown(name)}' {problem}", path=path,
                               hint=hint or "the file is damaged or was not written by a safetensors writer; "
                               "fetch it again")  # fmt: skip

    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise bad("is not a {dtype, shape, data_offsets} entry")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"has a dtype that is not a name ({json.dumps(dtype)[:40]})")
    if dtype not in DTYPE_SIZES:
        raise bad(f"has unknown dtype '{shown(dtype, 40)}' (known: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise bad(f"has an invalid shape {json.dumps(shape)[:80]} (expected a list of non-negative integers)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(x) and x >= 0 for x in offsets):
        raise bad(f"has invalid data_offsets {json.dumps(offsets)[:80]} (expected [begin, end], non-negative "
                  "integers)")  # fmt: skip
    begin, end = offsets
    if begin > end:
        raise bad(f"has data_offsets [{begin}, {end}] that end before they begin")
    if end > data_len:
        raise CheckpointError(
            f"truncated: tensor '{shown(name)}' ends at byte {data_start + end:,} but the file has {size:,} bytes",
            path=path,
            hint="the download or copy was cut short; fetch the file again",
        )
    entry = TensorEntry(dtype, tuple(shape), data_start + begin, data_start + end)
    expected = entry.numel * DTYPE_SIZES[dtype]
    if expected != entry.nbytes:
        raise bad(f"spans {entry.nbytes:,} bytes, but shape {entry.shape} of {dtype} needs {expected:,} "
                  "(the dtype or shape disagrees with the data)")  # fmt: skip
    return entry


def _check_no_overlap(path: Path, tensors: dict[str, TensorEntry]) -> None:
    """No two tensors may share a byte (a hostile header could alias one tensor's data into another)."""
    spans = sorted((e.start, e.end, name) for name, e in tensors.items() if e.nbytes > 0)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise CheckpointError(
                f"corrupt safetensors header: tensors '{shown(n0)}' and '{shown(n1)}' overlap (bytes {s0:,}-{e0:,} and "
                f"{s1:,}-{e1:,})",
                path=path,
                hint="the file is damaged or was crafted; fetch it again from a trusted source",
            )
