"""Read a LoKr/LyCORIS safetensors file into per-module tensor groups matched against an architecture."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..models.safetensors_header import read_header
from .keys import ModuleTarget, module_targets
from .math import LOKR_TENSORS, NORM_TENSORS, lokr_delta_shape

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
    from safetensors import SafetensorError, safe_open

    table = module_targets(arch)
    modules, unmatched = [], []
    try:
        with safe_open(str(path), framework="pt") as fh:
            for module, keys in sorted(groups.items()):
                target = table.get(module)
                if target is None:
                    unmatched.append(module)
                    continue
                modules.append(LokrModule(module, target, {s: fh.get_tensor(k) for s, k in keys.items()}))
    except SafetensorError as exc:
        raise CheckpointError(f"cannot be read as safetensors ({exc})", path=path) from None
    if not modules:
        raise CheckpointError(
            f"none of its {len(unmatched)} modules match an SDXL ({arch}) layer (first: {unmatched[0]})",
            path=path,
        )
    return LokrFile(path, modules, unmatched, meta)


FIT_HINT = (
    "the LoKr was made for another model, or is damaged (for example a transposed lokr_w1); check the file"
)


def check_module_fits(lokr: LokrFile, module: LokrModule, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise CheckpointError naming the LoKr file, the module and the expected vs found shape unless `module` can
    patch the model whose single-file key -> shape table is `shapes`.

    Called when a merge is planned, so a module made for another layer (or with a transposed `lokr_w1`, whose
    product has the right element count but the wrong shape) stops it before anything is written.
    """
    t = module.target
    if module.is_norm:
        for suffix, param in (("w_norm", t.weight), ("b_norm", t.bias)):
            if suffix not in module.tensors or param is None:
                continue
            expected = _target_shape(lokr, module, param.sgm_key, shapes)
            found = tuple(module.tensors[suffix].shape)
            if found != expected:
                raise CheckpointError(f"module '{module.name}': {suffix} has shape {found}, but "
                                      f"'{param.sgm_key}' is {expected}", path=lokr.path, hint=FIT_HINT)  # fmt: skip
        return
    key = t.weight.sgm_key
    expected = _target_shape(lokr, module, key, shapes)
    where = f"'{key}'"
    if t.weight.part is not None:
        rows = expected[0]
        if rows % t.weight.parts:
            raise CheckpointError(f"module '{module.name}' targets '{key}', whose {rows} rows do not split into "
                                  f"{t.weight.parts} parts", path=lokr.path, hint=FIT_HINT)  # fmt: skip
        expected = (rows // t.weight.parts, *expected[1:])
        where = f"'{key}' ({'qkv'[t.weight.part] if t.weight.parts == 3 else t.weight.part} part)"
    try:
        lokr_delta_shape(module.tensors, expected)
    except ValueError as exc:
        raise CheckpointError(f"module '{module.name}' does not fit {where}, expected shape {expected}: {exc}",
                              path=lokr.path, hint=FIT_HINT) from None  # fmt: skip


def _target_shape(lokr: LokrFile, module: LokrModule, key: str, shapes: Mapping[str, tuple[int, ...]]):
    if key not in shapes:
        raise CheckpointError(
            f"module '{module.name}' targets '{key}', absent from the model", path=lokr.path
        )
    return tuple(shapes[key])
