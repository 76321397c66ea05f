"""Build a kohya-ready dataset folder from the metadata DB and the image shards.

Layout written into the output folder:
    <repeats>_<name>/<id>.<ext>   image: the shard bytes unchanged (default) or re-encoded
    <repeats>_<name>/<id>.txt     caption, UTF-8, one line, no newline (captions.py)
    manifest.jsonl                one record per written image, ordered by id
    skipped.jsonl                 selected posts without an image (missing / corrupt), ordered by id
    dataset.toml                  how it was built + the summary; written last: its presence means "complete"

Work is split by bucket (`id % 1000`, the shard naming): a bucket's shards are read once, front to back, in
data-0XYZ .. data-9XYZ order, and buckets run in parallel threads. When a bucket is done its records go to
`.kxl-build/buckets/bNNN.jsonl`, written only after the bucket's files are flushed to disk (durable.py); that
file is the bucket's "done" mark. An interrupted build resumes by skipping marked buckets and rewriting the
others whole, and since every output depends only on the post, the result is the same as an uninterrupted
build, whatever the thread count. Ids not found in their bucket are then looked for in `updates/*/*.tar`.
Images and captions are written straight to their final names (a cancel stops between files; a failed write
removes its partial file): until dataset.toml exists the folder is an unfinished build, never a dataset.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tomli_w

from .. import __version__
from ..atomic import atomic_write_text
from ..danbooru.db_reader import db_fingerprint, fetch_chunk, open_db
from ..errors import Cancelled, KxlError
from ..progress import Progress, ensure_progress
from .caption_stream import iter_caption_chunks
from .captions import QUALITY_LABELS, YEAR_TAGS, CaptionBuilder, CaptionChunk, QualityScheme, quality_scheme
from .column_cache import ColumnCache, column_cache_for
from .durable import MarkWriter, write_new_file
from .filters import PostFilters
from .image_header import image_size
from .images import BUCKETS, Hit, ImageSource, ShardReadError, open_image_source, read_folder_file, scan_tar
from .selection import SelectionPlan, select_posts
from .stats import DATASET_FILE, MANIFEST_FILE, RATING_LABELS, SKIPPED_FILE, DatasetSummary, summarize

BUILD_DIR = ".kxl-build"
IMAGE_FORMATS = ("copy", "webp", "png", "jpg")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
_FORMAT_EXT = {"webp": "webp", "png": "png", "jpg": "jpg", "jpeg": "jpg"}
_PIL_FORMAT = {"webp": "WEBP", "png": "PNG", "jpg": "JPEG"}


class PartialBuildError(KxlError):
    """The output folder holds an interrupted build with the same options; the caller decides: resume or restart."""


@dataclass(frozen=True)
class BuildOptions:
    db: Path
    images: Path
    out: Path
    plan: SelectionPlan
    filters: PostFilters = field(default_factory=PostFilters)
    quality: str = "card"
    repeats: int = 1
    name: str = "kxl"
    image_format: str = "copy"  # copy = the shard bytes unchanged
    max_pixels: int | None = None  # re-encode images with a larger area down to this many pixels
    verify_images: bool = False  # decode every image fully (slow) instead of reading its header

    def validate(self) -> None:
        if self.repeats < 1:
            raise KxlError(f"repeats must be at least 1 (got {self.repeats})")
        if not _NAME_RE.fullmatch(self.name):
            raise KxlError(f"dataset name {self.name!r}: use letters, digits, space, . _ + - (max 64)")
        if self.image_format not in IMAGE_FORMATS:
            raise KxlError(f"image format {self.image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}")
        if self.max_pixels is not None and self.max_pixels < 64 * 64:
            raise KxlError(f"pixel budget {self.max_pixels} is too small (at least 4096)")

    @property
    def subfolder(self) -> str:
        return f"{self.repeats}_{self.name}"

    def describe(self, fingerprint: str, scheme: QualityScheme) -> dict:
        """Everything that determines the output; stored in dataset.toml and compared on resume."""
        output: dict = {
            "folder": self.subfolder,
            "repeats": self.repeats,
            "name": self.name,
            "image_format": self.image_format,
            "verify_images": self.verify_images,
        }
        if self.max_pixels is not None:
            output["max_pixels"] = self.max_pixels
        return {
            "schema_version": 1,
            "created_by": f"kohaku-xl-workbench {__version__}",
            "source": {
                "db": str(self.db.resolve()),
                "db_fingerprint": fingerprint,
                "images": str(self.images.resolve()),
            },
            "selection": self.plan.to_dict(),
            "filters": self.filters.to_dict(),
            "captions": {"format": "hakubooru", "keep_separator": "|||", **scheme.to_dict()},
            "output": output,
        }


@dataclass
class BuildResult:
    out: Path
    summary: DatasetSummary
    resumed_buckets: int = 0


# ---- output folder state ----------------------------------------------------------------------------------------
def partial_build_info(out: str | Path) -> dict | None:
    """The stored options of an interrupted build in `out`, or None."""
    path = Path(out) / BUILD_DIR / "options.toml"
    if not path.is_file() or (Path(out) / DATASET_FILE).exists():
        return None
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None


def _check_output(out: Path, wanted: dict, on_partial: str, subfolder: str) -> bool:
    """Validate the output folder; returns True when an interrupted build is resumed."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise KxlError("output path exists and is not a folder", path=out)
    if (out / DATASET_FILE).exists():
        raise KxlError(
            "already holds a finished dataset (dataset.toml)",
            path=out,
            hint="choose an empty folder, or delete this dataset first",
        )
    stored_path = out / BUILD_DIR / "options.toml"
    if stored_path.is_file():
        stored = partial_build_info(out)
        if stored != wanted:
            raise KxlError(
                "holds an interrupted build made with other options (or another DB)",
                path=out,
                hint="use the same options to resume it, or choose another folder",
            )
        if on_partial == "resume":
            return True
        if on_partial == "restart":
            for rel in (BUILD_DIR, subfolder, MANIFEST_FILE, SKIPPED_FILE):
                target = out / rel
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            return False
        raise PartialBuildError(
            "holds an interrupted build with these options",
            path=out,
            hint="resume it (or restart it from scratch)",
        )
    if any(out.iterdir()):
        raise KxlError(
            "folder is not empty and holds no dataset build",
            path=out,
            hint="datasets are written into an empty or new folder",
        )
    return False


# ---- per-post image handling -------------------------------------------------------------------------------------
def _prepare_image(hit: Hit, opts: BuildOptions) -> tuple[bytes, str, int, int]:
    """(bytes to write, extension, width, height); raises ValueError for an image that does not decode."""
    assert hit.data is not None
    if opts.image_format == "copy" and not opts.verify_images:
        # Copying needs only the size: read it from the header (~1 us instead of ~120 us for Image.open on a
        # 400 KB WebP). image_size gives a size only where Image.open would give the same one; anything else
        # (unknown format, damaged header, huge image) takes the Pillow path below, so what is reported
        # corrupt does not change.
        found = image_size(hit.data)
        if found is not None:
            _fmt, width, height = found
            if opts.max_pixels is None or width * height <= opts.max_pixels:
                return hit.data, ("jpg" if hit.ext == "jpeg" else hit.ext), width, height

    from PIL import Image

    with Image.open(io.BytesIO(hit.data)) as img:
        width, height = img.size
        over = opts.max_pixels is not None and width * height > opts.max_pixels
        if opts.image_format == "copy" and not over:
            if opts.verify_images:
                img.load()
            ext = "jpg" if hit.ext == "jpeg" else hit.ext
            return hit.data, ext, width, height
        fmt = opts.image_format if opts.image_format != "copy" else _FORMAT_EXT.get(hit.ext, "png")
        img.load()
        if over:
            scale = (opts.max_pixels / (width * height)) ** 0.5
            width, height = max(1, int(width * scale)), max(1, int(height * scale))
            img = img.resize((width, height), Image.Resampling.BICUBIC)
        if fmt == "jpg" and img.mode not in ("RGB", "L"):
            base = Image.new("RGB", img.size, (255, 255, 255))
            rgba = img.convert("RGBA")
            base.paste(rgba, mask=rgba.getchannel("A"))
            img = base
        elif img.mode not in ("RGB", "RGBA", "L"):
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        buf = io.BytesIO()
        kwargs = {"quality": 90} if fmt in ("webp", "jpg") else {}
        img.save(buf, format=_PIL_FORMAT[fmt], **kwargs)
        return buf.getvalue(), fmt, width, height


def chunk_metas(chunk: CaptionChunk) -> dict[int, dict]:
    """Caption and manifest fields of every post of a caption chunk."""
    out = {}
    for pid, cap, r, q, y in zip(
        chunk.ids.tolist(),
        chunk.captions,
        chunk.rating.tolist(),
        chunk.quality.tolist(),
        chunk.year.tolist(),
        strict=True,
    ):
        out[pid] = {
            "caption": cap,
            "rating": RATING_LABELS[r] if 0 <= r < 4 else str(r),
            "quality": QUALITY_LABELS[q] if q >= 0 else None,
            "year": YEAR_TAGS[y] if y >= 0 else None,
        }
    return out


# Up to this many selected posts, captions are made up front in id order (one dense read instead of a query per
# bucket, ~1 KB of memory per post); above it each bucket queries its own.
PRECAPTION_MAX_POSTS = 200_000


# ---- the build --------------------------------------------------------------------------------------------------
class _Builder:
    def __init__(
        self, opts: BuildOptions, src: ImageSource, scheme: QualityScheme, progress: Progress, total: int
    ) -> None:
        self.opts = opts
        self.src = src
        self.scheme = scheme
        self.progress = progress
        self.total = total
        self.done = 0
        self.lock = threading.Lock()
        self.local = threading.local()
        self.conns: list = []
        self.sub = opts.out / opts.subfolder
        self.sub_prefix = str(self.sub) + os.sep  # str paths: pathlib per file costs more than the write
        self.buckets_dir = opts.out / BUILD_DIR / "buckets"
        self.shard_errors: dict[str, str] = {}
        self.metas: dict[int, dict] | None = None  # captions computed up front (small builds)
        self.marks: MarkWriter | None = None
        self.cache: ColumnCache | None = None  # the DB's column cache, when the build uses one

    def _thread_state(self):
        state = getattr(self.local, "state", None)
        if state is None:
            conn = open_db(self.opts.db)
            with self.lock:
                self.conns.append(conn)
            state = self.local.state = (conn, CaptionBuilder(self.scheme))
        return state

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.progress.update(self.done, self.total)

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def captions(self, ids: np.ndarray) -> dict[int, dict]:
        if self.metas is not None:
            return {pid: self.metas[pid] for pid in ids.tolist()}
        conn, builder = self._thread_state()
        posts, tags = self.cache.fetch_chunk(ids) if self.cache is not None else fetch_chunk(conn, ids)
        return chunk_metas(builder.build(conn, posts, tags))

    def write_hit(self, hit: Hit, meta: dict, written: list[str] | None = None) -> dict:
        """Write one found image + caption; returns its manifest (or skipped) record."""
        if hit.problem is not None or hit.data is None:
            return {
                "id": hit.post_id,
                "status": "corrupt",
                "reason": hit.problem or "no data",
                "shard": hit.origin,
            }
        try:
            data, ext, width, height = _prepare_image(hit, self.opts)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes; all mean "corrupt"
            return {
                "id": hit.post_id,
                "status": "corrupt",
                "shard": hit.origin,
                "reason": f"not a readable image ({type(exc).__name__}: {exc})",
            }
        name = f"{hit.post_id}.{ext}"
        image_path, caption_path = self.sub_prefix + name, f"{self.sub_prefix}{hit.post_id}.txt"
        write_new_file(image_path, data, direct=True)
        write_new_file(caption_path, meta["caption"].encode("utf-8"))
        if written is not None:
            written += (image_path, caption_path)
        return {
            "id": hit.post_id,
            "file": f"{self.opts.subfolder}/{name}",
            "caption": meta["caption"],
            "rating": meta["rating"],
            "quality": meta["quality"],
            "year": meta["year"],
            "width": width,
            "height": height,
            "shard": hit.origin,
            "bytes": len(data),
        }

    def run_bucket(self, bucket: int, ids: np.ndarray) -> None:
        metas = self.captions(ids)
        wanted = set(metas)
        records: dict[int, dict] = {}
        written: list[str] = []
        check = self.progress.check_cancelled
        if self.src.kind == "shards":
            for shard in self.src.candidates(bucket):
                if not wanted:
                    break
                for item in scan_tar(shard, self.src.origin(shard), wanted, check):
                    if isinstance(item, ShardReadError):
                        with self.lock:
                            self.shard_errors[item.origin] = item.message
                        continue
                    records[item.post_id] = self.write_hit(item, metas[item.post_id], written)
                    self.advance(1)
        else:
            for pid in sorted(wanted):
                check()
                hit = read_folder_file(self.src, pid)
                if hit is not None:
                    wanted.discard(pid)
                    records[pid] = self.write_hit(hit, metas[pid], written)
                    self.advance(1)
        for pid in wanted:  # not in this bucket's shards: maybe in updates/, else missing
            records[pid] = {"id": pid, "status": "missing", **metas[pid]}
        if not self.src.updates:
            self.advance(len(wanted))
        lines = "".join(json.dumps(records[pid], ensure_ascii=False) + "\n" for pid in sorted(records))
        assert self.marks is not None
        self.marks.submit(bucket, lines.encode("utf-8"), written)

    def run_updates(self, missing: dict[int, dict]) -> dict[int, dict]:
        """Look for still-missing ids in updates/*/*.tar (each read once, in path order)."""
        wanted = set(missing)
        found: dict[int, dict] = {}
        for tar_path in self.src.updates:
            if not wanted:
                break
            for item in scan_tar(tar_path, self.src.origin(tar_path), wanted, self.progress.check_cancelled):
                if isinstance(item, ShardReadError):
                    self.shard_errors[item.origin] = item.message
                    continue
                found[item.post_id] = self.write_hit(item, missing[item.post_id])
        self.advance(len(missing))
        return found


def _read_bucket_files(folder: Path) -> dict[int, dict]:
    records: dict[int, dict] = {}
    for path in sorted(folder.glob("b*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                records[int(rec["id"])] = rec
    return records


def build_dataset(
    opts: BuildOptions,
    *,
    workers: int = 4,
    on_partial: str = "error",
    progress: Progress | None = None,
    db_cache: str = "auto",
) -> BuildResult:
    """Select, caption and export; see the module docstring. `on_partial`: "resume" | "restart" | "error".

    `db_cache`: auto | always | never, whether selection and captions read the DB's column cache
    (column_cache.py; the output is the same either way).
    """
    opts.validate()
    if on_partial not in ("resume", "restart", "error"):
        raise ValueError(f"on_partial must be resume, restart or error, not {on_partial!r}")
    progress = ensure_progress(progress)
    out = opts.out
    opts = replace(opts, out=out)
    src = open_image_source(opts.images)
    conn = open_db(opts.db)
    try:
        progress.stage("Reading the metadata DB")
        fingerprint = db_fingerprint(conn, opts.db)
        scheme = quality_scheme(opts.quality, conn)
        wanted_options = opts.describe(fingerprint, scheme)
        resumed = _check_output(out, wanted_options, on_partial, opts.subfolder)
        cache = column_cache_for(opts.db, conn, db_cache, progress=progress)
        progress.stage("Selecting posts")
        selection = select_posts(conn, opts.plan, opts.filters, opts.db, progress, cache=cache)
    finally:
        conn.close()

    build_dir = out / BUILD_DIR
    (build_dir / "buckets").mkdir(parents=True, exist_ok=True)
    (out / opts.subfolder).mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write_text(build_dir / "options.toml", tomli_w.dumps(wanted_options))

    ids = selection.ids
    buckets = ids % BUCKETS
    order = np.argsort(buckets, kind="stable")
    groups = np.split(ids[order], np.flatnonzero(np.diff(buckets[order])) + 1) if ids.size else []
    todo = [(int(g[0] % BUCKETS), g) for g in groups]
    done_marks = {p.name for p in (build_dir / "buckets").glob("b*.jsonl")}
    builder = _Builder(opts, src, scheme, progress, int(ids.size))
    builder.cache = cache
    progress.stage(f"Exporting {ids.size:,} posts ({src.describe()})")
    skipped_buckets = 0
    remaining = []
    for b, g in todo:
        if f"b{b:03d}.jsonl" in done_marks:
            skipped_buckets += 1
            builder.done += int(g.size)
        else:
            remaining.append((b, g))
    progress.update(builder.done, builder.total)
    if 0 < sum(int(g.size) for _b, g in remaining) <= PRECAPTION_MAX_POSTS:
        todo_ids = np.sort(np.concatenate([g for _b, g in remaining]))
        builder.metas = {}
        for chunk in iter_caption_chunks(opts.db, todo_ids, scheme, processes=0, progress=None, cache=cache):
            progress.check_cancelled()
            builder.metas.update(chunk_metas(chunk))  # type: ignore[arg-type]
    builder.marks = MarkWriter(out, build_dir / "buckets")
    try:
        try:
            with ThreadPoolExecutor(max(1, workers), thread_name_prefix="kxl-export") as pool:
                futures = [pool.submit(builder.run_bucket, b, g) for b, g in remaining]
                wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
                if failed:
                    for f in futures:
                        f.cancel()
                    _stop_workers(builder)
                    wait(futures)
                    raise failed[0].exception()  # type: ignore[misc]
        finally:
            builder.marks.close()  # finished buckets get their marks even when the build stops
        records = _read_bucket_files(build_dir / "buckets")
        missing = {pid: r for pid, r in records.items() if r.get("status") == "missing"}
        if src.updates and missing:
            progress.stage(f"Looking for {len(missing):,} posts in updates/")
            records.update(builder.run_updates(missing))
    finally:
        builder.close()

    written = [records[i] for i in sorted(records) if "status" not in records[i]]
    skipped = [
        {k: records[i][k] for k in ("id", "status", "reason", "shard") if k in records[i]}
        for i in sorted(records)
        if "status" in records[i]
    ]
    summary = summarize(written, skipped, int(ids.size))
    summary.shard_errors = [{"shard": k, "reason": v} for k, v in sorted(builder.shard_errors.items())]
    summary.ignored_files = sorted(src.ignored)
    atomic_write_text(out / MANIFEST_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in written))
    atomic_write_text(out / SKIPPED_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in skipped))
    info = dict(wanted_options)
    info["summary"] = summary.to_toml_dict()
    atomic_write_text(out / DATASET_FILE, tomli_w.dumps(info))
    shutil.rmtree(build_dir, ignore_errors=True)
    progress.update(builder.total, builder.total)
    return BuildResult(out, summary, skipped_buckets)


def _stop_workers(builder: _Builder) -> None:
    """One bucket failed (disk full, cancel): the other workers stop at their next cancel check."""
    from ..progress import CancelToken

    if builder.progress.cancel_token is None:
        builder.progress.cancel_token = CancelToken()
    builder.progress.cancel_token.cancel()


__all__ = [
    "BuildOptions",
    "BuildResult",
    "Cancelled",
    "PartialBuildError",
    "build_dataset",
    "partial_build_info",
]
