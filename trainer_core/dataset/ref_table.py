"""A referenced dataset's per-post columns (`refs.npy`) and its caption lines (`captions.jsonl`): writing them.

Format (read by image_refs.py, which documents it): row i of `refs.npy` is line i of `captions.jsonl`, both in
post id order. `refs.npy` is one plain structured numpy array (`np.save`, no object field, so `np.load(...,
allow_pickle=False)` reads it and nothing in it is ever executed); `captions.jsonl` is, byte for byte, what
`kxl dataset captions` writes for the same posts. Per post the build thus formats nothing beyond the captions:
the table is composed with numpy from the arrays the locate pass already holds (~40 bytes per post).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_path

REFS_FILE = "refs.npy"
CAPTIONS_FILE = "captions.jsonl"

# One row per image. `shard` indexes shards.json's list; `ext` its `exts`; `rating` is the post's rating code
# (0..3 = general..explicit, other values kept as numbers, -1 = none), `quality`/`year` index
# captions.QUALITY_LABELS / YEAR_TAGS (-1 = none); `fp` is image_refs' tar-header fingerprint.
REF_DTYPE = np.dtype(
    [
        ("id", "<i8"),
        ("shard", "<i4"),
        ("ext", "<i2"),
        ("rating", "<i2"),
        ("quality", "<i1"),
        ("year", "<i1"),
        ("width", "<i4"),
        ("height", "<i4"),
        ("offset", "<i8"),
        ("size", "<i8"),
        ("fp", "<u8"),
    ]
)


def compose_table(found: Sequence[np.ndarray], shard_of: np.ndarray, ext_of: np.ndarray,
                  rating: np.ndarray | None = None, quality: np.ndarray | None = None,
                  year: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The table of the found posts: `found` is reference_build's 8 int64 columns (id, shard, offset, size, fp,
    width, height, ext; an (8, n) array or 8 arrays) in id order, `shard_of` / `ext_of` map its shard indexes and
    extension codes to shards.json's lists, the codes are aligned with `found` (-1 where not given: a build sets
    them chunk by chunk as the captions come back)."""
    table = np.empty(len(found[0]), dtype=REF_DTYPE)
    table["id"] = found[0]
    table["shard"] = shard_of[found[1]]
    table["offset"] = found[2]
    table["size"] = found[3]
    table["fp"] = found[4].view(np.uint64)
    table["width"] = found[5]
    table["height"] = found[6]
    table["ext"] = ext_of[found[7]]
    table["rating"] = -1 if rating is None else rating
    table["quality"] = -1 if quality is None else quality
    table["year"] = -1 if year is None else year
    return table


@contextmanager
def table_writer(path: Path, rows: int) -> Iterator[Callable[[np.ndarray], None]]:
    """`refs.npy` written as its rows become final (a build's chunks, in id order): the .npy header for `rows`
    rows first, then each block of rows appended; the file np.save writes, atomically (temp file + rename) once
    all rows are in. A build writes its table while the workers caption instead of after the last chunk (0.1 s
    per million posts). RuntimeError where another number of rows was appended."""
    header = {"descr": np.lib.format.dtype_to_descr(REF_DTYPE), "fortran_order": False, "shape": (rows,)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        written = 0

        def append(block: np.ndarray) -> None:
            nonlocal written
            fh.write(np.ascontiguousarray(block, dtype=REF_DTYPE).data)
            written += len(block)

        yield append
        if written != rows:
            raise RuntimeError(f"{path.name}: {written} rows written for a table of {rows}")


__all__ = ["CAPTIONS_FILE", "REFS_FILE", "REF_DTYPE", "compose_table", "table_writer"]
