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
        help="write a synthetic danbooru DB, image shards and the demo SDXL checkpoints into DIR",
        description="Create the demo workspace without any download. Same --seed and --posts give the same bytes. "
        "The checkpoints are the trained demo model shipped with the app (128x128, sha256-verified).",
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
    init.add_argument("--no-models", action="store_true", help="skip writing the demo checkpoints")
    init.add_argument("--force", action="store_true", help="recreate an existing demo workspace in DIR")
    init.set_defaults(func=run_init)

    run = demo_sub.add_parser(
        "run",
        help="the whole card recipe on the demo: dataset, merge with revert, 2-process training, bake, grid",
        description="Build the dataset, merge gamma + beta with the embedding revert, train a LoKr with accelerate "
        "on CPU processes, bake it into the merged base and generate a before | after grid, printing where each "
        "artefact went. DIR gets a demo workspace first if it has none. A stage whose artefact is already "
        "complete is skipped; Ctrl+C stops the trainer (it saves) and a later run resumes it.",
    )
    run.add_argument("dir", type=Path, help="demo workspace folder (created when missing or empty)")
    # None: the recipe's own default (demo_run.DEFAULT_STEPS), not imported here to keep `kxl --help` light
    run.add_argument("--steps", type=int, default=None, help="training optimizer steps (default 1200)")
    run.add_argument("--processes", type=int, default=2, help="CPU training processes, gloo DDP (default 2)")
    run.add_argument(
        "--selection",
        choices=("card", "all"),
        default="card",
        help="card = the card's selection preset scaled to the demo (default); all = every post",
    )
    run.add_argument("--prompts", type=int, default=4, help="prompts in the before/after grid (default 4)")
    run.add_argument("--force", action="store_true", help="redo every stage (the workspace itself is kept)")
    run.add_argument(
        "--posts", type=int, default=400, help="posts when the demo workspace is created (default 400)"
    )
    run.add_argument(
        "--seed", type=int, default=0, help="seed when the demo workspace is created (default 0)"
    )
    run.set_defaults(func=run_recipe)


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


def _stage_progress(stream=None):
    """Stage lines, and one bar line whose label says what is happening (the training loss, the image)."""
    import sys

    from ..progress import Progress, format_duration

    out = stream or sys.stderr
    interactive = hasattr(out, "isatty") and out.isatty()
    state = {"open": False, "printed": 0.0}

    def draw(ev) -> None:
        import time

        if ev.total is None and ev.done == 0:
            if state["open"]:
                out.write("\n")
                state["open"] = False
            out.write(f"{ev.message}\n")
            out.flush()
            return
        if not ev.total:
            return
        frac = min(1.0, ev.done / ev.total)
        line = f"  [{'#' * int(frac * 30):<30}] {frac * 100:5.1f}%  {ev.message}"
        if ev.eta_s is not None and ev.done < ev.total:
            line += f"  ETA {format_duration(ev.eta_s)}"
        finished = ev.done >= ev.total
        if interactive:
            out.write("\r" + line[:110].ljust(110))
            state["open"] = not finished
            if finished:
                out.write("\n")
        elif finished or time.monotonic() - state["printed"] >= 15:  # logs: a line every 15 s, no \r noise
            out.write(line + "\n")
            state["printed"] = time.monotonic()
        out.flush()

    return Progress(callback=draw, min_interval_s=0.2)


def run_recipe(args: argparse.Namespace) -> int:
    from ..demo_run import run_demo_recipe
    from ..progress import format_duration

    report = run_demo_recipe(
        args.dir,
        **({} if args.steps is None else {"steps": args.steps}),
        processes=args.processes,
        progress=_stage_progress(),
        force=args.force,
        selection=args.selection,
        posts=args.posts,
        seed=args.seed,
        prompts=args.prompts,
    )
    ran = [n.name for n in report.stages if n.ran]
    skipped = [n.name for n in report.stages if not n.ran]
    print(f"demo recipe done in {format_duration(report.seconds)}"
          + (f" (skipped, already complete: {', '.join(skipped)})" if skipped else ""))  # fmt: skip
    for line in report.summary_lines():
        print(line)
    if not ran:
        print("nothing to do: every artefact was complete (pass --force to redo them)")
    return 0
