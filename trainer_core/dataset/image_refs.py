"""Images of a *referenced* dataset: read straight out of the tar shards by byte offset, never copied.

A dataset built with `--image-mode reference` (reference_build.py) holds `captions.jsonl`, `refs.npy`,
`shards.json`, `skipped.jsonl` and `kxl-dataset.toml`, and nothing else: no image, no caption file, no
`<repeats>_<name>/` folder, no per-image JSON record (composing one cost more per post than captioning it;
issue #20).

* `captions.jsonl`: `{"id": <id>, "caption": "<text>"}` per image, in id order: byte for byte what
  `kxl dataset captions` writes for the same posts. It is the caption the trainer trains on and the one the Tags
  tab shows and edits (one atomic rewrite of the file; bulk_edit.apply_manifest_edit).
* `refs.npy`: one row per image, row i = line i of captions.jsonl (the id is checked on every read): post id,
  shard index, extension code, rating/quality/year codes, width, height, the offset of the member's bytes in
  its shard, their size and the fingerprint (ref_table.REF_DTYPE). A plain structured numpy array, read with
  `allow_pickle=False`: nothing in it is ever executed.
* `shards.json` (format 3): the shards the table indexes, in order, each with its absolute path, the name a copy
  build reports (`origin`), its size and mtime at build time and its image count; the extensions the table
  indexes; the image folder name `<repeats>_<name>` (checked: materialize makes it a path).

A copy build's manifest record (`RefRecord.record`, what materialize writes) is composed from these when read.
A dataset of an older format (shards.json version 2: a JSON record per image in manifest.jsonl) is refused with
a hint to rebuild it.

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
FORMAT_VERSION = (
    3  # shards.json "version": 2 kept a JSON record per post in manifest.jsonl; 1 captions in .txt
)
TAR_HEADER = 512  # a tar member's data follows its 512-byte header block
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ShardInfo:
    path: str  # absolute
    size: int
    mtime_ns: int
    origin: str = ""  # the shard's name in a copy build's records (`shard`): relative to the images folder


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


@dataclass(frozen=True)
class ShardList:
    """shards.json: the shards in the order refs.npy's `shard` column indexes them, the extensions its `ext`
    column indexes, and the dataset's image folder (`<repeats>_<name>`, checked: it becomes a path)."""

    shards: list[ShardInfo]
    exts: list[str]
    folder: str
    repeats: int

    def by_path(self) -> dict[str, ShardInfo]:
        return {s.path: s for s in self.shards}


_FOLDER_RE = re.compile(r"([1-9]\d{0,8})_[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
_EXT_RE = re.compile(r"[A-Za-z0-9]{1,8}")


def read_shard_list(root: str | Path) -> ShardList:
    """shards.json, validated; KxlError naming the file when it is damaged or of another format (an older
    referenced dataset: rebuild it)."""
    path = Path(root) / SHARDS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version")
        if version == FORMAT_VERSION:
            shards = [ShardInfo(str(v["path"]), int(v["size"]), int(v["mtime_ns"]), str(v["origin"]))
                      for v in data["shards"]]  # fmt: skip
            exts = [str(e) for e in data["exts"]]
            folder = str(data["folder"])
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
    m = _FOLDER_RE.fullmatch(folder)
    if m is None:
        raise KxlError(
            f"not a readable shard list ('folder' must be <repeats>_<name>, not {folder!r})", path=path
        )
    bad = [e for e in exts if not _EXT_RE.fullmatch(e)]
    if bad:
        raise KxlError(f"not a readable shard list (bad image extension {bad[0]!r})", path=path)
    if any(not os.path.isabs(s.path) for s in shards):
        raise KxlError("not a readable shard list (a shard path is not absolute)", path=path)
    return ShardList(shards, exts, folder, int(m.group(1)))


def read_shards_file(root: str | Path) -> dict[str, ShardInfo]:
    """shards.json -> {absolute path: ShardInfo} (`read_shard_list`)."""
    return read_shard_list(root).by_path()


def shards_file_text(images_root: Path, folder: str, exts: list[str], shards: list[ShardInfo],
                     posts: list[int]) -> str:  # fmt: skip
    """shards.json: the dataset's fields, then one line per shard. Each part goes through json's C encoder
    (`indent` takes the pure-Python one: 75 ms for 3,000 shards, against ~10 ms)."""
    head = json.dumps({"version": FORMAT_VERSION, "images": str(images_root), "folder": folder, "exts": exts})
    lines = [
        json.dumps({"path": s.path, "origin": s.origin, "size": s.size, "mtime_ns": s.mtime_ns, "posts": n})
        for s, n in zip(shards, posts, strict=True)
    ]
    return head[:-1] + ', "shards": [\n' + ",\n".join(lines) + "\n]}\n"


@dataclass(frozen=True)
class RefRecord:
    """One image of a referenced dataset: row `line - 1` of refs.npy with line `line` of captions.jsonl."""

    line: int  # 1-based line number in captions.jsonl
    record: dict  # the copy build's manifest record of the image, plus its `ref`
    subset: str  # `<repeats>_<name>`
    repeats: int
    name: str  # `<id>.<ext>`
    caption: str
    ref: ImageRef
    width: int
    height: int

    @property
    def post(self) -> int:
        return self.ref.post


def load_ref_table(root: str | Path, shard_list: ShardList | None = None) -> Any:
    """refs.npy, validated against shards.json: plain columns only (never unpickled), every shard and extension
    index in range, every (offset, size) inside its shard, positive sizes, ids increasing. KxlError naming the
    file and the first bad row otherwise."""
    import numpy as np

    from .ref_table import REF_DTYPE, REFS_FILE

    root = Path(root)
    shard_list = read_shard_list(root) if shard_list is None else shard_list
    path = root / REFS_FILE
    try:
        table = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise KxlError("file missing: this referenced dataset is incomplete", path=path) from None
    except (OSError, ValueError, EOFError) as exc:
        raise KxlError(f"not a readable reference table ({exc})", path=path,
                       hint="rebuild the dataset") from None  # fmt: skip
    if table.dtype != REF_DTYPE or table.ndim != 1:
        raise KxlError(f"not a reference table of this version ({table.dtype}, {table.ndim}-d)", path=path,
                       hint="rebuild the dataset (`kxl dataset build --image-mode reference`)")  # fmt: skip
    n_shards = len(shard_list.shards)
    shard_size = np.array([s.size for s in shard_list.shards] + [0], dtype=np.int64)
    k = table["shard"].astype(np.int64)
    in_range = (k >= 0) & (k < n_shards)
    end = table["offset"] + table["size"]
    checks = [
        (in_range, f"its shard is not one of the {n_shards} in {SHARDS_FILE}"),
        ((table["ext"] >= 0) & (table["ext"] < len(shard_list.exts)), "its extension is not in shards.json"),
        ((table["offset"] >= 0) & (table["size"] > 0) & (end <= shard_size[np.where(in_range, k, n_shards)]),
         "'offset' and 'size' do not lie inside the shard"),
        ((table["width"] > 0) & (table["height"] > 0), "width and height must be positive"),
        ((table["id"] >= 0) & np.concatenate([[True], np.diff(table["id"]) > 0]), "ids must increase"),
    ]  # fmt: skip
    for ok, why in checks:
        bad = np.flatnonzero(~ok)
        if bad.size:
            raise KxlError(f"row {int(bad[0]) + 1} (post {int(table['id'][bad[0]])}): {why}", path=path,
                           hint="rebuild the dataset, or restore the file")  # fmt: skip
    return table


def _label(labels: tuple[str, ...], code: int) -> str | None:
    return labels[code] if 0 <= code < len(labels) else None


def iter_reference_records(root: str | Path, *, records: bool = False) -> Iterator[RefRecord]:
    """Every image of a referenced dataset, in id order: row i of refs.npy with line i of captions.jsonl. A
    caption line that is not `{"id": <the row's id>, "caption": <text>}` is a KxlError naming the file and the
    line, as is a bad table row (`load_ref_table`). `records=True` also composes each image's copy build
    manifest record (`record`, for materialize; else it is empty)."""
    from .captions import QUALITY_LABELS, YEAR_TAGS
    from .ref_table import CAPTIONS_FILE
    from .stats import RATING_LABELS

    root = Path(root)
    shard_list = read_shard_list(root)
    table = load_ref_table(root, shard_list)
    folder, exts, infos = shard_list.folder, shard_list.exts, shard_list.shards
    path = root / CAPTIONS_FILE
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; the generator owns it
    except FileNotFoundError:
        raise KxlError("file missing: a referenced dataset needs its captions", path=path) from None
    except OSError as exc:
        raise KxlError(f"cannot read the captions ({exc.strerror or exc})", path=path) from None
    n = len(table)
    block: dict[str, list] = {}
    with fh:
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, 1):  # noqa: B007 - lineno is used after the loop, in messages
                i = (lineno - 1) % _BLOCK_ROWS
                if i == 0:
                    if lineno > n:
                        raise _BadRecord(lineno, f"more lines than the {n:,} rows of the reference table")
                    # a block of rows as Python numbers at a time: one numpy scalar per field would cost
                    # several times more, all rows at once too much memory for 3.6 M images
                    rows = table[lineno - 1 : lineno - 1 + _BLOCK_ROWS]
                    block = {name: rows[name].tolist() for name in _COLUMNS}
                if i >= len(block["id"]):
                    raise _BadRecord(lineno, f"more lines than the {n:,} rows of the reference table")
                pid = block["id"][i]
                caption = _caption_of(raw, lineno, pid)
                shard = infos[block["shard"][i]]
                name = f"{pid}.{exts[block['ext'][i]]}"
                size, width, height = block["size"][i], block["width"][i], block["height"][i]
                ref = ImageRef(shard.path, block["offset"][i], size, f"{block['fp'][i]:016x}", shard.size,
                               shard.mtime_ns, pid)  # fmt: skip
                rec: dict = {}
                if records:
                    r = block["rating"][i]
                    rec = {"id": pid, "file": f"{folder}/{name}", "caption": caption,
                           "rating": RATING_LABELS[r] if 0 <= r < len(RATING_LABELS) else str(r),
                           "quality": _label(QUALITY_LABELS, block["quality"][i]),
                           "year": _label(YEAR_TAGS, block["year"][i]), "width": width, "height": height,
                           "shard": shard.origin, "bytes": size,
                           "ref": {"shard": shard.path, "offset": ref.offset, "size": size, "fp": ref.fp}}  # fmt: skip
                yield RefRecord(lineno, rec, folder, shard_list.repeats, name, caption, ref, width, height)
            if lineno < n:
                raise _BadRecord(lineno + 1, f"the file ends before the {n:,} rows of the reference table")
        except _BadRecord as exc:
            raise KxlError(f"line {exc.args[0]}: {exc.args[1]}", path=path,
                           hint="rebuild the dataset, or restore the file") from None  # fmt: skip
        except OSError as exc:
            raise KxlError(f"cannot read the captions ({exc.strerror or exc})", path=path) from None


_BLOCK_ROWS = 65_536
_COLUMNS = ("id", "shard", "ext", "rating", "quality", "year", "width", "height", "offset", "size", "fp")


class _BadRecord(Exception):
    pass


def _caption_of(raw: bytes, lineno: int, pid: int) -> str:
    try:
        rec = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise _BadRecord(lineno, f"not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise _BadRecord(lineno, f"not JSON: {exc.msg}") from None
    if not isinstance(rec, dict):
        raise _BadRecord(lineno, "not a JSON object")
    if type(rec.get("id")) is not int or rec["id"] != pid:
        raise _BadRecord(
            lineno, f"'id' is missing or is not {pid}, the post of row {lineno} of the reference table"
        )
    caption = rec.get("caption")
    if not isinstance(caption, str):
        raise _BadRecord(lineno, "no 'caption' text")
    return caption


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
