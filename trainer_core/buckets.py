"""Aspect-ratio buckets, exactly as sd-scripts makes and assigns them (specs/training.md §3).

Pure integer/float arithmetic, no torch or PIL, so the dataset preview and the bucket statistics can use it too.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .errors import KxlError

Size = tuple[int, int]  # (width, height), as everywhere in this module


def make_buckets(
    resolution: Size = (1024, 1024), min_size: int = 256, max_size: int = 4096, step: int = 64
) -> list[Size]:
    """The predefined buckets, sorted by (width, height). Defaults give the card's 97 buckets."""
    width0, height0 = resolution
    if step <= 0 or min_size <= 0 or max_size < min_size or width0 <= 0 or height0 <= 0:
        raise KxlError(
            f"bad bucket settings: resolution {resolution}, min {min_size}, max {max_size}, step {step}",
            hint="need step > 0, 0 < min_size <= max_size and a positive resolution",
        )
    area = width0 * height0
    side = int(math.sqrt(area) / step) * step
    buckets: set[Size] = {(side, side)}
    for width in range(min_size, max_size + 1, step):
        # Integer division first, then down to a multiple of step: the order matters for the exact list.
        height = min(max_size, (area // width) // step * step)
        if height >= min_size:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


@dataclass(frozen=True)
class BucketAssignment:
    bucket: Size  # the training size
    resized: Size  # the image is resized to this, then cropped to `bucket`


def assign_bucket(image_size: Size, buckets: list[Size]) -> BucketAssignment:
    """Pick the bucket for an image: its own size if that is a bucket, else the nearest aspect ratio (first
    bucket on ties); the image is scaled (up or down) so it covers the bucket with one side exact."""
    width, height = _check_size(image_size)
    if not buckets:
        raise KxlError("no buckets to assign images to")
    if (width, height) in buckets:
        return BucketAssignment((width, height), (width, height))
    ratio = width / height
    best = min(range(len(buckets)), key=lambda i: abs(buckets[i][0] / buckets[i][1] - ratio))
    bucket = buckets[best]
    if ratio > bucket[0] / bucket[1]:
        scale = bucket[1] / height  # wider than the bucket: match heights, crop width
    else:
        scale = bucket[0] / width
    return BucketAssignment(bucket, (int(width * scale + 0.5), int(height * scale + 0.5)))


def assign_bucket_no_upscale(
    image_size: Size, max_area: int = 1024 * 1024, step: int = 64
) -> BucketAssignment:
    """sd-scripts' `bucket_no_upscale`: small images keep their size (bucket = size floored to the step); larger
    ones shrink to about `max_area`, choosing the rounding (width-led or height-led) that keeps the aspect ratio
    closer. The set of buckets is open-ended."""
    width, height = _check_size(image_size)
    ratio = width / height
    if width * height > max_area:
        resized_w = math.sqrt(max_area * ratio)
        resized_h = max_area / resized_w
        width_led = _round_to_step(resized_w, step)
        height_for_width = _round_to_step(width_led / ratio, step)
        height_led = _round_to_step(resized_h, step)
        width_for_height = _round_to_step(height_led * ratio, step)
        width_led_error = abs(width_led / height_for_width - ratio) if height_for_width else math.inf
        height_led_error = abs(width_for_height / height_led - ratio) if height_led else math.inf
        if width_led_error < height_led_error:
            resized = (width_led, int(width_led / ratio + 0.5))
        else:
            resized = (int(height_led * ratio + 0.5), height_led)
    else:
        resized = (width, height)
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    if bucket[0] == 0 or bucket[1] == 0:
        raise KxlError(
            f"image {width}x{height} is too small for bucket_no_upscale with step {step}: a side would become 0",
            hint="drop tiny images from the dataset or turn bucket_no_upscale off",
        )
    return BucketAssignment(bucket, resized)


def crop_box(resized: Size, bucket: Size, rng: random.Random | None = None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the bucket-sized window in the resized image: centred (offset = overflow // 2)
    or, given `rng`, uniform over every whole-pixel offset (sd-scripts' random_crop)."""
    trim_w = resized[0] - bucket[0]
    trim_h = resized[1] - bucket[1]
    if trim_w < 0 or trim_h < 0:
        raise KxlError(
            f"resized image {resized[0]}x{resized[1]} is smaller than its bucket {bucket[0]}x{bucket[1]}"
        )
    if rng is None:
        left, top = trim_w // 2, trim_h // 2
    else:
        left, top = rng.randint(0, trim_w), rng.randint(0, trim_h)
    return left, top, left + bucket[0], top + bucket[1]


def _round_to_step(x: float, step: int) -> int:
    rounded = int(x + 0.5)
    return rounded - rounded % step


def _check_size(image_size: Size) -> Size:
    width, height = int(image_size[0]), int(image_size[1])
    if width <= 0 or height <= 0:
        raise KxlError(f"image size {width}x{height} is not a valid picture size")
    return width, height
