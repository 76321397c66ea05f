"""Tag-builder chips for the Generate tab: one editable pill per tag (emphasis 0.5-2.5, popularity badge, remove),
and a field = title + autocompleting entry + wrapped chips.

Autocompletion queries a shared `TagCompleter` restricted to the field's categories (character field ->
characters, ...). The completer is built in a worker by the tab; until it arrives the entry still accepts typed
tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QStringListModel, Signal
from PySide6.QtWidgets import (
    QCompleter,
    QDoubleSpinBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from trainer_core.tags import TagCategory, normalize_tag_query, tag_to_caption_text
from trainer_core.tags.caption_categories import CaptionTagKind
from trainer_core.tags.popularity import PopularityLevel, popularity_guidance

from .generate_prompt import MAX_WEIGHT, MIN_WEIGHT, ChipValue
from .tags_chips import KIND_COLORS, LEVEL_COLORS, FlowLayout

FIELD_KINDS = {"count": CaptionTagKind.COUNT, "character": CaptionTagKind.CHARACTER,
               "series": CaptionTagKind.SERIES, "artists": CaptionTagKind.ARTIST,
               "general": CaptionTagKind.GENERAL}  # fmt: skip
COMPLETION_LIMIT = 15


def rgba(hex_color: str, alpha: float) -> str:
    """`#rrggbb` + alpha as a style-sheet colour (Qt reads 8-digit hex as #AARRGGBB, not #RRGGBBAA)."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {int(alpha * 255)})"


def format_count(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1_000_000:.1f}M"
    if count >= 1000:
        return f"{count / 1000:.0f}k" if count >= 10_000 else f"{count / 1000:.1f}k"
    return str(count)


class TagChipEditor(QFrame):
    """One tag: name, emphasis spin box, popularity badge, remove button."""

    changed = Signal()
    remove_requested = Signal(object)  # self

    def __init__(self, value: ChipValue, color: str, post_count: int | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.value = value
        self.setObjectName("tagChip")
        self.setStyleSheet(
            f"QFrame#tagChip {{ background: {rgba(color, 0.14)}; border: 1px solid {rgba(color, 0.6)};"
            " border-radius: 11px; } QFrame#tagChip QLabel { background: transparent; }"
        )
        lay = QHBoxLayout(self)
        lay.setContentsMargins(9, 1, 3, 1)
        lay.setSpacing(4)
        self.label = QLabel(tag_to_caption_text(value.name))
        self.label.setStyleSheet(f"color: {color};")
        lay.addWidget(self.label)
        self.weight = QDoubleSpinBox()
        self.weight.setRange(MIN_WEIGHT, MAX_WEIGHT)
        self.weight.setSingleStep(0.1)
        self.weight.setDecimals(2)
        self.weight.setValue(value.weight)
        self.weight.setFixedWidth(62)
        self.weight.setToolTip("emphasis: written as (tag:weight); the card suggests 1.5-2.5 for rare tags")
        self.weight.valueChanged.connect(self._on_weight)
        lay.addWidget(self.weight)
        self.badge = QLabel("")
        if post_count is not None:
            guidance = popularity_guidance(post_count)
            text = format_count(post_count)
            if guidance.emphasis is not None:
                low, high = guidance.emphasis
                text += f" · try {low:g}-{high:g}"
            self.badge.setText(text)
            self.badge.setStyleSheet(f"color: {LEVEL_COLORS[guidance.level]}; font-size: 8pt;")
            self.badge.setToolTip(f"{post_count:,} posts: {guidance.label}")
            self.suggested = guidance.level == PopularityLevel.MAY_WORK
        else:
            self.suggested = False
        self.badge.setVisible(post_count is not None)
        lay.addWidget(self.badge)
        remove = QToolButton()
        remove.setText("×")
        remove.setToolTip("remove this tag")
        remove.setAutoRaise(True)
        remove.clicked.connect(lambda: self.remove_requested.emit(self))
        lay.addWidget(remove)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

    def _on_weight(self, value: float) -> None:
        self.value.weight = round(value, 2)
        self.changed.emit()


class ChipField(QWidget):
    """A titled tag field: entry with category-filtered autocompletion, chips below."""

    changed = Signal()

    def __init__(
        self,
        key: str,
        title: str,
        categories: Sequence[TagCategory] | None,
        fixed_choices: Sequence[str] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("chipField")
        # The app style paints every QWidget dark; these containers sit on a card and must let it show through.
        self.setStyleSheet("QWidget#chipField, QWidget#chipBox { background: transparent; }")
        self.key = key
        self.categories = tuple(categories) if categories else None
        self.fixed_choices = tuple(fixed_choices)
        self.completer_source = None  # trainer_core TagCompleter, set by the tab once built
        self.count_lookup: Callable[[str], int | None] = lambda _name: None
        self.chips: list[TagChipEditor] = []
        self._display_to_name: dict[str, str] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(4)
        row = QHBoxLayout()
        label = QLabel(title)
        label.setMinimumWidth(84)
        label.setStyleSheet(f"color: {KIND_COLORS[FIELD_KINDS[key]]}; font-weight: 600;")
        row.addWidget(label)
        self.entry = QLineEdit()
        self.entry.setPlaceholderText(
            "type to search, Enter to add" if not fixed_choices else ", ".join(fixed_choices[:4]) + ", ..."
        )
        self.entry.setClearButtonEnabled(True)
        row.addWidget(self.entry, 1)
        outer.addLayout(row)
        self.chip_box = QWidget()
        self.chip_box.setObjectName("chipBox")
        sp = QSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        sp.setHeightForWidth(True)
        self.chip_box.setSizePolicy(sp)
        self.flow = FlowLayout(self.chip_box, spacing=5)
        self.chip_box.setContentsMargins(88, 0, 0, 0)
        outer.addWidget(self.chip_box)
        self.chip_box.hide()
        self._model = QStringListModel(self)
        self._completer = QCompleter(self._model, self)
        self._completer.setCompletionMode(QCompleter.CompletionMode.UnfilteredPopupCompletion)
        self._completer.setMaxVisibleItems(12)
        self.entry.setCompleter(self._completer)
        self._completer.activated.connect(self._on_completion)
        self.entry.textEdited.connect(self._refresh_completions)
        self.entry.returnPressed.connect(self._on_return)

    # ---- completion ----------------------------------------------------------------------------------------
    def completions(self, text: str) -> list[tuple[str, str]]:
        """(display, raw name) pairs for what the user typed."""
        query = text.strip()
        if not query:
            return []
        if self.fixed_choices:
            q = normalize_tag_query(query)
            return [(tag_to_caption_text(c), c) for c in self.fixed_choices if q in c]
        if self.completer_source is None:
            return []
        out = []
        for c in self.completer_source.complete(query, limit=COMPLETION_LIMIT, categories=self.categories):
            out.append((f"{c.display}   ({format_count(c.tag.count)})", c.tag.name))
        return out

    def _refresh_completions(self, text: str) -> None:
        pairs = self.completions(text)
        self._display_to_name = dict(pairs)
        self._model.setStringList([d for d, _ in pairs])
        if pairs:
            self._completer.complete()

    def _on_completion(self, display: str) -> None:
        name = self._display_to_name.get(display)
        if name:
            self.add_tag(name)
        # QCompleter writes the display text into the entry after this slot; clear once it has.
        self.entry.clear()
        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, self.entry.clear)

    def _on_return(self) -> None:
        if self._completer.popup().isVisible():
            return  # the completer's activation handles it
        text = self.entry.text().strip()
        if not text:
            return
        pairs = self.completions(text)
        typed = normalize_tag_query(text).rstrip("_")
        names = [n for _, n in pairs]
        # Prefer an exact completion (alias resolved), else take the text as typed: unknown tags are allowed.
        self.add_tag(typed if typed in names or not names else names[0])
        self.entry.clear()

    # ---- chips ---------------------------------------------------------------------------------------------
    def values(self) -> list[ChipValue]:
        return [chip.value for chip in self.chips]

    def add_tag(self, name: str, weight: float = 1.0, *, notify: bool = True) -> None:
        if any(chip.value.name == name for chip in self.chips):
            return
        chip = TagChipEditor(
            ChipValue(name, weight), KIND_COLORS[FIELD_KINDS[self.key]], self.count_lookup(name)
        )
        chip.changed.connect(self.changed)
        chip.remove_requested.connect(self._remove)
        self.chips.append(chip)
        self.flow.addWidget(chip)
        self.chip_box.show()
        self.chip_box.updateGeometry()
        if notify:
            self.changed.emit()

    def set_values(self, values: Sequence[ChipValue]) -> None:
        """Replace the chips without emitting `changed` (used when the prompt text flows back)."""
        for chip in list(self.chips):
            self._drop(chip)
        for value in values:
            self.add_tag(value.name, value.weight, notify=False)

    def _remove(self, chip: TagChipEditor) -> None:
        self._drop(chip)
        self.changed.emit()

    def _drop(self, chip: TagChipEditor) -> None:
        self.chips.remove(chip)
        self.flow.removeWidget(chip)
        chip.setParent(None)
        chip.deleteLater()
        self.chip_box.setVisible(bool(self.chips))
        self.chip_box.updateGeometry()
