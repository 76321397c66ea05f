"""How long the trainer's dataset scan (start of every run, and the Train tab's pre-flight) takes per image.

    python benchmarks/bench_dataset_scan.py [--images 2000]

Exports a kohya folder of ~400 KB WebP images (the realistic set of bench_dataset_export.py, cached under /tmp),
then times `scan_dataset` (image sizes read from the file headers, trainer_core/dataset/image_header.py) against
a baseline measured in the same run: the same walk with `PIL.Image.open(...).size` per image, which the scan used
before. Both read every caption. Warm page cache (best of 3), then cold (cache dropped before each; needs root),
which is what a run start on a freshly mounted or big dataset sees; the cold lines also give the bytes the
process read from disk per image.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dataset_export import _drop_page_cache, _realistic_shards  # noqa: E402

from trainer_core.dataset.export import BuildOptions, build_dataset  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.stats import is_finished_dataset  # noqa: E402
from trainer_core.train.data import IMAGE_SUFFIXES, scan_dataset  # noqa: E402


def _pillow_scan(root: Path) -> int:
    from PIL import Image

    n = 0
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            img.with_suffix(".txt").read_text(encoding="utf-8")
            with Image.open(img) as im:
                im.size  # noqa: B018 - the work being measured
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/kxl_bench_export_ws"))
    args = ap.parse_args()
    root = args.cache / "3000"
    if not (root / "workspace.toml").exists():
        raise SystemExit("run benchmarks/bench_dataset_export.py once first (it creates the demo workspace)")
    db = root / "danbooru/danbooru2023.db"
    plan, shards = _realistic_shards(db, args.cache / "realistic", args.images)
    out = args.cache / f"scan-ds-{args.images}"
    if not is_finished_dataset(out):
        shutil.rmtree(out, ignore_errors=True)
        build_dataset(BuildOptions(db=db, images=shards, out=out, plan=plan, filters=PostFilters()))
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        items = scan_dataset(out)
        t1 = time.perf_counter()
        n = _pillow_scan(out)
        t2 = time.perf_counter()
        rounds.append((t1 - t0, t2 - t1))
    assert n == len(items)
    scan, base = min(r[0] for r in rounds), min(r[1] for r in rounds)
    print(f"{len(items):,} images (~400 KB WebP) with captions, best of 3:")
    print(f"scan_dataset (header sizes):  {scan:.3f} s = {scan / len(items) * 1e6:,.0f} us/image")
    print(f"baseline (Pillow open):       {base:.3f} s = {base / len(items) * 1e6:,.0f} us/image")
    print(f"speed-up: {base / scan:.1f}x")
    if _drop_page_cache() is not None:
        print("cold cache: skipped (cannot drop the page cache; needs root)")
        return 0
    cold = {}
    for name, fn in (("scan_dataset", lambda: scan_dataset(out)), ("Pillow open", lambda: _pillow_scan(out))):
        _drop_page_cache()
        r0 = _read_bytes()
        t0 = time.perf_counter()
        fn()
        cold[name] = (time.perf_counter() - t0, _read_bytes() - r0)
    for name, (secs, nbytes) in cold.items():
        print(
            f"cold, {name:<13} {secs:.3f} s = {secs / len(items) * 1e6:,.0f} us/image, "
            f"{nbytes / len(items) / 1024:,.1f} KiB read from disk per image"
        )
    print(f"cold speed-up: {cold['Pillow open'][0] / cold['scan_dataset'][0]:.1f}x")
    return 0


def _read_bytes() -> int:
    """Bytes this process has made the kernel fetch from storage (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
