"""Data-path throughput of the trainer (#14.4): images/s with 0 (serial), 1, 2 and 4 data workers.

    python benchmarks/bench_data_loader.py [--images 40] [--repeats 3] [--workers 0,1,2,4] [--keep DIR]

Writes ~4-Mpixel WebP images (smooth gradients + shapes + light noise, so files and decode cost are like real
illustrations rather than like noise), the card's buckets (1024², 64 px steps), batch 4, then pulls one epoch of
micro-batches through the trainer's own data path (`data_loader.TrainBatches` -> `data.make_batch`: decode,
resize, crop, caption shuffle) with nothing else on the training thread, i.e. the most the data path can feed.
Every worker count yields the same batches (checked here on the first batches too). Start-up (spawning the workers,
each importing torch) is listed apart from the steady-state rate. The images are generated into a temp folder and
removed at the end unless --keep names a folder to reuse.
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

SIZES = [(2048, 2048), (1792, 2304), (2304, 1792), (1600, 2560), (2560, 1600), (1920, 2176)]  # ~4 Mpixel


def _make_images(folder: Path, count: int, repeats: int) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    sub = folder / f"{repeats}_bench"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = sub / f"{i}.webp"
        if path.is_file():
            continue
        w, h = SIZES[i % len(SIZES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
        base += rng.normal(0, 6, size=base.shape).astype(np.float32)
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(25):
            x0, y0 = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 200))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse(
                (x0, y0, x0 + int(rng.integers(50, 600)), y0 + int(rng.integers(50, 600))), fill=color
            )
        im.save(path, quality=90)
        tags = ", ".join(f"tag{int(t)}" for t in rng.zipf(1.3, 40) if t < 50_000)
        (sub / f"{i}.txt").write_text(f"1girl, solo ||| {tags}", encoding="utf-8")
    return folder


def _run(plan, cfg, workers: int, spe: int) -> dict:
    from trainer_core.train.data_loader import TrainBatches

    t0 = time.perf_counter()
    batches = TrainBatches(plan, cfg, seed=1337, order_seed=1337, world=1, rank=0, accum=1, steps_per_epoch=spe,
                           start_step=0, total_steps=spe, num_workers=workers)  # fmt: skip
    try:
        first = next(iter(batches.micro_batches(0)))
        t_first = time.perf_counter() - t0
        t1 = time.perf_counter()
        images = 0
        for step in range(1, spe):
            for b in batches.micro_batches(step):
                images += len(b.entries)
        steady = time.perf_counter() - t1
    finally:
        batches.close()
    total = time.perf_counter() - t0
    return {"first_s": t_first, "steady_s": steady, "images": images, "total_s": total,
            "all_images": images + len(first.entries), "first": first}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument(
        "--repeats", type=int, default=3, help="entries per image per epoch (more batches to time)"
    )
    ap.add_argument("--workers", default="0,1,2,4")
    ap.add_argument("--keep", type=Path, default=None, help="generate into / reuse this folder and keep it")
    args = ap.parse_args()

    import warnings

    import torch

    from trainer_core.train.config import DatasetConfig

    warnings.filterwarnings(
        "ignore", "This DataLoader will create", UserWarning
    )  # more workers than cores: on purpose
    from trainer_core.train.data import BucketPlan, scan_dataset

    tmp = None
    if args.keep is not None:
        root = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="kxl-bench-loader-")
        root = Path(tmp)
    try:
        t0 = time.perf_counter()
        _make_images(root / "ds", args.images, args.repeats)
        print(f"{args.images} WebP images of ~4 Mpixel ready in {time.perf_counter() - t0:.1f} s "
              f"({sum(p.stat().st_size for p in (root / 'ds').rglob('*.webp')) / args.images / 1e6:.2f} MB each)")  # fmt: skip
        cfg = DatasetConfig(num_workers=0)  # the card's buckets: 1024², 256..4096, step 64
        items = scan_dataset(root / "ds")
        plan = BucketPlan(items, cfg, 4)
        spe = plan.steps_per_epoch(1, 1)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count()
        print(f"{len(plan.entries)} entries per epoch in {spe} batches of <= 4 (buckets "
              f"{', '.join(f'{w}x{h}' for w, h in plan.bucket_counts())}); {cores} CPU cores, torch "
              f"{torch.__version__}\n")  # fmt: skip
        results = {}
        for w in [int(x) for x in args.workers.split(",")]:
            results[w] = _run(plan, cfg, w, spe)
            r = results[w]
            print(f"  {w} worker(s): first batch after {r['first_s']:.2f} s, then {r['images']} images in "
                  f"{r['steady_s']:.2f} s", flush=True)  # fmt: skip
        ref = results[min(results)]
        for w, r in results.items():  # same batches whatever the worker count
            assert r["first"].entries == ref["first"].entries
            assert torch.equal(r["first"].pixels, ref["first"].pixels), f"{w} workers: pixels differ"
        base = results[0]["images"] / results[0]["steady_s"] if 0 in results else None
        print(
            "\n| workers | images/s (steady) | vs serial | start-up to 1st batch | epoch wall (s) | wall img/s |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for w, r in results.items():
            rate = r["images"] / r["steady_s"]
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"| {w}{' (serial)' if w == 0 else ''} | {rate:.2f} | {ratio} | {r['first_s']:.2f} s | "
                  f"{r['total_s']:.1f} | {r['all_images'] / r['total_s']:.2f} |")  # fmt: skip
        print("\nimages/s = decoded, resized, cropped, caption-processed images delivered to the training thread; a "
              "GPU step of 4 images at 8 img/s needs 8 img/s from here. Worker counts above the core count cannot "
              "scale further.")  # fmt: skip
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
