"""House rule: the engine imports and runs without Qt (training boxes and accelerate ranks have no GUI toolkit)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import trainer_core

ROOT = Path(__file__).resolve().parents[2]

BLOCK_QT = """
import importlib.abc, sys
class BlockQt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'PySide6', 'PyQt5', 'PyQt6', 'shiboken6', 'pyqtgraph', 'qtpy'}:
            raise ImportError('Qt is blocked in this test: ' + name)
        return None
sys.meta_path.insert(0, BlockQt())
"""


def _all_engine_modules() -> list[str]:
    names = ["trainer_core"]
    for info in pkgutil.walk_packages(trainer_core.__path__, prefix="trainer_core."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_engine_module_imports_with_qt_blocked():
    modules = _all_engine_modules()
    assert len(modules) > 10
    code = BLOCK_QT + f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_engine_source_never_imports_qt():
    offenders = []
    for path in (ROOT / "trainer_core").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")) and any(
                q in stripped.split()[1] for q in ("PySide6", "PyQt", "pyqtgraph", "qtpy", "kxl_gui")
            ):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == []
