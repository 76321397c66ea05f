"""`kxl dataset captions`: select posts and write their captions as JSON Lines, no images involved."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path
from ..danbooru.db_reader import open_db
from ..progress import Progress, ensure_progress
from .caption_stream import CaptionWorkers, iter_caption_chunks
from .captions import quality_scheme
from .column_cache import column_cache_for
from .filters import PostFilters
from .selection import SelectionPlan, select_posts


def write_captions_jsonl(
    db: str | Path,
    out: str | Path,
    plan: SelectionPlan,
    filters: PostFilters,
    quality: str = "card",
    *,
    threads: int = 2,
    progress: Progress | None = None,
    db_cache: str = "auto",
) -> int:
    """Write `{"id": ..., "caption": ...}` per selected post, ordered by id, atomically. Returns the count.

    `db_cache`: auto | always | never, whether to use (and first build) the DB's column cache (column_cache.py).
    """
    progress = ensure_progress(progress)
    workers = CaptionWorkers.for_db(db)  # they start while the selection runs
    try:
        conn = open_db(db)
        try:
            scheme = quality_scheme(quality, conn)
            cache = column_cache_for(
                db,
                conn,
                db_cache,
                progress=progress,
                pool=None if workers is None else workers.pool,
                pool_size=0 if workers is None else workers.n_proc,
            )
            progress.stage("Selecting posts")
            selection = select_posts(conn, plan, filters, db, progress, cache=cache)
        finally:
            conn.close()
        progress.stage(f"Captioning {len(selection):,} posts")
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            for text in iter_caption_chunks(
                db,
                selection.ids,
                scheme,
                threads=threads,
                jsonl=True,
                progress=progress,
                workers=workers,
                cache=cache,
            ):
                fh.write(text)  # type: ignore[arg-type]
    finally:
        if workers is not None:
            workers.close()
    progress.update(len(selection), len(selection))
    return len(selection)
