"""Train-time caption shuffle/dropout (kohya semantics, specs/dataset.md §5) as the trainer and preview use it."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer_core.errors import KxlError
from trainer_core.tags.caption_processing import (
    CaptionProcessing,
    caption_rng,
    card_caption_processing,
    process_caption,
    process_caption_with_rng,
)

HAKU = (
    "1girl, rice shower (umamusume), umamusume, kohaku (artist), |||looking at viewer, long hair, solo, ^_^, "
    "o_o, :d, <|> <|>, highres, absurdres, newest, safe, masterpiece"
)
FIXED = ["1girl", "rice shower (umamusume)", "umamusume", "kohaku (artist)"]
FLEX = HAKU.split("|||")[1].split(", ")


def text(
    caption: str, options: CaptionProcessing, seed: int = 1337, epoch: int = 1, index: int = 0, **kw
) -> str:
    return process_caption(caption, options, seed=seed, epoch=epoch, index=index, **kw).text


def test_card_config_pinned_outputs():
    card = card_caption_processing()
    assert (
        card.shuffle_caption,
        card.keep_tokens,
        card.keep_tokens_separator,
        card.caption_tag_dropout_rate,
    ) == (
        True,
        0,
        "|||",
        0.1,
    )
    head = "1girl, rice shower (umamusume), umamusume, kohaku (artist), "
    assert text(HAKU, card, epoch=1, index=0) == head + (
        "<|> <|>, newest, absurdres, looking at viewer, solo, masterpiece, highres, ^_^"
    )
    assert text(HAKU, card, epoch=1, index=1) == head + (
        ":d, looking at viewer, <|> <|>, masterpiece, absurdres, long hair, ^_^, o_o, highres, solo, newest"
    )
    assert text(HAKU, card, epoch=2, index=0) == head + (
        "<|> <|>, safe, absurdres, newest, highres, looking at viewer, :d, o_o, masterpiece, long hair, solo, ^_^"
    )
    detail = process_caption(HAKU, card, seed=1337, epoch=1, index=0)
    assert detail.fixed == FIXED
    assert detail.dropped_tags == ["long hair", ":d", "safe", "o_o"]
    assert sorted(detail.flex + detail.dropped_tags) == sorted(FLEX)


def test_caption_rng_derivation_is_the_documented_one():
    digest = hashlib.blake2b(b"kxl-caption:1337:3:42", digest_size=8).digest()
    expected = random.Random(int.from_bytes(digest, "big"))
    got = caption_rng(1337, 3, 42)
    assert [got.random() for _ in range(5)] == [expected.random() for _ in range(5)]


def test_draws_follow_kohyas_order_dropout_check_then_shuffle_then_per_tag():
    options = CaptionProcessing(caption_dropout_rate=0.05, caption_tag_dropout_rate=0.3)
    for seed in range(30):
        mirror = random.Random(seed)
        expected_drop = mirror.random() < 0.05
        flex = list(FLEX)
        mirror.shuffle(flex)
        kept = [t for t in flex if mirror.random() >= 0.3]
        result = process_caption_with_rng(HAKU, options, rng=random.Random(seed), epoch=1)
        if expected_drop:
            assert result.text == "" and result.caption_dropped
        else:
            assert result.text == ", ".join(FIXED + kept)


def test_no_draw_for_caption_dropout_at_rate_zero():
    # kohya's `rate > 0 and random() < rate` short-circuits: the first draw must go to the shuffle.
    options = CaptionProcessing(caption_tag_dropout_rate=0.0)
    mirror = random.Random(11)
    flex = list(FLEX)
    mirror.shuffle(flex)
    assert process_caption_with_rng(HAKU, options, rng=random.Random(11), epoch=1).text == ", ".join(
        FIXED + flex
    )


def test_same_sample_is_deterministic_and_epochs_differ():
    card = card_caption_processing()
    assert text(HAKU, card, seed=5, epoch=3, index=9) == text(HAKU, card, seed=5, epoch=3, index=9)
    by_epoch = [tuple(text(HAKU, card, seed=5, epoch=e, index=i) for i in range(8)) for e in (1, 2)]
    assert sum(a != b for a, b in zip(*by_epoch, strict=True)) >= 6
    assert len({text(HAKU, card, seed=5, epoch=1, index=i) for i in range(8)}) >= 7
    assert text(HAKU, card, seed=5, epoch=1, index=0) != text(HAKU, card, seed=6, epoch=1, index=0)


def test_tag_dropout_rate_is_ten_percent():
    caption = "fixed, |||" + ", ".join(f"t{i}" for i in range(50))
    card = card_caption_processing()
    dropped = kept = 0
    for index in range(400):
        result = process_caption(caption, card, seed=0, epoch=1, index=index)
        assert result.fixed == ["fixed"]
        dropped += len(result.dropped_tags)
        kept += len(result.flex)
    assert dropped + kept == 20000
    # Binomial(20000, 0.1): sd 42 tags; +-300 is 7 sd (and the seeds are fixed, so it cannot flake).
    assert 1700 <= dropped <= 2300


def test_fixed_head_and_suffix_never_move_or_drop():
    options = CaptionProcessing(caption_tag_dropout_rate=0.5)
    caption = "a, b, |||c, d, e, f|||y, z"
    assert text(caption, options, seed=3, index=7) == "a, b, f, d, y, z"
    seen_flex_orders = set()
    for index in range(200):
        result = process_caption(caption, options, seed=3, epoch=1, index=index)
        assert result.fixed == ["a", "b"] and result.suffix == ["y", "z"]
        assert result.text.startswith("a, b") and result.text.endswith("y, z")
        assert set(result.flex) <= {"c", "d", "e", "f"}
        seen_flex_orders.add(tuple(result.flex))
    assert ("c", "d", "e", "f") in seen_flex_orders or len(seen_flex_orders) > 20
    assert () in seen_flex_orders  # everything flexible dropped: only head and suffix remain
    assert text(caption, CaptionProcessing(caption_tag_dropout_rate=1.0)) == "a, b, y, z"


@pytest.mark.parametrize(
    ("caption", "options", "expected"),
    [
        # No shuffle, no dropout: kohya would leave "|||" in the text; we consume it.
        (HAKU, CaptionProcessing(shuffle_caption=False), ", ".join(FIXED + FLEX)),
        (", |||solo, safe", CaptionProcessing(shuffle_caption=False), "solo, safe"),
        ("a|||b|||c", CaptionProcessing(shuffle_caption=False), "a, b, c"),
        ("a, b|||c|||d|||e", CaptionProcessing(shuffle_caption=False), "a, b, c, d, e"),
        # No separator configured while shuffling: the marker is a boundary, not part of a tag.
        (
            "x, |||y",
            CaptionProcessing(
                keep_tokens_separator="", keep_tokens=1, shuffle_caption=False, caption_tag_dropout_rate=0.0
            ),
            "x, y",
        ),
        (
            "x, |||y",
            CaptionProcessing(keep_tokens_separator="", shuffle_caption=False, token_warmup_step=0),
            "x, y",
        ),
        # A different separator configured: the stray "|||" still never reaches the text.
        ("x ### y, |||z", CaptionProcessing(keep_tokens_separator="###", shuffle_caption=False), "x, y, z"),
        # No marker, nothing enabled: the text passes through untouched (kohya parity).
        ("a,b ,  c", CaptionProcessing(shuffle_caption=False), "a,b ,  c"),
    ],
)
def test_marker_never_leaks_into_text(caption, options, expected):
    assert text(caption, options) == expected


@settings(max_examples=150, deadline=None)
@given(
    caption=st.text(alphabet="ab|, ", max_size=40),
    shuffle=st.booleans(),
    rate=st.sampled_from([0.0, 0.5]),
    separator=st.sampled_from(["|||", "", "#"]),
    keep=st.integers(0, 3),
    seed=st.integers(0, 1000),
)
def test_marker_never_appears_for_any_caption_or_config(caption, shuffle, rate, separator, keep, seed):
    options = CaptionProcessing(
        shuffle_caption=shuffle,
        caption_tag_dropout_rate=rate,
        keep_tokens_separator=separator,
        keep_tokens=keep,
    )
    assert "|||" not in text(caption, options, seed=seed)


def test_keep_tokens_without_separator_keeps_empty_tokens():
    options = CaptionProcessing(keep_tokens_separator="", keep_tokens=2)
    for index in range(20):
        result = process_caption("a, , b, c, d", options, seed=1, epoch=1, index=index)
        assert result.fixed == ["a", ""]
        assert result.text.startswith("a, , ")
        assert sorted(result.flex) == ["b", "c", "d"]
    # HakuBooru's empty head: the leading empty token is kept and counts toward keep_tokens.
    result = process_caption(
        ", |||solo, safe",
        CaptionProcessing(keep_tokens_separator="", keep_tokens=1),
        seed=1,
        epoch=1,
        index=0,
    )
    assert result.fixed == [""] and sorted(result.flex) == ["safe", "solo"]
    assert result.text in (", safe, solo", ", solo, safe")


def test_caption_dropout_rate_and_every_n_epochs():
    always = CaptionProcessing(caption_dropout_rate=1.0)
    result = process_caption(HAKU, always, seed=1, epoch=1, index=0)
    assert result.text == "" and result.caption_dropped
    every2 = CaptionProcessing(caption_dropout_every_n_epochs=2, caption_prefix="pre")
    assert [text(HAKU, every2, epoch=e) == "" for e in (1, 2, 3, 4)] == [False, True, False, True]
    half = CaptionProcessing(caption_dropout_rate=0.25)
    blanks = sum(text(HAKU, half, seed=2, index=i) == "" for i in range(800))
    assert 140 <= blanks <= 260  # Binomial(800, .25): mean 200, sd 12


def test_prefix_and_suffix_join_with_a_space_before_splitting():
    options = CaptionProcessing(shuffle_caption=False, caption_prefix="pre", caption_suffix="post")
    assert text("a, |||b, c", options) == "pre a, b, c post"
    dropped = CaptionProcessing(caption_prefix="pre", caption_dropout_rate=1.0)
    assert text("a, |||b", dropped) == ""


def test_secondary_separator_keeps_a_group_together_then_expands():
    options = CaptionProcessing(secondary_separator=";;;")
    for index in range(30):
        out = text("x, |||a;;;b, c, d", options, index=index)
        assert out.startswith("x, ")
        assert "a,b" in out and ";;;" not in out
    assert text("a;;;b, c", CaptionProcessing(shuffle_caption=False, secondary_separator=";;;")) == "a,b, c"


def test_token_warmup_cuts_flex_before_shuffle():
    options = CaptionProcessing(shuffle_caption=False, token_warmup_step=10, token_warmup_min=1)
    caption = "f, |||a, b, c, d, e, g, h, i"
    assert text(caption, options, step=0) == "f, a"
    assert text(caption, options, step=5) == "f, a, b, c, d"  # floor(5 * 7 / 10) + 1 = 4
    assert text(caption, options, step=10) == "f, a, b, c, d, e, g, h, i"
    fraction = CaptionProcessing(shuffle_caption=False, token_warmup_step=0.5)
    assert text(caption, fraction, step=5, max_train_steps=20) == "f, a, b, c, d"
    detail = process_caption(caption, options, seed=0, epoch=1, index=0, step=5)
    assert detail.cut_tags == ["e", "g", "h", "i"]


def test_only_first_line_is_used():
    assert text("a, |||b\nc, d", CaptionProcessing(shuffle_caption=False)) == "a, b"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"caption_tag_dropout_rate": 1.5},
        {"caption_dropout_rate": -0.1},
        {"keep_tokens": -1},
        {"caption_dropout_every_n_epochs": 1.5},
        {"caption_separator": ""},
        {"token_warmup_step": -1},
    ],
)
def test_bad_options_raise_kxl_error(kwargs):
    with pytest.raises(KxlError, match="caption option"):
        CaptionProcessing(**kwargs)
