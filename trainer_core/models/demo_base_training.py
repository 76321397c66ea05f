"""Training the demo base from scratch on CPU: VAE, then UNet + both text encoders, then the gamma/beta fine-tunes.

Used by scripts/train_demo_base.py. Every random draw of step `s` of stage `k` comes from a generator seeded with
(seed, k, s), so a resumed run draws exactly what the uninterrupted one would have, without saving RNG states.
States are plain safetensors (tensors) with their bookkeeping as JSON metadata: nothing is unpickled on resume.

Recipe (chosen by short experiments on 2 CPU cores):
- VAE: from a blocky colour-passing start (colour_passing_init), L1 + MSE reconstruction and a small KL on 64x64 crops of freshly drawn 128x128 pictures; afterwards the posterior mean is
  rescaled inside quant_conv/post_quant_conv so that `latents * scaling_factor` has unit variance, as SDXL's has.
- UNet: epsilon prediction on the SDXL noise schedule with min-SNR(5) weighting, latents of a fixed pool of encoded
  pictures, captions shuffled every step, 10 % all-zero conditioning (what the Generate tab feeds for an empty
  negative prompt, so classifier-free guidance works); both text encoders train with it at a lower LR; the shipped
  weights are an EMA.
- colour: the base's training goes on from the UNet stage's EMA weights with what makes colour words bind: 90 %
  flat-colour backgrounds, captions mostly in the read-back prompts' form (60 % in their exact tag order, eye and
  expression tags dropped 60 % of the time each), timesteps drawn with density ~ t (the noisy steps where a
  sampler decides the colours), offset noise (0.1) and the text encoders at a higher LR than the UNet. Why:
  generated latents of the UNet stage alone had their channel means off (a black background came out light blue),
  the signature of a model that reads flat colours from the noise's mean rather than from the prompt, and colour
  words bled across tags (`aqua hair, red background` drew red hair).
- multires: the base goes on at 128x128, 192x192, 128x192 and 192x128 (one size per step, as the trainer's buckets
  do, with SDXL's size conditioning). Why: trained at 128 only, at 192 the base tiled the canvas with extra figures
  (6 of 6 counts wrong) and even a 5 % hires pass broke the first pass's picture up the same way: the UNet had
  learned where things sit in a 16x16 latent. The shipped base is this stage's EMA.
- gamma / beta: short fine-tunes of the base on two disjoint halves of the backgrounds with the CLIP token and
  position embeddings at a high LR, so they drift the way the Kohaku XL card describes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .demo_base_data import (
    BACKGROUNDS,
    NATIVE_SIZE,
    caption_for,
    random_post_tags,
    render_pixels,
    time_ids_for,
)

STAGES = ("vae", "unet", "colour", "multires", "gamma", "beta")
# stages that train the base itself (EMA weights); the last one is shipped
BASE_STAGES = ("unet", "colour", "multires")
NATIVE = ((NATIVE_SIZE, NATIVE_SIZE),)
# (width, height) of the multires stage's pictures: the native square, the 1.5x hires size and the two 2:3 buckets
# between them, so the base draws the same layout at the sizes hires fix and aspect-ratio buckets ask for.
MULTIRES_SIZES = ((128, 128), (192, 192), (128, 192), (192, 128))
EMBEDDING_SUFFIXES = ("token_embedding.weight", "position_embedding.weight")

# The two fine-tunes see disjoint halves of the backgrounds (alternating, so each half mixes flat and scenes).
GAMMA_BACKGROUNDS = BACKGROUNDS[0::2]
BETA_BACKGROUNDS = BACKGROUNDS[1::2]


@dataclass(frozen=True)
class StageSettings:
    steps: int
    batch: int
    lr: float
    text_lr: float = 0.0  # text encoders (UNet stages)
    embedding_lr: float = 0.0  # CLIP token/position embeddings (0: same as text_lr)
    warmup: int = 50
    pool: int = 0  # pictures encoded once for a UNet stage
    backgrounds: tuple[str, ...] = BACKGROUNDS
    flat_share: float = 0.7  # share of flat-colour backgrounds in the pool
    card_order: float = 0.5  # share of captions in the card's order (count tags first)
    prompt_order: float = 0.0  # share of captions in the read-back prompts' order (count, hair, background)
    tag_dropout: float = 0.0  # drop rate of eye and expression tags in captions
    high_noise: float = 0.0  # timestep density grows as t**high_noise (0: uniform)
    offset_noise: float = 0.0  # std of a per-picture, per-channel constant added to the noise
    # (width, height) of the pictures; one size per step (a bucket)
    sizes: tuple[tuple[int, int], ...] = NATIVE


@dataclass(frozen=True)
class Recipe:
    seed: int = 1234
    vae: StageSettings = StageSettings(steps=1000, batch=8, lr=1e-3, warmup=30)
    unet: StageSettings = StageSettings(steps=3000, batch=32, lr=1e-3, text_lr=1e-3, warmup=50, pool=6000)
    # Continues the base (see the module docstring): mostly flat colours, captions in the read-back prompts' form,
    # timesteps weighted towards high noise, offset noise, the text encoders at a higher LR than the UNet.
    colour: StageSettings = StageSettings(steps=1200, batch=24, lr=5e-4, text_lr=1e-3, warmup=20, pool=2400,
                                          flat_share=0.9, card_order=0.8, prompt_order=0.6, tag_dropout=0.6,
                                          high_noise=1.0, offset_noise=0.1)  # fmt: skip
    # Continues the base at several sizes (see the module docstring) with the colour stage's settings: with uniform
    # timesteps and the text encoders frozen instead, the 128 px colours fell to 71 % / 67 % (from 86 % / 81 %).
    multires: StageSettings = StageSettings(steps=600, batch=24, lr=5e-4, text_lr=1e-3, warmup=20, pool=2400,
                                            flat_share=0.9, card_order=0.8, prompt_order=0.6, tag_dropout=0.6,
                                            high_noise=1.0, offset_noise=0.1, sizes=MULTIRES_SIZES)  # fmt: skip
    gamma: StageSettings = StageSettings(steps=120, batch=16, lr=2e-4, text_lr=2e-4, embedding_lr=2e-3, warmup=10,
                                         pool=1500, backgrounds=GAMMA_BACKGROUNDS)  # fmt: skip
    beta: StageSettings = StageSettings(steps=120, batch=16, lr=2e-4, text_lr=2e-4, embedding_lr=2e-3, warmup=10,
                                        pool=1500, backgrounds=BETA_BACKGROUNDS)  # fmt: skip
    vae_crop: int = 64  # the VAE is fully convolutional: 64x64 crops teach it at a quarter of the cost
    vae_colour_weight: float = 4.0
    kl_weight: float = 2e-4
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995

    def stage(self, name: str) -> StageSettings:
        return getattr(self, name)

    def scaled(self, factor: float) -> Recipe:
        """The same recipe with every stage's step count and pool size times `factor` (quick experiments)."""
        from dataclasses import replace

        return replace(
            self,
            **{
                s: replace(
                    self.stage(s),
                    steps=max(1, int(self.stage(s).steps * factor)),
                    warmup=max(1, int(self.stage(s).warmup * min(1.0, factor))),
                    pool=max(64, int(self.stage(s).pool * factor)) if self.stage(s).pool else 0,
                )  # fmt: skip
                for s in STAGES
            },
        )


def seeded(seed: int, *parts: int) -> int:
    """A 63-bit seed from (seed, parts): independent streams per stage and step."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- VAE initialisation

COLOUR_CHANNELS = 3
CARRIER = (
    20.0  # the constant channel that makes a one-group GroupNorm almost linear (see colour_passing_init)
)
SILU_OFFSET = 6.0  # SiLU(x + 6) ~ x + 6: the last activations work in their linear range at the start


def _identity_tap(conv: Any, n: int) -> None:
    """conv maps its first n input channels to its first n outputs unchanged (centre tap), nothing else."""
    conv.weight.zero_()
    kh, kw = conv.weight.shape[-2:]
    for i in range(n):
        conv.weight[i, i, kh // 2, kw // 2] = 1.0
    if conv.bias is not None:
        conv.bias.zero_()


def colour_passing_init(vae: Any) -> None:
    """Start the VAE as a blocky colour autoencoder: latents 0-2 hold the RGB of every 8x8 block, decoded back.

    Why: the last GroupNorm before each conv_out removes a picture's mean and scale, and a small VAE trained from
    random weights takes thousands of steps to route flat colours around it (it learns grey shapes first). Here every
    residual branch starts at zero, the convs pass RGB through unchanged, and a constant carrier channel (CARRIER)
    dominates the one-group norm's statistics so that it only shifts and scales, which its affine parameters undo.
    Training then adds the detail (faces, eyes, outlines) through the residual branches. Needs norm_num_groups 1.
    """
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    if vae.config.norm_num_groups != 1:
        raise ValueError("colour_passing_init needs a VAE with norm_num_groups = 1")
    n = COLOUR_CHANNELS + 1  # RGB + the carrier
    with torch.no_grad():
        for mod in vae.modules():
            if isinstance(mod, ResnetBlock2D):
                mod.conv2.weight.zero_()
                mod.conv2.bias.zero_()
                if mod.conv_shortcut is not None:
                    _identity_tap(mod.conv_shortcut, n)
            elif isinstance(mod, Attention):
                mod.to_out[0].weight.zero_()
                mod.to_out[0].bias.zero_()
        for coder in (vae.encoder, vae.decoder):
            blocks = coder.down_blocks if coder is vae.encoder else coder.up_blocks
            for block in blocks:
                for sampler in [
                    *(getattr(block, "downsamplers", None) or []),
                    *(getattr(block, "upsamplers", None) or []),
                ]:
                    _identity_tap(sampler.conv, n)
            _identity_tap(coder.conv_in, COLOUR_CHANNELS)
            coder.conv_in.bias[COLOUR_CHANNELS] = CARRIER
            # One-group norm of [c0, c1, c2, CARRIER, 0, ...] over C channels: mean ~ CARRIER / C, std ~ CARRIER *
            # sqrt(C - 1) / C. Undo both on the colour channels and lift them into SiLU's linear range.
            norm = coder.conv_norm_out
            c = norm.num_channels
            mean, std = CARRIER / c, CARRIER * math.sqrt(c - 1) / c
            norm.weight.zero_()
            norm.bias.zero_()
            norm.weight[:COLOUR_CHANNELS] = std
            norm.bias[:COLOUR_CHANNELS] = mean + SILU_OFFSET
            _identity_tap(coder.conv_out, COLOUR_CHANNELS)
            coder.conv_out.bias[:COLOUR_CHANNELS] = -SILU_OFFSET
        latent = vae.config.latent_channels
        vae.encoder.conv_out.bias[latent:] = -6.0  # log-variance: a small posterior std to start with
        _identity_tap(vae.quant_conv, 2 * latent)
        _identity_tap(vae.post_quant_conv, latent)


# ---------------------------------------------------------------- state files (safetensors + JSON metadata)


def save_state(path: Path, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a training state atomically: a crash mid-write leaves the previous state intact."""
    from safetensors.torch import save_file

    from ..atomic import atomic_path

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"kxl.demo_state": json.dumps(meta)})  # fmt: skip


def load_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["kxl.demo_state"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return tensors, meta


def optimizer_tensors(opt: Any, names: Sequence[str]) -> dict[str, Any]:
    """AdamW moments keyed by parameter name (names[i] is the i-th parameter across all groups)."""
    out = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, p in zip(names, params, strict=True):
        st = opt.state.get(p)
        if st:
            for k, v in st.items():
                out[f"opt/{name}/{k}"] = v.reshape(1) if v.ndim == 0 else v
    return out


def restore_optimizer(opt: Any, names: Sequence[str], tensors: dict[str, Any]) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, p in zip(names, params, strict=True):
        st = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"opt/{name}/")}
        if st:
            if "step" in st:
                st["step"] = st["step"].reshape(())
            opt.state[p] = st


# ---------------------------------------------------------------- the run


@dataclass
class StageProgress:
    stage: str
    step: int = 0
    losses: list[float] = field(
        default_factory=list
    )  # recent step losses (the report's "final loss" is their mean)

    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return float(sum(tail) / max(1, len(tail)))


class DemoBaseTrainer:
    """Runs one stage at a time on `components` (an SdxlComponents of arch kxl-demo), saving states as it goes."""

    def __init__(self, components: Any, recipe: Recipe, state_path: Path, save_every_s: float = 180.0,
                 log: Callable[[str], None] = print) -> None:  # fmt: skip
        self.comps = components
        self.recipe = recipe
        self.state_path = Path(state_path)
        self.save_every_s = save_every_s
        self.log = log

    # ---- VAE

    def train_vae(self, progress: StageProgress, extra_meta: dict[str, Any]) -> None:
        import torch

        vae = self.comps.vae
        st = self.recipe.vae
        if progress.step == 0:
            colour_passing_init(vae)
        vae.train().requires_grad_(True)
        params = list(vae.named_parameters())
        opt = torch.optim.AdamW([p for _, p in params], lr=st.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self._resume_into(opt, [n for n, _ in params], {"vae": vae}, progress)

        def step_fn(step: int) -> float:
            rng = np.random.default_rng(seeded(self.recipe.seed, 0, step))
            tags = [random_post_tags(rng) for _ in range(st.batch)]
            x = render_pixels(tags, rng.integers(0, 2**31, st.batch).tolist())
            crop = self.recipe.vae_crop
            if crop < x.shape[-1]:
                y0, x0 = (int(v) for v in rng.integers(0, x.shape[-1] - crop + 1, 2))
                x = x[:, :, y0 : y0 + crop, x0 : x0 + crop]
            gen = torch.Generator().manual_seed(seeded(self.recipe.seed, 10, step))
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample
            kl = post.kl().mean() / post.mean[0].numel()
            # The colour term compares 8x8 block means: flat colours are what the pictures (and the reader) are
            # about, and per-pixel losses let a small VAE settle for grey shapes first.
            pooled = torch.nn.functional.avg_pool2d(rec - x, 8)
            loss = (
                (rec - x).abs().mean()
                + ((rec - x) ** 2).mean()
                + self.recipe.vae_colour_weight * (pooled**2).mean()
            )
            loss = loss + self.recipe.kl_weight * kl
            return self._optimize(opt, loss, st, step, [st.lr])

        self._loop(progress, st, step_fn, lambda: {**self._module_tensors({"vae": vae}),
                                                   **optimizer_tensors(opt, [n for n, _ in params])},
                   extra_meta)  # fmt: skip
        vae.eval().requires_grad_(False)

    def rescale_latents(self, n_images: int = 512) -> float:
        """Scale the posterior mean so `mean * scaling_factor` has unit std; the decoder undoes it exactly.

        Returns the factor applied (1.0 when already calibrated).
        """
        import torch

        vae = self.comps.vae
        rng = np.random.default_rng(seeded(self.recipe.seed, 1, 0))
        tags = [random_post_tags(rng) for _ in range(n_images)]
        seeds = rng.integers(0, 2**31, n_images).tolist()
        with torch.no_grad():
            means = torch.cat([vae.encode(render_pixels(tags[i : i + 64], seeds[i : i + 64])).latent_dist.mean
                               for i in range(0, n_images, 64)])  # fmt: skip
            c = float(1.0 / (means.std() * vae.config.scaling_factor))
            ch = vae.config.latent_channels
            q, pq = vae.quant_conv, vae.post_quant_conv
            q.weight[:ch] *= c
            q.bias[:ch] *= c
            q.bias[ch:] += 2 * math.log(c)  # log-variance: std scales with the mean
            pq.weight /= c
        return c

    def silence_dead_latent_channels(self, n_images: int = 512, min_std: float = 0.05) -> list[int]:
        """Make the decoder ignore latent channels the encoder leaves (almost) constant; returns their indices.

        Why: a channel whose scaled std is ~0.01 carries nothing, but the UNet cannot denoise it to that precision,
        and a decoder that never saw it move turns the leftover noise into a colour cast over the whole picture.
        Folding the channel's mean into post_quant_conv's bias keeps every reconstruction as it was.
        """
        import torch

        vae = self.comps.vae
        rng = np.random.default_rng(seeded(self.recipe.seed, 1, 1))
        tags = [random_post_tags(rng) for _ in range(n_images)]
        seeds = rng.integers(0, 2**31, n_images).tolist()
        with torch.no_grad():
            means = torch.cat([vae.encode(render_pixels(tags[i : i + 64], seeds[i : i + 64])).latent_dist.mean
                               for i in range(0, n_images, 64)])  # fmt: skip
            stds = (means * vae.config.scaling_factor).std(dim=(0, 2, 3))
            dead = [int(c) for c in torch.nonzero(stds < min_std).flatten()]
            pq = vae.post_quant_conv
            for c in dead:
                pq.bias += pq.weight[:, c, 0, 0] * means[:, c].mean()
                pq.weight[:, c] = 0.0
        return dead

    # ---- UNet (+ text encoders), base and fine-tunes

    def encode_pool(self, stage: str, st: StageSettings) -> list[tuple[Any, Any, list[list[str]]]]:
        """Per size of the stage (st.sizes order): (means, stds) (N, 4, h/8, w/8) already times scaling_factor,
        and the tag sets. Picture i of the pool is drawn at size i mod len(sizes)."""
        import torch

        vae = self.comps.vae
        sf = vae.config.scaling_factor
        rng = np.random.default_rng(seeded(self.recipe.seed, 2, STAGES.index(stage)))
        tags = [random_post_tags(rng, st.backgrounds, st.flat_share) for _ in range(st.pool)]
        seeds = rng.integers(0, 2**31, st.pool).tolist()
        pools = []
        n = len(st.sizes)
        with torch.no_grad():
            for k, (w, h) in enumerate(st.sizes):
                ks, kt = seeds[k::n], tags[k::n]
                means, stds = [], []
                for i in range(0, len(kt), 128):
                    d = vae.encode(render_pixels(kt[i : i + 128], ks[i : i + 128], w, h)).latent_dist
                    means.append(d.mean * sf)
                    stds.append(d.std * sf)
                pools.append((torch.cat(means), torch.cat(stds), kt))
        return pools

    def train_unet(self, stage: str, progress: StageProgress, extra_meta: dict[str, Any]) -> None:
        import torch

        from ..train.loss import add_noise, alphas_cumprod, diffusion_loss
        from ..train.text_encoding import encode_tokens, tokenize_captions

        st = self.recipe.stage(stage)
        c = self.comps
        t0 = time.time()
        pools = self.encode_pool(stage, st)
        self.log(f"{stage}: encoded a pool of {st.pool} pictures in {time.time() - t0:.0f} s")
        modules = {"unet": c.unet, "text_encoder": c.text_encoder, "text_encoder_2": c.text_encoder_2}
        groups: dict[str, list] = {"unet": [], "text": [], "emb": []}
        names: dict[str, list[str]] = {"unet": [], "text": [], "emb": []}
        text_trains = st.text_lr > 0.0 or st.embedding_lr > 0.0
        for mname, m in modules.items():
            # frozen text encoders get no gradients at all: no backward through them, AdamW skips them
            m.train().requires_grad_(mname == "unet" or text_trains)
            for pname, p in m.named_parameters():
                g = "unet" if mname == "unet" else ("emb" if pname.endswith(EMBEDDING_SUFFIXES) else "text")
                groups[g].append(p)
                names[g].append(f"{mname}.{pname}")
        emb_lr = st.embedding_lr or st.text_lr
        peaks = [st.lr, st.text_lr, emb_lr]
        # No weight decay on embeddings: rows of tokens no caption uses must stay exactly as they were.
        opt = torch.optim.AdamW(
            [{"params": groups["unet"], "lr": st.lr, "weight_decay": 0.01},
             {"params": groups["text"], "lr": st.text_lr, "weight_decay": 0.01},
             {"params": groups["emb"], "lr": emb_lr, "weight_decay": 0.0}],
            betas=(0.9, 0.99),
        )  # fmt: skip
        all_names = names["unet"] + names["text"] + names["emb"]
        use_ema = stage in BASE_STAGES
        ema = {
            n: p.detach().clone()
            for g in ("unet", "text", "emb")
            for n, p in zip(names[g], groups[g], strict=True)
        }
        self._resume_into(opt, all_names, modules, progress, ema if use_ema else None)
        acp = alphas_cumprod().float()
        size_ids = [torch.tensor([time_ids_for(w, h)], dtype=torch.float32) for w, h in st.sizes]
        tok1, tok2 = c.tokenizer, c.tokenizer_2
        stage_id = STAGES.index(stage)

        def step_fn(step: int) -> float:
            rng = np.random.default_rng(seeded(self.recipe.seed, 3, stage_id, step))
            gen = torch.Generator().manual_seed(seeded(self.recipe.seed, 13, stage_id, step))
            # One size per step, as the trainer's buckets; single-size stages draw exactly what they drew before
            k = int(rng.integers(0, len(pools))) if len(pools) > 1 else 0
            means, stds, pool_tags = pools[k]
            time_ids = size_ids[k]
            idx = rng.integers(0, len(pool_tags), st.batch)
            captions = [
                caption_for(pool_tags[int(i)], rng, st.card_order, st.tag_dropout, st.prompt_order)
                for i in idx
            ]
            keep = torch.from_numpy(rng.random(st.batch) >= self.recipe.cfg_dropout).float()
            it = torch.from_numpy(idx)
            eps_lat = torch.randn(means[it].shape, generator=gen)
            latents = means[it] + stds[it] * eps_lat
            noise = torch.randn(latents.shape, generator=gen)
            if st.offset_noise > 0.0:
                # Offset noise: plain noise barely moves a 16x16 latent's mean, so at t=999 the mean that leaks
                # through the schedule's last bit of signal decides the colours and the prompt cannot. A random
                # constant per channel makes the model take flat colours from the prompt instead.
                noise = noise + st.offset_noise * torch.randn(*latents.shape[:2], 1, 1, generator=gen)
            if st.high_noise > 0.0:
                # Density ~ t**high_noise: colours and layout are settled in the first, noisiest steps of a
                # sampler, where the picture carries no colour of its own and only the prompt can say which.
                u = torch.rand(st.batch, generator=gen)
                timesteps = (u ** (1.0 / (1.0 + st.high_noise)) * 1000).long().clamp(max=999)
            else:
                timesteps = torch.randint(0, 1000, (st.batch,), generator=gen)
            ids1 = tokenize_captions(captions, tok1, 75)
            ids2 = tokenize_captions(captions, tok2, 75, pad_id=0)
            ctx, pooled = encode_tokens(ids1, ids2, c.text_encoder, c.text_encoder_2)
            ctx = ctx * keep[:, None, None]
            pooled = pooled * keep[:, None]
            pred = c.unet(add_noise(latents, noise, timesteps, acp), timesteps, encoder_hidden_states=ctx,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(st.batch, 6)}).sample  # fmt: skip
            loss = diffusion_loss(pred, noise, timesteps, acp, self.recipe.min_snr_gamma, False)
            value = self._optimize(opt, loss, st, step, peaks)
            if use_ema:
                decay = min(self.recipe.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for g in ("unet", "text", "emb"):
                        for n, p in zip(names[g], groups[g], strict=True):
                            ema[n].lerp_(p.detach(), 1 - decay)
            return value

        def tensors() -> dict[str, Any]:
            out = {**self._module_tensors(modules), **optimizer_tensors(opt, all_names)}
            if use_ema:
                out.update({f"ema/{n}": v for n, v in ema.items()})
            return out

        self._loop(progress, st, step_fn, tensors, extra_meta)
        if use_ema:  # ship the EMA weights
            with torch.no_grad():
                for g in ("unet", "text", "emb"):
                    for n, p in zip(names[g], groups[g], strict=True):
                        p.copy_(ema[n])
        for m in modules.values():
            m.eval().requires_grad_(False)

    # ---- shared machinery

    def _optimize(self, opt: Any, loss: Any, st: StageSettings, step: int, peaks: Sequence[float]) -> float:
        import torch

        f = lr_factor(step, st.steps, st.warmup)
        for g, peak in zip(opt.param_groups, peaks, strict=True):
            g["lr"] = peak * f
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        return float(loss.detach())

    @staticmethod
    def _module_tensors(modules: dict[str, Any]) -> dict[str, Any]:
        return {f"model/{m}.{k}": v for m, mod in modules.items() for k, v in mod.state_dict().items()}

    def _resume_into(self, opt: Any, names: Sequence[str], modules: dict[str, Any], progress: StageProgress,
                     ema: dict[str, Any] | None = None) -> None:  # fmt: skip
        """Load weights, optimizer moments and EMA from the state file when it holds this stage mid-way."""
        import torch

        if progress.step == 0 or not self.state_path.is_file():
            return
        tensors, _meta = load_state(self.state_path)
        for m, mod in modules.items():
            sd = {k[len(f"model/{m}.") :]: v for k, v in tensors.items() if k.startswith(f"model/{m}.")}
            mod.load_state_dict(sd, strict=True)
        restore_optimizer(opt, names, tensors)
        if ema is not None:
            with torch.no_grad():
                for n in ema:
                    ema[n].copy_(tensors[f"ema/{n}"])
        self.log(f"{progress.stage}: resumed at step {progress.step}")

    def _loop(self, progress: StageProgress, st: StageSettings, step_fn: Callable[[int], float],
              tensors: Callable[[], dict[str, Any]], extra_meta: dict[str, Any]) -> None:  # fmt: skip
        last_save = t_start = time.time()
        start_step = progress.step
        while progress.step < st.steps:
            loss = step_fn(progress.step)
            if not math.isfinite(loss):
                raise RuntimeError(f"{progress.stage}: loss is {loss} at step {progress.step}")
            progress.losses = (progress.losses + [loss])[-200:]
            progress.step += 1
            if progress.step % 50 == 0 or progress.step == st.steps:
                rate = (progress.step - start_step) / max(1e-9, time.time() - t_start)
                self.log(f"{progress.stage} step {progress.step}/{st.steps} loss {progress.final_loss():.4f} "
                         f"({rate:.2f} steps/s)")  # fmt: skip
            if time.time() - last_save >= self.save_every_s and progress.step < st.steps:
                self.save(progress, tensors(), extra_meta)
                last_save = time.time()

    def save(self, progress: StageProgress, tensors: dict[str, Any], extra_meta: dict[str, Any]) -> None:
        meta = {**extra_meta, "stage": progress.stage, "step": progress.step, "losses": progress.losses}
        if "session_start" in extra_meta:  # wall time over every session of the run, resumes included
            meta["wall_s"] = extra_meta.get("wall_s", 0.0) + time.time() - extra_meta["session_start"]
            del meta["session_start"]
        save_state(self.state_path, tensors, meta)
        self.log(f"{progress.stage}: state saved at step {progress.step}")
