"""#17.1, 17.2, 17.10: `kxl train` under Ctrl+C, kills, a second launch, and failures a user must understand.

Each case runs the real CLI (`kxl train` -> accelerate launch -> trainer ranks) on the tiny model and asserts what
the user sees and keeps: exit code, one summary line instead of tracebacks, a saved state, no orphan process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from support import write_tiny_run_config, write_train_squares

from trainer_core.ownership import read_owner
from trainer_core.train.events import RUN_LOCK_FILE, read_events

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_train_squares(tmp_path_factory.mktemp("fault-assets"))


def _config(run: Path, assets, **training) -> Path:
    """A tiny run that goes on until the test stops it (unless `max_steps` is given)."""
    return write_tiny_run_config(run, *assets, **{"max_steps": 100_000, **training})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _kxl_train(config: Path, *extra: str, processes: int = 2) -> subprocess.Popen:
    """`kxl train` as a terminal would run it: its own process group, the target of a terminal's Ctrl+C."""
    return subprocess.Popen([sys.executable, "-m", "trainer_core.cli", "train", str(config), "--cpu",
                             "--processes", str(processes), *extra], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def _wait_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(e["type"] == "step" and e["step"] >= step for e in read_events(run)):
            return
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1][-3000:])
        time.sleep(0.05)
    raise AssertionError("no training step in time")


def _trainers_of(run: Path) -> list[psutil.Process]:
    """Live trainer ranks of `run` (not the launcher, whose command line also names the module)."""
    needle = str(run / "config.toml")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            launcher = "accelerate.commands.launch" in cmd
            if (
                needle in cmd
                and "trainer_core.train" in cmd
                and not launcher
                and p.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _states(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("state-*"))


def test_ctrl_c_saves_at_the_end_of_the_step_and_exits_0(assets, tmp_path):
    run = tmp_path / "run"
    proc = _kxl_train(_config(run, assets))
    _wait_step(run, proc, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl+C
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    done = [e for e in read_events(run) if e["type"] == "done"]
    assert done and done[-1]["reason"] == "stopped"
    step = done[-1]["final_step"] if "final_step" in done[-1] else done[-1]["step"]
    assert _states(run) == [f"state-{step:08d}"]
    assert (run / "checkpoints" / f"tiny-demo-lokr-step{step:08d}.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["state"] == "stopped"
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert not (run / RUN_LOCK_FILE).exists() and not _trainers_of(run)


@pytest.mark.parametrize("victim", ["kxl train", "launcher"])
def test_a_killed_supervisor_leaves_no_orphans_and_a_saved_state(assets, tmp_path, victim):
    run = tmp_path / "run"
    proc = _kxl_train(_config(run, assets))
    _wait_step(run, proc, 2)
    assert len(_trainers_of(run)) == 2  # world size 2: both ranks are up
    if victim == "launcher":
        launcher = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                        if "accelerate.commands.launch" in p.cmdline())  # fmt: skip
        launcher.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)  # kxl train reports the end of its launch
    else:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    end = time.monotonic() + 120
    while _trainers_of(run) and time.monotonic() < end:
        time.sleep(0.2)
    assert not _trainers_of(run), "trainer ranks kept running after kxl train was killed"
    assert _states(run), "the ranks should save on their way out"
    done = [e for e in read_events(run) if e["type"] == "done"]
    assert done and done[-1]["reason"] == "stopped"


def test_one_trainer_per_run_folder(assets, tmp_path):
    run = tmp_path / "run"
    config = _config(run, assets)
    first = _kxl_train(config, processes=1)
    try:
        _wait_step(run, first, 1)
        owner = read_owner(run / RUN_LOCK_FILE)
        assert owner is not None and psutil.pid_exists(owner.pid)
        events_before = len(read_events(run))
        for extra in ((), ("--resume",)):
            second = subprocess.run([sys.executable, "-m", "trainer_core.cli", "train", str(config), "--cpu", *extra],
                                    cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
            assert second.returncode == 2, second.stderr
            assert f"already running in this folder (pid {owner.pid})" in second.stderr
            assert "Traceback" not in second.stderr
        # the trainer module itself (accelerate launch by hand) refuses too, without touching the live run
        direct = subprocess.run([sys.executable, "-m", "trainer_core.train", str(config), "--resume"], cwd=REPO,
                                env=_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert direct.returncode == 2 and f"(pid {owner.pid})" in direct.stderr
        assert not [e for e in read_events(run)[events_before:] if e["type"] in ("error", "status")]
        assert json.loads((run / "run.json").read_text())["state"] == "running"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert not (run / RUN_LOCK_FILE).exists()


def test_a_stale_lock_does_not_block_a_run(assets, tmp_path):
    """A lock left by a trainer that died (SIGKILL, power loss) names a dead pid: the next run takes it over."""
    run = tmp_path / "run"
    config = _config(run, assets, max_steps=2)
    (run / RUN_LOCK_FILE).write_text(json.dumps({"pid": 4_000_000, "start": 1.0, "what": "training"}))
    proc = subprocess.run([sys.executable, "-m", "trainer_core.train", str(config)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / RUN_LOCK_FILE).exists()


def test_a_non_finite_loss_reports_exit_3_in_one_line(assets, tmp_path):
    run = tmp_path / "run"
    config = _config(run, assets, max_steps=20)
    text = config.read_text().replace("unet_lr = ", "unet_lr = 1e30 # ", 1)
    config.write_text(text)
    proc = _kxl_train(
        config, processes=1
    )  # the launcher wraps one rank as it wraps two: exit 1 before the fix
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in out + err and "ChildFailedError" not in out + err
    assert "training failed (exit code 3): loss non-finite for" in err
    assert "launcher.log" in err  # where the full output is
