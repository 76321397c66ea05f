"""GUI tests run with the app's input behaviour: the wheel guard (kxl_gui.widgets.wheel_guard) is installed on the
test QApplication once, as kxl_gui.app does at start, so a tab built on its own reacts to the wheel as in the app."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _app_wheel_guard(qapp):
    from kxl_gui.widgets.wheel_guard import install_wheel_guard

    install_wheel_guard(qapp)


@pytest.fixture
def opened_urls():
    """What the app asks the desktop to open (file URLs), collected instead of starting a file manager."""
    from PySide6.QtGui import QDesktopServices
    from user_input import OpenedUrls

    receiver = OpenedUrls()
    QDesktopServices.setUrlHandler("file", receiver, "open")
    yield receiver
    QDesktopServices.unsetUrlHandler("file")
