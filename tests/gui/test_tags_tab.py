"""Tags tab driven by qtbot on a small kohya dataset: opening the workspace's newest dataset, chips by category,
trainer caption variants, bucket label, AND/OR/NOT filtering, thumbnails and statistics, bulk edit + undo; a
dataset handed over by another tab; statistics that never write the index from a worker; and the search -> bulk
edit -> undo journey on a few thousand tags with a GUI-thread stall bound."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import random
import threading
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from stall_watch import StallWatch
from user_input import click, type_into

from kxl_gui.context import AppContext
from kxl_gui.settings import AppSettings
from kxl_gui.tabs.tags import TagsTab
from trainer_core.tags.caption_categories import CaptionTagKind
from trainer_core.tags.caption_processing import card_caption_processing, process_caption
from trainer_core.workspace import Workspace

CAPTIONS = [
    (
        "100",
        (420, 512),
        "1girl, hatsune miku, vocaloid, |||long hair, twintails, solo, newest, safe, masterpiece",
    ),
    ("101", (512, 256), "2girls, |||long hair, smile, highres, old, nsfw"),
    ("102", (300, 300), ", |||solo, smile, sensitive"),
    ("103", (256, 512), "1boy, |||short hair, solo, recent, explicit, nsfw"),
]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(root=tmp_path / "ws", name="t", kind="demo")  # demo: categories from the shipped tag list
    folder = ws.datasets_path / "my_set" / "2_chars"
    folder.mkdir(parents=True)
    for stem, size, caption in CAPTIONS:
        Image.new("RGB", size, (90, 140, 220)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    (folder / "104.png").write_bytes(b"not a png")  # unreadable image, no caption: listed, never a crash
    ws.save()
    return ws


@pytest.fixture
def tab(qtbot, tmp_path, workspace) -> TagsTab:
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    widget = TagsTab(context)
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    with qtbot.waitSignals(
        [widget.dataset_loaded, widget.stats_ready, widget.completer_ready], timeout=20000
    ):
        context.set_workspace(workspace)
    return widget


def test_opens_newest_dataset_and_shows_the_selected_image(qtbot, tab, workspace):
    assert tab.index is not None and tab.index.root == workspace.datasets_path / "my_set"
    assert tab.model.rowCount() == 5
    assert tab.count_label.text() == "5 images"
    assert tab.problem_label.text() == "⚠ 2 file problem(s)"  # no caption for 104; 104 fails to decode
    assert tab.current_entry == 0  # the first image is selected on open

    with qtbot.waitSignal(tab.preview_shown, timeout=10000):
        tab.select_row(1)
    assert tab.current_entry == 1
    chips = [(c.tag_text, c.kind, c.part) for c in tab.chips.chips]
    assert chips == [
        ("2girls", CaptionTagKind.COUNT, "fixed"),
        ("long hair", CaptionTagKind.GENERAL, "flex"),
        ("smile", CaptionTagKind.GENERAL, "flex"),
        ("highres", CaptionTagKind.META, "flex"),
        ("old", CaptionTagKind.YEAR, "flex"),
        ("nsfw", CaptionTagKind.RATING, "flex"),
    ]
    # Popularity badges: post counts from the shipped tag list; the exporter's own tags have none.
    assert [c.post_count for c in tab.chips.chips] == [
        1021591,
        4350743,
        tab.vocabulary.get("smile").count,
        5256195,
        None,
        None,
    ]
    # 512x256 (2:1) -> bucket 1408x704, resized 1408x704 exactly: no crop.
    assert tab.bucket_label.text() == "bucket 1408x704 (image 512x256 -> resized 1408x704)"
    assert tab.image_view.crop == (0.0, 0.0, 512.0, 256.0)


def test_chips_categories_and_split(qtbot, tab):
    with qtbot.waitSignal(tab.preview_shown, timeout=10000):
        tab.select_row(1)
    with qtbot.waitSignal(tab.preview_shown, timeout=10000):
        tab.select_row(0)
    kinds = {c.tag_text: c.kind for c in tab.chips.chips}
    assert kinds == {
        "1girl": CaptionTagKind.COUNT,
        "hatsune miku": CaptionTagKind.CHARACTER,
        "vocaloid": CaptionTagKind.SERIES,
        "long hair": CaptionTagKind.GENERAL,
        "twintails": CaptionTagKind.GENERAL,
        "solo": CaptionTagKind.GENERAL,
        "newest": CaptionTagKind.YEAR,
        "safe": CaptionTagKind.RATING,
        "masterpiece": CaptionTagKind.QUALITY,
    }
    assert [c.part for c in tab.chips.chips][:4] == ["fixed", "fixed", "fixed", "flex"]
    assert tab.split_label.text() == "3 fixed tag(s) before |||, 6 shuffled after it"
    # 420x512 -> bucket 896x1152, resized 945x1152, 49 px of width cropped (24 left).
    assert tab.bucket_label.text() == "bucket 896x1152 (image 420x512 -> resized 945x1152, crop 49x0 px)"
    left, top, right, bottom = tab.image_view.crop
    assert (round(left, 3), top, round(right, 3), bottom) == (
        round(24 * 420 / 945, 3),
        0.0,
        round(920 * 420 / 945, 3),
        512.0,
    )


def test_variants_are_the_trainers_captions(qtbot, tab):
    caption = CAPTIONS[0][2]
    tab.seed_spin.setValue(5)
    tab.epoch_spin.setValue(2)
    tab.index_spin.setValue(9)
    tab.n_spin.setValue(3)
    expected = [
        process_caption(caption, card_caption_processing(), seed=5, epoch=e, index=9).text for e in (2, 3, 4)
    ]
    assert tab.variant_texts == expected
    assert all(v.startswith("1girl, hatsune miku, vocaloid, ") for v in tab.variant_texts)
    assert "|||" not in "".join(tab.variant_texts)


def test_filter_and_or_not_narrows_the_grid(qtbot, tab):
    def shown(query: str) -> list[str]:
        tab.search.setText(query)
        tab.apply_filter(query)
        return [tab.index.entries[tab.model.entry_at(r)].id for r in range(tab.model.rowCount())]

    assert shown("long hair") == ["100", "101"]
    assert tab.count_label.text() == "2 of 5 images"
    assert shown("solo, smile") == ["102"]
    assert shown("2girls | 1boy") == ["101", "103"]
    assert shown("solo -1girl") == ["102", "103"]
    assert shown("(long hair OR short hair) AND NOT nsfw") == ["100"]
    assert shown("no such tag") == []
    assert tab.message.text() == "No image has: no such tag"
    assert tab.current_entry is None and tab.variant_texts == []
    assert shown("(solo") == []  # a syntax error keeps the last result and says why
    assert "'(' is not closed" in tab.message.text()
    assert shown("") == ["100", "101", "102", "103", "104"]
    # The debounced search box drives the same filter.
    with qtbot.waitSignal(tab.search.query_changed, timeout=2000):
        tab.search.setText("smile")
    assert tab.model.rowCount() == 2


def test_chip_click_adds_to_search_and_completion(qtbot, tab):
    tab.chips.chips[3].clicked.emit(tab.chips.chips[3].tag_text)  # "long hair"
    assert tab.search.text() == "long hair"
    assert [insert for _, insert in tab.search.completions_for("solo, sm")] == ["smile"]
    assert [insert for _, insert in tab.search.completions_for("-twin")] == ["twintails"]


def test_thumbnails_and_stats(qtbot, tab):
    tab.grid.viewport().update()
    qtbot.waitUntil(lambda: tab.loader.pixmap(0) is not None and tab.loader.is_failed(4), timeout=10000)
    assert tab.loader.pixmap(0).width() == 105 and tab.loader.pixmap(0).height() == 128  # 420x512 fit in 128
    stats = tab.stats_view.stats
    assert stats.images == 5 and stats.samples_per_epoch == 10
    assert {t.text: t.images for t in stats.tags}["solo"] == 3
    assert stats.buckets[(896, 1152)] == 2 and stats.buckets[(1024, 1024)] == 2
    assert tab.stats_view.model.rowCount() == len(stats.tags)
    assert tab.stats_view.problems.count() == 2


def _chip_texts(tab) -> list[str]:
    return [c.tag_text for c in tab.chips.chips]


def test_bulk_edit_selection_remove_then_undo(qtbot, tab, workspace):
    folder = workspace.datasets_path / "my_set" / "2_chars"
    before = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert not tab.bulk.undo_button.isEnabled()
    assert tab.bulk.undo_label.text() == "Nothing to undo for this dataset."

    tab.side.setCurrentWidget(tab.bulk)
    tab.select_entries([0, 1])  # 100 and 101, both with "long hair"; 100 stays the previewed image
    assert tab.selected_entries().tolist() == [0, 1] and tab.current_entry == 0
    assert tab.bulk.scope_buttons["selected"].text() == "Selected images (2)"
    assert tab.bulk.scope_buttons["all"].text() == "Whole dataset (5)"
    tab.bulk.set_operation("remove")
    tab.bulk.set_scope("selected")
    tab.bulk.tag_edit.setText("Long_Hair")
    tab.update_bulk_preview()
    assert tab.bulk.preview_label.text() == "2 of 2 caption(s) would change"
    assert "twintails, solo, newest" in tab.bulk.samples_label.text()
    assert 'text-decoration:line-through">long hair</span>' in tab.bulk.samples_label.text()  # the change
    assert tab.bulk.apply_button.isEnabled()
    # The tag field completes whole tags from the dataset, parentheses included.
    tab.bulk.set_completer(tab.search._completer_index)
    assert [insert for _, insert in tab.bulk.tag_edit.completions_for("twin")] == ["twintails"]

    with qtbot.waitSignals([tab.bulk_edit_finished, tab.dataset_loaded, tab.stats_ready], timeout=20000):
        tab.bulk.apply_button.click()
    assert (folder / "100.txt").read_text(encoding="utf-8") == (
        "1girl, hatsune miku, vocaloid, |||twintails, solo, newest, safe, masterpiece"
    )
    assert (folder / "101.txt").read_text(encoding="utf-8") == "2girls, |||smile, highres, old, nsfw"
    after = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert {n for n in after if after[n] != before[n]} == {"100.txt", "101.txt"}
    # Index, chips, selection and statistics follow the files.
    assert tab.selected_entries().tolist() == [0, 1] and tab.current_entry == 0
    assert "long hair" not in _chip_texts(tab) and "twintails" in _chip_texts(tab)
    assert "long hair" not in {t.text for t in tab.stats_view.stats.tags}
    assert tab.bulk.result_label.text() == (
        'remove "Long Hair": 2 of 2 caption(s) changed (2 tag(s) removed)'
    )
    assert tab.bulk.preview_label.text() == "0 of 2 caption(s) would change"
    assert not tab.bulk.apply_button.isEnabled()
    assert tab.bulk.undo_button.isEnabled()
    assert tab.bulk.undo_label.text().startswith('Undo would revert: remove "Long Hair" (2 file(s), ')

    # Ctrl+Z on the grid (not in a text field) undoes the edit.
    tab.activateWindow()
    tab.grid.setFocus()
    qtbot.waitUntil(tab.grid.hasFocus, timeout=5000)
    with qtbot.waitSignals([tab.bulk_edit_finished, tab.dataset_loaded], timeout=20000):
        qtbot.keyClick(tab.grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert {p.name: p.read_bytes() for p in sorted(folder.iterdir())} == before
    assert "long hair" in _chip_texts(tab)
    assert not tab.bulk.undo_button.isEnabled()
    assert tab.bulk.result_label.text() == 'undid remove "Long Hair": 2 caption(s) restored'


def test_bulk_edit_add_to_head_over_the_filter(qtbot, tab, workspace):
    folder = workspace.datasets_path / "my_set" / "2_chars"
    tab.search.setText("solo")
    tab.apply_filter("solo")  # 100, 102, 103
    tab.bulk.set_operation("add")
    tab.bulk.set_head(True)
    tab.bulk.set_scope("filter")
    tab.bulk.tag_edit.setText("kohaku_\\(artist\\)")
    tab.update_bulk_preview()
    assert tab.bulk.preview_label.text() == "3 of 3 caption(s) would change"
    tab.bulk.tag_edit.setText("a, b")
    tab.update_bulk_preview()
    assert "contains a comma" in tab.bulk.error_label.text() and not tab.bulk.apply_button.isEnabled()
    tab.bulk.tag_edit.setText("kohaku_\\(artist\\)")
    tab.update_bulk_preview()
    with qtbot.waitSignals([tab.bulk_edit_finished, tab.dataset_loaded], timeout=20000):
        tab.apply_bulk_edit()
    assert (folder / "102.txt").read_text(encoding="utf-8") == "kohaku (artist), |||solo, smile, sensitive"
    assert (folder / "103.txt").read_text(encoding="utf-8").startswith("1boy, kohaku (artist), |||short hair")
    assert (folder / "101.txt").read_text(encoding="utf-8") == CAPTIONS[1][2]
    assert tab.count_label.text() == "3 of 5 images"  # the filter is kept across the re-read


def test_side_panel_fits_its_width_without_a_horizontal_scrollbar(qtbot, tab):
    """At a common window width (side panel ~480 px) the image page wraps chips and captions instead of cutting them off."""
    tab.resize(1200, 860)
    with qtbot.waitSignal(tab.preview_shown, timeout=10000):
        tab.select_row(1)
    page = tab.side.widget(0)
    qtbot.waitUntil(lambda: page.viewport().width() > 0)
    content = page.widget()
    assert content.minimumSizeHint().width() <= page.viewport().width()
    assert page.horizontalScrollBar().maximum() == 0
    assert all(chip.geometry().right() <= tab.chips.width() for chip in tab.chips.chips)


# ---- hand-offs ----------------------------------------------------------------------------------------------------
def test_a_dataset_built_elsewhere_opens_when_none_is_open(qtbot, tmp_path, workspace):
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    widget = TagsTab(context)
    qtbot.addWidget(widget)
    built = workspace.datasets_path / "my_set"
    with qtbot.waitSignal(widget.dataset_loaded, timeout=20000):
        context.announce_dataset(built)  # what the Dataset wizard says after a build
    assert widget.index.root == built and widget.path_label.text() == str(built)


def test_open_dataset_request_replaces_the_open_one(qtbot, tab, workspace, tmp_path):
    other = tmp_path / "other" / "1_x"
    other.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(other / "1.png")
    (other / "1.txt").write_text("1girl, |||solo", encoding="utf-8")
    tab.context.announce_dataset(other.parent)  # one is open: a build elsewhere does not take it away
    qtbot.wait(200)
    assert tab.index.root == workspace.datasets_path / "my_set"
    with qtbot.waitSignal(tab.dataset_loaded, timeout=20000):
        tab.context.request("tags.open_dataset", other.parent, switch_to="Tags")
    assert tab.index.root == other.parent and tab.model.rowCount() == 1


# ---- the statistics job and the shared index ----------------------------------------------------------------------
def test_statistics_never_write_the_index_from_a_worker(qtbot, tmp_path, workspace, monkeypatch):
    """Image sizes read for the statistics reach the entries on the GUI thread only (the index is the GUI's)."""
    from trainer_core.tags.dataset_index import DatasetEntry, open_dataset

    shown: set[int] = set()  # entries of an index the tab has on screen
    off_thread: list[str] = []

    def guarded_setattr(self, name, value):
        if (
            name in ("width", "height")
            and id(self) in shown
            and threading.current_thread() is not threading.main_thread()
        ):
            off_thread.append(f"{name} of {self.image} written by {threading.current_thread().name}")
        object.__setattr__(self, name, value)

    monkeypatch.setattr(DatasetEntry, "__setattr__", guarded_setattr)
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    widget = TagsTab(context)
    qtbot.addWidget(widget)
    widget.dataset_loaded.connect(lambda index: shown.update(id(e) for e in index.entries))
    with qtbot.waitSignals([widget.dataset_loaded, widget.stats_ready], timeout=20000):
        context.set_workspace(workspace)
    assert off_thread == []
    # ... and the sizes did arrive: all known, the broken image remembered as unreadable, once in the problems
    assert [e.size for e in widget.index.entries][:4] == [(420, 512), (512, 256), (300, 300), (256, 512)]
    assert (widget.index.entries[4].width, widget.index.entries[4].height) == (-1, -1)
    assert sum("cannot be decoded" in str(p) for p in widget.index.problems) == 1
    assert widget.stats_view.stats.buckets[(896, 1152)] == 2

    # the worker's function itself returns sizes and leaves the index alone
    from kxl_gui.tabs.tags_jobs import read_missing_sizes
    from trainer_core.progress import Progress

    fresh = open_dataset(workspace.datasets_path / "my_set")
    sizes, problems = read_missing_sizes(fresh, Progress())
    assert sizes[1] == (512, 256) and sizes[4] == (-1, -1) and len(problems) == 1
    assert all(e.width == 0 for e in fresh.entries)


# ---- GUI-thread stalls: search -> bulk edit -> undo on a dataset with a few thousand tags --------------------------
STALL_BOUND_MS = 150


@pytest.fixture
def big_workspace(tmp_path: Path) -> Workspace:
    """400 images whose captions draw 30 tags each from the shipped tag list: ~3,000 distinct tags, the size at
    which per-tag work on the GUI thread shows."""
    from trainer_core.paths import resources_dir

    names = [line.split(",", 1)[0].replace("_", " ") for line in
             (resources_dir() / "demo" / "tags.csv").read_text(encoding="utf-8").splitlines()]  # fmt: skip
    rng = random.Random(0)
    ws = Workspace(root=tmp_path / "big", name="big", kind="demo")
    folder = ws.datasets_path / "big_set" / "1_many"
    folder.mkdir(parents=True)
    for i in range(400):
        Image.new("RGB", (rng.choice((48, 64, 80)), rng.choice((48, 64, 80))), (i % 255, 90, 140)).save(
            folder / f"{i}.png"
        )
        tags = rng.sample(names[20:], 28) + (["long hair"] if i % 3 == 0 else [])
        (folder / f"{i}.txt").write_text("1girl, |||" + ", ".join(tags), encoding="utf-8")
    ws.save()
    return ws


def test_search_then_bulk_edit_then_undo_keeps_the_window_responsive(qtbot, tmp_path, big_workspace):
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    widget = TagsTab(context)
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    qtbot.waitExposed(widget)
    with qtbot.waitSignals(
        [widget.dataset_loaded, widget.stats_ready, widget.completer_ready], timeout=60000
    ):
        context.set_workspace(big_workspace)
    assert len(widget.stats_view.stats.tags) > 2500

    watch = StallWatch(threads=True).start()
    type_into(widget.search, "long ha")  # the completion popup opens on the way
    QTest.keyClick(widget.search, Qt.Key.Key_Escape)
    type_into(widget.search, "long hair")
    qtbot.waitUntil(lambda: widget.count_label.text() == "134 of 400 images", timeout=10000)
    bar = widget.side.tabBar()
    QTest.mouseClick(bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(2).center())
    assert widget.side.currentWidget() is widget.bulk
    click(widget.bulk.scope_buttons["filter"])
    type_into(widget.bulk.tag_edit, "long hair")
    QTest.keyClick(widget.bulk.tag_edit, Qt.Key.Key_Escape)
    qtbot.waitUntil(
        lambda: widget.bulk.preview_label.text() == "134 of 134 caption(s) would change", timeout=10000
    )
    with qtbot.waitSignals(
        [widget.bulk_edit_finished, widget.dataset_loaded, widget.stats_ready], timeout=60000
    ):
        click(widget.bulk.apply_button)
    assert widget.bulk.result_label.text().startswith('remove "long hair": 134 of 134 caption(s) changed')
    with qtbot.waitSignals(
        [widget.bulk_edit_finished, widget.dataset_loaded, widget.stats_ready], timeout=60000
    ):
        click(widget.bulk.undo_button)
    qtbot.wait(100)
    watch.stop()
    print(watch.report())
    assert widget.bulk.result_label.text() == 'undid remove "long hair": 134 caption(s) restored'
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()


# ---- buttons reached by real clicks: Open dataset…, Cancel of a running edit ---------------------------------------
def test_open_button_and_cancel_of_a_running_bulk_edit(qtbot, tab, workspace, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    import kxl_gui.tabs.tags_bulk_controller as controller

    other = tmp_path / "picked" / "1_x"
    other.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(other / "1.png")
    (other / "1.txt").write_text("1girl, |||solo", encoding="utf-8")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(other.parent))
    with qtbot.waitSignal(tab.dataset_loaded, timeout=20000):
        click(tab.open_button)
    assert tab.index.root == other.parent

    started = threading.Event()

    def slow_edit(_index, _edit, _entries, progress):  # an edit that runs until cancelled
        started.set()
        while True:
            progress.check_cancelled()
            threading.Event().wait(0.01)

    monkeypatch.setattr(controller, "edit_dataset", slow_edit)
    tab.side.setCurrentWidget(tab.bulk)
    click(tab.bulk.scope_buttons["all"])
    type_into(tab.bulk.tag_edit, "solo")
    qtbot.waitUntil(lambda: tab.bulk.apply_button.isEnabled(), timeout=5000)
    click(tab.bulk.apply_button)
    qtbot.waitUntil(started.is_set, timeout=5000)
    qtbot.waitUntil(tab.bulk.cancel_button.isVisible, timeout=5000)
    with qtbot.waitSignal(tab.bulk_edit_finished, timeout=20000) as finished:
        click(tab.bulk.cancel_button)
    assert finished.args == ["cancelled"]
    assert tab.bulk.result_label.text().startswith("Cancelled: the captions already written stay edited")
    assert (other / "1.txt").read_text(encoding="utf-8") == "1girl, |||solo"


# ---- the one thumbnail loader also serves the Train tab's samples --------------------------------------------------
def test_sample_gallery_thumbnails_come_from_the_shared_loader(qtbot, tmp_path):
    from kxl_gui.widgets.train_gallery import THUMB, SampleGallery

    good, bad = tmp_path / "s10.png", tmp_path / "bad.png"
    Image.new("RGB", (512, 256), (200, 30, 30)).save(good)
    bad.write_bytes(b"not a png")
    gallery = SampleGallery()
    qtbot.addWidget(gallery)
    gallery.set_samples([{"path": str(good), "step": 10}, {"path": str(bad), "step": 10},
                         {"path": str(tmp_path / "gone.png"), "step": 20}])  # fmt: skip
    thumbs = gallery._thumbs
    qtbot.waitUntil(lambda: thumbs[str(good)].pixmap() is not None and not thumbs[str(good)].pixmap().isNull()
                    and thumbs[str(bad)].text() == "unreadable", timeout=10000)  # fmt: skip
    assert (thumbs[str(good)].pixmap().width(), thumbs[str(good)].pixmap().height()) == (THUMB, THUMB // 2)
    assert thumbs[str(tmp_path / "gone.png")].text() == "missing"
    assert gallery.steps() == [20, 10] and gallery.sample_count() == 3
