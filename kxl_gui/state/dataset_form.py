"""The Dataset wizard's inputs: source, selection (id ranges, seed, filters), captions and output.

`to_engine()` is the `BuildOptions` that `kxl dataset build` would make from the same choices, so the wizard
and the CLI write identical folders; `from_engine(options)` shows a request in the wizard. The id ranges are
kept as the text the user typed (a half-typed "3,000," must not vanish), parsed in `selection_plan()` with
errors that name the row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer_core.dataset.export import BuildOptions
from trainer_core.dataset.filters import PostFilters, split_tags
from trainer_core.dataset.selection import PRESETS, IdRange, SelectionPlan
from trainer_core.errors import KxlError

CUSTOM_PRESET = "custom"
DEFAULT_PRESET = "kohaku-xl-delta"
RATINGS = ("general", "sensitive", "questionable", "explicit")  # index = the DB's rating code
QUALITY_SCHEMES = ("card", "hakubooru", "db")
IMAGE_FORMATS = ("copy", "webp", "png", "jpg")
IMAGE_MODES = ("copy", "reference")  # write the images into the folder, or reference them inside the shards
PIXEL_BUDGETS: tuple[tuple[str, int | None], ...] = (
    ("keep size", None),
    ("1024 × 1024 area", 1024 * 1024),
    ("1536 × 1536 area", 1536 * 1536),
    ("2048 × 2048 area", 2048 * 2048),
)
OFF = -1  # minimum score / favourites: the spin boxes' "off"


@dataclass
class RangeRow:
    """One id range as typed: start, end (exclusive; empty = no end), count (empty or "all" = every post)."""

    start: str = "0"
    stop: str = ""
    count: str = ""

    @classmethod
    def of(cls, r: IdRange) -> RangeRow:
        return cls(
            str(r.start), "" if r.stop is None else str(r.stop), "" if r.count is None else str(r.count)
        )

    def cells(self) -> tuple[str, str, str]:
        return (self.start, self.stop, self.count)

    def parse(self, row_number: int) -> IdRange:
        def number(text: str) -> str:
            return text.strip().replace(",", "").replace("_", "")

        start, stop, count = (number(c) for c in self.cells())
        try:
            return IdRange(
                int(start or 0), int(stop) if stop else None, None if count in ("", "all") else int(count)
            )
        except ValueError:
            raise KxlError(f"range row {row_number}: start, end and count must be whole numbers") from None


def _preset_rows(name: str) -> list[RangeRow]:
    return [RangeRow.of(r) for r in PRESETS[name].ranges]


@dataclass
class DatasetForm:
    # source
    db: str = ""
    images: str = ""
    # selection
    ranges: list[RangeRow] = field(default_factory=lambda: _preset_rows(DEFAULT_PRESET))
    seed: int = 1
    skip_deleted: bool = True
    skip_banned: bool = True
    images_only: bool = True
    ratings: list[bool] = field(default_factory=lambda: [True] * len(RATINGS))
    min_score: int = OFF
    min_fav: int = OFF
    tags_any: str = ""
    tags_all: str = ""
    tags_none: str = ""
    # captions
    quality: str = "card"
    # output
    out: str = ""
    repeats: int = 1
    name: str = "kxl"
    image_mode: str = "copy"  # "reference": no image copied; format and pixel budget then do not apply
    image_format: str = "copy"
    max_pixels: int | None = None
    workers: int = 4  # shards exported in parallel (an argument of build_dataset, not part of BuildOptions)

    # ---- selection ----------------------------------------------------------------------------------------
    @property
    def preset(self) -> str:
        """The preset whose id ranges the form holds, or "custom". Derived, so it never disagrees with them."""
        try:
            ranges = self.parsed_ranges()
        except KxlError:
            return CUSTOM_PRESET
        return next((n for n, plan in PRESETS.items() if plan.ranges == ranges), CUSTOM_PRESET)

    def apply_preset(self, name: str) -> None:
        """The preset's id ranges and seed (filters, captions and output stay as they are)."""
        if name not in PRESETS:
            raise KxlError(f"unknown selection preset {name!r}; choose one of {', '.join(PRESETS)}")
        self.ranges = _preset_rows(name)
        self.seed = PRESETS[name].seed

    def set_range_cell(self, row: int, column: int, text: str) -> None:
        cells = list(self.ranges[row].cells())
        cells[column] = text
        self.ranges[row] = RangeRow(*cells)

    def add_range(self) -> None:
        """A new row from where the last one ends (or 0), to the end, every post."""
        start = "0"
        if self.ranges:
            last = self.ranges[-1]
            start = last.stop.strip() or "0"
        self.ranges.append(RangeRow(start, "", ""))

    def remove_range(self, row: int) -> None:
        if 0 <= row < len(self.ranges):
            del self.ranges[row]

    def parsed_ranges(self) -> tuple[IdRange, ...]:
        return tuple(r.parse(i + 1) for i, r in enumerate(self.ranges))

    def selection_plan(self) -> SelectionPlan:
        """The ranges and seed; named after the preset when the ranges are the preset's (as `--preset`)."""
        ranges = self.parsed_ranges()
        preset = self.preset
        return SelectionPlan(ranges, self.seed, None if preset == CUSTOM_PRESET else preset)

    def post_filters(self) -> PostFilters:
        if len(self.ratings) != len(RATINGS):
            raise KxlError(f"ratings: expected {len(RATINGS)} on/off values, got {len(self.ratings)}")
        ratings = tuple(i for i, on in enumerate(self.ratings) if on)
        return PostFilters(
            skip_deleted=self.skip_deleted,
            skip_banned=self.skip_banned,
            images_only=self.images_only,
            ratings=None if len(ratings) == len(RATINGS) else ratings,
            min_score=None if self.min_score < 0 else self.min_score,
            min_fav_count=None if self.min_fav < 0 else self.min_fav,
            tags_any=split_tags(self.tags_any),
            tags_all=split_tags(self.tags_all),
            tags_none=split_tags(self.tags_none),
        )

    # ---- source and output --------------------------------------------------------------------------------
    def source_paths(self) -> tuple[Path, Path]:
        db, images = self.db.strip(), self.images.strip()
        if not db:
            raise KxlError("choose the metadata DB (danbooru2023.db)")
        if not images:
            raise KxlError("choose the images folder (data-NXYZ.tar shards or <id>.<ext> files)")
        return Path(db).expanduser(), Path(images).expanduser()

    def out_path(self) -> Path | None:
        out = self.out.strip()
        return Path(out).expanduser() if out else None

    def subfolder(self) -> str:
        """The kohya folder the images go in (`<repeats>_<name>`), "?" for a name not typed yet."""
        return f"{self.repeats}_{self.name.strip() or '?'}"

    def use_workspace(self, db: Path | None, images: Path | None, datasets: Path) -> None:
        """The workspace's DB and images as the source, a folder in its datasets folder as the output."""
        if db is not None:
            self.db = str(db)
        if images is not None:
            self.images = str(images)
        self.out = str(datasets / DEFAULT_PRESET)

    # ---- engine -------------------------------------------------------------------------------------------
    def to_engine(self) -> BuildOptions:
        """The build request; KxlError names the first input that is missing or wrong."""
        db, images = self.source_paths()
        out = self.out_path()
        if out is None:
            raise KxlError("choose the dataset folder")
        if self.quality not in QUALITY_SCHEMES:
            raise KxlError(f"quality tags {self.quality!r}: choose one of {', '.join(QUALITY_SCHEMES)}")
        if self.workers < 1:
            raise KxlError(f"shards in parallel must be at least 1 (got {self.workers})")
        if self.image_mode not in IMAGE_MODES:
            raise KxlError(f"images {self.image_mode!r}: choose one of {', '.join(IMAGE_MODES)}")
        reference = self.image_mode == "reference"
        opts = BuildOptions(
            db=db,
            images=images,
            out=out,
            plan=self.selection_plan(),
            filters=self.post_filters(),
            quality=self.quality,
            repeats=self.repeats,
            name=self.name.strip(),
            # a reference build keeps the shard bytes as they are: the (greyed-out) format and budget stay in the
            # form for a switch back to copy, and are not part of the request
            image_format="copy" if reference else self.image_format,
            max_pixels=None if reference else self.max_pixels,
            image_mode=self.image_mode,
        )
        opts.validate()
        return opts

    @classmethod
    def from_engine(cls, opts: BuildOptions, workers: int = 4) -> DatasetForm:
        """The form that `to_engine()`s back to `opts`."""
        f = opts.filters
        ratings = (
            [True] * len(RATINGS) if f.ratings is None else [i in f.ratings for i in range(len(RATINGS))]
        )
        return cls(
            db=str(opts.db),
            images=str(opts.images),
            ranges=[RangeRow.of(r) for r in opts.plan.ranges],
            seed=opts.plan.seed,
            skip_deleted=f.skip_deleted,
            skip_banned=f.skip_banned,
            images_only=f.images_only,
            ratings=ratings,
            min_score=OFF if f.min_score is None else f.min_score,
            min_fav=OFF if f.min_fav_count is None else f.min_fav_count,
            tags_any=", ".join(f.tags_any),
            tags_all=", ".join(f.tags_all),
            tags_none=", ".join(f.tags_none),
            quality=opts.quality,
            out=str(opts.out),
            repeats=opts.repeats,
            name=opts.name,
            image_mode=opts.image_mode,
            image_format=opts.image_format,
            max_pixels=opts.max_pixels,
            workers=workers,
        )

    def copy(self) -> DatasetForm:
        """An independent copy (a job gets a snapshot the user's next edit cannot change)."""
        return replace(self, ranges=[replace(r) for r in self.ranges], ratings=list(self.ratings))
