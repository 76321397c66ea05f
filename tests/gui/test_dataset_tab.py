"""The Dataset wizard drives the real engine: source check, live estimate, caption preview, export, resume."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from support import interrupted_build  # noqa: E402
from user_input import answer_next_dialog, click, type_into  # noqa: E402

from trainer_core.cli import main as kxl_main  # noqa: E402
from trainer_core.danbooru.db_reader import open_db  # noqa: E402
from trainer_core.dataset.export import BuildOptions  # noqa: E402
from trainer_core.dataset.filters import PostFilters  # noqa: E402
from trainer_core.dataset.selection import PRESETS, select_posts  # noqa: E402


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    from trainer_core.demo import init_demo

    return init_demo(tmp_path_factory.mktemp("dstab") / "ws", posts=120, seed=0, models=False)


@pytest.fixture
def tab(qtbot, demo_ws, tmp_path):
    from kxl_gui.context import AppContext
    from kxl_gui.settings import AppSettings
    from kxl_gui.tabs.dataset import create_tab

    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.set_workspace(demo_ws)
    widget = create_tab(ctx)
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: "schema OK" in widget.source_info.text(), timeout=10_000)
    return widget


def tree(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_source_defaults_to_workspace_and_shows_counts(tab, qtbot, demo_ws):
    assert tab.db_edit.text() == str(demo_ws.db_path)
    assert tab.images_edit.text() == str(demo_ws.images_path)
    assert "posttagrelation" in tab.source_info.text() and "120" in tab.source_info.text()
    tab.show()
    qtbot.waitExposed(tab)
    type_into(tab.db_edit, str(demo_ws.root / "nope.db"))
    click(tab.source.check_button)
    qtbot.waitUntil(lambda: "metadata DB not found" in tab.source_info.text(), timeout=10_000)
    assert tab.form.db == str(demo_ws.root / "nope.db")
    click(tab.source.workspace_button)  # back to the workspace's DB
    qtbot.waitUntil(lambda: "schema OK" in tab.source_info.text(), timeout=10_000)
    assert tab.db_edit.text() == str(demo_ws.db_path)


def test_source_shows_the_column_cache_state_and_the_estimate_uses_it(
    tab, qtbot, demo_ws, tmp_path, monkeypatch
):
    from trainer_core.dataset.column_cache import build_column_cache

    assert "Column cache: not used (small DB" in tab.source_info.text()  # the demo DB: SQLite is enough
    monkeypatch.setenv("KXL_DATA_DIR", str(tmp_path / "data"))
    cache = build_column_cache(demo_ws.db_path, processes=0)
    tab.check_source()
    qtbot.waitUntil(lambda: "Column cache: ready" in tab.source_info.text(), timeout=10_000)
    # the live count read from the cache (tags filter included) equals the SQL path's
    tab.show()
    qtbot.waitExposed(tab)
    click(tab.next_button)
    type_into(tab.tags_none, "solo")
    plan, filters = tab.form.selection_plan(), tab.form.post_filters()
    assert cache.filter_mask(filters, open_db(demo_ws.db_path), demo_ws.db_path) is not None
    expected = len(select_posts(open_db(demo_ws.db_path), plan, filters))
    qtbot.waitUntil(
        lambda: tab.estimate_label.text() == f"{expected:,} posts will be selected", timeout=10_000
    )


def test_selection_estimate_matches_engine(tab, qtbot, demo_ws):
    tab.show()
    qtbot.waitExposed(tab)
    click(tab.next_button)
    assert tab.preset_combo.currentText() == "kohaku-xl-delta" and tab.range_table.rowCount() == 3
    click(tab.rating_boxes[3])  # no explicit posts
    plan, filters = tab.form.selection_plan(), tab.form.post_filters()
    assert filters.ratings == (0, 1, 2) and plan.preset == "kohaku-xl-delta"
    expected = len(select_posts(open_db(demo_ws.db_path), plan, filters))
    qtbot.waitUntil(
        lambda: tab.estimate_label.text() == f"{expected:,} posts will be selected", timeout=10_000
    )
    type_into(tab.tags_all, "long_hari")
    qtbot.waitUntil(lambda: "did you mean" in tab.error_label.text(), timeout=10_000)
    assert tab.error_label.level == "error" and tab.estimate_label.text() == ""  # not in the count label
    tab.range_table.item(0, 2).setText("5")
    assert tab.preset_combo.currentText() == "custom" and tab.form.selection_plan().ranges[0].count == 5


def test_caption_preview_shows_real_captions(tab, qtbot):
    tab.set_step(2)
    qtbot.waitUntil(lambda: tab.preview.toPlainText().count("|||") >= 10, timeout=10_000)
    assert tab.preview.toPlainText().count("#") <= 20


def test_wizard_export_by_clicks_equals_cli_and_resumes(tab, qtbot, demo_ws, tmp_path):
    """A user walks the wizard with Next, types the output folder, clicks Start export; later, a folder with an
    interrupted build asks Resume / Start over, and Resume finishes it identically to an uninterrupted build."""
    gui_out, cli_out = tmp_path / "gui", tmp_path / "cli"
    tab.show()
    qtbot.waitExposed(tab)
    for _ in range(3):  # source -> selection -> captions -> output
        click(tab.next_button)
    assert tab.stack.currentIndex() == 3
    type_into(tab.out_edit, str(gui_out))
    click(tab.next_button)
    assert tab.stack.currentIndex() == 4
    with qtbot.waitSignal(tab.build_finished, timeout=60_000):
        click(tab.start_button)
    assert not tab.error_label.isVisible(), tab.error_label.text()
    assert tab.stack.currentIndex() == 5
    qtbot.waitUntil(lambda: len(tab.charts) == 3, timeout=5_000)
    assert tab.missing_list.count() == tab.result.summary.missing + tab.result.summary.corrupt >= 1
    assert (
        kxl_main(
            [
                "dataset",
                "build",
                "--db",
                str(demo_ws.db_path),
                "--images",
                str(demo_ws.images_path),
                "--out",
                str(cli_out),
                "--preset",
                "kohaku-xl-delta",
            ]
        )
        == 0
    )
    assert tree(gui_out) == tree(cli_out)

    # an interrupted build in the chosen folder: the wizard offers to resume and finishes it identically
    partial = tmp_path / "partial"
    interrupted_build(BuildOptions(db=demo_ws.db_path, images=demo_ws.images_path, out=partial,
                                   plan=PRESETS["kohaku-xl-delta"], filters=PostFilters()), 30)  # fmt: skip
    for _ in range(2):  # summary -> run -> output
        click(tab.back_button)
    assert tab.stack.currentIndex() == 3
    type_into(tab.out_edit, str(partial))
    qtbot.waitUntil(lambda: "interrupted build" in tab.output_note.text(), timeout=5_000)
    click(tab.next_button)
    asked: list[str] = []
    answer_next_dialog("Resume", asked)
    with qtbot.waitSignal(tab.build_finished, timeout=60_000):
        click(tab.start_button)
    assert len(asked) == 1 and str(partial) in asked[0]
    assert tab.result.resumed_buckets > 0
    assert tree(partial) == tree(cli_out)


def test_start_over_and_cancel_in_the_resume_question(tab, qtbot, demo_ws, tmp_path):
    """Cancel in the resume question starts nothing; Start over rebuilds the folder from scratch."""
    partial = tmp_path / "partial"
    opts = BuildOptions(db=demo_ws.db_path, images=demo_ws.images_path, out=partial,
                        plan=PRESETS["kohaku-xl-delta"], filters=PostFilters())  # fmt: skip
    interrupted_build(opts, 10)
    tab.show()
    qtbot.waitExposed(tab)
    for _ in range(3):
        click(tab.next_button)
    type_into(tab.out_edit, str(partial))
    click(tab.next_button)
    answer_next_dialog("Cancel")
    click(tab.start_button)
    qtbot.waitUntil(lambda: tab.start_button.isEnabled() and tab.job is None, timeout=5_000)
    answer_next_dialog("Start over")
    with qtbot.waitSignal(tab.build_finished, timeout=60_000):
        click(tab.start_button)
    assert tab.result.resumed_buckets == 0 and not tab.error_label.isVisible()


def test_reference_build_by_clicks_writes_no_image_and_says_so(tab, qtbot, demo_ws, tmp_path):
    """The Output page offers Copy (the default) or Reference; a click on Reference greys out the format and
    pixel budget, the note and the run summary say what will be written, and the build writes the CLI's
    referenced dataset (no image, no caption file) and says the images are referenced."""
    out, cli_out = tmp_path / "ref", tmp_path / "cli-ref"
    tab.show()
    qtbot.waitExposed(tab)
    for _ in range(3):
        click(tab.next_button)
    o = tab.output
    assert o.copy_radio.isChecked() and not o.reference_radio.isChecked() and tab.form.image_mode == "copy"
    assert "for sd-scripts and other tools" in o.copy_radio.text()
    assert "train here straight from the shards, no copy" in o.reference_radio.text()
    assert o.format_combo.isEnabled() and o.budget_combo.isEnabled()
    type_into(tab.out_edit, str(out))
    click(o.reference_radio)
    assert tab.form.image_mode == "reference" and o.reference_radio.isChecked()
    assert not o.format_combo.isEnabled() and not o.budget_combo.isEnabled()
    assert o.title.text() == "Output: captions and shard references"
    assert "no image and no caption file" in tab.output_note.text()
    click(tab.next_button)
    assert "images referenced in the shards (no copy)" in tab.run.run_summary.text()
    with qtbot.waitSignal(tab.build_finished, timeout=60_000):
        click(tab.start_button)
    assert not tab.error_label.isVisible(), tab.error_label.text()
    assert tab.stack.currentIndex() == 5 and tab.result.image_mode == "reference"
    summary = tab.summary.summary_label.text()
    assert f"<b>{tab.result.summary.written:,}</b> images referenced in their shards (none copied)" in summary
    assert "Done:" in tab.rate_label.text() and "referenced" in tab.rate_label.text()
    assert sorted(p.name for p in out.iterdir()) == ["captions.jsonl", "kxl-dataset.toml", "refs.npy",
                                                     "shards.json", "skipped.jsonl"]  # fmt: skip
    rc = kxl_main(["dataset", "build", "--db", str(demo_ws.db_path), "--images", str(demo_ws.images_path),
                   "--out", str(cli_out), "--preset", "kohaku-xl-delta", "--image-mode", "reference"])  # fmt: skip
    assert rc == 0 and tree(out) == tree(cli_out)

    for _ in range(2):  # summary -> run -> output: back to a copy, the format and budget come back
        click(tab.back_button)
    click(o.copy_radio)
    assert tab.form.image_mode == "copy" and o.format_combo.isEnabled() and o.budget_combo.isEnabled()
    assert o.title.text() == "Output: kohya folder layout"
    assert "<id>.txt" in tab.output_note.text()


# ---- the summary hands the dataset over to the other tabs ----------------------------------------------------------
def _click_tab(window, title: str) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    bar = window.tabs.tabBar()
    index = next(i for i in range(window.tabs.count()) if window.tabs.tabText(i) == title)
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )
    assert window.tabs.tabText(window.tabs.currentIndex()) == title


def test_summary_opens_the_built_dataset_in_tags_and_sets_it_for_training(qtbot, demo_ws, tmp_path):
    """Build by clicks in the whole window; Tags, which had no dataset, shows the new one; "Open in Tags" brings it
    back after another was opened there; "Use for training" makes it the Train tab's dataset."""
    from kxl_gui.context import AppContext
    from kxl_gui.main_window import MainWindow
    from kxl_gui.settings import AppSettings

    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    window = MainWindow(context)
    qtbot.addWidget(window)
    context.set_workspace(demo_ws)
    window.show()
    qtbot.waitExposed(window)
    dataset, tags, train = (window.tab_pages[t] for t in ("Dataset", "Tags", "Train"))
    qtbot.wait(300)  # Tags looks for a dataset in the workspace in a worker: there is none yet
    assert tags.index is None and tags.path_label.text() == "No dataset open"

    _click_tab(window, "Dataset")
    qtbot.waitUntil(lambda: "schema OK" in dataset.source_info.text(), timeout=10_000)
    assert not dataset.open_tags_button.isEnabled()  # nothing built yet
    for _ in range(3):
        click(dataset.next_button)
    out = tmp_path / "handed-over"
    type_into(dataset.out_edit, str(out))
    click(dataset.next_button)
    with qtbot.waitSignals([dataset.build_finished, tags.dataset_loaded], timeout=60_000):
        click(dataset.start_button)
    assert dataset.stack.currentIndex() == 5
    assert tags.index is not None and tags.index.root == out  # picked up: Tags had nothing open

    other = tmp_path / "other" / "1_x"
    other.mkdir(parents=True)
    (other / "1.txt").write_text("1girl, |||solo", encoding="utf-8")
    from PIL import Image

    Image.new("RGB", (32, 32)).save(other / "1.png")
    with qtbot.waitSignal(tags.dataset_loaded, timeout=20_000):
        tags.open_dataset(other.parent)  # the user looks at another dataset meanwhile
    with qtbot.waitSignal(tags.dataset_loaded, timeout=20_000):
        click(dataset.open_tags_button)
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Tags"
    assert tags.index.root == out and tags.path_label.text() == str(out)
    assert tags.model.rowCount() == dataset.result.summary.written

    _click_tab(window, "Dataset")
    click(dataset.train_button)
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Train"
    assert train.dataset_edit.text() == str(out)
