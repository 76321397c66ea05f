"""`kxl merge`: weighted sum / add-difference / LoKr bake of SDXL checkpoints, with the card's preset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import KxlError

EPILOG = """examples:
  kxl merge --preset kohaku-xl-delta --a GAMMA.safetensors --b BETA.safetensors --original SDXL_BASE.safetensors \\
            --out DELTA_BASE.safetensors
  kxl merge --a A.safetensors --b B.safetensors --weights 0.3,0.7 --out AB.safetensors
  kxl merge --mode add-difference --a A --b B --c C --multiplier 1.0 --out A_plus_B_minus_C.safetensors
  kxl merge --a DELTA_BASE.safetensors --lokr delta-lokr.safetensors:1.0 --out DELTA.safetensors
  kxl merge --show DELTA_BASE.safetensors
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge SDXL checkpoints (weighted sum, add-difference, embedding revert, LoKr bake)",
        description="Streaming SDXL checkpoint merge. Inputs may be single-file .safetensors or diffusers folders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=["kohaku-xl-delta"],
        help="the card's recipe: 0.5 gamma + 0.5 beta, revert all four embeddings",
    )
    p.add_argument("--mode", choices=["weighted-sum", "add-difference"], default="weighted-sum")
    p.add_argument("--a", type=Path, help="first model (its key set and layout define the output)")
    p.add_argument("--b", type=Path, help="second model")
    p.add_argument("--c", type=Path, help="third model (add-difference: the one subtracted)")
    p.add_argument("--more", type=Path, action="append", default=[], help="further models for a weighted sum")
    p.add_argument("--weights", help="weighted sum: comma-separated weight per model (default: equal)")
    p.add_argument("--multiplier", type=float, default=1.0, help="add-difference: A + M (B - C)")
    p.add_argument("--block-weights", action="append", default=[], metavar="BLOCK=W1,W2",
                   help="per-block weights (BASE, IN00..IN08, MID, OUT00..OUT08); repeatable")  # fmt: skip
    p.add_argument("--revert", default=None,
                   help="comma list of te1_token,te1_position,te2_token,te2_position to take from --original")  # fmt: skip
    p.add_argument(
        "--original", type=Path, help="the model whose embeddings are restored (the original SDXL base)"
    )
    p.add_argument(
        "--lokr", action="append", default=[], metavar="FILE[:MULT]", help="bake a LoKr (repeatable)"
    )
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--missing", choices=["error", "take_a"], default="error",
                   help="keys missing from B/C: stop (default) or copy them from A")  # fmt: skip
    p.add_argument("--out", type=Path, help="output .safetensors")
    p.add_argument("--show", type=Path, metavar="FILE", help="print the merge recipe stored in FILE and exit")
    p.set_defaults(func=run)


def _parse_lokr(spec: str) -> tuple[str, float]:
    path, sep, mult = spec.rpartition(":")
    if sep and path and not (len(path) == 1 and path.isalpha()):  # keep "C:\\x" drive letters intact
        try:
            return path, float(mult)
        except ValueError:
            pass
    return spec, 1.0


def build_recipe(args: argparse.Namespace):
    from ..merge.recipe import MergeRecipe, kohaku_xl_delta_recipe

    lokr = [_parse_lokr(s) for s in args.lokr]
    if args.preset == "kohaku-xl-delta":
        if not (args.a and args.b and args.original):
            raise KxlError("--preset kohaku-xl-delta needs --a GAMMA --b BETA --original SDXL_BASE")
        recipe = kohaku_xl_delta_recipe(args.a, args.b, args.original)
        recipe.dtype, recipe.lokr, recipe.missing = args.dtype, lokr, args.missing
        return recipe
    if not args.a:
        raise KxlError("--a is required")
    if args.mode == "add-difference":
        if not (args.b and args.c):
            raise KxlError("add-difference needs --a, --b and --c")
        inputs, op, weights = [args.a, args.b, args.c], "add_difference", [args.multiplier]
    else:
        inputs = [m for m in (args.a, args.b, args.c, *args.more) if m is not None]
        op = "weighted_sum" if len(inputs) > 1 else "copy"
        if args.weights:
            try:
                weights = [float(w) for w in args.weights.split(",")]
            except ValueError:
                raise KxlError(
                    f"--weights must be numbers separated by commas, got '{args.weights}'"
                ) from None
        else:
            weights = [1.0 / len(inputs)] * len(inputs) if op == "weighted_sum" else []
    blocks = {}
    for spec in args.block_weights:
        name, _, values = spec.partition("=")
        try:
            blocks[name.strip().upper()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise KxlError(f"--block-weights must look like IN04=0.3,0.7, got '{spec}'") from None
    revert = [r.strip() for r in args.revert.split(",") if r.strip()] if args.revert else []
    return MergeRecipe(operation=op, inputs=[str(i) for i in inputs], weights=weights, block_weights=blocks,
                       revert=revert, original=str(args.original) if args.original else None, lokr=lokr,
                       dtype=args.dtype, missing=args.missing)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..merge.engine import run_merge
    from ..merge.sources import metadata_of, recipe_from_metadata
    from ..models.safetensors_header import read_header
    from ..progress import text_progress

    if args.show:
        read_header(args.show)  # clear error for missing/truncated files
        recipe = recipe_from_metadata(metadata_of(args.show))
        if recipe is None:
            raise KxlError("holds no merge recipe (not written by kxl merge)", path=args.show)
        print(json.dumps(recipe, indent=2, sort_keys=True))
        return 0
    if not args.out:
        raise KxlError("--out is required")
    recipe = build_recipe(args)
    result = run_merge(recipe, args.out, progress=text_progress(unit="B"))
    for w in result.warnings:
        print(f"warning: {w}")
    plan = result.plan
    print(f"wrote {result.path} ({len(plan.keys):,} tensors, {plan.out_bytes / 2**30:.2f} GiB, {recipe.dtype}) "
          f"in {result.seconds:.1f} s")  # fmt: skip
    if plan.reverted:
        print(f"reverted from {Path(recipe.original).name}: {', '.join(recipe.revert)}")
    if plan.taken_from_a:
        print(f"copied {len(plan.taken_from_a)} tensor(s) missing from other inputs from A")
    for lf in plan.lokr_files:
        print(f"baked {lf.name}: {len(lf.modules)} modules")
    return 0
