"""Tags tab at scale: a 100k-image dataset index, its filter, the virtualised grid and thumbnail decoding.

    python benchmarks/bench_tags_grid.py [--images 100000] [--disk 20000] [--frames 120]

Prints:
- index build time for N synthetic captions (tags drawn from the shipped demo tag list, Zipf-like);
- filter times for AND / OR / NOT / wildcard queries over N images;
- `open_dataset` on a real on-disk kohya folder of --disk images (scandir + caption reading; the image files are
  tiny placeholders because indexing never decodes pixels);
- model reset + rowCount time, and offscreen paint frame times while scrolling the QListView through all N rows
  (cold frames: thumbnails not yet decoded; warm frames: after the visible ones are cached);
- thumbnail decode throughput of the worker threads on 512-px webp images like the demo's.
Runs offscreen; figures depend on the machine (the project's reference box has 2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.tags.dataset_index import DatasetEntry, DatasetIndex, open_dataset  # noqa: E402
from trainer_core.tags.preview import demo_tag_list  # noqa: E402
from trainer_core.tags.text import tag_to_caption_text  # noqa: E402
from trainer_core.tags.vocabulary import TagVocabulary  # noqa: E402

POOL = 48


def guard_pyside_none_refcount() -> None:
    """PySide6 6.12 on Python 3.11 drops one reference to None on every void method call (None is only immortal
    from 3.12 on), so ~5,000 calls (a few hundred painted frames) end in "Fatal Python error: none_dealloc".
    Until the app pins a fixed PySide6 or applies this itself, give None/True/False a huge refcount so this
    benchmark measures painting instead of crashing. No effect on 3.12+."""
    import ctypes

    if sys.version_info >= (3, 12):
        return
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += (
            1 << 40
        )  # distinct image files; entries cycle over them (each entry is still decoded separately)


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    vocab = TagVocabulary.from_csv(demo_tag_list())
    names = [tag_to_caption_text(t.name) for t in vocab.tags]
    weights = [1.0 / (rank + 1) for rank in range(len(names))]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tags = list(dict.fromkeys(rng.choices(names, weights, k=rng.randint(15, 40))))
        out.append(", ".join(tags[:3]) + ", |||" + ", ".join(tags[3:]) + ", newest, safe")
    return out


def make_pool(folder: Path) -> None:
    from PIL import Image

    from trainer_core.danbooru.demo_images import render_post_image

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(POOL):
        w, h = (512, 384 + (k % 5) * 64) if k % 2 else (384 + (k % 7) * 32, 512)
        img: Image.Image = render_post_image(["1girl", "long_hair", "blue_sky"], w, h, seed=k)
        img.save(folder / f"{k}.webp", quality=90)


def build_index(root: Path, captions: list[str]) -> DatasetIndex:
    entries = [DatasetEntry(str(i), f"pool/{i % POOL}.webp", 1, c, 512, 512) for i, c in enumerate(captions)]
    return DatasetIndex(root, "kohya", entries, [])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_disk(n: int, captions: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="kxl-bench-ds-") as tmp:
        folder = Path(tmp) / "ds" / "1_set"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.webp").write_bytes(b"")
            (folder / f"{i}.txt").write_text(captions[i % len(captions)], encoding="utf-8")
        t0 = time.perf_counter()
        index = open_dataset(Path(tmp) / "ds")
        dt = time.perf_counter() - t0
        print(
            f"open_dataset, {n:,} images on disk (scandir + captions + tag index): {dt:.2f} s "
            f"({n / dt:,.0f} images/s)"
        )
        assert len(index) == n


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument(
        "--disk", type=int, default=20_000, help="on-disk dataset size for open_dataset (0: skip)"
    )
    parser.add_argument("--frames", type=int, default=120, help="scroll positions to paint")
    args = parser.parse_args()
    guard_pyside_none_refcount()

    t0 = time.perf_counter()
    captions = synthetic_captions(args.images)
    print(
        f"synthetic captions: {args.images:,} in {time.perf_counter() - t0:.2f} s "
        f"(avg {sum(c.count(',') + 1 for c in captions) / len(captions):.1f} tags)"
    )

    tmp = Path(tempfile.mkdtemp(prefix="kxl-bench-tags-"))
    make_pool(tmp / "pool")
    t0 = time.perf_counter()
    index = build_index(tmp, captions)
    print(f"tag index build: {time.perf_counter() - t0:.2f} s, {len(index.tag_keys):,} distinct tags")
    for query in ("long hair", "long hair, blue eyes -solo", "(1boy | 2girls) AND NOT monochrome", "*hair*"):
        t0 = time.perf_counter()
        for _ in range(5):
            rows = index.filter(query)
        print(f"filter {query!r}: {ms((time.perf_counter() - t0) / 5)} -> {len(rows):,} images")

    if args.disk:
        bench_disk(args.disk, captions)

    from PySide6.QtWidgets import QApplication, QListView

    from kxl_gui.widgets.tags_grid import CELL_SIZE, DatasetGridModel, ThumbnailDelegate, ThumbnailLoader

    app = QApplication.instance() or QApplication([])
    loader = ThumbnailLoader(workers=2)
    model = DatasetGridModel(loader)
    t0 = time.perf_counter()
    model.set_dataset(index)
    rows = model.rowCount()
    print(f"model reset + rowCount ({rows:,} rows): {ms(time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    model.set_rows(index.filter("long hair"))
    model.set_rows(index.filter(""))
    print(f"model filter + reset back to all rows: {ms(time.perf_counter() - t0)}")

    view = QListView()
    view.setViewMode(QListView.ViewMode.IconMode)
    view.setUniformItemSizes(True)
    view.setGridSize(CELL_SIZE)
    view.setResizeMode(QListView.ResizeMode.Adjust)
    view.setMovement(QListView.Movement.Static)
    view.setItemDelegate(ThumbnailDelegate(loader, view))
    view.resize(760, 820)
    t0 = time.perf_counter()
    view.setModel(model)
    view.show()
    app.processEvents()
    print(f"view setModel + first layout/show: {ms(time.perf_counter() - t0)}")

    bar = view.verticalScrollBar()
    cold: list[float] = []
    warm: list[float] = []
    positions = [int(bar.maximum() * k / max(args.frames - 1, 1)) for k in range(args.frames)]
    for pos in positions:
        bar.setValue(pos)
        t0 = time.perf_counter()
        view.viewport().repaint()
        cold.append(time.perf_counter() - t0)
        deadline = time.perf_counter() + 2.0  # let the visible thumbnails arrive, as a user pausing would
        while loader.pending() and time.perf_counter() < deadline:
            app.processEvents()
            time.sleep(0.002)
        app.processEvents()
        t0 = time.perf_counter()
        view.viewport().repaint()
        warm.append(time.perf_counter() - t0)

    def summary(xs: list[float]) -> str:
        xs = sorted(xs)
        return (
            f"median {ms(statistics.median(xs))}, p95 {ms(xs[int(0.95 * (len(xs) - 1))])}, max {ms(xs[-1])}"
        )

    print(f"scroll paint, thumbnails not yet decoded ({len(cold)} frames): {summary(cold)}")
    print(f"scroll paint, visible thumbnails cached ({len(warm)} frames): {summary(warm)}")

    # Decode throughput: ask for a block of entries not seen yet and time until all are delivered.
    n_thumbs = 600
    start = 50_000 if args.images > 50_600 else 0
    loader.set_source(index.image_path)
    before = loader.decoded_count
    t0 = time.perf_counter()
    for entry in range(start, start + n_thumbs):
        loader.request(entry)
    while loader.decoded_count - before < n_thumbs and time.perf_counter() - t0 < 120:
        app.processEvents()
        time.sleep(0.002)
    dt = time.perf_counter() - t0
    done = loader.decoded_count - before
    print(
        f"thumbnail decode (2 worker threads, 512-px webp -> 128 px): {done} in {dt:.2f} s = {done / dt:,.0f}/s"
    )
    loader.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
