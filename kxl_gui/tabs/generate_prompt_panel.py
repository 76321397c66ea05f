"""The Generate tab's left column: the tag builder (chips in the Kohaku XL card's order), the A1111 prompt text
with its token counter, and the negative prompt with presets.

The prompt and negative texts are fields of the tab's `GenerationForm` (bound with `FormBinding`). Chips and text
stay in step through `shown`, the builder's own state (a `PromptFields`): a chip field or special combo that
differs from it rewrites the text; a typed text that differs from what the chips make flows back into them once
the user pauses. Each side compares values with `shown` before acting, so one side updating the other never
loops back (no guard flags).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QVBoxLayout, QWidget

from trainer_core.generate.prompt import strip_extra_networks

from ..kit.card import Card
from ..kit.form_binding import FormBinding
from ..state.generate_form import NEGATIVE_PRESETS, negative_preset_of
from ..widgets.generate_prompt import (
    CHIP_FIELDS,
    COUNT_CHOICES,
    FIELD_CATEGORIES,
    FIELD_TITLES,
    SPECIAL_CHOICES,
    PromptFields,
    fields_from_text,
)
from ..widgets.tag_builder_chips import ChipField

REPARSE_DELAY_MS = 250  # typing pauses this long before the text flows back into the chips
CUSTOM_NEGATIVE = "(custom)"


class PromptPanel(QWidget):
    def __init__(
        self, binding: FormBinding, emphasis: Callable[[], str], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.binding = binding
        self.emphasis = emphasis  # the form's emphasis mode: the token counter counts with it
        self.vocabulary = None
        self.tokenizer = None
        self.shown = PromptFields()  # what the chips and special combos show
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 6, 0)
        lay.addWidget(self._build_builder())
        lay.addWidget(self._build_prompt())
        lay.addWidget(self._build_negative())
        lay.addStretch(1)
        self._reparse_timer = QTimer(self)
        self._reparse_timer.setSingleShot(True)
        self._reparse_timer.setInterval(REPARSE_DELAY_MS)
        self._reparse_timer.timeout.connect(self.flow_text_back)
        binding.bind("prompt", self.prompt_edit.toPlainText, self.prompt_edit.setPlainText,
                     self.prompt_edit.textChanged)  # fmt: skip
        binding.bind("negative", self.negative_edit.toPlainText, self.negative_edit.setPlainText,
                     self.negative_edit.textChanged)  # fmt: skip
        self.prompt_edit.textChanged.connect(self._on_prompt_text)
        self.negative_edit.textChanged.connect(self._on_negative_text)
        self._on_negative_text()

    # ---- layout -------------------------------------------------------------------------------------------
    def _build_builder(self) -> Card:
        builder = Card(
            "Tag builder", "count, character, series, artists, special tags, general tags: the card's order"
        )
        self.fields: dict[str, ChipField] = {}
        for key in CHIP_FIELDS:
            fixed = COUNT_CHOICES if key == "count" else ()
            field = ChipField(key, FIELD_TITLES[key], FIELD_CATEGORIES[key], fixed)
            field.changed.connect(lambda key=key: self._on_chip_field(key))
            self.fields[key] = field
            if key == "general":
                builder.body.addLayout(self._special_row())
            builder.body.addWidget(field)
        return builder

    def _special_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        label = QLabel("Special")
        label.setMinimumWidth(84)
        label.setStyleSheet("color: #e0a33a; font-weight: 600;")
        row.addWidget(label)
        self.special: dict[str, QComboBox] = {}
        for key, choices in SPECIAL_CHOICES.items():
            combo = QComboBox()
            combo.addItem(f"({key})", "")
            for choice in choices[1:]:
                combo.addItem(choice.replace("_", " "), choice)
            combo.setToolTip(f"{key} tag from the card")
            combo.currentIndexChanged.connect(lambda _index, key=key: self._on_special(key))
            self.special[key] = combo
            row.addWidget(combo, 1)
        return row

    def _build_prompt(self) -> Card:
        card = Card(
            "Prompt", "A1111 syntax: (tag:1.5), [tag], BREAK. Edit freely; edits that parse flow back"
        )
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText("1girl, solo, masterpiece, ...")
        self.prompt_edit.setFixedHeight(96)
        card.body.addWidget(self.prompt_edit)
        row = QHBoxLayout()
        self.sync_label = QLabel("")
        self.sync_label.setObjectName("muted")
        self.sync_label.setWordWrap(True)
        self.token_label = QLabel("tokens: …")
        self.token_label.setObjectName("muted")
        row.addWidget(self.sync_label, 1)
        row.addWidget(self.token_label)
        card.body.addLayout(row)
        return card

    def _build_negative(self) -> Card:
        card = Card("Negative prompt")
        preset_row = QHBoxLayout()
        preset_row.addWidget(QLabel("Preset"))
        self.negative_preset = QComboBox()
        self.negative_preset.addItem(CUSTOM_NEGATIVE)
        self.negative_preset.addItems(list(NEGATIVE_PRESETS))
        # `activated`: the user's choice only; the combo also follows the text (see _on_negative_text).
        self.negative_preset.activated.connect(self._apply_negative_preset)
        preset_row.addWidget(self.negative_preset, 1)
        card.body.addLayout(preset_row)
        self.negative_edit = QPlainTextEdit()
        self.negative_edit.setFixedHeight(64)
        self.negative_edit.setPlaceholderText("empty = zero conditioning (A1111 behaviour)")
        card.body.addWidget(self.negative_edit)
        self.negative_tokens = QLabel("")
        self.negative_tokens.setObjectName("muted")
        self.negative_tokens.setAlignment(Qt.AlignmentFlag.AlignRight)
        card.body.addWidget(self.negative_tokens)
        return card

    # ---- vocabulary and tokenizer (loaded by the tab in workers) ------------------------------------------
    def set_vocabulary(self, vocabulary, completer) -> None:
        self.vocabulary = vocabulary
        for field in self.fields.values():
            field.completer_source = completer
            field.count_lookup = self._post_count

    def _post_count(self, name: str) -> int | None:
        tag = self.vocabulary.get(name) if self.vocabulary is not None else None
        return tag.count if tag is not None else None

    def set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.update_token_counts()

    # ---- chips <-> text -----------------------------------------------------------------------------------
    def prompt_fields(self) -> PromptFields:
        """What the chips and special combos show now."""
        fields = PromptFields()
        for key, field in self.fields.items():
            fields.chips[key] = [dataclasses.replace(value) for value in field.values()]
        for key, combo in self.special.items():
            fields.special[key] = combo.currentData() or ""
        return fields

    def _on_chip_field(self, key: str) -> None:
        values = [dataclasses.replace(value) for value in self.fields[key].values()]
        if values != self.shown.chips[key]:  # the user added, removed or re-weighted a chip
            self.shown.chips[key] = values
            self._write_text_from_chips()

    def _on_special(self, key: str) -> None:
        value = self.special[key].currentData() or ""
        if value != self.shown.special[key]:
            self.shown.special[key] = value
            self._write_text_from_chips()

    def _write_text_from_chips(self) -> None:
        self.prompt_edit.setPlainText(self.shown.to_text())
        self.sync_label.setText("")

    def _on_prompt_text(self) -> None:
        self.update_token_counts()
        if (
            self.prompt_edit.toPlainText() != self.shown.to_text()
        ):  # typed (or restored), not made by the chips
            self._reparse_timer.start()

    def flow_text_back(self) -> None:
        """Show the prompt text as chips, when it can be; the text itself stays as typed."""
        self._reparse_timer.stop()
        fields = fields_from_text(self.prompt_edit.toPlainText(), self.vocabulary, self.shown)
        if fields is None:
            self.sync_label.setText("text only: this prompt cannot be shown as chips")
            return
        self.shown = fields
        for key, field in self.fields.items():
            field.set_values(fields.chips[key])
        for key, combo in self.special.items():
            combo.setCurrentIndex(max(0, combo.findData(fields.special[key])))
        self.sync_label.setText("chips updated from the text")

    # ---- negative -----------------------------------------------------------------------------------------
    def _apply_negative_preset(self, index: int) -> None:
        name = self.negative_preset.itemText(index)
        if name in NEGATIVE_PRESETS:
            self.negative_edit.setPlainText(NEGATIVE_PRESETS[name])

    def _on_negative_text(self) -> None:
        # The preset combo names the preset this text is, or "(custom)" once the user edits it.
        name = negative_preset_of(self.negative_edit.toPlainText()) or CUSTOM_NEGATIVE
        self.negative_preset.setCurrentIndex(max(0, self.negative_preset.findText(name)))
        self.update_token_counts()

    # ---- token counter ------------------------------------------------------------------------------------
    def update_token_counts(self) -> None:
        if self.tokenizer is None:
            return
        text = self.prompt_edit.toPlainText()
        self.token_label.setText(self._counter(text))
        self.token_label.setToolTip(_syntax_error(text))
        self.negative_tokens.setText(self._counter(self.negative_edit.toPlainText()))

    def _counter(self, text: str) -> str:
        from trainer_core.generate.prompt import PromptSyntaxError, tokenize_prompt

        try:
            chunks = tokenize_prompt(strip_extra_networks(text)[0], self.tokenizer, emphasis=self.emphasis())
        except PromptSyntaxError as exc:
            where = f" at character {exc.position + 1}" if exc.position is not None else ""
            return f"⚠ syntax error{where}"
        per_chunk = [ids.index(chunks.eos_id) - 1 for ids in chunks.chunks]
        detail = " + ".join(f"{n}/75" for n in per_chunk) if len(per_chunk) > 1 else ""
        return f"tokens {chunks.counter_text()}" + (f"  ({detail})" if detail else "")


def _syntax_error(text: str) -> str:
    from trainer_core.generate.prompt import PromptSyntaxError, parse_prompt_attention

    try:
        parse_prompt_attention(strip_extra_networks(text)[0])
    except PromptSyntaxError as exc:
        return str(exc)
    return "tokens used / next multiple of 75 (one CLIP chunk holds 75 tokens)"
