""" "What the trainer sees" for one dataset image: its caption variants and its bucket and crop.

Shared by `kxl tags preview` and the Tags tab so both show exactly what `process_caption` and the bucket code
give the trainer. Variants are the captions of sample `index` in epochs `epoch`, `epoch + 1`, ... (1-based
epochs, the trainer's numbering): the same image seen again later in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..buckets import BucketAssignment, assign_bucket, crop_box, make_buckets
from ..paths import resources_dir
from ..progress import Progress
from .caption_processing import CaptionProcessing, ProcessedCaption, process_caption
from .dataset_index import DatasetIndex
from .vocabulary import Tag, TagCategory, TagVocabulary


@dataclass(frozen=True)
class CaptionVariant:
    epoch: int
    index: int
    processed: ProcessedCaption


@dataclass(frozen=True)
class BucketPreview:
    image_size: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]  # in resized pixels

    @property
    def crop_in_image(self) -> tuple[float, float, float, float]:
        """The crop window in the original image's pixels (for drawing on the picture)."""
        sx = self.image_size[0] / self.resized[0]
        sy = self.image_size[1] / self.resized[1]
        left, top, right, bottom = self.crop
        return left * sx, top * sy, right * sx, bottom * sy

    @property
    def label(self) -> str:
        (w, h), (rw, rh) = self.bucket, self.resized
        cropped = f", crop {rw - w}x{rh - h} px" if (rw, rh) != (w, h) else ""
        return (
            f"bucket {w}x{h} (image {self.image_size[0]}x{self.image_size[1]} -> resized {rw}x{rh}{cropped})"
        )


def caption_variants(
    caption: str, options: CaptionProcessing, *, seed: int, epoch: int, index: int, n: int
) -> list[CaptionVariant]:
    """The captions the trainer uses for sample `index` in `n` consecutive epochs starting at `epoch`."""
    return [
        CaptionVariant(e, index, process_caption(caption, options, seed=seed, epoch=e, index=index))
        for e in range(epoch, epoch + max(n, 0))
    ]


def bucket_preview(
    image_size: tuple[int, int], buckets: list[tuple[int, int]] | None = None
) -> BucketPreview:
    """Bucket, resize and centre crop of an image with the card's buckets (1024², 256..4096, step 64)."""
    buckets = make_buckets() if buckets is None else buckets
    assignment: BucketAssignment = assign_bucket(image_size, buckets)
    return BucketPreview(
        (int(image_size[0]), int(image_size[1])),
        assignment.bucket,
        assignment.resized,
        crop_box(assignment.resized, assignment.bucket),
    )


def demo_tag_list() -> Path:
    return resources_dir() / "demo" / "tags.csv"


def load_vocabulary(path: str | Path | None = None, progress: Progress | None = None) -> TagVocabulary:
    """A vocabulary from a metadata DB (`.db`/`.sqlite`) or a tagcomplete CSV; the shipped demo tag list when
    `path` is None."""
    path = Path(path) if path is not None else demo_tag_list()
    if path.suffix.lower() in (".db", ".sqlite", ".sqlite3"):
        return TagVocabulary.from_db(path, progress=progress)
    return TagVocabulary.from_csv(path, progress=progress)


def dataset_tag_vocabulary(index: DatasetIndex, vocabulary: TagVocabulary | None = None) -> TagVocabulary:
    """The dataset's own tags as a vocabulary for completion: counts are images in this dataset (so ranking
    follows what the dataset holds), categories and aliases come from `vocabulary` when it knows the tag."""
    tags: list[Tag] = []
    for key, count in zip(index.tag_keys, index.tag_image_counts.tolist(), strict=True):
        known = vocabulary.get(key) if vocabulary is not None else None
        category = known.category if known is not None else TagCategory.GENERAL
        aliases = known.aliases if known is not None else ()
        tags.append(Tag(key, category, int(count), aliases))
    return TagVocabulary(tags)
