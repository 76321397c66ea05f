"""Train tab buttons a user reaches without a live training run: Load / Save TOML through the file dialogs, and
the runs list's Refresh, Mark stopped and Kill process group on a run whose processes are stand-ins."""

from __future__ import annotations

import os
import sys

import tomllib

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from user_input import answer_file_dialog, click, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.train import TrainTab  # noqa: E402
from trainer_core.train.runs import read_run_info, start_trainer  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402


@pytest.fixture
def tab(qtbot, tmp_path):
    ws = Workspace(root=tmp_path / "ws", name="ws")
    ws.runs_path.mkdir(parents=True)
    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.set_workspace(ws)
    t = TrainTab(ctx)
    qtbot.addWidget(t)
    t.resize(1280, 860)
    t.show()
    qtbot.waitExposed(t)
    return t


def _show_live_tab(tab: TrainTab, title: str) -> None:
    bar = tab.live_tabs.tabBar()
    index = next(i for i in range(tab.live_tabs.count()) if tab.live_tabs.tabText(i) == title)
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )


def _select_run(qtbot, tab: TrainTab, name: str) -> None:
    table = tab.runs.table
    qtbot.waitUntil(
        lambda: any(table.item(r, 0).text() == name for r in range(table.rowCount())), timeout=20_000
    )
    row = next(r for r in range(table.rowCount()) if table.item(r, 0).text() == name)
    rect = table.visualItemRect(table.item(row, 0))
    QTest.mouseClick(
        table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center()
    )
    assert tab.runs.selected() is not None and tab.runs.selected().name == name


def test_save_then_load_toml_through_the_file_dialogs(qtbot, tab, tmp_path):
    batch = tab.settings.editors["training.batch_size"]
    tab.left_scroll.ensureWidgetVisible(batch)
    type_into(batch, "3")
    QTest.keyClick(batch, Qt.Key.Key_Tab)
    saved = tmp_path / "mine.toml"
    click(tab.run_card.save_button)
    answer_file_dialog(qtbot, tab, saved)
    qtbot.waitUntil(saved.is_file, timeout=10_000)
    assert tomllib.loads(saved.read_text(encoding="utf-8"))["training"]["batch_size"] == 3

    type_into(batch, "5")
    QTest.keyClick(batch, Qt.Key.Key_Tab)
    assert tab.current_config().training.batch_size == 5
    click(tab.run_card.load_button)
    answer_file_dialog(qtbot, tab, saved)
    qtbot.waitUntil(lambda: tab.current_config().training.batch_size == 3, timeout=10_000)


def test_runs_list_refresh_mark_stopped_and_kill(qtbot, tab):
    runs = tab.context.workspace.runs_path
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    stale = start_trainer(sleeper, {}, runs / "unreachable")
    doomed = start_trainer(sleeper, {}, runs / "doomed")
    try:
        _show_live_tab(tab, "Runs")
        click(tab.runs.refresh_button)
        # the tab reattaches to the newest live run and shows its samples, as on any start with runs left running
        qtbot.waitUntil(lambda: tab.monitor is not None, timeout=20_000)
        assert tab.monitor.run_dir == runs / "doomed"
        _show_live_tab(tab, "Runs")
        # "Mark stopped": a run whose processes the user cannot reach is recorded as stopped, and left alone
        _select_run(qtbot, tab, "unreachable")
        click(tab.runs.mark_button)
        qtbot.waitUntil(
            lambda: (read_run_info(runs / "unreachable") or {}).get("state") == "stopped", timeout=10_000
        )
        assert stale.poll() is None
        # "Kill process group": every process of the run is gone, and the list says it failed
        _select_run(qtbot, tab, "doomed")
        assert tab.runs.kill_button.isEnabled()
        click(tab.runs.kill_button)
        assert doomed.wait(timeout=20) == -9
        qtbot.waitUntil(lambda: tab.runs.summary(runs / "doomed").state == "failed", timeout=20_000)
    finally:
        for proc in (stale, doomed):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
