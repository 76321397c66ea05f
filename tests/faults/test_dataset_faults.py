"""Issue #17, dataset build and metadata DB: faults (Ctrl+C, two builds at once, a full disk) and hostile input.

Every test here states the fault it injects and what the user must see: one `error: ...` line (exit 2) naming
the file, table, column or row, or a prompt stop (exit 130) whose partial build resumes byte for byte into what
an uninterrupted build writes. Builds run on the demo workspace (120 posts, ~97 one-post buckets). Subprocess
builds are slowed down from the outside (the wrapper script below replaces the export's file writer with one
that sleeps first), so no test hook lives in the engine.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from support import interrupted_build, write_tar

from trainer_core.cli import main as kxl_main
from trainer_core.danbooru.schema import HAKUBOORU_SCHEMA_SQL, POST_COLUMNS
from trainer_core.dataset.captions import make_caption, quality_scheme
from trainer_core.dataset.export import LOCK_FILE, BuildOptions, build_dataset
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.selection import PRESETS
from trainer_core.ownership import AlreadyRunning, acquire

REPO = Path(__file__).resolve().parents[2]


# --- shared: the demo workspace, an uninterrupted reference build, subprocess builds ---------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path_factory.mktemp("faults") / "ws", posts=120, seed=0, models=False)
    return ws.db_path, ws.images_path


def build_argv(demo, out: Path, *extra: str) -> list[str]:
    db, images = demo
    base = ["dataset", "build", "--db", str(db), "--images", str(images), "--out", str(out)]
    return [*base, "--preset", "kohaku-xl-delta", *extra]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(demo, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "ds"
    assert kxl_main(build_argv(demo, out)) == 0
    files = tree(out)
    assert LOCK_FILE not in files and not any(name.startswith(".kxl-build") for name in files)
    return files


def kxl_process(argv: list[str], *, delay_s: float = 0.0, prelude: str = "") -> subprocess.Popen:
    """`kxl argv` in a child process whose export sleeps `delay_s` before writing each image or caption."""
    script = "import time\nimport trainer_core.dataset.export as export\n" + textwrap.dedent(prelude)
    script += textwrap.dedent(
        f"""
        _write = export.write_new_file

        def slow_write(*args, **kwargs):
            time.sleep({delay_s!r})
            return _write(*args, **kwargs)

        if {delay_s!r} > 0:
            export.write_new_file = slow_write
        from trainer_core.cli import main
        raise SystemExit(main({argv!r}))
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def snapshot(folder: Path) -> dict[str, bytes]:
    """`tree` of a folder another process is writing into: its temporary `.part` files come and go."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.name.endswith(".part"):
            continue
        try:
            files[p.relative_to(folder).as_posix()] = p.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
    return files


def exported(out: Path) -> int:
    sub = out / "1_kxl"
    return sum(1 for p in sub.iterdir() if p.suffix != ".txt") if sub.is_dir() else 0


def error_line(err: str) -> str:
    """The one `error: ...` line of a failed command's stderr (progress lines come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- item 4: one build per output folder ------------------------------------------------------------------------


def test_second_build_into_a_running_build_is_refused_and_touches_nothing(demo, reference, tmp_path, capsys):
    out = tmp_path / "ds"
    first = kxl_process(build_argv(demo, out, "--workers", "2"), delay_s=0.03)
    try:
        wait_for(lambda: exported(out) >= 3, 30, "the first build to export")
        before = snapshot(out / ".kxl-build")
        assert kxl_main(build_argv(demo, out)) == 2
        line = error_line(capsys.readouterr().err)
        assert f"dataset build is already running (pid {first.pid})" in line and str(out) in line
        after = snapshot(out / ".kxl-build")
        assert set(before) <= set(after)  # nothing of the running build was removed or truncated
        assert all(after[name] == data for name, data in before.items())
        _, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
    finally:
        first.kill()
    assert tree(out) == reference  # finished, complete, and without the lock file
    assert kxl_main(["dataset", "stats", str(out)]) == 0


def test_a_live_owner_blocks_and_a_dead_ones_lock_is_taken_over(demo, reference, tmp_path, capsys):
    out = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        acquire(out / LOCK_FILE, "dataset build", pid=holder.pid)
        before = tree(out)
        assert kxl_main(build_argv(demo, out)) == 2
        assert f"already running (pid {holder.pid})" in error_line(capsys.readouterr().err)
        assert tree(out) == before  # the refused build wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert kxl_main(build_argv(demo, out)) == 0  # the owner is gone: its lock is stale
    assert tree(out) == reference


def test_two_builds_in_one_process_cannot_share_a_folder(demo, reference, tmp_path, monkeypatch):
    from trainer_core.dataset import export

    out = tmp_path / "ds"
    gate, started = threading.Event(), threading.Event()
    real_write = export.write_new_file

    def gated(*args, **kwargs):
        started.set()
        assert gate.wait(30)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(export, "write_new_file", gated)
    opts = BuildOptions(db=demo[0], images=demo[1], out=out, plan=PRESETS["kohaku-xl-delta"])
    errors: list[BaseException] = []

    def first():
        try:
            build_dataset(opts, workers=1)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(30)
        with pytest.raises(AlreadyRunning, match="dataset build is already running"):
            build_dataset(opts, workers=1, on_partial="resume")
    finally:
        gate.set()
        thread.join(60)
    assert errors == []
    assert tree(out) == reference


# --- item 5: Ctrl+C stops the build promptly; the partial build resumes into the same bytes ---------------------


def test_ctrl_c_stops_promptly_and_the_rerun_resumes_identically(demo, reference, tmp_path, capsys):
    out = tmp_path / "ds"
    # 0.15 s per file, two files per post, two workers: the whole export would take ~15 s
    proc = kxl_process(build_argv(demo, out, "--workers", "2"), delay_s=0.15)
    try:
        wait_for(lambda: exported(out) >= 8, 40, "the build to export some images")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err, err
    # what may still run: the two buckets in flight (0.3 s each here) and the flush before their marks
    assert stopped_after < 5.0, f"took {stopped_after:.1f} s to stop"
    assert exported(out) < 60  # the queued buckets were not drained
    assert not (out / "kxl-dataset.toml").exists() and not (out / LOCK_FILE).exists()
    capsys.readouterr()
    assert kxl_main(build_argv(demo, out)) == 0
    assert "resumed an interrupted build" in capsys.readouterr().out
    assert tree(out) == reference


# --- item 8: a full disk while writing the manifest or the build options ----------------------------------------


def test_disk_full_on_the_manifest_is_one_error_line_and_the_rerun_finishes(
    demo, reference, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "ds"
    real = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".manifest.jsonl."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert kxl_main(build_argv(demo, out)) == 2
    line = error_line(capsys.readouterr().err)
    assert "manifest.jsonl" in line and "disk full" in line and str(out) in line
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".manifest") or p.name == LOCK_FILE]
    assert leftovers == [] and not (out / "kxl-dataset.toml").exists()
    monkeypatch.setattr(Path, "write_bytes", real)
    assert kxl_main(build_argv(demo, out)) == 0
    assert tree(out) == reference


FSIZE_PRELUDE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))
"""


def test_file_too_large_on_the_options_then_rerun_and_restart_accept_the_folder(demo, reference, tmp_path):
    out = tmp_path / "ds"
    proc = kxl_process(build_argv(demo, out), prelude=FSIZE_PRELUDE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    line = error_line(err)
    assert "options.toml" in line and "disk full" in line
    assert not out.exists() or not any(out.rglob("*.part")) and not (out / LOCK_FILE).exists()
    assert kxl_main(build_argv(demo, out)) == 0  # a plain rerun takes the folder
    assert tree(out) == reference
    again = tmp_path / "again"
    proc = kxl_process(build_argv(demo, again), prelude=FSIZE_PRELUDE)
    proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert kxl_main(build_argv(demo, again, "--restart")) == 0  # and so does --restart
    assert tree(again) == reference


def test_restart_accepts_a_partial_build_whose_options_file_is_damaged(demo, reference, tmp_path, capsys):
    out = tmp_path / "ds"
    interrupted_build(BuildOptions(db=demo[0], images=demo[1], out=out, plan=PRESETS["kohaku-xl-delta"]), 20)
    (out / ".kxl-build" / "options.toml").write_bytes(b"\x00\x00 half-written")
    assert kxl_main(build_argv(demo, out)) == 2  # resuming needs the options; it says how to go on
    line = capsys.readouterr().err
    assert "options" in error_line(line) and "--restart" in line
    assert kxl_main(build_argv(demo, out, "--restart")) == 0
    assert tree(out) == reference


# --- item 9: hostile metadata DBs ----------------------------------------------------------------------------------

POSTS = {  # id -> (rating, fav_count, created_at)
    1: (0, 40, "2021-03-01T00:00:00.000-05:00"),
    2: (1, 3, "2012-06-01T00:00:00.000-05:00"),
    3: (2, 90, "2019-01-01T00:00:00.000-05:00"),
    4: (3, 7, "2023-01-01T00:00:00.000-05:00"),
}
TAGS = [(1, "1girl", 0), (2, "solo", 0), (3, "hatsune_miku", 2), (4, "vocaloid", 3), (1023, "smile", 0)]
RELATIONS = [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 4), (5, 2, 1023), (6, 3, 2), (7, 4, 1), (8, 4, 4)]


def hostile_db(
    path: Path,
    *,
    posts: dict = POSTS,
    tags: list = TAGS,
    relations: list = RELATIONS,
    loose_ids: bool = False,
    nullable_names: bool = False,
    extra_post_rows: tuple = (),
) -> Path:
    """A small HakuBooru-schema DB. `loose_ids`: post.id is a plain INTEGER column (not the rowid), as tools that
    convert the Parquet export create it, so it can hold text and duplicates; `nullable_names`: tag.name may be
    NULL."""
    conn = sqlite3.connect(path)
    for stmt in HAKUBOORU_SCHEMA_SQL:
        if loose_ids:
            stmt = stmt.replace(
                '"id" INTEGER NOT NULL PRIMARY KEY, "created_at"', '"id" INTEGER NOT NULL, "created_at"'
            )
        if nullable_names:
            stmt = stmt.replace('"name" VARCHAR(255) NOT NULL', '"name" VARCHAR(255)')
        conn.execute(stmt)
    names = [c[0] for c in POST_COLUMNS]
    rows = [(pid, *values) for pid, values in posts.items()] + list(extra_post_rows)
    for pid, rating, fav, created in rows:
        row = {n: (0 if t == "INTEGER" else "") for n, t, _ in POST_COLUMNS}
        row.update(id=pid, rating=rating, fav_count=fav, created_at=created, file_ext="png", file_url="u")
        conn.execute(
            f"INSERT INTO post ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [row[n] for n in names],
        )
    conn.executemany("INSERT INTO tag VALUES (?, ?, ?, 0)", tags)
    conn.executemany("INSERT INTO posttagrelation VALUES (?, ?, ?)", relations)
    conn.commit()
    conn.close()
    return path


def captions_cli(db: Path, out: Path, cache: str) -> int:
    return kxl_main(["dataset", "captions", "--db", str(db), "--out", str(out), "--db-cache", cache])


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))  # column caches of these DBs land here


BAD_VALUES = {
    "fav_count": (
        "UPDATE post SET fav_count = 'many' WHERE id = 3",
        "table post, column fav_count, row id 3",
        "'many'",
    ),
    "rating": (
        "UPDATE post SET rating = 'high' WHERE id = 2",
        "table post, column rating, row id 2",
        "'high'",
    ),
    "rating_real": (
        "UPDATE post SET rating = 1.5 WHERE id = 4",
        "table post, column rating, row id 4",
        "1.5",
    ),
    "tag_id": (
        "UPDATE posttagrelation SET tag_id = 'x7' WHERE id = 6",
        "table posttagrelation, column tag_id, row id 6",
        "'x7'",
    ),
    "tag_type": (
        "UPDATE tag SET type = 'general' WHERE id = 2",
        "table tag, column type, row id 2",
        "'general'",
    ),
}


@pytest.mark.parametrize("cache", ["never", "always"])
@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_name_table_column_row_and_value(case, cache, tmp_path, data_dir, capsys):
    sql, where, value = BAD_VALUES[case]
    db = hostile_db(tmp_path / "bad.db")
    with sqlite3.connect(db) as w:
        w.execute(sql)
    w.close()
    assert captions_cli(db, tmp_path / "c.jsonl", cache) == 2
    line = error_line(capsys.readouterr().err)
    assert where in line and value in line and "bad.db" in line, line


@pytest.mark.parametrize("cache", ["never", "always"])
def test_text_post_id_names_the_value(tmp_path, data_dir, capsys, cache):
    db = hostile_db(
        tmp_path / "textid.db",
        loose_ids=True,
        extra_post_rows=(("p5", 0, 1, "2020-01-01T00:00:00.000-05:00"),),
    )
    assert captions_cli(db, tmp_path / "c.jsonl", cache) == 2
    line = error_line(capsys.readouterr().err)
    assert "table post, column id" in line and "'p5'" in line, line


@pytest.mark.parametrize("cache", ["never", "always"])
def test_duplicate_post_ids_are_a_clear_error(tmp_path, data_dir, capsys, cache):
    db = hostile_db(
        tmp_path / "dup.db", loose_ids=True, extra_post_rows=((2, 3, 500, "2010-01-01T00:00:00.000-05:00"),)
    )
    assert captions_cli(db, tmp_path / "c.jsonl", cache) == 2
    line = error_line(capsys.readouterr().err)
    assert "table post" in line and "id 2" in line and "2 rows" in line, line


def test_null_tag_names_and_dangling_tag_ids_are_skipped_the_same_way_on_both_paths(tmp_path, data_dir):
    # tag 5 has no name; relations to tags -1, 99 and 2**40 point at rows that do not exist
    tags = [*TAGS, (5, None, 0)]
    relations = [*RELATIONS, (9, 1, 5), (10, 1, -1), (11, 3, 99), (12, 4, 2**40), (13, 2, 5)]
    db = hostile_db(tmp_path / "dangling.db", tags=tags, relations=relations, nullable_names=True)
    assert captions_cli(db, tmp_path / "never.jsonl", "never") == 0
    assert captions_cli(db, tmp_path / "always.jsonl", "always") == 0
    never = (tmp_path / "never.jsonl").read_text(encoding="utf-8")
    assert never == (tmp_path / "always.jsonl").read_text(encoding="utf-8")
    # HakuBooru's reading: an inner join of posttagrelation and tag (a missing tag row drops the relation) and
    # a tag without a name is dropped like an empty one
    scheme = quality_scheme("card")
    conn = sqlite3.connect(db)
    want = []
    for pid, (rating, fav, created) in POSTS.items():
        rows = conn.execute(
            "SELECT t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id "
            "WHERE r.post_id = ? AND t.name IS NOT NULL ORDER BY r.id",
            (pid,),
        ).fetchall()
        want.append({"id": pid, "caption": make_caption(pid, rating, fav, created, rows, scheme)})
    conn.close()
    got = [json.loads(line) for line in never.splitlines()]
    assert got == want
    assert "None" not in never and "smile" in got[1]["caption"]


def test_a_locked_db_says_so(tmp_path, data_dir, capsys):
    db = hostile_db(tmp_path / "locked.db")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert captions_cli(db, tmp_path / "c.jsonl", "never") == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = error_line(capsys.readouterr().err)
    assert "locked by another program" in line and "corrupt" not in line, line


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may create files in (root ignores permission bits: make it immutable instead)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def make_read_only(folder: Path) -> None:
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder read-only as root here ({done.stderr.decode().strip()})")
    else:
        folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        return
    (folder / "probe").unlink()
    pytest.skip("this file system lets us write into a read-only folder")


def test_a_wal_db_in_a_read_only_folder_says_what_to_do(tmp_path, read_only_dir, data_dir, capsys):
    db = hostile_db(read_only_dir / "wal.db")
    with sqlite3.connect(db) as w:
        assert w.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    w.close()
    assert not (read_only_dir / "wal.db-wal").exists()  # the last connection checkpointed and removed it
    make_read_only(read_only_dir)
    assert captions_cli(db, tmp_path / "c.jsonl", "never") == 2
    err = capsys.readouterr().err
    line = error_line(err)
    assert "WAL" in line and "read-only" in line and "download it again" not in err, err
    assert "journal_mode=DELETE" in err and "copy" in err


# --- item 11: hostile tar members and stable skip reasons -----------------------------------------------------------


def _png(colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def _small_posts(ids) -> dict:
    return {i: (0, 5, "2020-01-01T00:00:00.000-05:00") for i in ids}


def _build(db: Path, images: Path, out: Path):
    return build_dataset(
        BuildOptions(db=db, images=images, out=out, plan=PRESETS["all"], filters=PostFilters.none()),
        workers=1,
    )


def test_only_image_members_count_as_the_image(tmp_path, data_dir):
    ids = [1001, 1002, 1003, 7, 8]
    db = hostile_db(tmp_path / "m.db", posts=_small_posts(ids), relations=[(1, 1001, 2), (2, 1003, 1)])
    red, blue = _png(), _png((0, 0, 255))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "data-0001.tar", [("1001.txt", b"someone's caption, not an image"), ("1001.png", red)])
    write_tar(
        shards / "data-0002.tar", [("1002.txt", blue)]
    )  # image bytes under a caption's name: not the image
    write_tar(shards / "data-0003.tar", [("1003.json", b"{}"), ("1003.png", blue)])
    out = tmp_path / "ds"
    summary = _build(db, shards, out).summary
    files = tree(out)
    manifest = [json.loads(line) for line in files["manifest.jsonl"].decode().splitlines()]
    assert [(m["id"], m["file"]) for m in manifest] == [(1001, "1_kxl/1001.png"), (1003, "1_kxl/1003.png")]
    assert files["1_kxl/1001.png"] == red and files["1_kxl/1003.png"] == blue
    assert files["1_kxl/1001.txt"].decode() == manifest[0]["caption"] and "solo" in manifest[0]["caption"]
    assert 1002 in summary.missing_ids and summary.corrupt == 0
    # the same rule for a plain folder of images: 7.txt is a caption, 8.txt alone is not an image
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "7.txt").write_bytes(blue)
    (folder / "7.png").write_bytes(red)
    (folder / "8.txt").write_bytes(blue)
    out2 = tmp_path / "ds2"
    summary2 = _build(db, folder, out2).summary
    files2 = tree(out2)
    assert files2["1_kxl/7.png"] == red and "1_kxl/8.txt" not in files2 and 8 in summary2.missing_ids


def test_skip_reasons_are_stable_text(tmp_path, data_dir):
    ids = [2001, 2002, 2003]
    db = hostile_db(tmp_path / "m.db", posts=_small_posts(ids), relations=[(1, 2001, 2)])
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "data-0001.tar", [("2001.webp", b"not an image at all")])
    write_tar(shards / "data-0002.tar", [("2002.png", _png()[:40])])  # a PNG cut short
    write_tar(shards / "data-0003.tar", [("2003.png", _png())])
    _build(db, shards, tmp_path / "a")
    _build(db, shards, tmp_path / "b")
    first = (tmp_path / "a" / "skipped.jsonl").read_text(encoding="utf-8")
    assert first == (tmp_path / "b" / "skipped.jsonl").read_text(encoding="utf-8")
    records = {r["id"]: r for r in map(json.loads, first.splitlines())}
    assert sorted(records) == [2001, 2002] and " at 0x" not in first and "object" not in first
    assert "2001.webp" in records[2001]["reason"] and records[2001]["shard"] == "data-0001.tar"
    assert all(r["status"] == "corrupt" and "not a readable image" in r["reason"] for r in records.values())
