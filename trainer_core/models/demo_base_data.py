"""Training data of the demo base: random tag sets drawn by the demo generator, captioned like the trainer does.

Every training picture is `render_post_image(tags, 128, 128, seed)`, so the base learns exactly the palette and
layout the demo dataset, the picture reader and the tests use. The tag pool holds what the generator draws (hair and
eye colours, backgrounds, figure counts, expression tags) and nothing else: in particular never the artist concept
the demo dataset teaches (`hakuframe`), which must stay new to the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..danbooru.demo_images import (
    COUNT_TAGS,
    EYE_COLOURS,
    FLAT_BACKGROUNDS,
    HAIR_COLOURS,
    HAPPY_EYES,
    OPEN_MOUTH_TAGS,
    ROUND_EYES,
    SMILE_TAGS,
    SQUINT_EYES,
    figure_counts,
    render_post_image,
)
from ..tags.text import tag_to_caption_text

NATIVE_SIZE = 128
"""The demo base's training resolution: the default generation size whenever the demo model is selected."""

SCENE_BACKGROUNDS = (
    "gradient_background",
    "transparent_background",
    "simple_background",
    "night",
    "sunset",
    "blue_sky",
    "indoors",
)
BACKGROUNDS = tuple(FLAT_BACKGROUNDS) + SCENE_BACKGROUNDS

# Figure counts (space-separated when a post has several), weighted towards what prompts ask for most (1-3
# figures); the reader counts up to 6.
COUNT_WEIGHTS: dict[str, float] = {
    "1girl": 0.26,
    "2girls": 0.14,
    "3girls": 0.11,
    "4girls": 0.03,
    "5girls": 0.015,
    "6+girls": 0.015,
    "1boy": 0.1,
    "2boys": 0.05,
    "3boys": 0.04,
    "1other": 0.04,
    "2others": 0.02,
    "3others": 0.02,
    "no_humans": 0.03,
    "1girl 1boy": 0.06,
    "2girls 1boy": 0.03,
    "1girl 1other": 0.02,
}
COUNT_TAG_SET = frozenset({*COUNT_TAGS, "solo", "multiple_girls", "multiple_boys", "no_humans"})
EXPRESSION_TAGS = tuple(sorted(HAPPY_EYES | SQUINT_EYES | ROUND_EYES | SMILE_TAGS | OPEN_MOUTH_TAGS))

KEPT_TAGS = COUNT_TAG_SET | frozenset(HAIR_COLOURS) | frozenset(BACKGROUNDS)
"""Tags caption dropout never drops: count, hair and background decide most of the picture (and what the reader
checks); a caption without them would teach that an unnamed background still comes out as a given colour."""

FORBIDDEN_TAGS = frozenset({"hakuframe"})
"""The demo dataset's new concept: the base (and gamma/beta) never see it, so a LoKr has something to teach."""


def random_post_tags(
    rng: np.random.Generator, backgrounds: Sequence[str] = BACKGROUNDS, flat_share: float = 0.7
) -> list[str]:
    """One random tag set the generator can draw, its background taken from `backgrounds`.

    Demo posts (and so prompts) write counts as danbooru does, `1girl, solo` / `2girls, multiple_girls`, and flat
    colours with `simple_background`; those companions come with their usual frequency so they mean nothing new.
    `flat_share` is the share of flat-colour backgrounds among the posts that have a background.
    """
    counts = list(COUNT_WEIGHTS)
    weights = np.asarray([COUNT_WEIGHTS[c] for c in counts])
    tags = counts[int(rng.choice(len(counts), p=weights / weights.sum()))].split(" ")
    if tags != ["no_humans"]:
        girls, boys, others = figure_counts(set(tags))
        if girls + boys + others == 1 and rng.random() < 0.7:
            tags.append("solo")
        if girls > 1 and rng.random() < 0.7:
            tags.append("multiple_girls")
        if boys > 1 and rng.random() < 0.7:
            tags.append("multiple_boys")
        if rng.random() < 0.97:
            tags.append(str(rng.choice(list(HAIR_COLOURS))))
        if rng.random() < 0.9:
            tags.append(str(rng.choice(list(EYE_COLOURS))))
        if rng.random() < 0.35:
            tags.append(str(rng.choice(EXPRESSION_TAGS)))
    if rng.random() < 0.96:
        flat = [b for b in backgrounds if b in FLAT_BACKGROUNDS]
        scenes = [b for b in backgrounds if b not in FLAT_BACKGROUNDS]
        # Flat colours are what prompts ask for most and what the reader can check: 70 % of the pictures.
        bg = str(rng.choice(flat if (flat and (not scenes or rng.random() < flat_share)) else scenes))
        tags.append(bg)
        if bg == "gradient_background" and rng.random() < 0.5:  # a coloured gradient names its colour too
            tags.append(str(rng.choice(list(FLAT_BACKGROUNDS))))
        if bg in FLAT_BACKGROUNDS and rng.random() < 0.6:
            tags.append("simple_background")
    if FORBIDDEN_TAGS & set(tags):  # cannot happen with the pools above; kept as the contract's guard
        raise ValueError(f"the demo base must never see {sorted(FORBIDDEN_TAGS & set(tags))}")
    return tags


def caption_for(
    tags: Sequence[str],
    rng: np.random.Generator,
    card_order: float = 0.5,
    tag_dropout: float = 0.0,
    prompt_order: float = 0.0,
) -> str:
    """The trainer's caption of a post: caption-form tags joined by ", ".

    A share `prompt_order` of captions keeps the tags in `random_post_tags`' order (count, hair, eyes, expression,
    background: the read-back prompts' order); of the rest, a share `card_order` is in the card's order, count tags
    first and the rest shuffled (how demo posts are written), the others fully shuffled (the tiny-demo preset's
    shuffle_caption). `tag_dropout` drops each other tag (eye colours, expressions) with that probability, so that
    short prompts naming only count, hair and background (the read-back set) look like training captions.
    """
    order = [tags[int(i)] for i in rng.permutation(len(tags))]
    if prompt_order > 0.0 and rng.random() < prompt_order:
        # Why: a tiny text encoder learns "the colour word before `hair`" sooner at fixed places; shuffled
        # captions alone left `aqua hair, red background` drawing red hair.
        order = list(tags)
    elif rng.random() < card_order:
        order = [t for t in order if t in COUNT_TAG_SET] + [t for t in order if t not in COUNT_TAG_SET]
    if tag_dropout > 0.0:
        drop = rng.random(len(order)) < tag_dropout
        order = [t for t, d in zip(order, drop, strict=True) if t in KEPT_TAGS or not d]
    return ", ".join(tag_to_caption_text(t) for t in order)


def render_pixels(
    tag_sets: Sequence[Sequence[str]],
    seeds: Sequence[int],
    size: int = NATIVE_SIZE,
    height: int | None = None,
) -> Any:
    """(B, 3, height, size) float32 tensor in [-1, 1] of the generator's pictures (the VAE's input range); `size`
    is the width, and the height too unless given."""
    import torch

    h = size if height is None else height
    arrays = [
        np.asarray(render_post_image(list(t), size, h, int(s)), dtype=np.uint8)
        for t, s in zip(tag_sets, seeds, strict=True)
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return batch / 127.5 - 1.0


def time_ids_for(width: int, height: int) -> tuple[int, int, int, int, int, int]:
    """SDXL add_time_ids of an uncropped training picture: original size (h, w), crop (0, 0), target size (h, w),
    what the Generate pipeline sends for a picture of that size."""
    return (height, width, 0, 0, height, width)
