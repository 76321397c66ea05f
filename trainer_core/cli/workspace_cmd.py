"""`kxl workspace ...`: inspect a workspace."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    ws = sub.add_parser("workspace", help="inspect a workspace")
    ws_sub = ws.add_subparsers(dest="workspace_command", metavar="ACTION")
    ws_sub.required = True
    show = ws_sub.add_parser(
        "show", help="print what a workspace holds (DB rows, shards, checkpoints, datasets, runs)"
    )
    show.add_argument("dir", type=Path)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from ..workspace import load_workspace
    from ..workspace_summary import format_summary, summarize_workspace

    print(format_summary(summarize_workspace(load_workspace(args.dir))))
    return 0
