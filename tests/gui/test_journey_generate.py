"""Generate journey, driven only by real input, on a fresh demo workspace: build a prompt with the tag builder (typed
tags + Enter), set size / steps / seed by typing, click Generate, get the image; change settings, then drop the
PNG on the tab (a real QDropEvent carrying its URL) and get every setting back. On the way the other buttons of the
tab are clicked: Random / Reuse seed, Use these parameters, the model's "…", Add LoKr… / Remove, and Cancel of a
running generation. The stall watchdog runs from the first input: the GUI thread is never blocked over 150 ms."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from user_input import click, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.generate import GenerateTab  # noqa: E402

STALL_BOUND_MS = 150


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from kxl_gui.tabs.generate_jobs import warm_engine
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path_factory.mktemp("gen-journey") / "ws", posts=10, seed=0, images=False)
    # The engine import of a fresh session is measured by test_generate_tab's first-Generate test; here it is done.
    warm_engine()
    return ws


def type_number(qtbot, box, value: int) -> None:
    type_into(box.lineEdit(), str(value))
    QTest.keyClick(box.lineEdit(), Qt.Key.Key_Tab)  # leave the field: the value is committed
    qtbot.waitUntil(lambda: int(box.value()) == value, timeout=2_000)


def add_tag(qtbot, field, text: str) -> None:
    field.entry.setFocus()
    QTest.keyClicks(field.entry, text)
    field._completer.popup().hide()  # typed, not picked from the popup
    QTest.keyClick(field.entry, Qt.Key.Key_Return)


def drop(widget, path: Path) -> None:
    """What a file manager does: a drag enters the widget, then the file is dropped on it."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    pos = QPointF(widget.rect().center())
    enter = QDragEnterEvent(QPoint(pos.toPoint()), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    event = QDropEvent(
        pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, event)
    assert event.isAccepted()


def test_builder_image_drop_restores(qtbot, tmp_path, demo, monkeypatch):
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    context.workspace = demo
    tab = GenerateTab(context)
    qtbot.addWidget(tab)
    tab.resize(1400, 900)
    tab.show()
    qtbot.waitExposed(tab)
    qtbot.waitUntil(lambda: tab.vocabulary is not None and tab.tokenizer is not None and tab.known is not None,
                    timeout=60_000)  # fmt: skip
    base = tab.model_path()
    assert base is not None and base.is_file()
    watch = StallWatch(threads=True).start()

    # the tag builder writes the prompt in the card's order
    add_tag(qtbot, tab.fields["general"], "long hair")
    add_tag(qtbot, tab.fields["count"], "1girl")
    assert tab.prompt_edit.toPlainText() == "1girl, long hair"
    for box, value in ((tab.width_box, 64), (tab.height_box, 64), (tab.steps, 2), (tab.seed, 5)):
        type_number(qtbot, box, value)
    assert (tab.form.width, tab.form.height, tab.form.steps, tab.form.seed) == (64, 64, 2, 5)

    # the model's "…" and Add LoKr… / Remove (the file dialogs answer with a path)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(base), ""))
    click(tab.settings.browse_model_button)
    assert tab.model_path() == base
    lokr = tmp_path / "some-lokr.safetensors"
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *a, **k: ([str(lokr)], ""))
    click(tab.settings.add_lokr_button)
    assert tab.lokrs() == [(lokr, 1.0)] and tab.lokr_table.rowCount() == 1
    click(tab.settings.remove_lokr_button)
    assert tab.lokrs() == [] and tab.lokr_table.rowCount() == 0

    # the image
    with qtbot.waitSignal(tab.generation_finished, timeout=120_000):
        click(tab.generate_button)
    assert tab.gallery.count() == 1 and tab.generate_button.isEnabled()
    png = demo.outputs_path / "generate" / "00000-5.png"
    assert png.is_file() and "Seed: 5" in tab.params_view.toPlainText()

    # the seed buttons
    click(tab.settings.random_seed_button)
    assert tab.form.seed == -1 and tab.seed.text() == "random"
    click(tab.settings.reuse_seed_button)
    assert tab.form.seed == 5

    # change everything the PNG records, then drop it
    type_number(qtbot, tab.steps, 30)
    type_number(qtbot, tab.seed, 77)
    tab.prompt_edit.setFocus()
    QTest.keyClick(tab.prompt_edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClicks(tab.prompt_edit, "something else")
    qtbot.waitUntil(
        lambda: [c.value.name for c in tab.fields["general"].chips] == ["something_else"], timeout=5_000
    )
    with qtbot.waitSignal(tab.parameters_restored, timeout=20_000) as restored:
        drop(tab, png)
    assert restored.args[0] == []
    assert (tab.form.steps, tab.form.seed, tab.form.width, tab.form.height) == (2, 5, 64, 64)
    assert (tab.steps.value(), int(tab.seed.value()), tab.prompt_edit.toPlainText()) == (
        2,
        5,
        "1girl, long hair",
    )
    assert [c.value.name for c in tab.fields["count"].chips] == [
        "1girl"
    ]  # the chips follow the restored text
    assert [c.value.name for c in tab.fields["general"].chips] == ["long_hair"]
    assert tab.model_path() == base and tab.form.emphasis == "No norm"

    # "Use these parameters" of the shown image does the same without a drop
    type_number(qtbot, tab.steps, 9)
    click(tab.use_parameters_button)
    assert tab.form.steps == 2

    # Cancel a running generation
    type_number(qtbot, tab.steps, 150)
    click(tab.generate_button)
    qtbot.waitUntil(lambda: ": step" in tab.progress_label.text(), timeout=60_000)
    click(tab.cancel_button)
    qtbot.waitUntil(lambda: tab.progress_label.text() == "cancelled", timeout=60_000)
    assert tab.generate_button.isEnabled() and not tab.cancel_button.isEnabled() and tab.gallery.count() == 1

    qtbot.wait(100)
    watch.stop()
    print(f"\ngenerate journey: {watch.report(limit=1)}")
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()
