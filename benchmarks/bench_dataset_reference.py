"""Reference builds vs copy builds vs captions alone, and the trainer's data path from references vs files.

    python benchmarks/bench_dataset_reference.py [--posts 100000] [--workers 2] [--read-images 400]

Builds the card recipe (kohaku-xl-delta preset) on a demo DB with its shards three ways: `--image-mode copy`,
`--image-mode reference`, and captions alone (`kxl dataset captions`, which touches no shard). Bytes written are
counted by the kernel (/proc/self/io `write_bytes`, which includes the flushes) where available, else as the
size of the output folder. Then it reads the same images through the trainer's `load_pixels` from the referenced
dataset and from the copied one. Page cache: dropped before each read pass when running as root
(/proc/sys/vm/drop_caches), otherwise said so in the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _measure(fn, out: Path) -> tuple[float, int]:
    os.sync()
    w0 = _write_bytes()
    t0 = time.perf_counter()
    fn()
    os.sync()
    wall = time.perf_counter() - t0
    w1 = _write_bytes()
    return wall, (w1 - w0 if w0 is not None and w1 is not None else _folder_bytes(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--read-images", type=int, default=400, help="images read per data-path pass")
    ap.add_argument("--work", type=Path, help="keep the demo here (reused when it exists)")
    args = ap.parse_args()

    from trainer_core.dataset.captions_export import write_captions_jsonl
    from trainer_core.dataset.export import BuildOptions, build_dataset
    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import PRESETS
    from trainer_core.demo import init_demo
    from trainer_core.train.config import DatasetConfig
    from trainer_core.train.data import BucketPlan, load_pixels, scan_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="kxl-bench-ref-"))
    t0 = time.perf_counter()
    ws = init_demo(work / "ws", posts=args.posts, seed=0, models=False, image_max_side=256)
    print(f"demo: {args.posts:,} posts in {time.perf_counter() - t0:.1f} s at {work}", flush=True)
    plan = PRESETS["kohaku-xl-delta"]
    rows = []
    outs = {}
    for mode in ("copy", "reference"):
        out = work / f"ds-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        opts = BuildOptions(db=ws.db_path, images=ws.images_path, out=out, plan=plan, image_mode=mode)
        wall, written = _measure(lambda opts=opts: build_dataset(opts, workers=args.workers), out)
        rows.append((f"build --image-mode {mode}", wall, written))
        outs[mode] = out
    cap = work / "captions.jsonl"
    filters = PostFilters(
        skip_deleted=True, skip_banned=True, images_only=True
    )  # the build's default filters
    wall, written = _measure(
        lambda: write_captions_jsonl(ws.db_path, cap, plan, filters, "card", threads=args.workers), cap
    )
    rows.append(("captions alone (kxl dataset captions)", wall, written))

    base_wall, base_bytes = rows[2][1], rows[2][2]
    copy_bytes = rows[0][2]
    print(f"\n{'build':44} {'wall s':>8} {'x captions':>11} {'MB written':>11} {'% of copy':>10}")
    for name, wall, written in rows:
        print(f"{name:44} {wall:8.2f} {wall / base_wall:11.2f} {written / 1e6:11.1f} "
              f"{100 * written / max(1, copy_bytes):9.2f}%")  # fmt: skip
    print(f"(reference target: <= 1.2 x captions alone; bytes <= 1 % of copy; captions alone wrote "
          f"{base_bytes / 1e6:.1f} MB)")  # fmt: skip

    cfg = DatasetConfig(resolution=256, min_bucket_reso=128, max_bucket_reso=512, bucket_step=64)
    print(f"\n{'trainer data path (load_pixels)':44} {'images':>8} {'s':>8} {'images/s':>10} {'cache':>8}")
    for mode in ("copy", "reference", "copy", "reference"):
        items = scan_dataset(outs[mode])
        bplan = BucketPlan(items, cfg, 1)
        n = min(args.read_images, len(items))
        cold = _drop_caches()
        t0 = time.perf_counter()
        for i in range(n):
            load_pixels(items[i], bplan.assignment(i))
        dt = time.perf_counter() - t0
        print(f"{'from ' + ('the kohya folder' if mode == 'copy' else 'shard references'):44} {n:8d} {dt:8.2f} "
              f"{n / dt:10.1f} {'cold' if cold else 'warm':>8}")  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
