"""Peak device memory of a training step, phase by phase: the pre-flight estimate (issue #14, item 2).

Per process, in bytes of allocated tensors (what `torch.cuda.max_memory_allocated` reports), for one micro-step of
`micro_step.py` plus the optimizer step. Every phase holds the RESIDENT part:

    weights    = (UNet + TE1 + TE2 parameters) x bytes(mixed_precision: fp16/bf16 2, no 4)
                 + VAE parameters x bytes(vae_dtype)
    LoKr       = P x 4 (fp32 parameters)  +  P x 4 (fp32 gradients: they exist from the first backward of an
                 accumulation on, so every micro-step after the first carries them)
    optimizer  = Lion8bit / AdamW8bit: 1 / 2 bytes per element + one fp32 absmax per 256 elements per state for
                 tensors of >= 4096 elements, 4 / 8 bytes per element below; Lion 4, AdamW 8 bytes per element

and on top of it the phase's TRANSIENT part (B = batch size, MP = pixels of one bucket image / 2^20, the largest
bucket's area being resolution², k = max_token_length / 75 caption chunks):

    VAE encode     V·MP·(bytes(vae_dtype) / 4)                  one image at a time, so independent of B
    TE forward     T0 + T1·B·k                                  (no TE networks: 0)
    UNet forward   U0 + U1·B·MP·h                               h = 2 without mixed precision, else 1
    backward       U0 + D1·B·MP·h                               recompute of one checkpointed block at a time
    optimizer      0                                            Lion8bit's update is in place; grad-norm scalars
  with training.checkpointing = "full" (above). With "selective" only the UNet's transformer blocks are recomputed
  (TEs as with "full"): the ResNet blocks keep their activations and the merged weights of their adapted convs:
    UNet forward   Us·h + U1s·B·MP·h
    backward       Bs·h + D1s·B·MP·h
  with "none" the forward keeps every layer's activations AND the fused forward's merged weight
  of every adapted layer (fp16 W + ΔW, saved for dX), and the backward starts at that peak:
    TE forward     (Tm + T1n·B·k)·h
    UNet forward   TE forward + (Um + U1n·B·MP)·h,   backward = UNet forward
  peak = resident + max over phases.

The constants are calibrated on full-size SDXL against the meta-device trace of the trainer's own micro-step
(`benchmarks/bench_train_cost.py --calibrate` prints them again; fp16 autocast, flash-style attention, LoKr
kohaku-xl-delta networks on the UNet and both TEs). For a UNet/TE/VAE of another size, per-pixel terms scale with
the channel width, sqrt(parameters / SDXL's), and the merged-weight terms with the parameter count. Not included:
the CUDA context, cuDNN/attention workspaces and allocator fragmentation (`runs.estimate_memory` adds a fixed
overhead on GPUs), and sample-image generation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIB = 1 << 20
PHASES = ("te_forward", "unet_forward", "backward", "vae_encode", "optimizer")

# SDXL's parameter counts (diffusers modules): the reference the constants below were measured at.
SDXL_UNET_PARAMS = 2_567_463_684
SDXL_TE_PARAMS = 817_720_320  # TE1 (123.1 M) + TE2 (694.7 M, with its projection)
SDXL_VAE_PARAMS = 83_653_863

EIGHT_BIT_MIN_ELEMENTS = 4096  # bitsandbytes keeps smaller tensors' state in fp32
EIGHT_BIT_BLOCK = 256  # one fp32 absmax per block of the 8-bit state

# ---- calibration, MiB, full-size SDXL, fp16 autocast, gradient checkpointing (bench_train_cost.py --calibrate)
# VAE encode of ONE image, per megapixel, fp32 VAE: the encoder's full-resolution stage holds five fp32 128 x H x W
# maps at once (a resnet's input, conv and norm outputs, the residual sum): 5 x 512 MiB per megapixel.
VAE_PER_MP = 2572.0
# TE forward: T0 = the fused forward's temporaries of the largest TE layer (W + ΔW in fp32, the Kronecker product)
# plus the latents/noise/target of the batch; T1 = per 77-token chunk of one caption: the checkpointed layer inputs
# and the kept penultimate hidden states of both encoders.
TE_CONST = 62.5
TE_PER_CHUNK = 9.8
# UNet forward: U0 = the merged-weight temporaries of the largest UNet layers (1280x1280x3x3 convs) and the text
# context (fitted 162.6 at the forward's peak and 161.9 at the backward's: one constant serves both); U1 = per
# megapixel of one image: the checkpointed block inputs/outputs (skip connections, the residual stream of the 70
# transformer blocks) plus the transient activations of the block being computed.
UNET_CONST = 162.3
UNET_PER_MP = 705.4
# Backward: the saved block inputs + ONE block recomputed with its fp32 norm outputs + its input gradients.
BACKWARD_PER_MP = 874.8
# Without gradient checkpointing (traced at 1024² b1 and 512² b2): Tm/Um = the merged fp16 weights the fused
# forward saves for every adapted layer (about every weight except the TE token embeddings); T1n/U1n = every
# layer's activations, per caption chunk and per megapixel.
TE_MERGED_NO_GC = 1401.1
TE_PER_CHUNK_NO_GC = 160.9
UNET_MERGED_NO_GC = 4953.4
UNET_PER_MP_NO_GC = 8174.1
# checkpointing = "selective" (traced at 1024² b1 and b4): Us/Bs = the merged fp16 weights the fused forward saves
# for the ResNet blocks' adapted convs (no longer recomputed) plus U0's temporaries; U1s/D1s = per megapixel, the
# ResNet blocks' activations on top of the checkpointed transformer blocks' inputs.
UNET_CONST_SELECTIVE = 727.9
UNET_PER_MP_SELECTIVE = 1865.8
BACKWARD_CONST_SELECTIVE = 727.8
BACKWARD_PER_MP_SELECTIVE = 1854.9


def optimizer_state_bytes(kind: str, sizes: list[int]) -> int:
    """Bytes of optimizer state for network tensors of `sizes` elements, as bitsandbytes / torch allocate it."""
    states = {"Lion8bit": 1, "Lion": 1, "AdamW8bit": 2, "AdamW": 2}
    if kind not in states:
        raise ValueError(f"unknown optimizer type '{kind}'")
    total = 0
    for n in sizes:
        if kind.endswith("8bit") and n >= EIGHT_BIT_MIN_ELEMENTS:
            total += states[kind] * (n + 4 * math.ceil(n / EIGHT_BIT_BLOCK))
        else:
            total += states[kind] * 4 * n
    return total


@dataclass
class PhaseMemory:
    """Resident bytes and the transient bytes of each phase; `phases` = the peak of each phase."""

    weights: int
    lokr_params: int
    gradients: int
    optimizer: int
    transient: dict[str, int] = field(default_factory=dict)

    @property
    def resident(self) -> int:
        return self.weights + self.lokr_params + self.gradients + self.optimizer

    @property
    def phases(self) -> dict[str, int]:
        return {p: self.resident + self.transient.get(p, 0) for p in PHASES}

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=lambda p: self.transient.get(p, 0))

    @property
    def peak(self) -> int:
        return self.resident + max(self.transient.get(p, 0) for p in PHASES)


def _bytes(dtype_name: str) -> int:
    return 4 if dtype_name in ("no", "fp32") else 2


def estimate_phases(params: Any, cfg: Any, *, width: int | None = None, height: int | None = None,
                    batch: int | None = None) -> PhaseMemory:  # fmt: skip
    """Per-phase peak memory of one training step for `params` (runs.ModelParams) under `cfg` (TrainConfig).

    The bucket defaults to resolution x resolution (the largest bucket area) and the batch to training.batch_size.
    """
    t = cfg.training
    width = width or cfg.dataset.resolution
    height = height or cfg.dataset.resolution
    batch = batch or t.batch_size
    wbytes, vbytes = _bytes(t.mixed_precision), _bytes(t.vae_dtype)
    h = 2.0 if t.mixed_precision == "no" else 1.0
    sizes = list(params.lokr_tensor_sizes)
    lokr = sum(sizes)
    train_te = bool(getattr(cfg.network, "train_text_encoder", True)) and params.text_encoders > 0

    unet_scale = params.unet / SDXL_UNET_PARAMS
    te_scale = params.text_encoders / SDXL_TE_PARAMS
    unet_width, te_width = math.sqrt(unet_scale), math.sqrt(te_scale)
    vae_width = math.sqrt(params.vae / SDXL_VAE_PARAMS)
    mp = width * height / MIB
    chunks = max(1, cfg.dataset.max_token_length // 75)

    vae = VAE_PER_MP * mp * vae_width * vbytes / 4
    mode = t.checkpointing
    if mode in ("full", "selective"):
        te = (TE_CONST * te_scale + TE_PER_CHUNK * te_width * batch * chunks) if train_te else 0.0
    if mode == "full":
        unet = UNET_CONST * unet_scale + UNET_PER_MP * unet_width * batch * mp * h
        backward = UNET_CONST * unet_scale + BACKWARD_PER_MP * unet_width * batch * mp * h
    elif mode == "selective":
        unet = (UNET_CONST_SELECTIVE * unet_scale + UNET_PER_MP_SELECTIVE * unet_width * batch * mp) * h
        backward = (
            BACKWARD_CONST_SELECTIVE * unet_scale + BACKWARD_PER_MP_SELECTIVE * unet_width * batch * mp
        ) * h
    else:
        te = (
            (TE_MERGED_NO_GC * te_scale + TE_PER_CHUNK_NO_GC * te_width * batch * chunks) * h
            if train_te
            else 0.0
        )
        unet = te + (UNET_MERGED_NO_GC * unet_scale + UNET_PER_MP_NO_GC * unet_width * batch * mp) * h
        backward = unet
    transient = {
        "vae_encode": vae,
        "te_forward": te,
        "unet_forward": unet,
        "backward": backward,
        "optimizer": 0.0,
    }
    return PhaseMemory(
        weights=(params.unet + params.text_encoders) * wbytes + params.vae * vbytes,
        lokr_params=4 * lokr,
        gradients=4 * lokr,
        optimizer=optimizer_state_bytes(cfg.optimizer.type, sizes),
        transient={k: int(v * MIB) for k, v in transient.items()},
    )
