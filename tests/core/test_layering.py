"""Layering contracts: the engine imports and runs without Qt (training boxes and accelerate ranks have no GUI
toolkit) and never reaches into the GUI; the GUI's form state (kxl_gui/state) is plain Python, testable without
Qt. Checked twice: by importing with Qt blocked, and by reading every import statement (function-level imports
and `importlib.import_module("...")` calls included), so a lazy import inside a function cannot slip through."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import trainer_core

ROOT = Path(__file__).resolve().parents[2]

QT_PACKAGES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "qtpy")
BLOCK_QT = """
import importlib.abc, sys
class BlockQt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('blocked in this test: ' + name)
        return None
sys.meta_path.insert(0, BlockQt())
"""


def _blocking(*packages: str) -> str:
    return f"BLOCKED = {set(packages)!r}\n" + BLOCK_QT


def imported_names(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file: import statements anywhere (also inside functions) and
    `importlib.import_module` / `__import__` calls with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = path.relative_to(root).with_suffix("").parts[: -node.level]
                if node.module:
                    out.append((node.lineno, ".".join((*package, node.module))))
                else:  # `from .. import x`: x is a module of that package
                    out += [(node.lineno, ".".join((*package, a.name))) for a in node.names]
            elif node.module:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
    return out


def offending_imports(folder: Path, forbidden: tuple[str, ...] = (*QT_PACKAGES, "kxl_gui")) -> list[str]:
    offenders = []
    for path in sorted(folder.rglob("*.py")):
        offenders += offending_imports_in(path, ROOT, forbidden)
    return offenders


def offending_imports_in(
    path: Path, root: Path, forbidden: tuple[str, ...] = (*QT_PACKAGES, "kxl_gui")
) -> list[str]:
    return [f"{path.relative_to(root)}:{line}: imports {name}"
            for line, name in imported_names(path, root) if name.split(".")[0] in forbidden]  # fmt: skip


def _all_engine_modules() -> list[str]:
    names = ["trainer_core"]
    for info in pkgutil.walk_packages(trainer_core.__path__, prefix="trainer_core."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_every_engine_module_imports_with_qt_blocked():
    modules = _all_engine_modules()
    assert len(modules) > 10
    code = (
        _blocking(*QT_PACKAGES, "kxl_gui")
        + f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_engine_source_never_imports_qt_or_the_gui():
    assert offending_imports(ROOT / "trainer_core", (*QT_PACKAGES, "kxl_gui")) == []


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    """The AST check must catch what a line-prefix check misses, or the test above proves nothing."""
    probe = tmp_path / "trainer_core" / "probe.py"
    probe.parent.mkdir()
    probe.write_text(
        "import os\n"
        "def f():\n"
        "    from PySide6.QtCore import QObject\n"
        "    import importlib\n"
        "    importlib.import_module('kxl_gui.app')\n"
        "from .. import kxl_gui\n",
        encoding="utf-8",
    )
    names = sorted(imported_names(probe, root=tmp_path))
    assert [n for _, n in names] == ["os", "PySide6.QtCore", "importlib", "kxl_gui.app", "kxl_gui"]
    assert len(offending_imports_in(probe, tmp_path)) == 3


def test_gui_form_state_never_imports_qt():
    state = ROOT / "kxl_gui" / "state"
    assert (state / "dataset_form.py").is_file() and (state / "merge_form.py").is_file()
    assert offending_imports(state, QT_PACKAGES) == []
    # and importing every state module with Qt blocked works (what they import does not pull Qt in either)
    modules = ["kxl_gui.state." + p.stem for p in sorted(state.glob("*.py")) if p.stem != "__init__"]
    code = (
        _blocking(*QT_PACKAGES) + f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
    )
    code += "import sys\nassert not any(m.split('.')[0] in BLOCKED for m in sys.modules)\nprint('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


# The modules that read the HakuBooru metadata DB with SQL of their own: the reader, the schema, the demo DB's
# writer, and the selection engine (filters, the SQL selection, the column cache, the quality percentiles).
# Everything else asks db_reader, so a join written twice cannot drift (the preview, the demo run and the shard
# writer each had their own).
HAKUBOORU_SQL_OWNERS = {
    "trainer_core/danbooru/db_reader.py",
    "trainer_core/danbooru/schema.py",
    "trainer_core/danbooru/demo_db.py",
    "trainer_core/dataset/column_cache.py",
    "trainer_core/dataset/filters.py",
    "trainer_core/dataset/selection.py",
    "trainer_core/dataset/captions.py",
}
# SQL keywords in capitals (as the code writes its SQL), so prose such as "read from tag lists" does not count
_HAKUBOORU_SQL = re.compile(r'\b(?:FROM|JOIN|INTO)\s+\\?"?(?:post|tag|posttagrelation)\\?"?(?:\s|$|\))')


def hakubooru_sql_users(root: Path = ROOT) -> list[str]:
    found = []
    for package in ("trainer_core", "kxl_gui"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel not in HAKUBOORU_SQL_OWNERS and _HAKUBOORU_SQL.search(path.read_text(encoding="utf-8")):
                found.append(rel)
    return found


def test_hakubooru_sql_only_in_its_owners(tmp_path):
    assert hakubooru_sql_users() == []
    # the check sees a join written elsewhere
    probe = tmp_path / "trainer_core" / "probe.py"
    probe.parent.mkdir()
    probe.write_text('Q = \'SELECT t.name FROM "posttagrelation" r JOIN "tag" t ON t.id = r.tag_id\'\n')
    (tmp_path / "kxl_gui").mkdir()
    assert hakubooru_sql_users(tmp_path) == ["trainer_core/probe.py"]
