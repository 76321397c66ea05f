"""`kxl demo ...`: the embedded demo workspace."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..progress import text_progress


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="create the offline demo workspace")
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="ACTION")
    demo_sub.required = True
    init = demo_sub.add_parser(
        "init",
        help="write a synthetic danbooru DB, image shards and tiny SDXL checkpoints into DIR",
        description="Create the demo workspace without any download. Same --seed and --posts give the same bytes.",
    )
    init.add_argument(
        "dir", type=Path, help="folder to create (must be empty, or an existing demo with --force)"
    )
    init.add_argument(
        "--posts", type=int, default=400, help="number of posts in the metadata DB (default 400)"
    )
    init.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    init.add_argument(
        "--no-images", action="store_true", help="DB only: skip rendering image shards (benchmarks)"
    )
    init.add_argument("--no-models", action="store_true", help="skip writing the tiny checkpoints")
    init.add_argument("--force", action="store_true", help="recreate an existing demo workspace in DIR")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    from ..demo import init_demo
    from ..errors import KxlError

    if args.posts < 1:
        raise KxlError(f"--posts must be at least 1 (got {args.posts})")
    ws = init_demo(
        args.dir,
        posts=args.posts,
        seed=args.seed,
        images=not args.no_images,
        models=not args.no_models,
        force=args.force,
        progress=text_progress(unit="items"),
    )
    print(f"demo workspace: {ws.root}")
    print(f"  metadata DB:  {ws.db_path}")
    if ws.images_path:
        print(f"  image shards: {ws.images_path}")
    for role, path in ws.checkpoints.items():
        print(f"  {role + ':':<13} {ws.resolve(path)}")
    print("open it with: kxl-gui " + str(ws.root))
    return 0
