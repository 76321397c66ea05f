"""The compiled header walk (`trainer_core/dataset/_tar_walk.c`) gives the numpy walk's answer for every shard:
the same seven columns, or None for both (the build's slower readers then decide the shard). The numpy walk is
itself checked against tarfile (test_dataset_reference.py runs those tests with both walks); here both face
thousands of damaged, odd and unusual header blocks, a seeded fuzz of the bytes the readers look at."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer_core.dataset import tar_headers
from trainer_core.dataset.tar_headers import Headers, settle, walk_settled, walk_shard

pytestmark = pytest.mark.skipif(not tar_headers.COMPILED, reason="the optional C walk was not built")


def _numpy(path: Path) -> Headers | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        walk = walk_shard(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return None if walk is None else settle([walk])[0]


def _compiled(path: Path) -> Headers | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return walk_settled(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _same(path: Path) -> Headers | None:
    a, b = _numpy(path), _compiled(path)
    assert (a is None) == (b is None), f"{path.name}: only one walk settled it"
    if a is not None:
        for field in Headers._fields:
            assert np.array_equal(getattr(a, field), getattr(b, field)), f"{path.name}: {field} differs"
            assert getattr(b, field).dtype == np.int64
    return a


def _webps() -> list[bytes]:
    out = []
    for k, (w, h, lossless) in enumerate([(33, 17, True), (48, 40, False), (7, 300, False), (1, 1, True)]):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (k * 40, 90, 200 - k * 30)).save(buf, "WEBP", lossless=lossless)
        out.append(buf.getvalue())
    return out


def _shard(rng: random.Random, images: list[bytes]) -> bytes:
    """A small ustar shard mixing what the readers meet: image members (plain, "./", upper-case and other
    extensions, long ids), a directory, a link, a text file, an empty member, and members of 0-3 KB."""
    names = ["101.webp", "./102.webp", "103.WEBP", "104.png", "123456789012.webp", "105.jpeg", "notes.txt",
             "106.webp", "1234567890123.webp", "107.Jpg", "108.webp"]  # fmt: skip
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, name in enumerate(names):
            noise = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 3000)))
            data = images[i % len(images)] if i % 3 != 2 else noise
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000 + i
            tar.addfile(info, io.BytesIO(data))
            if i == 4:
                d = tarfile.TarInfo("sub")
                d.type = tarfile.DIRTYPE
                tar.addfile(d)
                link = tarfile.TarInfo("109.webp")
                link.type, link.linkname = tarfile.SYMTYPE, "101.webp"
                tar.addfile(link)
                tar.addfile(tarfile.TarInfo("110.webp"), io.BytesIO(b""))
    return buf.getvalue()


def _headers_at(data: bytes) -> list[int]:
    """The header blocks' positions, as tarfile finds them."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.offset for m in tar.getmembers()]


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)


# the bytes worth aiming at: NUL, space, slash, dot, digits, letters, high bytes, the octal edges
_VALUES = [0, 0x20, 0x2F, 0x2E, 0x30, 0x31, 0x35, 0x37, 0x38, 0x39,
           0x41, 0x5A, 0x61, 0x7A, 0x7F, 0x80, 0xC3, 0xFF]  # fmt: skip
# header fields: name, mode..checksum, type, linkname/magic, devmajor/devminor, prefix
_SPANS = [(0, 30), (100, 160), (156, 157), (257, 265), (329, 346), (345, 360)]


def test_the_same_answer_for_plain_and_damaged_shards(tmp_path):
    """Seeded fuzz: bytes of a header set to values the checks turn on (with the checksum redone in half the
    cases, so the other checks decide), image heads changed, files cut anywhere: both walks agree each time."""
    rng = random.Random(2026)
    images = _webps()
    base = _shard(rng, images)
    path = tmp_path / "s.tar"
    path.write_bytes(base)
    assert _same(path) is not None  # the plain shard settles
    starts = _headers_at(base)
    decided = 0
    for _ in range(1500):
        data = bytearray(base)
        kind = rng.random()
        if kind < 0.75:  # header bytes
            at = rng.choice(starts)
            block = bytearray(data[at : at + 512])
            for _k in range(rng.randint(1, 3)):
                a, b = rng.choice(_SPANS)
                block[rng.randrange(a, b)] = rng.choice(_VALUES) if rng.random() < 0.8 else rng.getrandbits(8)
            if rng.random() < 0.5:
                _fix_checksum(block)
            data[at : at + 512] = block
        elif kind < 0.9:  # an image's first 30 bytes: what the WebP size is read from
            at = rng.choice(starts) + 512
            data[at + rng.randrange(30)] = rng.getrandbits(8)
        else:  # cut anywhere, or junk after the end
            if rng.random() < 0.7:
                del data[rng.randrange(len(data)) :]
            else:
                data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 1500)))
        path.write_bytes(bytes(data))
        decided += _same(path) is not None
    assert 200 < decided < 1400  # both outcomes were exercised


def _vp8l_head(width: int, height: int, size: int) -> bytes:
    """The first bytes of a lossless WebP of `size` bytes claiming `width` x `height` (the rest is zeros)."""
    bits = (width - 1) | (height - 1) << 14
    chunk = size - 20
    return (b"RIFF" + (size - 8).to_bytes(4, "little") + b"WEBPVP8L" + chunk.to_bytes(4, "little") + b"\x2f"
            + bits.to_bytes(4, "little")).ljust(size, b"\0")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind", "data", "settles"),
    [
        ("sub/", tarfile.AREGTYPE, b"", False),  # an old-style directory: tarfile's rules decide
        ("111.webp", tarfile.AREGTYPE, b"x", True),  # the old regular-file type
        ("d" * 30 + "/", tarfile.AREGTYPE, b"", False),  # the same past the 24 bytes an id name can fill
        ("d" * 30 + "/", tarfile.DIRTYPE, b"", True),
        ("n\u00e9.webp", tarfile.REGTYPE, b"x", False),  # a non-ASCII name
        ("112.webp", tarfile.REGTYPE, _vp8l_head(16384, 16384, 64), True),  # too many pixels: width 0
        ("113.webp", tarfile.REGTYPE, _vp8l_head(9000, 9000, 64), True),
        ("114.webp", tarfile.REGTYPE, _vp8l_head(20, 30, 64)[:40], True),  # the RIFF says more than it holds
    ],
)
def test_edge_cases_a_fuzz_rarely_reaches(tmp_path, name, kind, data, settles):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "edge.tar"
    path.write_bytes(buf.getvalue())
    headers = _same(path)
    assert (headers is not None) == settles
    if settles and name[0].isdigit():
        assert headers.ids.tolist() == [int(name.split(".")[0])]
        size = {"112": 0, "113": 9000, "114": 0}.get(name[:3], 0)
        assert headers.width.tolist() == [size]


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned-sum", "signed-sum"])
def test_checksums_as_old_tars_wrote_them(tmp_path, signed):
    """A header with bytes >= 128 (an owner name in UTF-8) whose checksum is the signed-char sum (old Sun tars):
    tarfile accepts both forms, so both walks settle the shard; a checksum that is neither does not."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT, encoding="utf-8") as tar:
        info = tarfile.TarInfo("115.webp")
        info.uname, info.size = "r\u00e9my", 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = bytearray(buf.getvalue())
    block = data[:512]
    block[148:156] = b"        "
    total = sum(b - 256 if signed and b >= 128 else b for b in block)
    data[148:156] = b"%06o\0 " % total
    path = tmp_path / "sun.tar"
    path.write_bytes(bytes(data))
    assert _same(path).ids.tolist() == [115]
    data[148:156] = b"%06o\0 " % (total + 1)
    path.write_bytes(bytes(data))
    assert _same(path) is None


def test_windows_and_big_members_read_the_same(tmp_path):
    """Over 1 MB (several read windows), members from 0 bytes to 200 KB (a page read per big one), sizes that
    end exactly at a window's edge: the same columns."""
    rng = random.Random(7)
    images = _webps()
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for pid in range(5000, 5900):
            if rng.random() < 0.05:
                data = images[pid % 4] + bytes(rng.randint(16_000, 200_000))
            else:
                data = images[pid % 4][: rng.choice([len(images[pid % 4]), 0, 29, 30, 512, 1024])]
            info = tarfile.TarInfo(f"{pid}.webp")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert path.stat().st_size > 3 << 20
    headers = _same(path)
    assert headers is not None and (headers.ids >= 0).sum() == 900
    assert (headers.width > 0).sum() > 100  # whole WebPs are sized from their first 30 bytes
    (tmp_path / "empty.tar").write_bytes(b"")
    assert _same(tmp_path / "empty.tar") is None
    (tmp_path / "zeros.tar").write_bytes(bytes(1024))
    assert len(_same(tmp_path / "zeros.tar").ids) == 0


def test_a_read_error_is_an_oserror(tmp_path):
    """A descriptor that cannot be read raises OSError, as os.pread does in the numpy walk (the build then
    hands the shard to tarfile, which reports it as a copy build does)."""
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: read gives EISDIR
    try:
        with pytest.raises(OSError):
            walk_settled(fd, 4096)
    finally:
        os.close(fd)
