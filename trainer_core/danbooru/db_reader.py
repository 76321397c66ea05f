"""Bulk reads from HakuBooru's metadata DB: post columns and per-post tag lists for many posts at once.

HakuBooru asks SQLite for one post's tags at a time (specs/dataset.md §1.2), which costs a query per post. Here the
tags of a whole chunk of posts come back in one query, as one `group_concat` string that numpy parses: SQLite does
the per-row work in C and Python touches each chunk once, not each relation row.

Tag order inside a post is `posttagrelation` row order (`ORDER BY r.post_id, r.id`), which is what HakuBooru
produces in practice. Two ways to get it, both exact:
- the *clustered* path: when a chunk's relation rows sit in one contiguous rowid range (the published DB and the
  demo DB insert relations post by post), that range is read straight from the table. It is used only after
  checking that the range holds exactly the rows the post_id index counts for the chunk, all in post order;
- the *index* path: `post_id IN (...)` through the post_id index, ordered by (post_id, id). Used for sparse
  selections and whenever the clustered check fails.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..errors import DatabaseError, KxlError
from .dates import years_of
from .schema import bad_value, open_metadata_db

CHUNK_POSTS = 20_000  # posts per bulk query: big enough to amortise the query, small enough to bound memory


@dataclass
class PostColumns:
    """What a caption needs of each post, for a sorted list of ids (numpy arrays aligned with `ids`)."""

    ids: np.ndarray
    rating: np.ndarray  # -1 where NULL
    fav_count: np.ndarray  # 0 where NULL
    year: np.ndarray  # upload year from created_at (`dates.year_of`), 0 where it does not parse

    def __len__(self) -> int:
        return int(self.ids.size)

    @classmethod
    def empty(cls) -> PostColumns:
        return cls(*(np.zeros(0, np.int64) for _ in range(4)))


@dataclass
class TagChunk:
    """Tag ids of a run of posts: post i owns `tag_ids[offsets[i]:offsets[i + 1]]`, in relation-row order."""

    post_ids: np.ndarray
    counts: np.ndarray
    tag_ids: np.ndarray


def _parse_ints(text: str | None) -> np.ndarray:
    if not text:
        return np.zeros(0, np.int64)
    return np.fromstring(text, dtype=np.int64, sep=",")


def _parse_exact(text: str | None, n: int) -> np.ndarray | None:
    """`_parse_ints` when the text holds exactly `n` integers; None when a value is not an integer (text, a real,
    NULL where it is not replaced): numpy stops or fails at the first such value."""
    try:
        values = _parse_ints(text)
    except ValueError:
        return None
    return values if values.size == n else None


def _db_path(conn: sqlite3.Connection) -> str | None:
    """The file behind `conn`, for error messages."""
    try:
        row = conn.execute("PRAGMA database_list").fetchone()
    except sqlite3.Error:
        return None
    return (row[2] or None) if row else None


def _raise_bad_value(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    where: str,
    params: Sequence,
    allow_null: bool,
) -> NoReturn:
    """Raise the DatabaseError naming the first row (by id) of `table` matching `where` whose `columns` hold a
    value that is not an integer (NULL counts unless `allow_null`). Without one, the table changed mid-read."""
    ok = "('integer', 'null')" if allow_null else "('integer')"
    checks = " OR ".join(f"typeof({c}) NOT IN {ok}" for c in columns)
    row = conn.execute(
        f'SELECT id, {", ".join(columns)} FROM "{table}" WHERE ({where}) AND ({checks}) ORDER BY id LIMIT 1',
        tuple(params),
    ).fetchone()
    if row is not None:
        for column, value in zip(columns, row[1:], strict=True):
            if not isinstance(value, int) and not (allow_null and value is None):
                raise bad_value(table, column, row[0], value, _db_path(conn))
    raise DatabaseError(f"table {table} changed while it was being read; run again", path=_db_path(conn))


def _ids_json(ids: np.ndarray) -> str:
    return json.dumps(ids.tolist())


_SEP = "\x1e"  # ASCII record separator: never part of a date or file extension


def fetch_post_columns(conn: sqlite3.Connection, ids: np.ndarray) -> PostColumns:
    """Post columns for `ids` (sorted, unique). Ids missing from the DB raise DatabaseError.

    One row of group_concat strings per chunk (parsed by numpy) instead of one Python tuple per post.
    """
    return _post_columns(conn, ids)[0]


def _post_columns(
    conn: sqlite3.Connection, ids: np.ndarray, extra: Sequence[str] = (), whole_span: bool = False
) -> tuple[PostColumns, int | None]:
    """(columns, number of posts in [ids[0], ids[-1]] when the chunk was read as a range, else None).

    `extra`: more aggregate expressions over the same rows, in the same scan (the DB column cache's flags);
    their values are appended to the returned tuple. `whole_span`: `ids` are all the posts in their span, so
    read it as an id range however sparse the ids are.
    """
    if ids.size == 0:
        return PostColumns.empty(), 0
    lo, hi = int(ids[0]), int(ids[-1])
    # a dense chunk is cheapest as an id range; a sparse one as an IN list (index seeks)
    ranged = whole_span or ids.size * 20 >= hi - lo
    if ranged:
        where, params = "id >= ? AND id <= ?", (lo, hi)
    else:
        where, params = "id IN (SELECT value FROM json_each(?))", (_ids_json(ids),)
    row = conn.execute(
        "SELECT group_concat(id), group_concat(ifnull(rating, -1)), group_concat(ifnull(fav_count, 0)), "
        f"group_concat(ifnull(created_at, ''), '{_SEP}') "
        + "".join(", " + e for e in extra)
        + f' FROM (SELECT * FROM "post" WHERE {where} ORDER BY id)',
        params,
    ).fetchone()
    n_rows = row[0].count(",") + 1 if row[0] else 0
    all_ids = _parse_exact(row[0], n_rows)
    nums = [_parse_exact(t, n_rows) for t in row[1:3]]
    if all_ids is None or nums[0] is None or nums[1] is None:
        # a value that is not an integer: name its row rather than fail in numpy (NULLs are read as -1 / 0)
        _raise_bad_value(conn, "post", ("id", "rating", "fav_count"), where, params, allow_null=True)
    every = all_ids.size == ids.size  # every post of the range is wanted: no masking needed
    keep = None if every else np.isin(all_ids, ids, assume_unique=True)
    if (all_ids.size if keep is None else int(keep.sum())) != ids.size or (
        every and not np.array_equal(all_ids, ids)
    ):
        have = set(all_ids.tolist() if keep is None else all_ids[keep].tolist())
        lost = [int(i) for i in ids if int(i) not in have][:5]
        raise DatabaseError(f"post id(s) {lost} are not in the post table")
    if keep is not None:
        nums = [v[keep] for v in nums]
    created = row[3].split(_SEP) if row[3] is not None else []
    if len(created) != all_ids.size:
        raise DatabaseError("a created_at value holds a control character (\\x1e)")
    if keep is not None:
        created = [created[i] for i in np.flatnonzero(keep).tolist()]
    cols = PostColumns(
        ids=ids.astype(np.int64, copy=False), rating=nums[0], fav_count=nums[1], year=years_of(created)
    )
    return (cols, (int(all_ids.size) if ranged else None), *row[4:])


def fetch_chunk(conn: sqlite3.Connection, ids: np.ndarray) -> tuple[PostColumns, TagChunk]:
    """Post columns and tags of `ids` (sorted, unique) in one go: the post read tells how dense the chunk is,
    which picks the cheaper tag read without an extra query."""
    posts, in_span = _post_columns(conn, ids)[:2]
    if ids.size and in_span and ids.size / in_span >= 0.5:
        chunk = _clustered_path(conn, ids)
        if chunk is not None:
            return posts, chunk
    return posts, fetch_tag_chunk(conn, ids, allow_clustered=False)


def _index_path(conn: sqlite3.Connection, ids: np.ndarray) -> TagChunk:
    payload = _ids_json(ids)
    text = conn.execute(
        'SELECT group_concat(tag_id) FROM (SELECT r.tag_id FROM "posttagrelation" r '
        "WHERE r.post_id IN (SELECT value FROM json_each(?)) ORDER BY r.post_id, r.id)",
        (payload,),
    ).fetchone()[0]
    counted = conn.execute(
        'SELECT r.post_id, count(*) FROM "posttagrelation" r '
        "WHERE r.post_id IN (SELECT value FROM json_each(?)) GROUP BY r.post_id ORDER BY r.post_id",
        (payload,),
    ).fetchall()
    counts = np.zeros(ids.size, np.int64)
    if counted:
        pid, cnt = (np.asarray(c, np.int64) for c in zip(*counted, strict=True))
        counts[np.searchsorted(ids, pid)] = cnt
    tag_ids = _parse_exact(text, int(counts.sum()))
    if tag_ids is None:
        # a tag_id that is not an integer (group_concat also skips NULLs), or a concurrent write
        where = "post_id IN (SELECT value FROM json_each(?))"
        _raise_bad_value(conn, "posttagrelation", ("tag_id",), where, (payload,), allow_null=False)
    return TagChunk(ids, counts, tag_ids)


_TAG_BITS = (
    21  # the clustered read packs (post offset << 21) | tag_id into one number: tag ids below 2,097,152
)


def _column_bounds(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
    """(min tag_id, max tag_id, min post_id, max post_id) of posttagrelation: four seeks on its two indexes."""
    row = conn.execute(
        'SELECT (SELECT min(tag_id) FROM "posttagrelation"), (SELECT max(tag_id) FROM "posttagrelation"), '
        '(SELECT min(post_id) FROM "posttagrelation"), (SELECT max(post_id) FROM "posttagrelation")'
    ).fetchone()
    if row[0] is None:
        return (0, 0, 0, 0)
    if not all(isinstance(v, int) for v in row):  # text sorts above every number: the max is text if any is
        _raise_bad_value(conn, "posttagrelation", ("post_id", "tag_id"), "1", (), allow_null=True)
    return tuple(row)  # type: ignore[return-value]


def _clustered_path(conn: sqlite3.Connection, ids: np.ndarray) -> TagChunk | None:
    """Read the relation rows of posts [ids[0], ids[-1]] as one rowid range, or None if they are not contiguous.

    Proof that the range is right, not a heuristic: the post_id index says n rows belong to posts in [lo, hi];
    a table range [start, start + n) holding n rows, all of posts in [lo, hi], is then exactly those rows
    (`start` = the first row of post lo; if it is not the range's start, the checks fail and the caller
    falls back to the index path). Rows in rowid order with non-decreasing post_id are in
    (post_id, id) order, i.e. HakuBooru's order.
    """
    lo, hi = int(ids[0]), int(ids[-1])
    n_rows = conn.execute(
        'SELECT count(*) FROM "posttagrelation" WHERE post_id >= ? AND post_id <= ?', (lo, hi)
    ).fetchone()[0]
    if n_rows == 0:
        return TagChunk(ids, np.zeros(ids.size, np.int64), np.zeros(0, np.int64))
    # the first row of post `lo`: the start of the range if the rows are clustered (checked below either way)
    start = conn.execute(
        'SELECT id FROM "posttagrelation" WHERE post_id >= ? ORDER BY post_id, id LIMIT 1', (lo,)
    ).fetchone()[0]
    tag_lo, tag_hi, post_lo, post_hi = _column_bounds(conn)
    # Packing is exact when every tag id fits its 21 bits and no post offset in the whole table can spill past
    # bit 62: then a row of a post outside [lo, hi] shows up as an offset outside [0, hi - lo], never aliased.
    packed = tag_lo >= 0 and tag_hi < (1 << _TAG_BITS) and max(hi, post_hi) - min(lo, post_lo) < (1 << 40)
    if packed:
        # one number per row (post offset and tag id): less text for SQLite to write and numpy to parse
        text = conn.execute(
            f"SELECT group_concat(((post_id - ?) << {_TAG_BITS}) | tag_id) "
            'FROM "posttagrelation" WHERE id >= ? AND id < ?',
            (lo, start, start + n_rows),
        ).fetchone()[0]
        values = _parse_ints(text)
        offsets, tags = values >> _TAG_BITS, values & ((1 << _TAG_BITS) - 1)
    else:
        ptext, ttext = conn.execute(
            'SELECT group_concat(post_id), group_concat(tag_id) FROM "posttagrelation" WHERE id >= ? AND id < ?',
            (start, start + n_rows),
        ).fetchone()
        offsets, tags = _parse_ints(ptext) - lo, _parse_ints(ttext)
    if offsets.size and (offsets.min() < 0 or offsets.max() > hi - lo):
        return None
    if offsets.size != n_rows or tags.size != n_rows:
        return None
    if offsets.size > 1 and np.any(offsets[1:] < offsets[:-1]):
        return None
    want = ids - lo
    if offsets.size and hi - lo < 8 * (ids.size + offsets.size):
        per_post = np.bincount(offsets, minlength=hi - lo + 1)
        counts = per_post[want]
        if int(counts.sum()) != offsets.size:  # rows of posts that are not selected: drop them
            chosen = np.zeros(hi - lo + 1, bool)
            chosen[want] = True
            tags = tags[chosen[offsets]]
    else:  # a very sparse id span: no table as long as the span
        uniq, cnt = np.unique(offsets, return_counts=True)
        counts = np.zeros(ids.size, np.int64)
        pos = np.searchsorted(want, uniq)
        hit = (pos < want.size) & (want[np.minimum(pos, want.size - 1)] == uniq)
        counts[pos[hit]] = cnt[hit]
        tags = tags[np.isin(offsets, want)]
    return TagChunk(ids, counts.astype(np.int64), tags)


def fetch_tag_chunk(conn: sqlite3.Connection, ids: np.ndarray, *, allow_clustered: bool = True) -> TagChunk:
    """Tag ids of each post in `ids` (sorted, unique), in posttagrelation row order. Exact on any DB."""
    if ids.size == 0:
        return TagChunk(ids, np.zeros(0, np.int64), np.zeros(0, np.int64))
    if allow_clustered:
        span = conn.execute(
            'SELECT count(*) FROM "post" WHERE id >= ? AND id <= ?', (int(ids[0]), int(ids[-1]))
        ).fetchone()[0]
        # Reading a whole range only pays when most of its posts are wanted.
        if span and ids.size / span >= 0.5:
            chunk = _clustered_path(conn, ids)
            if chunk is not None:
                return chunk
    return _index_path(conn, ids)


def post_tags_one_by_one(conn: sqlite3.Connection, post_id: int) -> list[tuple[int, str, int, int]]:
    """HakuBooru's own per-post query (`Post.tag_list`): tag rows of one post. The benchmark's baseline."""
    return conn.execute(
        'SELECT tag.* FROM "tag" JOIN "posttagrelation" r ON r.tag_id = tag.id '
        'JOIN "post" ON r.post_id = post.id WHERE r.post_id = ?',
        (post_id,),
    ).fetchall()


def post_tag_rows(conn: sqlite3.Connection, post_id: int) -> list[tuple[str, int]]:
    """`(name, type)` of one post's tags in relation order (HakuBooru's caption order before sorting): for
    previews and prompts of a handful of posts; bulk jobs use `fetch_chunk`. Tags with a NULL name are left
    out, as the bulk path leaves them out of captions."""
    rows = conn.execute(
        'SELECT t.name, t.type FROM "posttagrelation" r JOIN "tag" t ON t.id = r.tag_id '
        "WHERE r.post_id = ? AND t.name IS NOT NULL ORDER BY r.id",
        (post_id,),
    ).fetchall()
    return [(str(name), int(ttype)) for name, ttype in rows]


def post_header(conn: sqlite3.Connection, post_id: int) -> tuple[int, int, str] | None:
    """`(rating, fav_count, created_at)` of one post, None when the DB has no such post."""
    return conn.execute(
        'SELECT rating, fav_count, created_at FROM "post" WHERE id = ?', (post_id,)
    ).fetchone()


def post_file_rows(conn: sqlite3.Connection) -> list[tuple[int, Any, Any, Any, bool]]:
    """`(id, image_width, image_height, file_ext, has_no_file)` of every post, by id, values as stored (callers
    judge them): what an image shard holds; a post without a file URL has no image."""
    rows = conn.execute(
        'SELECT id, image_width, image_height, file_ext, file_url IS NULL FROM "post" ORDER BY id'
    ).fetchall()
    return [
        (int(pid), int(w or 0), int(h or 0), str(ext or ""), bool(no_file))
        for pid, w, h, ext, no_file in rows
    ]


def tag_table_rows(conn: sqlite3.Connection, batch: int = 20_000) -> tuple[int, Iterator[list[tuple]]]:
    """(row count, batches of `(id, name, type, popularity)`) of the whole `tag` table, in table order: what a tag
    vocabulary is built from. Raises DatabaseError when the table or one of those columns is missing."""
    columns = {row[1] for row in conn.execute('PRAGMA table_info("tag")')}
    missing = {"name", "type", "popularity"} - columns
    if missing:
        raise DatabaseError(
            f"table 'tag' lacks column(s) {', '.join(sorted(missing))}"
            if columns
            else "no 'tag' table: this is not a HakuBooru danbooru2023 DB",
            path=_db_path(conn),
        )
    (total,) = conn.execute('SELECT COUNT(*) FROM "tag"').fetchone()
    cursor = conn.execute('SELECT id, name, type, popularity FROM "tag"')

    def batches() -> Iterator[list[tuple]]:
        while rows := cursor.fetchmany(batch):
            yield rows

    return int(total), batches()


def post_ratings(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, int]:
    """`post_id -> rating` for the given ids (unknown ids are absent)."""
    rows = conn.execute(
        'SELECT id, rating FROM "post" WHERE id IN (SELECT value FROM json_each(?))',
        (json.dumps([int(i) for i in ids]),),
    ).fetchall()
    return {int(pid): int(rating) for pid, rating in rows}


def fetch_tags(conn: sqlite3.Connection, tag_ids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """`tag_id -> (name, type)` for the given ids (unknown ids are simply absent).

    A NULL name comes back as "" (captions drop it like an empty name); a type that is not an integer raises
    DatabaseError naming the tag row.
    """
    wanted = sorted({int(t) for t in tag_ids})
    out: dict[int, tuple[str, int]] = {}
    for i in range(0, len(wanted), 50_000):
        part = json.dumps(wanted[i : i + 50_000])
        for tid, name, ttype in conn.execute(
            'SELECT id, name, type FROM "tag" WHERE id IN (SELECT value FROM json_each(?))', (part,)
        ):
            if not isinstance(ttype, int):
                raise bad_value("tag", "type", tid, ttype, _db_path(conn))
            if name is None:
                name = ""
            elif isinstance(name, bytes):
                try:
                    name = name.decode("utf-8")
                except UnicodeDecodeError:
                    raise DatabaseError(
                        f"table tag, column name, row id {tid}: a BLOB that is not UTF-8 text",
                        path=_db_path(conn),
                    ) from None
            elif not isinstance(name, str):
                name = str(name)
            out[tid] = (name, ttype)
    return out


def closest_tag_names(conn: sqlite3.Connection, name: str, limit: int = 5) -> list[str]:
    """Real tag names that look like `name`: same first letters or containing it, ranked by similarity."""
    candidates: set[str] = set()
    for prefix_len in (3, 2, 1):
        prefix = name[:prefix_len]
        if not prefix:
            continue
        rows = conn.execute(
            'SELECT name FROM "tag" WHERE name >= ? AND name < ? ORDER BY popularity DESC LIMIT 2000',
            (prefix, prefix + "\U0010ffff"),
        ).fetchall()
        candidates.update(r[0] for r in rows)
        if len(candidates) >= 200:
            break
    core = max(name.split("_"), key=len) if name else ""
    if len(core) >= 3:
        rows = conn.execute(
            'SELECT name FROM "tag" WHERE instr(name, ?) > 0 ORDER BY popularity DESC LIMIT 500', (core,)
        ).fetchall()
        candidates.update(r[0] for r in rows)
    return difflib.get_close_matches(name, sorted(candidates), n=limit, cutoff=0.5)


def resolve_tag_ids(
    conn: sqlite3.Connection, names: Sequence[str], db_path: str | Path | None = None
) -> dict[str, int]:
    """Map tag names (raw, or with spaces for underscores) to ids; an unknown name raises KxlError with suggestions."""
    out: dict[str, int] = {}
    for raw in names:
        name = raw.strip().lower().replace(" ", "_")
        if not name:
            continue
        row = conn.execute('SELECT id FROM "tag" WHERE name = ?', (name,)).fetchone()
        if row is None:
            close = closest_tag_names(conn, name)
            hint = (
                ("did you mean: " + ", ".join(close)) if close else "check the spelling (Danbooru tag names)"
            )
            raise KxlError(f"unknown tag {raw!r}", path=db_path, hint=hint)
        out[name] = int(row[0])
    return out


def open_db(path: str | Path) -> sqlite3.Connection:
    """Read-only connection usable from worker threads (one connection per thread)."""
    return open_metadata_db(path, check_same_thread=False)


def db_fingerprint(conn: sqlite3.Connection, path: str | Path) -> str:
    """A cheap identity of a metadata DB (file size, row counts, highest ids) recorded in kxl-dataset.toml.

    Hashing a 30 GB file would take minutes; these numbers change whenever the dump is re-exported.
    """
    import hashlib

    size = Path(path).stat().st_size
    n_posts, max_post = conn.execute('SELECT count(*), max(id) FROM "post"').fetchone()
    n_tags, max_tag = conn.execute('SELECT count(*), max(id) FROM "tag"').fetchone()
    max_rel = conn.execute('SELECT max(id) FROM "posttagrelation"').fetchone()[0]
    text = f"{size}:{n_posts}:{max_post}:{n_tags}:{max_tag}:{max_rel}"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def chunked(ids: np.ndarray, size: int = CHUNK_POSTS) -> Iterable[np.ndarray]:
    for i in range(0, ids.size, size):
        yield ids[i : i + size]
