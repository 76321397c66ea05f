"""Which posts go into a dataset: a plan of id ranges, each with a count or "all", plus a seed.

Sampling (documented, because users reproduce datasets from kxl-dataset.toml): inside a range, the posts that pass
the filters are the population. If the range asks for fewer posts than that, every post gets the key
`splitmix64(splitmix64(seed) XOR post_id)` and the `count` posts with the smallest keys are taken (ties broken by
id). This is sampling without replacement; it depends only on the seed and the ids, not on the numpy version,
on thread counts or on the order rows come back in, and a post's fate does not depend on other ranges.

The card's recipe (HakuBooru's kohaku_xl.py) draws *with* replacement and so exports fewer unique images than it
asks for (specs/dataset.md §2.3); the `kohaku-xl-delta` preset keeps the card's numbers but draws them without
replacement, as the card describes.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import KxlError
from ..progress import Progress
from .filters import PostFilters

if TYPE_CHECKING:
    from .column_cache import ColumnCache

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class IdRange:
    start: int  # inclusive
    stop: int | None = None  # exclusive; None = no upper end
    count: int | None = None  # None = every matching post

    def label(self) -> str:
        stop = "end" if self.stop is None else f"{self.stop:,}"
        what = "all" if self.count is None else f"{self.count:,}"
        return f"[{self.start:,}, {stop}) {what}"

    def to_dict(self) -> dict:
        out: dict = {"start": self.start}
        if self.stop is not None:
            out["stop"] = self.stop
        out["count"] = "all" if self.count is None else self.count
        return out

    @classmethod
    def from_dict(cls, data: dict) -> IdRange:
        count = data.get("count", "all")
        return cls(
            int(data["start"]),
            None if data.get("stop") is None else int(data["stop"]),
            None if count == "all" else int(count),
        )


@dataclass(frozen=True)
class SelectionPlan:
    ranges: tuple[IdRange, ...]
    seed: int = 1
    preset: str | None = None  # name, when the plan came from one

    def __post_init__(self) -> None:
        validate_ranges(self.ranges)

    def to_dict(self) -> dict:
        out: dict = {"seed": self.seed, "ranges": [r.to_dict() for r in self.ranges]}
        if self.preset:
            out["preset"] = self.preset
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SelectionPlan:
        return cls(
            tuple(IdRange.from_dict(r) for r in data["ranges"]), int(data.get("seed", 1)), data.get("preset")
        )


def validate_ranges(ranges: tuple[IdRange, ...]) -> None:
    if not ranges:
        raise KxlError("a selection plan needs at least one id range")
    spans = []
    for r in ranges:
        if r.start < 0 or (r.stop is not None and r.stop <= r.start):
            raise KxlError(f"id range {r.label()}: the end must be above the start, and the start >= 0")
        if r.count is not None and r.count < 0:
            raise KxlError(f"id range {r.label()}: the count must be >= 0 or 'all'")
        spans.append((r.start, r.stop if r.stop is not None else float("inf"), r))
    spans.sort(key=lambda s: s[0])
    for (_a0, a1, ra), (b0, _b1, rb) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            raise KxlError(f"id ranges {ra.label()} and {rb.label()} overlap")


# The card: 1,000,000 from [0, 3M), 1,000,000 from [3M, 5M), everything from 5M on. Seed 1 as kohaku_xl.py.
PRESETS: dict[str, SelectionPlan] = {
    "kohaku-xl-delta": SelectionPlan(
        (
            IdRange(0, 3_000_000, 1_000_000),
            IdRange(3_000_000, 5_000_000, 1_000_000),
            IdRange(5_000_000, None, None),
        ),
        seed=1,
        preset="kohaku-xl-delta",
    ),
    "all": SelectionPlan((IdRange(0, None, None),), seed=1, preset="all"),
}


def preset_plan(name: str, seed: int | None = None) -> SelectionPlan:
    try:
        plan = PRESETS[name]
    except KeyError:
        raise KxlError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return plan if seed is None else SelectionPlan(plan.ranges, seed, plan.preset)


_RANGE_RE = re.compile(r"^\s*(\d[\d_,]*)?\s*:\s*(\d[\d_,]*)?\s*(?:=\s*(all|\d[\d_,]*))?\s*$", re.IGNORECASE)


def parse_range(text: str) -> IdRange:
    """`START:STOP[=COUNT]` with STOP exclusive and optional (`5000000:` = to the end), COUNT a number or `all`."""
    m = _RANGE_RE.match(text)
    if not m:
        raise KxlError(
            f"bad id range {text!r}; write START:STOP=COUNT, e.g. 0:3000000=1000000 or 5000000:=all"
        )

    def num(s: str | None) -> int | None:
        return None if s is None else int(s.replace("_", "").replace(",", ""))

    count = m.group(3)
    return IdRange(
        num(m.group(1)) or 0, num(m.group(2)), None if count is None or count.lower() == "all" else num(count)
    )


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def sample_ids(population: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The `count` ids of `population` with the smallest keys (module docstring), sorted ascending.

    A partition, not a sort: the count-th smallest key is the threshold; every id with a smaller key is taken,
    then ids with exactly the threshold key in ascending id order until `count` is reached (the documented
    tie-break, the same result as sorting by (key, id)).
    """
    population = np.asarray(population, np.int64)
    if count >= population.size:
        return np.sort(population)
    if count <= 0:
        return np.zeros(0, np.int64)
    if population.size > 1 and np.any(population[1:] < population[:-1]):
        population = np.sort(population)  # the tie-break below walks ids in ascending order
    salt = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    keys = splitmix64(population.astype(np.uint64) ^ salt)
    threshold = np.partition(keys, count - 1)[count - 1]
    below = np.flatnonzero(keys < threshold)
    ties = np.flatnonzero(keys == threshold)
    take = np.concatenate([below, ties[: count - below.size]])
    return np.sort(population[take])


@dataclass
class RangeResult:
    range: IdRange
    matching: int
    selected: int


@dataclass
class Selection:
    ids: np.ndarray  # sorted unique post ids
    ranges: list[RangeResult] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ids.size)


def _range_sql(r: IdRange) -> tuple[str, list]:
    if r.stop is None:
        return "id >= ?", [r.start]
    return "id >= ? AND id < ?", [r.start, r.stop]


def select_posts(
    conn: sqlite3.Connection,
    plan: SelectionPlan,
    filters: PostFilters,
    db_path: str | Path | None = None,
    progress: Progress | None = None,
    cache: ColumnCache | None = None,
) -> Selection:
    """Post ids chosen by `plan` among the posts passing `filters` (deterministic; see the module docstring).

    With a DB column `cache` the filters run on its arrays (same populations, see column_cache.py), unless it
    cannot answer them exactly.
    """
    mask, where, params = _filter_source(conn, filters, db_path, cache)
    chosen: list[np.ndarray] = []
    results: list[RangeResult] = []
    for i, r in enumerate(plan.ranges):
        if progress is not None:
            progress.check_cancelled()
            progress.update(i, len(plan.ranges))
        if mask is not None:
            population = cache.population(r.start, r.stop, mask)  # type: ignore[union-attr]
        else:
            population = _population_sql(conn, r, where, params)
        picked = population if r.count is None else sample_ids(population, r.count, plan.seed)
        chosen.append(picked)
        results.append(RangeResult(r, int(population.size), int(picked.size)))
    if progress is not None:
        progress.update(len(plan.ranges), len(plan.ranges))
    # Ranges never overlap (validate_ranges) and each pick is sorted, so putting the picks in range order gives
    # the sorted, unique id list (np.unique would hash 2M ids for nothing: 0.5 s).
    starts = [r.start for r in plan.ranges]
    ids = (
        np.concatenate([chosen[i] for i in np.argsort(starts, kind="stable")]).astype(np.int64)
        if chosen
        else np.zeros(0, np.int64)
    )
    return Selection(ids, results)


def _filter_source(
    conn: sqlite3.Connection, filters: PostFilters, db_path: str | Path | None, cache: ColumnCache | None
) -> tuple[np.ndarray | None, str, list]:
    """(row mask from the column cache, or None) and, when there is no mask, the SQL condition and parameters."""
    mask = cache.filter_mask(filters, conn, db_path) if cache is not None else None
    if mask is not None:
        return mask, "", []
    return (None, *filters.where(conn, db_path))


def _population_sql(conn: sqlite3.Connection, r: IdRange, where: str, params: list) -> np.ndarray:
    rsql, rparams = _range_sql(r)
    text = conn.execute(
        f'SELECT group_concat(id) FROM (SELECT id FROM "post" WHERE {rsql} AND {where} ORDER BY id)',
        rparams + params,
    ).fetchone()[0]
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)


def estimate(
    conn: sqlite3.Connection,
    plan: SelectionPlan,
    filters: PostFilters,
    db_path: str | Path | None = None,
    cache: ColumnCache | None = None,
) -> list[RangeResult]:
    """How many posts each range matches and would select, without materialising ids (the wizard's live count)."""
    mask, where, params = _filter_source(conn, filters, db_path, cache)
    out = []
    for r in plan.ranges:
        if mask is not None:
            n = int(cache.population(r.start, r.stop, mask).size)  # type: ignore[union-attr]
        else:
            rsql, rparams = _range_sql(r)
            n = conn.execute(
                f'SELECT count(*) FROM "post" WHERE {rsql} AND {where}', rparams + params
            ).fetchone()[0]
        out.append(RangeResult(r, n, n if r.count is None else min(n, r.count)))
    return out
