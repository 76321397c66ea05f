"""Export throughput from tar shards vs a plain sequential read of the same shards.

    python benchmarks/bench_dataset_export.py [--posts 3000] [--workers 4]

Makes (and caches under /tmp) a demo workspace with images, builds the `all` selection with copied images, and
reads every shard once sequentially with tarfile (drop the page cache between runs for cold-disk figures).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.dataset.export import BuildOptions, build_dataset  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.selection import PRESETS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/kxl_bench_export_ws"))
    args = ap.parse_args()
    root = args.cache / str(args.posts)
    if not (root / "workspace.toml").exists():
        from trainer_core.demo import init_demo

        shutil.rmtree(root, ignore_errors=True)
        print(f"creating a {args.posts:,}-post demo workspace with images at {root} ...", flush=True)
        init_demo(root, posts=args.posts, seed=0, models=False)
    db, images = root / "danbooru/danbooru2023.db", root / "danbooru/images"
    shards = sorted(images.glob("data-*.tar"))

    t0 = time.perf_counter()
    nbytes = nfiles = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isreg():
                    nbytes += len(tar.extractfile(m).read())
                    nfiles += 1
    t_seq = time.perf_counter() - t0
    print(
        f"sequential read: {nfiles:,} members, {nbytes / 2**20:.1f} MiB in {t_seq:.2f} s = "
        f"{nfiles / t_seq:,.0f} images/s, {nbytes / 2**20 / t_seq:.1f} MiB/s ({len(shards)} shards)"
    )

    out = Path(tempfile.mkdtemp(prefix="kxl-bench-export-")) / "ds"
    try:
        t1 = time.perf_counter()
        res = build_dataset(
            BuildOptions(db=db, images=images, out=out, plan=PRESETS["all"], filters=PostFilters()),
            workers=args.workers,
        )
        t_exp = time.perf_counter() - t1
        s = res.summary
        mib = s.bytes_written / 2**20
        print(
            f"export ({args.workers} workers): {s.written:,} images, {mib:.1f} MiB in {t_exp:.2f} s = "
            f"{s.written / t_exp:,.0f} images/s, {mib / t_exp:.1f} MiB/s "
            f"(selected {s.selected:,}, missing {s.missing}, corrupt {s.corrupt})"
        )
        print(
            f"export / sequential read throughput: {(s.written / t_exp) / (nfiles / t_seq):.2f} (images/s ratio)"
        )
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
