"""`kxl`: the headless face of the workbench. Every subcommand calls the same engine functions as the GUI.

Subcommands live in one module per area (`demo_cmd`, `workspace_cmd`, `model_cmd`, ...), discovered by the
`_cmd` suffix; each exposes `register(subparsers)` and imports heavy libraries only inside its handlers, so
`kxl --help` stays instant. User errors (KxlError) print one clear message and exit 2; Ctrl+C / cancel exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from .. import __version__
from ..errors import Cancelled, KxlError


def command_modules() -> list[ModuleType]:
    names = sorted(i.name for i in pkgutil.iter_modules(__path__) if i.name.endswith("_cmd"))
    return [importlib.import_module(f"{__name__}.{n}") for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kxl",
        description="Kohaku XL Workbench: reproduce the Kohaku XL Delta SDXL recipe from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"kxl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in command_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KxlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (Cancelled, KeyboardInterrupt):
        print("\ncancelled", file=sys.stderr)
        return 130
