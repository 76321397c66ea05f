"""The Train tab's Pre-flight card: the checks `trainer_core.train.runs.preflight` ran on the form's config
(paths, images, memory per process, free disk), one line per check with its level."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from trainer_core.train.runs import PreflightReport, format_gib

from ..kit.card import Card

MARKS = {"ok": "✓", "warning": "⚠", "error": "✕"}


class PreflightCard(Card):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Pre-flight", parent=parent)
        self.items = QVBoxLayout()
        self.items.setSpacing(3)
        self.body.addLayout(self.items)

    def show_report(self, report: PreflightReport | None, error: str | None = None) -> None:
        """The report's items, or one error line (the form holds a value the engine refuses)."""
        while self.items.count():
            item = self.items.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        lines = (
            [("error", error)] if error else [(i.level, i.message) for i in (report.items if report else [])]
        )
        for level, text in lines:
            label = QLabel(f"{MARKS[level]}  {text}")
            label.setObjectName("preflightItem")
            label.setProperty("level", level)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.items.addWidget(label)
        memory = report.memory if report is not None else None
        self.set_subtitle(
            f"Estimated memory per process: {format_gib(memory.total)}" if memory is not None else ""
        )

    def lines(self) -> list[str]:
        return [w.text() for w in self.findChildren(QLabel, "preflightItem") if not w.isHidden()]
