"""Where the wanted members of a tar shard are, from their 512-byte headers alone.

A reference build (reference_build.py) needs, for each selected post, the offset and size of its image inside
its shard, the member's header block (the image's fingerprint, image_refs.py) and the first bytes of the image
(its width and height). `tarfile` gets the first two at ~20-50 us per member (a buffered seek, a read and a
Python-level parse of every field). Two readers here, tried in this order:

* the batch reader: `walk_shard` hops from header to header (one `pread` of a page per big member, 64 KB at a
  time through small ones; ~1-2 us of Python per member), and `settle` validates, names, fingerprints and
  sizes the headers of many shards in one numpy pass (~1 us per header);
* `scan_wanted`, one member at a time (~5 us each), for archives the batch reader does not decide.

Exactness: the answer must be the one `images.scan_tar_refs` (tarfile) gives, since a reference build has to
describe the same images a copy build writes. So these readers only handle archives made of plain ustar/GNU
headers of regular files, directories and links, each with a valid checksum, ending in a zero block or at the
end of the file. Anything else (pax or GNU long-name headers, sparse files, base-256 numbers, a bad checksum, a
member whose data runs past the end of the file, a short header block) makes them return None *before anything
is reported*, and the caller reads that shard with the next reader, finally tarfile, whose rules (and messages)
then decide. The danbooru2023 shards and the demo's take the batch path.

Member names are parsed as tarfile parses them (UTF-8, surrogateescape, ustar prefix joined) and matched with
`images.parse_member_name`, so a name is an id only when it is `<digits>.<ext>`; no name is ever a path.
"""

from __future__ import annotations

import os
import re
import zlib
from array import array
from typing import NamedTuple

import numpy as np

from .images import IMAGE_EXTS, parse_member_name

BLOCK = 512
READ = 4096  # one page: the header block and the image's first 3,584 bytes (a WebP's size needs its first 30)
_REGULAR = (b"0", b"\0")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos: tarfile skips no data
_ZERO = bytes(BLOCK)
_SMALL = 16 * 1024  # members below this size are read 64 KB at a time
_BIG_READ = 64 * 1024


class FoundMember(NamedTuple):
    post_id: int
    ext: str
    offset: int  # first byte of the member's data
    size: int
    header: bytes  # the member's 512-byte header block
    head: bytes  # the first min(size, READ - BLOCK) bytes of its data


def _octal(field: bytes) -> int | None:
    """tarfile's `nti` for the octal form; None for the base-256 form or anything tarfile would reject."""
    if field[:1] in (b"\x80", b"\xff"):
        return None
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


# How tarfile and GNU tar write the numeric fields: zero-padded octal digits and one NUL or space. When both
# patterns match, every field tarfile parses is valid and the size is the 11 digits at 124; anything else gets
# the field-by-field parse (and, where that fails too, the fallback to tarfile).
_COMMON_NUMBERS = re.compile(rb"(?:[0-7]{7}[\0 ]){3}[0-7]{11}[\0 ][0-7]{11}[\0 ]")  # mode uid gid size mtime
_COMMON_DEVICES = re.compile(rb"(?:[0-7]{7}[\0 ]|\0{8}){2}")  # devmajor devminor
_ASCII_MEMBER = re.compile(rb"(?:\./)?([0-9]{1,12})\.([A-Za-z0-9]{1,8})")


def _size(block: bytes) -> int | None:
    """The member's size, or None when tarfile would find one of the header's numbers invalid (or base-256)."""
    if _COMMON_NUMBERS.fullmatch(block, 100, 148) and _COMMON_DEVICES.fullmatch(block, 329, 345):
        return int(block[124:135], 8)
    for a, b in ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345)):
        if _octal(block[a:b]) is None:
            return None
    return _octal(block[124:136])


def _checksum_ok(block: bytes) -> bool:
    stored = _octal(block[148:156])
    if stored is None:
        return False
    # The byte sum, with the checksum field itself counted as eight spaces (256). adler32's low half is 1 + the
    # byte sum mod 65521, and a half block sums to at most 65,280: exact, at C speed. tarfile also accepts the
    # signed-char sum (old Sun tars), checked only when the unsigned one differs.
    adler = zlib.adler32
    unsigned = 254 + (adler(block[:256]) & 0xFFFF) + (adler(block[256:]) & 0xFFFF) - sum(block[148:156])
    if stored == unsigned:
        return True
    high = sum(1 for i, b in enumerate(block) if b >= 128 and not 148 <= i < 156)
    return stored == unsigned - 256 * high


def _member(block: bytes) -> tuple[int, str] | None:
    """(post id, extension) when the member's name is `<id>.<ext>` as images.parse_member_name reads it."""
    raw = block[0:100]
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    if block[345] == 0 and raw.isascii():  # no ustar prefix, ASCII: the bytes pattern is the same test
        m = _ASCII_MEMBER.fullmatch(raw)
        if m is None:
            return None
        ext = m.group(2).decode("ascii").lower()
        return (int(m.group(1)), ext) if ext in IMAGE_EXTS else None
    return parse_member_name(_name(block))


def _name(block: bytes) -> str:
    """The name as tarfile builds it: NUL-terminated UTF-8 (surrogateescape), the ustar prefix joined."""

    def text(raw: bytes) -> str:
        end = raw.find(b"\0")
        return (raw if end < 0 else raw[:end]).decode("utf-8", "surrogateescape")

    name = text(block[0:100])
    prefix = text(block[345:500])
    return f"{prefix}/{name}" if prefix else name


def scan_wanted(fd: int, file_size: int, wanted: set[int]) -> list[FoundMember] | None:
    """The members of the open shard `fd` whose ids are in `wanted`, in archive order, the first member of an id
    winning, reading stopped once every wanted id is found (as tarfile is driven by images._wanted_members).
    None when the archive is not one this reader handles exactly (module docstring); `wanted` is never changed.

    Reads go through a small buffer: a page per member where members are big (a real shard: ~400 KB images,
    only their header pages are read), 64 KB at a time where they are small (many headers per read)."""
    left = set(wanted)
    found: list[FoundMember] = []
    pread, numbers, devices, checksum_ok, member = (
        os.pread,
        _COMMON_NUMBERS.fullmatch,
        _COMMON_DEVICES.fullmatch,
        _checksum_ok,
        _member,
    )
    buf, at = b"", 0  # buf holds the file's bytes from offset `at`
    pos = 0
    last_size = 0
    while left:
        rel = pos - at
        if rel + READ > len(buf) and at + len(buf) < file_size:
            buf, at, rel = pread(fd, READ if last_size >= _SMALL else _BIG_READ, pos), pos, 0
        if rel >= len(buf):
            if pos == 0:
                return None  # an empty file: tarfile's "empty file" error
            break  # the end, right after a member: tarfile ends here too
        block = buf[rel : rel + BLOCK]
        if len(block) < BLOCK:
            return None
        if block == _ZERO:
            break  # the end-of-archive zero block
        if numbers(block, 100, 148) and devices(block, 329, 345):
            size = int(block[124:135], 8)
        else:
            size = _size(block)
            if size is None or size < 0:
                return None
        if not checksum_ok(block):
            return None
        kind = block[156:157]
        data = pos + BLOCK
        if kind in _REGULAR:
            if kind == b"\0" and _name(block).endswith("/"):
                step = 0  # a V7 directory: tarfile skips no data for it
            else:
                step = (size + BLOCK - 1) // BLOCK * BLOCK
                if data + step > file_size:
                    return None  # data cut off: tarfile reports "unexpected end of data"
                parsed = member(block)
                if parsed is not None and parsed[0] in left:
                    left.discard(parsed[0])
                    want = min(size, READ - BLOCK)
                    head = buf[rel + BLOCK : rel + BLOCK + want]
                    if len(head) < want:
                        head = pread(fd, want, data)
                    found.append(FoundMember(parsed[0], parsed[1], data, size, block, head))
            last_size = size
        elif kind in _NO_DATA:
            step = 0
        else:
            return None  # pax, GNU long names, sparse, contiguous or unknown types: tarfile's rules apply
        pos = data + step
    return found


# ---- the batch reader ---------------------------------------------------------------------------------------
MEMBER_EXTS: tuple[str, ...] = tuple(sorted(IMAGE_EXTS))  # Headers.ext indexes this


def _ext_keys() -> np.ndarray:
    return np.array(
        [int.from_bytes(e.encode("ascii").ljust(8, b"\0"), "little") for e in MEMBER_EXTS], np.uint64
    )


_EXT_KEYS = _ext_keys()
_EXT_ORDER = np.argsort(_EXT_KEYS)


class Walk(NamedTuple):
    """Every header of one shard, collected by `walk_shard` (not validated yet)."""

    blocks: bytes  # the header blocks back to back
    heads: list[bytes]  # each member's first min(size, 30) bytes
    positions: array  # where each header starts
    sizes: array


class Headers(NamedTuple):
    """A shard's members as `settle` read their headers, in archive order; `ids` is -1 for a member that is not
    a regular `<id>.<image ext>` file."""

    ids: np.ndarray
    ext: np.ndarray  # index into MEMBER_EXTS
    offset: np.ndarray  # first byte of each member's data
    size: np.ndarray
    fp: np.ndarray  # image_refs.header_fingerprints of the headers
    width: np.ndarray  # from image_header.simple_webp_sizes; 0 where that does not settle it
    height: np.ndarray

    def first_wanted(self, wanted: np.ndarray) -> np.ndarray:
        """Indexes of the members whose ids are in `wanted` (sorted), the first member of an id winning."""
        cand = np.flatnonzero(np.isin(self.ids, wanted))
        _ids, first = np.unique(self.ids[cand], return_index=True)
        return cand[np.sort(first)]


def walk_shard(fd: int, file_size: int) -> Walk | None:
    """Hop from header to header through the whole shard: the one Python step per member (~1 us). Reads go through
    a buffer: a page per member where members are big (a real shard's ~400 KB images: only their header pages
    are read), 64 KB at a time where they are small. None as soon as the archive is not one `settle` can decide
    (a type other than file, link, device, directory or fifo; a number it cannot read; data cut off)."""
    blocks: list[bytes] = []
    heads: list[bytes] = []
    positions = array("q")
    sizes = array("q")
    pread = os.pread
    buf, at, pos, last_size = b"", 0, 0, 0
    while True:
        r = pos - at
        if r + BLOCK > len(buf):
            if pos >= file_size:
                if pos == 0:
                    return None  # an empty file: tarfile's "empty file" error
                break  # the end, right after a member
            buf, at, r = pread(fd, READ if last_size >= _SMALL else _BIG_READ, pos), pos, 0
            if len(buf) < BLOCK:
                return None  # a short header block
        block = buf[r : r + BLOCK]
        if block == _ZERO:
            break
        kind = block[156]
        try:
            size = int(block[124:135], 8)  # checked against the field's format by `settle`
        except ValueError:
            return None
        data = pos + BLOCK
        if kind == 48 or kind == 0:
            step = (size + BLOCK - 1) // BLOCK * BLOCK
        elif 49 <= kind <= 54:
            step = 0  # links, devices, directories, fifos: tarfile skips no data
        else:
            return None  # pax, GNU long names, sparse, contiguous, unknown
        if data + step > file_size:
            return None  # data cut off: tarfile reports "unexpected end of data"
        want = min(size, 30)
        head = buf[r + BLOCK : r + BLOCK + want]
        if len(head) < want:
            head = pread(fd, want, data)
        blocks.append(block)
        heads.append(head)
        positions.append(pos)
        sizes.append(size)
        last_size = size
        pos = data + step
    return Walk(b"".join(blocks), heads, positions, sizes)


def settle(walks: list[Walk]) -> list[Headers | None]:
    """The headers of many walked shards, validated, named, fingerprinted and sized at once with numpy (the
    fixed cost of a numpy pass is shared by thousands of headers). A shard whose headers are not all of the
    form this reader decides exactly (the numeric fields as tarfile and GNU tar write them, a valid checksum,
    no ustar prefix, ASCII names, no old-style "name/" directory) gets None: `scan_wanted`, then tarfile,
    read it instead."""
    from .image_header import simple_webp_sizes
    from .image_refs import header_fingerprints

    counts = [len(w.positions) for w in walks]
    k = sum(counts)
    if not k:
        return [_empty() for _ in walks]
    h = np.frombuffer(b"".join(w.blocks for w in walks), dtype=np.uint8).reshape(k, BLOCK)
    kind = h[:, 156]

    def octal(a: int, b: int) -> np.ndarray:
        f = h[:, a:b]
        return ((f >= 48) & (f <= 55)).all(axis=1)

    def end(c: int) -> np.ndarray:
        return (h[:, c] == 0) | (h[:, c] == 32)

    ok = octal(100, 107) & end(107) & octal(108, 115) & end(115) & octal(116, 123) & end(123)
    ok &= octal(124, 135) & end(135) & octal(136, 147) & end(147)
    ok &= octal(148, 154) & (h[:, 154] == 0) & (h[:, 155] == 32)
    for a in (329, 337):
        ok &= (octal(a, a + 7) & end(a + 7)) | (h[:, a : a + 8] == 0).all(axis=1)
    ok &= h[:, 345] == 0  # no ustar prefix
    # checksum: the byte sum with the checksum field counted as eight spaces; or tarfile's signed-char sum
    total = h.sum(axis=1, dtype=np.int64) - h[:, 148:156].sum(axis=1, dtype=np.int64) + 256
    stored = (h[:, 148:154].astype(np.int64) - 48) @ (8 ** np.arange(5, -1, -1, dtype=np.int64))
    high = (h >= 128).sum(axis=1) - (h[:, 148:156] >= 128).sum(axis=1)
    ok &= (total == stored) | (total - 256 * high == stored)
    # names: `(./)<1-12 digits>.<1-8 alphanumerics>` up to the first NUL, as images.MEMBER_RE reads them
    name = h[:, :100]
    is_nul = name == 0
    nul = np.where(is_nul.any(axis=1), is_nul.argmax(axis=1), 100)
    ok &= ~((name >= 128) & (np.arange(100)[None, :] < nul[:, None])).any(axis=1)  # \d would match more
    rows = np.arange(k)
    ok &= ~((kind == 0) & (nul > 0) & (name[rows, np.maximum(nul - 1, 0)] == 47))  # "name/": no data skipped
    start = np.where((name[:, 0] == 46) & (name[:, 1] == 47), 2, 0)
    window = np.take_along_axis(name, start[:, None] + np.arange(13)[None, :], axis=1)
    is_digit = (window >= 48) & (window <= 57)
    ndig = np.where(is_digit.all(axis=1), 13, is_digit.argmin(axis=1))
    dot = start + ndig
    valid = (ndig >= 1) & (ndig <= 12) & (name[rows, np.minimum(dot, 99)] == 46)
    ext_len = nul - dot - 1
    valid &= (ext_len >= 1) & (ext_len <= 8)
    at = np.minimum(dot[:, None] + 1 + np.arange(8)[None, :], 99)
    ext = np.take_along_axis(name, at, axis=1).astype(np.uint64)
    inside = np.arange(8)[None, :] < ext_len[:, None]
    alnum = ((ext >= 48) & (ext <= 57)) | ((ext >= 65) & (ext <= 90)) | ((ext >= 97) & (ext <= 122))
    valid &= (alnum | ~inside).all(axis=1)
    lower = np.where(inside, np.where((ext >= 65) & (ext <= 90), ext + 32, ext), 0)
    key = (lower << (np.arange(8, dtype=np.uint64) * np.uint64(8))[None, :]).sum(axis=1, dtype=np.uint64)
    slot = np.minimum(np.searchsorted(_EXT_KEYS[_EXT_ORDER], key), len(_EXT_KEYS) - 1)
    code = np.where(_EXT_KEYS[_EXT_ORDER][slot] == key, _EXT_ORDER[slot], -1)
    digits = window[:, :12].astype(np.int64) - 48
    power = ndig[:, None] - 1 - np.arange(12)[None, :]
    ids = np.where(power >= 0, digits * 10 ** np.maximum(power, 0), 0).sum(axis=1)
    member = valid & (code >= 0) & ((kind == 48) | (kind == 0))
    ids = np.where(member, ids, -1)
    sizes = np.concatenate([np.frombuffer(w.sizes, dtype=np.int64) for w in walks])
    offsets = np.concatenate([np.frombuffer(w.positions, dtype=np.int64) for w in walks]) + BLOCK
    heads = b"".join(head.ljust(30, b"\0") for w in walks for head in w.heads)
    width, height = simple_webp_sizes(np.frombuffer(heads, dtype=np.uint8).reshape(k, 30), sizes)
    fps = header_fingerprints(h)
    out: list[Headers | None] = []
    lo = 0
    for n in counts:
        hi = lo + n
        if ok[lo:hi].all():
            out.append(Headers(ids[lo:hi], code[lo:hi], offsets[lo:hi], sizes[lo:hi], fps[lo:hi], width[lo:hi],
                               height[lo:hi]))  # fmt: skip
        else:
            out.append(None)
        lo = hi
    return out


def _empty() -> Headers:
    e = np.zeros(0, dtype=np.int64)
    return Headers(e, e, e, e, e, e, e)


__all__ = [
    "BLOCK",
    "MEMBER_EXTS",
    "READ",
    "FoundMember",
    "Headers",
    "Walk",
    "scan_wanted",
    "settle",
    "walk_shard",
]
