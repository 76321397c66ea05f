"""Entry point of the packaged (PyInstaller one-folder) app.

A frozen build has no separate Python interpreter, yet training runs as `<python> -m accelerate.commands.launch
... -m trainer_core.train CONFIG` (trainer_core/train/launch.py uses sys.executable), and accelerate/torchrun start
each rank as `<python> [-u] -m trainer_core.train ...`. In the build, sys.executable is this program, so it must
also behave like `python -m MODULE` and `python -c CODE`. The same binary is the `kxl` command line when it is
started under that name (the build puts a `kxl` link beside `kxl-gui`), and the desktop app otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys

# Interpreter switches torch's elastic launcher and others put before `-m`; only -u changes anything here.
IGNORED_FLAGS = {"-B", "-E", "-s", "-S", "-I", "-O", "-OO"}


def run_as_interpreter(argv: list[str]) -> int | None:
    """Handle `[-u] -m MODULE ARGS...` and `-c CODE ARGS...`; None when argv is not an interpreter call."""
    while argv and (argv[0] == "-u" or argv[0] in IGNORED_FLAGS):
        if argv[0] == "-u":
            os.environ["PYTHONUNBUFFERED"] = "1"
            sys.stdout.reconfigure(line_buffering=True)
            sys.stderr.reconfigure(line_buffering=True)
        argv = argv[1:]
    if len(argv) >= 2 and argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    if len(argv) >= 2 and argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - python -c semantics
        return 0
    return None


def main() -> int:
    multiprocessing.freeze_support()  # DataLoader workers and spawn-started children re-enter here
    code = run_as_interpreter(sys.argv[1:])
    if code is not None:
        return code
    program = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    if program == "kxl":
        from trainer_core.cli import main as cli_main

        return cli_main(sys.argv[1:])
    from kxl_gui.app import main as gui_main

    return gui_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
