"""What a workspace holds, asked the same way by the CLI, the demo run and every tab.

Each question used to be answered where it was needed (the Train tab and the Tags tab each had a "newest dataset",
the Generate tab its own model scan and LoKr lookup), so the answers drifted apart: a folder one tab called a dataset
the other ignored. These are file walks: the GUI calls them from a worker, never on its thread.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .workspace import Workspace

# The recipe's merged base: the Merge tab's preset output name and `kxl demo run`'s file stem.
MERGED_BASE_STEM = "kohaku-xl-delta-base"


def newest_dataset(ws: Workspace) -> Path | None:
    """The workspace's most recently built dataset (a folder with kohya `N_name` subfolders or a manifest)."""
    from .tags.dataset_index import find_newest_dataset

    return find_newest_dataset(ws.datasets_path)


def default_base(ws: Workspace) -> Path | None:
    """The base a new run should train on: the merged base if the workspace has one (role "base", else the newest
    `kohaku-xl-delta-base*` in models/), then the original, then gamma."""
    explicit = ws.checkpoint_path("base")
    if explicit is not None and explicit.exists():
        return explicit
    if ws.models_path.is_dir():
        merged = [p for p in ws.models_path.glob(f"{MERGED_BASE_STEM}*.safetensors") if p.is_file()]
        if merged:
            return max(merged, key=lambda p: p.stat().st_mtime)
    for role in ("original", "gamma"):
        path = ws.checkpoint_path(role)
        if path is not None and path.exists():
            return path
    return None


@dataclass
class KnownModels:
    """The checkpoints and LoKrs of a workspace, as the model pickers list them."""

    # Base checkpoints (the workspace's roles first, the merged base before the others), the full SHA-256 of those
    # whose hash is cached, and LoKr files by file stem (models/ first, then runs/).
    bases: list[Path] = dataclasses.field(default_factory=list)
    sha256: dict[Path, str] = dataclasses.field(default_factory=dict)
    lokrs: dict[str, Path] = dataclasses.field(default_factory=dict)
    # the size each base generates at by default (its training resolution: 128 demo, 1024 SDXL)
    native: dict[Path, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def lokr_named(self, name: str) -> Path | None:
        """A LoKr by the name a `<lora:NAME:..>` tag gives (A1111 and we drop `,` and `:` from stems there)."""
        from .generate.infotext import lora_name_matches

        exact = self.lokrs.get(name)
        return exact or next((p for stem, p in self.lokrs.items() if lora_name_matches(name, stem)), None)


def scan_models(ws: Workspace | None) -> KnownModels:
    """Every base checkpoint and LoKr of the workspace. LoKr files are told from bases by name ("lokr" in models/)
    and by place (everything under runs/), as the trainer names and stores them."""
    from .hashing import cached_sha256

    known = KnownModels()
    if ws is None:
        return known
    roles = sorted(ws.checkpoints, key=lambda r: (r != "base", r != "original", r))
    for role in roles:
        path = ws.checkpoint_path(role)
        if path is not None and path.exists() and path not in known.bases:
            known.bases.append(path)
    if ws.models_path.is_dir():
        for path in sorted(ws.models_path.rglob("*.safetensors")):
            if path not in known.bases and "lokr" not in path.name.lower():
                known.bases.append(path)
    from .generate.native_size import default_generation_size

    for path in known.bases:
        known.native[path] = default_generation_size(path)  # header only
        try:
            digest = cached_sha256(path) if path.is_file() else None
        except OSError:
            digest = None
        if digest:
            known.sha256[path] = digest
    for root in (ws.models_path, ws.runs_path):
        if root.is_dir():
            for path in sorted(root.rglob("*.safetensors")):
                if path not in known.bases:
                    known.lokrs.setdefault(path.stem, path)
    return known


# Metadata keys of a LoKr that say which base it was trained on, most specific first. `ss_*` are sd-scripts'
# (ss_new_sd_model_hash is the base file's SHA-256, ss_sd_model_hash the legacy short hash); the `kxl.*` keys
# are ours for the base's path and SHA-256.
BASE_PATH_KEYS = ("kxl.base_model",)
BASE_HASH_KEYS = ("kxl.base_sha256", "ss_new_sd_model_hash", "ss_sd_model_hash")
BASE_NAME_KEYS = ("ss_sd_model_name",)


@dataclass(frozen=True)
class BaseHint:
    """What a LoKr's metadata says about its base model (empty strings where it says nothing)."""

    path: str = ""
    sha256: str = ""
    name: str = ""

    @property
    def shown(self) -> str:
        return Path(self.path).name if self.path else (self.name or (self.sha256[:10] if self.sha256 else ""))


def read_base_hint(lokr: Path) -> BaseHint:
    """The base named in a LoKr's safetensors header (header only, no tensor data)."""
    from .models.safetensors_header import read_header

    meta = read_header(lokr).metadata

    def first(keys: tuple[str, ...]) -> str:
        return next((meta[k].strip() for k in keys if meta.get(k, "").strip()), "")

    return BaseHint(first(BASE_PATH_KEYS), first(BASE_HASH_KEYS).lower(), first(BASE_NAME_KEYS))


def match_base(hint: BaseHint, known: KnownModels) -> tuple[Path | None, str]:
    """The known base a LoKr was trained on and how it was recognised ("path", "hash" or "name"); (None, "")
    when none fits. A path that exists on disk but is not in the list counts as found."""
    if hint.path:
        wanted = Path(hint.path)
        for path in known.bases:
            if _same_file(path, wanted):
                return path, "path"
    if hint.sha256:
        for path in known.bases:
            digest = known.sha256.get(path, "")
            if digest and digest.startswith(hint.sha256):  # a short A1111 hash is a prefix of the full one
                return path, "hash"
    if hint.path and Path(hint.path).is_file():
        return Path(hint.path), "path"
    if hint.name:
        for path in known.bases:
            if path.name == hint.name:
                return path, "name"
    return None, ""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a == b or a.resolve() == b.resolve()
    except OSError:
        return False


def find_lokr_base(
    lokr: Path, ws: Workspace | None, known: KnownModels | None = None
) -> tuple[BaseHint, Path | None, str]:
    """(what the LoKr names as its base, the known base that matches or None, how it matched); `known` None: scan
    the workspace here."""
    hint = read_base_hint(lokr)
    base, how = match_base(hint, known if known is not None else scan_models(ws))
    return hint, base, how
