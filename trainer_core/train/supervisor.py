"""One training launch watched from a plain process: `kxl train` and `kxl demo run` (the GUI's RunMonitor drives
the same start and stop steps from Qt timers).

- Start: refuse a run folder another live trainer owns (its `.kxl-run.lock`, ownership.py) before anything starts,
  then start the accelerate launcher in its own session (runs.start_trainer), output to `logs/launcher.log`. With
  `tie_to_parent` (the CLI) the kernel kills the launcher when this process dies (Linux PDEATHSIG), and each rank,
  tied to the launcher the same way, then saves and ends: no orphans keep training after `kxl train` is killed.
- Stop: the stop command file plus SIGTERM to the ranks, not to the launcher: torch's launcher answers a signal by
  SIGKILLing its workers 30 s later, which could cut a full-size save in half. After `grace_s` the whole process
  group is terminated, then killed.
- Outcome: torch's launcher turns every rank failure into exit 1 and a page of tracebacks. The trainer's own exit
  code and message are in run.json / events.jsonl; `outcome()` returns those, with the log path for the rest.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KxlError
from .events import read_events, read_run_info, request_stop
from .runs import LAUNCHER_LOG, signal_group, start_trainer

STOP_GRACE_S = 600.0  # a full-size step plus the state save; then the group is terminated
TERM_GRACE_S = 20.0
EXIT_INTERRUPTED = 130


@dataclass
class Outcome:
    exit_code: int
    state: str  # finished | stopped | failed
    message: str
    log: Path


def _kill_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class Supervisor:
    def __init__(self, run_dir: Path, argv: list[str], env: dict[str, str], *, tie_to_parent: bool = False):
        self.run_dir = Path(run_dir)
        self.argv, self.env = argv, env
        self.tie_to_parent = tie_to_parent and sys.platform.startswith("linux")
        self.proc: subprocess.Popen | None = None
        self.stopping = False

    def start(self) -> subprocess.Popen:
        self.proc = start_trainer(self.argv, self.env, self.run_dir,
                                  preexec_fn=_kill_with_parent if self.tie_to_parent else None)  # fmt: skip
        return self.proc

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def ranks(self) -> list[Any]:
        """The launcher's descendant processes (the trainer ranks), as psutil processes."""
        import psutil

        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def request_stop(self) -> None:
        """Ask every rank to save and end after its current step; returns at once."""
        import psutil

        self.stopping = True
        request_stop(self.run_dir)
        for p in self.ranks():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass

    def stop(self, grace_s: float = STOP_GRACE_S, term_grace_s: float = TERM_GRACE_S) -> int:
        """request_stop, wait up to `grace_s`, then SIGTERM and SIGKILL the whole group. A KeyboardInterrupt while
        waiting (a second Ctrl+C) skips straight to the kill."""
        if self.proc is None:
            return 0
        self.request_stop()
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, term_grace_s), (signal.SIGKILL, None)):
            if sig is not None:
                signal_group(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:
                signal_group(self.proc.pid, signal.SIGKILL)
                return self.proc.wait()
        return self.proc.wait()

    def outcome(self, launcher_code: int) -> Outcome:
        return run_outcome(self.run_dir, launcher_code)


def run_outcome(run_dir: Path, launcher_code: int) -> Outcome:
    """The trainer's own verdict: run.json's state and exit code, else the last error event, else the launcher's."""
    log = run_dir / LAUNCHER_LOG
    info = read_run_info(run_dir) or {}
    state = str(info.get("state", ""))
    if state in ("done", "finished", "stopped"):
        # the trainer's own verdict wins: a launcher killed after its ranks saved and ended is not a failure
        return Outcome(0, "stopped" if state == "stopped" else "finished", "", log)
    errors = [e for e in read_events(run_dir) if e.get("type") == "error"]
    code = info.get("exit_code")
    message = str(info.get("message") or (errors[-1].get("message", "") if errors else ""))
    if not isinstance(code, int) or code == 0:
        code = errors[-1].get("exit_code") if errors else None
    if not isinstance(code, int) or code == 0:
        code = launcher_code if launcher_code > 0 else 1
    if not message:
        message = f"the trainer ended with exit code {launcher_code} before reporting why"
    return Outcome(code, "failed", message, log)


# ---------------------------------------------------------------------------------------------- console echo

_BANNER = re.compile(r"^={20,}\s*$")
_FINAL_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failure)\b")


class LogEcho:
    """Follows `logs/launcher.log` and passes its lines on, minus Python tracebacks and torch's failure banner:
    the terminal gets the trainer's own lines and one summary; the log file keeps everything."""

    def __init__(self, path: Path, out: Callable[[str], None]):
        self.path, self.out = path, out
        self.offset = path.stat().st_size if path.is_file() else 0
        self._partial = ""
        self._in_traceback = False
        self._in_banner = False
        self.hidden = 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(1 << 20)
        except OSError:
            return
        self.offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in self._filter(lines):
            self.out(line)

    def _filter(self, lines: list[str]) -> Iterator[str]:
        for line in lines:
            bare = line.split("] ", 1)[-1] if line.startswith("[rank") else line  # accelerate's rank prefix
            if self._in_banner:
                self.hidden += 1
                if _BANNER.match(bare):
                    self._in_banner = False
                continue
            if _BANNER.match(bare):
                self._in_banner, self.hidden = True, self.hidden + 1
                continue
            if bare.startswith("Traceback (most recent call last)"):
                self._in_traceback, self.hidden = True, self.hidden + 1
                continue
            if self._in_traceback:
                self.hidden += 1
                if _FINAL_LINE.match(bare):
                    self._in_traceback = False
                continue
            if "ChildFailedError" in bare or bare.startswith("W") and "torch.distributed.elastic" in bare:
                self.hidden += 1
                continue
            yield line


def supervise(sup: Supervisor, on_tick: Callable[[], None] | None = None, poll_s: float = 0.2) -> int:
    """Wait for the launch to end, calling `on_tick` between polls; Ctrl+C stops it gracefully (a second Ctrl+C
    kills it). Returns the launcher's exit code, or EXIT_INTERRUPTED after an interrupt."""
    interrupted = False
    while True:
        try:
            while sup.poll() is None:
                if on_tick is not None:
                    on_tick()
                time.sleep(poll_s)
            break
        except KeyboardInterrupt:
            if interrupted and sup.proc is not None:  # a second Ctrl+C: no more waiting
                print("\nkilling the trainer", file=sys.stderr, flush=True)
                signal_group(sup.proc.pid, signal.SIGKILL)
                sup.proc.wait()
                return EXIT_INTERRUPTED
            interrupted = True
            print("\nstopping: the trainer saves at the end of its current step (Ctrl+C again to kill it)",
                  file=sys.stderr, flush=True)  # fmt: skip
            sup.request_stop()
    if on_tick is not None:
        on_tick()
    code = sup.proc.returncode if sup.proc is not None else 0
    return EXIT_INTERRUPTED if interrupted and code != 0 else code


def raise_if_failed(outcome: Outcome) -> None:
    if outcome.exit_code != 0:
        raise KxlError(f"training failed (exit code {outcome.exit_code}): {outcome.message}",
                       path=outcome.log.parent.parent, hint=f"the full log is {outcome.log}")  # fmt: skip
