"""Selection plans, seeded sampling without replacement, and every post filter, on the demo DB."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from trainer_core.danbooru.db_reader import open_db
from trainer_core.dataset.filters import IMAGE_EXTS, PostFilters, parse_ratings
from trainer_core.dataset.selection import (
    PRESETS,
    IdRange,
    SelectionPlan,
    estimate,
    parse_range,
    sample_ids,
    select_posts,
)
from trainer_core.errors import KxlError


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory):
    from trainer_core.danbooru.demo_db import generate_demo_db

    path = tmp_path_factory.mktemp("seldb") / "d.db"
    generate_demo_db(path, 600, 3)
    return path


@pytest.fixture(scope="module")
def raw(demo_db):
    conn = sqlite3.connect(demo_db)
    rows = conn.execute(
        "SELECT id, is_deleted, is_banned, file_url, file_ext, rating, score, fav_count FROM post"
    ).fetchall()
    rel = conn.execute(
        "SELECT r.post_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
    ).fetchall()
    tags: dict[int, set] = {}
    for pid, name in rel:
        tags.setdefault(pid, set()).add(name)
    return rows, tags


ALL = SelectionPlan((IdRange(0),), seed=1)


def ids_of(demo_db, filters, plan=ALL):
    return select_posts(open_db(demo_db), plan, filters, demo_db).ids.tolist()


def test_default_filters_are_the_cards(demo_db, raw):
    rows, _ = raw
    expected = sorted(r[0] for r in rows if not r[1] and not r[2] and r[3] and r[4].lower() in IMAGE_EXTS)
    got = ids_of(demo_db, PostFilters())
    assert got == expected
    assert len(got) < len(rows)  # the demo has deleted/banned/gold-only/gif posts


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        (PostFilters.none(), lambda r, t: True),
        (PostFilters(skip_deleted=True, skip_banned=False, images_only=False), lambda r, t: not r[1]),
        (
            PostFilters(skip_deleted=False, skip_banned=True, images_only=False),
            lambda r, t: not r[2] and r[3],
        ),
        (
            PostFilters(skip_deleted=False, skip_banned=False, images_only=True),
            lambda r, t: r[4] in ("jpg", "png", "webp"),
        ),
        (PostFilters.none().__class__(False, False, False, ratings=(0, 3)), lambda r, t: r[5] in (0, 3)),
        (PostFilters(False, False, False, min_score=20), lambda r, t: r[6] >= 20),
        (PostFilters(False, False, False, min_fav_count=30), lambda r, t: r[7] >= 30),
        (
            PostFilters(False, False, False, tags_any=("1girl", "1boy")),
            lambda r, t: bool(t & {"1girl", "1boy"}),
        ),
        (PostFilters(False, False, False, tags_all=("1girl", "solo")), lambda r, t: {"1girl", "solo"} <= t),
        (
            PostFilters(False, False, False, tags_none=("1girl", "highres")),
            lambda r, t: not t & {"1girl", "highres"},
        ),
        (PostFilters(False, False, False, tags_all=("long hair",)), lambda r, t: "long_hair" in t),
    ],
)
def test_each_filter(demo_db, raw, filters, keep):
    rows, tags = raw
    expected = sorted(r[0] for r in rows if keep(r, tags.get(r[0], set())))
    got = ids_of(demo_db, filters)
    assert got == expected
    assert 0 < len(got) <= len(rows)


def test_unknown_tag_suggests_closest(demo_db):
    with pytest.raises(KxlError) as err:
        ids_of(demo_db, PostFilters(tags_any=("long_hari",)))
    assert "unknown tag 'long_hari'" in str(err.value) and "long_hair" in str(err.value)


def test_sampling_is_seeded_without_replacement_and_sorted():
    pop = np.arange(10, 5000, 3)
    a = sample_ids(pop, 100, 7)
    assert a.tolist() == sample_ids(pop[::-1].copy(), 100, 7).tolist()  # row order does not matter
    assert len(set(a.tolist())) == 100 and set(a.tolist()) <= set(pop.tolist())
    assert a.tolist() == sorted(a.tolist())
    assert a.tolist() != sample_ids(pop, 100, 8).tolist()
    assert sample_ids(pop, 10_000, 7).tolist() == pop.tolist()
    # a bigger sample contains the smaller one (smallest keys first)
    assert set(a.tolist()) <= set(sample_ids(pop, 200, 7).tolist())


def test_plan_counts_and_preset(demo_db):
    plan = SelectionPlan(
        (IdRange(0, 3_000_000, 20), IdRange(3_000_000, 5_000_000, 10), IdRange(5_000_000)), 1
    )
    sel = select_posts(open_db(demo_db), plan, PostFilters(), demo_db)
    assert [r.selected for r in sel.ranges[:2]] == [20, 10]
    assert sel.ranges[2].selected == sel.ranges[2].matching
    ids = sel.ids
    assert ((ids < 3_000_000).sum(), ((ids >= 3_000_000) & (ids < 5_000_000)).sum()) == (20, 10)
    assert [(r.matching, r.selected) for r in estimate(open_db(demo_db), plan, PostFilters())] == [
        (r.matching, r.selected) for r in sel.ranges
    ]
    card = PRESETS["kohaku-xl-delta"]
    assert [(r.start, r.stop, r.count) for r in card.ranges] == [
        (0, 3_000_000, 1_000_000),
        (3_000_000, 5_000_000, 1_000_000),
        (5_000_000, None, None),
    ]


def test_parse_range_and_bad_plans():
    assert parse_range("0:3000000=1000000") == IdRange(0, 3_000_000, 1_000_000)
    assert parse_range("5_000_000:=all") == IdRange(5_000_000, None, None)
    assert parse_range("10:20") == IdRange(10, 20, None)
    with pytest.raises(KxlError, match="bad id range"):
        parse_range("a:b")
    with pytest.raises(KxlError, match="overlap"):
        SelectionPlan((IdRange(0, 100), IdRange(50, 200)))
    with pytest.raises(KxlError, match="end must be above"):
        SelectionPlan((IdRange(100, 50),))
    assert parse_ratings("g,e") == (0, 3) and parse_ratings("1,questionable") == (1, 2)
    with pytest.raises(KxlError, match="unknown rating"):
        parse_ratings("x")
