"""The kohya dataset folder, bucket batches, image preprocessing and SDXL size conditioning (specs/training.md §2-§3).

Layout: `<dataset>/<repeats>_<name>/<image>.<ext>` with `<image>.txt` (first line = caption). A referenced
dataset (dataset/image_refs.py) has neither file: its reference table and caption lines list the same items,
an item's `ref` says where its bytes are inside a tar shard, and `load_pixels` reads them from there;
everything else is the same. Each image appears
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
from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..buckets import BucketAssignment, assign_bucket_no_upscale, crop_box, make_buckets
from ..dataset.image_refs import ImageRef, open_ref_image
from ..errors import KxlError
from ..tags.caption_processing import CaptionProcessing, process_caption
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
    ref: ImageRef | None = None  # referenced dataset: the bytes are here, `path` is only the image's name


@dataclass(frozen=True)
class Entry:
    """One appearance of an image in an epoch."""

    index: int
    item: int  # index into the item list
    assignment: BucketAssignment


def scan_dataset(root: str | Path, caches: list[Path] | None = None) -> Sequence[ImageItem]:
    """Every image of a kohya folder with its caption and size; errors name the folder or file at fault.

    A sequence of `ImageItem` backed by compact arrays (dataset_scan.ScanTable). Sizes come from the builder's
    manifest.jsonl where it is trustworthy, else from the image headers; `caches` (cache folders, see
    dataset_scan) make a repeated scan of an unchanged dataset cost one `stat` per file.
    """
    from .dataset_scan import scan_table

    return scan_table(root, caches)


def tag_frequency(items: Sequence[ImageItem], separator: str = ",") -> dict[str, dict[str, int]]:
    """sd-scripts' `ss_tag_frequency`: per subset folder, how many images carry each tag (`|||` removed)."""
    if hasattr(items, "tag_frequency"):
        return items.tag_frequency(separator)
    out: dict[str, Counter] = {}
    for it in items:
        tags = [t.strip() for t in it.caption.replace("|||", separator).split(separator) if t.strip()]
        out.setdefault(it.subset, Counter()).update(set(tags))
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def assign_buckets(sizes: Any, cfg: DatasetConfig, buckets: list[tuple[int, int]]) -> Any:
    """`assign_bucket` (or `assign_bucket_no_upscale`) for many images at once: (n, 2) int sizes -> (n, 4) int64
    bucket width, height, resized width, height. Same float64 operations in the same order as the scalar
    functions, so the results are identical (tested); each distinct size is computed once."""
    import numpy as np

    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    out = np.zeros((sizes.shape[0], 4), dtype=np.int64)
    if sizes.shape[0] == 0:
        return out
    keys, inverse = np.unique((sizes[:, 0] << 32) | (sizes[:, 1] & 0xFFFFFFFF), return_inverse=True)
    inverse = inverse.reshape(-1)
    uniq = np.stack([keys >> 32, keys & 0xFFFFFFFF], axis=1)  # distinct sizes (a 1-D unique: ~20x faster)
    res = np.zeros((uniq.shape[0], 4), dtype=np.int64)
    if (uniq <= 0).any():
        w, h = uniq[np.argmax((uniq <= 0).any(axis=1))]
        raise KxlError(f"image size {w}x{h} is not a valid picture size")
    if cfg.bucket_no_upscale:
        area = cfg.resolution * cfg.resolution
        for k, (w, h) in enumerate(uniq.tolist()):
            a = assign_bucket_no_upscale((w, h), area, cfg.bucket_step)
            res[k] = (*a.bucket, *a.resized)
    else:
        if not buckets:
            raise KxlError("no buckets to assign images to")
        barr = np.asarray(buckets, dtype=np.int64)
        bratio = barr[:, 0] / barr[:, 1]
        bkeys = (barr[:, 0] << 32) | barr[:, 1]
        chunk = 1 << 16
        for lo in range(0, uniq.shape[0], chunk):
            u = uniq[lo : lo + chunk]
            width, height = u[:, 0], u[:, 1]
            ratio = width / height
            # the first index on ties, like min()
            best = np.argmin(np.abs(bratio[None, :] - ratio[:, None]), axis=1)
            bw, bh = barr[best, 0], barr[best, 1]
            scale = np.where(ratio > bratio[best], bh / height, bw / width)
            rw = (width * scale + 0.5).astype(np.int64)  # int(): truncation, all values positive
            rh = (height * scale + 0.5).astype(np.int64)
            exact = np.isin((width << 32) | height, bkeys)  # the image's own size is a bucket: kept as is
            res[lo : lo + chunk, 0] = np.where(exact, width, bw)
            res[lo : lo + chunk, 1] = np.where(exact, height, bh)
            res[lo : lo + chunk, 2] = np.where(exact, width, rw)
            res[lo : lo + chunk, 3] = np.where(exact, height, rh)
    out[:] = res[inverse]
    return out


class ArrayView(Sequence):
    """A read-only sequence whose items are built on access from arrays: subclasses give `__len__` and
    `_at(i)` for 0 <= i < len; indexing (negative, slices, bounds) is handled here once."""

    @abstractmethod
    def _at(self, i: int) -> Any: ...

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._at(i)


class _Entries(ArrayView):
    """`plan.entries`: Entry objects made on access from the plan's arrays."""

    def __init__(self, plan: BucketPlan):
        self._plan = plan

    def __len__(self) -> int:
        return int(self._plan._entry_item.shape[0])

    def _at(self, eid: int) -> Entry:
        item = int(self._plan._entry_item[eid])
        return Entry(eid, item, self._plan.assignment(item))


@dataclass(frozen=True)
class PlanSlice:
    """The part of a plan that some batches need (their entries and images): all `make_batch` reads, small enough
    to send to a data worker process, which then needs no copy of the whole plan."""

    entries: dict[int, Entry]
    items: dict[int, ImageItem]


class BucketPlan:
    """Entries with their buckets, and the deterministic per-epoch batch order.

    Held as arrays (one int per image and per entry), so a 3.67 M-image plan is tens of MB, not GiB of objects;
    `entries[i]` and `items[i]` build the objects on access.
    """

    def __init__(self, items: Sequence[ImageItem], cfg: DatasetConfig, batch_size: int):
        import numpy as np

        self.items = items
        self.batch_size = batch_size
        self.buckets = make_buckets((cfg.resolution, cfg.resolution), cfg.min_bucket_reso, cfg.max_bucket_reso,
                                    cfg.bucket_step)  # fmt: skip
        if hasattr(items, "bucket_assignments"):
            # a dataset_scan.ScanTable: arrays, and the plan cached beside the scan
            assign = items.bucket_assignments(cfg, self.buckets)
            repeats = items.repeats()
        else:
            assign = assign_buckets([it.size for it in items], cfg, self.buckets)
            repeats = np.asarray([it.repeats for it in items], dtype=np.int64)
        self._assign = np.asarray(assign, dtype=np.int64)
        # entry order: image by image, `repeats` consecutive entries each
        self._entry_item = np.repeat(np.arange(len(repeats), dtype=np.int64), repeats)
        keys = (self._assign[:, 0] << 32) | self._assign[:, 1]
        # sorted keys = buckets in (width, height) order
        self._bucket_keys, item_bucket = np.unique(keys, return_inverse=True)
        entry_bucket = item_bucket.reshape(-1)[self._entry_item]
        self._bucket_sizes = np.bincount(entry_bucket, minlength=len(self._bucket_keys))
        self._by_bucket = np.argsort(entry_bucket, kind="stable")  # each bucket's entries in index order
        self.entries = _Entries(self)
        if len(self.entries) < batch_size:
            raise KxlError(
                f"the dataset has {len(self.entries)} image(s) per epoch (repeats included), fewer than one batch "
                f"of {batch_size}",
                hint="add images, raise the repeat count in the folder name, or lower training.batch_size",
            )

    def assignment(self, item: int) -> BucketAssignment:
        bw, bh, rw, rh = (int(v) for v in self._assign[item])
        return BucketAssignment((bw, bh), (rw, rh))

    def slice(self, entry_ids: list[int]) -> PlanSlice:
        entries = {int(eid): self.entries[eid] for eid in entry_ids}
        return PlanSlice(entries, {e.item: self.items[e.item] for e in entries.values()})

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        return {(int(k >> 32), int(k & 0xFFFFFFFF)): int(c)
                for k, c in zip(self._bucket_keys.tolist(), self._bucket_sizes.tolist(), strict=True)}  # fmt: skip

    def epoch_batches(self, epoch: int, seed: int) -> list[list[int]]:
        """Entry indices per batch for `epoch` (0-based); every batch holds one bucket."""
        rng = random.Random(f"kxl-batches:{seed}:{epoch}")
        batches: list[list[int]] = []
        start = 0
        for count in self._bucket_sizes.tolist():  # buckets in sorted (width, height) order
            idx = self._by_bucket[start : start + count].tolist()
            start += count
            rng.shuffle(idx)
            batches.extend(idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size))
        rng.shuffle(batches)
        return batches

    def batches_per_epoch(self) -> int:
        return sum(-(-c // self.batch_size) for c in self._bucket_sizes.tolist())

    def steps_per_epoch(self, world: int, accum: int) -> int:
        return math.ceil(self.batches_per_epoch() / (world * accum))

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
        with open_ref_image(item.ref) if item.ref is not None else Image.open(item.path) as im:
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

    def pin_memory(self) -> Batch:
        """Page-locked copies of the tensors (the DataLoader's pin-memory thread calls this on CUDA)."""
        return replace(self, pixels=self.pixels.pin_memory() if self.pixels is not None else None,
                       time_ids=self.time_ids.pin_memory())  # fmt: skip


def caption_options(cfg: DatasetConfig) -> CaptionProcessing:
    return CaptionProcessing(
        shuffle_caption=cfg.shuffle_caption,
        keep_tokens=cfg.keep_tokens,
        keep_tokens_separator=cfg.keep_tokens_separator,
        caption_tag_dropout_rate=cfg.caption_tag_dropout_rate,
        caption_dropout_rate=cfg.caption_dropout_rate,
    )


def make_batch(plan: BucketPlan | PlanSlice, entry_ids: list[int], cfg: DatasetConfig, seed: int, epoch: int,
               options: CaptionProcessing, load: bool = True) -> Batch:  # fmt: skip
    """Pixels (unless `load` is False: latents come from the cache), processed captions and time_ids.

    Captions use the shared kohya shuffle/dropout seeded by (seed, 1-based epoch, entry index), which is what the
    Tags tab preview shows for the same triple; a random crop is seeded by (seed, epoch, entry index). Nothing
    depends on which process runs this or in which order, so data workers (data_loader.py) produce exactly the
    batches of the serial path. `plan` may be a `PlanSlice` holding at least these entries.
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
