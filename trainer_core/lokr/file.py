"""Read a LoKr/LyCORIS safetensors file into per-module tensor groups matched against an architecture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..models.safetensors_header import read_header
from .keys import ModuleTarget, module_targets
from .math import LOKR_TENSORS, NORM_TENSORS

KNOWN_SUFFIXES = LOKR_TENSORS | NORM_TENSORS | {"dora_scale"}


@dataclass
class LokrModule:
    name: str
    target: ModuleTarget
    tensors: dict[str, Any]  # suffix -> tensor

    @property
    def is_norm(self) -> bool:
        return "w_norm" in self.tensors or "b_norm" in self.tensors


@dataclass
class LokrFile:
    path: Path
    modules: list[LokrModule]
    unmatched: list[str] = field(default_factory=list)  # module names with no target in the checkpoint
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def split_key(key: str) -> tuple[str, str]:
    module, _, suffix = key.rpartition(".")
    return module, suffix


def read_lokr(path: str | Path, arch: str) -> LokrFile:
    """Group the file's tensors by module and match each module to `arch`'s weights.

    Unknown module names are collected in `unmatched` (callers warn and list them); a file with no LoKr/norm
    tensors at all, or one for another base model, is a CheckpointError.
    """
    path = Path(path)
    header = read_header(path)
    meta = header.metadata
    base = meta.get("ss_base_model_version", "")
    if base and not base.startswith("sdxl"):
        raise CheckpointError(f"this network was trained for '{base}', not SDXL", path=path)
    groups: dict[str, dict[str, str]] = {}
    for key in header.tensors:
        module, suffix = split_key(key)
        if suffix in KNOWN_SUFFIXES:
            groups.setdefault(module, {})[suffix] = key
    if not groups:
        if any(k.endswith(("lora_down.weight", "lora_up.weight")) for k in header.tensors):
            raise CheckpointError(
                "is a plain LoRA (lora_down/lora_up); only LoKr files are supported here", path=path
            )
        raise CheckpointError("holds no LoKr tensors (lokr_w1/lokr_w2/w_norm)", path=path)
    if any("dora_scale" in g for g in groups.values()):
        raise CheckpointError("uses DoRA (dora_scale), which is not supported", path=path)
    from safetensors import safe_open

    table = module_targets(arch)
    modules, unmatched = [], []
    with safe_open(str(path), framework="pt") as fh:
        for module, keys in sorted(groups.items()):
            target = table.get(module)
            if target is None:
                unmatched.append(module)
                continue
            modules.append(LokrModule(module, target, {s: fh.get_tensor(k) for s, k in keys.items()}))
    if not modules:
        raise CheckpointError(
            f"none of its {len(unmatched)} modules match an SDXL ({arch}) layer (first: {unmatched[0]})",
            path=path,
        )
    return LokrFile(path, modules, unmatched, meta)
