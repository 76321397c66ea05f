"""Optimizer with the two parameter groups of sd-scripts, and the learning-rate schedule.

Schedule, counted in OPTIMIZER steps whatever the number of processes: optimizer step s (0-based, i.e. s steps
already taken) uses `lr = base · factor(s)`. constant_with_warmup: factor = min(1, s / warmup).
Difference from sd-scripts: accelerate advances its scheduler once per process, so there a "100-step warmup" on 2
GPUs ends after 50 optimizer steps (specs/training.md §2.7); here it ends after 100 on any number of GPUs. To
reproduce the card's run exactly on 2 GPUs, set lr_warmup_steps = 50.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import KxlError
from .config import OptimizerConfig

GROUP_NAMES = ("textencoder", "unet")  # sd-scripts' descriptions, TE group first


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return step / warmup
    if schedule in ("constant", "constant_with_warmup"):
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise KxlError(f"unknown lr_scheduler '{schedule}'")


def param_groups(te_params: list[Any], unet_params: list[Any], cfg: OptimizerConfig) -> list[dict[str, Any]]:
    """[TE group (text_encoder_lr), UNet group (unet_lr)]; weight decay applies to every network tensor."""
    groups = []
    if te_params:
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr, "base_lr": cfg.text_encoder_lr,
                       "name": GROUP_NAMES[0]})  # fmt: skip
    if unet_params:
        groups.append(
            {"params": unet_params, "lr": cfg.unet_lr, "base_lr": cfg.unet_lr, "name": GROUP_NAMES[1]}
        )
    return groups


def create_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> Any:
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    if cfg.type == "Lion":
        from .lion import ForeachLion  # fp32 state; multi-tensor, unlike bitsandbytes' per-tensor calls

        return ForeachLion(groups, lr=cfg.unet_lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.type in ("Lion8bit", "AdamW8bit"):
        import bitsandbytes as bnb

        if cfg.type == "Lion8bit":
            return bnb.optim.Lion8bit(groups, lr=cfg.unet_lr, betas=betas, weight_decay=cfg.weight_decay)
        return bnb.optim.AdamW8bit(groups, lr=cfg.unet_lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.type == "AdamW":
        import torch

        return torch.optim.AdamW(groups, lr=cfg.unet_lr, betas=betas, weight_decay=cfg.weight_decay)
    raise KxlError(f"unknown optimizer type '{cfg.type}'")


def set_learning_rates(optimizer: Any, cfg: OptimizerConfig, step: int, total: int) -> dict[str, float]:
    """Write this step's lr into every group; returns {group name: lr} for the step event."""
    f = lr_factor(cfg.lr_scheduler, step, cfg.lr_warmup_steps, total)
    out = {}
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * f
        out[g["name"]] = g["lr"]
    return out
