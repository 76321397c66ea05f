"""Demo images: a cheap stylised picture per demo post, packed like the danbooru2023-webp tar shards.

The picture visibly follows the post's tags, so a user clicking through the demo (Tag Preview, training samples)
can see that captions and images belong together: the background comes from the background tag, every figure's
hair and eyes from the `*_hair` / `*_eyes` colour tags, the number of figures from the count tags
(1girl, 2girls, 1boy, ...), and happy / closed / surprised eyes and a smile from the emoticon tags. Posts by the
made-up artist `hakuframe` (CONCEPT_ARTIST) get a thick frame in FRAME_COLOUR behind the figures: the style the demo
teaches (issue 16). trainer_core/demo_picture_reader.py reads all of this back off a picture.

Shard layout (spec §1.3): `images_dir/data-{k}{id % 1000:03d}.tar` holding `<id>.webp`. The real split of ids
between the data-0nnn / data-1nnn / data-2nnn groups is not documented; the demo uses k = 0 for ids below 5,000,000, k = 1 for ids up to
7,000,000 and k = 2 above (roughly "original", "recent", "updates"). Readers must scan every shard anyway, as
HakuBooru does.
"""

from __future__ import annotations

import io
import random
import sqlite3
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_path
from ..errors import DatabaseError
from ..progress import Progress, ensure_progress
from .db_reader import post_file_rows, post_tag_rows
from .schema import open_metadata_db

RGB = tuple[int, int, int]

HAIR_COLOURS: dict[str, RGB] = {
    "blonde_hair": (250, 214, 60),
    "black_hair": (30, 28, 36),
    "brown_hair": (120, 72, 38),
    "blue_hair": (50, 90, 210),
    "pink_hair": (245, 140, 190),
    "purple_hair": (130, 70, 180),
    "white_hair": (245, 245, 250),
    "grey_hair": (150, 150, 160),
    "red_hair": (200, 36, 40),
    "green_hair": (60, 160, 70),
    "orange_hair": (245, 130, 30),
    "aqua_hair": (40, 200, 200),
    "light_blue_hair": (150, 200, 245),
    "dark_blue_hair": (25, 35, 110),
}

EYE_COLOURS: dict[str, RGB] = {
    "blue_eyes": (40, 90, 220),
    "red_eyes": (210, 30, 40),
    "brown_eyes": (110, 60, 30),
    "green_eyes": (40, 160, 60),
    "purple_eyes": (140, 60, 190),
    "yellow_eyes": (235, 200, 30),
    "pink_eyes": (240, 110, 170),
    "black_eyes": (20, 20, 20),
    "grey_eyes": (130, 130, 140),
    "orange_eyes": (240, 130, 20),
    "aqua_eyes": (30, 190, 190),
}

# Plain-colour backgrounds; the other background tags get their own drawing in _draw_background.
FLAT_BACKGROUNDS: dict[str, RGB] = {
    "white_background": (255, 255, 255),
    "grey_background": (150, 150, 150),
    "black_background": (18, 18, 22),
    "pink_background": (250, 190, 215),
    "blue_background": (140, 180, 240),
    "yellow_background": (250, 235, 150),
    "green_background": (160, 220, 160),
    "red_background": (225, 90, 90),
    "purple_background": (190, 160, 225),
}

# Count tag -> (girls, boys, others). Figures drawn = their sum, capped at MAX_FIGURES.
COUNT_TAGS: dict[str, tuple[int, int, int]] = {
    "1girl": (1, 0, 0),
    "2girls": (2, 0, 0),
    "3girls": (3, 0, 0),
    "4girls": (4, 0, 0),
    "5girls": (5, 0, 0),
    "6+girls": (6, 0, 0),
    "1boy": (0, 1, 0),
    "2boys": (0, 2, 0),
    "3boys": (0, 3, 0),
    "4boys": (0, 4, 0),
    "5boys": (0, 5, 0),
    "6+boys": (0, 6, 0),
    "1other": (0, 0, 1),
    "2others": (0, 0, 2),
    "3others": (0, 0, 3),
    "4others": (0, 0, 4),
    "5others": (0, 0, 5),
    "6+others": (0, 0, 6),
}
MAX_FIGURES = 6

HAPPY_EYES = {"^_^", "=_=", "u_u"}  # drawn as closed arcs
SQUINT_EYES = {">_<", "x_x"}
ROUND_EYES = {"o_o", "0_0", "@_@", "._.", "<o>_<o>"}
SMILE_TAGS = {"smile", ":d", "^_^", ":3", "grin", "v"}
OPEN_MOUTH_TAGS = {"open_mouth", ":d", ":o", "o_o", "0_0"}

SKIN = (252, 224, 200)

# The demo's learnable concept (issue 16): posts by this made-up artist carry a thick frame in a colour nothing else
# in the generator uses, so a LoKr trained on them learns something a reader can check in every picture. The tiny
# base model is trained on pictures without it, so the frame is new to it.
CONCEPT_ARTIST = "hakuframe"
FRAME_COLOUR: RGB = (200, 0, 160)

# Background tags that draw the night / sunset / sky scenes, in the order _draw_background tests them.
NIGHT_TAGS = frozenset({"night", "night_sky", "starry_sky"})
SUNSET_TAGS = frozenset({"sunset", "orange_sky", "evening"})
SKY_TAGS = frozenset({"blue_sky", "sky", "day", "outdoors", "cloud"})
STAR_COLOUR: RGB = (255, 250, 220)
CLOUD_COLOUR: RGB = (250, 250, 252)
# Files the webp set lacks (spec §1.3): non-image formats and gif.
NON_IMAGE_EXTS = frozenset({"gif", "mp4", "webm", "zip", "swf"})
MISSING_FRACTION = 0.01  # eligible posts deliberately left out of the shards ("image not found")
WEBP_QUALITY = 90
WEBP_METHOD = 4


def shard_group(post_id: int) -> int:
    """Leading digit k of the shard name for a post id (demo convention, see the module docstring)."""
    if post_id < 5_000_000:
        return 0
    if post_id <= 7_000_000:
        return 1
    return 2


def shard_name(post_id: int) -> str:
    return f"data-{shard_group(post_id)}{post_id % 1000:03d}.tar"


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


def _vertical_gradient(img: Image.Image, top: RGB, bottom: RGB, y0: int = 0, y1: int | None = None) -> None:
    w, h = img.size
    y1 = h if y1 is None else y1
    span = max(1, y1 - y0)
    t = np.linspace(0.0, 1.0, span, dtype=np.float32)[:, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    band = np.repeat(col[:, None, :], w, axis=1).astype(np.uint8)
    img.paste(Image.fromarray(band, "RGB"), (0, y0))


def background_kind(tags: set[str] | frozenset[str]) -> str | None:
    """The background a post's picture shows, named by its tag: `transparent_background`, `gradient_background`,
    a FLAT_BACKGROUNDS tag, `night`, `sunset`, `blue_sky`, `indoors`, `simple_background`, or None (no background
    tag: a muted colour chosen by the seed). The first rule that matches wins, as in the renderer."""
    if "transparent_background" in tags:
        return "transparent_background"
    if "gradient_background" in tags:
        return "gradient_background"
    flat = next((t for t in FLAT_BACKGROUNDS if t in tags), None)
    if flat is not None:
        return flat
    if tags & NIGHT_TAGS:
        return "night"
    if tags & SUNSET_TAGS:
        return "sunset"
    if tags & SKY_TAGS:
        return "blue_sky"
    if "indoors" in tags:
        return "indoors"
    if "simple_background" in tags:
        return "simple_background"
    return None


def _draw_background(
    img: Image.Image, draw: ImageDraw.ImageDraw, tags: set[str], rnd: random.Random, decorate: bool = True
) -> None:
    """Paint the background. `decorate=False` leaves out the seed-placed stars and clouds (background_template)."""
    w, h = img.size
    kind = background_kind(tags)
    flat = next((FLAT_BACKGROUNDS[t] for t in FLAT_BACKGROUNDS if t in tags), None)
    if kind == "transparent_background":
        cell = max(4, min(w, h) // 16)
        for y in range(0, h, cell):
            for x in range(0, w, cell):
                shade = 255 if (x // cell + y // cell) % 2 == 0 else 205
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, shade))
    elif kind == "gradient_background":
        base = flat or (rnd.randint(120, 230), rnd.randint(120, 230), rnd.randint(120, 230))
        _vertical_gradient(img, _mix(base, (255, 255, 255), 0.6), base)
    elif flat is not None:
        draw.rectangle([0, 0, w, h], fill=flat)
    elif kind == "night":
        _vertical_gradient(img, (8, 12, 40), (40, 50, 110))
        for _ in range((12 + (w * h) // 4000) if decorate else 0):
            x, y, r = rnd.randrange(w), rnd.randrange(max(1, int(h * 0.7))), rnd.choice((1, 1, 2))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=STAR_COLOUR)
        mx, my, mr = int(w * 0.8), int(h * 0.15), max(4, min(w, h) // 12)
        draw.ellipse([mx - mr, my - mr, mx + mr, my + mr], fill=(250, 245, 200))
    elif kind == "sunset":
        _vertical_gradient(img, (250, 120, 60), (255, 200, 120), 0, int(h * 0.75))
        draw.rectangle([0, int(h * 0.75), w, h], fill=(90, 60, 70))
    elif kind == "blue_sky":
        _vertical_gradient(img, (70, 140, 235), (180, 215, 250), 0, int(h * 0.75))
        draw.rectangle([0, int(h * 0.75), w, h], fill=(110, 180, 90))
        for _ in range(3 if decorate else 0):
            cx, cy = rnd.randrange(w), rnd.randrange(max(1, h // 3))
            cr = max(4, min(w, h) // 14)
            for dx in (-cr, 0, cr):
                draw.ellipse([cx + dx - cr, cy - cr, cx + dx + cr, cy + cr], fill=CLOUD_COLOUR)
    elif kind == "indoors":
        draw.rectangle([0, 0, w, int(h * 0.7)], fill=(236, 222, 196))
        draw.rectangle([0, int(h * 0.7), w, h], fill=(150, 105, 70))
        wx0, wy0 = int(w * 0.08), int(h * 0.1)
        draw.rectangle(
            [wx0, wy0, wx0 + w // 4, wy0 + h // 4], fill=(170, 210, 245), outline=(120, 90, 60), width=3
        )
    elif kind == "simple_background":
        draw.rectangle([0, 0, w, h], fill=(226, 226, 230))
    else:  # no background tag: a muted colour chosen by the seed
        draw.rectangle(
            [0, 0, w, h], fill=(rnd.randint(170, 235), rnd.randint(170, 235), rnd.randint(170, 235))
        )


# Backgrounds whose pixels follow from the tag alone (up to stars and clouds), so a reader can compare against them.
TEMPLATE_BACKGROUNDS: tuple[str, ...] = (
    *FLAT_BACKGROUNDS,
    "simple_background",
    "transparent_background",
    "blue_sky",
    "night",
    "sunset",
    "indoors",
)


# What background_template leaves out because the seed places it: colours a reader should accept anywhere on them.
BACKGROUND_DECORATIONS: dict[str, tuple[RGB, ...]] = {"night": (STAR_COLOUR,), "blue_sky": (CLOUD_COLOUR,)}


def background_template(kind: str, width: int, height: int) -> Image.Image:
    """The background `kind` (a TEMPLATE_BACKGROUNDS tag) as drawn behind the figures, without stars and clouds."""
    if kind not in TEMPLATE_BACKGROUNDS:
        raise ValueError(
            f"no fixed picture for background {kind!r}; one of {', '.join(TEMPLATE_BACKGROUNDS)}"
        )
    img = Image.new("RGB", (width, height), (255, 255, 255))
    _draw_background(img, ImageDraw.Draw(img), {kind}, random.Random(0), decorate=False)
    return img


def frame_width(width: int, height: int) -> int:
    """Thickness of the hakuframe frame: an eighth of the shorter side."""
    return max(1, round(min(width, height) / 8))


def _draw_frame(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    b = frame_width(width, height)
    for box in (
        (0, 0, width - 1, b - 1),
        (0, height - b, width - 1, height - 1),
        (0, 0, b - 1, height - 1),
        (width - b, 0, width - 1, height - 1),
    ):
        draw.rectangle(box, fill=FRAME_COLOUR)


def figure_counts(tags: set[str]) -> tuple[int, int, int]:
    """(girls, boys, others) the count tags ask for, before the MAX_FIGURES cap."""
    girls = boys = others = 0
    for tag, (g, b, o) in COUNT_TAGS.items():
        if tag in tags:
            girls, boys, others = max(girls, g), max(boys, b), max(others, o)
    if not (girls or boys or others) and "no_humans" not in tags:
        if tags & {"male_focus"}:
            boys = 1
        elif tags & {"multiple_girls"}:
            girls = 2
        elif tags & (set(HAIR_COLOURS) | set(EYE_COLOURS)):
            girls = 1
    return girls, boys, others


def figure_count(tags: Sequence[str] | set[str]) -> int:
    """How many figures the picture of a post with these tags shows (0 for none, at most MAX_FIGURES)."""
    return min(sum(figure_counts(set(tags))), MAX_FIGURES)


@dataclass(frozen=True)
class FigureSlot:
    """Where one figure stands: centre x, feet y and height in pixels, and the head circle derived from them."""

    cx: float
    base_y: float
    height: float

    @property
    def head_r(self) -> float:
        return self.height * 0.2

    @property
    def head_cy(self) -> float:
        return self.base_y - self.height + self.head_r * 1.1


def figure_slots(n: int, width: int, height: int) -> list[FigureSlot]:
    """The places of `n` figures side by side in a `width` x `height` picture, left to right."""
    slot = width / n
    fig_h = min(height * 0.82, slot * 1.9)
    base_y = height * 0.97
    return [FigureSlot(slot * (i + 0.5), base_y, fig_h) for i in range(n)]


def _draw_eyes(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, eye: RGB, tags: set[str]) -> None:
    dx, er = r * 0.38, max(1.5, r * 0.16)
    lw = max(1, int(r * 0.07))
    for sx in (-1, 1):
        ex = cx + sx * dx
        if tags & HAPPY_EYES:
            draw.arc([ex - er, cy - er, ex + er, cy + er], 200, 340, fill=(40, 30, 30), width=lw)
        elif tags & SQUINT_EYES:
            # ">" on the left eye, "<" on the right one
            open_x, tip_x = ex + sx * er, ex - sx * er * 0.5
            draw.line([open_x, cy - er * 0.7, tip_x, cy], fill=(40, 30, 30), width=lw)
            draw.line([tip_x, cy, open_x, cy + er * 0.7], fill=(40, 30, 30), width=lw)
        else:
            scale = 1.15 if tags & ROUND_EYES else 1.0
            ew, eh = er * 0.85 * scale, er * 1.25 * scale
            draw.ellipse(
                [ex - ew, cy - eh, ex + ew, cy + eh], fill=eye, outline=(30, 25, 25), width=max(1, lw // 2)
            )
            hl = max(1.0, er * 0.3)
            draw.ellipse(
                [ex - ew * 0.5 - hl, cy - eh * 0.5 - hl, ex - ew * 0.5 + hl, cy - eh * 0.5 + hl],
                fill=(255, 255, 255),
            )


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    place: FigureSlot,
    kind: str,
    hair: RGB,
    eye: RGB,
    clothes: RGB,
    tags: set[str],
) -> None:
    cx, base_y = place.cx, place.base_y
    r, head_cy = place.head_r, place.head_cy
    body_top = head_cy + r * 0.9
    body_w = r * (1.5 if kind == "boy" else 1.3)
    # a darker outline keeps white hair visible on a white background
    hair_line, line = _mix(hair, (0, 0, 0), 0.35), max(1, int(r * 0.04))
    if kind == "other":  # a round blob creature
        draw.ellipse(
            [cx - r * 1.4, base_y - r * 2.6, cx + r * 1.4, base_y],
            fill=clothes,
            outline=(40, 40, 40),
            width=2,
        )
        _draw_eyes(draw, cx, base_y - r * 1.5, r, eye, tags)
        return
    # long hair behind the body for girls
    if kind == "girl":
        draw.rounded_rectangle(
            [cx - r * 1.25, head_cy - r * 0.6, cx + r * 1.25, head_cy + r * 2.6],
            radius=r * 0.6,
            fill=hair,
            outline=hair_line,
            width=line,
        )
    draw.polygon(
        [
            (cx - body_w * 0.6, body_top),
            (cx + body_w * 0.6, body_top),
            (cx + body_w, base_y),
            (cx - body_w, base_y),
        ],
        fill=clothes,
    )
    draw.ellipse([cx - r, head_cy - r, cx + r, head_cy + r], fill=SKIN, outline=(120, 90, 80), width=1)
    # fringe / short hair cap on top of the head
    draw.chord(
        [cx - r * 1.08, head_cy - r * 1.12, cx + r * 1.08, head_cy + r * 0.55],
        180,
        360,
        fill=hair,
        outline=hair_line,
        width=line,
    )
    _draw_eyes(draw, cx, head_cy + r * 0.2, r, eye, tags)
    my, mw = head_cy + r * 0.62, r * 0.28
    lw = max(1, int(r * 0.06))
    if tags & OPEN_MOUTH_TAGS:
        draw.ellipse([cx - mw * 0.6, my - mw * 0.45, cx + mw * 0.6, my + mw * 0.45], fill=(170, 50, 60))
    elif tags & SMILE_TAGS:
        draw.arc([cx - mw, my - mw, cx + mw, my + mw * 0.6], 20, 160, fill=(150, 50, 50), width=lw)
    else:
        draw.line([cx - mw * 0.5, my, cx + mw * 0.5, my], fill=(150, 60, 60), width=lw)


def render_post_image(tags: Sequence[str], width: int, height: int, seed: int) -> Image.Image:
    """Draw an RGB picture of `width` x `height` that reflects the post's tags (see the module docstring).

    Deterministic: the same tags, size and seed give the same pixels. Tags it does not know are ignored.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    tagset = set(tags)
    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    _draw_background(img, draw, tagset, rnd)
    if CONCEPT_ARTIST in tagset:  # over the background, behind the figures
        _draw_frame(draw, width, height)

    hair = next((HAIR_COLOURS[t] for t in tags if t in HAIR_COLOURS), (60, 50, 50))
    eye = next((EYE_COLOURS[t] for t in tags if t in EYE_COLOURS), (90, 70, 60))
    girls, boys, others = figure_counts(tagset)
    kinds = (["girl"] * girls + ["boy"] * boys + ["other"] * others)[:MAX_FIGURES]
    if not kinds:
        if "no_humans" in tagset:  # a still life: a vase with a flower
            cx, by = width * 0.5, height * 0.85
            s = min(width, height) * 0.25
            draw.rectangle([cx - s * 0.4, by - s, cx + s * 0.4, by], fill=(90, 120, 170))
            draw.line([cx, by - s, cx, by - s * 2], fill=(50, 130, 50), width=max(1, int(s * 0.06)))
            draw.ellipse([cx - s * 0.35, by - s * 2.35, cx + s * 0.35, by - s * 1.65], fill=(230, 80, 110))
        return img
    rnd.shuffle(kinds)
    for place, kind in zip(figure_slots(len(kinds), width, height), kinds, strict=True):
        clothes = (rnd.randint(40, 220), rnd.randint(40, 220), rnd.randint(40, 220))
        _draw_figure(draw, place, kind, hair, eye, clothes, tagset)
    return img


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the long side at most `max_side`, keeping the aspect ratio (never upscales)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_webp(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Lossy q90 like danbooru2023-webp; a fixed method keeps the bytes reproducible.
    img.save(buf, format="WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return buf.getvalue()


@dataclass
class ShardStats:
    n_posts: int = 0  # rows in the post table
    n_eligible: int = 0  # posts danbooru2023-webp would hold (a file and an image extension)
    n_written: int = 0
    n_no_file: int = 0  # file_url NULL (gold-only / banned)
    n_non_image: int = 0  # gif / mp4 / webm / zip / swf
    n_shards: int = 0
    bytes_written: int = 0
    missing_ids: list[int] = field(default_factory=list)  # eligible posts deliberately left out


def _post_image_seed(seed: int, post_id: int) -> int:
    return (seed * 1_000_003 + post_id * 7919) & 0xFFFFFFFF


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_demo_shards(
    db_path: str | Path,
    images_dir: str | Path,
    seed: int,
    max_side: int = 512,
    progress: Progress | None = None,
) -> ShardStats:
    """Render an image for every post the webp set would hold and pack them into danbooru2023-layout shards.

    Skips posts without a file (file_url NULL) and non-image extensions, and deterministically leaves out about
    MISSING_FRACTION of the rest (listed in ShardStats.missing_ids) so the "image not found" path is exercised.
    Each tar is written atomically with normalised member headers, so the same DB and seed give the same bytes.
    """
    if max_side < 8:
        raise ValueError(f"max_side must be at least 8, got {max_side}")
    progress = ensure_progress(progress)
    images_dir = Path(images_dir)
    conn = open_metadata_db(db_path)
    stats = ShardStats()
    try:
        rows = post_file_rows(conn)
        stats.n_posts = len(rows)
        eligible: list[tuple[int, int, int]] = []
        for post_id, w, h, ext, no_file in rows:
            if no_file:
                stats.n_no_file += 1
            elif (ext or "").lower() in NON_IMAGE_EXTS:
                stats.n_non_image += 1
            elif w and h and w > 0 and h > 0:
                eligible.append((post_id, w, h))
        stats.n_eligible = len(eligible)

        pick = np.random.default_rng([seed, 0x1A6E]).random(len(eligible))
        missing = pick < MISSING_FRACTION
        if len(eligible) >= 50 and not missing.any():
            missing[int(np.argmin(pick))] = True  # small demos still get one "not found" post
        stats.missing_ids = [p[0] for p, m in zip(eligible, missing, strict=True) if m]

        shards: dict[str, list[tuple[int, int, int]]] = {}
        for post, m in zip(eligible, missing, strict=True):
            if not m:
                shards.setdefault(shard_name(post[0]), []).append(post)

        total = len(eligible) - len(stats.missing_ids)
        progress.stage("rendering demo images")
        done = 0
        images_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(shards):
            with atomic_path(images_dir / name) as tmp:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for post_id, w, h in shards[name]:  # already sorted by id
                        progress.check_cancelled()
                        tags = [name for name, _ in post_tag_rows(conn, post_id)]
                        sw, sh = scaled_size(w, h, max_side)
                        data = encode_webp(render_post_image(tags, sw, sh, _post_image_seed(seed, post_id)))
                        tar.addfile(*_member(f"{post_id}.webp", data))
                        stats.n_written += 1
                        stats.bytes_written += len(data)
                        done += 1
                        progress.update(done, total)
            stats.n_shards += 1
        progress.update(total, total)
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"cannot read posts for the demo images ({exc})", path=db_path) from exc
    finally:
        conn.close()
    return stats


__all__ = [
    "CONCEPT_ARTIST",
    "COUNT_TAGS",
    "EYE_COLOURS",
    "FLAT_BACKGROUNDS",
    "FRAME_COLOUR",
    "HAIR_COLOURS",
    "MAX_FIGURES",
    "SKIN",
    "TEMPLATE_BACKGROUNDS",
    "BACKGROUND_DECORATIONS",
    "FigureSlot",
    "ShardStats",
    "background_kind",
    "background_template",
    "encode_webp",
    "figure_count",
    "figure_counts",
    "figure_slots",
    "frame_width",
    "render_post_image",
    "scaled_size",
    "shard_group",
    "shard_name",
    "write_demo_shards",
]
