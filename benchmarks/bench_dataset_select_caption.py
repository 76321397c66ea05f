"""Select the card recipe and caption every selected post on a >= 1M-post demo DB; compare with HakuBooru's way.

    python benchmarks/bench_dataset_select_caption.py [--posts 1000000] [--db /tmp/kxl_bench_1m.db]

Prints: selection time, caption time, posts/s, peak RSS, and a baseline measured in the same run that fetches
each post's tags with its own query (HakuBooru's `Post.tag_list` SQL) and builds the caption per post from
per-row objects, as HakuBooru does; the baseline runs on a sample of posts and its rate is extrapolated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.danbooru.db_reader import open_db, post_tags_one_by_one  # noqa: E402
from trainer_core.dataset.caption_stream import iter_caption_chunks  # noqa: E402
from trainer_core.dataset.captions import make_caption, quality_scheme  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.selection import PRESETS, select_posts  # noqa: E402


class _TagRow:
    """What a peewee Tag instance carries; HakuBooru builds one per relation row."""

    __slots__ = ("id", "name", "type", "popularity")

    def __init__(self, row):
        self.id, self.name, self.type, self.popularity = row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/kxl_bench_1m.db"))
    ap.add_argument("--threads", type=int, default=2)
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

    t0 = time.perf_counter()
    sel = select_posts(conn, PRESETS["kohaku-xl-delta"], PostFilters(), args.db)
    t_sel = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = 0
    chars = 0
    for chunk in iter_caption_chunks(args.db, sel.ids, scheme, threads=args.threads):
        n += len(chunk.captions)
        chars += sum(map(len, chunk.captions))
    t_cap = time.perf_counter() - t1
    total = t_sel + t_cap
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
        f"speed-up select+caption vs baseline caption-only: {(n / total) / base_rate:.1f}x "
        f"(caption stage alone: {(n / t_cap) / base_rate:.1f}x)"
    )
    return 0


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    raise SystemExit(main())
