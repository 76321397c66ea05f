"""Build the `accelerate launch` command lines that start the trainer (one per machine).

The trainer always runs as `accelerate launch ... -m trainer_core.train CONFIG [--resume]`, from the GUI, the CLI
and by hand. CPU-only machines get `ACCELERATE_USE_CPU=true` plus `--multi_gpu` for more than one process: that is
the only spelling that gives real gloo DDP on CPU (`--cpu --num_processes 2` starts ONE process, and `--multi_gpu`
without the variable starts independent single-process trainings) — specs/training.md §5.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KxlError

MAIN_IP_PLACEHOLDER = "<MAIN_NODE_IP>"
DEFAULT_PORT = 29500
CUDA_ALLOC_CONF = "expandable_segments:True"


@dataclass
class LaunchPlan:
    """How to start a run: processes per machine, machines, and where rank 0 listens."""

    config: Path
    processes: int = 1  # per machine
    machines: int = 1
    machine_rank: int = 0
    main_ip: str = ""
    port: int = DEFAULT_PORT
    cpu: bool | None = None  # None: decide from torch.cuda.is_available() on this machine
    mixed_precision: str = "no"
    threads_per_process: int | None = None
    resume: bool = False
    resume_from: Path | None = None  # a checkpoints/state-N folder; None with resume=True: the newest
    data_seed: int | None = None  # reshuffle the data order from here on (trainer --data-seed)
    python: str = field(default_factory=lambda: sys.executable)
    # For lines printed to run on OTHER machines: `accelerate launch` from their PATH, not this interpreter, and no
    # thread count derived from this host's cores.
    portable: bool = False

    def use_cpu(self) -> bool:
        if self.cpu is not None:
            return self.cpu
        import torch

        return not torch.cuda.is_available()


def launch_command(plan: LaunchPlan, machine_rank: int | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for one machine. `--num_processes` is the total over all machines."""
    if plan.processes < 1 or plan.machines < 1:
        raise KxlError("--processes and --machines must be at least 1")
    rank = plan.machine_rank if machine_rank is None else machine_rank
    total = plan.processes * plan.machines
    cpu = plan.use_cpu()
    head = ["accelerate", "launch"] if plan.portable else [plan.python, "-m", "accelerate.commands.launch"]
    argv = [*head, "--num_processes", str(total), "--num_machines", str(plan.machines),
            "--mixed_precision", plan.mixed_precision]  # fmt: skip
    if total > 1:
        argv.append("--multi_gpu")
    argv += ["--dynamo_backend", "no"]
    if plan.machines > 1:
        argv += ["--machine_rank", str(rank), "--main_process_ip", plan.main_ip or MAIN_IP_PLACEHOLDER,
                 "--main_process_port", str(plan.port)]  # fmt: skip
    elif total > 1:
        argv += ["--main_process_port", str(plan.port)]
    threads = plan.threads_per_process
    if threads is None and cpu and not plan.portable:
        threads = max(1, (os.cpu_count() or 1) // plan.processes)
    if threads:
        argv += ["--num_cpu_threads_per_process", str(threads)]
    argv += ["-m", "trainer_core.train", str(plan.config)]
    if plan.resume_from is not None:
        argv += ["--resume-from", str(plan.resume_from)]
    elif plan.resume:
        argv.append("--resume")
    if plan.data_seed is not None:
        argv += ["--data-seed", str(plan.data_seed)]
    if cpu:
        env = {"ACCELERATE_USE_CPU": "true"}
    else:
        # Buckets from 4096x256 to 256x4096 change every activation's shape from step to step; expandable segments
        # let the caching allocator grow blocks instead of fragmenting into unusable holes. A user's own
        # setting wins.
        env = {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)}
    return argv, env


def format_command(argv: list[str], env: dict[str, str]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    cmd = " ".join(shlex.quote(a) for a in argv)
    return f"{prefix} {cmd}" if prefix else cmd


def per_node_commands(plan: LaunchPlan) -> list[str]:
    """The exact shell line to run on each machine (machine 0 hosts rank 0 at main_ip:port)."""
    return [format_command(*launch_command(plan, r)) for r in range(plan.machines)]


def commands_text(plan: LaunchPlan) -> str:
    """What to paste into a shell: the one command, or each machine's line under a `# machine N` comment."""
    lines = per_node_commands(plan)
    if plan.machines == 1:
        return lines[0]
    out = []
    for rank, line in enumerate(lines):
        out += [f"# machine {rank}" + (" (main)" if rank == 0 else ""), line]
    return "\n".join(out)


def node_requirements(config: Path, base: Path, dataset: Path) -> list[str]:
    """What every machine of a multi-node run must have, printed above the per-machine lines."""
    return [
        "every machine needs, at the same absolute paths:",
        f"  the config   {config}",
        f"  the base     {base}",
        f"  the dataset  {dataset}",
        "  and this project installed (same version), with `accelerate` on PATH; the run directory is written by",
        "  machine 0 (rank 0) only",
    ]


def free_port() -> int:
    """A free TCP port on this machine, so two local runs do not collide on accelerate's default."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
