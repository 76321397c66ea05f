"""The export step of a reference build (`kxl dataset build --image-mode reference`): no image, no caption file.

What it writes (image_refs.py describes the format): `captions.jsonl`, byte for byte the lines `kxl dataset
captions` writes for the found posts; `refs.npy`, one row of numbers per image (ref_table.py), composed once with
numpy from the arrays the locate pass holds; `shards.json`; `skipped.jsonl` (the same as a copy build's). No
`<repeats>_<name>/` folder, no `<id>.txt`, no sd-scripts config (sd-scripts cannot read shards; `kxl dataset
materialize` writes all of those). Per post the build formats nothing beyond the caption: a JSON record per post
(the previous format) cost ~2.5 us of Python per post, more than all the rest a reference build adds to the
captions, and writing one caption file per post cost far more again (0.2-0.7 ms of kernel time per created
file on the project's VM; profile in the issue #20 notes).

Two passes, each the cheapest form of its work; the captions in the caption worker processes where a big DB has
them (every core; `kxl dataset captions` uses the same workers), else in this process:
1. **Locate**, headers only. Each candidate shard's headers come from the images folder's header index
   (shard_index.py: a second build reads no shard) or are walked from the start of the build, while this
   process runs the selection (shard_walks.py): on two threads of this process with the compiled walk
   (_tar_walk.c: hops from header to header, reading a window of up to 1 MB where members are small and a
   header's 542 bytes per big member, and validates, names, fingerprints and sizes each header in the same
   pass), else in the caption workers with tar_headers.py's numpy walk, which gives the same numbers. The
   buckets (`id % 1000`, the shards' split) whose shards all settled are then taken in one numpy pass: one
   stable sort by id gives each id's first member in a copy build's order (data-0XYZ .. data-9XYZ) and the
   id order the table is written in. A shard the batch reader cannot decide exactly goes to the
   one-member-at-a-time reader, and one that cannot either to tarfile, as a copy build reads it (then
   `updates/*/*.tar`), so the same posts are found, missing or corrupt (tested with pax, GNU, damaged,
   truncated and empty shards, and with PNG, JPEG and extended WebP members). Width and height come from the
   image's first 30 bytes for a plain WebP, else from its first pages (image_header.py), and from a full
   decode only where a copy build decodes too. What is kept per post is 64 bytes of numbers.
2. **Captions and the table**, in id order, by chunks of 20,000 ids: a worker captions its chunk and keeps the
   lines of the found posts it is handed (reference_lines.py); this process writes them. The first chunks are
   sent before the locate pass ends, so the workers never wait on it; those come back with every post's line
   and are cut here. The table and shards.json are composed as soon as the posts are located; each chunk's
   caption codes are set as it comes back, and its rows go to refs.npy's temp file beside its lines.

Measured (benchmarks/bench_dataset_reference.py --repeat 5, 1 M-post demo: 870,916 images, 916,688 tar members
in 3,000 shards, 2 cores): captions alone 2.4-2.6 s wall, 4.3-4.6 s CPU; a first reference build 1.05-1.24 x
that per round, median 1.15 x (fastest runs 2.72 s vs 2.39 s), the header index kept 1.06-1.20 x, median
1.09 x. Both cores are busy in captions alone already, so the wall time follows the CPU a build adds: the
compiled walk (~0.35 us per tar member, half of it the kernel copying the shards' pages), then this process's
numpy work (~0.5 s: taking the posts, the table). Without a C compiler (the numpy walk, in the workers) a first
build is ~1.5 x. 434 bytes written per post with the index kept, 494 for a first build (the index: ~56 bytes
per tar member); 0.13 % of a copy of real-size images.

Nothing is renamed into place before the end: an interrupted reference build has nothing to resume and simply
runs again (its stored options still guard the folder, as for a copy build).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text_checked, write_error
from ..danbooru.db_reader import CHUNK_POSTS, chunked
from ..errors import KxlError
from ..progress import Progress
from .caption_stream import CaptionSource, CaptionWorkers, default_processes
from .captions import QUALITY_LABELS, YEAR_TAGS, QualityScheme
from .column_cache import ColumnCache
from .image_header import HEAD_BYTES, MAX_PIXELS, _FileView, _webp, image_size, simple_webp_size
from .image_refs import SHARDS_FILE, ShardInfo, fingerprint_int, pread_exact, shards_file_text
from .images import BUCKETS, Hit, ImageSource, MemberRef, ShardReadError, scan_tar_refs
from .ordered_jobs import OrderedJobs
from .ref_table import CAPTIONS_FILE, REFS_FILE, compose_table, table_writer
from .reference_lines import FIELDS, ChunkLines, chunk_lines, lines_in_worker
from .shard_index import WalkedShard
from .shard_walks import ShardWalks, group_of
from .stats import RATING_LABELS, SKIPPED_FILE, DatasetSummary, summarize_counts
from .tar_headers import (
    BLOCK,
    MEMBER_EXTS,
    READ,
    FoundMember,
    Headers,
    in_sorted,
    scan_wanted,
)

_RESUME_HINT = "free some space and run the same build again"


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


class _LazyFds:
    """Shards opened in this process only where a member needs more than its walked header (another format,
    `--verify-images`): the walk itself may have run in a worker process."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def open(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _headers(walked: WalkedShard | None) -> Headers | None:
    return None if walked is None else walked.headers


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

    def __init__(
        self, opts, src: ImageSource, progress: Progress, selection: np.ndarray, walks: ShardWalks
    ) -> None:
        self.opts = opts
        self.src = src
        self.progress = progress
        self.selection = selection  # the selected ids, sorted
        self.total = int(selection.size)
        self.done = 0
        self.lock = threading.Lock()
        self.shards = _Shards()
        self.found: list = []  # blocks of FIELDS int64 columns ((FIELDS, n) arrays or tuples of arrays)
        # buckets whose shards all settled: (bucket, [(shard, walked)] in its candidates' order), taken at once
        # by `take_settled` after the locate pass; the others' ids are taken shard by shard as they come
        self._settled: list[tuple[int, list[tuple[Path, WalkedShard]]]] = []
        self._odd_buckets: list[int] = []
        self.corrupt: dict[int, dict] = {}  # post id -> its skipped record
        self.missing: set[int] = set()  # not in the bucket's shards (updates/ are looked at afterwards)
        self.shard_errors: dict[str, str] = {}
        self.walks = walks  # the shards' headers (shard_walks.py: from the images folder's index, or walked)
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

    # -- one group of buckets -----------------------------------------------------------------------------------
    def run_bucket(self, key: int, group: list[tuple[int, np.ndarray]]) -> None:
        """The group of buckets `key` (shard_walks.group_of) walked, or taken from walks started ahead, and its
        posts taken (export._export_buckets runs groups on its threads; a build with caption worker processes
        takes its groups in order instead, `_locate_in_order`)."""
        if self.src.kind != "shards":
            for _bucket, ids in group:
                self._loose_bucket(ids)
            return
        self.take_group(group, self.walks.take(key, self.progress.check_cancelled))

    def take_group(self, group: list[tuple[int, np.ndarray]], walked: dict[Path, WalkedShard | None]) -> None:
        """The group's posts from its walked shards (tar_headers.walk_shards): the buckets whose shards all
        settled are kept for `take_settled` (one numpy pass over every such bucket), the others' posts are
        taken here shard by shard (`_take`, `_scan_shard`), each in a copy build's order."""
        fds = _LazyFds()
        try:
            odd = []
            for bucket, ids in group:
                shards = self.src.candidates(bucket)
                if all(_headers(walked.get(s)) is not None for s in shards):
                    with self.lock:
                        self._settled.append((bucket, [(s, walked[s]) for s in shards]))  # type: ignore[misc]
                    self.advance(int(ids.size))
                else:
                    odd.append((bucket, ids))
            with self.lock:
                self._odd_buckets.extend(bucket for bucket, _ids in odd)
            for bucket, ids in odd:
                wanted = set(ids.tolist())
                rows: list = []  # tuples (one post) and (n, FIELDS) arrays (a shard's members)
                corrupt: dict[int, dict] = {}
                for shard in self.src.candidates(bucket):
                    if not wanted:
                        break
                    self.progress.check_cancelled()
                    w = walked.get(shard)
                    if w is not None and w.headers is not None:
                        self._take(fds, shard, w, wanted, rows, corrupt)
                    else:
                        self._scan_shard(shard, wanted, rows, corrupt)
                self._keep(rows, corrupt, wanted)
                self.advance(int(ids.size))
        finally:
            fds.close()

    def _add_walked(self, path: Path, w: WalkedShard) -> int:
        """The shard's index, with its size and mtime as the walk first saw them."""
        return self.shards.add_info(
            ShardInfo(self.src.absolute(path), w.size, w.mtime_ns), self.src.origin(path)
        )

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

    def take_settled(self) -> None:
        """The posts of every bucket whose shards all settled, in one numpy pass over their headers: each id's
        first member in its bucket's shards (a copy build's order: data-0XYZ .. data-9XYZ), for the selected
        ids. One stable sort by id gives both "the first member of an id" and the id order refs.npy is
        written in, so the rows come out sorted; a per-group pass cost ~12 ms of fixed numpy work per group."""
        if not self._settled:
            return
        odd = np.array(sorted(self._odd_buckets), dtype=np.int64)
        wanted = self.selection
        if odd.size:
            wanted = wanted[~in_sorted(wanted % BUCKETS, odd)]
        shards = [(s, w) for _bucket, pairs in self._settled for s, w in pairs]
        parts = [w.headers for _s, w in shards]
        counts = np.array([len(h.ids) for h in parts], dtype=np.int64)
        home = np.repeat(np.array([b for b, pairs in self._settled for _ in pairs], dtype=np.int64), counts)
        ids = np.concatenate([h.ids for h in parts])
        # a member counts in its own bucket's shards only (a copy build looks for an id in those)
        cand = np.flatnonzero((ids >= 0) & (ids % BUCKETS == home))
        del home
        order = cand[np.argsort(ids[cand], kind="stable")]  # stable: within an id, the copy build's order
        sid = ids[order]
        keep = np.ones(len(sid), dtype=bool)
        keep[1:] = sid[1:] != sid[:-1]
        keep &= in_sorted(sid, wanted)
        order, sid = order[keep], sid[keep]
        where = np.repeat(np.arange(len(shards), dtype=np.int64), counts)[order]
        k_of = np.full(len(shards), -1, dtype=np.int64)
        for j in np.flatnonzero(np.bincount(where, minlength=len(shards))).tolist():
            k_of[j] = self._add_walked(*shards[j])
        col = {name: np.concatenate([getattr(h, name) for h in parts])[order]
               for name in ("offset", "size", "fp", "width", "height", "ext")}  # fmt: skip
        if self._ext_map is None:
            self._ext_map = self.member_ext_codes()
        settled = col["width"] > 0 if not self.opts.verify_images else np.zeros(len(order), dtype=bool)
        # a tuple of columns, not one stacked array: each ~50 MB pass costs 30-90 ms of this VM's memory
        table = (sid, k_of[where], col["offset"], col["size"], col["fp"], col["width"], col["height"],
                 self._ext_map[col["ext"]])  # fmt: skip
        block = table if settled.all() else tuple(c[settled] for c in table)
        rows: list = []  # the posts `_member` measures
        corrupt: dict[int, dict] = {}
        fds = _LazyFds()
        try:
            for i in np.flatnonzero(~settled).tolist():  # other formats, --verify-images: one at a time
                path = shards[int(where[i])][0]
                self._measure(fds, path, int(k_of[where[i]]), int(sid[i]), MEMBER_EXTS[int(col["ext"][i])],
                              int(col["offset"][i]), int(col["size"][i]), rows, corrupt)  # fmt: skip
        finally:
            fds.close()
        self._keep(rows, corrupt, set(wanted[~in_sorted(wanted, sid)].tolist()), block)
        self._settled = []

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

    def _keep(
        self, rows: list, corrupt: dict[int, dict], missing: set[int], columns: tuple | None = None
    ) -> None:
        """Keep found rows (tuples: one post; arrays: (n, FIELDS) rows) and a block of FIELDS `columns`, corrupt
        records and the ids not found."""
        singles = [r for r in rows if isinstance(r, tuple)]
        blocks = [r.T for r in rows if not isinstance(r, tuple)]
        if columns is not None:
            blocks.append(columns)
        if singles:
            blocks.append(np.array(singles, dtype=np.int64).reshape(-1, FIELDS).T)
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

    def _take(self, fds: _LazyFds, path: Path, walked: WalkedShard, wanted: set[int], rows: list,
              corrupt: dict[int, dict]) -> None:  # fmt: skip
        """The wanted posts of a settled shard: those simple_webp_sizes sized go in as one array; the others
        (other formats, `--verify-images`) through `_member`."""
        headers = walked.headers
        assert headers is not None
        want = np.fromiter(wanted, dtype=np.int64, count=len(wanted))
        want.sort()
        pick = headers.first_wanted(want)
        if not len(pick):
            return
        k = self._add_walked(path, walked)
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
            self._measure(fds, path, k, int(ids[i]), MEMBER_EXTS[int(ext[i])], int(headers.offset[pick[i]]),
                          int(headers.size[pick[i]]), rows, corrupt)  # fmt: skip

    def _measure(self, fds: _LazyFds, path: Path, k: int, pid: int, ext: str, offset: int, size: int, rows: list,
                 corrupt: dict[int, dict]) -> None:  # fmt: skip
        """A walked member its first 30 bytes did not size (another format, `--verify-images`): its header and
        first bytes read again, then `_member`."""
        origin = self.src.origin(path)
        try:
            fd = fds.open(path)
            chunk = pread_exact(fd, BLOCK + min(size, READ - BLOCK), offset - BLOCK)
        except OSError as exc:
            corrupt[pid] = {"id": pid, "status": "corrupt", "reason": f"unreadable tar member ({exc})",
                            "shard": origin}  # fmt: skip
            return
        self._member(fd, k, origin, pid, ext, offset, size, chunk[:BLOCK], chunk[BLOCK:], rows, corrupt)

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


# ---- pass 2: captions and the reference table ---------------------------------------------------------------


def write_reference_outputs(opts, src: ImageSource, ids: np.ndarray, scheme: QualityScheme, workers: int,
                            progress: Progress, cache: ColumnCache | None,
                            caption_workers: CaptionWorkers | None, walks: ShardWalks) -> DatasetSummary:  # fmt: skip
    """Pass 1 and 2 (module docstring) for the selected `ids` (sorted); writes captions.jsonl, refs.npy,
    shards.json and skipped.jsonl into `opts.out` and returns the build's summary.

    With caption worker processes (a big selection) both passes run in them, on every core: the walks (`walks`,
    started by the caller before its selection), then the captions, the first chunks of which are sent before the
    locate pass ends so that no worker waits while this process takes the posts from the walked headers
    (numpy); this process then writes the caption lines and composes the table. Without, both run here (threads
    for the walk)."""
    from .export import _export_buckets

    out = opts.out
    locator = _Locator(opts, src, progress, ids, walks)
    use_pool = caption_workers is not None and default_processes(int(ids.size)) >= 1
    chunks = list(chunked(ids, CHUNK_POSTS))
    cache_path = None if cache is None else str(cache.path)
    parts: list[np.ndarray] = []  # each chunk's found ids, once the locate pass is over
    captions_ahead = None
    if use_pool:
        assert caption_workers is not None
        # A chunk sent before `parts` is known comes back with every post's line and is cut here
        # (ChunkLines.found_only, ~1 ms a chunk); the later ones are cut in the worker. 6 per worker and 6
        # more (~0.9 s of work per million posts on 2 cores) keep every worker busy while this process locates
        # the posts (0.35-0.8 s: it shares the cores with them), then 2 per worker and 2 more.
        jobs = ((int(c.size), (lines_in_worker, str(opts.db), scheme, cache_path, c, parts[i] if parts else None))
                for i, c in enumerate(chunks))  # fmt: skip
        captions_ahead = OrderedJobs(caption_workers.pool, jobs, 6 * caption_workers.n_proc + 6)
        if src.kind == "shards":
            captions_ahead.fill()  # queued behind the walks: the workers go on to them while this process locates
        captions_ahead.ahead = 2 * caption_workers.n_proc + 2
    progress.stage(f"Locating {ids.size:,} posts in the shards' headers ({src.describe()})")
    tasks = _bucket_groups(ids)
    walks.keep_only({g for g, _group in tasks})
    if captions_ahead is not None and src.kind == "shards":
        _locate_in_order(locator, tasks)
    else:
        _export_buckets(locator, tasks, workers)
    locator.take_settled()
    walks.index.save()
    if src.updates and locator.missing:
        progress.stage(f"Looking for {len(locator.missing):,} posts in updates/")
        locator.run_updates()
    found = _in_id_order(locator.found)
    progress.stage(f"Writing the captions of {ids.size:,} posts")
    writer = _ManifestWriter(opts, locator, found)
    captions = out / CAPTIONS_FILE
    found_ids = found[0]
    bounds = np.searchsorted(found_ids, [c[0] for c in chunks]).tolist() + [len(found_ids)]
    parts += [found_ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    # Everything but the caption codes is known now: the table and shards.json are composed while the workers
    # caption, refs.npy is written chunk by chunk with captions.jsonl, and both are renamed into place at the end.
    shards_text, shard_of, ext_of = _shards_file(opts, locator, writer.per_shard)
    table = compose_table(found, shard_of, ext_of)
    source = None
    if captions_ahead is not None:
        results = captions_ahead.results()
    else:
        source = CaptionSource(opts.db, scheme, cache_path)
        results = (chunk_lines(source, c, f) for c, f in zip(chunks, parts, strict=True))
    try:
        with (
            atomic_path(captions) as tmp,
            open(tmp, "wb") as fh,
            table_writer(out / REFS_FILE, len(table)) as append_rows,
        ):
            for c, f, lines, a in zip(chunks, parts, results, bounds[:-1], strict=True):
                progress.check_cancelled()
                rows = table[a : a + len(f)]
                writer.add(c, f, lines, rows)
                fh.write(lines.found_only(c, f))
                append_rows(rows)
                progress.update(writer.done, int(ids.size))
        atomic_write_text_checked(out / SHARDS_FILE, shards_text, _RESUME_HINT)
        with atomic_path(out / SKIPPED_FILE) as tmp:
            tmp.write_text("".join(writer.skipped), encoding="utf-8")
    except OSError as exc:
        raise write_error(exc, captions, _RESUME_HINT) from None
    finally:
        if source is not None:
            source.close()
    summary = writer.summary(int(ids.size))
    summary.shard_errors = [{"shard": k, "reason": v} for k, v in sorted(locator.shard_errors.items())]
    summary.ignored_files = sorted(src.ignored)
    return summary


def _in_id_order(blocks: list) -> Sequence[np.ndarray]:
    """The found posts' blocks of FIELDS columns as one, in id order: the settled buckets' block is sorted
    already, and where it is the only non-empty one nothing is sorted or copied again."""
    blocks = [b for b in blocks if len(b[0])]
    if not blocks:
        return np.zeros((FIELDS, 0), dtype=np.int64)
    if len(blocks) == 1:
        found = blocks[0]
    else:
        found = np.concatenate([np.asarray(b, dtype=np.int64) for b in blocks], axis=1)
    ids = found[0]
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        found = np.asarray(found, dtype=np.int64)[:, np.argsort(ids, kind="stable")]
    return found


def _locate_in_order(locator: _Locator, tasks: list) -> None:
    """Pass 1 with the walks started ahead (shard_walks.py: on threads or in the caption workers): each group's
    posts taken here as its walk comes back, in group order."""
    for key, group in tasks:
        locator.progress.check_cancelled()  # (progress itself: take_group counts the group's posts)
        locator.take_group(group, locator.walks.take(key))


def _bucket_groups(ids: np.ndarray) -> list[tuple[int, list[tuple[int, np.ndarray]]]]:
    """The selected ids by bucket (`id % 1000`, the shards' split), in the groups of buckets the walks use
    (shard_walks.group_of), as (group, [(bucket, ids), ...]) in bucket order."""
    buckets = (ids % BUCKETS).astype(np.int16)  # 16 bits: numpy's stable sort is a radix sort there
    order = np.argsort(buckets, kind="stable")
    split = np.split(ids[order], np.flatnonzero(np.diff(buckets[order])) + 1) if ids.size else []
    groups: dict[int, list[tuple[int, np.ndarray]]] = {}
    for g in split:
        bucket = int(g[0] % BUCKETS)
        groups.setdefault(group_of(bucket), []).append((bucket, g))
    return list(groups.items())


class _ManifestWriter:
    """Pass 2's bookkeeping per chunk: the skipped records of the posts not found, the summary's counts, and
    the found posts' caption codes in the reference table (reference_lines.py composes the lines; a test
    compares them with a copy build's records). `found`: the locate pass's (FIELDS, n) columns, in id order."""

    def __init__(self, opts, locator: _Locator, found: Sequence[np.ndarray]) -> None:
        shards = locator.shards
        self.opts = opts
        self.locator = locator
        self.per_shard = np.bincount(found[1], minlength=len(shards.infos))
        self.rating = np.zeros(256, dtype=np.int64)  # counts by code (ratings are 0..3; others kept apart)
        self.quality = np.zeros(len(QUALITY_LABELS) + 1, dtype=np.int64)  # last: none
        self.year = np.zeros(len(YEAR_TAGS) + 1, dtype=np.int64)
        self.other_ratings: Counter = Counter()
        self.skipped: list[str] = []
        self.missing_ids: list[int] = []
        self.corrupt_items: list[dict] = []
        self.written = len(found[0])
        self.bytes_written = int(found[3].sum())
        self.done = 0

    def add(self, ids: np.ndarray, found_ids: np.ndarray, lines: ChunkLines, rows: np.ndarray) -> None:
        """Count the chunk `ids` whose found posts are `found_ids` and whose lines are `lines`, and set the
        found posts' caption codes in their reference table `rows`."""
        self.done += len(ids)
        hit = in_sorted(ids, found_ids)
        for pid in ids[~hit].tolist():
            self._skip(int(pid))
        if len(found_ids):
            self._count(rows, lines.rating[hit], lines.quality[hit], lines.year[hit])

    def _skip(self, pid: int) -> None:
        record = self.locator.corrupt.get(pid)
        if record is not None:
            self.corrupt_items.append({k: record[k] for k in ("id", "reason", "shard")})
            self.skipped.append(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self.missing_ids.append(pid)
            self.skipped.append(f'{{"id": {pid}, "status": "missing"}}\n')

    def _count(self, rows: np.ndarray, rating: np.ndarray, quality: np.ndarray, year: np.ndarray) -> None:
        rows["rating"], rows["quality"], rows["year"] = rating, quality, year
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


def _shards_file(opts, locator: _Locator, per_shard: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """shards.json's text: every referenced shard's size and mtime as the build first saw it, by path (the order
    refs.npy's `shard` column indexes; shards with no image left out), and the image extensions, sorted (its
    `ext` column).
    The walk's threads and workers meet shards and extensions in any order: the files must not depend on it. A
    shard that changed while the build read it stops the build (its offsets may describe either version).
    Returns the text, the build's shard index -> written index and extension code -> written code. (No shard is
    read after the locate pass, so the check here covers the whole build.)"""
    shards = locator.shards
    shard_of = np.full(len(shards.infos), -1, dtype=np.int64)
    kept: list[ShardInfo] = []
    posts: list[int] = []
    used = sorted((info.path, k) for k, info in enumerate(shards.infos) if per_shard[k])
    for _path, k in used:
        info = shards.infos[k]
        try:
            st = os.stat(info.path)
        except OSError as exc:
            raise KxlError(
                f"image shard vanished during the build ({exc.strerror})", path=info.path
            ) from None
        if (st.st_size, st.st_mtime_ns) != (info.size, info.mtime_ns):
            raise KxlError("image shard changed while the build read it", path=info.path,
                           hint="run the build again once the shards are stable")  # fmt: skip
        shard_of[k] = len(kept)
        kept.append(ShardInfo(info.path, info.size, info.mtime_ns, shards.origins[k]))
        posts.append(int(per_shard[k]))
    exts = sorted(locator.exts)
    ext_of = np.array([exts.index(e) for e in locator.exts], dtype=np.int64)
    text = shards_file_text(Path(os.path.abspath(opts.images)), opts.subfolder, exts, kept, posts)
    return text, shard_of, ext_of


__all__ = ["write_reference_outputs"]
