"""Dataset-wide statistics: tag frequencies (with category and popularity), rating/quality/year counts,
the aspect-bucket histogram and the warnings a user should see before training.

Everything is computed from a `DatasetIndex` in well under a second for 100k images: tag counts come from the
index's postings, buckets are assigned with one vectorised nearest-ratio search that reproduces
`trainer_core.buckets.assign_bucket` exactly (same float expression, first bucket on ties).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..buckets import make_buckets
from .caption_categories import (
    QUALITY_TAGS,
    YEAR_TAGS,
    CaptionTagKind,
    classify_caption_tag,
    first_of,
    rating_of_tags,
)
from .dataset_index import DatasetIndex, split_caption
from .popularity import MAY_WORK_MIN_POSTS
from .text import normalize_tag_name
from .vocabulary import TagVocabulary

# The card's run: batch 4 per GPU x 2 GPUs x 16 accumulation steps (specs/training.md §0).
CARD_IMAGES_PER_STEP = 4 * 2 * 16
# A tag seen on fewer training images than this is unlikely to be learned (rule of thumb the warnings use; the
# card's 100-post "may work" line applies to the base model's prompts, and is the same order of magnitude).
RARE_TAG_IMAGES = 10


@dataclass(frozen=True)
class TagStat:
    text: str  # as written in captions
    images: int  # images carrying it
    kind: CaptionTagKind
    vocab_count: int | None  # posts in the vocabulary (DB popularity / CSV post_count); None when unknown


@dataclass
class DatasetStats:
    images: int
    samples_per_epoch: int  # images x repeats
    tags: list[TagStat]  # most frequent first
    kinds: dict[CaptionTagKind, tuple[int, int]]  # kind -> (distinct tags, tag occurrences)
    ratings: Counter = field(default_factory=Counter)
    qualities: Counter = field(default_factory=Counter)
    years: Counter = field(default_factory=Counter)
    buckets: Counter = field(default_factory=Counter)  # (w, h) -> samples per epoch (repeats counted)
    unknown_sizes: int = 0
    problems: int = 0
    warnings: list[str] = field(default_factory=list)


def assign_buckets_vectorized(sizes: np.ndarray, buckets: list[tuple[int, int]]) -> np.ndarray:
    """Bucket position for each (width, height) row; identical to `assign_bucket(size, buckets).bucket`."""
    if len(sizes) == 0:
        return np.zeros(0, dtype=np.int64)
    b = np.asarray(buckets, dtype=np.int64)
    ratios = sizes[:, 0] / sizes[:, 1]
    bucket_ratios = b[:, 0] / b[:, 1]
    nearest = np.argmin(np.abs(bucket_ratios[None, :] - ratios[:, None]), axis=1)
    # An image whose own size is a bucket keeps it, even if an earlier bucket has the same ratio.
    exact = {(int(w), int(h)): i for i, (w, h) in enumerate(buckets)}
    for row, (w, h) in enumerate(sizes.tolist()):
        pos = exact.get((w, h))
        if pos is not None:
            nearest[row] = pos
    return nearest


def compute_stats(
    index: DatasetIndex,
    vocabulary: TagVocabulary | None = None,
    buckets: list[tuple[int, int]] | None = None,
    images_per_step: int = CARD_IMAGES_PER_STEP,
) -> DatasetStats:
    """Statistics over the whole index; sizes still unknown are left out of the bucket histogram (read them
    first with `index.read_image_sizes()` for a complete one)."""
    buckets = make_buckets() if buckets is None else buckets
    counts = index.tag_image_counts
    order = np.argsort(-counts, kind="stable")
    tags: list[TagStat] = []
    kinds: dict[CaptionTagKind, list[int]] = {}
    for tid in order.tolist():
        text = index.tag_texts[tid]
        kind = classify_caption_tag(text, vocabulary)
        vocab_tag = vocabulary.get(text) if vocabulary is not None else None
        n = int(counts[tid])
        tags.append(TagStat(text, n, kind, vocab_tag.count if vocab_tag is not None else None))
        slot = kinds.setdefault(kind, [0, 0])
        slot[0] += 1
        slot[1] += n

    stats = DatasetStats(
        images=len(index),
        samples_per_epoch=sum(max(e.repeats, 0) for e in index.entries),
        tags=tags,
        kinds={k: (v[0], v[1]) for k, v in kinds.items()},
        problems=len(index.problems),
    )
    for entry in index.entries:
        rating, quality, year = entry.rating, entry.quality, entry.year
        if rating is None or quality is None or year is None:
            keys = [normalize_tag_name(t) for t in split_caption(entry.caption).tags]
            rating = rating or rating_of_tags(keys)
            quality = quality or first_of(keys, QUALITY_TAGS)
            year = year or first_of(keys, YEAR_TAGS)
        stats.ratings[rating or "none"] += 1
        stats.qualities[(quality or "none").replace("_", " ")] += 1
        stats.years[year or "none"] += 1

    known = [(i, e.width, e.height) for i, e in enumerate(index.entries) if e.width > 0 and e.height > 0]
    stats.unknown_sizes = len(index) - len(known)
    if known:
        arr = np.array([(w, h) for _, w, h in known], dtype=np.int64)
        repeats = np.array([max(index.entries[i].repeats, 0) for i, _, _ in known], dtype=np.int64)
        positions = assign_buckets_vectorized(arr, buckets)
        per_bucket = np.bincount(positions, weights=repeats, minlength=len(buckets))
        for pos in np.flatnonzero(per_bucket):
            stats.buckets[buckets[pos]] = int(per_bucket[pos])
    stats.warnings = _warnings(stats, images_per_step)
    return stats


def _warnings(stats: DatasetStats, images_per_step: int) -> list[str]:
    out: list[str] = []
    small = sorted((n, b) for b, n in stats.buckets.items() if n < images_per_step)
    if small:
        listed = ", ".join(f"{w}x{h} ({n})" for n, (w, h) in small[:6])
        more = f" and {len(small) - 6} more" if len(small) > 6 else ""
        out.append(
            f"{len(small)} bucket(s) hold fewer samples than one optimizer step's {images_per_step} images "
            f"(batch x processes x accumulation): {listed}{more}. Their batches are short."
        )
    rare = [t for t in stats.tags if t.images < RARE_TAG_IMAGES and t.kind not in _SPECIAL_KINDS]
    if rare:
        out.append(
            f"{len(rare):,} tag(s) appear on fewer than {RARE_TAG_IMAGES} images and will likely not be learned "
            f"(e.g. {', '.join(t.text for t in rare[:5])})."
        )
    unpopular = [
        t
        for t in stats.tags
        if t.vocab_count is not None and t.vocab_count < MAY_WORK_MIN_POSTS and t.kind not in _SPECIAL_KINDS
    ]
    if unpopular:
        out.append(
            f"{len(unpopular):,} tag(s) have fewer than {MAY_WORK_MIN_POSTS} posts in the tag list: the base model "
            f"barely knows them (e.g. {', '.join(t.text for t in unpopular[:5])})."
        )
    if stats.unknown_sizes:
        out.append(
            f"{stats.unknown_sizes:,} image size(s) not read yet or unreadable: not in the bucket histogram."
        )
    if stats.problems:
        out.append(f"{stats.problems:,} file problem(s): see the problems list.")
    return out


_SPECIAL_KINDS = {CaptionTagKind.COUNT, CaptionTagKind.YEAR, CaptionTagKind.RATING, CaptionTagKind.QUALITY}
