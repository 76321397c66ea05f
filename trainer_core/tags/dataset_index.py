"""Open a training dataset folder and index its images, captions and tags for browsing and filtering.

Layouts understood (first match wins):
1. kohya: `<root>/<repeats>_<name>/<id>.<ext>` + `<id>.txt` (what sd-scripts trains on and what our dataset
   builder writes), optionally with the builder's `<root>/manifest.jsonl`;
2. a single kohya image folder picked directly (`.../10_name`), or any plain folder of images + `.txt` files
   (repeats 1);
   A *referenced* dataset (dataset/image_refs.py: `shards.json`, `refs.npy` and `captions.jsonl`, no image or
   caption file) is listed from its reference table as the kohya folder it stands for (`<repeats>_<name>/<id>.<ext>`
   entries, in the same order); its captions are `captions.jsonl`'s (`captions_in_manifest`: bulk edits
   rewrite that file), and `open_image(i)` reads the image out of its shard.
3. a manifest-only folder: `manifest.jsonl` lines name each image with a `file` path relative to the root.
The `.txt` file is the truth for captions (it is what the trainer reads); the manifest supplies width, height,
rating, quality and year, and its caption is used only for an image that has no `.txt`.

Built for 100k+ images: one `os.scandir` per folder (no per-file stat), captions read once, tags interned to
integer ids with a numpy inverted index so an AND/OR/NOT filter is a few boolean-mask operations. Image sizes
come from the manifest; missing ones are read lazily from the image header (`image_size`, `read_image_sizes`).

Bad input never aborts the index: a missing, empty or non-UTF-8 caption, a bad manifest line or an image that
fails to decode is recorded in `problems` (path + message) and the image stays browsable.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dataset.image_refs import ImageRef, is_reference_dataset, iter_reference_records, open_ref_image
from ..dataset.ref_table import CAPTIONS_FILE
from ..errors import KxlError
from ..progress import Progress, ensure_progress
from .caption_processing import KEEP_TOKENS_SEPARATOR
from .tag_query import And, Not, Or, Query, TagTerm, parse_tag_query, term_matches
from .text import normalize_tag_name

IMAGE_SUFFIXES = frozenset({".webp", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".avif"})
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
MANIFEST_FILE = "manifest.jsonl"
CAPTION_SUFFIX = ".txt"


@dataclass(slots=True)
class DatasetEntry:
    id: str  # file stem (the Danbooru post id for our datasets)
    image: str  # path relative to the dataset root, "/"-separated
    repeats: int  # from the kohya folder name; 1 elsewhere
    caption: str  # first line of the caption file, stripped; "" when missing or unreadable
    width: int = 0  # 0 = not known yet
    height: int = 0
    rating: str | None = None  # from the manifest when it has them
    quality: str | None = None
    year: str | None = None
    has_caption_file: bool = (
        False  # the caption is stored where an edit can rewrite it (a referenced dataset's
    )
    # captions are in its manifest: always)

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.width, self.height) if self.width > 0 and self.height > 0 else None


@dataclass(frozen=True, slots=True)
class DatasetProblem:
    path: str  # relative to the dataset root
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class CaptionParts:
    """A caption split the way the trainer splits it: fixed head `|||` flexible tags [`|||` fixed suffix]."""

    fixed: list[str]
    flex: list[str]
    suffix: list[str]
    has_separator: bool

    @property
    def tags(self) -> list[str]:
        return self.fixed + self.flex + self.suffix


def split_caption(caption: str) -> CaptionParts:
    """Tags of a caption in their three parts; without `|||` everything is flexible."""
    line = caption.split("\n", 1)[0]
    parts = line.split(KEEP_TOKENS_SEPARATOR, 2)

    def tokens(part: str) -> list[str]:
        return [t.strip() for t in part.split(",") if t.strip()]

    if len(parts) == 1:
        return CaptionParts([], tokens(parts[0]), [], False)
    suffix = tokens(parts[2]) if len(parts) == 3 else []
    return CaptionParts(tokens(parts[0]), tokens(parts[1]), suffix, True)


class DatasetIndex:
    """Images, captions and a tag index of one dataset folder. Entries are in (folder, numeric id) order; an
    entry's position is the sample index used by caption previews."""

    def __init__(self, root: Path, layout: str, entries: list[DatasetEntry], problems: list[DatasetProblem]):
        self.root = root
        self.layout = layout  # "kohya" | "folder" | "manifest"
        self.entries = entries
        self.problems = problems
        self.refs: dict[int, ImageRef] = {}  # entry index -> where its bytes are (referenced datasets)
        self.captions_in_manifest = (
            False  # a referenced dataset: captions live in captions.jsonl, not in .txt files
        )
        self._problem_lock = threading.Lock()
        self._build_tag_index()

    def __len__(self) -> int:
        return len(self.entries)

    # -- tags ------------------------------------------------------------------------------------------------
    def _build_tag_index(self) -> None:
        ids: dict[str, int] = {}
        texts: list[str] = []
        flat: list[int] = []
        lengths = np.zeros(len(self.entries), dtype=np.int64)
        for i, entry in enumerate(self.entries):
            seen: dict[int, None] = {}
            for text in split_caption(entry.caption).tags:
                key = normalize_tag_name(text)
                tid = ids.get(key)
                if tid is None:
                    tid = ids[key] = len(texts)
                    texts.append(text)
                seen[tid] = None
            flat.extend(seen)
            lengths[i] = len(seen)
        self.tag_keys: list[str] = list(ids)
        self.tag_texts: list[str] = texts  # first spelling met, for display
        self._tag_id = ids
        tag_of_pair = np.array(flat, dtype=np.int64)
        entry_of_pair = np.repeat(np.arange(len(self.entries), dtype=np.int64), lengths)
        order = np.argsort(tag_of_pair, kind="stable")
        self._postings_entries = entry_of_pair[order]  # grouped by tag, entries ascending within a tag
        counts = np.bincount(tag_of_pair, minlength=len(texts)) if len(texts) else np.zeros(0, np.int64)
        self.tag_image_counts: np.ndarray = counts  # images carrying each tag id
        self._postings_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def tag_id(self, text: str) -> int | None:
        return self._tag_id.get(normalize_tag_name(text))

    def images_with_tag(self, text: str) -> np.ndarray:
        """Entry positions whose caption holds the tag (any spelling: spaces/underscores, case)."""
        tid = self.tag_id(text)
        if tid is None:
            return np.zeros(0, dtype=np.int64)
        return self._postings_entries[self._postings_start[tid] : self._postings_start[tid + 1]]

    def filter(self, query: str | Query | None) -> np.ndarray:
        """Entry positions matching a search expression (see tag_query); all entries for an empty query."""
        parsed = parse_tag_query(query) if isinstance(query, str) else query
        if parsed is None:
            return np.arange(len(self.entries), dtype=np.int64)
        return np.flatnonzero(self._mask(parsed))

    def unknown_terms(self, query: str | Query | None) -> list[str]:
        """Terms of the query that no image carries (shown to the user as "no image has ...")."""
        from .tag_query import query_terms

        parsed = parse_tag_query(query) if isinstance(query, str) else query
        return [t.text for t in query_terms(parsed) if not term_matches(t, self._keys_for(t))]

    def _keys_for(self, term: TagTerm) -> list[str]:
        return self.tag_keys if term.is_pattern else ([term.key] if term.key in self._tag_id else [])

    def _mask(self, query: Query) -> np.ndarray:
        n = len(self.entries)
        if isinstance(query, TagTerm):
            mask = np.zeros(n, dtype=bool)
            for key in term_matches(query, self._keys_for(query)):
                tid = self._tag_id[key]
                mask[self._postings_entries[self._postings_start[tid] : self._postings_start[tid + 1]]] = True
            return mask
        if isinstance(query, Not):
            return ~self._mask(query.item)
        masks = [self._mask(item) for item in query.items]
        if isinstance(query, And):
            return np.logical_and.reduce(masks)
        if isinstance(query, Or):
            return np.logical_or.reduce(masks)
        raise TypeError(f"not a query node: {query!r}")

    # -- images ----------------------------------------------------------------------------------------------
    def image_path(self, i: int) -> Path:
        return self.root / self.entries[i].image

    def caption_path(self, i: int) -> Path:
        return self.image_path(i).with_suffix(CAPTION_SUFFIX)

    def open_image(self, i: int) -> Any:
        """The entry's image as a PIL image (the caller closes it), from its file or, in a referenced dataset,
        from its shard. OSError / KxlError (naming the file or shard) when it cannot be read."""
        from PIL import Image

        ref = self.refs.get(i)
        return open_ref_image(ref) if ref is not None else Image.open(self.image_path(i))

    def image_size(self, i: int) -> tuple[int, int] | None:
        """(width, height), reading the image header on first use; None (and a problem) if it cannot be read."""
        entry = self.entries[i]
        if entry.size is None:
            size = read_image_header_size(self.image_path(i), self.refs.get(i))
            if isinstance(size, str):
                self.add_problem(entry.image, size)
                entry.width = entry.height = -1  # remembered as unreadable: never retried
                return None
            entry.width, entry.height = size
        return entry.size

    def read_image_sizes(self, progress: Progress | None = None) -> int:
        """Fill every unknown size from image headers (for bucket statistics); returns how many were read."""
        progress = ensure_progress(progress)
        todo = [i for i, e in enumerate(self.entries) if e.width == 0 or e.height == 0]
        if todo:
            progress.stage(f"reading {len(todo):,} image sizes")
        for done, i in enumerate(todo, 1):
            self.image_size(i)
            if done % 256 == 0 or done == len(todo):
                progress.update(done, len(todo))
                progress.check_cancelled()
        return len(todo)

    def add_problem(self, path: str, message: str) -> None:
        with self._problem_lock:
            self.problems.append(DatasetProblem(path, message))


def read_image_header_size(path: Path, ref: ImageRef | None = None) -> tuple[int, int] | str:
    """Size from the image header only (PIL reads no pixels for this); an error message if it is not an image.
    `ref`: the image is inside a shard (referenced dataset)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_ref_image(ref) if ref is not None else Image.open(path) as img:
            return img.size
    except KxlError as exc:
        return str(exc)
    except FileNotFoundError:
        return "image file is missing"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"image cannot be decoded ({type(exc).__name__}: {exc})"


# -- opening ---------------------------------------------------------------------------------------------------
def open_dataset(root: str | Path, progress: Progress | None = None) -> DatasetIndex:
    """Index a dataset folder (see the module docstring for the layouts). Raises KxlError only when the folder is
    missing or holds no images at all."""
    # absolute, so paths built from it (caption_path) are never taken as relative to the root a second time
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise KxlError("dataset folder not found", path=root)
    progress = ensure_progress(progress)
    progress.stage("scanning dataset folder")
    if is_reference_dataset(root):
        return _open_referenced(root, progress)
    problems: list[DatasetProblem] = []
    manifest = _read_manifest(root / MANIFEST_FILE, problems) if (root / MANIFEST_FILE).is_file() else {}

    kohya_dirs = sorted(
        (e.name for e in os.scandir(root) if e.is_dir() and KOHYA_FOLDER.match(e.name)), key=_folder_order
    )
    if kohya_dirs:
        layout = "kohya"
        folders = [(name, int(KOHYA_FOLDER.match(name).group(1))) for name in kohya_dirs]
    else:
        match = KOHYA_FOLDER.match(root.name)
        folders = [("", int(match.group(1)) if match else 1)]
        layout = "folder"

    entries: list[DatasetEntry] = []
    caption_files: list[bool] = []
    for rel, repeats in folders:
        folder = root / rel if rel else root
        images: list[str] = []
        txts: set[str] = set()
        for e in os.scandir(folder):
            suffix = os.path.splitext(e.name)[1].lower()
            if suffix in IMAGE_SUFFIXES:
                images.append(e.name)
            elif suffix == CAPTION_SUFFIX:
                txts.add(e.name)
        if repeats == 0:
            problems.append(DatasetProblem(rel, "repeats is 0: the trainer skips this folder"))
        for name in sorted(images, key=_file_order):
            stem = os.path.splitext(name)[0]
            entries.append(DatasetEntry(stem, f"{rel}/{name}" if rel else name, repeats, ""))
            caption_files.append(stem + CAPTION_SUFFIX in txts)

    if not entries and manifest:
        layout = "manifest"
        for record in manifest.values():
            file = record.get("file")
            if isinstance(file, str) and file:
                entries.append(DatasetEntry(str(record["id"]), file.replace("\\", "/"), 1, ""))
                caption_files.append((root / file).with_suffix(CAPTION_SUFFIX).is_file())
    if not entries:
        raise KxlError(
            "no images here",
            path=root,
            hint="pick a dataset folder with <repeats>_<name> subfolders of images + .txt captions",
        )

    progress.stage(f"reading {len(entries):,} captions")
    total = len(entries)
    for i, entry in enumerate(entries):
        record = manifest.get(entry.id)
        if record is not None:
            _apply_manifest(entry, record)
        if caption_files[i]:
            entry.has_caption_file = True
            entry.caption = _read_caption(root, entry, problems)
        elif record is not None and isinstance(record.get("caption"), str):
            entry.caption = record["caption"].split("\n", 1)[0].strip()
            problems.append(DatasetProblem(entry.image, "no caption file (using the manifest's caption)"))
        else:
            problems.append(
                DatasetProblem(entry.image, "no caption file: the trainer will see an empty caption")
            )
        if i % 2048 == 0:
            progress.update(i, total)
            progress.check_cancelled()
    progress.update(total, total)
    progress.stage("indexing tags")
    return DatasetIndex(root, layout, entries, problems)


def _open_referenced(root: Path, progress: Progress) -> DatasetIndex:
    """A referenced dataset, listed from its reference table and caption lines (image_refs validates every row
    and line; a damaged one is a KxlError naming the file and line: without it there is no knowing which
    images the dataset has)."""
    progress.stage("reading the reference table")
    found: list[tuple[tuple, DatasetEntry, ImageRef]] = []
    problems: list[DatasetProblem] = []
    for done, r in enumerate(iter_reference_records(root, records=True), 1):
        text = r.caption.lstrip("\ufeff").split("\n", 1)[0].strip()  # as `_read_caption` reads a .txt
        stem = r.name[: r.name.rfind(".")]
        entry = DatasetEntry(stem, f"{r.subset}/{r.name}", r.repeats, text, has_caption_file=True)
        _apply_manifest(entry, r.record)
        if not text:
            problems.append(DatasetProblem(entry.image, f"empty caption ({CAPTIONS_FILE} line {r.line}; "
                                           "sd-scripts stops with an assertion on it)"))  # fmt: skip
        found.append(((_folder_order(r.subset), _file_order(r.name)), entry, r.ref))
        if done % 8192 == 0:
            progress.check_cancelled()
    if not found:
        raise KxlError(
            "no images here: the referenced dataset's reference table lists none", path=root / CAPTIONS_FILE
        )
    found.sort(key=lambda item: item[0])  # the order a kohya folder of the same images is listed in
    progress.stage("indexing tags")
    index = DatasetIndex(root, "kohya", [entry for _key, entry, _ref in found], problems)
    index.refs = {i: ref for i, (_key, _entry, ref) in enumerate(found)}
    index.captions_in_manifest = True
    return index


def _read_caption(root: Path, entry: DatasetEntry, problems: list[DatasetProblem]) -> str:
    rel = os.path.splitext(entry.image)[0] + CAPTION_SUFFIX
    try:
        with open(root / rel, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        problems.append(DatasetProblem(rel, f"caption cannot be read ({exc.strerror or exc})"))
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(DatasetProblem(rel, f"caption is not UTF-8 (bad byte at offset {exc.start})"))
        return ""
    line = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if not line:
        problems.append(DatasetProblem(rel, "empty caption (sd-scripts stops with an assertion on it)"))
    return line


def _read_manifest(path: Path, problems: list[DatasetProblem]) -> dict[str, dict]:
    """manifest.jsonl -> {id as str: record}. Bad lines are problems, not errors."""
    out: dict[str, dict] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        problems.append(DatasetProblem(MANIFEST_FILE, f"cannot be read ({exc.strerror or exc})"))
        return out
    with fh:
        try:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    problems.append(DatasetProblem(MANIFEST_FILE, f"line {line_no}: not JSON ({exc.msg})"))
                    continue
                if not isinstance(record, dict) or "id" not in record:
                    problems.append(DatasetProblem(MANIFEST_FILE, f"line {line_no}: no 'id' key"))
                    continue
                out[str(record["id"])] = record
        except UnicodeDecodeError as exc:
            problems.append(
                DatasetProblem(MANIFEST_FILE, f"not UTF-8 ({exc.reason}); rest of the file skipped")
            )
    return out


def _apply_manifest(entry: DatasetEntry, record: dict) -> None:
    width, height = record.get("width"), record.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        entry.width, entry.height = width, height
    for key in ("rating", "quality", "year"):
        value = record.get(key)
        if value is not None and value != "":
            setattr(entry, key, str(value))


def _folder_order(name: str) -> tuple[str, int]:
    match = KOHYA_FOLDER.match(name)
    return (match.group(2), int(match.group(1))) if match else (name, 0)


def _file_order(name: str) -> tuple[int, int | str]:
    # Numeric ids in numeric order (99 before 100), other names after them, alphabetically.
    stem = os.path.splitext(name)[0]
    return (0, int(stem)) if stem.isdigit() else (1, name)


def find_newest_dataset(folder: str | Path) -> Path | None:
    """The most recently modified dataset under `folder` (a subfolder with kohya `N_name` folders, a
    manifest.jsonl or, a referenced dataset, captions.jsonl); None when there is none. Used to open "the one
    just built" by default."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for sub in os.scandir(folder):
        if not sub.is_dir():
            continue
        path = Path(sub.path)
        try:
            children = list(os.scandir(path))
        except OSError:
            continue
        listed = (MANIFEST_FILE, CAPTIONS_FILE)  # the file a (referenced) build rewrites last, and edits
        is_dataset = any(c.name in listed for c in children) or any(
            c.is_dir() and KOHYA_FOLDER.match(c.name) for c in children
        )
        if not is_dataset:
            continue
        mtime = max([sub.stat().st_mtime] + [c.stat().st_mtime for c in children if c.name in listed])
        if best is None or mtime > best[0]:
            best = (mtime, path)
    return best[1] if best else None
