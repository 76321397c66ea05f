"""Caption preview for the wizard: a few real captions with each tag's caption kind, for colouring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..danbooru.db_reader import open_db, post_header, post_tag_rows
from ..tags.text import tag_to_caption_text
from .captions import (
    KIND_DROP,
    KIND_GENERAL,
    QUALITY_LABELS,
    RATING_TAGS,
    YEAR_TAGS,
    make_caption,
    quality_scheme,
    tag_kind,
    year_of,
    year_tag_index,
)
from .column_cache import find_column_cache
from .filters import PostFilters
from .selection import SelectionPlan, select_posts

KIND_EXTRA = 10  # year / rating / quality tags added by the processors


@dataclass
class PreviewCaption:
    post_id: int
    caption: str  # exactly what the export writes
    keep: list[tuple[str, int]]  # (text, kind) before `|||`
    rest: list[tuple[str, int]]  # (text, kind) after it, processors' tags as KIND_EXTRA


def preview_captions(
    db: str | Path, plan: SelectionPlan, filters: PostFilters, quality: str, n: int = 20
) -> list[PreviewCaption]:
    """Captions of `n` posts spread evenly over the selection."""
    conn = open_db(db)
    try:
        scheme = quality_scheme(quality, conn)
        # on a full dump the SQL selection takes seconds; a cache left by an earlier run answers at once
        ids = select_posts(conn, plan, filters, db, cache=find_column_cache(conn, db)).ids
        if ids.size > n:
            ids = ids[[round(i * (ids.size - 1) / (n - 1)) for i in range(n)]] if n > 1 else ids[:1]
        out = []
        for pid in ids.tolist():
            rating, fav, created = post_header(conn, pid)
            tags = post_tag_rows(conn, pid)
            kinds = [(tag_to_caption_text(name), tag_kind(name, ttype)) for name, ttype in tags]
            kinds = [k for k in kinds if k[1] != KIND_DROP]
            keep = sorted((k for k in kinds if k[1] < KIND_GENERAL), key=lambda k: k[1])
            rest = sorted((k for k in kinds if k[1] >= KIND_GENERAL), key=lambda k: k[1])
            y = year_tag_index(year_of(created))
            if y is not None:
                rest.append((YEAR_TAGS[y], KIND_EXTRA))
            rest.extend((t, KIND_EXTRA) for t in RATING_TAGS.get(rating, ()))
            q = scheme.label_index(pid, rating, fav)
            if q is not None:
                rest.append((QUALITY_LABELS[q], KIND_EXTRA))
            out.append(PreviewCaption(pid, make_caption(pid, rating, fav, created, tags, scheme), keep, rest))
        return out
    finally:
        conn.close()
