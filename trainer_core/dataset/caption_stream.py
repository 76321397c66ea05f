"""Captions for many posts, in id order: SQL reads run ahead in worker threads while the caller builds captions.

sqlite3 releases the GIL while SQLite runs a statement, so reading chunk k+1 overlaps with captioning chunk k.
Output order (and content) does not depend on the number of threads: chunks are consumed in id order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..danbooru.db_reader import (
    CHUNK_POSTS,
    PostColumns,
    TagChunk,
    chunked,
    fetch_post_columns,
    fetch_tag_chunk,
    open_db,
)
from ..progress import Progress
from .captions import CaptionBuilder, CaptionChunk, QualityScheme


def iter_caption_chunks(
    db_path: str | Path,
    ids: np.ndarray,
    scheme: QualityScheme,
    *,
    threads: int = 2,
    jsonl: bool = False,
    chunk_posts: int = CHUNK_POSTS,
    progress: Progress | None = None,
) -> Iterator[CaptionChunk | str]:
    """Yield `CaptionChunk`s (or JSON Lines text with `jsonl=True`) for sorted `ids`, in order."""
    local = threading.local()
    opened = []
    lock = threading.Lock()

    def conn():
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = open_db(db_path)
            with lock:
                opened.append(c)
        return c

    def read(chunk: np.ndarray) -> tuple[PostColumns, TagChunk]:
        c = conn()
        return fetch_post_columns(c, chunk), fetch_tag_chunk(c, chunk)

    main_conn = open_db(db_path)
    builder = CaptionBuilder(scheme)
    done = 0
    total = int(ids.size)
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="kxl-caption-read") as pool:
            pending: deque[Future] = deque()
            chunks = chunked(ids, chunk_posts)
            for chunk in chunks:
                pending.append(pool.submit(read, chunk))
                if len(pending) > max(1, threads):
                    break
            while pending:
                if progress is not None:
                    progress.check_cancelled()
                posts, tags = pending.popleft().result()
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(pool.submit(read, nxt))
                out = builder.build(main_conn, posts, tags, jsonl=jsonl)
                done += len(posts)
                if progress is not None:
                    progress.update(done, total)
                yield out
    finally:
        main_conn.close()
        with lock:
            for c in opened:
                c.close()
