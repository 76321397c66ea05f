"""The mouse wheel over the app's panels scrolls them; it changes no setting unless the user focused that field.

Issue #15: scrolling the Train settings rewrote gradient accumulation 2 -> 1 -> -1 on its way down. The sweep rolls
the wheel over every visible spin box, combo box and slider of every tab, without focusing it, and checks that no
value changed and that the panel scrolled instead; a focused field still takes the wheel. Typing a value below
the engine's minimum into a Train setting leaves a value the engine accepts.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QSpinBox,
    QStackedWidget,
    QWidget,
)
from user_input import roll_wheel, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.main_window import MainWindow  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.widgets.wheel_guard import is_value_widget, scroll_areas_around  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    win = MainWindow(AppContext(AppSettings(tmp_path / "gui.ini")))
    qtbot.addWidget(win)
    win.resize(1180, 780)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    return win


@pytest.fixture
def window_with_workspace(qtbot, window, make_workspace):
    """The window with a small workspace open, so the tabs show their workspace-dependent panels too."""
    with qtbot.waitSignal(window.workspace_page.summary_shown, timeout=10_000):
        window.workspace_page.open_workspace(make_workspace(posts=6))
    qtbot.wait(300)
    return window


def value_of(w: QWidget) -> object:
    if isinstance(w, QAbstractSpinBox):
        return w.text()
    if isinstance(w, QComboBox):
        return (w.currentIndex(), w.currentText())
    assert isinstance(w, QAbstractSlider)
    return w.value()


def value_widgets(root: QWidget, visible_only: bool = True) -> list[QWidget]:
    return [w for w in root.findChildren(QWidget)
            if is_value_widget(w) and (w.isVisible() or not visible_only) and w.isEnabled()]  # fmt: skip


def train_tab(window: MainWindow):
    return window.tab_pages["Train"]


def show_tab(qtbot, window: MainWindow, title: str) -> QWidget:
    index = next(i for i in range(window.tabs.count()) if window.tabs.tabText(i) == title)
    bar = window.tabs.tabBar()
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )
    qtbot.waitUntil(lambda: window.tabs.currentIndex() == index, timeout=2000)
    return window.tabs.widget(index)


def sweep(qtbot, title: str, page: QWidget, done: set[int]) -> tuple[int, int]:
    """Roll the wheel over each visible value widget of `page` not swept yet; (widgets, panels scrolled)."""
    swept = scrolled = 0
    for w in value_widgets(page):
        if id(w) in done:
            continue
        done.add(id(w))
        swept += 1
        name = f"{title}: {w.objectName() or type(w).__name__}"
        assert w.focusPolicy() != Qt.FocusPolicy.WheelFocus, f"{name} would take focus from the wheel"
        if w.hasFocus():
            w.clearFocus()
        areas = [a for a in scroll_areas_around(w) if a.verticalScrollBar().maximum() > 0]
        for a in areas:
            a.verticalScrollBar().setValue(0)
        before = value_of(w)
        roll_wheel(w, -3)  # towards the user: scroll down
        assert value_of(w) == before, f"the wheel changed {name}"
        if areas:  # the innermost panel that can scroll did
            assert areas[0].verticalScrollBar().value() > 0, f"{name}: the panel did not scroll"
            scrolled += 1
    return swept, scrolled


def test_wheel_sweep_over_every_tab_scrolls_panels_and_changes_no_value(qtbot, window_with_workspace):
    window = window_with_workspace
    everything = value_widgets(window, visible_only=False)
    before_all = {id(w): value_of(w) for w in everything}
    swept: dict[str, int] = {}
    scrolled = 0
    done: set[int] = set()
    for i in range(window.tabs.count()):
        title = window.tabs.tabText(i)
        page = show_tab(qtbot, window, title)
        n, s = sweep(qtbot, title, page, done)
        # every page of the tab's wizards and sub-tabs too
        for stack in page.findChildren(QStackedWidget):
            if not stack.isVisible():
                continue
            current = stack.currentIndex()
            for k in range(stack.count()):
                stack.setCurrentIndex(k)
                more, more_scrolled = sweep(qtbot, title, page, done)
                n, s = n + more, s + more_scrolled
            stack.setCurrentIndex(current)
        swept[title], scrolled = n, scrolled + s
    assert swept["Train"] >= 30  # the whole settings form (a search that hid it would make this vacuous)
    assert all(swept[t] for t in ("Dataset", "Tags", "Merge", "Generate")), swept
    assert all(value_of(w) == before_all[id(w)] for w in everything)
    assert scrolled >= 30


def test_train_settings_panel_scrolls_under_the_wheel(qtbot, window):
    tab = train_tab(window)
    show_tab(qtbot, window, "Train")
    spin = tab.settings.editors["training.gradient_accumulation_steps"]
    bar = tab.left_scroll.verticalScrollBar()
    assert bar.maximum() > 0
    value = spin.value()
    for _ in range(3):
        roll_wheel(spin, -1)
    assert spin.value() == value and bar.value() > 0
    top = bar.value()
    roll_wheel(tab.settings.editors["training.keep_states"], 2)  # away from the user: back up
    assert bar.value() < top


def test_a_focused_field_still_takes_the_wheel(qtbot, window):
    tab = train_tab(window)
    show_tab(qtbot, window, "Train")
    spin: QSpinBox = tab.settings.editors["training.gradient_accumulation_steps"]
    tab.left_scroll.ensureWidgetVisible(spin)
    value = spin.value()
    QTest.mouseClick(spin, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, spin.rect().center())
    qtbot.waitUntil(spin.hasFocus, timeout=2000)
    assert spin.value() == value  # a click in the text does not step
    roll_wheel(spin, 1)
    assert spin.value() == value + 1
    combo: QComboBox = tab.settings.editors["optimizer.lr_scheduler"]
    tab.left_scroll.ensureWidgetVisible(combo)
    index = combo.currentIndex()
    roll_wheel(combo, -1)  # not focused: unchanged
    assert combo.currentIndex() == index
    combo.setFocus(Qt.FocusReason.TabFocusReason)  # the user tabbed into it
    roll_wheel(combo, 1 if index else -1)
    assert combo.currentIndex() != index


@pytest.mark.parametrize(
    "key", ["training.gradient_accumulation_steps", "training.keep_states", "training.batch_size"]
)
def test_spin_boxes_refuse_values_below_the_engine_minimum(qtbot, window, key):
    tab = train_tab(window)
    show_tab(qtbot, window, "Train")
    spin: QSpinBox = tab.settings.editors[key]
    tab.left_scroll.ensureWidgetVisible(spin)
    type_into(spin, "-1")
    QTest.keyClick(spin, Qt.Key.Key_Return)
    spin.clearFocus()
    assert spin.value() >= 1 and spin.minimum() >= 1
    QTest.keyClick(spin, Qt.Key.Key_Down)  # and not by stepping down either
    for _ in range(3):
        spin.stepDown()
    assert spin.value() == 1
    cfg = tab.current_config()  # the engine's validate() accepts what the form holds
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == 1


def test_no_whole_number_setting_can_hold_a_value_the_engine_refuses(qtbot, window):
    tab = train_tab(window)
    show_tab(qtbot, window, "Train")
    for key, spin in tab.settings.editors.items():
        if not isinstance(spin, QSpinBox):
            continue
        tab.left_scroll.ensureWidgetVisible(spin)
        type_into(spin, "-1")
        QTest.keyClick(spin, Qt.Key.Key_Return)
        spin.clearFocus()
        if key not in ("network.factor", "dataset.num_workers"):  # -1 means "balanced" / "automatic" there
            assert spin.value() >= 0, key
        tab.current_config()  # raises KxlError naming the key if the engine would refuse it
