"""Generation speed: our pipeline vs a bare diffusers StableDiffusionXLPipeline call, and prompt encoding.

    python benchmarks/bench_generate.py [--size 256] [--steps 20] [--repeats 5] [--device cpu|cuda] [--full-sdxl M]

1. Tiny demo model, same size/steps/sampler/seed: `run_txt2img` (our A1111 conditioning, scheduler override,
   fp32 decode, infotext; no PNG writing, as the bare call writes none) vs `pipe(prompt, ...)`. Target ratio <= 1.05.
   Also `generate()` end to end (cached model, PNG written) for reference.
2. Encoding a 225-token prompt (3 chunks) through both tiny encoders.
3. With --full-sdxl PATH on a GPU: 1024x1024, 28 steps, seconds per image.
Best (min) and median of --repeats interleaved runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trainer_core.hf_quiet  # noqa: E402,F401


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)"
    )
    parser.add_argument("--full-sdxl", type=Path, default=None, help="a real SDXL checkpoint (GPU figure)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from trainer_core.generate.conditioning import encode_prompt
    from trainer_core.generate.pipeline import GenerationRequest, SampleSettings, generate, run_txt2img
    from trainer_core.generate.prompt import tokenize_prompt
    from trainer_core.generate.samplers import make_scheduler
    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    comps = build_tiny_components(0)
    for m in comps.models().values():
        m.to(args.device)
    prompt = "1girl, solo, long hair, looking at viewer, smile, masterpiece, newest"
    negative = "lowres, worst quality"
    settings = SampleSettings(prompt=prompt, negative=negative, steps=args.steps, cfg=7.0, seed=1,
                              width=args.size, height=args.size, sampler="Euler a")  # fmt: skip

    def ours() -> None:
        run_txt2img(comps, settings, out_dir=None, infotext_params={}, progress=None, check=lambda: None,
                    warnings=[])  # fmt: skip

    bare_pipe = comps.pipeline()
    bare_pipe.scheduler = make_scheduler(comps.scheduler.config, "Euler a")[0]
    bare_pipe.set_progress_bar_config(disable=True)

    def bare() -> None:
        _ = bare_pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=7.0,
                  width=args.size, height=args.size,
                  generator=torch.Generator(args.device).manual_seed(1)).images  # fmt: skip

    # Interleave the two so machine load drifts hit both alike.
    t_ours, t_bare = [], []
    ours(), bare()
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - start)
    # The minimum is the figure least disturbed by other processes on a shared box; medians shown too.
    mo, mb = min(t_ours), min(t_bare)
    print(f"tiny model {args.size}x{args.size}, {args.steps} steps, Euler a, CFG 7, device {args.device}")
    print(
        f"  ours (run_txt2img)             {mo * 1000:8.1f} ms/image (median {statistics.median(t_ours) * 1000:.1f})"
    )
    print(
        f"  bare StableDiffusionXLPipeline {mb * 1000:8.1f} ms/image (median {statistics.median(t_bare) * 1000:.1f})"
    )
    print(f"  ratio ours/bare (min)          {mo / mb:8.3f}   (target <= 1.05)")

    with tempfile.TemporaryDirectory() as tmp:
        model = save_single_file(comps, Path(tmp) / "tiny.safetensors")
        request = GenerationRequest(model=model, prompt=prompt, negative=negative, steps=args.steps, seed=1,
                                    width=args.size, height=args.size, out_dir=Path(tmp) / "out",
                                    device=args.device)  # fmt: skip
        t_full = median_time(lambda: generate(request), args.repeats)
        print(f"  generate() end to end (cached model, PNG written) {t_full * 1000:8.1f} ms/image")

    long_prompt = ", ".join(["long hair"] * 75)  # 2 tokens + comma per tag: 224 tokens, 3 chunks
    chunks = tokenize_prompt(long_prompt, comps.tokenizer)
    t_tok = median_time(lambda: tokenize_prompt(long_prompt, comps.tokenizer), args.repeats * 4)
    t_enc = median_time(lambda: encode_prompt(long_prompt, comps, "No norm"), args.repeats * 4)
    print(f"prompt of {chunks.token_count} tokens ({len(chunks.chunks)} chunks)")
    print(f"  parse + chunk                  {t_tok * 1000:8.2f} ms")
    print(f"  parse + chunk + encode (tiny)  {t_enc * 1000:8.2f} ms")

    if args.full_sdxl is not None:
        if not torch.cuda.is_available():
            print("full SDXL figure skipped: no CUDA device")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            request = GenerationRequest(model=args.full_sdxl, prompt=prompt, negative=negative, steps=28,
                                        seed=1, width=1024, height=1024, out_dir=Path(tmp), device="cuda")  # fmt: skip
            t_gpu = median_time(lambda: generate(request), max(1, args.repeats // 2))
        print(f"full SDXL 1024x1024, 28 steps, fp16 on {torch.cuda.get_device_name()}: {t_gpu:.2f} s/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
