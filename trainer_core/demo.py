"""The embedded demo workspace: everything a new user needs to click through the whole recipe, made offline.

`init_demo` writes, into one folder:
- `danbooru/danbooru2023.db`: a synthetic metadata DB in HakuBooru's exact schema;
- `danbooru/images/data-NXYZ.tar`: danbooru2023-layout shards of generated webp images that reflect their tags;
- `models/`: three tiny SDXL-architecture checkpoints standing in for the card's SDXL base, gamma rev2 and beta7:
  the trained demo base shipped in resources/demo_base and its two fine-tunes (copied, sha256-verified);
- `workspace.toml`, written last, so a half-built demo never looks complete.
Same seed and size -> same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import WorkspaceError
from .progress import Progress, ensure_progress
from .workspace import WORKSPACE_FILE, Workspace, load_workspace

DEFAULT_POSTS = 400
DB_REL = "danbooru/danbooru2023.db"
IMAGES_REL = "danbooru/images"
MODELS_REL = "models"


def _prepare_folder(root: Path, force: bool) -> None:
    if not root.exists():
        return
    if (root / WORKSPACE_FILE).is_file():
        try:
            existing = load_workspace(root)
        except WorkspaceError:
            existing = None
        if existing is not None and existing.kind != "demo":
            raise WorkspaceError(
                "holds a user workspace; the demo is only written into an empty or demo folder", path=root
            )
        if not force:
            raise WorkspaceError(
                "already holds a demo workspace", path=root, hint="pass --force to recreate it"
            )
        for rel in ("danbooru", MODELS_REL, WORKSPACE_FILE):
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return
    if any(root.iterdir()):
        raise WorkspaceError("folder is not empty; the demo is written into an empty folder", path=root)


def init_demo(
    root: str | Path,
    posts: int = DEFAULT_POSTS,
    seed: int = 0,
    images: bool = True,
    models: bool = True,
    progress: Progress | None = None,
    force: bool = False,
    image_max_side: int = 512,
) -> Workspace:
    """Create (or, with `force`, recreate) the demo workspace in `root` and return it."""
    from .danbooru.demo_db import generate_demo_db

    root = Path(root).expanduser().resolve()
    progress = ensure_progress(progress)
    _prepare_folder(root, force)
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(
        root=root, name="Kohaku XL demo", kind="demo", db=DB_REL, demo={"seed": seed, "posts": posts}
    )

    progress.stage(f"Generating metadata DB ({posts:,} posts)")
    generate_demo_db(root / DB_REL, posts, seed, progress=progress)
    progress.check_cancelled()

    if images:
        from .danbooru.demo_images import write_demo_shards

        progress.stage("Rendering image shards")
        write_demo_shards(root / DB_REL, root / IMAGES_REL, seed, max_side=image_max_side, progress=progress)
        ws.images = IMAGES_REL
        progress.check_cancelled()

    if models:
        from .models.tiny import write_demo_checkpoints

        progress.stage("Writing the demo SDXL checkpoints")
        paths = write_demo_checkpoints(root / MODELS_REL, trained=True)
        ws.checkpoints = {role: str(p.relative_to(root)) for role, p in paths.items()}
        progress.update(1, 1)

    for rel in (ws.datasets, ws.runs, ws.outputs):
        (root / rel).mkdir(exist_ok=True)
    ws.save()
    progress.stage("Demo workspace ready")
    return ws
