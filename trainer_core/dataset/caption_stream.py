"""Captions for many posts, in id order, from worker processes (big jobs) or reader threads (small ones).

Big jobs: the ids are cut into fixed chunks and each chunk is read *and* captioned by one of a few worker
processes (spawned, never forked: the GUI process has threads); the parent only collects results in chunk order.
Reading and captioning are both CPU-bound (SQLite formatting numbers, numpy parsing them, Python joining text),
so two processes use two cores where threads would share one GIL. Small jobs stay in-process: starting a
worker costs ~0.2 s. Either way the output (order and content) does not depend on the number of workers,
because chunk boundaries depend only on the ids and results are consumed in chunk order.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..danbooru.db_reader import CHUNK_POSTS, PostColumns, TagChunk, chunked, fetch_chunk, open_db
from ..progress import Progress
from .captions import CaptionBuilder, CaptionChunk, QualityScheme
from .column_cache import AUTO_MIN_DB_BYTES, ColumnCache
from .ordered_jobs import in_order

# Below this many posts a job runs in-process: worker start-up would cost more than it saves.
PROCESS_MIN_POSTS = 200_000
# A metadata DB file at least this big (~1.6 KB per post in HakuBooru's schema) can yield a selection of that
# size, so callers may start workers while the selection is still running (`CaptionWorkers.for_db`). The same
# size at which a DB gets a column cache by default: both are "a real dump, not the demo".
PRESTART_MIN_DB_BYTES = AUTO_MIN_DB_BYTES


class CaptionSource:
    """Everything that captions a chunk of ids: a DB connection, a caption builder (which learns the tags it
    meets) and, where the DB has one, its column cache. One per worker process (`worker_source`) or per
    in-process job (closed by its owner); not thread-safe."""

    def __init__(self, db_path: str | Path, scheme: QualityScheme, cache_path: str | None = None) -> None:
        self.conn = open_db(db_path)
        self.builder = CaptionBuilder(scheme)
        self.cache = ColumnCache(cache_path) if cache_path is not None else None

    def caption(self, ids: np.ndarray, jsonl: bool) -> tuple[PostColumns, CaptionChunk | str]:
        """The chunk's post columns and its captions (`CaptionBuilder.build`)."""
        posts, tags = self._fetch(ids)
        return posts, self.builder.build(self.conn, posts, tags, jsonl=jsonl)

    def caption_jsonl_with_codes(self, ids: np.ndarray) -> tuple[PostColumns, str, np.ndarray, np.ndarray]:
        """The chunk's post columns, its JSON Lines and its quality and year label indexes
        (`CaptionBuilder.build_jsonl_with_codes`)."""
        posts, tags = self._fetch(ids)
        return (posts, *self.builder.build_jsonl_with_codes(self.conn, posts, tags))

    def _fetch(self, ids: np.ndarray):
        if self.cache is not None:
            return self.cache.fetch_chunk(ids)
        return fetch_chunk(self.conn, ids)

    def close(self) -> None:
        self.conn.close()


_worker_state: dict[tuple[str, str, str | None], CaptionSource] = {}


def worker_source(db_path: str, scheme: QualityScheme, cache_path: str | None = None) -> CaptionSource:
    """The caption source of this worker process for that DB and scheme, made on first use and kept (the
    builder's learned tags and the open DB serve every later chunk)."""
    key = (db_path, repr(scheme), cache_path)  # the scheme holds a dict, so it is not hashable itself
    source = _worker_state.get(key)
    if source is None:
        source = _worker_state[key] = CaptionSource(db_path, scheme, cache_path)
    return source


def _caption_in_worker(
    db_path: str, scheme: QualityScheme, ids: np.ndarray, jsonl: bool, cache_path: str | None = None
) -> CaptionChunk | bytes:
    """One chunk, read (from the DB or its column cache) and captioned inside a worker process."""
    return _encoded(worker_source(db_path, scheme, cache_path).caption(ids, jsonl)[1])


def _encoded(result: CaptionChunk | str) -> CaptionChunk | bytes:
    """JSON Lines leave a worker as UTF-8 bytes: encoded where there are cores to spare, written unchanged."""
    return result.encode("utf-8") if isinstance(result, str) else result


def _warm_up() -> int:
    """Run once per worker at start: unpickling it imports this module (numpy, the caption code) ahead of work."""
    return os.getpid()


class CaptionWorkers:
    """Caption worker processes started ahead of the work: spawning one (Python, numpy, this package: ~0.25 s)
    then overlaps the selection query instead of following it. Use as a context manager."""

    def __init__(self, n_proc: int) -> None:
        self.n_proc = n_proc
        self.pool = ProcessPoolExecutor(n_proc, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(n_proc):  # the executor spawns a process per task while none is idle
            self.pool.submit(_warm_up)

    @classmethod
    def for_db(cls, db_path: str | Path) -> CaptionWorkers | None:
        """Workers for a DB big enough that a selection from it may need them, else None."""
        try:
            big = Path(db_path).stat().st_size >= PRESTART_MIN_DB_BYTES
        except OSError:
            return None
        n = default_processes(PROCESS_MIN_POSTS)
        return cls(n) if big and n >= 1 else None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CaptionWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# A worker captions a 20k-post chunk in ~35 ms; the parent takes ~10 ms to receive and write it, so past ~4
# workers the parent would be the limit.
MAX_PROCESSES = 4


def default_processes(n_posts: int) -> int:
    """Worker processes for a job of `n_posts`: 0 (in-process) for small jobs, else one per core up to 4."""
    if n_posts < PROCESS_MIN_POSTS:
        return 0
    return max(0, min(MAX_PROCESSES, (os.cpu_count() or 1)))


def iter_caption_chunks(
    db_path: str | Path,
    ids: np.ndarray,
    scheme: QualityScheme,
    *,
    threads: int = 2,
    processes: int | None = None,
    jsonl: bool = False,
    chunk_posts: int = CHUNK_POSTS,
    progress: Progress | None = None,
    workers: CaptionWorkers | None = None,
    cache: ColumnCache | None = None,
) -> Iterator[CaptionChunk | bytes]:
    """Yield `CaptionChunk`s (or JSON Lines as UTF-8 bytes with `jsonl=True`) for sorted `ids`, in order.

    `processes`: worker processes (None = `default_processes`); 0 = in-process, with `threads` reader threads
    running SQL ahead of the captioning. `workers`: already started processes to use when processes are used.
    `cache`: the DB's column cache; posts and tags then come from its arrays instead of SQL (same values).
    """
    n_proc = default_processes(int(ids.size)) if processes is None else max(0, processes)
    if n_proc >= 1:
        yield from _iter_processes(
            str(db_path), ids, scheme, n_proc, jsonl, chunk_posts, progress, workers, cache
        )
    else:
        yield from _iter_threads(db_path, ids, scheme, threads, jsonl, chunk_posts, progress, cache)


def _iter_processes(
    db_path: str,
    ids: np.ndarray,
    scheme: QualityScheme,
    n_proc: int,
    jsonl: bool,
    chunk_posts: int,
    progress: Progress | None,
    workers: CaptionWorkers | None = None,
    cache: ColumnCache | None = None,
) -> Iterator[CaptionChunk | bytes]:
    own = workers is None
    cache_path = None if cache is None else str(cache.path)
    if workers is None:
        workers = CaptionWorkers(n_proc)
    n_proc = workers.n_proc
    try:
        # two chunks per worker in flight: one being computed, one queued, so a worker never waits on the parent
        yield from in_order(
            workers.pool,
            (
                (int(chunk.size), (_caption_in_worker, db_path, scheme, chunk, jsonl, cache_path))
                for chunk in chunked(ids, chunk_posts)
            ),
            2 * n_proc,
            progress,
            total=int(ids.size),
        )
    finally:
        if own:
            workers.close()


def _iter_threads(
    db_path: str | Path,
    ids: np.ndarray,
    scheme: QualityScheme,
    threads: int,
    jsonl: bool,
    chunk_posts: int,
    progress: Progress | None,
    cache: ColumnCache | None = None,
) -> Iterator[CaptionChunk | bytes]:
    """sqlite3 releases the GIL while SQLite runs a statement, so reading chunk k+1 overlaps captioning chunk k."""
    local = threading.local()
    opened = []
    lock = threading.Lock()

    def read(chunk: np.ndarray) -> tuple[PostColumns, TagChunk]:
        if cache is not None:
            return cache.fetch_chunk(chunk)
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = open_db(db_path)
            with lock:
                opened.append(c)
        return fetch_chunk(c, chunk)

    main_conn = open_db(db_path)
    builder = CaptionBuilder(scheme)
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="kxl-caption-read") as pool:
            for posts, tags in in_order(
                pool, ((0, (read, chunk)) for chunk in chunked(ids, chunk_posts)), max(1, threads) + 1
            ):
                if progress is not None:
                    progress.check_cancelled()
                yield _encoded(builder.build(main_conn, posts, tags, jsonl=jsonl))
                if progress is not None:
                    progress.update(min(int(ids.size), _done_after(ids, posts)), int(ids.size))
    finally:
        main_conn.close()
        with lock:
            for c in opened:
                c.close()


def _done_after(ids: np.ndarray, posts: PostColumns) -> int:
    """How many of `ids` are captioned once the chunk ending at `posts.ids[-1]` is done."""
    return int(np.searchsorted(ids, posts.ids[-1], side="right")) if len(posts) else 0
