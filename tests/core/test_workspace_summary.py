"""summarize_workspace / format_summary on hand-built workspaces (no torch, no Qt)."""

from __future__ import annotations

import json
import tarfile

from trainer_core.workspace import load_workspace
from trainer_core.workspace_summary import format_bytes, format_summary, summarize_workspace


def test_summary_of_a_complete_workspace(make_workspace):
    root = make_workspace(posts=3)
    s = summarize_workspace(load_workspace(root))

    assert s.db.error is None
    assert s.db.counts == {"post": 3, "tag": 2, "posttagrelation": 5, "localpost": 0}
    assert s.images.kind == "tar-shards"
    assert s.images.shard_count == 2
    assert s.images.total_bytes == sum(p.stat().st_size for p in (root / "images").glob("data-*.tar"))
    assert [c.role for c in s.checkpoints] == ["gamma", "beta"]
    for ck in s.checkpoints:
        assert ck.error is None and ck.problem is None
        assert (ck.info.kind, ck.info.arch, ck.info.dtype, ck.info.tensor_count) == (
            "sdxl-single-file",
            "kxl-tiny",
            "fp16",
            4,
        )
    assert s.datasets == [] and s.runs == []


def test_each_broken_part_is_reported_without_hiding_the_others(make_workspace):
    root = make_workspace(db_schema=False, truncated_role="beta", shards=0)
    s = summarize_workspace(load_workspace(root))

    assert "danbooru.db" in s.db.error and "table 'post' is missing" in s.db.error
    assert s.db.counts == {}
    assert "no data-NXYZ.tar shards and no image files" in s.images.error
    gamma, beta = s.checkpoints
    assert gamma.problem is None and gamma.info.arch == "kxl-tiny"
    assert beta.info is None
    assert "beta.safetensors" in beta.error and "truncated" in beta.error

    text = format_summary(s)
    assert "ERROR: " + s.db.error.splitlines()[0] in text
    assert "beta.safetensors" in text and "truncated" in text


def test_datasets_runs_and_plain_image_folder(make_workspace):
    root = make_workspace(shards=0)
    ws = load_workspace(root)
    (root / "images" / "1.webp").write_bytes(b"x" * 10)
    (root / "images" / "2.png").write_bytes(b"y" * 6)
    (root / "images" / "notes.txt").write_text("not an image")

    kohya = ws.datasets_path / "set_a" / "4_anime"
    kohya.mkdir(parents=True)
    for i in (1, 2, 3):
        (kohya / f"{i}.webp").write_bytes(b"i")
        (kohya / f"{i}.txt").write_text("1girl")
    manifest_only = ws.datasets_path / "set_b"
    manifest_only.mkdir()
    (manifest_only / "manifest.jsonl").write_text('{"id": 1}\n{"id": 2}\n\n')
    (ws.datasets_path / "scratch").mkdir()  # neither layout: not a dataset

    done = ws.runs_path / "run-done"
    done.mkdir(parents=True)
    (done / "events.jsonl").write_text(
        json.dumps({"type": "step", "step": 9, "t": 1.0})
        + "\n"
        + json.dumps({"type": "done", "step": 10, "t": 2.0})
        + "\n"
        + '{"type": "st'  # a line still being appended is not the last event
    )
    failed = ws.runs_path / "run-failed"
    failed.mkdir()
    (failed / "events.jsonl").write_text(
        json.dumps({"type": "error", "step": 3, "message": "CUDA OOM\ntrace"}) + "\n"
    )
    fresh = ws.runs_path / "run-new"
    fresh.mkdir()
    (fresh / "config.toml").write_text("schema_version = 1\n")

    s = summarize_workspace(ws)
    assert (s.images.kind, s.images.image_count, s.images.total_bytes) == ("folder", 2, 16)
    assert [(d.name, d.layout, d.image_count) for d in s.datasets] == [
        ("set_a", "kohya", 3),
        ("set_b", "manifest", 2),
    ]
    assert [(r.name, r.state, r.step) for r in s.runs] == [
        ("run-done", "done", 10),
        ("run-failed", "error: CUDA OOM", 3),
        ("run-new", "not started", None),
    ]
    text = format_summary(s)
    assert "  set_a  3 image(s)  [kohya]" in text
    assert "  run-done  done  step 10" in text
    assert "2 image file(s), 16 B" in text


def test_shards_in_updates_subfolders_are_counted(make_workspace):
    root = make_workspace(shards=1)
    update = root / "images" / "updates" / "20240101"
    update.mkdir(parents=True)
    with tarfile.open(update / "extra.tar", "w"):
        pass
    (root / "images" / "other.tar").write_bytes(b"")  # not a data-NXYZ.tar name: ignored
    s = summarize_workspace(load_workspace(root))
    assert s.images.shard_count == 2


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(7 * 2**30) == "7.0 GiB"


def test_a_referenced_dataset_is_listed_with_its_image_count(tmp_path):
    from trainer_core.workspace_summary import summarize_datasets

    ref = tmp_path / "datasets" / "delta-ref"
    ref.mkdir(parents=True)
    (ref / "captions.jsonl").write_text(
        "".join(json.dumps({"id": i, "caption": f"1girl, tag{i}"}) + "\n" for i in range(3)), encoding="utf-8"
    )
    (ref / "shards.json").write_text("{}", encoding="utf-8")
    [summary] = summarize_datasets(tmp_path / "datasets")
    assert (summary.name, summary.layout, summary.image_count) == ("delta-ref", "manifest", 3)
