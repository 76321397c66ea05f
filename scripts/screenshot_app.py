"""Screenshot the app on a workspace, for docs and for checking the look without a desktop.

    python scripts/screenshot_app.py WORKSPACE_DIR [--out docs/screenshots] [--size 1280x860]
    python scripts/screenshot_app.py --first-run [--out ...]    # demo creation in a fresh data dir
    python scripts/screenshot_app.py --all-tabs [--prepare-demo DIR] [--out ...]   # every tab, populated
    python scripts/screenshot_app.py --tab Train [--prepare-demo DIR]              # one tab

Without a DISPLAY the script re-runs itself under `xvfb-run -a` (a real X server, so fonts, style sheet and
window sizes are the ones a Linux desktop gets). It opens the workspace, waits until the page is populated
(summary shown and short hashes filled in), then writes:
  workspace-page.png        the window as Qt renders it (QWidget.grab)
  workspace-page-x11.png    the same window captured from the X server with ImageMagick `import`, when available
  first-run-progress.png    (--first-run) the page while the demo workspace is being generated

With --tab NAME or --all-tabs it writes `<tab>.png` (workspace, dataset, tags, merge, train, generate) with each
tab showing real content. That needs a workspace that has been used: `--prepare-demo DIR` (the default with no
WORKSPACE_DIR is a folder under the system temp dir) creates the demo there and runs the card's recipe on it
through the `kxl` CLI — dataset build, merge, a 40-step training run with sample images — skipping every step
whose output is already there, so a second run takes only the screenshot time. The Merge and Generate tabs then
run a real merge and a real generation in the app before they are captured.
Settings go to a throw-away KXL_DATA_DIR, so the user's last workspace and window geometry are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XVFB_SCREEN = "-screen 0 1600x1200x24"
TAB_NAMES = ("Workspace", "Dataset", "Tags", "Merge", "Train", "Generate")
# Extra views, `Tab:view` -> `<tab>-<view>.png`: pages a tab's default picture does not show.
EXTRA_VIEWS = ("Dataset:source",)
DEFAULT_DEMO_DIR = Path(tempfile.gettempdir()) / "kxl-screenshot-demo"

# What the prepared demo holds (relative to the workspace); names follow the card's recipe.
DATASET_REL = "datasets/kohaku-xl-delta"
DELTA_BASE_REL = "models/kxl-tiny-delta-base.safetensors"
RUN_REL = "runs/delta-lokr"
SAMPLE_PROMPT = "1girl, solo, long hair, smile, masterpiece, newest"
GENERATE_PROMPT = "1girl, solo, blonde hair, blue background, simple background, masterpiece, newest"


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
    parser.add_argument(
        "--tab", action="append", choices=TAB_NAMES + EXTRA_VIEWS, metavar="NAME",
        help=f"capture this tab populated, as <name>.png (repeatable; one of {', '.join(TAB_NAMES + EXTRA_VIEWS)})",
    )  # fmt: skip
    parser.add_argument("--all-tabs", action="store_true", help="capture every tab (same as --tab for each)")
    parser.add_argument(
        "--prepare-demo", type=Path, metavar="DIR",
        help="create the demo in DIR and run the recipe on it first (default with --tab/--all-tabs and no "
        f"WORKSPACE_DIR: {DEFAULT_DEMO_DIR})",
    )  # fmt: skip
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


def settle(ms: int = 400) -> None:
    """Let the last layout pass and repaint land before grabbing."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


# ---- demo preparation (no Qt: plain `kxl` commands, each skipped when its output exists) ---------------------
def kxl(*argv: str) -> None:
    print("$ kxl " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "trainer_core.cli", *argv], check=True, cwd=REPO)


def run_finished(run_dir: Path) -> bool:
    events = run_dir / "events.jsonl"
    if not events.is_file():
        return False
    lines = events.read_text(encoding="utf-8").splitlines()
    return any(json.loads(line).get("type") == "done" for line in lines if line.strip())


def prepare_demo(root: Path) -> Path:
    """The demo workspace after the card's recipe: a built dataset, the merged base and a finished LoKr run."""
    sys.path.insert(0, str(REPO))
    from trainer_core.dataset.stats import DATASET_FILE
    from trainer_core.workspace import WORKSPACE_FILE

    root = root.expanduser().resolve()
    if not (root / WORKSPACE_FILE).is_file():
        kxl("demo", "init", str(root), "--posts", "120")
    models = root / "models"
    dataset = root / DATASET_REL
    if not (dataset / DATASET_FILE).is_file():
        kxl("dataset", "build", "--db", str(root / "danbooru" / "danbooru2023.db"),
            "--images", str(root / "danbooru" / "images"), "--out", str(dataset),
            "--preset", "kohaku-xl-delta", "--restart")  # fmt: skip
    delta_base = root / DELTA_BASE_REL
    if not delta_base.is_file():
        kxl("merge", "--preset", "kohaku-xl-delta", "--a", str(models / "kxl-tiny-gamma-rev2.safetensors"),
            "--b", str(models / "kxl-tiny-beta7.safetensors"),
            "--original", str(models / "kxl-tiny-sdxl-base.safetensors"), "--out", str(delta_base))  # fmt: skip
    run_dir = root / RUN_REL
    if not run_finished(run_dir):
        from trainer_core.atomic import atomic_write_text
        from trainer_core.train.config import load_preset

        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted earlier attempt: start the short run over
        run_dir.mkdir(parents=True)
        cfg = load_preset("tiny-demo")
        cfg.model.base = str(delta_base)
        cfg.dataset.path = str(dataset)
        cfg.training.max_steps = 40
        cfg.training.sample_every = 20
        cfg.training.sample_prompts = [SAMPLE_PROMPT]
        cfg.output.name = "delta-lokr"
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
        kxl("train", str(run_dir / "config.toml"))
    return root


def lokr_file(root: Path) -> Path:
    return root / RUN_REL / "checkpoints" / "delta-lokr.safetensors"


# ---- per-tab staging: put each tab in a state that shows what it is for, then return when it is drawn -------
def stage_workspace(window, ws_root: Path, timeout: float) -> bool:
    page = window.workspace_page
    return page.summary is not None


def stage_dataset(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Dataset"]
    if not wait_for(lambda: "schema OK" in tab.source_info.text(), timeout):
        return False
    tab.set_step(2)  # captions: the preview shows 20 real captions, keep part ||| shuffled part
    tab.refresh_preview()
    return wait_for(lambda: tab.preview.toPlainText().startswith("#"), timeout)


def stage_dataset_source(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Dataset"]
    tab.set_step(0)  # the source check: schema, row counts, shards, the DB column cache's state
    return wait_for(lambda: "Column cache" in tab.source_info.text(), timeout)


def stage_tags(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Tags"]
    tab.open_dataset(ws_root / DATASET_REL)
    if not tab.wait_for_jobs(timeout):
        return False
    tab.select_row(3)
    return tab.wait_for_jobs(timeout)


def stage_merge(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Merge"]
    out = ws_root / "outputs" / "merge" / "delta-base-from-gui.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    tab.set_output(out)
    job = tab.start_merge()
    if job is None:
        return False
    return wait_for(lambda: tab.result is not None, timeout)


def stage_train(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Train"]
    tab.load_toml(ws_root / RUN_REL / "config.toml")  # the form shows the settings of the run being watched
    monitor = tab.attach(ws_root / RUN_REL)
    if monitor is None:
        return False
    return wait_for(lambda: monitor.series.n > 0 and not monitor.catching_up, timeout)


def stage_generate(window, ws_root: Path, timeout: float) -> bool:
    tab = window.tab_pages["Generate"]
    if not wait_for(lambda: tab.vocabulary is not None and tab.tokenizer is not None, timeout):
        return False
    tab.set_model(ws_root / DELTA_BASE_REL)
    tab.add_lokr(lokr_file(ws_root), 1.0)
    tab.prompt_edit.setPlainText(GENERATE_PROMPT)
    # The size stays the model's native one (128² for the demo model, which the tab picks when it is selected);
    # a batch of four fills the gallery, a fixed seed makes the picture the same on every run.
    tab.batch_size.setValue(4)
    tab.seed.setValue(7)
    done: list[object] = []
    tab.generation_finished.connect(done.append)
    tab.generation_failed.connect(done.append)
    tab.start_generation()
    return wait_for(lambda: bool(done), timeout * 3) and not isinstance(done[0], str)


STAGES: dict[str, Callable] = {
    "Workspace": stage_workspace,
    "Dataset": stage_dataset,
    "Dataset:source": stage_dataset_source,
    "Tags": stage_tags,
    "Merge": stage_merge,
    "Train": stage_train,
    "Generate": stage_generate,
}


def capture_tabs(window, names: list[str], ws_root: Path, out: Path, timeout: float) -> list[Path]:
    written = []
    for name in names:
        window.activate_tab(name.split(":")[0])
        window.statusBar().clearMessage()  # a note left by another tab would be stale in this picture
        settle(200)
        if not STAGES[name](window, ws_root, timeout):
            raise SystemExit(f"the {name} tab was not populated within {timeout:.0f} s")
        settle(600)
        path = out / f"{name.lower().replace(':', '-')}.png"
        window.grab().save(str(path))
        written.append(path)
        print(path, flush=True)
    return written


def main() -> int:
    args = parse_args()
    tab_names = list(TAB_NAMES) if args.all_tabs else list(dict.fromkeys(args.tab or []))
    if tab_names and args.workspace is None and args.prepare_demo is None:
        args.prepare_demo = DEFAULT_DEMO_DIR
    if args.prepare_demo is not None:
        if args.workspace is not None:
            raise SystemExit("give either WORKSPACE_DIR or --prepare-demo DIR, not both")
        if not os.environ.get("KXL_SCREENSHOT_CHILD"):  # the parent prepared it already
            prepare_demo(args.prepare_demo)
        args.workspace = args.prepare_demo
    if args.workspace is None and not args.first_run:
        raise SystemExit("give a WORKSPACE_DIR, --first-run, --tab NAME or --all-tabs")
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
    settle()

    if tab_names:
        capture_tabs(window, tab_names, args.workspace.expanduser().resolve(), args.out, args.timeout)
    else:
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
