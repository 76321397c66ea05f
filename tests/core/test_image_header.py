"""Image size from header bytes: agrees with Pillow's Image.open on real files, and says None (never a wrong
size, never an exception) for truncated, damaged or random bytes. Plus the dataset export's copy path using it."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms
from support import write_tar
from test_dataset_captions import make_db  # noqa: E402 - pytest puts tests/core on sys.path

from trainer_core.dataset.export import BuildOptions, build_dataset
from trainer_core.dataset.filters import PostFilters
from trainer_core.dataset.image_header import MAX_PIXELS, image_size
from trainer_core.dataset.selection import PRESETS

SIZES = [(1, 1), (17, 5), (640, 480), (4000, 3)]


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def picture(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradient plus a little noise: realistic enough for every encoder, fast to encode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1), (xx + yy) % 256], axis=-1)
    rgb = (rgb + rng.integers(0, 16, rgb.shape)).clip(0, 255).astype("uint8")
    img = Image.fromarray(rgb)
    if mode == "RGBA":
        alpha = Image.fromarray((xx * 7 % 256).astype("uint8"))
        img.putalpha(alpha)
        return img
    return img if mode == "RGB" else img.convert(mode)


def pillow_says(data: bytes) -> tuple[str, int, int] | None:
    """What Image.open reports, or None when it cannot open the bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                return img.format, img.size[0], img.size[1]
    except Exception:  # noqa: BLE001 - any failure to open means "no size"
        return None


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_block(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # rotated: .size must still be the stored size
    exif[0x011A] = 72.0  # XResolution
    exif[0x0128] = 2  # ResolutionUnit
    return exif.tobytes()


def sample_recipes() -> dict[str, Callable[[], bytes]]:
    """name -> how to encode it; names are known at collection time, images are encoded once per module."""
    out: dict[str, Callable[[], bytes]] = {}
    for w, h in SIZES:
        tag = f"{w}x{h}"

        def rgb(w=w, h=h) -> Image.Image:
            return picture(w, h)

        def rgba(w=w, h=h) -> Image.Image:
            return picture(w, h, "RGBA")

        out[f"png-rgb-{tag}"] = lambda rgb=rgb: encode(rgb(), "PNG")
        out[f"png-rgba-{tag}"] = lambda rgba=rgba: encode(rgba(), "PNG")
        out[f"png-p-{tag}"] = lambda rgb=rgb: encode(rgb().convert("P"), "PNG")
        out[f"png-l-{tag}"] = lambda rgb=rgb: encode(rgb().convert("L"), "PNG")
        out[f"png-16bit-{tag}"] = lambda rgb=rgb: encode(rgb().convert("I;16"), "PNG")
        out[f"jpeg-baseline-{tag}"] = lambda rgb=rgb: encode(rgb(), "JPEG", quality=90)
        out[f"jpeg-progressive-{tag}"] = lambda rgb=rgb: encode(rgb(), "JPEG", progressive=True)
        out[f"jpeg-exif-{tag}"] = lambda rgb=rgb: encode(rgb(), "JPEG", exif=exif_block())
        out[f"jpeg-icc-{tag}"] = lambda rgb=rgb: encode(rgb(), "JPEG", icc_profile=srgb_icc())
        out[f"webp-lossy-{tag}"] = lambda rgb=rgb: encode(rgb(), "WEBP", quality=80)
        out[f"webp-lossless-{tag}"] = lambda rgb=rgb: encode(rgb(), "WEBP", lossless=True)
        out[f"webp-alpha-{tag}"] = lambda rgba=rgba: encode(rgba(), "WEBP")
        out[f"gif-{tag}"] = lambda rgb=rgb: encode(rgb().convert("P"), "GIF")
        out[f"bmp-rgb-{tag}"] = lambda rgb=rgb: encode(rgb(), "BMP")
        out[f"bmp-p-{tag}"] = lambda rgb=rgb: encode(rgb().convert("P"), "BMP")

    def frames() -> list[Image.Image]:
        return [picture(40, 30, seed=s) for s in range(3)]

    def animated_webp(**kw) -> bytes:
        first, *rest = frames()
        return encode(first, "WEBP", save_all=True, append_images=rest, duration=80, **kw)

    def animated_gif() -> bytes:
        first, *rest = (f.convert("P") for f in frames())
        return encode(first, "GIF", save_all=True, append_images=rest, loop=0)

    out["webp-animated"] = animated_webp
    out["webp-animated-lossless"] = lambda: animated_webp(lossless=True)
    out["webp-icc-exif"] = lambda: encode(picture(21, 13), "WEBP", icc_profile=srgb_icc(), exif=exif_block())
    out["gif-animated"] = animated_gif
    out["png-icc"] = lambda: encode(picture(20, 10), "PNG", icc_profile=srgb_icc())
    out["png-1bit"] = lambda: encode(picture(21, 13).convert("1"), "PNG")
    out["png-trns-rgb"] = lambda: encode(picture(21, 13), "PNG", transparency=(1, 2, 3))
    out["jpeg-cmyk"] = lambda: encode(picture(33, 21).convert("CMYK"), "JPEG")
    out["jpeg-gray"] = lambda: encode(picture(33, 21).convert("L"), "JPEG")
    out["jpeg-jfif-dpi-and-exif"] = lambda: encode(picture(33, 21), "JPEG", dpi=(300, 300), exif=exif_block())
    out["bmp-1bit"] = lambda: encode(picture(9, 4).convert("1"), "BMP")
    out["bmp-rgba"] = lambda: encode(picture(9, 4, "RGBA"), "BMP")
    out["bmp-v5-bitfields-32"] = lambda: bmp_bitfields(5, 3, 124, 32, (0xFF0000, 0xFF00, 0xFF, 0xFF000000))
    out["bmp-bitfields-565"] = lambda: bmp_bitfields(5, 3, 40, 16, (0xF800, 0x7E0, 0x1F))
    out["bmp-top-down"] = lambda: bmp_top_down(picture(7, 3))
    out["bmp-core-header"] = lambda: bmp_core(6, 2)
    return out


def bmp_top_down(img: Image.Image) -> bytes:
    data = bytearray(encode(img, "BMP"))
    struct.pack_into("<i", data, 22, -img.size[1])  # negative height: rows stored top-down
    return bytes(data)


def bmp_core(w: int, h: int) -> bytes:
    """An OS/2 1.x bitmap: 12-byte BITMAPCOREHEADER with 16-bit sizes."""
    pixels = bytes(((w * 24 + 31) // 32) * 4 * h)
    header = struct.pack("<IHHHH", 12, w, h, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26) + header + pixels


RECIPES = sample_recipes()
SAMPLE_NAMES = list(RECIPES)


def bmp_bitfields(w: int, h: int, header_size: int, bits: int, masks: tuple[int, ...]) -> bytes:
    """BI_BITFIELDS bitmap: channel masks inside a v4/v5 header, or right after a 40-byte one."""
    info = struct.pack("<IiiHHIIiiII", header_size, w, h, 1, bits, 3, 0, 2835, 2835, 0, 0)
    mask_bytes = struct.pack(f"<{len(masks)}I", *masks)
    header = (info + mask_bytes).ljust(header_size, b"\0") if header_size > 40 else info + mask_bytes
    pixels = bytes(((w * bits + 31) // 32) * 4 * h)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


@pytest.fixture(scope="module")
def samples() -> dict[str, bytes]:
    return {name: make() for name, make in RECIPES.items()}


# ---- real files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_matches_pillow_on_real_files(samples, name):
    data = samples[name]
    expected = pillow_says(data)
    assert expected is not None
    assert image_size(data) == expected


def test_sample_set_covers_every_header_kind(samples):
    webp_kinds = {samples[n][12:16] for n in samples if n.startswith("webp")}
    assert webp_kinds == {b"VP8 ", b"VP8L", b"VP8X"}
    assert samples["webp-animated"][30:34] == b"ANIM"
    bmp_headers = {struct.unpack_from("<I", samples[n], 14)[0] for n in samples if n.startswith("bmp")}
    assert {12, 40, 124} <= bmp_headers
    assert {struct.unpack_from("<I", samples[n], 30)[0] for n in samples if n.startswith("bmp-")} == {0, 3}
    assert b"\xff\xc2" in samples["jpeg-progressive-640x480"][:2000]  # SOF2
    assert b"Exif\0\0" in samples["jpeg-exif-17x5"][:200]
    assert b"ICC_PROFILE\0" in samples["jpeg-icc-17x5"][:200]


def test_stored_size_is_reported_not_the_exif_rotated_one(samples):
    # orientation 6 = rotate 90: viewers show 5x17, Pillow's Image.open (and the manifest) say 17x5
    assert image_size(samples["jpeg-exif-17x5"]) == ("JPEG", 17, 5)


def test_top_down_bmp_reports_positive_height(samples):
    assert struct.unpack_from("<i", samples["bmp-top-down"], 22)[0] == -3
    assert image_size(samples["bmp-top-down"]) == ("BMP", 7, 3)
    assert image_size(samples["bmp-core-header"]) == ("BMP", 6, 2)


def test_vp8_upscaling_bits_are_not_part_of_the_size(samples):
    data = bytearray(samples["webp-lossy-17x5"])
    assert data[12:16] == b"VP8 "
    data[27] |= 0x40  # top 2 bits of the 16-bit width field: an upscaling hint for the decoder
    data[29] |= 0x80
    assert pillow_says(bytes(data)) == ("WEBP", 17, 5)
    assert image_size(bytes(data)) == ("WEBP", 17, 5)


def test_gif_frame_larger_than_the_screen_grows_the_size(samples):
    data = bytearray(samples["gif-17x5"])
    struct.pack_into("<HH", data, 6, 10, 2)  # logical screen smaller than the 17x5 frame
    assert pillow_says(bytes(data)) == ("GIF", 17, 5)
    assert image_size(bytes(data)) == ("GIF", 17, 5)


def test_jpeg_fill_bytes_and_standalone_markers(samples):
    data = samples["jpeg-baseline-17x5"]
    padded = data[:2] + b"\xff\xff\xff" + data[2:]  # fill bytes before the first APP marker
    restart = data[:2] + b"\xff\xd0" + data[2:]  # a stray RST0 (no length)
    for variant in (padded, restart):
        assert pillow_says(variant) == ("JPEG", 17, 5)
        assert image_size(variant) == ("JPEG", 17, 5)


# ---- damaged headers: None where Pillow refuses ------------------------------------------------------------------
def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_with_ihdr(w: int, h: int, depth: int = 8, colour: int = 2) -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4)) + _png_chunk(b"IEND", b"")
    )


def test_damaged_or_unsupported_headers_give_none(samples):
    png = samples["png-rgb-17x5"]
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    cases = {
        "png bad IHDR crc": bytes(bad_crc),
        "png zero width": _png_with_ihdr(0, 5),
        "png bad depth for RGB": _png_with_ihdr(17, 5, depth=4),
        "png over the pixel limit": _png_with_ihdr(20_000, 20_000),
        "jpeg 12-bit": samples["jpeg-baseline-17x5"].replace(
            b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1
        ),
        "jpeg TEM marker": samples["jpeg-baseline-17x5"][:2]
        + b"\xff\x01"
        + samples["jpeg-baseline-17x5"][2:],
        "webp last byte missing": samples["webp-lossy-17x5"][:-1],
        "webp VP8L version 1": _patch(samples["webp-lossless-17x5"], 24, lambda b: b | 0x20),
        "gif trailer before any image": b"GIF89a\x11\x00\x05\x00\x00\x00\x00;",
        "bmp 2-bit depth": _patch(samples["bmp-rgb-17x5"], 28, lambda b: 2),
        "not an image": b"not an image at all",
        "empty": b"",
    }
    assert cases["jpeg 12-bit"] != samples["jpeg-baseline-17x5"]
    for what, data in cases.items():
        assert image_size(data) is None, what
        assert pillow_says(data) is None, what  # Pillow refuses them too (the pixel limit: DecompressionBomb)
    # the hand-made PNG is valid when its header is
    assert image_size(_png_with_ihdr(17, 5)) == pillow_says(_png_with_ihdr(17, 5)) == ("PNG", 17, 5)
    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS


def _patch(data: bytes, at: int, change) -> bytes:
    out = bytearray(data)
    out[at] = change(out[at])
    return bytes(out)


def test_jpeg_exif_resolution_quirk_follows_pillow(samples):
    # Pillow 13 fails to open a JPEG whose EXIF XResolution is a 1-byte value (IndexError in its dpi reader);
    # the header reader must not hand out a size Pillow would refuse.
    data = bytearray(samples["jpeg-exif-17x5"])
    tiff = data.index(b"Exif\0\0") + 6
    order = "<" if data[tiff] == ord("I") else ">"
    ifd = tiff + struct.unpack_from(order + "I", data, tiff + 4)[0]
    for i in range(struct.unpack_from(order + "H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from(order + "H", data, entry)[0] == 0x011A:
            struct.pack_into(order + "H", data, entry + 2, 1)  # RATIONAL -> BYTE
    assert pillow_says(bytes(data)) is None
    assert image_size(bytes(data)) is None


def test_truncated_prefixes_never_give_a_wrong_size(samples):
    for name, data in samples.items():
        expected = pillow_says(data)
        cuts = set(range(0, min(len(data), 160), 3)) | {len(data) // 3, len(data) // 2, len(data) - 1}
        for cut in sorted(cuts):
            prefix = data[:cut]
            got = image_size(prefix)
            if got is not None:
                assert got == expected, (name, cut)
                assert pillow_says(prefix) == got, (name, cut)  # Pillow too opens this prefix


def test_truncation_inside_the_header_gives_none(samples):
    for name in (
        "png-rgb-640x480",
        "jpeg-icc-640x480",
        "gif-640x480",
        "bmp-rgb-640x480",
        "webp-lossy-640x480",
    ):
        data = samples[name]
        assert image_size(data[:20]) is None, name
    # WebP: libwebp needs the whole RIFF, so any truncation is refused
    assert image_size(samples["webp-animated"][:-2]) is None
    assert image_size(samples["webp-lossless-640x480"][: len(samples["webp-lossless-640x480"]) // 2]) is None


# ---- random bytes -------------------------------------------------------------------------------------------------
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x20\x00\x00\x00WEBPVP8 ", b"GIF89a", b"BM", b""]


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(SIGNATURES), tail=st.binary(max_size=300))
def test_random_bytes_never_raise_or_lie(prefix, tail):
    data = prefix + tail
    got = image_size(data)
    assert got is None or got == pillow_says(data)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(SAMPLE_NAMES),
    edits=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_damaged_real_files_give_none_or_what_pillow_says(samples, name, edits):
    data = bytearray(samples[name])
    for at, value in edits:
        data[at % len(data)] = value
    got = image_size(bytes(data))
    assert got is None or got == pillow_says(bytes(data))


# ---- the dataset export's copy path ------------------------------------------------------------------------------


def test_export_copy_path_sizes_match_pillow_and_corrupt_is_reported(samples, tmp_path, monkeypatch):
    good = {
        1001: ("png", samples["png-rgba-17x5"]),
        1002: ("jpeg", samples["jpeg-exif-17x5"]),
        1003: ("webp", samples["webp-lossy-640x480"]),
        1004: ("webp", samples["webp-animated"]),
        1005: ("gif", samples["gif-animated"]),
        1006: ("bmp", samples["bmp-top-down"]),
    }
    corrupt = {
        1007: ("webp", samples["webp-lossy-17x5"][:40]),  # truncated
        1008: ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30),  # signature, then garbage
        1009: ("jpg", b"\xff\xd8\xff" + bytes(range(61))),  # JPEG signature, then no valid marker
    }
    ids = sorted(good) + sorted(corrupt)
    make_db(tmp_path / "m.db", [(i, "2021-01-01T00:00:00.000-05:00", 0, 5, [("solo", 0)]) for i in ids])
    shards = tmp_path / "images"
    shards.mkdir()
    for pid, (ext, data) in {**good, **corrupt}.items():
        write_tar(shards / f"data-0{pid % 1000:03d}.tar", [(f"{pid}.{ext}", data)])

    opened: list[int] = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(1)
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    out = tmp_path / "ds"
    result = build_dataset(
        BuildOptions(
            db=tmp_path / "m.db", images=shards, out=out, plan=PRESETS["all"], filters=PostFilters.none()
        ),
        workers=2,
    )
    monkeypatch.undo()

    manifest = {m["id"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(manifest) == sorted(good)
    for pid, (ext, data) in good.items():
        m = manifest[pid]
        assert m["file"] == f"1_kxl/{pid}.{'jpg' if ext == 'jpeg' else ext}"
        assert (out / m["file"]).read_bytes() == data  # copied unchanged
        _fmt, width, height = pillow_says(data)
        assert (m["width"], m["height"]) == (width, height)
    reasons = {c["id"]: c["reason"] for c in result.summary.corrupt_items}
    assert sorted(reasons) == sorted(corrupt)
    assert all("not a readable image" in r for r in reasons.values())
    assert len(opened) == len(corrupt)  # Pillow only saw the files whose header did not parse


def test_export_copy_path_respects_the_pixel_budget(tmp_path):
    make_db(tmp_path / "m.db", [(i, "2021-01-01T00:00:00.000-05:00", 0, 5, [("solo", 0)]) for i in (7, 8)])
    folder = tmp_path / "imgs"
    folder.mkdir()
    small = encode(picture(20, 20), "PNG")
    (folder / "7.png").write_bytes(encode(picture(200, 100), "PNG"))
    (folder / "8.png").write_bytes(small)
    out = tmp_path / "ds"
    build_dataset(
        BuildOptions(
            db=tmp_path / "m.db",
            images=folder,
            out=out,
            plan=PRESETS["all"],
            filters=PostFilters.none(),
            max_pixels=10_000,
        )
    )
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["file"], m["width"], m["height"]) for m in manifest] == [
        ("1_kxl/7.png", 141, 70),  # over the budget: re-encoded by Pillow
        ("1_kxl/8.png", 20, 20),
    ]
    assert (out / "1_kxl" / "8.png").read_bytes() == small
    assert Image.open(out / "1_kxl" / "7.png").size == (141, 70)


def test_image_file_size_reads_past_the_head_when_it_must(tmp_path, monkeypatch):
    """Files whose header does not fit the first 64 KB (a big WebP, a JPEG behind a large ICC profile) and a
    format the parser does not know all give Pillow's size; an unreadable file raises OSError as Pillow does."""
    from trainer_core.dataset.image_header import HEAD_BYTES, image_file_size

    big_webp = encode(picture(900, 700, seed=3), "WEBP", quality=95)
    assert len(big_webp) > HEAD_BYTES
    # an 80 KB ICC profile (split over two APP2 segments) pushes the frame header past the head
    jpeg = encode(picture(33, 21), "JPEG", icc_profile=srgb_icc() + bytes(HEAD_BYTES + 15_000))
    assert len(jpeg) > HEAD_BYTES
    tiff = encode(picture(12, 9), "TIFF")
    files = {"a.webp": big_webp, "b.jpg": jpeg, "c.tif": tiff, "d.png": encode(picture(5, 4), "PNG")}
    expected = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with Image.open(tmp_path / name) as im:
            expected[name] = im.size
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert {name: image_file_size(tmp_path / name) for name in files} == expected
    assert [Path(p).name for p in opened] == ["c.tif"]  # only the format the parser does not know
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(OSError):
        image_file_size(bad)


def test_big_webp_files_are_sized_from_their_chunk_headers(tmp_path, monkeypatch):
    """A training run sizes every image at start-up: a WebP past the first 64 KB must not be read whole. Each
    kind (lossy, lossless, alpha, EXIF at the end, animated) gives Pillow's size from a few KB of reads, and a
    truncated file is still refused as Pillow refuses it."""
    from trainer_core.dataset import image_header as ih

    big = picture(900, 700, seed=5)
    frames = [picture(600, 500, seed=s) for s in range(3)]
    exif = Image.Exif()
    exif[0x010E] = "x" * 2000  # ImageDescription: an EXIF chunk after the bitstream
    files = {
        "lossy.webp": encode(big, "WEBP", quality=95),
        "lossless.webp": encode(big, "WEBP", lossless=True),
        "alpha.webp": encode(picture(900, 700, "RGBA", seed=6), "WEBP", quality=95),
        "exif.webp": encode(big, "WEBP", quality=95, exif=exif.tobytes()),
        "anim.webp": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], quality=95),
    }
    views = []

    class Spy(ih._FileView):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            views.append(self)

    monkeypatch.setattr(ih, "_FileView", Spy)
    for name, data in files.items():
        assert len(data) > 2 * ih.HEAD_BYTES, name
        (tmp_path / name).write_bytes(data)
        with Image.open(tmp_path / name) as im:
            expected = im.size
        views.clear()
        assert ih.image_file_size(tmp_path / name) == expected, name
        assert len(views) == 1 and views[0].bytes_read <= 8 * 4096, (name, views[0].bytes_read)
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[:-100])
        assert pillow_says(data[:-100]) is None
        with pytest.raises(OSError):
            ih.image_file_size(cut)
