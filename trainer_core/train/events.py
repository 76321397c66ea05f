"""The run directory's observable files: `events.jsonl` (append-only, one JSON object per line) and `run.json`.

Only rank 0 writes; each line is flushed as soon as it is written so a GUI tailing the file sees a step the moment
it ends, and a crash loses at most the line being written. Event types: step, sample, save, status, error, done;
every event carries "type", "step" and "t" (unix time).

With `output.tensorboard = true` the step events also go to TensorBoard event files in `<run_dir>/tensorboard/`
(tensorboard_writer.py), for people who watch runs there; events.jsonl stays the record the GUI reads.

`run.json` lets a GUI reconcile a run it did not start: pid/pgid of the trainer, its process start time (to tell a
recycled pid from ours), the command line and the state (running, done, stopped, error).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..ownership import process_start_time

EVENTS_FILE = "events.jsonl"
RUN_FILE = "run.json"
RUN_LOCK_FILE = ".kxl-run.lock"  # ownership.py: the rank-0 trainer owning the run folder (pid + start time)
STOP_FILE = "commands/stop"
SAMPLE_FILE = "commands/sample"  # render the sample prompts after the current step ("Sample now")
SAVE_FILE = "commands/save"  # save the LoKr and the training state after the current step ("Save now")
COMMAND_FILES = {"stop": STOP_FILE, "sample": SAMPLE_FILE, "save": SAVE_FILE}


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the line stays parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to `<run_dir>/events.jsonl` (rank 0: `enabled`).

    `tensorboard`: also write the step events as TensorBoard scalars into `<run_dir>/tensorboard/`. None (the
    default) takes `output.tensorboard` from the run's `config.toml` snapshot when the first step is emitted.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / EVENTS_FILE
        self.enabled = enabled
        self._fh = None
        self._tensorboard = tensorboard
        self._tb: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def emit(self, type_: str, step: int, **fields: Any) -> None:
        if not self.enabled or self._fh is None:
            return
        event = {"type": type_, "step": int(step), "t": round(time.time(), 3), **_clean(fields)}
        self._fh.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._fh.flush()
        if type_ == "step":
            self._tensorboard_step(int(step), fields, event["t"])

    def _tensorboard_step(self, step: int, fields: dict[str, Any], wall_time: float) -> None:
        if self._tensorboard is None:
            self._tensorboard = tensorboard_wanted(self.run_dir)
        if not self._tensorboard:
            return
        from .tensorboard_writer import TENSORBOARD_DIR, TensorBoardWriter, step_scalars

        try:
            if self._tb is None:
                self._tb = TensorBoardWriter(self.run_dir / TENSORBOARD_DIR)
            self._tb.add_scalars(step, step_scalars(fields), wall_time=wall_time)
        except OSError as exc:
            # Optional output for humans: a full disk there must not end a training run.
            self._tensorboard = False
            self._close_tensorboard()
            self.emit("status", step, message=f"TensorBoard files stopped: {exc.strerror or exc}")

    def _close_tensorboard(self) -> None:
        tb, self._tb = self._tb, None
        if tb is not None:
            try:
                tb.close()
            except OSError:
                pass

    def close(self) -> None:
        self._close_tensorboard()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def tensorboard_wanted(run_dir: str | Path) -> bool:
    """`output.tensorboard` of the run's config.toml snapshot (False when it is missing or unreadable)."""
    import tomllib

    try:
        data = tomllib.loads((Path(run_dir) / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    output = data.get("output")
    return isinstance(output, dict) and output.get("tensorboard") is True


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """All complete events of a run (a torn last line from a killed writer is skipped)."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def write_run_info(run_dir: str | Path, state: str, **extra: Any) -> None:
    """(Re)write run.json atomically with the current process's identity and `state`."""
    pid = os.getpid()
    info = {
        "host": socket.gethostname(),  # reconciliation only judges runs of this machine
        "pid": pid,
        "pgid": os.getpgid(0) if hasattr(os, "getpgid") else None,
        "ppid": os.getppid(),
        "process_start_time": process_start_time(pid),
        "command": sys.argv,
        "state": state,
        "updated": round(time.time(), 3),
        **extra,
    }
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(info, indent=2, default=str))


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def request_command(run_dir: str | Path, name: str) -> Path:
    """Drop a command file ("stop", "sample" or "save") that rank 0 polls once per optimizer step."""
    if name not in COMMAND_FILES:
        raise ValueError(f"unknown trainer command {name!r} (known: {', '.join(COMMAND_FILES)})")
    path = Path(run_dir) / COMMAND_FILES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{name}\n", encoding="utf-8")
    return path


def request_stop(run_dir: str | Path) -> Path:
    """Ask a running trainer to save its state and finish (it polls this file once per optimizer step)."""
    return request_command(run_dir, "stop")
