"""Load SDXL checkpoints (single file or diffusers folder) into diffusers components, fully offline; save them back.

We convert single files with our own key layout (`sdxl_layout`) and build components from the shipped configs
instead of calling diffusers' `from_single_file`: that path maps unknown files to a hub repo id and, on a cache miss,
may go online (specs/generation.md §8). Here there is simply no code path that could reach a hub.

Checkpoints are untrusted downloads: only safetensors are read unless the caller explicitly allows a pickle, and
then only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import CheckpointError
from ..hf_quiet import quiet_hf
from .architectures import ARCHITECTURES, build_empty_components, fingerprint, layout_for, load_config
from .safetensors_header import PICKLE_SUFFIXES, read_header
from .sdxl_layout import COMPONENTS, adapt_te1_keys

MODELSPEC_ARCH = "stable-diffusion-xl-v1-base"


@dataclass
class SdxlComponents:
    """Everything a pipeline or the trainer needs. Tokenizers/scheduler come from the shipped configs."""

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler: Any
    arch: str
    source: Path | None = None
    extras: dict[str, Any] = field(
        default_factory=dict
    )  # single-file tensors with no diffusers home (logit_scale)

    def models(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in COMPONENTS}

    def pipeline(self, scheduler: Any = None, img2img: bool = False):
        """A diffusers SDXL (img2img) pipeline over these components: no copy, no watermark, no progress bar."""
        with quiet_hf():
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

            cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
            pipe = cls(
                vae=self.vae,
                text_encoder=self.text_encoder,
                text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer,
                tokenizer_2=self.tokenizer_2,
                unet=self.unet,
                scheduler=scheduler if scheduler is not None else self.scheduler,
                force_zeros_for_empty_prompt=True,
                add_watermarker=False,
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def torch_dtype(name_or_dtype):
    """A torch dtype from "fp32"/"fp16"/"bf16" (or their long names, or a dtype); None passes through."""
    import torch

    if name_or_dtype is None or isinstance(name_or_dtype, torch.dtype):
        return name_or_dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}  # fmt: skip
    try:
        return names[str(name_or_dtype)]
    except KeyError:
        raise CheckpointError(f"unknown dtype '{name_or_dtype}' (use fp32, fp16 or bf16)") from None


def _scheduler_and_tokenizers(arch: str, folder: Path | None = None):
    from diffusers import EulerDiscreteScheduler

    from .tokenizers import load_sdxl_tokenizers

    sched_cfg = load_config(arch, "scheduler")
    if folder is not None and (folder / "scheduler" / "scheduler_config.json").is_file():
        sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    with quiet_hf():
        scheduler = EulerDiscreteScheduler.from_config(sched_cfg)
    tok1, tok2 = load_sdxl_tokenizers()
    return scheduler, tok1, tok2


def read_single_file_tensors(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """All tensors of a checkpoint file as a dict (safetensors memory-mapped; pickles only when allowed)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            read_header(path)  # raises the explanatory "pickle refused" error
        import torch

        if not path.is_file():
            raise CheckpointError("file not found", path=path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file, not our bug
            raise CheckpointError(f"cannot read pickle checkpoint safely ({exc.__class__.__name__}: {exc})",
                                  path=path) from None  # fmt: skip
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError("pickle does not hold a state dict", path=path)
        return {k: v for k, v in obj.items() if hasattr(v, "shape")}
    header = read_header(path)
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in header.tensors:
                out[key] = fh.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for corrupt data
        raise CheckpointError(f"cannot read tensors ({exc})", path=path) from None
    return out


def detect_single_file_arch(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> str:
    fp = fingerprint(shapes)
    if fp.kind != "sdxl-single-file" or fp.arch is None:
        raise CheckpointError(f"not an SDXL checkpoint: {fp.reason}", path=path)
    expected = layout_for(fp.arch)
    from .architectures import sgm_shapes

    want = sgm_shapes(fp.arch)
    missing = [k for k, m in expected.by_sgm.items() if m.diffusers and k not in shapes]
    if missing:
        raise CheckpointError(
            f"not a complete {fp.arch} checkpoint: {len(missing)} of {len(want)} tensors are missing "
            f"(first: {', '.join(missing[:3])})",
            path=path,
        )
    for key, shape in want.items():
        if key in shapes and tuple(shapes[key]) != tuple(shape):
            raise CheckpointError(
                f"tensor '{key}' has shape {tuple(shapes[key])}, expected {tuple(shape)} for {fp.arch}",
                path=path,
            )
    return fp.arch


def load_single_file(
    path: str | Path, dtype=None, device: str = "cpu", allow_pickle: bool = False
) -> SdxlComponents:
    """Load an SGM/LDM-keyed SDXL checkpoint into diffusers components (offline, exact tensors)."""

    path = Path(path)
    sd = read_single_file_tensors(path, allow_pickle=allow_pickle)
    arch = detect_single_file_arch(path, {k: tuple(v.shape) for k, v in sd.items()})
    comps_sd, extras, _unexpected = layout_for(arch).from_sgm(sd)
    del sd
    dt = torch_dtype(dtype)
    models = build_empty_components(arch, "meta")
    for name, model in models.items():
        state = comps_sd[name]
        if name == "text_encoder":
            state = adapt_te1_keys(state, model.state_dict().keys())
        if dt is not None:
            state = {k: (v.to(dt) if v.is_floating_point() else v) for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{name} weights do not fit the {arch} architecture ({exc})", path=path
            ) from None
        model.to(device)
        model.eval()
        comps_sd[name] = {}
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(arch)
    return SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=arch,
                          source=path, extras=extras)  # fmt: skip


def _folder_arch(folder: Path) -> str:
    unet_cfg = folder / "unet" / "config.json"
    if not unet_cfg.is_file():
        raise CheckpointError("not a diffusers SDXL folder: unet/config.json is missing", path=folder)
    cfg = json.loads(unet_cfg.read_text(encoding="utf-8"))
    for arch in ARCHITECTURES:
        ref = load_config(arch, "unet")
        if all(cfg.get(k) == ref.get(k) for k in ("block_out_channels", "cross_attention_dim",
                                                     "addition_embed_type", "transformer_layers_per_block")):  # fmt: skip
            return arch
    if cfg.get("addition_embed_type") != "text_time":
        raise CheckpointError(
            "not an SDXL diffusers folder (UNet has no text_time conditioning)", path=folder
        )
    raise CheckpointError("SDXL-like diffusers folder with an unknown UNet configuration", path=folder)


def load_diffusers_folder(folder: str | Path, dtype=None, device: str = "cpu") -> SdxlComponents:
    """Load a diffusers-format SDXL folder with local files only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    arch = _folder_arch(folder)
    dt = torch_dtype(dtype)
    kw: dict[str, Any] = {"local_files_only": True}
    if dt is not None:
        kw["torch_dtype"] = dt
    loaders = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}  # fmt: skip
    models = {}
    for name, cls in loaders.items():
        sub = folder / name
        if not sub.is_dir():
            raise CheckpointError(f"not a complete diffusers SDXL folder: '{name}/' is missing", path=folder)
        try:
            with quiet_hf():
                models[name] = cls.from_pretrained(str(sub), **kw).to(device).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load {name}/ ({exc})", path=folder) from None
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(arch, folder)
    return SdxlComponents(
        **models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=arch, source=folder
    )


def load_sdxl(
    path: str | Path, dtype=None, device: str = "cpu", allow_pickle: bool = False
) -> SdxlComponents:
    """Single file or diffusers folder, whichever `path` is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError("file not found", path=path)
    if path.is_dir():
        return load_diffusers_folder(path, dtype=dtype, device=device)
    return load_single_file(path, dtype=dtype, device=device, allow_pickle=allow_pickle)


def components_to_single_file_state(components: SdxlComponents, dtype=None) -> dict[str, Any]:
    """The single-file (SGM) state dict for `components`, optionally cast (floating tensors only).

    Like `state_dict()`, tensors that need no cast or layout change share memory with the live model: copy
    before editing them in place.
    """
    layout = layout_for(components.arch)
    sds = {name: model.state_dict() for name, model in components.models().items()}
    out = layout.to_sgm(sds, components.extras)
    dt = torch_dtype(dtype)
    return {k: (v.to(dt) if dt is not None and v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in out.items()}  # fmt: skip


def checkpoint_metadata(arch: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCH,
        "modelspec.implementation": "sgm",
        "kxl.arch": arch,
        "kxl.version": __version__,
    }
    meta.update(extra or {})
    return meta


def save_single_file(components: SdxlComponents, path: str | Path, dtype=None,
                     metadata: Mapping[str, str] | None = None) -> Path:  # fmt: skip
    """Write an SGM-keyed single-file safetensors (what sd-webui/ComfyUI load), atomically."""
    from .safetensors_writer import save_safetensors

    state = components_to_single_file_state(components, dtype)
    return save_safetensors(path, state, checkpoint_metadata(components.arch, metadata))


def save_diffusers_folder(components: SdxlComponents, folder: str | Path) -> Path:
    """Write a diffusers-format folder (model_index.json, component subfolders, tokenizers, scheduler)."""
    import shutil
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with quiet_hf():
            for name, model in components.models().items():
                model.save_pretrained(str(tmp / name), safe_serialization=True)
            components.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            components.tokenizer_2.save_pretrained(str(tmp / "tokenizer_2"))
            components.scheduler.save_pretrained(str(tmp / "scheduler"))
        src_index = ARCHITECTURES[components.arch].config_dir / "model_index.json"
        shutil.copyfile(src_index, tmp / "model_index.json")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
