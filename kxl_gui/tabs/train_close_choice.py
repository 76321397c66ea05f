"""The question the Train tab asks when the window closes on a live run: stop it, leave it running, or stay."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget


def ask_close_choice(parent: QWidget, run_name: str) -> str:
    """ "stop" | "leave" | "cancel": what to do with a live run when the window closes."""
    box = QMessageBox(parent)
    box.setWindowTitle("Training is running")
    box.setText(f"The run <b>{run_name}</b> is still training.")
    box.setInformativeText("Stop it (it saves its state first), or leave it running and reattach later from the "
                           "runs list?")  # fmt: skip
    stop = box.addButton("Stop training", QMessageBox.ButtonRole.DestructiveRole)
    leave = box.addButton("Leave running", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    return "stop" if clicked is stop else "leave" if clicked is leave else "cancel"
