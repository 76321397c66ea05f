"""Referenced datasets (`--image-mode reference`): the trainer, the Tags tab and `materialize` see exactly what a
copy build gives, and a shard that went missing or changed is caught with its name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trainer_core.cli import main as kxl_main
from trainer_core.dataset.export import BuildOptions, build_dataset
from trainer_core.dataset.image_refs import close_shards
from trainer_core.dataset.selection import PRESETS
from trainer_core.errors import KxlError
from trainer_core.train.config import DatasetConfig
from trainer_core.train.data import BucketPlan, load_pixels, scan_dataset
from trainer_core.train.data_loader import TrainBatches

CFG = DatasetConfig(resolution=256, min_bucket_reso=128, max_bucket_reso=512, bucket_step=64)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".kxl-cache" not in p.parts
    }


def build(db: Path, images: Path, out: Path, mode: str) -> None:
    opts = BuildOptions(db=db, images=images, out=out, plan=PRESETS["kohaku-xl-delta"], image_mode=mode)
    build_dataset(opts, workers=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from trainer_core.demo import init_demo

    root = tmp_path_factory.mktemp("dsref")
    ws = init_demo(root / "ws", posts=150, seed=0, models=False)
    build(ws.db_path, ws.images_path, root / "copy", "copy")
    build(ws.db_path, ws.images_path, root / "ref", "reference")
    return ws.db_path, ws.images_path, root / "copy", root / "ref"


@pytest.fixture
def own_shards(built, tmp_path):
    """A referenced dataset over a private copy of the shards, which the test may damage."""
    db, images, _copy, _ref = built
    shards = tmp_path / "images"
    shutil.copytree(images, shards)
    out = tmp_path / "ref"
    build(db, shards, out, "reference")
    close_shards()
    yield out, shards
    close_shards()


def _batches(root: Path, workers: int):
    items = scan_dataset(root)
    plan = BucketPlan(items, CFG, 4)
    spe = plan.steps_per_epoch(1, 1)
    with TrainBatches(plan, CFG, seed=3, order_seed=5, world=1, rank=0, accum=1, steps_per_epoch=spe,
                      start_step=0, total_steps=spe, num_workers=workers) as batches:  # fmt: skip
        return plan, [b for step in range(spe) for b in batches.micro_batches(step)]


def test_reference_build_writes_no_image_and_the_same_records(built):
    _db, _images, copy, ref = built
    files = tree(ref)
    assert not [f for f in files if f.endswith((".webp", ".png", ".jpg"))]
    assert {
        "manifest.jsonl",
        "skipped.jsonl",
        "shards.json",
        "kxl-dataset.toml",
        "sd-scripts-dataset.toml",
    } <= set(files)
    copy_manifest = [json.loads(x) for x in (copy / "manifest.jsonl").read_text("utf-8").splitlines()]
    ref_manifest = [json.loads(x) for x in (ref / "manifest.jsonl").read_text("utf-8").splitlines()]
    assert len(ref_manifest) == len(copy_manifest) > 100
    for c, r in zip(copy_manifest, ref_manifest, strict=True):
        pointer = r.pop("ref")
        assert r == c
        shard = Path(pointer["shard"])
        assert shard.is_absolute() and shard.name == c["shard"]
        with open(shard, "rb") as fh:  # the pointer is right: these are the image's bytes
            fh.seek(pointer["offset"])
            assert fh.read(pointer["size"]) == (copy / c["file"]).read_bytes()
    assert (ref / "skipped.jsonl").read_bytes() == (copy / "skipped.jsonl").read_bytes()
    captions = {k: v for k, v in tree(copy).items() if k.endswith(".txt")}
    assert {k: v for k, v in files.items() if k.endswith(".txt")} == captions
    shards = json.loads((ref / "shards.json").read_text("utf-8"))["shards"]
    assert sum(s["posts"] for s in shards.values()) == len(ref_manifest)
    for path, s in shards.items():
        st = os.stat(path)
        assert (s["size"], s["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("workers", [0, 2])
def test_identical_batches_from_references_and_copies(built, workers):
    import torch

    _db, _images, copy, ref = built
    plan_c, got_c = _batches(copy, workers)
    plan_r, got_r = _batches(ref, workers)
    assert plan_r.bucket_counts() == plan_c.bucket_counts()
    assert [plan_r.assignment(i) for i in range(len(plan_r.items))] == [
        plan_c.assignment(i) for i in range(len(plan_c.items))
    ]
    assert len(got_r) == len(got_c) > 0
    for r, c in zip(got_r, got_c, strict=True):
        assert r.entries == c.entries and r.items == c.items and r.captions == c.captions
        assert torch.equal(r.time_ids, c.time_ids)
        assert torch.equal(r.pixels, c.pixels)


def test_tags_tab_reads_referenced_images(built):
    import numpy as np

    from trainer_core.tags.dataset_index import open_dataset

    _db, _images, copy, ref = built
    a, b = open_dataset(copy), open_dataset(ref)
    assert b.layout == "kohya" and not b.problems and len(b.refs) == len(b) == len(a)
    for i in range(0, len(a), 7):
        assert (b.entries[i].image, b.entries[i].caption) == (a.entries[i].image, a.entries[i].caption)
        with a.open_image(i) as x, b.open_image(i) as y:
            assert np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))


def test_materialize_equals_copy_build(built, tmp_path, capsys):
    _db, _images, copy, ref = built
    out = tmp_path / "mat"
    assert kxl_main(["dataset", "materialize", str(ref), "--out", str(out)]) == 0
    assert tree(out) == tree(copy)
    assert not [p for p in tmp_path.iterdir() if p.name != "mat"]  # its temp folder is gone
    capsys.readouterr()
    assert kxl_main(["dataset", "materialize", str(ref), "--out", str(out)]) != 0
    assert "output folder exists and is not empty" in capsys.readouterr().err
    assert kxl_main(["dataset", "materialize", str(copy), "--out", str(tmp_path / "x")]) != 0
    assert "not a referenced dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_reference_build_writes_only_into_its_folder(built, tmp_path):
    db, images, _copy, ref = built
    before = {p: p.stat().st_mtime_ns for p in Path(images).rglob("*")}
    out = tmp_path / "cli-ref"
    rc = kxl_main(["dataset", "build", "--db", str(db), "--images", str(images), "--out", str(out),
                   "--preset", "kohaku-xl-delta", "--image-mode", "reference"])  # fmt: skip
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in Path(images).rglob("*")} == before
    assert [p.name for p in tmp_path.iterdir()] == ["cli-ref"]
    assert tree(out) == tree(ref)


def test_hostile_member_names_are_never_paths(built, tmp_path):
    """Only `<digits>.<ext>` members count; a member named like a path is skipped, and nothing lands outside."""
    import tarfile

    from support import write_tar

    db, images, _copy, _ref = built
    shards = tmp_path / "images"
    shutil.copytree(images, shards)
    some = sorted(shards.glob("data-*.tar"))[0]
    with tarfile.open(some) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    pid = members[0][0].split(".")[0]
    write_tar(some, [(f"../../{pid}.webp", members[0][1]), (f"/tmp/{pid}.webp", members[0][1]), *members[1:]])
    out = tmp_path / "ds" / "ref"
    build(db, shards, out, "reference")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "images"]
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["ref"]
    names = {json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text("utf-8").splitlines()}
    assert all(n.startswith("1_kxl/") and "/" not in n[6:] for n in names)


def test_missing_shard_names_its_posts(own_shards):
    out, shards = own_shards
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text("utf-8").splitlines()]
    victim = manifest[0]["ref"]["shard"]
    posts = sorted(m["id"] for m in manifest if m["ref"]["shard"] == victim)
    os.rename(victim, victim + ".gone")
    with pytest.raises(KxlError) as err:
        scan_dataset(out)
    assert victim in str(err.value) and f"posts {', '.join(map(str, posts[:10]))}" in str(err.value)


def test_truncated_shard_is_caught(own_shards):
    out, _shards = own_shards
    items = scan_dataset(out)
    victim = items[0].ref.shard
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) - 1024)
    with pytest.raises(KxlError, match="changed since the dataset was built") as err:
        scan_dataset(out)
    assert str(err.value.path) == victim
    plan = BucketPlan(items, CFG, 1)  # a run that started before the damage: the read itself stops
    with pytest.raises(KxlError, match="changed since the dataset was built") as err:
        load_pixels(items[0], plan.assignment(0))
    assert str(err.value.path) == victim


def test_replaced_shard_same_size_and_mtime_is_caught_by_the_fingerprint(own_shards):
    out, _shards = own_shards
    items = scan_dataset(out)
    ref = items[0].ref
    st = os.stat(ref.shard)
    with open(ref.shard, "r+b") as fh:  # other bytes where the image was, size and mtime kept
        fh.seek(ref.offset + 40)
        fh.write(b"\x00" * 64)
    os.utime(ref.shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(ref.shard).st_size == st.st_size
    plan = BucketPlan(scan_dataset(out), CFG, 1)  # size and mtime look right: the scan passes
    with pytest.raises(KxlError, match="was modified") as err:
        load_pixels(items[0], plan.assignment(0))
    assert str(err.value.path) == ref.shard and str(ref.post) in str(err.value)


def test_replaced_shard_other_mtime_is_caught(own_shards):
    out, _shards = own_shards
    items = scan_dataset(out)
    shard = items[0].ref.shard
    st = os.stat(shard)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(KxlError, match="modification time differs") as err:
        scan_dataset(out)
    assert str(err.value.path) == shard


def test_preflight_reports_referenced_shards(built, tmp_path):
    from trainer_core.train.config import load_preset
    from trainer_core.train.runs import preflight

    _db, _images, _copy, ref = built
    cfg = load_preset("tiny-demo")
    cfg.dataset.path = str(ref)
    report = preflight(cfg)
    texts = [i.message for i in report.items if i.topic == "dataset"]
    assert any("by reference from" in t and "all present" in t for t in texts), texts
