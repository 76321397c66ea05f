"""Build resources/demo/tags.csv: the tag vocabulary the synthetic demo DB draws from.

Users do not have the full Danbooru tag list, so the demo ships a small, deterministic subset of it (same
tagcomplete format: `name,category,post_count,"aliases"`, no header, sorted by post_count descending).

Selection:
  * the most-used tags of each Danbooru category (quotas in CATEGORY_QUOTAS);
  * every tag the caption rules and the demo image renderer care about (FORCED_NAMES), even when rare;
  * every character and copyright named in resources/demo/characters.toml, and the copyright a top character's
    `(qualifier)` points at, so demo posts can tag characters with their series;
  * ADDED_ROWS: administrative meta tags (and `banned_artist`) that HakuBooru's meta blacklist / artist filter
    exist for but that the tagcomplete snapshot leaves out. Their post counts are rough Danbooru estimates.

Usage:  python scripts/extract_demo_tags.py [--src /path/to/danbooru_tags.csv] [--out resources/demo/tags.csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path("/work/shared/data/danbooru_tags.csv")
DEFAULT_OUT = REPO / "resources" / "demo" / "tags.csv"
CHARACTERS_TOML = REPO / "resources" / "demo" / "characters.toml"

# Danbooru category id -> how many of its most-used tags to keep.
CATEGORY_QUOTAS = {0: 1500, 4: 600, 3: 300, 1: 800, 5: 100}

# Rows hand-added because the CSV snapshot lacks them (spec §6). (name, danbooru category, approx post count, aliases)
ADDED_ROWS: list[tuple[str, int, int, str]] = [
    ("commentary_request", 5, 3_400_000, ""),
    ("commentary", 5, 1_300_000, ""),
    ("english_commentary", 5, 900_000, ""),
    ("bad_id", 5, 750_000, ""),
    ("bad_pixiv_id", 5, 560_000, ""),
    ("bad_twitter_id", 5, 110_000, ""),
    ("artist_request", 5, 65_000, ""),
    ("banned_artist", 1, 30_000, ""),
]

# Tags the caption rules (special count tags, short emoticons, meta blacklist) and the renderer (hair / eye /
# background colours) look at. Kept whatever their rank.
FORCED_NAMES: list[str] = (
    # special ("count") tags, spec §3.2
    "1girl 2girls 3girls 4girls 5girls 6+girls multiple_girls 1boy 2boys 3boys 4boys 5boys 6+boys multiple_boys "
    "male_focus 1other 2others 3others 4others 5others 6+others multiple_others no_humans solo hetero "
    # emoticons: <= 3 characters keep their underscore, longer ones do not (spec §3.4)
    "^_^ >_< o_o =_= x_x u_u 0_0 +_+ @_@ |_| ._. 3_3 6_9 :d :3 :o :p :q v <|>_<|> <o>_<o> ;d "
    # hair colours
    "blonde_hair black_hair brown_hair blue_hair pink_hair purple_hair white_hair grey_hair red_hair green_hair "
    "orange_hair aqua_hair light_blue_hair dark_blue_hair "
    # eye colours
    "blue_eyes red_eyes brown_eyes green_eyes purple_eyes yellow_eyes pink_eyes black_eyes grey_eyes orange_eyes "
    "aqua_eyes "
    # backgrounds
    "white_background simple_background grey_background black_background pink_background blue_background "
    "yellow_background green_background red_background purple_background gradient_background "
    "transparent_background outdoors blue_sky sky cloud day night night_sky starry_sky indoors sunset orange_sky "
    "smile open_mouth "
    # meta tags: blacklisted by substring and kept ones (spec §3.3)
    "highres absurdres lowres incredibly_absurdres photoshop_(medium) translated translation_request "
    "chinese_commentary md5_mismatch has_bad_revision video animated animated_gif ugoira sound official_art "
    "commission scan jpeg_artifacts ai-generated third-party_source duplicate spoilers tagme tall_image "
    "clip_studio_paint_(medium) "
    # an artist name with underscores that is 5 characters long (the `len > 3` underscore rule)
    "t_k_g"
).split()


def read_rows(src: Path) -> list[list[str]]:
    with open(src, encoding="utf-8", newline="") as fh:
        rows = [row for row in csv.reader(fh) if row]
    for lineno, row in enumerate(rows, 1):
        if len(row) != 4 or not row[2].isdigit():
            raise SystemExit(f"{src}:{lineno}: expected name,category,post_count,aliases; got {row!r}")
    return rows


def select(rows: list[list[str]], characters_toml: Path) -> list[list[str]]:
    by_name = {row[0]: row for row in rows}
    cfg = tomllib.loads(characters_toml.read_text(encoding="utf-8"))
    forced = list(FORCED_NAMES)
    for char, info in cfg["characters"].items():
        forced.append(char)
        forced.extend(info["copyright"])
    forced.extend(cfg.get("qualifiers", {}).values())

    keep: set[str] = set()
    taken = dict.fromkeys(CATEGORY_QUOTAS, 0)
    for row in rows:  # the CSV is sorted by post_count descending, so this takes the top of each category
        cat = int(row[1])
        if taken.get(cat, 10**9) < CATEGORY_QUOTAS.get(cat, 0):
            keep.add(row[0])
            taken[cat] += 1

    # A kept character whose `(qualifier)` names a copyright (directly or through an alias) pulls that copyright in.
    copyright_of: dict[str, str] = {}
    for row in rows:
        if row[1] == "3":
            copyright_of.setdefault(row[0], row[0])
            for alias in filter(None, row[3].split(",")):
                copyright_of.setdefault(alias, row[0])
    copyright_of.update(cfg.get("qualifiers", {}))
    for name in list(keep):
        if by_name[name][1] == "4":
            m = re.search(r"_\(([^()]+)\)$", name)
            if m and m.group(1) in copyright_of:
                forced.append(copyright_of[m.group(1)])

    added_names = {name for name, *_ in ADDED_ROWS}
    missing = [n for n in forced if n not in by_name and n not in added_names]
    if missing:
        raise SystemExit(f"forced tags missing from the source CSV: {missing}")
    keep.update(n for n in forced if n in by_name)

    out = [row for row in rows if row[0] in keep]
    for name, cat, count, aliases in ADDED_ROWS:
        if name not in by_name:  # a newer snapshot may carry it; then the real row wins
            out.append([name, str(cat), str(count), aliases])
    # Stable sort: post_count descending, source order among equal counts (the tagcomplete convention).
    out.sort(key=lambda row: -int(row[2]))
    return out


def render(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="full tagcomplete-format Danbooru tag list")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--characters", type=Path, default=CHARACTERS_TOML)
    args = ap.parse_args(argv)
    if not args.src.is_file():
        print(f"{args.src}: source tag list not found", file=sys.stderr)
        return 2
    rows = select(read_rows(args.src), args.characters)
    text = render(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part")
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(args.out)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[1]] = counts.get(row[1], 0) + 1
    print(
        f"wrote {args.out}: {len(rows)} tags, {len(text.encode('utf-8')) / 1024:.0f} KiB, by category {counts}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
