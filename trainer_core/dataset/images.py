"""Where a post's image lives: danbooru2023 tar shards or a plain folder of `<id>.<ext>` files.

Shards (specs/dataset.md §1.4): `data-NXYZ.tar` directly in the folder, plus `updates/*/*.tar`. A post with id `i`
is looked for in `data-{k}{i % 1000:03d}.tar` for k = 0..9 in that order, then in every updates tar (sorted by
path); the first member named `<i>.<ext>` with an image extension (IMAGE_EXTS) wins. Shards are untrusted input:
only regular members whose whole name is `<digits>.<ext>` count, their names are parsed into an integer id and a
short alphanumeric extension, and no name from a tar is ever used as a path. A member or file with another
extension (`<id>.txt`, `<id>.json` of a webdataset tar, the captions of a kohya folder) is never an image: taking
it would write the image under the caption's name, or a "corrupt" record for a post whose image is right after.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KxlError

# What counts as an image file: the still-image formats Pillow reads (gif included: an exported gif post is copied
# like any image). Captions, metadata and videos (txt, json, mp4, zip ...) never do. This is about file names;
# which *posts* are images is filters.py's IMAGE_EXTS, on the DB's file_ext.
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "avif", "tif", "tiff"})
SHARD_RE = re.compile(r"data-(\d+)\.tar")
MEMBER_RE = re.compile(r"(?:\./)?(\d{1,12})\.([A-Za-z0-9]{1,8})")
BUCKETS = 1000
GROUPS = 10  # k = 0..9 -> data-0XYZ .. data-9XYZ


@dataclass
class Hit:
    post_id: int
    data: bytes | None  # None when the member is unusable (see `problem`)
    ext: str
    origin: str  # shard name relative to the images folder, or the file name
    problem: str | None = None  # "truncated tar member" etc.


@dataclass
class ShardReadError:
    origin: str
    message: str


@dataclass
class ImageSource:
    """An indexed image folder: shard paths per bucket (tar layout) or file names per id (folder layout)."""

    root: Path
    kind: str  # "shards" | "folder"
    shards: dict[int, Path] = field(default_factory=dict)  # shard number -> path
    updates: list[Path] = field(default_factory=list)
    files: dict[int, str] = field(default_factory=dict)  # folder layout: id -> file name
    ignored: list[str] = field(default_factory=list)  # names that are not data-N.tar / <id>.<ext>
    _root_abs: str | None = field(default=None, repr=False, compare=False)

    def origin(self, path: Path) -> str:
        """The path relative to the images folder, with "/" (how manifests and shards.json name a shard)."""
        rest = self._below_root(path)
        if rest is not None:
            return rest.replace(os.sep, "/")
        return path.relative_to(self.root).as_posix()

    def absolute(self, path: Path) -> str:
        """os.path.abspath(path), from the folder's absolute path for a listed shard (~1 us, not ~5)."""
        rest = self._below_root(path)
        if rest is None:
            return os.path.abspath(path)
        if self._root_abs is None:
            self._root_abs = os.path.abspath(self.root)
        return self._root_abs.rstrip(os.sep) + os.sep + rest

    def _below_root(self, path: Path) -> str | None:
        """The text of `path` after the folder's and a separator, where it has no ".." (every listed shard); None
        otherwise. String slicing: relative_to cost ~20 us a call, 60 ms for the 3,000 shards a reference build
        names."""
        text, root = str(path), str(self.root)
        if text.startswith(root) and text[len(root) : len(root) + 1] == os.sep and ".." not in path.parts:
            return text[len(root) + 1 :]
        return None

    def candidates(self, bucket: int) -> list[Path]:
        return [
            self.shards[bucket + k * BUCKETS] for k in range(GROUPS) if bucket + k * BUCKETS in self.shards
        ]

    def describe(self) -> str:
        if self.kind == "shards":
            return f"{len(self.shards)} shard(s), {len(self.updates)} update tar(s)"
        return f"{len(self.files)} image file(s)"


def open_image_source(root: str | Path) -> ImageSource:
    """Index an images folder. Raises KxlError when it is missing or holds neither shards nor images."""
    root = Path(root)
    if not root.is_dir():
        raise KxlError("images folder not found", path=root, hint="point at the folder holding data-NXYZ.tar")
    src = ImageSource(root=root, kind="shards")
    loose: dict[int, str] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise KxlError(f"cannot list the images folder ({exc.strerror})", path=root) from exc
    for entry in entries:
        if not entry.is_file():
            continue
        name = entry.name
        if name.endswith(".tar"):
            m = SHARD_RE.fullmatch(name)
            if m and int(m.group(1)) < BUCKETS * GROUPS:
                # a later duplicate number (data-0001.tar vs data-001.tar) never replaces the first one
                src.shards.setdefault(int(m.group(1)), Path(entry.path))
            else:
                src.ignored.append(name)
            continue
        parsed = parse_member_name(name)
        if parsed is not None:
            loose.setdefault(parsed[0], name)  # sorted names: the first one wins
    updates_dir = root / "updates"
    if updates_dir.is_dir():
        src.updates = sorted(p for p in updates_dir.glob("*/*.tar") if p.is_file())
    if not src.shards and not src.updates:
        if not loose:
            raise KxlError(
                "holds no data-NXYZ.tar shards and no <id>.<ext> image files",
                path=root,
                hint="use the danbooru2023-webp-4Mpixel `images` folder or a folder of <post id>.<ext> files",
            )
        src.kind = "folder"
        src.files = loose
    return src


def parse_member_name(name: str) -> tuple[int, str] | None:
    """(post id, lower-case extension) of an image named `<id>.<ext>`; None for any other name."""
    m = MEMBER_RE.fullmatch(name)
    if not m or m.group(2).lower() not in IMAGE_EXTS:
        return None
    return int(m.group(1)), m.group(2).lower()


@dataclass
class MemberRef:
    """A wanted member found by `scan_tar_refs`: where its bytes are, none of them read yet."""

    post_id: int
    ext: str
    origin: str
    fd: int  # the open shard (valid until the scan moves on); read with os.pread
    offset: int
    size: int
    available: int  # bytes of the member that are actually in the file (less when the shard is truncated)


def _wanted_members(path: Path, origin: str, wanted: set[int], check_cancelled=None):
    """(tar, member, post_id, ext) for each wanted id in `path`, removed from `wanted`; ShardReadError if unreadable.
    Only headers are read: tarfile seeks over the data of members it is not asked for."""
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        yield ShardReadError(origin, f"unreadable shard ({exc})")
        return
    with tar:
        while wanted:
            if check_cancelled is not None:
                check_cancelled()
            try:
                member = tar.next()
            except (OSError, tarfile.TarError) as exc:
                yield ShardReadError(origin, f"shard is damaged after some members ({exc})")
                return
            if member is None:
                return
            if not member.isreg():
                continue
            parsed = parse_member_name(member.name)
            if parsed is None or parsed[0] not in wanted:
                continue
            wanted.discard(parsed[0])
            yield tar, member, parsed[0], parsed[1]


def scan_tar(
    path: Path, origin: str, wanted: set[int], check_cancelled=None
) -> Iterator[Hit | ShardReadError]:
    """Yield a Hit for each wanted id found in `path` (and remove it from `wanted`); ShardReadError if unreadable.

    Reads the tar once, front to back; only the data of wanted members is read.
    """
    for item in _wanted_members(path, origin, wanted, check_cancelled):
        if isinstance(item, ShardReadError):
            yield item
            return
        tar, member, post_id, ext = item
        try:
            fh = tar.extractfile(member)
            data = fh.read() if fh is not None else b""
        except (OSError, tarfile.TarError) as exc:
            yield Hit(post_id, None, ext, origin, f"unreadable tar member ({exc})")
            continue
        if len(data) != member.size:
            yield Hit(
                post_id, None, ext, origin, f"truncated tar member ({len(data)} of {member.size} bytes)"
            )
            continue
        yield Hit(post_id, data, ext, origin)


def scan_tar_refs(
    path: Path, origin: str, wanted: set[int], check_cancelled=None
) -> Iterator[MemberRef | ShardReadError]:
    """Like `scan_tar`, but yields where each wanted member's bytes are instead of the bytes (reference builds)."""
    file_size = None
    for item in _wanted_members(path, origin, wanted, check_cancelled):
        if isinstance(item, ShardReadError):
            yield item
            return
        tar, member, post_id, ext = item
        fd = tar.fileobj.fileno()
        if file_size is None:
            file_size = os.fstat(fd).st_size
        available = max(0, min(member.size, file_size - member.offset_data))
        yield MemberRef(post_id, ext, origin, fd, member.offset_data, member.size, available)


def read_folder_file(src: ImageSource, post_id: int) -> Hit | None:
    name = src.files.get(post_id)
    if name is None:
        return None
    parsed = parse_member_name(name)
    ext = parsed[1] if parsed else "bin"
    try:
        data = (src.root / name).read_bytes()
    except OSError as exc:
        return Hit(post_id, None, ext, name, f"unreadable file ({exc.strerror})")
    return Hit(post_id, data, ext, name)
