"""Undo journal of bulk tag edits: `<dataset>/.kxl-undo/<n>.jsonl`, one file per edit, newest = highest n.

Line 1 is a header (what the edit was, when, how many files); every further line is one file the edit changes:
its path relative to the dataset, its previous bytes (as text, or base64 when they are not UTF-8) and the
SHA-256 of the bytes the edit writes. A big file of which an edit rewrites a few lines (the manifest of a
referenced dataset, where the captions live) is journaled as those lines' previous text plus the SHA-256 of
the whole file before and after (`JournalLines`), so an edit of 10 captions in a 1 M-line manifest journals 10
lines, not the manifest. The journal is written atomically *before* the first caption is touched,
so after a crash or a cancel every listed file is either still old (nothing to restore) or new (restored), and
undo works across GUI restarts. A file whose bytes are neither is one somebody changed since the edit: undo then
refuses rather than lose that change.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import KxlError
from ..progress import Progress, ensure_progress

UNDO_DIR = ".kxl-undo"
JOURNAL_FORMAT = "kxl-tag-edit-undo"
KEEP_JOURNALS = 20  # older edits can no longer be undone; their journals would only take disk space


def _sha256(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class JournalFile:
    path: str  # relative to the dataset root, "/"-separated
    before: bytes
    after: bytes


@dataclass(frozen=True)
class JournalLines:
    """A text file of which the edit replaced some lines (never adding or removing one)."""

    path: str  # relative to the dataset root, "/"-separated
    lines: list[tuple[int, str]]  # (0-based line number, its previous text with its line ending)
    before: bytes  # the whole file before and after, for the two checksums (not stored)
    after: bytes


@dataclass(frozen=True)
class JournalInfo:
    path: Path
    number: int
    description: str
    files: int
    created: str  # local time, "YYYY-MM-DD HH:MM:SS"
    captions: int | None = None  # captions changed, when they are not one file each (a referenced dataset)


@dataclass(frozen=True)
class UndoSummary:
    description: str
    files_restored: int
    files_already_old: int  # listed but never written (a cancelled or crashed edit)
    captions_restored: int | None = None  # of files_restored, the caption files (None: not counted apart)

    def describe(self) -> str:
        # Said in captions, as the edit itself was ("10 captions changed" -> "10 caption(s) restored"); the
        # dataset's own files the edit also rewrote (the manifest) are mentioned, not added to that count.
        captions = self.files_restored if self.captions_restored is None else self.captions_restored
        text = f"undid {self.description}: {captions:,} caption(s) restored"
        if self.files_restored > captions:
            text += f" (and {self.files_restored - captions:,} dataset file(s))"
        if self.files_already_old:
            text += f" ({self.files_already_old:,} had not been written)"
        return text


def undo_dir(root: str | Path) -> Path:
    return Path(root) / UNDO_DIR


def _journals(root: str | Path) -> list[tuple[int, Path]]:
    folder = undo_dir(root)
    if not folder.is_dir():
        return []
    found = [(int(p.stem), p) for p in folder.glob("*.jsonl") if p.stem.isdigit()]
    return sorted(found)


def _encode(data: bytes) -> dict[str, str]:
    try:
        return {"before": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"before_b64": base64.b64encode(data).decode("ascii")}


def _journal_text(
    description: str, files: Sequence[JournalFile | JournalLines], captions: int | None = None
) -> str:
    header = {
        "format": JOURNAL_FORMAT,
        "version": 1,
        "description": description,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "files": len(files),
    }
    if captions is not None:
        header["captions"] = captions  # captions kept in a file with other data: counted, not a file each
    lines = [json.dumps(header, ensure_ascii=False)]
    for f in files:
        if isinstance(f, JournalLines):
            record = {"path": f.path, "lines": [[i, text] for i, text in f.lines],
                      "before_sha256": _sha256(f.before), "after_sha256": _sha256(f.after)}  # fmt: skip
        else:
            record = {"path": f.path, **_encode(f.before), "after_sha256": _sha256(f.after)}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write_journal(root: str | Path, description: str, files: Sequence[JournalFile | JournalLines],
                  captions: int | None = None) -> Path:  # fmt: skip
    """Record a new edit (atomically) and drop journals older than the last KEEP_JOURNALS. `captions`: how many
    captions the edit changes, when they are not one file each (a referenced dataset's manifest)."""
    existing = _journals(root)
    number = existing[-1][0] + 1 if existing else 1
    path = undo_dir(root) / f"{number}.jsonl"
    atomic_write_text(path, _journal_text(description, files, captions))
    for _, old in existing[: max(0, len(existing) + 1 - KEEP_JOURNALS)]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    return path


def rewrite_journal(path: Path, files: Sequence[JournalFile]) -> None:
    """Replace the file list of a journal, keeping its header text (used when an edit was cancelled)."""
    header = _read_journal(path)[0]
    atomic_write_text(path, _journal_text(header["description"], files))


def discard_journal(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when empty: the dataset folder stays as it was before any edit


def last_edit(root: str | Path) -> JournalInfo | None:
    """The newest undoable edit of a dataset, or None (reads only the journal's first line)."""
    journals = _journals(root)
    if not journals:
        return None
    number, path = journals[-1]
    try:
        with open(path, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
        captions = header.get("captions")
        return JournalInfo(path, number, str(header["description"]), int(header["files"]), str(header["created"]),
                           captions if type(captions) is int else None)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return JournalInfo(path, number, "an edit with an unreadable journal", 0, "")


def _read_journal(path: Path) -> tuple[dict, list[dict]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KxlError(f"undo journal cannot be read ({exc})", path=path) from None
    records: list[dict] = []
    for line_no, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KxlError(f"undo journal line {line_no} is not JSON ({exc.msg})", path=path) from None
        if not isinstance(record, dict):
            raise KxlError(f"undo journal line {line_no} is not a JSON object", path=path)
        records.append(record)
    if not records or records[0].get("format") != JOURNAL_FORMAT:
        raise KxlError("not an undo journal of a tag edit", path=path)
    for line_no, record in enumerate(records[1:], 2):
        if not isinstance(record.get("path"), str) or not isinstance(record.get("after_sha256"), str):
            raise KxlError(f"undo journal line {line_no} lacks 'path' or 'after_sha256'", path=path)
        if "lines" in record:
            ok = (
                isinstance(record["lines"], list)
                and isinstance(record.get("before_sha256"), str)
                and all(
                    isinstance(x, list) and len(x) == 2 and type(x[0]) is int and isinstance(x[1], str)
                    for x in record["lines"]
                )
            )
            if not ok:
                raise KxlError(f"undo journal line {line_no} has damaged line records", path=path)
        elif not isinstance(record.get("before", record.get("before_b64")), str):
            raise KxlError(f"undo journal line {line_no} lacks the previous content", path=path)
    return records[0], records[1:]


def _before_bytes(record: dict) -> bytes:
    if "before" in record:
        return record["before"].encode("utf-8")
    return base64.b64decode(record["before_b64"])


def _target(root: Path, rel: str, journal: Path) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise KxlError(f"undo journal names a file outside the dataset: {rel!r}", path=journal)
    return root / rel


def undo_last(root: str | Path, progress: Progress | None = None) -> UndoSummary:
    """Restore the files of the newest edit to their exact previous bytes and remove its journal.

    Every file is checked before any is written: if one was changed since the edit (its bytes are neither the
    edit's result nor the original), nothing is restored and a KxlError names it."""
    root = Path(root)
    progress = ensure_progress(progress)
    journals = _journals(root)
    if not journals:
        raise KxlError("no tag edit to undo", path=root)
    journal = journals[-1][1]
    header, records = _read_journal(journal)
    restore: list[tuple[Path, bytes]] = []
    already_old = 0
    for record in records:
        path = _target(root, record["path"], journal)
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise KxlError(f"cannot be read to undo the edit ({exc.strerror or exc})", path=path) from None
        digest = _sha256(current)
        if "lines" in record:
            before = _patched(current, record["lines"]) if digest == record["after_sha256"] else None
            if before is not None and _sha256(before) == record["before_sha256"]:
                restore.append((path, before))
                continue
            if digest == record["before_sha256"]:
                already_old += 1
                continue
        elif digest == record["after_sha256"]:
            restore.append((path, _before_bytes(record)))
            continue
        elif current == _before_bytes(record):
            already_old += 1
            continue
        raise KxlError(
            f"changed since the tag edit ({header.get('description', 'last edit')}); undo refused so that "
            "the change is not lost",
            path=path,
            hint=f"put the file back as the edit left it, or delete {journal} to give up this undo step",
        )
    progress.stage(f"restoring {len(restore):,} file(s)")
    for done, (path, before) in enumerate(restore, 1):
        progress.check_cancelled()
        atomic_write_bytes(path, before)
        progress.update(done, len(restore))
    discard_journal(journal)
    captions = header.get("captions")
    if type(captions) is not int or not restore:
        captions = sum(1 for path, _ in restore if path.suffix == ".txt")
    return UndoSummary(str(header.get("description", "")), len(restore), already_old, captions)


def split_lines(data: bytes) -> list[bytes]:
    """A file's lines with their endings, cut at b"\\n" only (JSON Lines text may hold U+2028 and the like,
    which str.splitlines would also cut at); the line numbers of JournalLines count these."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _patched(current: bytes | None, lines: list[list]) -> bytes | None:
    """`current` with the journaled lines put back; None when the file no longer has those lines."""
    if current is None:
        return None
    parts = split_lines(current)
    for i, previous in lines:
        if not 0 <= i < len(parts):
            return None
        parts[i] = previous.encode("utf-8")
    return b"".join(parts)
