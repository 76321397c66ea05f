"""Build a kohya-ready dataset folder from the metadata DB and the image shards.

Layout written into the output folder (a copy build, the default):
    <repeats>_<name>/<id>.<ext>   image: the shard bytes unchanged (default) or re-encoded
    <repeats>_<name>/<id>.txt     caption, UTF-8, one line, no newline (captions.py)
    manifest.jsonl                one record per written image, ordered by id
    skipped.jsonl                 selected posts without an image (missing / corrupt), ordered by id
    sd-scripts-dataset.toml       a kohya-ss/sd-scripts `--dataset_config` for this folder (sd_scripts_config.py)
    kxl-dataset.toml              how it was built + the summary; written last: its presence means "complete"
                                  (older versions named it dataset.toml; stats.dataset_file reads both)

Work is split by bucket (`id % 1000`, the shard naming): a bucket's shards are read once, front to back, in
data-0XYZ .. data-9XYZ order, and buckets run in parallel threads. When a bucket is done its records go to
`.kxl-build/buckets/bNNN.jsonl`, written only after the bucket's files are flushed to disk (durable.py); that
file is the bucket's "done" mark. An interrupted build resumes by skipping marked buckets and rewriting the
others whole, and since every output depends only on the post, the result is the same as an uninterrupted
build, whatever the thread count. Ids not found in their bucket are then looked for in `updates/*/*.tar`.
Images and captions are written straight to their final names (a cancel stops between files; a failed write
removes its partial file): until kxl-dataset.toml exists the folder is an unfinished build, never a dataset.

One build per output folder: a build owns `<out>/.kxl-build.lock` (ownership.py: pid + process start time) from
before it looks at the folder until it has finished or stopped, so a second build into the same folder, from
this process or another, stops with "dataset build is already running (pid N)" before touching anything. A
lock left by a killed build names a dead process and is taken over. The lock is not part of the dataset: a
finished folder holds none, and the folder checks below ignore it.

Image modes: `copy` (default) writes the layout above; `reference` (reference_build.py) writes only
manifest.jsonl (a copy build's records plus where each image is inside its shard, and the captions),
skipped.jsonl, shards.json and kxl-dataset.toml, reading nothing of the shards but member headers and the
images' first bytes. The records, skipped posts and summary are a copy build's, so `kxl dataset materialize`
(materialize.py) turns it into a copy build byte for byte. The trainer, the Tags tab and the pre-flight read its
images out of the shards (image_refs.py). The copy mode stays the choice for sd-scripts and other tools.

Ctrl+C (KeyboardInterrupt in the thread that runs the build) and a cancel both stop the export the same way:
queued buckets never start, running ones stop at their next tar member (their marks are not written, so a
resume redoes them whole), and finished buckets keep their marks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tomli_w

from .. import __version__
from ..atomic import atomic_write_text_checked, write_error
from ..danbooru.db_reader import db_fingerprint, fetch_chunk, open_db
from ..errors import Cancelled, KxlError
from ..ownership import AlreadyRunning, acquire, release
from ..progress import Progress, ensure_progress
from .caption_stream import iter_caption_chunks
from .captions import QUALITY_LABELS, YEAR_TAGS, CaptionBuilder, CaptionChunk, QualityScheme, quality_scheme
from .column_cache import ColumnCache, column_cache_for
from .durable import MarkWriter, write_new_file
from .filters import PostFilters
from .image_header import image_size
from .image_refs import SHARDS_FILE
from .images import (
    BUCKETS,
    Hit,
    ImageSource,
    ShardReadError,
    open_image_source,
    read_folder_file,
    scan_tar,
)
from .ref_table import CAPTIONS_FILE, REFS_FILE
from .sd_scripts_config import write_sd_scripts_config
from .selection import SelectionPlan, select_posts
from .stats import (
    DATASET_FILE,
    MANIFEST_FILE,
    RATING_LABELS,
    SD_SCRIPTS_FILE,
    SKIPPED_FILE,
    DatasetSummary,
    dataset_file,
    is_finished_dataset,
    summarize,
)

BUILD_DIR = ".kxl-build"
LOCK_FILE = ".kxl-build.lock"  # the running build's lock (module docstring); never left in a finished dataset
OPTIONS_FILE = "options.toml"  # in BUILD_DIR: the options of the unfinished build, written before any export
_RESUME_HINT = "free some space and run the same build again: it resumes"
IMAGE_FORMATS = ("copy", "webp", "png", "jpg")
IMAGE_MODES = (
    "copy",
    "reference",
)  # write the images, or reference them inside the shards (module docstring)
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
    image_mode: str = "copy"  # copy | reference

    def validate(self) -> None:
        if self.repeats < 1:
            raise KxlError(f"repeats must be at least 1 (got {self.repeats})")
        if not _NAME_RE.fullmatch(self.name):
            raise KxlError(f"dataset name {self.name!r}: use letters, digits, space, . _ + - (max 64)")
        if self.image_format not in IMAGE_FORMATS:
            raise KxlError(f"image format {self.image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}")
        if self.max_pixels is not None and self.max_pixels < 64 * 64:
            raise KxlError(f"pixel budget {self.max_pixels} is too small (at least 4096)")
        if self.image_mode not in IMAGE_MODES:
            raise KxlError(f"image mode {self.image_mode!r}: choose one of {', '.join(IMAGE_MODES)}")
        if self.image_mode == "reference" and (self.image_format != "copy" or self.max_pixels is not None):
            raise KxlError(
                "a reference build points at the shard bytes as they are: it cannot re-encode or resize",
                hint="drop --image-format/--max-pixels, or use --image-mode copy",
            )

    @property
    def subfolder(self) -> str:
        return f"{self.repeats}_{self.name}"

    def describe(self, fingerprint: str, scheme: QualityScheme) -> dict:
        """Everything that determines the output; stored in kxl-dataset.toml and compared on resume."""
        output: dict = {
            "folder": self.subfolder,
            "repeats": self.repeats,
            "name": self.name,
            "image_format": self.image_format,
            "verify_images": self.verify_images,
        }
        if self.max_pixels is not None:
            output["max_pixels"] = self.max_pixels
        if (
            self.image_mode != "copy"
        ):  # absent for copy builds: their stored options (resume) stay as they were
            output["image_mode"] = self.image_mode
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
    image_mode: str = "copy"  # "reference": no image was written, the dataset reads them from the shards


# ---- output folder state ----------------------------------------------------------------------------------------
def _read_options(out: Path) -> dict | None:
    """The options stored by an unfinished build in `out`, or None when the file is missing or unreadable."""
    import tomllib

    try:
        return tomllib.loads((out / BUILD_DIR / OPTIONS_FILE).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None


def partial_build_info(out: str | Path) -> dict | None:
    """The stored options of an interrupted build in `out`, or None."""
    out = Path(out)
    if is_finished_dataset(out):
        return None
    return _read_options(out)


def _discard_partial(out: Path, subfolder: str) -> None:
    """Remove what a build writes before it finishes (the lock stays: it is the caller's)."""
    for rel in (
        BUILD_DIR,
        subfolder,
        MANIFEST_FILE,
        SKIPPED_FILE,
        SD_SCRIPTS_FILE,
        SHARDS_FILE,
        CAPTIONS_FILE,
        REFS_FILE,
    ):
        target = out / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _holds_files(out: Path) -> bool:
    """Whether anything but empty folders (and the lock) is in `out`; stops at the first file it sees."""
    stack = [str(out)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.name != LOCK_FILE:
                    return True
    return False


def _check_output(out: Path, wanted: dict, on_partial: str, subfolder: str) -> bool:
    """Validate the output folder; returns True when an interrupted build is resumed."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise KxlError("output path exists and is not a folder", path=out)
    if is_finished_dataset(out):
        raise KxlError(
            f"already holds a finished dataset ({dataset_file(out).name})",
            path=out,
            hint="choose an empty folder, or delete this dataset first",
        )
    if (out / BUILD_DIR).is_dir():
        stored = _read_options(out)
        if stored is None:
            # Ours, but without readable options: the build failed while writing them (a full disk), before any
            # export, or the file was damaged later. With nothing exported there is nothing to resume, so any
            # run starts over; otherwise only a restart may discard the exported files.
            if on_partial != "restart" and _holds_files(out):
                raise KxlError(
                    f"holds an interrupted build whose options file ({BUILD_DIR}/{OPTIONS_FILE}) is missing or "
                    "damaged, so it cannot be resumed",
                    path=out,
                    hint="start it over with --restart (or delete the folder)",
                )
            _discard_partial(out, subfolder)
        elif stored != wanted:
            raise KxlError(
                "holds an interrupted build made with other options (or another DB)",
                path=out,
                hint="use the same options to resume it, or choose another folder",
            )
        elif on_partial == "resume":
            return True
        elif on_partial == "restart":
            _discard_partial(out, subfolder)
            return False
        else:
            raise PartialBuildError(
                "holds an interrupted build with these options",
                path=out,
                hint="resume it (or restart it from scratch)",
            )
    if any(p.name != LOCK_FILE for p in out.iterdir()):
        raise KxlError(
            "folder is not empty and holds no dataset build",
            path=out,
            hint="datasets are written into an empty or new folder",
        )
    return False


@contextlib.contextmanager
def _own_output(out: Path):
    """Own `out` for one build (module docstring); a folder this call created and left empty is removed after."""
    if out.exists() and not out.is_dir():
        raise KxlError("output path exists and is not a folder", path=out)
    created = not out.exists()
    owner = None
    for _ in range(3):  # another build may remove a folder it created just as we create the lock in it
        try:
            owner = acquire(out / LOCK_FILE, "dataset build")
            break
        except FileNotFoundError:
            continue
        except AlreadyRunning:
            raise
        except OSError as exc:
            raise write_error(exc, out / LOCK_FILE) from None
    if owner is None:
        raise KxlError("could not create the output folder: it keeps disappearing", path=out)
    try:
        yield
    finally:
        release(out / LOCK_FILE, owner)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds when the build stopped before writing anything


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


_OBJECT_REPR_RE = re.compile(r"<[^<>]*? at 0x[0-9A-Fa-f]+>")


def _stable_reason(text: str, member: str) -> str:
    """A skip reason that is the same on every run: Pillow names the file it could not identify by its object's
    repr (`<_io.BytesIO object at 0x7f...>`, a memory address); put the member name there instead."""
    return _OBJECT_REPR_RE.sub(member, text)


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
        member = f"{hit.post_id}.{hit.ext}"
        if hit.problem is not None or hit.data is None:
            return {
                "id": hit.post_id,
                "status": "corrupt",
                "reason": _stable_reason(hit.problem or "no data", member),
                "shard": hit.origin,
            }
        try:
            data, ext, width, height = _prepare_image(hit, self.opts)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad bytes; all mean "corrupt"
            return {
                "id": hit.post_id,
                "status": "corrupt",
                "shard": hit.origin,
                "reason": _stable_reason(f"not a readable image ({type(exc).__name__}: {exc})", member),
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

    def _scan_shard(self, shard: Path, wanted: set[int], metas: dict[int, dict], records: dict[int, dict],
                    written: list[str] | None) -> None:  # fmt: skip
        for item in scan_tar(shard, self.src.origin(shard), wanted, self.progress.check_cancelled):
            if isinstance(item, ShardReadError):
                with self.lock:
                    self.shard_errors[item.origin] = item.message
                continue
            records[item.post_id] = self.write_hit(item, metas[item.post_id], written)
            if written is not None:
                self.advance(1)

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
                self._scan_shard(shard, wanted, metas, records, written)
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
            self._scan_shard(tar_path, wanted, missing, found, None)
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
    src = open_image_source(opts.images)
    with _own_output(opts.out):
        return _build_owned(opts, src, workers, on_partial, progress, db_cache)


def _build_owned(
    opts: BuildOptions, src: ImageSource, workers: int, on_partial: str, progress: Progress, db_cache: str
) -> BuildResult:
    if opts.image_mode == "reference":
        return _build_reference(opts, src, workers, on_partial, progress, db_cache)
    out = opts.out
    conn = open_db(opts.db)
    try:
        progress.stage("Reading the metadata DB")
        fingerprint = db_fingerprint(conn, opts.db)
        scheme = quality_scheme(opts.quality, conn)
        wanted_options = opts.describe(fingerprint, scheme)
        resumed = _check_output(out, wanted_options, on_partial, opts.subfolder)
        cache = column_cache_for(opts.db, conn, db_cache, progress=progress, fingerprint=fingerprint)
        progress.stage("Selecting posts")
        selection = select_posts(conn, opts.plan, opts.filters, opts.db, progress, cache=cache)
    finally:
        conn.close()

    build_dir = out / BUILD_DIR
    if not resumed:
        # first, before any other file: a folder holding BUILD_DIR without readable options is a build that
        # never exported anything (unless the file was damaged later), which _check_output relies on
        try:
            atomic_write_text_checked(build_dir / OPTIONS_FILE, tomli_w.dumps(wanted_options))
        except KxlError:
            with contextlib.suppress(OSError):
                build_dir.rmdir()
            raise
    for folder in (build_dir / "buckets", out / opts.subfolder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, folder, _RESUME_HINT) from None

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
            _export_buckets(builder, remaining, workers)
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
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in written)
    atomic_write_text_checked(out / MANIFEST_FILE, "".join(lines), _RESUME_HINT)
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in skipped)
    atomic_write_text_checked(out / SKIPPED_FILE, "".join(lines), _RESUME_HINT)
    write_sd_scripts_config(out, SD_SCRIPTS_FILE, opts.subfolder, opts.repeats, _RESUME_HINT)
    info = dict(wanted_options)
    info["summary"] = summary.to_toml_dict()
    atomic_write_text_checked(out / DATASET_FILE, tomli_w.dumps(info), _RESUME_HINT)
    shutil.rmtree(build_dir, ignore_errors=True)
    progress.update(builder.total, builder.total)
    return BuildResult(out, summary, skipped_buckets)


def _build_reference(
    opts: BuildOptions, src: ImageSource, workers: int, on_partial: str, progress: Progress, db_cache: str
) -> BuildResult:
    """A reference build (reference_build.py): selection and captions as `kxl dataset captions` makes them (caption
    worker processes started ahead for a big DB), the images located from the shards' headers. It writes nothing
    before the end, so an interrupted one resumes by running again."""
    from .caption_stream import CaptionWorkers
    from .reference_build import write_reference_outputs
    from .shard_index import ShardIndex
    from .shard_walks import ShardWalks

    out = opts.out
    caption_workers = CaptionWorkers.for_db(opts.db)  # they start while the selection runs
    walks = ShardWalks(src, ShardIndex.open(opts.images, enabled=src.kind == "shards"))
    try:
        if caption_workers is not None and src.kind == "shards":
            walks.start(caption_workers.pool)  # shard_walks.py: the workers walk while the selection runs
        conn = open_db(opts.db)
        try:
            progress.stage("Reading the metadata DB")
            fingerprint = db_fingerprint(conn, opts.db)
            scheme = quality_scheme(opts.quality, conn)
            wanted_options = opts.describe(fingerprint, scheme)
            _check_output(out, wanted_options, on_partial, opts.subfolder)
            cache = column_cache_for(
                opts.db,
                conn,
                db_cache,
                progress=progress,
                pool=None if caption_workers is None else caption_workers.pool,
                pool_size=0 if caption_workers is None else caption_workers.n_proc,
                fingerprint=fingerprint,
            )
            progress.stage("Selecting posts")
            selection = select_posts(conn, opts.plan, opts.filters, opts.db, progress, cache=cache)
        finally:
            conn.close()
        build_dir = out / BUILD_DIR
        atomic_write_text_checked(build_dir / OPTIONS_FILE, tomli_w.dumps(wanted_options))
        summary = write_reference_outputs(opts, src, selection.ids, scheme, workers, progress, cache,
                                          caption_workers, walks)  # fmt: skip
    finally:
        walks.cancel()
        if caption_workers is not None:
            caption_workers.close()
    info = dict(wanted_options)
    info["summary"] = summary.to_toml_dict()
    atomic_write_text_checked(out / DATASET_FILE, tomli_w.dumps(info), _RESUME_HINT)
    shutil.rmtree(build_dir, ignore_errors=True)
    progress.update(int(selection.ids.size), int(selection.ids.size))
    return BuildResult(out, summary, 0, image_mode="reference")


def _export_buckets(builder, remaining: list[tuple[int, np.ndarray]], workers: int) -> None:
    """Run `builder.run_bucket` over `remaining` on `workers` threads; stop early on a failure, cancel or Ctrl+C.

    The waiting happens in the calling thread, which is where Ctrl+C lands (KeyboardInterrupt). Whatever stops
    the export, no queued bucket starts afterwards and the running ones stop at their next tar member, so the
    build ends within about one member's time instead of draining the queue.
    """
    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="kxl-export")
    futures = []
    try:
        futures = [pool.submit(builder.run_bucket, b, g) for b, g in remaining]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
    except BaseException:
        for f in futures:
            f.cancel()
        _stop_workers(builder)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stop_workers(builder: _Builder) -> None:
    """One bucket failed (disk full, cancel) or Ctrl+C: the other workers stop at their next cancel check."""
    from ..progress import CancelToken

    if builder.progress.cancel_token is None:
        builder.progress.cancel_token = CancelToken()
    builder.progress.cancel_token.cancel()


__all__ = [
    "BuildOptions",
    "BuildResult",
    "Cancelled",
    "LOCK_FILE",
    "PartialBuildError",
    "build_dataset",
    "partial_build_info",
]
