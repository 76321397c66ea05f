"""Select the card recipe and caption every selected post on a >= 1M-post demo DB; compare with HakuBooru's way.

    python benchmarks/bench_dataset_select_caption.py [--posts 1000000] [--db /tmp/kxl_bench_1m.db]

Prints, for the SQL path and for the DB column cache (built here, in a temporary folder, and timed: the one-off
cost a first run pays): selection time, caption time, posts/s, CPU seconds (this process + worker processes: the
wall-clock figures depend on what else the machine runs), whether both paths give the same ids and captions,
the `kxl dataset captions` command both ways, peak RSS, and two baselines measured in the same run on a sample
of the selected posts (rates extrapolated):
- raw sqlite3: each post's tags with their own query (HakuBooru's `Post.tag_list` SQL), a small object per tag
  row, the caption built per post. Generous to HakuBooru: no ORM.
- peewee (`pip install -e ".[bench]"`; skipped without it): HakuBooru's actual path, peewee models of its schema, `Post` rows
  loaded as model instances, `tag_list` as a peewee join query per post building a `Tag` model per row, the
  per-category lists filtered from it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.danbooru.db_reader import open_db, post_tags_one_by_one  # noqa: E402
from trainer_core.dataset.caption_stream import iter_caption_chunks  # noqa: E402
from trainer_core.dataset.captions import make_caption, quality_scheme  # noqa: E402
from trainer_core.dataset.captions_export import write_captions_jsonl  # noqa: E402
from trainer_core.dataset.column_cache import build_column_cache  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.selection import PRESETS, select_posts  # noqa: E402


class _TagRow:
    """What a peewee Tag instance carries; HakuBooru builds one per relation row."""

    __slots__ = ("id", "name", "type", "popularity")

    def __init__(self, row):
        self.id, self.name, self.type, self.popularity = row


def _peewee_rate(db: Path, sample: list[int], scheme) -> float | None:
    """Posts/s of HakuBooru's own per-post path through peewee, or None when peewee is not installed."""
    try:
        import peewee as pw
    except ImportError:
        return None
    from trainer_core.danbooru.schema import Rating, TagType

    class EnumField(pw.IntegerField):
        """HakuBooru stores its enums as INTEGER and hands back enum members."""

        def __init__(self, enum, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.enum = enum

        def db_value(self, value):
            return None if value is None else int(value)

        def python_value(self, value):
            return None if value is None else self.enum(value)

    peewee_db = pw.SqliteDatabase(None)

    class Base(pw.Model):
        class Meta:
            database = peewee_db

    class Tag(Base):
        name = pw.CharField(unique=True)
        type = EnumField(TagType)
        popularity = pw.IntegerField()

    class Post(Base):
        id = pw.IntegerField(primary_key=True)
        created_at = pw.CharField()
        uploader_id = pw.IntegerField()
        source = pw.CharField()
        md5 = pw.CharField(null=True)
        parent_id = pw.IntegerField(null=True)
        has_children = pw.BooleanField()
        is_deleted = pw.BooleanField()
        is_banned = pw.BooleanField()
        pixiv_id = pw.IntegerField(null=True)
        has_active_children = pw.BooleanField()
        bit_flags = pw.IntegerField()
        has_large = pw.BooleanField()
        has_visible_children = pw.BooleanField()
        image_width = pw.IntegerField()
        image_height = pw.IntegerField()
        file_size = pw.IntegerField()
        file_ext = pw.CharField()
        rating = EnumField(Rating)
        score = pw.IntegerField()
        up_score = pw.IntegerField()
        down_score = pw.IntegerField()
        fav_count = pw.IntegerField()
        file_url = pw.CharField(null=True)
        large_file_url = pw.CharField(null=True)
        preview_file_url = pw.CharField(null=True)
        updated_at = pw.CharField()

        @property
        def tag_list(self):
            if getattr(self, "_tags_cache", None) is None:
                self._tags_cache = list(
                    Tag.select().join(PostTagRelation).join(Post).where(PostTagRelation.post == self.id)
                )
            return self._tags_cache

        def tags_of(self, tag_type):
            return [t for t in self.tag_list if t.type == tag_type]

    class PostTagRelation(Base):
        post = pw.ForeignKeyField(Post, backref="tag_relations")
        tag = pw.ForeignKeyField(Tag, backref="post_relations")

    peewee_db.init(str(db))
    peewee_db.connect()
    try:
        t0 = time.perf_counter()
        posts = list(Post.select().where(Post.id.in_(sample)))
        for post in posts:
            # HakuBooru's captioner reads the per-category lists (each filters the cached tag_list)
            # (each kind of caption tag comes from one category, so feeding the lists category by category
            # gives make_caption the same per-kind order as relation order)
            by_type = {tt: post.tags_of(tt) for tt in TagType}
            rows = [(t.name, int(t.type)) for tt in TagType for t in by_type[tt]]
            make_caption(post.id, int(post.rating), post.fav_count, post.created_at, rows, scheme)
            del post._tags_cache
        return len(posts) / (time.perf_counter() - t0)
    finally:
        peewee_db.close()


def _cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _select_and_caption(db: Path, scheme, cache, threads: int, processes: int | None):
    """(selection, seconds to select, seconds to caption, md5 of the captions) for the card recipe."""
    conn = open_db(db)
    try:
        t0 = time.perf_counter()
        sel = select_posts(conn, PRESETS["kohaku-xl-delta"], PostFilters(), db, cache=cache)
        t_sel = time.perf_counter() - t0
    finally:
        conn.close()
    digest = hashlib.md5()
    t1 = time.perf_counter()
    for chunk in iter_caption_chunks(db, sel.ids, scheme, threads=threads, processes=processes, cache=cache):
        digest.update("\n".join(chunk.captions).encode())
    return sel, t_sel, time.perf_counter() - t1, digest.hexdigest()


def _command(db: Path, mode: str) -> tuple[float, int, str]:
    out = Path(tempfile.mkdtemp(prefix="kxl-bench-captions-")) / "captions.jsonl"
    try:
        t0 = time.perf_counter()
        n = write_captions_jsonl(db, out, PRESETS["kohaku-xl-delta"], PostFilters(), db_cache=mode)
        took = time.perf_counter() - t0
        return took, n, hashlib.md5(out.read_bytes()).hexdigest()
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/kxl_bench_1m.db"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--processes", type=int, default=None, help="caption worker processes (default: auto)")
    ap.add_argument("--baseline-posts", type=int, default=20_000)
    args = ap.parse_args()
    # the column cache goes to a fresh folder, so its build is measured every run
    cache_home = Path(tempfile.mkdtemp(prefix="kxl-bench-cache-"))
    os.environ["KXL_DATA_DIR"] = str(cache_home)
    try:
        return _run(args)
    finally:
        shutil.rmtree(cache_home, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    if not args.db.exists():
        from trainer_core.danbooru.demo_db import generate_demo_db

        print(f"generating {args.posts:,}-post demo DB at {args.db} (cached for later runs) ...", flush=True)
        generate_demo_db(args.db, args.posts, 0)
    conn = open_db(args.db)
    n_posts = conn.execute("SELECT count(*) FROM post").fetchone()[0]
    n_rel = conn.execute("SELECT max(id) FROM posttagrelation").fetchone()[0]
    print(
        f"DB: {args.db} ({n_posts:,} posts, ~{n_rel:,} relation rows, {args.db.stat().st_size / 2**20:,.0f} MiB)"
    )
    scheme = quality_scheme("card")

    c0 = _cpu_seconds()
    sel, t_sel, t_cap, md5_sql = _select_and_caption(args.db, scheme, None, args.threads, args.processes)
    cpu_sql = _cpu_seconds() - c0
    n = len(sel)
    sql_total = t_sel + t_cap
    print(
        f"card recipe: {n:,} posts selected "
        f"({', '.join(f'{r.selected:,}/{r.matching:,}' for r in sel.ranges)})"
    )
    print(
        f"SQL path:     select {t_sel:.2f} s + caption {t_cap:.2f} s = {sql_total:.2f} s "
        f"({n / sql_total:,.0f} posts/s, CPU {cpu_sql:.2f} s)"
    )
    t0 = time.perf_counter()
    cache = build_column_cache(args.db)
    t_build = time.perf_counter() - t0
    print(
        f"column cache: built once in {t_build:.2f} s ({cache.size_bytes() / 2**20:,.0f} MiB for "
        f"{cache.meta['tag_rows']:,} tag rows)"
    )
    c1 = _cpu_seconds()
    sel_c, t_sel_c, t_cap_c, md5_cache = _select_and_caption(
        args.db, scheme, cache, args.threads, args.processes
    )
    cpu_cache = _cpu_seconds() - c1
    same = md5_cache == md5_sql and np.array_equal(sel_c.ids, sel.ids)
    cached_total = t_sel_c + t_cap_c
    print(
        f"cached path:  select {t_sel_c:.2f} s + caption {t_cap_c:.2f} s = {cached_total:.2f} s "
        f"({n / cached_total:,.0f} posts/s, CPU {cpu_cache:.2f} s); same ids and captions as SQL: {same}"
    )
    t_never, n_cmd, md5_never = _command(args.db, "never")
    t_warm, _, md5_warm = _command(args.db, "auto")
    print(
        f"kxl dataset captions (select + caption + write the JSON Lines): SQL path {t_never:.2f} s, "
        f"cached {t_warm:.2f} s; same file: {md5_never == md5_warm}"
    )
    proc = psutil.Process()
    print(f"RSS now {proc.memory_info().rss / 2**20:,.0f} MiB, peak {_peak_rss() / 2**20:,.0f} MiB")

    sample = sel.ids[:: max(1, len(sel.ids) // args.baseline_posts)][: args.baseline_posts].tolist()
    t2 = time.perf_counter()
    for pid in sample:
        rating, fav, created = conn.execute(
            'SELECT rating, fav_count, created_at FROM "post" WHERE id = ?', (pid,)
        ).fetchone()
        rows = [_TagRow(r) for r in post_tags_one_by_one(conn, pid)]
        make_caption(pid, rating, fav, created, [(t.name, t.type) for t in rows], scheme)
    base_rate = len(sample) / (time.perf_counter() - t2)
    t_base = n / base_rate
    print(
        f"baseline, raw sqlite3 query per post ({len(sample):,} sampled): {base_rate:,.0f} posts/s "
        f"-> {t_base:.1f} s for the selection"
    )
    _ratios("raw-sqlite3", t_base, sql_total, t_build, cached_total, t_never, t_warm)
    pw_sample = sample[: max(1, len(sample) // 4)]
    pw_rate = _peewee_rate(args.db, pw_sample, scheme)
    if pw_rate is None:
        print("peewee baseline: skipped (pip install peewee to measure HakuBooru's ORM path)")
    else:
        print(
            f"baseline, peewee as HakuBooru ({len(pw_sample):,} sampled): {pw_rate:,.0f} posts/s "
            f"-> {n / pw_rate:.1f} s for the selection"
        )
        _ratios("peewee", n / pw_rate, sql_total, t_build, cached_total, t_never, t_warm)
    return 0


def _ratios(
    name: str, base: float, sql: float, build: float, cached: float, cmd_sql: float, cmd_cached: float
):
    print(
        f"speed-up vs {name} baseline: cached {base / cached:.1f}x (command {base / cmd_cached:.1f}x); "
        f"first run incl. cache build {base / (build + cached):.1f}x; SQL path {base / sql:.1f}x "
        f"(command {base / cmd_sql:.1f}x)"
    )


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    raise SystemExit(main())
