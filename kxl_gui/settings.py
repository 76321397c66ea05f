"""Persistent GUI settings (last workspace, window geometry) in an INI file under the user data dir.

An explicit file path instead of QSettings' native store keeps every setting in the app's own folder, which
`KXL_DATA_DIR` moves: tests and portable installs never touch the real registry or ~/.config.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from trainer_core.paths import user_data_dir

SETTINGS_FILE = "gui-settings.ini"
MAX_RECENT = 8


def settings_path() -> Path:
    return user_data_dir() / SETTINGS_FILE


class AppSettings:
    """Typed accessors over one QSettings INI file; every setter syncs so a crash loses nothing."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or settings_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._qs = QSettings(str(self.path), QSettings.Format.IniFormat)

    @property
    def last_workspace(self) -> Path | None:
        value = self._qs.value("workspace/last", "")
        return Path(str(value)) if value else None

    @last_workspace.setter
    def last_workspace(self, path: Path | None) -> None:
        if path is None:
            self._qs.remove("workspace/last")
        else:
            self._qs.setValue("workspace/last", str(path))
            recent = [p for p in self.recent_workspaces() if p != Path(path)]
            self._qs.setValue("workspace/recent", [str(p) for p in [Path(path), *recent][:MAX_RECENT]])
        self._qs.sync()

    def recent_workspaces(self) -> list[Path]:
        value = self._qs.value("workspace/recent", [])
        if isinstance(value, str):  # QSettings returns a bare string for one-element lists in INI files
            value = [value]
        return [Path(str(v)) for v in value or [] if v]

    def window_geometry(self) -> QByteArray | None:
        value = self._qs.value("window/geometry")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        value = self._qs.value("window/state")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._qs.setValue("window/geometry", geometry)
        self._qs.setValue("window/state", state)
        self._qs.sync()

    def value(self, key: str, default: object = None) -> object:
        return self._qs.value(key, default)

    def set_value(self, key: str, value: object) -> None:
        self._qs.setValue(key, value)
        self._qs.sync()
