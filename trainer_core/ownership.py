"""One owner per output: a lock file holding the owner's pid and process start time.

A run folder, a dataset folder or a merge output is written by one process at a time. The first writer creates
`<lock>` exclusively (O_CREAT|O_EXCL, so two starters cannot both win) with JSON `{"pid", "start", "host", "what"}`;
a second one gets "already running (pid N)". The start time is the process's creation time (psutil), so a lock
whose pid died, or was reused by another program after a reboot, is recognised as stale and taken over instead of
blocking the user forever. `process_start_time` and `process_alive` here are the project's one definition of a
process's identity: run.json and launch.json are checked with them too.

The lock holds data only (JSON); nothing in it is executed. A lock written on another host cannot be checked and
is treated as live: shared network folders are exactly where two machines would collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import KxlError


class AlreadyRunning(KxlError):
    """Another live process owns the output."""


@dataclass(frozen=True)
class Owner:
    pid: int
    start: float | None
    host: str
    what: str


_START_TIME_SLACK_S = 1.0  # create_time is rounded differently by different readers


def process_start_time(pid: int) -> float | None:
    """When `pid` started (psutil create_time, seconds since the epoch), or None if it does not exist."""
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess and friends: the process is gone
        return None


def process_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when `start_time` is given, is the process that started then."""
    if not pid:
        return False
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if start_time is not None and abs(proc.create_time() - float(start_time)) > _START_TIME_SLACK_S:
            return False  # the pid was recycled by an unrelated process
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _this_owner(what: str) -> Owner:
    return Owner(os.getpid(), process_start_time(os.getpid()), socket.gethostname(), what)


def read_owner(lock: Path) -> Owner | None:
    """The recorded owner, or None when there is no lock (an unreadable lock counts as a stale one)."""
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        start = info.get("start")
        return Owner(int(info["pid"]), None if start is None else float(start), str(info.get("host", "")),
                     str(info.get("what", "")))  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Owner(-1, None, socket.gethostname(), "")


def owner_alive(owner: Owner) -> bool:
    if owner.host and owner.host != socket.gethostname():
        return True
    return owner.pid > 0 and process_alive(owner.pid, owner.start)


def live_owner(lock: Path) -> Owner | None:
    """The owner if it is a live process, else None (no lock, or a stale one)."""
    owner = read_owner(lock)
    return owner if owner is not None and owner_alive(owner) else None


def acquire(lock: Path, what: str, *, pid: int | None = None) -> Owner:
    """Take `lock` for this process (or for `pid`, a child we started); raise AlreadyRunning if it is held."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = _this_owner(what) if pid is None else Owner(pid, process_start_time(pid), socket.gethostname(), what)
    payload = json.dumps({"pid": me.pid, "start": me.start, "host": me.host, "what": what}).encode()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            current = read_owner(lock)
            if current is not None and owner_alive(current):
                # Not re-entrant: two jobs of one process (two GUI workers) must not share an output either.
                where = "" if current.host in ("", me.host) else f" on {current.host}"
                if current.pid == os.getpid() and not where:
                    where = ", this program"
                raise AlreadyRunning(
                    f"{current.what or 'another job'} is already running (pid {current.pid}{where})",
                    path=lock.parent,
                    hint="wait for it, stop it, or choose another folder",
                ) from None
            # stale: remove it and race again for the exclusive create
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        return me
    raise AlreadyRunning("could not take the lock: another process keeps replacing it", path=lock)


def release(lock: Path, owner: Owner | None = None) -> None:
    """Remove `lock` if it still names `owner` (default: this process)."""
    current = read_owner(lock)
    if current is None:
        return
    pid = os.getpid() if owner is None else owner.pid
    if current.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def owned(lock: Path, what: str) -> Iterator[Owner]:
    """Hold `lock` for the duration of the block."""
    me = acquire(lock, what)
    try:
        yield me
    finally:
        release(lock, me)
