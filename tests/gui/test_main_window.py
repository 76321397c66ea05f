"""Main window, Workspace page, jobs worker and the app's error handling, driven with qtbot (offscreen)."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QThread  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from user_input import answer_next_dialog, click  # noqa: E402

from kxl_gui import app as gui_app  # noqa: E402
from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.dialogs import ERROR_DIALOG_NAME  # noqa: E402
from kxl_gui.jobs import Job  # noqa: E402
from kxl_gui.main_window import MainWindow  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from trainer_core.errors import KxlError, WorkspaceError  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    return AppSettings(tmp_path / "settings" / "gui.ini")


@pytest.fixture
def window(qtbot, settings):
    win = MainWindow(AppContext(settings))
    qtbot.addWidget(win)
    win.show()
    return win


def table_rows(table) -> list[list[str]]:
    return [
        [table.item(r, c).text() if table.item(r, c) else "" for c in range(table.columnCount())]
        for r in range(table.rowCount())
    ]


def error_dialogs() -> list[QMessageBox]:
    return [
        w for w in QApplication.topLevelWidgets() if w.objectName() == ERROR_DIALOG_NAME and w.isVisible()
    ]


def close_dialogs() -> None:
    for box in error_dialogs():
        box.close()


def open_and_wait(qtbot, page, root: Path) -> None:
    with qtbot.waitSignal(page.summary_shown, timeout=10_000):
        page.open_workspace(root)


def test_workspace_first_then_discovered_tabs_in_workflow_order(window):
    from kxl_gui.tabs import discover_tabs

    titles = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    assert titles == ["Workspace", *[m.TAB_TITLE for m in discover_tabs()]]
    orders = [m.TAB_ORDER for m in discover_tabs()]
    assert orders == sorted(orders)


def test_tabs_can_ask_the_window_to_switch(window):
    window.context.request("noop", None, switch_to="Workspace")
    assert window.tabs.currentIndex() == 0
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&Help"]


def test_page_shows_db_counts_shards_and_checkpoints(qtbot, window, settings, make_workspace):
    root = make_workspace(posts=3)
    page = window.workspace_page
    with qtbot.waitSignal(page.hashes_done, timeout=10_000):
        open_and_wait(qtbot, page, root)

    assert table_rows(page.db_table) == [
        ["post", "3"],
        ["tag", "2"],
        ["posttagrelation", "5"],
        ["localpost", "0"],
    ]
    assert page.images_label.text() == "2 tar shards"
    rows = table_rows(page.ckpt_table)
    assert [r[:5] for r in rows] == [
        ["gamma", "models/gamma.safetensors", "sdxl-single-file / kxl-tiny", "fp16", "4"],
        ["beta", "models/beta.safetensors", "sdxl-single-file / kxl-tiny", "fp16", "4"],
    ]
    expected_hash = hashlib.sha256((root / "models" / "gamma.safetensors").read_bytes()).hexdigest()[:10]
    assert rows[0][6] == expected_hash
    assert page.ckpt_card.message.isHidden()
    assert page.name_label.text() == "ws"
    assert window.windowTitle().startswith("ws — ")
    assert settings.last_workspace == root.resolve()
    assert page.datasets_empty.text() == "No exported datasets yet."


def test_folder_without_workspace_toml_shows_clear_error_and_app_stays_usable(
    qtbot, window, make_workspace, tmp_path
):
    page = window.workspace_page
    good = make_workspace("good")
    open_and_wait(qtbot, page, good)

    empty = tmp_path / "not-a-workspace"
    empty.mkdir()
    with qtbot.waitSignal(page.open_failed, timeout=10_000) as blocker:
        page.open_workspace(empty)
    message = blocker.args[0]
    assert str(empty) in message and "no workspace.toml here" in message
    qtbot.waitUntil(lambda: len(error_dialogs()) == 1)
    assert error_dialogs()[0].text() == message
    assert "Traceback" not in message
    # The workspace that was open stays open and the page still works.
    assert page.name_label.text() == "good"
    assert window.context.workspace.root == good.resolve()
    assert page.open_button.isEnabled()
    close_dialogs()
    other = make_workspace("other")
    open_and_wait(qtbot, page, other)
    assert page.name_label.text() == "other"


def test_bad_folder_on_an_empty_window_shows_the_message_inline(qtbot, window, tmp_path):
    page = window.workspace_page
    with qtbot.waitSignal(page.open_failed, timeout=10_000):
        page.open_workspace(tmp_path / "missing", interactive=False)
    assert not page.notice.isHidden()
    assert "missing" in page.notice.text() and "no workspace.toml" in page.notice.text()
    assert error_dialogs() == []


def test_truncated_checkpoint_and_broken_db_are_shown_inline(qtbot, window, make_workspace):
    root = make_workspace(truncated_role="beta", db_schema=False)
    page = window.workspace_page
    with qtbot.waitSignal(page.hashes_done, timeout=10_000):
        open_and_wait(qtbot, page, root)

    problem = page.ckpt_card.message.text()
    assert not page.ckpt_card.message.isHidden()
    assert problem.startswith("beta: ")
    assert str(root / "models" / "beta.safetensors") in problem and "truncated" in problem
    rows = table_rows(page.ckpt_table)
    assert rows[1][:3] == ["beta", "models/beta.safetensors", "unreadable"]
    assert len(rows[0][6]) == 10  # the healthy checkpoint still got its hash
    assert page.ckpt_table.item(1, 1).toolTip() == page.summary.checkpoints[1].error

    db_error = page.db_card.message.text()
    assert "danbooru.db" in db_error and "table 'post' is missing" in db_error
    assert page.db_table.rowCount() == 0
    assert error_dialogs() == []  # problems inside a workspace are shown in place, not as dialogs


def test_window_geometry_persists_across_instances(qtbot, settings):
    first = MainWindow(AppContext(settings))
    qtbot.addWidget(first)
    first.show()
    first.resize(700, 480)
    qtbot.waitUntil(lambda: first.size().width() == 700)
    first.close()

    second = MainWindow(AppContext(AppSettings(settings.path)))
    qtbot.addWidget(second)
    assert (second.size().width(), second.size().height()) == (700, 480)


def test_last_workspace_is_reopened_by_the_app(qtbot, window, settings, make_workspace):
    root = make_workspace("remembered")
    settings.last_workspace = root
    page = window.workspace_page
    with qtbot.waitSignal(page.summary_shown, timeout=10_000):
        gui_app.open_initial_workspace(window, argparse.Namespace(workspace=None, demo=False), settings)
    assert page.name_label.text() == "remembered"


def _fake_demo_module(gate: threading.Event | None = None):
    """Stands in for trainer_core.demo: reports progress, honours cancel, writes a minimal workspace."""

    def init_demo(root: Path, progress=None, force: bool = False):
        progress.stage("Writing demo data")
        for i in range(50):
            progress.update(i + 1, 50)
            progress.check_cancelled()
            if gate is not None:
                gate.wait(5)
            time.sleep(0.002)
        ws = Workspace(root=Path(root), name="demo", kind="demo")
        ws.save()
        return ws

    return types.SimpleNamespace(init_demo=init_demo)


def test_first_run_creates_the_demo_with_progress(qtbot, window, settings, monkeypatch, tmp_path):
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setitem(sys.modules, "trainer_core.demo", _fake_demo_module())
    page = window.workspace_page
    with qtbot.waitSignal(page.summary_shown, timeout=10_000):
        gui_app.open_initial_workspace(window, argparse.Namespace(workspace=None, demo=False), settings)
        assert not page.progress_box.isHidden()
        assert not page.open_button.isEnabled()
    qtbot.waitUntil(lambda: page.progress_box.isHidden())
    assert page.name_label.text() == "demo" and page.kind_badge.text() == "demo"
    assert window.context.workspace.root == tmp_path / "data" / "demo-workspace"
    assert page.open_button.isEnabled()


def test_demo_creation_can_be_cancelled(qtbot, window, monkeypatch, tmp_path):
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    gate = threading.Event()
    monkeypatch.setitem(sys.modules, "trainer_core.demo", _fake_demo_module(gate))
    page = window.workspace_page
    job = page.create_demo(replace=False)
    qtbot.waitUntil(lambda: page.progress_bar.maximum() == 1000)  # a determinate progress event arrived
    with qtbot.waitSignal(job.cancelled, timeout=10_000):
        click(page.cancel_button)
        gate.set()
    qtbot.waitUntil(lambda: page.progress_box.isHidden())
    assert window.context.workspace is None
    assert window.statusBar().currentMessage() == "Demo creation cancelled"
    assert error_dialogs() == []


def test_header_buttons_refresh_open_folder_and_recreate_the_demo(
    qtbot, window, make_workspace, monkeypatch, tmp_path, opened_urls
):
    root = make_workspace(posts=3)
    page = window.workspace_page
    open_and_wait(qtbot, page, root)
    with qtbot.waitSignal(page.summary_shown, timeout=10_000):
        click(page.refresh_button)
    click(page.folder_button)
    assert [Path(u.toLocalFile()) for u in opened_urls.urls] == [window.context.workspace.root]

    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setitem(sys.modules, "trainer_core.demo", _fake_demo_module())
    Workspace(root=tmp_path / "data" / "demo-workspace", name="demo", kind="demo").save()
    asked: list[str] = []
    answer_next_dialog("No", asked)
    click(page.demo_button)
    assert "Rebuild the demo workspace?" in asked[0]
    assert window.context.workspace.name == "ws"  # "No" changes nothing
    answer_next_dialog("Yes")
    with qtbot.waitSignal(page.summary_shown, timeout=10_000):
        click(page.demo_button)
    assert window.context.workspace.kind == "demo"


def test_recreate_refuses_a_non_demo_workspace_in_the_demo_folder(qtbot, window, monkeypatch, tmp_path):
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setitem(sys.modules, "trainer_core.demo", _fake_demo_module())
    demo_root = tmp_path / "data" / "demo-workspace"
    Workspace(root=demo_root, name="precious", kind="user").save()
    page = window.workspace_page
    job = page.recreate_demo(confirm=False)
    with qtbot.waitSignal(job.finished, timeout=10_000):
        pass
    qtbot.waitUntil(lambda: len(error_dialogs()) == 1)
    assert "not the demo; refusing to replace it" in error_dialogs()[0].text()
    assert (demo_root / "workspace.toml").is_file()
    close_dialogs()


# ---- jobs -------------------------------------------------------------------------------------------------------


def test_job_reports_progress_and_result_on_the_gui_thread(qtbot):
    seen: list[tuple[float, float | None, bool]] = []
    gui_thread = QApplication.instance().thread()

    def work(progress):
        assert QThread.currentThread() is not gui_thread
        for i in range(3):
            progress.update(i + 1, 3, "counting")
        return 42

    job = Job(work, name="count", min_interval_s=0.0)
    job.progress.connect(lambda ev: seen.append((ev.done, ev.total, QThread.currentThread() is gui_thread)))
    with qtbot.waitSignal(job.succeeded, timeout=5000) as blocker:
        job.start()
    assert blocker.args == [42]
    qtbot.waitUntil(lambda: len(seen) == 3)
    assert seen == [(1, 3, True), (2, 3, True), (3, 3, True)]


def test_job_turns_kxl_error_into_its_message(qtbot):
    def work(progress):
        raise WorkspaceError("no workspace.toml here", path="/data/x")

    job = Job(work, name="open")
    with qtbot.waitSignal(job.failed, timeout=5000) as blocker:
        job.start()
    assert blocker.args == ["/data/x: no workspace.toml here"]


def test_job_reports_unexpected_errors_briefly_and_logs_them(qtbot, caplog):
    def work(progress):
        raise ValueError("boom")

    job = Job(work, name="merge")
    with caplog.at_level(logging.ERROR, logger="kxl_gui.jobs"):
        with qtbot.waitSignal(job.failed, timeout=5000) as blocker:
            job.start()
    assert blocker.args[0].startswith("Unexpected error in merge (ValueError: boom).")
    assert "Traceback" not in blocker.args[0]
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


def test_job_cancellation(qtbot):
    started = threading.Event()
    outcomes: list[str] = []

    def work(progress):
        started.set()
        for _ in range(1000):
            progress.check_cancelled()
            time.sleep(0.005)
        return "finished anyway"

    job = Job(work, name="slow")
    job.succeeded.connect(lambda _r: outcomes.append("succeeded"))
    job.cancelled.connect(lambda: outcomes.append("cancelled"))
    with qtbot.waitSignal(job.finished, timeout=5000):
        job.start()
        assert started.wait(5)
        job.cancel()
    assert outcomes == ["cancelled"]


# ---- app-level error handling and startup cost -------------------------------------------------------------


def test_exception_hook_shows_short_messages_and_logs_tracebacks(qtbot):
    gui_app.setup_logging()
    try:
        try:
            raise KxlError("weights are fp8; convert them first", path="/m/model.safetensors")
        except KxlError:
            gui_app.report_exception(*sys.exc_info())
        qtbot.waitUntil(lambda: len(error_dialogs()) == 1)
        assert error_dialogs()[0].text() == "/m/model.safetensors: weights are fp8; convert them first"
        close_dialogs()

        try:
            raise RuntimeError("hook-test-7731")
        except RuntimeError:
            gui_app.report_exception(*sys.exc_info())
        qtbot.waitUntil(lambda: len(error_dialogs()) == 1)
        text = error_dialogs()[0].text()
        assert text.startswith("Unexpected error (RuntimeError: hook-test-7731).")
        assert str(gui_app.log_file()) in text
        close_dialogs()
        for handler in logging.getLogger().handlers:
            handler.flush()
        log_text = gui_app.log_file().read_text(encoding="utf-8")
        assert "Traceback (most recent call last)" in log_text and "RuntimeError: hook-test-7731" in log_text
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.handlers.RotatingFileHandler)]:
            root.removeHandler(handler)
            handler.close()


def test_importing_the_app_does_not_import_torch():
    # Building the window discovers and constructs every tab, so this also keeps each tab's imports light.
    code = (
        "import os, sys\n"
        "os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "import kxl_gui.app, kxl_gui.main_window, kxl_gui.pages.workspace_page\n"
        "from kxl_gui.context import AppContext\n"
        "from kxl_gui.settings import AppSettings\n"
        "app = kxl_gui.app.create_application()\n"
        "window = kxl_gui.main_window.MainWindow(AppContext(AppSettings()))\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'accelerate') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_about_shows_the_version(qtbot, window):
    import trainer_core

    window.show_about()
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert len(boxes) == 1
    assert f"{trainer_core.APP_NAME}</b> {trainer_core.__version__}" in boxes[0].text()
    boxes[0].close()
