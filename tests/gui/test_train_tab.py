"""Train tab driven with qtbot on the demo workspace: settings, pre-flight, a real 2-process CPU run that is stopped,
resumed, followed by a recreated tab, and killed (one rank SIGKILLed); plus a launcher that dies at once.

The real run uses the tiny demo model at 64 px with batch 1, so each launch is mostly interpreter start-up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import psutil  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from support import demo_workspace_with_squares  # noqa: E402
from user_input import click, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs import train as train_tab  # noqa: E402
from kxl_gui.tabs.train import TrainTab  # noqa: E402
from trainer_core.atomic import atomic_write_text  # noqa: E402
from trainer_core.train import supervisor  # noqa: E402
from trainer_core.train.config import TrainConfig, load_preset  # noqa: E402
from trainer_core.train.events import read_events  # noqa: E402
from trainer_core.train.runs import group_members  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402

RUN_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The demo workspace (DB + tiny checkpoints, no image shards) with a 4-image kohya dataset."""
    return demo_workspace_with_squares(tmp_path_factory.mktemp("train-ws") / "demo")


@pytest.fixture
def context(workspace, tmp_path):
    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.set_workspace(workspace)
    return ctx


def make_tab(qtbot, context) -> TrainTab:
    tab = TrainTab(context)
    qtbot.addWidget(tab)
    tab.resize(1280, 860)
    return tab


def set_setting(tab: TrainTab, key: str, value) -> None:
    w = tab.settings.editors[key]
    if hasattr(w, "setValue"):
        w.setValue(value)
    elif hasattr(w, "setChecked"):
        w.setChecked(value)
    else:  # text fields follow what the user types (the tab must be shown)
        type_into(w, str(value))


def wait_preflight(qtbot, tab: TrainTab):
    with qtbot.waitSignal(tab.preflight_done, timeout=20_000) as blocker:
        tab.check_now()
    return blocker.args[0]


def configure_small_run(qtbot, tab: TrainTab, max_steps: int = 1000):
    tab.device_combo.setCurrentIndex(tab.device_combo.findData("cpu"))
    tab.processes_spin.setValue(2)
    for key, value in (("dataset.resolution", 64), ("training.batch_size", 1), ("training.max_steps", max_steps),
                       ("training.gradient_accumulation_steps", 1), ("training.save_every_n_steps", 0),
                       ("optimizer.lr_warmup_steps", 0)):  # fmt: skip
        set_setting(tab, key, value)
    return wait_preflight(qtbot, tab)


def loss_steps(tab: TrainTab) -> list[int]:
    tab._refresh_live()
    return [int(x) for x in tab.plots.loss_points()[0]]


def test_defaults_come_from_the_workspace_and_requests(qtbot, context, workspace, tmp_path):
    tab = make_tab(qtbot, context)
    assert tab.preset_combo.currentData() == "tiny-demo"  # demo workspace -> the demo preset
    assert Path(tab.dataset_edit.text()) == workspace.datasets_path / "squares"
    assert Path(tab.base_edit.text()) == workspace.checkpoint_path("original")
    assert Path(tab.run_dir_edit.text()).parent == workspace.runs_path
    assert Path(tab.run_dir_edit.text()).name.startswith("tiny-demo-lokr-")
    merged = workspace.models_path / "kohaku-xl-delta-base.safetensors"
    merged.write_bytes(workspace.checkpoint_path("gamma").read_bytes())
    try:
        assert train_tab.default_base(workspace) == merged  # a merged base wins over the original
    finally:
        merged.unlink()
    context.request("train.set_base", tmp_path / "other.safetensors")
    context.request("train.set_dataset", tmp_path / "ds")
    assert tab.base_edit.text() == str(tmp_path / "other.safetensors")
    assert tab.dataset_edit.text() == str(tmp_path / "ds")
    report = wait_preflight(qtbot, tab)
    topics = {i.topic: i.level for i in report.items}
    assert topics["dataset"] == "error" and topics["base"] == "error"
    assert not tab.launch_button.isEnabled()
    assert (
        "dataset folder not found"
        in tab.preflight_card.findChildren(type(tab.run_title), "preflightItem")[0].text()
    )


def test_settings_search_tooltips_and_toml_round_trip(qtbot, context, tmp_path):
    tab = show(qtbot, make_tab(qtbot, context))
    assert tab.settings.filter("warmup") == 1
    assert tab.settings.visible_keys() == ["optimizer.lr_warmup_steps"]
    assert "optimizer.lr_warmup_steps" in tab.settings.editors["optimizer.lr_warmup_steps"].toolTip()
    assert tab.settings.filter("min_snr") == 1  # the TOML key itself is searchable
    assert tab.settings.filter("no such option") == 0 and tab.settings.no_match.isVisibleTo(tab)
    tab.settings.filter("")
    assert len(tab.settings.visible_keys()) == len(tab.settings.editors)

    set_setting(tab, "training.batch_size", 3)
    set_setting(tab, "optimizer.unet_lr", "2.5e-4")
    tab.settings.editors["training.sample_prompts"].setPlainText("1girl, solo\n\n1boy")
    path = tmp_path / "saved.toml"
    tab.save_toml(path)
    tab2 = make_tab(qtbot, context)
    tab2.load_toml(path)
    cfg = tab2.current_config()
    assert cfg.training.batch_size == 3 and cfg.optimizer.unet_lr == 2.5e-4
    assert cfg.training.sample_prompts == ["1girl, solo", "1boy"]
    assert Path(cfg.model.base) == Path(tab.base_edit.text())

    set_setting(tab, "optimizer.betas", "0.9; 0.95")
    with pytest.raises(Exception, match="optimizer.betas"):
        tab.current_config()


def test_launcher_that_dies_at_once_shows_exit_code_and_log(qtbot, context, monkeypatch):
    tab = make_tab(qtbot, context)
    configure_small_run(qtbot, tab)
    script = "import sys; print('trainer could not import torch: boom', flush=True); sys.exit(3)"
    monkeypatch.setattr(train_tab, "launch_command", lambda plan: ([sys.executable, "-c", script], {}))
    with qtbot.waitSignal(tab.run_ended, timeout=20_000) as ended:
        run_dir = tab.launch()
    assert ended.args == ["failed"]
    assert tab.monitor.exit_code == 3
    text = tab.live_message.text()
    assert "exit code 3" in text and "exited before reporting anything" in text
    assert tab.failure_log.isVisibleTo(tab) and "boom" in tab.failure_log.toPlainText()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["state"] == "failed" and info["exit_code"] == 3
    assert tab.launch_button.isEnabled()  # the GUI is ready for the next launch


def write_finished_run(run_dir: Path, steps: int) -> None:
    """What a trainer leaves behind: step events, a save every 100 steps, one sample, done, run.json "done"."""
    from trainer_core.train.events import EventWriter, write_run_info

    write_run_info(run_dir, "running")
    w = EventWriter(run_dir)
    w.emit("status", 0, message="dataset", total_steps=steps)
    for i in range(1, steps + 1):
        w.emit(
            "step", i, loss=1.0 / i, lr={"unet": 1e-4, "textencoder": 1e-5}, grad_norm=0.5, total_steps=steps
        )
        if i % 100 == 0:
            w.emit("save", i, path=str(run_dir / f"checkpoints/x-step{i:08d}.safetensors"), reason="interval")
    w.emit("sample", steps, path=str(run_dir / "samples/last.png"), index=0, prompt="1girl")
    w.emit("done", steps, reason="finished", final_step=steps)
    w.close()
    write_run_info(run_dir, "done", final_step=steps)


def test_reattach_reads_a_backlog_in_slices_and_redraws_one_slot_per_tick(
    qtbot, context, tmp_path, monkeypatch
):
    from kxl_gui.widgets import train_run_monitor

    run_dir = tmp_path / "runs" / "old-run"
    run_dir.mkdir(parents=True)
    write_finished_run(run_dir, 1500)
    monkeypatch.setattr(train_run_monitor, "READ_BUDGET_S", 0.0)  # one slice per event-loop turn
    monkeypatch.setattr(train_run_monitor, "READ_SLICE", 8 * 1024)
    tab = make_tab(qtbot, context)
    tab.show()
    monitor = tab.attach(run_dir)
    assert monitor.state == "finished"
    monitor._read_events()
    assert 0 < monitor.series.n < 1500 and monitor.catching_up
    assert monitor._more.isActive()  # the next slice is already scheduled for the next turn
    qtbot.waitUntil(lambda: not monitor.catching_up, timeout=10_000)
    s = monitor.series
    assert s.n == 1500 and s.last_step == 1500 and s.done is not None
    assert [m.step for m in s.markers if m.kind == "save"] == list(range(100, 1501, 100))

    # the redraw timer's tick redraws one slot (one plot, or the figures), in turn, and each only once
    tab._redraw_timer.stop()
    tab._slot_drawn.clear()
    tab._next_slot = 0
    s.version += 1
    tab._on_redraw_tick()
    assert tab.plots.stale_plots() == ["lr", "grad"]
    for _ in range(3):
        tab._on_redraw_tick()
    assert tab.plots.stale_plots() == [] and tab.plots.drawn_version == s.version
    assert tab.figures.text().startswith("step 1,500 / 1,500")
    assert tab.plots.loss_points()[0] == [float(i) for i in range(1, 1501)]
    assert len(tab.plots.marker_lines.markers()) == 16  # all 15 saves and the sample: no cap, no rebuild
    tab.hide()
    s.version += 1
    for _ in range(4):
        tab._on_redraw_tick()
    assert len(tab.plots.stale_plots()) == 3  # hidden: plots wait, the figures and lists do not
    assert tab._slot_drawn["status"] == s.version


def test_run_stop_resume_reattach_and_killed_rank(qtbot, context, workspace):
    tab = make_tab(qtbot, context)
    report = configure_small_run(qtbot, tab)
    assert report.ok, report.items
    assert report.images == 4 and report.memory is not None and report.memory.total > 0
    command = tab.command_box.toPlainText()
    assert (
        "ACCELERATE_USE_CPU=true" in command and "--num_processes 2" in command and "--multi_gpu" in command
    )

    # -- launch, see steps on the plot
    run_dir = tab.launch()
    assert run_dir is not None and tab.monitor.owns_process
    qtbot.waitUntil(lambda: tab.monitor.series.last_step >= 3, timeout=RUN_TIMEOUT_MS)
    assert tab.monitor.state == "running"
    steps = loss_steps(tab)
    assert steps[:3] == [1, 2, 3] and steps == list(range(1, len(steps) + 1))

    # -- Save now: a state appears without stopping
    tab._command("save")
    qtbot.waitUntil(lambda: tab.states_list.count() >= 1, timeout=RUN_TIMEOUT_MS)

    # -- graceful stop
    with qtbot.waitSignal(tab.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        tab.stop()
        assert tab.monitor.state == "stopping"
    assert ended.args == ["stopped"]
    stopped_at = tab.monitor.series.done["step"]
    assert loss_steps(tab)[-1] == stopped_at
    assert tab.states_list.item(0).text().startswith(f"step {stopped_at:,}")
    assert tab.lokr_list.count() >= 1 and tab.resume_button.isEnabled()

    # -- Resume (next to Stop, a real click) from the newest state: the plot continues from that step
    show(qtbot, tab)
    click(tab.resume_button)
    assert tab.monitor.run_dir == run_dir and tab.monitor.owns_process and not tab.resume_button.isEnabled()
    click_tab(qtbot, tab.live_tabs, "Log")  # the launcher's output: both launches, all ranks
    qtbot.waitUntil(lambda: tab.log_view.toPlainText().count(" launch: ") == 2, timeout=5000)
    tab.hide()  # the rest watches the run through its files, as before
    qtbot.waitUntil(lambda: tab.monitor.series.last_step >= stopped_at + 2, timeout=RUN_TIMEOUT_MS)
    steps = loss_steps(tab)
    assert steps == list(range(1, steps[-1] + 1))  # one continuous curve, no restart at 1
    assert any(m.kind == "resume" and m.step == stopped_at for m in tab.monitor.series.markers)

    # -- a second tab (GUI restarted) finds the live run and follows it
    tab2 = make_tab(qtbot, context)
    qtbot.waitUntil(lambda: tab2.monitor is not None, timeout=20_000)
    assert tab2.monitor.run_dir == run_dir and not tab2.monitor.owns_process
    settings2 = tab2.settings.editors  # the run's settings, not the demo preset's (resolution 128, batch 2)
    assert settings2["dataset.resolution"].value() == 64 and settings2["training.max_steps"].value() == 1000
    assert settings2["training.batch_size"].value() == 1 and settings2["training.batch_size"].isReadOnly()
    qtbot.waitUntil(lambda: len(loss_steps(tab2)) > stopped_at, timeout=20_000)
    assert [r.state for r in tab2.runs.runs if r.run_dir == run_dir] == ["running"]
    tab2.close_choice = lambda *_: "cancel"
    assert tab2.confirm_close() is False
    tab2.close_choice = lambda *_: "leave"
    assert tab2.confirm_close() is True and not tab2.monitor.timer.isActive()

    # -- SIGKILL one rank: the run fails with the exit code and the log tail, nothing is left running
    launcher = tab.monitor.proc.pid
    ranks = [p for p in psutil.Process(launcher).children(recursive=True)
             if "trainer_core.train" in " ".join(p.cmdline())]  # fmt: skip
    assert len(ranks) == 2
    with qtbot.waitSignal(tab.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        os.kill(ranks[-1].pid, signal.SIGKILL)
    assert ended.args == ["failed"]
    assert tab.monitor.exit_code not in (0, None)
    assert f"exit code {tab.monitor.exit_code}" in tab.live_message.text()
    log = tab.failure_log.toPlainText().splitlines()
    assert tab.failure_log.isVisibleTo(tab) and 0 < len(log) <= 40
    assert group_members(launcher) == [] and not psutil.pid_exists(launcher)  # reaped, no straggler
    assert json.loads((run_dir / "run.json").read_text())["state"] in ("failed", "error")
    assert not any(e["type"] == "done" for e in read_events(run_dir)[-3:])

    # -- a fresh tab lists the run as failed and can inspect it
    tab3 = make_tab(qtbot, context)
    qtbot.waitUntil(lambda: any(r.run_dir == run_dir for r in tab3.runs.runs), timeout=20_000)
    assert [r.state for r in tab3.runs.runs if r.run_dir == run_dir] == ["failed"]
    assert tab3.monitor is None  # nothing live to reattach to
    tab3.attach(run_dir)
    assert tab3.monitor.state == "failed"
    qtbot.waitUntil(lambda: tab3.monitor.series.n > 0 and not tab3.monitor.catching_up, timeout=10_000)
    assert loss_steps(tab3)[-1] == tab.monitor.series.last_step


# ---------------------------------------------------------------------------------------------- user-driven runs


def show(qtbot, tab: TrainTab) -> TrainTab:
    tab.show()
    qtbot.waitExposed(tab)
    return tab


def click_tab(qtbot, tabs, title: str) -> None:
    """Click a sub-tab's title in its tab bar, as a user does."""
    index = next(i for i in range(tabs.count()) if tabs.tabText(i) == title)
    bar = tabs.tabBar()
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )
    qtbot.waitUntil(lambda: tabs.currentIndex() == index, timeout=2000)


def open_from_runs_list(qtbot, tab: TrainTab, run_dir: Path) -> None:
    """Runs sub-tab -> click the run's row -> "Watch / inspect"."""
    click_tab(qtbot, tab.live_tabs, "Runs")
    table = tab.runs.table
    qtbot.waitUntil(lambda: tab.runs.summary(run_dir) is not None, timeout=20_000)
    row = next(
        r for r in range(table.rowCount()) if Path(table.item(r, 0).data(Qt.ItemDataRole.UserRole)) == run_dir
    )
    rect = table.visualItemRect(table.item(row, 0))
    QTest.mouseClick(
        table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center()
    )
    assert tab.runs.selected() == run_dir
    click(tab.runs.open_button)
    qtbot.waitUntil(lambda: tab.monitor is not None and tab.monitor.run_dir == run_dir, timeout=5000)


def run_config(tmp_path: Path, **training) -> TrainConfig:
    cfg = load_preset("tiny-demo")
    cfg.model.base = str(tmp_path / "base.safetensors")
    cfg.dataset.path = str(tmp_path / "dataset")
    for key, value in training.items():
        setattr(cfg.training, key, value)
    return cfg


def write_ended_run(run_dir: Path, cfg: TrainConfig, steps: int, reason: str) -> Path:
    """A run that ended ("stopped" or "finished") as the trainer leaves it: config.toml snapshot, events, run.json,
    a resumable state at the last step and its LoKr. Returns the state folder."""
    from trainer_core.train.events import EventWriter, write_run_info

    run_dir.mkdir(parents=True)
    atomic_write_text(run_dir / "config.toml", cfg.with_absolute_paths().to_toml())
    w = EventWriter(run_dir)
    w.emit("status", 0, message="dataset", total_steps=100)
    for i in range(1, steps + 1):
        w.emit("step", i, loss=1.0 / i, lr={"unet": 1e-4}, grad_norm=0.5, total_steps=100)
    w.emit("done", steps, reason=reason, final_step=steps)
    w.close()
    write_run_info(run_dir, "stopped" if reason == "stopped" else "done", final_step=steps)
    state = run_dir / "checkpoints" / f"state-{steps:08d}"
    state.mkdir(parents=True)
    (state / "train_state.json").write_text(
        json.dumps({"step": steps, "saved": time.time(), "world_size": 1})
    )
    (run_dir / "checkpoints" / f"x-step{steps:08d}.safetensors").write_bytes(b"")
    return state


@pytest.fixture
def own_context(tmp_path):
    """A context on a workspace of its own, so the runs here are the only runs listed."""
    ws = Workspace(root=tmp_path / "ws", name="ws")
    ws.runs_path.mkdir(parents=True)
    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.set_workspace(ws)
    return ctx, ws


def test_resume_sits_next_to_stop_and_only_a_stopped_run_can_be_resumed(
    qtbot, own_context, tmp_path, monkeypatch
):
    ctx, ws = own_context
    finished = ws.runs_path / "finished-run"
    write_ended_run(finished, run_config(tmp_path), 20, "finished")
    stopped = ws.runs_path / "stopped-run"
    state = write_ended_run(stopped, run_config(tmp_path, gradient_accumulation_steps=3), 12, "stopped")
    started: list[list[str]] = []

    def fake_start(
        argv, env, run_dir, preexec_fn=None
    ):  # what Resume starts: a process that waits to be stopped
        started.append(list(argv))
        return subprocess.Popen(["sleep", "60"], start_new_session=True)

    monkeypatch.setattr(supervisor, "start_trainer", fake_start)
    tab = show(qtbot, make_tab(qtbot, ctx))
    layout = tab.live_card.body
    row = next(layout.itemAt(i).layout() for i in range(layout.count())
               if layout.itemAt(i).layout() is not None and layout.itemAt(i).layout().indexOf(tab.stop_button) >= 0)  # fmt: skip
    assert row.indexOf(tab.resume_button) == row.indexOf(tab.stop_button) + 1  # right next to Stop
    assert tab.resume_button.isVisible()
    assert not tab.resume_button.isEnabled()  # nothing open yet

    open_from_runs_list(qtbot, tab, finished)
    assert tab.monitor.state == "finished" and tab.states_list.count() == 1
    assert not tab.resume_button.isEnabled() and "finished" in tab.resume_button.toolTip()

    open_from_runs_list(qtbot, tab, stopped)
    assert tab.monitor.state == "stopped"
    assert tab.settings.editors["training.gradient_accumulation_steps"].value() == 3  # the run's own settings
    assert tab.resume_button.isEnabled() and not tab.stop_button.isEnabled()
    click(tab.resume_button)
    try:
        assert len(started) == 1
        argv = started[0]
        assert argv[argv.index("--resume-from") + 1] == str(state)
        assert str(stopped / "config.toml") in argv
        assert tab.monitor.owns_process and tab.monitor.active
        assert not tab.resume_button.isEnabled()  # a live trainer: no second resume
        assert tab.settings.editors["training.gradient_accumulation_steps"].isReadOnly()  # live: read-only
        with qtbot.waitSignal(tab.run_ended, timeout=20_000) as ended:
            click(tab.stop_button)  # no event from the trainer yet: Stop signals its process group
        assert ended.args == ["failed"]
        assert tab.resume_button.isEnabled()  # failed with a saved state: can be resumed again
        assert not tab.settings.editors["training.gradient_accumulation_steps"].isReadOnly()
    finally:
        if tab.monitor.proc is not None and tab.monitor.proc.poll() is None:
            tab.monitor.proc.kill()
            tab.monitor.proc.wait()


def test_reattach_to_a_live_run_shows_its_settings_and_follows_its_log(qtbot, own_context, tmp_path):
    from trainer_core.train.events import EventWriter, process_start_time

    ctx, ws = own_context
    run_dir = ws.runs_path / "live-run"
    run_dir.mkdir()
    cfg = run_config(tmp_path, gradient_accumulation_steps=3, keep_states=5, batch_size=2)
    cfg.optimizer.unet_lr = 3e-4
    atomic_write_text(run_dir / "config.toml", cfg.with_absolute_paths().to_toml())
    w = EventWriter(run_dir)
    for i in range(1, 6):
        w.emit("step", i, loss=1.0 / i, total_steps=100)
    w.close()
    log = run_dir / "logs" / "trainer.log"
    log.parent.mkdir()
    log.write_text("".join(f"2026-01-01 00:00:0{i} step {i}: loss {1 / i:.3f}\n" for i in range(1, 6)))
    trainer = subprocess.Popen(["sleep", "60"], start_new_session=True)  # stands in for the live trainer
    try:
        info = {"host": socket.gethostname(), "pid": trainer.pid, "pgid": trainer.pid, "ppid": os.getpid(),
                "process_start_time": process_start_time(trainer.pid), "command": ["trainer"],
                "state": "running", "updated": round(time.time(), 3)}  # fmt: skip
        atomic_write_text(run_dir / "run.json", json.dumps(info))

        tab = show(qtbot, make_tab(qtbot, ctx))  # the GUI reopened: it finds the live run and reattaches
        qtbot.waitUntil(lambda: tab.monitor is not None, timeout=20_000)
        assert tab.monitor.run_dir == run_dir and tab.monitor.state == "running"
        editors = tab.settings.editors
        assert editors["training.gradient_accumulation_steps"].value() == 3
        assert editors["training.keep_states"].value() == 5 and editors["training.batch_size"].value() == 2
        assert float(editors["optimizer.unet_lr"].text()) == 3e-4
        assert tab.base_edit.text() == cfg.model.base and tab.dataset_edit.text() == cfg.dataset.path
        assert tab.current_config().training.gradient_accumulation_steps == 3
        assert editors["training.batch_size"].isReadOnly() and "live-run" in tab.settings_card.subtitle.text()

        click_tab(qtbot, tab.live_tabs, "Log")
        qtbot.waitUntil(lambda: "step 5: loss 0.200" in tab.log_view.toPlainText(), timeout=5000)
        assert tab.log_view.toPlainText().splitlines()[0].endswith("step 1: loss 1.000")
        with log.open("a") as fh:  # the trainer goes on writing: the view follows, reading only the new bytes
            fh.write("2026-01-01 00:00:06 step 6: loss 0.167\n")
            fh.write("progress  10%\rprogress  50%\rprogress 100%\n")
        qtbot.waitUntil(lambda: "step 6: loss 0.167" in tab.log_view.toPlainText(), timeout=5000)
        assert tab.log_view.toPlainText().splitlines()[-1] == "progress 100%"  # as a terminal shows it
        assert tab.log_view.follower.bytes_read == log.stat().st_size  # every byte read once

        trainer.kill()
        trainer.wait()
        with qtbot.waitSignal(tab.run_ended, timeout=20_000):
            pass
        assert tab.monitor.state == "failed"
        assert not editors["training.batch_size"].isReadOnly()  # nothing live any more: editable
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()


def test_log_follower_reads_only_the_tail_of_a_big_log_then_only_new_bytes(tmp_path):
    from kxl_gui.widgets.train_log import INITIAL_TAIL_BYTES, LogFollower

    log = tmp_path / "launcher.log"
    line = "x" * 99 + "\n"
    log.write_text(line * 50_000)  # 5 MB
    follower = LogFollower(log)
    lines = follower.read()
    assert follower.bytes_read <= INITIAL_TAIL_BYTES
    assert lines[0].startswith("… ") and "skipped" in lines[0]
    assert all(x == line.strip() for x in lines[1:]) and len(lines) > 2000
    with log.open("a") as fh:
        fh.write("last words\npartial")
    read_before = follower.bytes_read
    assert follower.read() == ["last words"]  # a torn last line waits for its newline
    assert follower.bytes_read - read_before == len("last words\npartial")
    log.write_text("new file\n")  # replaced (a new launch): read from its start
    assert follower.read() == ["new file"] and follower.restarted


def test_learning_rate_plot_names_both_curves(qtbot):
    from kxl_gui.widgets.train_plots import TrainPlots

    plots = TrainPlots()
    qtbot.addWidget(plots)
    legend = plots.lr_plot.getPlotItem().legend
    assert legend is not None and [label.text for _, label in legend.items] == ["UNet", "TE"]
