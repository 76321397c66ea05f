"""The trainer's start-up scan of a kohya dataset folder: every image with its caption and size, fast and cached.

A run start used to read every image header and every caption on every rank, at every start and resume (minutes
and GiB of Python objects at 3.67 M images). Now:

* **Listing.** Each subset folder is listed once and every image and caption file is `stat`ed (size, mtime_ns).
  That is all a start reads when nothing changed.
* **Fingerprint.** sha256 of the listing: subset names and repeats, file names, and the four stat numbers of every
  image/caption pair. The dataset's path is not part of it, so a moved dataset stays warm.
* **Cache.** A finished scan is stored as `scan-<fingerprint>/` (numpy `.npy` arrays, the captions as one raw UTF-8
  blob, `meta.json`; data only, never pickle), written into a temp folder and renamed, so a reader never sees half
  of one. The captions go into that folder as they are read, so even a first scan never holds them in memory. It lives in the dataset's own
  `.kxl-cache/train-scan/`, shared by every run on the dataset, or in `<run_dir>/cache/dataset-scan/` when the
  dataset folder is read-only. `latest.json` names the newest scan. The big arrays (names, captions) are memory-
  mapped from the cache, so ranks on one machine share those pages instead of each holding a private copy.
* **A changed dataset** (another fingerprint) is scanned again, reusing the newest cached scan file by file: a
  caption is re-read only when its .txt changed size or mtime, an image's size is re-read only when the image did.
* **Image sizes, cheapest first:** the previous scan (file unchanged); the dataset builder's `manifest.jsonl`
  (trainer_core/dataset/export.py writes `file`, `width`, `height` and `bytes` for every image, after every image
  is written); the image header (dataset/image_header.py). The manifest has no mtimes, so its size is used only
  when its record's `bytes` equals the file's size *and* the file is not newer than the manifest: an image edited
  or replaced after the build is newer, and gets a header read. A copy that did not keep mtimes (`cp` without
  `-p`) makes every image newer: that costs one header scan, then the cache, never a wrong size.
  Like rsync and make, the cache trusts (size, mtime_ns): a file rewritten with the same size within the file
  system's timestamp resolution is not noticed.
* **Captions** always come from the `.txt` files (the truth: the Tags tab edits them), never from the manifest.
  Files that come from disk rather than the page cache are read by a few threads (latency, not CPU, is the cost).
* **Ranks share one scan** (`scan_for_training`): rank 0 scans and writes the cache, the others wait in a
  broadcast and map rank 0's cache folder; a rank that cannot read it (another machine with a private copy of the
  dataset) scans itself and must arrive at the same content digest, else the run stops instead of training two
  ranks on different data. A rank-0 error reaches every rank, so none waits for the DDP timeout.

**Referenced datasets** (dataset/image_refs.py: `shards.json`, `refs.npy` and `captions.jsonl`, no image or
caption file): the reference table and the caption lines are the whole listing. They give every image's subset,
name, caption, size and place in its shard; the items are ordered as the same images would be in a kohya folder
(subset, then file name), so a referenced dataset and its copy give identical batches. The fingerprint is the
(size, mtime_ns) of captions.jsonl and refs.npy and shards.json's bytes: an unchanged dataset starts from the
cache without reading them, and a caption edited in the Tags tab (which rewrites captions.jsonl) makes the next
start scan it again. The refs are part of the stored scan (`ref.npy`, the shard list in meta.json). Every scan,
cached or not, checks that each shard is there with its recorded size and mtime: a missing one names its posts.

The derived data of a scan is cached beside it: the bucket of every image for one set of bucket settings
(`plan-<key>.npy`) and sd-scripts' tag frequency (`tag_frequency.json`, rank 0 only).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset.image_refs import (
    SHARDS_FILE,
    ImageRef,
    ShardInfo,
    check_shards,
    fp_from_int,
    fp_to_int,
    is_reference_dataset,
    iter_reference_records,
    read_shards_file,
)
from ..dataset.ref_table import CAPTIONS_FILE, REFS_FILE
from ..errors import KxlError
from .data import _SUBSET_RE, IMAGE_SUFFIXES, ArrayView

VERSION = 2  # 2: referenced datasets keep a reference table (issue #20)
CAPTION_SUFFIX = ".txt"
MANIFEST_FILE = "manifest.jsonl"
DATASET_CACHE_DIR = ".kxl-cache"  # inside the dataset folder
SCAN_SUBDIR = "train-scan"
RUN_CACHE_SUBDIR = Path("cache") / "dataset-scan"  # inside the run folder, when the dataset is read-only
LATEST_FILE = "latest.json"
KEEP_SCANS = 3  # scan folders kept per cache folder (the newest, and two older for runs still reading them)
_STALE_TMP_S = 3600.0
# name -> dtype of the .npy arrays of a stored scan; name_blob is memory-mapped on load
_ARRAYS = {
    "item_subset": np.int32,  # (n,) index into meta.subsets
    "name_blob": np.uint8,  # file names (os.fsencode), back to back
    "name_off": np.int64,  # (n + 1,) offsets into name_blob
    "caption_off": np.int64,  # (n + 1,) offsets into the caption blob
    "size": np.int32,  # (n, 2) width, height
    "stat": np.int64,  # (n, 4) image size, image mtime_ns, caption size, caption mtime_ns
}
# The captions (UTF-8, first line, stripped) back to back, raw bytes: written while they are read (a 1 M-image
# scan never holds them in memory) and memory-mapped on load.
CAPTION_BLOB = "caption_blob.bin"
REF_ARRAY = (
    "ref"  # referenced datasets only: (n, 4) int64 shard index (-1: a real file), offset, bytes, fingerprint
)


class ScanTable(ArrayView):
    """The scanned dataset as compact arrays; also a read-only sequence of `ImageItem`s (built on access).

    Arrays instead of millions of Python objects: 1 M images take ~40 MB plus the captions, which stay in the
    (memory-mapped) cache file once stored.
    """

    def __init__(self, root: Path, subsets: list[str], repeats: list[int], arrays: dict[str, np.ndarray],
                 fingerprint: str, cache_dir: Path | None = None, digest: str | None = None,
                 report: dict[str, Any] | None = None, caption_sha: bytes | None = None,
                 shards: list[ShardInfo] | None = None):  # fmt: skip
        self.root = Path(root)
        self.shards = list(shards or [])  # referenced dataset: the shards that arrays["ref"] indexes
        self.subsets = list(subsets)
        self.subset_repeats = np.asarray(repeats, dtype=np.int64)
        self.arrays = arrays
        self.fingerprint = fingerprint
        self.cache_dir = cache_dir
        self._digest = digest
        self._caption_sha = caption_sha  # sha256 of the caption blob, when known without reading it again
        # how this scan was obtained, for the status line and the benchmark
        self.report: dict[str, Any] = dict(report or {})
        self._subset_paths = [self.root / s for s in self.subsets]

    # ---------------------------------------------------------------- sequence of ImageItem
    def __len__(self) -> int:
        return int(self.arrays["item_subset"].shape[0])

    def _at(self, i: int) -> Any:
        from .data import ImageItem

        s = int(self.arrays["item_subset"][i])
        w, h = self.arrays["size"][i]
        return ImageItem(self._subset_paths[s] / self.name(i), self.caption(i), int(self.subset_repeats[s]),
                         self.subsets[s], (int(w), int(h)), self.image_ref(i))  # fmt: skip

    def image_ref(self, i: int) -> ImageRef | None:
        """Where image `i`'s bytes are, for a referenced image; None for an image file."""
        refs = self.arrays.get(REF_ARRAY)
        if refs is None or int(refs[i, 0]) < 0:
            return None
        k, offset, size, fp = (int(v) for v in refs[i])
        shard = self.shards[k]
        name = self.name(i)
        return ImageRef(shard.path, offset, size, fp_from_int(fp), shard.size, shard.mtime_ns,
                        int(name[: name.rfind(".")]) if name[: name.rfind(".")].isdigit() else -1)  # fmt: skip

    def check_shards(self) -> None:
        """A referenced dataset's shards are all there, unchanged (image_refs.check_shards); no-op otherwise."""
        if not self.shards:
            return
        refs = self.arrays[REF_ARRAY]

        def posts():
            paths = [sh.path for sh in self.shards]
            for i, k in enumerate(np.asarray(refs[:, 0]).tolist()):
                if k >= 0:
                    stem = self.name(i).rsplit(".", 1)[0]
                    yield paths[k], int(stem) if stem.isdigit() else -1

        check_shards({sh.path: sh for sh in self.shards}, posts())

    def name(self, i: int) -> str:
        off = self.arrays["name_off"]
        return os.fsdecode(self.arrays["name_blob"][off[i] : off[i + 1]].tobytes())

    def caption(self, i: int) -> str:
        off = self.arrays["caption_off"]
        return self.arrays["caption_blob"][off[i] : off[i + 1]].tobytes().decode("utf-8")

    def sizes(self) -> np.ndarray:
        """(n, 2) int64 width, height."""
        return np.asarray(self.arrays["size"], dtype=np.int64)

    def repeats(self) -> np.ndarray:
        """(n,) int64 repeat count of every image (its subset folder's)."""
        return self.subset_repeats[np.asarray(self.arrays["item_subset"], dtype=np.int64)]

    def captions(self, chunk: int = 65536) -> Iterator[str]:
        blob, off = self.arrays["caption_blob"], self.arrays["caption_off"]
        n = len(self)
        for lo in range(0, n, chunk):  # one copy out of the (mapped) blob per chunk, then plain bytes slicing
            hi = min(n, lo + chunk)
            rel = (np.asarray(off[lo : hi + 1]) - int(off[lo])).tolist()
            data = blob[int(off[lo]) : int(off[hi])].tobytes()
            for a, b in zip(rel[:-1], rel[1:], strict=True):
                yield data[a:b].decode("utf-8")

    # ---------------------------------------------------------------- identity
    def content_digest(self) -> str:
        """sha256 of what training sees (names, subsets, repeats, sizes, captions); not the mtimes."""
        if self._digest is None:
            h = hashlib.sha256(f"kxl-scan-content:{VERSION}".encode())
            h.update(json.dumps([self.subsets, self.subset_repeats.tolist()]).encode())
            for key in ("item_subset", "name_off", "name_blob", "size", "caption_off"):
                h.update(np.ascontiguousarray(self.arrays[key]))
            if self.shards:  # where the pixels come from is part of what training sees
                h.update(json.dumps([[sh.path, sh.size, sh.mtime_ns] for sh in self.shards]).encode())
                h.update(np.ascontiguousarray(self.arrays[REF_ARRAY]))
            if self._caption_sha is None:
                self._caption_sha = hashlib.sha256(np.ascontiguousarray(self.arrays["caption_blob"])).digest()
            h.update(self._caption_sha)
            self._digest = h.hexdigest()[:32]
        return self._digest

    # ---------------------------------------------------------------- derived data, cached beside the scan
    def bucket_assignments(self, cfg: Any, buckets: list[tuple[int, int]]) -> np.ndarray:
        """(n, 4) int64: bucket width, height, resized width, height of every image (data.assign_buckets),
        from `plan-<key>.npy` in the cache when there, else computed and stored."""
        from .data import assign_buckets

        key = hashlib.sha256(json.dumps(["kxl-plan", VERSION, cfg.resolution, cfg.min_bucket_reso,
                                         cfg.max_bucket_reso, cfg.bucket_step, cfg.bucket_no_upscale,
                                         [list(b) for b in buckets]]).encode()).hexdigest()[:16]  # fmt: skip
        path = self.cache_dir / f"plan-{key}.npy" if self.cache_dir is not None else None
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                arr = np.load(path, allow_pickle=False)
                if arr.shape == (len(self), 4) and arr.dtype == np.int64:
                    return arr
        arr = assign_buckets(self.sizes(), cfg, buckets)
        if path is not None:
            with contextlib.suppress(OSError):
                _save_npy_atomic(path, arr)
        return arr

    def tag_frequency(self, separator: str = ",") -> dict[str, dict[str, int]]:
        """sd-scripts' `ss_tag_frequency` (data.tag_frequency), cached as `tag_frequency.json`."""
        path = self.cache_dir / "tag_frequency.json" if self.cache_dir is not None else None
        if path is not None and separator == ",":
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    return data
        counters: dict[str, Counter] = {}
        subset_of = self.arrays["item_subset"].tolist()
        current, counter = -1, Counter()
        strip = str.strip
        for s, caption in zip(subset_of, self.captions(), strict=True):
            if s != current:
                current = s
                counter = counters.setdefault(self.subsets[s], Counter())
            counter.update(set(map(strip, caption.replace("|||", separator).split(separator))))
        for counter in counters.values():
            counter.pop("", None)  # an empty tag ("a,,b") was counted once per image above: not a tag
        out = {k: dict(sorted(v.items())) for k, v in counters.items()}
        if path is not None and separator == ",":
            with contextlib.suppress(OSError):
                from ..atomic import atomic_write_text

                atomic_write_text(path, json.dumps(out, ensure_ascii=False))
        return out


# ==================================================================================================== listing
class _Listing:
    """Subsets, file names and stats: what the fingerprint is made of."""

    def __init__(self, root: Path):
        self.root = root
        self.subsets: list[str] = []
        self.repeats: list[int] = []
        self.names: list[str] = []
        self.item_subset = array("i")
        self.stat = array("q")  # 4 per item
        self._encoded: list[bytes] | None = None

    def encoded_names(self) -> list[bytes]:
        if self._encoded is None:
            self._encoded = [os.fsencode(n) for n in self.names]
        return self._encoded

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"kxl-scan:{VERSION}".encode())
        h.update(json.dumps([self.subsets, self.repeats]).encode())
        h.update(b"\0".join(self.encoded_names()))
        h.update(self.item_subset.tobytes())
        h.update(self.stat.tobytes())
        return h.hexdigest()[:32]


def _sort_key(name: str) -> str:
    return os.path.normcase(name)  # what sorting pathlib paths of one folder gives (case-blind on Windows)


def list_dataset(root: str | Path) -> _Listing:
    """List a kohya folder: `<repeats>_<name>/` subfolders, images with a `.txt` next to them, their stats."""
    root = Path(root)
    if not root.is_dir():
        raise KxlError("dataset folder not found", path=root)
    try:
        subsets = sorted((e.name for e in os.scandir(root) if e.is_dir() and _SUBSET_RE.match(e.name)),
                         key=_sort_key)  # fmt: skip
    except OSError as exc:
        raise KxlError(f"cannot list the dataset folder ({exc.strerror or exc})", path=root) from None
    if not subsets:
        raise KxlError(
            "no '<repeats>_<name>' subfolders (kohya layout, e.g. '1_anime/')",
            path=root,
            hint="put images and .txt captions in a folder named like 10_mydata inside the dataset folder",
        )
    out = _Listing(root)
    use_dir_fd = os.stat in os.supports_dir_fd
    for s, sub_name in enumerate(subsets):
        sub = root / sub_name
        repeats = int(_SUBSET_RE.match(sub_name).group(1))
        if repeats < 1:
            raise KxlError("repeat count must be at least 1", path=sub)
        out.subsets.append(sub_name)
        out.repeats.append(repeats)
        try:
            entries = os.listdir(sub)
        except OSError as exc:
            raise KxlError(f"cannot list the folder ({exc.strerror or exc})", path=sub) from None
        # os.path.splitext's rule, without its cost: the extension is from the last dot, unless only dots precede it
        images = [n for n in entries if n[n.rfind(".") :].lower() in IMAGE_SUFFIXES and n.rfind(".") > 0]
        images = [n for n in images if n[0] != "." or n[: n.rfind(".")].lstrip(".")]
        captions = {n for n in entries if n.endswith(CAPTION_SUFFIX)}
        del entries
        images.sort(key=_sort_key if os.name == "nt" else None)
        fd = os.open(sub, os.O_RDONLY) if use_dir_fd else None
        try:
            stat = os.stat
            for name in images:
                txt = name[: name.rfind(".")] + CAPTION_SUFFIX
                if txt not in captions:
                    raise KxlError("image has no caption file (.txt next to it)", path=sub / name)
                try:
                    st = stat(name, dir_fd=fd) if fd is not None else stat(sub / name)
                except OSError as exc:
                    raise KxlError(f"cannot read image ({exc})", path=sub / name) from None
                st_size, st_mtime_ns = st.st_size, st.st_mtime_ns
                try:
                    ct = stat(txt, dir_fd=fd) if fd is not None else stat(sub / txt)
                except OSError as exc:
                    raise KxlError(
                        f"cannot read the caption ({exc.strerror or exc})", path=sub / txt
                    ) from None
                out.names.append(name)
                out.item_subset.append(s)
                out.stat.extend((st_size, st_mtime_ns, ct.st_size, ct.st_mtime_ns))
        finally:
            if fd is not None:
                os.close(fd)
    if not out.names:
        raise KxlError("the dataset holds no images (.png/.jpg/.webp/.bmp)", path=root)
    return out


# ==================================================================================================== manifest
# The builder's line (dataset/export.py, json.dumps with its key order): id, file, caption, rating, quality, year,
# width, height, shard, bytes. The values needed are cut out with str.rfind and two anchored patterns (3x faster
# than json.loads): `"width": ` can only be the key, since inside a JSON string its quotes would be escaped. Any
# other line is parsed as JSON.
_MANIFEST_HEAD = re.compile(r'\{"id": -?\d+, "file": "([^"\\]+)", ')
_MANIFEST_TAIL = re.compile(
    r'"width": (\d+), "height": (\d+), "shard": (?:null|"(?:[^"\\]|\\.)*"), "bytes": (\d+)\}\s*$'
)


class _Manifest:
    """`file` -> (width, height, bytes) of the builder's manifest.jsonl, and the manifest's mtime."""

    def __init__(self, path: Path):
        self.mtime_ns = os.stat(path).st_mtime_ns
        self.index: dict[str, int] = {}
        self.values = array("q")  # width, height, bytes per record
        decode, extend, index = json.JSONDecoder().decode, self.values.extend, self.index
        head, tail = _MANIFEST_HEAD.match, _MANIFEST_TAIL.match
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                m = head(line)
                t = tail(line, line.rfind('"width": ')) if m is not None else None
                if t is not None:
                    file, w, h, n = m.group(1), int(t.group(1)), int(t.group(2)), int(t.group(3))
                else:
                    try:
                        rec = decode(line)
                    except ValueError:
                        continue  # a damaged line: its image gets a header read
                    if not isinstance(rec, dict):
                        continue
                    file, w, h, n = rec.get("file"), rec.get("width"), rec.get("height"), rec.get("bytes")
                    if (
                        not isinstance(file, str)
                        or type(w) is not int
                        or type(h) is not int
                        or type(n) is not int
                    ):
                        continue
                    file = file.replace("\\", "/")
                if w > 0 and h > 0 and n > 0:
                    index[file] = len(self.values) // 3  # a repeated file: its last line counts
                    extend((w, h, n))

    def size_of(self, rel: str, st_size: int, st_mtime_ns: int) -> tuple[int, int] | None:
        j = self.index.get(rel)
        if j is None:
            return None
        w, h, n = self.values[3 * j : 3 * j + 3]
        if n != st_size or st_mtime_ns > self.mtime_ns:
            return None  # replaced or edited after the build
        return w, h


# ==================================================================================================== scanning
_IO_THREADS = 8  # reads in flight when the files come from disk (cold cache: latency-bound, not CPU-bound)
_IO_CHUNK = 1024
_SLOW_READ_S = (
    25e-6  # per file; from the page cache a read costs ~5 us of Python, where threads only add GIL churn
)


def _in_threads(fn: Callable[[list], list], items: list) -> Iterator:
    """`fn` over chunks of `items`, results in order. The first chunk runs here and is timed: if its files came from
    the page cache, the rest runs here too; if they came from disk, the rest runs in a few threads (file I/O releases
    the GIL) with a bounded number of chunks in flight."""
    chunks = [items[i : i + _IO_CHUNK] for i in range(0, len(items), _IO_CHUNK)]
    if not chunks:
        return
    t0 = time.perf_counter()
    yield from fn(chunks[0])
    slow = (time.perf_counter() - t0) / len(chunks[0]) > _SLOW_READ_S
    if len(chunks) == 1 or not slow:
        for chunk in chunks[1:]:
            yield from fn(chunk)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="kxl-scan") as pool:
        todo = iter(chunks[1:])
        pending = deque(pool.submit(fn, c) for c in itertools.islice(todo, 2 * _IO_THREADS))
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield from result


def _read_files(paths: list[str]) -> list[bytes | OSError]:
    out: list[bytes | OSError] = []
    read, close, flags = os.read, os.close, os.O_RDONLY | getattr(os, "O_BINARY", 0)
    for path in paths:
        try:
            fd = os.open(path, flags)
            try:
                data = read(fd, 1 << 16)
                if len(data) == 1 << 16:  # a long file: the rest too
                    parts = [data]
                    while chunk := read(fd, 1 << 20):
                        parts.append(chunk)
                    data = b"".join(parts)
            finally:
                close(fd)
            out.append(data)
        except OSError as exc:
            out.append(exc)
    return out


def _header_sizes(paths: list[str]) -> list[tuple[int, int] | OSError]:
    from ..dataset.image_header import image_file_size

    out: list[tuple[int, int] | OSError] = []
    for path in paths:
        try:
            out.append(image_file_size(path))
        except OSError as exc:
            out.append(exc)
    return out


def _caption(raw: bytes | OSError, path: str) -> bytes:
    """The caption: first line of the .txt, stripped, as UTF-8 (the same rules and messages as ever)."""
    if isinstance(raw, OSError):
        raise KxlError(f"cannot read the caption ({raw.strerror})", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KxlError(f"caption is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                       path=path, hint="re-save the caption as UTF-8") from None  # fmt: skip
    lines = text.splitlines()
    caption = lines[0].strip() if lines else ""
    if not caption:
        raise KxlError("caption is empty", path=path)
    return caption.encode("utf-8")


class _CaptionSink:
    """Where a scan's captions go, in item order: a file in the scan's temp folder (then memory-mapped), or memory
    when there is no cache folder. Hashes them on the way (the content digest needs no second read)."""

    def __init__(self, path: Path | None, capacity: int):
        self.path = path
        self.sha = hashlib.sha256()
        self.pos = 0
        self.fh = open(path, "wb", buffering=1 << 20) if path is not None else None  # noqa: SIM115 - closed in finish
        self.buf = np.empty(max(1, capacity), dtype=np.uint8) if path is None else None
        self.view = memoryview(self.buf) if self.buf is not None else None

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.sha.update(data)
        if self.fh is not None:
            self.fh.write(data)
        else:
            if self.pos + n > len(self.buf):  # a caption file grew since it was listed
                self.view.release()
                self.buf = np.concatenate([self.buf, np.empty(n + len(self.buf) // 8, dtype=np.uint8)])
                self.view = memoryview(self.buf)
            self.view[self.pos : self.pos + n] = data
        self.pos += n

    def finish(self) -> np.ndarray:
        if self.fh is None:
            self.view.release()
            return self.buf[: self.pos]
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        return _map_blob(self.path)

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _map_blob(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


def _copy_captions(prev: ScanTable, lo: int, hi: int, sink: _CaptionSink) -> None:
    """Bytes [lo, hi) of `prev`'s caption blob into `sink`: read from its file (so the pages are not mapped into this
    process), or sliced when it is in memory."""
    blob = prev.arrays["caption_blob"]
    path = getattr(blob, "filename", None)
    if path is None:
        sink.write(memoryview(np.ascontiguousarray(blob[lo:hi])))
        return
    with open(path, "rb") as fh:
        fh.seek(lo)
        while lo < hi:
            data = fh.read(min(hi - lo, 16 << 20))
            if not data:
                raise OSError(f"{path}: shorter than its offsets")
            sink.write(data)
            lo += len(data)


def _match_previous(listing: _Listing, names_enc: list[bytes], prev: ScanTable | None) -> np.ndarray:
    """For every listed image, its index in `prev` (same subset and file name), else -1."""
    n = len(names_enc)
    if prev is None:
        return np.full(n, -1, dtype=np.int64)
    blob = prev.arrays["name_blob"].tobytes()
    if (prev.subsets == listing.subsets and len(prev) == n
            and np.array_equal(prev.arrays["item_subset"], np.frombuffer(listing.item_subset, dtype=np.int32))
            and blob == b"".join(names_enc)):  # fmt: skip
        # the same files, in the same order (only contents changed): no index needed
        off = np.asarray(prev.arrays["name_off"])
        lengths = np.fromiter((len(b) for b in names_enc), dtype=np.int64, count=n)
        if np.array_equal(np.diff(off), lengths):
            return np.arange(n, dtype=np.int64)
    off = np.asarray(prev.arrays["name_off"]).tolist()
    psubs = [os.fsencode(s) + b"/" for s in prev.subsets]
    index = {psubs[s] + blob[a:b]: j
             for j, (s, a, b) in enumerate(zip(prev.arrays["item_subset"].tolist(), off[:-1], off[1:], strict=True))}  # fmt: skip
    subs = [os.fsencode(s) + b"/" for s in listing.subsets]
    get = index.get
    return np.fromiter((get(subs[s] + nm, -1) for s, nm in zip(listing.item_subset, names_enc, strict=True)),
                       dtype=np.int64, count=n)  # fmt: skip


def _fill(
    listing: _Listing, fingerprint: str, prev: ScanTable | None, spool: Path | None = None
) -> ScanTable:
    """Captions and sizes for a listing: from `prev` where the file is unchanged, else read / manifest / header.
    `spool`: a folder to write the captions into as they come (the stored scan's temp folder)."""
    root = listing.root
    n = len(listing.names)
    stats = np.frombuffer(listing.stat, dtype=np.int64).reshape(n, 4)
    names_enc = listing.encoded_names()
    j = _match_previous(listing, names_enc, prev)
    jj = np.maximum(j, 0)
    if prev is not None:
        p_stat = np.asarray(prev.arrays["stat"])[jj]
        txt_same = (j >= 0) & (p_stat[:, 2] == stats[:, 2]) & (p_stat[:, 3] == stats[:, 3])
        img_same = (j >= 0) & (p_stat[:, 0] == stats[:, 0]) & (p_stat[:, 1] == stats[:, 1])
        del p_stat
        p_off = np.asarray(prev.arrays["caption_off"])
        cached_len = np.where(txt_same, p_off[jj + 1] - p_off[jj], 0)
    else:
        txt_same = img_same = np.zeros(n, dtype=bool)
        cached_len = np.zeros(n, dtype=np.int64)
    sub_of = listing.item_subset

    prefixes = [os.path.join(root, s, "") for s in listing.subsets]
    names = listing.names

    def path_of(i: int) -> str:
        return prefixes[sub_of[i]] + names[i]

    t0 = time.perf_counter()
    # ---- captions, in item order: unchanged runs copied from the previous scan, the others read
    # (a caption is at most its file: the in-memory buffer never has to grow)
    sink = _CaptionSink(spool / CAPTION_BLOB if spool is not None else None,
                        int(np.where(txt_same, cached_len, stats[:, 2]).sum()))  # fmt: skip
    cap_off = np.zeros(n + 1, dtype=np.int64)
    read_paths = [prefixes[sub_of[i]] + names[i][: names[i].rfind(".")] + CAPTION_SUFFIX
                  for i in np.flatnonzero(~txt_same).tolist()]  # fmt: skip
    brk = np.ones(n, dtype=bool)  # where a run of captions to copy (or to read) starts
    brk[1:] = (txt_same[1:] != txt_same[:-1]) | (txt_same[1:] & (jj[1:] != jj[:-1] + 1))
    starts = np.flatnonzero(brk).tolist()
    k = 0
    try:
        with contextlib.closing(_in_threads(_read_files, read_paths)) as raw:
            for a, b in zip(starts, starts[1:] + [n], strict=True):
                if txt_same[a]:
                    lo, hi = int(p_off[jj[a]]), int(p_off[jj[b - 1] + 1])
                    cap_off[a + 1 : b + 1] = sink.pos + (p_off[jj[a] + 1 : jj[b - 1] + 2] - lo)
                    _copy_captions(prev, lo, hi, sink)
                    continue
                for i in range(a, b):
                    sink.write(_caption(next(raw), read_paths[k]))
                    k += 1
                    cap_off[i + 1] = sink.pos
        blob = sink.finish()
    except BaseException:
        sink.abort()
        raise

    t1 = time.perf_counter()
    # ---- sizes: unchanged images from the previous scan, then the manifest, then the headers
    sizes = np.zeros((n, 2), dtype=np.int32)
    if prev is not None:
        sizes[img_same] = np.asarray(prev.arrays["size"])[jj[img_same]]
    need = np.flatnonzero(~img_same).tolist()
    from_manifest = 0
    if need:
        manifest = None
        with contextlib.suppress(OSError, UnicodeError):
            mpath = root / MANIFEST_FILE
            if mpath.is_file():
                manifest = _Manifest(mpath)
        if manifest is not None:
            rest, got, got_w, got_h = [], array("q"), array("i"), array("i")
            flat, subsets = listing.stat, listing.subsets
            for i in need:
                found = manifest.size_of(f"{subsets[sub_of[i]]}/{names[i]}", flat[4 * i], flat[4 * i + 1])
                if found is None:
                    rest.append(i)
                else:
                    got.append(i)
                    got_w.append(found[0])
                    got_h.append(found[1])
            idx = np.frombuffer(got, dtype=np.int64)
            sizes[idx, 0], sizes[idx, 1] = (
                np.frombuffer(got_w, dtype=np.int32),
                np.frombuffer(got_h, dtype=np.int32),
            )
            from_manifest = len(got)
            need = rest
            del manifest, got, got_w, got_h, idx
        paths = [path_of(i) for i in need]
        with contextlib.closing(_in_threads(_header_sizes, paths)) as found_sizes:
            for i, path, found in zip(need, paths, found_sizes, strict=True):
                if isinstance(found, OSError):
                    raise KxlError(f"cannot read image ({found})", path=path)
                sizes[i] = found

    name_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names_enc], out=name_off[1:])
    arrays = {
        "item_subset": np.frombuffer(listing.item_subset, dtype=np.int32).copy(),
        "name_blob": np.frombuffer(b"".join(names_enc), dtype=np.uint8),
        "name_off": name_off,
        "caption_off": cap_off,
        "size": sizes,
        "stat": stats.copy(),
        "caption_blob": blob,
    }
    cached_captions, cached_sizes = int(txt_same.sum()), int(img_same.sum())
    report = {"captions_cached": cached_captions, "captions_read": n - cached_captions,
              "sizes_cached": cached_sizes, "sizes_manifest": from_manifest,
              "sizes_header": n - cached_sizes - from_manifest, "captions_s": round(t1 - t0, 3),
              "sizes_s": round(time.perf_counter() - t1, 3)}  # fmt: skip
    return ScanTable(root, listing.subsets, listing.repeats, arrays, fingerprint, report=report,
                     caption_sha=sink.sha.digest())  # fmt: skip


# ==================================================================================================== cache files
def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    from ..atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)


def _fsync_dir(path: Path) -> None:
    if sys.platform.startswith("win"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_temp_folder(cache_root: Path, fingerprint: str) -> Path:
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".scan-{fingerprint}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def store_scan(table: ScanTable, cache_root: Path, tmp: Path | None = None) -> Path:
    """Write `table` as `<cache_root>/scan-<fingerprint>/` (a temp folder, renamed once complete), point latest.json
    at it, prune old scans; returns the folder. `tmp`: the temp folder already holding the captions (spooled by the
    scan). OSError when it cannot be written (the caller goes on without a cache)."""
    final = cache_root / f"scan-{table.fingerprint}"
    if (final / "meta.json").is_file():
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp = tmp if tmp is not None else _new_temp_folder(cache_root, table.fingerprint)
        try:
            for key in _ARRAYS:
                with open(tmp / f"{key}.npy", "wb") as fh:
                    np.save(fh, np.ascontiguousarray(table.arrays[key]), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            if table.shards:
                with open(tmp / f"{REF_ARRAY}.npy", "wb") as fh:
                    np.save(fh, np.ascontiguousarray(table.arrays[REF_ARRAY]), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            if not (tmp / CAPTION_BLOB).is_file():
                with open(tmp / CAPTION_BLOB, "wb") as fh:
                    fh.write(memoryview(np.ascontiguousarray(table.arrays["caption_blob"])))
                    fh.flush()
                    os.fsync(fh.fileno())
            meta = {"version": VERSION, "fingerprint": table.fingerprint, "count": len(table),
                    "subsets": table.subsets, "repeats": table.subset_repeats.tolist(),
                    "content_digest": table.content_digest(), "written": time.time()}  # fmt: skip
            if table.shards:
                meta["shards"] = [[sh.path, sh.size, sh.mtime_ns] for sh in table.shards]
            with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
                json.dump(meta, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same scan first
            _fsync_dir(cache_root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    from ..atomic import atomic_write_text

    atomic_write_text(cache_root / LATEST_FILE, json.dumps({"fingerprint": table.fingerprint}))
    _prune(cache_root, keep=final.name)
    return final


def _prune(cache_root: Path, keep: str) -> None:
    """Keep the newest KEEP_SCANS scan folders (always `keep`); drop temp folders of writers long gone."""
    now = time.time()
    scans = []
    with contextlib.suppress(OSError):
        for e in os.scandir(cache_root):
            if e.name.startswith("scan-") and e.is_dir():
                with contextlib.suppress(OSError):
                    scans.append((e.stat().st_mtime, e.name))
            elif e.name.startswith(".scan-") and ".tmp-" in e.name:
                with contextlib.suppress(OSError):
                    if now - e.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(e.path, ignore_errors=True)
    scans.sort(reverse=True)
    kept = 1
    for _, name in scans:
        if name == keep:
            continue
        if kept < KEEP_SCANS:
            kept += 1
            continue
        shutil.rmtree(cache_root / name, ignore_errors=True)


def load_scan(folder: Path, root: Path, fingerprint: str | None = None) -> ScanTable | None:
    """A stored scan (None when missing, of another version or fingerprint, or damaged)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != VERSION or (
            fingerprint is not None and meta.get("fingerprint") != fingerprint
        ):
            return None
        arrays = {}
        for key, dtype in _ARRAYS.items():
            arr = np.load(
                folder / f"{key}.npy", mmap_mode="r" if key == "name_blob" else None, allow_pickle=False
            )
            if arr.dtype != dtype:
                return None
            arrays[key] = arr
        arrays["caption_blob"] = _map_blob(folder / CAPTION_BLOB)
        n = int(meta["count"])
        shards = [ShardInfo(str(p), int(size), int(mtime)) for p, size, mtime in meta.get("shards", [])]
        if shards:
            refs = np.load(folder / f"{REF_ARRAY}.npy", allow_pickle=False)
            if (
                refs.dtype != np.int64
                or refs.shape != (n, 4)
                or int(refs[:, 0].max(initial=-1)) >= len(shards)
            ):
                return None
            arrays[REF_ARRAY] = refs
        subsets, repeats = list(meta["subsets"]), [int(r) for r in meta["repeats"]]
        ok = (arrays["item_subset"].shape == (n,) and arrays["name_off"].shape == (n + 1,)
              and arrays["caption_off"].shape == (n + 1,) and arrays["size"].shape == (n, 2)
              and arrays["stat"].shape == (n, 4) and len(subsets) == len(repeats)
              and int(arrays["name_off"][-1]) == arrays["name_blob"].shape[0]
              and int(arrays["caption_off"][-1]) == arrays["caption_blob"].shape[0])  # fmt: skip
        if not ok or (n and not 0 <= int(arrays["item_subset"].max()) < len(subsets)):
            return None
        return ScanTable(root, subsets, repeats, arrays, str(meta["fingerprint"]), cache_dir=folder,
                         digest=meta.get("content_digest"), shards=shards)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cache_roots(root: Path, run_dir: Path | None = None) -> list[Path]:
    """Where scans are looked for, in order: the dataset's own cache, then the run's."""
    roots = [Path(root) / DATASET_CACHE_DIR / SCAN_SUBDIR]
    if run_dir is not None:
        roots.append(Path(run_dir) / RUN_CACHE_SUBDIR)
    return roots


def _latest(cache_root: Path, root: Path) -> ScanTable | None:
    try:
        fp = json.loads((cache_root / LATEST_FILE).read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return load_scan(cache_root / f"scan-{fp}", root, fp)


def scan_table(root: str | Path, caches: list[Path] | None = None, write: bool = True) -> ScanTable:
    """Scan a kohya dataset folder. `caches`: cache folders to read (in order) and to write (the first writable
    one, when `write`); None scans without any cache. A referenced dataset's shards are checked every time."""
    table = _scan_table(root, caches, write)
    table.check_shards()
    return table


def _scan_table(root: str | Path, caches: list[Path] | None, write: bool) -> ScanTable:
    root = Path(root)
    if is_reference_dataset(root):
        return _scan_reference(root, list(caches or []), write)
    t0 = time.perf_counter()
    listing = list_dataset(root)
    fp = listing.fingerprint()
    t_list = time.perf_counter() - t0
    caches = list(caches or [])
    for cache_root in caches:
        table = load_scan(cache_root / f"scan-{fp}", root, fp)
        if table is not None:
            table.report.update(cache="hit", listing_s=round(t_list, 3), images=len(table))
            return table
    prev = None
    for cache_root in caches:
        prev = _latest(cache_root, root)
        if prev is not None:
            break

    def report(table: ScanTable) -> None:
        cached = table.report["captions_cached"] or table.report["sizes_cached"]
        table.report.update(cache="partial" if cached else ("miss" if caches else "off"),
                            listing_s=round(t_list, 3), images=len(table))  # fmt: skip

    return _fill_and_store(
        root, fp, caches, write, lambda spool: _fill(listing, fp, prev, spool=spool), report
    )


def _fill_and_store(root: Path, fp: str, caches: list[Path], write: bool,
                    fill: Callable[[Path | None], ScanTable], report: Callable[[ScanTable], None]) -> ScanTable:  # fmt: skip
    """Scan into a temp folder of the first writable cache place, store it there and read it back (memory-mapped);
    without a writable place (or when storing fails) the scan stays in memory."""
    tmp = tmp_root = None
    for cache_root in caches if write else []:
        try:
            tmp, tmp_root = _new_temp_folder(cache_root, fp), cache_root
            break
        except OSError:
            continue  # a read-only dataset folder: the next place
    try:
        table = fill(tmp)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(table)
    if tmp is None:
        return table
    t_store = time.perf_counter()
    try:
        folder = store_scan(table, tmp_root, tmp)
    except OSError:
        # no cache after all (disk full?): keep the captions, which live in the temp folder, in memory
        table.arrays["caption_blob"] = np.array(table.arrays["caption_blob"])
        shutil.rmtree(tmp, ignore_errors=True)
        return table
    table.report["store_s"] = round(time.perf_counter() - t_store, 3)
    stored = load_scan(folder, root, fp)
    if stored is None:
        table.cache_dir = folder
        return table
    stored.report = table.report
    return stored


# ==================================================================================================== referenced
def reference_fingerprint(root: Path) -> str:
    """What a referenced dataset's scan depends on: the caption lines' and the reference table's size and mtime
    (a Tags edit rewrites the captions), and shards.json's bytes."""
    try:
        stats = [os.stat(root / name) for name in (CAPTIONS_FILE, REFS_FILE)]
        shards = (root / SHARDS_FILE).read_bytes()
    except FileNotFoundError as exc:
        read_shards_file(root)  # a dataset of an older format lacks these files: say that, with its hint
        raise KxlError("file missing: this referenced dataset is incomplete", path=exc.filename) from None
    except OSError as exc:
        raise KxlError(f"cannot read the dataset ({exc.strerror or exc})", path=exc.filename) from None
    h = hashlib.sha256(f"kxl-scan-ref:{VERSION}".encode())
    for st in stats:
        h.update(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    h.update(shards)
    return h.hexdigest()[:32]


def _scan_reference(root: Path, caches: list[Path], write: bool) -> ScanTable:
    t0 = time.perf_counter()
    fp = reference_fingerprint(root)
    for cache_root in caches:
        table = load_scan(cache_root / f"scan-{fp}", root, fp)
        if table is not None:
            table.report.update(cache="hit", listing_s=round(time.perf_counter() - t0, 3), images=len(table))
            return table

    def report(table: ScanTable) -> None:
        table.report.update(cache="miss" if caches else "off", listing_s=round(time.perf_counter() - t0, 3),
                            images=len(table))  # fmt: skip

    return _fill_and_store(root, fp, caches, write, lambda spool: _read_reference(root, fp, spool), report)


def _read_reference(root: Path, fingerprint: str, spool: Path | None) -> ScanTable:
    """A referenced dataset's scan from its reference table and caption lines (image_refs validates every row
    and line). The captions are gathered in id order, then written in item order (subset, then name, as a
    kohya folder lists them); with a spool folder the gathering goes to a temp file there, so a 3.6 M-image
    dataset is never in memory."""
    infos = read_shards_file(root)
    shards = [infos[p] for p in sorted(infos)]
    shard_index = {sh.path: k for k, sh in enumerate(shards)}
    subsets: dict[str, int] = {}  # subset name -> repeats
    subset_of, names, rows = [], [], array("q")  # rows: 8 per record (see below)
    cap_off = [0]
    raw_path = spool / "captions-by-id.bin" if spool is not None else None
    raw = open(raw_path, "w+b") if raw_path is not None else io.BytesIO()  # noqa: SIM115 - closed below
    manifest_mtime = os.stat(root / CAPTIONS_FILE).st_mtime_ns
    try:
        t0 = time.perf_counter()
        for r in iter_reference_records(root):
            lines = r.caption.splitlines()  # the first line, stripped: what `_caption` takes from a .txt
            caption = lines[0].strip() if lines else ""
            if not caption:
                raise KxlError(
                    f"line {r.line}: the caption of post {r.post} is empty", path=root / CAPTIONS_FILE
                )
            data = caption.encode("utf-8")
            raw.write(data)
            cap_off.append(cap_off[-1] + len(data))
            subsets.setdefault(r.subset, r.repeats)
            subset_of.append(r.subset)
            names.append(r.name)
            ref = r.ref
            rows.extend((shard_index[ref.shard], ref.offset, ref.size, fp_to_int(ref.fp),
                         r.width, r.height, len(data), 0))  # fmt: skip
        if not names:
            raise KxlError("the referenced dataset lists no image", path=root / CAPTIONS_FILE)
        ordered = sorted(subsets, key=_sort_key)
        s_index = {name: i for i, name in enumerate(ordered)}
        item_subset = np.fromiter((s_index[x] for x in subset_of), dtype=np.int32, count=len(names))
        # as a kohya folder's scan orders them: subset, then file name (case-blind on Windows)
        name_keys = np.array([_sort_key(x) for x in names] if os.name == "nt" else names)
        order = np.lexsort((name_keys, item_subset)).tolist()
        del name_keys
        n = len(order)
        all_rows = np.frombuffer(rows, dtype=np.int64).reshape(n, 8)
        starts = np.asarray(cap_off[:-1], dtype=np.int64)
        lengths = np.diff(np.asarray(cap_off, dtype=np.int64))
        raw.flush()
        sink = _CaptionSink(spool / CAPTION_BLOB if spool is not None else None, int(lengths.sum()))
        try:
            blob_in = (
                raw.getvalue() if isinstance(raw, io.BytesIO) else _map_blob(raw_path) if cap_off[-1] else b""
            )
            caption_off = np.zeros(n + 1, dtype=np.int64)
            for j, i in enumerate(order):
                a = int(starts[i])
                sink.write(memoryview(blob_in[a : a + int(lengths[i])]))
                caption_off[j + 1] = sink.pos
            del blob_in
            blob = sink.finish()
        except BaseException:
            sink.abort()
            raise
    finally:
        raw.close()
        if raw_path is not None:
            with contextlib.suppress(OSError):
                raw_path.unlink()
    idx = np.asarray(order, dtype=np.int64)
    names_enc = [os.fsencode(names[i]) for i in order]
    name_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names_enc], out=name_off[1:])
    picked = all_rows[idx]
    shard_mtime = np.array([sh.mtime_ns for sh in shards], dtype=np.int64)
    manifest_col = np.full(n, manifest_mtime, dtype=np.int64)
    stat = np.stack([picked[:, 2], shard_mtime[picked[:, 0]], picked[:, 6], manifest_col], axis=1)
    arrays = {
        "item_subset": item_subset[idx],
        "name_blob": np.frombuffer(b"".join(names_enc), dtype=np.uint8),
        "name_off": name_off,
        "caption_off": caption_off,
        "size": np.ascontiguousarray(picked[:, 4:6]).astype(np.int32),
        "stat": np.ascontiguousarray(stat),
        "caption_blob": blob,
        REF_ARRAY: np.ascontiguousarray(picked[:, :4]),
    }
    report = {"captions_cached": 0, "captions_read": n, "sizes_cached": 0, "sizes_manifest": n, "sizes_header": 0,
              "captions_s": round(time.perf_counter() - t0, 3), "sizes_s": 0.0}  # fmt: skip
    return ScanTable(root, ordered, [subsets[x] for x in ordered], arrays, fingerprint, report=report,
                     caption_sha=sink.sha.digest(), shards=shards)  # fmt: skip


# ==================================================================================================== ranks
def scan_for_training(root: str | Path, run_dir: Path | None, rank: int = 0, world: int = 1,
                      broadcast: Callable[[Any], Any] | None = None,
                      prepare: Callable[[ScanTable], None] | None = None) -> ScanTable:  # fmt: skip
    """One scan for all ranks. Rank 0 scans (with the cache) and runs `prepare` on the result (to store the bucket
    plan before the others read it); `broadcast(obj)` (rank 0's obj, returned on every rank) tells the others
    where the stored scan is, or rank 0's error."""
    caches = cache_roots(Path(root), run_dir)
    if world <= 1 or broadcast is None:
        table = scan_table(root, caches)
        if prepare is not None:
            prepare(table)
        return table
    if rank == 0:
        try:
            table = scan_table(root, caches)
            if prepare is not None:
                prepare(table)
        except KxlError as exc:
            broadcast({"error": str(exc)})
            raise
        except BaseException:
            broadcast({"error": "rank 0 failed while scanning the dataset (see its log)"})
            raise
        broadcast({"folder": str(table.cache_dir) if table.cache_dir is not None else None,
                   "fingerprint": table.fingerprint, "digest": table.content_digest()})  # fmt: skip
        return table
    msg = broadcast(None)
    if "error" in msg:
        err = KxlError("")
        err.args = (msg["error"],)  # rank 0's message as it is (it already names the file)
        raise err
    table = None
    if msg.get("folder"):
        table = load_scan(Path(msg["folder"]), Path(root), msg["fingerprint"])
        if table is not None:
            table.report.update(cache="shared", images=len(table))
            table.check_shards()  # this machine's view of the shards (multi-node: the same path on each)
    if table is None:
        table = scan_table(root, caches)  # rank 0's cache is not visible here (another machine)
        if table.content_digest() != msg["digest"]:
            raise KxlError(
                f"the dataset differs between rank 0 and rank {rank} (file names, sizes or captions)",
                path=root,
                hint="every machine must hold the same copy of the dataset at the same path",
            )
    return table
