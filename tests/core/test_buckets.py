"""Aspect-ratio buckets against every example of specs/training.md §3."""

from __future__ import annotations

import random

import pytest

from trainer_core.buckets import (
    BucketAssignment,
    assign_bucket,
    assign_bucket_no_upscale,
    crop_box,
    make_buckets,
)
from trainer_core.errors import KxlError


@pytest.fixture(scope="module")
def buckets() -> list[tuple[int, int]]:
    return make_buckets((1024, 1024), min_size=256, max_size=4096, step=64)


def test_card_buckets_count_order_and_ends(buckets):
    assert len(buckets) == 97
    assert buckets == sorted(buckets)
    assert buckets[:5] == [(256, 3328), (256, 3392), (256, 3456), (256, 3520), (256, 3584)]
    assert buckets[-5:] == [(3840, 256), (3904, 256), (3968, 256), (4032, 256), (4096, 256)]
    assert (1024, 1024) in buckets
    assert min(w * h for w, h in buckets) == 256 * 3328 == 851968  # 0.8125 MP
    assert min(buckets, key=lambda b: b[0] * b[1]) == (256, 3328)


def test_card_buckets_portrait_half_matches_spec_listing(buckets):
    portrait = [b for b in buckets if b[0] < b[1]]
    expected = (
        [(256, h) for h in range(3328, 4097, 64)]
        + [(320, h) for h in range(2752, 3265, 64)]
        + [(384, h) for h in range(2368, 2689, 64)]
        + [(448, h) for h in range(2112, 2305, 64)]
        + [(512, h) for h in range(1856, 2049, 64)]
        + [(576, 1664), (576, 1728), (576, 1792), (640, 1536), (640, 1600), (704, 1408), (704, 1472)]
        + [(768, 1280), (768, 1344), (832, 1216), (896, 1152), (960, 1088)]
    )
    assert portrait == expected
    assert sorted((h, w) for w, h in portrait) == [b for b in buckets if b[0] > b[1]]
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((1920, 1080), (1344, 768), (1365, 768)),
        ((3000, 4000), (896, 1152), (896, 1195)),
        ((500, 4000), (320, 2752), (344, 2752)),
        ((600, 800), (896, 1152), (896, 1195)),  # upscaled
        ((1024, 1024), (1024, 1024), (1024, 1024)),  # exact bucket: no resize
        ((832, 1216), (832, 1216), (832, 1216)),
    ],
)
def test_assignment_examples(buckets, size, bucket, resized):
    assert assign_bucket(size, buckets) == BucketAssignment(bucket, resized)


def test_assignment_takes_first_bucket_on_aspect_ties():
    # (64, 128) and (128, 256) share AR 0.5: the first in sorted order wins.
    assert assign_bucket((100, 200), [(64, 128), (128, 256)]).bucket == (64, 128)
    assert assign_bucket((100, 200), [(128, 256), (64, 128)]).bucket == (128, 256)


def test_centre_and_random_crop(buckets):
    a = assign_bucket((1920, 1080), buckets)
    assert crop_box(a.resized, a.bucket) == (10, 0, 1354, 768)  # (1365 - 1344) // 2 = 10
    b = assign_bucket((3000, 4000), buckets)
    assert crop_box(b.resized, b.bucket) == (0, 21, 896, 1173)  # (1195 - 1152) // 2 = 21
    rng = random.Random(5)
    boxes = {crop_box(a.resized, a.bucket, rng) for _ in range(400)}
    lefts = {box[0] for box in boxes}
    assert lefts == set(range(0, 22))  # every offset 0..21 reachable, nothing beyond
    assert all(box[2] - box[0] == 1344 and box[1] == 0 and box[3] == 768 for box in boxes)
    with pytest.raises(KxlError):
        crop_box((100, 100), (128, 64))


def test_no_upscale_small_image_keeps_size_and_floors_bucket():
    assert assign_bucket_no_upscale((600, 800)) == BucketAssignment((576, 768), (600, 800))
    assert assign_bucket_no_upscale((1024, 1024)) == BucketAssignment((1024, 1024), (1024, 1024))


def test_no_upscale_large_image_shrinks_to_area():
    # 3000x4000, ar .75: rw = sqrt(2^20 * .75) = 886.8 -> round_to_step 832, height for it 1109.3 -> 1088
    # (AR .7647, error .0147); rh = 1182.4 -> 1152, width for it 864 -> 832 (AR .7222, error .0278).
    # Width-led wins: resize (832, int(1109.3 + .5)) and floor to the step for the bucket.
    assert assign_bucket_no_upscale((3000, 4000)) == BucketAssignment((832, 1088), (832, 1109))
    # 1920x1080: width-led 1344 x 704 (AR 1.909) loses to height-led 768 -> 1344 (AR 1.75).
    assert assign_bucket_no_upscale((1920, 1080)) == BucketAssignment((1344, 768), (1365, 768))


def test_bad_input_raises_clear_errors():
    with pytest.raises(KxlError, match="bucket settings"):
        make_buckets(step=0)
    with pytest.raises(KxlError, match="not a valid picture size"):
        assign_bucket((0, 10), [(64, 64)])
    with pytest.raises(KxlError, match="too small"):
        assign_bucket_no_upscale((40, 40))
