"""The main window: one tab per page, menus, a status bar, and window state that survives restarts.

Tabs are discovered: every module in `kxl_gui/tabs/` with `TAB_TITLE`, `TAB_ORDER` and `create_tab(context)`
becomes a tab after the Workspace page, sorted by TAB_ORDER (see kxl_gui/tabs/__init__.py).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShowEvent
from PySide6.QtWidgets import QFrame, QLabel, QMainWindow, QScrollArea, QTabWidget, QWidget

import trainer_core
from trainer_core.paths import user_data_dir

from .context import AppContext
from .dialogs import show_info
from .jobs import cancel_all
from .pages.workspace_page import WorkspacePage
from .tabs import discover_tabs
from .widgets.wheel_guard import install_wheel_guard

DEFAULT_SIZE = (1180, 780)


class MainWindow(QMainWindow):
    first_exposed = Signal()  # the window is on screen for the first time (startup benchmark hook)

    def __init__(self, context: AppContext | None = None) -> None:
        super().__init__()
        install_wheel_guard()  # idempotent; also covers a window built without kxl_gui.app (tests, embedding)
        self.context = context or AppContext()
        self.setWindowTitle(trainer_core.APP_NAME)
        self.setObjectName("mainWindow")
        self._exposed = False

        self.tabs = QTabWidget()
        self.tabs.setObjectName("mainTabs")
        self.tabs.setDocumentMode(True)
        self.setCentralWidget(self.tabs)

        self.workspace_label = QLabel("No workspace")
        self.workspace_label.setObjectName("statusWorkspace")
        self.statusBar().addPermanentWidget(self.workspace_label)
        self.context.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.context.workspace_changed.connect(self._on_workspace_changed)

        self._register_pages()
        self._build_menus()
        self._restore_window()

    def _register_pages(self) -> None:
        self.workspace_page = self.register_tab(WorkspacePage(self.context), "Workspace")
        self.tab_pages: dict[str, QWidget] = {}
        for module in discover_tabs():
            self.tab_pages[module.TAB_TITLE] = self.register_tab(
                module.create_tab(self.context), module.TAB_TITLE
            )
        self.context.activate_tab_requested.connect(self.activate_tab)

    def activate_tab(self, title: str) -> None:
        for i in range(self.tabs.count()):
            if self.tabs.tabText(i) == title:
                self.tabs.setCurrentIndex(i)
                return

    def register_tab(self, widget: QWidget, title: str) -> QWidget:
        """Add a page as a tab (in call order) and return it, so registration stays a one-liner.

        Each page sits in a scroll area: a dense page (the dataset wizard) must not force a minimum window size
        on a laptop screen; below its natural size it scrolls instead.
        """
        scroller = QScrollArea()
        scroller.setObjectName("tabScroller")
        scroller.setWidgetResizable(True)
        scroller.setFrameShape(QFrame.Shape.NoFrame)
        scroller.setWidget(widget)
        self.tabs.addTab(scroller, title)
        return widget

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open workspace…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self.workspace_page.choose_workspace)
        self.demo_action = QAction("&Recreate demo workspace", self)
        self.demo_action.triggered.connect(lambda: self.workspace_page.recreate_demo(confirm=True))
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.demo_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)

        help_menu = self.menuBar().addMenu("&Help")
        about_action = QAction("&About", self)
        about_action.triggered.connect(self.show_about)
        help_menu.addAction(about_action)

    def show_about(self) -> None:
        data = user_data_dir()
        show_info(
            self,
            f"About {trainer_core.APP_NAME}",
            f"<b>{trainer_core.APP_NAME}</b> {trainer_core.__version__}<br><br>"
            "Reproduce the Kohaku XL Delta recipe: dataset, tags, merge, LoKr training, generation.<br><br>"
            f"User data: {data}<br>Log file: {data / 'logs' / 'gui.log'}",
        )

    def _on_workspace_changed(self, ws) -> None:
        self.workspace_label.setText(f"{ws.name} — {ws.root}")
        self.setWindowTitle(f"{ws.name} — {trainer_core.APP_NAME}")

    # ---- window state -------------------------------------------------------------------------------------
    def _restore_window(self) -> None:
        geometry = self.context.settings.window_geometry()
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(*DEFAULT_SIZE)
        state = self.context.settings.window_state()
        if state is not None:
            self.restoreState(state)

    def save_window_state(self) -> None:
        self.context.settings.save_window(self.saveGeometry(), self.saveState())

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        # A tab with something live (a training run) may ask first; `confirm_close() -> bool`, False keeps the window.
        for page in self.tab_pages.values():
            confirm = getattr(page, "confirm_close", None)
            if confirm is not None and not confirm():
                event.ignore()
                return
        self.save_window_state()
        cancel_all(wait_s=2.0)
        super().closeEvent(event)

    # ---- first expose: the moment the user sees the window --------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        handle = self.windowHandle()
        if handle is not None and not self._exposed:
            handle.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if (
            not self._exposed
            and event.type() == QEvent.Type.Expose
            and watched is self.windowHandle()
            and self.windowHandle().isExposed()
        ):
            self._exposed = True
            watched.removeEventFilter(self)
            self.first_exposed.emit()
        return super().eventFilter(watched, event)
