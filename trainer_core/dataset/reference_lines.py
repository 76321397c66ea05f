"""A reference build's per-chunk text, made where the captions are made (a caption worker process, or the
build's own process for a small selection).

The text is exactly what `kxl dataset captions` writes for the chunk's found posts: the caption builder's JSON
Lines (`{"id": <id>, "caption": "<escaped>"}` per line), byte for byte, with the lines of posts whose image was
not found cut out. Everything else a referenced dataset knows per post (shard, offset, size, fingerprint, width,
height, rating/quality/year codes) goes into numpy columns written once (ref_table.py). Composing a full JSON
record per post cost ~2.5 us of Python per post, more than the whole budget a reference build has over
captions alone (issue #20); cutting lines out of a chunk costs ~0.1 us per post, and only where posts are missing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .caption_stream import CaptionSource, worker_source
from .captions import QualityScheme
from .tar_headers import in_sorted

# columns of a found post (reference_build's table): post id, shard index, data offset, bytes, fingerprint,
# width, height, extension code
FIELDS = 8


class ChunkLines(NamedTuple):
    """One chunk's caption lines (UTF-8, in id order: the found posts' only, or every post's where the found
    posts were not known yet when the chunk was sent, `every_post`) and, for the summary and the reference table,
    the chunk's posts' rating, quality and year codes (all posts of the chunk, found or not; quality and year
    -1 = none)."""

    text: bytes
    rating: np.ndarray
    quality: np.ndarray
    year: np.ndarray
    every_post: bool = False

    def found_only(self, ids: np.ndarray, found_ids: np.ndarray) -> bytes:
        """The lines of the found posts `found_ids` (sorted) of the chunk `ids`."""
        if not self.every_post:
            return self.text
        return found_lines(self.text, len(ids), in_sorted(ids, found_ids))


def found_lines(jsonl: bytes, n: int, hit: np.ndarray) -> bytes:
    """The lines of `jsonl` (`n` JSON Lines records) where `hit` is True. An escaped caption holds no newline,
    so the newlines numpy finds are the records' ends, and the kept runs of records are cut there: ~1 ms for a
    chunk of 20,000 posts (bytes.count alone took 2.4 ms, a split into lines 6-28 ms)."""
    if not n:
        return b""
    newline = np.frombuffer(jsonl, dtype=np.uint8) == 10
    if hit.all():
        got = int(np.count_nonzero(newline))
        if got != n or not jsonl.endswith(b"\n"):
            raise RuntimeError(f"caption text of {n} posts came back as {got} lines")
        return jsonl
    ends = np.flatnonzero(newline) + 1
    if len(ends) != n or ends[-1] != len(jsonl):
        raise RuntimeError(f"caption text of {n} posts came back as {len(ends)} lines")
    # runs of kept records: [first, last] record indexes where `hit` turns on and off
    edges = np.flatnonzero(np.diff(np.concatenate([[False], hit, [False]]).astype(np.int8)))
    starts = np.concatenate([[0], ends])[edges[0::2]].tolist()
    stops = ends[edges[1::2] - 1].tolist()
    return b"".join(jsonl[a:b] for a, b in zip(starts, stops, strict=True))


def chunk_lines(source: CaptionSource, ids: np.ndarray, found_ids: np.ndarray | None) -> ChunkLines:
    """Caption the chunk `ids` (sorted) and keep the lines of its found posts `found_ids` (a sorted subset); every
    line where `found_ids` is None (a chunk captioned while the shards are still being located)."""
    posts, jsonl, quality, year = source.caption_jsonl_with_codes(ids)
    if posts.ids.size != ids.size or not np.array_equal(posts.ids, ids):
        raise RuntimeError("the caption builder returned other posts than the chunk's")
    text = jsonl.encode("utf-8")
    # the codes leave the worker in refs.npy's widths (rating <i2, quality and year <i1): a fifth of the bytes
    codes = (posts.rating.astype(np.int16), quality.astype(np.int8), year.astype(np.int8))
    if found_ids is None:
        return ChunkLines(text, *codes, every_post=True)
    return ChunkLines(found_lines(text, len(ids), in_sorted(ids, found_ids)), *codes)


def lines_in_worker(
    db_path: str, scheme: QualityScheme, cache_path: str | None, ids: np.ndarray, found_ids: np.ndarray | None
) -> ChunkLines:
    """`chunk_lines` inside a caption worker process (its caption source is kept between chunks)."""
    return chunk_lines(worker_source(db_path, scheme, cache_path), ids, found_ids)


__all__ = ["FIELDS", "ChunkLines", "chunk_lines", "found_lines", "lines_in_worker"]
