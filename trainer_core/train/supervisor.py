"""The one trainer supervisor: `kxl train`, `kxl demo run` and the Train tab's RunMonitor start, watch and stop a
training launch through `Supervisor`. No Qt and no waiting inside its steps: the GUI calls them from a timer,
`supervise()` and `Supervisor.stop()` loop over them for the plain processes.

- Start: refuse a run folder another live trainer owns (its `.kxl-run.lock`, ownership.py) before anything starts,
  then start the accelerate launcher in its own session (runs.start_trainer: `launch.json`, output to
  `logs/launcher.log`), so stop and kill reach the whole DDP tree and never our own process group.
  `tie_to_parent` (the CLI, the demo) makes the kernel kill the launcher when this process dies (Linux
  PDEATHSIG); each rank, tied to the launcher the same way, then saves and ends: no orphans keep training after
  `kxl train` is killed. The GUI leaves it off: a run must survive the window closing (reattach from the runs list).
- Follow: `Supervisor.follow(run_dir)` watches a run someone else started (an earlier GUI, the CLI) through its
  files and recorded process identities (pid + start time), checked at most once per PROCESS_CHECK_S.
- Handshake: after a launch the trainer must append its first event within `handshake_s`; if it does not, `tick()`
  reports it once (the log's tail says why) and keeps waiting: a first-time model load can be slow, and stopping
  stays the user's call. A launcher that dies before its first event is a failure the outcome names.
- Stop: the stop command file plus SIGTERM to the ranks (the trainer answers both by saving at the end of its
  step), not to the launcher: torch's launcher answers a signal by SIGKILLing its workers 30 s later, which could
  cut a full-size save in half. Before the handshake the trainer has not read its command files yet (it clears
  old ones at start), so only a signal to the whole group reaches it. After `stop_grace_s` the whole process group
  is sent SIGTERM, after `term_grace_s` more SIGKILL.
- Outcome: torch's launcher turns every rank failure into exit 1 and a page of tracebacks. The trainer's own exit
  code and message are in run.json / events.jsonl; `run_outcome()` returns those, with the log path for the rest.
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
from .events import EVENTS_FILE, read_events, read_run_info, request_stop
from .runs import (
    LAUNCHER_LOG,
    group_members,
    read_launch_info,
    run_log_tail,
    run_process_group,
    signal_group,
    start_trainer,
    trainer_alive,
)

HANDSHAKE_S = 120.0  # interpreter, torch and model start-up before the first event
STOP_GRACE_S = 600.0  # a full-size step plus the state save; then the group is terminated
TERM_GRACE_S = 20.0
PROCESS_CHECK_S = 1.0  # how often a followed run's processes are looked up (psutil + two small files)
EXIT_INTERRUPTED = 130
# stop phases: nothing asked, asked to save and end (stop file + SIGTERM ranks), SIGTERM group, SIGKILL group
IDLE, ASKED, TERMINATED, KILLED = range(4)


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


def _file_identity(path: Path) -> tuple[int, int]:
    """(inode, size) of a file; (0, 0) when there is none."""
    try:
        st = path.stat()
    except OSError:
        return 0, 0
    return st.st_ino, st.st_size


class Supervisor:
    """One launch (or one followed run) and its process group. Every method returns at once except `stop()`."""

    def __init__(self, run_dir: str | Path, argv: list[str] | None = None, env: dict[str, str] | None = None, *,
                 tie_to_parent: bool = False, handshake_s: float = HANDSHAKE_S, stop_grace_s: float = STOP_GRACE_S,
                 term_grace_s: float = TERM_GRACE_S) -> None:  # fmt: skip
        self.run_dir = Path(run_dir)
        self.argv, self.env = list(argv or []), dict(env or {})
        self.tie_to_parent = tie_to_parent and sys.platform.startswith("linux")
        self.handshake_s, self.stop_grace_s, self.term_grace_s = handshake_s, stop_grace_s, term_grace_s
        self.proc: subprocess.Popen | None = None
        self.pgid: int | None = None
        self.exit_code: int | None = None  # the launcher's, once it ended (None for a followed run)
        self.handshake = False  # the trainer has written an event since the launch
        self.handshake_late = False  # ... and did not within handshake_s
        self.phase = IDLE
        self._deadline = 0.0
        self._started = 0.0
        self._events_at_launch = (0, 0)
        self._ended = False
        self._last_check = float("-inf")

    @classmethod
    def follow(cls, run_dir: str | Path, **kwargs: Any) -> Supervisor:
        """Watch a run this process did not start: its process group comes from launch.json / run.json."""
        sup = cls(run_dir, **kwargs)
        sup.pgid = run_process_group(sup.run_dir)
        sup.handshake = True  # it is past its start (or its files would not say where it runs)
        return sup

    # ---- state --------------------------------------------------------------------------------------------
    @property
    def owns_process(self) -> bool:
        """This process started the launcher and it is still up."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def stopping(self) -> bool:
        return self.phase != IDLE

    def start(self) -> subprocess.Popen:
        """Start the launcher (raises KxlError if the folder belongs to a live trainer or nothing can start)."""
        self._events_at_launch = _file_identity(self.run_dir / EVENTS_FILE)
        self.proc = start_trainer(self.argv, self.env, self.run_dir,
                                  preexec_fn=_kill_with_parent if self.tie_to_parent else None)  # fmt: skip
        self.pgid = self.proc.pid  # start_trainer starts a new session: the launcher leads its group
        self._started = time.monotonic()
        return self.proc

    def poll(self) -> int | None:
        """The launcher's exit code once it ended (reaping it), else None; None for a followed run."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.exit_code = code
        return code

    def ended(self, now: float | None = None) -> bool:
        """Our launcher exited, or no process of a followed run is left (looked up once per PROCESS_CHECK_S)."""
        if self._ended:
            return True
        if self.proc is not None:
            self._ended = self.poll() is not None
        else:
            now = time.monotonic() if now is None else now
            if now - self._last_check >= PROCESS_CHECK_S:
                self._last_check = now
                self._ended = not trainer_alive(self.run_dir)
        return self._ended

    def check_handshake(self, now: float | None = None) -> bool:
        """True exactly once: when the handshake deadline passes without an event from the trainer."""
        if self.handshake or self.proc is None:
            return False
        inode, size = _file_identity(self.run_dir / EVENTS_FILE)
        before_inode, before_size = self._events_at_launch
        if size > (before_size if inode == before_inode else 0):
            self.handshake = True
            return False
        now = time.monotonic() if now is None else now
        if not self.handshake_late and now - self._started > self.handshake_s:
            self.handshake_late = True
            return True
        return False

    def late_message(self) -> str:
        return (f"No event from the trainer after {self.handshake_s:.0f} s; it is still starting or stuck. "
                f"The last lines of {self.run_dir / LAUNCHER_LOG} say how far it got.")  # fmt: skip

    def ranks(self) -> list[Any]:
        """The processes below the launcher (trainer ranks and their data workers), as psutil processes."""
        import psutil

        if self.proc is not None:
            try:
                return psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                return []
        launch = read_launch_info(self.run_dir) or {}
        out = []
        for pid in group_members(self.pgid):
            if pid == launch.get("pid"):
                continue  # a followed GUI/CLI launch: its launcher gets no SIGTERM either
            try:
                out.append(psutil.Process(pid))
            except psutil.Error:
                continue
        return out

    # ---- stopping -----------------------------------------------------------------------------------------
    def request_stop(self, now: float | None = None) -> str:
        """Ask the trainer to save and end after its current step and start the escalation clock; returns at once
        with what was done, for the user ("" if a stop is already under way)."""
        if self.phase != IDLE:
            return ""
        now = time.monotonic() if now is None else now
        if not self.handshake:
            return self._signal_group(signal.SIGTERM, TERMINATED, now + self.term_grace_s)
        import psutil

        request_stop(self.run_dir)
        for p in self.ranks():
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        self.phase, self._deadline = ASKED, now + self.stop_grace_s
        return "Asked the trainer to save and stop at the end of its current step…"

    def tick(self, now: float | None = None) -> str:
        """One escalation step when its grace has run out; returns what was done ("" if nothing was due)."""
        now = time.monotonic() if now is None else now
        if self.phase in (IDLE, KILLED) or now < self._deadline or self.ended(now):
            return ""
        if self.phase == ASKED:
            return self._signal_group(signal.SIGTERM, TERMINATED, now + self.term_grace_s)
        return self._signal_group(signal.SIGKILL, KILLED, now, "No exit after SIGTERM: ")

    def kill(self) -> str:
        """SIGKILL the whole group now (a second Ctrl+C, the runs list's "kill process group")."""
        return self._signal_group(signal.SIGKILL, KILLED, time.monotonic())

    def reap_stragglers(self) -> bool:
        """After the launcher died: SIGKILL what is left of its group (a dead launcher cannot end its ranks)."""
        if not self.pgid or not group_members(self.pgid):
            return False
        try:
            return signal_group(self.pgid, signal.SIGKILL)
        except KxlError:
            return False

    def _signal_group(self, sig: int, phase: int, deadline: float, why: str = "") -> str:
        name = signal.Signals(sig).name
        try:
            sent = signal_group(self.pgid, sig)
        except KxlError as exc:  # the group is our own: never signal it
            return str(exc)
        self.phase, self._deadline = phase, deadline
        if not sent:
            return f"{name}: the process group is already gone"
        return f"{why}{name} sent to process group {self.pgid}…"

    def stop(
        self, grace_s: float | None = None, term_grace_s: float | None = None, poll_s: float = 0.1
    ) -> int:
        """Blocking stop for the plain processes: request_stop, then the escalation until the launcher is gone.
        A KeyboardInterrupt while waiting (a second Ctrl+C) skips straight to the kill. Returns its exit code."""
        if self.proc is None:
            return 0
        if grace_s is not None:
            self.stop_grace_s = grace_s
        if term_grace_s is not None:
            self.term_grace_s = term_grace_s
        self.request_stop()
        try:
            while not self.ended():
                self.tick()
                time.sleep(poll_s)
        except KeyboardInterrupt:
            self.kill()
        return self.proc.wait()

    def outcome(self, launcher_code: int) -> Outcome:
        return run_outcome(self.run_dir, launcher_code)

    def log_tail(self) -> list[str]:
        return run_log_tail(self.run_dir)


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


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def supervise(sup: Supervisor, on_tick: Callable[[], None] | None = None, poll_s: float = 0.2,
              say: Callable[[str], None] = _say, reraise_interrupt: bool = False) -> int:  # fmt: skip
    """Wait for the launch to end, calling `on_tick` between polls. Ctrl+C stops it gracefully and keeps waiting
    (a second Ctrl+C kills it); with `reraise_interrupt`, or for any other exception out of `on_tick` (a cancelled
    demo), the trainer is stopped the same way (blocking) and the exception re-raised once it has saved and ended.
    A missed handshake is reported once with the log's tail. Returns the launcher's exit code, or
    EXIT_INTERRUPTED after an interrupt."""
    interrupted = False
    while True:
        try:
            while not sup.ended():
                if on_tick is not None:
                    on_tick()
                if sup.check_handshake():
                    say("\n".join([sup.late_message(), *("  " + line for line in sup.log_tail()[-10:])]))
                note = sup.tick()
                if note:
                    say(note)
                time.sleep(poll_s)
            break
        except KeyboardInterrupt:
            if reraise_interrupt:
                sup.stop()
                raise
            if interrupted:  # a second Ctrl+C: no more waiting
                say("\nkilling the trainer")
                sup.kill()
                sup.stop()  # reaps the launcher (KILLED: nothing more is sent)
                return EXIT_INTERRUPTED
            interrupted = True
            say("\nstopping: the trainer saves at the end of its current step (Ctrl+C again to kill it)")
            sup.request_stop()
        except BaseException:
            sup.stop()
            raise
    if on_tick is not None:
        on_tick()
    code = sup.exit_code if sup.exit_code is not None else 0
    return EXIT_INTERRUPTED if interrupted and code != 0 else code


def raise_if_failed(outcome: Outcome) -> None:
    if outcome.exit_code != 0:
        raise KxlError(f"training failed (exit code {outcome.exit_code}): {outcome.message}",
                       path=outcome.log.parent.parent, hint=f"the full log is {outcome.log}")  # fmt: skip
