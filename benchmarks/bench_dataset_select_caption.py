"""Select the card recipe and caption every selected post on a >= 1M-post demo DB; compare with HakuBooru's way.

    python benchmarks/bench_dataset_select_caption.py [--posts 1000000] [--db /tmp/kxl_bench_1m.db]

Prints: selection time, caption time, posts/s, CPU seconds (this process + worker processes: the wall-clock
figures depend on what else the machine runs), peak RSS, and two baselines measured in the same run on a sample
of the selected posts (rates extrapolated):
- raw sqlite3: each post's tags with their own query (HakuBooru's `Post.tag_list` SQL), a small object per tag
  row, the caption built per post. Generous to HakuBooru: no ORM.
- peewee (`pip install -e ".[bench]"`; skipped without it): HakuBooru's actual path, peewee models of its schema, `Post` rows
  loaded as model instances, `tag_list` as a peewee join query per post building a `Tag` model per row, the
  per-category lists filtered from it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.danbooru.db_reader import open_db, post_tags_one_by_one  # noqa: E402
from trainer_core.dataset.caption_stream import iter_caption_chunks  # noqa: E402
from trainer_core.dataset.captions import make_caption, quality_scheme  # noqa: E402
from trainer_core.dataset.captions_export import write_captions_jsonl  # noqa: E402
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/kxl_bench_1m.db"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--processes", type=int, default=None, help="caption worker processes (default: auto)")
    ap.add_argument("--baseline-posts", type=int, default=20_000)
    args = ap.parse_args()
    if not args.db.exists():
        from trainer_core.danbooru.demo_db import generate_demo_db

        print(f"generating {args.posts:,}-post demo DB at {args.db} (cached for later runs) ...", flush=True)
        generate_demo_db(args.db, args.posts, 0)
    proc = psutil.Process()
    conn = open_db(args.db)
    n_posts = conn.execute("SELECT count(*) FROM post").fetchone()[0]
    n_rel = conn.execute("SELECT max(id) FROM posttagrelation").fetchone()[0]
    print(f"DB: {args.db} ({n_posts:,} posts, ~{n_rel:,} relation rows)")
    scheme = quality_scheme("card")

    c0 = _cpu_seconds()
    t0 = time.perf_counter()
    sel = select_posts(conn, PRESETS["kohaku-xl-delta"], PostFilters(), args.db)
    t_sel = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    chars = 0
    for chunk in iter_caption_chunks(
        args.db, sel.ids, scheme, threads=args.threads, processes=args.processes
    ):
        n += len(chunk.captions)
        chars += sum(map(len, chunk.captions))
    t_cap = time.perf_counter() - t1
    total = t_sel + t_cap
    cpu = _cpu_seconds() - c0
    rss = proc.memory_info().rss
    peak = getattr(proc.memory_info(), "peak_wset", None) or _peak_rss()
    print(
        f"select card recipe: {len(sel):,} posts in {t_sel:.2f} s "
        f"({', '.join(f'{r.selected:,}/{r.matching:,}' for r in sel.ranges)})"
    )
    print(
        f"caption:            {n:,} posts in {t_cap:.2f} s = {n / t_cap:,.0f} posts/s ({chars / n:.0f} chars avg)"
    )
    print(
        f"select + caption:   {total:.2f} s = {n / total:,.0f} posts/s; RSS now {rss / 2**20:,.0f} MiB, "
        f"peak {peak / 2**20:,.0f} MiB"
    )
    print(f"CPU time (this process + caption workers): {cpu:.2f} s = {cpu / n * 1e6:.2f} us/post")
    out = Path(tempfile.mkdtemp(prefix="kxl-bench-captions-")) / "captions.jsonl"
    try:
        t3 = time.perf_counter()
        n_cmd = write_captions_jsonl(args.db, out, PRESETS["kohaku-xl-delta"], PostFilters())
        t_cmd = time.perf_counter() - t3
        size = out.stat().st_size
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    print(
        f"kxl dataset captions (select + caption + write {size / 2**20:,.0f} MiB of JSON Lines): {t_cmd:.2f} s "
        f"= {n_cmd / t_cmd:,.0f} posts/s"
    )

    sample = sel.ids[:: max(1, len(sel.ids) // args.baseline_posts)][: args.baseline_posts].tolist()
    t2 = time.perf_counter()
    for pid in sample:
        rating, fav, created = conn.execute(
            'SELECT rating, fav_count, created_at FROM "post" WHERE id = ?', (pid,)
        ).fetchone()
        rows = [_TagRow(r) for r in post_tags_one_by_one(conn, pid)]
        make_caption(pid, rating, fav, created, [(t.name, t.type) for t in rows], scheme)
    t_base = time.perf_counter() - t2
    base_rate = len(sample) / t_base
    print(
        f"baseline (one query per post, {len(sample):,} sampled): {base_rate:,.0f} posts/s "
        f"-> {len(sel) / base_rate:.1f} s for the selection"
    )
    print(
        f"speed-up select+caption vs raw-sqlite3 baseline (caption only): {(n / total) / base_rate:.1f}x "
        f"(caption stage alone: {(n / t_cap) / base_rate:.1f}x; the captions command, file included: "
        f"{(n_cmd / t_cmd) / base_rate:.1f}x)"
    )
    pw_sample = sample[: max(1, len(sample) // 4)]
    pw_rate = _peewee_rate(args.db, pw_sample, scheme)
    if pw_rate is None:
        print("peewee baseline: skipped (pip install peewee to measure HakuBooru's ORM path)")
    else:
        print(
            f"baseline (peewee, as HakuBooru, {len(pw_sample):,} sampled): {pw_rate:,.0f} posts/s "
            f"-> {len(sel) / pw_rate:.1f} s for the selection"
        )
        print(
            f"speed-up select+caption vs peewee baseline: {(n / total) / pw_rate:.1f}x "
            f"(caption stage alone: {(n / t_cap) / pw_rate:.1f}x; the captions command, file included: "
            f"{(n_cmd / t_cmd) / pw_rate:.1f}x)"
        )
    return 0


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    raise SystemExit(main())
