"""Trainer step time vs a bare forward/backward loop, and full-size SDXL throughput on a GPU.

Usage:
  python benchmarks/bench_train_step.py [--steps 6]
      CPU, tiny demo model (tiny-demo preset): the trainer's optimizer-step time (data loading, caption
      processing, tokenisation, events, stop polling included) vs a bare loop doing the same VAE/TE/UNet
      forward/backward + clip + Lion8bit step on one pre-loaded batch. Target: ratio <= 1.15.
  python benchmarks/bench_train_step.py --gpu --full-size [--steps 5] [--batch 4]
      One GPU, full-size SDXL with random weights, kohaku-xl-delta preset (LoKr full matrix on UNet + both TEs,
      Lion8bit), 1024², fp16, gradient checkpointing: images/s and peak VRAM.
      Targets: >= 4 images/s on one H100, peak VRAM <= 22 GiB (a 24 GB card fits).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trainer_core.train.config import load_preset
from trainer_core.train.events import read_events
from trainer_core.train.loop import Trainer, micro_seed, weight_dtype_for


def _dataset(root: Path, size: int, count: int) -> Path:
    import numpy as np
    from PIL import Image

    sub = root / "dataset" / "1_bench"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text("1girl, solo ||| " + ", ".join(f"tag{j}" for j in range(i, i + 40)))
    return root / "dataset"


class BenchTrainer(Trainer):
    """The real trainer; afterwards the same objects run a bare loop for comparison."""

    random_full_size = False

    def _load_models(self, cfg):
        if not self.random_full_size:
            return super()._load_models(cfg)
        import torch

        from trainer_core.models.architectures import build_empty_components
        from trainer_core.models.loading import SdxlComponents, _scheduler_and_tokenizers
        from trainer_core.train.loss import alphas_cumprod

        models = build_empty_components("sdxl-base", "cpu")  # random init, real memory
        sched, tok1, tok2 = _scheduler_and_tokenizers("sdxl-base")
        comps = SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=sched, arch="sdxl-base")
        wdt = weight_dtype_for(cfg.training.mixed_precision)
        for name in ("unet", "text_encoder", "text_encoder_2"):
            getattr(comps, name).requires_grad_(False).to(self.device, dtype=wdt).train()
        comps.vae.requires_grad_(False).to(self.device, dtype=torch.float32).eval()
        if cfg.training.gradient_checkpointing:
            comps.unet.enable_gradient_checkpointing()
            for te in (comps.text_encoder, comps.text_encoder_2):
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.comps = comps
        self.models = {
            "unet": comps.unet,
            "text_encoder": comps.text_encoder,
            "text_encoder_2": comps.text_encoder_2,
        }
        self.acp = alphas_cumprod().to(self.device)
        self.vae_scale, self.vae_shift = 0.13025, 0.0

    def _train_loop(self, start_step):
        # Bare loop first: both then start from the same fresh optimizer state and warm caches.
        self.bare_times = self._bare_loop(self.bench_steps)
        return super()._train_loop(start_step)

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _bare_loop(self, steps):
        import torch

        from trainer_core.train.data import make_batch
        from trainer_core.train.loss import add_noise, diffusion_loss, sample_noise, sample_timesteps
        from trainer_core.train.text_encoding import encode_tokens, tokenize_captions

        cfg = self.cfg
        accum = cfg.training.gradient_accumulation_steps
        entry_ids = self.plan.rank_micro_batches(0, cfg.training.seed, 1, 0, accum)[0]
        batch = make_batch(self.plan, entry_ids, cfg.dataset, cfg.training.seed, 0, self.options)
        px = batch.pixels.to(self.device, self.comps.vae.dtype)
        ids1 = tokenize_captions(batch.captions, self.comps.tokenizer, cfg.dataset.max_token_length).to(
            self.device
        )
        ids2 = tokenize_captions(batch.captions, self.comps.tokenizer_2, cfg.dataset.max_token_length,
                                 pad_id=0).to(self.device)  # fmt: skip
        tids = batch.time_ids.to(self.device)
        wdt = weight_dtype_for(cfg.training.mixed_precision)
        times = []
        for step in range(steps):
            self._sync()
            t0 = time.perf_counter()
            for m in range(accum):
                gen = torch.Generator(device=self.device).manual_seed(micro_seed(0, step, 0, m))
                with torch.no_grad():
                    latents = self.comps.vae.encode(px).latent_dist.sample(gen).float() * self.vae_scale
                noise = sample_noise(latents, 0.05, gen)
                t = sample_timesteps(latents.shape[0], gen, self.device)
                noisy = add_noise(latents, noise, t, self.acp)
                with self.accelerator.autocast():
                    ctx, pooled = encode_tokens(
                        ids1, ids2, self.comps.text_encoder, self.comps.text_encoder_2
                    )
                    pred = self.comps.unet(noisy.to(wdt), t, encoder_hidden_states=ctx.to(wdt),
                                           added_cond_kwargs={"text_embeds": pooled.to(wdt),
                                                              "time_ids": tids.to(wdt)}).sample  # fmt: skip
                loss = diffusion_loss(pred, noise, t, self.acp, 5.0, False) / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], 1.0)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._sync()
            times.append(time.perf_counter() - t0)
        return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps (after 2 warm-up steps)")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--full-size", action="store_true", help="full SDXL, random weights (needs --gpu)")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    import torch

    warm = 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.full_size:
            if not (args.gpu and torch.cuda.is_available()):
                print("--full-size needs --gpu and a CUDA device", file=sys.stderr)
                return 2
            cfg = load_preset("kohaku-xl-delta")
            cfg.dataset.path = str(_dataset(root, 1024, args.batch * 2))
            base = root / "random-weights.marker"
            base.write_text("full-size SDXL with random weights, built in memory")
            cfg.model.base = str(base)
            cfg.training.batch_size, cfg.training.gradient_accumulation_steps = args.batch, 1
            cfg.training.epochs = 1000
        else:
            from trainer_core.models.loading import save_single_file
            from trainer_core.models.tiny import build_tiny_components

            cfg = load_preset("tiny-demo")
            cfg.model.base = str(
                save_single_file(build_tiny_components(0), root / "base.safetensors", dtype="fp16")
            )
            cfg.dataset.path = str(_dataset(root, 128, 8))
            if args.gpu:
                cfg.training.mixed_precision = "fp16"
        cfg.training.max_steps = warm + args.steps
        cfg.training.save_every_n_steps = 0
        run = root / "run"
        run.mkdir()
        (run / "config.toml").write_text(cfg.to_toml())
        trainer = BenchTrainer(run / "config.toml")
        trainer.random_full_size = args.full_size
        trainer.bench_steps = warm + args.steps
        t0 = time.perf_counter()
        code = trainer.run()
        if code != 0:
            print(read_events(run)[-1], file=sys.stderr)
            return code
        steps = [e for e in read_events(run) if e["type"] == "step"][warm:]
        # min, not median: on a shared CPU box other processes only ever make a step slower.
        trainer_t = min(e["step_time_s"] for e in steps)
        bare_t = min(trainer.bare_times[warm:])
        trainer_med = statistics.median(e["step_time_s"] for e in steps)
        bare_med = statistics.median(trainer.bare_times[warm:])
        images = cfg.training.batch_size * cfg.training.gradient_accumulation_steps
        print(
            f"device: {trainer.device}  model: {'sdxl-base (random)' if args.full_size else 'kxl-tiny'}  "
            f"batch {cfg.training.batch_size} x accum {cfg.training.gradient_accumulation_steps}, "
            f"mixed precision {cfg.training.mixed_precision}, total wall {time.perf_counter() - t0:.1f} s"
        )
        print(
            f"trainer step: {trainer_t * 1000:.1f} ms (min of {len(steps)}; median {trainer_med * 1000:.1f})  -> {images / trainer_t:.2f} images/s"
        )
        print(
            f"bare loop:    {bare_t * 1000:.1f} ms (median {bare_med * 1000:.1f})  -> {images / bare_t:.2f} images/s"
        )
        print(f"ratio trainer/bare: {trainer_t / bare_t:.3f} (target <= 1.15)")
        if torch.cuda.is_available() and args.gpu:
            print(f"peak VRAM: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (target <= 22 GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
