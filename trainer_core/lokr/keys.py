"""Which checkpoint tensor a LoKr module name patches, for every naming convention users meet.

Names are module paths with "." replaced by "_", so they cannot be parsed back reliably; instead we enumerate every
weight-carrying module of the architecture and compute all the names it may appear under:

- UNet, kohya/sd-webui convention: `lora_unet_<SGM path>` (sd-scripts trains on the SGM UNet);
- UNet, diffusers paths: `lora_unet_<diffusers path>` and LyCORIS' standalone `lycoris_<diffusers path>`;
- TE1: `lora_te1_text_model_<HF path>`, and the transformers-5 form without `text_model_`;
- TE2: `lora_te2_text_model_<HF path>`; q/k/v land in a third of the fused SGM `in_proj_weight`.

Each target knows both homes: the single-file key (+ row slice for fused q/k/v) used by the merge bake, and the
diffusers (component, parameter) used when a LoKr is applied to loaded components.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..models.architectures import layout_for
from ..models.sdxl_layout import FUSE_QKV, TE1_PREFIX, UNET_PREFIX

PREFIX_UNET, PREFIX_TE1, PREFIX_TE2, PREFIX_LYCORIS = "lora_unet_", "lora_te1_", "lora_te2_", "lycoris_"


@dataclass(frozen=True)
class ParamTarget:
    sgm_key: str
    part: int | None  # index into the fused q/k/v tensor (0, 1, 2), or None
    parts: int  # 3 for fused q/k/v, else 1
    component: str
    diffusers_key: str


@dataclass(frozen=True)
class ModuleTarget:
    """A weight-carrying module: its weight and (optional) bias homes."""

    name: str  # canonical kohya name
    weight: ParamTarget
    bias: ParamTarget | None


def _underscored(path: str) -> str:
    return path.replace(".", "_")


@functools.lru_cache(maxsize=4)
def module_targets(arch: str) -> dict[str, ModuleTarget]:
    """LoKr module name (every accepted spelling) -> target, for architecture `arch`."""
    layout = layout_for(arch)
    params: dict[tuple[str, str], ParamTarget] = {}
    for m in layout.mappings:
        for i, d in enumerate(m.diffusers):
            fused = m.transform == FUSE_QKV
            params[(m.component, d)] = ParamTarget(
                m.sgm, i if fused else None, 3 if fused else 1, m.component, d
            )
    table: dict[str, ModuleTarget] = {}
    for (component, dkey), target in params.items():
        if not dkey.endswith(".weight"):
            continue
        module = dkey[: -len(".weight")]
        bias = params.get((component, module + ".bias"))
        names: list[str] = []
        if component == "unet":
            sgm_module = target.sgm_key[len(UNET_PREFIX) : -len(".weight")]
            names = [PREFIX_UNET + _underscored(sgm_module), PREFIX_UNET + _underscored(module),
                     PREFIX_LYCORIS + _underscored(module)]  # fmt: skip
        elif component == "text_encoder":
            hf = target.sgm_key[len(TE1_PREFIX) : -len(".weight")]  # text_model.encoder...
            names = [PREFIX_TE1 + _underscored(hf), PREFIX_TE1 + _underscored(hf.removeprefix("text_model."))]
        elif component == "text_encoder_2":
            names = [PREFIX_TE2 + _underscored(module)]
        else:
            continue  # the VAE is never a LoKr target
        entry = ModuleTarget(names[0], target, bias)
        for n in names:
            table.setdefault(n, entry)
    return table


def canonical_name(arch: str, name: str) -> str | None:
    """The kohya/SGM spelling of a module name (what sd-webui and ComfyUI expect), or None if unknown."""
    t = module_targets(arch).get(name)
    return t.name if t else None
