"""Referenced datasets (`--image-mode reference`): the trainer, the Tags tab and `materialize` see exactly what a
copy build gives, captions live in captions.jsonl (edits and undo included; the same lines `kxl dataset captions`
writes), everything else per image in the reference table refs.npy, and a shard that went missing, was cut short
or replaced is caught with its name."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer_core.cli import main as kxl_main
from trainer_core.dataset.export import BuildOptions, build_dataset
from trainer_core.dataset.image_refs import close_shards
from trainer_core.dataset.selection import PRESETS
from trainer_core.errors import KxlError
from trainer_core.train.config import DatasetConfig
from trainer_core.train.data import BucketPlan, load_pixels, scan_dataset
from trainer_core.train.data_loader import TrainBatches

CFG = DatasetConfig(resolution=256, min_bucket_reso=128, max_bucket_reso=512, bucket_step=64)
REFERENCE_FILES = {"captions.jsonl", "refs.npy", "skipped.jsonl", "shards.json", "kxl-dataset.toml"}


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".kxl-cache" not in p.parts and ".kxl-undo" not in p.parts
    }


def build(db: Path, images: Path, out: Path, mode: str, **kw) -> None:
    opts = BuildOptions(db=db, images=images, out=out, plan=PRESETS["kohaku-xl-delta"], image_mode=mode, **kw)
    build_dataset(opts, workers=2)


def manifest(root: Path) -> list[dict]:
    """The referenced dataset's images as copy build records plus `ref` (what materialize writes, plus where)."""
    from trainer_core.dataset.image_refs import iter_reference_records

    return [r.record for r in iter_reference_records(root, records=True)]


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


@pytest.fixture
def both_copies(built, tmp_path):
    """Private copies of the copy-built and the referenced dataset (tests that edit captions)."""
    _db, _images, copy, ref = built
    shutil.copytree(copy, tmp_path / "copy")
    shutil.copytree(ref, tmp_path / "ref")
    return tmp_path / "copy", tmp_path / "ref"


def _batches(root: Path, workers: int):
    items = scan_dataset(root)
    plan = BucketPlan(items, CFG, 4)
    spe = plan.steps_per_epoch(1, 1)
    with TrainBatches(plan, CFG, seed=3, order_seed=5, world=1, rank=0, accum=1, steps_per_epoch=spe,
                      start_step=0, total_steps=spe, num_workers=workers) as batches:  # fmt: skip
        return plan, [b for step in range(spe) for b in batches.micro_batches(step)]


# ---- what a reference build writes --------------------------------------------------------------------------------
def test_reference_build_writes_captions_and_a_table_and_no_image_or_caption_file(built):
    import tomllib

    from trainer_core.dataset.ref_table import REF_DTYPE

    _db, _images, copy, ref = built
    assert set(tree(ref)) == REFERENCE_FILES  # no image, no .txt, no <repeats>_<name>/ folder
    assert not any(p.is_dir() for p in ref.iterdir())
    copy_lines = (copy / "manifest.jsonl").read_text("utf-8").splitlines()
    caption_lines = (ref / "captions.jsonl").read_text("utf-8").splitlines()
    table = np.load(ref / "refs.npy", allow_pickle=False)  # plain columns: nothing to unpickle
    assert table.dtype == REF_DTYPE and len(table) == len(caption_lines) == len(copy_lines) > 100
    records = manifest(ref)
    for c, line, record, row in zip(copy_lines, caption_lines, records, table, strict=True):
        copied = json.loads(c)
        # the line `kxl dataset captions` writes for this post, and row i of the table is its image
        assert line == json.dumps({"id": copied["id"], "caption": copied["caption"]}, ensure_ascii=False)
        assert int(row["id"]) == copied["id"]
        pointer = record.pop("ref")
        assert json.dumps(record, ensure_ascii=False) == c  # the copy build's record, rebuilt from the table
        assert (copy / record["file"]).with_suffix(".txt").read_text("utf-8") == record["caption"]
        shard = Path(pointer["shard"])
        assert shard.is_absolute() and shard.name == record["shard"]
        with open(shard, "rb") as fh:  # the pointer is right: these are the image's bytes
            fh.seek(pointer["offset"])
            assert fh.read(pointer["size"]) == (copy / record["file"]).read_bytes()
    assert (ref / "skipped.jsonl").read_bytes() == (copy / "skipped.jsonl").read_bytes()
    info_c = tomllib.loads((copy / "kxl-dataset.toml").read_text("utf-8"))
    info_r = tomllib.loads((ref / "kxl-dataset.toml").read_text("utf-8"))
    assert info_r["output"].pop("image_mode") == "reference"
    assert info_r == info_c  # the same options and summary (counts, bytes, distributions)
    shards = json.loads((ref / "shards.json").read_text("utf-8"))
    assert shards["version"] == 3 and shards["folder"] == info_c["output"]["folder"]
    assert sum(s["posts"] for s in shards["shards"]) == len(caption_lines)
    assert np.bincount(table["shard"]).tolist() == [s["posts"] for s in shards["shards"]]
    for s in shards["shards"]:
        st = os.stat(s["path"])
        assert (s["size"], s["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def test_reference_captions_are_what_kxl_dataset_captions_writes(built, tmp_path):
    """captions.jsonl is `kxl dataset captions`' output for the same posts, byte for byte: the build formats
    nothing per post beyond the captions (issue #20's cost bar)."""
    from trainer_core.dataset.captions_export import write_captions_jsonl
    from trainer_core.dataset.filters import PostFilters

    db, _images, _copy, ref = built
    write_captions_jsonl(db, tmp_path / "all.jsonl", PRESETS["kohaku-xl-delta"], PostFilters(), "card")
    table = np.load(ref / "refs.npy", allow_pickle=False)
    kept = set(table["id"].tolist())
    lines = (tmp_path / "all.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) > len(kept)  # some selected posts have no image (skipped.jsonl)
    expected = b"".join(x for x in lines if json.loads(x)["id"] in kept)
    assert (ref / "captions.jsonl").read_bytes() == expected


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


def test_trainer_scan_is_cached_and_follows_a_manifest_edit(both_copies, tmp_path):
    from trainer_core.tags.bulk_edit import TagEdit, edit_dataset
    from trainer_core.tags.dataset_index import open_dataset
    from trainer_core.train.dataset_scan import cache_roots, scan_table

    _copy, ref = both_copies
    first = scan_table(ref, cache_roots(ref))
    assert first.report["cache"] == "miss" and len(first) > 100
    assert scan_table(ref, cache_roots(ref)).report["cache"] == "hit"  # no manifest read on a warm start
    index = open_dataset(ref)
    edit_dataset(index, TagEdit("add", "zebra_stripes"), [0])
    again = scan_table(ref, cache_roots(ref))
    assert again.report["cache"] == "miss"
    edited = [i for i in range(len(again)) if again.caption(i) != first.caption(i)]
    assert len(edited) == 1 and again.caption(edited[0]).endswith(", zebra stripes")


# ---- the Tags tab: pictures from the shards, captions in captions.jsonl -------------------------------------------
def test_tags_index_lists_referenced_images_with_their_captions(built):
    import numpy as np

    from trainer_core.tags.dataset_index import open_dataset

    _db, _images, copy, ref = built
    a, b = open_dataset(copy), open_dataset(ref)
    assert b.layout == "kohya" and b.captions_in_manifest and not a.captions_in_manifest
    assert not b.problems and len(b.refs) == len(b) == len(a)
    for i in range(len(a)):
        assert (b.entries[i].image, b.entries[i].caption, b.entries[i].size) == (
            a.entries[i].image,
            a.entries[i].caption,
            a.entries[i].size,
        )
    for i in range(0, len(a), 7):
        with a.open_image(i) as x, b.open_image(i) as y:
            assert np.array_equal(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))


def test_bulk_edit_and_undo_of_a_referenced_dataset_match_a_copy(both_copies, tmp_path):
    """The same edit gives a referenced dataset the captions it gives a copy (materialize shows it byte for
    byte); the journal holds only the changed lines; undo restores captions.jsonl exactly."""
    from trainer_core.dataset.materialize import materialize_dataset
    from trainer_core.tags.bulk_edit import TagEdit, edit_dataset, preview_bulk_edit
    from trainer_core.tags.dataset_index import open_dataset
    from trainer_core.tags.edit_journal import last_edit, undo_last

    copy, ref = both_copies
    original = (ref / "captions.jsonl").read_bytes()
    ic, ir = open_dataset(copy), open_dataset(ref)
    edit = TagEdit("replace", "solo", "alone")
    rows = ic.images_with_tag("solo")
    assert len(rows) > 3
    assert preview_bulk_edit(ir, edit).changed == preview_bulk_edit(ic, edit).changed == len(rows)
    done_c = edit_dataset(ic, edit)
    done_r = edit_dataset(ir, edit)
    assert done_r.describe() == done_c.describe()
    assert done_r.files_changed == len(rows) and done_r.manifest_updated
    assert set(tree(ref)) == REFERENCE_FILES  # still no caption file
    header, record = (json.loads(x) for x in done_r.journal.read_text("utf-8").splitlines())
    assert header["captions"] == len(rows) and record["path"] == "captions.jsonl"
    assert "before" not in record and len(record["lines"]) == len(rows)  # the changed lines, not the file
    assert (last_edit(ref).files, last_edit(ref).captions) == (1, len(rows))
    materialize_dataset(ref, tmp_path / "mat")
    assert tree(tmp_path / "mat") == tree(copy)  # .txt captions and manifest as the edited copy has them

    summary = undo_last(ref)
    assert summary.describe().endswith(f"{len(rows):,} caption(s) restored")
    assert (ref / "captions.jsonl").read_bytes() == original
    assert not (ref / ".kxl-undo").exists()


def test_undo_is_refused_when_the_manifest_changed_since(both_copies):
    from trainer_core.tags.bulk_edit import TagEdit, edit_dataset
    from trainer_core.tags.dataset_index import open_dataset
    from trainer_core.tags.edit_journal import undo_last

    _copy, ref = both_copies
    edit_dataset(open_dataset(ref), TagEdit("add", "sunset"), [0, 1])
    edited = (ref / "captions.jsonl").read_bytes()
    (ref / "captions.jsonl").write_bytes(edited.replace(b"sunset", b"sunrise", 1))
    with pytest.raises(KxlError, match="changed since the tag edit") as err:
        undo_last(ref)
    assert str(ref / "captions.jsonl") in str(err.value)
    assert (ref / "captions.jsonl").read_bytes() == edited.replace(b"sunset", b"sunrise", 1)


def test_cancelled_manifest_edit_changes_nothing(both_copies):
    from trainer_core.errors import Cancelled
    from trainer_core.progress import CancelToken, Progress
    from trainer_core.tags.bulk_edit import TagEdit, apply_manifest_edit

    _copy, ref = both_copies
    before = tree(ref)
    token = CancelToken()
    token.cancel()
    ids = [r["id"] for r in manifest(ref)]
    with pytest.raises(Cancelled):
        apply_manifest_edit(ref, ids, TagEdit("add", "night"), Progress(cancel_token=token))
    assert tree(ref) == before and not (ref / ".kxl-undo").exists()


# ---- materialize ----------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("key", "hostile"),
    [("folder", "1_kxl/../../evil"), ("folder", "/tmp/evil"), ("folder", "../1_kxl"), ("folder", "1_kxl/x"),
     ("exts", "webp/../../../tmp/evil"), ("exts", "")],
)  # fmt: skip
def test_materialize_never_writes_where_a_shard_list_points(built, tmp_path, capsys, key, hostile):
    """Output paths are the shard list's folder + the table's integer ids + its extensions, each checked: a
    folder or extension that is not a plain name stops materialize before it writes anything."""
    _db, _images, _copy, ref = built
    src = tmp_path / "ds" / "ref"
    shutil.copytree(ref, src)
    info = json.loads((src / "shards.json").read_text("utf-8"))
    info[key] = [hostile] if key == "exts" else hostile
    (src / "shards.json").write_text(json.dumps(info), encoding="utf-8")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert kxl_main(["dataset", "materialize", str(src), "--out", str(tmp_path / "ds" / "mat")]) == 2
    err = capsys.readouterr().err
    assert "shards.json" in err and "not a readable shard list" in err and repr(hostile) in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/evil.webp").exists() and not Path("/tmp/evil").exists()


def test_a_caption_line_of_another_post_is_caught_with_its_line(built, tmp_path):
    """Row i of refs.npy is line i of captions.jsonl: a line moved, dropped or of another post is an error
    naming the file and the line, never a caption given to another image."""
    _db, _images, _copy, ref = built
    src = tmp_path / "ref"
    shutil.copytree(ref, src)
    lines = (src / "captions.jsonl").read_bytes().splitlines(keepends=True)
    (src / "captions.jsonl").write_bytes(b"".join([lines[0], lines[2], lines[1], *lines[3:]]))
    with pytest.raises(KxlError, match="line 2: 'id' is missing or is not") as err:
        scan_dataset(src)
    assert str(src / "captions.jsonl") in str(err.value)
    (src / "captions.jsonl").write_bytes(b"".join(lines[:-1]))
    with pytest.raises(KxlError, match=f"line {len(lines)}: the file ends before the {len(lines)} rows"):
        scan_dataset(src)
    table = np.load(src / "refs.npy", allow_pickle=False)
    table["offset"][3] = 2**40  # past the end of its shard
    np.save(src / "refs.npy", table, allow_pickle=False)
    (src / "captions.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(KxlError, match=r"row 4 \(post \d+\): 'offset' and 'size' do not lie inside") as err:
        scan_dataset(src)
    assert str(src / "refs.npy") in str(err.value)


def test_hostile_member_names_are_never_paths(built, tmp_path):
    """Only `<digits>.<ext>` members count; a member named like a path is skipped, and nothing lands outside,
    neither when building nor when materializing."""
    from support import write_tar

    db, images, _copy, _ref = built
    shards = tmp_path / "images"
    shutil.copytree(images, shards)
    some = sorted(shards.glob("data-*.tar"))[0]
    with tarfile.open(some) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    pid = members[0][0].split(".")[0]
    evil = [(f"../../{pid}.webp", members[0][1]), (f"/tmp/{pid}.webp", members[0][1]),
            (f"../../../../tmp/evil-{pid}.webp", members[0][1])]  # fmt: skip
    write_tar(some, [*evil, *members[1:]])
    out = tmp_path / "ds" / "ref"
    build(db, shards, out, "reference")
    materialized = tmp_path / "ds" / "mat"
    from trainer_core.dataset.materialize import materialize_dataset

    materialize_dataset(out, materialized)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "images"]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["mat", "ref"]
    assert not Path(f"/tmp/{pid}.webp").exists() and not Path(f"/tmp/evil-{pid}.webp").exists()
    names = {r["file"] for r in manifest(out)}
    assert all(n.startswith("1_kxl/") and "/" not in n[6:] for n in names)
    assert f"1_kxl/{pid}.webp" not in names  # its only member was one of the hostile names
    assert {p.relative_to(materialized).as_posix() for p in materialized.rglob("*.webp")} == names


def test_cli_reference_build_writes_only_into_its_folder(built, tmp_path, capsys):
    db, images, _copy, ref = built
    before = {p: p.stat().st_mtime_ns for p in Path(images).rglob("*")}
    out = tmp_path / "cli-ref"
    rc = kxl_main(["dataset", "build", "--db", str(db), "--images", str(images), "--out", str(out),
                   "--preset", "kohaku-xl-delta", "--image-mode", "reference"])  # fmt: skip
    assert rc == 0
    assert "images are referenced inside their shards" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in Path(images).rglob("*")} == before
    assert [p.name for p in tmp_path.iterdir()] == ["cli-ref"]
    assert tree(out) == tree(ref)


def test_an_older_format_dataset_is_refused_with_a_hint(built, tmp_path, capsys):
    """A referenced dataset of format 2 (a JSON record per image in manifest.jsonl, no table): the trainer, the
    Tags tab and materialize each name its shards.json and say to build it again."""
    from trainer_core.tags.dataset_index import open_dataset

    _db, _images, _copy, ref = built
    old = tmp_path / "old"
    shutil.copytree(ref, old)
    records = manifest(old)
    (old / "manifest.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8"
    )
    (old / "captions.jsonl").unlink()
    (old / "refs.npy").unlink()
    info = json.loads((old / "shards.json").read_text("utf-8"))
    info["version"] = 2
    info["shards"] = {s["path"]: {"size": s["size"], "mtime_ns": s["mtime_ns"], "posts": s["posts"]}
                      for s in info.pop("shards")}  # fmt: skip
    (old / "shards.json").write_text(json.dumps(info), encoding="utf-8")
    for read in (scan_dataset, open_dataset):
        with pytest.raises(KxlError, match="format 2; this version reads format 3") as err:
            read(old)
        assert str(old / "shards.json") in str(err.value) and "build the dataset again" in str(err.value)
    assert kxl_main(["dataset", "materialize", str(old), "--out", str(tmp_path / "mat")]) == 2
    assert "format 2; this version reads format 3" in capsys.readouterr().err
    assert not (tmp_path / "mat").exists()


def test_a_folder_of_image_files_can_be_referenced_too(built, tmp_path):
    """Images as loose `<id>.<ext>` files: each file is its own "shard" (offset 0, guarded by its size and
    mtime); materialize gives the copy build, and a replaced file is caught."""
    from trainer_core.dataset.materialize import materialize_dataset

    db, images, _copy, _ref = built
    folder = tmp_path / "loose"
    folder.mkdir()
    for shard in sorted(images.glob("data-*.tar"))[:40]:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                (folder / m.name).write_bytes(tar.extractfile(m).read())
    build(db, folder, tmp_path / "copy", "copy")
    build(db, folder, tmp_path / "ref", "reference")
    records = manifest(tmp_path / "ref")
    assert len(records) > 10 and all(r["ref"]["offset"] == 0 for r in records)
    materialize_dataset(tmp_path / "ref", tmp_path / "mat")
    assert tree(tmp_path / "mat") == tree(tmp_path / "copy")
    close_shards()
    victim = Path(records[0]["ref"]["shard"])
    victim.write_bytes(victim.read_bytes()[::-1])
    with pytest.raises(KxlError, match="image shard changed since the dataset was built") as err:
        scan_dataset(tmp_path / "ref")
    assert str(err.value.path) == str(victim)


# ---- shards that changed ------------------------------------------------------------------------------------------
def test_missing_shard_names_its_posts(own_shards):
    out, _shards = own_shards
    records = manifest(out)
    victim = records[0]["ref"]["shard"]
    posts = sorted(m["id"] for m in records if m["ref"]["shard"] == victim)
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


def test_shard_cut_short_while_open_is_caught_at_the_read(own_shards):
    out, _shards = own_shards
    items = scan_dataset(out)
    plan = BucketPlan(items, CFG, 1)
    victim = items[0].ref.shard
    last = max(
        (i for i in range(len(items)) if items[i].ref.shard == victim), key=lambda i: items[i].ref.offset
    )
    load_pixels(items[0], plan.assignment(0))  # the shard is open (and was checked) in this process
    with open(victim, "r+b") as fh:
        fh.truncate(items[last].ref.offset + 10)
    with pytest.raises(KxlError, match="image shard is truncated") as err:
        load_pixels(items[last], plan.assignment(last))
    assert str(err.value.path) == victim and str(items[last].ref.post) in str(err.value)


def test_replaced_shard_same_size_and_mtime_is_caught_by_the_header_fingerprint(own_shards):
    """Another tar of exactly the same size and mtime (the same members, packed in another order): the sizes
    and mtimes say nothing, the member header at the recorded offset does."""
    from collections import Counter

    out, _shards = own_shards
    items = scan_dataset(out)
    fullest = Counter(items[i].ref.shard for i in range(len(items))).most_common(1)[0][0]
    first = min(
        (i for i in range(len(items)) if items[i].ref.shard == fullest), key=lambda i: items[i].ref.offset
    )
    ref = items[first].ref
    st = os.stat(ref.shard)
    with tarfile.open(ref.shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert len(members) > 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in reversed(members):
            tar.addfile(m, io.BytesIO(data))
    packed = buf.getvalue().ljust(st.st_size, b"\0")[: st.st_size]
    with open(ref.shard, "wb") as fh:
        fh.write(packed)
    os.utime(ref.shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(ref.shard).st_size, os.stat(ref.shard).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    plan = BucketPlan(scan_dataset(out), CFG, 1)  # size and mtime look right: the scan passes
    with pytest.raises(KxlError, match="was modified") as err:
        load_pixels(items[first], plan.assignment(first))
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


# ---- the header reader agrees with tarfile ------------------------------------------------------------------------
def _odd_shards(folder: Path, names: list[str], slots: list[list[int]], images: dict[int, bytes]) -> None:
    """Six shards (`names`) holding the ids of `slots`: one tar_headers.py reads itself (a directory, a link, a
    "./" name and a later duplicate around the images), and ones it must hand to tarfile (pax headers, a GNU long
    name, a bad checksum in the middle, a cut in the last image, an empty file)."""

    def add(tar: tarfile.TarFile, name: str, data: bytes, **kw) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.pax_headers = kw.get("pax_headers", {})
        tar.addfile(info, io.BytesIO(data))

    def packed(members: list[tuple[str, bytes]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                add(tar, name, data)
        return buf.getvalue()

    a, b = slots[0]
    with tarfile.open(folder / names[0], "w", format=tarfile.USTAR_FORMAT) as tar:
        directory = tarfile.TarInfo("sub")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        add(tar, f"{a}.webp", images[a])
        link = tarfile.TarInfo("link.webp")
        link.type, link.linkname = tarfile.SYMTYPE, f"{a}.webp"
        tar.addfile(link)
        add(tar, f"./{b}.webp", images[b])
        add(tar, f"{b}.webp", b"a later duplicate never wins")
    (c,) = slots[1]
    with tarfile.open(folder / names[1], "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "x" * 120 + ".txt", b"long name")
        add(tar, f"{c}.webp", images[c], pax_headers={"comment": "h\u00e9llo"})
    (d,) = slots[2]
    with tarfile.open(folder / names[2], "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar, "y" * 120, b"long name")
        add(tar, f"{d}.webp", images[d])
    e, f = slots[3]
    data = bytearray(packed([(f"{e}.webp", images[e]), (f"{f}.webp", images[f])]))
    data[512 + (len(images[e]) + 511) // 512 * 512 + 10] ^= 0xFF  # the second header's checksum fails
    (folder / names[3]).write_bytes(bytes(data))
    g, h = slots[4]
    data = packed([(f"{g}.webp", images[g]), (f"{h}.webp", images[h])])
    cut = 1024 + (len(images[g]) + 511) // 512 * 512 + len(images[h]) // 2
    (folder / names[4]).write_bytes(data[:cut])
    (folder / names[5]).write_bytes(b"")


def _webp(k: int) -> bytes:
    from trainer_core.danbooru.demo_images import encode_webp, render_post_image

    return encode_webp(render_post_image(["1girl", "smile"], 48 + 3 * k, 40, k))


def test_header_reader_takes_tarfiles_answer_or_hands_over(tmp_path):
    """Both readers of tar_headers.py (the batch one, then the exact one) give tarfile's members for the shard
    they handle, and hand the others over (None) before reporting anything."""
    import numpy as np

    from trainer_core.dataset.image_header import simple_webp_size
    from trainer_core.dataset.image_refs import fingerprint_int
    from trainer_core.dataset.images import ShardReadError, scan_tar_refs
    from trainer_core.dataset.tar_headers import MEMBER_EXTS, scan_wanted, settle, walk_shard

    slots = [[11, 12], [13], [14], [15, 16], [17, 18], [19]]
    images = {pid: _webp(pid) for slot in slots for pid in slot}
    names = [f"s{j}.tar" for j in range(6)]
    _odd_shards(tmp_path, names, slots, images)
    want = np.array(sorted(images), dtype=np.int64)
    for name in names:
        shard = tmp_path / name
        wanted = set(images)
        fd = os.open(shard, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            exact = scan_wanted(fd, size, wanted)
            walk = walk_shard(fd, size)
            batch = settle([walk])[0] if walk is not None else None
        finally:
            os.close(fd)
        assert wanted == set(images)  # never changed
        if name != "s0.tar":
            assert exact is None and batch is None, name  # tarfile's rules decide these
            continue
        # directories, links, "./" names and a later duplicate: both fast readers take it, as tarfile reads it
        slow = [m for m in scan_tar_refs(shard, name, set(images)) if not isinstance(m, ShardReadError)]
        expected = [(m.post_id, m.ext, m.offset, m.size) for m in slow]
        assert expected == [
            (11, "webp", 1024, len(images[11])),
            (12, "webp", expected[1][2], len(images[12])),
        ]
        assert [(m.post_id, m.ext, m.offset, m.size) for m in exact] == expected
        assert all(m.head == images[m.post_id][: len(m.head)] for m in exact)
        pick = batch.first_wanted(want)
        got = [(int(batch.ids[i]), MEMBER_EXTS[int(batch.ext[i])], int(batch.offset[i]), int(batch.size[i]))
               for i in pick]  # fmt: skip
        assert got == expected
        assert [int(batch.fp[i]) for i in pick] == [fingerprint_int(m.header) for m in exact]
        sizes = [(int(batch.width[i]), int(batch.height[i])) for i in pick]
        assert sizes == [simple_webp_size(images[m.post_id][:30], m.size) for m in exact]


def test_window_walk_finds_tarfiles_members_in_a_big_mixed_shard(tmp_path):
    """A shard over 1 MB (several windows) mixing small members, big ones (read a page each), a directory, a
    link, members whose data holds a valid tar header (a block that looks like a header: the hop goes block by
    block there) and junk after the end: the walk gives tarfile's members, offsets and sizes; cut in a member's
    data or in a header block, it hands the shard over (None)."""
    import random

    from trainer_core.dataset.tar_headers import settle, walk_shard

    rng = random.Random(5)
    fake = tarfile.TarInfo("999.webp")
    fake.size = 10
    fake_block = fake.tobuf(format=tarfile.USTAR_FORMAT)
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for pid in range(1000, 1700):
            roll = rng.random()
            if roll < 0.03:
                size = rng.randint(20_000, 70_000)
            else:
                size = rng.randint(0, 1500)
            data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) + bytes(max(0, size - 64))
            if roll > 0.98 and size >= 1024:
                data = fake_block + data[512:]  # a header inside the data, at a block boundary
            info = tarfile.TarInfo(f"{pid}.webp")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if pid % 97 == 0:
                d = tarfile.TarInfo(f"dir{pid}")
                d.type = tarfile.DIRTYPE
                tar.addfile(d)
                link = tarfile.TarInfo(f"link{pid}.webp")
                link.type, link.linkname = tarfile.SYMTYPE, f"{pid}.webp"
                tar.addfile(link)
    with open(path, "ab") as fh:
        fh.write(fake_block + bytes(rng.getrandbits(8) for _ in range(3000)))  # junk after the end blocks
    with tarfile.open(path) as tar:
        expected = [(int(m.name.split(".")[0]), m.offset_data, m.size) for m in tar.getmembers()
                    if m.isreg() and m.name[0].isdigit()]  # fmt: skip
    assert path.stat().st_size > 2**20 and len(expected) == 700

    def walked(p: Path):
        fd = os.open(p, os.O_RDONLY)
        try:
            return walk_shard(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    headers = settle([walked(path)])[0]
    assert headers is not None
    got = [(int(i), int(o), int(n)) for i, o, n in zip(headers.ids, headers.offset, headers.size, strict=True)
           if i >= 0]  # fmt: skip
    assert got == expected
    whole = path.read_bytes()
    last_id, last_offset, last_size = max(expected, key=lambda m: m[2])  # a big member: cut in its data
    for cut in (last_offset + last_size // 2, expected[300][1] - 512 + 100):  # in a big member, in a header
        (tmp_path / "cut.tar").write_bytes(whole[:cut])
        assert walked(tmp_path / "cut.tar") is None


def test_a_second_build_takes_the_headers_from_the_index(built, tmp_path, monkeypatch):
    """A reference build leaves a header index of the images folder: the next build over the same shards walks
    none of them and writes the same files."""
    from trainer_core.dataset import shard_index

    db, images, _copy, ref = built
    build(db, images, tmp_path / "first", "reference")  # writes the index (if an earlier test has not)

    def no_walk(fd, size):
        raise AssertionError("an indexed shard was walked again")

    monkeypatch.setattr(shard_index, "walk_shard", no_walk)
    monkeypatch.setattr(shard_index, "walk_settled", no_walk)  # the compiled walk, where it was built
    build(db, images, tmp_path / "second", "reference")
    assert tree(tmp_path / "second") == tree(ref)


def test_saving_an_index_removes_those_of_folders_that_are_gone(built, tmp_path, monkeypatch):
    """One index file per images folder: when a folder is deleted, the next save of any index removes its file;
    the index of a folder that still exists, and a file that is no index, stay."""
    from trainer_core.dataset import shard_index
    from trainer_core.dataset.shard_index import ShardIndex, walk_shards

    _db, images, _copy, _ref = built
    monkeypatch.setattr(shard_index, "index_root", lambda: tmp_path / "cache")
    files = {}
    for name in ("kept", "gone", "other"):
        folder = tmp_path / name
        folder.mkdir()
        shard = folder / "data-0001.tar"
        shutil.copy2(next(images.glob("data-*.tar")), shard)
        index = ShardIndex.open(folder)
        index.add(shard, walk_shards([str(shard)])[0])
        index.save()
        files[name] = index.file
    (tmp_path / "cache" / "notes.bin").write_bytes(b"not an index")
    assert all(f.exists() for f in files.values())
    shutil.rmtree(tmp_path / "gone")
    index = ShardIndex.open(tmp_path / "other")
    index.add(
        tmp_path / "other" / "data-0001.tar", walk_shards([str(tmp_path / "other" / "data-0001.tar")])[0]
    )
    index.save()
    assert files["kept"].exists() and files["other"].exists() and not files["gone"].exists()
    assert (tmp_path / "cache" / "notes.bin").exists()
    assert ShardIndex.open(tmp_path / "kept").lookup(tmp_path / "kept" / "data-0001.tar") is not None


def test_a_changed_shard_or_a_damaged_index_means_walking_again(built, tmp_path):
    """An index entry is used only for the shard as it was: rewritten with the same size and mtime (its ctime
    moves) it is walked again, as is every shard of a damaged index file."""
    from trainer_core.dataset.shard_index import ShardIndex, walk_shards

    _db, images, _copy, _ref = built
    folder = tmp_path / "images"
    folder.mkdir()
    shard = folder / "data-0001.tar"
    shutil.copy2(next(images.glob("data-*.tar")), shard)
    (walked,) = walk_shards([str(shard)])
    assert walked is not None and walked.headers is not None and len(walked.headers.ids) > 0
    index = ShardIndex.open(folder)
    assert index.lookup(shard) is None
    index.add(shard, walked)
    index.save()
    hit = ShardIndex.open(folder).lookup(shard)
    assert hit is not None and hit[:4] == walked[:4]
    for a, b in zip(hit.headers, walked.headers, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    assert ShardIndex.open(tmp_path).lookup(tmp_path / "data-0001.tar") is None  # another folder's
    assert ShardIndex.open(folder, enabled=False).lookup(shard) is None
    time.sleep(0.05)  # file times come from a coarse clock (a few ms): let it move on before the rewrite
    st = os.stat(shard)
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # inside the first image: same size
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert os.stat(shard).st_mtime_ns == st.st_mtime_ns
    assert ShardIndex.open(folder).lookup(shard) is None
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    index = ShardIndex.open(folder)
    index.add(shard, walk_shards([str(shard)])[0])
    index.save()
    assert ShardIndex.open(folder).lookup(shard) is not None
    index.file.write_bytes(index.file.read_bytes()[:-8])  # damaged: read as empty
    assert ShardIndex.open(folder).lookup(shard) is None


def test_reference_table_gives_a_copy_builds_record_plus_ref(tmp_path):
    """refs.npy + shards.json + captions.jsonl read back as the copy build's records (json.dumps of them) plus
    the ref, also for the odd values: a rating outside the four labels, no quality or year tag, offsets past
    4 GB, a fingerprint with the top bit set, shard names with quotes, backslashes, % signs and non-ASCII."""
    from trainer_core.dataset.captions import QUALITY_LABELS, YEAR_TAGS
    from trainer_core.dataset.image_refs import ShardInfo, iter_reference_records, shards_file_text
    from trainer_core.dataset.ref_table import compose_table, table_writer
    from trainer_core.dataset.stats import RATING_LABELS

    folder = tmp_path / 'sh "ards"'
    folder.mkdir()
    origins = ["data-0001.tar", 'we"ird\\名前%s.tar']
    paths = [str(folder / o) for o in origins]
    for path in paths:
        with open(path, "wb") as fh:
            fh.truncate(6_000_000_000)  # sparse: offsets past 4 GB lie inside it
    infos = [
        ShardInfo(p, os.stat(p).st_size, os.stat(p).st_mtime_ns, o)
        for p, o in zip(paths, origins, strict=True)
    ]
    exts = ["webp", "jpg", "png"]
    subfolder = "3_card v2"
    rows = np.array([
        [5, 0, 1024, 300, 0x0123456789ABCDEF, 32, 24, 0],
        [77, 1, 5_000_000_000, 1, -1, 1, 1, 1],
        [123456789012, 0, 512, 10_000_000, -(2**63), 16383, 9000, 2],
    ], dtype=np.int64)  # fmt: skip
    captions = ["1girl, solo", 'say "hi"\\ été\n|||tab\there %s', ""]
    rating, quality, year = (
        np.array([0, -1, 7]),
        np.array([len(QUALITY_LABELS) - 1, -1, 0]),
        np.array([-1, 0, 4]),
    )
    out = tmp_path / "ds"
    out.mkdir()
    (out / "shards.json").write_text(
        shards_file_text(tmp_path, subfolder, exts, infos, [2, 1]), encoding="utf-8"
    )
    with table_writer(out / "refs.npy", len(rows)) as append:
        append(compose_table(rows.T, np.array([0, 1]), np.array([0, 1, 2]), rating, quality, year))
    (out / "captions.jsonl").write_text("".join(json.dumps({"id": int(r[0]), "caption": c}, ensure_ascii=False) + "\n"
                                                for r, c in zip(rows, captions, strict=True)), encoding="utf-8")  # fmt: skip
    got = [json.dumps(r.record, ensure_ascii=False) for r in iter_reference_records(out, records=True)]
    expected = []
    for (pid, k, offset, size, fp, w, h, e), c, r, q, y in zip(
        rows.tolist(), captions, rating.tolist(), quality.tolist(), year.tolist(), strict=True
    ):
        record = {"id": pid, "file": f"{subfolder}/{pid}.{exts[e]}", "caption": c,
                  "rating": RATING_LABELS[r] if 0 <= r < 4 else str(r),
                  "quality": QUALITY_LABELS[q] if q >= 0 else None, "year": YEAR_TAGS[y] if y >= 0 else None,
                  "width": w, "height": h, "shard": origins[k], "bytes": size,
                  "ref": {"shard": paths[k], "offset": offset, "size": size, "fp": f"{fp & (2**64 - 1):016x}"}}  # fmt: skip
        expected.append(json.dumps(record, ensure_ascii=False))
    assert got == expected


@pytest.mark.parametrize(
    "root", ["/data/shards", "/data/shards/", "rel/shards", "/data/../data/shards", "/", "."]
)
def test_shard_names_by_string_slicing_are_pathlibs(root):
    """ImageSource.origin / absolute slice strings for listed shards: the answers relative_to and abspath give,
    also for a relative folder, one with "..", the filesystem root and shards in subfolders or above it."""
    from trainer_core.dataset.images import ImageSource

    src = ImageSource(Path(root), "shards")
    for rel in ["data-0001.tar", "sub/data-0002.tar", "../data-0003.tar"]:
        path = Path(root) / rel
        if ".." not in rel:
            assert src.origin(path) == path.relative_to(Path(root)).as_posix()
        assert src.absolute(path) == os.path.abspath(path)


def test_refs_npy_written_in_blocks_is_what_np_save_writes(tmp_path):
    """A build appends refs.npy's rows chunk by chunk: the file is np.save's, byte for byte, and np.load reads
    it without pickle; a table left short is an error and leaves no file behind."""
    from trainer_core.dataset.ref_table import REF_DTYPE, table_writer

    table = np.zeros(7, dtype=REF_DTYPE)
    table["id"], table["offset"], table["fp"] = np.arange(7) * 11, np.arange(7) << 33, np.uint64(2**63 + 5)
    with table_writer(tmp_path / "refs.npy", 7) as append:
        append(table[:3])
        append(table[3:3])
        append(table[3:])
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    assert (tmp_path / "refs.npy").read_bytes() == buf.getvalue()
    assert np.array_equal(np.load(tmp_path / "refs.npy", allow_pickle=False), table)
    with pytest.raises(RuntimeError, match="6 rows written for a table of 7"):
        with table_writer(tmp_path / "short.npy", 7) as append:
            append(table[:6])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refs.npy"]


def test_found_lines_keeps_the_found_posts_lines_byte_for_byte():
    """Cutting out the missing posts' lines keeps the others byte for byte (runs of kept lines at the start,
    middle and end); a text with another number of lines than posts is refused."""
    from trainer_core.dataset.reference_lines import found_lines

    jsonl = (
        b'{"id": 1, "caption": "a"}\n{"id": 2, "caption": "b \\"c\\""}\n{"id": 3, "caption": "\xc3\xa9"}\n'
    )
    lines = jsonl.splitlines(keepends=True)
    for hit in ([False, True, True], [True, False, True], [True, True, False], [False, True, False],
                [True, False, False], [False, False, False]):  # fmt: skip
        got = found_lines(jsonl, 3, np.array(hit))
        assert got == b"".join(line for line, h in zip(lines, hit, strict=True) if h), hit
    assert found_lines(jsonl, 3, np.array([True, True, True])) is jsonl  # all found: passed through as is
    assert found_lines(b"", 0, np.zeros(0, dtype=bool)) == b""
    for hit in ([True, True, True], [True, False, True]):
        with pytest.raises(RuntimeError, match="3 posts came back as 2 lines"):
            found_lines(jsonl[: jsonl.rindex(b"{")], 3, np.array(hit))


def _caption_processes(monkeypatch) -> None:
    """Make a small build take the big-DB path: caption worker processes started for the DB, which then walk
    the shards and compose the manifest lines (reference_build.write_reference_outputs)."""
    from trainer_core.dataset import caption_stream

    monkeypatch.setattr(caption_stream, "PRESTART_MIN_DB_BYTES", 0)
    monkeypatch.setattr(caption_stream, "PROCESS_MIN_POSTS", 1)


@pytest.mark.parametrize("chunk_posts", [None, 7], ids=["one-chunk", "chunks-of-7"])
def test_worker_processes_write_the_same_reference_dataset(built, tmp_path, monkeypatch, chunk_posts):
    """Walks started before the selection and caption lines in worker processes (a big DB's path), or all in
    the build's own process: the same files, byte for byte. With chunks of 7 posts, the first chunks go out
    while the shards are still being located (every line comes back and is cut by the build) and the later
    ones after (cut in the worker): both give the same lines."""
    from trainer_core.dataset import reference_build

    db, images, _copy, ref = built
    _caption_processes(monkeypatch)
    if chunk_posts is not None:
        monkeypatch.setattr(reference_build, "CHUNK_POSTS", chunk_posts)
    build(db, images, tmp_path / "ref", "reference")
    assert tree(tmp_path / "ref") == tree(ref)


@pytest.mark.parametrize("stage", ["Locating", "Writing the captions"])
def test_a_cancelled_reference_build_writes_no_manifest(built, tmp_path, monkeypatch, stage):
    """Cancel while the worker processes walk the shards, or while they caption: the build stops with
    Cancelled and leaves no captions, table or shard list (nothing is written before the end)."""
    from trainer_core.errors import Cancelled
    from trainer_core.progress import CancelToken, Progress

    db, images, _copy, _ref = built
    _caption_processes(monkeypatch)
    token = CancelToken()

    def on_event(event) -> None:
        if event.message.startswith(stage):
            token.cancel()

    opts = BuildOptions(db=db, images=images, out=tmp_path / "ref", plan=PRESETS["kohaku-xl-delta"],
                        image_mode="reference")  # fmt: skip
    with pytest.raises(Cancelled):
        build_dataset(opts, workers=2, progress=Progress(on_event, token))
    assert not (tmp_path / "ref" / "captions.jsonl").exists()
    assert not (tmp_path / "ref" / "refs.npy").exists()
    assert not (tmp_path / "ref" / "shards.json").exists()


def _walk_and_selection(monkeypatch, walk: str, db: Path, posts: int, seed: int) -> list[int]:
    """Choose the header walk a build in this process uses ("numpy", "compiled" or "default"), make a demo DB
    of `posts` posts at `db` and return the card recipe's selection from it."""
    from trainer_core.danbooru.db_reader import open_db
    from trainer_core.danbooru.demo_db import generate_demo_db
    from trainer_core.dataset import shard_index, tar_headers
    from trainer_core.dataset.filters import PostFilters
    from trainer_core.dataset.selection import select_posts

    if walk == "numpy":
        monkeypatch.setattr(shard_index, "COMPILED", False)
    elif walk == "compiled" and not tar_headers.COMPILED:
        pytest.skip("the optional C walk was not built")
    generate_demo_db(db, posts, seed)
    conn = open_db(db)
    try:
        return select_posts(conn, PRESETS["kohaku-xl-delta"], PostFilters()).ids.tolist()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("processes", "walk"),
    [(False, "numpy"), (False, "compiled"), (True, "default")],
    ids=["in-process-numpy-walk", "in-process-compiled-walk", "worker-processes"],
)
def test_odd_shards_give_a_copy_builds_records(tmp_path, monkeypatch, processes, walk):
    """Pax and GNU headers, a damaged shard, a truncated one, an empty one: the reference build reports the
    same images, skipped posts and shard errors as a copy build (tarfile decides where the fast reader cannot),
    whether it walks the shards in this process (with numpy or the compiled walk) or in caption worker
    processes."""
    from collections import defaultdict

    import tomllib

    from trainer_core.dataset.materialize import materialize_dataset

    db = tmp_path / "danbooru2023.db"
    selected = _walk_and_selection(monkeypatch, walk, db, 2000, 0)
    plan = PRESETS["kohaku-xl-delta"]
    by_bucket = defaultdict(list)
    for pid in selected:
        by_bucket[pid % 1000].append(pid)
    pairs = [ids[:2] for ids in by_bucket.values() if len(ids) >= 2]
    singles = [ids[:1] for ids in by_bucket.values() if len(ids) == 1]
    assert len(pairs) >= 3 and len(singles) >= 3
    slots = [pairs[0], singles[0], singles[1], pairs[1], pairs[2], singles[2]]
    names = [f"data-0{slot[0] % 1000:03d}.tar" for slot in slots]
    images = {pid: _webp(k) for k, pid in enumerate(pid for slot in slots for pid in slot)}
    shards = tmp_path / "images"
    shards.mkdir()
    _odd_shards(shards, names, slots, images)
    for mode in ("copy", "reference"):
        if mode == "reference" and processes:
            _caption_processes(monkeypatch)
        opts = BuildOptions(db=db, images=shards, out=tmp_path / mode, plan=plan, image_mode=mode)
        build_dataset(opts, workers=2)
    copy_lines = (tmp_path / "copy" / "manifest.jsonl").read_text("utf-8").splitlines()
    ref_records = manifest(tmp_path / "reference")
    assert len(copy_lines) >= 5
    assert [
        json.dumps({k: v for k, v in r.items() if k != "ref"}, ensure_ascii=False) for r in ref_records
    ] == (copy_lines)
    assert (tmp_path / "reference/skipped.jsonl").read_bytes() == (
        tmp_path / "copy/skipped.jsonl"
    ).read_bytes()
    info_c = tomllib.loads((tmp_path / "copy/kxl-dataset.toml").read_text("utf-8"))
    info_r = tomllib.loads((tmp_path / "reference/kxl-dataset.toml").read_text("utf-8"))
    assert info_r["summary"] == info_c["summary"]
    assert names[5] in {e["shard"] for e in info_c["summary"]["shard_errors"]}  # the empty file
    assert info_c["summary"]["corrupt"] == 1  # the image cut in half
    materialize_dataset(tmp_path / "reference", tmp_path / "mat")
    assert tree(tmp_path / "mat") == tree(tmp_path / "copy")


@pytest.mark.parametrize(("walk", "verify"), [("numpy", False), ("compiled", False), ("compiled", True)])
def test_other_formats_in_plain_shards_give_a_copy_builds_records(tmp_path, monkeypatch, walk, verify):
    """Shards the fast walk settles, holding PNG, JPEG, extended (alpha) WebP, plain WebP and an undecodable
    member: those the first 30 bytes do not size are measured one by one (or all decoded with
    --verify-images), and the reference build gives the copy build's records, skipped posts and summary."""
    from collections import defaultdict

    import tomllib

    db = tmp_path / "danbooru2023.db"
    selected = _walk_and_selection(monkeypatch, walk, db, 600, 1)
    plan = PRESETS["kohaku-xl-delta"]
    shards = tmp_path / "images"
    shards.mkdir()
    by_shard = defaultdict(list)
    for pid in selected[:60]:
        by_shard[f"data-{pid % 1000 // 500 * 1000 + pid % 1000:04d}.tar"].append(pid)  # two shards per bucket
    formats = ["PNG", "JPEG", "WEBP-alpha", "WEBP", "broken"]
    for name, pids in by_shard.items():
        with tarfile.open(shards / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for pid in pids:
                fmt = formats[pid % len(formats)]
                buf = io.BytesIO()
                image = Image.new(
                    "RGBA" if fmt == "WEBP-alpha" else "RGB", (40 + pid % 7, 30), (pid % 256, 9, 99)
                )
                if fmt == "broken":
                    buf.write(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(20))
                else:
                    image.save(buf, fmt.split("-")[0])
                ext = {"PNG": "png", "JPEG": "jpg"}.get(fmt, "webp")
                info = tarfile.TarInfo(f"{pid}.{ext}")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    for mode in ("copy", "reference"):
        opts = BuildOptions(db=db, images=shards, out=tmp_path / mode, plan=plan, image_mode=mode,
                            verify_images=verify)  # fmt: skip
        build_dataset(opts, workers=2)
    copy_lines = (tmp_path / "copy" / "manifest.jsonl").read_text("utf-8").splitlines()
    records = [json.dumps({k: v for k, v in r.items() if k != "ref"}, ensure_ascii=False)
               for r in manifest(tmp_path / "reference")]  # fmt: skip
    assert len(copy_lines) >= 40 and records == copy_lines
    assert {json.loads(line)["file"].rsplit(".", 1)[1] for line in copy_lines} == {"png", "jpg", "webp"}
    assert (tmp_path / "reference/skipped.jsonl").read_bytes() == (
        tmp_path / "copy/skipped.jsonl"
    ).read_bytes()
    info_c = tomllib.loads((tmp_path / "copy/kxl-dataset.toml").read_text("utf-8"))
    info_r = tomllib.loads((tmp_path / "reference/kxl-dataset.toml").read_text("utf-8"))
    assert info_r["summary"] == info_c["summary"] and info_c["summary"]["corrupt"] >= 5


def test_simple_webp_size_agrees_with_image_size():
    """The quick WebP size (one image, and a batch in numpy) answers only where image_size of the whole file
    answers the same; mutated headers make it step aside."""
    import random

    import numpy as np
    from PIL import Image

    from trainer_core.dataset.image_header import image_size, simple_webp_size, simple_webp_sizes

    rnd = random.Random(5)
    samples = []
    for lossless in (False, True):
        for w, h in ((1, 1), (17, 3), (300, 200), (640, 31)):
            buf = io.BytesIO()
            mode = "RGBA" if lossless else "RGB"
            Image.new(mode, (w, h), (10, 200, 30)).save(buf, format="WEBP", lossless=lossless)
            samples.append(buf.getvalue())
    blobs = []
    for data in samples:
        for _ in range(300):
            mutated = bytearray(data)
            for _ in range(rnd.randint(0, 2)):
                mutated[rnd.randrange(min(len(mutated), 40))] = rnd.randrange(256)
            blobs.append(bytes(mutated))
    heads = np.array([list(b[:30].ljust(30, b"\0")) for b in blobs], dtype=np.uint8)
    widths, heights = simple_webp_sizes(heads, np.array([len(b) for b in blobs]))
    answered = 0
    for blob, w, h in zip(blobs, widths.tolist(), heights.tolist(), strict=True):
        got = simple_webp_size(blob[:3584], len(blob))
        assert (w, h) == (got or (0, 0))  # the batch form is the single form
        if got is not None:
            answered += 1
            whole = image_size(blob)
            assert whole is not None and whole[1:] == got
    assert answered > 500 and answered < len(blobs)


# ---- the wizard's request -------------------------------------------------------------------------------------
def test_wizard_form_asks_for_a_reference_build_and_round_trips():
    from kxl_gui.state.dataset_form import DatasetForm

    form = DatasetForm(db="/d/danbooru2023.db", images="/d/images", out="/d/out")
    assert form.image_mode == "copy" and form.to_engine().image_mode == "copy"
    form.image_format, form.max_pixels = "webp", 1024 * 1024  # chosen for a copy, then Reference picked
    form.image_mode = "reference"
    opts = form.to_engine()
    assert (opts.image_mode, opts.image_format, opts.max_pixels) == ("reference", "copy", None)
    back = DatasetForm.from_engine(opts, workers=form.workers)
    assert back.image_mode == "reference" and back.to_engine() == opts
    form.image_mode = "mirror"
    with pytest.raises(KxlError, match="images 'mirror': choose one of copy, reference"):
        form.to_engine()


@pytest.mark.parametrize("mode", ["reference", "copy"])
def test_a_build_computes_the_db_fingerprint_once(built, tmp_path, monkeypatch, mode):
    """The build's options and the column cache's key share one DB fingerprint (~0.4 s on a 1 M-post DB)."""
    from trainer_core.danbooru.db_reader import db_fingerprint
    from trainer_core.dataset import column_cache, export

    calls = []

    def counted(conn, path):
        calls.append(path)
        return db_fingerprint(conn, path)

    monkeypatch.setattr(export, "db_fingerprint", counted)
    monkeypatch.setattr(column_cache, "db_fingerprint", counted)
    db, images, _copy, _ref = built
    build(db, images, tmp_path / "ds", mode)
    assert len(calls) == 1


def test_dataset_stats_of_a_referenced_dataset_match_its_copy(built, capsys):
    from trainer_core.dataset.stats import dataset_stats

    _db, _images, copy, ref = built
    summary_c, summary_r = dataset_stats(copy)[1], dataset_stats(ref)[1]
    assert summary_r.to_toml_dict() == summary_c.to_toml_dict() and summary_r.written > 100
    assert kxl_main(["dataset", "stats", str(ref)]) == 0
    out_r = capsys.readouterr().out
    assert kxl_main(["dataset", "stats", str(copy)]) == 0
    out_c = capsys.readouterr().out
    assert f"{summary_r.written:,}" in out_r and out_r.replace(str(ref), str(copy)) == out_c
