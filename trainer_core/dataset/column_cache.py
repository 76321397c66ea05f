"""A column copy of a metadata DB, built once per DB: what selection and captions read, as flat arrays.

Why: a card-recipe run over a million posts spends most of its time in SQLite handing out the ~29 million
`posttagrelation` rows (specs/dataset.md §1.2) and the post rows, every time it runs. The cache holds, per post
(sorted by id): rating, fav_count, score, upload year and the three default filters' verdicts, plus every post's
tag ids in HakuBooru's order (`ORDER BY post_id, id`) as one flat array with offsets. A post's tags are then one
slice of a memory-mapped file, so later runs read tens of MB instead of decoding a GB of SQLite pages.

Exactness (the same ids and the same captions as the SQL path, tested):
- post values come from the same reader the SQL path uses (`db_reader._post_columns`), and the default filters
  are stored as the values SQLite itself gives the very expressions `PostFilters.where` uses;
- relations are read in rowid order and used only if post_id never decreases along the table, which makes rowid
  order (post_id, id) order; any other DB gets its relations through the post_id index, post chunk by chunk;
- a filter the arrays cannot evaluate exactly (a rating / score / fav_count value SQLite stores as text or real,
  relation rows without a post id) makes `filter_mask` return None and the caller runs the SQL instead.

Validity: a cache belongs to one DB state: the key hashes the DB's fingerprint (size, row counts, highest ids),
its modification time and this module's format, so an edited or replaced DB gets a new cache. Building a cache
removes older caches of the same DB path. Files are written to a temporary folder renamed into place when
complete, so a cancelled or failed build leaves nothing that looks usable.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import free_bytes
from ..danbooru.db_reader import (
    _TAG_BITS,
    PostColumns,
    TagChunk,
    _column_bounds,
    _parse_ints,
    _post_columns,
    db_fingerprint,
    fetch_tag_chunk,
    open_db,
    resolve_tag_ids,
)
from ..errors import DatabaseError, KxlError
from ..paths import cache_dir
from ..progress import Progress, ensure_progress, format_bytes
from .filters import HAS_FILE_SQL, IS_IMAGE_SQL, NOT_DELETED_SQL, PostFilters
from .ordered_jobs import in_order

FORMAT_VERSION = 1
# A DB file at least this big (about 160,000 posts in HakuBooru's schema) gets a cache by default: below that
# the SQL path takes a second or two and a cache would not pay for its disk space.
AUTO_MIN_DB_BYTES = 256 * 2**20
POST_CHUNK = 100_000  # posts per worker task
REL_SLICE = 2_000_000  # relation rowids per worker task

# Bits of the per-post `flags` column.
F_NOT_DELETED, F_HAS_FILE, F_IS_IMAGE, F_RATING_NULL, F_SCORE_NULL, F_FAV_NULL = (1 << i for i in range(6))
_NUMERIC = ("rating", "score", "fav_count")


def cache_root() -> Path:
    return cache_dir() / "db-columns"


def cache_key(conn: sqlite3.Connection, db_path: str | Path, fingerprint: str | None = None) -> str:
    """Identity of one state of one DB (plus the cache format and the filter expressions it stores).
    `fingerprint`: the DB's `db_fingerprint` where the caller already has it (it costs ~0.4 s on a 1 M-post DB:
    a build records it in its options too)."""
    st = Path(db_path).stat()
    text = "|".join(
        (
            fingerprint if fingerprint is not None else db_fingerprint(conn, db_path),
            str(st.st_mtime_ns),
            str(FORMAT_VERSION),
            NOT_DELETED_SQL,
            HAS_FILE_SQL,
            IS_IMAGE_SQL,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass
class _Array:
    name: str
    dtype: str
    length: int


class ColumnCache:
    """A built cache, memory-mapped (read-only). Safe to share between threads; processes open it by path."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise KxlError(f"DB column cache is unreadable ({e})", path=self.path) from None
        if self.meta.get("format") != FORMAT_VERSION:
            raise KxlError("DB column cache has another format version", path=self.path)
        arrays = {a["name"]: _Array(**a) for a in self.meta["arrays"]}
        self.post_id = self._map(arrays["post_id"])
        self.rating = self._map(arrays["rating"])
        self.fav_count = self._map(arrays["fav_count"])
        self.score = self._map(arrays["score"])
        self.year = self._map(arrays["year"])
        self.flags = self._map(arrays["flags"])
        self.offsets = self._map(arrays["offsets"])
        self.tags = self._map(arrays["tags"])
        self.exact: dict[str, bool] = self.meta["exact"]

    def _map(self, a: _Array) -> np.ndarray:
        if a.length == 0:
            return np.zeros(0, a.dtype)
        return np.memmap(self.path / f"{a.name}.bin", dtype=a.dtype, mode="r", shape=(a.length,))

    def __len__(self) -> int:
        return int(self.post_id.size)

    # --- reading -------------------------------------------------------------------------------------------

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (sorted, unique) in the cache; ids that are not posts raise DatabaseError, as SQL does."""
        rows = np.searchsorted(self.post_id, ids)
        found = rows < self.post_id.size
        found[found] = self.post_id[rows[found]] == ids[found]
        if not found.all():
            lost = ids[~found][:5].tolist()
            raise DatabaseError(f"post id(s) {lost} are not in the post table")
        return rows

    def fetch_chunk(self, ids: np.ndarray) -> tuple[PostColumns, TagChunk]:
        """What `db_reader.fetch_chunk` returns for `ids`, from the arrays."""
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            return PostColumns.empty(), TagChunk(ids, np.zeros(0, np.int64), np.zeros(0, np.int64))
        rows = self.rows_of(ids)
        posts = PostColumns(
            ids=ids,
            rating=self.rating[rows].astype(np.int64),
            fav_count=self.fav_count[rows].astype(np.int64),
            year=self.year[rows].astype(np.int64),
        )
        starts = self.offsets[rows].astype(np.int64)
        counts = self.offsets[rows + 1].astype(np.int64) - starts
        if int(rows[-1] - rows[0]) + 1 == rows.size:  # consecutive posts: their tags are one slice
            tags = np.asarray(self.tags[starts[0] : starts[0] + int(counts.sum())], np.int64)
        else:
            before = np.cumsum(counts) - counts  # where each post's tags land in the output
            index = np.repeat(starts - before, counts) + np.arange(int(counts.sum()), dtype=np.int64)
            tags = self.tags[index].astype(np.int64)
        return posts, TagChunk(ids, counts, tags)

    def filter_mask(
        self, filters: PostFilters, conn: sqlite3.Connection, db_path: str | Path | None = None
    ) -> np.ndarray | None:
        """Which posts (rows) pass `filters`, or None when the arrays cannot answer exactly (use the SQL)."""
        uses = {
            "rating": filters.ratings is not None,
            "score": filters.min_score is not None,
            "fav_count": filters.min_fav_count is not None,
            "relations": bool(filters.tags_none),  # NOT IN over a relation list holding NULL post ids
        }
        if any(used and not self.exact.get(name, False) for name, used in uses.items()):
            return None
        flags = np.asarray(self.flags)
        mask = np.ones(flags.size, bool)
        if filters.skip_deleted:
            mask &= (flags & F_NOT_DELETED) != 0
        if filters.skip_banned:
            mask &= (flags & F_HAS_FILE) != 0
        if filters.images_only:
            mask &= (flags & F_IS_IMAGE) != 0
        if filters.ratings is not None:
            mask &= np.isin(self.rating, np.asarray(filters.ratings, np.int64)) & (
                (flags & F_RATING_NULL) == 0
            )
        if filters.min_score is not None:
            mask &= (self.score >= int(filters.min_score)) & ((flags & F_SCORE_NULL) == 0)
        if filters.min_fav_count is not None:
            mask &= (self.fav_count >= int(filters.min_fav_count)) & ((flags & F_FAV_NULL) == 0)
        if filters.tags_any:
            mask &= self._has_tags(resolve_tag_ids(conn, filters.tags_any, db_path).values(), every=False)
        if filters.tags_all:
            mask &= self._has_tags(resolve_tag_ids(conn, filters.tags_all, db_path).values(), every=True)
        if filters.tags_none:
            mask &= ~self._has_tags(resolve_tag_ids(conn, filters.tags_none, db_path).values(), every=False)
        return mask

    def _has_tags(self, tag_ids, *, every: bool) -> np.ndarray:
        """Per post: holds any (or every) of `tag_ids`. One pass over the tag array per tag."""
        wanted = sorted(set(int(t) for t in tag_ids))
        out = np.full(len(self), every, bool)
        for tag in wanted:
            hit_rows = np.flatnonzero(np.asarray(self.tags) == tag)
            # the post owning relation row k is the last post whose offset is <= k (empty posts share an
            # offset with the next one and so are never picked)
            has = np.zeros(len(self), bool)
            has[np.searchsorted(self.offsets, hit_rows, side="right") - 1] = True
            out = (out & has) if every else (out | has)
        return out

    def population(self, start: int, stop: int | None, mask: np.ndarray) -> np.ndarray:
        """Ids in [start, stop) whose rows pass `mask`, ascending."""
        i0 = int(np.searchsorted(self.post_id, start))
        i1 = len(self) if stop is None else int(np.searchsorted(self.post_id, stop))
        return np.asarray(self.post_id[i0:i1][mask[i0:i1]], np.int64)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


# --- building --------------------------------------------------------------------------------------------------


def _post_task(db_path: str, ids: np.ndarray) -> tuple[PostColumns, np.ndarray, np.ndarray, dict[str, int]]:
    """Caption columns (the SQL path's own reader), score, filter flags and type checks of all posts in ids."""
    conn = _worker_conn(db_path)
    cols, in_span, *row = _post_columns(
        conn,
        ids,
        (
            "count(*)",
            f"group_concat(ifnull({NOT_DELETED_SQL}, 0) | (ifnull({HAS_FILE_SQL}, 0) << 1) "
            f"| (ifnull({IS_IMAGE_SQL}, 0) << 2) | ((rating IS NULL) << 3) | ((score IS NULL) << 4) "
            "| ((fav_count IS NULL) << 5))",
            # only integers go into the text numpy parses; other values (counted below) make min_score use SQL
            "group_concat(CASE typeof(score) WHEN 'integer' THEN score ELSE 0 END)",
            *(f"ifnull(sum(typeof({c}) NOT IN ('integer', 'null')), 0)" for c in _NUMERIC),
        ),
        whole_span=True,
    )
    if in_span != ids.size or row[0] != ids.size:
        raise DatabaseError("the post table changed while it was being read; run again")
    flags, score = _parse_ints(row[1]).astype(np.uint8), _parse_ints(row[2])
    odd = dict(zip(_NUMERIC, (int(v) for v in row[3:6]), strict=True))
    return cols, flags, score, odd


def _rel_task(
    db_path: str, lo: int, hi: int, base: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Relation rows with rowid in [lo, hi), in rowid order: (post ids, run lengths, tag ids, usable).

    `usable` is False when the slice has rows that are not plain integers (NULL post or tag) or post ids that
    go down: then rowid order is not HakuBooru's order and the caller takes the index path instead.
    """
    conn = _worker_conn(db_path)
    # a rowid range scan hands rows out in rowid order (what db_reader's clustered path relies on too); an
    # ORDER BY subquery would cost a fifth more for the same order
    sub = 'FROM "posttagrelation" WHERE id >= ? AND id < ?'
    if base is not None:  # one packed number per row: half the text for SQLite to write and numpy to parse
        n, text = conn.execute(
            f"SELECT count(*), group_concat(((post_id - ?) << {_TAG_BITS}) | tag_id) {sub}", (base, lo, hi)
        ).fetchone()
        values = _parse_ints(text)
        posts, tags = (values >> _TAG_BITS) + base, values & ((1 << _TAG_BITS) - 1)
    else:
        n, ptext, ttext = conn.execute(
            f"SELECT count(*), group_concat(post_id), group_concat(tag_id) {sub}", (lo, hi)
        ).fetchone()
        posts, tags = _parse_ints(ptext), _parse_ints(ttext)
    empty = np.zeros(0, np.int64)
    if posts.size != n or tags.size != n or (n > 1 and bool(np.any(posts[1:] < posts[:-1]))):
        return empty, empty, empty, False
    if n == 0:
        return empty, empty, empty, True
    starts = np.flatnonzero(np.concatenate(([True], posts[1:] != posts[:-1])))
    runs = np.diff(np.append(starts, n))
    return posts[starts], runs, tags, True


def _index_task(db_path: str, ids: np.ndarray) -> TagChunk:
    return fetch_tag_chunk(_worker_conn(db_path), ids, allow_clustered=False)


_conns: dict[tuple, sqlite3.Connection] = {}


def _worker_conn(db_path: str) -> sqlite3.Connection:
    """One connection per process and DB file state: a file replaced at the same path (a new download, a
    regenerated demo) must not be read through a connection to the old one."""
    st = os.stat(db_path)
    key = (db_path, st.st_ino, st.st_size, st.st_mtime_ns)
    conn = _conns.get(key)
    if conn is None:
        for old in [k for k in _conns if k[0] == db_path]:
            _conns.pop(old).close()
        conn = _conns[key] = open_db(db_path)
    return conn


def build_processes() -> int:
    """Workers for a build: one per core up to 8. Each reads its own slices of the DB; the parent only appends
    their arrays to the files, so the build scales with cores until the disk or SQLite's page cache limits."""
    return max(1, min(8, os.cpu_count() or 1))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _narrow(values: np.ndarray) -> np.ndarray:
    """The smallest signed integer type holding every value (the cache is read whole by tag filters)."""
    if values.size == 0:
        return values.astype(np.int8)
    lo, hi = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values.astype(np.int64)


def build_column_cache(
    db_path: str | Path,
    *,
    root: str | Path | None = None,
    progress: Progress | None = None,
    pool: Executor | None = None,
    processes: int | None = None,
) -> ColumnCache:
    """Read the whole DB once into a new cache under `root` (default `cache_root()`) and return it.

    `pool`: worker processes to use (e.g. caption workers already started); else `processes` spawned ones
    (None = `build_processes()`; 0 = in this process, for tests and tiny DBs).
    """
    if processes is None:
        processes = build_processes()
    progress = ensure_progress(progress)
    db_path = Path(db_path)
    root = Path(root) if root is not None else cache_root()
    t0 = time.monotonic()
    conn = open_db(db_path)
    try:
        key = cache_key(conn, db_path)
        ids = _parse_ints(
            conn.execute('SELECT group_concat(id) FROM (SELECT id FROM "post" ORDER BY id)').fetchone()[0]
        )
        # two subqueries: SQLite answers a lone min() or max() from the b-tree's ends, but scans for both at once
        rel_lo, rel_hi = conn.execute(
            'SELECT (SELECT min(id) FROM "posttagrelation"), (SELECT max(id) FROM "posttagrelation")'
        ).fetchone()
        null_posts = conn.execute('SELECT count(*) FROM "posttagrelation" WHERE post_id IS NULL').fetchone()[
            0
        ]
        tag_lo, tag_hi, post_lo, post_hi = _column_bounds(conn)
    finally:
        conn.close()
    n_rel_span = 0 if rel_lo is None else int(rel_hi) - int(rel_lo) + 1
    need = ids.size * 40 + n_rel_span * 4
    room = free_bytes(root)
    if room is not None and room < need * 1.2:
        raise KxlError(
            f"not enough free space for the DB column cache ({need / 2**20:,.0f} MiB needed)",
            path=root,
            hint="free some space, or run without the cache (--db-cache never)",
        )
    packed = tag_lo >= 0 and tag_hi < (1 << _TAG_BITS) and post_hi - post_lo < (1 << 40)
    tag_dtype = np.int32 if -(2**31) <= tag_lo and tag_hi < 2**31 else np.int64

    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    tmp = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    own_pool = None
    if pool is None and processes > 0:
        own_pool = pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    runner: Executor = pool if pool is not None else _InlineExecutor()
    try:
        chunks = [ids[i : i + POST_CHUNK] for i in range(0, ids.size, POST_CHUNK)]
        total = ids.size + n_rel_span
        progress.stage(
            f"Indexing the metadata DB: {ids.size:,} posts, ~{n_rel_span:,} tag rows (once per DB)"
        )
        cols: list[PostColumns] = []
        flags: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        odd = dict.fromkeys(_NUMERIC, 0)
        str_db = str(db_path)
        post_jobs = [(int(ch.size), (_post_task, str_db, ch)) for ch in chunks]
        for c, f, s, o in in_order(runner, post_jobs, 4, progress, 0, total):
            cols.append(c)
            flags.append(f)
            scores.append(s)
            for k, v in o.items():
                odd[k] += v
        counts = np.zeros(ids.size, np.int64)
        n_tags = _write_relations(
            runner,
            str_db,
            ids,
            counts,
            tmp / "tags.bin",
            tag_dtype,
            rel_lo,
            rel_hi,
            post_lo if packed else None,
            progress,
            total,
        )
        offsets = np.zeros(ids.size + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        if int(offsets[-1]) != n_tags:
            raise DatabaseError("posttagrelation changed while it was being read; run again")
        columns = {
            "post_id": ids.astype(np.int64),
            "rating": _narrow(_joined([c.rating for c in cols])),
            "fav_count": _narrow(_joined([c.fav_count for c in cols])),
            "score": _narrow(_joined(scores)),
            "year": _narrow(_joined([c.year for c in cols])),
            "flags": _joined(flags).astype(np.uint8),
            "offsets": offsets,
        }
        arrays = [{"name": "tags", "dtype": np.dtype(tag_dtype).name, "length": n_tags}]
        for name, values in columns.items():
            with open(tmp / f"{name}.bin", "wb") as fh:
                fh.write(values.tobytes())
            arrays.append({"name": name, "dtype": values.dtype.name, "length": int(values.size)})
        meta = {
            "format": FORMAT_VERSION,
            "key": key,
            "db": str(db_path.resolve()),
            "posts": int(ids.size),
            "tag_rows": n_tags,
            "arrays": arrays,
            "exact": {**{k: v == 0 for k, v in odd.items()}, "relations": null_posts == 0},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.monotonic() - t0, 2),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        for p in tmp.iterdir():  # the rename below publishes the cache: its files must be on disk first
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        final = root / key
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=True, cancel_futures=True)
    _remove_older(root, meta["db"], key)
    progress.update(total, total)
    return ColumnCache(final)


def _write_relations(
    runner: Executor,
    db_path: str,
    ids: np.ndarray,
    counts: np.ndarray,
    dest: Path,
    tag_dtype,
    rel_lo: int | None,
    rel_hi: int | None,
    base: int | None,
    progress: Progress,
    total: int,
) -> int:
    """Every post's tag ids, in (post_id, id) order, into `dest`; fills `counts`. Returns the number written.

    `base`: the lowest post id when rows can be packed into one number (see `_rel_task`), else None.
    """
    written = 0
    with open(dest, "wb") as fh:
        if rel_lo is not None:
            jobs = [
                (
                    min(REL_SLICE, rel_hi + 1 - lo),
                    (_rel_task, db_path, lo, min(lo + REL_SLICE, rel_hi + 1), base),
                )
                for lo in range(rel_lo, rel_hi + 1, REL_SLICE)
            ]
            last_post = None
            ok = True
            for posts, runs, tags, usable in in_order(runner, jobs, 4, progress, ids.size, total):
                if not usable or (posts.size and last_post is not None and posts[0] < last_post):
                    ok = False
                    break
                if posts.size:
                    last_post = int(posts[-1])
                rows = np.searchsorted(ids, posts)
                known = rows < ids.size
                known[known] = ids[rows[known]] == posts[known]
                counts[rows[known]] += runs[known]  # `rows` are unique within a slice
                if not known.all():  # relations of posts missing from the post table: no caption has them
                    tags = tags[np.repeat(known, runs)]
                fh.write(tags.astype(tag_dtype).tobytes())
                written += int(tags.size)
            if ok:
                return written
        # Not in post order (or odd rows): the post_id index, post chunk by chunk, as the SQL path reads it.
        counts[:] = 0
        fh.seek(0)
        fh.truncate()
        written = 0
        progress.stage(
            "Indexing the metadata DB: tag rows through the post_id index (the table is not in post order)"
        )
        chunks = [ids[i : i + POST_CHUNK] for i in range(0, ids.size, POST_CHUNK)]
        at = 0
        index_jobs = [(int(ch.size), (_index_task, db_path, ch)) for ch in chunks]
        for chunk in in_order(runner, index_jobs, 4, progress, 0, ids.size):
            counts[at : at + chunk.counts.size] = chunk.counts
            at += chunk.counts.size
            fh.write(chunk.tag_ids.astype(tag_dtype).tobytes())
            written += int(chunk.tag_ids.size)
    return written


class _InlineExecutor(Executor):
    """Runs each task at submit time (in-process builds: tests, tiny DBs)."""

    def submit(self, fn, /, *args, **kwargs):
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(e)
        return fut


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished build into place. Another process (the GUI and a CLI run on one DB) may have
    published the same DB state meanwhile: its cache is as good as ours, so ours is dropped."""
    if _readable(final):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(final, ignore_errors=True)  # a damaged leftover
    try:
        os.replace(tmp, final)
    except OSError:
        if not _readable(final):  # not a lost race: a real failure to rename
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _readable(path: Path) -> bool:
    try:
        ColumnCache(path)
    except KxlError:
        return False
    return True


def _remove_abandoned(root: Path) -> None:
    """Temporary folders of builds whose process is gone (killed, crashed): never published, never reused."""
    for tmp in root.glob(".*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid() or _process_alive(pid):
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: leave its folder alone
    return True


def _remove_older(root: Path, db: str, keep: str) -> None:
    """Drop other caches of the same DB path: they describe states of the file that are gone."""
    for meta_file in root.glob("*/meta.json"):
        if meta_file.parent.name == keep:
            continue
        try:
            if json.loads(meta_file.read_text(encoding="utf-8")).get("db") == db:
                shutil.rmtree(meta_file.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


# --- choosing --------------------------------------------------------------------------------------------------

CACHE_MODES = ("auto", "always", "never")


def find_column_cache(
    conn: sqlite3.Connection,
    db_path: str | Path,
    root: str | Path | None = None,
    fingerprint: str | None = None,
) -> ColumnCache | None:
    """The cache of this DB state, if one was built (`fingerprint`: see `cache_key`)."""
    path = (Path(root) if root is not None else cache_root()) / cache_key(conn, db_path, fingerprint)
    if not (path / "meta.json").is_file():
        return None
    try:
        return ColumnCache(path)
    except KxlError:
        return None


def column_cache_for(
    db_path: str | Path,
    conn: sqlite3.Connection,
    mode: str = "auto",
    *,
    progress: Progress | None = None,
    pool: Executor | None = None,
    pool_size: int = 0,
    fingerprint: str | None = None,
) -> ColumnCache | None:
    """The cache to use for a job on `db_path`: found, built now, or None (use SQL).

    `pool`: already started worker processes (`pool_size` of them), used for a build when they are as many
    as `build_processes()` would start.

    `auto` builds one for DB files of at least AUTO_MIN_DB_BYTES (the published DB is ~30 GB; the demo DB is a few
    MB), `always` for any DB, `never` uses none. `KXL_DB_CACHE=never` in the environment turns `auto` off.
    """
    if mode not in CACHE_MODES:
        raise KxlError(f"unknown DB cache mode {mode!r}; choose one of {', '.join(CACHE_MODES)}")
    if mode == "auto":
        mode = os.environ.get("KXL_DB_CACHE", "auto").strip().lower() or "auto"
        if mode not in CACHE_MODES:
            raise KxlError(
                f"KXL_DB_CACHE={os.environ['KXL_DB_CACHE']!r} is not a DB cache mode; "
                f"use one of {', '.join(CACHE_MODES)}"
            )
    if mode == "never":
        return None
    found = find_column_cache(conn, db_path, fingerprint=fingerprint)
    if found is not None:
        return found
    if mode == "auto" and Path(db_path).stat().st_size < AUTO_MIN_DB_BYTES:
        return None
    use = pool if pool is not None and pool_size >= build_processes() else None
    return build_column_cache(db_path, progress=progress, pool=use)


def describe_cache_state(db_path: str | Path) -> str:
    """One line for the wizard's Source page: is there a cache for this DB, or will the first run build one."""
    conn = open_db(db_path)
    try:
        found = find_column_cache(conn, db_path)
        if found is not None:
            return (
                f"Column cache: ready ({format_bytes(found.size_bytes())}, built {found.meta.get('built_at', '?')}); "
                "selections and captions skip SQLite"
            )
        size = Path(db_path).stat().st_size
        if size < AUTO_MIN_DB_BYTES or os.environ.get("KXL_DB_CACHE") == "never":
            return "Column cache: not used (small DB: SQLite is fast enough)"
        rel_hi = conn.execute('SELECT max(id) FROM "posttagrelation"').fetchone()[0] or 0
        n_posts = conn.execute('SELECT count(*) FROM "post"').fetchone()[0]
    finally:
        conn.close()
    return (
        f"Column cache: none yet; the first run reads the whole DB once into one "
        f"(~{format_bytes(rel_hi * 4 + n_posts * 24)}), later runs skip SQLite"
    )
