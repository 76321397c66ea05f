"""Compute and peak memory of one training micro-step at the card's scale, per phase (issue #14, items 2 and 3).

Usage:
  python benchmarks/bench_train_cost.py [--width 1024] [--height 1024] [--batch 4] [--no-estimate-check]
  python benchmarks/bench_train_cost.py --calibrate     # fit memory_model's constants again and print them
  python benchmarks/bench_train_cost.py --modes-only    # just the none / selective / full checkpointing table

About 2 minutes on 2 cores (each traced micro-step takes ~10 s on meta, whatever the image size).

CPU only, no memory: full-size SDXL (resources/sdxl configs) built on the meta device, the kohaku-xl-delta preset
(LoKr on the UNet and both text encoders, 225-token captions = 3 chunks, fp16, fp32 VAE, full activation
checkpointing, Lion8bit). What runs is the trainer's OWN micro-step: `trainer_core.train.micro_step` (prepare_for_training,
encode_each, sample_latents, micro_loss, backward_micro: the functions `loop.Trainer` calls) with the networks of
`networks.create_networks` (the one-op fused LoKr/Norm forward). Next to it, measured in the same run on the same
modules: a bare SDXL forward/backward (+ recompute) without any adapter, every UNet/TE weight trainable (so the
backward computes dX and dW as the LoKr path must; each weight gradient is dropped as soon as it is accumulated, so
the bare peak holds no gradients).

How the GPU is emulated on the meta device:
- CUDA fp16 autocast: the meta device has no autocast dispatch key, so `CudaLikeFunctions`, a TorchFunctionMode
  (above autograd, where real autocast also sits), applies CUDA's fp16 autocast policy to the functions the SDXL
  forward calls: linear/conv/matmul-family inputs cast to fp16; layer_norm, group_norm, softmax, exp, pow, sum ...
  (CUDA's fp32 list) cast to fp32, so norm outputs are fp32 activations as on a GPU; cat/stack promote to the widest
  type. The base weights are cast to fp16 as `prepare_for_training` does; the trainer's `autocast` argument is the
  mode's switch. It stays on during the backward, where checkpointed blocks are recomputed (a mode is switched off
  while it handles a call, so `loss.backward()` is run through autograd's engine call with the mode pushed again:
  `torch.autograd.graph._engine_run_backward`, private). A check counts every matmul/conv that still sees an fp32
  input under emulated autocast ("autocast misses", expected 0).
- Flash-style attention: `F.scaled_dot_product_attention` runs as `aten._scaled_dot_product_flash_attention`
  (fp16/bf16, no mask; what SDPA picks on Ampere+) or `_scaled_dot_product_efficient_attention` (fp32, masks),
  whose meta kernels allocate the output and the logsumexp, never the N² matrix.
- Peak allocated: `LiveMemory`, a TorchDispatchMode, adds the storage bytes of every meta tensor an op returns and
  takes them off when the storage dies (weakref finalizer on the storage); plus the resident bytes that exist before
  the step: frozen weights and buffers, LoKr parameters, and the Lion8bit state (1 byte per element and an fp32
  absmax per 256 for tensors >= 4096 elements, fp32 below, as bitsandbytes allocates it). LoKr gradients exist
  during every micro-step after the first of an accumulation, so the trace allocates them (fp32) before the step.
  Host tensors (the pixel batch, token ids) are not device memory and are not counted; each image reaches the
  device only for its own VAE encode, as in the trainer. Not modelled: cuDNN/flash workspaces, allocator rounding
  and fragmentation, the CUDA context (the pre-flight adds a fixed overhead for those).
- FLOPs: torch.utils.flop_counter's formulas (matmul, conv, attention) per phase; elementwise work (the LoKr
  Kronecker products and W + ΔW merges, norms, activations) is not counted.
  The optimizer phase replays the loop's gradient norm + clip (torch.nn.utils, on meta); Lion8bit's update is an
  in-place fused bitsandbytes kernel that allocates nothing per step (and cannot run on meta).

Bars (issue #14): compute per image <= 1.05 x (bare forward/backward + VAE encode); peak <= 16 GiB allocated.
With the estimate check (default), the pre-flight estimate (`runs.estimate_memory` via `memory_model`, from the
parameter counts `runs.count_model_params` reads off an SDXL header) is compared with the trace at the card's setting,
1024² batch 1 and 2048x512 batch 4 (bar: within 10 %), and at three held-out configurations (printed, not a bar;
memory_model was calibrated at 1024² batch 1 and 4).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

GIB = 1 << 30
DEVICE = "meta"
PHASES = ("te_forward", "unet_forward", "backward", "vae_encode", "optimizer")
PHASE_LABELS = {
    "te_forward": "TE forward",
    "unet_forward": "UNet forward",
    "backward": "backward+recompute",
    "vae_encode": "VAE encode",
    "optimizer": "optimizer step",
}
CARD = (1024, 1024, 4)
ESTIMATE_CONFIGS = ((1024, 1024, 4), (1024, 1024, 1), (2048, 512, 4))
# Not calibration points of memory_model (those are 1024² b1 and b4): how the fit holds elsewhere.
HELD_OUT_CONFIGS = ((512, 512, 4), (768, 1344, 2), (1536, 1536, 1))
ESTIMATE_TOLERANCE = 0.10

# ------------------------------------------------------------------------------------------ CUDA autocast policy

# torch functions as the SDXL UNet, CLIP and VAE forwards call them (F.layer_norm etc. are Python functions that
# dispatch through __torch_function__ before reaching torch.layer_norm, so both spellings are listed).
_LOWER = [F.linear, torch.conv1d, torch.conv2d, torch.conv3d, F.conv_transpose1d, F.conv_transpose2d,
          F.conv_transpose3d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm,
          torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addmm,
          torch.Tensor.addmm, torch.addbmm, torch.mv, torch.addmv, torch.addr, torch.prelu, torch.chain_matmul,
          torch.einsum]  # fmt: skip
_FP32 = [F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm, F.softmax, torch.softmax,
         torch.Tensor.softmax, F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax, torch.exp,
         torch.Tensor.exp, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__, torch.Tensor.__rpow__, torch.sum,
         torch.Tensor.sum, torch.prod, torch.cumsum, torch.cumprod, torch.log, torch.Tensor.log, torch.rsqrt,
         torch.Tensor.rsqrt, torch.reciprocal, torch.norm, torch.Tensor.norm, F.normalize, F.mse_loss,
         F.cosine_similarity, F.softplus, torch.expm1, torch.log1p, torch.log2, torch.log10, torch.erfinv,
         torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan]  # fmt: skip
_PROMOTE = [torch.cat, torch.concat, torch.stack, torch.addcdiv, torch.addcmul, torch.atan2, torch.cross,
            torch.dot, torch.tensordot, F.grid_sample]  # fmt: skip
_POLICY: dict[Any, str] = {}
for _fns, _kind in ((_LOWER, "lower"), (_FP32, "fp32"), (_PROMOTE, "promote")):
    for _fn in _fns:
        _POLICY[_fn] = _kind
_HALF = (torch.float16, torch.bfloat16)


def _floats(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


class CudaLikeFunctions(TorchFunctionMode):
    """CUDA's fp16 autocast policy (while `autocast()` is on) and flash-style SDPA (always), at the torch-function
    level, so autograd records the casts and the attention ops exactly as it does on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.dtype: torch.dtype | None = None

    @contextlib.contextmanager
    def autocast(self, dtype: torch.dtype = torch.float16):
        previous, self.dtype = self.dtype, dtype
        try:
            yield
        finally:
            self.dtype = previous

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._sdpa(*args, **kwargs)
        if func is torch.Tensor.backward:
            return self._backward(*args, **kwargs)
        try:
            kind = _POLICY.get(func) if self.dtype is not None else None
        except TypeError:  # an unhashable callable
            kind = None
        if kind == "lower":
            args, kwargs = self._cast((args, kwargs), lambda t: t.dtype == torch.float32, self.dtype)
        elif kind == "fp32":
            args, kwargs = self._cast((args, kwargs), lambda t: t.dtype in _HALF, torch.float32)
        elif kind == "promote":
            floats = _floats((args, kwargs))
            if len({t.dtype for t in floats}) > 1:
                widest = (
                    torch.promote_types(*{t.dtype for t in floats}) if len(floats) == 2 else torch.float32
                )
                args, kwargs = self._cast((args, kwargs), lambda t: t.dtype != widest, widest)
        return func(*args, **kwargs)

    def _backward(self, loss, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """`loss.backward()` with this mode ON inside, so checkpointed blocks recompute under the emulated autocast.

        Tensor.backward and autograd.backward both hand a mode's call back to the mode; the engine call under them
        (autograd.graph._engine_run_backward, private) does not."""
        if gradient is not None or create_graph or inputs is not None:
            raise NotImplementedError("the trace runs a plain loss.backward()")
        with self:
            grad = torch.ones_like(loss)
            torch.autograd.graph._engine_run_backward((loss,), (grad,), bool(retain_graph), False, (),
                                                      allow_unreachable=True, accumulate_grad=True)  # fmt: skip

    @staticmethod
    def _cast(tree: Any, pick, dtype: torch.dtype) -> Any:
        def one(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point() and pick(x):
                return x.to(dtype)
            return x

        return tree_map(one, tree)

    def _sdpa(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if self.dtype is not None:  # SDPA is on CUDA's fp16 list
            q, k, v = (t.to(self.dtype) if t.dtype == torch.float32 else t for t in (q, k, v))
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if attn_mask is None and q.dtype in _HALF and q.shape[-1] <= 256:
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, False,
                                                                      scale=scale)[0]  # fmt: skip
        bias = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                    ~attn_mask, float("-inf")
                )
            bias = attn_mask.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, grad, dropout_p, is_causal,
                                                                      scale=scale)[0]  # fmt: skip


# ------------------------------------------------------------------------------------------ live memory + FLOPs

_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product_flash_attention"}


class LiveMemory(TorchDispatchMode):
    """Live bytes of device (meta) storages created inside the mode, their peak per phase (plus `resident`), and the
    FLOPs per phase. A storage counts from the op that returns it until its last tensor dies."""

    def __init__(self, resident: list[torch.Tensor], funcs: CudaLikeFunctions | None = None,
                 count_flops: bool = True) -> None:  # fmt: skip
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry if count_flops else {}
        # Tensors that exist before the step (weights, buffers, LoKr parameters): counted once in `resident`, and
        # their views (a weight's .t(), detach) are no new allocation.
        self.known = {t.untyped_storage()._cdata for t in resident}
        self.resident = storage_bytes(resident)
        self.funcs = funcs
        self.live: dict[int, int] = {}
        self.current = 0
        self.phase = "setup"
        self.peaks: dict[str, int] = {}
        self.flops: dict[str, int] = defaultdict(int)
        self.autocast_misses = 0

    def start(self, phase: str) -> None:
        self.phase = phase
        self.peaks[phase] = max(self.peaks.get(phase, 0), self.resident + self.current)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in self.known:
            return
        n = storage.nbytes()
        self.live[key] = n
        self.current += n
        weakref.finalize(storage, self._free, key)
        total = self.resident + self.current
        if total > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = total

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if self.funcs is not None and self.funcs.dtype is not None and name in _MATMUL_OPS:
            if any(t.dtype == torch.float32 for t in _floats(args[:3])):
                self.autocast_misses += 1
        fn = self.registry.get(func._overloadpacket)
        if fn is not None:
            self.flops[self.phase] += fn(*args, **kwargs, out_val=out)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == DEVICE:
                self._track(t)
        return out


def storage_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s._cdata] = s.nbytes()
    return sum(seen.values())


def lion8bit_state_bytes(sizes) -> int:
    """bitsandbytes Lion8bit: uint8 state + fp32 absmax per 256-block for tensors >= 4096 elements, fp32 below."""
    from trainer_core.train.memory_model import optimizer_state_bytes

    return optimizer_state_bytes("Lion8bit", sizes)


# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Setup:
    comps: Any
    cfg: Any
    nets: Any = None
    base_params: list[torch.nn.Parameter] = field(default_factory=list)


def resident_tensors(setup: Setup) -> list[torch.Tensor]:
    """Every device tensor that exists before a step: weights and buffers of the four models and the networks."""
    c = setup.comps
    modules = [c.unet, c.text_encoder, c.text_encoder_2, c.vae]
    if setup.nets is not None:
        modules += list(setup.nets.nets.values())
    return [t for m in modules for t in (*m.parameters(), *m.buffers()) if t.device.type == DEVICE]


def build_setup(preset: str = "kohaku-xl-delta", **training: Any) -> Setup:
    """Full-size SDXL on meta, prepared by the trainer's own `prepare_for_training` (dtypes, checkpointing);
    `training` overrides [training] settings of the preset (mixed_precision, vae_dtype, checkpointing)."""
    from trainer_core.hf_quiet import quiet_hf
    from trainer_core.models.architectures import build_empty_components
    from trainer_core.models.tokenizers import load_sdxl_tokenizers
    from trainer_core.train.config import load_preset
    from trainer_core.train.micro_step import prepare_for_training

    cfg = load_preset(preset)
    for key, value in training.items():
        setattr(cfg.training, key, value)
    with quiet_hf():
        parts = build_empty_components("sdxl-base", DEVICE)
    tok1, tok2 = load_sdxl_tokenizers()
    comps = SimpleNamespace(**parts, tokenizer=tok1, tokenizer_2=tok2)
    prepare_for_training(comps, cfg.training, DEVICE)
    base = [p for m in (comps.unet, comps.text_encoder, comps.text_encoder_2) for p in m.parameters()]
    return Setup(comps, cfg, base_params=base)


def set_mode(setup: Setup, mode: str) -> None:
    """Switch the setup's activation checkpointing (training.checkpointing) as the trainer applies it."""
    from trainer_core.train.micro_step import set_checkpointing

    setup.cfg.training.checkpointing = mode
    set_checkpointing(setup.comps, mode)


def add_networks(setup: Setup) -> Any:
    from trainer_core.train.networks import create_networks

    comps = setup.comps
    for m in (comps.unet, comps.text_encoder, comps.text_encoder_2):
        m.requires_grad_(False)
    models = {"unet": comps.unet, "text_encoder": comps.text_encoder, "text_encoder_2": comps.text_encoder_2}
    setup.nets = create_networks(models, setup.cfg.network, device=DEVICE)
    return setup.nets


def model_params(setup: Setup) -> Any:
    """runs.ModelParams of the meta model: component parameter counts and the networks' own tensor sizes."""
    from trainer_core.train.runs import ModelParams

    c = setup.comps
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    sizes = [p.numel() for p in setup.nets.parameters()] if setup.nets is not None else []
    return ModelParams(unet=count(c.unet), text_encoders=count(c.text_encoder) + count(c.text_encoder_2),
                       vae=count(c.vae), lokr_tensor_sizes=sizes)  # fmt: skip


# ------------------------------------------------------------------------------------------ the trace


@dataclass
class Trace:
    width: int
    height: int
    batch: int
    bare: bool
    peaks: dict[str, int]
    flops: dict[str, int]
    resident: int
    gradients: int  # bytes of the LoKr gradients the trace allocates before the step (steady state)
    autocast_misses: int
    seconds: float
    checkpointing: str = "full"  # training.checkpointing of the traced setup

    @property
    def peak(self) -> int:
        return max(self.peaks.values())

    def flops_per_image(self, phase: str) -> float:
        return self.flops.get(phase, 0) / self.batch


def trace_micro_step(setup: Setup, width: int, height: int, batch: int, *, count_flops: bool = True) -> Trace:
    """One steady-state micro-step (+ the optimizer step) of the trainer on meta; the bare SDXL path when the setup
    has no networks yet (then every base weight is trainable and its gradient dropped once accumulated)."""
    from trainer_core.train import micro_step
    from trainer_core.train.loss import alphas_cumprod
    from trainer_core.train.text_encoding import tokenize_captions

    t0 = time.perf_counter()
    comps, cfg = setup.comps, setup.cfg
    bare = setup.nets is None
    hooks = []
    if bare:
        for p in setup.base_params:
            p.requires_grad_(True)
            hooks.append(p.register_post_accumulate_grad_hook(lambda q: setattr(q, "grad", None)))
        params: list[Any] = []
        optimizer_state = 0
    else:
        params = setup.nets.parameters()
        optimizer_state = lion8bit_state_bytes([p.numel() for p in params])
    funcs = CudaLikeFunctions()
    mem = LiveMemory(resident_tensors(setup), funcs, count_flops=count_flops)
    mem.resident += optimizer_state
    resident = mem.resident
    hooks.append(comps.text_encoder.register_forward_pre_hook(lambda *_: mem.start("te_forward")))
    hooks.append(comps.unet.register_forward_pre_hook(lambda *_: mem.start("unet_forward")))
    # Host side, as make_batch leaves it: the pixel batch, the captions' ids, time_ids (not device memory).
    pixels = torch.empty(batch, 3, height, width)
    caption = ", ".join(["1girl", "solo", "looking at viewer", "smile", "outdoors"] * 12)
    max_tokens = cfg.dataset.max_token_length
    ids1 = tokenize_captions([caption] * batch, comps.tokenizer, max_tokens)
    ids2 = tokenize_captions([caption] * batch, comps.tokenizer_2, max_tokens, pad_id=0)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)
    gen = torch.Generator()  # a CPU generator drives meta randn (the meta device has none)
    precision = cfg.training.mixed_precision
    scaler = torch.amp.GradScaler(DEVICE) if precision == "fp16" else None
    if precision in ("fp16", "bf16"):
        half = torch.float16 if precision == "fp16" else torch.bfloat16
        autocast = lambda: funcs.autocast(half)  # noqa: E731 - what accelerator.autocast() is on a GPU
    else:
        autocast = contextlib.nullcontext
    vae_cfg = comps.vae.config
    try:
        with funcs, mem:
            acp = alphas_cumprod().to(DEVICE)
            for p in params:  # steady state of gradient accumulation: every LoKr gradient exists
                p.grad = torch.zeros_like(p)
            mem.start("vae_encode")
            mean, std = micro_step.encode_each(comps.vae, pixels, DEVICE)
            latents, _ = micro_step.sample_latents(mean, std, gen, float(vae_cfg.scaling_factor),
                                                   float(getattr(vae_cfg, "shift_factor", None) or 0.0))  # fmt: skip
            del mean, std
            loss = micro_step.micro_loss(
                comps, cfg, latents, ids1, ids2, time_ids, gen, acp, DEVICE, autocast
            )
            del latents
            mem.start("backward")
            with autocast():  # checkpointed blocks recompute under the autocast state of their forward
                micro_step.backward_micro(loss, cfg.training.gradient_accumulation_steps, scaler)
            del loss
            if params:
                mem.start("optimizer")
                grads = [p.grad for p in params if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads)
                if cfg.optimizer.max_grad_norm:
                    torch.nn.utils.clip_grads_with_norm_(params, cfg.optimizer.max_grad_norm, norm)
                del grads, norm
                # Lion8bit's update: bitsandbytes' fused blockwise kernel, in place on weight and state.
                for p in params:
                    p.grad = None
    finally:
        for h in hooks:
            h.remove()
        if bare:
            for p in setup.base_params:
                p.requires_grad_(False)
                p.grad = None
    grads = sum(p.numel() * p.element_size() for p in params)  # a gradient has its parameter's dtype
    return Trace(width, height, batch, bare, dict(mem.peaks), dict(mem.flops), resident, grads,
                 mem.autocast_misses, time.perf_counter() - t0, cfg.training.checkpointing)  # fmt: skip


# ------------------------------------------------------------------------------------------ report


def write_header_only_sdxl(path: Path) -> Path:
    """A single-file SDXL checkpoint whose header is real (every key and shape of sdxl-base, fp16) and whose data
    is a hole: a sparse file of ~6.9 GB that takes a few hundred KB of disk. What the pre-flight reads."""
    import json
    import math
    import struct

    from trainer_core.models.architectures import sgm_shapes

    header: dict[str, Any] = {}
    offset = 0
    for key, shape in sorted(sgm_shapes("sdxl-base").items()):
        n = math.prod(shape) * 2
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"modelspec.architecture": "stable-diffusion-xl-v1-base"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset)
    return path


def preflight_params(cfg: Any) -> Any:
    """runs.ModelParams as the pre-flight gets them: `count_model_params` on an SDXL checkpoint's header."""
    import tempfile

    from trainer_core.train.runs import count_model_params

    with tempfile.TemporaryDirectory() as tmp:
        return count_model_params(write_header_only_sdxl(Path(tmp) / "sdxl.safetensors"), cfg)


@dataclass
class EstimateCheck:
    trace: Trace
    estimate: dict[str, int]  # memory_model per phase
    preflight_total: int  # runs.estimate_memory(...).total without the GPU overhead

    def errors(self) -> dict[str, float]:
        out = {p: self.estimate[p] / self.trace.peaks[p] - 1 for p in PHASES}
        out["peak"] = self.preflight_total / self.trace.peak - 1
        return out

    def transient_errors(self, floor: int = 256 << 20) -> dict[str, float]:
        """Error of the estimate's part above the resident weights/state/gradients, for phases whose traced
        transient exceeds `floor` (the stricter figure: the resident part is exact by construction)."""
        base = self.trace.resident + self.trace.gradients
        out = {}
        for p in PHASES:
            traced = self.trace.peaks[p] - base
            if traced > floor:
                out[p] = (self.estimate[p] - base) / traced - 1
        return out

    def ok(self, tolerance: float = ESTIMATE_TOLERANCE) -> bool:
        return all(abs(e) <= tolerance for e in self.errors().values())


def check_estimate(setup: Setup, trace: Trace, params: Any) -> EstimateCheck:
    """The pre-flight's figures for the traced configuration: the bucket's area as resolution², its batch."""
    import copy
    import math

    from trainer_core.train.memory_model import estimate_phases
    from trainer_core.train.runs import estimate_memory

    cfg = copy.deepcopy(setup.cfg)
    cfg.training.batch_size = trace.batch
    cfg.training.checkpointing = trace.checkpointing
    cfg.dataset.resolution = math.isqrt(trace.width * trace.height)
    phases = estimate_phases(params, cfg, width=trace.width, height=trace.height).phases
    return EstimateCheck(trace, phases, estimate_memory(params, cfg, gpu=False).total)


def print_table(bare: Trace, lokr: Trace) -> tuple[bool, bool]:
    b = bare.batch
    print(f"SDXL, kohaku-xl-delta preset, {lokr.width}x{lokr.height} batch {b}, 225-token captions, fp16 autocast "
          f"(emulated), checkpointing {lokr.checkpointing}, flash-style attention; meta device")  # fmt: skip
    print(f"{'phase':20} {'TFLOP/img':>10} {'bare':>8} {'ratio':>6}   {'peak GiB':>9} {'bare':>8}")
    for ph in PHASES:
        f1, f0 = lokr.flops_per_image(ph) / 1e12, bare.flops_per_image(ph) / 1e12
        ratio = f"{f1 / f0:6.3f}" if f0 else "     -"
        p1 = lokr.peaks.get(ph)
        p0 = bare.peaks.get(ph)
        s1 = f"{p1 / GIB:9.2f}" if p1 is not None else f"{'-':>9}"
        s0 = f"{p0 / GIB:8.2f}" if p0 is not None else f"{'-':>8}"
        print(f"{PHASE_LABELS[ph]:20} {f1:10.2f} {f0:8.2f} {ratio}   {s1} {s0}")
    total1 = sum(lokr.flops.values()) / b
    bare_sdxl = sum(v for k, v in bare.flops.items() if k != "vae_encode") / b
    vae = lokr.flops_per_image("vae_encode")
    bound = 1.05 * (bare_sdxl + vae)
    print(f"{'total':20} {total1 / 1e12:10.2f} {(bare_sdxl + vae) / 1e12:8.2f} {total1 / (bare_sdxl + vae):6.3f}"
          f"   {lokr.peak / GIB:9.2f} {bare.peak / GIB:8.2f}")  # fmt: skip
    print(f"resident before the step: LoKr path {lokr.resident / GIB:.2f} GiB (frozen weights, LoKr parameters, "
          f"Lion8bit state; the trace adds {lokr.gradients / GIB:.2f} GiB of fp32 LoKr gradients), bare "
          f"{bare.resident / GIB:.2f} GiB (frozen weights)")  # fmt: skip
    ok_flops = total1 <= bound
    ok_peak = lokr.peak <= 16 * GIB
    print(f"bar compute: {total1 / 1e12:.2f} <= 1.05 x ({bare_sdxl / 1e12:.2f} bare + {vae / 1e12:.2f} VAE) = "
          f"{bound / 1e12:.2f} TFLOP/img  {'PASS' if ok_flops else 'FAIL'}")  # fmt: skip
    print(f"bar memory:  peak {lokr.peak / GIB:.2f} <= 16 GiB allocated  {'PASS' if ok_peak else 'FAIL'}")
    if lokr.autocast_misses or bare.autocast_misses:
        print(f"warning: {lokr.autocast_misses + bare.autocast_misses} matmul/conv ops saw fp32 inputs under the "
              "emulated autocast (extend CudaLikeFunctions' policy)")  # fmt: skip
    return ok_flops, ok_peak


CHECKPOINTING_MODES = ("none", "selective", "full")


def trace_modes(setup: Setup, width: int, height: int, batch: int,
                known: dict[str, Trace] | None = None) -> dict[str, Trace]:  # fmt: skip
    """The LoKr micro-step traced under each training.checkpointing mode (`known`: traces already taken); the
    setup is left in its configured mode."""
    configured = setup.cfg.training.checkpointing
    out = dict(known or {})
    try:
        for mode in CHECKPOINTING_MODES:
            if mode not in out:
                set_mode(setup, mode)
                out[mode] = trace_micro_step(setup, width, height, batch)
    finally:
        set_mode(setup, configured)
    return out


def print_modes(traces: dict[str, Trace], params: Any = None) -> None:
    """TFLOP per image and peak allocated GiB (traced, and the pre-flight's estimate) per checkpointing mode."""
    any_trace = next(iter(traces.values()))
    print(f"\ntraining.checkpointing at {any_trace.width}x{any_trace.height} batch {any_trace.batch} (LoKr path, fp16 "
          "autocast emulated): compute per trained image and peak allocated memory")  # fmt: skip
    print(
        f"{'mode':10} {'TFLOP/img':>10} {'vs full':>8} {'recompute':>10} {'peak GiB':>9} {'estimate':>9} {'peak phase':>20}"
    )
    full = traces.get("full")
    none = traces.get("none")
    for mode in CHECKPOINTING_MODES:
        tr = traces.get(mode)
        if tr is None:
            continue
        flops = sum(tr.flops.values()) / tr.batch
        vs = f"{flops / (sum(full.flops.values()) / full.batch):8.3f}" if full else f"{'-':>8}"
        extra = (flops - sum(none.flops.values()) / none.batch) / 1e12 if none else float("nan")
        est = "-"
        if params is not None:
            est = f"{estimate_for(tr, params) / GIB:.2f}"
        phase = PHASE_LABELS[max(tr.peaks, key=lambda p: tr.peaks[p] if p in PHASE_LABELS else -1)]
        print(f"{mode:10} {flops / 1e12:10.2f} {vs} {extra:10.2f} {tr.peak / GIB:9.2f} {est:>9} {phase:>20}")
    print("(recompute: TFLOP/img above 'none', the forward work the backward repeats; estimate: memory_model's peak "
          "for that mode, without the GPU's fixed overhead)")  # fmt: skip


def estimate_for(trace: Trace, params: Any) -> int:
    """memory_model's peak for the trace's configuration and checkpointing mode."""
    from trainer_core.train.config import load_preset
    from trainer_core.train.memory_model import estimate_phases

    cfg = load_preset("kohaku-xl-delta")
    cfg.training.checkpointing = trace.checkpointing
    cfg.training.batch_size = trace.batch
    return estimate_phases(params, cfg, width=trace.width, height=trace.height, batch=trace.batch).peak


def print_estimates(checks: list[EstimateCheck]) -> bool:
    print(
        f"\npre-flight estimate vs trace, GiB (bar: every phase and the peak within {ESTIMATE_TOLERANCE:.0%})"
    )
    print(
        f"{'config':15}"
        + "".join(f"{PHASE_LABELS[p]:>23}" for p in PHASES)
        + f"{'peak (estimate_memory)':>25}"
    )
    for c in checks:
        tr, err = c.trace, c.errors()
        cells = [f"{tr.peaks[p] / GIB:6.2f} {c.estimate[p] / GIB:6.2f} {err[p]:+6.1%}" for p in PHASES]
        cells.append(f"{tr.peak / GIB:6.2f} {c.preflight_total / GIB:6.2f} {err['peak']:+6.1%}")
        held = "*" if (tr.width, tr.height, tr.batch) in HELD_OUT_CONFIGS else ""
        print(f"{f'{tr.width}x{tr.height} b{tr.batch}{held}':15}" + "".join(f"{x:>23}" for x in cells[:-1])
              + f"{cells[-1]:>25}")  # fmt: skip
    print("(each cell: traced, estimated, error; * = held out, not in the bar)")
    print("error of the part above the resident weights, state and gradients (phases with > 256 MiB of it):")
    for c in checks:
        tr = c.trace
        cells = ", ".join(f"{PHASE_LABELS[p]} {e:+.1%}" for p, e in c.transient_errors().items())
        held = " (held out)" if (tr.width, tr.height, tr.batch) in HELD_OUT_CONFIGS else ""
        print(f"  {tr.width}x{tr.height} b{tr.batch}{held}: {cells}")
    checks = [c for c in checks if (c.trace.width, c.trace.height, c.trace.batch) in ESTIMATE_CONFIGS]
    ok = all(c.ok() for c in checks)
    print(
        f"bar estimate: within {ESTIMATE_TOLERANCE:.0%} at {len(checks)} configurations  {'PASS' if ok else 'FAIL'}"
    )
    return ok


def calibrate() -> int:
    """Fit memory_model's constants from traces and print them next to the values the module uses."""
    from trainer_core.train import memory_model as mm

    def rel(tr: Trace, phase: str, grads: int) -> float:
        return (tr.peaks[phase] - tr.resident - grads) / (1 << 20)

    fitted: dict[str, float] = {}
    gc = build_setup()
    add_networks(gc)
    grads = 4 * sum(p.numel() for p in gc.nets.parameters())
    chunks = gc.cfg.dataset.max_token_length // 75
    t1, t4 = (trace_micro_step(gc, 1024, 1024, b, count_flops=False) for b in (1, 4))
    fitted["TE_PER_CHUNK"] = (rel(t4, "te_forward", grads) - rel(t1, "te_forward", grads)) / 3 / chunks
    fitted["TE_CONST"] = rel(t1, "te_forward", grads) - fitted["TE_PER_CHUNK"] * chunks
    fitted["UNET_PER_MP"] = (rel(t4, "unet_forward", grads) - rel(t1, "unet_forward", grads)) / 3
    fitted["UNET_CONST"] = rel(t1, "unet_forward", grads) - fitted["UNET_PER_MP"]
    fitted["BACKWARD_PER_MP"] = (rel(t4, "backward", grads) - rel(t1, "backward", grads)) / 3
    fitted["(backward intercept)"] = rel(t1, "backward", grads) - fitted["BACKWARD_PER_MP"]
    fitted["VAE_PER_MP"] = rel(t1, "vae_encode", grads)
    del gc
    sel = build_setup(checkpointing="selective")
    add_networks(sel)
    s1, s4 = (trace_micro_step(sel, 1024, 1024, b, count_flops=False) for b in (1, 4))
    for phase, name in (("unet_forward", "UNET"), ("backward", "BACKWARD")):
        slope = (rel(s4, phase, grads) - rel(s1, phase, grads)) / 3
        fitted[f"{name}_PER_MP_SELECTIVE"] = slope
        fitted[f"{name}_CONST_SELECTIVE"] = rel(s1, phase, grads) - slope
    del sel
    nogc = build_setup(checkpointing="none")
    add_networks(nogc)
    n1, n2 = trace_micro_step(nogc, 1024, 1024, 1, count_flops=False), trace_micro_step(nogc, 512, 512, 2,
                                                                                         count_flops=False)  # fmt: skip
    fitted["TE_PER_CHUNK_NO_GC"] = (rel(n2, "te_forward", grads) - rel(n1, "te_forward", grads)) / chunks
    fitted["TE_MERGED_NO_GC"] = rel(n1, "te_forward", grads) - fitted["TE_PER_CHUNK_NO_GC"] * chunks
    x1 = rel(n1, "unet_forward", grads) - rel(n1, "te_forward", grads)  # Um + U1n·1·1.0
    x2 = rel(n2, "unet_forward", grads) - rel(n2, "te_forward", grads)  # Um + U1n·2·0.25
    fitted["UNET_PER_MP_NO_GC"] = 2 * (x1 - x2)
    fitted["UNET_MERGED_NO_GC"] = x1 - fitted["UNET_PER_MP_NO_GC"]
    print("memory_model calibration (MiB), full-size SDXL, kohaku-xl-delta networks, fp16 autocast emulated")
    for name, value in fitted.items():
        used = getattr(mm, name, None)
        print(f"  {name:26} fitted {value:9.1f}   memory_model {used if used is not None else '-':>9}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=CARD[0])
    ap.add_argument("--height", type=int, default=CARD[1])
    ap.add_argument("--batch", type=int, default=CARD[2])
    ap.add_argument(
        "--no-estimate-check", action="store_true", help="skip the three-configuration estimate check"
    )
    ap.add_argument(
        "--calibrate", action="store_true", help="fit and print memory_model's constants, then exit"
    )
    ap.add_argument("--modes-only", action="store_true",
                    help="only the none / selective / full checkpointing table (LoKr path)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.calibrate:
        return calibrate()
    if args.modes_only:
        setup = build_setup()
        add_networks(setup)
        print_modes(trace_modes(setup, args.width, args.height, args.batch), preflight_params(setup.cfg))
        return 0

    t0 = time.perf_counter()
    setup = build_setup()
    bare = trace_micro_step(setup, args.width, args.height, args.batch)
    nets = add_networks(setup)
    lokr = trace_micro_step(setup, args.width, args.height, args.batch)
    print(f"networks: {nets.module_count()}, {sum(p.numel() for p in nets.parameters()):,} parameters; fused: "
          f"{nets.fused}")  # fmt: skip
    ok_flops, ok_peak = print_table(bare, lokr)
    params = preflight_params(setup.cfg)
    print_modes(trace_modes(setup, args.width, args.height, args.batch, {lokr.checkpointing: lokr}), params)
    ok_est = True
    if not args.no_estimate_check:
        checks = []
        for w, h, b in ESTIMATE_CONFIGS + HELD_OUT_CONFIGS:
            same = (w, h, b) == (args.width, args.height, args.batch)
            tr = lokr if same else trace_micro_step(setup, w, h, b, count_flops=False)
            checks.append(check_estimate(setup, tr, params))
        ok_est = print_estimates(checks)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0 if ok_flops and ok_peak and ok_est else 1


if __name__ == "__main__":
    sys.exit(main())
