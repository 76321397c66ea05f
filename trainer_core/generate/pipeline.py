"""SDXL txt2img (+ hires fix) with A1111 semantics, used by the Generate tab, `kxl generate` and training samples.

One code path: `generate()` loads a base model (cached between calls) and LoKrs, then calls `run_txt2img()`;
`render_samples()` calls the same `run_txt2img()` on the trainer's live components. Conditioning is ours
(conditioning.py: A1111 chunking/emphasis); the denoising loops are diffusers' SDXL pipelines, driven with
precomputed embeddings, A1111 scheduler settings (samplers.py), one generator per image (seed + i) and a
step callback for progress and cancel. Latents are decoded by us in fp32 (the SDXL VAE overflows in fp16).

Progress: a stage event (total None) for each part without steps — loading, encoding, the hires upscale between
the passes, the VAE decode of each batch — and step events `done/total` over all passes and batches in between,
so a caller's label never sits on the last step while an image is decoded.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import Cancelled, KxlError
from ..progress import CancelToken, Progress
from .conditioning import DEFAULT_EMPHASIS
from .infotext import (
    create_infotext,
    format_lora_hashes,
    lora_name_matches,
    lora_prompt_tag,
    write_png_parameters,
)
from .lokr_apply import AppliedLokrs, LokrUse, apply_lokrs
from .prompt import DEFAULT_COMMA_BACKTRACK, check_emphasis, strip_extra_networks
from .samplers import AUTOMATIC, DEFAULT_SAMPLER, DEFAULT_STEPS, ResolvedSampler, make_scheduler
from .scheduled_conditioning import ScheduledConditioning, schedule_steps

MAX_SEED = 4294967294  # A1111 draws random seeds in [0, 4294967294)
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("Lanczos", "Nearest", "None")
UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)
VERSION_TEXT = f"kxl {__version__}"
_OUTPUT_NAME = re.compile(r"^(\d{5})-")


@dataclass
class SampleSettings:
    """What one txt2img run needs besides the model: shared by the Generate tab, the CLI and training samples.

    Sizes are the FIRST pass; hires multiplies them.
    """

    prompt: str
    negative: str = ""
    steps: int = DEFAULT_STEPS
    cfg: float = 7.0
    sampler: str = DEFAULT_SAMPLER
    schedule: str = AUTOMATIC
    seed: int = 0  # training samples: a fixed seed, so samples of successive steps compare
    width: int = 1024
    height: int = 1024
    batch_count: int = 1
    batch_size: int = 1
    emphasis: str = DEFAULT_EMPHASIS
    hires: bool = False
    hires_scale: float = 1.5
    hires_steps: int = 0  # 0: same as steps
    denoise: float = 0.5
    hires_upscaler: str = "Latent"
    comma_backtrack: int = DEFAULT_COMMA_BACKTRACK

    def validate(self) -> None:
        """Raise KxlError naming the first bad setting."""
        check_emphasis(self.emphasis)
        for name, value in (("width", self.width), ("height", self.height)):
            if not 64 <= value <= 4096 or value % 8:
                raise KxlError(f"{name} {value} is not a valid size: use a multiple of 8 between 64 and 4096")
        _check_range("steps", self.steps, 1, 500)
        _check_range("batch count", self.batch_count, 1, 1000)
        _check_range("batch size", self.batch_size, 1, 64)
        if not 0 <= self.cfg <= 100:
            raise KxlError(f"CFG scale {self.cfg} is out of range (0..100)")
        if not -1 <= self.seed < 2**32:
            raise KxlError(f"seed {self.seed} is out of range (-1 for random, else 0..4294967295)")
        if self.hires:
            if not 1.0 <= self.hires_scale <= 4.0:
                raise KxlError(f"hires upscale {self.hires_scale} is out of range (1..4)")
            if not 0.0 < self.denoise <= 1.0:
                raise KxlError(
                    f"hires denoising strength {self.denoise} is out of range: use a value in (0, 1]"
                )
            _check_range("hires steps", self.hires_steps, 0, 500)
            if self.hires_upscaler not in UPSCALERS:
                raise KxlError(
                    f"unknown hires upscaler {self.hires_upscaler!r}; choose one of {', '.join(UPSCALERS)}"
                )
            tw, th = self.hires_size()
            if max(tw, th) > 8192:
                raise KxlError(f"hires target {tw}x{th} is too large (max 8192 per side)")

    def hires_size(self) -> tuple[int, int]:
        """Second-pass size: int(side * scale) rounded down to a multiple of 8 (the latent grid)."""
        return (int(self.width * self.hires_scale) // 8 * 8, int(self.height * self.hires_scale) // 8 * 8)

    @property
    def images_total(self) -> int:
        return self.batch_count * self.batch_size


@dataclass(kw_only=True)
class GenerationRequest(SampleSettings):
    """Everything one press of Generate needs: the settings plus the model, LoKrs and where images go."""

    model: Path
    lokrs: list[LokrUse] = field(default_factory=list)
    seed: int = -1  # -1: random, drawn when the request runs
    width: int = 0  # 0: the model's native size (native_size.default_generation_size): 128 demo, 1024 SDXL
    height: int = 0
    out_dir: Path | None = None
    device: str | None = None  # None: CUDA when available, else CPU
    dtype: str | None = None  # None: fp16 on CUDA, fp32 on CPU


@dataclass
class GeneratedImage:
    path: Path | None
    seed: int
    infotext: str
    image: Any  # PIL.Image


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    warnings: list[str]
    seconds: float


def hires_schedule(hires_steps: int, denoise: float) -> tuple[int, float]:
    """(num_inference_steps N, diffusers strength) that run exactly `hires_steps` steps (specs §5.5).

    A1111 builds an N = int(H / d)-step schedule and runs its last H steps; diffusers' img2img runs
    int(N * strength) steps, so strength = (H + 0.5) / N gives exactly H (plain `strength = d` loses one).
    """
    d = min(denoise, 0.999)
    total = max(hires_steps, int(hires_steps / d))
    return total, min(1.0, (hires_steps + 0.5) / total)


# ------------------------------------------------------------------------------------------- model cache


@dataclass
class _Cached:
    key: tuple
    components: Any
    lokr_key: tuple = ()
    applied: AppliedLokrs | None = None
    lokr_warnings: list[str] = field(default_factory=list)


_cache: _Cached | None = None
_cache_lock = threading.Lock()


def clear_model_cache() -> None:
    """Drop the cached base model (frees its memory)."""
    global _cache
    with _cache_lock:
        _cache = None


def _file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _model_key(path: Path, device: str, dtype: str) -> tuple:
    # A diffusers folder changes when its UNet weights change; its config.json mtime alone would not tell.
    probe = path
    if path.is_dir():
        weights = sorted((path / "unet").glob("*.safetensors")) or [path / "unet" / "config.json"]
        probe = weights[0]
    return (_file_key(path) if path.is_file() else str(path.resolve()), _file_key(probe), device, dtype)


def _load_components(
    request: GenerationRequest, device: str, dtype: str, progress: Progress | None
) -> _Cached:
    global _cache
    from ..models.loading import load_sdxl

    path = Path(request.model)
    if not path.exists():
        raise KxlError(
            "base model not found", path=path, hint="pick a checkpoint in the model panel or --model"
        )
    key = _model_key(path, device, dtype)
    if _cache is not None and _cache.key == key:
        return _cache
    if _cache is not None and _cache.applied is not None:
        _cache.applied.restore()
    _cache = None  # free the old model before loading the new one
    if progress is not None:
        progress.stage(f"loading {path.name}")
    components = load_sdxl(path, dtype=dtype, device=device)
    _cache = _Cached(key, components)
    return _cache


def _sync_lokrs(cached: _Cached, lokrs: Sequence[LokrUse], progress: Progress | None) -> list[str]:
    """Make the cached model carry exactly `lokrs`; reuse the merge when the set did not change."""
    for use in lokrs:
        if not Path(use.path).is_file():
            raise KxlError("LoKr file not found", path=use.path)
    lokr_key = tuple((_file_key(Path(u.path)), float(u.multiplier)) for u in lokrs)
    if lokr_key == cached.lokr_key:
        return list(cached.lokr_warnings)
    if cached.applied is not None:
        cached.applied.restore()
        cached.applied = None
    cached.lokr_key, cached.lokr_warnings = (), []
    if lokrs:
        if progress is not None:
            progress.stage(f"applying {len(lokrs)} LoKr file(s)")
        cached.applied = apply_lokrs(cached.components, list(lokrs), progress)
        cached.lokr_warnings = list(cached.applied.warnings)
    cached.lokr_key = lokr_key
    return list(cached.lokr_warnings)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------------ generate


def generate(
    request: GenerationRequest, progress: Progress | None = None, cancel: CancelToken | None = None
) -> GenerationResult:
    """Run a request end to end: model (cached), LoKrs, images written as PNGs with A1111 infotext."""
    from ..hashing import safetensors_payload_hash, short_hash

    started = time.monotonic()
    if not (request.width and request.height):
        from .native_size import default_generation_size

        width, height = default_generation_size(request.model)
        request = replace(request, width=request.width or width, height=request.height or height)
    request.validate()
    device = request.device or default_device()
    dtype = request.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    check = _cancel_check(progress, cancel)
    model_path = Path(request.model)
    with _cache_lock:
        cached = _load_components(request, device, dtype, progress)
        check()
        warnings = _sync_lokrs(cached, request.lokrs, progress)
        check()
        if progress is not None and model_path.is_file():
            progress.stage("hashing model (once per file)")
        model_hash = short_hash(model_path) if model_path.is_file() else None
        lora_hashes = format_lora_hashes(
            (Path(u.path).stem, safetensors_payload_hash(u.path)) for u in request.lokrs
        )
        warnings += _prompt_lora_warnings(request)
        settings = replace(request, seed=random.randrange(MAX_SEED)) if request.seed == -1 else request
        tagged = [name for kind, name, _ in strip_extra_networks(request.prompt)[1] if kind == "lora"]
        extra_prompt = "".join(
            " " + lora_prompt_tag(Path(u.path).stem, u.multiplier)
            for u in request.lokrs
            if not any(lora_name_matches(name, Path(u.path).stem) for name in tagged)
        )
        images = run_txt2img(
            cached.components,
            settings,
            out_dir=request.out_dir,
            infotext_params={
                "Model hash": model_hash,
                "Model": model_path.stem if model_path.is_file() else model_path.name,
                "Lora hashes": lora_hashes or None,
            },
            infotext_prompt=request.prompt + extra_prompt,
            progress=progress,
            check=check,
            warnings=warnings,
        )
    return GenerationResult(images, warnings, time.monotonic() - started)


def render_samples(
    components: Any,
    prompts: Sequence[str | SampleSettings],
    out_dir: str | Path | None = None,
    *,
    defaults: SampleSettings | None = None,
    file_stem: str = "sample",
    model_name: str | None = None,
    progress: Progress | None = None,
) -> list[GeneratedImage]:
    """Render sample prompts with the trainer's live components through the Generate tab's code path.

    A prompt may be plain text (then `defaults` supply the settings) or a SampleSettings. Files are named
    `<file_stem>-<index:02d>-<seed>.png`. Models are put in eval mode and gradients are off for the duration;
    their previous modes are restored afterwards.
    """
    base = defaults or SampleSettings(prompt="")
    items = []
    for p in prompts:
        if isinstance(p, SampleSettings):
            items.append(p)
        else:
            items.append(SampleSettings(**{**base.__dict__, "prompt": p}))
    modes = {name: m.training for name, m in _models(components).items()}
    check = _cancel_check(progress, None)
    out: list[GeneratedImage] = []
    try:
        for m in _models(components).values():
            m.eval()
        for index, settings in enumerate(items):
            out += run_txt2img(
                components,
                settings,
                out_dir=out_dir,
                infotext_params={"Model": model_name},
                progress=progress,
                check=check,
                warnings=[],
                name_for=lambda seed, i=index: f"{file_stem}-{i:02d}-{seed}.png",
            )
    finally:
        for name, m in _models(components).items():
            m.train(modes[name])
    return out


def run_txt2img(
    components: Any,
    settings: SampleSettings,
    *,
    out_dir: str | Path | None,
    infotext_params: dict[str, Any],
    progress: Progress | None,
    check: Callable[[], None],
    warnings: list[str],
    infotext_prompt: str | None = None,
    name_for: Callable[[int], str] | None = None,
) -> list[GeneratedImage]:
    """Generate `batch_count x batch_size` images with `components` as they are (LoKrs already applied)."""
    import torch

    resolved_main = _resolved(components, settings.sampler, settings.schedule, warnings)
    unet = components.unet
    device = next(unet.parameters()).device
    unet_dtype = next(unet.parameters()).dtype
    if progress is not None:
        progress.stage("encoding prompt")
    # Prompt editing ([from:to:when], [a|b]) is followed per model call; a plain prompt is one schedule entry.
    first_conds = ScheduledConditioning(
        settings.prompt, settings.negative, components, settings.emphasis, settings.comma_backtrack,
        schedule_steps(resolved_main.sampler, settings.steps),
    )  # fmt: skip
    hires_conds = None
    if settings.hires:
        hires_conds = ScheduledConditioning(
            settings.prompt, settings.negative, components, settings.emphasis, settings.comma_backtrack,
            schedule_steps(resolved_main.sampler, settings.hires_steps or settings.steps),
            first_pass_steps=schedule_steps(resolved_main.sampler, settings.steps),
        )  # fmt: skip
    with torch.no_grad():
        first_embeds = first_conds.pipeline_embeds(0, device, unet_dtype)
        hires_embeds = hires_conds.pipeline_embeds(0, device, unet_dtype) if hires_conds is not None else None
    steps_per_batch = _loop_length(components, resolved_main, settings.steps)
    hires_n = None
    hires_steps = settings.hires_steps or settings.steps
    if settings.hires:
        hires_n, _ = hires_schedule(hires_steps, settings.denoise)
        steps_per_batch += _loop_length(components, resolved_main, hires_n, hires_steps)
    total = steps_per_batch * settings.batch_count
    state: dict[str, Any] = {"done": 0, "image": 0, "pass": ""}
    n_images = settings.batch_count * settings.batch_size
    # Steps report on a clock of their own: the stages announced between them (hires upscale, VAE decode) would
    # otherwise restart the rate behind the ETA. Their time still counts, so the ETA includes the decodes.
    steps = _step_progress(progress)

    def images_label() -> str:
        first = state["image"] + 1
        last = min(first + settings.batch_size - 1, n_images)
        return f"image {first}/{n_images}" if first == last else f"images {first}-{last}/{n_images}"

    def step_callback(conds: ScheduledConditioning) -> Callable[[Any, int, Any, dict], dict]:
        def on_step(pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
            state["done"] += 1
            if steps is not None:
                steps.update(min(state["done"], total), total, images_label() + state["pass"])
            check()
            # the texts of the next model call, when prompt editing changes them there
            return conds.loop_update(
                i + 1, settings.batch_size, pipe.do_classifier_free_guidance, device, unet_dtype
            )

        return on_step

    if progress is not None and steps is not None:
        progress.stage(f"generating {n_images} image(s)")
        steps.update(0, total, f"generating {n_images} image(s)")
    params = _infotext_params(settings, resolved_main, infotext_params)
    prompt_text = settings.prompt if infotext_prompt is None else infotext_prompt
    results: list[GeneratedImage] = []
    with torch.no_grad():
        for batch in range(settings.batch_count):
            seeds = [settings.seed + batch * settings.batch_size + j for j in range(settings.batch_size)]
            state["image"], state["pass"] = batch * settings.batch_size, ""
            latents = _first_pass(
                components, settings, resolved_main, first_embeds, seeds, device, step_callback(first_conds)
            )
            if settings.hires:
                if progress is not None:
                    progress.stage(_hires_stage(settings, images_label()))
                state["pass"] = ", hires pass"
                latents = _hires_pass(
                    components, settings, resolved_main, hires_embeds, seeds, device, latents,
                    hires_n, hires_steps, step_callback(hires_conds),
                )  # fmt: skip
            check()
            if progress is not None:
                progress.stage(f"decoding {images_label()} (VAE)")
            pil_images = decode_latents(components.vae, latents)
            for seed, image in zip(seeds, pil_images, strict=True):
                text = create_infotext(prompt_text, settings.negative, {**params, "Seed": seed})
                path = None
                if out_dir is not None:
                    path = _write_image(Path(out_dir), image, text, seed, name_for)
                results.append(GeneratedImage(path, seed, text, image))
    if progress is not None:
        progress.update(total, total, "done")
    return results


def _step_progress(progress: Progress | None) -> Progress | None:
    if progress is None:
        return None
    return Progress(
        callback=progress.callback, cancel_token=progress.cancel_token, min_interval_s=progress.min_interval_s
    )


def _hires_stage(settings: SampleSettings, images: str) -> str:
    """The stage between the two passes: a latent upscale is instant; an image upscaler decodes with the VAE
    first, which on a CPU takes as long as several steps."""
    w = int(settings.width * settings.hires_scale) // 8 * 8
    h = int(settings.height * settings.hires_scale) // 8 * 8
    latent = settings.hires_upscaler in LATENT_UPSCALERS
    how = "upscaling latents" if latent else "decoding (VAE) and upscaling"
    return f"hires fix, {images}: {how} to {w}x{h} ({settings.hires_upscaler})"


# ------------------------------------------------------------------------------------------------ passes


def _pipeline(components: Any, scheduler: Any, img2img: bool = False) -> Any:
    return components.pipeline(scheduler=scheduler, img2img=img2img)


def _generators(seeds: Sequence[int], device: Any) -> list[Any]:
    import torch

    # One generator per image, freshly seeded: image i is the same whatever the batch size (A1111 "seed + i").
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _repeat(embeds: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in embeds.items()}


def _scheduler(components, resolved, seeds):
    """A1111's sampler for one pass: Brownian trees from the image seeds (SDE samplers), float32 latents between
    the UNet calls, the UNet fed in its own dtype."""
    scheduler = make_scheduler(components.scheduler.config, resolved.sampler, resolved.schedule)[0]
    scheduler.use_image_seeds(seeds)
    scheduler.model_dtype = next(components.unet.parameters()).dtype
    return scheduler


def _image_noise(generators: Sequence[Any], shape: tuple[int, ...], device: Any) -> Any:
    """A1111's ImageRNG first draw: one float32 standard-normal latent per image from that image's generator (the
    same generators then give the ancestral noise)."""
    import torch

    draws = [torch.randn(shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device)


def _first_pass(components, settings, resolved, embeds, seeds, device, on_step):
    scheduler = _scheduler(components, resolved, seeds)
    generators = _generators(seeds, device)
    pipe = _pipeline(components, scheduler)
    scale = pipe.vae_scale_factor
    shape = (components.unet.config.in_channels, settings.height // scale, settings.width // scale)
    noise = _image_noise(generators, shape, device)
    out = pipe(
        **_repeat(embeds, len(seeds)),
        height=settings.height,
        width=settings.width,
        num_inference_steps=settings.steps,
        guidance_scale=settings.cfg,
        latents=noise,  # the pipeline scales it by init_noise_sigma (A1111: noise * sigmas[0])
        generator=generators,
        output_type="latent",
        callback_on_step_end=on_step,
    )
    return out.images


def _hires_pass(
    components, settings, resolved, embeds, seeds, device, latents, n_steps, hires_steps, on_step
):
    import torch.nn.functional as F

    target_w, target_h = (int(settings.width * settings.hires_scale) // 8 * 8,
                          int(settings.height * settings.hires_scale) // 8 * 8)  # fmt: skip
    # A1111 img2img: the schedule of n_steps = int(H / denoise) steps, its last H steps run. The scheduler does the
    # split itself; the pipeline runs at strength 1 so that it keeps every call the scheduler plans.
    scheduler = _scheduler(components, resolved, seeds)  # fresh trees from the same seeds, as A1111
    scheduler.denoise_steps = hires_steps
    generators = _generators(seeds, device)  # fresh noise from the same seeds, as A1111 does
    noised = None
    if settings.hires_upscaler in LATENT_UPSCALERS:
        mode, antialias = LATENT_UPSCALERS[settings.hires_upscaler]
        kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        image: Any = F.interpolate(latents, size=(target_h // 8, target_w // 8), mode=mode, **kwargs)
        scheduler.set_timesteps(n_steps)
        noised = scheduler.add_noise(image, _image_noise(generators, tuple(image.shape[1:]), device))
    else:
        from PIL import Image

        resample = (
            Image.Resampling.NEAREST if settings.hires_upscaler == "Nearest" else Image.Resampling.LANCZOS
        )
        # the pipeline encodes these with the VAE and noises them through scheduler.add_noise
        image = [im.resize((target_w, target_h), resample) for im in decode_latents(components.vae, latents)]
    pipe = _pipeline(components, scheduler, img2img=True)
    out = pipe(
        **_repeat(embeds, len(seeds)),
        image=image,
        latents=noised,
        height=target_h,
        width=target_w,
        strength=1.0,
        num_inference_steps=n_steps,
        guidance_scale=settings.cfg,
        generator=generators,
        output_type="latent",
        callback_on_step_end=on_step,
    )
    return out.images


def decode_latents(vae: Any, latents: Any) -> list[Any]:
    """UNet-space latents -> PIL images, decoded in fp32 (the VAE is cast back to its dtype afterwards)."""
    import numpy as np
    import torch
    from PIL import Image

    dtype = next(vae.parameters()).dtype
    try:
        # torch's own Module.to: diffusers' override warns on every dtype cast of a VAE (two lines per picture)
        if dtype != torch.float32:
            torch.nn.Module.to(vae, torch.float32)
        scaled = latents.to(torch.float32) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            scaled = scaled + shift
        with torch.no_grad():
            pixels = vae.decode(scaled).sample
    finally:
        if dtype != torch.float32:
            torch.nn.Module.to(vae, dtype)
    arrays = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


def _loop_length(
    components: Any, resolved: ResolvedSampler, steps: int, denoise_steps: int | None = None
) -> int:
    """How many denoising-loop iterations (callback calls, model calls) a pass makes: the sampler's own plan
    (2 x steps - 1 for the second-order ones, more for Restart, one fewer for DDIM, ...); `denoise_steps` for
    the hires pass (the last H of `steps`)."""
    scheduler = make_scheduler(components.scheduler.config, resolved.sampler, resolved.schedule)[0]
    scheduler.denoise_steps = denoise_steps
    scheduler.set_timesteps(steps)
    return max(1, len(scheduler.timesteps))


# ------------------------------------------------------------------------------------------------ helpers


def _infotext_params(
    settings: SampleSettings, resolved: ResolvedSampler, extra: dict[str, Any]
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "Steps": settings.steps,
        "Sampler": resolved.sampler,
        "Schedule type": resolved.infotext_schedule,
        "CFG scale": settings.cfg,
        "Seed": settings.seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": extra.get("Model hash"),
        "Model": extra.get("Model"),
    }
    if resolved.schedule == "Beta":  # A1111 records the beta distribution's shape with that schedule
        from .kdiffusion_sigmas import BETA_ALPHA, BETA_BETA

        params["Beta schedule alpha"] = BETA_ALPHA
        params["Beta schedule beta"] = BETA_BETA
    if settings.hires:
        params["Denoising strength"] = settings.denoise
        params["Hires upscale"] = settings.hires_scale
        params["Hires steps"] = settings.hires_steps or None
        params["Hires upscaler"] = settings.hires_upscaler
    params["Lora hashes"] = extra.get("Lora hashes")
    params["Emphasis"] = settings.emphasis
    params["Version"] = VERSION_TEXT
    return params


def _resolved(components: Any, sampler: str, schedule: str, warnings: list[str]) -> ResolvedSampler:
    resolved = make_scheduler(components.scheduler.config, sampler, schedule)[1]
    if resolved.note:
        warnings.append(resolved.note)
    return resolved


def _write_image(
    out_dir: Path, image: Any, text: str, seed: int, name_for: Callable[[int], str] | None
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if name_for is not None:
        path = out_dir / name_for(seed)
    else:
        # A1111 naming: a running 5-digit counter, then the seed.
        numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _OUTPUT_NAME.match(p.name))]
        path = out_dir / f"{max(numbers, default=-1) + 1:05d}-{seed}.png"
    write_png_parameters(image, path, text)
    return path


def _cancel_check(progress: Progress | None, cancel: CancelToken | None) -> Callable[[], None]:
    def check() -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        if progress is not None:
            progress.check_cancelled()

    return check


def _prompt_lora_warnings(request: GenerationRequest) -> list[str]:
    _, tags = strip_extra_networks(request.prompt)
    chosen = [Path(u.path).stem for u in request.lokrs]
    return [
        f"<{kind}:{name}> in the prompt is ignored: add the file to the LoKr list (or --lokr) to use it"
        for kind, name, _ in tags
        if kind != "lora" or not any(lora_name_matches(name, stem) for stem in chosen)
    ]


def _models(components: Any) -> dict[str, Any]:
    return {n: getattr(components, n) for n in ("unet", "vae", "text_encoder", "text_encoder_2")}


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or not low <= value <= high:
        raise KxlError(f"{name} {value!r} is out of range ({low}..{high})")
