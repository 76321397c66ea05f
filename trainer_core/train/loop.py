"""The training loop: one process per GPU (or CPU rank) under `accelerate launch`, observable through the run dir.

Per optimizer step, on every rank (specs/training.md §7):
  for each of `gradient_accumulation_steps` micro-batches: bucket batch -> VAE latents (sampled) -> noise (+offset),
  uniform t -> caption shuffle/dropout -> 225-token 3-chunk encoding through both TEs (with grad) -> UNet ->
  min-SNR weighted MSE -> backward(loss / accum);
  then: all-reduce-mean of every network gradient (one coalesced collective per ~32M values), unscale, clip,
  optimizer step, zero grads.

Why a manual all-reduce instead of DDP: the LoKr modules run inside the frozen UNet/TE forwards, never through a
DDP-wrapped module, so DDP's reducer would never fire (sd-scripts does the same manual reduce). The test suite
checks that both ranks end with bit-identical weights.

Determinism: the batch order is a function of (seed, epoch), and each micro-batch draws its latents sample, noise
and timesteps from a generator seeded by (seed, step, rank, micro-batch). A run resumed from a saved state therefore
repeats the uninterrupted run; no RNG stream position has to be restored.

Stopping: `<run_dir>/commands/stop` (polled once per optimizer step by rank 0) or SIGTERM on any rank -> all ranks
agree through the step's collective, save the state and the LoKr, emit `done` (reason "stopped") and exit 0.
`commands/sample` and `commands/save` ("Sample now" / "Save now" in the GUI) travel the same way: rank 0 sees the
file, the flag rides the step's all-reduce so every rank takes part, and rank 0 deletes the file once served.

Resuming: `--resume` continues from the newest state; `--resume-from checkpoints/state-N` from an older one. States
newer than the chosen one belong to the abandoned continuation: they are moved to `checkpoints/superseded/` so the
next plain `--resume` cannot pick them up.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KxlError
from . import checkpoint as ckpt
from .config import TrainConfig, load_config
from .events import (
    COMMAND_FILES,
    RUN_LOCK_FILE,
    SAMPLE_FILE,
    SAVE_FILE,
    STOP_FILE,
    EventWriter,
    write_run_info,
)

EXIT_OK, EXIT_ERROR, EXIT_USER_ERROR, EXIT_NAN, EXIT_OOM = 0, 1, 2, 3, 4
_REDUCE_BUCKET = 1 << 25  # values per coalesced all-reduce


class _StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True


def _die_with_parent() -> None:
    """Linux: ask the kernel for SIGTERM when the launcher dies, so a killed launcher or `kxl train` does not leave
    ranks training as orphans; SIGTERM makes them save and end like a stop."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def noise_seed(t: Any) -> int:
    """The seed of the per-micro-batch noise: `training.seed`, mixed with `data_seed` once one is set."""
    return t.seed if not t.data_seed else (t.seed * 1_000_003 + t.data_seed) & ((1 << 63) - 1)


def micro_seed(seed: int, step: int, rank: int, micro: int) -> int:
    raw = hashlib.blake2b(f"kxl-noise:{seed}:{step}:{rank}:{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big") & ((1 << 63) - 1)


def weight_dtype_for(mixed_precision: str) -> Any:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def allreduce_mean_(tensors: list[Any], world: int) -> None:
    """In-place mean over ranks, coalesced into few collectives (gloo and NCCL alike)."""
    import torch
    import torch.distributed as dist

    bucket: list[Any] = []
    size = 0

    def flush() -> None:
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n
        bucket, size = [], 0

    for t in tensors:
        bucket.append(t)
        size += t.numel()
        if size >= _REDUCE_BUCKET:
            flush()
    flush()


def params_digest(params: list[Any]) -> str:
    """sha256 of every network tensor's bytes: equal digests on all ranks prove the sync."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class _Run:
    cfg: TrainConfig
    run_dir: Path
    events: EventWriter
    rank: int
    world: int
    is_main: bool


class Trainer:
    """Everything one rank needs; `run()` trains and returns the process exit code."""

    def __init__(self, config_path: str | Path, resume: bool = False, resume_from: str | Path | None = None,
                 data_seed: int | None = None):  # fmt: skip
        self.config_path = Path(config_path)
        self.data_seed = data_seed
        self.nonfinite_streak = 0
        # Steps (1-based) whose first gradient is set to inf after the backward: how the tests drive the skip path.
        raw = os.environ.get("KXL_INJECT_NONFINITE_GRAD", "")
        self.inject_nonfinite = {int(x) for x in raw.split(",") if x.strip().isdigit()}
        self.nonfinite_total = 0
        self.last_save_t = time.monotonic()
        self.resume = resume or resume_from is not None
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.stop = _StopFlag()
        self.step = 0
        self.events: EventWriter | None = None
        self.is_main = True
        self.run_dir: Path | None = None
        self.owner: Any = None

    # ------------------------------------------------------------------------------------------ entry
    def run(self) -> int:
        try:
            return self._run()
        except KxlError as exc:
            return self._fail(str(exc), EXIT_USER_ERROR)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                return self._fail(f"{exc.filename or self.run_dir}: the disk is full ({exc.strerror}); free some "
                                  "space and resume with --resume: the last saved state is intact", EXIT_USER_ERROR)  # fmt: skip
            self._log(traceback.format_exc())
            where = f"{exc.filename}: " if exc.filename else ""
            return self._fail(f"{where}{exc.strerror or exc}", EXIT_ERROR)
        except Exception as exc:  # noqa: BLE001 - a crash must still end the event stream with an error
            import torch

            if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
                return self._fail(f"out of memory at step {self.step + 1}: lower training.batch_size, set "
                                  "training.checkpointing = \"full\" or use fp16/bf16", EXIT_OOM)  # fmt: skip
            tb = traceback.format_exc()
            self._log(tb)
            return self._fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)
        finally:
            if self.events is not None:
                self.events.close()
            if self.owner is not None and self.run_dir is not None:
                from ..ownership import release

                release(self.run_dir / RUN_LOCK_FILE, self.owner)

    def _fail(self, message: str, code: int) -> int:
        print(f"error: {message}", file=sys.stderr, flush=True)
        if self.events is not None and self.is_main:
            self.events.emit("error", self.step, message=message, exit_code=code)
            if self.run_dir is not None:
                write_run_info(self.run_dir, "error", exit_code=code, message=message)
        return code

    def _log(self, text: str) -> None:
        if not self.is_main:
            return
        print(text, file=sys.stderr, flush=True)
        if self.run_dir is not None:
            logs = self.run_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            with open(logs / "trainer.log", "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _status(self, message: str, **fields: Any) -> None:
        self._log(message)
        if self.events is not None:
            self.events.emit("status", self.step, message=message, **fields)

    # ------------------------------------------------------------------------------------------ setup
    def _run(self) -> int:
        import torch
        from accelerate import Accelerator

        from .. import hf_quiet  # noqa: F401 - offline env before diffusers/transformers

        cfg = load_config(self.config_path)
        run_dir = cfg.run_dir
        self.run_dir = run_dir
        from datetime import timedelta

        from accelerate.utils import InitProcessGroupKwargs

        if self.data_seed is not None:
            cfg.training.data_seed = self.data_seed
        # A rank that dies or hangs must end the run, not leave the others waiting in a collective for days.
        timeout = InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.training.ddp_timeout_minutes))
        accelerator = Accelerator(mixed_precision=cfg.training.mixed_precision, kwargs_handlers=[timeout])
        self.accelerator = accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.rank, self.world = rank, world
        device = accelerator.device
        self.device = device
        signal.signal(signal.SIGTERM, self.stop)
        # Ctrl+C in a terminal reaches every rank of the foreground group: save at the end of the step, as for
        # SIGTERM, instead of dying with KeyboardInterrupt and losing everything since the last state.
        signal.signal(signal.SIGINT, self.stop)
        _die_with_parent()
        self.parent_pid = os.getppid()

        if self.is_main:
            # One owner per run folder, taken before anything in it is touched: a second launch into a live run
            # must not write its events, run.json or states beside the first one's.
            from ..ownership import acquire

            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.owner = acquire(run_dir / RUN_LOCK_FILE, "training")
            except KxlError:
                self.run_dir = None  # nothing of this launch may be written into the other run's folder
                raise
            for sub in ("checkpoints", "samples", "logs", "commands"):
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            for rel in COMMAND_FILES.values():
                stale = run_dir / rel
                if stale.exists():
                    stale.unlink()  # a command belongs to the launch that was asked, not to this one
        self.events = EventWriter(run_dir, enabled=self.is_main)
        if self.is_main:
            snapshot = run_dir / "config.toml"
            if snapshot.resolve() != self.config_path.resolve():
                from ..atomic import atomic_write_text

                atomic_write_text(snapshot, cfg.with_absolute_paths().to_toml())
            write_run_info(run_dir, "running", world_size=world, config=str(self.config_path.resolve()))
        self._status("starting", world_size=world, device=str(device), resume=self.resume)
        accelerator.wait_for_everyone()

        if not cfg.model.base:
            raise KxlError("'model.base' is not set: which SDXL checkpoint to train on", path=cfg.source)
        if not cfg.dataset.path:
            raise KxlError("'dataset.path' is not set: the kohya dataset folder", path=cfg.source)
        if not cfg.base_path.exists():
            raise KxlError("base model not found", path=cfg.base_path)
        if cfg.dataset.cache_latents and cfg.dataset.random_crop:
            raise KxlError(
                "dataset.cache_latents cannot be combined with dataset.random_crop", path=cfg.source
            )

        from .data import BucketPlan, caption_options, tag_frequency
        from .data_loader import resolve_num_workers
        from .dataset_scan import scan_for_training

        def broadcast(obj: Any) -> Any:
            from accelerate.utils import broadcast_object_list

            return broadcast_object_list([obj], from_process=0)[0]

        # One scan and bucket plan for all ranks: sizes from manifest.jsonl or the scan cache (dataset_scan.py);
        # rank 0 scans and stores them, the others read what it stored.
        scan_t0 = time.perf_counter()
        plans: list[BucketPlan] = []
        items = scan_for_training(cfg.dataset_path, run_dir, rank, world, broadcast=broadcast if world > 1 else None,
                                  prepare=lambda s: plans.append(BucketPlan(s, cfg.dataset, cfg.training.batch_size)))  # fmt: skip
        plan = plans[0] if plans else BucketPlan(items, cfg.dataset, cfg.training.batch_size)
        scan_s = time.perf_counter() - scan_t0
        tag_counts = None
        # sd-scripts' tag counts for the LoKr metadata (rank 0): seconds per million captions when not cached, so
        # they are counted while the models load
        if self.is_main:
            from concurrent.futures import ThreadPoolExecutor

            counter = ThreadPoolExecutor(1, thread_name_prefix="kxl-tag-frequency")
            tag_counts = counter.submit(tag_frequency, items)
            counter.shutdown(wait=False)
        t = cfg.training
        spe = plan.steps_per_epoch(world, t.gradient_accumulation_steps)
        total = t.max_steps if t.max_steps > 0 else t.epochs * spe
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
        self.data_workers = resolve_num_workers(cfg.dataset.num_workers, local_ranks)
        self._status(f"dataset: {len(items)} images, {len(plan.entries)} per epoch, {len(plan.bucket_counts())} "
                     f"buckets, {spe} steps per epoch, {total} steps; scanned in {scan_s:.1f} s "
                     f"({getattr(items, 'report', {}).get('cache', 'off')} cache); {self.data_workers} data workers",
                     images=len(items), entries=len(plan.entries), steps_per_epoch=spe, total_steps=total,
                     scan_s=round(scan_s, 3), scan=getattr(items, "report", {}),
                     data_workers=self.data_workers)  # fmt: skip

        self._load_models(cfg)
        from .networks import create_networks
        from .optim import create_optimizer, param_groups

        torch.manual_seed(cfg.training.seed)  # LoKr w1 init: same values on every rank and every run
        nets = create_networks(self.models, cfg.network, device=str(device))
        if world > 1:
            import torch.distributed as dist

            for p in nets.parameters():  # belt and braces: rank 0's initial weights everywhere
                dist.broadcast(p.data, src=0)
        counts = nets.module_count()
        params = nets.parameters()
        n_params = sum(p.numel() for p in params)
        self._status(f"networks: {counts}, {n_params:,} parameters", modules=counts, parameters=n_params)
        optimizer = create_optimizer(param_groups(nets.te_parameters(), nets.unet_parameters(), cfg.optimizer),
                                     cfg.optimizer)  # fmt: skip
        scaler = None
        if cfg.training.mixed_precision == "fp16":
            # fp16 gradients underflow without loss scaling; on CPU this is the same code path the GPUs run
            scaler = torch.amp.GradScaler(device.type)

        checkpoints = run_dir / "checkpoints"
        fingerprint = cfg.resume_fingerprint()
        start_step, samples_seen = 0, 0
        existing = ckpt.state_dirs(checkpoints)
        if self.resume:
            if not existing:
                raise KxlError(
                    "nothing to resume: the run directory has no saved training state", path=run_dir
                )
            chosen = self._chosen_state(existing, checkpoints)
            info = ckpt.read_train_state(chosen)
            if info.fingerprint != fingerprint:
                raise KxlError("the saved state comes from a different configuration (dataset, network, optimizer "
                               "or training settings changed); start a new run directory instead",
                               path=chosen)  # fmt: skip
            if info.world_size != world:
                raise KxlError(f"the saved state was trained on {info.world_size} process(es), this launch has "
                               f"{world}; resume with --processes {info.world_size} to keep the data order",
                               path=chosen)  # fmt: skip
            state = ckpt.load_train_state(chosen, nets, optimizer, scaler)
            start_step, samples_seen = state.step, state.samples_seen
            if self.is_main:
                self._supersede_newer(existing, chosen, checkpoints)
            accelerator.wait_for_everyone()
            self._status(f"resumed from {chosen.name} at step {start_step}", resumed_from=start_step)
        elif existing:
            raise KxlError("the run directory already holds training state; pass --resume to continue it, or use "
                           "a new run directory", path=run_dir)  # fmt: skip
        self.step = start_step

        self.cfg, self.plan, self.nets, self.optimizer, self.scaler = cfg, plan, nets, optimizer, scaler
        self.params = params
        self.options = caption_options(cfg.dataset)
        # only rank 0 writes LoKr metadata
        self.tag_frequency = tag_counts.result() if tag_counts is not None else {}
        self.fingerprint = fingerprint
        self.spe, self.total = spe, total
        self.samples_seen = samples_seen
        self._setup_latent_cache(cfg, run_dir)
        self.batches = None
        try:
            return self._train_loop(start_step)
        finally:
            if self.batches is not None:
                self.batches.close()  # data workers end with the loop, whichever way it ends

    def _chosen_state(self, existing: list[Path], checkpoints: Path) -> Path:
        if self.resume_from is None:
            return existing[-1]
        wanted = self.resume_from if self.resume_from.is_absolute() else checkpoints / self.resume_from.name
        for state_dir in existing:
            if state_dir.resolve() == wanted.resolve():
                return state_dir
        names = ", ".join(p.name for p in existing)
        raise KxlError(f"--resume-from: not a saved state of this run (available: {names})", path=wanted)

    def _supersede_newer(self, existing: list[Path], chosen: Path, checkpoints: Path) -> None:
        newer = existing[existing.index(chosen) + 1 :]
        if not newer:
            return
        parked = checkpoints / "superseded"
        parked.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for state_dir in newer:
            os.replace(state_dir, parked / f"{state_dir.name}-{stamp}")
        self._log(f"moved {len(newer)} newer state(s) to {parked} (resumed from the older {chosen.name})")

    def _load_models(self, cfg: TrainConfig) -> None:
        from ..models.loading import load_sdxl
        from .loss import alphas_cumprod
        from .micro_step import check_precision, prepare_for_training, training_dtypes

        check_precision(cfg.training, self.device)  # before minutes of loading, not after
        # Streamed straight into the training dtypes and onto the device, one tensor at a time (issue #14.6): an
        # fp32 copy of the base first would take ~14 GB of host RAM per rank on SDXL.
        comps = load_sdxl(cfg.base_path, dtype=training_dtypes(cfg.training), device=self.device)
        prepare_for_training(comps, cfg.training, self.device)  # checkpointing, train modes (dtypes: already)
        self.comps = comps
        self.models = {
            "unet": comps.unet,
            "text_encoder": comps.text_encoder,
            "text_encoder_2": comps.text_encoder_2,
        }
        self.acp = alphas_cumprod().to(self.device)
        self.vae_scale = float(comps.vae.config.scaling_factor)
        self.vae_shift = float(getattr(comps.vae.config, "shift_factor", None) or 0.0)

    def _setup_latent_cache(self, cfg: TrainConfig, run_dir: Path) -> None:
        self.latent_cache = None
        if cfg.dataset.cache_latents:
            from .latent_cache import LatentCache, vae_identity

            self.latent_cache = LatentCache(run_dir / "cache" / "latents", vae_identity(cfg.base_path))

    # ------------------------------------------------------------------------------------------ steps
    def _latents(self, batch: Any, gen: Any) -> Any:
        """Sampled, scaled latents; the VAE runs without grad in its own dtype, NaNs (fp16 VAE) become 0."""
        import torch

        from .micro_step import encode_each, sample_latents

        vae = self.comps.vae
        dists = []
        with torch.no_grad():
            if self.latent_cache is not None:
                keyed = []
                for eid in batch.entries:
                    e = self.plan.entries[eid]
                    keyed.append(self.latent_cache.key(self.plan.items[e.item], e.assignment))
                for k, eid in zip(keyed, batch.entries, strict=True):
                    # Looked up one by one, after the previous put: two repeats of one image in a batch are
                    # encoded once, not once per repeat.
                    c = self.latent_cache.get(k)
                    if c is None:
                        from .data import load_pixels

                        e = self.plan.entries[eid]
                        px = load_pixels(self.plan.items[e.item], e.assignment)[None].to(
                            self.device, vae.dtype
                        )
                        d = vae.encode(px).latent_dist
                        c = (d.mean[0].float(), d.std[0].float())
                        self.latent_cache.put(k, *c)
                    dists.append(c)
                mean = torch.stack([m for m, _ in dists]).to(self.device)
                std = torch.stack([s for _, s in dists]).to(self.device)
            else:
                mean, std = encode_each(vae, batch.pixels, self.device)  # one image at a time
        latents, replaced = sample_latents(mean, std, gen, self.vae_scale, self.vae_shift)
        if replaced:
            self._log("warning: NaN/inf in VAE latents (fp16 VAE overflow?); replaced by 0")
        return latents

    def _micro_loss(self, batch: Any, epoch: int, micro: int) -> Any:
        import torch

        from .micro_step import micro_loss
        from .text_encoding import tokenize_captions

        cfg = self.cfg
        gen = torch.Generator(device=self.device)
        gen.manual_seed(micro_seed(noise_seed(cfg.training), self.step, self.rank, micro))
        latents = self._latents(batch, gen)
        ids1 = tokenize_captions(batch.captions, self.comps.tokenizer, cfg.dataset.max_token_length)
        ids2 = tokenize_captions(
            batch.captions, self.comps.tokenizer_2, cfg.dataset.max_token_length, pad_id=0
        )
        loss = micro_loss(self.comps, cfg, latents, ids1, ids2, batch.time_ids, gen, self.acp, self.device,
                          self.accelerator.autocast)  # fmt: skip
        return loss, len(batch.entries)

    def _train_loop(self, start_step: int) -> int:
        import torch

        from .optim import set_learning_rates

        cfg, t = self.cfg, self.cfg.training
        accum = t.gradient_accumulation_steps
        self.nets.train()
        from .data_loader import TrainBatches
        from .micro_step import backward_micro

        # Batches made ahead in worker processes (data_loader.py), exactly the serial path's; the order is a function
        # of (data seed, epoch), so a resume starts at the right micro-batch of its epoch.
        self.batches = TrainBatches(self.plan, cfg.dataset, seed=t.seed, order_seed=t.data_seed or t.seed,
                                    world=self.world, rank=self.rank, accum=accum, steps_per_epoch=self.spe,
                                    start_step=start_step, total_steps=self.total, load=self.latent_cache is None,
                                    num_workers=self.data_workers, pin_memory=self.device.type == "cuda")  # fmt: skip
        while self.step < self.total:
            step_start = time.perf_counter()
            epoch = self.step // self.spe
            lrs = set_learning_rates(self.optimizer, cfg.optimizer, self.step, self.total)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            images = 0
            waited_before = self.batches.wait_s
            for m, batch in enumerate(self.batches.micro_batches(self.step)):
                loss, n = self._micro_loss(batch, epoch, m)
                backward_micro(loss, accum, self.scaler)
                loss_sum += loss.detach().double()
                images += n
            data_wait = self.batches.wait_s - waited_before  # this step's time blocked on data
            if (
                self.step + 1 in self.inject_nonfinite
            ):  # fault-injection hook for tests (KXL_INJECT_NONFINITE_GRAD)
                first = next(p for p in self.params if p.grad is not None)
                first.grad.view(-1)[0] = float("inf")
            if os.getppid() != self.parent_pid:  # the launcher died (no PDEATHSIG off Linux): save and end
                self.stop.requested = True
            stop_local = self.stop.requested or (self.is_main and (self.run_dir / STOP_FILE).exists())
            sample_local = self.is_main and (self.run_dir / SAMPLE_FILE).exists()
            save_local = self.is_main and (self.run_dir / SAVE_FILE).exists()
            wall_due = (self.is_main and t.save_every_minutes > 0
                        and time.monotonic() - self.last_save_t >= 60 * t.save_every_minutes)  # fmt: skip
            grads = [p.grad for p in self.params if p.grad is not None]
            scalars = torch.tensor([loss_sum.item() / accum, float(images), float(stop_local),
                                    float(sample_local), float(save_local), float(wall_due)],
                                   dtype=torch.float64, device=self.device)  # fmt: skip
            if self.world > 1:
                import torch.distributed as dist

                allreduce_mean_(grads, self.world)
                dist.all_reduce(scalars)
                scalars[0] /= self.world
            loss_value = float(scalars[0])
            images_all = int(round(float(scalars[1])))
            stop_all = float(scalars[2]) > 0
            sample_now, save_now = float(scalars[3]) > 0, float(scalars[4]) > 0
            wall_save = float(scalars[5]) > 0
            skipped = not math.isfinite(loss_value)
            grad_norm = float("nan")
            if skipped:
                # One bad batch (an fp16 overflow, a broken image) must not end a 17-day run: the update is
                # skipped and counted; only a streak means the run itself diverged.
                self.optimizer.zero_grad(set_to_none=True)
            else:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                params_with_grad = [p for p in self.params if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params_with_grad]))
                finite = math.isfinite(grad_norm)
                if finite and (t_max := cfg.optimizer.max_grad_norm):
                    torch.nn.utils.clip_grads_with_norm_(params_with_grad, t_max, torch.tensor(grad_norm))
                if self.scaler is not None:
                    scale_before = float(self.scaler.get_scale())
                    self.scaler.step(self.optimizer)  # skips the update itself when a gradient is inf/nan
                    self.scaler.update()
                    skipped = float(self.scaler.get_scale()) < scale_before
                elif finite:
                    self.optimizer.step()
                else:
                    skipped = True  # an inf/nan gradient would turn every weight it touches into NaN
                self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.samples_seen += images_all
            if skipped:
                self.nonfinite_streak += 1
                self.nonfinite_total += 1
            else:
                self.nonfinite_streak = 0
            elapsed = time.perf_counter() - step_start
            if self.is_main:
                extra = {"skipped": True, "nonfinite_total": self.nonfinite_total} if skipped else {}
                if self.scaler is not None:
                    extra["loss_scale"] = float(self.scaler.get_scale())
                self.events.emit("step", self.step, epoch=epoch + 1, loss=loss_value, lr=lrs, grad_norm=grad_norm,
                                 images_per_s=images_all / elapsed if elapsed > 0 else None,
                                 samples_seen=self.samples_seen, step_time_s=round(elapsed, 4),
                                 data_wait_s=round(data_wait, 4),
                                 peak_memory_mb=self._peak_memory_mb(), total_steps=self.total, **extra)  # fmt: skip
            if self.nonfinite_streak >= t.max_nonfinite_steps:
                what = "loss" if not math.isfinite(loss_value) else "gradients"
                msg = (f"{what} non-finite for {self.nonfinite_streak} steps in a row (last: step {self.step}, loss "
                       f"{loss_value}); stopped, the last saved state is kept: lower the learning rate, or resume "
                       "with --data-seed N to move past the batches")  # fmt: skip
                self._fail(msg, EXIT_NAN)
                if self.is_main:
                    self.events.emit("done", self.step, reason="error", final_step=self.step)
                return EXIT_NAN
            if stop_all:
                self._save(final=False, reason="stopped")
                return self._finish("stopped")
            interval_save = bool(t.save_every_n_steps) and self.step % t.save_every_n_steps == 0
            if save_now or ((interval_save or wall_save) and self.step < self.total):
                reason = "requested" if save_now and not interval_save else ("time" if wall_save else "")
                self._save(final=False, reason=reason)
                self._served(SAVE_FILE, save_now)
            interval_sample = bool(t.sample_every) and self.step % t.sample_every == 0
            if sample_now or interval_sample:
                if sample_now and not cfg.training.sample_prompts:
                    self._status("sample requested, but training.sample_prompts is empty")
                self._sample()
                self._served(SAMPLE_FILE, sample_now)
        self._save(final=True)
        if t.sample_every:
            self._sample()
        return self._finish("finished")

    def _served(self, rel: str, requested: bool) -> None:
        if requested and self.is_main:
            (self.run_dir / rel).unlink(missing_ok=True)

    def _peak_memory_mb(self) -> float:
        import torch

        if self.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        try:
            import resource

            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        except ImportError:
            return 0.0

    # ------------------------------------------------------------------------------------------ outputs
    def _save(self, final: bool, reason: str = "") -> None:
        """Rank 0 writes the LoKr file and the training state; every rank waits so none runs ahead."""
        cfg = self.cfg
        self.last_save_t = time.monotonic()
        if self.is_main:
            state = self.nets.state_dict()
            epoch = self.step // self.spe  # the epoch the next micro-batch belongs to
            meta = ckpt.lokr_metadata(cfg, step=self.step, epoch=max(1, math.ceil(self.step / self.spe)),
                                      num_images=len(self.plan.entries), tag_frequency=self.tag_frequency,
                                      bucket_counts=self.plan.bucket_counts())  # fmt: skip
            name = (
                f"{cfg.output.name}.safetensors"
                if final
                else f"{cfg.output.name}-step{self.step:08d}.safetensors"
            )
            checkpoints = self.run_dir / "checkpoints"
            try:
                lokr_path = ckpt.save_lokr(checkpoints / name, state, self.comps.arch, meta)
            except OSError as exc:  # a write error names no file: say which one failed
                exc.filename = exc.filename or str(checkpoints / name)
                raise
            try:
                state_path = ckpt.save_train_state(
                    checkpoints,
                    ckpt.TrainState(self.step, epoch, self.samples_seen, self.fingerprint, self.world),
                    state, self.optimizer, self.scaler, keep=cfg.training.keep_states,
                )  # fmt: skip
            except OSError as exc:
                exc.filename = exc.filename or str(checkpoints / f"{ckpt.STATE_PREFIX}{self.step:08d}")
                raise
            self.events.emit("save", self.step, path=str(lokr_path), state=str(state_path), final=final,
                             reason=reason or ("final" if final else "interval"))  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _sample(self) -> None:
        cfg = self.cfg
        if self.is_main and cfg.training.sample_prompts:
            try:
                from ..generate.pipeline import SampleSettings, render_samples
            except ImportError:
                self._status("sample images skipped: the generation engine is not installed")
            else:
                defaults = SampleSettings(prompt="", steps=cfg.training.sample_steps, seed=cfg.training.seed,
                                          width=cfg.dataset.resolution, height=cfg.dataset.resolution)  # fmt: skip
                images = render_samples(self.comps, cfg.training.sample_prompts, self.run_dir / "samples",
                                        defaults=defaults, file_stem=f"step{self.step:08d}",
                                        model_name=cfg.output.name)  # fmt: skip
                self.nets.train()
                for i, img in enumerate(images):
                    self.events.emit("sample", self.step, path=str(img.path), index=i,
                                     prompt=cfg.training.sample_prompts[min(i, len(cfg.training.sample_prompts) - 1)])  # fmt: skip
        self.accelerator.wait_for_everyone()

    def _finish(self, reason: str) -> int:
        digests = self._rank_digests()
        if self.is_main:
            self.events.emit("done", self.step, reason=reason, final_step=self.step, world_size=self.world,
                             param_digests=digests, samples_seen=self.samples_seen)  # fmt: skip
            write_run_info(self.run_dir, "done" if reason == "finished" else reason, final_step=self.step,
                           world_size=self.world)  # fmt: skip
            self._log(f"{reason} at step {self.step}")
        self.accelerator.wait_for_everyone()
        return EXIT_OK

    def _rank_digests(self) -> list[str]:
        digest = params_digest(self.params)
        if self.world == 1:
            return [digest]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, digest)
        return [str(g) for g in gathered]


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer_core.train CONFIG [--resume]` (normally through `accelerate launch`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trainer_core.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="training TOML (usually <run_dir>/config.toml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest saved state")
    parser.add_argument("--resume-from", type=Path, metavar="STATE_DIR",
                        help="continue from this saved state (checkpoints/state-N); newer states are set aside")  # fmt: skip
    parser.add_argument("--data-seed", type=int, default=None, metavar="N",
                        help="reshuffle the data order (and noise) from here on; overrides training.data_seed")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")  # the fused kernels are experimental (spec §1.1)
    code = Trainer(
        args.config, resume=args.resume, resume_from=args.resume_from, data_seed=args.data_seed
    ).run()
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - teardown must not mask the exit code
        pass
    return code
