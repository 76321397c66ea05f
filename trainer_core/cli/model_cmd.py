"""`kxl model ...`: inspect and convert SDXL checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="inspect or convert SDXL checkpoints")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    info = model_sub.add_parser(
        "info", help="what a checkpoint is: format, architecture, dtype, tensors, size, hash"
    )
    info.add_argument("path", type=Path)
    info.add_argument(
        "--hash", action="store_true", help="also compute the A1111 model hash (reads the whole file)"
    )
    info.set_defaults(func=run_info)
    conv = model_sub.add_parser("convert", help="single file <-> diffusers folder, optionally changing dtype")
    conv.add_argument("src", type=Path, help="single-file .safetensors or diffusers folder")
    conv.add_argument(
        "dst", type=Path, help="output: a .safetensors path (single file) or a folder (diffusers)"
    )
    conv.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="output dtype (default: keep)"
    )
    conv.add_argument("--allow-pickle", action="store_true",
                      help="read a .ckpt/.pt with torch.load(weights_only=True); only for files you trust")  # fmt: skip
    conv.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    from ..hashing import short_hash
    from ..models.checkpoint_info import describe_checkpoint

    info = describe_checkpoint(args.path)
    print(f"file:     {info.path}")
    print(f"kind:     {info.kind}")
    print(f"arch:     {info.arch or '-'}")
    print(f"dtype:    {info.dtype}")
    print(f"tensors:  {info.tensor_count:,}")
    print(f"size:     {info.size_bytes / 2**20:,.1f} MiB")
    if args.hash and info.path.is_file():
        print(f"hash:     {short_hash(info.path)}")
    if info.problem:
        print(f"problem:  {info.problem}")
        return 2
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from ..models.loading import load_sdxl, save_diffusers_folder, save_single_file

    comps = load_sdxl(args.src, dtype=args.dtype, allow_pickle=args.allow_pickle)
    if args.dst.suffix == ".safetensors":
        out = save_single_file(comps, args.dst, dtype=args.dtype)
    else:
        out = save_diffusers_folder(comps, args.dst)
    print(f"wrote {out} ({comps.arch})")
    return 0
