"""Image format and size read from a file's first bytes, without decoding it and without Pillow.

The dataset export copies shard images unchanged and only needs width x height for the manifest; opening every
image with Pillow costs far more than reading its header (~0.2 ms CPU per 400 KB WebP). The contract that makes
this safe to use in front of Pillow: `image_size(data)` returns (format, width, height) only when
`PIL.Image.open` would open the same bytes with that `format` and `.size`; when this module is unsure it
returns None and the caller asks Pillow. So the checks below reject what Pillow 13's plugins (and libwebp's
demuxer, which Pillow uses for WebP) reject while *opening* a file (truncated headers, bad PNG chunk CRCs,
unsupported bit depths, an incomplete WebP RIFF, ...), and are deliberately stricter wherever matching Pillow's
leniency exactly would not pay: a stricter answer only costs one Pillow call. No pixel data is checked here;
Pillow's `open` does not check it either. EXIF orientation is not applied: `.size` is the stored size.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

# PIL.Image.MAX_IMAGE_PIXELS (default): above it Image.open warns or raises DecompressionBombError, so larger
# images are left to Pillow. Also what keeps nonsense dimensions out.
MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3

_U16BE = struct.Struct(">H")
_U32BE = struct.Struct(">I")
_U16LE = struct.Struct("<H")
_U32LE = struct.Struct("<I")
_PNG_IHDR = struct.Struct(">IIBBBBB")
_GIF_DESCRIPTOR = struct.Struct("<HHHH")
_RGB_MASKS = struct.Struct("<III")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(Pillow format name, width, height) from the header of a PNG, JPEG, WebP, GIF or BMP file, else None.

    Never raises: unknown formats, truncated or inconsistent headers, zero sizes and images above MAX_PIXELS
    all give None.
    """
    try:
        if data.startswith(PNG_MAGIC):
            found = _png(data)
        elif data.startswith(b"\xff\xd8\xff"):
            found = _jpeg(data)
        elif data.startswith(b"RIFF"):
            found = _webp(data)
        elif data.startswith((b"GIF87a", b"GIF89a")):
            found = _gif(data)
        elif data.startswith(b"BM"):
            found = _bmp(data)
        else:
            return None
    except (IndexError, struct.error):  # every read is bounds-checked; this only guards "never raises"
        return None
    if found is None:
        return None
    fmt, width, height = found
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        return None
    return fmt, width, height


# ---- PNG ----------------------------------------------------------------------------------------------------------
# Pillow reads every chunk before the first IDAT, checks each CRC and runs a handler per known chunk type.
# colour type (grey, RGB, palette, grey + alpha, RGBA) -> the bit depths PNG allows; Pillow opens exactly these
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_MIN_LENGTH = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9}  # shorter ones make Pillow raise
_PNG_ANIMATION = (b"acTL", b"fcTL", b"fdAT")  # APNG: Pillow seeks to frame 0 while opening; left to Pillow
_MAX_TEXT_CHUNK = 1024 * 1024  # PIL.ImageFile.SAFEBLOCK: Pillow refuses to inflate more from one chunk
_MAX_TEXT_MEMORY = 64 * _MAX_TEXT_CHUNK  # Pillow's cap on all text chunks together
_DEFLATE_MAX_RATIO = 1032  # deflate never expands more than this, so short streams need no inflating


def _inflates_within_limit(stream: memoryview) -> bool:
    """False when Pillow would refuse this zlib stream as too large (a broken stream Pillow just ignores)."""
    if len(stream) * _DEFLATE_MAX_RATIO < _MAX_TEXT_CHUNK:
        return True
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(stream, _MAX_TEXT_CHUNK)
    except zlib.error:
        return True
    return not inflater.unconsumed_tail


def _png(data: bytes) -> tuple[str, int, int] | None:
    n = len(data)
    view = memoryview(data)
    pos = len(PNG_MAGIC)
    size: tuple[int, int] | None = None
    trns_min = 0
    text_bytes = 0
    while True:
        if pos + 8 > n:
            return None
        length = _U32BE.unpack_from(data, pos)[0]
        ctype = data[pos + 4 : pos + 8]
        if not ctype.isalpha():  # bytes.isalpha: ASCII letters only, as chunk types must be
            return None
        if ctype == b"IDAT":  # Pillow stops here without reading the image data or its CRC
            return None if size is None else ("PNG", size[0], size[1])
        body, end = pos + 8, pos + 8 + length
        if end + 4 > n or zlib.crc32(view[pos + 4 : end]) != _U32BE.unpack_from(data, end)[0]:
            return None
        if size is None:
            if ctype != b"IHDR" or length != 13:
                return None
            width, height, depth, colour, _compression, filtering, _interlace = _PNG_IHDR.unpack_from(
                data, body
            )
            if depth not in _PNG_DEPTHS.get(colour, ()) or filtering != 0:
                return None
            size = (width, height)
            trns_min = 6 if colour == 2 else 2 if colour == 0 else 0
        elif ctype in (b"IHDR", b"IEND") or ctype in _PNG_ANIMATION:
            return None
        elif ctype == b"tRNS":
            if length < trns_min:
                return None
        elif ctype in _PNG_MIN_LENGTH:
            if length < _PNG_MIN_LENGTH[ctype]:
                return None
        elif ctype == b"iCCP":
            sep = data.find(b"\0", body, end)
            if sep < 0 or sep + 1 >= end or data[sep + 1] != 0:
                return None
            if not _inflates_within_limit(view[sep + 2 : end]):
                return None
        elif ctype == b"tEXt":
            text_bytes += length
        elif ctype == b"zTXt":
            sep = data.find(b"\0", body, end)
            if sep >= 0 and sep + 1 < end:
                if data[sep + 1] != 0 or not _inflates_within_limit(view[sep + 2 : end]):
                    return None
            text_bytes += _MAX_TEXT_CHUNK
        elif ctype == b"iTXt":
            if not _itxt_ok(data, view, body, end):
                return None
            text_bytes += length + _MAX_TEXT_CHUNK
        if text_bytes > _MAX_TEXT_MEMORY:
            return None
        pos = end + 4


def _itxt_ok(data: bytes, view: memoryview, body: int, end: int) -> bool:
    # keyword \0 flag method language \0 translated keyword \0 text; Pillow only fails on a too-large text
    sep = data.find(b"\0", body, end)
    if sep < 0 or end - sep - 1 < 2:
        return True
    compressed, method = data[sep + 1], data[sep + 2]
    lang_end = data.find(b"\0", sep + 3, end)
    key_end = data.find(b"\0", lang_end + 1, end) if lang_end >= 0 else -1
    if key_end < 0 or compressed == 0 or method != 0:
        return True
    return _inflates_within_limit(view[key_end + 1 : end])


# ---- JPEG ---------------------------------------------------------------------------------------------------------
# Segments are walked up to the start of scan, as Pillow does. Pillow tolerates some oddities (junk bytes between
# segments, 0xFF00, a truncated file after the frame header); those give None here and Pillow decides.
_JPEG_SKIPPED = (0xC4, 0xCC, 0xDC, 0xDD, 0xDF)  # DHT, DAC, DNL, DRI, EXP: length-prefixed, content unused


def _jpeg(data: bytes) -> tuple[str, int, int] | None:
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    jfif_dpi = False
    exif: list[tuple[int, int]] = []  # (start, end) of the Exif APP1 segments' contents
    while True:
        if pos >= n or data[pos] != 0xFF:
            return None
        while pos < n and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= n:
            return None
        marker = data[pos]
        pos += 1
        if 0xD0 <= marker <= 0xD8:  # RST0-7, SOI: standalone, no length
            continue
        if pos + 2 > n:
            return None
        seg_len = _U16BE.unpack_from(data, pos)[0]
        body, end = pos + 2, pos + seg_len
        if seg_len < 2 or end > n:  # Pillow raises on a segment cut short
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            if size is None:
                return None
            # Pillow reads the resolution from EXIF when JFIF gives none; several Exif segments are left to it
            if exif and not jfif_dpi and (len(exif) > 1 or not _exif_resolution_ok(data, *exif[0])):
                return None
            return "JPEG", size[0], size[1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15
            # Pillow keeps the last frame header; more than one is left to it. It only opens 8-bit 1/3/4-channel.
            if size is not None or seg_len < 8 or data[body] != 8 or data[body + 5] not in (1, 3, 4):
                return None
            height, width = _U16BE.unpack_from(data, body + 1)[0], _U16BE.unpack_from(data, body + 3)[0]
            size = (width, height)
        elif marker == 0xDB:
            if not _dqt_ok(data, body, end):
                return None
        elif 0xE0 <= marker <= 0xEF:
            if not _app_ok(marker, data, body, end):
                return None
            if marker == 0xE0 and data.startswith(b"JFIF", body, end) and seg_len >= 14:
                jfif_dpi = jfif_dpi or data[body + 7] in (1, 2)  # density in dots per inch / cm
            elif marker == 0xE1 and data.startswith(b"Exif\0\0", body, end):
                exif.append((body + 6, end))
        elif marker != 0xFE and marker not in _JPEG_SKIPPED:  # COM is fine; TEM, JPGn, DHP, EOI, ... are not
            return None
        pos = end


_TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")


def _exif_resolution_ok(data: bytes, start: int, end: int) -> bool:
    """False when IFD0's XResolution is not a single RATIONAL: Pillow 13 can raise IndexError on such a value
    while opening (JpegImageFile._read_dpi_from_exif). Mirrors how Pillow locates IFD0."""
    if data.startswith(b"Exif\0\0", start, end):  # Pillow also strips a doubled prefix
        start += 6
    if end - start < 8 or not data.startswith(_TIFF_PREFIXES, start, end) or data[start + 2] == 0x2B:
        return True  # Pillow fails to read this EXIF, catches that and uses no resolution
    order = "<" if data[start] == ord("I") else ">"
    ifd = start + struct.unpack_from(order + "I", data, start + 4)[0]
    if ifd + 2 > end:
        return True
    pos = ifd + 2
    for _ in range(struct.unpack_from(order + "H", data, ifd)[0]):
        if pos + 12 > end:
            break
        tag, kind, count = struct.unpack_from(order + "HHI", data, pos)
        if tag == 0x011A and (kind, count) != (5, 1):
            return False
        pos += 12
    return True


def _dqt_ok(data: bytes, body: int, end: int) -> bool:
    """Pillow raises on a quantization segment whose last table is cut short."""
    while body < end:
        need = 65 if data[body] >> 4 == 0 else 129  # 8- or 16-bit table entries
        if end - body < need:
            return False
        body += need
    return True


def _app_ok(marker: int, data: bytes, body: int, end: int) -> bool:
    """False for the APPn contents that make Pillow's JPEG header parsing raise (or that it treats specially)."""
    length = end - body
    if marker == 0xE0:
        return not (data.startswith(b"JFIF", body, end) and length < 7)
    if marker == 0xEE:
        return not (data.startswith(b"Adobe", body, end) and length < 7)
    if marker == 0xE2:
        if data.startswith(b"MPF\0", body, end):  # multi-picture: Pillow may open it as MPO; left to Pillow
            return False
        # Pillow reads byte 13 (the fragment count) of the first ICC fragment
        return not (data.startswith(b"ICC_PROFILE\0", body, end) and length < 14)
    if marker == 0xED and data.startswith(b"Photoshop 3.0\0", body, end):
        return _photoshop_ok(data[body:end])
    return True


def _photoshop_ok(seg: bytes) -> bool:
    """True when the 8BIM resource list is well formed (a malformed one can make Pillow raise)."""
    pos, n = 14, len(seg)
    while seg[pos : pos + 4] == b"8BIM":
        name_at = pos + 6  # after the signature and the 2-byte resource id
        if name_at >= n:
            return False
        size_at = name_at + 1 + seg[name_at]  # Pascal string, padded to an even length
        size_at += size_at & 1
        if size_at + 4 > n:
            return False
        resource_end = size_at + 4 + _U32BE.unpack_from(seg, size_at)[0]
        if resource_end > n:
            return False
        pos = resource_end + (resource_end & 1)
    return True


# ---- WebP ---------------------------------------------------------------------------------------------------------
# Pillow opens WebP through libwebp's demuxer, which wants the whole RIFF present and validates the chunk layout
# and each frame's bitstream header. The code below reads `data` only through indexing and slices, so it takes
# bytes or a `_FileView` (a file read where the parser looks: chunk headers, not the ~400 KB of pixels).
_VP8X_FLAGS = 0x3E  # ICC, alpha, EXIF, XMP, animation; any other bit makes the demuxer fail
_VP8X_ANIMATED = 0x02


def _chunk(data: bytes, pos: int, riff_end: int) -> tuple[bytes, int, int, int] | None:
    """(fourcc, payload offset, payload size, next chunk offset) when the chunk fits the RIFF, else None."""
    if riff_end - pos < 8:
        return None
    size = _U32LE.unpack(data[pos + 4 : pos + 8])[0]
    following = pos + 8 + size + (size & 1)
    if following > riff_end:
        return None
    return data[pos : pos + 4], pos + 8, size, following


def _bitstream_size(fourcc: bytes, data: bytes, start: int, size: int) -> tuple[int, int] | None:
    """Frame size from a VP8 (lossy) or VP8L (lossless) bitstream header, checked as libwebp does."""
    if fourcc == b"VP8 ":
        if size < 10 or data[start + 3 : start + 6] != b"\x9d\x01\x2a":
            return None
        tag = data[start] | data[start + 1] << 8 | data[start + 2] << 16
        # key frame, profile <= 3, shown, first partition inside the chunk
        if tag & 1 or (tag >> 1) & 7 > 3 or not (tag >> 4) & 1 or tag >> 5 >= size:
            return None
        width = _U16LE.unpack(data[start + 6 : start + 8])[0] & 0x3FFF  # top 2 bits: upscaling hint
        height = _U16LE.unpack(data[start + 8 : start + 10])[0] & 0x3FFF
        return (width, height) if width and height else None
    if fourcc == b"VP8L":
        if size < 5 or data[start] != 0x2F:
            return None
        bits = _U32LE.unpack(data[start + 1 : start + 5])[0]
        if bits >> 29:  # version must be 0
            return None
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _image_chunks(data: bytes, pos: int, riff_end: int) -> tuple[int, int, int] | None:
    """An optional ALPH chunk followed by VP8, or a VP8L chunk: (width, height, next chunk offset)."""
    chunk = _chunk(data, pos, riff_end)
    if chunk is not None and chunk[0] == b"ALPH":
        chunk = _chunk(data, chunk[3], riff_end)
        if chunk is None or chunk[0] != b"VP8 ":  # VP8L carries its own alpha: ALPH + VP8L is an error
            return None
    if chunk is None:
        return None
    fourcc, start, size, following = chunk
    found = _bitstream_size(fourcc, data, start, size)
    return None if found is None else (found[0], found[1], following)


def _webp(data: bytes) -> tuple[str, int, int] | None:
    if len(data) < 20 or data[8:12] != b"WEBP":
        return None
    riff_size = _U32LE.unpack(data[4:8])[0]
    riff_end = riff_size + 8
    if riff_size < 8 or riff_end > len(data):  # the demuxer refuses an incomplete file
        return None
    first = data[12:16]
    if first in (b"VP8 ", b"VP8L"):
        if (found := _image_chunks(data, 12, riff_end)) is None:
            return None
        width, height, following = found
        # libwebp also reads the header of the chunk after the image; it must fit, and ALPH there is an error
        if following != riff_end:
            after = _chunk(data, following, riff_end)
            if after is None or after[0] == b"ALPH":
                return None
        return "WEBP", width, height
    if first == b"VP8X":
        return _webp_extended(data, riff_end)
    return None


_SIMPLE_WEBP = struct.Struct("<4sI4s4sI")  # RIFF, riff size, WEBP, first chunk's fourcc and size


def simple_webp_size(head: bytes, size: int) -> tuple[int, int] | None:
    """(width, height) of a still WebP of `size` bytes that is one VP8 or VP8L chunk filling the whole RIFF (what
    danbooru2023-webp holds), from its first 30 bytes; None for any other file, which `image_size` then reads.

    A shortcut for a reference build, which sizes millions of images it does not read: where it answers, the
    answer is `image_size(whole file)`'s (the same checks of the same bytes, tested), in a few microseconds."""
    if len(head) < 30 or not head.startswith(b"RIFF"):
        return None
    _riff, riff_size, webp, fourcc, chunk = _SIMPLE_WEBP.unpack_from(head)
    riff_end = riff_size + 8
    if webp != b"WEBP" or riff_size < 8 or riff_end > size or 20 + chunk + (chunk & 1) != riff_end:
        return None
    found = _bitstream_size(fourcc, head, 20, chunk)
    if found is None or found[0] * found[1] > MAX_PIXELS:
        return None
    return found


_RIFF, _WEBP, _VP8, _VP8L = (int.from_bytes(t, "little") for t in (b"RIFF", b"WEBP", b"VP8 ", b"VP8L"))


def simple_webp_sizes(heads, sizes):
    """`simple_webp_size` for many images at once: `heads` (n, 30) uint8 (each image's first 30 bytes, zero-
    padded when shorter), `sizes` (n,) their byte counts -> (width, height) int64 arrays, 0 where it has no
    answer. The same checks, as numpy masks on the little-endian 32-bit words of the 30 bytes (a reference
    build sizes a shard's images in one go; byte by byte this was 4x slower)."""
    import numpy as np

    heads = np.asarray(heads, dtype=np.uint8).reshape(-1, 30)
    padded = np.zeros((len(heads), 32), dtype=np.uint8)
    padded[:, :30] = heads
    w = padded.view("<u4").astype(np.int64)  # words at bytes 0, 4, ..., 28
    sizes = np.asarray(sizes, dtype=np.int64)
    riff_end = w[:, 1] + 8
    chunk = w[:, 4]
    ok = (sizes >= 30) & (w[:, 0] == _RIFF) & (w[:, 2] == _WEBP) & (riff_end >= 16) & (riff_end <= sizes)
    ok &= 20 + chunk + (chunk & 1) == riff_end
    # lossy: key frame, profile <= 3, shown, first partition inside the chunk, start code 9d 01 2a at 23-25
    tag = w[:, 5] & 0xFFFFFF
    lossy = (
        ok & (w[:, 3] == _VP8) & (chunk >= 10) & ((w[:, 5] >> 24) == 0x9D) & ((w[:, 6] & 0xFFFF) == 0x2A01)
    )
    lossy &= ((tag & 1) == 0) & (((tag >> 1) & 7) <= 3) & (((tag >> 4) & 1) == 1) & ((tag >> 5) < chunk)
    lw = (w[:, 6] >> 16) & 0x3FFF
    lh = w[:, 7] & 0x3FFF
    lossy &= (lw > 0) & (lh > 0)
    # lossless: signature 0x2f at 20, then 32 bits at 21-24 whose top three (the version) are 0
    bits = (w[:, 5] >> 8) | ((w[:, 6] & 0xFF) << 24)
    lossless = ok & (w[:, 3] == _VP8L) & (chunk >= 5) & ((w[:, 5] & 0xFF) == 0x2F) & ((bits >> 29) == 0)
    width = np.where(lossy, lw, np.where(lossless, (bits & 0x3FFF) + 1, 0))
    height = np.where(lossy, lh, np.where(lossless, ((bits >> 14) & 0x3FFF) + 1, 0))
    fits = width * height <= MAX_PIXELS
    return np.where(fits, width, 0), np.where(fits, height, 0)


def _webp_extended(data: bytes, riff_end: int) -> tuple[str, int, int] | None:
    header = _chunk(data, 12, riff_end)
    if header is None or header[2] < 10:
        return None
    flags = data[20]
    if flags & ~_VP8X_FLAGS & 0xFF:
        return None
    width = (data[24] | data[25] << 8 | data[26] << 16) + 1
    height = (data[27] | data[28] << 8 | data[29] << 16) + 1
    animated = bool(flags & _VP8X_ANIMATED)
    pos = header[3]
    if pos == riff_end:  # an extended file holds at least one more chunk
        return None
    frames = 0
    anim_seen = False
    while pos != riff_end:
        chunk = _chunk(data, pos, riff_end)
        if chunk is None:
            return None
        fourcc, start, size, following = chunk
        if fourcc in (b"ALPH", b"VP8 ", b"VP8L"):
            # a still image: exactly one frame, as large as the canvas; top-level frames in an animation are errors
            if animated or anim_seen or frames:
                return None
            image = _image_chunks(data, pos, riff_end)
            if image is None or image[:2] != (width, height):
                return None
            frames, following = 1, image[2]
        elif fourcc == b"ANIM":
            if not animated or size + (size & 1) < 6:
                return None
            anim_seen = True
        elif fourcc == b"ANMF":
            if not anim_seen or not _animation_frame_ok(data, start, size + (size & 1), width, height):
                return None
            frames += 1
        elif fourcc == b"VP8X":
            return None
        pos = following
    return ("WEBP", width, height) if frames else None


def _animation_frame_ok(data: bytes, start: int, padded: int, width: int, height: int) -> bool:
    """An ANMF chunk whose image chunks fill it exactly and whose frame lies inside the canvas."""
    if padded < 16:
        return False
    x = 2 * (data[start] | data[start + 1] << 8 | data[start + 2] << 16)
    y = 2 * (data[start + 3] | data[start + 4] << 8 | data[start + 5] << 16)
    frame_w = (data[start + 6] | data[start + 7] << 8 | data[start + 8] << 16) + 1
    frame_h = (data[start + 9] | data[start + 10] << 8 | data[start + 11] << 16) + 1
    image = _image_chunks(data, start + 16, start + padded)
    if image is None or image[2] != start + padded or image[:2] != (frame_w, frame_h):
        return False
    return x + frame_w <= width and y + frame_h <= height


# ---- GIF ----------------------------------------------------------------------------------------------------------
# Pillow reads up to the first image descriptor and grows the logical screen to cover that frame.
def _gif(data: bytes) -> tuple[str, int, int] | None:
    n = len(data)
    if n < 13:
        return None
    width, height = _U16LE.unpack_from(data, 6)[0], _U16LE.unpack_from(data, 8)[0]
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    while True:
        if pos >= n:
            return None
        block = data[pos]
        if block == 0x2C:  # image descriptor
            if pos + 10 > n:
                return None
            x, y, frame_w, frame_h = _GIF_DESCRIPTOR.unpack_from(data, pos + 1)
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            if pos >= n:  # Pillow reads the LZW code size byte that follows
                return None
            return "GIF", max(width, x + frame_w), max(height, y + frame_h)
        if block != 0x21 or pos + 2 >= n:  # trailer before any image, junk, or truncated
            return None
        label, first = data[pos + 1], data[pos + 2]
        # Pillow expects a first data sub-block in these extensions (an empty one desynchronises its reader)
        if first == 0 and label != 0xFE:
            return None
        if label == 0xF9 and first < 4:  # graphic control: flags, delay, transparent index
            return None
        pos += 2
        if label == 0xFF and data[pos + 1 : pos + 1 + first].startswith(b"NETSCAPE2.0"):
            if pos + 1 + first >= n or data[pos + 1 + first] == 0:  # Pillow reads a second sub-block
                return None
        while True:  # data sub-blocks up to the zero-length terminator
            if pos >= n:
                return None
            length = data[pos]
            pos += 1 + length
            if length == 0:
                break


# ---- BMP ----------------------------------------------------------------------------------------------------------
_BMP_HEADERS = (12, 40, 52, 56, 64, 108, 124)  # core (OS/2 v1), info, v2, v3, OS/2 v2, v4, v5
_BMP_DEPTHS = (1, 4, 8, 16, 24, 32)
# BI_BITFIELDS channel masks Pillow can read: 32-bit (r, g, b, a), 24/16-bit (r, g, b)
_BMP_MASKS_32 = (
    (0xFF0000, 0xFF00, 0xFF, 0x0),
    (0xFF000000, 0xFF0000, 0xFF00, 0x0),
    (0xFF000000, 0xFF00, 0xFF, 0x0),
    (0xFF000000, 0xFF0000, 0xFF00, 0xFF),
    (0xFF, 0xFF00, 0xFF0000, 0xFF000000),
    (0xFF0000, 0xFF00, 0xFF, 0xFF000000),
    (0xFF000000, 0xFF00, 0xFF, 0xFF0000),
    (0x0, 0x0, 0x0, 0x0),
)
_BMP_MASKS_RGB = {24: ((0xFF0000, 0xFF00, 0xFF),), 16: ((0xF800, 0x7E0, 0x1F), (0x7C00, 0x3E0, 0x1F))}


def _bmp(data: bytes) -> tuple[str, int, int] | None:
    n = len(data)
    if n < 18:
        return None
    header_size = _U32LE.unpack_from(data, 14)[0]
    if header_size not in _BMP_HEADERS or n < 14 + header_size:
        return None
    if header_size == 12:
        width, height = _U16LE.unpack_from(data, 18)[0], _U16LE.unpack_from(data, 20)[0]
        bits, compression, colours = _U16LE.unpack_from(data, 24)[0], 0, 0
    else:
        width, height = _U32LE.unpack_from(data, 18)[0], _U32LE.unpack_from(data, 22)[0]
        if data[25] == 0xFF:  # negative height = rows stored top-down; the size is its magnitude
            height = 2**32 - height
        bits = _U16LE.unpack_from(data, 28)[0]
        compression = _U32LE.unpack_from(data, 30)[0]
        colours = _U32LE.unpack_from(data, 46)[0]
    if bits not in _BMP_DEPTHS:
        return None
    if compression == 3:  # BI_BITFIELDS: masks follow a 40-byte header, or sit inside a longer one
        if n < 66:
            return None
        masks = _RGB_MASKS.unpack_from(data, 54)
        if bits == 32:
            alpha = _U32LE.unpack_from(data, 66)[0] if header_size >= 56 else 0
            if (*masks, alpha) not in _BMP_MASKS_32:
                return None
        elif masks not in _BMP_MASKS_RGB.get(bits, ()):
            return None
    elif compression not in (0, 1, 2):  # RGB, RLE8, RLE4
        return None
    if bits <= 8 and not 0 < (colours or 1 << bits) <= 65536:
        return None
    return "BMP", width, height


__all__ = ["MAX_PIXELS", "PNG_MAGIC", "image_size"]


HEAD_BYTES = 64 * 1024  # holds the header of nearly every PNG/JPEG/GIF/BMP (EXIF thumbnails included)


class _FileView:
    """A file as read-only bytes for the WebP parser: its length is the file's, and the pages the parser
    touches are read on first use (the head is already in hand)."""

    PAGE = 4096

    def __init__(self, fh, head: bytes, size: int) -> None:
        self._fh = fh
        self._size = size
        self._pages: dict[int, bytes] = {}
        self._head = head
        self.bytes_read = len(head)

    def __len__(self) -> int:
        return self._size

    def _page(self, k: int) -> bytes:
        page = self._pages.get(k)
        if page is None:
            self._fh.seek(k * self.PAGE)
            page = self._pages[k] = self._fh.read(self.PAGE)
            self.bytes_read += len(page)
        return page

    def _range(self, start: int, stop: int) -> bytes:
        if stop <= len(self._head):
            return self._head[start:stop]
        parts = []
        pos = start
        while pos < stop:
            k, off = divmod(pos, self.PAGE)
            chunk = self._page(k)[off : off + (stop - pos)]
            if not chunk:
                break
            parts.append(chunk)
            pos += len(chunk)
        return b"".join(parts)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self._size)
            if step != 1:
                raise ValueError("_FileView slices have step 1")
            return self._range(start, max(start, stop))
        if key < 0:
            key += self._size
        if not 0 <= key < self._size:
            raise IndexError("file view index out of range")
        return self._range(key, key + 1)[0]


def image_file_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as Pillow reports it; OSError when Pillow cannot open it either.

    The first 4 KB usually settle it. A WebP bigger than that is checked through a `_FileView` (its chunk
    headers, a few KB, not the whole file: a training run sizes millions of them at start-up); other files get
    HEAD_BYTES, then, with bigger metadata blocks, a whole read; anything still unsure goes to Pillow.
    """
    with open(path, "rb") as fh:
        head = fh.read(_FileView.PAGE)  # PNG, BMP, GIF and plain JPEG headers fit one page
        found = image_size(head)
        if found is None and len(head) == _FileView.PAGE:
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                found = _webp(_FileView(fh, head, os.fstat(fh.fileno()).st_size))
            else:  # JPEG EXIF / ICC blocks: the first HEAD_BYTES, then the whole file
                head += fh.read(HEAD_BYTES - len(head))
                found = image_size(head)
                if found is None and len(head) == HEAD_BYTES:
                    found = image_size(head + fh.read())
    if found is not None:
        return found[1], found[2]
    from PIL import Image

    with Image.open(path) as im:
        return im.size
