"""Tags tab driven by qtbot on a small kohya dataset: opening the workspace's newest dataset, chips by category,
trainer caption variants, bucket label, AND/OR/NOT filtering, thumbnails and statistics, bulk edit + undo."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

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
    assert tab.bulk.result_label.text() == 'undid remove "Long Hair": 2 file(s) restored'


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
