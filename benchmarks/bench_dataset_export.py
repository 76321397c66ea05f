"""Export throughput from tar shards vs a plain sequential read of the same shards.

    python benchmarks/bench_dataset_export.py [--posts 3000] [--workers 4]

Makes (and caches under /tmp) a demo workspace with images, builds the `all` selection with copied images, and
reads every shard once sequentially with tarfile (drop the page cache between runs for cold-disk figures).
Then the same with realistic members: ~400 KB WebP files, the size danbooru2023-webp-4Mpixel holds.
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
    ap.add_argument("--realistic-posts", type=int, default=500, help="posts with ~400 KB WebP members")
    args = ap.parse_args()
    root = args.cache / str(args.posts)
    if not (root / "workspace.toml").exists():
        from trainer_core.demo import init_demo

        shutil.rmtree(root, ignore_errors=True)
        print(f"creating a {args.posts:,}-post demo workspace with images at {root} ...", flush=True)
        init_demo(root, posts=args.posts, seed=0, models=False)
    db, images = root / "danbooru/danbooru2023.db", root / "danbooru/images"
    print("-- demo images (~6 KB each: per-file costs dominate)")
    _measure(db, images, PRESETS["all"], args.workers)

    # Realistic members: danbooru2023-webp-4Mpixel holds ~300-500 KB WebP q90 files. Incompressible noise
    # encoded once at that size, stored under every selected id of a leading id range.
    plan, real_images = _realistic_shards(db, args.cache / "realistic", args.realistic_posts)
    print(f"-- realistic images (~{_NOISE_BYTES // 1000} KB WebP each)")
    _measure(db, real_images, plan, args.workers)
    return 0


_NOISE_SIDE = 700
_NOISE_BYTES = 400_000  # approximate, printed from the real size


def _noise_webp() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (_NOISE_SIDE, _NOISE_SIDE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "WEBP", quality=90)
    return buf.getvalue()


def _realistic_shards(db: Path, folder: Path, n_posts: int):
    import io

    from trainer_core.danbooru.db_reader import open_db
    from trainer_core.dataset.selection import IdRange, SelectionPlan, select_posts

    conn = open_db(db)
    try:
        ids = select_posts(conn, PRESETS["all"], PostFilters()).ids[:n_posts]
    finally:
        conn.close()
    plan = SelectionPlan((IdRange(0, int(ids[-1]) + 1, None),), seed=1)
    stamp = folder / f"done-{ids.size}"
    if not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        data = _noise_webp()
        by_shard: dict[int, list[int]] = {}
        for pid in ids.tolist():
            by_shard.setdefault(pid % 1000, []).append(pid)
        for bucket, members in by_shard.items():
            with tarfile.open(folder / f"data-0{bucket:03d}.tar", "w") as tar:
                for pid in members:
                    info = tarfile.TarInfo(f"{pid}.webp")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        stamp.write_text("ok")
    return plan, folder


def _measure(db: Path, images: Path, plan, workers: int) -> None:
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
            BuildOptions(db=db, images=images, out=out, plan=plan, filters=PostFilters()), workers=workers
        )
        t_exp = time.perf_counter() - t1
        s = res.summary
        mib = s.bytes_written / 2**20
        print(
            f"export ({workers} workers): {s.written:,} images, {mib:.1f} MiB in {t_exp:.2f} s = "
            f"{s.written / t_exp:,.0f} images/s, {mib / t_exp:.1f} MiB/s "
            f"(selected {s.selected:,}, missing {s.missing}, corrupt {s.corrupt}; includes selection, captions, "
            "manifest and the per-bucket flush to disk)"
        )
        print(
            f"export / sequential read: {(s.written / t_exp) / (nfiles / t_seq):.2f} (images/s), "
            f"{(mib / t_exp) / (nbytes / 2**20 / t_seq):.2f} (MB/s)"
        )
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
