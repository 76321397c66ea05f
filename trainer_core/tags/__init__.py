"""Tags: vocabulary (DB or tagcomplete CSV), completion ranking, popularity guidance, caption text rules and the
trainer's caption shuffle/dropout.

Completion pulls in numpy, so its names are imported on first use; everything else here is pure stdlib.
"""

from __future__ import annotations

from typing import Any

from .caption_processing import (
    KEEP_TOKENS_SEPARATOR,
    CaptionProcessing,
    ProcessedCaption,
    caption_rng,
    card_caption_processing,
    process_caption,
    process_caption_with_rng,
)
from .popularity import PopularityGuidance, PopularityLevel, popularity_guidance
from .text import (
    escape_prompt_text,
    normalize_tag_name,
    normalize_tag_query,
    tag_to_caption_text,
    tag_to_prompt_text,
    unescape_prompt_text,
)
from .vocabulary import DANBOORU_TO_CATEGORY, Tag, TagCategory, TagVocabulary

_LAZY = {"Completion", "MatchKind", "TagCompleter", "complete_naive"}

__all__ = [
    "DANBOORU_TO_CATEGORY",
    "KEEP_TOKENS_SEPARATOR",
    "CaptionProcessing",
    "Completion",
    "MatchKind",
    "PopularityGuidance",
    "PopularityLevel",
    "ProcessedCaption",
    "Tag",
    "TagCategory",
    "TagCompleter",
    "TagVocabulary",
    "caption_rng",
    "card_caption_processing",
    "complete_naive",
    "escape_prompt_text",
    "normalize_tag_name",
    "normalize_tag_query",
    "popularity_guidance",
    "process_caption",
    "process_caption_with_rng",
    "tag_to_caption_text",
    "tag_to_prompt_text",
    "unescape_prompt_text",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import completion

        return getattr(completion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
