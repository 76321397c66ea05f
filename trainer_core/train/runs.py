"""Runs as seen from outside the trainer: list them, reconcile them with live processes, follow their events, and
check a configuration before launching it. No Qt: the Train tab, the CLI and tests share this module.

A run directory holds `config.toml`, `events.jsonl` (appended by rank 0), `run.json` (written by rank 0: pid,
pgid, process start time, state), and, when the GUI started it, `launch.json` (the launcher's pid/pgid/start time
and command) plus `logs/launcher.log` (stdout+stderr of every rank). A pid alone can be recycled by the OS, so a
process counts as "ours" only when its start time matches the recorded one (psutil `create_time`).

Display states: launching (launcher up, trainer not yet reporting), running, finished, stopped, failed.

GPU memory estimate (`estimate_memory`, the pre-flight figure, per process): the peak over the phases of a training
step (VAE encode, TE forward, UNet forward, backward with recompute, optimizer step), from `memory_model.py`:
    frozen weights   = (UNet + TE1 + TE2 parameters) x bytes(mixed_precision: fp16/bf16 2, no 4)
                       + VAE parameters x bytes(vae_dtype)
    LoKr             = P x 8 bytes (fp32 weights + fp32 gradients; P = LoKr parameters, from the checkpoint's shapes)
    optimizer state  = Lion8bit / AdamW8bit: 1 / 2 bytes per element + an fp32 absmax per 256 for tensors with
                       >= 4096 elements (8-bit blockwise state), 4 / 8 bytes per element below; Lion 4, AdamW 8
    activations      = the largest phase's transient bytes (memory_model: per-phase terms in batch, bucket
                       megapixels and caption chunks, calibrated on a meta-device trace of the trainer's own micro-step
                       at full SDXL size; with the card's settings the backward with recompute is the largest), for
                       the largest bucket (resolution² pixels) and training.batch_size
    CUDA overhead    = 0.6 GiB (context, cuDNN workspaces, allocator slack), GPU runs only
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text, free_bytes
from ..errors import KxlError
from ..ownership import process_alive, process_start_time
from .checkpoint import STATE_PREFIX, TRAIN_STATE_FILE, state_dirs
from .config import TrainConfig
from .events import EVENTS_FILE, RUN_FILE, RUN_LOCK_FILE, read_run_info

LAUNCH_FILE = "launch.json"
LAUNCHER_LOG = "logs/launcher.log"
TRAINER_LOG = "logs/trainer.log"
LOG_TAIL_LINES = 40
STATES = ("launching", "running", "finished", "stopped", "failed")


# ------------------------------------------------------------------------------------------ processes


def group_members(pgid: int | None) -> list[int]:
    """Live (non-zombie) pids of process group `pgid`."""
    if not pgid or not hasattr(os, "getpgid"):
        return []
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(proc.info["pid"]) == pgid:
                out.append(proc.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def signal_group(pgid: int | None, sig: int) -> bool:
    """Send `sig` to every process of group `pgid`; never to our own group. True if the group existed."""
    if not pgid or not hasattr(os, "killpg"):
        return False
    if pgid == os.getpgid(0):
        raise KxlError("refusing to signal the GUI's own process group")
    try:
        os.killpg(int(pgid), sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def check_free_run_dir(run_dir: str | Path) -> None:
    """Raise AlreadyRunning when a live trainer owns `run_dir` (its rank 0 holds `.kxl-run.lock`)."""
    from ..ownership import AlreadyRunning, live_owner

    owner = live_owner(Path(run_dir) / RUN_LOCK_FILE)
    if owner is not None:
        raise AlreadyRunning(
            f"training is already running in this folder (pid {owner.pid})",
            path=run_dir,
            hint="stop it first (kxl train --stop RUN_DIR), or train into a new run directory",
        )


def start_trainer(argv: list[str], env: dict[str, str], run_dir: str | Path,
                  preexec_fn: Any = None) -> subprocess.Popen:  # fmt: skip
    """Start the launcher in its own session (so Stop can signal the whole DDP tree), output to the run's log.

    Returns the Popen; the caller must `poll()` it so the launcher is reaped when it ends. `launch.json` records
    the launcher's identity so a later GUI can reconcile or stop the run.
    """
    run_dir = Path(run_dir)
    check_free_run_dir(run_dir)  # before launch.json of a live run could be overwritten
    log_path = run_dir / LAUNCHER_LOG
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} launch: {' '.join(argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(argv, env=full_env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=preexec_fn)  # fmt: skip
        except OSError as exc:
            raise KxlError(f"cannot start the trainer ({exc})", path=Path(argv[0])) from None
    info = {"pid": proc.pid, "pgid": proc.pid, "host": socket.gethostname(),
            "process_start_time": process_start_time(proc.pid), "command": argv,
            "env": env, "started": round(time.time(), 3)}  # fmt: skip
    atomic_write_text(run_dir / LAUNCH_FILE, json.dumps(info, indent=2))
    return proc


def read_launch_info(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_process_group(run_dir: str | Path) -> int | None:
    """The process group to signal for a run: the GUI launcher's session if we started it, else the trainer's."""
    launch = read_launch_info(run_dir)
    if launch and launch.get("host") == socket.gethostname() and launch.get("pgid"):
        if process_alive(launch.get("pid"), launch.get("process_start_time")) or group_members(
            launch["pgid"]
        ):
            return int(launch["pgid"])
    info = read_run_info(run_dir)
    if info and info.get("host", socket.gethostname()) == socket.gethostname() and info.get("pgid"):
        return int(info["pgid"])
    return None


def _read_tail(path: str | Path, max_bytes: int) -> tuple[bytes, bool]:
    """(at most the last `max_bytes` of a file, whether the file is longer); (b"", False) if unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read(), size > max_bytes
    except OSError:
        return b"", False


def tail_lines(path: str | Path, n: int = LOG_TAIL_LINES, max_bytes: int = 256 * 1024) -> list[str]:
    """The last `n` lines of a text file (reads at most `max_bytes` from its end)."""
    data, _cut = _read_tail(path, max_bytes)
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def run_log_tail(run_dir: str | Path, n: int = LOG_TAIL_LINES) -> list[str]:
    """The launcher log's tail (all ranks' output) if the GUI launched the run, else the trainer log's."""
    run_dir = Path(run_dir)
    for rel in (LAUNCHER_LOG, TRAINER_LOG):
        lines = tail_lines(run_dir / rel, n)
        if lines:
            return lines
    return []


# ------------------------------------------------------------------------------------------ events


class EventTail:
    """Incremental reader of `events.jsonl`: remembers a byte offset and keeps a torn last line for next time.

    A file that shrank or was replaced (new inode) is read again from the start; `resets` counts those, so a
    consumer knows to drop what it built from the old content.
    """

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self.resets = 0
        self.bad_lines = 0
        self._partial = b""
        self._inode: int | None = None

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    @property
    def pending(self) -> bool:
        return self.size() > self.offset

    def backlog(self) -> int:
        """Bytes written but not read yet."""
        return max(0, self.size() - self.offset)

    def read(self, max_bytes: int = 1 << 20) -> list[dict[str, Any]]:
        """Complete events appended since the last call (at most about `max_bytes` of them)."""
        try:
            st = self.path.stat()
        except OSError:
            return []
        if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset:
            self.offset, self._partial = 0, b""
            self.resets += 1
        self._inode = st.st_ino
        if st.st_size <= self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(min(max_bytes, st.st_size - self.offset))
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        lines = [line for line in lines if line.strip()]
        return [e for e in self._parse(lines) if isinstance(e, dict) and "type" in e]

    def _parse(self, lines: list[bytes]) -> list[Any]:
        """All lines in one `json.loads` of a JSON array (a third of the time of one call per line, which matters
        when the GUI reads a 100k-event file); a slice with a bad line is parsed again line by line."""
        if not lines:
            return []
        try:
            values = json.loads(b"[" + b",".join(lines) + b"]")
        except ValueError:
            values = None
        if isinstance(values, list) and len(values) == len(lines):
            return values
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                self.bad_lines += 1
        return out


def _num(value: Any) -> float:
    """Event numbers may be None or "nan"/"inf" strings (JSON has no NaN): map them to float."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


_EMA_BLOCK = 128


@functools.lru_cache(maxsize=8)
def _ema_powers(s: float) -> tuple[np.ndarray, np.ndarray]:
    """(s^i, s^-i) for i < block size, the block size keeping s^-i far from float overflow (s > 0)."""
    size = _EMA_BLOCK if s > 0.02 else max(1, min(_EMA_BLOCK, int(250 / -math.log10(s))))
    i = np.arange(size, dtype=np.float64)
    return s**i, s ** (-i)


def _ema_extend(
    values: np.ndarray, s: float, acc: float, weight: float, out: np.ndarray
) -> tuple[float, float]:
    """Fold `values` into the running (acc, weight) of a debiased EMA and write acc/weight per point into `out`.

    Over the m finite points: acc_k = s^k acc_0 + (1 - s) sum_{j<=k} s^(k-j) v_j and weight_k = s^k weight_0 +
    1 - s^k; a NaN changes nothing, so each point shows the EMA as of its last finite point. The points are cut
    into blocks; inside all blocks at once the sum is a scaled cumulative sum, s^i cumsum(s^-j v_j) (blocks keep
    s^-j finite), and a short scalar loop carries the state from block to block: a 100k-point curve costs a few
    milliseconds on the GUI thread, where a loop with several numpy calls per block cost ~60 ms.
    """
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    fv = values if all_finite else values[finite]
    m = len(fv)
    if not m:
        out[:] = acc / weight if weight > 0 else np.nan
        return acc, weight
    if s == 0:
        acc_f, weight_f = fv, np.ones(m)
    else:
        pw, inv = _ema_powers(s)
        size = len(pw)
        blocks = -(-m // size)
        grid = np.zeros(blocks * size)
        grid[:m] = fv  # zero padding only trails the last block
        grid = grid.reshape(blocks, size)
        local = (1 - s) * pw * np.cumsum(grid * inv, axis=1)  # each block as if it started from 0
        starts, decays = np.empty(blocks), np.empty(blocks)
        step_decay, carry, decay = s * float(pw[-1]), acc, 1.0  # s^size: one whole block
        for b, end in enumerate(local[:, -1].tolist()):
            starts[b], decays[b] = carry, decay
            carry, decay = step_decay * carry + end, step_decay * decay
        tail = s * pw  # s^(i+1): what the block's start state has decayed to at point i
        acc_f = (local + starts[:, None] * tail).ravel()[:m]
        weight_f = (1.0 - np.outer(decays, tail) * (1.0 - weight)).ravel()[:m]
    if all_finite:
        acc_all, w_all = acc_f, weight_f
    else:
        last = np.cumsum(finite) - 1  # index into the finite points, -1 before the first one
        acc_all = np.where(last >= 0, acc_f[np.maximum(last, 0)], acc)
        w_all = np.where(last >= 0, weight_f[np.maximum(last, 0)], weight)
    acc, weight = float(acc_f[-1]), float(weight_f[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:] = np.where(w_all > 0, acc_all / np.where(w_all > 0, w_all, 1.0), np.nan)
    return acc, weight


@dataclass
class Marker:
    step: int
    kind: str  # "save" | "sample" | "resume"
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class RunSeries:
    """Everything the live view plots, built from events in arrival order.

    Columns: step, t, loss, lr (UNet group), lr (TE group), grad_norm, images/s, peak memory MB, the step's wall
    time and the part of it spent waiting for data, and whether the update was skipped (non-finite). A `status` event
    with `resumed_from` = N (and any step event that does not advance) cuts the series back to steps <= N, so a
    resumed run's curve continues from the state it resumed, not from the abandoned tail.
    """

    COLUMNS = ("step", "t", "loss", "lr_unet", "lr_te", "grad_norm", "images_per_s", "peak_memory_mb",
               "step_time_s", "data_wait_s", "skipped")  # fmt: skip

    def __init__(self) -> None:
        self._data = np.zeros((1024, len(self.COLUMNS)), dtype=np.float64)
        self.n = 0
        self.version = 0  # bumped on every change: cheap dirty check for throttled redraws
        self.markers: list[Marker] = []
        self.samples: list[dict[str, Any]] = []
        self.total_steps: int | None = None
        self.world_size: int | None = None
        self.last_status: str = ""
        self.done: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.events_seen = 0
        self.resumed_from: int | None = None
        self._ema_key: float | None = None
        self._ema = np.zeros(0)
        self._ema_n = 0
        self._ema_state = (0.0, 0.0)

    # ---- building
    def add(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            self._add(e)
        if events:
            self.version += 1
            self.events_seen += len(events)

    def _add(self, e: dict[str, Any]) -> None:
        kind, step = e.get("type"), int(e.get("step") or 0)
        if kind == "step":
            if self.n and step <= self._data[self.n - 1, 0]:
                self.truncate(step - 1)
            lr = e.get("lr") or {}
            row = (step, _num(e.get("t")), _num(e.get("loss")), _num(lr.get("unet")), _num(lr.get("textencoder")),
                   _num(e.get("grad_norm")), _num(e.get("images_per_s")), _num(e.get("peak_memory_mb")),
                   _num(e.get("step_time_s")), _num(e.get("data_wait_s")), 1.0 if e.get("skipped") else 0.0)  # fmt: skip
            if self.n == len(self._data):
                self._data = np.concatenate([self._data, np.zeros_like(self._data)])
            self._data[self.n] = row
            self.n += 1
            if e.get("total_steps"):
                self.total_steps = int(e["total_steps"])
            self.done = self.error = None  # a step after done/error: a new launch of the same run
        elif kind == "status":
            self.last_status = str(e.get("message", ""))
            if e.get("total_steps"):
                self.total_steps = int(e["total_steps"])
            if e.get("world_size"):
                self.world_size = int(e["world_size"])
            if e.get("message") == "starting":
                self.done = self.error = None
            if "resumed_from" in e:
                self.resumed_from = int(e["resumed_from"])
                self.truncate(self.resumed_from)
                self.markers.append(Marker(self.resumed_from, "resume"))
        elif kind == "save":
            self.markers.append(Marker(step, "save", str(e.get("path", "")),
                                       {"state": e.get("state"), "reason": e.get("reason")}))  # fmt: skip
        elif kind == "sample":
            self.markers.append(Marker(step, "sample", str(e.get("path", ""))))
            self.samples.append(dict(e))
        elif kind == "done":
            self.done = dict(e)
        elif kind == "error":
            self.error = dict(e)

    def truncate(self, last_step: int) -> None:
        """Forget steps after `last_step` (and their markers and samples)."""
        keep = int(np.searchsorted(self._data[: self.n, 0], last_step, side="right"))
        self.n = keep
        self._ema_n, self._ema_state = 0, (0.0, 0.0)  # the running state belongs to the old tail: recompute
        self.markers = [m for m in self.markers if m.step <= last_step]
        self.samples = [s for s in self.samples if int(s.get("step", 0)) <= last_step]
        self.version += 1

    # ---- reading
    def column(self, name: str) -> np.ndarray:
        return self._data[: self.n, self.COLUMNS.index(name)]

    @property
    def last_step(self) -> int:
        return int(self._data[self.n - 1, 0]) if self.n else 0

    def ema(self, smoothing: float) -> np.ndarray:
        """Debiased exponential moving average of the loss (TensorBoard's smoothing; 0 = raw), NaNs skipped.

        Built incrementally (only points added since the last call are folded in) and vectorised (`_ema_extend`),
        so a 100k-point curve or a change of smoothing costs milliseconds, not a Python loop per point.
        """
        smoothing = min(max(float(smoothing), 0.0), 0.999)
        if self._ema_key != smoothing or self._ema_n > self.n:
            self._ema_key, self._ema_n, self._ema_state = smoothing, 0, (0.0, 0.0)
        if len(self._ema) < self.n:
            self._ema = np.resize(self._ema, max(self.n, 2 * len(self._ema)))
        if self._ema_n < self.n:
            lo, hi = self._ema_n, self.n
            self._ema_state = _ema_extend(self._data[lo:hi, 2], smoothing, *self._ema_state, self._ema[lo:hi])
            self._ema_n = self.n
        return self._ema[: self.n]

    def data_wait_fraction(self, window: int = 30) -> float | None:
        """Share of the last `window` steps' wall time spent waiting for data (None before any step reports it)."""
        lo = max(0, self.n - window)
        wait, total = self._data[lo : self.n, 9], self._data[lo : self.n, 8]
        ok = np.isfinite(wait) & np.isfinite(total)
        return float(wait[ok].sum() / total[ok].sum()) if ok.any() and total[ok].sum() > 0 else None

    def skipped_steps(self) -> int:
        """Updates skipped for a non-finite loss or gradient, over the steps kept."""
        return int(self._data[: self.n, 10].sum())

    def seconds_per_step(self, window: int = 30) -> float | None:
        """Median wall time per step over the last `window` steps, None before 3 steps. The median ignores the
        one long gap a stop + resume leaves between two launches."""
        if self.n < 3:
            return None
        lo = max(0, self.n - window)
        dt = np.diff(self._data[lo : self.n, 1])
        ds = np.diff(self._data[lo : self.n, 0])
        ok = np.isfinite(dt) & (ds > 0) & (dt >= 0)
        if not ok.any():
            return None
        return float(np.median(dt[ok] / ds[ok]))

    def eta_seconds(self) -> float | None:
        per = self.seconds_per_step()
        if per is None or not self.total_steps:
            return None
        return max(0.0, (self.total_steps - self.last_step) * per)

    def peak_memory_mb(self) -> float | None:
        col = self.column("peak_memory_mb")
        finite = col[np.isfinite(col)]
        return float(finite.max()) if finite.size else None


# ------------------------------------------------------------------------------------------ runs


@dataclass
class RunSummary:
    run_dir: Path
    state: str  # one of STATES
    step: int = 0
    total_steps: int | None = None
    updated: float = 0.0
    pid: int | None = None
    pgid: int | None = None
    exit_code: int | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name


def _last_events(run_dir: Path, max_bytes: int = 64 * 1024) -> list[dict[str, Any]]:
    data, cut = _read_tail(run_dir / EVENTS_FILE, max_bytes)
    lines = data.split(b"\n")
    if cut:
        lines = lines[1:]  # the first line is probably cut
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


_RUN_JSON_STATES = {"running": "running", "done": "finished", "finished": "finished", "stopped": "stopped",
                    "error": "failed", "failed": "failed"}  # fmt: skip


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (RUN_FILE, EVENTS_FILE, LAUNCH_FILE))


def summarize_run(run_dir: str | Path) -> RunSummary:
    """What the files say, without looking at processes (see `reconcile_run`)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir) or {}
    launch = read_launch_info(run_dir) or {}
    events = _last_events(run_dir)
    steps = [e for e in events if e.get("type") == "step"]
    step = int(steps[-1]["step"]) if steps else int(info.get("final_step") or 0)
    total = next((int(e["total_steps"]) for e in reversed(events) if e.get("total_steps")), None)
    updated = max([float(e.get("t") or 0) for e in events[-1:]] + [float(info.get("updated") or 0),
                                                                  float(launch.get("started") or 0)])  # fmt: skip
    state = _RUN_JSON_STATES.get(str(info.get("state")), "launching" if launch else "failed")
    if info and launch and float(launch.get("started") or 0) > float(info.get("updated") or 0) + 1:
        state = "launching"  # a new launch (resume) whose trainer has not reported yet
    message = str(info.get("message") or "")
    errors = [e for e in events if e.get("type") == "error"]
    if state == "failed" and not message and errors:
        message = str(errors[-1].get("message", ""))
    return RunSummary(run_dir, state, step, total, updated, pid=info.get("pid") or launch.get("pid"),
                      pgid=info.get("pgid") or launch.get("pgid"), exit_code=info.get("exit_code"),
                      message=message, log_tail=list(info.get("log_tail") or []))  # fmt: skip


def mark_run(run_dir: str | Path, state: str, **extra: Any) -> None:
    """Record a state decided from outside the trainer (it is gone) in run.json, keeping what it wrote."""
    info = read_run_info(run_dir) or {}
    info.update(extra)
    info["state"] = state
    info["updated"] = round(time.time(), 3)
    info["reconciled_by"] = "gui"
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(info, indent=2, default=str))


def trainer_alive(run_dir: str | Path) -> bool:
    """Is any process of this run still up: the recorded trainer (pid + start time) or the GUI's launcher?"""
    info = read_run_info(run_dir) or {}
    launch = read_launch_info(run_dir) or {}
    here = socket.gethostname()
    if info.get("host", here) == here and process_alive(info.get("pid"), info.get("process_start_time")):
        return True
    return launch.get("host") == here and process_alive(launch.get("pid"), launch.get("process_start_time"))


def reconcile_run(run_dir: str | Path, persist: bool = True) -> RunSummary:
    """`summarize_run`, then check "running"/"launching" runs of this machine against live processes.

    A run whose processes are gone without a `done` event is failed (killed, crashed, power loss); with
    `persist`, that verdict and the log tail go into run.json so the next look agrees without processes.
    """
    summary = summarize_run(run_dir)
    if summary.state not in ("running", "launching"):
        return summary
    info = read_run_info(run_dir) or {}
    if info.get("host", socket.gethostname()) != socket.gethostname():
        return summary  # a rank-0 on another machine: nothing to check here
    if trainer_alive(run_dir):
        return summary
    done = next((e for e in reversed(_last_events(run_dir)) if e.get("type") == "done"), None)
    if done is not None:
        summary.state = "stopped" if done.get("reason") == "stopped" else "finished"
        if persist:
            mark_run(run_dir, "stopped" if summary.state == "stopped" else "done")
        return summary
    summary.state = "failed"
    summary.message = (
        summary.message or "the trainer's processes are gone without finishing (killed or crashed)"
    )
    summary.log_tail = run_log_tail(run_dir)
    if persist:
        mark_run(run_dir, "failed", message=summary.message, log_tail=summary.log_tail)
    return summary


def list_runs(runs_root: str | Path, reconcile: bool = True) -> list[RunSummary]:
    """Every run folder directly under `runs_root`, newest first; "running" ones reconciled when asked."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    out = []
    for path in root.iterdir():
        if is_run_dir(path):
            out.append(reconcile_run(path) if reconcile else summarize_run(path))
    return sorted(out, key=lambda r: r.updated, reverse=True)


def new_run_dir(runs_root: str | Path, name: str, when: float | None = None) -> Path:
    """`<runs_root>/<name>-YYYYmmdd-HHMMSS`, with a numeric suffix if that exists already (not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    base = Path(runs_root) / f"{name}-{stamp}"
    path, i = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}-{i}")
        i += 1
    return path


@dataclass(frozen=True)
class StateInfo:
    step: int
    saved: float | None
    path: Path
    world_size: int | None = None  # processes that saved it: a resume must start as many (None: unreadable)


def checkpoint_states(run_dir: str | Path) -> list[StateInfo]:
    """Saved training states of a run (resumable), oldest first, with their step and save time."""
    out = []
    for d in state_dirs(Path(run_dir) / "checkpoints"):
        try:
            info = json.loads((d / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
            world = info.get("world_size")
            out.append(StateInfo(int(info["step"]), info.get("saved"), d, int(world) if world else None))
        except (OSError, ValueError, KeyError):
            out.append(StateInfo(int(d.name[len(STATE_PREFIX) :]), None, d))
    return out


def saved_lokrs(run_dir: str | Path) -> list[Path]:
    """LoKr files of a run, newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)


# ------------------------------------------------------------------------------------------ pre-flight

GIB = 1 << 30
CUDA_OVERHEAD_GIB = 0.6


@dataclass
class ModelParams:
    """Parameter counts read from a checkpoint header, and the LoKr tensors the recipe would add."""

    unet: int = 0
    text_encoders: int = 0
    vae: int = 0
    lokr_tensor_sizes: list[int] = field(default_factory=list)

    @property
    def lokr(self) -> int:
        return sum(self.lokr_tensor_sizes)


def factorize(dim: int, factor: int) -> tuple[int, int]:
    """Split `dim` into (small, large) with small <= factor (LoKr's Kronecker factor); factor -1: most balanced."""
    limit = dim if factor <= 0 else factor
    if factor > 0 and dim % factor == 0:
        return tuple(sorted((factor, dim // factor)))  # type: ignore[return-value]
    best = 1
    for m in range(1, int(math.isqrt(dim)) + 1):
        if dim % m == 0 and m <= limit:
            best = m
    return best, dim // best


def lokr_tensor_sizes(shape: tuple[int, ...], factor: int, dim: int, full_matrix: bool) -> list[int]:
    """Element counts of the LoKr tensors for one Linear/Conv weight: w1, then w2 (full) or its two factors."""
    out_dim, in_dim = shape[0], shape[1]
    kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
    out_small, out_large = factorize(out_dim, factor)
    in_small, in_large = factorize(in_dim, factor)
    w1 = out_small * in_small
    if full_matrix or dim >= max(out_large, in_large) / 2:
        return [w1, out_large * in_large * kernel]
    return [w1, out_large * dim, dim * in_large * kernel]


def _module_factor(key: str, cfg: TrainConfig) -> int | None:
    """The LoKr factor of the module owning weight `key`, or None if the recipe gives it no module."""
    from ..models.sdxl_layout import TE1_PREFIX, TE2_PREFIX, UNET_PREFIX

    n = cfg.network
    mf = n.module_factors
    if key.startswith(UNET_PREFIX):
        if ".attn1." in key or ".attn2." in key:
            return mf.get("Attention", n.factor)
        if ".ff.net." in key:
            return mf.get("FeedForward", n.factor)
        return n.factor
    if not n.train_text_encoder:
        return None
    if key.startswith((TE1_PREFIX, TE2_PREFIX)):
        if "attn" in key:
            return mf.get("CLIPAttention", n.factor)
        if "mlp" in key:
            return mf.get("CLIPMLP", n.factor)
    return None


def count_model_params(base: str | Path, cfg: TrainConfig) -> ModelParams:
    """Parameter counts of a single-file SDXL checkpoint from its header (no tensor is read)."""
    from ..models.safetensors_header import read_header
    from ..models.sdxl_layout import TE1_PREFIX, TE2_PREFIX, UNET_PREFIX, VAE_PREFIX

    header = read_header(Path(base))
    out = ModelParams()
    n = cfg.network
    for key, entry in header.tensors.items():
        shape = tuple(entry.shape)
        size = math.prod(shape) if shape else 1
        if key.startswith(VAE_PREFIX):
            out.vae += size
            continue
        if key.startswith(UNET_PREFIX):
            out.unet += size
        elif key.startswith((TE1_PREFIX, TE2_PREFIX)):
            out.text_encoders += size
        else:
            continue
        factor = _module_factor(key, cfg)
        if factor is None:
            continue
        if key.endswith("in_proj_weight") and len(shape) == 2:  # TE2's fused q/k/v: three LoKr modules
            third = (shape[0] // 3, shape[1])
            for _ in range(3):
                out.lokr_tensor_sizes += lokr_tensor_sizes(third, factor, n.dim, n.full_matrix)
        elif key.endswith(".weight") and len(shape) >= 2 and "embedding" not in key:
            out.lokr_tensor_sizes += lokr_tensor_sizes(shape, factor, n.dim, n.full_matrix)
        elif n.train_norm and key.startswith(UNET_PREFIX) and len(shape) == 1 and "norm" in key:
            out.lokr_tensor_sizes.append(size)  # norm modules train weight and bias deltas of the same size
    return out


@dataclass
class MemoryEstimate:
    weights: int
    lokr: int
    optimizer: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.lokr + self.optimizer + self.activations + self.overhead


def estimate_memory(params: ModelParams, cfg: TrainConfig, gpu: bool = True) -> MemoryEstimate:
    """Per-process memory at the peak phase of a step for these settings; the formula is in the module docstring
    (per-phase detail: `memory_model.estimate_phases`)."""
    from .memory_model import estimate_phases

    est = estimate_phases(params, cfg)
    activations = est.peak - est.resident
    overhead = int(CUDA_OVERHEAD_GIB * GIB) if gpu else 0
    return MemoryEstimate(est.weights, est.lokr_params + est.gradients, est.optimizer, activations, overhead)


def detect_gpus(timeout_s: float = 5.0) -> list[tuple[str, int]]:
    """(name, total memory bytes) per NVIDIA GPU, from nvidia-smi (no torch import); [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout_s, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append((name.strip(), int(float(mem)) * (1 << 20)))
        except ValueError:
            continue
    return gpus


@dataclass
class PreflightItem:
    level: str  # "ok" | "warning" | "error"
    topic: str  # "dataset" | "buckets" | "base" | "disk" | "memory" | "config"
    message: str


@dataclass
class PreflightReport:
    items: list[PreflightItem] = field(default_factory=list)
    images: int = 0
    entries: int = 0
    bucket_counts: dict[tuple[int, int], int] = field(default_factory=dict)
    steps_per_epoch: int = 0
    total_steps: int = 0
    memory: MemoryEstimate | None = None
    params: ModelParams | None = None
    gpus: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.level == "error" for i in self.items)

    def add(self, level: str, topic: str, message: str) -> None:
        self.items.append(PreflightItem(level, topic, message))


def format_gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def preflight(cfg: TrainConfig, processes: int = 1, machines: int = 1, run_dir: str | Path | None = None,
              gpus: list[tuple[str, int]] | None = None, cpu: bool = False) -> PreflightReport:  # fmt: skip
    """Check a configuration before launching: dataset and captions, buckets vs the effective batch, base model,
    free disk, and memory per process. Problems are items, not exceptions, so all of them show at once."""
    from ..models.checkpoint_info import describe_checkpoint
    from .data import BucketPlan, scan_dataset

    report = PreflightReport(gpus=list(gpus or []))
    t = cfg.training
    world = max(1, processes) * max(1, machines)
    effective = t.batch_size * world * t.gradient_accumulation_steps
    # -- dataset
    if not cfg.dataset.path:
        report.add(
            "error", "dataset", "choose a dataset folder (kohya layout: <repeats>_<name>/ with .txt captions)"
        )
    else:
        try:
            items = scan_dataset(cfg.dataset_path)
            plan = BucketPlan(items, cfg.dataset, t.batch_size)
        except KxlError as exc:
            report.add("error", "dataset", str(exc))
        else:
            report.images, report.entries = len(items), len(plan.entries)
            report.bucket_counts = plan.bucket_counts()
            report.steps_per_epoch = plan.steps_per_epoch(world, t.gradient_accumulation_steps)
            report.total_steps = t.max_steps if t.max_steps > 0 else t.epochs * report.steps_per_epoch
            report.add("ok", "dataset", f"{len(items):,} images with captions, {len(plan.entries):,} per epoch "
                       f"(repeats included), {report.total_steps:,} optimizer steps")  # fmt: skip
            shards = getattr(items, "shards", None)
            if shards:  # scan_dataset has checked them (a missing or changed shard is the error above)
                report.add("ok", "dataset", f"images are read by reference from {len(shards):,} shard(s), all "
                           "present and unchanged since the build")  # fmt: skip
            small = {b: c for b, c in report.bucket_counts.items() if c < effective}
            if small:
                shown = ", ".join(f"{w}x{h}: {c}" for (w, h), c in list(small.items())[:6])
                more = f" and {len(small) - 6} more" if len(small) > 6 else ""
                report.add("warning", "buckets", f"{len(small)} of {len(report.bucket_counts)} buckets hold fewer "
                           f"images than one optimizer step uses (batch {t.batch_size} x {world} process(es) x "
                           f"accumulation {t.gradient_accumulation_steps} = {effective}): {shown}{more}; their "
                           "batches repeat images within a step")  # fmt: skip
            else:
                report.add("ok", "buckets", f"{len(report.bucket_counts)} buckets, each holds at least one "
                           f"optimizer step ({effective} images)")  # fmt: skip
    # -- base model
    if not cfg.model.base:
        report.add("error", "base", "choose a base SDXL checkpoint")
    else:
        try:
            info = describe_checkpoint(cfg.base_path)
        except KxlError as exc:
            report.add("error", "base", str(exc))
        else:
            if not info.usable_as_base:
                report.add(
                    "error", "base", f"{cfg.base_path.name}: {info.problem or 'not an SDXL checkpoint'}"
                )
            else:
                report.add("ok", "base", f"{cfg.base_path.name}: {info.arch}, {info.dtype}, "
                           f"{format_gib(info.size_bytes)}")  # fmt: skip
                if info.kind == "sdxl-single-file":
                    report.params = count_model_params(cfg.base_path, cfg)
    # -- memory
    if report.params is not None:
        use_gpu = not cpu and bool(report.gpus)
        est = estimate_memory(report.params, cfg, gpu=use_gpu)
        report.memory = est
        where = "GPU memory" if use_gpu else "RAM (CPU training)"
        text = (f"about {format_gib(est.total)} {where} per process: weights {format_gib(est.weights)}, LoKr "
                f"{report.params.lokr:,} params {format_gib(est.lokr)}, optimizer {format_gib(est.optimizer)}, "
                f"activations {format_gib(est.activations)}")  # fmt: skip
        smallest = min((m for _, m in report.gpus), default=None) if use_gpu else None
        if smallest is not None and est.total > smallest:
            report.add("warning", "memory", f"{text} — more than the {format_gib(smallest)} of the smallest GPU; "
                       "lower the batch size or set training.checkpointing = \"full\"")  # fmt: skip
        else:
            report.add("ok", "memory", text)
    # -- disk
    if run_dir is not None:
        free = free_bytes(run_dir)
        if report.params is not None:
            lokr_file = report.params.lokr * 2
            state = report.params.lokr * (4 + 4)
            saves = (report.total_steps // t.save_every_n_steps if t.save_every_n_steps else 0) + 1
            need = lokr_file * saves + state * (t.keep_states + 1) + 64 * (1 << 20)
        else:
            need = 64 * (1 << 20)
        if free is None:
            report.add("warning", "disk", f"cannot read the free space of {run_dir}")
        elif free < need:
            report.add("error", "disk", f"{format_gib(free)} free at {run_dir}, the run needs about "
                       f"{format_gib(need)} (LoKr files at every save + {t.keep_states + 1} training states)")  # fmt: skip
        else:
            report.add("ok", "disk", f"{format_gib(free)} free; the run writes about {format_gib(need)}")
    return report
