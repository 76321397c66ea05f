"""#14.5: the run start's dataset scan. Sizes from manifest.jsonl equal the header scan; a changed file is rescanned;
the scan cache is reused, invalidated on change and shared by the ranks; the array-backed bucket plan equals the
scalar rules and the old batch order."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from trainer_core.buckets import assign_bucket, assign_bucket_no_upscale, make_buckets
from trainer_core.dataset.image_header import image_file_size
from trainer_core.errors import KxlError
from trainer_core.train.config import DatasetConfig
from trainer_core.train.data import BucketPlan, ImageItem, assign_buckets, scan_dataset, tag_frequency
from trainer_core.train.dataset_scan import (
    KEEP_SCANS,
    LATEST_FILE,
    cache_roots,
    scan_for_training,
    scan_table,
)

SIZES = [(96, 64), (64, 96), (64, 64), (100, 70), (70, 100), (128, 64), (37, 91), (90, 90)]


@pytest.fixture(autouse=True, params=["inline", "threads"])
def _io_mode(request, monkeypatch):
    """Caption and header reads in chunks of 3 (1024 in real use), on this thread (files in the page cache) or in
    reader threads (files that come from disk)."""
    import trainer_core.train.dataset_scan as dataset_scan

    monkeypatch.setattr(dataset_scan, "_IO_CHUNK", 3)
    monkeypatch.setattr(dataset_scan, "_SLOW_READ_S", float("inf") if request.param == "inline" else 0.0)


def _image(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _dataset(root: Path, manifest: bool = True) -> Path:
    """A builder-like dataset: `<repeats>_<name>/<id>.<ext>` + captions, and manifest.jsonl written last with the
    builder's record fields (dataset/export.py)."""
    records = []
    for sub_name, ids in (("3_main", range(0, 6)), ("1_extra", range(6, 8))):
        sub = root / sub_name
        sub.mkdir(parents=True)
        for i in ids:
            name = f"{i}.{'webp' if i % 2 else 'png'}"
            _image(sub / name, SIZES[i], seed=i)
            (sub / f"{i}.txt").write_text(f"1girl ||| tag{i}, red", encoding="utf-8")
            # a caption that spells out other field values must not fool the manifest reader
            caption = (
                f"1girl ||| tag{i}, red"
                if i != 2
                else '", "width": 1, "height": 2, "shard": "s", "bytes": 3}'
            )
            records.append({"id": i, "file": f"{sub_name}/{name}", "caption": caption,
                            "rating": "general", "quality": None, "year": None, "width": SIZES[i][0],
                            "height": SIZES[i][1], "shard": "data-0000.tar",
                            "bytes": (sub / name).stat().st_size})  # fmt: skip
    if manifest:
        (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return root


def _older(path: Path, than: Path) -> None:
    st = than.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))


def _newer(path: Path, than: Path) -> None:
    st = than.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_sizes_from_the_manifest_equal_the_header_scan(tmp_path):
    root = _dataset(tmp_path / "ds")
    for name in (".png", "..png", "notes.md"):  # no image extension by os.path.splitext's rule: not images
        (root / "3_main" / name).write_bytes(b"x")
    table = scan_dataset(root)
    assert table.report["sizes_manifest"] == 8 and table.report["sizes_header"] == 0
    headers = [image_file_size(it.path) for it in table]
    assert [it.size for it in table] == headers
    # Same items as a dataset without the manifest (sizes from headers), in the same order.
    plain = scan_dataset(_dataset(tmp_path / "plain", manifest=False))
    assert plain.report["sizes_header"] == 8
    assert [
        (it.path.relative_to(tmp_path / "plain"), it.caption, it.repeats, it.subset, it.size) for it in plain
    ] == [(it.path.relative_to(root), it.caption, it.repeats, it.subset, it.size) for it in table]
    assert table[0] == ImageItem(root / "1_extra" / "6.png", "1girl ||| tag6, red", 1, "1_extra", SIZES[6])
    assert tag_frequency(table) == tag_frequency(list(table))  # the table's fast path = the generic one


def test_a_manifest_record_is_trusted_only_for_an_unchanged_file(tmp_path):
    root = _dataset(tmp_path / "ds")
    manifest = root / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    for r in records:
        if r["file"] == "3_main/0.png":
            r["width"], r["height"] = 999, 999  # what the build saw; the file on disk is another picture now
        if r["file"] == "1_extra/7.webp":
            del r["bytes"]  # a manifest without file sizes cannot vouch for anything
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    _newer(root / "3_main" / "0.png", manifest)  # same byte count, but changed after the manifest was written
    resized = root / "3_main" / "1.webp"
    _image(resized, (50, 80), seed=98)  # replaced by a file of another byte count, mtime kept old
    _older(resized, manifest)
    table = scan_dataset(root)
    by_name = {it.path.name: it.size for it in table}
    assert by_name["0.png"] == SIZES[0] and by_name["1.webp"] == (50, 80) and by_name["7.webp"] == SIZES[7]
    assert table.report["sizes_header"] == 3 and table.report["sizes_manifest"] == 5


def test_the_cache_is_reused_and_a_changed_file_is_rescanned(tmp_path):
    root = _dataset(tmp_path / "ds")
    caches = cache_roots(root, tmp_path / "run")
    first = scan_table(root, caches)
    assert first.report["cache"] == "miss"
    folder = root / ".kxl-cache" / "train-scan" / f"scan-{first.fingerprint}"
    assert first.cache_dir == folder and (folder / "meta.json").is_file()
    # data only, no pickle: numpy arrays, the captions as raw bytes, JSON
    assert sorted(p.suffix for p in folder.iterdir()) == [".bin", ".json"] + [".npy"] * 6
    for npy in folder.glob("*.npy"):
        np.load(npy, allow_pickle=False)

    again = scan_table(root, caches)  # nothing changed: the stored scan, not one caption or header read
    assert again.report["cache"] == "hit" and again.fingerprint == first.fingerprint
    assert list(again) == list(first) and again.content_digest() == first.content_digest()

    # one image replaced (another size), one caption edited, one image added
    img = root / "3_main" / "2.png"
    _image(img, (120, 60), seed=7)
    (root / "3_main" / "3.txt").write_text("1girl ||| edited", encoding="utf-8")
    _image(root / "1_extra" / "9.png", (64, 64), seed=9)
    (root / "1_extra" / "9.txt").write_text("new", encoding="utf-8")
    changed = scan_table(root, caches)
    assert changed.report["cache"] == "partial" and changed.fingerprint != first.fingerprint
    assert changed.report["sizes_header"] == 2  # the replaced image (newer than the manifest) and the new one
    assert changed.report["sizes_cached"] == 7 and changed.report["captions_read"] == 2
    items = {it.path.name: it for it in changed}
    assert items["2.png"].size == (120, 60) and items["3.webp"].caption == "1girl ||| edited"
    assert items["9.png"].size == (64, 64) and len(changed) == 9
    latest = json.loads((folder.parent / LATEST_FILE).read_text())
    assert latest["fingerprint"] == changed.fingerprint
    assert scan_table(root, caches).report["cache"] == "hit"

    for n in range(KEEP_SCANS + 2):  # old scans are pruned
        (root / "1_extra" / "9.txt").write_text(f"new {n}", encoding="utf-8")
        scan_table(root, caches)
    assert len(list(folder.parent.glob("scan-*"))) == KEEP_SCANS


def test_a_damaged_cache_is_a_miss_and_errors_still_name_the_file(tmp_path):
    root = _dataset(tmp_path / "ds")
    caches = cache_roots(root)
    first = scan_table(root, caches)
    (first.cache_dir / "size.npy").write_bytes(b"not an npy file")
    again = scan_table(root, caches)
    assert again.report["cache"] != "hit" and [it.size for it in again] == [it.size for it in first]
    (root / "3_main" / "4.txt").write_bytes(b"\xff\xfe caption")
    with pytest.raises(KxlError, match="UTF-8") as info:
        scan_table(root, caches)
    assert str(root / "3_main" / "4.txt") in str(info.value)
    (root / "3_main" / "4.txt").unlink()
    with pytest.raises(KxlError, match="no caption file") as info:
        scan_table(root, caches)
    assert str(root / "3_main" / "4.png") in str(info.value)


def test_ranks_share_one_scan_and_plan(tmp_path):
    root = _dataset(tmp_path / "ds")
    cfg = DatasetConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, bucket_step=64)
    sent = []
    plans = []
    rank0 = scan_for_training(root, tmp_path / "run", rank=0, world=2, broadcast=lambda m: sent.append(m) or m,
                              prepare=lambda s: plans.append(BucketPlan(s, cfg, 2)))  # fmt: skip
    assert len(sent) == 1 and sent[0]["folder"] == str(rank0.cache_dir) and len(plans) == 1
    assert list(rank0.cache_dir.glob("plan-*.npy"))  # rank 0 stored the plan before telling the others
    rank1 = scan_for_training(root, tmp_path / "run", rank=1, world=2, broadcast=lambda m: sent[0])
    assert rank1.report["cache"] == "shared" and rank1.content_digest() == rank0.content_digest()
    plan1 = BucketPlan(rank1, cfg, 2)
    assert plan1.epoch_batches(0, 5) == plans[0].epoch_batches(0, 5)
    # rank 0's cache is not visible (another machine): the rank scans itself and must find the same data
    assert scan_for_training(root, None, rank=1, world=2, broadcast=lambda m: {**sent[0], "folder": None}).report[
        "images"] == 8  # fmt: skip
    with pytest.raises(KxlError, match="differs between rank 0 and rank 1"):
        scan_for_training(root, None, rank=1, world=2,
                          broadcast=lambda m: {**sent[0], "folder": None, "digest": "0" * 32})  # fmt: skip
    # an error on rank 0 reaches the others instead of leaving them waiting
    with pytest.raises(KxlError, match="caption is empty"):
        scan_for_training(
            root, None, rank=1, world=2, broadcast=lambda m: {"error": "x.txt: caption is empty"}
        )
    (root / "3_main" / "0.txt").write_text(" ", encoding="utf-8")
    sent.clear()
    with pytest.raises(KxlError, match="caption is empty"):
        scan_for_training(root, None, rank=0, world=2, broadcast=lambda m: sent.append(m) or m)
    assert "caption is empty" in sent[0]["error"]


def test_vectorised_bucket_assignment_equals_the_scalar_rules():
    rng = random.Random(5)
    buckets = make_buckets((1024, 1024), 256, 4096, 64)
    sizes = [(rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(3000)]
    sizes += list(buckets[:20]) + [(1920, 1080), (3000, 4000), (500, 4000), (600, 800), (1, 5000), (5000, 1)]
    cfg = DatasetConfig()
    got = assign_buckets(sizes, cfg, buckets)
    want = [(*a.bucket, *a.resized) for a in (assign_bucket(s, buckets) for s in sizes)]
    assert got.tolist() == [list(w) for w in want]
    cfg = DatasetConfig(bucket_no_upscale=True)
    sizes = [s for s in sizes if min(s) >= 64]
    got = assign_buckets(sizes, cfg, buckets)
    want = [(*a.bucket, *a.resized) for a in (assign_bucket_no_upscale(s, 1024 * 1024, 64) for s in sizes)]
    assert got.tolist() == [list(w) for w in want]


def _old_epoch_batches(items, cfg, batch_size, epoch, seed):
    """The batch order as BucketPlan made it with Python objects before #14.5."""
    buckets = make_buckets((cfg.resolution, cfg.resolution), cfg.min_bucket_reso, cfg.max_bucket_reso,
                           cfg.bucket_step)  # fmt: skip
    entries = []
    for it in items:
        a = assign_bucket(it.size, buckets)
        entries += [a.bucket] * it.repeats
    rng = random.Random(f"kxl-batches:{seed}:{epoch}")
    by_bucket = {}
    for i, b in enumerate(entries):
        by_bucket.setdefault(b, []).append(i)
    batches = []
    for b in sorted(by_bucket):
        idx = by_bucket[b]
        rng.shuffle(idx)
        batches.extend(idx[i : i + batch_size] for i in range(0, len(idx), batch_size))
    rng.shuffle(batches)
    return batches


def test_the_array_plan_gives_the_old_batch_order():
    rng = random.Random(1)
    items = [ImageItem(Path(f"{i}.png"), "x", rng.randint(1, 3), "s", (rng.randint(200, 3000), rng.randint(200, 3000)))
             for i in range(400)]  # fmt: skip
    cfg = DatasetConfig()
    plan = BucketPlan(items, cfg, 4)
    for epoch, seed in ((0, 1337), (3, 7)):
        assert plan.epoch_batches(epoch, seed) == _old_epoch_batches(items, cfg, 4, epoch, seed)
    assert plan.batches_per_epoch() == len(plan.epoch_batches(0, 0))
    assert sum(plan.bucket_counts().values()) == len(plan.entries) == sum(it.repeats for it in items)
    e = plan.entries[5]
    assert e.index == 5 and e.assignment == assign_bucket(items[e.item].size, plan.buckets)
    part = plan.slice([5, 9])
    assert set(part.entries) == {5, 9} and part.items[e.item] == items[e.item]
