"""`kxl-gui [WORKSPACE_DIR] [--demo]`: start the desktop app.

The window is shown first and the workspace is opened afterwards in a worker thread, so startup cost is only
Qt plus our own small modules; torch and diffusers are imported later, in workers, by the jobs that need them.
With no argument the last workspace is reopened, or the demo workspace is created on first run.

`KXL_GUI_EXIT_WHEN_SHOWN=<t0>` (a time.time() epoch taken just before the process was started) makes the app
print `KXL_WINDOW_SHOWN <seconds since t0>` once the window is exposed, then quit
(benchmarks/bench_gui_startup.py).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from PySide6.QtCore import QThread, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

import trainer_core
from trainer_core.errors import KxlError
from trainer_core.paths import resources_dir, user_data_dir
from trainer_core.workspace import WORKSPACE_FILE

from .context import AppContext
from .dialogs import ERROR_DIALOG_NAME, show_error
from .jobs import unexpected_error_text
from .main_window import MainWindow
from .settings import AppSettings
from .widgets.wheel_guard import install_wheel_guard

log = logging.getLogger("kxl_gui")

ORGANIZATION = "KohakuXL"
EXIT_WHEN_SHOWN_ENV = "KXL_GUI_EXIT_WHEN_SHOWN"
MAX_OPEN_ERROR_DIALOGS = 3  # a bug firing on every repaint must not bury the window in dialogs


def log_file() -> Path:
    return user_data_dir() / "logs" / "gui.log"


def setup_logging() -> None:
    path = log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        root.addHandler(handler)


def report_exception(exc_type: type[BaseException], exc: BaseException, tb) -> None:
    """Global hook: KxlError -> its message; anything else -> short message + traceback in the log file."""
    if issubclass(exc_type, KeyboardInterrupt):
        app = QApplication.instance()
        if app is not None:
            app.quit()
        return
    if isinstance(exc, KxlError):
        log.warning("%s", exc)
        title, message, details = "Error", str(exc), None
    else:
        log.error("unhandled exception", exc_info=(exc_type, exc, tb))
        title = "Unexpected error"
        message = unexpected_error_text(exc).replace("(Help > About)", f"({log_file()})")
        details = "".join(traceback.format_exception(exc_type, exc, tb))
    app = QApplication.instance()
    if app is None:
        sys.stderr.write(f"{message}\n")
        return
    if QThread.currentThread() == app.thread():
        _show_exception_dialog(title, message, details)
    else:
        # Widgets only on the GUI thread: the 3-argument singleShot posts the call to `app`'s thread.
        QTimer.singleShot(0, app, lambda: _show_exception_dialog(title, message, details))


def _show_exception_dialog(title: str, message: str, details: str | None) -> None:
    open_boxes = [
        w for w in QApplication.topLevelWidgets() if w.objectName() == ERROR_DIALOG_NAME and w.isVisible()
    ]
    if len(open_boxes) >= MAX_OPEN_ERROR_DIALOGS:
        return
    show_error(QApplication.activeWindow(), title, message, details)


def install_exception_hook() -> None:
    sys.excepthook = report_exception
    threading.excepthook = lambda a: report_exception(a.exc_type, a.exc_value, a.exc_traceback)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kxl-gui", description=f"{trainer_core.APP_NAME} desktop app")
    parser.add_argument(
        "workspace", nargs="?", type=Path, help="workspace folder to open (holds workspace.toml)"
    )
    parser.add_argument("--demo", action="store_true", help="open the demo workspace, creating it if needed")
    return parser.parse_args(argv)


def create_application() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName(trainer_core.APP_NAME)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationVersion(trainer_core.__version__)
    app.setDesktopFileName("kohaku-xl-workbench")
    install_wheel_guard(app)  # the wheel scrolls panels; it changes only the value widget the user focused
    res = resources_dir()
    icon = res / "icons" / "kxl.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    qss = res / "style" / "app.qss"
    if qss.is_file():
        app.setStyleSheet(qss.read_text(encoding="utf-8"))
    return app


def open_initial_workspace(window: MainWindow, args: argparse.Namespace, settings: AppSettings) -> None:
    """Given folder, else --demo, else the last workspace (falling back to the demo if it is gone)."""
    page = window.workspace_page
    if args.workspace is not None:
        page.open_workspace(args.workspace.expanduser(), interactive=True)
    elif args.demo:
        page.open_or_create_demo()
    else:
        last = settings.last_workspace
        if last is not None and (last / WORKSPACE_FILE).is_file():
            page.open_workspace(last, interactive=False, fallback_to_demo=True)
        else:
            page.open_or_create_demo()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # No model hub at run time, ever (DESIGN.md "Offline"); set before any worker imports huggingface_hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    app = create_application()
    install_exception_hook()
    settings = AppSettings()
    window = MainWindow(AppContext(settings))
    bench_t0 = os.environ.get(EXIT_WHEN_SHOWN_ENV)
    if bench_t0:
        window.first_exposed.connect(lambda: _report_shown_and_quit(app, float(bench_t0)))
    else:
        # Deferred until the window is on screen so the first paint never waits for workspace.toml or for
        # worker threads; the timer covers a window that starts minimised (no expose event).
        started: list[bool] = []

        def start_once() -> None:
            if not started:
                started.append(True)
                open_initial_workspace(window, args, settings)

        window.first_exposed.connect(start_once)
        QTimer.singleShot(1000, start_once)
    window.show()
    return app.exec()


def _report_shown_and_quit(app: QApplication, t0: float) -> None:
    print(f"KXL_WINDOW_SHOWN {time.time() - t0:.3f}", flush=True)
    QTimer.singleShot(0, app.quit)


if __name__ == "__main__":
    sys.exit(main())
