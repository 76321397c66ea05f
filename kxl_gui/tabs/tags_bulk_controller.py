"""The Tags tab's bulk edit: the preview of what the edit in the form would change, the edit and its Undo.

The panel (widgets/tags_bulk_edit.py) collects input and shows results; this controller counts the preview from
the index (postings only: instant, GUI thread) and runs the edit and the undo in `Job`s, so no caption file is
touched on the GUI thread. After either, the tab re-reads the dataset so chips, counts, the undo state and the
statistics follow the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainer_core.errors import KxlError
from trainer_core.tags.bulk_edit import edit_dataset, preview_bulk_edit
from trainer_core.tags.edit_journal import JournalInfo, undo_last

from ..jobs import Job
from .tags_jobs import with_journal

if TYPE_CHECKING:
    from .tags import TagsTab


class BulkEditController:
    def __init__(self, tab: TagsTab) -> None:
        self.tab = tab
        self.panel = tab.bulk
        self.job: Job | None = None  # the running edit or undo
        self.panel.inputs_changed.connect(self.update_preview)
        self.panel.apply_requested.connect(self.apply)
        self.panel.cancel_requested.connect(self.cancel)
        self.panel.undo_requested.connect(self.undo)
        tab.undo_shortcut.activated.connect(self.undo)

    def scope_entries(self, scope: str) -> np.ndarray | None:
        if scope == "selected":
            return self.tab.selected_entries()
        if scope == "filter":
            return self.tab.model.rows.copy()
        return None  # the whole dataset

    def update_scope(self) -> None:
        tab = self.tab
        total = len(tab.index) if tab.index is not None else 0
        self.panel.set_scope_counts(len(tab.selected_entries()), tab.model.rowCount(), total)
        self.update_preview()

    def _form_edit(self) -> tuple[bool, object]:
        """(input ok, the edit the form describes or None); bad input is said in the form, which then keeps that
        message."""
        try:
            return True, self.panel.edit()
        except KxlError as exc:
            self.panel.bad_input(exc)
            return False, None

    def update_preview(self) -> None:
        """Recount what the edit in the form would change."""
        index = self.tab.index
        if index is None:
            self.panel.show_preview(None)
            return
        ok, edit = self._form_edit()
        if not ok:
            return
        if edit is None:
            self.panel.show_preview(None)
            return
        self.panel.show_preview(preview_bulk_edit(index, edit, self.scope_entries(self.panel.scope())))

    def apply(self) -> None:
        index = self.tab.index
        if index is None or self.job is not None:
            return
        _ok, edit = self._form_edit()
        if edit is None:
            return
        entries = self.scope_entries(self.panel.scope())
        self._start(
            Job(
                lambda p: with_journal(index.root, edit_dataset(index, edit, entries, p)),
                name="Bulk tag edit",
            ),
            f"Applying: {edit.describe()}…",
            "Cancelled: the captions already written stay edited; Undo reverts them.",
        )

    def undo(self) -> None:
        index = self.tab.index
        if index is None or self.job is not None or self.panel.undo_info is None:
            return
        root: Path = index.root
        self._start(
            Job(lambda p: with_journal(root, undo_last(root, p)), name="Undo tag edit"),
            "Undoing…",
            "Undo cancelled: the files already restored stay restored; Undo again finishes it.",
        )

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _start(self, job: Job, what: str, cancelled_text: str) -> None:
        job.setParent(self.tab)
        self.job = job
        self.panel.set_busy(True, what)
        job.cancelled.connect(lambda: self._ended("cancelled", cancelled_text))
        self.tab.run_job(
            job,
            lambda result: self._ended("ok", result[0].describe(), result[1]),
            lambda message: self._ended("failed", message),
        )

    def _ended(self, outcome: str, text: str, journal: JournalInfo | None = None) -> None:
        self.job = None
        if outcome == "ok":
            self.panel.set_undo(journal)  # read by the job; after a cancel or failure the re-read below tells
        self.panel.set_busy(False)
        self.panel.show_result(text if outcome != "failed" else "")
        if outcome == "failed":
            self.panel.show_preview(None, text)
        else:
            self.tab.context.show_status(f"Tags: {text}")
        if self.tab.index is not None:
            self.tab.open_dataset(self.tab.index.root, keep_view=True)
        self.tab.bulk_edit_finished.emit(outcome)
