"""`kxl tags ...`: look at a dataset the way the trainer will (caption variants, buckets, tag statistics) and
edit its captions in bulk (add / remove / replace a tag, undo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    tags = sub.add_parser("tags", help="inspect a dataset's captions, tags and buckets")
    tags_sub = tags.add_subparsers(dest="tags_command", metavar="ACTION")
    tags_sub.required = True

    preview = tags_sub.add_parser(
        "preview",
        help="print the captions the trainer sees for one image",
        description="Caption variants of one image with the card's shuffle/dropout settings, for epochs "
        "EPOCH..EPOCH+N-1, plus its bucket and crop.",
    )
    preview.add_argument("dir", type=Path, help="dataset folder (kohya <repeats>_<name> layout)")
    preview.add_argument(
        "--index", type=int, default=0, help="sample index = position in the dataset (default 0)"
    )
    preview.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    preview.add_argument("--epoch", type=int, default=1, help="first epoch, 1-based (default 1)")
    preview.add_argument("--n", type=int, default=5, help="number of variants (default 5)")
    preview.add_argument("--filter", default="", help="pick the index among images matching this tag search")
    preview.set_defaults(func=run_preview)

    stats = tags_sub.add_parser(
        "stats",
        help="tag frequencies, rating/quality/year counts, bucket histogram and warnings",
        description="Statistics over a dataset folder. Tag categories come from --vocab (a metadata DB or a "
        "tagcomplete CSV; default: the demo tag list).",
    )
    stats.add_argument("dir", type=Path, help="dataset folder")
    stats.add_argument("--vocab", type=Path, default=None, help="metadata DB (.db) or tag list (.csv)")
    stats.add_argument("--top", type=int, default=30, help="how many top tags to list (default 30)")
    stats.add_argument("--filter", default="", help="only images matching this tag search (AND/OR/NOT)")
    stats.add_argument("--no-sizes", action="store_true", help="skip reading image headers for the buckets")
    stats.set_defaults(func=run_stats)

    edit = tags_sub.add_parser(
        "edit",
        help="add, remove or replace a tag in every caption (or those matching --filter), undoable",
        description="Rewrite caption files atomically (and manifest.jsonl's captions with them; a referenced dataset's "
        "captions.jsonl). Tags match as "
        "typed: spaces or underscores, any case, \\( escapes. The previous bytes go to DIR/.kxl-undo so that "
        "`kxl tags undo DIR` can restore them.",
    )
    edit.add_argument("dir", type=Path, help="dataset folder")
    action = edit.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", metavar="TAG", help="add TAG where it is missing (end of the flexible part)")
    action.add_argument("--remove", metavar="TAG", help="remove every occurrence of TAG")
    action.add_argument(
        "--replace",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="replace OLD by NEW in place (OLD is dropped where NEW is already there)",
    )
    edit.add_argument(
        "--head", action="store_true", help="with --add: put the tag in the fixed head before |||"
    )
    edit.add_argument("--filter", default="", help="only images matching this tag search (AND/OR/NOT)")
    edit.add_argument("--dry-run", action="store_true", help="only say how many captions would change")
    edit.set_defaults(func=run_edit)

    undo = tags_sub.add_parser(
        "undo",
        help="undo the last `kxl tags edit` (or Tags tab bulk edit) of a dataset",
        description="Restore the files of the newest edit to their exact previous bytes. Refused, naming the file, "
        "when one was changed since the edit.",
    )
    undo.add_argument("dir", type=Path, help="dataset folder")
    undo.set_defaults(func=run_undo)


def run_preview(args: argparse.Namespace) -> int:
    from ..errors import KxlError
    from ..tags.caption_processing import card_caption_processing
    from ..tags.dataset_index import open_dataset, split_caption
    from ..tags.preview import bucket_preview, caption_variants

    if args.n < 1 or args.epoch < 1:
        raise KxlError(f"--n and --epoch must be at least 1 (got {args.n}, {args.epoch})")
    index = open_dataset(args.dir)
    rows = index.filter(args.filter)
    if not 0 <= args.index < len(rows):
        raise KxlError(f"--index {args.index} is out of range: {len(rows)} image(s) match", path=args.dir)
    i = int(rows[args.index])
    entry = index.entries[i]
    parts = split_caption(entry.caption)
    print(f"image:    {entry.image}  (sample index {i}, repeats {entry.repeats})")
    print(f"caption:  {entry.caption}")
    if parts.has_separator:
        print(f"fixed:    {', '.join(parts.fixed) or '-'}")
        print(f"flexible: {', '.join(parts.flex) or '-'}")
        if parts.suffix:
            print(f"suffix:   {', '.join(parts.suffix)}")
    size = index.image_size(i)
    print(bucket_preview(size).label if size else "bucket:   image size unknown (unreadable image)")
    print(
        f"trainer sees (seed {args.seed}, card settings: shuffle, tag dropout 0.1, keep_tokens_separator |||):"
    )
    for variant in caption_variants(
        entry.caption, card_caption_processing(), seed=args.seed, epoch=args.epoch, index=i, n=args.n
    ):
        dropped = (
            f"   [dropped: {', '.join(variant.processed.dropped_tags)}]"
            if variant.processed.dropped_tags
            else ""
        )
        print(f"  epoch {variant.epoch}: {variant.processed.text}{dropped}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ..progress import text_progress
    from ..tags.dataset_index import DatasetIndex, open_dataset
    from ..tags.dataset_stats import compute_stats
    from ..tags.preview import load_vocabulary

    index = open_dataset(args.dir, progress=text_progress(unit="files"))
    if args.filter:
        rows = index.filter(args.filter)
        index = DatasetIndex(index.root, index.layout, [index.entries[int(r)] for r in rows], index.problems)
    if not args.no_sizes:
        index.read_image_sizes(progress=text_progress(unit="images"))
    stats = compute_stats(index, load_vocabulary(args.vocab))
    print(f"{stats.images:,} images, {stats.samples_per_epoch:,} samples per epoch (repeats counted)")
    print(f"\ntop {min(args.top, len(stats.tags))} of {len(stats.tags):,} tags:")
    for t in stats.tags[: args.top]:
        posts = f"{t.vocab_count:,} posts" if t.vocab_count is not None else ""
        print(f"  {t.images:>8,}  {t.text:<40} {t.kind.value:<10} {posts}")
    print("\ncategories (distinct tags / occurrences):")
    for kind, (distinct, occurrences) in sorted(stats.kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kind.value:<10} {distinct:>8,} {occurrences:>10,}")
    for title, counter in (("ratings", stats.ratings), ("quality", stats.qualities), ("year", stats.years)):
        print(f"\n{title}: " + ", ".join(f"{k} {v:,}" for k, v in counter.most_common()))
    print(f"\nbuckets ({len(stats.buckets)} used; samples per epoch):")
    for (w, h), n in sorted(stats.buckets.items(), key=lambda kv: -kv[1]):
        print(f"  {w:>4}x{h:<4} {n:>8,}")
    if index.problems:
        print(f"\nproblems ({len(index.problems)}):")
        for p in index.problems[:20]:
            print(f"  {p}")
        if len(index.problems) > 20:
            print(f"  ... and {len(index.problems) - 20} more")
    if stats.warnings:
        print("\nwarnings:")
        for w in stats.warnings:
            print(f"  - {w}")
    return 0


def run_edit(args: argparse.Namespace) -> int:
    from ..errors import KxlError
    from ..progress import text_progress
    from ..tags.bulk_edit import TagEdit, edit_dataset, preview_bulk_edit
    from ..tags.dataset_index import open_dataset

    if args.head and not args.add:
        raise KxlError("--head only goes with --add")
    if args.add is not None:
        edit = TagEdit("add", args.add, head=args.head)
    elif args.remove is not None:
        edit = TagEdit("remove", args.remove)
    else:
        edit = TagEdit("replace", args.replace[0], args.replace[1])
    index = open_dataset(args.dir)
    rows = index.filter(args.filter) if args.filter else None
    if args.dry_run:
        preview = preview_bulk_edit(index, edit, rows)
        print(f"{edit.describe()}: {preview.describe()}")
        for image, before, after in preview.samples:
            print(f"  {image}\n    before: {before}\n    after:  {after}")
        return 0
    summary = edit_dataset(index, edit, rows, progress=text_progress(unit="files"))
    print(summary.describe())
    if summary.manifest_updated:
        # a referenced dataset keeps its captions in captions.jsonl
        edited = "captions.jsonl" if index.captions_in_manifest else "manifest.jsonl"
        print(f"  {index.root / edited}: captions updated")
    for line in summary.skipped[:20]:
        print(f"  skipped {line}")
    if len(summary.skipped) > 20:
        print(f"  ... and {len(summary.skipped) - 20} more skipped")
    if summary.journal is not None:
        print(f"undo with: kxl tags undo {args.dir}")
    return 0


def run_undo(args: argparse.Namespace) -> int:
    from ..progress import text_progress
    from ..tags.edit_journal import undo_last

    print(undo_last(args.dir, progress=text_progress(unit="files")).describe())
    return 0
