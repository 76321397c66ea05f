"""HakuBooru's SQLite schema for danbooru2023.db, and safe read-only access to a user's copy of it.

The DDL below is what peewee emits for HakuBooru's models (specs/dataset.md §1.2): CharField -> VARCHAR(255),
IntegerField / BooleanField / the enum fields -> INTEGER, the implicit `id` of PostTagRelation -> INTEGER PRIMARY KEY,
`<field>_id` foreign-key columns with an index named `<table>_<column>`. Producing the same DDL lets a demo DB be
opened by HakuBooru itself and lets our readers be tested against the real layout.

The enum numbering is HakuBooru's own, not Danbooru's (see DANBOORU_CATEGORY_TO_TAG_TYPE).
"""

from __future__ import annotations

import sqlite3
from enum import IntEnum
from pathlib import Path

from ..errors import DatabaseError


class TagType(IntEnum):
    """`tag.type` in HakuBooru's DB."""

    GENERAL = 0
    ARTIST = 1
    CHARACTER = 2
    COPYRIGHT = 3
    META = 4


class Rating(IntEnum):
    """`post.rating` in HakuBooru's DB."""

    GENERAL = 0
    SENSITIVE = 1
    QUESTIONABLE = 2
    EXPLICIT = 3


# Danbooru API / tagcomplete CSV category id -> HakuBooru tag type (spec §6). Danbooru's 2 is unused.
DANBOORU_CATEGORY_TO_TAG_TYPE: dict[int, TagType] = {
    0: TagType.GENERAL,
    1: TagType.ARTIST,
    4: TagType.CHARACTER,
    3: TagType.COPYRIGHT,
    5: TagType.META,
}

# Column order is the model's field order; peewee creates columns in that order.
POST_COLUMNS: tuple[tuple[str, str, bool], ...] = (
    # (name, SQL type, NOT NULL)
    ("id", "INTEGER", True),
    ("created_at", "VARCHAR(255)", True),
    ("uploader_id", "INTEGER", True),
    ("source", "VARCHAR(255)", True),
    ("md5", "VARCHAR(255)", False),
    ("parent_id", "INTEGER", False),
    ("has_children", "INTEGER", True),
    ("is_deleted", "INTEGER", True),
    ("is_banned", "INTEGER", True),
    ("pixiv_id", "INTEGER", False),
    ("has_active_children", "INTEGER", True),
    ("bit_flags", "INTEGER", True),
    ("has_large", "INTEGER", True),
    ("has_visible_children", "INTEGER", True),
    ("image_width", "INTEGER", True),
    ("image_height", "INTEGER", True),
    ("file_size", "INTEGER", True),
    ("file_ext", "VARCHAR(255)", True),
    ("rating", "INTEGER", True),
    ("score", "INTEGER", True),
    ("up_score", "INTEGER", True),
    ("down_score", "INTEGER", True),
    ("fav_count", "INTEGER", True),
    ("file_url", "VARCHAR(255)", False),
    ("large_file_url", "VARCHAR(255)", False),
    ("preview_file_url", "VARCHAR(255)", False),
    ("updated_at", "VARCHAR(255)", True),
)


def _post_ddl() -> str:
    cols = []
    for name, sql_type, not_null in POST_COLUMNS:
        col = f'"{name}" {sql_type}'
        if not_null:
            col += " NOT NULL"
        if name == "id":
            col += " PRIMARY KEY"
        cols.append(col)
    return f'CREATE TABLE IF NOT EXISTS "post" ({", ".join(cols)})'


HAKUBOORU_SCHEMA_SQL: tuple[str, ...] = (
    _post_ddl(),
    'CREATE TABLE IF NOT EXISTS "tag" ("id" INTEGER NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
    '"type" INTEGER NOT NULL, "popularity" INTEGER NOT NULL)',
    'CREATE UNIQUE INDEX IF NOT EXISTS "tag_name" ON "tag" ("name")',
    'CREATE TABLE IF NOT EXISTS "posttagrelation" ("id" INTEGER NOT NULL PRIMARY KEY, '
    '"post_id" INTEGER NOT NULL, "tag_id" INTEGER NOT NULL, '
    'FOREIGN KEY ("post_id") REFERENCES "post" ("id"), FOREIGN KEY ("tag_id") REFERENCES "tag" ("id"))',
    'CREATE INDEX IF NOT EXISTS "posttagrelation_post_id" ON "posttagrelation" ("post_id")',
    'CREATE INDEX IF NOT EXISTS "posttagrelation_tag_id" ON "posttagrelation" ("tag_id")',
    'CREATE TABLE IF NOT EXISTS "localpost" ("id" INTEGER NOT NULL PRIMARY KEY, "filepath" VARCHAR(255), '
    '"latentpath" VARCHAR(255), "post_id" INTEGER NOT NULL, FOREIGN KEY ("post_id") REFERENCES "post" ("id"))',
    'CREATE INDEX IF NOT EXISTS "localpost_post_id" ON "localpost" ("post_id")',
)

TABLES = ("post", "tag", "posttagrelation", "localpost")

# What the engine reads. `updated_at`, `md5` etc. are optional: older copies of the DB lack some of them.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "post": (
        "id",
        "created_at",
        "rating",
        "score",
        "fav_count",
        "is_deleted",
        "is_banned",
        "image_width",
        "image_height",
        "file_ext",
        "file_url",
        "parent_id",
    ),
    "tag": ("id", "name", "type", "popularity"),
    "posttagrelation": ("id", "post_id", "tag_id"),
}

_DOWNLOAD_HINT = (
    "use danbooru2023.db from the HF dataset KBlueLeaf/danbooru2023-metadata-database (HakuBooru schema), "
    "or create a demo workspace with `kxl demo`"
)
_SQLITE_MAGIC = b"SQLite format 3\x00"


def create_schema(conn: sqlite3.Connection, *, with_indexes: bool = True) -> None:
    """Create HakuBooru's tables (and, unless told otherwise, its indexes) on a writable connection.

    Bulk loaders pass with_indexes=False and call `create_indexes` after inserting: building an index once over
    sorted data is much faster than maintaining it row by row.
    """
    for stmt in HAKUBOORU_SCHEMA_SQL:
        if with_indexes or not stmt.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
            conn.execute(stmt)


def create_indexes(conn: sqlite3.Connection) -> None:
    for stmt in HAKUBOORU_SCHEMA_SQL:
        if stmt.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")):
            conn.execute(stmt)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DatabaseError("metadata DB not found", path=path, hint=_DOWNLOAD_HINT)
    if path.is_dir():
        raise DatabaseError(
            "is a folder, not a metadata DB file", path=path, hint="point at the danbooru2023.db file itself"
        )
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"cannot read the metadata DB ({exc.strerror})", path=path) from exc
    if head != _SQLITE_MAGIC:
        what = "an empty file" if not head else "not a SQLite database"
        raise DatabaseError(
            f"{what} (expected the SQLite header 'SQLite format 3')",
            path=path,
            hint="the download may be incomplete or this is a Parquet/DuckDB export; " + _DOWNLOAD_HINT,
        )


def _connect_read_only(path: Path, check_same_thread: bool) -> sqlite3.Connection:
    # mode=ro: a user's 30 GB DB must never be modified (no journal, no schema upgrade, no accidental write).
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open the metadata DB read-only ({exc})", path=path) from exc


def validate_schema(conn: sqlite3.Connection, path: str | Path) -> None:
    """Raise DatabaseError naming the first missing table or the missing columns of a table."""
    try:
        _validate_schema(conn, path)
    except sqlite3.DatabaseError as exc:  # a corrupt or truncated file fails here, not at connect()
        raise DatabaseError(
            f"unreadable SQLite file ({exc})",
            path=path,
            hint="the file may be truncated or corrupt; download it again",
        ) from exc


def _validate_schema(conn: sqlite3.Connection, path: str | Path) -> None:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "posttagrelation" not in tables and "post" in tables:
        post_cols = {row[1] for row in conn.execute('PRAGMA table_info("post")')}
        if "tag_list" in post_cols:
            raise DatabaseError(
                "this is an old HakuBooru DB (tags stored in post.tag_list, before 2024-03-20); "
                "table 'posttagrelation' is missing",
                path=path,
                hint=_DOWNLOAD_HINT,
            )
    for table, needed in REQUIRED_COLUMNS.items():
        if table not in tables:
            raise DatabaseError(
                f"table '{table}' is missing; not a HakuBooru metadata DB", path=path, hint=_DOWNLOAD_HINT
            )
        present = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        missing = [c for c in needed if c not in present]
        if missing:
            raise DatabaseError(
                f"table '{table}' lacks column(s) {', '.join(missing)}; not HakuBooru's schema",
                path=path,
                hint=_DOWNLOAD_HINT,
            )


def open_metadata_db(path: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open a HakuBooru-schema DB read-only and check it has the tables/columns the engine reads.

    Raises DatabaseError (never a raw sqlite3 error) for a missing file, a folder, a non-SQLite file, or a
    missing table/column. Pass check_same_thread=False to hand the connection to a worker thread.
    """
    path = Path(path)
    _check_file(path)
    conn = _connect_read_only(path, check_same_thread)
    try:
        validate_schema(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def table_counts(path: str | Path) -> dict[str, int]:
    """Exact row count of each HakuBooru table present in the DB (localpost only if it exists).

    COUNT(*) without WHERE is answered from the smallest b-tree of the table (an index where one exists),
    which is the fastest exact count SQLite offers; see benchmarks/bench_demo_db.py for timings.
    """
    conn = open_metadata_db(path)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        counts = {}
        for table in TABLES:
            if table in tables:
                counts[table] = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
        return counts
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot count rows ({exc})", path=path, hint="the file may be corrupt") from exc
    finally:
        conn.close()
