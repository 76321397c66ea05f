"""The tag builder's model: fields in the Kohaku XL card's order <-> A1111 prompt text.

Pure Python (no widgets) so the round trip can be tested directly. Text is built as
`count, character, series, artists, special (quality, rating, date), general`, each tag in prompt form
(`rice shower \\(umamusume\\)`) and `(tag:1.5)` when its emphasis is not 1. Reading text back splits it on
top-level commas; an item that is not one tag with one weight (BREAK, nested mixed weights, a stray bracket)
makes the text "not representable" and the chips are left alone while the text stays as typed. Tags go to the
field of their vocabulary category; a tag the vocabulary does not know keeps the field it had before the edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer_core.generate.prompt import PromptSyntaxError, parse_prompt_attention, strip_extra_networks
from trainer_core.tags import TagCategory, TagVocabulary, normalize_tag_query, tag_to_prompt_text
from trainer_core.tags.caption_categories import COUNT_TAGS, QUALITY_TAGS, RATING_TAGS, YEAR_TAGS

CHIP_FIELDS = ("count", "character", "series", "artists", "general")
FIELD_TITLES = {"count": "Count", "character": "Character", "series": "Series", "artists": "Artists",
                "general": "General tags"}  # fmt: skip
FIELD_CATEGORIES: dict[str, tuple[TagCategory, ...] | None] = {
    "count": None,  # count tags are a fixed list, not a category
    "character": (TagCategory.CHARACTER,),
    "series": (TagCategory.COPYRIGHT,),
    "artists": (TagCategory.ARTIST,),
    "general": (TagCategory.GENERAL, TagCategory.META),
}
# The card's special tags, offered as combos (raw names; "" = none).
SPECIAL_CHOICES = {
    "quality": ("", *QUALITY_TAGS),
    "rating": ("", *RATING_TAGS),
    "date": ("", *reversed(YEAR_TAGS)),  # newest first, like quality and rating (best/mildest first)
}
COUNT_CHOICES = ("1girl", "2girls", "3girls", "multiple_girls", "1boy", "2boys", "multiple_boys", "1other",
                 "male_focus")  # fmt: skip
MIN_WEIGHT, MAX_WEIGHT = 0.5, 2.5
WEIGHT_DECIMALS = 2


@dataclass
class ChipValue:
    name: str  # raw tag name (underscores), as in the vocabulary
    weight: float = 1.0


@dataclass
class PromptFields:
    chips: dict[str, list[ChipValue]] = field(default_factory=lambda: {f: [] for f in CHIP_FIELDS})
    special: dict[str, str] = field(default_factory=lambda: {k: "" for k in SPECIAL_CHOICES})

    def to_text(self) -> str:
        items: list[str] = []
        for name in ("count", "character", "series", "artists"):
            items += [chip_text(c) for c in self.chips[name]]
        items += [tag_to_prompt_text(self.special[k]) for k in SPECIAL_CHOICES if self.special[k]]
        items += [chip_text(c) for c in self.chips["general"]]
        return ", ".join(items)


def chip_text(chip: ChipValue) -> str:
    text = tag_to_prompt_text(chip.name)
    weight = round(chip.weight, WEIGHT_DECIMALS)
    return text if weight == 1.0 else f"({text}:{weight:g})"


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets; backslash escapes are kept with their character."""
    items, depth, current, i = [], 0, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def classify(name: str, vocabulary: TagVocabulary | None) -> str:
    """Which field a raw tag name belongs to: a chip field, or quality/rating/date for special tags."""
    if name in COUNT_TAGS:
        return "count"
    for key, choices in SPECIAL_CHOICES.items():
        if name in choices:
            return key
    tag = vocabulary.get(name) if vocabulary is not None else None
    if tag is not None:
        for field_name, categories in FIELD_CATEGORIES.items():
            if categories and tag.category in categories:
                return field_name
    return "general"


def fields_from_text(
    text: str, vocabulary: TagVocabulary | None, previous: PromptFields | None = None
) -> PromptFields | None:
    """The chips for a prompt, or None when the text cannot be shown as chips (the text then stays as typed).

    `previous` is what the chips showed before the edit. A tag the vocabulary does not know has no category to
    go by, so it stays in the field it was in there (an unknown artist typed in Artists must not become a
    general tag because the user edited some other part of the text); only tags new to the text, or unknown
    everywhere, land in General.
    """
    text, _ = strip_extra_networks(text)
    fields = PromptFields()
    placed_before: dict[str, str] = {}
    if previous is not None:
        for key in CHIP_FIELDS:
            for chip in previous.chips[key]:
                placed_before.setdefault(chip.name, key)
    for item in split_top_level(text):
        try:
            parts = parse_prompt_attention(item)
        except PromptSyntaxError:
            return None
        if len(parts) != 1 or parts[0][1] < 0:
            return None  # BREAK, mixed weights inside one item...
        raw, weight = parts[0]
        name = normalize_tag_query(raw.strip())
        name = name.rstrip("_")
        if not name:
            continue
        if vocabulary is not None and name not in vocabulary:
            alias = vocabulary.alias_target(name)
            name = alias.name if alias is not None else name
        place = classify(name, vocabulary)
        if name in placed_before and (vocabulary is None or name not in vocabulary) and place == "general":
            place = placed_before[name]
        if place in SPECIAL_CHOICES:
            if fields.special[place] or weight != 1.0:
                place = "general"  # a second quality tag, or a weighted one, is kept as an ordinary chip
            else:
                fields.special[place] = name
                continue
        fields.chips[place].append(ChipValue(name, max(MIN_WEIGHT, min(MAX_WEIGHT, weight))
                                             if weight != 1.0 else 1.0))  # fmt: skip
    return fields
