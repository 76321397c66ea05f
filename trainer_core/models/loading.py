"""Load SDXL checkpoints (single file or diffusers folder) into diffusers components, fully offline; save them back.

We convert single files with our own key layout (`sdxl_layout`) and build components from the shipped configs
instead of calling diffusers' `from_single_file`: that path maps unknown files to a hub repo id and, on a cache miss,
may go online (specs/generation.md §8). Here there is simply no code path that could reach a hub.

Checkpoints are untrusted downloads: only safetensors are read unless the caller explicitly allows a pickle, and
then only with `torch.load(weights_only=True)`.

A single file is streamed (issue #14.6): the modules are built on the meta device and each tensor is read from its
byte range straight into the dtype its component is asked for (the trainer asks for its training dtypes), so host
memory peaks at the loaded model, never at the file plus a full-precision copy of it.
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


# safetensors dtype names -> torch dtypes, for the tensors a checkpoint may hold (read_header checked the rest).
_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def component_dtypes(dtype: Any) -> dict[str, Any]:
    """The dtype each component is loaded in: one dtype (or name) for all, or a mapping component -> dtype (a
    component it does not name keeps the file's dtype). None everywhere means "as stored"."""
    if isinstance(dtype, Mapping):
        unknown = sorted(set(dtype) - set(COMPONENTS))
        if unknown:
            raise CheckpointError(
                f"unknown component(s) {', '.join(unknown)} (known: {', '.join(COMPONENTS)})"
            )
        return {c: torch_dtype(dtype.get(c)) for c in COMPONENTS}
    dt = torch_dtype(dtype)
    return {c: dt for c in COMPONENTS}


class _TensorReader:
    """Reads tensors of one safetensors file with plain reads (no memory map), each byte range straight into the
    tensor that keeps it.

    Why not a memory map: the mapped file's pages count in the process's RSS for as long as the map lives, so a
    mapped load peaks at the file's size PLUS the model. Why a scratch buffer: a tensor that must be cast or
    re-laid out (the fp32 VAE of an fp16 file, TE2's transposed projection) is read into one reused buffer and
    converted into its final tensor, so the load allocates nothing but the kept tensors (no freed temporaries
    left as holes in the heap) and host memory peaks at the model plus the largest converted tensor
    (issue #14: host RAM per rank while loading <= checkpoint size + 1 GB).
    """

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.scratch: Any = None

    def _fill(self, t: Any, start: int) -> Any:
        """Read t.nbytes bytes at file offset `start` into the (contiguous CPU) tensor `t`."""
        import sys

        import torch

        nbytes = t.numel() * t.element_size()
        if nbytes == 0:
            return t
        flat = t.reshape(-1).view(torch.uint8)
        view, done = memoryview(flat.numpy()), 0
        self.fh.seek(start)
        while done < nbytes:  # one read() stops at ~2 GiB on Linux
            n = self.fh.readinto(view[done:])
            if not n:
                raise OSError(f"unexpected end of file at byte {start + done:,}")
            done += n
        if sys.byteorder != "little" and t.element_size() > 1:  # safetensors data is little-endian
            ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
            flat.view(ints).numpy().byteswap(inplace=True)
        return t

    def direct(self, entry: Any, shape: tuple[int, ...], start: int | None = None) -> Any:
        """A new tensor of the file's dtype and `shape` (same bytes), read from `start` (default: the entry's)."""
        import torch

        t = torch.empty(shape, dtype=getattr(torch, _TORCH_DTYPES[entry.dtype]))
        return self._fill(t, entry.start if start is None else start)

    def staged(self, entry: Any) -> Any:
        """The entry as a view of the scratch buffer (valid until the next `staged`), for converting from."""
        import torch

        if self.scratch is None or self.scratch.numel() < entry.nbytes:
            self.scratch = torch.empty(entry.nbytes, dtype=torch.uint8)
        dtype = getattr(torch, _TORCH_DTYPES[entry.dtype])
        t = self.scratch[: entry.nbytes].view(dtype).view(entry.shape)
        return self._fill(t, entry.start)


def _converted(src: Any, dtype: Any, device: Any) -> Any:
    """A new contiguous tensor on `device` holding `src` (any strides) in `dtype` (None: src's): one allocation."""
    import torch

    out = torch.empty(src.shape, dtype=dtype or src.dtype, device=device)
    return out.copy_(src)


def _cast(t: Any, dtype: Any, device: Any) -> Any:
    """`t` in `dtype` (floating tensors only; None keeps it) on `device`, never sharing storage with another
    component tensor (a fused q/k/v chunk is a view until cast or cloned)."""
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(device=device, dtype=dtype)
    out = t.to(device)
    return out.clone() if out.data_ptr() == t.data_ptr() and t._base is not None else out


def _read_components(path: Path, header: Any, arch: str, dtypes: Mapping[str, Any], device: Any,
                     meta_keys: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """diffusers state dicts per component (and the extras), each tensor read, laid out and cast ONE at a time."""
    import torch

    from .sdxl_layout import CONV1X1, FUSE_QKV, TRANSPOSE, te1_canonical

    layout = layout_for(arch)
    on_cpu = torch.device(device).type == "cpu"
    comps: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    extras: dict[str, Any] = {}
    try:
        with open(path, "rb", buffering=0) as fh:
            reader = _TensorReader(fh)
            for m in layout.mappings:
                entry = header.tensors.get(m.sgm)
                if entry is None:
                    continue  # an optional extra (logit_scale); required keys were checked with the arch
                if entry.dtype not in _FLOAT_DTYPES:
                    raise CheckpointError(f"tensor '{m.sgm}' has dtype {entry.dtype}, expected a float type",
                                          path=path)  # fmt: skip
                if not m.diffusers:
                    extras[m.sgm] = reader.direct(entry, entry.shape)  # kept as stored, as the layout does
                    continue
                file_dtype = getattr(torch, _TORCH_DTYPES[entry.dtype])
                dt = dtypes[m.component] or file_dtype
                # Same bytes in the same order, kept in the file's dtype on the CPU: read in place, no copy.
                as_is = on_cpu and dt == file_dtype and m.transform != TRANSPOSE
                dest = comps[m.component]
                if m.transform == FUSE_QKV:  # q, k, v stacked along dim 0: three consecutive byte ranges
                    rows = entry.shape[0] // 3
                    part = (rows, *entry.shape[1:])
                    if as_is:
                        step = entry.nbytes // 3
                        for i, name in enumerate(m.diffusers):
                            dest[name] = reader.direct(entry, part, entry.start + i * step)
                    else:
                        fused = reader.staged(entry)
                        for name, chunk in zip(m.diffusers, fused.chunk(3, dim=0), strict=True):
                            dest[name] = _converted(chunk, dt, device)
                    continue
                shape = entry.shape
                if m.transform == CONV1X1:  # LDM's 1x1 conv weight is diffusers' Linear weight: same bytes
                    shape = (entry.shape[0], entry.shape[1])
                if as_is:
                    t = reader.direct(entry, shape)
                else:
                    src = reader.staged(entry)
                    src = src.t() if m.transform == TRANSPOSE else src.view(shape)
                    t = _converted(src, dt, device)
                name = m.diffusers[0]
                dest[te1_canonical(name) if m.component == "text_encoder" else name] = t
    except OSError as exc:
        raise CheckpointError(f"cannot read tensors ({exc.strerror or exc})", path=path) from None
    comps["text_encoder"] = adapt_te1_keys(comps["text_encoder"], meta_keys["text_encoder"])
    return comps, extras


def load_single_file(
    path: str | Path, dtype=None, device: str = "cpu", allow_pickle: bool = False
) -> SdxlComponents:
    """Load an SGM/LDM-keyed SDXL checkpoint into diffusers components (offline, exact tensors).

    `dtype`: one dtype for every component, a mapping component -> dtype (what the trainer passes: UNet and TEs
    in the mixed-precision dtype, the VAE in its own), or None (as stored). safetensors files are streamed: the
    modules are built on the meta device and each tensor is read, cast to its component's dtype, moved to `device`
    and kept, one at a time, so host memory peaks at the loaded model plus one tensor, never at a full-precision
    copy of the checkpoint. Pickles (only with `allow_pickle`) are read whole first.
    """
    path = Path(path)
    dtypes = component_dtypes(dtype)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle_file(path, dtypes, device, allow_pickle)
    header = read_header(path)
    arch = detect_single_file_arch(path, {k: e.shape for k, e in header.tensors.items()})
    models = build_empty_components(arch, "meta")
    keys = {name: model.state_dict().keys() for name, model in models.items()}
    comps_sd, extras = _read_components(path, header, arch, dtypes, device, keys)
    _assign(path, arch, models, comps_sd, device)
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(arch)
    return SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=arch,
                          source=path, extras=extras)  # fmt: skip


def _assign(path: Path, arch: str, models: dict[str, Any], comps_sd: dict[str, dict[str, Any]],
            device: Any) -> None:  # fmt: skip
    """Put each component's tensors into its meta-built module as they are (no copy), eval mode, on `device`."""
    for name, model in models.items():
        try:
            model.load_state_dict(comps_sd[name], strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{name} weights do not fit the {arch} architecture ({exc})", path=path
            ) from None
        comps_sd[name] = {}
        model.to(device)  # the buffers built with the module (CLIP's position_ids)
        model.eval()


def _load_pickle_file(
    path: Path, dtypes: Mapping[str, Any], device: Any, allow_pickle: bool
) -> SdxlComponents:
    """A .ckpt/.pt checkpoint: torch.load(weights_only=True) reads it whole; then the same layout and casts."""
    sd = read_single_file_tensors(path, allow_pickle=allow_pickle)
    arch = detect_single_file_arch(path, {k: tuple(v.shape) for k, v in sd.items()})
    comps_sd, extras, _unexpected = layout_for(arch).from_sgm(sd)
    del sd
    models = build_empty_components(arch, "meta")
    for name, model in models.items():
        state = comps_sd[name]
        if name == "text_encoder":
            state = adapt_te1_keys(state, model.state_dict().keys())
        comps_sd[name] = {k: _cast(v, dtypes[name], device) for k, v in state.items()}
    _assign(path, arch, models, comps_sd, device)
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
    """Load a diffusers-format SDXL folder with local files only; `dtype` as for `load_single_file`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    arch = _folder_arch(folder)
    dtypes = component_dtypes(dtype)
    loaders = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "text_encoder_2": CLIPTextModelWithProjection}  # fmt: skip
    models = {}
    for name, cls in loaders.items():
        sub = folder / name
        if not sub.is_dir():
            raise CheckpointError(f"not a complete diffusers SDXL folder: '{name}/' is missing", path=folder)
        kw: dict[str, Any] = {"local_files_only": True}
        if dtypes[name] is not None:
            kw["torch_dtype"] = dtypes[name]
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
