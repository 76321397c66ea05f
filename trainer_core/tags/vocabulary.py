"""Tag vocabulary: names, categories (HakuBooru's enum), post counts and aliases.

Two sources (specs/dataset.md §1.2 and §6):
- the metadata DB's `tag` table (`name`, `type`, `popularity`), opened read-only so a DB another job is writing, or
  one on a read-only disk, is never touched;
- a tagcomplete-style CSV, `name,category,post_count,"alias1,alias2"`, with Danbooru's category ids, which we
  convert to HakuBooru's numbering on read so the rest of the program sees one enum.
"""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..danbooru.db_reader import tag_table_rows
from ..danbooru.schema import DANBOORU_CATEGORY_TO_TAG_TYPE, TagType
from ..errors import DatabaseError, KxlError
from ..progress import Progress, ensure_progress
from .string_sort import argsort_desc_int_then_string
from .text import normalize_tag_name, normalize_tag_query

# One enum for HakuBooru's `tag.type` numbering, owned by the DB schema module; the vocabulary calls it a category.
TagCategory = TagType
# Danbooru API / tagcomplete category id -> HakuBooru enum (specs/dataset.md §6). Danbooru's 2 is unused.
DANBOORU_TO_CATEGORY = DANBOORU_CATEGORY_TO_TAG_TYPE


@dataclass(frozen=True, slots=True)
class Tag:
    name: str  # raw Danbooru name, underscores and all
    category: TagCategory
    count: int  # posts carrying the tag (DB popularity or CSV post_count)
    aliases: tuple[str, ...] = ()


class TagVocabulary:
    """An immutable set of tags ordered by popularity (count descending, then name), with alias resolution.

    A tag's position in `tags` is its popularity rank, which completion uses as the tie-breaker.
    """

    def __init__(self, tags: Iterable[Tag]):
        unique: dict[str, Tag] = {}
        for tag in tags:
            # First occurrence wins: sources list tags once, and a duplicate row is the less trustworthy one.
            unique.setdefault(tag.name, tag)
        # Popularity order, computed where the GIL is released (string_sort): this runs in a worker while the
        # GUI stays live, and a plain sort of 140k+ tags would hold the GIL for a noticeable pause.
        values = list(unique.values())
        order = argsort_desc_int_then_string([t.count for t in values], [t.name for t in values])
        self.tags: list[Tag] = [values[i] for i in order]
        self._by_key: dict[str, int] = {}
        for rank, tag in enumerate(self.tags):
            self._by_key.setdefault(normalize_tag_name(tag.name), rank)
        self._alias_to_rank: dict[str, int] = {}
        for rank, tag in enumerate(self.tags):
            for alias in tag.aliases:
                key = normalize_tag_name(alias)
                # A real name always beats an alias; between aliases the more popular tag wins.
                if key and key not in self._by_key:
                    self._alias_to_rank.setdefault(key, rank)

    def __len__(self) -> int:
        return len(self.tags)

    def __iter__(self) -> Iterator[Tag]:
        return iter(self.tags)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> Tag | None:
        """The tag called `name` (as typed: spaces or underscores, any case, A1111-escaped), or the tag an alias
        points to; None if unknown."""
        typed = normalize_tag_query(name)
        # A trailing space typed after a name is not part of it (names ending in "_" are still found first).
        for key in (typed, typed.rstrip("_")):
            rank = self._by_key.get(key, self._alias_to_rank.get(key))
            if rank is not None:
                return self.tags[rank]
        return None

    def rank(self, tag: Tag) -> int:
        """Popularity rank of a tag of this vocabulary (0 = most posts)."""
        return self._by_key[normalize_tag_name(tag.name)]

    def alias_target(self, alias: str) -> Tag | None:
        """The tag an alias resolves to (None when `alias` is not a known alias)."""
        typed = normalize_tag_query(alias)
        rank = self._alias_to_rank.get(typed, self._alias_to_rank.get(typed.rstrip("_")))
        return None if rank is None else self.tags[rank]

    def alias_entries(self) -> Iterator[tuple[str, int]]:
        """(alias as written, rank of its tag) for every alias that resolves, in rank order then CSV order."""
        for rank, tag in enumerate(self.tags):
            seen: set[str] = set()
            for alias in tag.aliases:
                key = normalize_tag_name(alias)
                if key not in seen and self._alias_to_rank.get(key) == rank:
                    seen.add(key)
                    yield alias, rank

    @classmethod
    def union(cls, first: Iterable[Tag], *fallbacks: Iterable[Tag]) -> TagVocabulary:
        """Every tag of `first`, then the tags of each fallback that no earlier source has.

        A tag in several sources keeps the first source's category and count (the workspace's own data describes
        the user's captions); when that source lists no aliases for it (a metadata DB has none), it takes the
        aliases of the first later source that does.
        """
        merged: dict[str, Tag] = {}
        for source in (first, *fallbacks):
            for tag in source:
                known = merged.get(tag.name)
                if known is None:
                    merged[tag.name] = tag
                elif tag.aliases and not known.aliases:
                    merged[tag.name] = Tag(known.name, known.category, known.count, tag.aliases)
        return cls(merged.values())

    @classmethod
    def from_csv(cls, path: str | Path, progress: Progress | None = None) -> TagVocabulary:
        """Read a tagcomplete CSV (no header; a `name,category,...` header row is tolerated)."""
        path = Path(path)
        try:
            with path.open("r", encoding="utf-8", newline="") as fh:
                return cls(_parse_csv_rows(csv.reader(fh), str(path), ensure_progress(progress)))
        except FileNotFoundError:
            raise KxlError("tag list not found", path=path) from None
        except UnicodeDecodeError as exc:
            raise KxlError(
                f"tag list is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path
            ) from None

    @classmethod
    def from_csv_text(cls, text: str, source: str = "<csv text>") -> TagVocabulary:
        return cls(_parse_csv_rows(csv.reader(text.splitlines()), source, ensure_progress(None)))

    @classmethod
    def from_db(cls, path: str | Path, progress: Progress | None = None) -> TagVocabulary:
        """Read the `tag` table of a HakuBooru metadata DB, read-only. Tags with popularity 0 are kept (they are
        still valid names); aliases are not in the DB."""
        return cls(read_db_tags(path, progress))


def read_db_tags(path: str | Path, progress: Progress | None = None) -> list[Tag]:
    """The tags of a HakuBooru metadata DB's `tag` table, in table order (see `TagVocabulary.from_db`)."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseError("metadata DB not found", path=path)
    progress = ensure_progress(progress)
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open metadata DB read-only: {exc}", path=path) from None
    try:
        total, batches = tag_table_rows(conn)
        progress.stage("reading tags")
        tags: list[Tag] = []
        for rows in batches:
            for tag_id, name, type_, popularity in rows:
                try:
                    category = TagCategory(type_)
                except ValueError:
                    raise DatabaseError(
                        f"tag id {tag_id} ({name!r}) has type {type_!r}; expected 0..4", path=path
                    ) from None
                if not isinstance(name, str) or not name.strip():
                    continue
                tags.append(Tag(name, category, int(popularity or 0)))
            progress.update(len(tags), total)
            progress.check_cancelled()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot read the tag table: {exc}", path=path) from None
    finally:
        conn.close()
    return tags


def _parse_csv_rows(rows: Iterable[list[str]], source: str, progress: Progress) -> Iterator[Tag]:
    progress.stage("reading tag list")
    for line_no, row in enumerate(rows, start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if (
            line_no == 1
            and row[0].strip().lower() == "name"
            and len(row) >= 3
            and not row[2].strip().isdigit()
        ):
            continue
        if len(row) < 3:
            raise KxlError(
                f"row {line_no}: expected name,category,post_count[,aliases], got {row!r}", path=source
            )
        name = row[0].strip()
        if not name or "\n" in name:
            raise KxlError(f"row {line_no}: empty or multi-line tag name {row[0]!r}", path=source)
        try:
            danbooru_category = int(row[1])
            count = int(row[2])
        except ValueError:
            raise KxlError(
                f"row {line_no} ({name!r}): category and post_count must be integers, got {row[1]!r}, {row[2]!r}",
                path=source,
            ) from None
        category = DANBOORU_TO_CATEGORY.get(danbooru_category)
        if category is None:
            raise KxlError(
                f"row {line_no} ({name!r}): unknown Danbooru category {danbooru_category}; expected 0, 1, 3, 4 or 5",
                path=source,
            )
        aliases = (
            tuple(a.strip() for a in row[3].split(",") if a.strip() and "\n" not in a) if len(row) > 3 else ()
        )
        if line_no % 20000 == 0:
            progress.update(line_no, None)
            progress.check_cancelled()
        yield Tag(name, category, max(count, 0), aliases)
