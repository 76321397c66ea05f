"""The exporter's special tag names (specs/dataset.md §3.2, §3.6), owned here so the caption builder and the
Tags tab's chip colouring read one list.

Names are in caption form (spaces), as HakuBooru writes them; count tags keep their raw names (exact membership).
"""

from __future__ import annotations

from ..danbooru.schema import Rating

# §3.2: general-category tags that go to the fixed head, matched by exact raw name.
SPECIAL_TAGS = frozenset(
    "1girl 2girls 3girls 4girls 5girls 6+girls multiple_girls 1boy 2boys 3boys 4boys 5boys 6+boys multiple_boys "
    "male_focus 1other 2others 3others 4others 5others 6+others multiple_others".split()
)
# §3.6: what the year / rating / quality processors append.
YEAR_TAGS = ("old", "early", "mid", "recent", "newest")
RATING_TAGS: dict[int, tuple[str, ...]] = {
    Rating.GENERAL: ("safe",),
    Rating.SENSITIVE: ("sensitive",),
    Rating.QUESTIONABLE: ("nsfw",),
    Rating.EXPLICIT: ("explicit", "nsfw"),
}
QUALITY_LABELS = (
    "masterpiece",
    "best quality",
    "great quality",
    "good quality",
    "normal quality",
    "low quality",
    "worst quality",
)
