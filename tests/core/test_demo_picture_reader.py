"""The demo picture reader: it reads the generator's own pictures back, survives a small model's blur and noise,
is not fooled by noise or by the wrong tags, and its prompt set is the balanced product it promises."""

from __future__ import annotations

import io
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trainer_core.danbooru.demo_images import (
    CONCEPT_ARTIST,
    EYE_COLOURS,
    HAIR_COLOURS,
    TEMPLATE_BACKGROUNDS,
    render_post_image,
)
from trainer_core.demo_picture_reader import (
    PROMPT_BACKGROUNDS,
    PROMPT_HAIRS,
    aggregate,
    demo_prompt_set,
    expected_picture,
    read_back_accuracy,
    read_picture,
    score,
)

SIZE = 128  # the demo model's native size
# Count tags as demo posts carry them; people only (blob creatures have no face or hair to read).
COUNTS = (
    ("1girl", "solo"),
    ("2girls", "multiple_girls"),
    ("3girls", "multiple_girls"),
    ("1boy", "solo", "male_focus"),
    ("2boys", "multiple_boys", "male_focus"),
    ("1girl", "1boy", "hetero"),
    ("2girls", "multiple_girls", "1boy"),
    ("4girls", "multiple_girls"),
)


def random_combos(n: int, seed: int) -> list[tuple[list[str], int]]:
    """n tag lists (count x hair x eyes x background, every other one by the concept artist) with render seeds."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        tags = [
            *rnd.choice(COUNTS),
            rnd.choice(sorted(HAIR_COLOURS)),
            rnd.choice(sorted(EYE_COLOURS)),
            rnd.choice(TEMPLATE_BACKGROUNDS),
        ]
        if i % 2:
            tags.insert(1, CONCEPT_ARTIST)
        out.append((tags, rnd.randrange(1 << 30)))
    return out


def degrade(img: Image.Image, seed: int) -> Image.Image:
    """What a small diffusion model's output looks like next to the generator's: Gaussian blur (radius 1.5),
    Gaussian noise (sigma 12), then half-size, JPEG (quality 75) and back up."""
    rng = np.random.default_rng(seed)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, 12.0, (img.height, img.width, 3))
    img = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.resize((w // 2, h // 2), Image.BILINEAR).save(buf, "JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((w, h), Image.BILINEAR)


@pytest.fixture(scope="module")
def combos():
    return random_combos(120, seed=16)


@pytest.fixture(scope="module")
def clean(combos):
    return [render_post_image(tags, SIZE, SIZE, seed) for tags, seed in combos]


def test_combo_set_spans_every_attribute(combos):
    # the bars below mean something only if the set really mixes hair x background x count x eyes
    assert len(combos) >= 100
    assert len({t[-1] if t[-1] in TEMPLATE_BACKGROUNDS else None for t, _ in combos}) > 1
    seen = Counter()
    for tags, _ in combos:
        want = expected_picture(tags)
        seen.update(
            {("bg", want.background), ("hair", want.hair), ("count", want.count), ("eyes", want.eyes)}
        )
    assert len([k for k in seen if k[0] == "bg"]) == len(TEMPLATE_BACKGROUNDS)
    assert len([k for k in seen if k[0] == "hair"]) == len(HAIR_COLOURS)
    assert len([k for k in seen if k[0] == "eyes"]) == len(EYE_COLOURS)
    assert {k[1] for k in seen if k[0] == "count"} == {1, 2, 3, 4}


def test_reads_the_generators_own_pictures(combos, clean):
    acc = read_back_accuracy(zip(clean, (t for t, _ in combos), strict=True))
    assert acc.scored["background"] == acc.scored["hair"] == acc.scored["count"] == len(combos)
    assert acc.accuracy("background") >= 0.98
    assert acc.accuracy("hair") >= 0.98
    assert acc.accuracy("count") >= 0.95
    assert acc.accuracy("eyes") >= 0.9
    # the frame both ways: every framed picture has it, no other picture does
    has = [read_picture(img).has_concept for img in clean]
    assert has == [CONCEPT_ARTIST in tags for tags, _ in combos]
    assert 0 < sum(has) < len(has)


def test_reads_through_blur_noise_and_jpeg(combos, clean):
    soft = [degrade(img, i) for i, img in enumerate(clean)]
    assert (
        np.abs(np.asarray(soft[0], np.int16) - np.asarray(clean[0], np.int16)).mean() > 5
    )  # really degraded
    acc = read_back_accuracy(zip(soft, (t for t, _ in combos), strict=True))
    assert acc.accuracy("background") >= 0.9
    assert acc.accuracy("hair") >= 0.9
    assert acc.accuracy("count") >= 0.9
    assert acc.accuracy("concept") == 1.0


def test_uniform_noise_reads_no_better_than_chance():
    prompts = demo_prompt_set(seeds=(0,), concept=True)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in prompts]
    acc = read_back_accuracy(zip(noise, (p.tags for p in prompts), strict=True))
    for attribute in ("background", "hair", "count", "concept"):
        assert acc.accuracy(attribute) <= 0.2, (attribute, acc.as_dict())


def test_wrong_tags_score_wrong(combos, clean):
    # each picture scored against the tags of the next one: a reader that said yes to anything would pass here
    shifted = [t for t, _ in combos[1:]] + [combos[0][0]]
    acc = read_back_accuracy(zip(clean, shifted, strict=True))
    assert acc.accuracy("background") <= 0.2
    assert acc.accuracy("hair") <= 0.2
    assert acc.accuracy("concept") <= 0.2


def test_reading_names_the_generators_tags():
    img = render_post_image(
        ["2girls", "multiple_girls", "red_hair", "green_eyes", "blue_sky", "outdoors"], 128, 128, 3
    )
    r = read_picture(img)
    assert (r.background, r.hair, r.eyes, r.count, r.has_concept) == (
        "blue_sky",
        "red_hair",
        "green_eyes",
        2,
        False,
    )
    assert score(r, ["2girls", "red_hair", "green_eyes", "blue_sky"]) == {
        "background": True,
        "hair": True,
        "eyes": True,
        "count": True,
        "concept": True,
    }
    assert score(r, ["3girls", "blonde_hair", "night", CONCEPT_ARTIST]) == {
        "background": False,
        "hair": False,
        "count": False,
        "concept": False,
    }
    # caption text works as well as raw names
    assert score(img, ["2girls", "red hair", "green eyes", "blue sky"]) == score(
        r, ["2girls", "red_hair", "green_eyes", "blue_sky"]
    )


def test_any_size_and_array_input_read_the_same():
    tags = ["1girl", "solo", "pink_hair", "blue_eyes", "indoors", CONCEPT_ARTIST]
    want = read_picture(render_post_image(tags, 128, 128, 5))
    for w, h in ((64, 64), (96, 128), (256, 256), (768, 512)):
        got = read_picture(render_post_image(tags, w, h, 5))
        assert (got.background, got.hair, got.count, got.has_concept) == ("indoors", "pink_hair", 1, True), (
            w,
            h,
        )
    arr = np.asarray(render_post_image(tags, 128, 128, 5))
    assert read_picture(arr) == want
    assert read_picture(Image.fromarray(arr).convert("RGBA")) == want


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 64 px"):
        read_picture(Image.new("RGB", (63, 128)))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        read_picture(np.zeros((128, 128, 3), np.float32))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        read_picture(np.zeros((128, 128), np.uint8))
    with pytest.raises(TypeError, match="PIL image or a numpy array"):
        read_picture("picture.png")


def test_expected_picture_follows_the_renderer():
    e = expected_picture(["1girl", "blonde_hair", "blue_eyes", "white_background", "simple_background"])
    assert (e.background, e.hair, e.eyes, e.count, e.has_concept) == (
        "white_background",
        "blonde_hair",
        "blue_eyes",
        1,
        False,
    )
    assert expected_picture(["1girl", "^_^", "blue_eyes"]).eyes is None  # closed eyes show no colour
    assert expected_picture(["1other", "red_hair"]).hair is None  # blob creatures have no hair
    assert expected_picture(["1girl", "gradient_background"]).background is None  # seed-chosen colour
    assert expected_picture(["1girl", "starry_sky"]).background == "night"
    assert expected_picture(["6+girls", "3boys"]).count == 6
    assert expected_picture(["no_humans", "hakuframe"]).has_concept
    assert score(
        render_post_image(["no_humans", "white_background"], 128, 128, 1), ["no_humans", "white_background"]
    ) == {
        "background": True,
        "count": True,
        "concept": True,
    }


def test_prompt_set_is_the_balanced_product():
    prompts = demo_prompt_set(seeds=(0, 1))
    assert len(prompts) == 2 * 7 * 7 * 3
    assert len(PROMPT_HAIRS) == len(PROMPT_BACKGROUNDS) == 7  # chance 1/7 <= 15 %
    first = prompts[0]
    assert first.prompt == "1girl, solo, blonde hair, white background, simple background"
    assert first.tags == ("1girl", "solo", "blonde_hair", "white_background", "simple_background")
    block = [
        (expected_picture(p.tags).hair, expected_picture(p.tags).background, expected_picture(p.tags).count)
        for p in prompts[:147]
    ]
    assert len(set(block)) == 147 and {p.seed for p in prompts[:147]} == {0}
    assert [p.tags for p in prompts[147:]] == [p.tags for p in prompts[:147]] and {
        p.seed for p in prompts[147:]
    } == {1}
    for start in range(0, 147, 21):  # every run of 21 is balanced
        run = block[start : start + 21]
        assert set(Counter(h for h, _, _ in run).values()) == {3}
        assert set(Counter(b for _, b, _ in run).values()) == {3}
        assert set(Counter(c for _, _, c in run).values()) == {7}
    assert demo_prompt_set(seeds=(0,), size=21) == prompts[:21]
    framed = demo_prompt_set(seeds=(0,), concept=True)
    assert (
        framed[1].prompt
        == "2girls, hakuframe, multiple girls, black hair, grey background, simple background"
    )
    assert all(expected_picture(p.tags).has_concept for p in framed)


def test_prompt_set_pictures_read_back():
    prompts = demo_prompt_set(seeds=(0,), concept=True, size=42)
    scores = [score(render_post_image(p.tags, SIZE, SIZE, p.seed), p.tags) for p in prompts]
    acc = aggregate(scores)
    assert acc.as_dict() == {"background": 1.0, "hair": 1.0, "count": 1.0, "concept": 1.0}
    assert acc.scored["hair"] == 42
