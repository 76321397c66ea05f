"""Merge input feeds: segment planning, ring-buffer reads and whole-file hashing, and the fallbacks.

The merge's own tests (test_merge.py) check merged values; these check that the fast read path hands out exactly
the stored tensors and hashes exactly the file, including with segments small enough to wrap the ring many times,
and that inputs stored in another order or on a file system without O_DIRECT merge to the same bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer_core import direct_io
from trainer_core.merge import feeds
from trainer_core.merge.engine import run_merge
from trainer_core.merge.feeds import ReadAheadFeed, SegmentFeed, open_feed, plan_segments
from trainer_core.merge.recipe import kohaku_xl_delta_recipe
from trainer_core.merge.sources import SingleFileSource
from trainer_core.models.safetensors_writer import PlannedTensor, StreamingWriter, st_dtype
from trainer_core.models.tiny import write_demo_checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    return write_demo_checkpoints(tmp_path_factory.mktemp("feeds-in"), seed=1)


def test_plan_covers_the_whole_file_in_order_when_hashing():
    spans = [("a", 100, 200), ("b", 200, 5000), ("c", 9000, 9100)]
    segs = plan_segments(spans, 20_000, whole_file=True, segment_bytes=1024)
    assert segs[0].start == 0 and segs[-1].end == 20_000
    assert all(x.end == y.start for x, y in zip(segs, segs[1:], strict=False))
    assert [k for s in segs for k in s.keys] == ["a", "b", "c"]
    # only a single tensor may exceed the segment size; it is never split
    assert all(s.end - s.start <= 1024 or s.keys == ["b"] for s in segs)
    without = plan_segments(spans, 20_000, whole_file=False, segment_bytes=1024)
    assert [s.keys for s in without] == [["a"], ["b"], ["c"]] or [s.keys for s in without] == [
        ["a", "b"],
        ["c"],
    ]
    assert plan_segments([("a", 100, 200), ("b", 50, 90)], 1000, whole_file=False) is None  # not file order


@pytest.mark.parametrize("use_direct", [True, False], ids=["direct", "buffered"])
def test_segment_feed_hands_out_stored_tensors_and_hashes_the_file(ckpts, monkeypatch, use_direct):
    # 4 KB segments: hundreds of requests through a ring a few segments long, wrapping many times
    monkeypatch.setattr(feeds, "SEGMENT_BYTES", 4096)
    monkeypatch.setattr(direct_io, "_DISABLED", not use_direct)
    path = ckpts["beta"]
    expected = load_file(path)
    with SingleFileSource(path) as src:
        keys = src.file_order()
        feed = open_feed(src, keys, hash_file=True)
        assert isinstance(feed, SegmentFeed)
        assert len(feed._segments) > 50 and feed._capacity < src.path.stat().st_size / 2  # the ring wraps
        try:
            for k in keys:
                got = feed.get(k)
                assert got.dtype == expected[k].dtype and torch.equal(got, expected[k]), k
                feed.release(k)
            assert feed.finish_hash() == hashlib.sha256(path.read_bytes()).hexdigest()
        finally:
            feed.close()


def test_feed_of_a_few_tensors_still_hashes_every_byte(ckpts, monkeypatch):
    """The 'original' model: four embeddings used, the whole file hashed."""
    monkeypatch.setattr(feeds, "SEGMENT_BYTES", 8192)
    path = ckpts["original"]
    expected = load_file(path)
    with SingleFileSource(path) as src:
        keys = [k for k in src.file_order() if "embedding" in k][:4]
        feed = open_feed(src, keys, hash_file=True)
        try:
            for k in keys:
                assert torch.equal(feed.get(k), expected[k])
                feed.release(k)
            assert feed.finish_hash() == hashlib.sha256(path.read_bytes()).hexdigest()
        finally:
            feed.close()


def _rewrite_reversed(src_path: Path, dest: Path) -> None:
    """The same tensors stored in the opposite order (what another tool's writer might produce)."""
    tensors = load_file(src_path)
    entries = [PlannedTensor(k, st_dtype(v), tuple(v.shape)) for k, v in reversed(list(tensors.items()))]
    with StreamingWriter(dest, entries, {"modelspec.architecture": "x"}, keep_order=True) as w:
        for e in w.order:
            w.write(e.name, tensors[e.name])


def test_inputs_in_another_order_or_without_direct_io_merge_to_the_same_bytes(ckpts, tmp_path, monkeypatch):
    recipe = kohaku_xl_delta_recipe(ckpts["gamma"], ckpts["beta"], ckpts["original"])
    reference = run_merge(recipe, tmp_path / "ref.safetensors").path.read_bytes()

    reversed_beta = tmp_path / "beta-reversed.safetensors"
    _rewrite_reversed(ckpts["beta"], reversed_beta)
    with SingleFileSource(reversed_beta) as src, SingleFileSource(ckpts["gamma"]) as a:
        feed = open_feed(src, a.file_order(), hash_file=False)
        try:
            assert isinstance(feed, ReadAheadFeed)  # out of file order: the per-tensor path
        finally:
            feed.close()
    other = run_merge(
        kohaku_xl_delta_recipe(ckpts["gamma"], reversed_beta, ckpts["original"]), tmp_path / "rev.safetensors"
    )
    ta, tb = load_file(tmp_path / "ref.safetensors"), load_file(other.path)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)

    monkeypatch.setattr(direct_io, "_DISABLED", True)
    buffered = run_merge(recipe, tmp_path / "buffered.safetensors").path.read_bytes()
    assert buffered == reference


def test_truncated_input_found_while_streaming_names_the_file(ckpts, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = ckpts["beta"].read_bytes()
    cut.write_bytes(data)
    with SingleFileSource(cut) as src:  # header read while the file was whole
        keys = src.file_order()
        cut.write_bytes(data[: len(data) // 2])
        feed = open_feed(src, keys, hash_file=False)
        try:
            with pytest.raises(Exception, match="truncated") as e:
                for k in keys:
                    feed.get(k)
                    feed.release(k)
            assert "cut.safetensors" in str(e.value)
        finally:
            feed.close()
