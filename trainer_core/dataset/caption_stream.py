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
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..danbooru.db_reader import CHUNK_POSTS, PostColumns, TagChunk, chunked, fetch_chunk, open_db
from ..progress import Progress
from .captions import CaptionBuilder, CaptionChunk, QualityScheme

# Below this many posts a job runs in-process: worker start-up would cost more than it saves.
PROCESS_MIN_POSTS = 200_000
# A metadata DB file at least this big (~1.6 KB per post in HakuBooru's schema) can yield a selection of that
# size, so callers may start workers while the selection is still running (`CaptionWorkers.for_db`).
PRESTART_MIN_DB_BYTES = 256 * 2**20

_worker_state: dict[tuple[str, str], tuple] = {}


def _caption_in_worker(
    db_path: str, scheme: QualityScheme, ids: np.ndarray, jsonl: bool
) -> CaptionChunk | str:
    """One chunk, read and captioned inside a worker process (one connection and builder per process)."""
    key = (db_path, repr(scheme))  # the scheme holds a dict, so it is not hashable itself
    state = _worker_state.get(key)
    if state is None:
        state = _worker_state[key] = (open_db(db_path), CaptionBuilder(scheme))
    conn, builder = state
    posts, tags = fetch_chunk(conn, ids)
    return builder.build(conn, posts, tags, jsonl=jsonl)


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


def default_processes(n_posts: int) -> int:
    """Worker processes for a job of `n_posts`: 0 (in-process) for small jobs, else up to 2 (one per core)."""
    if n_posts < PROCESS_MIN_POSTS:
        return 0
    return max(0, min(2, (os.cpu_count() or 1)))


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
) -> Iterator[CaptionChunk | str]:
    """Yield `CaptionChunk`s (or JSON Lines text with `jsonl=True`) for sorted `ids`, in order.

    `processes`: worker processes (None = `default_processes`); 0 = in-process, with `threads` reader threads
    running SQL ahead of the captioning. `workers`: already started processes to use when processes are used.
    """
    n_proc = default_processes(int(ids.size)) if processes is None else max(0, processes)
    if n_proc >= 1:
        yield from _iter_processes(str(db_path), ids, scheme, n_proc, jsonl, chunk_posts, progress, workers)
    else:
        yield from _iter_threads(db_path, ids, scheme, threads, jsonl, chunk_posts, progress)


def _ordered(
    pool: Executor, submit, chunks: Iterator[np.ndarray], ahead: int, total: int, progress: Progress | None
) -> Iterator:
    """Run `submit(pool, chunk)` with at most `ahead` chunks in flight; yield (n_posts, result) in chunk order."""
    pending: deque[tuple[int, Future]] = deque()
    for chunk in chunks:
        pending.append((int(chunk.size), submit(pool, chunk)))
        if len(pending) >= ahead:
            break
    done = 0
    while pending:
        if progress is not None:
            progress.check_cancelled()
        size, fut = pending.popleft()
        result = fut.result()
        nxt = next(chunks, None)
        if nxt is not None:
            pending.append((int(nxt.size), submit(pool, nxt)))
        done += size
        if progress is not None:
            progress.update(done, total)
        yield result


def _iter_processes(
    db_path: str,
    ids: np.ndarray,
    scheme: QualityScheme,
    n_proc: int,
    jsonl: bool,
    chunk_posts: int,
    progress: Progress | None,
    workers: CaptionWorkers | None = None,
) -> Iterator[CaptionChunk | str]:
    own = workers is None
    if workers is None:
        workers = CaptionWorkers(n_proc)
    n_proc = workers.n_proc
    try:
        # two chunks per worker in flight: one being computed, one queued, so a worker never waits on the parent
        yield from _ordered(
            workers.pool,
            lambda p, chunk: p.submit(_caption_in_worker, db_path, scheme, chunk, jsonl),
            chunked(ids, chunk_posts),
            2 * n_proc,
            int(ids.size),
            progress,
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
) -> Iterator[CaptionChunk | str]:
    """sqlite3 releases the GIL while SQLite runs a statement, so reading chunk k+1 overlaps captioning chunk k."""
    local = threading.local()
    opened = []
    lock = threading.Lock()

    def read(chunk: np.ndarray) -> tuple[PostColumns, TagChunk]:
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
            for posts, tags in _ordered(
                pool,
                lambda p, chunk: p.submit(read, chunk),
                chunked(ids, chunk_posts),
                max(1, threads) + 1,
                int(ids.size),
                None,
            ):
                if progress is not None:
                    progress.check_cancelled()
                yield builder.build(main_conn, posts, tags, jsonl=jsonl)
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
