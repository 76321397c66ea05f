"""The full Danbooru tag list shipped with the app, and which vocabulary the Generate tab's tag builder uses.

`resources/danbooru_tags/` holds the list packed (`PACK_NAME`), a `manifest.json` (sizes, row and category
counts, the SHA-256 of the packed file, of its text and of the CSV it was made from) and `NOTICE.txt` (where
the data comes from, and its license). `scripts/pack_danbooru_tags.py` regenerates both from the tagcomplete CSV.

Pack format, version 1: xz-compressed UTF-8 text, stored as columns rather than CSV rows: each column
compresses better on its own (1.09 MB against 1.23 MB for the xz'd CSV, 3.52 MB raw) and reads back with a plain
`str.split`, without CSV quoting rules.

    kxl-danbooru-tags 1 <rows>
    <rows lines: tag names, raw (underscores)>
    <rows lines: post counts>
    <rows lines: aliases joined by ",", empty when none>
    <one line: one HakuBooru category digit per tag (0 general, 1 artist, 2 character, 3 copyright, 4 meta)>

Tags are stored in popularity order (post count descending, then name), the order `TagVocabulary` keeps, so
packing does not depend on the CSV's row order.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import threading
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import KxlError
from ..paths import resources_dir
from ..progress import Progress, ensure_progress
from .vocabulary import Tag, TagCategory, TagVocabulary, read_db_tags

if TYPE_CHECKING:
    from ..workspace import Workspace

PACK_MAGIC = "kxl-danbooru-tags"
PACK_VERSION = 1
PACK_NAME = "danbooru_tags.kxltags.xz"
MANIFEST_NAME = "manifest.json"
# xz's default preset: its 8 MiB dictionary already spans the whole 3 MB text, and higher presets gain nothing.
XZ_PRESET = 6
_CATEGORY_OF_DIGIT = {str(int(c)): c for c in TagCategory}


def shipped_tags_dir() -> Path:
    return resources_dir() / "danbooru_tags"


# ---- pack format -------------------------------------------------------------------------------------------------
def pack_text(tags: Sequence[Tag]) -> str:
    """The pack's text for `tags` (in the order given). Names and aliases that the format cannot hold (a
    newline, a comma inside an alias, an empty name) raise KxlError naming the tag."""
    for tag in tags:
        if not tag.name or "\n" in tag.name:
            raise KxlError(f"tag name {tag.name!r} is empty or holds a newline")
        bad = [a for a in tag.aliases if not a or "\n" in a or "," in a]
        if bad:
            raise KxlError(f"tag {tag.name!r}: alias {bad[0]!r} is empty or holds a newline or a comma")
    lines = [f"{PACK_MAGIC} {PACK_VERSION} {len(tags)}"]
    lines += [tag.name for tag in tags]
    lines += [str(max(0, int(tag.count))) for tag in tags]
    lines += [",".join(tag.aliases) for tag in tags]
    lines.append("".join(str(int(tag.category)) for tag in tags))
    return "\n".join(lines) + "\n"


def compress_pack(text: str) -> bytes:
    return lzma.compress(
        text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET
    )


def unpack_tags(
    data: bytes, source: str | Path = "<packed tag list>", progress: Progress | None = None
) -> list[Tag]:
    """The tags of a packed list, in stored order. A damaged or foreign file raises KxlError naming it."""
    progress = ensure_progress(progress)
    try:
        text = lzma.decompress(data).decode("utf-8")
    except (lzma.LZMAError, UnicodeDecodeError) as exc:
        raise KxlError(f"not a packed tag list ({exc})", path=source) from None
    lines = _split_lines(text)
    header = lines[0].split(" ")
    if len(header) != 3 or header[0] != PACK_MAGIC or not header[2].isdigit():
        raise KxlError(f"not a packed tag list (first line {lines[0][:60]!r})", path=source)
    if header[1] != str(PACK_VERSION):
        raise KxlError(
            f"packed tag list format {header[1]!r}; this version reads format {PACK_VERSION}",
            path=source,
            hint="update Kohaku XL Workbench, or regenerate the file with scripts/pack_danbooru_tags.py",
        )
    n = int(header[2])
    if len(lines) != 3 * n + 3 or lines[-1] != "" or len(lines[3 * n + 1]) != n:
        raise KxlError(f"packed tag list is truncated or damaged (header says {n} tags)", path=source)
    names, counts, aliases, categories = (
        lines[1 : n + 1],
        lines[n + 1 : 2 * n + 1],
        lines[2 * n + 1 : 3 * n + 1],
        lines[3 * n + 1],
    )
    progress.stage("reading the Danbooru tag list")
    tags: list[Tag] = []
    for i in range(n):
        try:
            count = int(counts[i])
            category = _CATEGORY_OF_DIGIT[categories[i]]
        except (ValueError, KeyError):
            raise KxlError(
                f"row {i + 1} ({names[i]!r}): post count {counts[i]!r} or category {categories[i]!r} is not valid",
                path=source,
            ) from None
        tags.append(Tag(names[i], category, count, tuple(aliases[i].split(",")) if aliases[i] else ()))
        if i % 20000 == 19999:
            progress.update(i + 1, n)
            progress.check_cancelled()
    return tags


def _split_lines(text: str, pieces: int = 16) -> list[str]:
    """`text.split("\n")` in pieces: one split of the 3.4 MB text holds the GIL ~50 ms (420k new strings), long
    enough to stall the GUI thread while a worker loads the list. (Not splitlines(): that one also splits on
    \x1c, \x85, \u2028 ..., which a tag name may hold.)"""
    lines: list[str] = []
    start = 0
    step = max(1, len(text) // pieces)
    while start < len(text):
        end = text.find("\n", min(len(text), start + step))
        if end == -1:
            lines += text[start:].split("\n")
            return lines
        lines += text[start:end].split("\n")
        start = end + 1
    lines.append("")  # the text ended with a newline (or was empty): split() gives a last empty line
    return lines


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pack(
    csv_path: str | Path, out_dir: str | Path, origin: str, progress: Progress | None = None
) -> dict[str, Any]:
    """Pack a tagcomplete CSV into `out_dir` (the packed list and its manifest, each written atomically) and
    return the manifest. `origin` says where the CSV comes from (kept in the manifest for attribution). The same
    CSV always gives the same bytes: nothing time- or machine-dependent is stored."""
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    try:
        source = csv_path.read_bytes()
    except OSError as exc:
        raise KxlError(f"cannot read the tag list ({exc.strerror or exc})", path=csv_path) from None
    vocabulary = TagVocabulary.from_csv(csv_path, progress)
    text = pack_text(vocabulary.tags)
    packed = compress_pack(text)
    per_category = Counter(tag.category for tag in vocabulary.tags)
    manifest = {
        "format": PACK_MAGIC,
        "version": PACK_VERSION,
        "file": PACK_NAME,
        "rows": len(vocabulary),
        "categories": {c.name.lower(): per_category.get(c, 0) for c in TagCategory},
        "bytes": len(packed),
        "sha256": sha256_hex(packed),
        # The text's hash does not depend on the xz encoder: a check that the pack still matches its CSV.
        "text_bytes": len(text.encode("utf-8")),
        "text_sha256": sha256_hex(text.encode("utf-8")),
        "source": {"file": csv_path.name, "bytes": len(source), "sha256": sha256_hex(source)},
        "origin": origin,
    }
    atomic_write_bytes(out_dir / PACK_NAME, packed)
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ---- loading -----------------------------------------------------------------------------------------------------
def read_shipped_tags(folder: str | Path | None = None, progress: Progress | None = None) -> list[Tag]:
    """The shipped list's tags, checked against the SHA-256 in its manifest."""
    folder = Path(folder) if folder is not None else shipped_tags_dir()
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = str(manifest["sha256"])
        pack_path = folder / str(manifest.get("file", PACK_NAME))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KxlError(
            f"the shipped tag list's manifest cannot be read ({type(exc).__name__}: {exc})",
            path=manifest_path,
            hint="reinstall Kohaku XL Workbench",
        ) from None
    try:
        data = pack_path.read_bytes()
    except OSError as exc:
        raise KxlError(
            f"cannot read the shipped tag list ({exc.strerror or exc})",
            path=pack_path,
            hint="reinstall Kohaku XL Workbench",
        ) from None
    if sha256_hex(data) != expected:
        raise KxlError(
            "the shipped tag list is damaged (its SHA-256 differs from manifest.json)",
            path=pack_path,
            hint="reinstall Kohaku XL Workbench",
        )
    return unpack_tags(data, pack_path, progress)


_shipped_lock = threading.Lock()
_shipped: weakref.ref[TagVocabulary] | None = None


def load_shipped_vocabulary(progress: Progress | None = None) -> TagVocabulary:
    """The shipped Danbooru list as a vocabulary (~140k tags; about a second to load).

    While anything holds it (a tab's completer), later calls get the same object instead of a second copy of
    ~65 MB; once nothing does, it is freed and the next call reads it again. A second caller waits for the first
    one's load rather than loading in parallel.
    """
    global _shipped
    with _shipped_lock:
        vocabulary = _shipped() if _shipped is not None else None
        if vocabulary is None:
            vocabulary = TagVocabulary(read_shipped_tags(progress=progress))
            _shipped = weakref.ref(vocabulary)
        return vocabulary


def demo_tag_list_path() -> Path:
    return resources_dir() / "demo" / "tags.csv"


def builder_vocabulary(ws: Workspace | None, progress: Progress | None = None) -> TagVocabulary:
    """The tag builder's vocabulary: the workspace's own tags first, the shipped Danbooru list as the fallback.

    - A workspace with its metadata DB: the DB's `tag` table (the categories and counts of the user's data),
      plus every shipped tag the DB lacks and the shipped aliases (a DB has none).
    - The demo workspace: the demo's tag list (what its synthetic DB draws from, with real Danbooru post counts;
      the demo DB's own counts are synthetic), plus the rest of the shipped list.
    - No workspace, or one without a readable DB: the shipped list alone.
    A tag in neither list is "unknown" to the builder (its chip says so).
    """
    progress = ensure_progress(progress)
    shipped = load_shipped_vocabulary(progress)
    own: list[Tag] | None = None
    if ws is not None and ws.kind == "demo":
        own = TagVocabulary.from_csv(demo_tag_list_path(), progress).tags
    elif ws is not None and ws.db_path is not None and ws.db_path.is_file():
        try:
            own = read_db_tags(ws.db_path, progress)
        except KxlError as exc:
            # The Workspace page reports a broken DB; completion still works from the shipped list.
            progress.stage(f"workspace DB not readable, using the shipped tag list: {exc}")
    if own is None:
        return shipped
    progress.stage("merging with the Danbooru tag list")
    return TagVocabulary.union(own, shipped.tags)
