"""The card's training step on one GPU at full SDXL size, in one table (issue #14, item 10).

    bash benchmarks/gpu_check.sh            # CUDA: full-size SDXL, random weights, < 8 minutes on one GPU
    bash benchmarks/gpu_check.sh --dry      # CPU: the same code path with the tiny model, in seconds (CI)
    options: --steps N (timed 1024² steps, default 10) --warmup N --workers N --checkpointing full|selective|none
             --precision fp16|bf16 --keep DIR (keep the generated images there)

What runs (nothing is downloaded): the SDXL UNet, VAE and both text encoders built from resources/sdxl (random
weights, diffusers' own initialisation), the kohaku-xl-delta preset (LoKr on the UNet and both TEs through
`networks.create_networks`, Lion8bit through `optim.create_optimizer`, min-SNR 5, noise offset, 225-token captions),
`micro_step.prepare_for_training` (fp16 UNet/TEs, fp32 VAE, activation checkpointing), and per step the trainer's
own `encode_each` + `sample_latents` + `micro_loss` + `backward_micro` under CUDA fp16 autocast with a GradScaler,
then unscale, gradient norm + clip and the optimizer step, as `loop.Trainer` does them. The optimizer steps after
EVERY micro-batch here (accumulation 1; the preset's 16 spreads that cost over 16 micro-batches), so the step
time is an upper bound of the trainer's per-micro-batch time.

Data: the REAL data loader (`data_loader.TrainBatches`, `dataset.num_workers` worker processes, pinned memory)
on images generated into a temp kohya folder: WebP at 4 Mpixel for the 1024² phase (decoded, resized and cropped
by the workers, as a real dataset would be), and one batch per bucket of a mix from 4096x256 to 256x4096.

Phases: warm-up steps (cuDNN algorithm choice, allocator growth) at 1024² batch 4, untimed; the timed steps; one
step under torch's FlopCounterMode (matmul/conv/attention FLOPs of the VAE encode, forward, checkpoint recompute
and backward; elementwise work not counted) for the achieved TFLOP/s; then one step per bucket of the mix, with
the allocator's peak reserved and allocated bytes after each.

Table rows: step time, images/s, data-wait fraction (time the step waited for its batch / step time), TFLOP/s
achieved, max reserved VRAM over the bucket mix (and where it peaked), max allocated. `--dry` runs on the CPU with
kxl-tiny (fp32: CPU autocast is not what the GPUs run), small buckets and the loader on the training thread;
the memory rows then hold the process's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1 << 30
EXIT_NO_GPU, EXIT_OOM = 3, 4
CAPTION = ("1girl, solo ||| long hair, looking at viewer, smile, blush, open mouth, bangs, blue eyes, brown hair, "
           "shirt, long sleeves, dress, holding, standing, flower, outdoors, sky, day, cloud, tree, blue sky, "
           "petals, cherry blossoms, wind, floating hair, hair ornament, ribbon, hair ribbon, white dress, "
           "upper body, depth of field, blurry background, light particles, sunlight, spring (season), "
           "masterpiece, best quality, newest")  # fmt: skip


@dataclass(frozen=True)
class Scale:
    """What one check runs: the full-size GPU check or the tiny CPU dry run."""

    arch: str
    resolution: int
    batch: int
    source_scale: float  # generated image side / bucket side (2.0 at 1024²: 4 Mpixel files)
    buckets: tuple[tuple[int, int], ...]
    min_bucket: int
    max_bucket: int


FULL = Scale("sdxl-base", 1024, 4, 2.0,
             ((4096, 256), (2048, 512), (1536, 640), (1024, 1024), (640, 1536), (512, 2048), (256, 4096)),
             256, 4096)  # fmt: skip
# The tiny model's step costs its ~1000 LoKr modules' overhead whatever the size: few steps, the extreme buckets.
DRY = Scale("kxl-tiny", 128, 2, 1.5, ((512, 32), (128, 128), (32, 512)), 32, 512)


@dataclass
class Figures:
    step_s: list[float] = field(default_factory=list)
    optimizer_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    flops_per_step: int = 0
    bucket_peaks: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # reserved, allocated
    bucket_step_s: dict[tuple[int, int], float] = field(default_factory=dict)
    skipped_steps: int = 0


# ------------------------------------------------------------------------------------------ environment


def gpu_problem(dry: bool) -> str | None:
    """Why this machine cannot run the GPU check, or None."""
    import torch

    if dry:
        return None
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        return (f"no CUDA GPU is visible to torch {torch.__version__} (CUDA runtime of the build: {built}); run on "
                "a machine with an NVIDIA GPU and a CUDA build of torch, or use --dry for the CPU check")  # fmt: skip
    total = torch.cuda.get_device_properties(0).total_memory
    if total < 15 * GIB:
        return (
            f"{torch.cuda.get_device_name(0)} has {total / GIB:.1f} GiB; the card's recipe needs a 16 GB GPU"
        )
    return None


# ------------------------------------------------------------------------------------------ data


def write_images(root: Path, sizes: list[tuple[int, int]], per_size: int, repeats: int, seed: int) -> Path:
    """A kohya folder `<repeats>_check/` of WebP images (smooth colour fields + grain: decodes like a photo-ish
    image, not like a flat one) with ~40-tag captions."""
    import numpy as np
    from PIL import Image

    sub = root / f"{repeats}_check"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for w, h in sizes:
        for _ in range(per_size):
            coarse = rng.integers(0, 256, size=(max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
            im = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
            grain = rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
            arr = np.clip(np.asarray(im, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(sub / f"{n:04d}.webp", quality=90, method=0)
            (sub / f"{n:04d}.txt").write_text(CAPTION, encoding="utf-8")
            n += 1
    return root


def plan_for(root: Path, cfg: Any) -> Any:
    """The bucket plan of a kohya folder, as the trainer makes it (scan, buckets, batch order)."""
    from trainer_core.train.data import BucketPlan, scan_dataset

    return BucketPlan(scan_dataset(root), cfg.dataset, cfg.training.batch_size)


def batches_for(plan: Any, cfg: Any, steps: int, workers: int, pin: bool) -> Any:
    """The trainer's TrainBatches over `plan` for `steps` micro-batches of accumulation 1."""
    from trainer_core.train.data_loader import TrainBatches

    t = cfg.training
    return TrainBatches(plan, cfg.dataset, seed=t.seed, order_seed=t.seed, world=1, rank=0, accum=1,
                        steps_per_epoch=plan.steps_per_epoch(1, 1), start_step=0, total_steps=steps, load=True,
                        num_workers=workers, pin_memory=pin)  # fmt: skip


# ------------------------------------------------------------------------------------------ model


def build(scale: Scale, cfg: Any, device: Any) -> tuple[Any, Any, Any, Any]:
    """(components, networks, optimizer, scaler): random-weight models of `scale.arch` built on `device`, prepared
    and adapted by the trainer's own functions."""
    import torch

    from trainer_core.hf_quiet import quiet_hf
    from trainer_core.models.architectures import build_empty_components
    from trainer_core.models.tokenizers import load_sdxl_tokenizers
    from trainer_core.train.micro_step import check_precision, prepare_for_training
    from trainer_core.train.networks import create_networks
    from trainer_core.train.optim import create_optimizer, param_groups

    check_precision(cfg.training, device)
    torch.manual_seed(cfg.training.seed)
    with quiet_hf():
        parts = build_empty_components(scale.arch, str(device))
    tok1, tok2 = load_sdxl_tokenizers()
    comps = SimpleNamespace(**parts, tokenizer=tok1, tokenizer_2=tok2)
    prepare_for_training(comps, cfg.training, device)
    models = {"unet": comps.unet, "text_encoder": comps.text_encoder, "text_encoder_2": comps.text_encoder_2}
    nets = create_networks(models, cfg.network, device=str(device))
    nets.train()
    optimizer = create_optimizer(param_groups(nets.te_parameters(), nets.unet_parameters(), cfg.optimizer),
                                 cfg.optimizer)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type) if cfg.training.mixed_precision == "fp16" else None
    return comps, nets, optimizer, scaler


class Stepper:
    """One training step as `loop.Trainer` runs it: micro-batch (VAE encode, noise, TEs, UNet, loss, backward),
    then unscale, clip and the optimizer step."""

    def __init__(self, comps: Any, nets: Any, optimizer: Any, scaler: Any, cfg: Any, device: Any) -> None:
        import torch

        from trainer_core.train.loss import alphas_cumprod

        self.comps, self.nets, self.optimizer, self.scaler, self.cfg, self.device = (comps, nets, optimizer, scaler,
                                                                                   cfg, device)  # fmt: skip
        self.acp = alphas_cumprod().to(device)
        self.params = nets.parameters()
        vae_cfg = comps.vae.config
        self.vae_scale = float(vae_cfg.scaling_factor)
        self.vae_shift = float(getattr(vae_cfg, "shift_factor", None) or 0.0)
        precision = cfg.training.mixed_precision
        if precision in ("fp16", "bf16") and device.type == "cuda":
            half = torch.float16 if precision == "fp16" else torch.bfloat16
            self.autocast = lambda: torch.autocast("cuda", dtype=half)  # what accelerator.autocast() is
        else:
            self.autocast = contextlib.nullcontext
        self.step = 0

    def micro(self, batch: Any) -> Any:
        import torch

        from trainer_core.train.loop import micro_seed
        from trainer_core.train.micro_step import backward_micro, encode_each, micro_loss, sample_latents
        from trainer_core.train.text_encoding import tokenize_captions

        cfg = self.cfg
        gen = torch.Generator(device=self.device)
        gen.manual_seed(micro_seed(cfg.training.seed, self.step, 0, 0))
        mean, std = encode_each(self.comps.vae, batch.pixels, self.device)
        latents, _ = sample_latents(mean, std, gen, self.vae_scale, self.vae_shift)
        del mean, std
        n = cfg.dataset.max_token_length
        ids1 = tokenize_captions(batch.captions, self.comps.tokenizer, n)
        ids2 = tokenize_captions(batch.captions, self.comps.tokenizer_2, n, pad_id=0)
        loss = micro_loss(self.comps, cfg, latents, ids1, ids2, batch.time_ids, gen, self.acp, self.device,
                          self.autocast)  # fmt: skip
        backward_micro(loss, 1, self.scaler)
        return loss.detach()

    def optimizer_step(self) -> bool:
        """Unscale, clip, step; False when the step was skipped (non-finite gradients: the scaler backs off)."""
        import math

        import torch

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        with_grad = [p for p in self.params if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in with_grad]))
        ok = math.isfinite(norm)
        if ok and self.cfg.optimizer.max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(
                with_grad, self.cfg.optimizer.max_grad_norm, torch.tensor(norm)
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return ok


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ the check


def run(args: argparse.Namespace) -> int:
    import torch

    from trainer_core.train.config import load_preset

    scale = DRY if args.dry else FULL
    problem = gpu_problem(args.dry)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return EXIT_NO_GPU
    device = torch.device("cpu" if args.dry else "cuda")
    t_start = time.perf_counter()
    cfg = load_preset("kohaku-xl-delta")
    t, d = cfg.training, cfg.dataset
    t.batch_size, t.gradient_accumulation_steps = scale.batch, 1
    t.mixed_precision = "no" if args.dry else args.precision
    if args.checkpointing:
        t.checkpointing = args.checkpointing
    d.resolution, d.min_bucket_reso, d.max_bucket_reso = scale.resolution, scale.min_bucket, scale.max_bucket
    d.bucket_step = 32 if args.dry else 64
    from trainer_core.train.data_loader import resolve_num_workers

    workers = resolve_num_workers(args.workers if args.workers is not None else (0 if args.dry else -1))
    warmup = args.warmup if args.warmup is not None else (0 if args.dry else 3)
    steps = args.steps if args.steps is not None else (1 if args.dry else 10)

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kxl-gpu-check-"))
    figures = Figures()
    oom: str | None = None
    try:
        t0 = time.perf_counter()
        side = int(scale.resolution * scale.source_scale)
        square = write_images(folder / "square", [(side, side)], per_size=2 * scale.batch, repeats=1, seed=1)
        mix_sizes = [(int(w * scale.source_scale), int(h * scale.source_scale)) for w, h in scale.buckets]
        mix = write_images(folder / "mix", mix_sizes, per_size=scale.batch, repeats=1, seed=2)
        images_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        comps, nets, optimizer, scaler = build(scale, cfg, device)
        stepper = Stepper(comps, nets, optimizer, scaler, cfg, device)
        if device.type == "cuda":  # the build's fp32-then-cast transient is not the training step's memory
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        build_s = time.perf_counter() - t0
        pin = device.type == "cuda"
        square_batches = batches_for(plan_for(square, cfg), cfg, warmup + steps + 1, workers, pin)
        try:
            for i in range(warmup + steps + 1):
                sync(device)
                t0 = time.perf_counter()
                waited = square_batches.wait_s
                (batch,) = square_batches.micro_batches(i)
                counting = i == warmup + steps  # the last one: FLOPs, untimed
                with flop_counter(counting) as counter:
                    stepper.micro(batch)
                    sync(device)
                t1 = time.perf_counter()
                figures.skipped_steps += not stepper.optimizer_step()
                sync(device)
                t2 = time.perf_counter()
                if counting:
                    figures.flops_per_step = counter.get_total_flops()
                elif i >= warmup:
                    figures.step_s.append(t2 - t0)
                    figures.optimizer_s.append(t2 - t1)
                    figures.wait_s.append(square_batches.wait_s - waited)
        finally:
            square_batches.close()
        mix_plan = plan_for(mix, cfg)
        n_mix = mix_plan.steps_per_epoch(1, 1)  # one batch per bucket
        mix_batches = batches_for(mix_plan, cfg, n_mix, workers, pin)
        try:
            for i in range(n_mix):
                (batch,) = mix_batches.micro_batches(i)
                bucket = (int(batch.pixels.shape[-1]), int(batch.pixels.shape[-2]))
                sync(device)
                reset_peaks(device)
                t0 = time.perf_counter()
                try:
                    stepper.micro(batch)
                    figures.skipped_steps += not stepper.optimizer_step()
                except torch.cuda.OutOfMemoryError:
                    oom = f"{bucket[0]}x{bucket[1]}"
                    break
                sync(device)
                figures.bucket_step_s[bucket] = time.perf_counter() - t0
                figures.bucket_peaks[bucket] = memory_peaks(device)
        finally:
            mix_batches.close()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    wall = time.perf_counter() - t_start
    print_table(scale, cfg, device, workers, figures, images_s, build_s, wall, oom)
    return EXIT_OOM if oom else 0


@contextlib.contextmanager
def flop_counter(on: bool):
    if not on:
        yield None
        return
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        yield counter


def reset_peaks(device: Any) -> None:
    """Start a bucket's peak from what is allocated now (reserved memory stays cached, as in a training run)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_peaks(device: Any) -> tuple[int, int]:
    """(peak reserved, peak allocated) since `reset_peaks`: the CUDA caching allocator's; on the CPU the process's
    peak RSS (since it started)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, rss


def print_table(scale: Scale, cfg: Any, device: Any, workers: int, f: Figures, images_s: float, build_s: float,
                wall: float, oom: str | None) -> None:  # fmt: skip
    import statistics

    import torch

    t = cfg.training
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        mem_label, precision = (
            "VRAM",
            f"{t.mixed_precision} autocast + GradScaler"
            if t.mixed_precision == "fp16"
            else t.mixed_precision,
        )
    else:
        where = f"CPU dry run ({scale.arch}), torch {torch.__version__}"
        mem_label, precision = "memory (CPU: peak RSS)", "fp32"
    step = statistics.mean(f.step_s) if f.step_s else float("nan")
    opt = statistics.mean(f.optimizer_s) if f.optimizer_s else float("nan")
    wait = sum(f.wait_s) / sum(f.step_s) if f.step_s else float("nan")
    size = f"{scale.resolution}x{scale.resolution} batch {scale.batch}"
    rows: list[tuple[str, str, str]] = [
        ("device", where, ""),
        (
            "setup",
            f"{scale.arch}, random weights; kohaku-xl-delta preset (LoKr UNet + both TEs, {cfg.optimizer.type})",
            f"{precision}, checkpointing {t.checkpointing}",
        ),
        (
            "step time",
            f"{step:.3f} s",
            f"{size}, mean of {len(f.step_s)} (min {min(f.step_s, default=0):.3f}, max "
            f"{max(f.step_s, default=0):.3f}); optimizer every step",
        ),
        (
            "optimizer step",
            f"{opt:.3f} s",
            "part of the step time (the preset's accumulation 16 pays it 1/16 as often)",
        ),
        ("images/s", f"{scale.batch / step:.3g}", f"{size}, one GPU" if device.type == "cuda" else size),
        (
            "data-wait fraction",
            f"{wait:.3f}",
            f"real data loader (TrainBatches, {workers} worker(s)"
            f"{', pinned memory' if device.type == 'cuda' else ''}) on generated WebP images, "
            f"{int(scale.resolution * scale.source_scale)}² files resized to {scale.resolution}²",
        ),
        (
            "TFLOP/s achieved",
            f"{f.flops_per_step / step / 1e12:.3g}" if f.flops_per_step else "-",
            f"over the whole step; {f.flops_per_step / scale.batch / 1e12:.3g} TFLOP/img counted (FlopCounterMode: "
            "VAE encode, forward, recompute, backward; matmul/conv/attention)",
        ),
    ]
    if f.bucket_peaks:
        reserved = max(r for r, _ in f.bucket_peaks.values())
        top = max(f.bucket_peaks, key=lambda b: f.bucket_peaks[b][1])
        mix = ", ".join(f"{w}x{h} {f.bucket_step_s[(w, h)]:.2f}s" for w, h in f.bucket_peaks)
        widest, tallest = max(f.bucket_peaks), min(f.bucket_peaks)
        span = f"{widest[0]}x{widest[1]} .. {tallest[0]}x{tallest[1]}"
        rows.append(
            (
                f"max reserved {mem_label}",
                f"{reserved / GIB:.2f} GiB",
                f"over {len(f.bucket_peaks)} buckets ({span}), batch {scale.batch}",
            )
        )
        rows.append(
            (
                f"max allocated {mem_label}",
                f"{f.bucket_peaks[top][1] / GIB:.2f} GiB",
                f"at {top[0]}x{top[1]}; step time per bucket: {mix}",
            )
        )
    if oom:
        rows.append(("OUT OF MEMORY", f"at bucket {oom}", "the recipe does not fit this GPU at that bucket"))
    rows.append(
        ("skipped steps", str(f.skipped_steps), "non-finite gradients (fp16 loss-scale search at the start)")
    )
    rows.append(
        (
            "wall time",
            f"{wall:.0f} s",
            f"images generated in {images_s:.0f} s, models built in {build_s:.0f} s",
        )
    )
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"kxl GPU check (issue #14.10): {size}")
    print(f"{'row':{w0}}  {'value':{w1}}  note")
    for name, value, note in rows:
        print(f"{name:{w0}}  {value:{w1}}  {note}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry", action="store_true", help="CPU, tiny model, seconds: the same code path (for CI)"
    )
    ap.add_argument("--steps", type=int, help="timed steps at resolution² (default 10; dry 1)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 3; dry 0)")
    ap.add_argument(
        "--workers", type=int, help="data worker processes (default: the trainer's automatic; dry 0)"
    )
    ap.add_argument("--checkpointing", choices=("full", "selective", "none"), help="default: the preset's")
    ap.add_argument("--precision", choices=("fp16", "bf16"), default="fp16", help="GPU mixed precision")
    ap.add_argument("--keep", metavar="DIR", help="generate the images into DIR and keep them")
    args = ap.parse_args(argv)
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        ap.error("--steps must be >= 1 and --warmup >= 0")
    from trainer_core import hf_quiet  # noqa: F401 - offline before diffusers/transformers are imported

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
