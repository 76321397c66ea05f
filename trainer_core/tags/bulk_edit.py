"""Bulk tag edits over a dataset's caption files: add, remove or replace one tag, undoable.

Captions keep HakuBooru's shape `head, |||flexible` (specs/dataset.md §3.1): an edited caption is rewritten as
`", ".join(head) + ", |||" + ", ".join(flexible)`, so an empty head stays `", |||..."` and the separator is
never dropped, even when a side becomes empty. Tags are matched the way users type them: spaces or underscores,
any case, `\\(` prompt escapes undone (`normalize_tag_name(unescape_prompt_text(...))`).

Only the first line of a caption file is edited (it is the caption; see dataset_index); further lines, a BOM and
the line ending are kept. Every changed file is replaced atomically, and `manifest.jsonl`'s caption field is
rewritten for the same files so the two never disagree. Before any caption is written, the previous bytes of
every file about to change are saved in an undo journal (edit_journal), so `undo_last` can restore them, also
after a crash, a cancel or a GUI restart.

A referenced dataset (dataset/image_refs.py) keeps its captions in `captions.jsonl` only (`{"id", "caption"}`
lines): `apply_manifest_edit` edits the `caption` fields there (the same rules), and the file is replaced in one
atomic rename, so a cancel or a crash leaves every caption old or every one new. Its journal holds only the
changed lines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..dataset.ref_table import CAPTIONS_FILE
from ..errors import Cancelled, KxlError
from ..progress import Progress, ensure_progress
from .caption_processing import KEEP_TOKENS_SEPARATOR
from .dataset_index import CAPTION_SUFFIX, MANIFEST_FILE, DatasetIndex
from .edit_journal import (
    JournalFile,
    JournalLines,
    discard_journal,
    rewrite_journal,
    split_lines,
    write_journal,
)
from .text import normalize_tag_name, tag_to_caption_text, unescape_prompt_text

OPERATIONS = ("add", "remove", "replace")
_JOIN = ", "
_HEAD_END = ", " + KEEP_TOKENS_SEPARATOR  # HakuBooru: ", " always before "|||", no space after it


def tag_key(text: str) -> str:
    """Match key of a tag as typed or as written in a caption."""
    return normalize_tag_name(unescape_prompt_text(text))


def caption_form(text: str) -> str:
    """How a typed tag is written into captions: escapes undone, HakuBooru's underscore rule (len > 3)."""
    return tag_to_caption_text(unescape_prompt_text(text).strip())


def _check_tag(text: str, what: str) -> None:
    written = caption_form(text)
    if not written:
        raise KxlError(f"{what} is empty")
    for bad, name in ((",", "a comma"), (KEEP_TOKENS_SEPARATOR, "'|||'"), ("\n", "a line break")):
        if bad in written:
            raise KxlError(f"{what} {text!r} contains {name}: a caption tag cannot hold it")


@dataclass(frozen=True)
class TagEdit:
    """One bulk operation. `head` (add only): put the tag in the fixed head before `|||` instead of at the end
    of the flexible part."""

    operation: str  # "add" | "remove" | "replace"
    tag: str
    new_tag: str = ""  # replace only
    head: bool = False

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise KxlError(f"unknown tag edit {self.operation!r} (expected add, remove or replace)")
        _check_tag(self.tag, "tag")
        if self.operation == "replace":
            _check_tag(self.new_tag, "replacement tag")
        if self.head and self.operation != "add":
            raise KxlError("only an added tag can be placed in the fixed head")

    @property
    def key(self) -> str:
        return tag_key(self.tag)

    @property
    def text(self) -> str:
        return caption_form(self.tag)

    @property
    def new_text(self) -> str:
        return caption_form(self.new_tag)

    def describe(self) -> str:
        if self.operation == "add":
            return f'add "{self.text}" ({"fixed head" if self.head else "flexible part"})'
        if self.operation == "remove":
            return f'remove "{self.text}"'
        return f'replace "{self.text}" with "{self.new_text}"'


@dataclass(frozen=True)
class CaptionChange:
    text: str  # the new caption (the original, untouched, when nothing changed)
    added: int = 0
    removed: int = 0
    replaced: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.replaced)


def _segments(line: str) -> list[list[str]]:
    # Same split as the trainer and dataset_index.split_caption: at most head / flexible / suffix.
    return [
        [t.strip() for t in part.split(",") if t.strip()] for part in line.split(KEEP_TOKENS_SEPARATOR, 2)
    ]


def _join(segments: list[list[str]]) -> str:
    return _HEAD_END.join(_JOIN.join(seg) for seg in segments)


def edit_caption(caption: str, edit: TagEdit) -> CaptionChange:
    """Apply one edit to one caption line (pure; no files)."""
    segments = _segments(caption)
    flex = 1 if len(segments) > 1 else 0
    key = edit.key
    added = removed = replaced = 0
    if edit.operation == "add":
        if any(tag_key(t) == key for seg in segments for t in seg):
            return CaptionChange(caption)
        if edit.head:
            if len(segments) == 1:  # a plain kohya caption gains a head: everything else stays flexible
                segments.insert(0, [])
            segments[0].append(edit.text)
        else:
            segments[flex].append(edit.text)
        added = 1
    elif edit.operation == "remove":
        for i, seg in enumerate(segments):
            kept = [t for t in seg if tag_key(t) != key]
            removed += len(seg) - len(kept)
            segments[i] = kept
    else:
        new_key, new_text = tag_key(edit.new_tag), edit.new_text
        # When the new tag is already there, the old one is dropped rather than duplicated; the same rule keeps
        # a caption that held the old tag twice from getting the new one twice.
        have_new = new_key != key and any(tag_key(t) == new_key for seg in segments for t in seg)
        for i, seg in enumerate(segments):
            out: list[str] = []
            for t in seg:
                if tag_key(t) != key:
                    out.append(t)
                elif have_new:
                    removed += 1
                else:
                    out.append(new_text)
                    have_new = True
                    replaced += t != new_text
            segments[i] = out
    change = CaptionChange(_join(segments), added, removed, replaced)
    return change if change.changed else CaptionChange(caption)


# -- caption files ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FileText:
    """A caption file cut into the part we edit (its first line, stripped) and the bytes around it."""

    prefix: str  # BOM and leading whitespace
    line: str
    rest: str  # trailing whitespace, line ending and any further lines

    @staticmethod
    def parse(text: str) -> _FileText:
        end = text.find("\n")
        first, tail = (text, "") if end < 0 else (text[:end], text[end:])
        body = first.lstrip("\ufeff \t")
        prefix = first[: len(first) - len(body)]
        line = body.rstrip()
        return _FileText(prefix, line, body[len(line) :] + tail)

    def with_line(self, line: str) -> bytes:
        return (self.prefix + line + self.rest).encode("utf-8")


@dataclass
class BulkEditSummary:
    edit: TagEdit
    files_considered: int
    files_changed: int = 0
    tags_added: int = 0
    tags_removed: int = 0
    tags_replaced: int = 0
    manifest_updated: bool = False
    skipped: list[str] = field(default_factory=list)  # "path: reason" for files left alone
    journal: Path | None = None  # the undo journal written for this edit (None: nothing changed)

    def describe(self) -> str:
        counts = [
            f"{n:,} tag(s) {what}"
            for n, what in (
                (self.tags_added, "added"),
                (self.tags_removed, "removed"),
                (self.tags_replaced, "replaced"),
            )
            if n
        ]
        text = (
            f"{self.edit.describe()}: {self.files_changed:,} of {self.files_considered:,} caption(s) changed"
        )
        if counts:
            text += " (" + ", ".join(counts) + ")"
        if self.skipped:
            text += f"; {len(self.skipped):,} skipped"
        return text


@dataclass(frozen=True)
class _Planned:
    rel: str
    before: bytes
    after: bytes
    caption: str


def _relative(root: Path, path: str | Path) -> str:
    p = Path(path)
    if (
        not p.is_absolute()
        and root.parts
        and p.parts[: len(root.parts)] == root.parts
        and not root.is_absolute()
    ):
        p = p.relative_to(root)  # a path built from a relative root ("ds/1_a/0.txt" under "ds")
    elif p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            raise KxlError("caption file is not inside the dataset folder", path=path) from None
    return p.as_posix()


def apply_bulk_edit(
    root: str | Path,
    caption_files: Iterable[str | Path],
    edit: TagEdit,
    progress: Progress | None = None,
) -> BulkEditSummary:
    """Edit the given caption files (paths relative to `root`, or absolute inside it) and the dataset's
    manifest. A missing, unreadable or non-UTF-8 caption file is skipped and listed, never rewritten.

    Cancelling (progress.check_cancelled) stops between two files: each file is then either old or new, the
    manifest matches the captions written so far, and the journal lets `undo_last` restore them."""
    root = Path(root)
    progress = ensure_progress(progress)
    rels = list(dict.fromkeys(_relative(root, f) for f in caption_files))
    summary = BulkEditSummary(edit, len(rels))
    progress.stage(f"reading {len(rels):,} caption(s)")
    planned: list[_Planned] = []
    for done, rel in enumerate(rels, 1):
        item = _plan_file(root, rel, edit, summary)
        if item is not None:
            planned.append(item)
        if done % 512 == 0 or done == len(rels):
            progress.update(done, len(rels))
            progress.check_cancelled()
    if not planned:
        return summary

    manifest_path = root / MANIFEST_FILE
    manifest_before = _read_manifest_bytes(manifest_path, summary)
    manifest_after = (
        _manifest_with_captions(manifest_before, {p.rel: p.caption for p in planned})
        if manifest_before is not None
        else None
    )
    journal_files = [JournalFile(p.rel, p.before, p.after) for p in planned]
    if manifest_after is not None and manifest_after != manifest_before:
        journal_files.append(JournalFile(MANIFEST_FILE, manifest_before, manifest_after))
    journal = write_journal(root, edit.describe(), journal_files)
    summary.journal = journal

    progress.stage(f"writing {len(planned):,} caption(s)")
    written = 0
    try:
        for item in planned:
            progress.check_cancelled()
            atomic_write_bytes(root / item.rel, item.after)
            written += 1
            progress.update(written, len(planned))
    except BaseException as exc:
        # Cancelled, or a write failed (disk full): the manifest still follows the captions written so far.
        try:
            _finish_partial(root, journal, planned[:written], manifest_before)
        except OSError:
            if isinstance(exc, Cancelled):
                raise
            # The first failure is the one to report; the full journal still lets undo restore everything.
        raise
    if manifest_after is not None and manifest_after != manifest_before:
        atomic_write_bytes(manifest_path, manifest_after)
        summary.manifest_updated = True
    summary.files_changed = len(planned)
    return summary


def _plan_file(root: Path, rel: str, edit: TagEdit, summary: BulkEditSummary) -> _Planned | None:
    try:
        before = (root / rel).read_bytes()
    except FileNotFoundError:
        summary.skipped.append(f"{rel}: no caption file")
        return None
    except OSError as exc:
        summary.skipped.append(f"{rel}: cannot be read ({exc.strerror or exc})")
        return None
    try:
        parsed = _FileText.parse(before.decode("utf-8"))
    except UnicodeDecodeError as exc:
        summary.skipped.append(f"{rel}: not UTF-8 (bad byte at offset {exc.start})")
        return None
    change = edit_caption(parsed.line, edit)
    if not change.changed:
        return None
    summary.tags_added += change.added
    summary.tags_removed += change.removed
    summary.tags_replaced += change.replaced
    return _Planned(rel, before, parsed.with_line(change.text), change.text)


def _read_manifest_bytes(path: Path, summary: BulkEditSummary) -> bytes | None:
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except OSError as exc:
        summary.skipped.append(f"{MANIFEST_FILE}: cannot be read ({exc.strerror or exc}); not updated")
        return None
    except UnicodeDecodeError:
        summary.skipped.append(f"{MANIFEST_FILE}: not UTF-8; its captions were not updated")
        return None
    return data


def _manifest_with_captions(data: bytes, captions: dict[str, str]) -> bytes:
    """The manifest with the caption of each record whose image goes with a changed caption file replaced.
    Other lines keep their exact bytes; a line that is not a JSON record is left alone (the index reports it)."""
    out: list[str] = []
    for line in data.decode("utf-8").splitlines(keepends=True):
        record = _json_record(line)
        rel = _manifest_caption_rel(record) if record is not None else None
        if rel is None or rel not in captions or record.get("caption") == captions[rel]:
            out.append(line)
            continue
        record["caption"] = captions[rel]
        ending = line[len(line.rstrip("\r\n")) :]
        out.append(json.dumps(record, ensure_ascii=False) + (ending or ""))
    return "".join(out).encode("utf-8")


def _json_record(line: str) -> dict | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _manifest_caption_rel(record: dict) -> str | None:
    file = record.get("file")
    if not isinstance(file, str) or not file:
        return None
    return Path(file.replace("\\", "/")).with_suffix(CAPTION_SUFFIX).as_posix()


def _finish_partial(
    root: Path, journal: Path, written: Sequence[_Planned], manifest_before: bytes | None
) -> None:
    """Bring the manifest in line with the captions already written and shrink the journal to them. The journal
    goes first: if the manifest write then fails, undo finds the manifest still old, which it accepts."""
    if not written:
        discard_journal(journal)
        return
    files = [JournalFile(p.rel, p.before, p.after) for p in written]
    after = None
    if manifest_before is not None:
        after = _manifest_with_captions(manifest_before, {p.rel: p.caption for p in written})
        if after != manifest_before:
            files.append(JournalFile(MANIFEST_FILE, manifest_before, after))
    rewrite_journal(journal, files)
    if after is not None and after != manifest_before:
        atomic_write_bytes(root / MANIFEST_FILE, after)


# -- whole datasets --------------------------------------------------------------------------------------------
def _entry_positions(index: DatasetIndex, entries: Sequence[int] | np.ndarray | None) -> np.ndarray:
    if entries is None:
        return np.arange(len(index), dtype=np.int64)
    return np.unique(np.asarray(entries, dtype=np.int64))


def edit_dataset(
    index: DatasetIndex,
    edit: TagEdit,
    entries: Sequence[int] | np.ndarray | None = None,
    progress: Progress | None = None,
) -> BulkEditSummary:
    """`apply_bulk_edit` on the caption files of `entries` (positions in the index; None = every image), or
    `apply_manifest_edit` on their records when the dataset keeps its captions in the manifest."""
    rows = _entry_positions(index, entries)
    if index.captions_in_manifest:
        return apply_manifest_edit(index.root, [index.refs[int(i)].post for i in rows], edit, progress)
    files = [_relative(index.root, index.caption_path(int(i))) for i in rows]
    return apply_bulk_edit(index.root, files, edit, progress)


_LINE_ID = re.compile(r'\{"id": (-?\d+),')  # how every caption line the builder writes starts


def apply_manifest_edit(
    root: str | Path, posts: Iterable[int], edit: TagEdit, progress: Progress | None = None
) -> BulkEditSummary:
    """Edit the `caption` of the records of `posts` (post ids) in a referenced dataset's captions.jsonl: only
    the first line of a caption is edited (as in a caption file), each changed record is written back as the
    builder writes records (json.dumps, key order kept), every other line keeps its bytes. One atomic rewrite
    of the file after the undo journal; a cancel before it changes nothing. A record without a text caption is
    skipped and listed. The file keeps one line per row of the reference table, in the same order."""
    root = Path(root)
    progress = ensure_progress(progress)
    wanted = {int(p) for p in posts}
    summary = BulkEditSummary(edit, len(wanted))
    path = root / CAPTIONS_FILE
    try:
        before = path.read_bytes()
        before.decode("utf-8")
    except OSError as exc:
        raise KxlError(f"cannot be read ({exc.strerror or exc})", path=path) from None
    except UnicodeDecodeError as exc:
        raise KxlError(f"not UTF-8 (bad byte at offset {exc.start})", path=path) from None
    lines = split_lines(before)
    progress.stage(f"editing {len(wanted):,} caption(s)")
    changed: list[tuple[int, str]] = []  # (line number, previous line)
    seen = 0
    for n, raw in enumerate(lines):
        if n % 8192 == 0:
            progress.update(seen, len(wanted))
            progress.check_cancelled()
        line = raw.decode("utf-8")
        m = _LINE_ID.match(line)
        record = None
        if m is None:  # not the builder's layout: the id only from the parsed record
            record = _json_record(line)
            pid = record.get("id") if record is not None else None
        else:
            pid = int(m.group(1))
        if type(pid) is not int or pid not in wanted:
            continue
        seen += 1
        record = record if record is not None else _json_record(line)
        caption = record.get("caption") if record is not None else None
        if not isinstance(caption, str):
            summary.skipped.append(f"{CAPTIONS_FILE} line {n + 1}: post {pid} has no caption text")
            continue
        parsed = _FileText.parse(caption)
        change = edit_caption(parsed.line, edit)
        if not change.changed:
            continue
        summary.tags_added += change.added
        summary.tags_removed += change.removed
        summary.tags_replaced += change.replaced
        record["caption"] = parsed.with_line(change.text).decode("utf-8")
        ending = line[len(line.rstrip("\r\n")) :]
        changed.append((n, line))
        lines[n] = (json.dumps(record, ensure_ascii=False) + ending).encode("utf-8")
    progress.update(len(wanted), len(wanted))
    if not changed:
        return summary
    after = b"".join(lines)
    del lines
    progress.check_cancelled()
    summary.journal = write_journal(root, edit.describe(), [JournalLines(CAPTIONS_FILE, changed, before, after)],
                                    captions=len(changed))  # fmt: skip
    progress.stage(f"writing {CAPTIONS_FILE} ({len(changed):,} caption(s) changed)")
    try:
        atomic_write_bytes(path, after)
    except BaseException:
        discard_journal(summary.journal)  # nothing was written: no edit to undo
        summary.journal = None
        raise
    summary.files_changed = len(changed)
    summary.manifest_updated = True
    return summary


@dataclass(frozen=True)
class EditPreview:
    considered: int  # images in scope
    changed: int  # captions the edit would rewrite
    samples: list[tuple[str, str, str]]  # (image, caption before, caption after) of the first few

    def describe(self) -> str:
        return f"{self.changed:,} of {self.considered:,} caption(s) would change"


def _editable(index: DatasetIndex, i: int) -> bool:
    """Whether the edit can rewrite this image's caption file: it exists and is UTF-8. Only an empty caption
    can hide an unreadable file (the index reads those as ""), so only those few files are opened."""
    entry = index.entries[i]
    if not entry.has_caption_file:
        return False
    if entry.caption or index.captions_in_manifest:
        return True
    try:
        index.caption_path(i).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return True


def preview_bulk_edit(
    index: DatasetIndex,
    edit: TagEdit,
    entries: Sequence[int] | np.ndarray | None = None,
    samples: int = 3,
) -> EditPreview:
    """How many captions in scope the edit changes and a before/after sample, counted with the index's tag
    postings so that it is instant on 100k images (the GUI recomputes it while the user types). Images without
    a readable caption file are not counted: the edit skips them."""
    rows = _entry_positions(index, entries)
    with_tag = index.images_with_tag(unescape_prompt_text(edit.tag))
    if edit.operation == "add":
        candidates = np.setdiff1d(rows, with_tag, assume_unique=True)
    else:
        candidates = np.intersect1d(rows, with_tag, assume_unique=True)
    editable = np.fromiter((_editable(index, int(i)) for i in candidates), bool, len(candidates))
    candidates = candidates[editable]
    shown: list[tuple[str, str, str]] = []
    changed = len(candidates)
    for i in candidates:
        if len(shown) >= samples:
            break
        entry = index.entries[int(i)]
        change = edit_caption(entry.caption, edit)
        if change.changed:
            shown.append((entry.image, entry.caption, change.text))
        else:
            changed -= 1  # e.g. a replace that only re-spells a tag already written that way
    return EditPreview(len(rows), changed, shown)
