"""HakuBooru caption rules (specs/dataset.md §3), including the §3.9 examples as test vectors."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from trainer_core.danbooru.db_reader import fetch_post_columns, fetch_tag_chunk, open_db
from trainer_core.danbooru.schema import POST_COLUMNS, create_schema
from trainer_core.dataset.captions import (
    CaptionBuilder,
    make_caption,
    quality_scheme,
    year_of,
    year_tag_index,
)
from trainer_core.dataset.captions_export import write_captions_jsonl
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.selection import PRESETS

G, A, C, CP, M = 0, 1, 2, 3, 4  # HakuBooru tag types

# (id, created_at, rating, fav, [(tag, type), ...] in relation order, expected hakubooru caption)
SPEC_POSTS = [
    (
        5_000_000,
        "2021-03-04T10:00:00.000-05:00",
        0,
        30,
        [
            ("looking_at_viewer", G),
            ("long_hair", G),
            ("1girl", G),
            ("solo", G),
            ("^_^", G),
            ("o_o", G),
            (":d", G),
            ("<|>_<|>", G),
            ("rice_shower_(umamusume)", C),
            ("umamusume", CP),
            ("kohaku_(artist)", A),
            ("highres", M),
            ("commentary_request", M),
            ("absurdres", M),
            ("photoshop_(medium)", M),
        ],
        "1girl, rice shower (umamusume), umamusume, kohaku (artist), |||looking at viewer, long hair, solo, ^_^, "
        "o_o, :d, <|> <|>, highres, absurdres, newest, safe, masterpiece",
    ),
    (
        7_600_000,
        "2024-05-19T01:30:25.096-04:00",
        3,
        500,
        [("male_focus", G), ("1boy", G), ("banned_artist", A), ("kohaku_(artist)", A), ("highres", M)],
        "male focus, 1boy, kohaku (artist), |||highres, newest, explicit, nsfw",
    ),
    (
        123,
        "2005-06-01T00:00:00.000-04:00",
        2,
        8,
        [("2girls", G), ("multiple_girls", G), ("1girl", G)],
        "2girls, multiple girls, 1girl, |||old, nsfw, worst quality",
    ),
    (124, "unknown", 1, 9, [], ", |||early, sensitive, normal quality"),
    (125, "2025-01-01T00:00:00.000-05:00", 1, 57, [("solo", G)], ", |||solo, sensitive, masterpiece"),
]


def make_db(path, posts) -> None:
    """A HakuBooru-schema DB holding `posts`; relation rows inserted in the listed order."""
    conn = sqlite3.connect(path)
    create_schema(conn)
    tag_ids: dict[str, int] = {}
    for pid, created, rating, fav, tags, *_ in posts:
        row = {c[0]: 0 for c in POST_COLUMNS}
        row.update(
            id=pid,
            created_at=created,
            rating=rating,
            fav_count=fav,
            score=fav,
            source="",
            file_ext="jpg",
            file_url=f"https://x/{pid}.jpg",
            updated_at="",
            image_width=100,
            image_height=80,
        )
        conn.execute(
            f"INSERT INTO post VALUES ({', '.join('?' * len(POST_COLUMNS))})",
            [row[c[0]] for c in POST_COLUMNS],
        )
        for name, ttype in tags:
            if name not in tag_ids:
                # tag ids in reverse insertion order: relation order must not be tag-id order
                tag_ids[name] = 1000 - len(tag_ids)
                conn.execute("INSERT INTO tag VALUES (?, ?, ?, 0)", (tag_ids[name], name, ttype))
            conn.execute("INSERT INTO posttagrelation (post_id, tag_id) VALUES (?, ?)", (pid, tag_ids[name]))
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def spec_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("capdb") / "spec.db"
    make_db(path, SPEC_POSTS)
    return path


@pytest.mark.parametrize("post", SPEC_POSTS, ids=[str(p[0]) for p in SPEC_POSTS])
def test_spec_examples_reference(post):
    pid, created, rating, fav, tags, expected = post
    assert make_caption(pid, rating, fav, created, tags, quality_scheme("hakubooru")) == expected


def test_spec_examples_bulk_builder_matches(spec_db):
    conn = open_db(spec_db)
    ids = np.array(sorted(p[0] for p in SPEC_POSTS))
    chunk = CaptionBuilder(quality_scheme("hakubooru")).build(
        conn, fetch_post_columns(conn, ids), fetch_tag_chunk(conn, ids)
    )
    expected = {p[0]: p[5] for p in SPEC_POSTS}
    assert chunk.captions == [expected[i] for i in ids.tolist()]
    # the clustered and index read paths give the same tags
    a, b = fetch_tag_chunk(conn, ids), fetch_tag_chunk(conn, ids, allow_clustered=False)
    assert a.counts.tolist() == b.counts.tolist() and a.tag_ids.tolist() == b.tag_ids.tolist()


def test_card_quality_uses_legacy_thresholds_and_7m_cutoff():
    card = quality_scheme("card")
    # spec §3.9: fav 30 on a general post is "best quality" with the legacy (card) table: 22 < 30 <= 37
    assert card.label(5_000_000, 0, 30) == "best quality"
    assert card.label(7_000_001, 0, 30) is None and card.label(7_000_000, 0, 30) == "best quality"
    hb = quality_scheme("hakubooru")
    assert hb.label(7_500_000, 0, 30) == "masterpiece" and hb.label(7_500_001, 0, 30) is None
    # resolved minimums (spec §3.7 table), explicit rating: card masterpiece needs >= 263, hakubooru >= 191
    assert card.label(1, 3, 263) == "masterpiece" and card.label(1, 3, 262) == "best quality"
    assert hb.label(1, 3, 191) == "masterpiece" and hb.label(1, 3, 190) == "best quality"
    assert card.label(1, 1, 2) == "worst quality" and card.label(1, 1, 3) == "low quality"


def test_vectorised_quality_matches_scalar():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 8_000_000, 2000)
    rating = rng.integers(0, 4, 2000)
    fav = rng.integers(0, 400, 2000)
    for mode in ("card", "hakubooru"):
        scheme = quality_scheme(mode)
        vec = scheme.label_indices(ids, rating, fav).tolist()
        ref = [scheme.label_index(int(i), int(r), int(f)) for i, r, f in zip(ids, rating, fav, strict=True)]
        assert vec == [-1 if r is None else r for r in ref]


def test_db_quality_mode_uses_db_percentiles(tmp_path):
    posts = [(i, "2020-01-01T00:00:00.000-05:00", 0, i, [("solo", G)]) for i in range(1, 101)]
    make_db(tmp_path / "q.db", posts)
    scheme = quality_scheme("db", open_db(tmp_path / "q.db"))
    # favs 1..100, numpy linear percentiles P95 = 95.05, P10 = 10.9
    assert scheme.thresholds[0][0] == pytest.approx(95.05)
    assert scheme.thresholds[0][-1] == pytest.approx(10.9)
    assert scheme.label(50, 0, 96) == "masterpiece" and scheme.label(50, 0, 95) == "best quality"
    assert scheme.label(50, 0, 10) == "worst quality"


@pytest.mark.parametrize(
    ("created", "year", "tag"),
    [
        ("2010-12-31T23:59:59.000-05:00", 2010, "old"),
        ("2011-01-01T00:00:00.000-05:00", 2011, "early"),
        ("2004-01-01T00:00:00.000-05:00", 2004, "early"),  # HakuBooru's bug: before 2005 is "early"
        ("", 0, "early"),
        ("0000-00-00T00:00:00.000+00:00", 0, "early"),
        ("2017-06-01T00:00:00.000-04:00", 2017, "mid"),
        ("2020-06-01T00:00:00.000-04:00", 2020, "recent"),
        ("2024-12-31T23:00:00.000-05:00", 2024, "newest"),  # the offset in the string counts, not UTC
        ("2025-01-01T00:00:00.000-05:00", 2025, None),
    ],
)
def test_year_rule(created, year, tag):
    assert year_of(created) == year
    idx = year_tag_index(year)
    assert (None if idx is None else ("old", "early", "mid", "recent", "newest")[idx]) == tag


def test_meta_blacklist_underscores_and_unknown_type():
    tags = [
        ("bad_hands", G),
        ("translated", M),
        ("md5_mismatch", M),
        ("lowres", M),
        ("jpeg_artifacts", M),
        ("t_k_g", A),
        ("video", M),
        ("____", G),
        ("x", 7),
    ]
    cap = make_caption(10, 0, 100, "2012-01-01T00:00:00.000-05:00", tags, quality_scheme("card"))
    assert cap == "t k g, |||bad hands, lowres, jpeg artifacts, early, safe, masterpiece"


def test_captions_jsonl_every_post_ordered(spec_db, tmp_path):
    import json

    out = tmp_path / "c.jsonl"
    n = write_captions_jsonl(spec_db, out, PRESETS["all"], PostFilters.none(), "hakubooru", threads=3)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == 5
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == sorted(p[0] for p in SPEC_POSTS)
    assert {r["id"]: r["caption"] for r in rows} == {p[0]: p[5] for p in SPEC_POSTS}
    assert list(rows[0]) == ["id", "caption"]


def test_years_of_matches_year_of_on_odd_strings():
    from trainer_core.dataset.captions import years_of

    cases = [
        "2024-05-19T01:30:25.096-04:00",
        "2024-02-29T01:30:25.096-04:00",  # leap day
        "2023-02-29T01:30:25.096-04:00",  # impossible date: not the fast path
        "2024-13-19T01:30:25.096-04:00",
        "2024-05-19T24:30:25.096-04:00",
        "2024-05-19T01:30:25.096-24:00",
        "0000-05-19T01:30:25.096-04:00",
        "2024-05-19 01:30:25.096-04:00",
        "2019-12-31T23:59:59.999+14:00",
        "unknown",
        "",
        "2024-05-19T01:30:25.096-04:0é",
    ]
    assert years_of(cases).tolist() == [year_of(c) for c in cases]


def test_process_and_thread_paths_match_reference(tmp_path):
    """Worker processes, reader threads and the per-post reference give the same captions, in id order."""
    from trainer_core.danbooru.demo_db import generate_demo_db
    from trainer_core.dataset.caption_stream import iter_caption_chunks

    db = tmp_path / "demo.db"
    generate_demo_db(db, 400, 3)
    conn = open_db(db)
    ids = np.array([r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")], np.int64)[::2]
    scheme = quality_scheme("card")
    expected = []
    for pid in ids.tolist():
        rating, fav, created = conn.execute(
            "SELECT rating, fav_count, created_at FROM post WHERE id = ?", (pid,)
        ).fetchone()
        tags = conn.execute(
            "SELECT t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE r.post_id = ? "
            "ORDER BY r.id",
            (pid,),
        ).fetchall()
        expected.append(make_caption(pid, rating, fav, created, tags, scheme))
    conn.close()
    by_process = [
        c for ch in iter_caption_chunks(db, ids, scheme, processes=2, chunk_posts=37) for c in ch.captions
    ]
    by_thread = [
        c
        for ch in iter_caption_chunks(db, ids, scheme, processes=0, threads=3, chunk_posts=50)
        for c in ch.captions
    ]
    assert by_process == by_thread == expected
    jsonl = b"".join(iter_caption_chunks(db, ids, scheme, processes=2, chunk_posts=64, jsonl=True)).decode()
    import json

    assert [json.loads(line)["caption"] for line in jsonl.splitlines()] == expected


def test_captions_file_from_prestarted_workers_matches_in_process(tmp_path, monkeypatch):
    """`kxl dataset captions` on a big DB starts its workers before selecting; the file must not change."""
    from trainer_core.danbooru.demo_db import generate_demo_db
    from trainer_core.dataset import caption_stream
    from trainer_core.dataset.captions_export import write_captions_jsonl
    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import PRESETS

    db = tmp_path / "demo.db"
    generate_demo_db(db, 300, 5)
    inproc = tmp_path / "a.jsonl"
    write_captions_jsonl(db, inproc, PRESETS["all"], PostFilters())  # small DB: no workers
    started = []
    real_init = caption_stream.CaptionWorkers.__init__

    def spy(self, n_proc):
        started.append(n_proc)
        real_init(self, n_proc)

    monkeypatch.setattr(caption_stream.CaptionWorkers, "__init__", spy)
    monkeypatch.setattr(caption_stream, "PRESTART_MIN_DB_BYTES", 0)
    monkeypatch.setattr(caption_stream, "PROCESS_MIN_POSTS", 1)
    by_workers = tmp_path / "b.jsonl"
    write_captions_jsonl(db, by_workers, PRESETS["all"], PostFilters())
    assert started == [caption_stream.default_processes(1)]  # started once, before selecting; reused
    assert by_workers.read_bytes() == inproc.read_bytes()


def test_preview_shows_exactly_the_exported_captions(spec_db):
    """The wizard's caption preview reads posts one by one through db_reader; it must show the export's caption
    byte for byte, and split it at `|||` into the kinds the preview colours."""
    from trainer_core.dataset.preview import KIND_EXTRA, preview_captions

    shown = preview_captions(spec_db, PRESETS["all"], PostFilters.none(), "hakubooru", n=5)
    assert {p.post_id: p.caption for p in shown} == {p[0]: p[5] for p in SPEC_POSTS}
    first = next(p for p in shown if p.post_id == 5_000_000)
    keep_text = ", ".join(text for text, _ in first.keep)
    assert first.caption.startswith(keep_text) and "|||" in first.caption
    assert [text for text, kind in first.rest if kind == KIND_EXTRA] == first.caption.split("|||")[1].split(
        ", "
    )[-3:]
