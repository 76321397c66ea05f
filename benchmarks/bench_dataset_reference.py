"""Reference builds vs copy builds vs captions alone, and the trainer's data path from references vs files.

    python benchmarks/bench_dataset_reference.py [--posts 100000] [--image-max-side 32] [--workers 2]
    python benchmarks/bench_dataset_reference.py --workspace DEMO_ROOT [--modes captions,reference] [--repeat 3]

Builds the card recipe (kohaku-xl-delta preset) on a demo DB with its shards: `--image-mode copy`,
`--image-mode reference`, and captions alone (`kxl dataset captions`, which touches no shard). `reference` runs
with no shard-header index (a first build over these shards; the index is removed before it), and
`reference-cached` with the index the previous reference build left (a second build, another recipe).
`--workspace` reuses a demo made earlier (`DEMO_ROOT/danbooru/danbooru2023.db` and `.../images`; a 1 M-post demo
takes ~30 min to make at 32 px on 2 cores), else one is made in a temp folder. `--repeat N` runs the modes N
times in turn (load varies on a shared machine): each round's ratios are against that round's captions run,
and the load average is printed per round. Bytes written are counted by the kernel (/proc/self/io
`write_bytes`: pages sent to storage, so a 300-byte caption file counts 4 KiB) where available, else as the size
of the output (a first reference build also writes the shard-header index, ~56 bytes per tar member, counted
with the rest). CPU s is this process's and its finished children's (the caption workers). The table
gives each mode's wall time, x captions alone, bytes, % of the copy build, and bytes per written post; since
demo images are tiny (~0.5 KB at 32 px) against danbooru2023's ~370 KB, the reference build's bytes per post are
also given as a % of a copy of real-size images (370 KB + a 4 KiB caption file per post).

Data path: `--read-images` images (the same random sample from both datasets) through the trainer's
`load_pixels`, from the referenced dataset and from the copy, twice each, alternating. Page cache: dropped before
each pass when /proc/sys/vm/drop_caches is writable (said "cold"), else "warm".
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REAL_IMAGE_BYTES = 370_000  # danbooru2023-webp-4Mpixel: ~1.35 TB / 3.6 M images
CAPTION_FILE_BYTES = 4096  # one page per caption file


def _write_bytes() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _folder_bytes(folder: Path) -> int:
    if folder.is_file():
        return folder.stat().st_size
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _measure(fn, out: Path) -> tuple[float, int, float]:
    """(wall s, bytes written, CPU s of this process and its finished children)."""
    os.sync()
    w0 = _write_bytes()
    c0 = _cpu()
    t0 = time.perf_counter()
    fn()
    os.sync()
    wall = time.perf_counter() - t0
    w1 = _write_bytes()
    written = w1 - w0 if w0 is not None and w1 is not None else _folder_bytes(out)
    return wall, written, _cpu() - c0


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument(
        "--image-max-side", type=int, default=32, help="demo image size (made only without --workspace)"
    )
    ap.add_argument(
        "--workspace", type=Path, help="an existing demo root (danbooru/danbooru2023.db, danbooru/images)"
    )
    ap.add_argument("--out", type=Path, help="where the datasets go (default: a temp folder, removed after)")
    ap.add_argument(
        "--modes", default="captions,reference,reference-cached,copy", help="which builds, in this order"
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the modes (min and max are reported)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--read-images", type=int, default=400, help="images read per data-path pass (0: none)")
    args = ap.parse_args()

    from trainer_core.dataset.captions_export import write_captions_jsonl
    from trainer_core.dataset.export import BuildOptions, build_dataset
    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import PRESETS
    from trainer_core.dataset.shard_index import index_root
    from trainer_core.train.config import DatasetConfig
    from trainer_core.train.data import BucketPlan, load_pixels, scan_dataset

    work = args.out or Path(tempfile.mkdtemp(prefix="kxl-bench-ref-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.workspace is not None:
        db, images = args.workspace / "danbooru" / "danbooru2023.db", args.workspace / "danbooru" / "images"
    else:
        from trainer_core.demo import init_demo

        t0 = time.perf_counter()
        ws = init_demo(
            work / "ws", posts=args.posts, seed=0, models=False, image_max_side=args.image_max_side
        )
        db, images = ws.db_path, ws.images_path
        print(f"demo: {args.posts:,} posts in {time.perf_counter() - t0:.1f} s at {work}", flush=True)
    from trainer_core.cli import main as kxl_main

    kxl_main(["dataset", "index", "--db", str(db)])  # a big DB's column cache exists before any timing
    from trainer_core.dataset.tar_headers import COMPILED

    print(
        f"tar header walk: {'compiled (trainer_core/dataset/_tar_walk.c)' if COMPILED else 'numpy (no C module)'}"
    )
    plan = PRESETS["kohaku-xl-delta"]
    runs: dict[str, list[tuple[float, int, float]]] = {}
    ratios: list[str] = []
    round_ratios: dict[str, list[float]] = {}
    outs: dict[str, Path] = {}
    written_posts = 0
    for round_no in range(1, args.repeat + 1):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"round {round_no}: load average {load:.2f}", flush=True)
        this_round: dict[str, float] = {}
        for mode in args.modes.split(","):
            if mode == "captions":
                out = work / "captions.jsonl"
                filters = PostFilters()  # the build's default filters

                def run(out=out, filters=filters):
                    write_captions_jsonl(db, out, plan, filters, "card", threads=args.workers)
            else:
                image_mode = "reference" if mode.startswith("reference") else mode
                out = work / f"ds-{mode}"
                shutil.rmtree(out, ignore_errors=True)
                if mode == "reference":
                    shutil.rmtree(index_root(), ignore_errors=True)  # a first build over these shards
                opts = BuildOptions(db=db, images=images, out=out, plan=plan, image_mode=image_mode)

                def run(opts=opts):
                    nonlocal written_posts
                    written_posts = build_dataset(opts, workers=args.workers).summary.written

            wall, written, cpu = _measure(run, out)
            runs.setdefault(mode, []).append((wall, written, cpu))
            outs[mode] = out
            this_round[mode] = wall
            print(f"  {mode}: {wall:.2f} s wall, {cpu:.2f} s CPU, {written / 1e6:.1f} MB written", flush=True)
        if "captions" in this_round:
            for m, w in this_round.items():
                round_ratios.setdefault(m, []).append(w / this_round["captions"])
            ratios.append(f"round {round_no} (load {load:.2f}): " + ", ".join(
                f"{m} {w / this_round['captions']:.2f} x" for m, w in this_round.items() if m != "captions"
            ))  # fmt: skip
    rows = {mode: min(r) for mode, r in runs.items()}  # each mode's fastest run
    if args.repeat > 1:
        print("\nper round, wall x the same round's captions alone:")
        for line in ratios:
            print("  " + line)
        print("  median: " + ", ".join(
            f"{m} {statistics.median(r):.2f} x" for m, r in round_ratios.items() if m != "captions"
        ))  # fmt: skip
        print("min-max per mode:")
        for mode, r in runs.items():
            walls, cpus = [x[0] for x in r], [x[2] for x in r]
            print(f"  {mode:18} wall {min(walls):.2f}-{max(walls):.2f} s, CPU {min(cpus):.2f}-{max(cpus):.2f} s, "
                  f"{r[0][1] / 1e6:.1f} MB written")  # fmt: skip

    base = rows.get("captions")
    copy_bytes = rows["copy"][1] if "copy" in rows else None
    print("\n(each mode's fastest run)")
    print(f"\n{'build':34} {'wall s':>8} {'cpu s':>8} {'x captions':>11} {'MB written':>11} {'% of copy':>10} "
          f"{'B/post':>8}")  # fmt: skip
    names = {"captions": "captions alone (kxl dataset captions)", "reference": "build --image-mode reference",
             "reference-cached": "  the same, header index kept", "copy": "build --image-mode copy"}  # fmt: skip
    for mode, (wall, written, cpu) in rows.items():
        ratio = f"{wall / base[0]:11.2f}" if base else f"{'-':>11}"
        share = f"{100 * written / copy_bytes:9.2f}%" if copy_bytes else f"{'-':>10}"
        per_post = f"{written / max(1, written_posts):8.0f}"
        print(f"{names[mode]:34} {wall:8.2f} {cpu:8.2f} {ratio} {written / 1e6:11.1f} {share} {per_post}")
    if "reference" in rows and written_posts:
        per_post = rows["reference"][1] / written_posts
        real = REAL_IMAGE_BYTES + CAPTION_FILE_BYTES
        print(f"(bars: reference <= 1.2 x captions alone, bytes <= 1 % of copy; {written_posts:,} posts written; "
              f"reference writes {per_post:.0f} B/post = {100 * per_post / real:.3f} % of a copy of real-size "
              f"images at {real / 1000:.0f} kB/post)")  # fmt: skip

    datasets = {mode: outs.get(mode, work / f"ds-{mode}") for mode in ("copy", "reference")}
    if not (datasets["reference"] / "kxl-dataset.toml").is_file() and "reference-cached" in outs:
        datasets["reference"] = outs["reference-cached"]
    if args.read_images and all((d / "kxl-dataset.toml").is_file() for d in datasets.values()):
        # (a dataset of an earlier run in --out counts: a 1 M-post copy build takes minutes)
        cfg = DatasetConfig(resolution=256, min_bucket_reso=128, max_bucket_reso=512, bucket_step=64)
        tables = {mode: scan_dataset(datasets[mode]) for mode in ("copy", "reference")}
        assert len(tables["copy"]) == len(tables["reference"]), "the two datasets differ"
        n_items = len(tables["copy"])
        sample = random.Random(0).sample(range(n_items), min(args.read_images, n_items))
        print(
            f"\n{'trainer data path (load_pixels)':44} {'images':>8} {'s':>8} {'images/s':>10} {'cache':>8}"
        )
        for mode in ("copy", "reference", "copy", "reference"):
            items = tables[mode]
            bplan = BucketPlan(items, cfg, 1)
            cold = _drop_caches()
            t0 = time.perf_counter()
            for i in sample:
                load_pixels(items[i], bplan.assignment(i))
            dt = time.perf_counter() - t0
            where = "the kohya folder" if mode == "copy" else "shard references"
            print(f"{'from ' + where:44} {len(sample):8d} {dt:8.2f} {len(sample) / dt:10.1f} "
                  f"{'cold' if cold else 'warm':>8}")  # fmt: skip
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
