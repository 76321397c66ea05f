"""Build resources/danbooru_tags/: the full Danbooru tag list the tag builder falls back on, packed small.

Reads a tagcomplete-format CSV (`name,category,post_count,"aliases"`, no header) and writes the packed list and
its manifest (format: trainer_core/tags/shipped_vocabulary.py). The output depends only on the CSV's content, so
running this again on the same CSV reproduces the shipped files byte for byte; `--check` says whether they
still match (exit code 1 when they do not).

Usage:  python scripts/pack_danbooru_tags.py [--src /path/to/danbooru_tags.csv] [--out resources/danbooru_tags]
                                             [--check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer_core.errors import KxlError  # noqa: E402
from trainer_core.tags.shipped_vocabulary import MANIFEST_NAME, PACK_NAME, write_pack  # noqa: E402

DEFAULT_SRC = Path("/work/shared/data/danbooru_tags.csv")
DEFAULT_OUT = REPO / "resources" / "danbooru_tags"
# What the default source is (specs/dataset.md §6); NOTICE.txt beside the output carries the license text.
DEFAULT_ORIGIN = (
    "tags/danbooru.csv of DominikDoom/a1111-sd-webui-tagcomplete (MIT License, Copyright (c) 2022 Dominik Reh), "
    "data update 209b1dd: Danbooru tags with at least 25 posts as of 2024-12-22; see NOTICE.txt"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src", type=Path, default=DEFAULT_SRC, help="tagcomplete-format Danbooru tag list (CSV)"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the packed list and manifest")
    ap.add_argument(
        "--origin", default=DEFAULT_ORIGIN, help="where the CSV comes from (stored in the manifest)"
    )
    ap.add_argument("--check", action="store_true", help="only compare a fresh pack with the files in --out")
    args = ap.parse_args(argv)
    if not args.src.is_file():
        print(f"{args.src}: source tag list not found", file=sys.stderr)
        return 2
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                write_pack(args.src, tmp, args.origin)
                differ = [
                    name
                    for name in (PACK_NAME, MANIFEST_NAME)
                    if not (args.out / name).is_file()
                    or (Path(tmp) / name).read_bytes() != (args.out / name).read_bytes()
                ]
            if differ:
                print(
                    f"{args.out}: {', '.join(differ)} differ from a fresh pack of {args.src}", file=sys.stderr
                )
                return 1
            print(f"{args.out}: matches a fresh pack of {args.src}")
            return 0
        manifest = write_pack(args.src, args.out, args.origin)
    except KxlError as exc:
        print(exc, file=sys.stderr)
        return 2
    raw = manifest["source"]["bytes"]
    print(
        f"wrote {args.out / PACK_NAME}: {manifest['rows']} tags, {raw:,} bytes of CSV -> {manifest['bytes']:,} "
        f"bytes ({manifest['bytes'] / raw:.1%}), by category {manifest['categories']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
