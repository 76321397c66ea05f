"""What a run saves: LoKr files for users, full training states for `--resume`.

LoKr file (`checkpoints/<name>-step00000100.safetensors`, and `<name>.safetensors` at the end): fp16 tensors under
kohya/SGM names (`lora_unet_<SGM path>`, `lora_te1_text_model_...`, `lora_te2_text_model_...`), taken from the one
key map in `trainer_core.lokr.keys`, so sd-webui and ComfyUI load it and our merge/generate read it back; `ss_*` and
`modelspec.*` metadata as sd-scripts writes them (tag frequency included). Written with our deterministic writer.

Training state (`checkpoints/state-00000100/`): the networks in fp32 under their LyCORIS names, the optimizer and
GradScaler state, RNG states and `train_state.json` (step, epoch, samples seen, the config's resume fingerprint,
world size). The folder is written under a temporary name and renamed, so a SIGKILL leaves either the previous
state or the new one, never half of one. Every file in it is data (safetensors + JSON, state_codec.py): run
folders get shared, and `--resume` must never run code read from one. States written by older versions as
`.pt` pickles are read with `torch.load(weights_only=True)` and an allow-list of numpy's array types only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import KxlError
from ..lokr.keys import module_targets
from ..models.safetensors_writer import save_safetensors
from .config import TrainConfig
from .state_codec import load_state_object, save_state_object

STATE_PREFIX = "state-"
TRAIN_STATE_FILE = "train_state.json"
BASE_MODEL_VERSION = "sdxl_base_v1-0"
MODELSPEC_ARCH = "stable-diffusion-xl-v1-base/lora"


def canonical_names(lycoris_names: list[str], arch: str) -> dict[str, str]:
    """LyCORIS module name -> kohya/SGM module name (TE1 gains `text_model_` under transformers 5)."""
    table = module_targets(arch)
    out = {}
    for name in lycoris_names:
        target = table.get(name)
        if target is None:
            raise KxlError(f"network module '{name}' has no home in the {arch} checkpoint layout")
        out[name] = target.name
    return out


def lokr_tensors(state: dict[str, Any], arch: str, dtype: Any = None) -> dict[str, Any]:
    """Network state (LyCORIS names) -> file tensors (kohya/SGM names), cast to `dtype`, on the CPU."""
    modules = sorted({k.rsplit(".", 1)[0] for k in state})
    names = canonical_names(modules, arch)
    out = {}
    for key, value in state.items():
        module, suffix = key.rsplit(".", 1)
        t = value.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[f"{names[module]}.{suffix}"] = t.contiguous()
    return out


def lokr_metadata(cfg: TrainConfig, *, step: int, epoch: int, num_images: int, tag_frequency: dict[str, Any],
                  bucket_counts: dict[tuple[int, int], int], base_hash: str = "") -> dict[str, str]:  # fmt: skip
    """sd-scripts-style `ss_*` keys plus `modelspec.*` (title, architecture, implementation, date)."""
    n, o, t, d = cfg.network, cfg.optimizer, cfg.training, cfg.dataset
    network_args = {"conv_dim": str(n.conv_dim), "conv_alpha": str(n.conv_alpha), "algo": n.algo,
                    "factor": str(n.factor), "train_norm": str(n.train_norm), "dropout": "0",
                    "preset": "kohaku-xl-delta", "module_factors": json.dumps(n.module_factors)}  # fmt: skip
    if n.full_matrix:
        network_args["full_matrix"] = "True"
    buckets = {
        str(i): {"resolution": [w, h], "count": c} for i, ((w, h), c) in enumerate(bucket_counts.items())
    }
    meta = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(n.dim),
        "ss_network_alpha": str(n.alpha),
        "ss_network_args": json.dumps(network_args),
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_sd_model_name": Path(cfg.model.base).name,
        "ss_new_sd_model_hash": base_hash,
        "ss_v2": "False",
        "ss_v_parameterization": str(cfg.model.v_prediction),
        "ss_output_name": cfg.output.name,
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(num_images),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_learning_rate": str(o.unet_lr),
        "ss_unet_lr": str(o.unet_lr),
        "ss_text_encoder_lr": str(o.text_encoder_lr),
        "ss_lr_scheduler": o.lr_scheduler,
        "ss_lr_warmup_steps": str(o.lr_warmup_steps),
        "ss_optimizer": f"{o.type}(weight_decay={o.weight_decay},betas={tuple(o.betas)})",
        "ss_max_grad_norm": str(o.max_grad_norm),
        "ss_mixed_precision": t.mixed_precision,
        "ss_full_fp16": "False",
        "ss_min_snr_gamma": str(t.min_snr_gamma),
        "ss_noise_offset": str(t.noise_offset),
        "ss_seed": str(t.seed),
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_max_token_length": str(d.max_token_length),
        "ss_resolution": f"({d.resolution}, {d.resolution})",
        "ss_enable_bucket": "True",
        "ss_min_bucket_reso": str(d.min_bucket_reso),
        "ss_max_bucket_reso": str(d.max_bucket_reso),
        "ss_bucket_no_upscale": str(d.bucket_no_upscale),
        "ss_bucket_info": json.dumps({"buckets": buckets}),
        "ss_shuffle_caption": str(d.shuffle_caption),
        "ss_keep_tokens": str(d.keep_tokens),
        "ss_caption_tag_dropout_rate": str(d.caption_tag_dropout_rate),
        "ss_caption_dropout_rate": str(d.caption_dropout_rate),
        "ss_tag_frequency": json.dumps(tag_frequency, ensure_ascii=False),
        "ss_training_comment": "Kohaku XL Workbench",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCH,
        "modelspec.implementation": "sgm",
        "modelspec.title": cfg.output.name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.resolution": f"{d.resolution}x{d.resolution}",
        "kxl.version": __version__,
        # which base this LoKr was trained on, so Generate can select it (by path, else by hash or name)
        "kxl.base_model": str(cfg.base_path),
    }
    if not base_hash and cfg.base_path.is_file():
        from ..hashing import cached_sha256

        # only a hash computed before: a save must never read a 7 GB base
        meta["ss_new_sd_model_hash"] = cached_sha256(cfg.base_path) or ""
    return meta


def save_lokr(path: str | Path, state: dict[str, Any], arch: str, metadata: dict[str, str]) -> Path:
    import torch

    return save_safetensors(path, lokr_tensors(state, arch, torch.float16), metadata)


# ------------------------------------------------------------------------------------------ training state


@dataclass
class TrainState:
    step: int  # optimizer steps done
    epoch: int  # epoch the next micro-batch belongs to (0-based)
    samples_seen: int
    fingerprint: str
    world_size: int
    path: Path | None = None


def state_dirs(checkpoints: Path) -> list[Path]:
    """Complete state folders, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith(STATE_PREFIX)
             and (p / TRAIN_STATE_FILE).is_file() and p.name[len(STATE_PREFIX):].isdigit()]  # fmt: skip
    return sorted(found, key=lambda p: int(p.name[len(STATE_PREFIX) :]))


def save_train_state(checkpoints: Path, state: TrainState, network_state: dict[str, Any], optimizer: Any,
                     scaler: Any = None, keep: int = 2) -> Path:  # fmt: skip
    """Write `state-<step>/` atomically (temp folder + rename) and prune to the newest `keep` states."""
    import random

    import numpy as np
    import torch

    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"{STATE_PREFIX}{state.step:08d}"
    tmp = checkpoints / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").float().contiguous() for k, v in network_state.items()}
        save_safetensors(tmp / "networks.safetensors", tensors)
        save_state_object(tmp, "optimizer", optimizer.state_dict())
        if scaler is not None:
            save_state_object(tmp, "scaler", scaler.state_dict())
        save_state_object(tmp, "rng", {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                       "python": random.getstate(),
                                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})  # fmt: skip
        info = {"step": state.step, "epoch": state.epoch, "samples_seen": state.samples_seen,
                "fingerprint": state.fingerprint, "world_size": state.world_size, "saved": time.time()}  # fmt: skip
        (tmp / TRAIN_STATE_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in state_dirs(checkpoints)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_train_state(path: Path) -> TrainState:
    try:
        info = json.loads((path / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
        return TrainState(int(info["step"]), int(info["epoch"]), int(info["samples_seen"]), str(info["fingerprint"]),
                          int(info["world_size"]), path)  # fmt: skip
    except (OSError, ValueError, KeyError) as exc:
        raise KxlError(f"training state is unreadable ({exc})", path=path) from None


def load_train_state(path: Path, networks: Any, optimizer: Any, scaler: Any = None) -> TrainState:
    """Restore networks, optimizer (moved to the params' device) and scaler from a state folder."""
    import random

    import numpy as np
    import torch
    from safetensors.torch import load_file

    state = read_train_state(path)
    try:
        tensors = load_file(str(path / "networks.safetensors"))
        networks.load_state_dict(tensors)
        device = next(iter(networks.parameters())).device
        optimizer.load_state_dict(_read_state_object(path, "optimizer", device))
        if scaler is not None and _has_state_object(path, "scaler"):
            scaler.load_state_dict(_read_state_object(path, "scaler", None))
        rng = _read_state_object(path, "rng", None)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
    except KxlError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise KxlError(f"cannot load training state ({exc})", path=path) from None
    return state


def _has_state_object(path: Path, name: str) -> bool:
    return (path / f"{name}.json").is_file() or (path / f"{name}.pt").is_file()


def _read_state_object(path: Path, name: str, device: Any) -> Any:
    if (path / f"{name}.json").is_file():
        return load_state_object(path, name, device)
    legacy = path / f"{name}.pt"
    if legacy.is_file():
        return _read_legacy_pickle(legacy, device)
    raise KxlError(f"training state lacks {name}.json", path=path)


def _read_legacy_pickle(file: Path, device: Any) -> Any:
    """A state file from before the data-only format: the restricted unpickler, numpy arrays allowed, no code."""
    import numpy as np
    import torch

    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with contextlib.suppress(ImportError, AttributeError):
        from numpy._core.multiarray import _reconstruct

        allowed.append(_reconstruct)
    with contextlib.suppress(ImportError, AttributeError):
        from numpy.core.multiarray import _reconstruct as _old_reconstruct  # numpy < 2

        allowed.append(_old_reconstruct)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError and friends: the file holds more than data
        raise KxlError(
            f"refusing to load: the file holds more than tensors and numbers ({str(exc).splitlines()[0][:200]})",
            path=file,
            hint="a training state never contains code; if you did not write this file, do not trust the run folder",
        ) from None
