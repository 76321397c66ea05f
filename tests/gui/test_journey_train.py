"""Train journey driven only by real input on a fresh demo workspace, with the GUI-thread stall watchdog on:
wheel over the settings (nothing changes) -> CPU, tiny settings typed in -> Launch -> live loss points -> Save now
-> Sample now -> Copy command -> Stop -> Resume (next to Stop) -> finished -> Open in Generate."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QWidget  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from support import demo_workspace_with_squares  # noqa: E402
from user_input import click, roll_wheel, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.train import TrainTab  # noqa: E402
from kxl_gui.widgets.wheel_guard import is_value_widget  # noqa: E402
from trainer_core.train.events import read_events  # noqa: E402

RUN_TIMEOUT_MS = 300_000
MAX_STEPS = 60  # long enough that Stop lands before the end (Save now and Sample now come first), short in CI
STALL_BAR_MS = 150


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fresh demo workspace (DB + tiny checkpoints) with a 4-image kohya dataset, as the Dataset tab leaves it."""
    return demo_workspace_with_squares(tmp_path_factory.mktemp("journey-train") / "demo")


@pytest.fixture
def tab(qtbot, workspace, tmp_path):
    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.set_workspace(workspace)
    t = TrainTab(ctx)
    qtbot.addWidget(t)
    t.resize(1280, 860)
    t.show()
    qtbot.waitExposed(t)
    return t


def type_setting(tab: TrainTab, key: str, value: object) -> None:
    w = tab.settings.editors[key]
    tab.left_scroll.ensureWidgetVisible(w)
    type_into(w, str(value))
    QTest.keyClick(w, Qt.Key.Key_Tab)  # leave the field, as a user moving on


def test_wheel_over_the_settings_changes_nothing(qtbot, tab):
    before = (tab.form.settings.as_dict(), tab.form.processes, tab.form.machines, tab.form.device)
    swept = 0
    for w in tab.findChildren(QWidget):
        if is_value_widget(w) and w.isVisible() and w.isEnabled():
            tab.left_scroll.ensureWidgetVisible(w)
            roll_wheel(w, -3)
            roll_wheel(w, 3)
            swept += 1
    assert swept >= 30  # the whole settings panel and the Run card
    assert (tab.form.settings.as_dict(), tab.form.processes, tab.form.machines, tab.form.device) == before


def test_launch_live_curve_stop_resume_finish(qtbot, tab):
    watch = StallWatch().start()
    try:
        _journey(qtbot, tab)
    finally:
        watch.stop()
    print(f"\ntrain journey: {watch.report(limit=1)}")
    assert watch.worst_blocked_ms <= STALL_BAR_MS, watch.report()


def _journey(qtbot, tab: TrainTab) -> None:
    tab.device_combo.setFocus(Qt.FocusReason.TabFocusReason)
    QTest.keyClick(tab.device_combo, Qt.Key.Key_End)  # "CPU (gloo)", the last choice
    assert tab.form.device == "cpu"
    for key, value in (("dataset.resolution", 64), ("training.batch_size", 1), ("training.max_steps", MAX_STEPS),
                       ("training.gradient_accumulation_steps", 1), ("training.save_every_n_steps", 0),
                       ("optimizer.lr_warmup_steps", 0), ("training.sample_every", 0)):  # fmt: skip
        type_setting(tab, key, value)
    prompts = tab.settings.editors["training.sample_prompts"]  # a text box: Tab would type a tab there
    tab.left_scroll.ensureWidgetVisible(prompts)
    type_into(prompts, "1girl, solo")
    cfg = tab.current_config()
    assert cfg.training.sample_prompts == ["1girl, solo"]
    assert (cfg.dataset.resolution, cfg.training.batch_size, cfg.training.max_steps) == (64, 1, MAX_STEPS)
    qtbot.waitUntil(lambda: tab.report is not None and tab.report.ok and tab.launch_button.isEnabled(),
                    timeout=30_000)  # fmt: skip
    assert "--num_processes 1" in tab.command_box.toPlainText()
    click(tab.copy_button)
    assert QGuiApplication.clipboard().text() == tab.command_box.toPlainText()

    # -- Launch: the loss curve fills in live, step by step
    click(tab.launch_button)
    monitor = tab.monitor
    assert monitor is not None and monitor.owns_process and tab.stop_button.isEnabled()
    run_dir = monitor.run_dir
    qtbot.waitUntil(lambda: len(tab.plots.loss_points()[0]) >= 3, timeout=RUN_TIMEOUT_MS)
    assert tab.plots.loss_points()[0][:3] == [1.0, 2.0, 3.0]
    assert tab.monitor.state == "running" and tab.figures.text().startswith("step ")

    # -- Save now: a resumable state appears while it trains
    click(tab.save_now_button)
    qtbot.waitUntil(lambda: tab.states_list.count() >= 1, timeout=RUN_TIMEOUT_MS)

    # -- Sample now: the trainer renders the sample prompt after its current step
    click(tab.sample_button)
    qtbot.waitUntil(lambda: any(e["type"] == "sample" for e in read_events(run_dir)), timeout=RUN_TIMEOUT_MS)

    # -- Stop: it saves and ends "stopped"; Resume, right next to Stop, becomes available
    with qtbot.waitSignal(tab.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        click(tab.stop_button)
    assert ended.args == ["stopped"]
    stopped_at = tab.monitor.series.done["step"]
    assert stopped_at < MAX_STEPS
    assert tab.resume_button.isEnabled() and not tab.stop_button.isEnabled()

    # -- Resume: the same run goes on from the saved step to the end
    with qtbot.waitSignal(tab.run_ended, timeout=RUN_TIMEOUT_MS) as ended:
        click(tab.resume_button)
        assert tab.monitor.run_dir == run_dir and not tab.resume_button.isEnabled()
    assert ended.args == ["finished"]
    qtbot.waitUntil(lambda: not tab.monitor.catching_up, timeout=10_000)
    tab._refresh_live()
    steps = [int(x) for x in tab.plots.loss_points()[0]]
    assert steps == list(range(1, MAX_STEPS + 1))  # one continuous curve, no restart at 1
    assert any(m.kind == "resume" and m.step == stopped_at for m in tab.monitor.series.markers)
    done = [e for e in read_events(run_dir) if e["type"] == "done"]
    assert [d["reason"] for d in done] == ["stopped", "finished"]
    assert not tab.resume_button.isEnabled()  # finished: nothing left to resume

    # -- the trained LoKr goes to Generate
    sent = []
    tab.context.requested.connect(lambda action, payload: sent.append((action, payload)))
    index = next(i for i in range(tab.live_tabs.count()) if tab.live_tabs.tabText(i) == "Checkpoints")
    bar = tab.live_tabs.tabBar()
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )
    qtbot.waitUntil(tab.open_generate_button.isVisible, timeout=2000)
    click(tab.open_generate_button)
    assert sent and sent[0][0] == "generate.add_lokr" and Path(sent[0][1]).suffix == ".safetensors"
    assert Path(sent[0][1]).parent == run_dir / "checkpoints"
