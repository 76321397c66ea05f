"""Tag autocompletion: ranked, alias-aware, fast enough to run on every keystroke over 140k tags.

Ranking. Each tag is matched through its name and its aliases (lower-case, spaces as underscores); its best match
decides its tier, and tiers never mix:
  EXACT       the query is the whole name or alias
  PREFIX      the name or alias starts with the query
  WORD_START  the query starts right after a `_ ( - /` inside it (`hair` -> `long_hair`, `umamusume` -> `..._(umamusume)`)
  SUBSTRING   the query occurs anywhere else
  FUZZY       one typo away from a prefix (queries of 3+ characters): one substituted, inserted or swapped-adjacent
              character, or, for queries of 5+ characters, one extra character. Substituted/inserted characters come
              from the vocabulary's ASCII alphabet, so `lnog_h` -> `long_hair`, `gril` -> `girl...`, `blnode` -> `blonde...`.
Inside a tier, tags go by popularity (post count, then name). When a tag matches through several entries in its
best tier, the name beats its aliases, then aliases keep the CSV order.

Index (why it is fast). Entries (names, then their aliases) are numbered in popularity order, so "smallest entry
number" is "most popular", and the tiers are searched in order, a lower one only when the ones above ran dry (so
every tag it meets that was not taken yet really belongs to it):
- EXACT: a dict from key to entries.
- PREFIX: all keys sorted; `bisect` finds the range starting with the query, numpy sorts its entry numbers.
- WORD_START: the same over a sorted list of every key suffix that follows a separator (about 1.3 per key).
- SUBSTRING: per category, the keys joined by newlines in entry order (a "haystack"). `bytes.find` runs in C and
  meets the most popular keys first, so it stops after `limit` new tags instead of visiting every match; at
  worst it is one pass over ~3 MB (about a millisecond).
- FUZZY: every one-edit variant of the query is a PREFIX range; variants are only generated at positions where
  some key still starts with the part of the query before the edit, which prunes most of them.
`complete_naive` is the same ranking as a plain linear scan, kept as the reference for tests and for the
benchmark's baseline.
"""

from __future__ import annotations

import enum
import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .popularity import PopularityGuidance, popularity_guidance
from .string_sort import argsort_strings
from .text import normalize_tag_name, normalize_tag_query, tag_to_caption_text, tag_to_prompt_text
from .vocabulary import Tag, TagCategory, TagVocabulary

WORD_SEPARATORS = "_(-/"
FUZZY_MIN_LENGTH = 3
FUZZY_DELETE_MIN_LENGTH = 5
MAX_QUERY_LENGTH = 100
DEFAULT_LIMIT = 20


class MatchKind(enum.IntEnum):
    EXACT = 0
    PREFIX = 1
    WORD_START = 2
    SUBSTRING = 3
    FUZZY = 4


@dataclass(frozen=True)
class Completion:
    tag: Tag
    kind: MatchKind
    alias: str | None  # the alias that matched, None when the name did
    rank: int  # popularity rank in the vocabulary (0 = most posts)

    @property
    def display(self) -> str:
        """List text: `long hair`, or `longhair → long hair` when an alias matched."""
        name = tag_to_caption_text(self.tag.name)
        return f"{tag_to_caption_text(self.alias)} → {name}" if self.alias is not None else name

    @property
    def caption_text(self) -> str:
        """What goes into a caption file (HakuBooru's underscore rule, no escaping)."""
        return tag_to_caption_text(self.tag.name)

    @property
    def prompt_text(self) -> str:
        """What autocompletion inserts into an A1111 prompt (underscore rule, then `\\(` `\\)` escaping)."""
        return tag_to_prompt_text(self.tag.name)

    @property
    def guidance(self) -> PopularityGuidance:
        return popularity_guidance(self.tag.count)


class _Haystack:
    """Keys of one category joined by newlines, in entry order, with where each key starts.

    Held as UTF-8 bytes: one non-ASCII alias would otherwise widen the whole str to 2 or 4 bytes per character
    and make every `find` several times slower. Byte-wise matching equals character-wise matching because UTF-8
    never produces one character's bytes inside another's.
    """

    __slots__ = ("text", "starts", "eids")

    def __init__(self, keys: list[str], eids: list[int]):
        encoded = [key.encode("utf-8") for key in keys]
        self.text = b"\n" + b"\n".join(encoded) + b"\n"
        starts: list[int] = []
        pos = 1
        for key in encoded:
            starts.append(pos)
            pos += len(key) + 1
        starts.append(len(self.text) + 1)  # sentinel: "next entry" of the last one
        self.starts = starts
        self.eids = eids

    def hits(self, needle: bytes) -> Iterator[int]:
        """Entry numbers whose key holds `needle` (which has no newline), each once, in increasing order."""
        text, starts, eids = self.text, self.starts, self.eids
        pos = text.find(needle)
        while pos != -1:
            i = bisect_right(starts, pos) - 1
            yield eids[i]
            pos = text.find(needle, starts[i + 1])  # skip the rest of this key


class TagCompleter:
    """Completion index over a `TagVocabulary`. Build once (about a second for 140k tags), query per keystroke."""

    def __init__(self, vocabulary: TagVocabulary):
        self.vocabulary = vocabulary
        tags = vocabulary.tags
        keys: list[str] = []
        ranks: list[int] = []
        aliases: list[str | None] = []
        alias_rows = list(vocabulary.alias_entries())
        a = 0
        for rank, tag in enumerate(tags):
            keys.append(normalize_tag_name(tag.name))
            ranks.append(rank)
            aliases.append(None)
            while a < len(alias_rows) and alias_rows[a][1] == rank:
                keys.append(normalize_tag_name(alias_rows[a][0]))
                ranks.append(rank)
                aliases.append(alias_rows[a][0])
                a += 1
        self._keys = keys
        self._ranks = ranks
        self._aliases = aliases
        # fromiter over a generator, not np.array(list): converting 170k enum members in one C call holds the GIL.
        self._categories = np.fromiter((tags[r].category for r in ranks), dtype=np.int8, count=len(ranks))

        self._exact: dict[str, list[int]] = {}
        for eid, key in enumerate(keys):
            self._exact.setdefault(key, []).append(eid)

        self._haystacks: dict[TagCategory, _Haystack] = {}
        for category in TagCategory:
            eids = [eid for eid in range(len(keys)) if tags[ranks[eid]].category == category]
            self._haystacks[category] = _Haystack([keys[e] for e in eids], eids)

        # Sorted by argsort_strings, which releases the GIL: built in a worker, a plain sort of these ~170k keys
        # (and ~250k word suffixes) would hold the GIL and freeze the window for 0.1-0.4 s each.
        order = argsort_strings(keys)
        self._sorted_keys = [keys[e] for e in order]
        self._sorted_eids = np.array(order, dtype=np.int64)

        # Every key suffix that starts a word (follows a separator), for WORD_START by bisect like PREFIX. They
        # are generated in entry order, so the stable sort keeps equal suffixes in entry order.
        word_keys: list[str] = []
        word_eids: list[int] = []
        for eid, key in enumerate(keys):
            for pos in range(1, len(key)):
                if key[pos - 1] in WORD_SEPARATORS:
                    word_keys.append(key[pos:])
                    word_eids.append(eid)
        order = argsort_strings(word_keys)
        self._word_keys = [word_keys[i] for i in order]
        self._word_eids = np.array(word_eids, dtype=np.int64)[np.array(order, dtype=np.int64)]
        self._alphabet = fuzzy_alphabet(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def complete(
        self,
        query: str,
        limit: int = DEFAULT_LIMIT,
        categories: Collection[TagCategory] | None = None,
    ) -> list[Completion]:
        """Up to `limit` completions for what the user typed (spaces or underscores, any case, `\\(` allowed)."""
        q = _prepare_query(query)
        if not q or limit <= 0:
            return []
        wanted = set(TagCategory) if categories is None else {TagCategory(c) for c in categories}
        hays = [self._haystacks[c] for c in TagCategory if c in wanted]
        out: list[Completion] = []
        seen: set[int] = set()

        def take(eids: Iterable[int], kind: MatchKind) -> bool:
            """Add tags in entry order until full; True when full."""
            for eid in eids:
                rank = self._ranks[eid]
                if rank in seen:
                    continue
                tag = self.vocabulary.tags[rank]
                if tag.category not in wanted:
                    continue
                seen.add(rank)
                out.append(Completion(tag, kind, self._aliases[eid], rank))
                if len(out) >= limit:
                    return True
            return False

        if take(self._exact.get(q, ()), MatchKind.EXACT):
            return out
        if take(self._range_eids(self._sorted_keys, self._sorted_eids, [q], wanted), MatchKind.PREFIX):
            return out
        if take(self._range_eids(self._word_keys, self._word_eids, [q], wanted), MatchKind.WORD_START):
            return out
        qb = q.encode("utf-8")
        if take(heapq.merge(*(h.hits(qb) for h in hays)), MatchKind.SUBSTRING):
            return out
        if len(q) >= FUZZY_MIN_LENGTH:
            variants = _one_edit_variants(q, self._alphabet, self._sorted_keys)
            take(self._range_eids(self._sorted_keys, self._sorted_eids, variants, wanted), MatchKind.FUZZY)
        return out

    def _range_eids(
        self, keys: list[str], eids: np.ndarray, prefixes: Iterable[str], wanted: set[TagCategory]
    ) -> list[int]:
        """Sorted unique entry numbers of the `keys` that start with any of `prefixes` (bisect ranges)."""
        slices: list[np.ndarray] = []
        for prefix in prefixes:
            lo = bisect_left(keys, prefix)
            hi = bisect_left(keys, prefix + "\U0010ffff", lo)
            if hi > lo:
                slices.append(eids[lo:hi])
        if not slices:
            return []
        eids = np.unique(np.concatenate(slices))
        if len(wanted) < len(TagCategory):
            eids = eids[np.isin(self._categories[eids], [int(c) for c in wanted])]
        return eids.tolist()


def _prepare_query(query: str) -> str:
    q = normalize_tag_query(query[:MAX_QUERY_LENGTH])
    # Keys never hold newlines (the haystack relies on that); a pasted one cannot match anything.
    return "" if "\n" in q or "\r" in q else q


def fuzzy_alphabet(keys: Iterable[str]) -> str:
    """Characters a fuzzy variant may substitute or insert: every ASCII character used in some key."""
    chars: set[str] = set()
    for key in keys:
        chars.update(key)
    return "".join(sorted(c for c in chars if c.isascii() and c not in "\n\r"))


def _one_edit_variants(q: str, alphabet: str, sorted_keys: list[str]) -> Iterator[str]:
    """Strings one edit from `q` that some key could start with. Position i is only tried while some key starts
    with q[:i]: past that point no variant can be a prefix of anything (this prunes most of the work). Inserting
    after the last character is left out: q itself then already is a prefix (a PREFIX match)."""
    n = len(q)
    for i in range(n):
        head = q[:i]
        lo = bisect_left(sorted_keys, head)
        if lo >= len(sorted_keys) or not sorted_keys[lo].startswith(head):
            break
        for c in alphabet:
            if c != q[i]:
                yield head + c + q[i + 1 :]  # substitution
            yield head + c + q[i:]  # insertion (the user missed a letter)
        if i + 1 < n and q[i] != q[i + 1]:
            yield head + q[i + 1] + q[i] + q[i + 2 :]  # swapped neighbours
        if n >= FUZZY_DELETE_MIN_LENGTH:
            yield head + q[i + 1 :]  # deletion (the user typed an extra letter)


def complete_naive(
    vocabulary: TagVocabulary,
    query: str,
    limit: int = DEFAULT_LIMIT,
    categories: Collection[TagCategory] | None = None,
) -> list[Completion]:
    """Reference ranking by linear scan over every name and alias: same results as `TagCompleter.complete`."""
    q = _prepare_query(query)
    if not q or limit <= 0:
        return []
    wanted = set(TagCategory) if categories is None else {TagCategory(c) for c in categories}
    entries: list[tuple[str, int, str | None]] = []
    alias_rows = list(vocabulary.alias_entries())
    a = 0
    for rank, tag in enumerate(vocabulary.tags):
        entries.append((normalize_tag_name(tag.name), rank, None))
        while a < len(alias_rows) and alias_rows[a][1] == rank:
            entries.append((normalize_tag_name(alias_rows[a][0]), rank, alias_rows[a][0]))
            a += 1
    alphabet = fuzzy_alphabet(e[0] for e in entries)
    best: dict[int, tuple[int, int]] = {}
    for eid, (key, rank, _alias) in enumerate(entries):
        if vocabulary.tags[rank].category not in wanted:
            continue
        kind = _classify(q, key, alphabet)
        if kind is not None and (rank not in best or (kind, eid) < best[rank]):
            best[rank] = (kind, eid)
    ordered = sorted(best.items(), key=lambda item: (item[1][0], item[0]))[:limit]
    return [
        Completion(vocabulary.tags[rank], MatchKind(kind), entries[eid][2], rank)
        for rank, (kind, eid) in ordered
    ]


def _classify(q: str, key: str, alphabet: str) -> int | None:
    if key == q:
        return MatchKind.EXACT
    if key.startswith(q):
        return MatchKind.PREFIX
    pos = key.find(q)
    if pos != -1:
        while pos != -1:
            if pos > 0 and key[pos - 1] in WORD_SEPARATORS:
                return MatchKind.WORD_START
            pos = key.find(q, pos + 1)
        return MatchKind.SUBSTRING
    if len(q) >= FUZZY_MIN_LENGTH and _prefix_within_one_edit(q, key, alphabet):
        return MatchKind.FUZZY
    return None


def _prefix_within_one_edit(q: str, key: str, alphabet: str) -> bool:
    """Whether one edit turns `q` into a prefix of `key` (the edits `_one_edit_variants` enumerates)."""
    n = len(q)
    if len(key) >= n:
        diff = [i for i in range(n) if q[i] != key[i]]
        if len(diff) == 1 and key[diff[0]] in alphabet:
            return True  # substitution
        if (
            len(diff) == 2
            and diff[1] == diff[0] + 1
            and q[diff[0]] == key[diff[1]]
            and q[diff[1]] == key[diff[0]]
        ):
            return True  # adjacent swap
    if len(key) >= n + 1:
        for i in range(n + 1):
            if key[:i] == q[:i] and key[i + 1 : n + 1] == q[i:] and key[i] in alphabet:
                return True  # insertion
    if n >= FUZZY_DELETE_MIN_LENGTH:
        for i in range(n):
            if key.startswith(q[:i] + q[i + 1 :]):
                return True  # deletion
    return False
