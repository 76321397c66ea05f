"""The workflow tabs (Dataset, Tags, Merge, Train, Generate), discovered so each lives in its own module.

A tab module defines:
- `TAB_TITLE: str` and `TAB_ORDER: int` (Dataset 10, Tags 20, Merge 30, Train 40, Generate 50);
- `create_tab(context: AppContext) -> QWidget`.
Tabs talk to each other only through `AppContext.request(...)`, never by importing each other.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover_tabs() -> list[ModuleType]:
    modules = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "TAB_TITLE") and hasattr(module, "create_tab"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "TAB_ORDER", 100), m.TAB_TITLE))
