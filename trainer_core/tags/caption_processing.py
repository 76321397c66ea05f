"""Train-time caption shuffle and dropout, with kohya sd-scripts semantics (specs/dataset.md §5).

The trainer and the Tags tab's preview both call `process_caption`, so the preview shows the exact caption the
model will see for a given (seed, epoch, sample index, step).

Randomness: kohya draws from the process-global `random`. We draw from a private `random.Random` per sample,
derived by `caption_rng(seed, epoch, index)`, and consume it in kohya's order:
  1. one `random()` for whole-caption dropout, only when `caption_dropout_rate > 0`;
  2. `shuffle(flex)` when `shuffle_caption` is on;
  3. one `random()` per remaining flex tag for tag dropout, only when `caption_tag_dropout_rate > 0`.
A per-sample generator makes a sample's caption independent of worker count, data order and how many other
samples were drawn before it, which is what lets a preview reproduce it.

Deviation from kohya, on purpose (the spec's pitfall): the keep-tokens marker (`|||`) never reaches the text. kohya
leaves it in when the token step does not run (no shuffle, no tag dropout, no warm-up) or when no
`keep_tokens_separator` is configured; we always consume it. Wildcards (`--enable_wildcard`) are not supported:
only the first line of a caption is used, as kohya does without that flag.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

from ..errors import KxlError

KEEP_TOKENS_SEPARATOR = "|||"
CARD_TAG_DROPOUT_RATE = 0.1


@dataclass(frozen=True)
class CaptionProcessing:
    """kohya dataset-subset caption options; field names follow the sd-scripts flags."""

    shuffle_caption: bool = True
    keep_tokens: int = 0
    keep_tokens_separator: str = KEEP_TOKENS_SEPARATOR
    caption_separator: str = ","
    secondary_separator: str = ""
    caption_tag_dropout_rate: float = 0.0
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    # < 1 means a fraction of max_train_steps (kohya converts it once); 0 disables warm-up.
    token_warmup_step: float = 0
    token_warmup_min: int = 1
    caption_prefix: str = ""
    caption_suffix: str = ""

    def __post_init__(self) -> None:
        for key in ("caption_tag_dropout_rate", "caption_dropout_rate"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise KxlError(f"caption option {key} must be between 0 and 1, got {value}")
        for key in ("keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min"):
            value = getattr(self, key)
            if int(value) != value or value < 0:
                raise KxlError(f"caption option {key} must be a whole number >= 0, got {value}")
        if self.token_warmup_step < 0:
            raise KxlError(f"caption option token_warmup_step must be >= 0, got {self.token_warmup_step}")
        if not self.caption_separator:
            raise KxlError("caption option caption_separator must not be empty")

    @property
    def runs_token_step(self) -> bool:
        """Whether kohya would split, shuffle and drop tags (its step 4) for this configuration."""
        return self.shuffle_caption or self.token_warmup_step > 0 or self.caption_tag_dropout_rate > 0


def card_caption_processing() -> CaptionProcessing:
    """The Kohaku XL Delta run: `--shuffle_caption --caption_tag_dropout_rate=0.1 --keep_tokens=0
    --keep_tokens_separator="|||"` (specs/training.md §0)."""
    return CaptionProcessing(
        shuffle_caption=True,
        keep_tokens=0,
        keep_tokens_separator=KEEP_TOKENS_SEPARATOR,
        caption_tag_dropout_rate=CARD_TAG_DROPOUT_RATE,
    )


@dataclass(frozen=True)
class ProcessedCaption:
    """The caption the model sees, plus the pieces a preview wants to colour."""

    text: str
    fixed: list[str] = field(default_factory=list)
    flex: list[str] = field(default_factory=list)  # after warm-up cut, shuffle and dropout, in output order
    suffix: list[str] = field(default_factory=list)
    dropped_tags: list[str] = field(default_factory=list)  # flex tags removed by tag dropout
    cut_tags: list[str] = field(default_factory=list)  # flex tags removed by token warm-up
    caption_dropped: bool = False  # whole caption blanked (rate or every-n-epochs)


def caption_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator for one sample: `Random(int.from_bytes(blake2b(b"kxl-caption:<seed>:<epoch>:<index>",
    digest_size=8).digest(), "big"))`.

    blake2b rather than `hash()` because Python salts str hashes per process, and rather than `seed*K + index`
    arithmetic so neighbouring (seed, epoch, index) triples give unrelated streams.
    """
    key = f"kxl-caption:{int(seed)}:{int(epoch)}:{int(index)}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def process_caption(
    caption: str,
    options: CaptionProcessing,
    *,
    seed: int,
    epoch: int,
    index: int,
    step: int = 0,
    max_train_steps: int = 0,
) -> ProcessedCaption:
    """Caption for sample `index` at (1-based) `epoch` and global `step`, deterministic for (seed, epoch, index)."""
    return process_caption_with_rng(
        caption,
        options,
        rng=caption_rng(seed, epoch, index),
        epoch=epoch,
        step=step,
        max_train_steps=max_train_steps,
    )


def process_caption_with_rng(
    caption: str,
    options: CaptionProcessing,
    *,
    rng: random.Random,
    epoch: int,
    step: int = 0,
    max_train_steps: int = 0,
) -> ProcessedCaption:
    """kohya's `process_caption` with an explicit generator (see the module docstring for the draw order)."""
    sep = options.caption_separator
    # Step 1: prefix/suffix are glued with a single space, before anything else (so dropout blanks them too).
    if options.caption_prefix:
        caption = options.caption_prefix + " " + caption
    if options.caption_suffix:
        caption = caption + " " + options.caption_suffix

    # Step 2: whole-caption dropout. The rate check short-circuits, so no draw happens at rate 0.
    drop = options.caption_dropout_rate > 0 and rng.random() < options.caption_dropout_rate
    n = options.caption_dropout_every_n_epochs
    drop = drop or (n > 0 and epoch % n == 0)
    if drop:
        return ProcessedCaption(text="", caption_dropped=True)

    # Step 3: without wildcards kohya keeps the first line only.
    caption = caption.split("\n")[0]

    fixed, flex, suffix = _split_tokens(caption, options)
    cut: list[str] = []
    dropped: list[str] = []
    if fixed is None:
        # No marker to consume and kohya would not touch the tokens: the text passes through unchanged.
        text = caption
        fixed, flex, suffix = [], [], []
    else:
        fixed = fixed or []
        if options.runs_token_step:
            flex, cut = _warmup_cut(flex, options, step, max_train_steps)
            if options.shuffle_caption:
                rng.shuffle(flex)
            if options.caption_tag_dropout_rate > 0:
                kept: list[str] = []
                for token in flex:
                    (kept if rng.random() >= options.caption_tag_dropout_rate else dropped).append(token)
                flex = kept
        text = ", ".join(fixed + flex + suffix)

    # Step 5: the secondary separator lets one token carry several tags; it is expanded after shuffling.
    if options.secondary_separator:
        text = text.replace(options.secondary_separator, sep)
    return ProcessedCaption(
        text=text, fixed=fixed, flex=flex, suffix=suffix, dropped_tags=dropped, cut_tags=cut
    )


def _split_tokens(caption: str, options: CaptionProcessing) -> tuple[list[str] | None, list[str], list[str]]:
    """Split into (fixed, flex, suffix); fixed is None when there is no marker and kohya's step 4 is off, which
    means "leave the text alone"."""
    sep = options.caption_separator
    marker = options.keep_tokens_separator
    if marker and marker in caption:
        fixed_part, flex_part = caption.split(marker, 1)
        suffix_part = ""
        if marker in flex_part:
            flex_part, suffix_part = flex_part.split(marker, 1)
        return _nonempty(fixed_part, sep), _nonempty(flex_part, sep), _nonempty(suffix_part, sep)

    has_stray_marker = KEEP_TOKENS_SEPARATOR in caption
    if not options.runs_token_step and not has_stray_marker:
        return None, [], []
    # keep_tokens path: empty tokens are kept (kohya), so ", |||solo" keeps its leading empty token.
    tokens = [t.strip() for t in caption.strip().split(sep)]
    if has_stray_marker:
        tokens = _strip_marker_from_tokens(tokens)
    k = options.keep_tokens
    return tokens[:k], tokens[k:], []


def _strip_marker_from_tokens(tokens: list[str]) -> list[str]:
    """`|||` inside a token is a boundary, not text: `"|||looking at viewer"` -> `"looking at viewer"`, `"a|||b"` ->
    `"a", "b"`. Pieces left empty by the marker go; a token that was empty before stays (kohya keeps those)."""
    out: list[str] = []
    for token in tokens:
        if KEEP_TOKENS_SEPARATOR not in token:
            out.append(token)
            continue
        out.extend(p.strip() for p in token.split(KEEP_TOKENS_SEPARATOR) if p.strip())
    return out


def _nonempty(part: str, sep: str) -> list[str]:
    # A third marker (or "|||" when another marker is configured) has no meaning in kohya and would sit inside a
    # tag's text; it becomes a boundary instead.
    return _strip_marker_from_tokens([t.strip() for t in part.split(sep) if t.strip()])


def _warmup_cut(
    flex: list[str], options: CaptionProcessing, step: int, max_train_steps: int
) -> tuple[list[str], list[str]]:
    """kohya's token warm-up: while step < warmup, keep the first floor(step * (len - min) / warmup) + min tags."""
    warmup = options.token_warmup_step
    if 0 < warmup < 1:
        warmup = math.floor(warmup * max_train_steps)
    if warmup and step < warmup:
        keep = math.floor(step * ((len(flex) - options.token_warmup_min) / warmup)) + options.token_warmup_min
        return flex[:keep], flex[keep:]
    return list(flex), []
