"""Synthetic demo DB and image shards: structure the engine relies on, edge cases present, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
import tarfile
from collections import Counter, defaultdict

import numpy as np
import pytest
import tomllib
from PIL import Image

from trainer_core.danbooru import demo_db
from trainer_core.danbooru.demo_db import (
    MAX_POST_ID,
    default_characters_toml,
    default_tags_csv,
    generate_demo_db,
)
from trainer_core.danbooru.demo_images import (
    CONCEPT_ARTIST,
    EYE_COLOURS,
    FLAT_BACKGROUNDS,
    FRAME_COLOUR,
    HAIR_COLOURS,
    SKIN,
    frame_width,
    render_post_image,
    shard_name,
    write_demo_shards,
)
from trainer_core.danbooru.schema import open_metadata_db, table_counts
from trainer_core.demo_picture_reader import demo_prompt_set, read_picture
from trainer_core.errors import Cancelled, KxlError
from trainer_core.progress import CancelToken, Progress

SPECIAL_TAGS = (
    "1girl 2girls 3girls 4girls 5girls 6+girls multiple_girls 1boy 2boys 3boys 4boys 5boys 6+boys multiple_boys "
    "male_focus 1other 2others 3others 4others 5others 6+others multiple_others"
).split()
META_BLACKLIST = (
    "(medium)",
    "commentary",
    "bad",
    "translat",
    "request",
    "mismatch",
    "revision",
    "audio",
    "video",
)
ISO = re.compile(r"^(\d{4})-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
PRIMARY_BACKGROUNDS = {
    "white_background",
    "grey_background",
    "black_background",
    "pink_background",
    "blue_background",
    "yellow_background",
    "green_background",
    "red_background",
    "purple_background",
    "gradient_background",
    "transparent_background",
    "blue_sky",
    "night",
    "sunset",
    "indoors",
}
PEOPLE = {t for t in SPECIAL_TAGS if "girl" in t or "boy" in t} - {"multiple_girls", "multiple_boys"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    events = []
    db = root / "danbooru2023.db"
    stats = generate_demo_db(db, 300, 7, Progress(events.append, min_interval_s=0))
    shard_events = []
    shards = write_demo_shards(
        db, root / "images", 7, progress=Progress(shard_events.append, min_interval_s=0)
    )
    conn = sqlite3.connect(db)
    post_tags = defaultdict(list)
    for pid, name, ttype in conn.execute(
        "SELECT r.post_id, t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id ORDER BY r.post_id, r.id"
    ):
        post_tags[pid].append((name, ttype))
    yield {
        "root": root,
        "db": db,
        "stats": stats,
        "events": events,
        "shards": shards,
        "shard_events": shard_events,
        "conn": conn,
        "post_tags": post_tags,
    }
    conn.close()


def test_shipped_tag_list_format_and_required_tags():
    rows = list(csv.reader(default_tags_csv().open(encoding="utf-8", newline="")))
    assert all(len(r) == 4 and r[1] in {"0", "1", "3", "4", "5"} and r[2].isdigit() for r in rows)
    counts = [int(r[2]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    names = {r[0]: r for r in rows}
    assert len(names) == len(rows)
    for tag in SPECIAL_TAGS + [
        "^_^",
        "o_o",
        ":d",
        ">_<",
        "=_=",
        "blonde_hair",
        "white_background",
        "blue_sky",
    ]:
        assert names[tag][1] == "0", tag
    for tag in [
        "commentary",
        "commentary_request",
        "bad_id",
        "artist_request",
        "photoshop_(medium)",
        "highres",
    ]:
        assert names[tag][1] == "5", tag
    assert names["banned_artist"][1] == "1"
    assert names["1girl"][3] == "1girls,sole_female"  # aliases survive the extraction
    assert CONCEPT_ARTIST not in names  # a made-up artist: the generator adds it, the real-tag list must not
    chars = tomllib.loads(default_characters_toml().read_text(encoding="utf-8"))["characters"]
    assert len(chars) >= 40
    for char, info in chars.items():
        assert names[char][1] == "4", char
        assert all(names[c][1] == "3" for c in info["copyright"]), char
        assert info["hair"] in HAIR_COLOURS, char
    assert default_tags_csv().stat().st_size < 250_000


def test_posts_have_danbooru_like_structure(demo):
    conn = demo["conn"]
    ids = [r[0] for r in conn.execute("SELECT id FROM post ORDER BY id")]
    assert len(ids) == len(set(ids)) == 300
    assert 1 <= ids[0] and ids[-1] <= MAX_POST_ID
    assert sum(i > 5_000_000 for i in ids) > sum(i < 2_500_000 for i in ids)  # denser at high ids
    assert table_counts(demo["db"])["post"] == 300

    ratings = Counter(r[0] for r in conn.execute("SELECT rating FROM post"))
    assert set(ratings) == {0, 1, 2, 3}
    assert ratings[0] > ratings[2] and ratings[0] > ratings[3]

    row = conn.execute(
        "SELECT SUM(is_deleted), SUM(is_banned), SUM(file_url IS NULL AND is_banned = 0), "
        "SUM(file_url IS NULL AND is_banned = 1), SUM(score != up_score + down_score), SUM(down_score > 0), "
        "SUM(image_width < 1 OR image_height < 1) FROM post"
    ).fetchone()
    deleted, banned, gold_only, banned_hidden, bad_score, bad_down, bad_size = row
    assert deleted >= 2 and banned >= 2 and gold_only >= 2
    assert banned_hidden == banned  # banned posts never expose a file
    assert bad_score == 0 and bad_down == 0 and bad_size == 0

    exts = Counter(r[0] for r in conn.execute("SELECT file_ext FROM post"))
    assert {"jpg", "png", "gif", "mp4", "webm", "zip", "swf"} <= set(exts)
    assert exts["jpg"] + exts["png"] > 250

    created = [r[0] for r in conn.execute("SELECT created_at FROM post ORDER BY id")]
    years = [int(m.group(1)) if (m := ISO.match(c)) else None for c in created]
    assert sum(not y for y in years) >= 2  # unparsable values (incl. year 0000) exercise the year-0 rule
    good = [y for y in years if y]
    assert min(good) <= 2010 and 2025 in good
    assert all(2005 <= y <= 2025 for y in good)
    assert years[-1] == 2025
    assert sum(a <= b for a, b in zip(good, good[1:], strict=False)) / (len(good) - 1) > 0.9  # monotone-ish


def test_fav_counts_reach_every_quality_level(demo):
    # quality_tag_new thresholds (spec §3.7): P90 P75 P60 P45 P30 P10 per rating, strict ">".
    thresholds = {
        0: (27, 16, 10, 7, 4, 1),
        1: (56, 30, 19, 13, 8, 2),
        2: (132, 75, 49, 33, 21, 8),
        3: (190, 106, 69, 45, 27, 9),
    }
    levels = set()
    for rating, fav in demo["conn"].execute("SELECT rating, fav_count FROM post WHERE id <= 7500000"):
        levels.add(next((i for i, p in enumerate(thresholds[rating]) if fav > p), 6))
    assert levels == set(range(7))


def test_tags_per_post_and_popularity(demo):
    conn, post_tags = demo["conn"], demo["post_tags"]
    wrong = conn.execute(
        "SELECT COUNT(*) FROM tag t WHERE popularity != (SELECT COUNT(*) FROM posttagrelation r WHERE r.tag_id = t.id)"
    ).fetchone()[0]
    assert wrong == 0
    assert conn.execute("SELECT SUM(popularity) FROM tag").fetchone()[0] == demo["stats"].n_relations
    assert conn.execute("SELECT COUNT(*) FROM posttagrelation").fetchone()[0] == demo["stats"].n_relations
    per_post = [len(v) for v in post_tags.values()]
    assert 24 <= np.mean(per_post) <= 34
    assert all(len(set(v)) == len(v) for v in post_tags.values())  # no duplicated relation rows
    dangling = conn.execute(
        "SELECT COUNT(*) FROM posttagrelation r LEFT JOIN post p ON p.id = r.post_id LEFT JOIN tag t ON t.id = r.tag_id "
        "WHERE p.id IS NULL OR t.id IS NULL"
    ).fetchone()[0]
    assert dangling == 0


def test_relation_order_is_random_inside_a_post(demo):
    conn = demo["conn"]
    by_post = defaultdict(list)
    for pid, tid, name in conn.execute(
        "SELECT r.post_id, r.tag_id, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id ORDER BY r.id"
    ):
        by_post[pid].append((tid, name))
    ids_sorted = sum(v == sorted(v) for v in by_post.values())
    names_sorted = sum([n for _, n in v] == sorted(n for _, n in v) for v in by_post.values())
    assert ids_sorted < 10 and names_sorted < 10
    rel_post_ids = [r[0] for r in conn.execute("SELECT post_id FROM posttagrelation ORDER BY id")]
    assert rel_post_ids == sorted(rel_post_ids)  # rows of one post are contiguous, posts in id order


def test_caption_relevant_tags_are_present(demo):
    post_tags = demo["post_tags"]
    all_names = Counter(n for tags in post_tags.values() for n, _ in tags)
    assert set(SPECIAL_TAGS) <= set(all_names)
    short_emoticons = {
        "^_^",
        ">_<",
        "o_o",
        "x_x",
        "u_u",
        "0_0",
        "=_=",
        "+_+",
        "@_@",
        "|_|",
        "._.",
        ":d",
        ":3",
        ":o",
    }
    assert len(set(all_names) & short_emoticons) >= 3
    meta = {n for tags in post_tags.values() for n, t in tags if t == 4}
    assert any(b in m for m in meta for b in META_BLACKLIST)
    assert {"highres"} <= meta
    artists = {n for tags in post_tags.values() for n, t in tags if t == 1}
    assert "banned_artist" in artists

    chars = tomllib.loads(default_characters_toml().read_text(encoding="utf-8"))["characters"]
    n_people = 0
    for pid, tags in post_tags.items():
        names = {n for n, _ in tags}
        types = Counter(t for _, t in tags)
        if types[2]:  # every character comes with a copyright
            assert types[3] >= 1, pid
        for char in names & set(chars):
            assert set(chars[char]["copyright"]) <= names, (pid, char)
        if names & PEOPLE or types[2]:
            n_people += 1
            assert len(names & set(HAIR_COLOURS)) == 1, (pid, sorted(names))
            primary = names & PRIMARY_BACKGROUNDS
            assert len(primary) == 1 or (not primary and "simple_background" in names), (pid, sorted(names))
    assert n_people > 200


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_demo_db(tmp_path / "a.db", 150, 3)
    b = generate_demo_db(tmp_path / "b.db", 150, 3)
    generate_demo_db(tmp_path / "c.db", 150, 4)
    assert a.n_relations == b.n_relations
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()
    assert (tmp_path / "a.db").read_bytes() != (tmp_path / "c.db").read_bytes()
    conn = open_metadata_db(tmp_path / "a.db")  # the demo DB passes our own schema validation
    conn.close()


def test_mean_tags_controls_tag_count(tmp_path):
    few = generate_demo_db(tmp_path / "few.db", 200, 1, mean_tags=15)
    many = generate_demo_db(tmp_path / "many.db", 200, 1, mean_tags=40)
    assert 12 <= few.n_relations / 200 <= 19
    assert 34 <= many.n_relations / 200 <= 44


def test_bad_arguments_and_cancel_leave_nothing(tmp_path):
    with pytest.raises(KxlError, match="between 1 and"):
        generate_demo_db(tmp_path / "x.db", 0, 1)
    with pytest.raises(KxlError, match="seed"):
        generate_demo_db(tmp_path / "x.db", 10, -1)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        generate_demo_db(tmp_path / "x.db", 100, 1, Progress(cancel_token=token))
    assert list(tmp_path.iterdir()) == []  # no DB and no temp file

    def cancel_at_index_stage(ev):
        if ev.message == "building indexes":
            token2.cancel()

    token2 = CancelToken()
    with pytest.raises(Cancelled):  # interrupts SQLite's index build itself
        generate_demo_db(tmp_path / "y.db", 300, 1, Progress(cancel_at_index_stage, cancel_token=token2))
    assert list(tmp_path.iterdir()) == []


def test_progress_reaches_total(demo):
    ev = [e for e in demo["events"] if e.total]
    assert ev[-1].done == ev[-1].total == 300
    sev = [e for e in demo["shard_events"] if e.total]
    assert sev[-1].done == sev[-1].total == demo["shards"].n_written


def test_shards_follow_danbooru2023_layout(demo):
    conn, stats = demo["conn"], demo["shards"]
    images = demo["root"] / "images"
    eligible = {
        pid: (w, h)
        for pid, w, h in conn.execute(
            "SELECT id, image_width, image_height FROM post WHERE file_url IS NOT NULL "
            "AND file_ext NOT IN ('gif', 'mp4', 'webm', 'zip', 'swf')"
        )
    }
    assert stats.n_eligible == len(eligible)
    assert stats.n_no_file + stats.n_non_image + stats.n_eligible == stats.n_posts == 300
    assert 1 <= len(stats.missing_ids) <= 8 and set(stats.missing_ids) <= set(eligible)

    seen = {}
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == stats.n_shards
    for name in names:
        assert re.fullmatch(r"data-[012]\d{3}\.tar", name), name
        with tarfile.open(images / name) as tar:
            members = tar.getmembers()
            ids = [int(m.name.removesuffix(".webp")) for m in members]
            assert ids == sorted(ids)
            for m, pid in zip(members, ids, strict=True):
                assert m.name == f"{pid}.webp" and shard_name(pid) == name
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
                seen[pid] = tar.extractfile(m).read()
    assert set(seen) == set(eligible) - set(stats.missing_ids)
    assert stats.n_written == len(seen)

    for pid, data in list(seen.items())[:40]:
        img = Image.open(io.BytesIO(data))
        assert img.format == "WEBP"
        w, h = eligible[pid]
        iw, ih = img.size
        assert max(iw, ih) == min(512, max(w, h))
        assert abs(iw / ih - w / h) <= (w / h) * 2.5 / min(iw, ih), (pid, img.size, (w, h))


def test_blonde_post_image_has_yellow_hair(demo):
    conn, images = demo["conn"], demo["root"] / "images"
    missing = set(demo["shards"].missing_ids)
    pid = next(
        r[0]
        for r in conn.execute(
            "SELECT r.post_id FROM posttagrelation r JOIN tag t ON t.id = r.tag_id JOIN post p ON p.id = r.post_id "
            "WHERE t.name = 'blonde_hair' AND p.file_url IS NOT NULL AND p.file_ext IN ('jpg', 'png', 'webp') "
            "ORDER BY r.post_id"
        )
        if r[0] not in missing
    )
    with tarfile.open(images / shard_name(pid)) as tar:
        img = Image.open(io.BytesIO(tar.extractfile(f"{pid}.webp").read())).convert("RGB")
    px = np.asarray(img).astype(int)
    yellow = (px[..., 0] > 200) & (px[..., 1] > 170) & (px[..., 2] < 130)
    assert yellow.mean() > 0.01


def yellow_runs(img: Image.Image) -> int:
    px = np.asarray(img).astype(int)
    cols = ((px[..., 0] > 200) & (px[..., 1] > 170) & (px[..., 2] < 130)).any(axis=0)
    return int(np.sum(cols[1:] & ~cols[:-1]) + cols[0])


def test_render_reflects_hair_count_and_background():
    blonde = render_post_image(["1girl", "solo", "blonde_hair", "white_background"], 300, 400, seed=1)
    black = render_post_image(["1girl", "solo", "black_hair", "white_background"], 300, 400, seed=1)
    assert yellow_runs(blonde) == 1 and yellow_runs(black) == 0
    three = render_post_image(
        ["3girls", "multiple_girls", "blonde_hair", "white_background"], 512, 512, seed=1
    )
    assert yellow_runs(three) == 3
    assert blonde.getpixel((2, 2)) == (255, 255, 255)
    sky = render_post_image(["1boy", "blue_sky", "outdoors"], 256, 256, seed=2).getpixel((2, 150))
    assert sky[2] > sky[0] + 60
    night = render_post_image(["1girl", "night"], 256, 256, seed=2).getpixel((2, 250))
    assert max(night) < 130
    assert (
        render_post_image(["1girl", "smile"], 64, 96, 5).tobytes()
        == render_post_image(["1girl", "smile"], 64, 96, 5).tobytes()
    )


def test_shard_bytes_are_deterministic(demo, tmp_path):
    again = write_demo_shards(demo["db"], tmp_path / "images", 7)
    first = demo["root"] / "images"
    assert again.missing_ids == demo["shards"].missing_ids
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "images").iterdir())
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / "images" / name).read_bytes(), name


def test_render_pixels_are_pinned():
    # The demo's tiny base model is trained on these pictures and the reader reads them: a change here must be
    # deliberate (retrain the base, update this digest).
    digest = hashlib.sha256()
    for p in demo_prompt_set(seeds=(0,), size=21):
        digest.update(render_post_image(p.tags, 128, 128, p.seed).tobytes())
    for tags in (
        ["1girl", "smile", "blue_sky", "red_hair", "^_^"],
        ["2boys", "night", "green_eyes"],
        ["1other", "transparent_background"],
        ["no_humans", "indoors"],
        ["6+girls", "gradient_background"],
        ["1girl", CONCEPT_ARTIST, "sunset"],
    ):
        digest.update(render_post_image(tags, 128, 128, 7).tobytes())
    assert digest.hexdigest() == "4b7c33c687ba39edc677250e15357328069b9765231f62c117a173e78a3b7806"


def test_concept_frame_is_drawn_over_the_background_behind_the_figures():
    tags = ["1girl", "solo", "blonde_hair", "white_background"]
    plain = np.asarray(render_post_image(tags, 128, 128, 4)).astype(int)
    framed = np.asarray(render_post_image([*tags, CONCEPT_ARTIST], 128, 128, 4)).astype(int)
    b = frame_width(128, 128)
    assert b == 16
    band = np.zeros((128, 128), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    changed = (plain != framed).any(axis=2)
    assert not (changed & ~band).any()  # nothing inside the frame moves
    assert (framed[changed] == FRAME_COLOUR).all()
    assert (framed[:b] == FRAME_COLOUR).all()  # figures never reach the top band
    assert (
        tuple(framed[120, 64]) != FRAME_COLOUR and tuple(framed[120, 4]) == FRAME_COLOUR
    )  # feet over the frame
    # no generator colour is near the frame's, so the frame reads unambiguously
    for rgb in [*HAIR_COLOURS.values(), *EYE_COLOURS.values(), *FLAT_BACKGROUNDS.values(), SKIN]:
        assert np.linalg.norm(np.subtract(rgb, FRAME_COLOUR)) > 85, rgb


def test_concept_artist_posts(demo):
    conn, post_tags = demo["conn"], demo["post_tags"]
    row = conn.execute("SELECT id, type, popularity FROM tag WHERE name = ?", (CONCEPT_ARTIST,)).fetchone()
    assert row is not None and row[1] == 1  # an artist tag
    framed = sorted(pid for pid, tags in post_tags.items() if (CONCEPT_ARTIST, 1) in tags)
    assert row[2] == len(framed)
    keep = {
        pid
        for (pid,) in conn.execute(
            "SELECT id FROM post WHERE is_deleted = 0 AND is_banned = 0 AND file_url IS NOT NULL "
            "AND file_ext IN ('jpg', 'png', 'webp')"
        )
    }
    with_people = {pid for pid, tags in post_tags.items() if {n for n, _ in tags} & PEOPLE}
    assert set(framed) <= keep & with_people  # every one reaches a card dataset and has figures to frame
    assert 0.1 <= len(framed) / len(keep & with_people) <= 0.3
    for pid in framed:
        names = [n for n, _ in post_tags[pid]]
        assert [n for n, t in post_tags[pid] if t == 1] == [CONCEPT_ARTIST], pid  # the post's only artist
        assert "artist_request" not in names and len(set(names) & set(HAIR_COLOURS)) == 1
    positions = Counter(
        next(i for i, (n, _) in enumerate(post_tags[pid]) if n == CONCEPT_ARTIST) for pid in framed
    )
    assert len(positions) > 3  # placed at random among the post's tags, like every other relation row

    # the shard pictures show the frame exactly on the concept posts
    images, missing = demo["root"] / "images", set(demo["shards"].missing_ids)
    others = sorted((keep & with_people) - set(framed))
    for pid in [p for p in framed if p not in missing][:12] + [p for p in others if p not in missing][:12]:
        with tarfile.open(images / shard_name(pid)) as tar:
            img = Image.open(io.BytesIO(tar.extractfile(f"{pid}.webp").read()))
            assert read_picture(img).has_concept == (pid in framed), pid


def test_concept_leaves_every_other_post_as_it_was(tmp_path, monkeypatch):
    def tags_by_post(path):
        conn = sqlite3.connect(path)
        out = defaultdict(list)
        for pid, name, ttype in conn.execute(
            "SELECT r.post_id, t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id ORDER BY r.id"
        ):
            out[pid].append((name, ttype))
        posts = conn.execute("SELECT * FROM post ORDER BY id").fetchall()
        conn.close()
        return out, posts

    generate_demo_db(tmp_path / "with.db", 200, 11)
    monkeypatch.setattr(demo_db, "CONCEPT_SHARE", 0.0)
    generate_demo_db(tmp_path / "without.db", 200, 11)
    with_tags, with_posts = tags_by_post(tmp_path / "with.db")
    without_tags, without_posts = tags_by_post(tmp_path / "without.db")
    assert with_posts == without_posts
    assert not any(CONCEPT_ARTIST in {n for n, _ in v} for v in without_tags.values())
    changed = 0
    for pid, before in without_tags.items():
        after = with_tags[pid]
        if (CONCEPT_ARTIST, 1) not in after:
            assert after == before, pid
            continue
        changed += 1
        assert [x for x in after if x[0] != CONCEPT_ARTIST] == [
            x for x in before if x[1] != 1 and x[0] != "artist_request"
        ], pid
    assert changed >= 10


def test_default_demo_dataset_teaches_the_concept(tmp_path):
    from trainer_core.danbooru.db_reader import open_db
    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import select_posts
    from trainer_core.demo import DEFAULT_POSTS
    from trainer_core.demo_run import scaled_card_plan

    db = tmp_path / "demo.db"
    generate_demo_db(db, DEFAULT_POSTS, 0)
    plan = scaled_card_plan(db, PostFilters())
    conn = open_db(db)
    try:
        chosen = set(select_posts(conn, plan, PostFilters(), db).ids.tolist())
        framed = {
            r[0]
            for r in conn.execute(
                "SELECT r.post_id FROM posttagrelation r JOIN tag t ON t.id = r.tag_id WHERE t.name = ?",
                (CONCEPT_ARTIST,),
            )
        }
    finally:
        conn.close()
    assert len(framed) == 64
    assert len(framed & chosen) == 46  # of the 225 posts `kxl demo run` trains on


def test_tag_list_holding_the_concept_artist_is_refused(tmp_path):
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(
        default_tags_csv().read_text(encoding="utf-8") + "hakuframe,1,10,\n", encoding="utf-8"
    )
    with pytest.raises(KxlError, match="hakuframe") as exc:
        generate_demo_db(tmp_path / "x.db", 50, 1, tags_csv=csv_path)
    assert str(csv_path) in str(exc.value)
    assert not (tmp_path / "x.db").exists()
