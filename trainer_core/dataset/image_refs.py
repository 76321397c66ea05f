"""Images of a *referenced* dataset: read straight out of the tar shards by byte offset, never copied.

A dataset built with `--image-mode reference` (reference_build.py) holds `manifest.jsonl`, `skipped.jsonl`,
`shards.json` and `kxl-dataset.toml`, and nothing else: no image, no caption file, no `<repeats>_<name>/`
folder. Each manifest record is a copy build's record (id, file, caption, rating, quality, year, width, height,
shard, bytes) plus `"ref": {"shard", "offset", "size", "fp"}`: the shard's absolute path, where the member's
bytes start in it, how many there are, and a fingerprint of the member's tar header. `shards.json` records each
shard's size and mtime at build time.

**Captions live in the manifest.** Its `caption` field is the caption the trainer trains on and the one the Tags
tab shows and edits (one atomic rewrite of the manifest; bulk_edit.py). A copy build's `<id>.txt` files would
cost one file creation each (0.2-0.7 ms of kernel time on the project's VM: most of a reference build's time);
`kxl dataset materialize` (materialize.py) writes them, from the manifest, when a kohya folder is wanted.

**Fingerprint.** A 64-bit hash of the member's 512-byte tar header block (name, mode, size, mtime, checksum
...), which the build reads anyway while it walks the headers, so no image byte is hashed at build time. A read
fetches header and data with one `pread` from offset - 512 and compares: a shard that was re-packed, re-ordered
or replaced by another download (other offsets, names or mtimes inside) fails on the first image read. A loose
image file (a folder source, offset 0) has no header and one fixed fingerprint: its own size and mtime in
shards.json guard it. What none of this sees is an image's bytes edited in place with the shard's
size and mtime put back: that needs deliberate tampering, and catching it would mean hashing all 1.3 TB.

Reading (`read_ref`): one file descriptor per shard per process (kept open; a forked or spawned data worker opens
its own), `os.pread` at the offset (no tarfile, no seek: safe from threads). The first time a process opens a
shard it compares the shard's size and mtime with the recorded ones, so a shard that was replaced, re-packed or
truncated since the build stops with an error naming it instead of feeding the trainer other bytes. A shard
mounted from another disk or a network share works the same; a multi-node run needs the same shard paths on
every node (the paths are absolute and checked on each).
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KxlError

SHARDS_FILE = "shards.json"
MANIFEST_FILE = "manifest.jsonl"
FORMAT_VERSION = 2  # shards.json "version": 1 was a development format (captions in .txt, other fingerprint)
TAR_HEADER = 512  # a tar member's data follows its 512-byte header block
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ShardInfo:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes are: small and picklable (it travels to the data workers with its ImageItem)."""

    shard: str  # absolute path of the shard (or loose image file)
    offset: int  # first byte of the member's data in the shard
    size: int  # bytes
    fp: str  # fingerprint(), 16 hex digits
    shard_size: int  # the shard's size and mtime when the dataset was built
    shard_mtime_ns: int
    post: int  # the post id, for messages


# ---- fingerprint ----------------------------------------------------------------------------------------------
def header_span(offset: int) -> int:
    """Bytes of tar header read (and fingerprinted) before the data at `offset`: 512 for a tar member, 0 for a
    loose file (offset 0)."""
    return TAR_HEADER if offset >= TAR_HEADER else 0


# 64 odd multipliers, one per 8-byte word of a header block (a fixed sequence: part of the format)
_FP_WEIGHTS = None


def _fp_weights():
    import numpy as np

    global _FP_WEIGHTS
    if _FP_WEIGHTS is None:
        i = np.arange(64, dtype=np.uint64)
        _FP_WEIGHTS = (i * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0xBF58476D1CE4E5B9)) | np.uint64(1)
    return _FP_WEIGHTS


def header_fingerprints(headers: Any) -> Any:
    """Fingerprints of many 512-byte header blocks at once ((n, 512) uint8 -> (n,) int64): the weighted sum of
    their 64 little-endian words mod 2**64, then mixed. Every single changed word changes it (odd weights), and
    it costs ~0.2 us per header in numpy, where a hash call per member cost more than reading the header."""
    import numpy as np

    words = np.ascontiguousarray(headers, dtype=np.uint8).reshape(-1, TAR_HEADER).view("<u8")
    with np.errstate(over="ignore"):
        h = (words * _fp_weights()).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return h.view(np.int64)


def fingerprint_int(header: bytes) -> int:
    """The fingerprint of one image whose tar header block is `header` (b"" for a loose file: a zero block), as
    the signed int64 `header_fingerprints` gives."""
    import numpy as np

    block = np.frombuffer(header.ljust(TAR_HEADER, b"\0"), dtype=np.uint8)
    return int(header_fingerprints(block)[0])


def fingerprint(header: bytes) -> str:
    """`fingerprint_int` as the 16 hex digits a manifest record holds."""
    return fp_from_int(fingerprint_int(header))


def fp_to_int(fp: str) -> int:
    """The fingerprint as a signed int64 (how the trainer's scan cache stores it)."""
    v = int(fp, 16)
    return v - (1 << 64) if v >= 1 << 63 else v


def fp_from_int(v: int) -> str:
    return f"{v & _MASK64:016x}"


# ---- reading --------------------------------------------------------------------------------------------------
class _OpenShards:
    """This process's open shard descriptors; checked against the recorded size/mtime once each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.fds: dict[str, int] = {}

    def fd(self, ref: ImageRef) -> int:
        with self.lock:
            if (
                self.pid != os.getpid()
            ):  # a forked child: the inherited descriptors share offsets; start afresh
                self.pid, self.fds = os.getpid(), {}
            fd = self.fds.get(ref.shard)
            if fd is not None:
                return fd
            try:
                fd = os.open(ref.shard, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                raise KxlError(
                    f"image shard is missing (it holds post {ref.post} of this dataset)",
                    path=ref.shard,
                    hint="the dataset references images inside its shards: put the shard back at this path "
                    "(on every machine of a multi-node run), or rebuild the dataset",
                ) from None
            except OSError as exc:
                raise KxlError(f"cannot open image shard ({exc.strerror or exc})", path=ref.shard) from None
            st = os.fstat(fd)
            if st.st_size != ref.shard_size or st.st_mtime_ns != ref.shard_mtime_ns:
                os.close(fd)
                raise shard_changed_error(
                    ref.shard, ref.shard_size, ref.shard_mtime_ns, st.st_size, st.st_mtime_ns
                )
            self.fds[ref.shard] = fd
            return fd

    def close_all(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                for fd in self.fds.values():
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self.fds = {}


_shards = _OpenShards()


def close_shards() -> None:
    """Close this process's shard descriptors (tests replace shards; a long-lived GUI reopens datasets)."""
    _shards.close_all()


def shard_changed_error(path: str, size: int, mtime_ns: int, now_size: int, now_mtime_ns: int) -> KxlError:
    if now_size != size:
        what = f"its size is {now_size:,} bytes, it was {size:,}"
    else:
        what = "its modification time differs"
    return KxlError(
        f"image shard changed since the dataset was built ({what})",
        path=path,
        hint="the dataset's offsets point into the old file: restore that shard or rebuild the dataset "
        "(`kxl dataset build --image-mode reference`)",
    )


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """`size` bytes at `offset`, fewer only at the end of the file."""
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_ref(ref: ImageRef) -> bytes:
    """The image's bytes, checked: KxlError naming the shard when it is missing, changed or the bytes differ."""
    fd = _shards.fd(ref)
    span = header_span(ref.offset)
    try:
        data = pread_exact(fd, span + ref.size, ref.offset - span)
    except OSError as exc:
        raise KxlError(f"cannot read image shard ({exc.strerror or exc})", path=ref.shard) from None
    if len(data) != span + ref.size:
        raise KxlError(
            f"image shard is truncated: post {ref.post} needs bytes {ref.offset:,}..{ref.offset + ref.size:,}",
            path=ref.shard,
            hint="restore the shard or rebuild the dataset",
        )
    if fingerprint(data[:span]) != ref.fp:
        raise KxlError(
            f"image shard was modified: the tar member at offset {ref.offset:,} is not the one post {ref.post} "
            "had when the dataset was built",
            path=ref.shard,
            hint="restore the shard or rebuild the dataset",
        )
    return data[span:] if span else data


def open_ref_image(ref: ImageRef) -> Any:
    """A PIL image of the referenced bytes (the caller closes it)."""
    from PIL import Image

    return Image.open(io.BytesIO(read_ref(ref)))


# ---- the dataset's reference files ----------------------------------------------------------------------------
def is_reference_dataset(root: str | Path) -> bool:
    return (Path(root) / SHARDS_FILE).is_file()


def read_shards_file(root: str | Path) -> dict[str, ShardInfo]:
    """shards.json -> {absolute path: ShardInfo}; KxlError naming the file when it is damaged or of another
    format."""
    path = Path(root) / SHARDS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version")
        shards = {
            str(p): ShardInfo(str(p), int(v["size"]), int(v["mtime_ns"])) for p, v in data["shards"].items()
        }
    except FileNotFoundError:
        raise KxlError("file missing: this referenced dataset is incomplete", path=path) from None
    except (OSError, UnicodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KxlError(f"not a readable shard list ({exc})", path=path) from None
    if version != FORMAT_VERSION:
        raise KxlError(
            f"referenced dataset of format {version!r}; this version reads format {FORMAT_VERSION}",
            path=path,
            hint="build the dataset again with the same options (`kxl dataset build --image-mode reference`)",
        )
    return shards


def shards_file_text(images_root: Path, shards: dict[str, ShardInfo], posts: dict[str, int]) -> str:
    body = {
        "version": FORMAT_VERSION,
        "images": str(images_root),
        "shards": {
            p: {"size": s.size, "mtime_ns": s.mtime_ns, "posts": posts.get(p, 0)}
            for p, s in sorted(shards.items())
        },
    }
    return json.dumps(body, indent=1) + "\n"


def ref_from_record(record: dict, shards: dict[str, ShardInfo]) -> ImageRef | None:
    """The ImageRef of a manifest record, or None when it has no (valid) `ref`."""
    ref = record.get("ref")
    if not isinstance(ref, dict):
        return None
    try:
        info = shards[str(ref["shard"])]
        return ImageRef(info.path, int(ref["offset"]), int(ref["size"]), str(ref["fp"]), info.size,
                        info.mtime_ns, int(record["id"]))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


# A record's `file` in a referenced dataset: `<repeats>_<name>/<id>.<ext>`, with the name the builder allows
# (export._NAME_RE). Checked before a record counts, since materialize turns it into a path.
_FILE_RE = re.compile(r"(([1-9]\d{0,8})_[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63})/(\d{1,12})\.([A-Za-z0-9]{1,8})")


@dataclass(frozen=True)
class RefRecord:
    """One image of a referenced dataset, as its manifest line describes it (validated)."""

    line: int  # 1-based line number in manifest.jsonl
    record: dict  # the parsed line
    subset: str  # `<repeats>_<name>`
    repeats: int
    name: str  # `<id>.<ext>`
    caption: str  # the caption field as stored
    ref: ImageRef

    @property
    def post(self) -> int:
        return self.ref.post


def iter_reference_records(
    root: str | Path, shards: dict[str, ShardInfo] | None = None
) -> Iterator[RefRecord]:
    """Every record of a referenced dataset's manifest, in file order. A line that is not a complete, valid
    record (JSON, id, a `<repeats>_<name>/<id>.<ext>` file of that id, caption, size, a ref into a listed
    shard) is a KxlError naming the manifest and the line: a referenced dataset holds nothing else."""
    root = Path(root)
    shards = read_shards_file(root) if shards is None else shards
    path = root / MANIFEST_FILE
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; the generator owns it
    except FileNotFoundError:
        raise KxlError("file missing: a referenced dataset needs its manifest", path=path) from None
    except OSError as exc:
        raise KxlError(f"cannot read the manifest ({exc.strerror or exc})", path=path) from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 - lineno is used after the loop, in messages
                if not line.strip():
                    continue
                yield _ref_record(line, lineno, shards)
        except UnicodeDecodeError as exc:
            raise KxlError(f"line {lineno + 1}: not UTF-8 ({exc.reason})", path=path) from None
        except _BadRecord as exc:
            raise KxlError(f"line {exc.args[0]}: not a valid image reference ({exc.args[1]})", path=path,
                           hint="rebuild the dataset, or restore the manifest") from None  # fmt: skip
        except OSError as exc:
            raise KxlError(f"cannot read the manifest ({exc.strerror or exc})", path=path) from None


class _BadRecord(Exception):
    pass


def _ref_record(line: str, lineno: int, shards: dict[str, ShardInfo]) -> RefRecord:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadRecord(lineno, f"not JSON: {exc.msg}") from None
    if not isinstance(rec, dict):
        raise _BadRecord(lineno, "not a JSON object")
    file, caption, ref = rec.get("file"), rec.get("caption"), rec.get("ref")
    m = _FILE_RE.fullmatch(file) if isinstance(file, str) else None
    if m is None:
        raise _BadRecord(lineno, f"'file' must be <repeats>_<name>/<id>.<ext>, not {file!r}")
    if type(rec.get("id")) is not int or rec["id"] != int(m.group(3)):
        raise _BadRecord(lineno, "'id' is missing or differs from the file name")
    if not isinstance(caption, str):
        raise _BadRecord(lineno, "no 'caption' text")
    if not all(type(rec.get(k)) is int and rec[k] > 0 for k in ("width", "height")):
        raise _BadRecord(lineno, "'width' and 'height' must be positive whole numbers")
    if not isinstance(ref, dict):
        raise _BadRecord(lineno, "no 'ref'")
    info = shards.get(ref.get("shard")) if isinstance(ref.get("shard"), str) else None
    if info is None:
        raise _BadRecord(lineno, f"its shard {ref.get('shard')!r} is not in {SHARDS_FILE}")
    offset, size, fp = ref.get("offset"), ref.get("size"), ref.get("fp")
    if (
        type(offset) is not int
        or type(size) is not int
        or offset < 0
        or size <= 0
        or offset + size > info.size
    ):
        raise _BadRecord(lineno, "'offset' and 'size' do not lie inside the shard")
    if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{16}", fp):
        raise _BadRecord(lineno, "'fp' must be 16 hex digits")
    image = ImageRef(info.path, offset, size, fp, info.size, info.mtime_ns, rec["id"])
    subset = m.group(1)
    return RefRecord(lineno, rec, subset, int(m.group(2)), f"{m.group(3)}.{m.group(4)}", caption, image)


def check_shards(shards: dict[str, ShardInfo], posts_of: Iterable[tuple[str, int]] | None = None) -> None:
    """Every shard exists with its recorded size and mtime; else one KxlError naming each missing shard with the
    posts it holds (`posts_of`: (shard path, post id) pairs) and each changed one."""
    missing: list[str] = []
    for path, info in shards.items():
        try:
            st = os.stat(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        except OSError as exc:
            raise KxlError(f"cannot read image shard ({exc.strerror or exc})", path=path) from None
        if st.st_size != info.size or st.st_mtime_ns != info.mtime_ns:
            raise shard_changed_error(path, info.size, info.mtime_ns, st.st_size, st.st_mtime_ns)
    if not missing:
        return
    held: dict[str, list[int]] = {p: [] for p in missing}
    for path, post in posts_of or ():
        if path in held:
            held[path].append(post)
    lines = []
    for path in missing:
        ids = sorted(held[path])
        shown = ", ".join(str(i) for i in ids[:10]) + (
            f" and {len(ids) - 10:,} more" if len(ids) > 10 else ""
        )
        lines.append(f"{path} (posts {shown})" if ids else path)
    raise KxlError(
        f"{len(missing)} image shard(s) of this referenced dataset are missing: "
        + "; ".join(lines[:5])
        + (f"; and {len(lines) - 5} more" if len(lines) > 5 else ""),
        path=missing[0],
        hint="mount or copy the shards back at these paths (the same paths on every machine of a multi-node run)",
    )
