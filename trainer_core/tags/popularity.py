"""How likely a tag is to "work" in a prompt, judged from its post count (the Kohaku XL Delta model card).

The card's guidance: tags with 1000+ posts should work; 100-999 posts may work when emphasised by 1.5-2.5;
fewer than 100 posts are unlikely to work. The Tags tab and the Generate tab both show this, so it lives here once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

WORKS_MIN_POSTS = 1000
MAY_WORK_MIN_POSTS = 100


class PopularityLevel(enum.IntEnum):
    UNLIKELY = 0
    MAY_WORK = 1
    SHOULD_WORK = 2


@dataclass(frozen=True)
class PopularityGuidance:
    level: PopularityLevel
    label: str
    # Inclusive emphasis range to suggest, e.g. (1.5, 2.5) -> "(tag:1.5)" .. "(tag:2.5)"; None when the card
    # suggests nothing (the tag works as is, or is unlikely to work at any weight).
    emphasis: tuple[float, float] | None
    post_count: int


_SHOULD = ("should work", None)
_MAY = ("may work with emphasis 1.5-2.5", (1.5, 2.5))
_UNLIKELY = ("unlikely to work", None)


def popularity_guidance(post_count: int) -> PopularityGuidance:
    """Classify a tag by its post count: >= 1000 should work, 100-999 may work with emphasis, < 100 unlikely."""
    if post_count < 0:
        raise ValueError(f"post count must be >= 0, got {post_count}")
    if post_count >= WORKS_MIN_POSTS:
        level, (label, emphasis) = PopularityLevel.SHOULD_WORK, _SHOULD
    elif post_count >= MAY_WORK_MIN_POSTS:
        level, (label, emphasis) = PopularityLevel.MAY_WORK, _MAY
    else:
        level, (label, emphasis) = PopularityLevel.UNLIKELY, _UNLIKELY
    return PopularityGuidance(level=level, label=label, emphasis=emphasis, post_count=post_count)
