"""A reference build's manifest lines, composed where the captions are made (a caption worker process, or the
build's own process for a small selection).

A record is a copy build's record byte for byte (json.dumps(record, ensure_ascii=False): key order,
separators, escapes) plus its `ref`. Per post that is ~15 fields; formatting them one f-string at a time cost
~2-3 us of Python per post in the build's main process, on top of the header walk, which made it the limit on
two cores. Here a chunk of 20,000 posts is composed in a few C-level passes: the captions come JSON-escaped
from the caption builder's JSON Lines (the same text `kxl dataset captions` writes, cut at its line
boundaries), the tables of shard names and labels are indexed with numpy, and one `%` format over the whole
chunk writes the lines. The worker returns UTF-8 bytes, which the main process only writes.
"""

from __future__ import annotations

import re
from itertools import chain
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import NamedTuple

import numpy as np

from .caption_stream import CaptionSource, worker_source
from .captions import QUALITY_LABELS, YEAR_TAGS, QualityScheme, year_tag_indices
from .stats import RATING_LABELS
from .tar_headers import in_sorted

# columns of a found post (reference_build's table): post id, shard index, data offset, bytes, fingerprint,
# width, height, extension code
FIELDS = 8

# `{"id": <id>, "caption": "` opens each JSON Lines record and `"}\n` closes it. An escaped caption holds no
# newline and no `"` that is not after a backslash, so neither can match inside one: the split is exact.
# (A pattern that starts with a literal is searched at C speed: the first record's opening is cut apart.)
_JSONL_SPLIT = re.compile(r'"\}\n\{"id": [0-9]+, "caption": "')
_JSONL_FIRST = ', "caption": "'
_JSONL_END = '"}\n'


class LineTables(NamedTuple):
    """What every chunk's lines share, JSON-encoded once: by shard index the name a copy build reports
    (`shard`) and the absolute path a reader opens (`ref.shard`); by extension code the extension; the
    dataset's image folder as the records' `file` starts with it."""

    origins: list[str]
    ref_shards: list[str]
    exts: list[str]
    subfolder: str


class ChunkLines(NamedTuple):
    """One chunk's manifest text (UTF-8) and, for the summary, the chunk's posts' rating, quality and year
    codes (all posts of the chunk, found or not; quality and year -1 = none)."""

    text: bytes
    rating: np.ndarray
    quality: np.ndarray
    year: np.ndarray


def _template(subfolder: str) -> str:
    prefix = encode_basestring(f"{subfolder}/")[:-1].replace("%", "%%")  # the opening quote and the folder
    return (
        '{"id": %d, "file": ' + prefix + '%d.%s", "caption": "%s", "rating": %s, "quality": %s, "year": %s, '
        '"width": %d, "height": %d, "shard": %s, "bytes": %d, "ref": {"shard": %s, "offset": %d, '
        '"size": %d, "fp": "%016x"}}\n'
    )


def _labels(labels: tuple[str, ...]) -> np.ndarray:
    """JSON of each label, and "null" last (index -1: no label)."""
    return np.array([encode_basestring(label) for label in labels] + ["null"], dtype=object)


_RATINGS = _labels(RATING_LABELS)[:-1]
_QUALITIES = _labels(QUALITY_LABELS)
_YEARS = _labels(YEAR_TAGS)


def escaped_captions(jsonl: str, n: int) -> list[str]:
    """The JSON-escaped caption of each of the `n` records of `jsonl` (`CaptionBuilder.build(jsonl=True)`)."""
    if not n:
        return []
    parts = _JSONL_SPLIT.split(jsonl)
    first = parts[0].find(_JSONL_FIRST)
    if (
        len(parts) != n
        or not parts[0].startswith('{"id": ')
        or first < 0
        or not parts[-1].endswith(_JSONL_END)
    ):
        raise RuntimeError(f"caption text of {n} posts came back as {len(parts)} records")
    parts[-1] = parts[-1][: -len(_JSONL_END)]  # (first, since the first record may be the last too)
    parts[0] = parts[0][first + len(_JSONL_FIRST) :]
    return parts


def compose_lines(
    tables: LineTables, rows: np.ndarray, captions: list[str], rating: np.ndarray, quality: np.ndarray,
    year: np.ndarray,
) -> str:  # fmt: skip
    """The manifest lines of the found posts `rows` ((n, FIELDS) int64, by id), with their escaped captions and
    rating/quality/year codes (aligned with `rows`)."""
    n = len(rows)
    if not n:
        return ""
    pid = rows[:, 0].tolist()
    k = rows[:, 1]
    size = rows[:, 3].tolist()
    origins = np.asarray(tables.origins, dtype=object)
    refs = np.asarray(tables.ref_shards, dtype=object)
    exts = np.asarray(tables.exts, dtype=object)
    known = (rating >= 0) & (rating < len(_RATINGS))
    ratings = _RATINGS[np.where(known, rating, 0)]
    for i in np.flatnonzero(~known).tolist():  # a rating outside the four labels: its number, as a string
        ratings[i] = encode_basestring(str(int(rating[i])))
    columns = (
        pid, pid, exts[rows[:, 7]].tolist(), captions, ratings.tolist(), _QUALITIES[quality].tolist(),
        _YEARS[year].tolist(), rows[:, 5].tolist(), rows[:, 6].tolist(), origins[k].tolist(), size,
        refs[k].tolist(), rows[:, 2].tolist(), size, rows[:, 4].view(np.uint64).tolist(),
    )  # fmt: skip
    return (_template(tables.subfolder) * n) % tuple(chain.from_iterable(zip(*columns, strict=True)))


def chunk_lines(
    source: CaptionSource, scheme: QualityScheme, ids: np.ndarray, rows: np.ndarray, tables: LineTables
) -> ChunkLines:
    """Caption the chunk `ids` (sorted) and compose the lines of its found posts `rows` (a subset of `ids`, in
    the same order)."""
    posts, jsonl = source.caption(ids, jsonl=True)
    quality = scheme.label_indices(posts.ids, posts.rating, posts.fav_count)
    year = year_tag_indices(posts.year)
    captions = escaped_captions(jsonl, len(ids))  # type: ignore[arg-type]
    hit = in_sorted(ids, rows[:, 0])
    if not hit.all():
        captions = [captions[i] for i in np.flatnonzero(hit).tolist()]
    text = compose_lines(tables, rows, captions, posts.rating[hit], quality[hit], year[hit])
    return ChunkLines(text.encode("utf-8"), posts.rating, quality, year)


def lines_in_worker(
    db_path: str, scheme: QualityScheme, cache_path: str | None, ids: np.ndarray, rows: np.ndarray,
    tables: LineTables,
) -> ChunkLines:  # fmt: skip
    """`chunk_lines` inside a caption worker process (its caption source is kept between chunks)."""
    return chunk_lines(worker_source(db_path, scheme, cache_path), scheme, ids, rows, tables)


__all__ = ["FIELDS", "ChunkLines", "LineTables", "chunk_lines", "compose_lines", "escaped_captions",
           "lines_in_worker"]  # fmt: skip
