"""Where the wanted members of a tar shard are, from their 512-byte headers alone.

A reference build (reference_build.py) needs, for each selected post, the offset and size of its image inside
its shard, the member's header block (the image's fingerprint, image_refs.py) and the first bytes of the image
(its width and height). `tarfile` gets the first two at ~20-50 us per member (a buffered seek, a read and a
Python-level parse of every field). Two readers here, tried in this order:

* the batch reader: `walk_shard` hops from header to header (one `pread` of a page per big member, stepped in
  Python; windows of up to 1 MB through runs of small ones, whose headers numpy finds: ~0.5 us per member),
  and `settle` validates, names, fingerprints and sizes the headers of many shards in one numpy pass (~1 us
  per header);
* `scan_wanted`, one member at a time (~5 us each), for archives the batch reader does not decide.

Where the optional C module `_tar_walk` was built (setup.py), `walk_settled` does the batch reader's walk and
settle for one shard in one pass (~0.15 us per member besides the kernel's copy of the bytes); the numpy
readers here stay the reference it is tested against (tests/core/test_tar_walk_compiled.py).

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

from .image_header import MAX_PIXELS, simple_webp_sizes
from .image_refs import header_fingerprints
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
HEAD = 30  # the bytes of each member's data a walk keeps: a plain WebP's size is in its first 30


def _field_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks and expected values, as little-endian words, that test every byte of header bytes 100-155 (mode
    uid gid size mtime checksum) and of 329-344 (devmajor devminor) in one AND and one compare per word: an
    octal digit is `byte & 0xF8 == 0x30`, the NUL or space ending a field `byte & 0xDF == 0`, and the
    checksum ends in a NUL and a space (GNU tar's and tarfile's form)."""
    mask, want = np.zeros(56, dtype=np.uint8), np.zeros(56, dtype=np.uint8)
    for a, b in ((100, 107), (108, 115), (116, 123), (124, 135), (136, 147), (148, 154)):
        mask[a - 100 : b - 100], want[a - 100 : b - 100] = 0xF8, 0x30
        if b < 148:
            mask[b - 100] = 0xDF
    mask[54:56], want[54:56] = 0xFF, (0, 32)
    dev_mask, dev_want = np.zeros(16, dtype=np.uint8), np.zeros(16, dtype=np.uint8)
    for a in (0, 8):
        dev_mask[a : a + 7], dev_want[a : a + 7], dev_mask[a + 7] = 0xF8, 0x30, 0xDF
    return mask.view("<u8"), want.view("<u8"), dev_mask.view("<u8"), dev_want.view("<u8")


_FIELD_MASK, _FIELD_WANT, _DEV_MASK, _DEV_WANT = _field_masks()
_TENS = 10 ** np.arange(11, -1, -1, dtype=np.int64)
_OCTAL_6 = 8 ** np.arange(5, -1, -1, dtype=np.int64)
_NAME = 24  # "./", 12 digits, ".", 8 extension characters and the NUL: a longer name is never <id>.<ext>


class Walk(NamedTuple):
    """Every header of one shard, collected by `walk_shard` (not validated yet)."""

    blocks: bytes  # the header blocks back to back
    heads: bytes  # HEAD bytes per member from its data's start (what follows a shorter member, or NULs)
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
        cand = np.flatnonzero(in_sorted(self.ids, wanted))
        return cand[first_of_each(self.ids[cand])]


# (np.isin and np.unique hash or sort both sides on every call; the sets here are sorted already, and these two
# cost a binary search or one stable sort: together they were a second of the main process per 1 M posts.)
def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `values` are in `sorted_set` (sorted ascending), as a bool mask."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


def first_of_each(values: np.ndarray) -> np.ndarray:
    """Indexes of the first occurrence of each distinct value of `values`, ascending."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.ones(len(values), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return np.sort(order[first])


_MAX_WINDOW = 1 << 20  # a run of small members is read up to 1 MB at a time (growing from _BIG_READ)
_OCTAL_11 = 8 ** np.arange(10, -1, -1, dtype=np.int64)


class _WalkOut:
    """What `walk_shard` collects, appended per member or per window of members."""

    def __init__(self) -> None:
        self.blocks = bytearray()
        self.heads = bytearray()
        self.positions = array("q")
        self.sizes = array("q")

    def walk(self) -> Walk:
        return Walk(bytes(self.blocks), bytes(self.heads), self.positions, self.sizes)


def walk_shard(fd: int, file_size: int) -> Walk | None:
    """Hop from header to header through the whole shard. Where members are small (many headers per read) a
    window of up to 1 MB is read and its headers found with numpy, only the hop itself being a Python step
    (~0.1 us per member); where they are big (a real shard's ~400 KB images) one page per member is read and
    stepped in Python (`_step_big`: only their header pages are read). None as soon as the archive is not one
    `settle` can decide (a type other than file, link, device, directory or fifo; a size field that is not 11
    octal digits; data cut off; a short header block)."""
    if file_size <= 0:
        return None  # an empty file: tarfile's "empty file" error
    out = _WalkOut()
    pos, small = 0, True
    window = file_size if file_size <= _MAX_WINDOW else _BIG_READ  # a small shard: one read
    while pos < file_size:
        if small:
            step = _step_window(fd, file_size, pos, window, out)
            window = min(_MAX_WINDOW, window * 4)
        else:
            step = _step_big(fd, file_size, pos, out)
            window = _BIG_READ
        if step is None:
            return None
        if step[0] < 0:
            break  # the end-of-archive zero block
        pos, small = step[0], step[1] < _SMALL
    return out.walk()


def _step_big(fd: int, file_size: int, pos: int, out: _WalkOut) -> tuple[int, int] | None:
    """One member from a page read at `pos`: (the next header's position, this member's size); (-1, 0) at the
    end-of-archive zero block; None where `settle` could not decide the archive."""
    buf = os.pread(fd, READ, pos)
    if len(buf) < BLOCK:
        return None  # a short header block
    block = buf[:BLOCK]
    if block == _ZERO:
        return -1, 0
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
    head = buf[BLOCK : BLOCK + HEAD]
    if len(head) < HEAD:
        head = head.ljust(HEAD, b"\0")  # the file ends within the page (a shorter member's padding is cut)
    out.blocks += block
    out.heads += head
    out.positions.append(pos)
    out.sizes.append(size)
    return data + step, size


def _step_window(fd: int, file_size: int, at: int, window: int, out: _WalkOut) -> tuple[int, int] | None:
    """The members whose headers lie in a window read at `at`: (the position after the last one, its size);
    (-1, 0) where the window holds the end-of-archive zero block; None where `settle` could not decide it."""
    buf = os.pread(fd, min(window, file_size - at), at)
    nb = len(buf) // BLOCK
    if not nb:
        return None  # a short header block
    blocks = np.frombuffer(buf, dtype=np.uint8, count=nb * BLOCK).reshape(nb, BLOCK)
    # Blocks that look like a header: a known type (a one-byte test, which most data blocks fail) and a size of
    # 11 octal digits. Their step to the next header: 1 + the data's blocks for a file, 1 for a link, device,
    # directory or fifo.
    kind = blocks[:, 156]
    cand = np.flatnonzero((kind == 48) | (kind == 0) | ((kind - np.uint8(49)) < 6))
    field = blocks[cand, 124:135]
    octal = ((field & np.uint8(0xF8)) == 0x30).all(axis=1)
    idx = cand[octal]
    sizes = (field[octal].astype(np.int64) - 48) @ _OCTAL_11
    is_file = (kind[idx] == 48) | (kind[idx] == 0)
    ahead = idx + np.where(is_file, 1 + (sizes + BLOCK - 1) // BLOCK, 1)
    # Where every such block is the one the previous header points at, those blocks are the chain; otherwise (a
    # data block that looks like a header, the end block followed by more) the hop goes block by block in Python.
    if len(idx) and idx[0] == 0 and (ahead[:-1] == idx[1:]).all():
        j = int(ahead[-1])
        ended = j < nb and not blocks[j].any()
        if j < nb and not ended:
            return None  # the last header points at a block that is neither a header nor the end
    else:
        step = np.zeros(nb, dtype=np.int64)  # 0: not a header `settle` could decide
        step[idx] = ahead - idx
        size_at = np.zeros(nb, dtype=np.int64)
        size_at[idx] = sizes
        idx, j, ended = _hop(step, ~blocks.any(axis=1))
        if idx is None:
            return None
        sizes = size_at[idx]
    if not ended and at + j * BLOCK > file_size:
        return None  # data cut off: tarfile reports "unexpected end of data"
    if len(idx):
        out.blocks += blocks[idx].tobytes()
        heads = np.zeros((len(idx), HEAD), dtype=np.uint8)
        inside = idx + 1 < nb  # the block after a header starts its data (or is the next header)
        heads[inside] = blocks[idx[inside] + 1, :HEAD]
        for i in np.flatnonzero(~inside).tolist():  # a head past the window's last whole block: read it
            head = os.pread(fd, HEAD, at + int(idx[i] + 1) * BLOCK)
            heads[i, : len(head)] = np.frombuffer(head, dtype=np.uint8)
        out.heads += heads.tobytes()
        out.positions.frombytes((at + idx * BLOCK).astype(np.int64).tobytes())
        out.sizes.frombytes(sizes.astype(np.int64).tobytes())
    if ended:
        return -1, 0
    return at + j * BLOCK, int(sizes[-1]) if len(idx) else 0


def _hop(step: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray | None, int, bool]:
    """A window's chain of headers followed one hop at a time: (their blocks, the block after the last, whether
    the end block was met); None for the blocks where a header `settle` could not decide is met first."""
    steps, zeros = step.tolist(), zero.tolist()
    chain: list[int] = []
    j, nb = 0, len(steps)
    while j < nb:
        if zeros[j]:
            return np.array(chain, dtype=np.int64), j, True
        s = steps[j]
        if not s:
            return None, j, False
        chain.append(j)
        j += s
    return np.array(chain, dtype=np.int64), j, False


def settle(walks: list[Walk]) -> list[Headers | None]:
    """The headers of many walked shards, validated, named, fingerprinted and sized at once with numpy (the
    fixed cost of a numpy pass is shared by thousands of headers). A shard whose headers are not all of the
    form this reader decides exactly (the numeric fields as tarfile and GNU tar write them, a valid checksum,
    no ustar prefix, ASCII names, no old-style "name/" directory) gets None: `scan_wanted`, then tarfile,
    read it instead."""

    counts = [len(w.positions) for w in walks]
    k = sum(counts)
    if not k:
        return [_empty() for _ in walks]
    blocks = np.frombuffer(b"".join(w.blocks for w in walks), dtype=np.uint8).reshape(k, BLOCK)
    sizes = np.concatenate([np.frombuffer(w.sizes, dtype=np.int64) for w in walks])
    offsets = np.concatenate([np.frombuffer(w.positions, dtype=np.int64) for w in walks]) + BLOCK
    heads = np.frombuffer(b"".join(w.heads for w in walks), dtype=np.uint8).reshape(k, HEAD)
    # by slices of rows: a slice's temporaries stay in the CPU cache and are reused instead of being fresh
    # pages of memory per step (which cost more than the arithmetic)
    parts = [_settle_rows(blocks[i : i + _ROWS], heads[i : i + _ROWS], sizes[i : i + _ROWS])
             for i in range(0, k, _ROWS)]  # fmt: skip
    ok, ids, code, fps, width, height = (np.concatenate(col) for col in zip(*parts, strict=True))
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


_ROWS = 8192  # headers per slice of `settle`'s numpy work (4 MB of blocks: 0.69 us per header, 0.75 at 2048)


def _settle_rows(h: np.ndarray, heads: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """`settle` for (k, 512) header blocks: (ok, ids, ext code, fingerprint, width, height) per header.

    Each step reads as few bytes as it can and makes few temporaries: a fresh page of memory costs more on the
    project's VM than the arithmetic done on it (the field checks by words were 6x faster than byte by byte)."""
    k = len(h)
    kind = h[:, 156]
    rows = np.arange(k)
    # the numeric fields, a word (8 bytes) at a time; devmajor/devminor may also be all NUL
    fields = np.ascontiguousarray(h[:, 100:156]).view("<u8")
    ok = ((fields & _FIELD_MASK) == _FIELD_WANT).all(axis=1)
    dev = np.ascontiguousarray(h[:, 329:345]).view("<u8")
    ok &= (((dev & _DEV_MASK) == _DEV_WANT) | (dev == 0)).all(axis=1)
    ok &= h[:, 345] == 0  # no ustar prefix
    # checksum: the byte sum with the checksum field counted as eight spaces; or tarfile's signed-char sum
    check = h[:, 148:156]
    total = h.sum(axis=1, dtype=np.uint32).astype(np.int64)
    total += 256 - check.sum(axis=1, dtype=np.int64)
    stored = (check[:, :6].astype(np.int64) - 48) @ _OCTAL_6
    signed = np.flatnonzero(total != stored)  # rare: only these need the count of high bytes
    if signed.size:
        g = h[signed]
        high = (g >= 128).sum(axis=1) - (g[:, 148:156] >= 128).sum(axis=1)
        ok[signed] &= total[signed] - 256 * high == stored[signed]
    # names: `(./)<1-12 digits>.<1-8 alphanumerics>` up to the first NUL, as images.MEMBER_RE reads them; such a
    # name ends within its first _NAME bytes, so only those are parsed
    name = np.ascontiguousarray(h[:, :_NAME])
    nuls = name == 0
    short = nuls.any(axis=1)
    nul = np.where(short, nuls.argmax(axis=1), _NAME)
    # a non-ASCII byte before the NUL (\d would match more) or an old-style "name/" directory: settle cannot
    # decide the shard
    ok &= ~((name >= 128) & (np.arange(_NAME)[None, :] < nul[:, None])).any(axis=1)
    ok &= ~(short & (kind == 0) & (nul > 0) & (name[rows, np.maximum(nul - 1, 0)] == 47))
    long = np.flatnonzero(~short)
    if long.size:  # (rare) the same two checks over the whole 100-byte name
        whole = h[long, :100]
        zero = whole == 0
        end = np.where(zero.any(axis=1), zero.argmax(axis=1), 100)
        ok[long] &= ~((whole >= 128) & (np.arange(100)[None, :] < end[:, None])).any(axis=1)
        last = whole[np.arange(len(long)), np.maximum(end - 1, 0)]
        ok[long] &= ~((kind[long] == 0) & (end > 0) & (last == 47))
    start = np.where((name[:, 0] == 46) & (name[:, 1] == 47), 2, 0)
    if start.any():
        window = np.take_along_axis(name, start[:, None] + np.arange(13)[None, :], axis=1)
    else:
        window = name[:, :13]
    is_digit = (window - np.uint8(48)) < 10
    ndig = np.where(is_digit.all(axis=1), 13, is_digit.argmin(axis=1))
    dot = start + ndig
    valid = short & (ndig >= 1) & (ndig <= 12) & (name[rows, np.minimum(dot, _NAME - 1)] == 46)
    ext_len = nul - dot - 1
    valid &= (ext_len >= 1) & (ext_len <= 8)
    ext = np.take_along_axis(name, np.minimum(dot[:, None] + 1 + np.arange(8)[None, :], _NAME - 1), axis=1)
    inside = np.arange(8)[None, :] < ext_len[:, None]
    folded = ext | np.uint8(32)  # ASCII letters in lower case
    valid &= (((ext - np.uint8(48)) < 10) | ((folded - np.uint8(97)) < 26) | ~inside).all(axis=1)
    lower = np.where(inside, np.where((ext - np.uint8(65)) < 26, folded, ext), np.uint8(0))
    key = np.ascontiguousarray(lower).view("<u8")[:, 0]
    slot = np.minimum(np.searchsorted(_EXT_KEYS[_EXT_ORDER], key), len(_EXT_KEYS) - 1)
    code = np.where(_EXT_KEYS[_EXT_ORDER][slot] == key, _EXT_ORDER[slot], -1)
    # the id: the first `ndig` digits as a 12-digit number, then the padding divided away
    digits = np.where(np.arange(12)[None, :] < ndig[:, None], window[:, :12] - np.uint8(48), np.uint8(0))
    ids = (digits.astype(np.int64) @ _TENS) // 10 ** np.clip(12 - ndig, 0, 12)
    member = valid & (code >= 0) & ((kind == 48) | (kind == 0))
    ids = np.where(member, ids, -1)
    width, height = simple_webp_sizes(heads, sizes)
    return ok, ids, code, header_fingerprints(h), width, height


try:
    from . import _tar_walk as _compiled
except ImportError:  # not built (no C compiler at install time): the numpy readers above
    _compiled = None

COMPILED = _compiled is not None
_EXT_KEY_BYTES = _EXT_KEYS.astype("<u8").tobytes()


def walk_settled(fd: int, file_size: int) -> Headers | None:
    """`walk_shard` then `settle` for one open shard, in the compiled module (`COMPILED` must be true): the same
    Headers, or None where either would give None. Raises OSError where a read fails, as `walk_shard` does."""
    assert _compiled is not None
    raw = _compiled.walk(fd, file_size, _EXT_KEY_BYTES, MAX_PIXELS)
    if raw is None:
        return None
    columns = np.frombuffer(raw, dtype=np.int64).reshape(len(Headers._fields), -1)
    return Headers(*columns)


def _empty() -> Headers:
    e = np.zeros(0, dtype=np.int64)
    return Headers(e, e, e, e, e, e, e)


__all__ = [
    "BLOCK",
    "COMPILED",
    "MEMBER_EXTS",
    "READ",
    "FoundMember",
    "Headers",
    "Walk",
    "scan_wanted",
    "settle",
    "first_of_each",
    "in_sorted",
    "walk_settled",
    "walk_shard",
]
