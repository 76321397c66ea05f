"""Host memory of loading the training base (issue #14, item 6): peak RSS of one rank's model load, old vs new.

    python benchmarks/bench_load_rss.py            # the tiny demo model (seconds; what CI runs)
    python benchmarks/bench_load_rss.py --full     # a full-size SDXL checkpoint, random fp16 weights (~6.9 GB)
        [--dir DIR] [--keep] [--old auto|yes|no] [--precision fp16] [--vae-dtype fp32]

Bar: the new load's peak RSS <= the checkpoint's file size + 1 GiB (imports included: it is the process's peak).

The checkpoint is written first: `--full` streams every tensor of sdxl-base (resources/sdxl configs, 2515 keys,
fp16) with seeded random values into a temp folder (DIR, removed afterwards unless --keep), one tensor at a time,
so writing it needs no memory either. Then each way runs in a fresh child process that imports everything it needs,
notes its RSS (the baseline), loads the checkpoint exactly as the trainer's rank does for the [training] dtypes
given (default: the kohaku-xl-delta preset's fp16 UNet/TEs and fp32 VAE), and reports ru_maxrss (the process's
peak resident set, file pages of memory maps included) and the dtypes it ended with:

  old  the load before #14.6: every tensor read through safetensors' memory map, the whole checkpoint cast to fp32
       and loaded, then cast to the training dtypes by `prepare_for_training` (peak: the mapped file + an fp32 copy
       of the model + the cast)
  new  `Trainer._load_models` today: `load_sdxl(path, dtype=training_dtypes(...))`, modules built on the meta
       device, each tensor read with plain reads straight into its training dtype (peak: the model in its
       training dtypes + one tensor), then `prepare_for_training` (nothing left to cast)

`--old auto` (default) runs the old way to the end only when the machine's available memory exceeds its estimated
peak by 2 GiB (the full-size old load needs ~3.5x the file, ~25 GiB). Otherwise it runs it with a cap: the child
watches its own RSS and stops once it passes (available memory - 4 GiB), so the table shows a lower bound ("> X")
instead of pushing a shared machine out of memory; with less than the bar + 1 GiB to spare it is skipped. `--old yes`
runs it uncapped (the child asks the kernel to pick it first if memory runs out), `--old no` never.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1 << 30
WAYS = ("new", "old")


# ------------------------------------------------------------------------------------------ the checkpoint


def write_full_random_sdxl(path: Path, seed: int = 0) -> Path:
    """A full-size SDXL single-file checkpoint (sdxl-base keys and shapes, fp16) with seeded N(0, 0.02) values,
    written tensor by tensor (peak memory: the largest tensor, TE2's 49408 x 1280 token embedding)."""
    import torch

    from trainer_core.atomic import atomic_path
    from trainer_core.models.architectures import sgm_shapes
    from trainer_core.models.safetensors_writer import PlannedTensor, StreamingWriter

    gen = torch.Generator().manual_seed(seed)
    entries = [PlannedTensor(k, "F16", tuple(s)) for k, s in sgm_shapes("sdxl-base").items()]
    meta = {"modelspec.architecture": "stable-diffusion-xl-v1-base", "kxl.bench": "random weights"}
    with atomic_path(path) as tmp, StreamingWriter(tmp, entries, meta) as w:
        for e in w.order:
            w.write(e.name, (torch.randn(e.shape, generator=gen) * 0.02).to(torch.float16))
    return path


def write_tiny(path: Path) -> Path:
    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    return save_single_file(build_tiny_components(0), path, dtype="fp16")


# ------------------------------------------------------------------------------------------ the two ways


def load_old_way(path: str | Path) -> Any:
    """The trainer's base load before #14.6, kept here to measure it: `read_single_file_tensors` (a safetensors
    memory map of the whole file), the layout conversion, every floating tensor cast to fp32, then loaded into
    meta-built modules. The caller's `prepare_for_training` then casts to the training dtypes."""
    import torch

    from trainer_core.models.architectures import build_empty_components, layout_for
    from trainer_core.models.loading import (
        SdxlComponents,
        _scheduler_and_tokenizers,
        detect_single_file_arch,
        read_single_file_tensors,
    )
    from trainer_core.models.sdxl_layout import adapt_te1_keys

    path = Path(path)
    sd = read_single_file_tensors(path)
    arch = detect_single_file_arch(path, {k: tuple(v.shape) for k, v in sd.items()})
    comps_sd, extras, _unexpected = layout_for(arch).from_sgm(sd)
    del sd
    models = build_empty_components(arch, "meta")
    for name, model in models.items():
        state = comps_sd[name]
        if name == "text_encoder":
            state = adapt_te1_keys(state, model.state_dict().keys())
        state = {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
        comps_sd[name] = {}
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(arch)
    return SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=arch,
                          source=path, extras=extras)  # fmt: skip


def load_new_way(path: str | Path, training: Any) -> Any:
    """What `Trainer._load_models` calls (on the CPU device)."""
    import torch

    from trainer_core.models.loading import load_sdxl
    from trainer_core.train.micro_step import training_dtypes

    return load_sdxl(path, dtype=training_dtypes(training), device=torch.device("cpu"))


def training_settings(precision: str, vae_dtype: str) -> Any:
    from trainer_core.train.config import load_preset

    t = load_preset("kohaku-xl-delta").training
    t.mixed_precision, t.vae_dtype = precision, vae_dtype
    return t


def watch_rss(cap: int, way: str) -> None:
    """Stop this process (printing the figures so far) once its RSS passes `cap` bytes: a lower bound, safely."""
    import threading

    import psutil

    def poll() -> None:
        proc = psutil.Process()
        while True:
            rss = proc.memory_info().rss
            if rss > cap:
                print(json.dumps({"way": way, "peak": rss, "capped": True}), flush=True)
                os._exit(0)
            time.sleep(0.02)

    threading.Thread(target=poll, daemon=True, name="rss-cap").start()


def child(way: str, path: str, precision: str, vae_dtype: str, cap: int = 0) -> int:
    """Run in a fresh process: load `path` the given way, print one JSON line with the figures."""
    import resource

    try:  # if the machine runs out of memory, the kernel should take this process, not a neighbour's
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    if cap:
        watch_rss(cap, way)
    import psutil
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401 - imported before the baseline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

    from trainer_core.models.tokenizers import load_sdxl_tokenizers
    from trainer_core.train.micro_step import prepare_for_training

    training = training_settings(precision, vae_dtype)
    load_sdxl_tokenizers()  # cached: the load's own call adds nothing to the peak
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    baseline_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    comps = load_new_way(path, training) if way == "new" else load_old_way(path)
    prepare_for_training(comps, training, torch.device("cpu"))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dtypes = {name: sorted({str(p.dtype).removeprefix("torch.") for p in m.parameters()})
              for name, m in comps.models().items()}  # fmt: skip
    model_bytes = sum(p.numel() * p.element_size() for m in comps.models().values() for p in m.parameters())
    print(json.dumps({"way": way, "peak": peak, "baseline": baseline, "baseline_peak": baseline_peak,
                      "end": proc.memory_info().rss, "seconds": seconds, "dtypes": dtypes,
                      "model_bytes": model_bytes}))  # fmt: skip
    return 0


# ------------------------------------------------------------------------------------------ driver


def run_child(way: str, path: Path, precision: str, vae_dtype: str, cap: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", way, str(path), "--precision", precision,
           "--vae-dtype", vae_dtype, "--cap", str(cap)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"the {way} load failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def old_way_estimate(file_size: int, precision: str) -> int:
    """The old way's peak, roughly: the mapped file + the fp32 model (2x an fp16 file) + the largest component cast
    back to 16 bit (the UNet, ~3/4 of the file), + ~1 GiB of interpreter and libraries."""
    fp32 = 2 * file_size
    cast_back = int(0.75 * file_size) if precision in ("fp16", "bf16") else 0
    return file_size + fp32 + cast_back + GIB


def print_table(path: Path, results: dict[str, dict[str, Any]], skipped: dict[str, str]) -> bool:
    size = path.stat().st_size
    bar = size + GIB
    print(f"checkpoint: {path.name}, {size / 1e9:.2f} GB ({size / GIB:.2f} GiB); bar: peak RSS <= file + 1 GiB "
          f"= {bar / GIB:.2f} GiB")  # fmt: skip
    print(f"{'way':5} {'peak RSS GiB':>13} {'x file':>7} {'imports GiB':>12} {'load GiB':>9} {'model GiB':>10} "
          f"{'seconds':>8}  dtypes (unet, te1, te2, vae)")  # fmt: skip
    for way in WAYS:
        r = results.get(way)
        if r is None:
            print(f"{way:5} {'-':>13}  {skipped.get(way, '')}")
            continue
        if r.get("capped"):
            print(f"{way:5} {'> ' + format(r['peak'] / GIB, '.2f'):>13} {'> ' + format(r['peak'] / size, '.2f'):>7}  "
                  "stopped at the cap (RSS polled every 20 ms): the load had not finished")  # fmt: skip
            continue
        d = r["dtypes"]
        dts = ", ".join("/".join(d[c]) for c in ("unet", "text_encoder", "text_encoder_2", "vae"))
        print(f"{way:5} {r['peak'] / GIB:13.2f} {r['peak'] / size:7.2f} {r['baseline'] / GIB:12.2f} "
              f"{(r['peak'] - r['baseline']) / GIB:9.2f} {r['model_bytes'] / GIB:10.2f} {r['seconds']:8.1f}  {dts}")  # fmt: skip
    print(
        "(peak RSS: ru_maxrss of the child, imports included; imports: RSS before the load; load: peak - imports)"
    )
    if "old" in results and "new" in results:
        bound = "<" if results["old"].get("capped") else ""
        print(f"ratio new/old peak RSS: {bound}{results['new']['peak'] / results['old']['peak']:.3f}")
        if not results["old"].get("capped") and results["new"]["dtypes"] != results["old"]["dtypes"]:
            print("MISMATCH: the two ways end in different dtypes")
            return False
    ok = results["new"]["peak"] <= bar
    print(
        f"bar host RAM: new peak {results['new']['peak'] / GIB:.2f} <= {bar / GIB:.2f} GiB  {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--full", action="store_true", help="full-size SDXL with random fp16 weights (~6.9 GB on disk)"
    )
    ap.add_argument("--dir", type=Path, help="where to write the checkpoint (default: a new temp folder)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the checkpoint (and reuse one already in --dir)"
    )
    ap.add_argument("--old", choices=("auto", "yes", "no"), default="auto", help="run the old way too")
    ap.add_argument(
        "--precision", choices=("no", "fp16", "bf16"), default="fp16", help="training.mixed_precision"
    )
    ap.add_argument(
        "--vae-dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="training.vae_dtype"
    )
    ap.add_argument("--child", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.precision, args.vae_dtype, args.cap)

    import psutil

    folder = args.dir or Path(tempfile.mkdtemp(prefix="kxl-load-rss-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("sdxl-random-fp16.safetensors" if args.full else "kxl-tiny-fp16.safetensors")
    try:
        t0 = time.perf_counter()
        if not (args.keep and path.is_file()):
            if args.full:
                need = 7 * 10**9
                free = shutil.disk_usage(folder).free
                if free < need + GIB:
                    raise SystemExit(
                        f"{folder}: {free / 1e9:.1f} GB free, the checkpoint needs ~{need / 1e9:.1f} GB"
                    )
                write_full_random_sdxl(path)
            else:
                write_tiny(path)
            print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
        results: dict[str, dict[str, Any]] = {}
        skipped: dict[str, str] = {}
        for way in WAYS:
            cap = 0
            if way == "old":
                need = old_way_estimate(path.stat().st_size, args.precision)
                available = psutil.virtual_memory().available
                if args.old == "no":
                    skipped[way] = "skipped (--old no)"
                    continue
                if args.old == "auto" and available < need + 2 * GIB:
                    cap = available - 4 * GIB
                    if cap < path.stat().st_size + 2 * GIB:
                        skipped[way] = (f"skipped: needs ~{need / GIB:.1f} GiB, {available / GIB:.1f} GiB available "
                                        "(--old yes runs it anyway)")  # fmt: skip
                        continue
                    print(f"old way: needs ~{need / GIB:.1f} GiB, {available / GIB:.1f} GiB available: stopping it "
                          f"at {cap / GIB:.1f} GiB of RSS")  # fmt: skip
            results[way] = run_child(way, path, args.precision, args.vae_dtype, cap)
        ok = print_table(path, results, skipped)
    finally:
        if not args.keep:
            if args.dir is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
