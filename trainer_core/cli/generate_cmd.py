"""`kxl generate`: SDXL txt2img (+ hires fix, LoKr) with A1111 prompt syntax, writing PNGs with infotext."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import KxlError

_SIZE = re.compile(r"^(\d+)[xX](\d+)$")


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser(
        "generate",
        help="txt2img with A1111 prompt syntax, optional hires fix and LoKr files",
        description=(
            "Generate images from an SDXL checkpoint (single file or diffusers folder), fully offline. "
            "Prompts use A1111 syntax: (tag:1.5), [tag], BREAK. PNGs carry A1111 'parameters' metadata."
        ),
    )
    gen.add_argument(
        "--model", type=Path, required=True, help="base checkpoint (.safetensors or diffusers folder)"
    )
    gen.add_argument("--lokr", action="append", default=[], metavar="FILE[:MULT]",
                     help="LoKr file with optional strength (default 1.0); repeat for several")  # fmt: skip
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative", default="", help="negative prompt (empty = zero conditioning, as A1111)")
    gen.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: the sampler's, 28; DPM fast 40)"
    )
    gen.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default 7)")
    gen.add_argument("--sampler", default="Euler a", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M"')
    gen.add_argument(
        "--schedule", default="Automatic", help="schedule type: Automatic, Karras, Exponential, ..."
    )
    gen.add_argument("--seed", type=int, default=-1, help="-1 = random; image i of the run uses seed + i")
    gen.add_argument("--size", default=None,
                     help="first-pass size WxH (multiples of 8; default: the model's native size, 1024x1024 for "
                          "SDXL, 128x128 for the demo model)")  # fmt: skip
    gen.add_argument("--batch-count", type=int, default=1)
    gen.add_argument("--batch-size", type=int, default=1)
    gen.add_argument("--emphasis", default="No norm", choices=["Original", "No norm", "Ignore", "None"],
                     help='A1111 emphasis mode (default "No norm", as the Kohaku XL card advises)')  # fmt: skip
    hires = gen.add_argument_group("hires fix (enabled by --hires-scale)")
    hires.add_argument("--hires-scale", type=float, default=None, help="upscale factor, e.g. 1.5")
    hires.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (0 = same as --steps)")
    hires.add_argument("--denoise", type=float, default=0.5, help="hires denoising strength (default 0.5)")
    hires.add_argument(
        "--hires-upscaler", default="Latent", help='"Latent", "Latent (bicubic)", "Lanczos", ...'
    )
    gen.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: CUDA when available)")
    gen.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                     help="model dtype (default fp16 on CUDA, fp32 on CPU)")  # fmt: skip
    gen.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    grid = gen.add_argument_group(
        "X/Y/Z grid (any --grid-* option makes one labelled grid in OUT/grid-<time>/ instead of single images)"
    )
    for axis in ("x", "y", "z"):
        grid.add_argument(f"--grid-{axis}", default=None, metavar='"KIND: VALUES"',
                          help=f"{axis.upper()} axis, A1111 style, e.g. \"Seed: 1-4\", \"CFG Scale: 4, 7\", "
                               "\"Sampler: Euler a, DPM++ 2M\", \"Run states: runs/my-run\"")  # fmt: skip
    gen.set_defaults(func=run_generate)


def parse_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text.strip())
    if not match:
        raise KxlError(f"--size {text!r} is not WxH (e.g. 832x1216)")
    return int(match.group(1)), int(match.group(2))


def run_generate(args: argparse.Namespace) -> int:
    from ..generate.lokr_apply import parse_lokr_arg
    from ..generate.pipeline import GenerationRequest, generate
    from ..generate.samplers import default_steps
    from ..progress import text_progress

    width, height = parse_size(args.size) if args.size is not None else (0, 0)  # 0: the model's native size
    request = GenerationRequest(
        model=args.model,
        prompt=args.prompt,
        negative=args.negative,
        lokrs=[parse_lokr_arg(item) for item in args.lokr],
        steps=args.steps if args.steps is not None else default_steps(args.sampler),
        cfg=args.cfg,
        sampler=args.sampler,
        schedule=args.schedule,
        seed=args.seed,
        width=width,
        height=height,
        batch_count=args.batch_count,
        batch_size=args.batch_size,
        emphasis=args.emphasis,
        hires=args.hires_scale is not None,
        hires_scale=args.hires_scale if args.hires_scale is not None else 1.5,
        hires_steps=args.hires_steps,
        denoise=args.denoise,
        hires_upscaler=args.hires_upscaler,
        out_dir=args.out,
        device=args.device,
        dtype=args.dtype,
    )
    if args.grid_x or args.grid_y or args.grid_z:
        return _run_grid(request, args)
    result = generate(request, progress=text_progress(unit="steps"))
    for warning in result.warnings:
        print(f"warning: {warning}")
    for image in result.images:
        print(f"{image.path}  seed {image.seed}")
    print(f"{len(result.images)} image(s) in {result.seconds:.1f} s")
    return 0


def parse_grid_axis(spec: str, option: str):
    """`"KIND: VALUES"` (A1111's X/Y/Z plot wording) -> an engine Axis; the error names the option."""
    from ..generate.xyz_grid import AXIS_KINDS, parse_axis

    kind, sep, values = spec.partition(":")
    kind = next((k for k in AXIS_KINDS if k.lower() == kind.strip().lower()), kind.strip())
    if not sep:
        raise KxlError(f'{option} {spec!r} is not "KIND: VALUES"', hint=f"kinds: {', '.join(AXIS_KINDS)}")
    try:
        return parse_axis(kind, values)
    except KxlError as exc:
        raise KxlError(f"{option}: {exc}") from None


def _run_grid(request, args: argparse.Namespace) -> int:
    import time

    from ..generate.xyz_grid import run_grid
    from ..progress import text_progress

    if not args.grid_x:
        raise KxlError("a grid needs --grid-x (--grid-y and --grid-z are optional)")
    axes = [parse_grid_axis(spec, f"--grid-{a}") if spec else None
            for a, spec in (("x", args.grid_x), ("y", args.grid_y), ("z", args.grid_z))]  # fmt: skip
    folder = Path(args.out) / f"grid-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_grid(request, *axes, folder, progress=text_progress(unit="steps"))
    for warning in result.warnings:
        print(f"warning: {warning}")
    print(f"{result.grid}  ({len(result.cells)} cells; every cell's PNG and infotext in {result.folder})")
    return 0
