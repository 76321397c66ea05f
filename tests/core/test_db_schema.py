"""HakuBooru schema DDL, read-only opening of a user's DB, clear errors, table counts, enum numbering."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from trainer_core.danbooru.schema import (
    DANBOORU_CATEGORY_TO_TAG_TYPE,
    HAKUBOORU_SCHEMA_SQL,
    Rating,
    TagType,
    create_schema,
    open_metadata_db,
    table_counts,
)
from trainer_core.errors import DatabaseError

# What peewee creates for HakuBooru's models (specs/dataset.md §1.2), written out independently of schema.py:
# (column, declared type, NOT NULL, primary-key position)
EXPECTED_COLUMNS = {
    "post": [
        ("id", "INTEGER", 1, 1),
        ("created_at", "VARCHAR(255)", 1, 0),
        ("uploader_id", "INTEGER", 1, 0),
        ("source", "VARCHAR(255)", 1, 0),
        ("md5", "VARCHAR(255)", 0, 0),
        ("parent_id", "INTEGER", 0, 0),
        ("has_children", "INTEGER", 1, 0),
        ("is_deleted", "INTEGER", 1, 0),
        ("is_banned", "INTEGER", 1, 0),
        ("pixiv_id", "INTEGER", 0, 0),
        ("has_active_children", "INTEGER", 1, 0),
        ("bit_flags", "INTEGER", 1, 0),
        ("has_large", "INTEGER", 1, 0),
        ("has_visible_children", "INTEGER", 1, 0),
        ("image_width", "INTEGER", 1, 0),
        ("image_height", "INTEGER", 1, 0),
        ("file_size", "INTEGER", 1, 0),
        ("file_ext", "VARCHAR(255)", 1, 0),
        ("rating", "INTEGER", 1, 0),
        ("score", "INTEGER", 1, 0),
        ("up_score", "INTEGER", 1, 0),
        ("down_score", "INTEGER", 1, 0),
        ("fav_count", "INTEGER", 1, 0),
        ("file_url", "VARCHAR(255)", 0, 0),
        ("large_file_url", "VARCHAR(255)", 0, 0),
        ("preview_file_url", "VARCHAR(255)", 0, 0),
        ("updated_at", "VARCHAR(255)", 1, 0),
    ],
    "tag": [
        ("id", "INTEGER", 1, 1),
        ("name", "VARCHAR(255)", 1, 0),
        ("type", "INTEGER", 1, 0),
        ("popularity", "INTEGER", 1, 0),
    ],
    "posttagrelation": [
        ("id", "INTEGER", 1, 1),
        ("post_id", "INTEGER", 1, 0),
        ("tag_id", "INTEGER", 1, 0),
    ],
    "localpost": [
        ("id", "INTEGER", 1, 1),
        ("filepath", "VARCHAR(255)", 0, 0),
        ("latentpath", "VARCHAR(255)", 0, 0),
        ("post_id", "INTEGER", 1, 0),
    ],
}
# table -> {index name: (unique, [columns])}
EXPECTED_INDEXES = {
    "post": {},
    "tag": {"tag_name": (1, ["name"])},
    "posttagrelation": {
        "posttagrelation_post_id": (0, ["post_id"]),
        "posttagrelation_tag_id": (0, ["tag_id"]),
    },
    "localpost": {"localpost_post_id": (0, ["post_id"])},
}


def schema_of(conn: sqlite3.Connection) -> tuple[dict, dict]:
    cols, idx = {}, {}
    for table in EXPECTED_COLUMNS:
        cols[table] = [(r[1], r[2], r[3], r[5]) for r in conn.execute(f'PRAGMA table_info("{table}")')]
        idx[table] = {
            r[1]: (r[2], [c[2] for c in conn.execute(f'PRAGMA index_info("{r[1]}")')])
            for r in conn.execute(f'PRAGMA index_list("{table}")')
        }
    return cols, idx


def make_db(path: Path, statements: list[str] | tuple[str, ...] = HAKUBOORU_SCHEMA_SQL) -> Path:
    conn = sqlite3.connect(path)
    for stmt in statements:
        conn.execute(stmt)
    conn.commit()
    conn.close()
    return path


def test_schema_matches_hakubooru_peewee_layout(tmp_path):
    conn = sqlite3.connect(make_db(tmp_path / "h.db"))
    cols, idx = schema_of(conn)
    assert cols == EXPECTED_COLUMNS
    assert idx == EXPECTED_INDEXES
    fks = {(r[3], r[2], r[4]) for r in conn.execute('PRAGMA foreign_key_list("posttagrelation")')}
    assert fks == {("post_id", "post", "id"), ("tag_id", "tag", "id")}


def test_create_schema_without_indexes_then_indexes(tmp_path):
    conn = sqlite3.connect(tmp_path / "bulk.db")
    create_schema(conn, with_indexes=False)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")] == []
    assert schema_of(conn)[0] == EXPECTED_COLUMNS


def test_enums_use_hakubooru_numbering():
    assert [(t.name, t.value) for t in TagType] == [
        ("GENERAL", 0),
        ("ARTIST", 1),
        ("CHARACTER", 2),
        ("COPYRIGHT", 3),
        ("META", 4),
    ]
    assert [(r.name, r.value) for r in Rating] == [
        ("GENERAL", 0),
        ("SENSITIVE", 1),
        ("QUESTIONABLE", 2),
        ("EXPLICIT", 3),
    ]
    assert {k: int(v) for k, v in DANBOORU_CATEGORY_TO_TAG_TYPE.items()} == {0: 0, 1: 1, 4: 2, 3: 3, 5: 4}


def test_open_is_read_only_and_leaves_the_file_untouched(tmp_path):
    db = make_db(tmp_path / "h.db")
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    conn = open_metadata_db(db)
    assert conn.execute("SELECT COUNT(*) FROM post").fetchone() == (0,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO tag VALUES (1, 'x', 0, 0)")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("CREATE TABLE extra (a)")
    conn.close()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.db"]  # no journal / wal / shm left behind


def test_missing_file_error_names_the_file(tmp_path):
    missing = tmp_path / "nope" / "danbooru2023.db"
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(missing)
    assert str(missing) in str(err.value)
    assert "not found" in str(err.value)
    assert "hint:" in str(err.value)
    assert not missing.parent.exists()  # opening must never create the file


def test_text_file_and_empty_file_and_folder_errors(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("this is not a database\n" * 10)
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(text)
    assert str(text) in str(err.value) and "not a SQLite database" in str(err.value)

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(DatabaseError, match="empty file"):
        open_metadata_db(empty)

    with pytest.raises(DatabaseError, match="is a folder"):
        open_metadata_db(tmp_path)


def test_db_without_posttagrelation_names_file_and_table(tmp_path):
    stmts = [s for s in HAKUBOORU_SCHEMA_SQL if '"posttagrelation"' not in s]
    db = make_db(tmp_path / "partial.db", stmts)
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(db)
    msg = str(err.value)
    assert str(db) in msg
    assert "table 'posttagrelation' is missing" in msg


def test_old_tag_list_layout_gets_a_specific_hint(tmp_path):
    db = make_db(
        tmp_path / "old.db",
        [
            'CREATE TABLE "post" ("id" INTEGER PRIMARY KEY, "created_at" VARCHAR(255), "tag_list" TEXT)',
            'CREATE TABLE "tag" ("id" INTEGER PRIMARY KEY, "name" VARCHAR(255), "type" INTEGER, "popularity" INTEGER)',
        ],
    )
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(db)
    assert "old HakuBooru DB" in str(err.value)


def test_missing_column_is_named(tmp_path):
    stmts = [
        s.replace(', "popularity" INTEGER NOT NULL', "")
        if s.startswith('CREATE TABLE IF NOT EXISTS "tag"')
        else s
        for s in HAKUBOORU_SCHEMA_SQL
    ]
    db = make_db(tmp_path / "nopop.db", stmts)
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(db)
    assert str(db) in str(err.value)
    assert "table 'tag' lacks column(s) popularity" in str(err.value)


def test_table_counts_are_exact(tmp_path):
    db = make_db(tmp_path / "h.db")
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO post (id, created_at, uploader_id, source, has_children, is_deleted, is_banned, "
        "has_active_children, bit_flags, has_large, has_visible_children, image_width, image_height, file_size, "
        "file_ext, rating, score, up_score, down_score, fav_count, updated_at) "
        "VALUES (?, '', 1, '', 0, 0, 0, 0, 0, 0, 0, 10, 10, 1, 'jpg', 0, 0, 0, 0, 0, '')",
        [(5,), (9,)],
    )
    conn.executemany("INSERT INTO tag VALUES (?, ?, 0, 0)", [(1, "a"), (2, "b"), (3, "c")])
    conn.executemany(
        "INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)", [(5, 1), (5, 2), (9, 1), (9, 3)]
    )
    conn.commit()
    conn.close()
    assert table_counts(db) == {"post": 2, "tag": 3, "posttagrelation": 4, "localpost": 0}

    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE localpost")
    conn.commit()
    conn.close()
    assert table_counts(db) == {"post": 2, "tag": 3, "posttagrelation": 4}


def test_corrupt_sqlite_file_is_a_clear_error(tmp_path):
    good = make_db(tmp_path / "good.db").read_bytes()
    bad = tmp_path / "bad.db"
    bad.write_bytes(good[:100] + b"\xa5" * (len(good) - 100))  # valid header, garbage pages
    with pytest.raises(DatabaseError) as err:
        open_metadata_db(bad)
    assert str(bad) in str(err.value) and "unreadable SQLite file" in str(err.value)
