"""What a workspace holds, gathered for the GUI's Workspace page and `kxl workspace show`.

Every part (DB, images, each checkpoint, datasets, runs) is summarised on its own: a broken DB or a truncated
checkpoint is recorded as that part's error message, so one bad file never hides the rest of the workspace.
Only headers and directory listings are read (no torch import, no hashing), so a summary of a workspace with
7 GB checkpoints and a 1.4 TB shard folder still takes well under a second.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import KxlError
from .progress import format_bytes  # noqa: F401 - re-exported for the GUI
from .workspace import CHECKPOINT_ROLES, Workspace

if TYPE_CHECKING:
    from .models.checkpoint_info import CheckpointInfo

IMAGE_SUFFIXES = {".webp", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".avif"}
SHARD_NAME = re.compile(r"data-(\d+)\.tar$")
KOHYA_FOLDER = re.compile(r"(\d+)_(.+)$")
MANIFEST_FILE = "manifest.jsonl"
REFERENCED_CAPTIONS_FILE = "captions.jsonl"  # dataset/ref_table.py CAPTIONS_FILE (no numpy import here)
EVENTS_FILE = "events.jsonl"
RUN_CONFIG_FILE = "config.toml"


@dataclass
class DbSummary:
    path: Path | None
    counts: dict[str, int] = field(default_factory=dict)  # table -> rows
    error: str | None = None


@dataclass
class ImageSourceSummary:
    path: Path | None
    kind: str = "none"  # "tar-shards" | "folder" | "none"
    shard_count: int = 0
    total_bytes: int = 0  # size of the shards (tar-shards) or of the image files (folder)
    image_count: int = 0  # plain folders only: shards are not opened just to count members
    error: str | None = None


@dataclass
class CheckpointSummary:
    role: str
    path: Path
    info: CheckpointInfo | None = None
    error: str | None = None

    @property
    def problem(self) -> str | None:
        """The error, or the header-level problem describe_checkpoint found (e.g. not SDXL)."""
        if self.error:
            return self.error
        return self.info.problem if self.info is not None else None


@dataclass
class DatasetSummary:
    name: str
    path: Path
    layout: str  # "kohya" (N_name folders) or "manifest" (manifest.jsonl, or a referenced captions.jsonl)
    image_count: int


@dataclass
class RunSummary:
    name: str
    path: Path
    state: str  # from the last event: "running", "done", "error: ...", or "not started"
    step: int | None = None


@dataclass
class WorkspaceSummary:
    root: Path
    name: str
    kind: str
    db: DbSummary
    images: ImageSourceSummary
    checkpoints: list[CheckpointSummary]
    datasets: list[DatasetSummary]
    runs: list[RunSummary]
    datasets_error: str | None = None
    runs_error: str | None = None


def summarize_workspace(ws: Workspace) -> WorkspaceSummary:
    """Summarise every part of `ws`; failures are recorded per part, never raised."""
    datasets, datasets_error = _guard(lambda: summarize_datasets(ws.datasets_path), [])
    runs, runs_error = _guard(lambda: summarize_runs(ws.runs_path), [])
    return WorkspaceSummary(
        root=ws.root,
        name=ws.name,
        kind=ws.kind,
        db=summarize_db(ws.db_path),
        images=summarize_images(ws.images_path),
        checkpoints=summarize_checkpoints(ws),
        datasets=datasets,
        runs=runs,
        datasets_error=datasets_error,
        runs_error=runs_error,
    )


def _guard(fn, fallback):
    try:
        return fn(), None
    except KxlError as exc:
        return fallback, str(exc)
    except OSError as exc:
        return fallback, _os_message(exc)


def _os_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or exc.__class__.__name__
    return f"{name}: {reason}" if name else reason


def summarize_db(path: Path | None) -> DbSummary:
    if path is None:
        return DbSummary(None, error="no metadata DB set in workspace.toml ([paths] db)")
    from .danbooru.schema import table_counts  # sqlite only, but kept off the import path of the GUI start

    try:
        return DbSummary(path, counts=dict(table_counts(path)))
    except KxlError as exc:
        return DbSummary(path, error=str(exc))
    except OSError as exc:
        return DbSummary(path, error=_os_message(exc))


def summarize_images(path: Path | None) -> ImageSourceSummary:
    if path is None:
        return ImageSourceSummary(None, error="no image folder set in workspace.toml ([paths] images)")
    if not path.exists():
        return ImageSourceSummary(path, error=f"{path}: image folder not found")
    if not path.is_dir():
        return ImageSourceSummary(path, error=f"{path}: expected a folder of data-NXYZ.tar shards or images")
    try:
        shards = _shard_files(path)
        if shards:
            return ImageSourceSummary(
                path,
                kind="tar-shards",
                shard_count=len(shards),
                total_bytes=sum(s.stat().st_size for s in shards),
            )
        count = total = 0
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                    count += 1
                    total += entry.stat().st_size
    except OSError as exc:
        return ImageSourceSummary(path, error=_os_message(exc))
    if count == 0:
        return ImageSourceSummary(path, error=f"{path}: no data-NXYZ.tar shards and no image files")
    return ImageSourceSummary(path, kind="folder", image_count=count, total_bytes=total)


def _shard_files(folder: Path) -> list[Path]:
    """Shards the way danbooru2023 lays them out: data-NXYZ.tar directly inside, plus updates/<batch>/*.tar."""
    shards = [p for p in folder.iterdir() if p.is_file() and SHARD_NAME.match(p.name)]
    updates = folder / "updates"
    if updates.is_dir():
        shards += [p for p in updates.glob("*/*.tar") if p.is_file()]
    return sorted(shards)


def _role_order(role: str) -> tuple[int, str]:
    known = (*CHECKPOINT_ROLES, "base")
    return (known.index(role) if role in known else len(known), role)


def summarize_checkpoints(ws: Workspace) -> list[CheckpointSummary]:
    from .models.checkpoint_info import describe_checkpoint  # header-only reader, never imports torch

    out = []
    for role in sorted(ws.checkpoints, key=_role_order):
        path = ws.checkpoint_path(role)
        assert path is not None  # role comes from ws.checkpoints, so it resolves
        item = CheckpointSummary(role, path)
        try:
            item.info = describe_checkpoint(path)
        except KxlError as exc:
            item.error = str(exc)
        except OSError as exc:
            item.error = _os_message(exc)
        out.append(item)
    return out


def summarize_datasets(folder: Path) -> list[DatasetSummary]:
    """Exported datasets: subfolders holding kohya `N_name` image folders and/or a manifest.jsonl."""
    if not folder.is_dir():
        return []
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        kohya = [p for p in sub.iterdir() if p.is_dir() and KOHYA_FOLDER.match(p.name)]
        manifest = sub / MANIFEST_FILE
        if not manifest.is_file():  # a referenced dataset: one captions.jsonl line per referenced image
            manifest = sub / REFERENCED_CAPTIONS_FILE
        if kohya:
            count = sum(1 for d in kohya for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            out.append(DatasetSummary(sub.name, sub, "kohya", count))
        elif manifest.is_file():
            # One JSON line per exported image; counted without parsing so a huge manifest stays cheap.
            with open(manifest, "rb") as fh:
                count = sum(1 for line in fh if line.strip())
            out.append(DatasetSummary(sub.name, sub, "manifest", count))
    return out


def summarize_runs(folder: Path) -> list[RunSummary]:
    """Training runs: subfolders holding events.jsonl and/or config.toml; state comes from the last event."""
    if not folder.is_dir():
        return []
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        events = sub / EVENTS_FILE
        if events.is_file():
            state, step = _run_state(events)
            out.append(RunSummary(sub.name, sub, state, step))
        elif (sub / RUN_CONFIG_FILE).is_file():
            out.append(RunSummary(sub.name, sub, "not started"))
    return out


def _last_event(events: Path) -> dict | None:
    """The last complete JSON line. A line being appended right now (no newline yet) is skipped."""
    with open(events, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 65536))
        tail = fh.read()
    for raw in reversed(tail.split(b"\n")):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(event, dict):
            return event
    return None


def _run_state(events: Path) -> tuple[str, int | None]:
    event = _last_event(events)
    if event is None:
        return "not started", None
    step = event.get("step") if isinstance(event.get("step"), int) else None
    kind = event.get("type")
    if kind == "done":
        return "done", step
    if kind == "error":
        message = str(event.get("message", "")).strip().splitlines()
        return (f"error: {message[0]}" if message else "error"), step
    if kind == "status":
        status = event.get("state") or event.get("status") or event.get("message")
        return (str(status) if status else "running"), step
    return "running", step


def checkpoint_kind_text(info: CheckpointInfo) -> str:
    return f"{info.kind} / {info.arch}" if info.arch else info.kind


def _display_path(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def format_summary(summary: WorkspaceSummary) -> str:
    """Plain-text report (what `kxl workspace show DIR` prints)."""
    root = summary.root
    lines = [f"Workspace  {summary.name} ({summary.kind})", f"  folder   {root}", ""]

    db = summary.db
    lines.append(f"Metadata DB  {_display_path(db.path, root) if db.path else '(not set)'}")
    if db.error:
        lines.append(f"  ERROR: {db.error}")
    else:
        width = max((len(t) for t in db.counts), default=0)
        lines += [f"  {table:<{width}}  {rows:>12,}" for table, rows in db.counts.items()]
    lines.append("")

    im = summary.images
    lines.append(f"Images  {_display_path(im.path, root) if im.path else '(not set)'}")
    if im.error:
        lines.append(f"  ERROR: {im.error}")
    elif im.kind == "tar-shards":
        lines.append(f"  {im.shard_count} tar shard(s), {format_bytes(im.total_bytes)}")
    else:
        lines.append(f"  {im.image_count:,} image file(s), {format_bytes(im.total_bytes)}")
    lines.append("")

    lines.append("Checkpoints")
    if not summary.checkpoints:
        lines.append("  (none set in workspace.toml [checkpoints])")
    name_width = max((len(_display_path(ck.path, root)) for ck in summary.checkpoints), default=0)
    for ck in summary.checkpoints:
        name = _display_path(ck.path, root)
        if ck.error or ck.info is None:
            lines.append(f"  {ck.role:<9} {name}")
            lines.append(f"            ERROR: {ck.error}")
            continue
        info = ck.info
        lines.append(
            f"  {ck.role:<9} {name:<{name_width}}  {checkpoint_kind_text(info)}  {info.dtype}  "
            f"{info.tensor_count:,} tensors  {format_bytes(info.size_bytes)}"
        )
        if info.problem:
            lines.append(f"            PROBLEM: {info.problem}")
    lines.append("")

    lines.append("Datasets")
    if summary.datasets_error:
        lines.append(f"  ERROR: {summary.datasets_error}")
    elif not summary.datasets:
        lines.append("  (none yet)")
    lines += [f"  {d.name}  {d.image_count:,} image(s)  [{d.layout}]" for d in summary.datasets]
    lines.append("")

    lines.append("Runs")
    if summary.runs_error:
        lines.append(f"  ERROR: {summary.runs_error}")
    elif not summary.runs:
        lines.append("  (none yet)")
    for r in summary.runs:
        step = f"  step {r.step:,}" if r.step is not None else ""
        lines.append(f"  {r.name}  {r.state}{step}")
    return "\n".join(lines) + "\n"
