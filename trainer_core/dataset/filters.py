"""Post filters, turned into one SQL WHERE clause over HakuBooru's `post` table.

HakuBooru applies none of these by itself (specs/dataset.md §2.2); the card's dataset excludes deleted, banned /
gold-only (no file URL) and non-image posts, so those three are on by default here.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..danbooru.db_reader import resolve_tag_ids
from ..errors import KxlError

# What danbooru2023-webp holds; gif, mp4, webm, zip (ugoira), swf ... are not images it keeps.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "avif")
# The three default filters as SQL conditions on one post row. The DB column cache (`column_cache.py`) stores each
# post's value of these very expressions, so both ways of selecting agree by construction.
NOT_DELETED_SQL = "is_deleted = 0"
HAS_FILE_SQL = "is_banned = 0 AND file_url IS NOT NULL AND file_url != ''"
IS_IMAGE_SQL = f"lower(file_ext) IN ({', '.join(repr(e) for e in IMAGE_EXTS)})"
RATING_NAMES = {
    "g": 0,
    "general": 0,
    "s": 1,
    "sensitive": 1,
    "q": 2,
    "questionable": 2,
    "e": 3,
    "explicit": 3,
}


def parse_ratings(text: str) -> tuple[int, ...]:
    """`"g,s"`, `"0,1"` or `"general,sensitive"` -> (0, 1)."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if part.isdigit() and int(part) in range(4):
            value = int(part)
        elif part.lower() in RATING_NAMES:
            value = RATING_NAMES[part.lower()]
        else:
            raise KxlError(f"unknown rating {part!r}; use g/s/q/e or 0..3")
        if value not in out:
            out.append(value)
    return tuple(sorted(out))


def split_tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class PostFilters:
    skip_deleted: bool = True
    skip_banned: bool = True  # is_banned, or no file URL (gold-only / hidden)
    images_only: bool = True  # file_ext in IMAGE_EXTS
    ratings: tuple[int, ...] | None = None  # None = every rating
    min_score: int | None = None
    min_fav_count: int | None = None
    tags_any: tuple[str, ...] = field(default=())
    tags_all: tuple[str, ...] = field(default=())
    tags_none: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PostFilters:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise KxlError(f"unknown filter key(s): {', '.join(sorted(unknown))}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)

    @classmethod
    def none(cls) -> PostFilters:
        """No filter at all: every post in the DB."""
        return cls(skip_deleted=False, skip_banned=False, images_only=False)

    def where(self, conn: sqlite3.Connection, db_path: str | Path | None = None) -> tuple[str, list]:
        """SQL condition (on table `post`, no leading AND) and its parameters. Unknown tags raise KxlError."""
        clauses: list[str] = []
        params: list = []
        if self.skip_deleted:
            clauses.append(NOT_DELETED_SQL)
        if self.skip_banned:
            clauses.append(HAS_FILE_SQL)
        if self.images_only:
            clauses.append(IS_IMAGE_SQL)
        if self.ratings is not None:
            if not self.ratings:
                clauses.append("0")
            else:
                clauses.append(f"rating IN ({', '.join('?' * len(self.ratings))})")
                params.extend(self.ratings)
        if self.min_score is not None:
            clauses.append("score >= ?")
            params.append(int(self.min_score))
        if self.min_fav_count is not None:
            clauses.append("fav_count >= ?")
            params.append(int(self.min_fav_count))
        rel = 'SELECT post_id FROM "posttagrelation" WHERE tag_id IN ({})'
        if self.tags_any:
            ids = list(resolve_tag_ids(conn, self.tags_any, db_path).values())
            clauses.append(f"id IN ({rel.format(', '.join('?' * len(ids)))})")
            params.extend(ids)
        if self.tags_all:
            ids = sorted(set(resolve_tag_ids(conn, self.tags_all, db_path).values()))
            clauses.append(
                f"id IN ({rel.format(', '.join('?' * len(ids)))} GROUP BY post_id "
                f"HAVING COUNT(DISTINCT tag_id) = {len(ids)})"
            )
            params.extend(ids)
        if self.tags_none:
            ids = list(resolve_tag_ids(conn, self.tags_none, db_path).values())
            clauses.append(f"id NOT IN ({rel.format(', '.join('?' * len(ids)))})")
            params.extend(ids)
        return (" AND ".join(f"({c})" for c in clauses) or "1"), params
