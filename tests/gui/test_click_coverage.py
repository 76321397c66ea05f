"""Every button handler of the app is reached by a real click in some GUI test.

A handler connected to `clicked` receives Qt's `checked` flag, and only a real click proves the button is
visible, enabled and wired (calling the slot proves none of that). This reads every `<name>.clicked.connect(...)`
in kxl_gui and looks for a `click(...<name>)` (tests/gui/user_input.click) in the GUI tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clicked_widget_names(package: Path, root: Path = ROOT) -> dict[str, list[str]]:
    """`name -> [file:line, ...]` for every `<...>.<name>.clicked.connect(...)` (or a local `<name>.clicked`)."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            signal = node.func.value
            if node.func.attr != "connect" or not (
                isinstance(signal, ast.Attribute) and signal.attr == "clicked"
            ):
                continue
            owner = signal.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if name and name != "self":  # `self.clicked`: a widget's own signal, reached through its users
                found.setdefault(name, []).append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def clicked_in_tests(tests: Path, name: str) -> bool:
    pattern = re.compile(rf"click\([^()\n]*\b{re.escape(name)}\b")
    return any(pattern.search(p.read_text(encoding="utf-8")) for p in tests.glob("test_*.py"))


def test_every_clicked_handler_is_reached_by_a_real_click():
    names = clicked_widget_names(ROOT / "kxl_gui")
    assert len(names) >= 30  # the scan sees the app's buttons
    missing = {n: where for n, where in names.items() if not clicked_in_tests(Path(__file__).parent, n)}
    assert missing == {}, f"buttons no GUI test clicks: {missing}"


def test_the_scan_sees_a_button_nobody_clicks(tmp_path):
    pkg = tmp_path / "kxl_gui"
    pkg.mkdir()
    (pkg / "panel.py").write_text(
        "class P:\n    def __init__(self):\n        self.zap_button.clicked.connect(self.zap)\n"
        "        ok.clicked.connect(self.accept)\n"
    )
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_panel.py").write_text("def test_ok(panel):\n    click(panel.ok)\n")
    names = clicked_widget_names(pkg, tmp_path)
    assert names == {"zap_button": ["kxl_gui/panel.py:3"], "ok": ["kxl_gui/panel.py:4"]}
    assert clicked_in_tests(tests, "ok") and not clicked_in_tests(tests, "zap_button")
