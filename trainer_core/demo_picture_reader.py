"""Read a picture back against the demo generator: which background, hair colour, eye colour, how many figures,
and whether it has the `hakuframe` frame (trainer_core/danbooru/demo_images.py draws all of them).

Why a reader: the demo's tiny model is trained on the generator's pictures, so "did the model draw the prompt?" and
"did the LoKr teach the frame?" become numbers a test can hold to a bar instead of a look at a grid.

How: the generator's layout is known exactly (figure_slots), so every attribute is read from the places where it
is drawn, with medians over small regions and the nearest palette colour. Nothing needs an exact pixel: a small
diffusion model's output is blurred, noisy and a little off in colour.
  * frame: the median colour of the top band (figures never reach it) close to FRAME_COLOUR;
  * count: for every possible number of figures n, each of the n head positions is scored as a face (skin in the
    middle of the face, a differently coloured fringe above it, eyes that differ from the skin); the n with the
    best mean score wins, the larger n on a tie. Blob creatures (`1other`) have no face: alone they read as no
    figures;
  * hair: the median colour of the fringes of the faces found -> nearest HAIR_COLOURS;
  * eyes: the eye pixels least like skin, unmixed from skin and outline -> nearest EYE_COLOURS (best effort: an
    eye is a few pixels wide at 128 px, and blur or JPEG chroma smear it);
  * background: pixels inside the frame line and outside the (widened) figure outlines, softened, compared pixel by
    pixel with each fixed background picture (background_template) softened at a few radii; the lowest median
    distance wins. Stars and clouds sit at random places, so the templates leave them out and their colours are
    accepted at a small penalty.
A reading the picture does not support is None (no face -> no count, hair or eyes; pixel noise or a background far
from every template -> no background), so pure noise scores at or below chance instead of being forced onto some
answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter

from .danbooru.demo_images import (
    BACKGROUND_DECORATIONS,
    CONCEPT_ARTIST,
    EYE_COLOURS,
    FRAME_COLOUR,
    HAIR_COLOURS,
    MAX_FIGURES,
    SKIN,
    TEMPLATE_BACKGROUNDS,
    FigureSlot,
    background_kind,
    background_template,
    figure_count,
    figure_counts,
    figure_slots,
    frame_width,
)
from .tags.text import tag_to_caption_text

MIN_SIDE = 64
# Larger pictures are shrunk first: the layout is proportional and the reader needs no fine detail.
READ_MAX_SIDE = 256

# Distances are Euclidean in 0..255 RGB. A frame colour within FRAME_MAX_DISTANCE of FRAME_COLOUR is the frame; the
# nearest other colour the top band can hold (red_background) is 117 away.
FRAME_MAX_DISTANCE = 75.0
# Face test. Skin is compared up to brightness (SKIN_SHADE..1 x SKIN): blur darkens a small face with its hair,
# eyes and outline far more than it changes its hue. Within SKIN_FULL of that counts fully, beyond SKIN_NONE not at
# all (white hair, the nearest other colour, is 55 away). The fringe must differ from the skin by
# CONTRAST_NONE..CONTRAST_FULL, and eyes that differ from the skin by EYES_NONE..EYES_FULL raise the score from half to
# full (closed eyes are thin arcs, so their absence only halves it).
SKIN_SHADE = 0.7
SKIN_FULL, SKIN_NONE = 30.0, 55.0
CONTRAST_NONE, CONTRAST_FULL = 15.0, 45.0
EYES_NONE, EYES_FULL = 15.0, 40.0
FACE_FOUND = 0.5  # face score from which a head position holds a face (its fringe gives the hair colour)
FACES_NEEDED = 0.5  # mean face score of the best n at which figures are said to be there
# Median distance to the best template above which the background is unreadable.
BACKGROUND_MAX_DISTANCE = 70.0
# Median distance of a pixel to its softened self above which the picture is pixel noise, not a background: softening
# turns uniform noise (~70) into a flat grey that would otherwise read as grey_background.
BACKGROUND_MAX_GRAIN = 35.0
# A pixel of a star or cloud colour matches the night / sky template at this distance instead of its own: far enough
# that a plain white picture still reads as white_background, near enough that clouds do not outvote the sky.
DECORATION_PENALTY = 20.0
MIN_BACKGROUND_PIXELS = 0.02  # share of the picture the background is read from, at least
BACKGROUND_BLUR = 2.0  # Gaussian radius (px at 128 px) applied to the picture before comparing
TEMPLATE_BLURS = (2.0, 3.0, 4.0)  # ... and to the templates: the picture's blur plus what it had already
COLOUR_MAX_DISTANCE = 90.0  # hair / eye median farther than this from every palette colour reads as None

ATTRIBUTES = ("background", "hair", "eyes", "count", "concept")

# Eyes drawn without their colour (closed arcs, squints): the eye colour is not in the picture.
_NO_EYE_COLOUR_TAGS = frozenset({"^_^", "=_=", "u_u", ">_<", "x_x"})


@dataclass(frozen=True)
class PictureReading:
    """What `read_picture` saw. Tags are the generator's tag names; None where the picture does not show one."""

    background: str | None
    hair: str | None
    eyes: str | None
    count: int
    has_concept: bool
    background_distance: float  # median RGB distance to the chosen background's template (lower = surer)
    hair_distance: float | None
    eye_distance: float | None
    face_score: float  # mean face score of the chosen count (0..1)
    frame_distance: float  # distance of the top band's median colour to FRAME_COLOUR


@dataclass(frozen=True)
class ExpectedPicture:
    """What the generator draws for a tag list, in the reader's terms (None / absent = not determined)."""

    background: str | None
    hair: str | None
    eyes: str | None
    count: int
    has_concept: bool


@dataclass(frozen=True)
class DemoPrompt:
    """One prompt of the read-back set: caption-style text, the tags it stands for and the seed to draw it with."""

    prompt: str
    tags: tuple[str, ...]
    seed: int


# ----------------------------------------------------------------------------------------------------- input


def _as_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 float32 RGB from a PIL image (any mode) or an HxWx3 uint8 array; shrunk when larger than needed."""
    if isinstance(img, Image.Image):
        pil = img.convert("RGB")
    elif isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"expected an HxWx3 uint8 RGB array, got shape {img.shape} and dtype {img.dtype}"
            )
        pil = Image.fromarray(img, "RGB")
    else:
        raise TypeError(f"expected a PIL image or a numpy array, got {type(img).__name__}")
    w, h = pil.size
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"picture is {w}x{h}; the reader needs at least {MIN_SIDE} px on each side")
    scale = max(READ_MAX_SIDE / max(w, h), MIN_SIDE / min(w, h))
    if scale < 1.0:
        pil = pil.resize((max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale))), Image.BOX)
    return np.asarray(pil, dtype=np.float32)


def _patch(
    arr: np.ndarray, cx: float, cy: float, r: float, x0: float, x1: float, y0: float, y1: float
) -> np.ndarray:
    """Pixels (N x 3) of the box cx + [x0, x1]*r, cy + [y0, y1]*r, clipped to the picture, at least one pixel."""
    h, w = arr.shape[:2]
    ax, bx = math.floor(cx + x0 * r), math.ceil(cx + x1 * r)
    ay, by = math.floor(cy + y0 * r), math.ceil(cy + y1 * r)
    ax, ay = min(max(ax, 0), w - 1), min(max(ay, 0), h - 1)
    bx, by = min(max(bx, ax + 1), w), min(max(by, ay + 1), h)
    return arr[ay:by, ax:bx].reshape(-1, 3)


def _median(pixels: np.ndarray) -> np.ndarray:
    return np.median(pixels, axis=0)


def _distance(a: np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def _nearest(colour: np.ndarray, palette: Mapping[str, tuple[int, int, int]]) -> tuple[str, float]:
    name = min(palette, key=lambda k: _distance(colour, palette[k]))
    return name, _distance(colour, palette[name])


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below lo, 1 at or above hi, linear in between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


# ----------------------------------------------------------------------------------------------------- frame


def _frame_distance(arr: np.ndarray) -> float:
    h, w = arr.shape[:2]
    b = frame_width(w, h)
    m = max(1, b // 5)  # keep off the blurred inner edge of the band
    band = arr[m : max(m + 1, b - m), m : w - m].reshape(-1, 3)
    return _distance(_median(band), FRAME_COLOUR)


# ----------------------------------------------------------------------------------------------------- figures

# Regions in head radii around (cx, head_cy), from the generator's drawing: the fringe (a chord over the top of the
# head, down to head_cy - 0.285 r) and the bare face between the eyes (at +-0.38 r) above the mouth (at +0.62 r).
_FACE_BOX = (-0.18, 0.18, -0.2, 0.45)
_FRINGE_BOX = (-0.4, 0.4, -0.88, -0.5)
# The lower half of each eye (centre cx +- 0.38 r, head_cy + 0.2 r; half-size ~0.14 r x 0.2 r): clear of the white
# highlight at its upper left and of the dark outline.
_EYE_DX, _EYE_BOX = 0.38, (-0.07, 0.09, 0.2, 0.34)
_SKIN = np.asarray(SKIN, np.float32)


def _skin_distance(colour: np.ndarray) -> float:
    """Distance to the nearest shade s x SKIN, s in SKIN_SHADE..1."""
    s = float(np.clip(np.dot(colour, _SKIN) / np.dot(_SKIN, _SKIN), SKIN_SHADE, 1.0))
    return _distance(colour, s * _SKIN)


def _eye_pixels(arr: np.ndarray, place: FigureSlot) -> np.ndarray:
    r = place.head_r
    return np.concatenate(
        [_patch(arr, place.cx + side * _EYE_DX * r, place.head_cy, r, *_EYE_BOX) for side in (-1, 1)]
    )


def _face_score(arr: np.ndarray, place: FigureSlot) -> tuple[float, np.ndarray]:
    """How much the head position looks like a face (0..1), and the fringe's median colour."""
    r, cx, cy = place.head_r, place.cx, place.head_cy
    face = _median(_patch(arr, cx, cy, r, *_FACE_BOX))
    fringe = _median(_patch(arr, cx, cy, r, *_FRINGE_BOX))
    eyes = _median(_eye_pixels(arr, place))
    skin = 1.0 - _ramp(_skin_distance(face), SKIN_FULL, SKIN_NONE)
    contrast = _ramp(_distance(fringe, face), CONTRAST_NONE, CONTRAST_FULL)
    eye_factor = 0.5 + 0.5 * _ramp(_distance(eyes, face), EYES_NONE, EYES_FULL)
    return skin * contrast * eye_factor, fringe


def _eye_colour(arr: np.ndarray, places: Sequence[FigureSlot]) -> np.ndarray:
    """Mean of the quarter of eye pixels farthest from the skin: blur spreads the skin over a small eye's edge,
    while its middle keeps most of its colour."""
    pixels = np.concatenate([_eye_pixels(arr, p) for p in places])
    far = np.linalg.norm(pixels - _SKIN, axis=1)
    keep = far >= np.quantile(far, 0.75)
    return pixels[keep].mean(axis=0)


_EYE_OUTLINE = np.asarray((30, 25, 25), np.float32)
# Mixing weights (eye, outline) tried when unmixing a blurred eye; the rest is skin.
_EYE_MIX = [
    (a, c) for a in np.linspace(0.3, 1.0, 15) for c in np.linspace(0.0, 0.4, 9) if a + c <= 1.0 + 1e-6
]


def _nearest_eye(colour: np.ndarray) -> tuple[str, float]:
    """Nearest eye colour, allowing for blur: an eye a few pixels wide reads as a mix of its colour with the skin
    around it and its dark outline, so each candidate is scored by its best mix (at least 30 % eye)."""
    best, best_d = "", math.inf
    for name, rgb in EYE_COLOURS.items():
        eye = np.asarray(rgb, np.float32)
        d = min(_distance(colour, a * eye + c * _EYE_OUTLINE + (1.0 - a - c) * _SKIN) for a, c in _EYE_MIX)
        if d < best_d:
            best, best_d = name, d
    return best, best_d


@dataclass(frozen=True)
class _Figures:
    count: int  # 0 when the best hypothesis has too little face evidence
    score: float  # mean face score of the best hypothesis
    found: list[FigureSlot]  # its head positions that hold a face
    fringes: list[np.ndarray]  # fringe colours of `found`


def _read_figures(arr: np.ndarray) -> _Figures:
    h, w = arr.shape[:2]
    best = _Figures(0, -1.0, [], [])
    for n in range(1, MAX_FIGURES + 1):
        places = figure_slots(n, w, h)
        scored = [_face_score(arr, p) for p in places]
        mean = sum(s for s, _ in scored) / n
        # Ties go to the larger count: blurred hair over a head top can pass for the face of a bigger figure
        # between two real ones, but then every face of the real count is there too.
        if mean >= best.score - 1e-6:
            found = [(p, f) for p, (s, f) in zip(places, scored, strict=True) if s >= FACE_FOUND]
            best = _Figures(n, mean, [p for p, _ in found], [f for _, f in found])
    if best.score < FACES_NEEDED:
        return _Figures(0, best.score, [], [])
    return best


# ----------------------------------------------------------------------------------------------------- background


def _soften(arr: np.ndarray, radius: float, mask: np.ndarray | None = None) -> np.ndarray:
    """`arr` blurred as much as a small model's output already is, so a sharp template and a soft picture differ
    only where their colours differ; also evens out pixel noise. With `mask`, only masked pixels are averaged
    (normalised convolution), so figures next to a thin strip of background do not bleed into it."""
    sigma = radius * min(arr.shape[:2]) / 128
    if mask is None:
        return gaussian_filter(arr, (sigma, sigma, 0), mode="nearest")
    m = mask.astype(np.float32)
    num = gaussian_filter(arr * m[..., None], (sigma, sigma, 0), mode="nearest")
    den = gaussian_filter(m, sigma, mode="nearest")
    return num / np.maximum(den, 1e-6)[..., None]


@lru_cache(maxsize=8)
def _templates(width: int, height: int) -> np.ndarray:
    """K x L x H x W x 3 float32 pictures of TEMPLATE_BACKGROUNDS at this size, softened at each TEMPLATE_BLURS
    radius: the picture's own blur is unknown, and the checkerboard of transparent_background fades with it."""
    return np.stack(
        [
            np.stack(
                [
                    _soften(np.asarray(background_template(k, width, height), np.float32), b)
                    for b in TEMPLATE_BLURS
                ]
            )
            for k in TEMPLATE_BACKGROUNDS
        ]
    )


def _silhouettes(width: int, height: int, n: int) -> Image.Image:
    """White where any of n figures may cover the background: each one's widest outline (a girl's long hair, a
    boy's body, a blob creature), as _draw_figure draws them."""
    sil = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(sil)
    for p in figure_slots(n, width, height) if n else []:
        r, cx, cy, base = p.head_r, p.cx, p.head_cy, p.base_y
        draw.rectangle([cx - r * 1.25, cy - r * 0.6, cx + r * 1.25, cy + r * 2.6], fill=255)
        draw.ellipse([cx - r * 1.08, cy - r * 1.12, cx + r * 1.08, cy + r], fill=255)
        top = cy + r * 0.9
        draw.polygon(
            [(cx - r * 0.9, top), (cx + r * 0.9, top), (cx + r * 1.5, base), (cx - r * 1.5, base)], fill=255
        )
        draw.ellipse([cx - r * 1.4, base - r * 2.6, cx + r * 1.4, base], fill=255)
    return sil


@lru_cache(maxsize=64)
def _background_mask(width: int, height: int, n: int) -> np.ndarray:
    """Pixels that show the background when n figures stand there: inside the frame line (a frame, when drawn,
    covers the border) and outside the figures' outlines, both kept a blur's width away. Where that leaves too
    little (two figures in a small picture fill it), the margin shrinks, and as a last resort the whole inside
    of the frame line is used: the median still follows the background when figures cover less than half."""
    sil = _silhouettes(width, height, n)
    b = frame_width(width, height)
    wide = max(1, round(min(width, height) / 64))
    for grow in sorted({wide, wide // 2, 0}, reverse=True):
        near = sil.filter(ImageFilter.MaxFilter(2 * grow + 1)) if grow else sil
        inner = np.zeros((height, width), bool)
        inner[b + grow : height - b - grow, b + grow : width - b - grow] = True
        mask = (np.asarray(near) == 0) & inner
        if mask.sum() >= MIN_BACKGROUND_PIXELS * width * height:
            return mask
    return inner


def _read_background(arr: np.ndarray, n: int) -> tuple[str | None, float]:
    h, w = arr.shape[:2]
    mask = _background_mask(w, h, n)
    pixels = _soften(arr, BACKGROUND_BLUR, mask)[mask]  # N x 3
    grain = float(np.median(np.linalg.norm(arr[mask] - pixels, axis=1)))
    tpl = _templates(w, h)[:, :, mask]  # K x L x N x 3
    per_pixel = np.linalg.norm(tpl - pixels, axis=3)  # K x L x N
    for k, kind in enumerate(TEMPLATE_BACKGROUNDS):
        for colour in BACKGROUND_DECORATIONS.get(kind, ()):
            deco = np.linalg.norm(pixels - np.asarray(colour, np.float32), axis=1) + DECORATION_PENALTY
            np.minimum(per_pixel[k], deco, out=per_pixel[k])
    dist = np.median(per_pixel, axis=2).min(axis=1)
    k = int(np.argmin(dist))
    d = float(dist[k])
    readable = d <= BACKGROUND_MAX_DISTANCE and grain <= BACKGROUND_MAX_GRAIN
    return (TEMPLATE_BACKGROUNDS[k] if readable else None), d


# ----------------------------------------------------------------------------------------------------- public


def read_picture(img: Image.Image | np.ndarray) -> PictureReading:
    """Read background, hair, eyes, number of figures and the hakuframe frame off a demo-style picture.

    `img` is a PIL image or an HxWx3 uint8 array, at least 64 px on each side (the demo model draws 128 x 128).
    Raises ValueError / TypeError for anything else.
    """
    arr = _as_array(img)
    frame_d = _frame_distance(arr)
    figures = _read_figures(arr)
    background, bg_d = _read_background(arr, figures.count)

    hair = eyes = None
    hair_d = eye_d = None
    if figures.count:
        hair_colour = _median(np.stack(figures.fringes))
        name, hair_d = _nearest(hair_colour, HAIR_COLOURS)
        hair = name if hair_d <= COLOUR_MAX_DISTANCE else None
        name, eye_d = _nearest_eye(_eye_colour(arr, figures.found))
        eyes = name if eye_d <= COLOUR_MAX_DISTANCE else None
    return PictureReading(
        background=background,
        hair=hair,
        eyes=eyes,
        count=figures.count,
        has_concept=frame_d <= FRAME_MAX_DISTANCE,
        background_distance=bg_d,
        hair_distance=hair_d,
        eye_distance=eye_d,
        face_score=figures.score,
        frame_distance=frame_d,
    )


def _tag_names(tags: Iterable[str]) -> list[str]:
    """Raw tag names from tag names or caption text (`blonde hair` -> `blonde_hair`)."""
    return [t.strip().replace(" ", "_") for t in tags if t.strip()]


def expected_picture(tags: Iterable[str]) -> ExpectedPicture:
    """What render_post_image draws for these tags, in the reader's terms.

    background: None when the generator draws no fixed picture for it (no background tag, gradient_background);
    hair / eyes: None when no figure shows them (no figures, no colour tag, or eyes drawn closed)."""
    names = _tag_names(tags)
    tagset = set(names)
    count = figure_count(names)
    girls, boys, _ = figure_counts(tagset)
    people = girls + boys > 0  # blob creatures (`1other`) have eyes but no hair
    kind = background_kind(tagset)
    hair = next((t for t in names if t in HAIR_COLOURS), None) if people else None
    eyes = next((t for t in names if t in EYE_COLOURS), None) if count else None
    if tagset & _NO_EYE_COLOUR_TAGS:
        eyes = None
    return ExpectedPicture(
        background=kind if kind in TEMPLATE_BACKGROUNDS else None,
        hair=hair,
        eyes=eyes,
        count=count,
        has_concept=CONCEPT_ARTIST in tagset,
    )


def score(img: Image.Image | np.ndarray | PictureReading, expected_tags: Iterable[str]) -> dict[str, bool]:
    """Per attribute, whether the picture shows what `expected_tags` ask for.

    Keys are the attributes the tags determine (see ATTRIBUTES): `count` and `concept` always, `background`,
    `hair` and `eyes` only when the tags fix one. Tags may be raw names or caption text."""
    reading = img if isinstance(img, PictureReading) else read_picture(img)
    want = expected_picture(expected_tags)
    out: dict[str, bool] = {}
    if want.background is not None:
        out["background"] = reading.background == want.background
    if want.hair is not None:
        out["hair"] = reading.hair == want.hair
    if want.eyes is not None:
        out["eyes"] = reading.eyes == want.eyes
    out["count"] = reading.count == want.count
    out["concept"] = reading.has_concept == want.has_concept
    return out


@dataclass(frozen=True)
class ReadBackAccuracy:
    """Per attribute: how many pictures were scored on it and how many read back right."""

    right: dict[str, int]
    scored: dict[str, int]

    def accuracy(self, attribute: str) -> float:
        """Fraction right (0..1); raises KeyError when no picture was scored on `attribute`."""
        n = self.scored[attribute]
        return self.right[attribute] / n

    def as_dict(self) -> dict[str, float]:
        return {k: self.accuracy(k) for k in ATTRIBUTES if self.scored.get(k)}


def aggregate(scores: Iterable[Mapping[str, bool]]) -> ReadBackAccuracy:
    """Sum per-picture `score` results into per-attribute accuracy."""
    right: dict[str, int] = {}
    scored: dict[str, int] = {}
    for s in scores:
        for k, ok in s.items():
            scored[k] = scored.get(k, 0) + 1
            right[k] = right.get(k, 0) + int(ok)
    return ReadBackAccuracy(right, scored)


def read_back_accuracy(
    pictures: Iterable[tuple[Image.Image | np.ndarray, Iterable[str]]],
) -> ReadBackAccuracy:
    """Accuracy of a set of (picture, the tags it was drawn for) pairs."""
    return aggregate(score(img, tags) for img, tags in pictures)


# ----------------------------------------------------------------------------------------------------- prompt set

# Seven of each, chosen for the largest smallest colour distance inside the set, so chance is 1/7 (<= 15 %).
PROMPT_HAIRS = (
    "blonde_hair",
    "black_hair",
    "purple_hair",
    "white_hair",
    "red_hair",
    "green_hair",
    "aqua_hair",
)
PROMPT_BACKGROUNDS = (
    "white_background",
    "grey_background",
    "black_background",
    "pink_background",
    "blue_background",
    "yellow_background",
    "red_background",
)
# Count tags as demo posts carry them (demo_db.COUNT_PATTERNS).
PROMPT_COUNTS = (("1girl", "solo"), ("2girls", "multiple_girls"), ("3girls", "multiple_girls"))
_PER_SEED = len(PROMPT_HAIRS) * len(PROMPT_BACKGROUNDS) * len(PROMPT_COUNTS)


def demo_prompt_tags(
    hair: str, background: str, count: Sequence[str], concept: bool = False
) -> tuple[str, ...]:
    """Tags of a read-back prompt in the card's caption order: count tags, artist, then general tags."""
    artist = (CONCEPT_ARTIST,) if concept else ()
    return (count[0], *artist, *count[1:], hair, background, "simple_background")


def demo_prompt_set(
    seeds: Sequence[int] = (0, 1, 2), *, concept: bool = False, size: int | None = None
) -> list[DemoPrompt]:
    """The fixed read-back prompt set: hair colour x background x count (7 x 7 x 3) for each seed.

    Ordered so that every run of 21 prompts from the start holds each hair colour, each background and each count
    equally often (21 = lcm of 7 and 3), and each block of 147 is the full product. `size` keeps the first `size`
    prompts; `concept` adds the hakuframe artist tag to every prompt. Prompt text is caption text (`blonde hair`),
    as the trainer's captions write tags."""
    out: list[DemoPrompt] = []
    for seed in seeds:
        for i in range(_PER_SEED):
            # i -> (i mod 7, i mod 3) runs through all 21 hair/count pairs in each block of 21 (7 and 3 are
            # coprime); shifting the background by the block number makes each block pair every hair with another
            # background, so the 7 blocks cover the whole product.
            hair = PROMPT_HAIRS[i % 7]
            count = PROMPT_COUNTS[i % 3]
            background = PROMPT_BACKGROUNDS[(i % 7 + i // 21) % 7]
            tags = demo_prompt_tags(hair, background, count, concept)
            out.append(DemoPrompt(", ".join(tag_to_caption_text(t) for t in tags), tags, seed))
    return out[:size] if size is not None else out


__all__ = [
    "ATTRIBUTES",
    "PROMPT_BACKGROUNDS",
    "PROMPT_COUNTS",
    "PROMPT_HAIRS",
    "DemoPrompt",
    "ExpectedPicture",
    "PictureReading",
    "ReadBackAccuracy",
    "aggregate",
    "demo_prompt_set",
    "demo_prompt_tags",
    "expected_picture",
    "read_back_accuracy",
    "read_picture",
    "score",
]
