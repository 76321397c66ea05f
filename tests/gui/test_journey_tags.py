"""Tags journey, driven only by real input, from a fresh demo workspace with a freshly built dataset: search by a tag
(typed), narrow by clicking a caption chip, bulk-remove that tag over the filter (tab bar, radio button, typed tag,
Apply), then Undo (a click); caption files change and come back byte for byte. The stall watchdog runs from the
first paint; from the first input on, the GUI thread is never blocked over 150 ms."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from user_input import click, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.tags import TagsTab  # noqa: E402
from trainer_core.tags.caption_categories import CaptionTagKind  # noqa: E402

STALL_BOUND_MS = 150


@pytest.fixture(scope="module")
def demo_with_dataset(tmp_path_factory):
    """`kxl demo init` then a dataset build of every post: what a new user has after the Dataset wizard."""
    from trainer_core.dataset.export import BuildOptions, build_dataset
    from trainer_core.dataset.selection import IdRange, SelectionPlan
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path_factory.mktemp("tags-journey") / "ws", posts=60, seed=0, models=False)
    out = ws.datasets_path / "journey"
    build_dataset(
        BuildOptions(db=ws.db_path, images=ws.images_path, out=out, plan=SelectionPlan((IdRange(0),)))
    )
    return ws, out


def captions(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.txt"))}


def test_search_chip_bulk_edit_undo(qtbot, tmp_path, demo_with_dataset):
    ws, dataset = demo_with_dataset
    before = captions(dataset)
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    tab = TagsTab(context)
    qtbot.addWidget(tab)
    tab.resize(1200, 800)
    tab.show()
    qtbot.waitExposed(tab)
    opening = StallWatch(threads=True).start()
    with qtbot.waitSignals([tab.dataset_loaded, tab.stats_ready, tab.completer_ready], timeout=60_000):
        context.set_workspace(ws)
    qtbot.wait(100)
    opening.stop()
    # Printed, not bounded yet: the first showing of a dataset costs one gap of ~0.3 s of GUI-thread CPU inside
    # Qt (no Python frame on the stack: polish / layout of the first chips and tables), reported to the lead.
    print("opening the dataset:", opening.report())
    watch = StallWatch(threads=True).start()
    assert tab.index.root == dataset and len(tab.index) == len(before)
    total = len(tab.index)

    # 1. search: a general tag on some images but not all
    counts = {t.text: t.images for t in tab.stats_view.stats.tags}
    first = next(t for t, n in sorted(counts.items(), key=lambda kv: -kv[1]) if 2 < n < total)
    type_into(tab.search, first)
    QTest.keyClick(tab.search, Qt.Key.Key_Escape)  # close the completion popup
    qtbot.waitUntil(
        lambda: tab.count_label.text() == f"{counts[first]:,} of {total:,} images", timeout=10_000
    )
    qtbot.waitUntil(lambda: tab.current_entry is not None and bool(tab.chips.chips), timeout=10_000)

    # 2. a click on one of its caption chips adds that tag to the search (AND)
    chip = next(c for c in tab.chips.chips if c.kind == CaptionTagKind.GENERAL and c.tag_text != first)
    second = chip.tag_text
    qtbot.waitUntil(chip.isVisible, timeout=5_000)  # a layout shows new chips on the next event-loop turn
    click(chip)
    assert tab.search.text() == f"{first}, {second}"
    narrowed = tab.index.filter(f"{first}, {second}")
    qtbot.waitUntil(
        lambda: tab.count_label.text() == f"{len(narrowed):,} of {total:,} images", timeout=10_000
    )

    # 3. bulk edit: remove the chip's tag from the images the filter shows
    bar = tab.side.tabBar()
    QTest.mouseClick(bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(2).center())
    assert tab.side.currentWidget() is tab.bulk
    click(tab.bulk.op_buttons["remove"])
    click(tab.bulk.scope_buttons["filter"])
    type_into(tab.bulk.tag_edit, second)
    QTest.keyClick(tab.bulk.tag_edit, Qt.Key.Key_Escape)
    n = len(narrowed)
    qtbot.waitUntil(
        lambda: tab.bulk.preview_label.text() == f"{n} of {n} caption(s) would change", timeout=10_000
    )
    with qtbot.waitSignals([tab.bulk_edit_finished, tab.dataset_loaded, tab.stats_ready], timeout=60_000):
        click(tab.bulk.apply_button)
    after = captions(dataset)
    changed = {name for name in after if after[name] != before[name]}
    assert len(changed) == n
    assert all(second not in after[name].decode("utf-8").split(", ") for name in changed)
    assert tab.bulk.result_label.text().startswith(f'remove "{second}": {n} of {n} caption(s) changed')
    # the search, kept across the re-read, finds no image with both tags any more
    assert tab.count_label.text() == f"0 of {total:,} images"

    # 4. undo: every caption file is back, byte for byte
    with qtbot.waitSignals([tab.bulk_edit_finished, tab.dataset_loaded, tab.stats_ready], timeout=60_000):
        click(tab.bulk.undo_button)
    assert captions(dataset) == before
    assert tab.bulk.result_label.text().startswith(f'undid remove "{second}": ')
    assert not tab.bulk.undo_button.isEnabled()
    qtbot.wait(100)
    watch.stop()
    print(f"\ntags journey: {watch.report(limit=1)}")
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()
