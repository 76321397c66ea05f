"""Images of a *referenced* dataset: read straight out of the tar shards by byte offset, never copied.

A dataset built with `--image-mode reference` (export.py) holds captions, manifest.jsonl and the configs, but no
image files. Each manifest record carries `"ref": {"shard", "offset", "size", "fp"}`: the shard's absolute path,
where the member's bytes start in it, how many there are, and a fingerprint of them. `shards.json` beside the
manifest records each shard's size and mtime at build time.

Reading (`read_ref`): one file descriptor per shard per process (kept open; a forked or spawned data worker opens
its own), `os.pread` at the offset (no tarfile, no seek: safe from threads). The first time a process opens a
shard it compares the shard's size and mtime with the recorded ones, so a shard that was replaced, re-packed or
truncated since the build stops with an error naming it instead of feeding the trainer other bytes; every read
then checks the fingerprint of the bytes it got, which catches a change that kept size and mtime.

The fingerprint is blake2b-64 over the byte count, the first FP_EDGE bytes and the last FP_EDGE bytes (not a
sha256 of everything): the build then reads at most 2 x 16 KiB per image (plus the header) instead of all
1.3 TB of the shards, and a re-packed shard (shifted offsets) or a re-encoded image still changes it (the
WebP/JPEG header and the first and last coded bytes differ). What it cannot see is an edit confined to the
middle of a large image with size and mtime kept; that needs deliberate tampering, not a re-download.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KxlError

SHARDS_FILE = "shards.json"
FP_EDGE = 16 * 1024  # bytes hashed at each end of an image for its fingerprint
_FP_PERSON = b"kxl-ref-v1"
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
def fingerprint_parts(size: int, head: bytes, tail: bytes) -> str:
    """Fingerprint from the first min(size, FP_EDGE) bytes and the bytes after max(FP_EDGE, size - FP_EDGE)."""
    h = hashlib.blake2b(digest_size=8, person=_FP_PERSON)
    h.update(size.to_bytes(8, "little"))
    h.update(head)
    h.update(tail)
    return h.hexdigest()


def tail_start(size: int) -> int:
    """Where the fingerprint's tail starts (it never overlaps the head)."""
    return max(FP_EDGE, size - FP_EDGE)


def fingerprint(data: bytes) -> str:
    n = len(data)
    return fingerprint_parts(n, data[:FP_EDGE], data[tail_start(n) :])


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
    try:
        data = pread_exact(fd, ref.size, ref.offset)
    except OSError as exc:
        raise KxlError(f"cannot read image shard ({exc.strerror or exc})", path=ref.shard) from None
    if len(data) != ref.size:
        raise KxlError(
            f"image shard is truncated: post {ref.post} needs bytes {ref.offset:,}..{ref.offset + ref.size:,}",
            path=ref.shard,
            hint="restore the shard or rebuild the dataset",
        )
    if fingerprint(data) != ref.fp:
        raise KxlError(
            f"image shard was modified: the bytes of post {ref.post} at offset {ref.offset:,} are not the ones "
            "the dataset was built from",
            path=ref.shard,
            hint="restore the shard or rebuild the dataset",
        )
    return data


def open_ref_image(ref: ImageRef) -> Any:
    """A PIL image of the referenced bytes (the caller closes it)."""
    from PIL import Image

    return Image.open(io.BytesIO(read_ref(ref)))


# ---- the dataset's reference files ----------------------------------------------------------------------------
def is_reference_dataset(root: str | Path) -> bool:
    return (Path(root) / SHARDS_FILE).is_file()


def read_shards_file(root: str | Path) -> dict[str, ShardInfo]:
    """shards.json -> {absolute path: ShardInfo}; KxlError naming the file when it is damaged."""
    path = Path(root) / SHARDS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            str(p): ShardInfo(str(p), int(v["size"]), int(v["mtime_ns"])) for p, v in data["shards"].items()
        }
    except FileNotFoundError:
        raise KxlError("file missing: this referenced dataset is incomplete", path=path) from None
    except (OSError, UnicodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KxlError(f"not a readable shard list ({exc})", path=path) from None


def shards_file_text(images_root: Path, shards: dict[str, ShardInfo], posts: dict[str, int]) -> str:
    body = {
        "version": 1,
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


# ---- materialize ----------------------------------------------------------------------------------------------
_FILE_RE = re.compile(r"(\d+_[^/\\]+)/(\d{1,12}\.[A-Za-z0-9]{1,8})")


def materialize_dataset(src: str | Path, out: str | Path, progress: Any = None) -> int:
    """Turn a referenced dataset into a kohya folder of image files at `out` (new, or an empty folder): the same
    files, byte for byte, as a copy build of the same recipe. Written into a temp folder beside `out` and renamed
    at the end, so `out` is never a half-written dataset. Returns the number of images written."""
    import tomli_w
    import tomllib

    from ..progress import ensure_progress
    from .durable import write_new_file
    from .stats import DATASET_FILE, MANIFEST_FILE, SD_SCRIPTS_FILE, SKIPPED_FILE, is_finished_dataset

    src, out = Path(src), Path(out)
    progress = ensure_progress(progress)
    if not is_reference_dataset(src):
        raise KxlError(f"not a referenced dataset (no {SHARDS_FILE})", path=src,
                       hint="only datasets built with --image-mode reference can be materialized")  # fmt: skip
    if not is_finished_dataset(src):
        raise KxlError("the dataset build is not finished", path=src, hint="resume the build first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KxlError("output folder exists and is not empty", path=out, hint="choose a new or empty folder")
    shards = read_shards_file(src)
    records = []
    with open(src / MANIFEST_FILE, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            rec = json.loads(line)
            ref = ref_from_record(rec, shards)
            m = _FILE_RE.fullmatch(str(rec.get("file", "")))
            if ref is None or m is None:  # a name from a file is a path only once it is proven harmless
                raise KxlError(f"line {lineno}: not a valid image reference", path=src / MANIFEST_FILE)
            records.append((rec, ref, m.group(1), m.group(2)))
    check_shards(shards, ((ref.shard, ref.post) for _rec, ref, _s, _n in records))
    info = tomllib.loads((src / DATASET_FILE).read_text(encoding="utf-8"))
    info.get("output", {}).pop("image_mode", None)  # a copy build's options have no image_mode

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.materialize-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        progress.stage(f"Writing {len(records):,} images")
        lines = []
        for done, (rec, ref, sub, name) in enumerate(records, 1):
            (tmp / sub).mkdir(exist_ok=True)
            write_new_file(str(tmp / sub / name), read_ref(ref), direct=True)
            caption = name[: name.rfind(".")] + ".txt"
            shutil.copyfile(src / sub / caption, tmp / sub / caption)
            rec.pop("ref")
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            if done % 256 == 0 or done == len(records):
                progress.update(done, len(records))
                progress.check_cancelled()
        (tmp / MANIFEST_FILE).write_text("".join(lines), encoding="utf-8")
        for name in (SKIPPED_FILE, SD_SCRIPTS_FILE):
            shutil.copyfile(src / name, tmp / name)
        (tmp / DATASET_FILE).write_text(tomli_w.dumps(info), encoding="utf-8")  # last, as a build writes it
        if hasattr(os, "sync"):
            os.sync()  # the files are on disk before the folder gets its final name
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KxlError(f"cannot write the materialized dataset ({exc.strerror or exc})", path=out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(records)
