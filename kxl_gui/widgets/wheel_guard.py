"""The mouse wheel scrolls panels; it changes a value only in the field the user is working in.

Qt's default lets the wheel change whatever spin box, combo box or slider happens to be under the pointer, so
scrolling a long settings panel silently rewrites the settings it passes over (issue #15: gradient accumulation
went 2 -> 1 -> -1 while the user was only scrolling). The guard, one event filter on the QApplication:

- value widgets (QAbstractSpinBox, QComboBox, and QAbstractSlider except scroll bars) take wheel input only when
  they have keyboard focus (the user clicked or tabbed into them);
- their focus policy is made StrongFocus, so the wheel itself never gives them focus (Qt's default WheelFocus
  would focus the widget under the pointer, and the next notch would change it);
- a wheel event over an unfocused value widget goes to its ancestors instead, as if the widget were not there,
  so the enclosing scroll area scrolls (or the next one out, when that one is at its end).

`install_wheel_guard(app)` is idempotent; kxl_gui.app calls it at start, the main window and the Train tab call it
when they are built, and tests/gui/conftest.py installs it for every GUI test, so a tab built on its own behaves
as it does in the app.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QLineEdit,
    QScrollBar,
    QWidget,
)

GUARD_NAME = "kxlWheelGuard"
VALUE_WIDGETS = (QAbstractSpinBox, QComboBox, QAbstractSlider)
_WHEEL, _POLISH = QEvent.Type.Wheel, QEvent.Type.Polish
_guards: list[QObject] = []  # keeps the Python side of each installed filter alive


def is_value_widget(obj: object) -> bool:
    """A widget whose value the wheel would change: spin boxes, combo boxes, sliders and dials (not scroll bars)."""
    return isinstance(obj, VALUE_WIDGETS) and not isinstance(obj, QScrollBar)


def calm(widget: QWidget) -> None:
    """Focus by click or Tab only: the wheel must not give a value widget focus."""
    if widget.focusPolicy() & Qt.FocusPolicy.WheelFocus == Qt.FocusPolicy.WheelFocus:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)


def _value_widget_of(obj: QObject) -> QWidget | None:
    """The value widget a wheel event on `obj` is for: `obj` itself, or the spin/combo box whose editor it is."""
    if is_value_widget(obj):
        return obj  # type: ignore[return-value]
    if isinstance(obj, QLineEdit):
        parent = obj.parentWidget()
        if isinstance(parent, (QAbstractSpinBox, QComboBox)):
            return parent
    return None


class WheelGuard(QObject):
    """Application event filter; see the module docstring."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(GUARD_NAME)
        self._forwarding = False
        self.forwarded = 0  # wheel events passed on to a panel instead of a value widget (for tests)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        kind = event.type()
        if kind == _WHEEL:
            if self._forwarding:
                return False
            widget = _value_widget_of(watched)
            if widget is None or widget.hasFocus():
                return False
            calm(widget)
            self._forward(widget, event)  # type: ignore[arg-type]
            event.accept()  # handled here: Qt must not also propagate it
            return True
        if kind == _POLISH and is_value_widget(watched):
            calm(watched)  # type: ignore[arg-type]
        return False

    def _forward(self, widget: QWidget, event: QWheelEvent) -> None:
        """Deliver the event to `widget`'s ancestors, innermost first, until one takes it (Qt's own propagation,
        done here because Qt does not propagate a wheel event that a filter consumed, nor a synthesized one)."""
        self._forwarding = True
        try:
            target = widget.parentWidget()
            while target is not None:
                if not is_value_widget(target) and target.isEnabled():
                    pos = target.mapFromGlobal(event.globalPosition())
                    copy = QWheelEvent(pos, event.globalPosition(), event.pixelDelta(), event.angleDelta(),
                                       event.buttons(), event.modifiers(), event.phase(), event.inverted(),
                                       event.source(), event.pointingDevice())  # fmt: skip
                    handled = QApplication.sendEvent(target, copy)
                    if handled and copy.isAccepted():
                        self.forwarded += 1
                        return
                if target.isWindow() or target.testAttribute(Qt.WidgetAttribute.WA_NoMousePropagation):
                    return
                target = target.parentWidget()
        finally:
            self._forwarding = False


def install_wheel_guard(app: QApplication | None = None) -> WheelGuard | None:
    """Install the guard on `app` (default: the running QApplication) once; returns it (None without an app)."""
    app = app or QApplication.instance()
    if app is None:
        return None
    existing = app.findChild(WheelGuard, GUARD_NAME)
    if existing is not None:
        return existing
    guard = WheelGuard(app)
    _guards.append(guard)
    app.installEventFilter(guard)
    for w in QApplication.allWidgets():  # widgets polished before the guard was there
        if is_value_widget(w):
            calm(w)
    return guard


def scroll_areas_around(widget: QWidget) -> list[QAbstractScrollArea]:
    """The scroll areas whose viewport holds `widget`, innermost first."""
    out, child, parent = [], widget, widget.parentWidget()
    while parent is not None:
        if isinstance(parent, QAbstractScrollArea) and child is parent.viewport():
            out.append(parent)
        child, parent = parent, parent.parentWidget()
    return out
