"""Screenshot the app on a workspace, for docs and for checking the look without a desktop.

    python scripts/screenshot_app.py WORKSPACE_DIR [--out docs/screenshots] [--size 1280x860]
    python scripts/screenshot_app.py --first-run [--out ...]    # demo creation in a fresh data dir

Without a DISPLAY the script re-runs itself under `xvfb-run -a` (a real X server, so fonts, style sheet and
window sizes are the ones a Linux desktop gets). It opens the workspace, waits until the page is populated
(summary shown and short hashes filled in), then writes:
  workspace-page.png        the window as Qt renders it (QWidget.grab)
  workspace-page-x11.png    the same window captured from the X server with ImageMagick `import`, when available
  first-run-progress.png    (--first-run) the page while the demo workspace is being generated
Settings go to a throw-away KXL_DATA_DIR, so the user's last workspace and window geometry are left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XVFB_SCREEN = "-screen 0 1600x1200x24"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workspace", type=Path, nargs="?")
    parser.add_argument(
        "--first-run", action="store_true", help="create the demo as on first start (real init_demo)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--size", default="1280x860", help="window size WxH")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the page to fill")
    return parser.parse_args()


def rerun_under_xvfb() -> int:
    if not shutil.which("xvfb-run"):
        raise SystemExit(
            "no DISPLAY and no xvfb-run; install the xvfb package or run under a desktop session"
        )
    cmd = ["xvfb-run", "-a", "-s", XVFB_SCREEN, sys.executable, *sys.argv]
    return subprocess.call(cmd, env=dict(os.environ, KXL_SCREENSHOT_CHILD="1"))


def wait_for(condition, timeout_s: float) -> bool:
    """Run the Qt event loop until `condition()` holds (polled every 50 ms) or the timeout passes."""
    import time

    from PySide6.QtCore import QCoreApplication

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        if condition():
            return True
        time.sleep(0.05)
    return False


def main() -> int:
    args = parse_args()
    if args.workspace is None and not args.first_run:
        raise SystemExit("give a WORKSPACE_DIR or --first-run")
    if not os.environ.get("DISPLAY") and not os.environ.get("KXL_SCREENSHOT_CHILD"):
        return rerun_under_xvfb()
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    data_dir = tempfile.mkdtemp(prefix="kxl-shot-data-")
    os.environ["KXL_DATA_DIR"] = data_dir
    sys.path.insert(0, str(REPO))

    from PySide6.QtCore import QEventLoop, QTimer

    from kxl_gui.app import create_application
    from kxl_gui.context import AppContext
    from kxl_gui.main_window import MainWindow
    from kxl_gui.settings import AppSettings

    app = create_application()
    width, height = (int(v) for v in args.size.lower().split("x"))
    window = MainWindow(AppContext(AppSettings(Path(data_dir) / "gui.ini")))
    window.resize(width, height)
    window.move(0, 0)
    window.show()

    page = window.workspace_page
    loop = QEventLoop()
    failures: list[str] = []
    page.hashes_done.connect(loop.quit)
    page.open_failed.connect(lambda msg: (failures.append(msg), loop.quit()))
    QTimer.singleShot(int(args.timeout * 1000), loop.quit)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.first_run:
        page.open_or_create_demo()
        wait_for(
            lambda: page.progress_bar.maximum() == 1000 and page.progress_bar.value() > 100, args.timeout
        )
        window.grab().save(str(args.out / "first-run-progress.png"))
        print(args.out / "first-run-progress.png")
    else:
        page.open_workspace(args.workspace.expanduser().resolve(), interactive=False)
    loop.exec()
    if failures:
        print(f"could not open the workspace: {failures[0]}", file=sys.stderr)
        return 2
    if page.summary is None:
        print(f"the page was not populated within {args.timeout:.0f} s", file=sys.stderr)
        return 2
    settle = QEventLoop()  # let the last layout pass and repaint land before grabbing
    QTimer.singleShot(400, settle.quit)
    settle.exec()

    written = []
    qt_png = args.out / "workspace-page.png"
    window.grab().save(str(qt_png))
    written.append(qt_png)
    if shutil.which("import") and os.environ.get("DISPLAY"):
        x_png = args.out / "workspace-page-x11.png"
        subprocess.run(["import", "-window", str(int(window.winId())), str(x_png)], check=True)
        written.append(x_png)
    for path in written:
        print(path)
    window.close()
    app.quit()
    shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
