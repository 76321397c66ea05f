"""The Tags tab on a referenced dataset (images stay in the tar shards): thumbnails, the picture and its bucket
come from the shards, with no image file on disk."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.tags import TagsTab  # noqa: E402
from trainer_core.dataset.export import BuildOptions, build_dataset  # noqa: E402
from trainer_core.dataset.selection import PRESETS  # noqa: E402


@pytest.fixture
def workspace(tmp_path):
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path / "ws", posts=80, seed=0, models=False)
    opts = BuildOptions(db=ws.db_path, images=ws.images_path, out=ws.datasets_path / "ref",
                        plan=PRESETS["kohaku-xl-delta"], image_mode="reference")  # fmt: skip
    build_dataset(opts, workers=2)
    return ws


def test_thumbnails_and_picture_come_from_the_shards(qtbot, tmp_path, workspace):
    root = workspace.datasets_path / "ref"
    assert not [p for p in root.rglob("*") if p.suffix.lower() in (".webp", ".png", ".jpg")]  # no image files
    tab = TagsTab(AppContext(AppSettings(tmp_path / "gui.ini")))
    qtbot.addWidget(tab)
    tab.resize(1200, 800)
    tab.show()
    with qtbot.waitSignals([tab.dataset_loaded, tab.stats_ready], timeout=30_000):
        tab.context.set_workspace(workspace)
    assert tab.index is not None and tab.index.root == root and tab.model.rowCount() > 5
    assert tab.problem_label.text() == "⚠ 0 file problem(s)"  # every referenced image was found and read
    qtbot.waitUntil(lambda: tab.loader.pixmap(0) is not None, timeout=20_000)  # the first cell's thumbnail
    rect = tab.grid.visualRect(tab.model.index(1, 0))
    with qtbot.waitSignal(tab.preview_shown, timeout=20_000):
        QTest.mouseClick(tab.grid.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         rect.center())  # fmt: skip
    assert tab.current_entry == tab.model.entry_at(1)
    assert tab.bucket_label.text().startswith("bucket ")  # size read from the shard, bucket worked out
    assert (
        tab.image_view._pixmap is not None and not tab.image_view._pixmap.isNull()
    )  # decoded, not "missing"
