"""Demo DB generator speed: posts/s, relation rows/s, file size, peak RSS, and table_counts() time.

Usage:  python benchmarks/bench_demo_db.py [--posts 1000000] [--seed 0] [--mean-tags 30] [--out DIR] [--keep]
Target (DESIGN: demo data on a laptop): 1,000,000 posts x ~30 tags well under 3 minutes on a 2-core box.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from trainer_core.danbooru.demo_db import generate_demo_db
from trainer_core.danbooru.schema import table_counts
from trainer_core.progress import Progress


class PeakRss:
    """Samples this process's RSS every 50 ms in a thread (ru_maxrss is not portable to every OS)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mean-tags", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=None, help="folder for the DB (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated DB")
    args = ap.parse_args(argv)

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="kxl-bench-demo-db-"))
    db = out_dir / "danbooru2023.db"
    stages: list[tuple[str, float]] = []

    def on_progress(ev) -> None:
        if ev.total is None:  # a new stage
            stages.append((ev.message, time.perf_counter()))

    rss_before = psutil.Process().memory_info().rss
    with PeakRss() as rss:
        t0 = time.perf_counter()
        stats = generate_demo_db(db, args.posts, args.seed, Progress(on_progress), mean_tags=args.mean_tags)
        total_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    counts = table_counts(db)
    counts_s = time.perf_counter() - t1

    print(f"posts              {stats.n_posts:,}")
    print(f"relation rows      {stats.n_relations:,}  ({stats.n_relations / stats.n_posts:.1f} per post)")
    print(f"tags               {stats.n_tags:,}")
    print(f"total time         {total_s:.1f} s")
    for (name, start), nxt in zip(stages, [s for _, s in stages[1:]] + [t0 + total_s], strict=True):
        print(f"  {name:<24}{nxt - start:.1f} s")
    print(f"posts/s            {stats.n_posts / total_s:,.0f}")
    print(f"relation rows/s    {stats.n_relations / total_s:,.0f}")
    print(f"file size          {stats.file_size / 2**20:,.1f} MiB")
    print(f"peak RSS           {rss.peak / 2**20:,.0f} MiB (process at start: {rss_before / 2**20:,.0f} MiB)")
    print(f"table_counts()     {counts_s:.2f} s  {counts}")
    if not args.keep:
        db.unlink()
        if args.out is None:
            out_dir.rmdir()
    else:
        print(f"kept               {db}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
