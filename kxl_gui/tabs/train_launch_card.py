"""Train tab's Launch card: the exact command the Launch button runs, copyable for a shell or another machine."""

from __future__ import annotations

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QPlainTextEdit, QPushButton

from ..kit.card import Card


class LaunchCard(Card):
    def __init__(self) -> None:
        super().__init__(
            "Launch", "The exact command the button runs (copy it to run the same training from a shell):"
        )
        self.command_box = QPlainTextEdit()
        self.command_box.setObjectName("commandBox")
        self.command_box.setReadOnly(True)
        self.command_box.setFixedHeight(92)
        self.body.addWidget(self.command_box)
        row = QHBoxLayout()
        self.copy_button = QPushButton("Copy command")
        self.copy_button.clicked.connect(self.copy_command)
        self.launch_button = QPushButton("Launch training")
        self.launch_button.setObjectName("primaryButton")
        row.addWidget(self.copy_button)
        row.addStretch(1)
        row.addWidget(self.launch_button)
        self.body.addLayout(row)

    def copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command_box.toPlainText())
