"""`kxl train ...`: start, resume, stop and print launch lines for LoKr training runs.

    kxl train CONFIG [--resume] [--processes N]           run (through accelerate launch) and wait
    kxl train CONFIG --print-launch [--machines N ...]     print the exact command for each machine
    kxl train --preset tiny-demo --dataset DIR --base CKPT --out RUN_DIR [--max-steps N] [--processes 2]
    kxl train --stop RUN_DIR                               ask a running trainer to save and finish

A run is observable from outside: RUN_DIR/events.jsonl (one JSON event per line), run.json, checkpoints/.
Stopping: `kxl train --stop RUN_DIR` (it writes RUN_DIR/commands/stop), Ctrl+C here, or SIGTERM to the trainer:
the trainer saves its state and LoKr at the end of the current optimizer step, emits `done` and exits 0. A second
Ctrl+C kills it without saving. Killing `kxl train` itself also makes the ranks save and end (no orphans).
One trainer per run directory: a second `kxl train` (or `--resume`) into a live run is refused.

Exit codes: 0 finished or stopped, 2 bad input (config, paths, run folder), 3 non-finite loss, 4 out of memory,
1 any other failure, 130 interrupted before the trainer could save. The terminal shows the trainer's lines and
one summary; every rank's full output, tracebacks included, is in RUN_DIR/logs/launcher.log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoKr (Kohaku XL Delta recipe) with accelerate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("config", nargs="?", type=Path, help="training TOML (omit with --preset)")
    p.add_argument("--resume", action="store_true", help="continue from the newest saved state of the run")
    p.add_argument("--print-launch", action="store_true", help="print the launch command(s) and exit")
    p.add_argument("--processes", type=int, default=1, help="processes (GPUs) per machine (default 1)")
    p.add_argument("--machines", type=int, default=1, help="number of machines (multi-node)")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (multi-node)")
    p.add_argument("--main-ip", default="", help="address of machine 0 (multi-node)")
    p.add_argument(
        "--port", type=int, default=0, help="rendezvous port (default: a free one / 29500 multi-node)"
    )
    device = p.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="force CPU training (gloo DDP)")
    device.add_argument("--gpu", action="store_true",
                        help="force GPU training (the default for --print-launch; else: GPU when this host has one)")  # fmt: skip
    p.add_argument("--data-seed", type=int, default=None, metavar="N",
                   help="with --resume: reshuffle the data order from here on (move past batches that failed)")  # fmt: skip
    quick = p.add_argument_group("quick form (no config file)")
    quick.add_argument("--preset", help="preset name: kohaku-xl-delta or tiny-demo")
    quick.add_argument("--dataset", type=Path, help="kohya dataset folder")
    quick.add_argument("--base", type=Path, help="base SDXL checkpoint (single file or diffusers folder)")
    quick.add_argument("--out", type=Path, help="run directory to create")
    quick.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--stop", type=Path, metavar="RUN_DIR", help="ask the trainer of RUN_DIR to stop")
    p.set_defaults(func=run_train)


def _quick_config(args: argparse.Namespace) -> Path:
    from ..errors import KxlError
    from ..train.config import load_preset

    missing = [flag for flag, v in (("--dataset", args.dataset), ("--base", args.base), ("--out", args.out))
               if v is None]  # fmt: skip
    if missing:
        raise KxlError(f"--preset needs {', '.join(missing)}")
    cfg = load_preset(args.preset)
    cfg.model.base = str(args.base.expanduser().resolve())
    cfg.dataset.path = str(args.dataset.expanduser().resolve())
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise KxlError("--max-steps must be at least 1")
        cfg.training.max_steps = args.max_steps
    out = args.out.expanduser().resolve()
    from ..train.runs import check_free_run_dir

    check_free_run_dir(out)  # before the config of a live run could be overwritten
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.toml"
    if path.exists() and args.resume:
        return path  # resuming a quick run: keep the config it was started with
    from ..atomic import atomic_write_text

    atomic_write_text(path, cfg.to_toml())
    return path


def run_train(args: argparse.Namespace) -> int:
    from ..errors import KxlError

    if args.stop is not None:
        from ..train.events import request_stop

        if not args.stop.is_dir():
            raise KxlError("run directory not found", path=args.stop)
        print(f"stop requested: {request_stop(args.stop)}")
        return 0
    if args.preset:
        if args.config is not None:
            raise KxlError("give either CONFIG or --preset, not both")
        config = _quick_config(args)
    elif args.config is None:
        raise KxlError("give a training CONFIG file, or --preset with --dataset/--base/--out")
    else:
        config = args.config.expanduser().resolve()
    from ..train.config import load_config
    from ..train.launch import (
        DEFAULT_PORT,
        LaunchPlan,
        commands_text,
        free_port,
        launch_command,
        node_requirements,
    )

    cfg = load_config(config)
    plan = LaunchPlan(config=config, processes=args.processes, machines=args.machines,
                      machine_rank=args.machine_rank, main_ip=args.main_ip,
                      port=args.port or (DEFAULT_PORT if args.machines > 1 or args.print_launch else free_port()),
                      cpu=True if args.cpu else (False if args.gpu else None),
                      mixed_precision=cfg.training.mixed_precision, resume=args.resume,
                      data_seed=args.data_seed)  # fmt: skip
    if args.data_seed is not None and not args.resume:
        raise KxlError("--data-seed goes with --resume (a new run takes training.data_seed from its config)")
    if args.print_launch:
        # Lines for machines that may not be this one: GPU unless --cpu, nothing of this host baked in.
        plan.portable = True
        if plan.cpu is None:
            plan.cpu = False
        for line in node_requirements(config, cfg.base_path, cfg.dataset_path):
            print(f"# {line}")
        print(commands_text(plan))
        return 0
    from ..train.supervisor import EXIT_INTERRUPTED, LogEcho, Supervisor, supervise

    argv, extra_env = launch_command(plan)
    env = {**os.environ, **extra_env}
    run_dir = cfg.run_dir
    sup = Supervisor(run_dir, argv, env, tie_to_parent=True)
    # the echo starts where this launch's part of the log will (start_trainer appends to it)
    echo = LogEcho(run_dir / "logs" / "launcher.log", lambda line: print(line, flush=True))
    sup.start()
    print(f"run directory: {run_dir}  (events: {run_dir / 'events.jsonl'})", flush=True)
    code = supervise(sup, on_tick=echo.pump)
    outcome = sup.outcome(code)
    if outcome.exit_code == 0:
        print(f"{outcome.state}: {run_dir}", flush=True)
        return 0
    if code == EXIT_INTERRUPTED and outcome.state == "failed":
        print(f"interrupted: the trainer was killed before it saved; the newest state in {run_dir / 'checkpoints'} "
              "resumes with --resume", file=sys.stderr, flush=True)  # fmt: skip
        return EXIT_INTERRUPTED
    print(f"error: training failed (exit code {outcome.exit_code}): {outcome.message}\n"
          f"  full log: {outcome.log}", file=sys.stderr, flush=True)  # fmt: skip
    return outcome.exit_code
