"""Real training runs of the tiny model on CPU: 2-process DDP, SIGKILL + resume, stop file, SIGTERM, bad input.

Slow by nature (each run loads torch/diffusers/LyCORIS and trains a few steps), so datasets are 64 px and runs short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from support import (
    write_tiny_run_config,  # noqa: E402
    write_train_squares,  # noqa: E402 - tests/ is on sys.path
)

from trainer_core.train.events import read_events, request_stop  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny base checkpoint and a two-image 64 px kohya dataset (captions with a `|||` head)."""
    return write_train_squares(tmp_path_factory.mktemp("train-assets"))


def _config(run_dir: Path, base: Path, dataset: Path, **training) -> Path:
    return write_tiny_run_config(run_dir, base, dataset, optimizer={"unet_lr": 3e-3}, **training)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _trainer(config: Path, *extra: str) -> subprocess.Popen:
    """One process without the launcher, so signals reach the trainer itself."""
    return subprocess.Popen([sys.executable, "-m", "trainer_core.train", str(config), *extra], cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _steps(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == "step"]


def _wait_for(run_dir: Path, proc: subprocess.Popen, pred, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(pred(e) for e in read_events(run_dir)):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise AssertionError("timed out waiting for an event")


def test_two_process_cpu_ddp_syncs_and_learns(assets, tmp_path):
    base, dataset = assets
    run = tmp_path / "ddp"
    config = _config(run, base, dataset, max_steps=30)
    out = subprocess.run([sys.executable, "-m", "trainer_core.cli", "train", str(config), "--processes", "2",
                          "--cpu"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    events = read_events(run)
    start = next(e for e in events if e["type"] == "status" and e["message"] == "starting")
    assert start["world_size"] == 2
    steps = _steps(run)
    assert [e["step"] for e in steps] == list(range(1, 31))
    assert all(e["samples_seen"] == 2 * e["step"] for e in steps)  # 1 image per rank per step
    first = {"textencoder": 0.0, "unet": 0.0}
    assert steps[0]["lr"] == first and steps[1]["lr"]["unet"] == pytest.approx(3e-3 / 4)  # warmup 4 steps
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "finished" and done["world_size"] == 2
    digests = done["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical networks on both ranks
    losses = [e["loss"] for e in steps]
    assert sum(losses[-8:]) / 8 < 0.75 * sum(losses[:8]) / 8  # overfitting two images
    assert (run / "checkpoints" / "tiny-demo-lokr.safetensors").is_file()
    info = json.loads((run / "run.json").read_text())
    assert info["state"] == "done" and info["world_size"] == 2


def test_sigkill_then_resume_equals_uninterrupted_run(assets, tmp_path):
    from safetensors.torch import load_file

    base, dataset = assets
    straight = tmp_path / "straight"
    proc = _trainer(_config(straight, base, dataset, max_steps=6, save_every_n_steps=2))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    broken = tmp_path / "broken"
    config = _config(broken, base, dataset, max_steps=6, save_every_n_steps=2)
    proc = _trainer(config)
    _wait_for(broken, proc, lambda e: e["type"] == "save" and e["step"] == 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = _steps(broken)[-1]["step"]
    assert killed_at < 6 and not any(e["type"] == "done" for e in read_events(broken))

    proc = _trainer(config)  # without --resume the existing state is refused, nothing is touched
    assert proc.wait(timeout=300) == 2
    assert "pass --resume" in read_events(broken)[-1]["message"]

    proc = _trainer(config, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    events = read_events(broken)
    resumed = [e for e in events if e["type"] == "status" and "resumed_from" in e][-1]["resumed_from"]
    assert resumed in (2, 4)
    after = [e["step"] for e in events[events.index(next(e for e in events if e.get("resumed_from") == resumed)):]
             if e["type"] == "step"]  # fmt: skip
    assert after == list(range(resumed + 1, 7))
    a = load_file(str(straight / "checkpoints" / "tiny-demo-lokr.safetensors"))
    b = load_file(str(broken / "checkpoints" / "tiny-demo-lokr.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].float() - b[k].float()).abs().max().item() <= 1e-3, k
    # Same losses step for step, too (same data order and noise after the resume).
    la = {e["step"]: e["loss"] for e in _steps(straight)}
    lb = {e["step"]: e["loss"] for e in _steps(broken)}
    for s in range(resumed + 1, 7):
        assert lb[s] == pytest.approx(la[s], rel=1e-4, abs=1e-6)


def test_stop_file_and_sigterm_save_and_exit_zero(assets, tmp_path):
    base, dataset = assets
    run = tmp_path / "stop"
    config = _config(run, base, dataset, max_steps=500)
    proc = _trainer(config)
    _wait_for(run, proc, lambda e: e["type"] == "step")
    request_stop(run)
    assert proc.wait(timeout=120) == 0, proc.stdout.read()
    events = read_events(run)
    done = events[-1]
    assert done["type"] == "done" and done["reason"] == "stopped" and done["step"] < 500
    assert any(e["type"] == "save" and e["step"] == done["step"] for e in events)
    assert (run / "checkpoints" / f"state-{done['step']:08d}").is_dir()
    assert json.loads((run / "run.json").read_text())["state"] == "stopped"

    proc = _trainer(config, "--resume")  # the old stop request is cleared; SIGTERM stops this one
    _wait_for(run, proc, lambda e: e["type"] == "step" and e["step"] > done["step"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stdout.read()
    last = read_events(run)[-1]
    assert last["type"] == "done" and last["reason"] == "stopped" and last["step"] > done["step"]


def test_missing_base_model_is_an_error_event(assets, tmp_path):
    _, dataset = assets
    run = tmp_path / "bad"
    config = _config(run, tmp_path / "nope.safetensors", dataset, max_steps=2)
    proc = _trainer(config)
    assert proc.wait(timeout=120) == 2
    err = read_events(run)[-1]
    assert (
        err["type"] == "error"
        and "base model not found" in err["message"]
        and "nope.safetensors" in err["message"]
    )
    assert json.loads((run / "run.json").read_text())["state"] == "error"
    assert not any((run / "checkpoints").iterdir())
