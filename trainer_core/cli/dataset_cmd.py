"""`kxl dataset captions|build|materialize|stats|index`: HakuBooru-style captions and kohya-ready datasets from danbooru2023."""

from __future__ import annotations

import argparse
from pathlib import Path


def _selection_args(p: argparse.ArgumentParser, filters_on: bool) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--preset", help="selection preset: kohaku-xl-delta (the card) or all")
    g.add_argument(
        "--range",
        dest="ranges",
        action="append",
        default=[],
        metavar="START:STOP[=COUNT]",
        help="id range, STOP exclusive and optional, COUNT a number or 'all' (repeatable); "
        "e.g. 0:3000000=1000000 or 5000000:=all",
    )
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default 1, the card's)")
    f = p.add_argument_group(
        "filters" + ("" if filters_on else " (none by default: every post is captioned)")
    )
    on = "on" if filters_on else "off"
    f.add_argument(
        "--skip-deleted",
        action=argparse.BooleanOptionalAction,
        default=filters_on,
        help=f"leave out deleted posts (default {on})",
    )
    f.add_argument(
        "--skip-banned",
        action=argparse.BooleanOptionalAction,
        default=filters_on,
        help=f"leave out banned and gold-only posts without a file URL (default {on})",
    )
    f.add_argument(
        "--images-only",
        action=argparse.BooleanOptionalAction,
        default=filters_on,
        help=f"leave out gif, mp4, webm, zip, swf ... (default {on})",
    )
    f.add_argument("--ratings", help="keep only these ratings, e.g. g,s or 0,1")
    f.add_argument("--min-score", type=int)
    f.add_argument("--min-fav", type=int, help="minimum fav_count")
    f.add_argument("--tags-any", default="", help="comma-separated: posts with any of these tags")
    f.add_argument("--tags-all", default="", help="comma-separated: posts with all of these tags")
    f.add_argument("--tags-none", default="", help="comma-separated: posts with none of these tags")
    c = p.add_argument_group("captions")
    c.add_argument(
        "--quality",
        choices=("card", "hakubooru", "db"),
        default="card",
        help="quality tags: card = P95/85/75/50/25/10 of HakuBooru's fav table, none above id 7.0M "
        "(default); hakubooru = P90/75/60/45/30/10, none above 7.5M; db = card cut points "
        "computed from this DB",
    )


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db-cache",
        choices=("auto", "always", "never"),
        default="auto",
        help="read posts and tags from the DB's column cache, building it first if needed (auto: for DB "
        "files of 256 MiB and more; same output either way; see `kxl dataset index`)",
    )


def _plan_and_filters(args: argparse.Namespace):
    from ..dataset.filters import PostFilters, parse_ratings, split_tags
    from ..dataset.selection import PRESETS, SelectionPlan, parse_range, preset_plan
    from ..errors import KxlError

    if args.preset and args.ranges:
        raise KxlError("give either --preset or --range, not both")
    if args.preset:
        plan = preset_plan(args.preset, args.seed)
    elif args.ranges:
        plan = SelectionPlan(
            tuple(parse_range(r) for r in args.ranges), 1 if args.seed is None else args.seed
        )
    else:
        base = PRESETS["all"]
        plan = SelectionPlan(base.ranges, 1 if args.seed is None else args.seed, "all")
    filters = PostFilters(
        skip_deleted=args.skip_deleted,
        skip_banned=args.skip_banned,
        images_only=args.images_only,
        ratings=parse_ratings(args.ratings) if args.ratings else None,
        min_score=args.min_score,
        min_fav_count=args.min_fav,
        tags_any=split_tags(args.tags_any),
        tags_all=split_tags(args.tags_all),
        tags_none=split_tags(args.tags_none),
    )
    return plan, filters


def register(sub: argparse._SubParsersAction) -> None:
    ds = sub.add_parser("dataset", help="captions and kohya datasets from a danbooru2023 metadata DB")
    ds_sub = ds.add_subparsers(dest="dataset_command", metavar="ACTION")
    ds_sub.required = True

    cap = ds_sub.add_parser(
        "captions",
        help="write HakuBooru captions as JSON Lines (no images needed)",
        description='One {"id", "caption"} object per post, ordered by id. With no '
        "selection or filter options every post in the DB is captioned.",
    )
    cap.add_argument("--db", type=Path, required=True, help="danbooru2023.db (HakuBooru schema)")
    cap.add_argument("--out", type=Path, required=True, help="output .jsonl file")
    cap.add_argument("--threads", type=int, default=2, help="DB reader threads (default 2)")
    _selection_args(cap, filters_on=False)
    _cache_arg(cap)
    cap.set_defaults(func=run_captions)

    build = ds_sub.add_parser("build", help="export a kohya-layout dataset (images + captions + manifest)")
    build.add_argument("--db", type=Path, required=True, help="danbooru2023.db (HakuBooru schema)")
    build.add_argument(
        "--images", type=Path, required=True, help="folder of data-NXYZ.tar shards or <id>.<ext> files"
    )
    build.add_argument(
        "--out", type=Path, required=True, help="dataset folder (new or empty; or a build to resume)"
    )
    _selection_args(build, filters_on=True)
    o = build.add_argument_group("output")
    o.add_argument(
        "--repeats", type=int, default=1, help="kohya repeats: the N of the N_name folder (default 1)"
    )
    o.add_argument("--name", default="kxl", help="the name of the N_name folder (default kxl)")
    o.add_argument(
        "--image-format",
        choices=("copy", "webp", "png", "jpg"),
        default="copy",
        help="copy the shard bytes unchanged (default) or re-encode",
    )
    o.add_argument(
        "--max-pixels", type=int, help="re-encode images larger than this area, e.g. 4194304 (2048x2048)"
    )
    o.add_argument("--verify-images", action="store_true", help="fully decode every image (slower)")
    o.add_argument(
        "--image-mode",
        choices=("copy", "reference"),
        default="copy",
        help="copy: write every image and caption file into the dataset (default; for sd-scripts and other "
        "tools); reference: write no image and no caption file, only the captions (captions.jsonl) and a table of "
        "where each image is inside its shard (refs.npy): this app trains straight from the shards (see "
        "`kxl dataset materialize`)",
    )
    o.add_argument("--workers", type=int, default=4, help="shards read in parallel (default 4)")
    o.add_argument(
        "--restart", action="store_true", help="discard an interrupted build in --out instead of resuming"
    )
    _cache_arg(build)
    build.set_defaults(func=run_build)

    idx = ds_sub.add_parser(
        "index",
        help="build the DB's column cache now (or show it): later selections and captions skip SQLite",
        description="Reads the whole metadata DB once into flat arrays under the app's cache folder "
        "(~4 bytes per tag row + ~24 bytes per post). A cache belongs to one state of the DB file and "
        "is rebuilt when the file changes.",
    )
    idx.add_argument("--db", type=Path, required=True, help="danbooru2023.db (HakuBooru schema)")
    idx.add_argument("--status", action="store_true", help="only say whether a current cache exists")
    idx.set_defaults(func=run_index)

    mat = ds_sub.add_parser(
        "materialize",
        help="turn a referenced dataset into a kohya folder of image files (the same as a copy build)",
    )
    mat.add_argument("dataset", type=Path, help="a dataset built with --image-mode reference")
    mat.add_argument("--out", type=Path, required=True, help="new (or empty) folder for the copy")
    mat.set_defaults(func=run_materialize)

    st = ds_sub.add_parser("stats", help="print the summary of a built dataset")
    st.add_argument("dir", type=Path)
    st.set_defaults(func=run_stats)


def run_captions(args: argparse.Namespace) -> int:
    from ..dataset.captions_export import write_captions_jsonl
    from ..progress import text_progress

    plan, filters = _plan_and_filters(args)
    n = write_captions_jsonl(
        args.db,
        args.out,
        plan,
        filters,
        args.quality,
        threads=args.threads,
        progress=text_progress(unit="posts"),
        db_cache=args.db_cache,
    )
    print(f"{n:,} captions -> {args.out}")
    return 0


def build_options_from_args(args: argparse.Namespace):
    from ..dataset.export import BuildOptions

    plan, filters = _plan_and_filters(args)
    return BuildOptions(
        db=args.db,
        images=args.images,
        out=args.out,
        plan=plan,
        filters=filters,
        quality=args.quality,
        repeats=args.repeats,
        name=args.name,
        image_format=args.image_format,
        max_pixels=args.max_pixels,
        verify_images=args.verify_images,
        image_mode=getattr(args, "image_mode", "copy"),
    )


def run_build(args: argparse.Namespace) -> int:
    from ..dataset.export import build_dataset
    from ..dataset.stats import format_summary
    from ..progress import text_progress

    result = build_dataset(
        build_options_from_args(args),
        workers=args.workers,
        on_partial="restart" if args.restart else "resume",
        progress=text_progress(unit="posts"),
        db_cache=args.db_cache,
    )
    if result.resumed_buckets:
        print(f"resumed an interrupted build ({result.resumed_buckets} bucket(s) were already done)")
    print(f"dataset: {result.out}")
    if result.image_mode == "reference":
        print(
            "images are referenced inside their shards (none copied); `kxl dataset materialize` makes a copy"
        )
    print(format_summary(result.summary))
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    from ..dataset.materialize import materialize_dataset
    from ..progress import text_progress

    n = materialize_dataset(args.dataset, args.out, progress=text_progress(unit="images"))
    print(f"{n:,} images -> {args.out}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..dataset.stats import dataset_stats, format_summary

    info, summary = dataset_stats(args.dir)
    sel = info.get("selection", {})
    print(f"dataset: {args.dir}")
    print(
        f"built by: {info.get('created_by', '?')}; preset {sel.get('preset', '-')}, seed {sel.get('seed', '-')}, "
        f"quality {info.get('captions', {}).get('quality', '?')}"
    )
    print(format_summary(summary))
    return 0


def run_index(args: argparse.Namespace) -> int:
    from ..danbooru.db_reader import open_db
    from ..dataset.column_cache import build_column_cache, find_column_cache
    from ..progress import format_bytes, text_progress

    conn = open_db(args.db)
    try:
        cache = find_column_cache(conn, args.db)
    finally:
        conn.close()
    if cache is None and args.status:
        print(f"no current column cache for {args.db}")
        return 1
    if cache is None:
        cache = build_column_cache(args.db, progress=text_progress(unit="rows"))
        how = f"built in {cache.meta.get('build_seconds', 0):.1f} s"
    else:
        how = f"up to date, built {cache.meta.get('built_at', '?')}"
    print(
        f"column cache: {cache.path} ({how})\n"
        f"  {cache.meta['posts']:,} posts, {cache.meta['tag_rows']:,} tag rows, {format_bytes(cache.size_bytes())}"
    )
    return 0
