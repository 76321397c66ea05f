"""Train the demo base, gamma and beta from scratch on CPU and write them to resources/demo_base/.

    python scripts/train_demo_base.py                 # the full recipe (about an hour on 2 free cores)
    python scripts/train_demo_base.py --resume        # go on from the last saved state in --work
    python scripts/train_demo_base.py --scale 0.25    # every stage at a quarter of its steps

Stages: VAE, UNet + text encoders (the base), a colour stage that goes on training the base (colour words), a
multires stage that goes on at 128 and 192 px and the 2:3 buckets (hires fix), then the gamma and beta fine-tunes (trainer_core/models/demo_base_training.py has the recipe). A state is saved every --save-every seconds (atomic, safetensors); a stage's
result is kept in --work when it ends, so --resume restarts inside the stage that was running. The output folder
gets the base (fp16 single file), gamma and beta as compact deltas (trainer_core/models/demo_base_files.py) and
manifest.json (sha256 of every file, the command, steps, final losses, wall time), written last.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer_core.atomic import atomic_write_text  # noqa: E402
from trainer_core.models.demo_base_files import (  # noqa: E402
    CHECKPOINT_NAMES,
    MANIFEST_NAME,
    ROLES,
    expand_delta,
    make_delta,
    sha256_file,
)
from trainer_core.models.demo_base_training import (  # noqa: E402
    BASE_STAGES,
    STAGES,
    DemoBaseTrainer,
    Recipe,
    StageProgress,
    load_state,
)

ARCH = "kxl-demo"
SHIPPED = {"original": "kxl-demo-base.safetensors", "gamma": "kxl-demo-gamma.delta.safetensors",
           "beta": "kxl-demo-beta.delta.safetensors"}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", type=Path, default=ROOT / "resources" / "demo_base", help="where the shipped files go"
    )
    p.add_argument(
        "--work", type=Path, default=Path("/tmp/kxl-demo-base-work"), help="states and stage results"
    )
    p.add_argument("--resume", action="store_true", help="continue from the state in --work")
    p.add_argument("--seed", type=int, default=Recipe.seed, help="the run's seed (default %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (experiments)")
    # One thread: on a shared machine two OpenMP threads wait on each other and run ~10x slower than one.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument(
        "--save-every", type=float, default=180.0, help="seconds between saved states (default 180)"
    )
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def new_components(seed: int):
    import torch

    from trainer_core.models.architectures import build_empty_components
    from trainer_core.models.loading import SdxlComponents, _scheduler_and_tokenizers

    torch.manual_seed(seed)
    models = build_empty_components(ARCH, device="cpu")
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(ARCH)
    return SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=ARCH)


def load_modules(comps, tensors: dict, prefix: str = "model/") -> None:
    for name, mod in comps.models().items():
        sd = {k[len(f"{prefix}{name}.") :]: v for k, v in tensors.items() if k.startswith(f"{prefix}{name}.")}
        if sd:
            mod.load_state_dict(sd, strict=True)


def stage_result(work: Path, stage: str) -> Path:
    return work / f"done-{stage}.safetensors"


def main(argv: list[str] | None = None) -> int:
    import torch

    from trainer_core.models.demo_base_training import save_state
    from trainer_core.models.loading import (
        checkpoint_metadata,
        components_to_single_file_state,
        load_single_file,
        save_single_file,
    )
    from trainer_core.models.safetensors_writer import save_safetensors

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed)
    if args.scale != 1.0:
        recipe = recipe.scaled(args.scale)
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.safetensors"
    run_info_path = work / "run.json"
    command = " ".join(
        ["python scripts/train_demo_base.py", *(shlex.quote(a) for a in (argv or sys.argv[1:]))]
    )
    if args.resume and run_info_path.is_file():
        info = json.loads(run_info_path.read_text(encoding="utf-8"))
        if info["recipe"] != json.loads(json.dumps(asdict(recipe))):
            raise SystemExit(f"--resume: {work} holds a run with another recipe; use the same --seed/--scale")
        info.setdefault("resumed_commands", []).append(command)
    else:
        for f in work.glob("*.safetensors"):
            f.unlink()
        info = {"recipe": asdict(recipe), "command": command, "stages": {}, "wall_s": 0.0}
        atomic_write_text(run_info_path, json.dumps(info, indent=2))
    session_start = time.time()

    def wall() -> float:
        return info["wall_s"] + time.time() - session_start

    comps = new_components(args.seed)
    resume_stage, resume_step, resume_losses = None, 0, []
    if args.resume and state_path.is_file():
        _t, meta = load_state(state_path)
        # A state of a stage that has finished since is stale: its wall time would undo the time spent after it.
        if not stage_result(work, meta["stage"]).is_file():
            resume_stage, resume_step, resume_losses = meta["stage"], meta["step"], meta["losses"]
            info["wall_s"] = meta.get("wall_s", info["wall_s"])
    trainer = DemoBaseTrainer(comps, recipe, state_path, args.save_every, log)

    for stage in STAGES:
        done = stage_result(work, stage)
        if done.is_file():
            tensors, meta = load_state(done)
            if stage == "vae" or stage in BASE_STAGES:
                load_modules(comps, tensors)
            info["stages"][stage] = meta["summary"]
            log(f"{stage}: already done ({meta['summary']})")
            continue
        progress = StageProgress(stage)
        if stage == resume_stage:
            progress.step, progress.losses = resume_step, list(resume_losses)
        t0 = time.time()
        extra = {"session_start": session_start, "wall_s": info["wall_s"]}
        if stage == "vae":
            trainer.train_vae(progress, extra)
            factor = trainer.rescale_latents()
            log(f"vae: latents rescaled by {factor:.4f}")
            dead = trainer.silence_dead_latent_channels()
            log(f"vae: decoder ignores the constant latent channels {dead}")
            result = {f"model/vae.{k}": v for k, v in comps.vae.state_dict().items()}
        elif stage in BASE_STAGES:
            trainer.train_unet(stage, progress, extra)
            if stage == BASE_STAGES[-1]:
                save_single_file(comps, out / SHIPPED["original"], "fp16", _metadata("original", args.seed))
            result = {
                f"model/{n}.{k}": v for n, m in comps.models().items() for k, v in m.state_dict().items()
            }
        else:
            base = load_single_file(
                out / SHIPPED["original"], dtype="fp32"
            )  # fine-tunes start from the shipped fp16 base
            if progress.step == 0:
                log(f"{stage}: fine-tuning the base on {', '.join(recipe.stage(stage).backgrounds)}")
            tuner = DemoBaseTrainer(base, recipe, state_path, args.save_every, log)
            tuner.train_unet(stage, progress, extra)
            base_sd = components_to_single_file_state(load_single_file(out / SHIPPED["original"]), "fp16")
            tuned_sd = components_to_single_file_state(base, "fp16")
            delta = make_delta(base_sd, tuned_sd)
            meta = checkpoint_metadata(ARCH, _metadata(stage, args.seed))
            save_safetensors(out / SHIPPED[stage], delta, meta)
            full = work / CHECKPOINT_NAMES[stage]
            save_safetensors(full, expand_delta(base_sd, delta), meta)  # what `kxl demo init` rebuilds
            result = {"unused": torch.zeros(1)}
            info.setdefault("checkpoint_sha256", {})[stage] = sha256_file(full)
        summary = {"steps": progress.step, "final_loss": round(progress.final_loss(), 5),
                   "stage_wall_s": round(time.time() - t0, 1)}  # fmt: skip
        if stage == "vae":
            summary["latent_rescale"] = round(factor, 5)
            summary["silenced_latent_channels"] = dead
        info["stages"][stage] = summary
        save_state(done, result, {"summary": summary})
        info["wall_s"] = wall()
        session_start = time.time()
        atomic_write_text(run_info_path, json.dumps(info, indent=2))
        log(f"{stage}: done {summary}")

    checkpoint_sha = info.get("checkpoint_sha256", {})
    for stage in ("gamma", "beta"):
        if stage not in checkpoint_sha:
            checkpoint_sha[stage] = sha256_file(work / CHECKPOINT_NAMES[stage])
    manifest = {
        "arch": ARCH,
        "native_size": 128,
        "seed": args.seed,
        "command": info["command"],
        "resumed_commands": info.get("resumed_commands", []),  # every resume of the run, in order
        "wall_s": round(wall(), 1),
        "torch_threads": args.threads,
        "stages": info["stages"],
        "notes": info.get(
            "notes", []
        ),  # changes made to a run between resumes, written into run.json by hand
        "recipe": info["recipe"],
        "roles": {
            role: {
                "file": SHIPPED[role],
                "sha256": sha256_file(out / SHIPPED[role]),
                "checkpoint": CHECKPOINT_NAMES[role],
                "checkpoint_sha256": sha256_file(out / SHIPPED[role])
                if role == "original"
                else checkpoint_sha[role],
            }
            for role in ROLES
        },
    }
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    log(f"manifest written: {out / MANIFEST_NAME} (wall {manifest['wall_s']:.0f} s)")
    return 0


def _metadata(role: str, seed: int) -> dict[str, str]:
    return {"kxl.demo_role": role, "kxl.seed": str(seed), "kxl.demo_model": "trained"}


if __name__ == "__main__":
    raise SystemExit(main())
