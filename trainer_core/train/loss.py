"""Noise, timesteps and the min-SNR weighted loss (specs/training.md §2.5).

DDPM training schedule: 1000 steps, `scaled_linear` betas from 0.00085 to 0.012, epsilon prediction (v-prediction
optional). All randomness comes from an explicit generator so a step's noise depends only on (seed, step, rank,
micro-batch), which makes resumed runs repeat the uninterrupted run exactly.
"""

from __future__ import annotations

from typing import Any

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def alphas_cumprod(
    num_steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
):
    """ᾱ_t = Π_{i<=t} (1 - β_i), β_i = (√β_start + i/(T-1)·(√β_end - √β_start))², in float64."""
    import torch

    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def snr(timesteps, alphas_cumprod_table):
    a = alphas_cumprod_table.to(timesteps.device)[timesteps]
    return a / (1.0 - a)


def min_snr_weights(timesteps, alphas_cumprod_table, gamma: float, v_prediction: bool = False):
    """Per-sample weights: min(SNR, γ)/SNR (epsilon) or min(SNR, γ)/(SNR + 1) (v-prediction); γ = 0 -> ones."""
    import torch

    s = snr(timesteps, alphas_cumprod_table)
    if gamma <= 0:
        return torch.ones_like(s, dtype=torch.float32)
    clipped = torch.clamp(s, max=gamma)
    return (clipped / (s + 1.0) if v_prediction else clipped / s).float()


def sample_noise(latents, noise_offset: float, generator: Any):
    """ε ~ N(0, I) plus `noise_offset`·N(0, 1) per (sample, channel), broadcast over H and W."""
    import torch

    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, device=latents.device, dtype=torch.float32)
        noise = noise + noise_offset * offset
    return noise


def sample_timesteps(batch: int, generator: Any, device: Any = "cpu"):
    import torch

    return torch.randint(
        0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator, device=device, dtype=torch.long
    )


def add_noise(latents, noise, timesteps, alphas_cumprod_table):
    """x_t = √ᾱ_t·x0 + √(1-ᾱ_t)·ε (computed in fp32)."""
    a = alphas_cumprod_table.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return a.sqrt() * latents.float() + (1.0 - a).sqrt() * noise


def target_for(latents, noise, timesteps, alphas_cumprod_table, v_prediction: bool):
    """ε (with its offset), or v = √ᾱ·ε − √(1−ᾱ)·x0."""
    if not v_prediction:
        return noise
    a = alphas_cumprod_table.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1.0 - a).sqrt() * latents.float()


def diffusion_loss(pred, target, timesteps, alphas_cumprod_table, min_snr_gamma: float, v_prediction: bool):
    """Mean over the batch of the min-SNR weighted per-sample MSE (fp32)."""
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    w = min_snr_weights(timesteps, alphas_cumprod_table, min_snr_gamma, v_prediction)
    return (per_sample * w.to(per_sample.device)).mean()
