"""State shared by every page: the open workspace and the settings, with a signal when the workspace changes.

Pages receive the context instead of reaching into the main window, so a new tab only needs
`window.register_tab(SomeTab(window.context), "Title")` and a slot on `workspace_changed`.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from trainer_core.workspace import Workspace

from .settings import AppSettings


class AppContext(QObject):
    workspace_changed = Signal(object)  # Workspace
    status_message = Signal(str)  # one line for the main window's status bar
    # Cross-tab hand-offs ("open this LoKr in Generate", "use this merge as the training base"): a tab emits
    # `request(action, payload)`; the tab that owns the action (documented next to its handler, e.g.
    # "generate.add_lokr" with a Path) listens. Tabs never import each other.
    requested = Signal(str, object)
    activate_tab_requested = Signal(str)  # tab title
    # A dataset folder (Path) the Dataset wizard has just written; tabs that show "the current dataset" (Tags)
    # pick it up when they have none open. Opening it on purpose is the "tags.open_dataset" request.
    dataset_built = Signal(object)

    def __init__(self, settings: AppSettings | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings or AppSettings()
        self.workspace: Workspace | None = None

    def set_workspace(self, ws: Workspace) -> None:
        self.workspace = ws
        self.settings.last_workspace = ws.root
        self.workspace_changed.emit(ws)

    def show_status(self, text: str) -> None:
        self.status_message.emit(text)

    def announce_dataset(self, path: Path) -> None:
        """Tell every tab that a dataset was just built at `path` (the Dataset wizard calls this)."""
        self.dataset_built.emit(Path(path))

    def request(self, action: str, payload: object = None, *, switch_to: str | None = None) -> None:
        """Ask another tab to act; optionally bring the tab titled `switch_to` to the front."""
        self.requested.emit(action, payload)
        if switch_to:
            self.activate_tab_requested.emit(switch_to)
