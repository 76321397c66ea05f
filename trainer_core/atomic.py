"""Atomic file output: write to a temp file in the destination folder, fsync, rename.

A crash, a cancel or a full disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import KxlError


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to `dest`; on success it is fsynced and renamed over `dest`, else removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; outputs are ordinary user files, so apply the usual umask instead.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | Path, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


# "The disk is full" in its three forms: no space left, over the user's quota, over the file size limit (a file
# system's maximum, or RLIMIT_FSIZE).
DISK_FULL_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None
)


def write_error(exc: OSError, dest: str | Path, hint: str | None = None) -> KxlError:
    """The user-facing error for a failed write of `dest`: it names the file and says when the disk is full."""
    dest = Path(dest)
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        return KxlError(
            f"disk full while writing {dest.name} ({reason})",
            path=dest.parent,
            hint=hint or "free some space and run the same command again",
        )
    return KxlError(f"cannot write {dest.name} ({reason})", path=dest.parent, hint=hint)


def atomic_write_text_checked(dest: str | Path, text: str, hint: str | None = None) -> None:
    """`atomic_write_text`, with an OSError (a full disk, a read-only folder) turned into `write_error`."""
    try:
        atomic_write_text(dest, text)
    except OSError as exc:
        raise write_error(exc, dest, hint) from None


def check_free_space(folder: str | Path, needed_bytes: int, what: str = "output") -> None:
    """Refuse to start a job that cannot fit, instead of failing at 90%."""
    folder = Path(folder)
    free = shutil.disk_usage(_existing_ancestor(folder)).free
    if free < needed_bytes:
        raise KxlError(
            f"not enough free disk space for the {what}: need {needed_bytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free",
            path=folder,
        )


def _existing_ancestor(folder: Path) -> Path:
    """`folder`, or its nearest existing parent: where an output that creates folders will land."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(folder: str | Path) -> int | None:
    """Free space on the file system `folder` is (or will be) on; None when it cannot be read."""
    try:
        return shutil.disk_usage(_existing_ancestor(Path(folder))).free
    except OSError:
        return None
