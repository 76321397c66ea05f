"""Bind widgets to the fields of a plain form-state object (kxl_gui/state), in both directions.

    binding = FormBinding(form, parent=self)
    binding.spin(self.seed_spin, "seed")
    binding.check(self.skip_deleted, "skip_deleted")
    binding.edited.connect(self._on_edited)        # a field the user changed (its name)
    ...
    binding.push()                                 # after the form changed in code (a preset): update widgets

No guard flags and no `blockSignals`: a user change writes the widget's value into the form only when it
differs from the field, and `push()` writes a widget only when it differs from the field. A programmatic write
still makes the widget emit its change signal, but the value it reports then equals the field, so nothing is
written back and `edited` stays quiet. Where a field needs more than an assignment (linked weights), the binding
calls the form's own setter instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal, SignalInstance
from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

from .path_row import PathRow


@dataclass
class _Bound:
    field: str
    read: Callable[[], Any]
    write: Callable[[Any], None]
    get: Callable[[Any], Any]  # form -> the bound value
    store: Callable[[Any, Any], None]  # (form, value): set it


class FormBinding(QObject):
    """Keeps widgets and one form object's fields in step; see the module docstring."""

    edited = Signal(str)  # the name of a field the user changed (after the form holds the new value)

    def __init__(self, form: object, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.form = form
        self._bound: list[_Bound] = []

    def set_form(self, form: object) -> None:
        """Replace the whole form (a preset, a loaded file) and show it."""
        self.form = form
        self.push()

    # ---- generic ------------------------------------------------------------------------------------------
    def bind(
        self,
        field: str,
        read: Callable[[], Any],
        write: Callable[[Any], None],
        signal: SignalInstance,
        store: Callable[[Any, Any], None] | None = None,
        get: Callable[[Any], Any] | None = None,
    ) -> None:
        """`read()` the widget's value, `write(value)` it; `signal` fires on a change. By default the value is
        the form's attribute `field`; `get(form)` / `store(form, value)` bind something else (one item of a
        list field) or set it through the form's own method (linked weights)."""
        bound = _Bound(
            field,
            read,
            write,
            get or (lambda form: getattr(form, field)),
            store or (lambda form, value: setattr(form, field, value)),
        )
        self._bound.append(bound)
        signal.connect(lambda *_args: self._from_widget(bound))
        self._to_widget(bound)

    def push(self) -> None:
        """Write every bound widget whose value differs from its field."""
        for bound in self._bound:
            self._to_widget(bound)

    def _from_widget(self, bound: _Bound) -> None:
        value = bound.read()
        if bound.get(self.form) == value:
            return  # an echo of push(), or no change
        bound.store(self.form, value)
        self.edited.emit(bound.field)

    def _to_widget(self, bound: _Bound) -> None:
        value = bound.get(self.form)
        if bound.read() != value:
            bound.write(value)

    # ---- the usual widgets --------------------------------------------------------------------------------
    def line(self, edit: QLineEdit, field: str) -> None:
        """Text as typed (user edits only: `textEdited`)."""
        self.bind(field, edit.text, edit.setText, edit.textEdited)

    def path(self, row: PathRow, field: str) -> None:
        """A PathRow's text (typed or chosen with Browse)."""
        self.bind(field, row.text, row.set_path, row.path_changed)

    def spin(self, spin: QAbstractSpinBox, field: str) -> None:
        self.bind(field, spin.value, spin.setValue, spin.valueChanged)  # type: ignore[attr-defined]

    def check(self, button: QAbstractButton, field: str) -> None:
        self.bind(field, button.isChecked, button.setChecked, button.toggled)

    def combo_data(self, combo: QComboBox, field: str) -> None:
        """The current item's data (user choices only: `activated`)."""
        self.bind(
            field, combo.currentData, lambda v: combo.setCurrentIndex(combo.findData(v)), combo.activated
        )
