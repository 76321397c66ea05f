"""The DB column cache (trainer_core/dataset/column_cache.py) against the SQL path it replaces.

The cache promises the same selection ids and the same captions as SQL for any DB. Every test here compares the
two on the same DB: the demo DB (sparse ids, relations in post order), hand-made DBs whose relation table is not
in post order, holds rows of posts that do not exist, posts without tags or tag ids too big to pack, and DBs
with values the arrays cannot hold exactly (score stored as text). Caches are always built under tmp_path.
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from trainer_core.danbooru.db_reader import fetch_chunk, open_db
from trainer_core.danbooru.demo_db import generate_demo_db
from trainer_core.danbooru.schema import POST_COLUMNS, create_schema
from trainer_core.dataset import column_cache as cc_mod
from trainer_core.dataset.caption_stream import iter_caption_chunks
from trainer_core.dataset.captions import CaptionChunk, quality_scheme
from trainer_core.dataset.captions_export import write_captions_jsonl
from trainer_core.dataset.column_cache import (
    ColumnCache,
    build_column_cache,
    cache_key,
    cache_root,
    column_cache_for,
    find_column_cache,
)
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.selection import PRESETS, IdRange, SelectionPlan, estimate, select_posts
from trainer_core.errors import Cancelled, DatabaseError, KxlError
from trainer_core.progress import CancelToken, Progress

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

N_POSTS = 3000
DEMO_SEED = 7


# --- shared demo DB and its cache --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ccdb") / "demo.db"
    generate_demo_db(path, N_POSTS, DEMO_SEED)
    return path


@pytest.fixture(scope="module")
def cache(demo_db, tmp_path_factory) -> ColumnCache:
    return build_column_cache(demo_db, root=tmp_path_factory.mktemp("ccroot"), processes=0)


@pytest.fixture(scope="module")
def conn(demo_db):
    c = open_db(demo_db)
    yield c
    c.close()


@pytest.fixture(scope="module")
def post_ids(conn) -> np.ndarray:
    return np.array([r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")], np.int64)


@pytest.fixture(scope="module")
def names(conn) -> list[str]:
    """Tag names for filters: the 6 most used general tags, the 2 most used others, one tag no post has."""
    top = "SELECT t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE {} GROUP BY t.id "
    top += "ORDER BY count(*) DESC, t.id LIMIT {}"
    general = [r[0] for r in conn.execute(top.format("t.type = 0", 6))]
    other = [r[0] for r in conn.execute(top.format("t.type != 0", 2))]
    unused = conn.execute(
        "SELECT name FROM tag WHERE id NOT IN (SELECT tag_id FROM posttagrelation) ORDER BY id LIMIT 1"
    ).fetchone()
    assert len(general) == 6 and len(other) == 2 and unused is not None
    return general + other + [unused[0]]


def csr_from_sql(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(post ids, offsets, tag ids) of every post, straight from SQL in HakuBooru's (post_id, id) order."""
    ids = np.array([r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")], np.int64)
    rows = conn.execute(
        "SELECT post_id, tag_id FROM posttagrelation WHERE post_id IN (SELECT id FROM post) "
        "ORDER BY post_id, id"
    ).fetchall()
    owners = np.array([r[0] for r in rows], np.int64)
    tags = np.array([r[1] for r in rows], np.int64)
    counts = np.array([np.count_nonzero(owners == i) for i in ids], np.int64) if ids.size else ids
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return ids, offsets, tags


def assert_cache_is_sql(cache: ColumnCache, conn: sqlite3.Connection) -> None:
    ids, offsets, tags = csr_from_sql(conn)
    assert np.asarray(cache.post_id).tolist() == ids.tolist()
    assert np.asarray(cache.offsets).tolist() == offsets.tolist()
    assert np.asarray(cache.tags).tolist() == tags.tolist()


def assert_same_chunk(got, want) -> None:
    (gp, gt), (wp, wt) = got, want
    for name in ("ids", "rating", "fav_count", "year"):
        g, w = getattr(gp, name), getattr(wp, name)
        assert g.shape == w.shape and g.tolist() == w.tolist(), f"PostColumns.{name} differs"
        assert g.dtype.kind == "i", f"PostColumns.{name} is {g.dtype}"
    for name in ("post_ids", "counts", "tag_ids"):
        g, w = getattr(gt, name), getattr(wt, name)
        assert g.shape == w.shape and g.tolist() == w.tolist(), f"TagChunk.{name} differs"
        assert g.dtype.kind == "i", f"TagChunk.{name} is {g.dtype}"


def assert_same_caption_output(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, bytes):
            assert isinstance(g, bytes) and g == w
            continue
        assert isinstance(g, CaptionChunk) and isinstance(w, CaptionChunk)
        assert g.ids.tolist() == w.ids.tolist()
        assert g.captions == w.captions
        assert g.rating.tolist() == w.rating.tolist()
        assert g.quality.tolist() == w.quality.tolist()
        assert g.year.tolist() == w.year.tolist()


def same_arrays(a: ColumnCache, b: ColumnCache) -> None:
    for name in ("post_id", "rating", "fav_count", "score", "year", "flags", "offsets", "tags"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), f"array {name} differs"
    assert a.meta["exact"] == b.meta["exact"] and a.meta["tag_rows"] == b.meta["tag_rows"]


def stages_of(calls: list) -> Progress:
    return Progress(callback=lambda ev: calls.append(ev), min_interval_s=0)


# --- 1. fetch_chunk ----------------------------------------------------------------------------------------


def test_demo_cache_holds_every_post_and_relation_in_sql_order(cache, conn, demo_db):
    assert len(cache) == N_POSTS and cache.meta["posts"] == N_POSTS
    n_rel = conn.execute("SELECT count(*) FROM posttagrelation").fetchone()[0]
    assert cache.meta["tag_rows"] == n_rel == cache.tags.size
    assert cache.meta["exact"] == {"rating": True, "score": True, "fav_count": True, "relations": True}
    assert cache.meta["key"] == cache.path.name == cache_key(conn, demo_db)
    assert_cache_is_sql(cache, conn)
    score = [r[0] for r in conn.execute("SELECT score FROM post ORDER BY id")]
    assert np.asarray(cache.score).tolist() == score
    assert cache.size_bytes() == sum(p.stat().st_size for p in cache.path.iterdir())
    assert cache.size_bytes() >= cache.tags.nbytes + cache.offsets.nbytes


@pytest.mark.parametrize(
    "pick",
    [
        "all",
        "dense_run",
        "every_other",
        "sparse_random",
        "single",
        "first",
        "last",
        "first_and_last",
        "empty",
    ],
)
def test_fetch_chunk_equals_sql(cache, conn, post_ids, pick):
    rng = np.random.default_rng(5)
    ids = {
        "all": post_ids,
        "dense_run": post_ids[1200:1900],
        "every_other": post_ids[::2],
        "sparse_random": np.sort(rng.choice(post_ids, 137, replace=False)),
        "single": post_ids[1500:1501],
        "first": post_ids[:1],
        "last": post_ids[-1:],
        "first_and_last": post_ids[[0, -1]],
        "empty": post_ids[:0],
    }[pick]
    got = cache.fetch_chunk(ids)
    assert_same_chunk(got, fetch_chunk(conn, ids))
    assert got[1].counts.sum() == got[1].tag_ids.size
    if ids.size:
        assert cache.rows_of(ids).tolist() == np.searchsorted(post_ids, ids).tolist()


@pytest.mark.parametrize("where", ["gap", "below_first", "above_last"])
def test_fetch_chunk_of_a_missing_id_names_it(cache, post_ids, where):
    have = set(post_ids.tolist())
    missing = {
        "gap": next(i for i in range(int(post_ids[0]) + 1, int(post_ids[-1])) if i not in have),
        "below_first": int(post_ids[0]) - 1,
        "above_last": int(post_ids[-1]) + 1,
    }[where]
    ids = np.sort(np.array([int(post_ids[0]), int(post_ids[10]), missing, int(post_ids[-1])], np.int64))
    ids = np.unique(ids)
    with pytest.raises(DatabaseError, match=rf"\b{missing}\b"):
        cache.fetch_chunk(ids)


def test_small_work_units_give_the_same_cache(demo_db, cache, conn, tmp_path, monkeypatch):
    """Post chunks and relation slices that end mid-post: the stitched arrays are the one-piece ones."""
    monkeypatch.setattr(cc_mod, "POST_CHUNK", 333)
    monkeypatch.setattr(cc_mod, "REL_SLICE", 1001)
    calls: list = []
    small = build_column_cache(demo_db, root=tmp_path / "root", processes=0, progress=stages_of(calls))
    same_arrays(small, cache)
    messages = [ev.message for ev in calls]
    assert not any("post_id index" in m for m in messages)  # the demo DB is in post order: no fallback
    last = calls[-1]
    assert last.total is not None and last.done == last.total


# --- 2. selection --------------------------------------------------------------------------------------------

OFF = dict(skip_deleted=False, skip_banned=False, images_only=False)
# name -> filters built from `names` (see the fixture: t[0..5] general, t[6..7] other types, t[8] unused)
FILTERS = {
    "default": lambda t: PostFilters(),
    "none": lambda t: PostFilters.none(),
    "skip_deleted": lambda t: PostFilters(True, False, False),
    "skip_banned": lambda t: PostFilters(False, True, False),
    "images_only": lambda t: PostFilters(False, False, True),
    "rating_g": lambda t: PostFilters(**OFF, ratings=(0,)),
    "rating_s_e": lambda t: PostFilters(**OFF, ratings=(1, 3)),
    "rating_empty": lambda t: PostFilters(**OFF, ratings=()),
    "min_score": lambda t: PostFilters(**OFF, min_score=10),
    "min_score_negative": lambda t: PostFilters(**OFF, min_score=-1),
    "min_score_past_int16": lambda t: PostFilters(**OFF, min_score=40_000),
    "min_score_huge_negative": lambda t: PostFilters(**OFF, min_score=-(2**40)),
    "min_fav": lambda t: PostFilters(**OFF, min_fav_count=50),
    "min_fav_huge": lambda t: PostFilters(**OFF, min_fav_count=10**12),
    "tags_any": lambda t: PostFilters(**OFF, tags_any=(t[0], t[5])),
    "tags_any_other_types": lambda t: PostFilters(**OFF, tags_any=(t[6], t[7])),
    "tags_any_unused_tag": lambda t: PostFilters(**OFF, tags_any=(t[8],)),
    "tags_all": lambda t: PostFilters(**OFF, tags_all=(t[0], t[1])),
    "tags_all_three": lambda t: PostFilters(**OFF, tags_all=(t[1], t[2], t[3])),
    "tags_all_same_tag_twice": lambda t: PostFilters(**OFF, tags_all=(t[2], t[2].replace("_", " "))),
    "tags_all_with_unused": lambda t: PostFilters(**OFF, tags_all=(t[0], t[8])),
    "tags_none": lambda t: PostFilters(**OFF, tags_none=(t[0],)),
    "tags_none_two": lambda t: PostFilters(**OFF, tags_none=(t[1], t[6])),
    "tags_none_unused": lambda t: PostFilters(**OFF, tags_none=(t[8],)),
    "combo_default": lambda t: PostFilters(
        ratings=(0, 1), min_score=3, tags_any=(t[0], t[1]), tags_none=(t[2],)
    ),
    "combo_all_and_none_same": lambda t: PostFilters(**OFF, tags_all=(t[0],), tags_none=(t[0],)),
    "combo_everything": lambda t: PostFilters(
        True,
        True,
        True,
        ratings=(0, 1, 2),
        min_score=1,
        min_fav_count=2,
        tags_any=(t[0], t[3], t[6]),
        tags_all=(t[1],),
        tags_none=(t[4], t[7]),
    ),
}
EMPTY_BY_DESIGN = {"rating_empty", "min_score_past_int16", "min_fav_huge", "tags_any_unused_tag"}
EMPTY_BY_DESIGN |= {"tags_all_with_unused", "combo_all_and_none_same"}


def scaled_delta(seed: int) -> SelectionPlan:
    """The kohaku-xl-delta preset's ranges with counts scaled to the 3,000-post demo (so they really sample)."""
    card = PRESETS["kohaku-xl-delta"].ranges
    counts = (300, 250, None)
    return SelectionPlan(tuple(IdRange(r.start, r.stop, n) for r, n in zip(card, counts, strict=True)), seed)


@pytest.fixture(scope="module")
def plans(post_ids) -> dict[str, SelectionPlan]:
    inner = (int(post_ids[10]), int(post_ids[500]), int(post_ids[501]), int(post_ids[2000]))
    return {
        "all": SelectionPlan((IdRange(0),), seed=1),
        "delta_preset": PRESETS["kohaku-xl-delta"],  # counts larger than any demo population
        "delta_scaled_seed1": scaled_delta(1),
        "delta_scaled_seed2": scaled_delta(2),
        "delta_scaled_seed_big": scaled_delta(2**63 + 12345),
        "count_zero": SelectionPlan((IdRange(0, 5_000_000, 0), IdRange(5_000_000, None, 7)), seed=3),
        # starts and stops exactly on post ids: start inclusive, stop exclusive
        "boundaries": SelectionPlan(
            (
                IdRange(inner[0], inner[1], 100),
                IdRange(inner[1], inner[2]),
                IdRange(inner[2], inner[3], 1),
                IdRange(inner[3], None, 40),
            ),
            seed=9,
        ),
        "past_the_end": SelectionPlan((IdRange(int(post_ids[-1]) + 1, None), IdRange(0, 2, 5)), seed=4),
    }


def selection_summary(sel) -> list[tuple]:
    return [(r.range, r.matching, r.selected) for r in sel.ranges]


@pytest.mark.parametrize("name", list(FILTERS))
def test_select_posts_and_estimate_same_with_cache(cache, conn, demo_db, names, plans, name):
    filters = FILTERS[name](names)
    mask = cache.filter_mask(filters, conn, demo_db)
    assert mask is not None  # every value of the demo DB is exact: the arrays answer, not SQL
    assert mask.dtype == bool and mask.shape == (N_POSTS,)
    sql_count = estimate(conn, plans["all"], filters, demo_db)[0].matching
    assert int(mask.sum()) == sql_count
    if name in EMPTY_BY_DESIGN:
        assert sql_count == 0
    else:
        assert 0 < sql_count
    for plan_name, plan in plans.items():
        want = select_posts(conn, plan, filters, demo_db)
        got = select_posts(conn, plan, filters, demo_db, cache=cache)
        assert got.ids.dtype == np.int64, plan_name
        assert got.ids.tolist() == want.ids.tolist(), plan_name
        assert selection_summary(got) == selection_summary(want), plan_name
        got_est = [
            (r.range, r.matching, r.selected) for r in estimate(conn, plan, filters, demo_db, cache=cache)
        ]
        assert got_est == selection_summary(want), plan_name


def test_scaled_plans_really_sample(cache, conn, demo_db):
    """The comparisons above exercise seeded sampling, not just 'take everything'."""
    sels = [select_posts(conn, scaled_delta(s), PostFilters(), demo_db, cache=cache) for s in (1, 2)]
    for sel in sels:
        assert [r.selected for r in sel.ranges[:2]] == [300, 250]
        assert all(r.matching > r.selected for r in sel.ranges[:2])
    assert sels[0].ids.tolist() != sels[1].ids.tolist()


def test_unknown_tag_raises_with_cache_too(cache, conn, demo_db):
    with pytest.raises(KxlError, match="unknown tag 'no_such_tag_zzz'"):
        select_posts(conn, PRESETS["all"], PostFilters(tags_any=("no_such_tag_zzz",)), demo_db, cache=cache)


# --- 3. captions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jsonl", [False, True])
@pytest.mark.parametrize("which", ["default_filters", "all_posts", "sparse"])
def test_captions_same_with_cache(cache, conn, demo_db, post_ids, which, jsonl):
    ids = {
        "default_filters": select_posts(conn, PRESETS["all"], PostFilters(), demo_db).ids,
        "all_posts": post_ids,
        "sparse": post_ids[3::7],
    }[which]
    scheme = quality_scheme("card")
    kw = dict(processes=0, threads=2, jsonl=jsonl, chunk_posts=700)
    want = list(iter_caption_chunks(demo_db, ids, scheme, **kw))
    got = list(iter_caption_chunks(demo_db, ids, scheme, cache=cache, **kw))
    assert_same_caption_output(got, want)
    if jsonl:
        text = b"".join(got).decode("utf-8")
        assert text.count("\n") == ids.size
    else:
        assert sum(len(c.captions) for c in got) == ids.size
        assert all(c for ch in got for c in ch.captions)


def test_captions_same_with_db_quality_scheme(cache, conn, demo_db, post_ids):
    scheme = quality_scheme("db", conn)
    want = list(iter_caption_chunks(demo_db, post_ids, scheme, processes=0, chunk_posts=1000))
    got = list(iter_caption_chunks(demo_db, post_ids, scheme, processes=0, chunk_posts=1000, cache=cache))
    assert_same_caption_output(got, want)


def test_build_and_caption_with_two_processes(demo_db, cache, conn, tmp_path):
    two = build_column_cache(demo_db, root=tmp_path / "root", processes=2)
    same_arrays(two, cache)
    ids = select_posts(conn, scaled_delta(5), PostFilters(), demo_db, cache=two).ids
    scheme = quality_scheme("card")
    got = list(iter_caption_chunks(demo_db, ids, scheme, processes=2, jsonl=True, chunk_posts=300, cache=two))
    want = list(iter_caption_chunks(demo_db, ids, scheme, processes=0, jsonl=True, chunk_posts=300))
    assert_same_caption_output(got, want)
    assert b"".join(got).count(b"\n") == ids.size > 0


def test_write_captions_jsonl_always_equals_never(demo_db, names, tmp_path, monkeypatch):
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(cc_mod, "build_column_cache", functools.partial(build_column_cache, processes=0))
    reads = []
    original = ColumnCache.fetch_chunk

    def counted(self, ids):
        reads.append(int(np.asarray(ids).size))
        return original(self, ids)

    monkeypatch.setattr(ColumnCache, "fetch_chunk", counted)
    plan = scaled_delta(11)
    filters = PostFilters(ratings=(0, 1, 2), tags_none=(names[4],))
    n_never = write_captions_jsonl(demo_db, tmp_path / "never.jsonl", plan, filters, "card", db_cache="never")
    assert reads == [] and not cache_root().exists()
    n_always = write_captions_jsonl(
        demo_db, tmp_path / "always.jsonl", plan, filters, "card", db_cache="always"
    )
    assert sum(reads) == n_always  # the captions came from the cache
    assert [p.name for p in cache_root().iterdir()] == [cache_key(open_db(demo_db), demo_db)]
    data = (tmp_path / "always.jsonl").read_bytes()
    assert data == (tmp_path / "never.jsonl").read_bytes()
    assert n_always == n_never == data.count(b"\n") > 0


# --- 4. hand-made DBs: relation order, missing posts, untagged posts, big tag ids ------------------------------

TAG_NAMES = [
    ("1girl", 0),
    ("solo", 0),
    ("long_hair", 0),
    ("smile", 0),
    ("blue_eyes", 0),
    ("looking_at_viewer", 0),
    ("open_mouth", 0),
    ("simple_background", 0),
    ("hatsune_miku", 2),
    ("vocaloid", 3),
    ("original", 3),
    ("kohaku_(artist)", 1),
    ("highres", 4),
    ("absurdres", 4),
    ("commentary_request", 4),
    ("never_used_tag", 0),
]
TAG_BASE = {"small": 1, "big": (1 << 21) + 5, "huge": (1 << 31) + 5}  # big: not packable; huge: needs int64


def make_db(path: Path, layout: str, tag_base: int = 1, seed: int = 0) -> tuple[Path, int]:
    """A HakuBooru-schema DB of 70 posts with gapped ids; returns (path, REL_SLICE to build with).

    layout: "post_order" (relation ids follow (post_id, order), with gaps: the rowid path applies),
    "shuffled" (relation ids a random permutation, so rowid order is not (post_id, id) order: the index
    fallback must be taken),
    "two_blocks" (posts of the upper half first, then the lower half: each slice is in order, the table is not).
    Every layout has untagged posts (first and last included), a post holding one tag twice, and relations of
    posts that are not in the post table (ids -3, 0, a gap id and one past the end).
    """
    rng = np.random.default_rng(seed)
    post_ids = np.sort(rng.choice(np.arange(1, 400), 70, replace=False)).astype(np.int64)
    db = sqlite3.connect(path)
    create_schema(db)
    cols = [c[0] for c in POST_COLUMNS]
    exts = ["jpg", "png", "webp", "gif", "JPG", "mp4"]
    for i, pid in enumerate(post_ids.tolist()):
        row = {n: (0 if t == "INTEGER" else "") for n, t, _ in POST_COLUMNS}
        row.update(
            id=pid,
            created_at=f"{2008 + i % 17}-0{1 + i % 9}-11T10:00:00.000-05:00",
            rating=int(rng.integers(0, 4)),
            score=int(rng.integers(-5, 60)),
            fav_count=int(rng.integers(0, 300)),
            is_deleted=int(i % 11 == 3),
            is_banned=int(i % 13 == 5),
            file_ext=exts[i % len(exts)],
            file_url=None if i % 17 == 2 else ("" if i % 19 == 4 else f"https://x/{pid}.jpg"),
        )
        db.execute(
            f"INSERT INTO post ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row[n] for n in cols],
        )
    for k, (name, ttype) in enumerate(TAG_NAMES):
        db.execute("INSERT INTO tag VALUES (?, ?, ?, ?)", (tag_base + 7 * k, name, ttype, 100 - k))
    used = len(TAG_NAMES) - 1  # the last tag is never used
    untagged = {0, 69, 5, 6, 40}
    per_post: list[tuple[int, int]] = []  # (post id, tag id); relation order in the ordered layouts
    for i, pid in enumerate(post_ids.tolist()):
        if i in untagged:
            continue
        k = int(rng.integers(1, 9))
        tags = (tag_base + 7 * rng.choice(used, k, replace=False)).tolist()
        if i == 20:
            tags.append(tags[0])  # one tag twice on the same post
        per_post += [(pid, t) for t in tags]
    gap = next(i for i in range(1, 400) if i not in set(post_ids.tolist()))
    ghosts = [(-3, tag_base), (0, tag_base + 7), (gap, tag_base + 14), (gap, tag_base), (500, tag_base + 21)]
    rows = sorted(per_post + ghosts, key=lambda r: r[0])  # stable: each post's tags keep their order
    if layout == "post_order":
        ids = [5 + 3 * k for k in range(len(rows))]
        slice_rows = 7
    elif layout == "shuffled":
        ids = (10 + rng.permutation(len(rows))).tolist()  # within a post, SQL orders its rows by these ids
        slice_rows = 7
    elif layout == "two_blocks":
        median = int(post_ids[35])
        upper = [r for r in rows if r[0] >= median]
        lower = [r for r in rows if r[0] < median]
        rows = upper + lower
        ids = list(range(1, len(rows) + 1))
        slice_rows = len(upper)  # slice 1 = the upper block, slice 2 = the lower block
    else:
        raise ValueError(layout)
    order = rng.permutation(len(rows))  # insertion order is irrelevant: rowid = id
    for j in order.tolist():
        db.execute("INSERT INTO posttagrelation VALUES (?, ?, ?)", (ids[j], rows[j][0], rows[j][1]))
    db.commit()
    db.close()
    return path, slice_rows


LAYOUTS = [
    ("post_order", "small", False),
    ("post_order", "big", False),
    ("post_order", "huge", False),
    ("shuffled", "small", True),
    ("shuffled", "big", True),
    ("two_blocks", "small", True),
]


@pytest.mark.parametrize(("layout", "tags", "fallback"), LAYOUTS)
def test_hand_made_db_equals_sql(tmp_path, monkeypatch, layout, tags, fallback):
    db, slice_rows = make_db(tmp_path / "h.db", layout, TAG_BASE[tags])
    monkeypatch.setattr(cc_mod, "POST_CHUNK", 9)
    monkeypatch.setattr(cc_mod, "REL_SLICE", slice_rows)
    calls: list = []
    cache = build_column_cache(db, root=tmp_path / "root", processes=0, progress=stages_of(calls))
    took_fallback = any("post_id index" in ev.message for ev in calls)
    assert took_fallback == fallback
    conn = open_db(db)
    assert_cache_is_sql(cache, conn)
    if tags == "huge":
        assert cache.tags.dtype == np.int64  # ids past 2**31 are kept whole
    ids = np.asarray(cache.post_id, np.int64)
    counts = np.diff(np.asarray(cache.offsets))
    assert counts[0] == 0 and counts[-1] == 0 and (counts == 0).sum() == 5  # untagged posts, ends included
    for pick in (ids, ids[::3], ids[1:2], ids[-1:], ids[[0, 33, 69]], ids[30:50]):
        assert_same_chunk(cache.fetch_chunk(pick), fetch_chunk(conn, pick))
    for i in ids.tolist():
        one = np.array([i], np.int64)
        assert_same_chunk(cache.fetch_chunk(one), fetch_chunk(conn, one))
    with pytest.raises(DatabaseError, match=r"\b500\b"):
        cache.fetch_chunk(np.array([int(ids[0]), 500], np.int64))  # its relation rows do not make it a post
    plan = SelectionPlan((IdRange(0, 150, 10), IdRange(150, 300), IdRange(300, None, 3)), seed=2)
    for filters in (
        PostFilters(),
        PostFilters.none(),
        PostFilters(**OFF, ratings=(1, 2), min_score=20),
        PostFilters(**OFF, tags_any=("1girl", "hatsune_miku")),
        PostFilters(**OFF, tags_all=("solo", "smile")),
        PostFilters(**OFF, tags_none=("1girl", "highres")),
        PostFilters(tags_none=("never_used_tag",), min_fav_count=20),
    ):
        assert cache.filter_mask(filters, conn, db) is not None
        for p in (plan, PRESETS["all"]):
            want = select_posts(conn, p, filters, db)
            got = select_posts(conn, p, filters, db, cache=cache)
            assert got.ids.tolist() == want.ids.tolist(), filters
            assert selection_summary(got) == selection_summary(want), filters
            assert [(r.matching, r.selected) for r in estimate(conn, p, filters, db, cache=cache)] == [
                (r.matching, r.selected) for r in want.ranges
            ]
    if tags != "huge":  # the caption builder keeps a table as long as the highest tag id
        scheme = quality_scheme("hakubooru")
        for jsonl in (False, True):
            kw = dict(processes=0, jsonl=jsonl, chunk_posts=8)
            want_c = list(iter_caption_chunks(db, ids, scheme, **kw))
            got_c = list(iter_caption_chunks(db, ids, scheme, cache=cache, **kw))
            assert_same_caption_output(got_c, want_c)
    conn.close()


def test_db_without_relations_and_empty_db(tmp_path):
    db, _ = make_db(tmp_path / "n.db", "post_order")
    w = sqlite3.connect(db)
    w.execute("DELETE FROM posttagrelation")
    w.commit()
    w.close()
    cache = build_column_cache(db, root=tmp_path / "root", processes=0)
    conn = open_db(db)
    assert len(cache) == 70 and cache.tags.size == 0 and np.asarray(cache.offsets).tolist() == [0] * 71
    ids = np.asarray(cache.post_id, np.int64)
    assert_same_chunk(cache.fetch_chunk(ids), fetch_chunk(conn, ids))
    f = PostFilters(tags_none=("solo",))
    assert select_posts(conn, PRESETS["all"], f, db, cache=cache).ids.tolist() == (
        select_posts(conn, PRESETS["all"], f, db).ids.tolist()
    )
    conn.close()

    w = sqlite3.connect(db)
    w.execute("DELETE FROM post")
    w.commit()
    w.close()
    empty = build_column_cache(db, root=tmp_path / "root", processes=0)
    assert len(empty) == 0 and empty.meta["posts"] == 0
    assert [p.name for p in (tmp_path / "root").iterdir()] == [empty.path.name]  # the old state's cache went
    conn = open_db(db)
    sel = select_posts(conn, scaled_delta(1), PostFilters(), db, cache=empty)
    assert sel.ids.size == 0 and [r.matching for r in sel.ranges] == [0, 0, 0]
    posts, tags = empty.fetch_chunk(np.zeros(0, np.int64))
    assert len(posts) == 0 and tags.tag_ids.size == 0
    conn.close()


# --- 5. values the arrays cannot hold exactly -------------------------------------------------------------------


@pytest.mark.parametrize("odd", ["12abc", 2.5, "x"])
def test_score_stored_as_text_or_real_falls_back_to_sql(demo_db, tmp_path, odd):
    db = tmp_path / "odd.db"
    shutil.copy(demo_db, db)
    w = sqlite3.connect(db)
    # the lowest-scored posts: as text they pass any min_score in SQL (text sorts above numbers)
    victims = [
        r[0]
        for r in w.execute(
            "SELECT id FROM post WHERE score < 2 AND is_deleted = 0 AND is_banned = 0 AND file_url != '' "
            "AND lower(file_ext) IN ('jpg', 'png') ORDER BY score, id LIMIT 3"
        )
    ]
    w.executemany("UPDATE post SET score = ? WHERE id = ?", [(odd, v) for v in victims])
    w.commit()
    assert {r[0] for r in w.execute("SELECT typeof(score) FROM post WHERE id IN (?, ?, ?)", victims)} == {
        "text" if isinstance(odd, str) else "real"
    }
    w.close()
    cache = build_column_cache(db, root=tmp_path / "root", processes=0)
    assert cache.meta["exact"] == {"rating": True, "score": False, "fav_count": True, "relations": True}
    conn = open_db(db)
    with_score = PostFilters(min_score=2)
    assert cache.filter_mask(with_score, conn, db) is None
    assert cache.filter_mask(PostFilters(ratings=(0, 1), min_fav_count=3), conn, db) is not None
    want = select_posts(conn, PRESETS["all"], with_score, db)
    if isinstance(odd, str):
        assert set(victims) & set(want.ids.tolist())  # the case is real: SQL keeps what a number 0 would drop
    for filters in (with_score, PostFilters(), PostFilters(min_score=-100, ratings=(0,))):
        for plan in (PRESETS["all"], scaled_delta(3)):
            want = select_posts(conn, plan, filters, db)
            got = select_posts(conn, plan, filters, db, cache=cache)
            assert got.ids.tolist() == want.ids.tolist()
            assert selection_summary(got) == selection_summary(want)
            got_est = estimate(conn, plan, filters, db, cache=cache)
            assert [(r.matching, r.selected) for r in got_est] == [
                (r.matching, r.selected) for r in want.ranges
            ]
    ids = np.asarray(cache.post_id, np.int64)
    assert_same_chunk(cache.fetch_chunk(ids), fetch_chunk(conn, ids))
    conn.close()


def test_schema_makes_null_values_impossible(tmp_path):
    """Why there is no NULL-rating / NULL-score / NULL-post_id case: HakuBooru's schema forbids them."""
    db, _ = make_db(tmp_path / "nn.db", "post_order")
    w = sqlite3.connect(db)
    pid = w.execute("SELECT min(id) FROM post").fetchone()[0]
    for sql in (
        "UPDATE post SET rating = NULL WHERE id = ?",
        "UPDATE post SET score = NULL WHERE id = ?",
        "UPDATE post SET fav_count = NULL WHERE id = ?",
        "UPDATE posttagrelation SET post_id = NULL WHERE id = (SELECT min(id) FROM posttagrelation) AND ? > 0",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            w.execute(sql, (pid,))
    w.close()


# --- 6. staleness ---------------------------------------------------------------------------------------------


def test_touched_db_gets_a_new_cache_and_the_old_one_goes(demo_db, tmp_path):
    db = tmp_path / "s.db"
    shutil.copy(demo_db, db)
    other = tmp_path / "other.db"
    shutil.copy(demo_db, other)
    root = tmp_path / "root"
    conn = open_db(db)
    first = build_column_cache(db, root=root, processes=0)
    kept = build_column_cache(other, root=root, processes=0)  # another DB path: never removed for `db`
    assert first.path.name != kept.path.name
    assert find_column_cache(conn, db, root=root).path == first.path
    again = build_column_cache(db, root=root, processes=0)  # same state: same key, still one cache
    assert again.path == first.path and sorted(p.name for p in root.iterdir()) == sorted(
        [first.path.name, kept.path.name]
    )
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key(conn, db) != first.path.name
    assert find_column_cache(conn, db, root=root) is None
    fresh = build_column_cache(db, root=root, processes=0)
    assert fresh.path.name == cache_key(conn, db) != first.path.name
    assert not first.path.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([fresh.path.name, kept.path.name])
    assert find_column_cache(conn, db, root=root).path == fresh.path
    assert find_column_cache(open_db(other), other, root=root).path == kept.path
    conn.close()


def copy_and_build(demo_db: Path, tmp_path: Path, name: str) -> tuple[Path, Path, ColumnCache]:
    """A private copy of the demo DB (the test may change it) and its cache under tmp_path/root."""
    db = tmp_path / name
    shutil.copy(demo_db, db)
    root = tmp_path / "root"
    return db, root, build_column_cache(db, root=root, processes=0)


def test_inserted_post_gets_a_new_cache_with_it(demo_db, tmp_path):
    db, root, old = copy_and_build(demo_db, tmp_path, "i.db")
    w = sqlite3.connect(db)
    cols = [c[0] for c in POST_COLUMNS]
    row = list(w.execute(f"SELECT {', '.join(cols)} FROM post ORDER BY id LIMIT 1").fetchone())
    new_id = 7_900_000
    row[0] = new_id
    w.execute(f"INSERT INTO post ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", row)
    tag = w.execute("SELECT id FROM tag WHERE name = '1girl'").fetchone()[0]
    w.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)", (new_id, tag))
    w.commit()
    w.close()
    conn = open_db(db)
    assert find_column_cache(conn, db, root=root) is None
    new = build_column_cache(db, root=root, processes=0)
    assert new.path != old.path and not old.path.exists()
    assert len(new) == N_POSTS + 1 and int(new.post_id[-1]) == new_id
    assert_cache_is_sql(new, conn)
    one = np.array([new_id], np.int64)
    assert_same_chunk(new.fetch_chunk(one), fetch_chunk(conn, one))
    assert new.fetch_chunk(one)[1].tag_ids.tolist() == [tag]
    conn.close()


def test_replaced_db_file_is_read_anew_by_an_in_process_build(tmp_path):
    """A DB file swapped for another (a re-download, a regenerated demo) at the same path: an in-process
    rebuild must read the new file, not a connection still open on the old one."""
    db = tmp_path / "r.db"
    generate_demo_db(db, 2000, 1)
    build_column_cache(db, root=tmp_path / "root", processes=0)
    generate_demo_db(tmp_path / "new.db", 2000, 1, mean_tags=12)  # same post ids, other tags
    os.replace(tmp_path / "new.db", db)
    cache = build_column_cache(db, root=tmp_path / "root", processes=0)
    conn = open_db(db)
    assert_cache_is_sql(cache, conn)
    conn.close()


def test_unreadable_cache_is_not_found(demo_db, tmp_path):
    db, root, built = copy_and_build(demo_db, tmp_path, "u.db")
    conn = open_db(db)
    (built.path / "meta.json").write_text("{not json", encoding="utf-8")
    assert find_column_cache(conn, db, root=root) is None
    with pytest.raises(KxlError, match="unreadable"):
        ColumnCache(built.path)
    (built.path / "meta.json").write_text('{"format": 999}', encoding="utf-8")
    assert find_column_cache(conn, db, root=root) is None
    conn.close()


# --- 7. cancel ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["post_columns", "relations"])
def test_cancelled_build_leaves_nothing(demo_db, tmp_path, monkeypatch, when):
    monkeypatch.setattr(cc_mod, "POST_CHUNK", 200)
    monkeypatch.setattr(cc_mod, "REL_SLICE", 5000)
    db = tmp_path / "c.db"
    shutil.copy(demo_db, db)
    root = tmp_path / "root"
    token = CancelToken()
    seen: list = []
    threshold = 1 if when == "post_columns" else N_POSTS + 1

    def cb(ev):
        seen.append(ev)
        if ev.total is not None and ev.done >= threshold:
            token.cancel()

    with pytest.raises(Cancelled):
        build_column_cache(db, root=root, processes=0, progress=Progress(cb, token, min_interval_s=0))
    assert token.cancelled and any(ev.total is not None and ev.done < ev.total for ev in seen)
    assert list(root.iterdir()) == []  # no cache, no temporary folder
    conn = open_db(db)
    assert find_column_cache(conn, db, root=root) is None
    conn.close()
    # and a later build is not disturbed by the cancelled one
    done = build_column_cache(db, root=root, processes=0)
    assert [p.name for p in root.iterdir()] == [done.path.name] and len(done) == N_POSTS


# --- 8. column_cache_for ----------------------------------------------------------------------------------------


@pytest.fixture
def builds(tmp_path, monkeypatch) -> list:
    """KXL_DATA_DIR in tmp_path; builds that column_cache_for starts run in-process and are recorded."""
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KXL_DB_CACHE", raising=False)
    builds: list = []

    def in_process(*args, **kw):
        builds.append(args)
        kw.setdefault("processes", 0)
        return build_column_cache(*args, **kw)

    monkeypatch.setattr(cc_mod, "build_column_cache", in_process)
    return builds


def test_column_cache_for_modes(demo_db, builds, tmp_path, monkeypatch):
    conn = open_db(demo_db)
    assert cache_root() == tmp_path / "data" / "cache" / "db-columns"
    assert column_cache_for(demo_db, conn, "never") is None
    assert column_cache_for(demo_db, conn, "auto") is None  # the demo DB is far below AUTO_MIN_DB_BYTES
    assert demo_db.stat().st_size < cc_mod.AUTO_MIN_DB_BYTES
    assert builds == [] and not cache_root().exists()
    built = column_cache_for(demo_db, conn, "always")
    assert built is not None and built.path.parent == cache_root() and len(built) == N_POSTS
    assert column_cache_for(demo_db, conn, "always").path == built.path  # found, not rebuilt
    assert column_cache_for(demo_db, conn, "auto").path == built.path  # auto uses one that exists
    assert column_cache_for(demo_db, conn, "never") is None
    assert len(builds) == 1 and [p.name for p in cache_root().iterdir()] == [built.path.name]
    monkeypatch.setenv("KXL_DB_CACHE", "never")
    assert column_cache_for(demo_db, conn, "auto") is None
    assert column_cache_for(demo_db, conn, "always").path == built.path  # an explicit mode beats the env
    with pytest.raises(KxlError, match="'sometimes'"):
        column_cache_for(demo_db, conn, "sometimes")
    monkeypatch.setenv("KXL_DB_CACHE", "bogus")  # a typo in the variable is named, not read as "always"
    with pytest.raises(KxlError, match="KXL_DB_CACHE='bogus'"):
        column_cache_for(demo_db, conn, "auto")
    assert len(builds) == 1
    conn.close()


def test_auto_builds_for_a_big_db(demo_db, builds, monkeypatch):
    conn = open_db(demo_db)
    monkeypatch.setattr(cc_mod, "AUTO_MIN_DB_BYTES", demo_db.stat().st_size + 1)
    assert column_cache_for(demo_db, conn, "auto") is None
    monkeypatch.setattr(cc_mod, "AUTO_MIN_DB_BYTES", demo_db.stat().st_size)
    assert builds == []
    built = column_cache_for(demo_db, conn, "auto")
    assert len(builds) == 1 and built is not None and built.path == cache_root() / cache_key(conn, demo_db)
    monkeypatch.setenv("KXL_DB_CACHE", "never")
    assert column_cache_for(demo_db, conn, "auto") is None
    conn.close()


def test_abandoned_build_folders_are_removed_live_ones_kept(demo_db, tmp_path):
    """A build killed mid-way leaves `.KEY.tmp-PID`; the next build removes it unless that process still runs."""
    root = tmp_path / "root"
    dead_pid = 2**22 + 12345  # above Linux's default pid_max: no such process
    dead = root / f".abc.tmp-{dead_pid}"
    live = root / f".abc.tmp-{os.getppid()}"  # the process that started pytest: alive
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "tags.bin").write_bytes(b"\0" * 16)
    build_column_cache(demo_db, root=root, processes=0)
    assert not dead.exists() and live.exists()


def test_a_cache_published_meanwhile_by_another_process_is_kept(demo_db, tmp_path):
    """Two jobs on one DB build at once: the second to finish finds the first's cache in place and uses it
    instead of failing to rename over a full folder."""
    root = tmp_path / "root"
    first = build_column_cache(demo_db, root=root, processes=0)
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    second = build_column_cache(demo_db, root=root, processes=0)  # started before the first was published
    assert second.path == first.path and (first.path / "meta.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in root.iterdir()) == [first.path.name]  # no temporary folder left
    (first.path / "meta.json").write_text("{broken", encoding="utf-8")  # a damaged leftover is replaced
    third = build_column_cache(demo_db, root=root, processes=0)
    assert third.path == first.path and third.meta["posts"] == N_POSTS
