"""A workspace: one folder that records where a user's DB, image shards, checkpoints, datasets and runs are.

`workspace.toml` holds paths relative to the workspace folder (absolute paths are allowed for data that lives
elsewhere, e.g. a 1.4 TB shard folder on another disk). The GUI opens a workspace; the CLI accepts one with
`--workspace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
import tomllib

from . import __version__
from .atomic import atomic_write_text
from .errors import WorkspaceError

WORKSPACE_FILE = "workspace.toml"
SCHEMA_VERSION = 1
CHECKPOINT_ROLES = ("gamma", "beta", "original")


@dataclass
class Workspace:
    root: Path
    name: str = "workspace"
    kind: str = "user"  # "demo" for the generated one
    db: str | None = None  # metadata DB (HakuBooru schema)
    images: str | None = None  # folder of data-NXYZ.tar shards or <id>.<ext> files
    datasets: str = "datasets"
    runs: str = "runs"
    outputs: str = "outputs"
    models: str = "models"
    checkpoints: dict[str, str] = field(
        default_factory=dict
    )  # role -> path; roles: CHECKPOINT_ROLES + "base"
    demo: dict[str, int] = field(default_factory=dict)  # seed / posts when kind == "demo"
    created_by: str = f"kohaku-xl-workbench {__version__}"

    def resolve(self, rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def db_path(self) -> Path | None:
        return self.resolve(self.db)

    @property
    def images_path(self) -> Path | None:
        return self.resolve(self.images)

    @property
    def datasets_path(self) -> Path:
        return self.resolve(self.datasets)  # type: ignore[return-value]

    @property
    def runs_path(self) -> Path:
        return self.resolve(self.runs)  # type: ignore[return-value]

    @property
    def outputs_path(self) -> Path:
        return self.resolve(self.outputs)  # type: ignore[return-value]

    @property
    def models_path(self) -> Path:
        return self.resolve(self.models)  # type: ignore[return-value]

    def checkpoint_path(self, role: str) -> Path | None:
        return self.resolve(self.checkpoints.get(role))

    def to_toml(self) -> str:
        data: dict = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "kind": self.kind,
            "created_by": self.created_by,
            "paths": {
                k: v
                for k, v in {
                    "db": self.db,
                    "images": self.images,
                    "datasets": self.datasets,
                    "runs": self.runs,
                    "outputs": self.outputs,
                    "models": self.models,
                }.items()
                if v is not None
            },
            "checkpoints": dict(self.checkpoints),
        }
        if self.demo:
            data["demo"] = dict(self.demo)
        return tomli_w.dumps(data)

    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / WORKSPACE_FILE
        atomic_write_text(path, self.to_toml())
        return path


def load_workspace(root: str | Path) -> Workspace:
    root = Path(root).expanduser().resolve()
    path = root / WORKSPACE_FILE if root.is_dir() or not root.suffix else root
    if path.name != WORKSPACE_FILE and path.suffix == ".toml":
        root = path.parent
    if not path.is_file():
        raise WorkspaceError(
            f"no {WORKSPACE_FILE} here",
            path=root,
            hint="create one with `kxl demo init DIR` or pick another folder",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkspaceError(f"not a valid TOML file ({exc})", path=path) from None
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WorkspaceError(
            f"unsupported schema_version {version!r} (this program reads {SCHEMA_VERSION})", path=path
        )
    paths = data.get("paths", {})
    checkpoints = data.get("checkpoints", {})
    if not isinstance(paths, dict) or not isinstance(checkpoints, dict):
        raise WorkspaceError("[paths] and [checkpoints] must be tables", path=path)
    return Workspace(
        root=root,
        name=str(data.get("name", root.name)),
        kind=str(data.get("kind", "user")),
        db=paths.get("db"),
        images=paths.get("images"),
        datasets=paths.get("datasets", "datasets"),
        runs=paths.get("runs", "runs"),
        outputs=paths.get("outputs", "outputs"),
        models=paths.get("models", "models"),
        checkpoints={str(k): str(v) for k, v in checkpoints.items()},
        demo={str(k): int(v) for k, v in data.get("demo", {}).items()},
        created_by=str(data.get("created_by", "")),
    )
