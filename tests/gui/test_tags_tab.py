"""Tags tab driven by qtbot on a small kohya dataset: opening the workspace's newest dataset, chips by category,
trainer caption variants, bucket label, AND/OR/NOT filtering, thumbnails and statistics."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from PIL import Image

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
