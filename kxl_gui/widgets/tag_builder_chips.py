"""Tag-builder chips for the Generate tab: one editable pill per tag (emphasis 0.5-2.5, popularity badge, remove),
and a field = title + autocompleting entry + wrapped chips.

A chip whose tag the loaded vocabulary lacks (neither the workspace's tags nor the shipped Danbooru list) gets a
visible "unknown" mark with a tooltip and a dashed outline: typed tags are allowed, but a misspelt one should not
pass unnoticed.

Autocompletion queries a shared `TagCompleter` restricted to the field's categories (character field ->
characters, ...). The completer is built in a worker by the tab; until it arrives the entry still accepts typed
tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import QEvent, QObject, QStringListModel, Qt, Signal
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

from ..kit.palette import KIND_COLORS, LEVEL_COLORS
from .caption_chips import FlowLayout
from .generate_prompt import MAX_WEIGHT, MIN_WEIGHT, ChipValue

FIELD_KINDS = {"count": CaptionTagKind.COUNT, "character": CaptionTagKind.CHARACTER,
               "series": CaptionTagKind.SERIES, "artists": CaptionTagKind.ARTIST,
               "general": CaptionTagKind.GENERAL}  # fmt: skip
COMPLETION_LIMIT = 15
UNKNOWN_MARK = "unknown"
UNKNOWN_COLOR = LEVEL_COLORS[PopularityLevel.UNLIKELY]


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
    """One tag: name, emphasis spin box, popularity badge (or the "unknown" mark), remove button."""

    changed = Signal()
    remove_requested = Signal(object)  # self

    def __init__(self, value: ChipValue, color: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.value = value
        self.color = color
        self.setObjectName("tagChip")
        self.suggested = False  # the popularity guidance suggests extra emphasis
        self.unknown = False  # the tag is in no vocabulary the builder has
        self._restyle()
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
        self.badge.setVisible(False)
        lay.addWidget(self.badge)
        remove = QToolButton()
        remove.setText("×")
        remove.setToolTip("remove this tag")
        remove.setAutoRaise(True)
        remove.clicked.connect(lambda: self.remove_requested.emit(self))
        lay.addWidget(remove)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)

    def set_popularity(self, post_count: int | None, looked_up: bool) -> None:
        """Show the tag's post count and emphasis hint; with no count after a lookup (`looked_up`), the
        "unknown" mark. Before the vocabulary has loaded nothing is shown: no tag is known or unknown yet."""
        self.suggested = False
        self.unknown = post_count is None and looked_up
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
        elif self.unknown:
            self.badge.setText(UNKNOWN_MARK)
            self.badge.setStyleSheet(
                f"color: {UNKNOWN_COLOR}; font-size: 8pt; font-weight: 600;"
                f" border: 1px solid {UNKNOWN_COLOR}; border-radius: 6px; padding: 0 4px;"
            )
            self.badge.setToolTip(
                f"'{tag_to_caption_text(self.value.name)}' is in neither the workspace's tag list nor the "
                "Danbooru tag list: check the spelling. The model may not know a tag that is in neither."
            )
        else:
            self.badge.setText("")
            self.badge.setToolTip("")
        self.badge.setVisible(bool(self.badge.text()))
        self._restyle()

    def _restyle(self) -> None:
        # An unknown tag's pill has a dashed outline, so it stands out among the others at a glance.
        border = "dashed" if self.unknown else "solid"
        self.setStyleSheet(
            f"QFrame#tagChip {{ background: {rgba(self.color, 0.14)}; border: 1px {border} {rgba(self.color, 0.6)};"
            " border-radius: 11px; } QFrame#tagChip QLabel { background: transparent; }"
        )

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
        self._count_lookup: Callable[[str], int | None] | None = None
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
        # Installed after QCompleter's own filter, so it sees the popup's keys first (see eventFilter).
        self._completer.popup().installEventFilter(self)

    @property
    def count_lookup(self) -> Callable[[str], int | None] | None:
        """A tag's post count, None for a tag the vocabulary lacks; set by the tab once its vocabulary has
        loaded (None until then: chips show no count and no "unknown" mark)."""
        return self._count_lookup

    @count_lookup.setter
    def count_lookup(self, lookup: Callable[[str], int | None] | None) -> None:
        self._count_lookup = lookup
        for chip in self.chips:  # chips added while the vocabulary was loading
            self._show_popularity(chip)

    def _show_popularity(self, chip: TagChipEditor) -> None:
        lookup = self._count_lookup
        chip.set_popularity(lookup(chip.value.name) if lookup is not None else None, lookup is not None)

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

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """Enter in the open popup before the user has moved into the list adds what was typed (see
        `_tag_for_typed`). QCompleter would take its first row, which for a tag in no list is merely a
        look-alike, so an unknown artist could never be entered."""
        popup = self._completer.popup()
        if (
            watched is popup
            and event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and not popup.selectionModel().hasSelection()
        ):
            popup.hide()
            self._add_typed()
            return True
        return super().eventFilter(watched, event)

    def _on_return(self) -> None:
        if self._completer.popup().isVisible():
            return  # Enter on a highlighted completion: the completer's activation adds it (_on_completion)
        self._add_typed()

    def _add_typed(self) -> None:
        text = self.entry.text().strip()
        if not text:
            return
        self.add_tag(self._tag_for_typed(text))
        self.entry.clear()

    def _tag_for_typed(self, text: str) -> str:
        """What Enter adds for typed text: the top completion when the text is a known name or alias, or the
        start of one ("hatsune mi"); otherwise the text as typed. A name that only resembles known ones (a
        substring, one typo away) stays as typed: unknown tags are allowed, and their chip says they are
        unknown, where replacing them with some other tag would change the prompt behind the user's back."""
        typed = normalize_tag_query(text).rstrip("_")
        if self.fixed_choices:
            names = [n for _, n in self.completions(text)]
            return typed if typed in names or not names else names[0]
        if self.completer_source is None:
            return typed
        from trainer_core.tags.completion import MatchKind  # loaded already: the completer is built

        best = self.completer_source.complete(text, limit=1, categories=self.categories)
        return best[0].tag.name if best and best[0].kind <= MatchKind.WORD_START else typed

    # ---- chips ---------------------------------------------------------------------------------------------
    def values(self) -> list[ChipValue]:
        return [chip.value for chip in self.chips]

    def add_tag(self, name: str, weight: float = 1.0, *, notify: bool = True) -> None:
        if any(chip.value.name == name for chip in self.chips):
            return
        chip = TagChipEditor(ChipValue(name, weight), KIND_COLORS[FIELD_KINDS[self.key]])
        self._show_popularity(chip)
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
