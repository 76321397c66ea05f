"""Known SDXL-family architectures and how to recognise a checkpoint's.

A single-file checkpoint does not store its config, so we recognise it by key names and shapes and pair it with a
shipped config folder: `sdxl-base` (the real SDXL 1.0 values, what every SDXL fine-tune uses), `kxl-tiny` (random
test model: same block structure, tiny widths) or `kxl-demo` (the trained demo model, resources/demo_base).

`fingerprint()` is header-only and torch-free (the GUI calls it on the GUI thread when a file is picked);
`component_shapes()` builds the components on the meta device (no memory) for the exact key/shape table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import hf_quiet  # noqa: F401 - offline env + quiet loggers before diffusers is imported
from ..paths import resources_dir
from .sdxl_layout import (
    COMPONENTS,
    TE1_PREFIX,
    TE2_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    SdxlLayout,
)


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    config_subdir: str
    conv_in_shape: tuple[int, ...]  # model.diffusion_model.input_blocks.0.0.weight
    te1_width: int
    te2_width: int

    @property
    def config_dir(self) -> Path:
        return resources_dir() / self.config_subdir


ARCHITECTURES = {
    "sdxl-base": Architecture("sdxl-base", "SDXL 1.0 (full size)", "sdxl", (320, 4, 3, 3), 768, 1280),
    "kxl-tiny": Architecture("kxl-tiny", "Kohaku XL tiny demo model", "tiny_sdxl", (32, 4, 3, 3), 32, 48),
    # The trained demo base (resources/demo_base): tiny-model block structure, narrower TE2 so the 49408-row token
    # tables stay small, a wider VAE so figures survive the 8x downsampling.
    "kxl-demo": Architecture(
        "kxl-demo", "Kohaku XL demo model (trained)", "demo_sdxl", (32, 4, 3, 3), 32, 32
    ),
}

CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
TE1_TOKEN_KEY = TE1_PREFIX + "text_model.embeddings.token_embedding.weight"
TE2_TOKEN_KEY = TE2_PREFIX + "token_embedding.weight"


@dataclass(frozen=True)
class Fingerprint:
    kind: str  # "sdxl-single-file" | "lokr" | "sd1" | "unknown"
    arch: str | None
    reason: str


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> Fingerprint:
    """Classify a safetensors key->shape table without torch."""
    keys = shapes.keys()
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) for k in keys):
        return Fingerprint("lokr", None, "LoRA/LyCORIS network weights, not a full checkpoint")
    if any(k.startswith("cond_stage_model.") for k in keys):
        return Fingerprint("sd1", None, "an SD 1.x/2.x checkpoint (cond_stage_model.*), not SDXL")
    parts = {
        "UNet": any(k.startswith(UNET_PREFIX) for k in keys),
        "VAE": any(k.startswith(VAE_PREFIX) for k in keys),
        "TE1": any(k.startswith(TE1_PREFIX) for k in keys),
        "TE2": any(k.startswith(TE2_PREFIX) for k in keys),
    }
    missing = [p for p, ok in parts.items() if not ok]
    if missing:
        if not any(parts.values()):
            return Fingerprint(
                "unknown", None, "no SDXL single-file keys (model.diffusion_model.*, conditioner.*)"
            )
        return Fingerprint("unknown", None, f"an incomplete SDXL checkpoint: no {', '.join(missing)} tensors")
    conv_in = tuple(shapes.get(CONV_IN_KEY, ()))
    te1 = tuple(shapes.get(TE1_TOKEN_KEY, ()))
    te2 = tuple(shapes.get(TE2_TOKEN_KEY, ()))
    for arch in ARCHITECTURES.values():
        if conv_in == arch.conv_in_shape and te1[-1:] == (arch.te1_width,) and te2[-1:] == (arch.te2_width,):
            return Fingerprint("sdxl-single-file", arch.name, arch.description)
    return Fingerprint(
        "unknown", None, f"SDXL-style keys but unknown widths (conv_in {conv_in}, TE1 {te1}, TE2 {te2})"
    )


def load_config(arch: str, component: str) -> dict:
    sub = "scheduler/scheduler_config.json" if component == "scheduler" else f"{component}/config.json"
    return json.loads((ARCHITECTURES[arch].config_dir / sub).read_text(encoding="utf-8"))


def build_empty_components(arch: str, device: str = "meta") -> dict:
    """The four trainable components with parameters on `device` ("meta" = no memory).

    Buffers stay real (accelerate's `include_buffers=False`), so CLIP's position_ids survive `assign=True` loading.
    """
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from ..hf_quiet import quiet_hf

    with quiet_hf():
        te1_cfg = CLIPTextConfig.from_dict(load_config(arch, "text_encoder"))
        te2_cfg = CLIPTextConfig.from_dict(load_config(arch, "text_encoder_2"))
        if device == "meta":
            with init_empty_weights(include_buffers=False):
                return {
                    "unet": UNet2DConditionModel.from_config(load_config(arch, "unet")),
                    "vae": AutoencoderKL.from_config(load_config(arch, "vae")),
                    "text_encoder": CLIPTextModel(te1_cfg),
                    "text_encoder_2": CLIPTextModelWithProjection(te2_cfg),
                }
        with torch.device(device):
            return {
                "unet": UNet2DConditionModel.from_config(load_config(arch, "unet")),
                "vae": AutoencoderKL.from_config(load_config(arch, "vae")),
                "text_encoder": CLIPTextModel(te1_cfg),
                "text_encoder_2": CLIPTextModelWithProjection(te2_cfg),
            }


@functools.lru_cache(maxsize=4)
def component_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """diffusers state-dict key -> shape for each component of `arch` (meta device, cached)."""
    comps = build_empty_components(arch, "meta")
    return {c: {k: tuple(v.shape) for k, v in comps[c].state_dict().items()} for c in COMPONENTS}


@functools.lru_cache(maxsize=4)
def layout_for(arch: str) -> SdxlLayout:
    shapes = component_shapes(arch)
    return SdxlLayout({c: list(shapes[c]) for c in COMPONENTS}, load_config(arch, "unet"))


@functools.lru_cache(maxsize=4)
def sgm_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The complete single-file key -> shape table of `arch` (2514 entries for sdxl-base)."""
    layout = layout_for(arch)
    shapes = component_shapes(arch)
    return {m.sgm: layout.sgm_shape(m, shapes) for m in layout.mappings}
