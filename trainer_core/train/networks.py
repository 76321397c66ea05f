"""The three LyCORIS networks of the recipe (UNet, TE1, TE2), built through lycoris-lora's public API.

specs/training.md §1.3 and §7: the Kohaku preset, translated from sd-scripts' SGM UNet class names to diffusers'.
Two traps of the standalone `LycorisNetwork` API shape this module:
- the builtin presets only carry `unet_*`/`text_encoder_*` keys, which `LycorisNetwork` ignores, so we always pass
  an explicit `target_module`/`target_name`;
- `apply_preset` writes class-level state, so it is re-applied (with its own `lora_prefix`) before EACH network.
`create_lycoris` re-applies a builtin preset ("full") after ours; that preset only sets `enable_conv`, which we set
to the same value, so our targets survive.
After `apply_to()` each LoKr/Norm module gets the one-op forward of `fused_forward` (issue #14): the same result and
gradients as lycoris' base-op-plus-delta-op forward at ~60% of its FLOPs, and the same state_dict.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import KxlError
from .config import NetworkConfig

# diffusers class names inside which every Linear/Conv (and, with train_norm, every norm) gets a module.
UNET_TARGET_MODULES = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
# The card's regexes `.*time_embed\..+`, `.*label_emb\..+`, `.*input_blocks\.0.+`, `^out\..+`, in diffusers paths.
# re.match anchors at the start; the SiLU layers they also match get no module (not a supported layer).
UNET_TARGET_NAMES = [
    r"time_embedding\..+",
    r"add_embedding\..+",
    r"conv_in$",
    r"conv_out$",
    r"conv_norm_out$",
]
# Older transformers spell the attention class per backend; listing them all is harmless.
TE_TARGET_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"]

NETWORK_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


@dataclass
class Networks:
    """The applied networks, keyed by component name ("unet", "text_encoder", "text_encoder_2")."""

    nets: dict[str, Any]
    fused: Any = None  # fused_forward.FusedInstall over all networks (None: lycoris' own forward was kept)

    def te_parameters(self) -> list[Any]:
        return [
            p for c in ("text_encoder", "text_encoder_2") if c in self.nets for p in self.nets[c].parameters()
        ]

    def unet_parameters(self) -> list[Any]:
        return list(self.nets["unet"].parameters()) if "unet" in self.nets else []

    def parameters(self) -> list[Any]:
        return self.te_parameters() + self.unet_parameters()

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """(component/name, parameter) in a fixed order: TE1, TE2, UNet (the optimizer's group order)."""
        for comp in ("text_encoder", "text_encoder_2", "unet"):
            if comp in self.nets:
                for name, p in self.nets[comp].named_parameters():
                    yield f"{comp}/{name}", p

    def state_dict(self) -> dict[str, Any]:
        """Every network tensor under its LyCORIS name (prefix + module path), fp32, live tensors."""
        out: dict[str, Any] = {}
        for net in self.nets.values():
            out.update(net.state_dict())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for comp, net in self.nets.items():
            own = net.state_dict()
            part = {k: v for k, v in state.items() if k in own}
            missing = sorted(set(own) - set(part))
            if missing:
                raise KxlError(
                    f"saved network state lacks {len(missing)} {comp} tensors (first: {missing[0]})"
                )
            net.load_state_dict(part, strict=True)

    def module_count(self) -> dict[str, int]:
        """Module class name -> count over all networks (LokrModule / NormModule)."""
        counts: dict[str, int] = {}
        for net in self.nets.values():
            for lora in net.loras:
                counts[type(lora).__name__] = counts.get(type(lora).__name__, 0) + 1
        return counts

    def train(self) -> None:
        for net in self.nets.values():
            net.train()


def unet_preset(cfg: NetworkConfig) -> dict[str, Any]:
    return {
        "enable_conv": True,
        "target_module": list(UNET_TARGET_MODULES),
        "target_name": list(UNET_TARGET_NAMES),
        "module_algo_map": _algo_map(cfg, ("Attention", "FeedForward")),
        "name_algo_map": {},
        "exclude_name": [],
        "use_fnmatch": False,
        "lora_prefix": NETWORK_PREFIXES["unet"],
    }


def te_preset(cfg: NetworkConfig, component: str) -> dict[str, Any]:
    return {
        "enable_conv": True,
        "target_module": list(TE_TARGET_MODULES),
        "target_name": [],
        "module_algo_map": _algo_map(
            cfg, ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
        ),
        "name_algo_map": {},
        "exclude_name": [],
        "use_fnmatch": False,
        "lora_prefix": NETWORK_PREFIXES[component],
    }


def _algo_map(cfg: NetworkConfig, classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out = {}
    for cls in classes:
        key = "CLIPAttention" if cls.startswith("CLIP") and "Attention" in cls else cls
        factor = cfg.module_factors.get(key)
        if factor is not None:
            out[cls] = {"algo": cfg.algo, "dim": cfg.dim, "alpha": cfg.alpha, "factor": int(factor)}
    return out


@contextlib.contextmanager
def _quiet_lycoris() -> Iterator[None]:
    """LyCORIS logs one "using full matrix mode" warning per module (1058 lines on SDXL): expected here."""
    loggers = [logging.getLogger(n) for n in ("LyCORIS", "lycoris")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def create_networks(
    models: dict[str, Any], cfg: NetworkConfig, device: str | None = None, *, fused: bool = True
) -> Networks:
    """Build and apply the networks onto `models` ({"unet": ..., "text_encoder": ..., "text_encoder_2": ...}).

    Parameters are created fp32 on `device` (default: the device of each model's first parameter; "meta" works for
    counting without memory). Components missing from `models` get no network; TEs only when `cfg.train_text_encoder`.
    fused=False keeps lycoris' own two-op forward (for comparisons; training, samples and tests use the default).
    """
    import torch
    from lycoris import LycorisNetwork, create_lycoris

    from .fused_forward import FusedInstall, install_fused_forward

    if cfg.algo != "lokr":
        raise KxlError(f"network algo '{cfg.algo}' is not supported; the recipe trains 'lokr'")
    wanted = ["unet"] + (["text_encoder", "text_encoder_2"] if cfg.train_text_encoder else [])
    nets: dict[str, Any] = {}
    installed = FusedInstall() if fused else None
    with _quiet_lycoris():
        for comp in wanted:
            model = models.get(comp)
            if model is None:
                continue
            preset = unet_preset(cfg) if comp == "unet" else te_preset(cfg, comp)
            LycorisNetwork.apply_preset(preset)  # class-level state: before every network (trap 2)
            dev = device or str(next(model.parameters()).device)
            with torch.device(dev):
                net = create_lycoris(
                    model,
                    1.0,
                    linear_dim=cfg.dim,
                    linear_alpha=cfg.alpha,
                    conv_dim=cfg.conv_dim,
                    conv_alpha=cfg.conv_alpha,
                    algo=cfg.algo,
                    factor=cfg.factor,
                    train_norm=cfg.train_norm,
                    full_matrix=cfg.full_matrix,
                    preset="full",
                    warn_on_unmatched=False,
                )
            if not net.loras:
                raise KxlError(f"the network preset matched no layer of the {comp}")
            net.apply_to()
            net.to(dtype=torch.float32)
            net.requires_grad_(True)
            if installed is not None:
                installed = installed + install_fused_forward(net)
            nets[comp] = net
    return Networks(nets, fused=installed)
