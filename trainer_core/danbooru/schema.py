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


def _check_file(path: Path) -> bool:
    """Raise DatabaseError unless `path` looks like a SQLite file; returns whether it is in WAL mode."""
    if not path.exists():
        raise DatabaseError("metadata DB not found", path=path, hint=_DOWNLOAD_HINT)
    if path.is_dir():
        raise DatabaseError(
            "is a folder, not a metadata DB file", path=path, hint="point at the danbooru2023.db file itself"
        )
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError as exc:
        raise DatabaseError(f"cannot read the metadata DB ({exc.strerror})", path=path) from exc
    head = header[: len(_SQLITE_MAGIC)]
    if head != _SQLITE_MAGIC:
        what = "an empty file" if not head else "not a SQLite database"
        raise DatabaseError(
            f"{what} (expected the SQLite header 'SQLite format 3')",
            path=path,
            hint="the download may be incomplete or this is a Parquet/DuckDB export; " + _DOWNLOAD_HINT,
        )
    # file format write/read versions (header bytes 18, 19): 2 = WAL, 1 = the classic rollback journal
    return header[18:20] == b"\x02\x02"


def _connect_read_only(path: Path, check_same_thread: bool, wal: bool = False) -> sqlite3.Connection:
    # mode=ro: a user's 30 GB DB must never be modified (no journal, no schema upgrade, no accidental write).
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise _open_error(exc, path, wal, "cannot open the metadata DB read-only") from exc


_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_CANTOPEN = 5, 6, 8, 14


def _open_error(exc: sqlite3.Error, path: str | Path, wal: bool, what: str) -> DatabaseError:
    """The DatabaseError for SQLite failing to read a DB at all: locked, WAL on a read-only folder, or damaged."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; the message is the fallback
    primary = None if code is None else code & 0xFF
    text = str(exc).lower()
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "database is locked" in text:
        return DatabaseError(
            f"the DB is locked by another program ({exc})",
            path=path,
            hint="close the program that is writing to it (a DB browser, an import script) and try again",
        )
    if wal and (
        primary in (_SQLITE_CANTOPEN, _SQLITE_READONLY) or "unable to open" in text or "readonly" in text
    ):
        # SQLite reads a WAL-mode DB only through its -wal and -shm files next to it, which it must be able to
        # create; a read-only mount or folder (or a DB shared read-only) does not allow that.
        return DatabaseError(
            f"the DB is in WAL mode and its folder is read-only, so SQLite cannot open it ({exc})",
            path=path,
            hint="copy it to a writable folder, or switch it back to the normal journal once where it is writable: "
            f"sqlite3 {Path(path).name} 'PRAGMA journal_mode=DELETE'",
        )
    if primary == _SQLITE_CANTOPEN or "unable to open" in text:
        return DatabaseError(
            f"{what} ({exc})", path=path, hint="check that you may read the file and its folder"
        )
    return DatabaseError(
        f"unreadable SQLite file ({exc})",
        path=path,
        hint="the file may be truncated or corrupt; download it again",
    )


def validate_schema(conn: sqlite3.Connection, path: str | Path, wal: bool = False) -> None:
    """Raise DatabaseError naming the first missing table or the missing columns of a table."""
    try:
        _validate_schema(conn, path)
    except sqlite3.DatabaseError as exc:  # a corrupt, truncated or locked file fails here, not at connect()
        raise _open_error(exc, path, wal, "cannot open the metadata DB read-only") from exc


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
    wal = _check_file(path)
    conn = _connect_read_only(path, check_same_thread, wal)
    try:
        validate_schema(conn, path, wal)
        try:
            check_keys(conn, path)
        except sqlite3.DatabaseError as exc:
            raise _open_error(exc, path, wal, "cannot read the metadata DB") from exc
    except BaseException:
        conn.close()
        raise
    return conn


_BAD_ROW_HINT = "fix or delete that row (e.g. in the sqlite3 shell), or download the DB again"


def sql_value(value: object) -> str:
    """A DB value as an error message shows it: NULL, a number, or a quoted text."""
    return "NULL" if value is None else repr(value)


def _id_is_rowid(conn: sqlite3.Connection, table: str) -> bool:
    """Whether `table.id` is SQLite's rowid (`INTEGER PRIMARY KEY` of a rowid table): unique integers by design."""
    cols = conn.execute(f'PRAGMA table_info("{table}")').fetchall()  # cid, name, type, notnull, default, pk
    pk = [c for c in cols if c[5]]
    if len(pk) != 1 or pk[0][1] != "id" or str(pk[0][2]).upper() != "INTEGER":
        return False
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return "WITHOUT ROWID" not in str(sql[0] if sql else "").upper()


_keys_checked: set[tuple] = set()  # DB file states whose keys passed check_keys (once per process)


def check_keys(conn: sqlite3.Connection, path: str | Path) -> None:
    """Raise DatabaseError unless the ids every reader relies on are sound: `post.id` and `tag.id` unique integers,
    `posttagrelation.post_id` / `tag_id` integers.

    HakuBooru's schema makes both ids the rowid, so for its DB this costs two PRAGMAs and four index seeks; a DB
    converted by other tools (ids as plain columns) gets one scan per table. Text sorts after every number in
    SQLite, so the largest relation value is text whenever any is.
    """
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _keys_checked:
        return
    for table in ("post", "tag"):
        if _id_is_rowid(conn, table):
            continue
        bad = conn.execute(f"SELECT id FROM \"{table}\" WHERE typeof(id) != 'integer' LIMIT 1").fetchone()
        if bad is not None:
            raise DatabaseError(
                f"table {table}, column id: the value {sql_value(bad[0])} is not an integer id",
                path=path,
                hint=_BAD_ROW_HINT,
            )
        dup = conn.execute(
            f'SELECT id, count(*) FROM "{table}" GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 1'
        ).fetchone()
        if dup is not None:
            raise DatabaseError(
                f"table {table}: id {dup[0]} is used by {dup[1]} rows; each {table} must have its own id",
                path=path,
                hint="remove the duplicate rows, or download the DB again",
            )
    tops = conn.execute(
        'SELECT (SELECT max(post_id) FROM "posttagrelation"), (SELECT max(tag_id) FROM "posttagrelation")'
    ).fetchone()
    if any(v is not None and not isinstance(v, int) for v in tops):
        row = conn.execute(
            'SELECT id, post_id, tag_id FROM "posttagrelation" '
            "WHERE typeof(post_id) NOT IN ('integer', 'null') OR typeof(tag_id) NOT IN ('integer', 'null') "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        if row is not None:
            rid, post_id, tag_id = row
            post_ok = post_id is None or isinstance(post_id, int)
            column, value = ("tag_id", tag_id) if post_ok else ("post_id", post_id)
            raise bad_value("posttagrelation", column, rid, value, path)
    _keys_checked.add(key)


def bad_value(
    table: str, column: str, row_id: object, value: object, path: str | Path | None
) -> DatabaseError:
    """'table T, column C, row id N: V is not an integer', the error for a value the readers cannot use."""
    return DatabaseError(
        f"table {table}, column {column}, row id {row_id}: {sql_value(value)} is not an integer",
        path=path,
        hint=_BAD_ROW_HINT,
    )


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
