"""Export throughput from tar shards against two baselines measured in the same run, from a cold page cache.

    python benchmarks/bench_dataset_export.py [--posts 3000] [--workers 4] [--realistic-posts 2000] [--repeats 3]

Two image sets: the demo workspace's shards (~6 KB images, per-file costs dominate; made once and cached under
/tmp/kxl_bench_export_ws) and realistic members (~400 KB WebP, the size danbooru2023-webp-4Mpixel holds; cached
beside it). For each set, every round measures, in this order:

  read     the issue's baseline: every member of every shard read once, front to back, with tarfile (one thread).
  extract  the least any exporter that produces a kohya folder must do: the same shards read by `--workers`
           threads (split by shard), every selected member written to its own file with plain os.open/os.write,
           plus one caption-sized .txt per image, then a single os.sync(). No DB, no captions, no manifest.
  export   build_dataset with copied images: selection and captions from the DB, the image and caption files,
           the manifest, and the flush to disk that makes the build resumable.

Before every measurement the page cache is dropped (sync, then "3" into /proc/sys/vm/drop_caches, which needs
root): right after the shards are written, or after the previous step read them, a "read" is served from memory
and measures a memory copy, while the writers must create and flush files. Where the drop fails the script says
so and the figures are warm-cache. Page-cache write speed on a shared VM also drifts a lot from minute to
minute, so the steps are interleaved over `--repeats` rounds and only same-round ratios and medians are
reported. CPU time is user+sys of this process (all its threads) per step; on a 2-core box it is the real limit.
Kernel writeback threads are not counted in it, but their work shows up in the wall time of the flush.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.dataset.export import BuildOptions, build_dataset  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.selection import PRESETS  # noqa: E402

# Mean caption length the exporter writes for the demo DB (measured: ~350 UTF-8 bytes); the extract baseline
# writes a .txt of this size per image so both produce the same number of files of about the same total size.
_CAPTION = b"x" * 350
_STEPS = ("read", "extract", "export")
_OUT_DIR = Path("/tmp")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/kxl_bench_export_ws"))
    ap.add_argument("--realistic-posts", type=int, default=2000, help="posts with ~400 KB WebP members")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of read / extract / export")
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=Path("/tmp"),
        help="where extract / export write (default /tmp, the shards' disk; /dev/shm = a RAM disk, which "
        "leaves the read as the only disk traffic and so measures the exporter's own cost)",
    )
    args = ap.parse_args()
    global _OUT_DIR
    _OUT_DIR = args.out_dir
    root = args.cache / str(args.posts)
    if not (root / "workspace.toml").exists():
        from trainer_core.demo import init_demo

        shutil.rmtree(root, ignore_errors=True)
        print(f"creating a {args.posts:,}-post demo workspace with images at {root} ...", flush=True)
        init_demo(root, posts=args.posts, seed=0, models=False)
    db, images = root / "danbooru/danbooru2023.db", root / "danbooru/images"
    # Realistic members: danbooru2023-webp-4Mpixel holds ~300-500 KB WebP q90 files. Incompressible noise
    # encoded once at that size, stored under every selected id of a leading id range.
    plan, real_images = _realistic_shards(db, args.cache / "realistic", args.realistic_posts)

    # Load what the steps import lazily (Pillow's plugins) so no round pays a one-off import.
    from PIL import Image

    Image.init()
    cold = _drop_page_cache()
    if cold is None:
        print("page cache: dropped before every measurement (cold-cache figures)")
    else:
        print(f"page cache: NOT dropped ({cold}); every figure below is warm-cache")
    print(
        f"workers: {args.workers}, rounds: {args.repeats}, CPUs: {os.cpu_count()}, output under {args.out_dir}"
    )
    per_file = _file_creation_cost(args.out_dir)
    print(
        f"file system probe: creating one new empty file under {args.out_dir} costs {per_file * 1e6:,.0f} us of "
        f"kernel CPU (a kohya export creates 2 per image: the image and its .txt; the read creates none)"
    )
    print("\n-- demo images (~6 KB each: per-file costs dominate)")
    _compare(db, images, PRESETS["all"], args.workers, args.repeats, cold is None)
    print(f"\n-- realistic images (~{_member_kb(real_images)} KB WebP each)")
    _compare(db, real_images, plan, args.workers, args.repeats, cold is None)
    return 0


# ---- the cached image sets ---------------------------------------------------------------------------------------
_NOISE_SIDE = 700


def _file_creation_cost(folder: Path, n: int = 1000) -> float:
    """CPU seconds per new empty file in `folder`: what a file system charges for an inode alone.

    On a desktop ext4 this is ~10-30 us; on some VM disks it is ~0.5 ms, which alone caps what any exporter of
    a kohya folder (two new files per image) can reach against a plain read of the shards.
    """
    tmp = Path(tempfile.mkdtemp(prefix="kxl-bench-probe-", dir=folder))
    try:
        c0 = _cpu_s()
        for i in range(n):
            os.close(os.open(tmp / f"{i}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return (_cpu_s() - c0) / n
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
        print(f"writing {ids.size:,} realistic members under {folder} ...", flush=True)
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


def _member_kb(images: Path) -> int:
    for shard in sorted(images.glob("data-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isreg():
                    return m.size // 1000
    return 0


# ---- measurement -------------------------------------------------------------------------------------------------
def _drop_page_cache() -> str | None:
    """Flush dirty pages, then drop the page cache; None on success, else why it could not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3")
    except OSError as exc:
        why = "not root" if hasattr(os, "geteuid") and os.geteuid() != 0 else exc.strerror
        return f"cannot write /proc/sys/vm/drop_caches: {why}"
    return None


def _cpu_s() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)  # the whole process: every thread's time is in it
    return use.ru_utime + use.ru_stime


@dataclass
class Run:
    files: int
    nbytes: int
    wall: float
    cpu: float

    @property
    def images_s(self) -> float:
        return self.files / self.wall

    @property
    def mib_s(self) -> float:
        return self.nbytes / 2**20 / self.wall


def _selected_ids(db: Path, plan) -> set[int]:
    """The ids the export selects (computed untimed, so "extract" writes exactly the members the export writes)."""
    from trainer_core.danbooru.db_reader import open_db
    from trainer_core.dataset.selection import select_posts

    conn = open_db(db)
    try:
        return set(select_posts(conn, plan, PostFilters(), db).ids.tolist())
    finally:
        conn.close()


def _read(shards: list[Path]) -> tuple[int, int]:
    nbytes = nfiles = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.isreg():
                    nbytes += len(tar.extractfile(m).read())
                    nfiles += 1
    return nfiles, nbytes


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _extract_shard(shard: Path, wanted: set[int], prefix: str) -> tuple[int, int]:
    nbytes = nfiles = 0
    with tarfile.open(shard) as tar:
        for m in tar:
            if not m.isreg():
                continue
            stem, _, ext = os.path.basename(m.name).partition(".")
            if not stem.isdigit() or int(stem) not in wanted:
                continue
            data = tar.extractfile(m).read()
            _write_file(f"{prefix}{stem}.{ext}", data)
            _write_file(f"{prefix}{stem}.txt", _CAPTION)
            nbytes += len(data)
            nfiles += 1
    return nfiles, nbytes


def _extract(shards: list[Path], wanted: set[int], out: Path, workers: int) -> tuple[int, int]:
    sub = out / "1_kxl"
    sub.mkdir(parents=True)
    prefix = str(sub) + os.sep
    with ThreadPoolExecutor(max(1, workers)) as pool:
        parts = list(pool.map(lambda s: _extract_shard(s, wanted, prefix), shards))
    os.sync()
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _export(db: Path, images: Path, plan, out: Path, workers: int) -> tuple[int, int]:
    res = build_dataset(
        BuildOptions(db=db, images=images, out=out, plan=plan, filters=PostFilters()), workers=workers
    )
    return res.summary.written, res.summary.bytes_written


def _timed(fn, cold: bool) -> Run:
    if cold:
        _drop_page_cache()
    else:
        os.sync()
    c0, t0 = _cpu_s(), time.perf_counter()
    files, nbytes = fn()
    return Run(files, nbytes, time.perf_counter() - t0, _cpu_s() - c0)


def _round(db: Path, images: Path, plan, shards: list[Path], wanted: set[int], workers: int, cold: bool):
    runs = {"read": _timed(lambda: _read(shards), cold)}
    for step in ("extract", "export"):
        tmp = Path(tempfile.mkdtemp(prefix=f"kxl-bench-{step}-", dir=_OUT_DIR))
        try:
            if step == "extract":
                runs[step] = _timed(lambda t=tmp: _extract(shards, wanted, t / "ds", workers), cold)
            else:
                runs[step] = _timed(lambda t=tmp: _export(db, images, plan, t / "ds", workers), cold)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return runs


def _line(label: str, step: str, r: Run) -> str:
    return (
        f"{label:<8} {step:<8} {r.files:>6,} files {r.nbytes / 2**20:>7.1f} MiB {r.wall:>6.2f} s "
        f"{r.images_s:>8,.0f} img/s {r.mib_s:>7.1f} MiB/s   cpu {r.cpu:>5.2f} s ({r.cpu / r.wall:.2f} cores)"
    )


def _compare(db: Path, images: Path, plan, workers: int, repeats: int, cold: bool) -> None:
    shards = sorted(images.glob("data-*.tar"))
    wanted = _selected_ids(db, plan)
    print(
        f"{len(shards):,} shards; {len(wanted):,} posts selected. read = 1 thread, all members; "
        f"extract / export = {workers} threads, selected members + captions"
    )
    rounds = []
    for i in range(max(1, repeats)):
        runs = _round(db, images, plan, shards, wanted, workers, cold)
        rounds.append(runs)
        for n, step in enumerate(_STEPS):
            print(_line(f"round {i + 1}" if n == 0 else "", step, runs[step]), flush=True)
    print("median:")
    for step in _STEPS:
        rs = [r[step] for r in rounds]
        print(
            f"         {step:<8} {statistics.median(r.wall for r in rs):>6.2f} s "
            f"{statistics.median(r.images_s for r in rs):>8,.0f} img/s "
            f"{statistics.median(r.mib_s for r in rs):>7.1f} MiB/s   "
            f"cpu {statistics.median(r.cpu for r in rs):>5.2f} s"
        )
    n_new = statistics.median(r["export"].files for r in rounds) * 2
    create_cpu = n_new * _file_creation_cost(_OUT_DIR)
    floor = max(
        statistics.median(r["read"].wall for r in rounds),
        (create_cpu + statistics.median(r["read"].cpu for r in rounds)) / (os.cpu_count() or 1),
    )
    print(
        f"floor: creating {n_new:,.0f} files costs {create_cpu:.2f} s of kernel CPU here, so with the read's own "
        f"CPU on {os.cpu_count()} cores no kohya export can take less than {floor:.2f} s "
        f"(export/read <= {statistics.median(r['read'].wall for r in rounds) / floor:.2f})"
    )
    for base in ("read", "extract"):
        img = [r["export"].images_s / r[base].images_s for r in rounds]
        mib = [r["export"].mib_s / r[base].mib_s for r in rounds]
        print(
            f"export / {base:<7}  img/s per round {' '.join(f'{x:.2f}' for x in img)} "
            f"(median {statistics.median(img):.2f});  MiB/s per round {' '.join(f'{x:.2f}' for x in mib)} "
            f"(median {statistics.median(mib):.2f})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
