"""The workspace page's worker jobs: open and summarise a workspace, create or rebuild the demo one.

They run in `Job` worker threads (the demo imports torch and writes hundreds of MB), never on the GUI thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainer_core.errors import WorkspaceError
from trainer_core.paths import default_demo_workspace
from trainer_core.progress import Progress
from trainer_core.workspace import WORKSPACE_FILE, Workspace, load_workspace
from trainer_core.workspace_summary import WorkspaceSummary, summarize_workspace


def load_and_summarize(path: Path) -> tuple[Workspace, WorkspaceSummary]:
    ws = load_workspace(path)
    return ws, summarize_workspace(ws)


def create_demo_workspace(
    root: Path, replace: bool, progress: Progress
) -> tuple[Workspace, WorkspaceSummary]:
    from trainer_core.demo import init_demo  # imports torch: only ever inside this worker thread

    has_toml = (root / WORKSPACE_FILE).is_file()
    if replace and has_toml:
        _check_replaceable_demo(root)
    elif root.exists() and not has_toml:
        # workspace.toml is written last, so this is a demo build that was cancelled or crashed: start over.
        _check_replaceable_demo(root)
        progress.stage("Removing a half-built demo workspace")
        shutil.rmtree(root)
    ws = init_demo(root, progress=progress, force=replace and has_toml)
    return ws, summarize_workspace(ws)


def _check_replaceable_demo(root: Path) -> None:
    """Only our own demo folder is ever rebuilt or deleted: it must be the default location and, if it has a
    workspace.toml, be marked kind = "demo" (a user may have pointed a real workspace there)."""
    if root.resolve() != default_demo_workspace().resolve():
        raise WorkspaceError("refusing to replace a folder that is not the default demo workspace", path=root)
    if (root / WORKSPACE_FILE).is_file() and load_workspace(root).kind != "demo":
        raise WorkspaceError(
            "holds a workspace that is not the demo; refusing to replace it",
            path=root,
            hint="move it elsewhere, then recreate the demo",
        )
