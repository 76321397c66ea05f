"""The summary of a dataset build: how many posts were selected, written and skipped, and their distributions.

Computed from manifest records at the end of a build (stored in kxl-dataset.toml) and recomputed by
`kxl dataset stats DIR` from an existing dataset folder.

File names: our description of a build is `kxl-dataset.toml`. Earlier versions called it `dataset.toml`, which is
the name sd-scripts users give their own dataset configs (and sd-scripts rejects ours when given one as
`--dataset_config`); that name is still read (`dataset_file`). Beside it a build writes `sd-scripts-dataset.toml`,
a config sd-scripts accepts as is (sd_scripts_config.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from ..errors import KxlError
from .captions import QUALITY_LABELS, YEAR_TAGS

RATING_LABELS = ("general", "sensitive", "questionable", "explicit")
DATASET_FILE = "kxl-dataset.toml"
LEGACY_DATASET_FILE = "dataset.toml"  # what builds before the rename wrote; read, never written
SD_SCRIPTS_FILE = "sd-scripts-dataset.toml"
MANIFEST_FILE = "manifest.jsonl"
SKIPPED_FILE = "skipped.jsonl"


def dataset_file(folder: str | Path) -> Path:
    """The build description of a dataset folder: `kxl-dataset.toml`, else a `dataset.toml` written by an older
    version; the new name when there is neither. Its presence means "finished dataset" (export.py)."""
    folder = Path(folder)
    current = folder / DATASET_FILE
    if current.is_file():
        return current
    legacy = folder / LEGACY_DATASET_FILE
    return legacy if legacy.is_file() else current


def is_finished_dataset(folder: str | Path) -> bool:
    """Whether `folder` holds a finished build (its description file exists, under either name)."""
    return dataset_file(folder).is_file()


@dataclass
class DatasetSummary:
    selected: int = 0
    written: int = 0
    missing: int = 0
    corrupt: int = 0
    bytes_written: int = 0
    per_rating: dict[str, int] = field(default_factory=dict)
    per_quality: dict[str, int] = field(default_factory=dict)
    per_year: dict[str, int] = field(default_factory=dict)
    missing_ids: list[int] = field(default_factory=list)
    corrupt_items: list[dict] = field(default_factory=list)  # {"id", "reason", "shard"}
    shard_errors: list[dict] = field(default_factory=list)  # {"shard", "reason"}
    ignored_files: list[str] = field(default_factory=list)  # names in the images folder that were not used

    def to_toml_dict(self) -> dict:
        return {
            "selected": self.selected,
            "written": self.written,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "bytes_written": self.bytes_written,
            "per_rating": dict(self.per_rating),
            "per_quality": dict(self.per_quality),
            "per_year": dict(self.per_year),
            "shard_errors": [dict(e) for e in self.shard_errors],
            "ignored_files": list(self.ignored_files),
        }


def _ordered(counter: Counter, order: Iterable[str]) -> dict[str, int]:
    order = list(order)
    out = {k: counter[k] for k in order if counter.get(k)}
    for k in sorted(set(counter) - set(order)):
        out[k] = counter[k]
    return out


def summarize(written: list[dict], skipped: list[dict], selected: int) -> DatasetSummary:
    """Summary from manifest records (`rating`, `quality`, `year` labels) and skipped records (`status`)."""
    s = DatasetSummary(selected=selected, written=len(written))
    s.per_rating = _ordered(Counter(r["rating"] for r in written), RATING_LABELS)
    s.per_quality = _ordered(Counter(r["quality"] or "none" for r in written), (*QUALITY_LABELS, "none"))
    s.per_year = _ordered(Counter(r["year"] or "none" for r in written), (*YEAR_TAGS, "none"))
    s.bytes_written = sum(int(r.get("bytes", 0)) for r in written)
    for r in skipped:
        if r["status"] == "missing":
            s.missing_ids.append(int(r["id"]))
        else:
            s.corrupt_items.append(
                {"id": int(r["id"]), "reason": r.get("reason", ""), "shard": r.get("shard", "")}
            )
    s.missing, s.corrupt = len(s.missing_ids), len(s.corrupt_items)
    return s


def summarize_counts(selected: int, written: int, bytes_written: int, ratings: Counter, qualities: Counter,
                     years: Counter, missing_ids: list[int], corrupt_items: list[dict]) -> DatasetSummary:  # fmt: skip
    """The summary `summarize` gives, from label counts (quality and year None counted as "none") instead of a
    million manifest records (a reference build counts while it writes)."""
    s = DatasetSummary(selected=selected, written=written, bytes_written=bytes_written)
    s.per_rating = _ordered(ratings, RATING_LABELS)
    s.per_quality = _ordered(qualities, (*QUALITY_LABELS, "none"))
    s.per_year = _ordered(years, (*YEAR_TAGS, "none"))
    s.missing_ids, s.corrupt_items = list(missing_ids), list(corrupt_items)
    s.missing, s.corrupt = len(s.missing_ids), len(s.corrupt_items)
    return s


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise KxlError(f"line {lineno} is not valid JSON ({exc.msg})", path=path) from None
    except FileNotFoundError:
        raise KxlError("file missing; the dataset is incomplete", path=path) from None
    return out


def _written_records(folder: Path) -> list[dict]:
    """The written images' records: manifest.jsonl's, or, for a referenced dataset (no manifest; image_refs.py),
    the same records composed from its reference table and captions."""
    from .image_refs import is_reference_dataset, iter_reference_records

    if is_reference_dataset(folder):
        return [r.record for r in iter_reference_records(folder, records=True)]
    return read_jsonl(folder / MANIFEST_FILE)


def dataset_stats(folder: str | Path) -> tuple[dict, DatasetSummary]:
    """(kxl-dataset.toml contents, summary recomputed from manifest.jsonl, or a referenced dataset's table, and
    skipped.jsonl) of a finished dataset.

    A `dataset.toml` from an older version is read the same way; one that is not ours (an sd-scripts config has
    no `schema_version`) is reported as such."""
    folder = Path(folder)
    info_path = dataset_file(folder)
    if not info_path.is_file():
        if (folder / ".kxl-build").is_dir():
            raise KxlError(
                f"holds an unfinished build (no {DATASET_FILE} yet)",
                path=folder,
                hint="run the same `kxl dataset build` again to resume it",
            )
        raise KxlError(f"not a dataset folder: {DATASET_FILE} is missing", path=folder)
    try:
        info = tomllib.loads(info_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise KxlError(f"not a valid TOML file ({exc})", path=info_path) from None
    if info_path.name == LEGACY_DATASET_FILE and "schema_version" not in info:
        raise KxlError(
            f"not a dataset folder: {LEGACY_DATASET_FILE} here is not a Kohaku XL build description "
            f"(an sd-scripts dataset config?) and {DATASET_FILE} is missing",
            path=folder,
        )
    written = _written_records(folder)
    skipped = read_jsonl(folder / SKIPPED_FILE) if (folder / SKIPPED_FILE).exists() else []
    selected = int(info.get("summary", {}).get("selected", len(written) + len(skipped)))
    summary = summarize(written, skipped, selected)
    stored = info.get("summary", {})
    summary.shard_errors = list(stored.get("shard_errors", []))
    summary.ignored_files = list(stored.get("ignored_files", []))
    return info, summary


def format_summary(summary: DatasetSummary) -> str:
    lines = [
        f"selected: {summary.selected:,}",
        f"written:  {summary.written:,}  ({summary.bytes_written / 2**20:,.1f} MiB of images)",
        f"missing images: {summary.missing:,}",
        f"corrupt members: {summary.corrupt:,}",
    ]
    for title, table in (
        ("rating", summary.per_rating),
        ("quality", summary.per_quality),
        ("year", summary.per_year),
    ):
        lines.append(f"per {title}: " + (", ".join(f"{k} {v:,}" for k, v in table.items()) or "-"))
    if summary.missing_ids:
        head = ", ".join(str(i) for i in summary.missing_ids[:20])
        more = f" (+{len(summary.missing_ids) - 20:,} more)" if len(summary.missing_ids) > 20 else ""
        lines.append(f"missing ids: {head}{more}")
    for item in summary.corrupt_items[:20]:
        lines.append(f"corrupt: post {item['id']} in {item['shard']}: {item['reason']}")
    for err in summary.shard_errors:
        lines.append(f"unreadable: {err['shard']}: {err['reason']}")
    if summary.ignored_files:
        lines.append("ignored in the images folder: " + ", ".join(summary.ignored_files[:10]))
    return "\n".join(lines)
