"""One palette for caption tags, keyed by `CaptionTagKind` (plain Python: colours as #rrggbb strings).

Two taxonomies name a caption tag's kind: the Tags tab's `CaptionTagKind` (count, character, series, artist,
general, meta, year, rating, quality, unknown) and the exporter's integer kinds that order a caption
(trainer_core.dataset.captions.KIND_*, plus the preview's KIND_EXTRA for year / rating / quality tags). The
table is keyed by the first; `kind_of_export_tag` maps the second onto it, so the Dataset wizard's caption
preview, the Tags chips and the Generate tag builder show a tag in the same colour.

Colours follow Danbooru's (general blue, artist red, copyright purple, character green, meta yellow) so users
recognise them; the exporter's own tags (count, year, rating, quality) get colours of their own.
"""

from __future__ import annotations

from trainer_core.dataset.captions import (
    KIND_ARTIST,
    KIND_CHARACTER,
    KIND_COPYRIGHT,
    KIND_GENERAL,
    KIND_META,
    KIND_SPECIAL,
)
from trainer_core.dataset.preview import KIND_EXTRA
from trainer_core.tags.caption_categories import CaptionTagKind, special_tag_kind
from trainer_core.tags.popularity import PopularityLevel

KIND_COLORS: dict[CaptionTagKind, str] = {
    CaptionTagKind.COUNT: "#ff9e64",
    CaptionTagKind.CHARACTER: "#5fd46f",
    CaptionTagKind.SERIES: "#c797ff",
    CaptionTagKind.ARTIST: "#ff8a8b",
    CaptionTagKind.GENERAL: "#6cb6ff",
    CaptionTagKind.META: "#ead084",
    CaptionTagKind.YEAR: "#7fd3cf",
    CaptionTagKind.RATING: "#f28fb8",
    CaptionTagKind.QUALITY: "#e0a33a",
    CaptionTagKind.UNKNOWN: "#a9a59c",
}
KIND_LABELS: dict[CaptionTagKind, str] = {
    CaptionTagKind.COUNT: "count",
    CaptionTagKind.CHARACTER: "character",
    CaptionTagKind.SERIES: "series",
    CaptionTagKind.ARTIST: "artist",
    CaptionTagKind.GENERAL: "general",
    CaptionTagKind.META: "meta",
    CaptionTagKind.YEAR: "year",
    CaptionTagKind.RATING: "rating",
    CaptionTagKind.QUALITY: "quality",
    CaptionTagKind.UNKNOWN: "unknown",
}
LEVEL_COLORS: dict[PopularityLevel, str] = {
    PopularityLevel.SHOULD_WORK: "#5fd46f",
    PopularityLevel.MAY_WORK: "#e0c23a",
    PopularityLevel.UNLIKELY: "#e8645c",
}
SEPARATOR_COLOR = "#e0a33a"  # the `|||` between a caption's kept and shuffled parts
MUTED_COLOR = "#6b6862"  # post ids and other secondary text next to tags

_FROM_EXPORT_KIND = {
    KIND_SPECIAL: CaptionTagKind.COUNT,
    KIND_CHARACTER: CaptionTagKind.CHARACTER,
    KIND_COPYRIGHT: CaptionTagKind.SERIES,
    KIND_ARTIST: CaptionTagKind.ARTIST,
    KIND_GENERAL: CaptionTagKind.GENERAL,
    KIND_META: CaptionTagKind.META,
}


def kind_of_export_tag(export_kind: int, text: str = "") -> CaptionTagKind:
    """The `CaptionTagKind` of a tag the exporter classified as `export_kind` (KIND_* or KIND_EXTRA).

    KIND_EXTRA covers three kinds; the tag's text says which (`newest` is a year, `safe` a rating)."""
    if export_kind == KIND_EXTRA:
        return special_tag_kind(text) or CaptionTagKind.UNKNOWN
    return _FROM_EXPORT_KIND.get(export_kind, CaptionTagKind.UNKNOWN)


def color_of(kind: CaptionTagKind) -> str:
    return KIND_COLORS.get(kind, KIND_COLORS[CaptionTagKind.UNKNOWN])


def rgba(hex_color: str, alpha: float) -> str:
    """`#rrggbb` + alpha as a style-sheet colour (Qt reads 8-digit hex as #AARRGGBB, not #RRGGBBAA)."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {int(alpha * 255)})"
