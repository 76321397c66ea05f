"""User-facing errors.

Anything the user can fix (a bad path, a wrong file, a broken DB) is raised as `KxlError` with a message that
names the file, key or row. The CLI prints it and exits with code 2; the GUI shows it in a dialog. Tracebacks are
reserved for our own bugs.
"""

from __future__ import annotations

from pathlib import Path


class KxlError(Exception):
    """An error caused by input the user controls. `str(err)` is a complete, user-readable sentence."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.hint = hint
        text = f"{path}: {message}" if path is not None else message
        if hint:
            text = f"{text}\n  hint: {hint}"
        super().__init__(text)


class CheckpointError(KxlError):
    """A model file is missing, truncated, not SDXL, or otherwise unusable."""


class DatabaseError(KxlError):
    """The metadata DB is missing or does not have HakuBooru's schema."""


class WorkspaceError(KxlError):
    """A workspace folder or its workspace.toml is missing or inconsistent."""


class Cancelled(Exception):
    """Raised inside a long job when its cancel token was set. Not an error: callers report "cancelled"."""
