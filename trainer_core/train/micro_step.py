"""One micro-batch of training, from pixels and token ids to the backward (specs/training.md §7, issue #14).

Pure functions of their arguments, shared by `loop.Trainer` and `benchmarks/bench_train_cost.py`: the benchmark
traces exactly this code on the meta device (FLOPs and peak memory per phase) and the pre-flight memory model
(`memory_model.py`) is calibrated against that trace. Nothing here reads files, the run folder or the data plan.

Phases of one micro-step, in order:
  VAE encode    `encode_each` (one image at a time, no grad) + `sample_latents`
  TE forward    `micro_loss`: noise, timesteps, both text encoders (with grad, under autocast)
  UNet forward  `micro_loss`: UNet under autocast, then the min-SNR loss in fp32
  backward      `backward_micro`: (loss / accum) x loss scale, backward (recomputing checkpointed blocks)
The optimizer step follows once per `gradient_accumulation_steps` micro-steps, in the loop.

RNG draws, in this order, from the micro-batch's generator: the latents' ε (sample_latents), the noise (+ offset),
the timesteps. Resumed runs depend on that order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

# UNet modules that keep their activation checkpointing under training.checkpointing = "selective": each
# Transformer2DModel recomputes its BasicTransformerBlocks (attention + the 4x-wide GEGLU feed-forward, with fp32
# norm outputs under autocast: most of the activation bytes of a step), while the ResNet blocks, up/down samplers
# keep their activations, so the backward does not run their convolutions a second time.
SELECTIVE_UNET_MODULES = ("Transformer2DModel",)


def training_dtypes(training: Any) -> dict[str, Any]:
    """The dtype each component trains in: UNet and TEs in the mixed-precision dtype (fp32 for "no"), the VAE in
    `vae_dtype`. The loader reads the base straight into these (loading.load_single_file)."""
    from ..models.loading import torch_dtype
    from .loop import weight_dtype_for

    wdt = weight_dtype_for(training.mixed_precision)
    return {"unet": wdt, "text_encoder": wdt, "text_encoder_2": wdt, "vae": torch_dtype(training.vae_dtype)}


def check_precision(training: Any, device: Any) -> None:
    """Refuse bf16 on a CUDA GPU older than Ampere (compute capability 8.0): torch would emulate it, many times
    slower than fp16, for the whole run."""
    import torch

    from ..errors import KxlError
    from .config import BF16_NOTE

    if training.mixed_precision != "bf16" or torch.device(device).type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        name = torch.cuda.get_device_name(device)
        raise KxlError(f"training.mixed_precision = \"bf16\": {BF16_NOTE} (this one: {name}, compute capability "
                       f"{major}.{minor})")  # fmt: skip


def set_checkpointing(comps: Any, mode: str) -> None:
    """Activation checkpointing per `training.checkpointing`: "full" = every UNet block and both TEs' layers,
    "selective" = both TEs' layers and only the UNet's SELECTIVE_UNET_MODULES, "none" = off. Idempotent."""
    unet, tes = comps.unet, (comps.text_encoder, comps.text_encoder_2)
    if mode not in ("full", "selective", "none"):
        raise ValueError(f"unknown checkpointing mode '{mode}'")
    if mode == "none":
        unet.disable_gradient_checkpointing()
    else:
        unet.enable_gradient_checkpointing()
    if mode == "selective":
        for module in unet.modules():
            if (
                hasattr(module, "gradient_checkpointing")
                and type(module).__name__ not in SELECTIVE_UNET_MODULES
            ):
                module.gradient_checkpointing = False
    for te in tes:
        # With "selective" too: the TEs' layers are cheap to recompute (~1 % of a step's FLOPs) but hold ~3 GiB
        # of activations at 4 captions x 3 chunks.
        _te_checkpointing(te, mode != "none")


def _te_checkpointing(te: Any, on: bool) -> None:
    """transformers >= 5.x names it activation checkpointing (the gradient_* spelling warns); older ones do not."""
    if hasattr(te, "activation_checkpointing_enable"):
        if on:
            te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            te.activation_checkpointing_disable()
    elif on:
        te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        te.gradient_checkpointing_disable()


def prepare_for_training(comps: Any, training: Any, device: Any) -> None:
    """Frozen base on `device` in the training dtypes (`training_dtypes`; a no-op when loaded in them), activation
    checkpointing per `training.checkpointing`, train mode (VAE in eval)."""
    from ..hf_quiet import quiet_hf

    dtypes = training_dtypes(training)
    with quiet_hf():  # diffusers warns about casting with .to(); the frozen base is meant to be cast
        for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
            m = getattr(comps, name)
            m.requires_grad_(False)
            m.to(device, dtype=dtypes[name])
    comps.vae.eval()
    set_checkpointing(comps, training.checkpointing)
    comps.unet.train()
    comps.text_encoder.train()
    comps.text_encoder_2.train()


def encode_each(vae: Any, pixels: Iterable[Any], device: Any) -> tuple[Any, Any]:
    """(mean, std) of the VAE posterior, fp32 (B, 4, h, w), encoding ONE image at a time without grad.

    The fp32 VAE encoder's activations for 4 images at 1024² are ~10 GiB, more than the whole UNet phase; one image
    at a time costs the same FLOPs at a quarter of the peak. `pixels` may stay on the host: each image is moved
    to `device` (in the VAE's dtype) just before its encode.
    """
    import torch

    means, stds = [], []
    with torch.no_grad():
        for one in pixels:
            d = vae.encode(one[None].to(device, vae.dtype)).latent_dist
            means.append(d.mean.float())
            stds.append(d.std.float())
    return torch.cat(means), torch.cat(stds)


def sample_latents(mean: Any, std: Any, generator: Any, scale: float, shift: float = 0.0) -> tuple[Any, bool]:
    """(latents, replaced): (mean + std·ε − shift)·scale with ε from `generator`; NaN/inf (an fp16 VAE overflow)
    become 0 and `replaced` is True. Meta tensors carry no values, so they are never checked."""
    import torch

    with torch.no_grad():
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        latents = (mean + std * eps - shift) * scale
        if latents.device.type != "meta" and not bool(torch.isfinite(latents).all()):
            return torch.nan_to_num(latents, nan=0.0, posinf=0.0, neginf=0.0), True
    return latents, False


BREAK_CONDITIONING = os.environ.get("KXL_TEST_BREAK_CONDITIONING", "") == "shuffle"


def micro_loss(comps: Any, cfg: Any, latents: Any, ids1: Any, ids2: Any, time_ids: Any, generator: Any,
               acp: Any, device: Any, autocast: Callable[[], Any]) -> Any:  # fmt: skip
    """The min-SNR weighted loss of one micro-batch (fp32 scalar, with grad into the networks).

    `latents` (B, 4, h, w) fp32 from `sample_latents`; `ids1`/`ids2` (B, n_chunks, 77) from `tokenize_captions`;
    `time_ids` (B, 6); `acp` the ᾱ table on `device`; `autocast` a context-manager factory (the accelerator's, or
    the benchmark's emulation of CUDA fp16 autocast on the meta device). Draws the noise, then the timesteps.
    """
    from .loop import weight_dtype_for
    from .loss import add_noise, diffusion_loss, sample_noise, sample_timesteps, target_for
    from .text_encoding import encode_tokens

    t = cfg.training
    noise = sample_noise(latents, t.noise_offset, generator)
    timesteps = sample_timesteps(latents.shape[0], generator, device)
    noisy = add_noise(latents, noise, timesteps, acp)
    target = target_for(latents, noise, timesteps, acp, cfg.model.v_prediction)
    wdt = weight_dtype_for(t.mixed_precision)
    with autocast():
        context, pooled = encode_tokens(ids1.to(device), ids2.to(device), comps.text_encoder,
                                        comps.text_encoder_2)  # fmt: skip
        if BREAK_CONDITIONING and context.shape[0] > 1:
            # Test hook (KXL_TEST_BREAK_CONDITIONING=shuffle): each image is trained with its neighbour's caption,
            # so the read-back tests can show that a conditioning bug makes them fail.
            context, pooled = context.roll(1, 0), pooled.roll(1, 0)
        pred = comps.unet(
            noisy.to(wdt),
            timesteps,
            encoder_hidden_states=context.to(wdt),
            added_cond_kwargs={"text_embeds": pooled.to(wdt), "time_ids": time_ids.to(device, wdt)},
        ).sample
    return diffusion_loss(pred, target, timesteps, acp, t.min_snr_gamma, cfg.model.v_prediction)


def backward_micro(loss: Any, accumulation_steps: int, scaler: Any = None) -> None:
    """backward of loss / accumulation_steps, times the GradScaler's scale when there is one (fp16)."""
    scaled = loss / accumulation_steps
    if scaler is not None:
        scaled = scaler.scale(scaled)
    scaled.backward()
