"""The export step of a reference build (`kxl dataset build --image-mode reference`): no image, no caption file.

What it writes (image_refs.py describes the format): `manifest.jsonl`, whose records are a copy build's records
byte for byte plus a `ref`, with the caption in its `caption` field; `skipped.jsonl` (the same as a copy
build's); `shards.json`. No `<repeats>_<name>/` folder, no `<id>.txt`, no sd-scripts config (sd-scripts cannot
read shards; `kxl dataset materialize` writes all of those). A 1 M-post build thus writes a few hundred bytes per
post into three files, where writing one caption file per post cost more than everything else together
(0.2-0.7 ms of kernel time per created file on the project's VM; profile in the issue #20 notes).

Two passes, each the cheapest form of its work:
1. **Locate**, headers only, in parallel: groups of 25 buckets (`id % 1000`, the shards' split) run on
   `workers` threads. tar_headers.py walks each candidate shard from header to header (one `pread` of a page per
   big member, 64 KB per run of small ones; the only per-member Python step), then validates, names,
   fingerprints and sizes all the group's headers in one numpy pass, and each bucket takes its posts from its
   shards in a copy build's order (data-0XYZ .. data-9XYZ, then `updates/*/*.tar`; the first member of an id
   wins). A shard that pass cannot decide exactly goes to the one-member-at-a-time reader, and one that cannot
   either to tarfile, as a copy build reads it, so the same posts are found, missing or corrupt (tested with
   pax, GNU, damaged, truncated and empty shards). Width and height come from the image's first 30 bytes for a
   plain WebP, else from its first pages (image_header.py), and from a full decode only where a copy build
   decodes too. What is kept per post is 64 bytes of numbers.
2. **Captions and manifest**, in id order, by the same caption workers as `kxl dataset captions` (worker
   processes for big selections), started before pass 1 so they run while it walks; each chunk's records are
   composed and streamed into the manifest's temp file.

Measured (benchmarks/bench_dataset_reference.py, 1 M-post demo, 870,916 images, 2 shared cores): 668 bytes
written per post (0.18 % of a copy of real-size images); 26 s against 9-11 s for captions alone: per post
the walk costs ~4 us and composing a record ~3 us of Python, where captions from the column cache cost ~5 us.

Nothing is written before the end: an interrupted reference build has nothing to resume and simply runs again
(its stored options still guard the folder, as for a copy build).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import Counter
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, write_error
from ..errors import KxlError
from ..progress import Progress
from .caption_stream import CaptionWorkers, iter_caption_chunks
from .captions import QUALITY_LABELS, YEAR_TAGS, CaptionChunk, QualityScheme
from .column_cache import ColumnCache
from .image_header import HEAD_BYTES, MAX_PIXELS, _FileView, _webp, image_size, simple_webp_size
from .image_refs import SHARDS_FILE, ShardInfo, fingerprint_int, pread_exact, shards_file_text
from .images import BUCKETS, SHARD_RE, Hit, ImageSource, MemberRef, ShardReadError, scan_tar_refs
from .stats import MANIFEST_FILE, RATING_LABELS, SKIPPED_FILE, DatasetSummary, summarize_counts
from .tar_headers import BLOCK, MEMBER_EXTS, READ, FoundMember, Headers, Walk, scan_wanted, settle, walk_shard

_RESUME_HINT = "free some space and run the same build again"
# per found post: post id, shard index, data offset, bytes, fingerprint, width, height, extension code
_FIELDS = 8


class _Shards:
    """The shards (or loose files) the build took images from: an index each, their state when first opened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index: dict[str, int] = {}
        self.infos: list[ShardInfo] = []
        self.origins: list[str] = []

    def add(self, path: Path, origin: str, fd: int) -> int:
        shard = os.path.abspath(path)  # as given, made absolute: no symlink resolved (multi-node mounts)
        k = self.index.get(shard)
        if k is None:
            st = os.fstat(fd)
            k = self.add_info(ShardInfo(shard, st.st_size, st.st_mtime_ns), origin)
        return k

    def add_info(self, info: ShardInfo, origin: str) -> int:
        with self.lock:
            k = self.index.get(info.path)
            if k is None:
                k = self.index[info.path] = len(self.infos)
                self.infos.append(info)
                self.origins.append(origin)
            return k


class _MemberFile:
    """A member's bytes as a read-only file object for image_header's WebP view: every read is a pread."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.offset, self.size, self.pos = fd, offset, size, 0

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        n = max(0, min(n, self.size - self.pos))
        data = pread_exact(self.fd, n, self.offset + self.pos)
        self.pos += len(data)
        return data


class _Locator:
    """Pass 1: finds every selected post's image in the shards (module docstring). `run_bucket` runs on the
    export's worker threads (export._export_buckets); results are appended under a lock."""

    def __init__(self, opts, src: ImageSource, progress: Progress, total: int) -> None:
        self.opts = opts
        self.src = src
        self.progress = progress
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.shards = _Shards()
        self.found: list[np.ndarray] = []  # (n, _FIELDS) int64 blocks
        self.corrupt: dict[int, dict] = {}  # post id -> its skipped record
        self.missing: set[int] = set()  # not in the bucket's shards (updates/ are looked at afterwards)
        self.shard_errors: dict[str, str] = {}
        self.exts: list[str] = []  # the extensions met; a row holds an index into it
        self._ext_code: dict[str, int] = {}
        self._ext_map: np.ndarray | None = None

    def member_ext_codes(self) -> np.ndarray:
        """tar_headers.MEMBER_EXTS index -> this build's code of the manifest extension (jpeg -> jpg)."""
        return np.array([self.ext_code("jpg" if e == "jpeg" else e) for e in MEMBER_EXTS], dtype=np.int64)

    def ext_code(self, ext: str) -> int:
        code = self._ext_code.get(ext)
        if code is None:
            with self.lock:
                code = self._ext_code.setdefault(ext, len(self.exts))
                if code == len(self.exts):
                    self.exts.append(ext)
        return code

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.progress.update(self.done, self.total)

    # -- one bucket ---------------------------------------------------------------------------------------------
    def run_bucket(self, _key: int, group: list[tuple[int, np.ndarray]]) -> None:
        """A group of buckets (export._export_buckets runs groups on its threads): every candidate shard of the
        group is walked and their headers settled in one numpy pass (tar_headers.py); the buckets whose shards all
        settled take their posts in one more pass, the others shard by shard (`_take`, `_scan_shard`), each in
        a copy build's order."""
        if self.src.kind != "shards":
            for _bucket, ids in group:
                self._loose_bucket(ids)
            return
        walked = self._walk([s for bucket, _ids in group for s in self.src.candidates(bucket)])
        try:
            clean, odd = [], []
            for bucket, ids in group:
                settled = all(walked.get(s, (0, None))[1] is not None for s in self.src.candidates(bucket))
                (clean if settled else odd).append((bucket, ids))
            if clean:
                self._take_buckets(clean, walked)
            for bucket, ids in odd:
                wanted = set(ids.tolist())
                rows: list = []  # tuples (one post) and (n, _FIELDS) arrays (a shard's members)
                corrupt: dict[int, dict] = {}
                for shard in self.src.candidates(bucket):
                    if not wanted:
                        break
                    self.progress.check_cancelled()
                    fd, headers = walked.get(shard, (None, None))
                    if headers is not None:
                        self._take(fd, shard, headers, wanted, rows, corrupt)
                    else:
                        self._scan_shard(shard, wanted, rows, corrupt)
                self._keep(rows, corrupt, wanted)
                self.advance(int(ids.size))
        finally:
            for fd, _headers in walked.values():
                os.close(fd)

    def _loose_bucket(self, ids: np.ndarray) -> None:
        wanted = set(ids.tolist())
        rows: list = []
        corrupt: dict[int, dict] = {}
        for pid in sorted(wanted):
            self.progress.check_cancelled()
            if self._loose_file(pid, rows, corrupt):
                wanted.discard(pid)
        self._keep(rows, corrupt, wanted)
        self.advance(int(ids.size))

    def _take_buckets(self, group: list[tuple[int, np.ndarray]], walked: dict) -> None:
        """Buckets whose candidate shards all settled: their members in one array, in (bucket, shard) order, so
        "the first member of a wanted id in its bucket's shards" is one np.unique."""
        shards = [s for bucket, _ids in group for s in self.src.candidates(bucket) if s in walked]
        parts = [walked[s][1] for s in shards]
        where = np.repeat(np.arange(len(shards)), [len(h.ids) for h in parts])
        ids = np.concatenate([h.ids for h in parts]) if parts else np.zeros(0, dtype=np.int64)
        wanted = np.sort(np.concatenate([g for _bucket, g in group]))
        home = np.array([int(SHARD_RE.fullmatch(s.name).group(1)) % BUCKETS for s in shards], dtype=np.int64)
        # a member counts in its own bucket's shards only (a copy build looks for an id in those)
        cand = np.flatnonzero((ids >= 0) & (ids % BUCKETS == home[where]) & np.isin(ids, wanted))
        _first_ids, first = np.unique(ids[cand], return_index=True)
        pick = cand[np.sort(first)]
        rows: list = []
        corrupt: dict[int, dict] = {}
        k_of = np.full(len(shards), -1, dtype=np.int64)
        for j in np.unique(where[pick]).tolist():
            k_of[j] = self.shards.add(shards[j], self.src.origin(shards[j]), walked[shards[j]][0])
        col = {name: np.concatenate([getattr(h, name) for h in parts])[pick] if parts else np.zeros(0, np.int64)
               for name in ("offset", "size", "fp", "width", "height", "ext")}  # fmt: skip
        settled = col["width"] > 0 if not self.opts.verify_images else np.zeros(len(pick), dtype=bool)
        if self._ext_map is None:
            self._ext_map = self.member_ext_codes()
        table = np.column_stack([ids[pick], k_of[where[pick]], col["offset"], col["size"], col["fp"],
                                 col["width"], col["height"], self._ext_map[col["ext"]]]).astype(np.int64)  # fmt: skip
        rows.append(table[settled])
        for i in np.flatnonzero(~settled).tolist():
            j = int(where[pick[i]])
            fd, origin = walked[shards[j]][0], self.src.origin(shards[j])
            pid, offset, size = int(ids[pick[i]]), int(col["offset"][i]), int(col["size"][i])
            try:
                chunk = pread_exact(fd, BLOCK + min(size, READ - BLOCK), offset - BLOCK)
            except OSError as exc:
                corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                                "shard": origin}  # fmt: skip
                continue
            self._member(fd, int(k_of[j]), origin, pid, MEMBER_EXTS[int(col["ext"][i])], offset, size,
                         chunk[:BLOCK], chunk[BLOCK:], rows, corrupt)  # fmt: skip
        self._keep(rows, corrupt, set(np.setdiff1d(wanted, ids[pick]).tolist()))
        self.advance(int(wanted.size))

    def _walk(self, shards: list[Path]) -> dict[Path, tuple[int, Headers | None]]:
        """Each shard's fd (left open for `_take`) and its settled headers, None where the batch reader cannot
        decide it. A shard that does not open is left out: `_scan_shard` reports it as a copy build would."""
        fds: dict[Path, tuple[int, Walk | None]] = {}
        for shard in shards:
            self.progress.check_cancelled()
            try:
                fd = os.open(shard, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError:
                continue
            try:
                fds[shard] = (fd, walk_shard(fd, os.fstat(fd).st_size))
            except BaseException:
                os.close(fd)
                for other, _walk in fds.values():
                    os.close(other)
                raise
        order = [shard for shard, (_fd, walk) in fds.items() if walk is not None]
        settled = dict(zip(order, settle([fds[shard][1] for shard in order]), strict=True))
        return {shard: (fd, settled.get(shard)) for shard, (fd, _walk) in fds.items()}

    def run_updates(self) -> None:
        """Posts not found in their bucket's shards, looked for in updates/*/*.tar (each read once, in order)."""
        wanted = set(self.missing)
        rows: list = []
        corrupt: dict[int, dict] = {}
        for tar in self.src.updates:
            if not wanted:
                break
            self.progress.check_cancelled()
            self._scan_shard(tar, wanted, rows, corrupt)
        self.missing = set()
        self._keep(rows, corrupt, wanted)

    def _keep(self, rows: list, corrupt: dict[int, dict], missing: set[int]) -> None:
        singles = [r for r in rows if isinstance(r, tuple)]
        blocks = [r for r in rows if not isinstance(r, tuple)]
        blocks.append(np.array(singles, dtype=np.int64).reshape(-1, _FIELDS))
        with self.lock:
            self.found.extend(blocks)
            self.corrupt.update(corrupt)
            self.missing |= missing

    # -- finding members ----------------------------------------------------------------------------------------
    def _scan_shard(self, path: Path, wanted: set[int], rows: list[tuple], corrupt: dict[int, dict]) -> None:
        origin = self.src.origin(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            fd = None  # tarfile says why, in the words a copy build reports
        if fd is not None:
            try:
                found = scan_wanted(fd, os.fstat(fd).st_size, wanted)  # odd headers: one at a time, exactly
                if found is not None:
                    self._found(fd, path, origin, found, wanted, rows, corrupt)
                    return
            finally:
                os.close(fd)
        # Not a plain archive (or not openable): tarfile reads it, with a copy build's rules and messages.
        for item in scan_tar_refs(path, origin, wanted, self.progress.check_cancelled):
            if isinstance(item, ShardReadError):
                with self.lock:
                    self.shard_errors[item.origin] = item.message
                continue
            self._tarfile_member(path, item, rows, corrupt)

    def _take(self, fd: int, path: Path, headers: Headers, wanted: set[int], rows: list,
              corrupt: dict[int, dict]) -> None:  # fmt: skip
        """The wanted posts of a settled shard: those simple_webp_sizes sized go in as one array; the others
        (other formats, `--verify-images`) through `_member`."""
        want = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
        want.sort()
        pick = headers.first_wanted(want)
        if not len(pick):
            return
        origin = self.src.origin(path)
        k = self.shards.add(path, origin, fd)
        ids = headers.ids[pick]
        wanted.difference_update(ids.tolist())
        width, height = headers.width[pick], headers.height[pick]
        settled = width > 0 if not self.opts.verify_images else np.zeros(len(pick), dtype=bool)
        if self._ext_map is None:
            self._ext_map = self.member_ext_codes()
        ext = headers.ext[pick]
        table = np.column_stack([ids, np.full(len(pick), k), headers.offset[pick], headers.size[pick],
                                 headers.fp[pick], width, height, self._ext_map[ext]]).astype(np.int64)  # fmt: skip
        rows.append(table[settled])
        for i in np.flatnonzero(~settled).tolist():
            pid, offset, size = int(ids[i]), int(headers.offset[pick[i]]), int(headers.size[pick[i]])
            try:
                chunk = pread_exact(fd, BLOCK + min(size, READ - BLOCK), offset - BLOCK)
            except OSError as exc:
                corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                                "shard": origin}  # fmt: skip
                continue
            self._member(fd, k, origin, pid, MEMBER_EXTS[int(ext[i])], offset, size, chunk[:BLOCK],
                         chunk[BLOCK:], rows, corrupt)  # fmt: skip

    def _found(self, fd: int, path: Path, origin: str, found: list[FoundMember], wanted: set[int],
               rows: list[tuple], corrupt: dict[int, dict]) -> None:  # fmt: skip
        """The members scan_wanted found: a plain still WebP is sized from its first 30 bytes right here (the
        common case, a few us); anything else goes through `_member`."""
        if not found:
            return
        k = self.shards.add(path, origin, fd)
        quick = not self.opts.verify_images
        fp, code, append = fingerprint_int, self.ext_code, rows.append
        for m in found:
            wanted.discard(m.post_id)
            size = simple_webp_size(m.head, m.size) if quick else None
            if size is None:
                self._member(
                    fd, k, origin, m.post_id, m.ext, m.offset, m.size, m.header, m.head, rows, corrupt
                )
            else:
                ext = "jpg" if m.ext == "jpeg" else m.ext
                append((m.post_id, k, m.offset, m.size, fp(m.header), size[0], size[1], code(ext)))

    def _tarfile_member(self, path: Path, m: MemberRef, rows: list[tuple], corrupt: dict[int, dict]) -> None:
        if m.available < m.size:  # what reading it would raise in a copy build (tarfile's message)
            corrupt[m.post_id] = {"id": m.post_id, "status": "corrupt",
                                  "reason": "unreadable tar member (unexpected end of data)", "shard": m.origin}  # fmt: skip
            return
        k = self.shards.add(path, m.origin, m.fd)
        try:
            chunk = pread_exact(m.fd, BLOCK + min(m.size, READ - BLOCK), m.offset - BLOCK)
        except OSError as exc:
            corrupt[m.post_id] = {"id": m.post_id, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                                  "shard": m.origin}  # fmt: skip
            return
        self._member(m.fd, k, m.origin, m.post_id, m.ext, m.offset, m.size, chunk[:BLOCK], chunk[BLOCK:], rows,
                     corrupt)  # fmt: skip

    def _loose_file(self, pid: int, rows: list[tuple], corrupt: dict[int, dict]) -> bool:
        """A folder source: the file itself is the "shard", its data at offset 0 with no header."""
        name = self.src.files.get(pid)
        if name is None:
            return False
        path = self.src.root / name
        ext = name.rsplit(".", 1)[-1].lower()
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable file ({exc.strerror})",
                            "shard": name}  # fmt: skip
            return True
        try:
            size = os.fstat(fd).st_size
            k = self.shards.add(path, name, fd)
            head = pread_exact(fd, min(size, READ), 0)
            self._member(fd, k, name, pid, ext, 0, size, b"", head, rows, corrupt)
        except OSError as exc:
            corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable file ({exc.strerror})",
                            "shard": name}  # fmt: skip
        finally:
            os.close(fd)
        return True

    def _member(self, fd: int, k: int, origin: str, pid: int, ext: str, offset: int, size: int, header: bytes,
                head: bytes, rows: list[tuple], corrupt: dict[int, dict]) -> None:  # fmt: skip
        """Measure one found image and keep its row, or its corrupt record (the reasons a copy build gives)."""
        from .export import _prepare_image, _stable_reason

        try:
            found = None if self.opts.verify_images else _header_size(fd, offset, size, head)
        except OSError as exc:
            corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                            "shard": origin}  # fmt: skip
            return
        if found is None:
            try:
                data = pread_exact(fd, size, offset)
                if len(data) != size:
                    raise OSError("unexpected end of data")
            except OSError as exc:
                corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                                "shard": origin}  # fmt: skip
                return
            try:
                _data, ext, width, height = _prepare_image(Hit(pid, data, ext, origin), self.opts)
            except Exception as exc:  # noqa: BLE001 - as in a copy build: every Pillow error means "corrupt"
                reason = _stable_reason(f"not a readable image ({type(exc).__name__}: {exc})", f"{pid}.{ext}")
                corrupt[pid] = {"id": pid, "status": "corrupt", "reason": reason, "shard": origin}
                return
            found = (width, height)
        ext = "jpg" if ext == "jpeg" else ext
        rows.append((pid, k, offset, size, fingerprint_int(header), found[0], found[1], self.ext_code(ext)))


def _header_size(fd: int, offset: int, size: int, head: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's first bytes, as image_header.image_file_size reads a file (a few more
    pages for a large WebP, HEAD_BYTES for other formats); None when only a decode can tell."""
    found = image_size(head)
    if found is None and len(head) < size:
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            found = _webp(_FileView(_MemberFile(fd, offset, size), head, size))
            if found is not None and not (
                found[1] > 0 and found[2] > 0 and found[1] * found[2] <= MAX_PIXELS
            ):
                found = None
        else:
            found = image_size(pread_exact(fd, min(size, HEAD_BYTES), offset))
    return (found[1], found[2]) if found is not None else None


# ---- pass 2: captions and the manifest -----------------------------------------------------------------------
_ENCODE = encode_basestring  # a str as json.dumps(..., ensure_ascii=False) writes it (the C encoder)


_MASK64 = (1 << 64) - 1


def _label_json(labels: tuple[str, ...]) -> dict[int, str]:
    return {i: _ENCODE(label) for i, label in enumerate(labels)}


def write_reference_outputs(opts, src: ImageSource, ids: np.ndarray, scheme: QualityScheme, workers: int,
                            progress: Progress, cache: ColumnCache | None,
                            caption_workers: CaptionWorkers | None) -> DatasetSummary:  # fmt: skip
    """Pass 1 and 2 (module docstring) for the selected `ids` (sorted); writes manifest.jsonl, skipped.jsonl and
    shards.json into `opts.out` and returns the build's summary.

    The captions are made while the shards are read: by the caption worker processes for a big selection (so
    the header walk, one core under the GIL, overlaps them on the others), by a thread for a small one; at most
    _AHEAD_CHUNKS chunks wait for pass 2. (Walking in those processes instead measured slower on 2 cores: the
    captions then wait for the walk.)"""
    from .export import _export_buckets

    out = opts.out
    locator = _Locator(opts, src, progress, int(ids.size))
    tasks = _bucket_groups(ids)
    progress.stage(f"Locating {ids.size:,} posts in the shards' headers ({src.describe()})")
    captions = _CaptionPrefetch(
        iter_caption_chunks(opts.db, ids, scheme, workers=caption_workers, cache=cache)
    )
    try:
        _export_buckets(locator, list(enumerate(tasks)), workers)
        if src.updates and locator.missing:
            progress.stage(f"Looking for {len(locator.missing):,} posts in updates/")
            locator.run_updates()
        found = np.concatenate(locator.found) if locator.found else np.zeros((0, _FIELDS), np.int64)
        found = found[np.argsort(found[:, 0], kind="stable")]
        progress.stage(f"Writing the manifest of {ids.size:,} posts")
        writer = _ManifestWriter(opts, locator)
        manifest = out / MANIFEST_FILE
        try:
            with atomic_path(manifest) as tmp, open(tmp, "w", encoding="utf-8") as fh:
                for chunk in captions:
                    progress.check_cancelled()
                    fh.write(writer.lines(chunk, found))
                    progress.update(writer.done, int(ids.size))
            with atomic_path(out / SKIPPED_FILE) as tmp:
                tmp.write_text("".join(writer.skipped), encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, manifest, _RESUME_HINT) from None
    finally:
        captions.close()
    _write_shards_file(out, opts.images, locator.shards, writer.per_shard)
    summary = writer.summary(int(ids.size))
    summary.shard_errors = [{"shard": k, "reason": v} for k, v in sorted(locator.shard_errors.items())]
    summary.ignored_files = sorted(src.ignored)
    return summary


_BUCKETS_PER_TASK = 25  # 40 tasks for the 1,000 buckets


def _bucket_groups(ids: np.ndarray) -> list[list[tuple[int, np.ndarray]]]:
    """The selected ids by bucket (`id % 1000`, the shards' split), in groups of _BUCKETS_PER_TASK buckets: a
    numpy pass over a group's headers costs the same fixed ~1 ms for 30 headers or 30,000."""
    buckets = ids % BUCKETS
    order = np.argsort(buckets, kind="stable")
    groups = np.split(ids[order], np.flatnonzero(np.diff(buckets[order])) + 1) if ids.size else []
    per_bucket = [(int(g[0] % BUCKETS), g) for g in groups]
    return [per_bucket[i : i + _BUCKETS_PER_TASK] for i in range(0, len(per_bucket), _BUCKETS_PER_TASK)]


_AHEAD_CHUNKS = 64  # caption chunks (20k posts, ~5 MB each) made ahead of pass 2: ~1.3 M posts


class _CaptionPrefetch:
    """Iterates the caption stream in a thread so its workers run during pass 1; a bounded queue in between.
    `close()` stops the thread (cancel, error) without waiting for the stream's end."""

    _END = object()

    def __init__(self, chunks) -> None:
        self._chunks = chunks
        self._queue: queue.Queue = queue.Queue(_AHEAD_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kxl-ref-captions", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)
        finally:
            self._chunks.close()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _ManifestWriter:
    """Pass 2's per-chunk work: the manifest lines of the posts found, the skipped records of the others, and the
    summary's counts. Lines are composed as json.dumps(record, ensure_ascii=False) writes a copy build's record
    (key order, separators, escapes), then `"ref"`; a test compares them with a copy build's."""

    def __init__(self, opts, locator: _Locator) -> None:
        shards = locator.shards
        self.locator = locator
        self.ref_shard = [_ENCODE(info.path) for info in shards.infos]
        self.origin = [_ENCODE(o) for o in shards.origins]
        self.rating_js = _label_json(RATING_LABELS)
        self.quality_js, self.year_js = _label_json(QUALITY_LABELS), _label_json(YEAR_TAGS)
        self.file_prefix = _ENCODE(f"{opts.subfolder}/")[:-1]  # the opening quote and the folder, escaped
        self.exts = list(locator.exts)
        self.per_shard = np.zeros(len(shards.infos), dtype=np.int64)
        self.rating = np.zeros(256, dtype=np.int64)  # counts by code (ratings are 0..3; others kept apart)
        self.quality = np.zeros(len(QUALITY_LABELS) + 1, dtype=np.int64)  # last: none
        self.year = np.zeros(len(YEAR_TAGS) + 1, dtype=np.int64)
        self.other_ratings: Counter = Counter()
        self.skipped: list[str] = []
        self.missing_ids: list[int] = []
        self.corrupt_items: list[dict] = []
        self.written = self.bytes_written = self.done = 0

    def lines(self, chunk: CaptionChunk, found: np.ndarray) -> str:
        cids = chunk.ids
        self.done += len(cids)
        if len(found):
            pos = np.minimum(np.searchsorted(found[:, 0], cids), len(found) - 1)
            hit = found[pos, 0] == cids
        else:
            pos, hit = np.zeros(len(cids), dtype=np.int64), np.zeros(len(cids), dtype=bool)
        for i in np.flatnonzero(~hit).tolist():
            self._skip(int(cids[i]))
        if not hit.any():
            return ""
        rows = found[pos[hit]]
        rating, quality, year = chunk.rating[hit], chunk.quality[hit], chunk.year[hit]
        self._count(rows, rating, quality, year)
        rating_js, quality_js, year_js = self.rating_js, self.quality_js, self.year_js
        origin, ref_shard, exts, prefix = self.origin, self.ref_shard, self.exts, self.file_prefix
        captions = chunk.captions
        out = []
        for i, (pid, k, offset, size, fp, w, h, e), r, q, y in zip(
            np.flatnonzero(hit).tolist(), rows.tolist(), rating.tolist(), quality.tolist(), year.tolist(),
            strict=True,
        ):  # fmt: skip
            rj = rating_js[r] if r in rating_js else _ENCODE(str(r))
            qj = quality_js[q] if q >= 0 else "null"
            yj = year_js[y] if y >= 0 else "null"
            out.append(
                f'{{"id": {pid}, "file": {prefix}{pid}.{exts[e]}", "caption": {_ENCODE(captions[i])}, '
                f'"rating": {rj}, "quality": {qj}, "year": {yj}, "width": {w}, "height": {h}, '
                f'"shard": {origin[k]}, "bytes": {size}, "ref": {{"shard": {ref_shard[k]}, '
                f'"offset": {offset}, "size": {size}, "fp": "{fp & _MASK64:016x}"}}}}\n'
            )
        return "".join(out)

    def _skip(self, pid: int) -> None:
        record = self.locator.corrupt.get(pid)
        if record is not None:
            self.corrupt_items.append({k: record[k] for k in ("id", "reason", "shard")})
            self.skipped.append(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self.missing_ids.append(pid)
            self.skipped.append(f'{{"id": {pid}, "status": "missing"}}\n')

    def _count(self, rows: np.ndarray, rating: np.ndarray, quality: np.ndarray, year: np.ndarray) -> None:
        self.written += len(rows)
        self.bytes_written += int(rows[:, 3].sum())
        self.per_shard += np.bincount(rows[:, 1], minlength=len(self.per_shard))
        known = (rating >= 0) & (rating < len(RATING_LABELS))
        self.rating += np.bincount(rating[known], minlength=len(self.rating))[: len(self.rating)]
        self.other_ratings.update(str(r) for r in rating[~known].tolist())
        self.quality += np.bincount(
            np.where(quality >= 0, quality, len(QUALITY_LABELS)), minlength=len(self.quality)
        )
        self.year += np.bincount(np.where(year >= 0, year, len(YEAR_TAGS)), minlength=len(self.year))

    def summary(self, selected: int) -> DatasetSummary:
        ratings = Counter(
            {RATING_LABELS[i]: int(n) for i, n in enumerate(self.rating[: len(RATING_LABELS)]) if n}
        )
        ratings.update(self.other_ratings)
        qualities = Counter(
            {label: int(n) for label, n in zip((*QUALITY_LABELS, "none"), self.quality, strict=True) if n}
        )
        years = Counter(
            {label: int(n) for label, n in zip((*YEAR_TAGS, "none"), self.year, strict=True) if n}
        )
        return summarize_counts(selected, self.written, self.bytes_written, ratings, qualities, years,
                                self.missing_ids, self.corrupt_items)  # fmt: skip


def _write_shards_file(out: Path, images: Path, shards: _Shards, per_shard: np.ndarray) -> None:
    """shards.json: every referenced shard's size and mtime as the build first saw it; a shard that changed while
    the build read it stops the build (its offsets may describe either version)."""
    from ..atomic import atomic_write_text_checked

    infos: dict[str, ShardInfo] = {}
    posts: dict[str, int] = {}
    for info, n in zip(shards.infos, per_shard.tolist(), strict=True):
        if not n:
            continue
        try:
            st = os.stat(info.path)
        except OSError as exc:
            raise KxlError(
                f"image shard vanished during the build ({exc.strerror})", path=info.path
            ) from None
        if (st.st_size, st.st_mtime_ns) != (info.size, info.mtime_ns):
            raise KxlError("image shard changed while the build read it", path=info.path,
                           hint="run the build again once the shards are stable")  # fmt: skip
        infos[info.path] = info
        posts[info.path] = n
    text = shards_file_text(Path(os.path.abspath(images)), infos, posts)
    atomic_write_text_checked(out / SHARDS_FILE, text, _RESUME_HINT)


__all__ = ["write_reference_outputs"]
