"""What kind of tag a caption token is: the chip colours of the Tags tab and the category statistics.

HakuBooru captions mix Danbooru tags with tags the exporter invents (specs/dataset.md §3): year (`newest`),
rating (`safe`, `nsfw`), quality (`masterpiece`). Those, and the "count" tags (`1girl`, `multiple boys`) that
the exporter moves in front of `|||`, are recognised by name; everything else gets its category from a
`TagVocabulary` (DB `tag` table or tagcomplete CSV), or "unknown" when there is none or the tag is not in it.
"""

from __future__ import annotations

import enum

from .special_tags import QUALITY_LABELS, SPECIAL_TAGS
from .special_tags import RATING_TAGS as _RATING_TAGS
from .special_tags import YEAR_TAGS as _YEAR_TAGS
from .text import normalize_tag_name
from .vocabulary import TagCategory, TagVocabulary


class CaptionTagKind(str, enum.Enum):
    COUNT = "count"
    CHARACTER = "character"
    SERIES = "series"  # Danbooru's "copyright"
    ARTIST = "artist"
    GENERAL = "general"
    META = "meta"
    YEAR = "year"
    RATING = "rating"
    QUALITY = "quality"
    UNKNOWN = "unknown"


# The exporter's special names (special_tags.py) as index keys (underscored): membership is by exact name.
COUNT_TAGS = SPECIAL_TAGS
YEAR_TAGS = _YEAR_TAGS
RATING_TAGS = tuple(dict.fromkeys(name for names in _RATING_TAGS.values() for name in names))
QUALITY_TAGS = tuple(normalize_tag_name(label) for label in QUALITY_LABELS)
_BY_NAME: dict[str, CaptionTagKind] = {
    **{k: CaptionTagKind.COUNT for k in COUNT_TAGS},
    **{k: CaptionTagKind.YEAR for k in YEAR_TAGS},
    **{k: CaptionTagKind.RATING for k in RATING_TAGS},
    **{k: CaptionTagKind.QUALITY for k in QUALITY_TAGS},
}
_FROM_CATEGORY = {
    TagCategory.GENERAL: CaptionTagKind.GENERAL,
    TagCategory.ARTIST: CaptionTagKind.ARTIST,
    TagCategory.CHARACTER: CaptionTagKind.CHARACTER,
    TagCategory.COPYRIGHT: CaptionTagKind.SERIES,
    TagCategory.META: CaptionTagKind.META,
}


def special_tag_kind(text: str) -> CaptionTagKind | None:
    """COUNT / YEAR / RATING / QUALITY for the exporter's special names (caption or raw spelling), else None."""
    return _BY_NAME.get(normalize_tag_name(text))


def classify_caption_tag(text: str, vocabulary: TagVocabulary | None = None) -> CaptionTagKind:
    """The kind of one caption token (`long hair`, `rice shower (umamusume)`, `newest`)."""
    special = special_tag_kind(text)
    if special is not None:
        return special
    if vocabulary is not None:
        tag = vocabulary.get(text)
        if tag is not None:
            return _FROM_CATEGORY[tag.category]
    return CaptionTagKind.UNKNOWN


def rating_of_tags(keys: list[str] | tuple[str, ...]) -> str | None:
    """The rating a caption's tags express (index keys). `explicit, nsfw` is explicit, lone `nsfw` questionable."""
    present = set(keys) & set(RATING_TAGS)
    for rating in ("explicit", "nsfw", "sensitive", "safe"):
        if rating in present:
            return rating
    return None


def first_of(keys: list[str] | tuple[str, ...], names: tuple[str, ...]) -> str | None:
    """The first key that is one of `names` (captions carry at most one year and one quality tag)."""
    wanted = set(names)
    for key in keys:
        if key in wanted:
            return key
    return None
