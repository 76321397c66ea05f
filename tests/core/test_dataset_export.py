"""Dataset export: kohya layout, manifest, determinism across thread counts, resume, and bad input."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from support import interrupted_build, write_tar
from test_dataset_captions import make_db  # noqa: E402 - pytest puts tests/core on sys.path

from trainer_core.cli import main as kxl_main
from trainer_core.dataset.captions import make_caption, quality_scheme
from trainer_core.dataset.export import BuildOptions, PartialBuildError, build_dataset
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.selection import PRESETS, IdRange, SelectionPlan
from trainer_core.dataset.stats import dataset_stats
from trainer_core.errors import DatabaseError, KxlError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from trainer_core.demo import init_demo

    root = tmp_path_factory.mktemp("dsdemo")
    ws = init_demo(root / "ws", posts=150, seed=0, models=False)
    return ws.db_path, ws.images_path


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def opts(demo, out, **kw):
    db, images = demo
    return BuildOptions(db=db, images=images, out=out, plan=PRESETS["kohaku-xl-delta"], **kw)


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ds"
    result = build_dataset(opts(demo, out), workers=1)
    return out, result


def test_layout_manifest_and_captions(demo, reference):
    out, result = reference
    db, images = demo
    files = tree(out)
    assert {"kxl-dataset.toml", "sd-scripts-dataset.toml", "manifest.jsonl", "skipped.jsonl"} <= set(files)
    assert "dataset.toml" not in files  # the sd-scripts name is left to sd-scripts configs
    assert not (out / ".kxl-build").exists()
    manifest = [json.loads(line) for line in files["manifest.jsonl"].decode().splitlines()]
    assert [m["id"] for m in manifest] == sorted(m["id"] for m in manifest)
    assert list(manifest[0]) == [
        "id",
        "file",
        "caption",
        "rating",
        "quality",
        "year",
        "width",
        "height",
        "shard",
        "bytes",
    ]
    conn = sqlite3.connect(db)
    scheme = quality_scheme("card")
    for m in manifest[:40]:
        pid = m["id"]
        rating, fav, created = conn.execute(
            "SELECT rating, fav_count, created_at FROM post WHERE id = ?", (pid,)
        ).fetchone()
        tags = conn.execute(
            "SELECT t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
            "WHERE r.post_id = ? ORDER BY r.id",
            (pid,),
        ).fetchall()
        assert m["caption"] == make_caption(pid, rating, fav, created, tags, scheme)
        assert files[f"1_kxl/{pid}.txt"] == m["caption"].encode("utf-8")
        assert m["file"] == f"1_kxl/{pid}.webp"
        with tarfile.open(images / m["shard"]) as tar:  # the shard bytes, unchanged
            assert tar.extractfile(f"{pid}.webp").read() == files[m["file"]]
        assert (m["width"], m["height"]) == Image.open(io.BytesIO(files[m["file"]])).size
    s = result.summary
    assert s.written == len(manifest) and s.selected == s.written + s.missing + s.corrupt
    assert s.missing >= 1 and s.corrupt == 0
    assert sum(s.per_rating.values()) == s.written == sum(s.per_quality.values()) == sum(s.per_year.values())
    info, again = dataset_stats(out)
    assert info["selection"]["preset"] == "kohaku-xl-delta" and info["source"]["db_fingerprint"].startswith(
        "sha256:"
    )
    assert (again.written, again.missing, again.per_rating) == (s.written, s.missing, s.per_rating)


def test_same_output_whatever_the_thread_count(demo, reference, tmp_path):
    out, _ = reference
    build_dataset(opts(demo, tmp_path / "ds4"), workers=4)
    assert tree(tmp_path / "ds4") == tree(out)


def test_cancel_then_resume_equals_uninterrupted(demo, reference, tmp_path):
    out, _ = reference
    target = tmp_path / "ds"
    interrupted_build(opts(demo, target), 40, workers=2)
    assert not (target / "kxl-dataset.toml").exists()
    assert list((target / ".kxl-build" / "buckets").glob("b*.jsonl"))
    with pytest.raises(PartialBuildError):
        build_dataset(opts(demo, target), on_partial="error")
    with pytest.raises(KxlError, match="other options"):
        build_dataset(opts(demo, target, quality="hakubooru"), on_partial="resume")
    result = build_dataset(opts(demo, target), workers=3, on_partial="resume")
    assert result.resumed_buckets > 0
    assert tree(target) == tree(out)


def test_refuses_foreign_or_finished_folders_and_bad_db(demo, reference, tmp_path):
    out, _ = reference
    with pytest.raises(KxlError, match="already holds a finished dataset"):
        build_dataset(opts(demo, out))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(KxlError, match="not empty"):
        build_dataset(opts(demo, tmp_path / "busy"))
    bad = tmp_path / "bad.db"
    conn = sqlite3.connect(bad)
    conn.execute("CREATE TABLE post (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="bad.db"):
        build_dataset(BuildOptions(db=bad, images=demo[1], out=tmp_path / "x", plan=PRESETS["all"]))


def _png(w=40, h=30, colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_untrusted_and_broken_shards(tmp_path):
    ids = [1001, 2001, 3001, 4001, 1002, 1003, 1005]
    make_db(tmp_path / "m.db", [(i, "2020-01-01T00:00:00.000-05:00", 0, 5, [("solo", 0)]) for i in ids])
    shards = tmp_path / "images"
    shards.mkdir()
    good, other = _png(), _png(colour=(0, 0, 255))
    write_tar(
        shards / "data-0001.tar",
        [
            ("../1001.png", other),
            ("abc.png", other),
            ("sub/2001.png", other),
            ("1001.png", good),
            ("2001.webp", b"not an image at all"),
        ],
    )
    write_tar(shards / "data-1001.tar", [("3001.png", good), ("1001.png", other)])  # 1001: the first hit wins
    write_tar(shards / "data-0002.tar", [("1002.png", good * 20)])
    raw = (shards / "data-0002.tar").read_bytes()
    (shards / "data-0002.tar").write_bytes(raw[: 512 + len(good) * 5])  # truncated member
    (shards / "data-0003.tar").write_bytes(b"garbage, not a tar" * 40)
    (shards / "data-x.tar").write_bytes(b"")
    updates = shards / "updates" / "2024"
    updates.mkdir(parents=True)
    write_tar(updates / "u.tar", [("1005.png", good)])
    out = tmp_path / "out" / "ds"
    result = build_dataset(
        BuildOptions(
            db=tmp_path / "m.db", images=shards, out=out, plan=PRESETS["all"], filters=PostFilters.none()
        ),
        workers=2,
    )
    s = result.summary
    manifest = {m["id"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(manifest) == [1001, 1005, 3001]
    assert (out / "1_kxl" / "1001.png").read_bytes() == good
    assert manifest[1001]["shard"] == "data-0001.tar" and manifest[1005]["shard"] == "updates/2024/u.tar"
    assert s.missing_ids == [1003, 4001]
    assert sorted(c["id"] for c in s.corrupt_items) == [1002, 2001]
    reasons = {c["id"]: c["reason"] for c in s.corrupt_items}
    assert "truncated" in reasons[1002] or "unreadable" in reasons[1002]
    assert "not a readable image" in reasons[2001]
    assert [e["shard"] for e in s.shard_errors] == ["data-0003.tar"]
    assert s.ignored_files == ["data-x.tar"]
    # nothing outside the output folder, no stray temp files, no txt without its image
    assert not (tmp_path / "out" / "1001.png").exists() and not (tmp_path / "1001.png").exists()
    names = sorted(p.name for p in (out / "1_kxl").iterdir())
    assert names == ["1001.png", "1001.txt", "1005.png", "1005.txt", "3001.png", "3001.txt"]


def test_folder_source_and_reencode_pixel_budget(tmp_path):
    make_db(tmp_path / "m.db", [(i, "2020-01-01T00:00:00.000-05:00", 0, 5, [("solo", 0)]) for i in (7, 8)])
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "7.png").write_bytes(_png(400, 100))
    (folder / "8.png").write_bytes(_png(20, 20))
    out = tmp_path / "ds"
    build_dataset(
        BuildOptions(
            db=tmp_path / "m.db",
            images=folder,
            out=out,
            plan=PRESETS["all"],
            filters=PostFilters.none(),
            image_format="webp",
            max_pixels=10_000,
            repeats=3,
            name="tiny",
        )
    )
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["file"], m["width"], m["height"]) for m in manifest] == [
        ("3_tiny/7.webp", 200, 50),
        ("3_tiny/8.webp", 20, 20),
    ]
    assert Image.open(out / "3_tiny" / "7.webp").size == (200, 50)


def test_cli_captions_build_stats(demo, reference, tmp_path, capsys):
    db, images = demo
    out_jsonl = tmp_path / "c.jsonl"
    assert (
        kxl_main(["dataset", "captions", "--db", str(db), "--out", str(out_jsonl), "--range", "0:=all"]) == 0
    )
    rows = [json.loads(line) for line in out_jsonl.read_text(encoding="utf-8").splitlines()]
    n_posts = sqlite3.connect(db).execute("SELECT count(*) FROM post").fetchone()[0]
    assert len(rows) == n_posts  # no selection options: every post, deleted ones included
    ref_out, _ = reference
    manifest = {
        m["id"]: m["caption"] for m in map(json.loads, (ref_out / "manifest.jsonl").read_text().splitlines())
    }
    by_id = {r["id"]: r["caption"] for r in rows}
    assert all(by_id[i] == c for i, c in manifest.items())
    ds = tmp_path / "cli"
    assert (
        kxl_main(
            [
                "dataset",
                "build",
                "--db",
                str(db),
                "--images",
                str(images),
                "--out",
                str(ds),
                "--preset",
                "kohaku-xl-delta",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert tree(ds) == tree(ref_out)
    assert kxl_main(["dataset", "stats", str(ds)]) == 0
    assert "missing images:" in capsys.readouterr().out
    assert (
        kxl_main(
            [
                "dataset",
                "build",
                "--db",
                str(db),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "t"),
                "--tags-any",
                "long_hari",
            ]
        )
        == 2
    )
    assert "did you mean" in capsys.readouterr().err


def test_sampled_plan_is_deterministic(demo, tmp_path):
    plan = SelectionPlan((IdRange(0, 5_000_000, 15), IdRange(5_000_000, None, 10)), seed=5)
    a = build_dataset(BuildOptions(db=demo[0], images=demo[1], out=tmp_path / "a", plan=plan), workers=1)
    build_dataset(BuildOptions(db=demo[0], images=demo[1], out=tmp_path / "b", plan=plan), workers=4)
    assert a.summary.selected == 25
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    assert "seed = 5" in (tmp_path / "a" / "kxl-dataset.toml").read_text()


def test_cli_index_then_build_from_the_column_cache_is_identical(
    demo, reference, tmp_path, capsys, monkeypatch
):
    """`kxl dataset index` builds the cache; a build reading it writes the same dataset as the SQL path."""
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    db, images = demo
    assert kxl_main(["dataset", "index", "--db", str(db), "--status"]) == 1
    assert "no current column cache" in capsys.readouterr().out
    assert kxl_main(["dataset", "index", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    n_posts = sqlite3.connect(db).execute("SELECT count(*) FROM post").fetchone()[0]
    assert f"{n_posts:,} posts" in out and "built in" in out
    caches = list((tmp_path / "data" / "cache" / "db-columns").iterdir())
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()
    assert kxl_main(["dataset", "index", "--db", str(db), "--status"]) == 0
    assert "up to date" in capsys.readouterr().out
    ds = tmp_path / "cached"
    args = ["dataset", "build", "--db", str(db), "--images", str(images), "--out", str(ds)]
    assert kxl_main([*args, "--preset", "kohaku-xl-delta", "--workers", "2", "--db-cache", "always"]) == 0
    ref_out, _ = reference
    assert tree(ds) == tree(ref_out)
