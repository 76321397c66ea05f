"""The kohya dataset folder, bucket batches, image preprocessing and SDXL size conditioning (specs/training.md §2-§3).

Layout: `<dataset>/<repeats>_<name>/<image>.<ext>` with `<image>.txt` (first line = caption). Each image appears
`repeats` times per epoch; every appearance is an *entry* with its own index, so repeats get different caption
shuffles.

Order, fully determined by (seed, epoch) so a resumed run sees exactly the batches the interrupted one would have:
entries are grouped by bucket, each bucket is shuffled and cut into batches of `batch_size` (the last one may be
short), and the list of batches is shuffled. Ranks take every world-th batch. To give every rank the same number
of optimizer steps with exactly `gradient_accumulation_steps` micro-batches each, the epoch's batch list is
extended by wrapping around to its start (a few batches are seen twice per epoch, like accelerate's even_batches).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KxlError
from ..tags.caption_processing import CaptionProcessing, process_caption
from .buckets import BucketAssignment, assign_bucket, assign_bucket_no_upscale, crop_box, make_buckets
from .config import DatasetConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_SUBSET_RE = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    repeats: int
    subset: str  # the folder name, e.g. "1_anime"
    size: tuple[int, int]  # (width, height) of the file


@dataclass(frozen=True)
class Entry:
    """One appearance of an image in an epoch."""

    index: int
    item: int  # index into the item list
    assignment: BucketAssignment


def scan_dataset(root: str | Path) -> list[ImageItem]:
    """Every image of a kohya folder with its caption; errors name the folder or file at fault."""
    from ..dataset.image_header import image_file_size

    root = Path(root)
    if not root.is_dir():
        raise KxlError("dataset folder not found", path=root)
    subsets = sorted(p for p in root.iterdir() if p.is_dir() and _SUBSET_RE.match(p.name))
    if not subsets:
        raise KxlError(
            "no '<repeats>_<name>' subfolders (kohya layout, e.g. '1_anime/')",
            path=root,
            hint="put images and .txt captions in a folder named like 10_mydata inside the dataset folder",
        )
    items: list[ImageItem] = []
    for sub in subsets:
        repeats = int(_SUBSET_RE.match(sub.name).group(1))
        if repeats < 1:
            raise KxlError("repeat count must be at least 1", path=sub)
        for img in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            if not txt.is_file():
                raise KxlError("image has no caption file (.txt next to it)", path=img)
            try:
                lines = txt.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise KxlError(f"caption is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r})",
                               path=txt, hint="re-save the caption as UTF-8") from None  # fmt: skip
            except OSError as exc:
                raise KxlError(f"cannot read the caption ({exc.strerror})", path=txt) from None
            caption = lines[0].strip() if lines else ""
            if not caption:
                raise KxlError("caption is empty", path=txt)
            try:
                size = image_file_size(img)
            except OSError as exc:
                raise KxlError(f"cannot read image ({exc})", path=img) from None
            items.append(ImageItem(img, caption, repeats, sub.name, size))
    if not items:
        raise KxlError("the dataset holds no images (.png/.jpg/.webp/.bmp)", path=root)
    return items


def tag_frequency(items: list[ImageItem], separator: str = ",") -> dict[str, dict[str, int]]:
    """sd-scripts' `ss_tag_frequency`: per subset folder, how many images carry each tag (`|||` removed)."""
    out: dict[str, Counter] = {}
    for it in items:
        tags = [t.strip() for t in it.caption.replace("|||", separator).split(separator) if t.strip()]
        out.setdefault(it.subset, Counter()).update(set(tags))
    return {k: dict(sorted(v.items())) for k, v in out.items()}


class BucketPlan:
    """Entries with their buckets, and the deterministic per-epoch batch order."""

    def __init__(self, items: list[ImageItem], cfg: DatasetConfig, batch_size: int):
        self.items = items
        self.batch_size = batch_size
        self.buckets = make_buckets((cfg.resolution, cfg.resolution), cfg.min_bucket_reso, cfg.max_bucket_reso,
                                    cfg.bucket_step)  # fmt: skip
        entries: list[Entry] = []
        for i, it in enumerate(items):
            if cfg.bucket_no_upscale:
                a = assign_bucket_no_upscale(it.size, cfg.resolution * cfg.resolution, cfg.bucket_step)
            else:
                a = assign_bucket(it.size, self.buckets)
            for _ in range(it.repeats):
                entries.append(Entry(len(entries), i, a))
        self.entries = entries
        if len(entries) < batch_size:
            raise KxlError(
                f"the dataset has {len(entries)} image(s) per epoch (repeats included), fewer than one batch of "
                f"{batch_size}",
                hint="add images, raise the repeat count in the folder name, or lower training.batch_size",
            )

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        return dict(sorted(Counter(e.assignment.bucket for e in self.entries).items()))

    def epoch_batches(self, epoch: int, seed: int) -> list[list[int]]:
        """Entry indices per batch for `epoch` (0-based); every batch holds one bucket."""
        rng = random.Random(f"kxl-batches:{seed}:{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for e in self.entries:
            by_bucket.setdefault(e.assignment.bucket, []).append(e.index)
        batches: list[list[int]] = []
        for bucket in sorted(by_bucket):
            idx = by_bucket[bucket]
            rng.shuffle(idx)
            batches.extend(idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size))
        rng.shuffle(batches)
        return batches

    def steps_per_epoch(self, world: int, accum: int) -> int:
        n = len(self.epoch_batches(0, 0))
        return math.ceil(n / (world * accum))

    def rank_micro_batches(self, epoch: int, seed: int, world: int, rank: int, accum: int) -> list[list[int]]:
        """This rank's micro-batches for the epoch: steps_per_epoch * accum of them (see the module docstring)."""
        batches = self.epoch_batches(epoch, seed)
        steps = math.ceil(len(batches) / (world * accum))
        total = steps * accum * world
        padded = [batches[i % len(batches)] for i in range(total)]
        return padded[rank::world]


def crop_ltrb_sdxl(bucket: tuple[int, int], original: tuple[int, int]) -> tuple[int, int, int, int]:
    """sd-scripts' `get_crop_ltrb`: the box of the image *fitted inside* the bucket (not the real crop)."""
    bw, bh = bucket
    ow, oh = original
    bucket_ar, image_ar = bw / bh, ow / oh
    if bucket_ar > image_ar:  # fit height
        resized_w, resized_h = bh * image_ar, bh
    else:
        resized_w, resized_h = bw, bw / image_ar
    left = (bw - resized_w) // 2
    top = (bh - resized_h) // 2
    return int(left), int(top), int(left + resized_w), int(top + resized_h)


def time_ids_for(original: tuple[int, int], bucket: tuple[int, int]) -> list[int]:
    """SDXL add_time_ids in (h, w) order: original size, crop top-left (sd-scripts' rule), target size."""
    left, top, _, _ = crop_ltrb_sdxl(bucket, original)
    return [original[1], original[0], top, left, bucket[1], bucket[0]]


def load_pixels(item: ImageItem, assignment: BucketAssignment, rng: random.Random | None = None):
    """(3, H, W) float tensor in [-1, 1] at the bucket size: resize (AREA-like down, LANCZOS up), then crop."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(item.path) as im:
            im = im.convert("RGB")
            rw, rh = assignment.resized
            if (rw, rh) != im.size:
                down = rw * rh < im.size[0] * im.size[1]
                im = im.resize((rw, rh), Image.Resampling.BOX if down else Image.Resampling.LANCZOS)
            box = crop_box(assignment.resized, assignment.bucket, rng)
            im = im.crop(box)
            arr = np.asarray(im, dtype=np.float32)
    except OSError as exc:
        raise KxlError(f"cannot read image ({exc})", path=item.path) from None
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


@dataclass
class Batch:
    pixels: Any  # (B, 3, H, W) float32 in [-1, 1]
    captions: list[str]
    time_ids: Any  # (B, 6) float32
    entries: list[int]
    items: list[int]


def caption_options(cfg: DatasetConfig) -> CaptionProcessing:
    return CaptionProcessing(
        shuffle_caption=cfg.shuffle_caption,
        keep_tokens=cfg.keep_tokens,
        keep_tokens_separator=cfg.keep_tokens_separator,
        caption_tag_dropout_rate=cfg.caption_tag_dropout_rate,
        caption_dropout_rate=cfg.caption_dropout_rate,
    )


def make_batch(plan: BucketPlan, entry_ids: list[int], cfg: DatasetConfig, seed: int, epoch: int,
               options: CaptionProcessing, load: bool = True) -> Batch:  # fmt: skip
    """Pixels (unless `load` is False: latents come from the cache), processed captions and time_ids.

    Captions use the shared kohya shuffle/dropout seeded by (seed, 1-based epoch, entry index), which is what the
    Tags tab preview shows for the same triple.
    """
    import torch

    pixels, captions, tids, items = [], [], [], []
    for eid in entry_ids:
        e = plan.entries[eid]
        it = plan.items[e.item]
        rng = random.Random(f"kxl-crop:{seed}:{epoch}:{eid}") if cfg.random_crop else None
        if load:
            pixels.append(load_pixels(it, e.assignment, rng))
        captions.append(process_caption(it.caption, options, seed=seed, epoch=epoch + 1, index=eid).text)
        tids.append(time_ids_for(it.size, e.assignment.bucket))
        items.append(e.item)
    return Batch(
        pixels=torch.stack(pixels) if load else None,
        captions=captions,
        time_ids=torch.tensor(tids, dtype=torch.float32),
        entries=list(entry_ids),
        items=items,
    )
