"""HakuBooru's caption format, byte for byte (specs/dataset.md §3), for one post or a whole chunk of posts.

Caption = `special, character, copyright, artist, |||general, meta, year, rating(s), quality`, built as
`", ".join(keep) + ", " + "|||" + ", ".join(rest)`: the `", "` before `|||` is always there (so a post without
identity tags starts with `", |||"`) and nothing follows `|||` but the first flexible tag.

Two implementations of the same rules: `make_caption` (one post, plain Python: the reference used by the tests
and the per-post benchmark baseline) and `CaptionBuilder.build` (a chunk of posts: tags are classified once per
tag id, ordering and placement are numpy index arithmetic, and a chunk's captions come out of a single
`str.join`). Tests check they agree.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..danbooru.dates import year_of, years_of  # noqa: F401 - re-exported
from ..danbooru.db_reader import PostColumns, TagChunk, fetch_tags
from ..danbooru.schema import Rating, TagType
from ..errors import KxlError
from ..tags.special_tags import QUALITY_LABELS, RATING_TAGS, SPECIAL_TAGS, YEAR_TAGS  # noqa: F401 - re-exported
from ..tags.text import tag_to_caption_text

META_BLACKLIST = (
    "(medium)",
    "commentary",
    "bad",
    "translat",
    "request",
    "mismatch",
    "revision",
    "audio",
    "video",
)
# HakuBooru's metainfo.fav_count_percentile_full (§3.7): rating -> {percentile: fav_count}.
_PCTS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95)
FAV_PERCENTILES: dict[int, dict[int, int]] = {
    0: dict(zip(_PCTS, (1, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 22, 27, 37), strict=True)),
    1: dict(zip(_PCTS, (1, 2, 4, 5, 6, 8, 9, 11, 13, 15, 17, 19, 22, 26, 30, 36, 44, 56, 81), strict=True)),
    2: dict(
        zip(_PCTS, (4, 8, 11, 14, 18, 21, 25, 29, 33, 38, 43, 49, 56, 65, 75, 88, 105, 132, 182), strict=True)
    ),
    3: dict(
        zip(
            _PCTS,
            (4, 9, 13, 18, 22, 27, 33, 39, 45, 52, 60, 69, 79, 92, 106, 125, 151, 190, 262),
            strict=True,
        )
    ),
}
CARD_CUTS = (95, 85, 75, 50, 25, 10)  # the card / HakuBooru legacy `quality_tag`
CARD_MAX_ID = 7_000_000
HAKUBOORU_CUTS = (90, 75, 60, 45, 30, 10)  # HakuBooru's current `quality_tag_new`
HAKUBOORU_MAX_ID = 7_500_000
QUALITY_MODES = ("card", "hakubooru", "db")

# Kinds a tag can take in a caption, in caption order. Sorting a post's tags by kind (stably) yields the caption.
KIND_SPECIAL, KIND_CHARACTER, KIND_COPYRIGHT, KIND_ARTIST, KIND_GENERAL, KIND_META, KIND_DROP = range(7)
_FIRST_REST_KIND = KIND_GENERAL


@dataclass(frozen=True)
class QualityScheme:
    """Quality tag rule: `fav_count > thresholds[rating][j]` gives QUALITY_LABELS[j] (first match), else worst."""

    mode: str
    cuts: tuple[int, ...]
    max_id: int  # posts with a higher id get no quality tag (too new to have their favourites)
    thresholds: dict[int, tuple[float, ...]]

    def label_index(self, post_id: int, rating: int, fav_count: int) -> int | None:
        if post_id > self.max_id:
            return None
        limits = self.thresholds.get(rating)
        if limits is None:
            return None
        for j, limit in enumerate(limits):
            if fav_count > limit:
                return j
        return len(limits)

    def label(self, post_id: int, rating: int, fav_count: int) -> str | None:
        j = self.label_index(post_id, rating, fav_count)
        return None if j is None else QUALITY_LABELS[j]

    def label_indices(self, ids: np.ndarray, rating: np.ndarray, fav: np.ndarray) -> np.ndarray:
        """Vectorised `label_index`; -1 = no quality tag."""
        out = np.full(ids.size, -1, np.int64)
        for r, limits in self.thresholds.items():
            sel = (rating == r) & (ids <= self.max_id)
            if not sel.any():
                continue
            # number of limits the fav does NOT exceed (limits descend) = label index
            lim = np.asarray(limits, np.float64)
            out[sel] = (fav[sel][:, None] <= lim[None, :]).sum(axis=1)
        return out

    def to_dict(self) -> dict:
        return {
            "quality": self.mode,
            "quality_percentiles": list(self.cuts),
            "quality_max_id": self.max_id,
            "quality_thresholds": {
                Rating(r).name.lower(): list(v) for r, v in sorted(self.thresholds.items())
            },
        }


def _table_scheme(mode: str, cuts: tuple[int, ...], max_id: int) -> QualityScheme:
    return QualityScheme(
        mode, cuts, max_id, {r: tuple(float(tbl[c]) for c in cuts) for r, tbl in FAV_PERCENTILES.items()}
    )


def db_quality_scheme(conn: sqlite3.Connection) -> QualityScheme:
    """Card cut points (P95/85/75/50/25/10) computed per rating from this DB's own fav_count.

    Population: every post with id <= 7,000,000 (the posts that get a quality tag under the card's rule),
    deleted ones included, as HakuBooru's static table was computed over the whole dump. numpy's default
    (linear) percentile.
    """
    thresholds: dict[int, tuple[float, ...]] = {}
    for r in range(4):
        text = conn.execute(
            'SELECT group_concat(fav_count) FROM "post" WHERE rating = ? AND id <= ?', (r, CARD_MAX_ID)
        ).fetchone()[0]
        favs = np.fromstring(text, dtype=np.float64, sep=",") if text else np.zeros(0)
        if favs.size:
            thresholds[r] = tuple(float(x) for x in np.percentile(favs, CARD_CUTS))
        else:  # no post of this rating: fall back to the card's table rather than inventing numbers
            thresholds[r] = tuple(float(FAV_PERCENTILES[r][c]) for c in CARD_CUTS)
    return QualityScheme("db", CARD_CUTS, CARD_MAX_ID, thresholds)


def quality_scheme(mode: str, conn: sqlite3.Connection | None = None) -> QualityScheme:
    if mode == "card":
        return _table_scheme("card", CARD_CUTS, CARD_MAX_ID)
    if mode == "hakubooru":
        return _table_scheme("hakubooru", HAKUBOORU_CUTS, HAKUBOORU_MAX_ID)
    if mode == "db":
        if conn is None:
            raise KxlError("quality mode 'db' needs the metadata DB")
        return db_quality_scheme(conn)
    raise KxlError(f"unknown quality mode {mode!r}; choose one of {', '.join(QUALITY_MODES)}")


def year_tag_indices(years: np.ndarray) -> np.ndarray:
    """Vectorised `year_tag_index`; -1 = no year tag."""
    out = np.full(years.size, -1, np.int64)
    out[years <= 2024] = 4
    out[years <= 2020] = 3
    out[years <= 2017] = 2
    out[years <= 2014] = 1
    out[(years >= 2005) & (years <= 2010)] = 0
    return out


def year_tag_index(year: int) -> int | None:
    """Index into YEAR_TAGS. Years before 2005 (and 0, a parse failure) are 'early': HakuBooru's bug, kept."""
    if 2005 <= year <= 2010:
        return 0
    if year <= 2014:
        return 1
    if year <= 2017:
        return 2
    if year <= 2020:
        return 3
    if year <= 2024:
        return 4
    return None


def tag_kind(name: str, tag_type: int) -> int:
    """Where a tag goes in a caption (KIND_*), or KIND_DROP."""
    if not tag_to_caption_text(name).strip():
        return KIND_DROP
    if tag_type == TagType.GENERAL:
        return KIND_SPECIAL if name in SPECIAL_TAGS else KIND_GENERAL
    if tag_type == TagType.CHARACTER:
        return KIND_CHARACTER
    if tag_type == TagType.COPYRIGHT:
        return KIND_COPYRIGHT
    if tag_type == TagType.ARTIST:
        return KIND_DROP if "banned" in name else KIND_ARTIST
    if tag_type == TagType.META:
        return KIND_DROP if any(word in name for word in META_BLACKLIST) else KIND_META
    return KIND_DROP


def extras_text(year_idx: int | None, rating: int, quality_idx: int | None) -> str:
    parts = []
    if year_idx is not None:
        parts.append(YEAR_TAGS[year_idx])
    parts.extend(RATING_TAGS.get(rating, ()))
    if quality_idx is not None:
        parts.append(QUALITY_LABELS[quality_idx])
    return ", ".join(parts)


def make_caption(
    post_id: int,
    rating: int,
    fav_count: int,
    created_at: str,
    tags: Sequence[tuple[str, int]],
    scheme: QualityScheme,
) -> str:
    """Caption of one post from its `(name, type)` tag rows in relation order (the reference implementation)."""
    groups: list[list[str]] = [[] for _ in range(KIND_DROP)]
    for name, ttype in tags:
        kind = tag_kind(name, ttype)
        if kind != KIND_DROP:
            groups[kind].append(tag_to_caption_text(name))
    keep = groups[KIND_SPECIAL] + groups[KIND_CHARACTER] + groups[KIND_COPYRIGHT] + groups[KIND_ARTIST]
    rest = groups[KIND_GENERAL] + groups[KIND_META]
    year_idx = year_tag_index(year_of(created_at))
    if year_idx is not None:
        rest.append(YEAR_TAGS[year_idx])
    rest.extend(RATING_TAGS.get(rating, ()))
    quality = scheme.label(post_id, rating, fav_count)
    if quality is not None:
        rest.append(quality)
    return ", ".join(keep) + ", " + "|||" + ", ".join(rest)


# Tag ids below this are looked up in a direct table (4 bytes per id up to the highest one seen: the real DB's
# ~1.5M ids take 6 MB); others (negative, or huge: dangling ids of a damaged DB) go through a dict.
_LUT_MAX_ID = 1 << 24


@dataclass
class CaptionChunk:
    """Captions of a chunk of posts plus what the manifest reports about each."""

    ids: np.ndarray
    captions: list[str]
    rating: np.ndarray
    quality: np.ndarray  # index into QUALITY_LABELS, -1 = none
    year: np.ndarray  # index into YEAR_TAGS, -1 = none


class CaptionBuilder:
    """Builds captions for chunks of posts. Tag rows are looked up once per tag id and cached.

    Not thread-safe: give each worker thread its own builder (and connection).
    """

    def __init__(self, scheme: QualityScheme) -> None:
        self.scheme = scheme
        self._lut = np.full(1024, -1, np.int32)  # tag id -> row in the lists below (ids 0 .. _LUT_MAX_ID - 1)
        self._far: dict[int, int] = {}  # the same for ids outside that range
        self._kind: list[int] = []
        self._text_sep: list[str] = []  # caption text + ", "
        self._text_sep_json: list[str] = []  # the same, JSON-escaped
        self._kind_arr = np.zeros(0, np.int64)
        self._text_arr = np.zeros(0, object)
        self._text_json_arr = np.zeros(0, object)
        self._extras: dict[tuple[int, int, int], tuple[str, str]] = {}
        self._extras_table: np.ndarray | None = None

    def _learn(self, conn: sqlite3.Connection, tag_ids: np.ndarray) -> np.ndarray:
        """Make sure every id in `tag_ids` is classified; return each one's row in the per-tag tables.

        A relation whose tag row does not exist (a dangling tag id) and a tag whose name is NULL are dropped from
        the caption, on every path alike (SQL reads and the column cache both come through here): that is what
        HakuBooru yields, whose tag list is an inner join of posttagrelation and tag, and an empty name is dropped
        by its caption rules (specs/dataset.md §3.1 step 4). Failing the whole export over one stray relation
        would help nobody; a DB whose tag table is missing most rows shows up as captions without tags.
        """
        if tag_ids.size == 0:
            return np.zeros(0, np.int64)
        if int(tag_ids.min()) < 0 or int(tag_ids.max()) >= _LUT_MAX_ID:
            return self._learn_far(conn, tag_ids)
        top = int(tag_ids.max())
        if top >= self._lut.size:
            # a direct id -> row table; tag ids are dense-ish (real DB ~1.5M), so this stays a few MB
            grown = np.full(max(top + 1, self._lut.size * 2), -1, np.int32)
            grown[: self._lut.size] = self._lut
            self._lut = grown
        loc = self._lut[tag_ids]
        missing = loc < 0
        if missing.any():
            new = np.unique(tag_ids[missing])
            base = self._add_tags(conn, new.tolist())
            self._lut[new] = np.arange(base, base + new.size, dtype=np.int32)
            loc = self._lut[tag_ids]
        return loc.astype(np.int64)

    def _learn_far(self, conn: sqlite3.Connection, tag_ids: np.ndarray) -> np.ndarray:
        """`_learn` for chunks holding ids the direct table cannot index (negative, or beyond _LUT_MAX_ID)."""
        near = (tag_ids >= 0) & (tag_ids < _LUT_MAX_ID)
        loc = np.zeros(tag_ids.size, np.int64)
        if near.any():
            loc[near] = self._learn(conn, tag_ids[near])
        far, inverse = np.unique(tag_ids[~near], return_inverse=True)
        new = [t for t in far.tolist() if t not in self._far]
        if new:
            base = self._add_tags(conn, new)
            self._far.update((t, base + i) for i, t in enumerate(new))
        loc[~near] = np.asarray([self._far[t] for t in far.tolist()], np.int64)[inverse.ravel()]
        return loc

    def _add_tags(self, conn: sqlite3.Connection, new: list[int]) -> int:
        """Classify tag ids seen for the first time; returns the row of the first one (the rest follow in order)."""
        rows = fetch_tags(conn, new)
        base = len(self._kind)
        for tid in new:
            name, ttype = rows.get(tid, ("", -1))  # no tag row: dropped (see _learn)
            text = tag_to_caption_text(name) + ", "
            self._kind.append(tag_kind(name, ttype))
            self._text_sep.append(text)
            self._text_sep_json.append(json.dumps(text, ensure_ascii=False)[1:-1])
        self._kind_arr = np.asarray(self._kind, np.int64)
        self._text_arr = np.asarray(self._text_sep, object)
        self._text_json_arr = np.asarray(self._text_sep_json, object)
        return base

    def _extra(self, year_idx: int, rating: int, quality_idx: int) -> tuple[str, str]:
        key = (year_idx, rating, quality_idx)
        found = self._extras.get(key)
        if found is None:
            text = extras_text(
                None if year_idx < 0 else year_idx, rating, None if quality_idx < 0 else quality_idx
            )
            found = (text, json.dumps(text, ensure_ascii=False)[1:-1])
            self._extras[key] = found
        return found

    def _extras_of(
        self, year_idx: np.ndarray, rating: np.ndarray, quality: np.ndarray, jsonl: bool
    ) -> np.ndarray:
        """The year/rating/quality text of every post: one table lookup per post, no Python loop.

        Ratings outside 0..3 get no rating tag (`RATING_TAGS.get`), so they share one slot of the table.
        """
        if self._extras_table is None:
            table = np.empty((2, len(YEAR_TAGS) + 1, 5, len(QUALITY_LABELS) + 1), object)
            for y in range(-1, len(YEAR_TAGS)):
                for r in range(5):
                    for q in range(-1, len(QUALITY_LABELS)):
                        plain, js = self._extra(y, r if r < 4 else -1, q)
                        table[0, y + 1, r, q + 1] = plain
                        table[1, y + 1, r, q + 1] = js
            self._extras_table = table
        r_slot = np.where((rating >= 0) & (rating <= 3), rating, 4)
        return self._extras_table[int(jsonl), year_idx + 1, r_slot, quality + 1]

    def build(
        self, conn: sqlite3.Connection, posts: PostColumns, tags: TagChunk, *, jsonl: bool = False
    ) -> CaptionChunk | str:
        """Captions for `posts` (aligned with `tags.post_ids`).

        With `jsonl=True` returns the chunk as ready JSON Lines text (`{"id": ..., "caption": ...}` per post)
        instead, built in the same single join, which is what `kxl dataset captions` writes.
        """
        return self._build(conn, posts, tags, jsonl)[0]

    def build_jsonl_with_codes(
        self, conn: sqlite3.Connection, posts: PostColumns, tags: TagChunk
    ) -> tuple[str, np.ndarray, np.ndarray]:
        """`build(..., jsonl=True)` and the posts' quality and year label indexes it computed on the way (-1 =
        none): a reference build keeps them in its table, and computing them again cost ~2 ms per chunk."""
        return self._build(conn, posts, tags, True)  # type: ignore[return-value]

    def _build(
        self, conn: sqlite3.Connection, posts: PostColumns, tags: TagChunk, jsonl: bool
    ) -> tuple[CaptionChunk | str, np.ndarray, np.ndarray]:
        n = len(posts)
        if not np.array_equal(posts.ids, tags.post_ids):
            raise ValueError("post columns and tag chunk are not aligned")
        loc = self._learn(conn, tags.tag_ids)
        kinds = self._kind_arr[loc] if loc.size else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(n, dtype=np.int64), tags.counts)
        live = kinds != KIND_DROP
        loc, kinds, owner = loc[live], kinds[live], owner[live]
        order = np.argsort(
            owner * 8 + kinds, kind="stable"
        )  # caption order inside each post, relation order kept
        loc, kinds, owner = loc[order], kinds[order], owner[order]
        is_keep = kinds < _FIRST_REST_KIND
        n_keep = np.bincount(owner[is_keep], minlength=n)
        n_all = np.bincount(owner, minlength=n)

        year_idx = year_tag_indices(posts.year)
        quality = self.scheme.label_indices(posts.ids, posts.rating, posts.fav_count)

        # Layout per post: prefix keep-texts "|||"-marker rest-texts extras suffix; every text ends in ", ".
        per_post = n_all + 4
        start = (
            np.concatenate([[0], np.cumsum(per_post)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
        )
        first_of_post = np.concatenate([[0], np.cumsum(n_all)[:-1]]).astype(np.int64) if n else n_all
        rank = np.arange(owner.size) - np.repeat(first_of_post, n_all)
        pos = start[owner] + 1 + rank + (~is_keep)  # rest texts sit after the marker
        pieces = np.empty(int(per_post.sum()), object)
        pieces[pos] = (self._text_json_arr if jsonl else self._text_arr)[loc]
        pieces[start + 1 + n_keep] = np.where(n_keep > 0, "|||", ", |||")
        pieces[start + 2 + n_all] = self._extras_of(year_idx, posts.rating, quality, jsonl)
        if jsonl:
            pieces[start] = [f'{{"id": {i}, "caption": "' for i in posts.ids.tolist()]
            pieces[start + 3 + n_all] = '"}\n'
            return "".join(pieces.tolist()), quality, year_idx
        pieces[start] = ""
        pieces[start + 3 + n_all] = (
            "\x00"  # tag names never hold NUL, so it splits the chunk back into captions
        )
        captions = "".join(pieces.tolist()).split("\x00")[:-1]
        return CaptionChunk(posts.ids, captions, posts.rating, quality, year_idx), quality, year_idx
