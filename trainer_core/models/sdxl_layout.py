"""The one place that knows SDXL key names: single-file (SGM/LDM, what sd-webui and ComfyUI load) <-> diffusers.

Every consumer goes through here: the checkpoint loader/saver, the merge (embedding revert), LoKr save/load and bake.

The map is derived from the diffusers parameter names of the live (or meta-device) components, one rule per block
kind, so it follows the config (number of levels, layers per block) instead of a hard-coded table:

- UNet: `model.diffusion_model.` + SGM path (input_blocks / middle_block / output_blocks ...), specs/training.md §1.4.
- VAE: `first_stage_model.` + LDM path; the mid-block attention is a 1x1 conv in LDM and a Linear in diffusers.
- TE1 (CLIP-L): `conditioner.embedders.0.transformer.` + the HF name with `text_model.`.
- TE2 (OpenCLIP bigG): `conditioner.embedders.1.model.` + OpenCLIP names; q/k/v are fused into `in_proj_*`, and
  `text_projection` is stored transposed. `logit_scale` has no diffusers counterpart and is carried as an extra.

Pure string/shape logic; torch is only needed by the `*_tensors` conversion helpers and imported there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
COMPONENT_PREFIX = {
    "unet": UNET_PREFIX,
    "vae": VAE_PREFIX,
    "text_encoder": TE1_PREFIX,
    "text_encoder_2": TE2_PREFIX,
}

# The embedding tensors the Kohaku XL Delta base step reverts to the original SDXL's (specs/training.md §6).
TE1_TOKEN_EMBEDDING = TE1_PREFIX + "text_model.embeddings.token_embedding.weight"
TE1_POSITION_EMBEDDING = TE1_PREFIX + "text_model.embeddings.position_embedding.weight"
TE2_TOKEN_EMBEDDING = TE2_PREFIX + "token_embedding.weight"
TE2_POSITION_EMBEDDING = TE2_PREFIX + "positional_embedding"
EMBEDDING_KEYS = {
    "te1_token": TE1_TOKEN_EMBEDDING,
    "te1_position": TE1_POSITION_EMBEDDING,
    "te2_token": TE2_TOKEN_EMBEDDING,
    "te2_position": TE2_POSITION_EMBEDDING,
}
TE2_LOGIT_SCALE = TE2_PREFIX + "logit_scale"
# Present in some older single files; loaders ignore it (specs/training.md §6).
IGNORED_SGM_KEYS = frozenset({TE1_PREFIX + "text_model.embeddings.position_ids"})

IDENTITY, TRANSPOSE, FUSE_QKV, CONV1X1 = "identity", "transpose", "fuse_qkv", "conv1x1"


@dataclass(frozen=True)
class KeyMapping:
    """One single-file tensor and where it lives in diffusers.

    `diffusers` is empty for extras (TE2 logit_scale) and has three names for a fused q/k/v projection.
    `transform` says how to go from the diffusers tensor(s) to the single-file tensor.
    """

    sgm: str
    component: str
    diffusers: tuple[str, ...]
    transform: str = IDENTITY


# ---------------------------------------------------------------------------------------------------------------
# UNet


_RESNET_INNER = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]


def _resnet_inner(rest: str) -> str:
    for old, new in _RESNET_INNER:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def unet_key_to_sgm(key: str, layers_per_block: int, up_blocks_with_attention: Iterable[int]) -> str:
    """diffusers UNet2DConditionModel parameter name -> SGM name (without the `model.diffusion_model.` prefix)."""
    n = layers_per_block
    simple = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{(n + 1) * i + j + 1}.0.{_resnet_inner(rest)}"
        if kind == "attentions":
            return f"input_blocks.{(n + 1) * i + j + 1}.1.{rest}"
        return f"input_blocks.{(n + 1) * (i + 1)}.0.{rest.replace('conv.', 'op.', 1)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{(n + 1) * i + j}.0.{_resnet_inner(rest)}"
        if kind == "attentions":
            return f"output_blocks.{(n + 1) * i + j}.1.{rest}"
        slot = 2 if i in set(up_blocks_with_attention) else 1
        return f"output_blocks.{(n + 1) * i + n}.{slot}.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * j}.{_resnet_inner(rest)}"
    raise KeyError(f"unknown SDXL UNet parameter '{key}'")


def unet_module_to_sgm(path: str, layers_per_block: int, up_blocks_with_attention: Iterable[int]) -> str:
    """Same as `unet_key_to_sgm` for a module path (no trailing `.weight`), as LoKr file names need."""
    return unet_key_to_sgm(path + ".weight", layers_per_block, up_blocks_with_attention)[: -len(".weight")]


# ---------------------------------------------------------------------------------------------------------------
# VAE


def vae_key_to_ldm(key: str, num_up_blocks: int) -> tuple[str, str]:
    """diffusers AutoencoderKL parameter name -> (LDM name without prefix, transform)."""
    m = re.match(
        r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)$",
        key,
    )
    if m:
        part, blocks, i, kind, j, rest = m[1], m[2], int(m[3]), m[4], int(m[5]), m[6]
        ldm_i = (
            i if blocks == "down_blocks" else num_up_blocks - 1 - i
        )  # LDM's decoder counts up from the bottom
        group = "down" if blocks == "down_blocks" else "up"
        if kind == "resnets":
            rest = rest.replace("conv_shortcut.", "nin_shortcut.", 1)
            return f"{part}.{group}.{ldm_i}.block.{j}.{rest}", IDENTITY
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{part}.{group}.{ldm_i}.{sampler}.{rest}", IDENTITY
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        part, kind, j, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            rest = rest.replace("conv_shortcut.", "nin_shortcut.", 1)
            return f"{part}.mid.block_{j + 1}.{rest}", IDENTITY
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
        for old, new in names.items():
            if rest.startswith(old + "."):
                leaf = rest[len(old) + 1 :]
                transform = CONV1X1 if (old != "group_norm" and leaf == "weight") else IDENTITY
                return f"{part}.mid.attn_1.{new}.{leaf}", transform
        raise KeyError(f"unknown SDXL VAE parameter '{key}'")
    m = re.match(r"(encoder|decoder)\.conv_norm_out\.(.+)$", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}", IDENTITY
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.", key) or re.match(r"(post_)?quant_conv\.", key):
        return key, IDENTITY
    raise KeyError(f"unknown SDXL VAE parameter '{key}'")


# ---------------------------------------------------------------------------------------------------------------
# Text encoders


def te1_canonical(key: str) -> str:
    """HF CLIPTextModel name with the `text_model.` prefix (transformers >= 5 drops it on the live module)."""
    return key if key.startswith("text_model.") else "text_model." + key


def te2_key_to_openclip(key: str) -> tuple[str, str] | None:
    """diffusers CLIPTextModelWithProjection name -> (OpenCLIP name, transform); None for a fused q/k/v part."""
    if key == "text_projection.weight":
        return "text_projection", TRANSPOSE
    simple = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    if key in simple:
        return simple[key], IDENTITY
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", key)
    if not m:
        raise KeyError(f"unknown SDXL TE2 parameter '{key}'")
    i, rest = m[1], m[2]
    if re.match(r"self_attn\.[qkv]_proj\.", rest):
        return None
    names = {
        "self_attn.out_proj.": "attn.out_proj.",
        "layer_norm1.": "ln_1.",
        "layer_norm2.": "ln_2.",
        "mlp.fc1.": "mlp.c_fc.",
        "mlp.fc2.": "mlp.c_proj.",
    }
    for old, new in names.items():
        if rest.startswith(old):
            return f"transformer.resblocks.{i}.{new}{rest[len(old) :]}", IDENTITY
    raise KeyError(f"unknown SDXL TE2 parameter '{key}'")


# ---------------------------------------------------------------------------------------------------------------
# The whole checkpoint


class SdxlLayout:
    """The full single-file <-> diffusers map for one architecture (one set of component configs).

    Build it from the diffusers parameter names of each component (`keys`), plus the UNet config for the block
    arithmetic. `has_logit_scale` adds TE2's `logit_scale` extra, which real SDXL files carry.
    """

    def __init__(
        self, keys: Mapping[str, Iterable[str]], unet_config: Mapping[str, Any], has_logit_scale: bool = True
    ):
        lpb = int(unet_config.get("layers_per_block", 2))
        up_types = list(unet_config.get("up_block_types", []))
        up_attn = {i for i, t in enumerate(up_types) if "CrossAttn" in t}
        num_vae_up = 1 + max(
            (int(m[1]) for k in keys["vae"] if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1
        )
        mappings: list[KeyMapping] = []
        for key in keys["unet"]:
            mappings.append(KeyMapping(UNET_PREFIX + unet_key_to_sgm(key, lpb, up_attn), "unet", (key,)))
        for key in keys["vae"]:
            name, transform = vae_key_to_ldm(key, num_vae_up)
            mappings.append(KeyMapping(VAE_PREFIX + name, "vae", (key,), transform))
        for key in keys["text_encoder"]:
            if key.endswith("embeddings.position_ids"):
                continue
            mappings.append(KeyMapping(TE1_PREFIX + te1_canonical(key), "text_encoder", (key,)))
        te2_keys = [k for k in keys["text_encoder_2"] if not k.endswith("embeddings.position_ids")]
        for key in te2_keys:
            hit = te2_key_to_openclip(key)
            if hit is not None:
                mappings.append(KeyMapping(TE2_PREFIX + hit[0], "text_encoder_2", (key,), hit[1]))
        fused = sorted(
            {m[1] for k in te2_keys if (m := re.match(r"(.+)\.self_attn\.[qkv]_proj\.(weight|bias)$", k))}
        )
        for base in fused:
            i = re.match(r"text_model\.encoder\.layers\.(\d+)", base)[1]  # type: ignore[index]
            for leaf in ("weight", "bias"):
                parts = tuple(f"{base}.self_attn.{p}_proj.{leaf}" for p in "qkv")
                sgm = f"{TE2_PREFIX}transformer.resblocks.{i}.attn.in_proj_{leaf}"
                mappings.append(KeyMapping(sgm, "text_encoder_2", parts, FUSE_QKV))
        if has_logit_scale:
            mappings.append(KeyMapping(TE2_LOGIT_SCALE, "text_encoder_2", ()))
        self.mappings = mappings
        self.by_sgm = {m.sgm: m for m in mappings}
        if len(self.by_sgm) != len(mappings):
            raise ValueError("SDXL layout maps two diffusers tensors onto one single-file key")
        self.by_diffusers = {(m.component, d): m for m in mappings for d in m.diffusers}

    def sgm_keys(self) -> list[str]:
        return [m.sgm for m in self.mappings]

    def sgm_shape(
        self, mapping: KeyMapping, shapes: Mapping[str, Mapping[str, tuple[int, ...]]]
    ) -> tuple[int, ...]:
        """Single-file shape from the diffusers shapes of its component(s)."""
        if not mapping.diffusers:
            return ()
        comp = shapes[mapping.component]
        first = tuple(comp[mapping.diffusers[0]])
        if mapping.transform == TRANSPOSE:
            return tuple(reversed(first))
        if mapping.transform == FUSE_QKV:
            return (sum(comp[d][0] for d in mapping.diffusers), *first[1:])
        if mapping.transform == CONV1X1:
            return (*first, 1, 1)
        return first

    # -- tensor conversion (torch needed from here on) -------------------------------------------------------

    def to_sgm(
        self, components: Mapping[str, Mapping[str, Any]], extras: Mapping[str, Any] | None = None
    ) -> dict:
        """diffusers state dicts (per component, TE1 with or without `text_model.`) -> single-file state dict."""
        import torch

        extras = dict(extras or {})
        norm = {c: _canonical_component_sd(c, sd) for c, sd in components.items()}
        out: dict[str, Any] = {}
        for m in self.mappings:
            if not m.diffusers:
                if m.sgm in extras:
                    out[m.sgm] = extras.pop(m.sgm)
                elif m.sgm == TE2_LOGIT_SCALE:
                    # diffusers has no logit_scale; use OpenCLIP's log(1/0.07), which SDXL base ships too,
                    # in the encoder's own dtype so an fp16 checkpoint stays all-fp16.
                    te2 = norm["text_encoder_2"]
                    dtype = te2["text_projection.weight"].dtype
                    out[m.sgm] = torch.tensor(4.6052, dtype=dtype)
                continue
            sd = norm[m.component]
            tensors = [sd[_canon(m.component, d)] for d in m.diffusers]
            if m.transform == TRANSPOSE:
                t = tensors[0].t().contiguous()
            elif m.transform == FUSE_QKV:
                t = torch.cat(tensors, dim=0)
            elif m.transform == CONV1X1:
                t = tensors[0].reshape(*tensors[0].shape, 1, 1)
            else:
                t = tensors[0]
            out[m.sgm] = t
        out.update(extras)
        return out

    def from_sgm(self, sgm: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        """single-file state dict -> (diffusers state dict per component, extras, unexpected keys).

        TE1 names come back with `text_model.`; `adapt_te1_keys` fits them to a live transformers-5 module.
        Raises KeyError listing missing keys.
        """
        missing = [k for k in self.by_sgm if k not in sgm and self.by_sgm[k].diffusers]
        if missing:
            raise KeyError(missing)
        comps: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
        extras: dict[str, Any] = {}
        unexpected: list[str] = []
        for key, t in sgm.items():
            m = self.by_sgm.get(key)
            if m is None:
                if key not in IGNORED_SGM_KEYS:
                    unexpected.append(key)
                continue
            if not m.diffusers:
                extras[key] = t
                continue
            if m.transform == TRANSPOSE:
                comps[m.component][_canon(m.component, m.diffusers[0])] = t.t().contiguous()
            elif m.transform == FUSE_QKV:
                for name, part in zip(m.diffusers, t.chunk(3, dim=0), strict=True):
                    comps[m.component][name] = part.contiguous()
            elif m.transform == CONV1X1:
                comps[m.component][m.diffusers[0]] = t.reshape(t.shape[0], t.shape[1])
            else:
                comps[m.component][_canon(m.component, m.diffusers[0])] = t
        return comps, extras, unexpected


def _canon(component: str, key: str) -> str:
    return te1_canonical(key) if component == "text_encoder" else key


def _canonical_component_sd(component: str, sd: Mapping[str, Any]) -> Mapping[str, Any]:
    if component != "text_encoder":
        return sd
    return {te1_canonical(k): v for k, v in sd.items()}


def adapt_te1_keys(sd: Mapping[str, Any], live_keys: Iterable[str]) -> dict[str, Any]:
    """Fit TE1 names to the live module: transformers >= 5 has no `text_model.` level on CLIPTextModel."""
    live = set(live_keys)
    if any(k.startswith("text_model.") for k in live):
        return {te1_canonical(k): v for k, v in sd.items()}
    return {k.removeprefix("text_model."): v for k, v in sd.items()}
