"""Synthetic danbooru2023-like metadata DB in HakuBooru's exact schema, for the demo workspace and benchmarks.

The data is random but shaped like the real dump where it matters to the engine (specs/dataset.md):
  * ids: sorted, unique, spread over 1..7,866,491, denser at high ids (the site grew);
  * created_at: ISO-8601 with the US-Eastern offset Danbooru writes (`2021-03-04T12:34:56.789-05:00`), monotone-ish
    in id from 2005 to 2024, a few 2025 dates at the top ids and a few unparsable values (the year-0 rule);
  * rating ~40/30/15/15 %; fav_count lognormal-ish per rating with a heavy tail, centred on the spec's percentile
    table (§3.7) so all seven quality labels occur; score = up + down;
  * deleted ~5 %, banned ~1 %, gold-only (file_url NULL) ~2 %; a realistic file_ext mix incl. gif/mp4/webm/zip/swf;
  * ~`mean_tags` tags per post, relation rows in random order inside a post (HakuBooru keeps posttagrelation order):
    count tags, 0-2 characters with their copyrights, usually one artist (sometimes two, sometimes
    `banned_artist`), exactly one hair colour and one background for posts with people, eye colours, emoticons,
    general tags by popularity (NSFW ones only on questionable/explicit posts), meta tags incl. blacklisted ones;
  * a made-up artist, `hakuframe` (demo_images.CONCEPT_ARTIST), is the only artist of CONCEPT_SHARE of the posts
    with people that the card's filters keep; their pictures carry its frame, a style the demo's tiny base model
    never saw, so the demo dataset has something new to teach (issue 16). It is drawn from its own random stream
    after everything else, so every other post keeps exactly the tags it had before the concept existed;
  * tag.popularity = number of relation rows per tag, as HakuBooru computes it.
Small DBs still contain every edge case (each is forced onto a few random posts).

Speed: numeric columns are generated vectorised for all posts; strings and tags are built per chunk and inserted
with executemany while journaling and syncing are off; indexes are built once after the bulk insert. The file is
written under a temporary name and renamed, so a cancelled or failed run leaves nothing behind.
Deterministic: the same (n_posts, seed, mean_tags) gives the same file bytes with the same SQLite library.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomllib

from ..atomic import atomic_path
from ..errors import Cancelled, KxlError
from ..paths import resources_dir
from ..progress import Progress, ensure_progress
from .demo_images import CONCEPT_ARTIST, EYE_COLOURS, HAIR_COLOURS, NON_IMAGE_EXTS
from .schema import DANBOORU_CATEGORY_TO_TAG_TYPE, POST_COLUMNS, TagType, create_indexes, create_schema

MAX_POST_ID = 7_866_491  # the current danbooru2023-metadata-database card
CHUNK_POSTS = 50_000  # fixed: the random stream is consumed per chunk, so changing it changes the output
DANBOORU_POSTS = 8_000_000  # denominator turning a tag's Danbooru post_count into a per-post probability
# Share of the posts with people and a downloadable image (not deleted, banned or gold-only) that are by the concept
# artist: 64 of the default 400-post demo (seed 0), of which the card's selection keeps 46.
CONCEPT_SHARE = 0.2
_CONCEPT_STREAM = 0x4B46  # seeds the concept's own random stream next to the DB seed

FILE_EXTS = ("jpg", "png", "webp", "gif", "mp4", "webm", "zip", "swf")
FILE_EXT_P = (0.555, 0.37, 0.025, 0.02, 0.015, 0.005, 0.007, 0.003)
RATING_P = (0.40, 0.30, 0.15, 0.15)
# fav_count medians per rating = P50 of fav_count_percentile_full (spec §3.7); sigma fitted to its P10..P90 spread.
FAV_MEDIAN = (8.0, 15.0, 38.0, 52.0)
FAV_SIGMA = (0.95, 1.0, 0.9, 0.95)
ODD_CREATED_AT = ("", "unknown", "0000-00-00T00:00:00.000+00:00")

# id -> upload time (UTC), piecewise linear through points read off the real site's history.
_TIME_KNOTS = (
    (1, "2005-05-24T00:00"),
    (500_000, "2009-07-01T00:00"),
    (1_000_000, "2011-08-01T00:00"),
    (2_000_000, "2015-05-01T00:00"),
    (3_000_000, "2018-02-01T00:00"),
    (4_000_000, "2020-07-01T00:00"),
    (5_000_000, "2021-12-15T00:00"),
    (6_000_000, "2023-01-15T00:00"),
    (7_000_000, "2024-01-10T00:00"),
    (7_600_000, "2024-05-19T00:00"),
    (7_850_000, "2025-01-02T00:00"),
    (MAX_POST_ID, "2025-01-25T00:00"),
)
_DUMP_TIME = "2025-01-27T00:00"
_YEAR_2025 = "2025-01-01T12:00"

# (count tags, probability). A post's people = the pattern's girls/boys/others (see demo_images.COUNT_TAGS).
COUNT_PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("1girl", "solo"), 0.40),
    (("1girl",), 0.06),
    (("2girls", "multiple_girls"), 0.08),
    (("3girls", "multiple_girls"), 0.025),
    (("4girls", "multiple_girls"), 0.01),
    (("5girls", "multiple_girls"), 0.005),
    (("6+girls", "multiple_girls"), 0.008),
    (("1boy", "solo", "male_focus"), 0.06),
    (("1girl", "1boy", "hetero"), 0.07),
    (("2girls", "multiple_girls", "1boy"), 0.015),
    (("1girl", "2boys", "multiple_boys"), 0.008),
    (("2boys", "multiple_boys", "male_focus"), 0.015),
    (("3boys", "multiple_boys", "male_focus"), 0.005),
    (("4boys", "multiple_boys", "male_focus"), 0.002),
    (("5boys", "multiple_boys", "male_focus"), 0.001),
    (("6+boys", "multiple_boys", "male_focus"), 0.002),
    (("1other", "solo"), 0.01),
    (("2others", "multiple_others"), 0.002),
    (("3others", "multiple_others"), 0.001),
    (("4others", "multiple_others"), 0.0005),
    (("5others", "multiple_others"), 0.0005),
    (("6+others", "multiple_others"), 0.001),
    (("1girl", "1other"), 0.005),
    (("no_humans",), 0.07),
    ((), 0.03),
)
_PEOPLE_TAGS = frozenset(
    "1girl 2girls 3girls 4girls 5girls 6+girls 1boy 2boys 3boys 4boys 5boys 6+boys".split()
)

# One background per post with people; the first tag is what the renderer draws.
BACKGROUND_PATTERNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("white_background", "simple_background"), 0.30),
    (("grey_background", "simple_background"), 0.06),
    (("black_background", "simple_background"), 0.02),
    (("pink_background", "simple_background"), 0.03),
    (("blue_background", "simple_background"), 0.03),
    (("yellow_background", "simple_background"), 0.015),
    (("green_background", "simple_background"), 0.01),
    (("red_background", "simple_background"), 0.015),
    (("purple_background", "simple_background"), 0.01),
    (("gradient_background",), 0.04),
    (("transparent_background",), 0.02),
    (("blue_sky", "outdoors", "sky", "day", "cloud"), 0.12),
    (("night", "outdoors", "night_sky", "starry_sky"), 0.04),
    (("sunset", "outdoors", "orange_sky"), 0.02),
    (("indoors",), 0.15),
    (("simple_background",), 0.05),
)

EMOTICONS = "^_^ >_< o_o =_= x_x u_u 0_0 +_+ @_@ |_| ._. 3_3 6_9 :d :3 :o :p :q ;d v <|>_<|> <o>_<o>".split()
# General tags only drawn for questionable/explicit posts.
NSFW_GENERALS = frozenset(
    "nipples nude pussy sex penis completely_nude cum vaginal censored mosaic_censoring pubic_hair anus "
    "spread_legs cum_in_pussy topless bottomless uncensored bar_censor testicles fellatio oral paizuri "
    "erection cum_on_body sex_from_behind girl_on_top cowgirl_position missionary straddling breasts_out "
    "pussy_juice areolae".split()
)
# Meta tags added by file type rather than at random.
ANIMATION_META = frozenset({"animated", "animated_gif", "video", "ugoira", "sound"})
_ADMIN_META = frozenset({"artist_request"})


@dataclass
class DemoDbStats:
    path: Path
    n_posts: int
    n_tags: int
    n_relations: int
    seed: int
    seconds: float
    file_size: int


@dataclass
class _Vocab:
    names: list[str]
    types: np.ndarray  # HakuBooru TagType per vocab index
    counts: np.ndarray  # Danbooru post_count (float64)
    index: dict[str, int]

    def idx(self, names) -> np.ndarray:
        return np.array([self.index[n] for n in names if n in self.index], dtype=np.int64)


def default_tags_csv() -> Path:
    return resources_dir() / "demo" / "tags.csv"


def default_characters_toml() -> Path:
    return resources_dir() / "demo" / "characters.toml"


def load_vocab(path: Path) -> _Vocab:
    """Read a tagcomplete-format CSV (`name,category,post_count,aliases`) into a vocabulary."""
    names: list[str] = []
    types: list[int] = []
    counts: list[float] = []
    index: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row:
                    continue
                try:
                    name, cat, count = row[0], int(row[1]), int(row[2])
                    tag_type = DANBOORU_CATEGORY_TO_TAG_TYPE[cat]
                except (IndexError, ValueError, KeyError):
                    raise KxlError(
                        f"line {lineno}: expected name,category(0/1/3/4/5),post_count,aliases; got {row!r}",
                        path=path,
                    ) from None
                if name in index:
                    raise KxlError(f"line {lineno}: tag {name!r} appears twice", path=path)
                index[name] = len(names)
                names.append(name)
                types.append(int(tag_type))
                counts.append(float(count))
    except FileNotFoundError:
        raise KxlError("demo tag list not found", path=path, hint="reinstall Kohaku XL Workbench") from None
    if not names:
        raise KxlError("demo tag list is empty", path=path)
    return _Vocab(names, np.array(types, np.int64), np.array(counts, np.float64), index)


class _Model:
    """Everything derived from the vocabulary that the per-chunk generator draws from."""

    def __init__(self, vocab: _Vocab, characters: dict, rng: np.random.Generator, source: Path) -> None:
        self.vocab = vocab
        v = len(vocab.names)
        types, counts = vocab.types, vocab.counts

        def pool(mask: np.ndarray, power: float) -> tuple[np.ndarray, np.ndarray]:
            idx = np.flatnonzero(mask)
            if idx.size == 0:
                raise KxlError(
                    "demo tag list lacks a whole group of tags (a category, hair or eye colours)", path=source
                )
            w = counts[idx] ** power
            return idx, np.cumsum(w) / w.sum()

        # count patterns -> padded index matrix
        self.pattern_p = np.array([p for _, p in COUNT_PATTERNS])
        self.pattern_p /= self.pattern_p.sum()
        width = max(len(t) for t, _ in COUNT_PATTERNS)
        self.pattern_tags = np.full((len(COUNT_PATTERNS), width), -1, np.int64)
        for i, (tags, _) in enumerate(COUNT_PATTERNS):
            idx = vocab.idx(tags)
            self.pattern_tags[i, : idx.size] = idx
        self.pattern_people = np.array([bool(set(t) & _PEOPLE_TAGS) for t, _ in COUNT_PATTERNS])

        self.bg_p = np.array([p for _, p in BACKGROUND_PATTERNS])
        self.bg_p /= self.bg_p.sum()
        width = max(len(t) for t, _ in BACKGROUND_PATTERNS)
        self.bg_tags = np.full((len(BACKGROUND_PATTERNS), width), -1, np.int64)
        for i, (tags, _) in enumerate(BACKGROUND_PATTERNS):
            idx = vocab.idx(tags)
            self.bg_tags[i, : idx.size] = idx

        self.hair_idx, self.hair_cdf = pool(np.isin(np.arange(v), vocab.idx(HAIR_COLOURS)), 1.0)
        self.eye_idx, self.eye_cdf = pool(np.isin(np.arange(v), vocab.idx(EYE_COLOURS)), 1.0)
        self.emo_idx, self.emo_cdf = pool(np.isin(np.arange(v), vocab.idx(EMOTICONS)), 0.5)

        structured = set(HAIR_COLOURS) | set(EYE_COLOURS) | set(EMOTICONS) | {"solo", "hetero", "no_humans"}
        for tags, _ in COUNT_PATTERNS + BACKGROUND_PATTERNS:
            structured.update(tags)
        general = (types == TagType.GENERAL) & ~np.isin(np.arange(v), vocab.idx(structured))
        self.gen_idx, self.gen_cdf = pool(general, 1.0)
        self.nsfw = np.zeros(v, bool)
        self.nsfw[vocab.idx(NSFW_GENERALS)] = True

        self.char_idx, self.char_cdf = pool(types == TagType.CHARACTER, 0.9)
        self.copy_idx, self.copy_cdf = pool(types == TagType.COPYRIGHT, 1.0)
        artist = (types == TagType.ARTIST) & ~np.isin(np.arange(v), vocab.idx(["banned_artist"]))
        self.artist_idx, self.artist_cdf = pool(artist, 0.7)
        self.banned_artist = vocab.index.get("banned_artist", -1)
        self.original = vocab.index.get("original", -1)

        meta = np.flatnonzero(
            (types == TagType.META) & ~np.isin(np.arange(v), vocab.idx(ANIMATION_META | _ADMIN_META))
        )
        self.meta_idx = meta
        self.meta_p = np.minimum(counts[meta] / DANBOORU_POSTS, 0.9)
        self.artist_request = vocab.index.get("artist_request", -1)
        anim = {n: vocab.index.get(n, -1) for n in ANIMATION_META}
        self.ext_meta = {
            "gif": [anim["animated"], anim["animated_gif"]],
            "mp4": [anim["animated"], anim["video"], anim["sound"]],
            "webm": [anim["animated"], anim["video"]],
            "zip": [anim["animated"], anim["ugoira"]],
            "swf": [anim["animated"]],
        }

        self._character_table(characters, rng)

    def _character_table(self, characters: dict, rng: np.random.Generator) -> None:
        """Per character: up to two copyright indices and a canonical hair / eye index (-1 = none)."""
        vocab = self.vocab
        v = len(vocab.names)
        self.char_copy = np.full((v, 2), -1, np.int64)
        self.char_hair = np.full(v, -1, np.int64)
        self.char_eyes = np.full(v, -1, np.int64)
        copyright_of: dict[str, int] = {}
        for i in self.copy_idx:
            copyright_of[vocab.names[i]] = int(i)
        for qual, target in characters.get("qualifiers", {}).items():
            if target in vocab.index:
                copyright_of[qual] = vocab.index[target]
        fallback = self.copy_idx[rng.integers(0, self.copy_idx.size, size=self.char_idx.size)]
        for k, ci in enumerate(self.char_idx):
            name = vocab.names[ci]
            qual = name[name.rfind("_(") + 2 : -1] if name.endswith(")") and "_(" in name else ""
            self.char_copy[ci, 0] = copyright_of.get(qual, fallback[k])
        for name, info in characters.get("characters", {}).items():
            ci = vocab.index.get(name)
            if ci is None:
                continue
            copies = [vocab.index[c] for c in info.get("copyright", []) if c in vocab.index][:2]
            if copies:
                self.char_copy[ci, :] = -1
                self.char_copy[ci, : len(copies)] = copies
            self.char_hair[ci] = vocab.index.get(info.get("hair", ""), -1)
            self.char_eyes[ci] = vocab.index.get(info.get("eyes", ""), -1)


def _cancel_requested(progress: Progress) -> bool:
    try:
        progress.check_cancelled()
    except Cancelled:
        return True
    return False


def _draw(rng: np.random.Generator, idx: np.ndarray, cdf: np.ndarray, size: int) -> np.ndarray:
    """`size` weighted draws with replacement (inverse CDF; much faster than rng.choice with p)."""
    pos = np.searchsorted(cdf, rng.random(size), side="right")
    return idx[np.minimum(pos, idx.size - 1)]


def _ms(ts: str) -> int:
    return int(np.datetime64(ts, "ms").astype(np.int64))


def _post_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n sorted unique ids in 1..MAX_POST_ID with density rising linearly (x 3 from first to last id)."""
    if n > MAX_POST_ID // 2:
        return np.sort(rng.choice(MAX_POST_ID, size=n, replace=False) + 1).astype(np.int64)
    have = np.empty(0, np.int64)
    while have.size < n:
        u = rng.random(int((n - have.size) * 1.1) + 16)
        # pdf(x) ∝ 0.5 + x on [0, 1]  ->  inverse CDF x = sqrt(0.25 + 2u) - 0.5
        x = np.sqrt(0.25 + 2.0 * u) - 0.5
        have = np.unique(np.concatenate([have, (x * (MAX_POST_ID - 1)).astype(np.int64) + 1]))
    if have.size > n:
        have = np.sort(rng.choice(have, size=n, replace=False))
    return have


def _post_columns(rng: np.random.Generator, ids: np.ndarray, model: _Model) -> dict[str, np.ndarray]:
    """All numeric post columns for every post, plus the forced edge cases."""
    n = ids.size
    knot_ids = np.array([k for k, _ in _TIME_KNOTS], np.float64)
    knot_ms = np.array([_ms(t) for _, t in _TIME_KNOTS], np.float64)
    t = np.interp(ids, knot_ids, knot_ms) + rng.normal(0.0, 6 * 3600e3, n)  # monotone-ish: ~6 h jitter
    t = np.minimum(t, _ms(_DUMP_TIME) - 1).astype(np.int64)

    rating = rng.choice(4, size=n, p=RATING_P)
    age = np.interp(ids, [1, 1e6, 3e6, 5e6, 7e6, 7.5e6, MAX_POST_ID], [0.5, 0.6, 0.9, 1.1, 1.0, 0.6, 0.15])
    med = np.asarray(FAV_MEDIAN)[rating] * age
    fav = med * np.exp(np.asarray(FAV_SIGMA)[rating] * rng.standard_normal(n))
    tail = rng.random(n) < 0.005  # a few viral posts
    fav[tail] *= 1.0 + rng.pareto(1.2, tail.sum()) * 8
    is_deleted = rng.random(n) < 0.05
    fav[is_deleted] *= 0.4
    fav = np.floor(fav).astype(np.int64)
    up = np.rint(fav * rng.uniform(0.6, 1.4, n)).astype(np.int64) + rng.poisson(1.0, n)
    down = -rng.poisson(0.02 * up + 0.2)

    is_banned = rng.random(n) < 0.01
    gold_only = (rng.random(n) < 0.02) & ~is_banned

    ext = rng.choice(len(FILE_EXTS), size=n, p=FILE_EXT_P)
    ext_code = {e: i for i, e in enumerate(FILE_EXTS)}
    ext[(ext == ext_code["webp"]) & (ids < 5_500_000)] = ext_code["jpg"]  # webp uploads are recent
    ext[(ext == ext_code["swf"]) & (ids > 2_500_000)] = ext_code["png"]  # flash is old
    ext[(ext == ext_code["mp4"]) & (ids < 1_500_000)] = ext_code["jpg"]

    # image size: long side lognormal around ~1,900 px (smaller for old posts), a common aspect ratio
    long_side = np.exp(rng.normal(np.log(1000 + 1300 * np.minimum(ids / 5e6, 1.0)), 0.35))
    long_side = np.clip(long_side, 500, 6000)
    aspects = np.array([1.0, 4 / 3, 3 / 2, 16 / 9, 7 / 5, 2.0, 1.25, 4.0])
    aspect = aspects[rng.choice(aspects.size, size=n, p=[0.12, 0.2, 0.18, 0.2, 0.13, 0.06, 0.1, 0.01])]
    aspect *= rng.uniform(0.97, 1.03, n)
    portrait = rng.random(n) < 0.65
    short_side = np.maximum(long_side / aspect, 400)
    width = np.where(portrait, short_side, long_side).astype(np.int64)
    height = np.where(portrait, long_side, short_side).astype(np.int64)
    bpp = np.array([0.35, 1.6, 0.25, 0.9, 0.6, 0.5, 1.2, 0.8])[ext] * rng.uniform(0.6, 1.4, n)
    file_size = (width * height * bpp).astype(np.int64) + 2048

    has_parent = rng.random(n) < 0.07
    has_parent[0] = False
    parent_pos = np.maximum(np.arange(n) - rng.integers(1, 6, n), 0)
    parent_id = np.where(has_parent, ids[parent_pos], 0)
    has_children = np.zeros(n, bool)
    has_children[parent_pos[has_parent]] = True

    source_kind = rng.choice(4, size=n, p=[0.42, 0.25, 0.12, 0.21])  # pixiv, twitter, none, other site
    source_kind[(source_kind == 1) & (t < _ms("2010-11-04T00:00"))] = 0
    pixiv_id = np.interp(t, [_ms("2007-09-10T00:00"), _ms(_DUMP_TIME)], [20_000, 125_900_000])
    pixiv_id = (pixiv_id + rng.integers(0, 40_000, n)).astype(np.int64)
    snowflake = ((t - 1_288_834_974_657) << 22) + rng.integers(0, 1 << 22, n)

    cols = {
        "t": t,
        "rating": rating,
        "fav": fav,
        "up": up,
        "down": down,
        "is_deleted": is_deleted,
        "is_banned": is_banned,
        "gold_only": gold_only,
        "ext": ext,
        "width": width,
        "height": height,
        "file_size": file_size,
        "has_parent": has_parent,
        "parent_id": parent_id,
        "has_children": has_children,
        "source_kind": source_kind,
        "pixiv_id": pixiv_id,
        "snowflake": snowflake,
        "uploader": 1 + np.minimum(rng.zipf(1.7, n), 1_000_000) * 7919 % 1_200_000,  # few heavy uploaders
        "bit_flags": (rng.random(n) < 0.01).astype(np.int64),
        "banned_artist": rng.random(n) < 0.01,
        "updated_t": np.minimum(t + rng.exponential(300 * 86400e3, n).astype(np.int64), _ms(_DUMP_TIME)),
        "odd_date": np.full(n, -1, np.int64),
        "pattern": rng.choice(model.pattern_p.size, size=n, p=model.pattern_p),
    }
    _force_edge_cases(rng, ids, cols, model)
    return cols


def _force_edge_cases(
    rng: np.random.Generator, ids: np.ndarray, cols: dict[str, np.ndarray], model: _Model
) -> None:
    """Put every case the engine must handle onto a few random posts, so even a 100-post demo has them."""
    n = ids.size
    # The newest ids get 2025 dates (no year tag), keeping created_at monotone at the top.
    n_2025 = min(n, max(2, n // 2000))
    top = np.arange(n - n_2025, n)
    cols["t"][top] = np.maximum(cols["t"][top], _ms(_YEAR_2025) + np.arange(n_2025) * 3_600_000)
    cols["updated_t"][top] = np.maximum(cols["updated_t"][top], cols["t"][top])

    plan: list[tuple[str, int]] = [
        ("odd_date", max(3, n // 100_000)),
        ("deleted", 2),
        ("banned", 2),
        ("gold_only", 2),
        ("gif", 2),
        ("mp4", 2),
        ("webm", 1),
        ("zip", 1),
        ("swf", 1),
        ("viral", 1),
        ("zero_fav", 1),
        ("banned_artist", 1),
    ]
    n_patterns = model.pattern_p.size
    needed = sum(k for _, k in plan) + n_patterns
    if n - n_2025 < needed * 2:
        return  # too small to force anything without crowding; a tiny DB is only a smoke test
    pos = rng.permutation(n - n_2025)[:needed]
    ext_code = {e: i for i, e in enumerate(FILE_EXTS)}
    at = 0
    for what, k in plan:
        sel, at = pos[at : at + k], at + k
        if what == "odd_date":
            cols["odd_date"][sel] = np.arange(k) % len(ODD_CREATED_AT)
        elif what == "deleted":
            cols["is_deleted"][sel] = True
        elif what == "banned":
            cols["is_banned"][sel] = True
            cols["gold_only"][sel] = False
        elif what == "gold_only":
            cols["gold_only"][sel] = True
            cols["is_banned"][sel] = False
        elif what in ext_code:
            cols["ext"][sel] = ext_code[what]
            cols["is_banned"][sel] = cols["gold_only"][sel] = False
        elif what == "viral":
            cols["fav"][sel] = 1000 + rng.integers(0, 4000, k)
        elif what == "zero_fav":
            cols["fav"][sel] = 0
        elif what == "banned_artist":
            cols["banned_artist"][sel] = True
    for p in range(n_patterns):  # every count pattern at least once, so every special tag exists
        cols["pattern"][pos[at + p]] = p
    cols["up"] = np.maximum(cols["up"], cols["fav"] // 2)


def _created_strings(t_ms: np.ndarray) -> list[str]:
    """UTC milliseconds -> Danbooru's local US-Eastern ISO strings (DST approximated as mid-March..early November)."""
    month = t_ms.astype("datetime64[ms]").astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (t_ms.astype("datetime64[ms]") - t_ms.astype("datetime64[ms]").astype("datetime64[M]")).astype(
        "timedelta64[D]"
    ).astype(np.int64) + 1
    dst = ((month > 3) & (month < 11)) | ((month == 3) & (day >= 10)) | ((month == 11) & (day < 3))
    offset_h = np.where(dst, -4, -5)
    local = (t_ms + offset_h * 3_600_000).astype("datetime64[ms]")
    text = np.datetime_as_string(local, unit="ms")
    suffix = np.where(dst, "-04:00", "-05:00")
    return np.char.add(text, suffix).tolist()


def _post_rows(
    ids: np.ndarray, c: dict[str, np.ndarray], md5_hex: str, rng: np.random.Generator
) -> list[tuple]:
    n = ids.size
    created = _created_strings(c["t"])
    for i in np.flatnonzero(c["odd_date"] >= 0):
        created[i] = ODD_CREATED_AT[int(c["odd_date"][i])]
    updated = _created_strings(c["updated_t"])
    md5s = [md5_hex[32 * i : 32 * i + 32] for i in range(n)]
    exts = [FILE_EXTS[e] for e in c["ext"].tolist()]
    hidden = (c["is_banned"] | c["gold_only"]).tolist()
    banned = c["is_banned"].tolist()
    w, h = c["width"].tolist(), c["height"].tolist()
    # Danbooru makes an 850 px sample for wide jpg/png/webp images and ugoira
    has_large = (
        (c["width"] > 850) & np.isin(c["ext"], [FILE_EXTS.index(e) for e in ("jpg", "png", "webp", "zip")])
    ).tolist()
    kind = c["source_kind"].tolist()
    pixiv = c["pixiv_id"].tolist()
    snow = c["snowflake"].tolist()
    other_site = rng.integers(0, 3, n).tolist()
    other_num = rng.integers(100_000, 99_999_999, n).tolist()
    parent = c["parent_id"].tolist()
    has_parent = c["has_parent"].tolist()
    ids_l = ids.tolist()
    cols = {
        "uploader_id": c["uploader"].tolist(),
        "has_children": c["has_children"].astype(np.int64).tolist(),
        "is_deleted": c["is_deleted"].astype(np.int64).tolist(),
        "is_banned": c["is_banned"].astype(np.int64).tolist(),
        "bit_flags": c["bit_flags"].tolist(),
        "file_size": c["file_size"].tolist(),
        "rating": c["rating"].tolist(),
        "score": (c["up"] + c["down"]).tolist(),
        "up_score": c["up"].tolist(),
        "down_score": c["down"].tolist(),
        "fav_count": c["fav"].tolist(),
    }
    rows = []
    for i in range(n):
        md5 = md5s[i]
        ext = exts[i]
        if kind[i] == 0:
            source = f"https://www.pixiv.net/artworks/{pixiv[i]}"
        elif kind[i] == 1:
            source = f"https://twitter.com/i/web/status/{snow[i]}"
        elif kind[i] == 2:
            source = ""
        elif other_site[i] == 0:
            source = f"https://skeb.jp/works/{other_num[i]}"
        elif other_site[i] == 1:
            source = f"https://seiga.nicovideo.jp/seiga/im{other_num[i]}"
        else:
            source = f"https://www.artstation.com/artwork/{other_num[i]:x}"
        if hidden[i]:
            file_url = large_url = preview_url = None
        else:
            file_url = f"https://cdn.donmai.us/original/{md5[:2]}/{md5[2:4]}/{md5}.{ext}"
            large_url = (
                f"https://cdn.donmai.us/sample/{md5[:2]}/{md5[2:4]}/sample-{md5}.jpg"
                if has_large[i]
                else file_url
            )
            preview_url = f"https://cdn.donmai.us/preview/{md5[:2]}/{md5[2:4]}/{md5}.jpg"
        hc = cols["has_children"][i]
        rows.append(
            (
                ids_l[i],
                created[i],
                cols["uploader_id"][i],
                source,
                None if banned[i] else md5,
                parent[i] if has_parent[i] else None,
                hc,
                cols["is_deleted"][i],
                cols["is_banned"][i],
                pixiv[i] if kind[i] == 0 else None,
                hc,
                cols["bit_flags"][i],
                int(has_large[i]),
                hc,
                w[i],
                h[i],
                cols["file_size"][i],
                ext,
                cols["rating"][i],
                cols["score"][i],
                cols["up_score"][i],
                cols["down_score"][i],
                cols["fav_count"][i],
                file_url,
                large_url,
                preview_url,
                updated[i],
            )
        )
    return rows


def _chunk_relations(
    rng: np.random.Generator, model: _Model, c: dict[str, np.ndarray], lo: int, hi: int, mean_tags: float
) -> tuple[np.ndarray, np.ndarray]:
    """(local post index, vocab index) relation pairs for posts lo..hi-1, in random order inside each post."""
    n = hi - lo
    local = np.arange(n)
    posts: list[np.ndarray] = []
    tags: list[np.ndarray] = []

    def add(p: np.ndarray, t: np.ndarray) -> None:
        keep = t >= 0
        posts.append(p[keep])
        tags.append(t[keep])

    # count tags
    pattern = c["pattern"][lo:hi]
    pt = model.pattern_tags[pattern]
    add(np.repeat(local, pt.shape[1]), pt.ravel())
    people = model.pattern_people[pattern]

    # characters (0-2) and their copyrights
    u = rng.random(n)
    n_char = np.where(people, (u > 0.45).astype(np.int64) + (u > 0.90), (u > 0.85).astype(np.int64))
    chars = _draw(rng, model.char_idx, model.char_cdf, 2 * n).reshape(n, 2)
    chars[:, 1] = np.where(n_char >= 2, chars[:, 1], -1)
    chars[:, 0] = np.where(n_char >= 1, chars[:, 0], -1)
    add(np.repeat(local, 2), chars.ravel())
    has_char = n_char > 0
    first = np.where(has_char, chars[:, 0], 0)
    copies = np.where(chars[:, :, None] >= 0, model.char_copy[np.maximum(chars, 0)], -1).reshape(n, 4)
    add(np.repeat(local, 4), copies.ravel())
    u = rng.random(n)
    other_copy = _draw(rng, model.copy_idx, model.copy_cdf, n)
    no_char_copy = np.where(u < 0.5, model.original, np.where(u < 0.95, other_copy, -1))
    add(local, np.where(has_char, -1, no_char_copy))

    # artists: usually one, sometimes two or none; a few banned_artist
    u = rng.random(n)
    n_art = (u > 0.04).astype(np.int64) + (u > 0.95)
    arts = _draw(rng, model.artist_idx, model.artist_cdf, 2 * n).reshape(n, 2)
    arts[:, 0] = np.where(n_art >= 1, arts[:, 0], -1)
    arts[:, 1] = np.where(n_art >= 2, arts[:, 1], -1)
    add(np.repeat(local, 2), arts.ravel())
    add(local, np.where(c["banned_artist"][lo:hi], model.banned_artist, -1))
    add(local, np.where((n_art == 0) & (rng.random(n) < 0.7), model.artist_request, -1))

    # exactly one hair colour and one background for posts with people or a character; eyes usually
    humans = people | has_char
    hair = np.where(
        model.char_hair[first] >= 0, model.char_hair[first], _draw(rng, model.hair_idx, model.hair_cdf, n)
    )
    add(local, np.where(humans, hair, -1))
    eyes = np.where(
        model.char_eyes[first] >= 0, model.char_eyes[first], _draw(rng, model.eye_idx, model.eye_cdf, n)
    )
    add(local, np.where(humans & (rng.random(n) < 0.9), eyes, -1))
    bg = rng.choice(model.bg_p.size, size=n, p=model.bg_p)
    bgt = np.where((humans | (rng.random(n) < 0.6))[:, None], model.bg_tags[bg], -1)
    add(np.repeat(local, bgt.shape[1]), bgt.ravel())

    # emoticons
    u = rng.random(n)
    n_emo = (humans & (u < 0.3)).astype(np.int64) + (humans & (u < 0.05))
    emo = _draw(rng, model.emo_idx, model.emo_cdf, 2 * n).reshape(n, 2)
    emo[:, 0] = np.where(n_emo >= 1, emo[:, 0], -1)
    emo[:, 1] = np.where(n_emo >= 2, emo[:, 1], -1)
    add(np.repeat(local, 2), emo.ravel())

    # meta: each tag independently with its Danbooru frequency; animation tags by file type
    hits = rng.random((n, model.meta_idx.size)) < model.meta_p
    hp, ht = np.nonzero(hits)
    add(hp, model.meta_idx[ht])
    ext = c["ext"][lo:hi]
    for name, metas in model.ext_meta.items():
        sel = np.flatnonzero(ext == FILE_EXTS.index(name))
        for m in metas:
            add(sel, np.full(sel.size, m, np.int64))

    # general tags by popularity up to the post's total; NSFW ones dropped from general/sensitive posts
    structured = np.bincount(np.concatenate(posts), minlength=n)
    total = np.maximum(np.rint(rng.gamma(5.0, mean_tags / 5.0, n)), 6).astype(np.int64)
    n_gen = np.maximum(total - structured, 3)
    gp = np.repeat(local, n_gen)
    gt = _draw(rng, model.gen_idx, model.gen_cdf, gp.size)
    sfw = c["rating"][lo:hi][gp] < 2
    gt[sfw & model.nsfw[gt]] = -1
    add(gp, gt)

    p = np.concatenate(posts)
    t = np.concatenate(tags)
    v = len(model.vocab.names)
    key = np.sort(p * v + t)
    key = key[np.concatenate(([True], key[1:] != key[:-1]))]  # drop duplicate (post, tag) pairs
    p, t = key // v, key % v
    # Grouped by post, random order inside a post: sort by post index + a uniform fraction.
    order = np.argsort(p + rng.random(p.size), kind="stable")
    return p[order], t[order]


def _concept_posts(rng: np.random.Generator, cols: dict[str, np.ndarray], model: _Model) -> np.ndarray:
    """Which posts are by the concept artist: CONCEPT_SHARE of those with people whose image the card keeps."""
    image_ext = ~np.isin(cols["ext"], [FILE_EXTS.index(e) for e in NON_IMAGE_EXTS])
    candidates = (
        model.pattern_people[cols["pattern"]]
        & image_ext
        & ~cols["is_deleted"]
        & ~cols["is_banned"]
        & ~cols["gold_only"]
        & ~cols["banned_artist"]
    )
    return candidates & (rng.random(candidates.size) < CONCEPT_SHARE)


def _with_concept(
    rng: np.random.Generator, model: _Model, concept: np.ndarray, p: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Make the concept artist the only artist of the chunk's concept posts (local index mask `concept`).

    Their other artist rows and `artist_request` go; one row with vocab index len(vocab) (the concept tag) is put at
    a random place among the post's rows, which stay grouped by post and otherwise in their order."""
    v = len(model.vocab.names)
    is_artist = np.zeros(v, bool)
    is_artist[model.vocab.types == TagType.ARTIST] = True
    if model.artist_request >= 0:
        is_artist[model.artist_request] = True
    keep = ~(concept[p] & is_artist[t])
    p, t = p[keep], t[keep]
    posts = np.flatnonzero(concept)
    if posts.size == 0:
        return p, t
    # rank of each row inside its post, and each post's row count (rows are grouped by post, posts ascending)
    start = np.searchsorted(p, np.arange(concept.size))
    size = np.bincount(p, minlength=concept.size)
    rank = np.arange(p.size) - start[p]
    slot = (rng.random(posts.size) * (size[posts] + 1)).astype(np.int64)  # 0..size: before row `slot`
    key = np.concatenate([p * 2 * (size.max() + 1) + 2 * rank + 1, posts * 2 * (size.max() + 1) + 2 * slot])
    order = np.argsort(key, kind="stable")
    return np.concatenate([p, posts])[order], np.concatenate([t, np.full(posts.size, v, np.int64)])[order]


def generate_demo_db(
    path: str | Path,
    n_posts: int,
    seed: int,
    progress: Progress | None = None,
    *,
    mean_tags: float = 30.0,
    tags_csv: str | Path | None = None,
    characters_toml: str | Path | None = None,
) -> DemoDbStats:
    """Write a synthetic danbooru2023-like DB with `n_posts` posts in HakuBooru's schema to `path` (atomically).

    `mean_tags` is the average number of tags per post. `tags_csv` / `characters_toml` default to the shipped
    resources/demo files. Raises KxlError for bad arguments; honours cancellation through `progress`.
    """
    if not isinstance(n_posts, int) or not 1 <= n_posts <= MAX_POST_ID:
        raise KxlError(f"number of demo posts must be between 1 and {MAX_POST_ID:,}, got {n_posts!r}")
    if not isinstance(seed, int) or seed < 0:
        raise KxlError(f"demo seed must be a non-negative integer, got {seed!r}")
    if not 5 <= mean_tags <= 200:
        raise KxlError(f"mean tags per post must be between 5 and 200, got {mean_tags!r}")
    progress = ensure_progress(progress)
    t0 = time.perf_counter()
    path = Path(path)
    tags_path = Path(tags_csv) if tags_csv is not None else default_tags_csv()
    chars_path = Path(characters_toml) if characters_toml is not None else default_characters_toml()
    vocab = load_vocab(tags_path)
    if CONCEPT_ARTIST in vocab.index:
        raise KxlError(
            f"the tag list holds {CONCEPT_ARTIST!r}, the demo's own made-up artist; remove that row",
            path=tags_path,
        )
    try:
        characters = tomllib.loads(chars_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KxlError("demo character list not found", path=chars_path) from None
    except tomllib.TOMLDecodeError as exc:
        raise KxlError(f"invalid TOML ({exc})", path=chars_path) from None

    rng = np.random.default_rng(seed)
    model = _Model(vocab, characters, rng, tags_path)
    tag_ids = np.sort(rng.choice(2_000_000, size=len(vocab.names), replace=False) + 1)[
        rng.permutation(len(vocab.names))
    ]
    ids = _post_ids(rng, n_posts)
    cols = _post_columns(rng, ids, model)
    concept_rng = np.random.default_rng([seed, _CONCEPT_STREAM])
    concept = _concept_posts(concept_rng, cols, model)
    # the concept tag: one past the vocabulary, with an id no drawn tag id has
    names = [*vocab.names, CONCEPT_ARTIST]
    types = np.append(vocab.types, int(TagType.ARTIST))
    tag_ids = np.append(tag_ids, tag_ids.max() + 1)
    popularity = np.zeros(len(names), np.int64)
    n_relations = 0

    progress.stage("generating demo posts")
    post_sql = f'INSERT INTO "post" VALUES ({", ".join("?" * len(POST_COLUMNS))})'
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            # Nothing to protect while building a throw-away temp file: no journal, no fsync per commit.
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            create_schema(conn, with_indexes=False)
            for lo in range(0, n_posts, CHUNK_POSTS):
                hi = min(lo + CHUNK_POSTS, n_posts)
                progress.check_cancelled()
                chunk_cols = {k: v[lo:hi] for k, v in cols.items()}
                rows = _post_rows(ids[lo:hi], chunk_cols, rng.bytes(16 * (hi - lo)).hex(), rng)
                conn.executemany(post_sql, rows)
                del rows
                rp, rt = _chunk_relations(rng, model, cols, lo, hi, mean_tags)
                rp, rt = _with_concept(concept_rng, model, concept[lo:hi], rp, rt)
                popularity += np.bincount(rt, minlength=len(names))
                n_relations += rp.size
                conn.executemany(
                    'INSERT INTO "posttagrelation" ("post_id", "tag_id") VALUES (?, ?)',
                    zip(ids[lo:hi][rp].tolist(), tag_ids[rt].tolist(), strict=True),
                )
                progress.update(hi, n_posts)
            conn.executemany(
                'INSERT INTO "tag" VALUES (?, ?, ?, ?)',
                sorted(zip(tag_ids.tolist(), names, types.tolist(), popularity.tolist(), strict=True)),
            )
            conn.commit()
            progress.check_cancelled()
            progress.stage("building indexes")
            # An index build over ~30M rows takes a while; let a cancel interrupt it inside SQLite.
            conn.set_progress_handler(lambda: int(_cancel_requested(progress)), 10_000)
            try:
                create_indexes(conn)
            except sqlite3.OperationalError:
                progress.check_cancelled()  # raises Cancelled when that was the interruption
                raise
            conn.commit()
        finally:
            conn.close()
    return DemoDbStats(
        path=path,
        n_posts=n_posts,
        n_tags=len(names),
        n_relations=n_relations,
        seed=seed,
        seconds=time.perf_counter() - t0,
        file_size=path.stat().st_size,
    )
