"""Dataset folder indexing, tag search (AND/OR/NOT), statistics, caption preview and the `kxl tags` CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer_core.buckets import assign_bucket, make_buckets
from trainer_core.cli import main as kxl_main
from trainer_core.errors import KxlError
from trainer_core.tags.caption_categories import CaptionTagKind, classify_caption_tag
from trainer_core.tags.caption_processing import card_caption_processing, process_caption
from trainer_core.tags.completion import TagCompleter
from trainer_core.tags.dataset_index import find_newest_dataset, open_dataset, split_caption
from trainer_core.tags.dataset_stats import assign_buckets_vectorized, compute_stats
from trainer_core.tags.preview import bucket_preview, caption_variants, dataset_tag_vocabulary
from trainer_core.tags.tag_query import And, Not, Or, TagTerm, parse_tag_query
from trainer_core.tags.vocabulary import TagVocabulary

CAPTIONS = {
    # id: (folder, size, caption)
    "1": (
        "3_chars",
        (64, 96),
        "1girl, rice shower (umamusume), umamusume, |||long hair, solo, smile, newest, safe, masterpiece",
    ),
    "2": (
        "3_chars",
        (96, 64),
        "2girls, multiple girls, |||long hair, smile, highres, old, explicit, nsfw, worst quality",
    ),
    "10": ("3_chars", (80, 80), ", |||solo, blue eyes, sensitive, best quality"),
    "5": ("1_misc", (64, 64), "1boy, |||short hair, blue eyes, recent, safe"),
}
VOCAB_CSV = """1girl,0,6008644,"1girls,sole_female"
2girls,0,500000,
multiple_girls,0,600000,
1boy,0,1500000,
solo,0,5000954,
long_hair,0,4350743,"longhair"
short_hair,0,2000000,
smile,0,2873890,
blue_eyes,0,1500000,
highres,5,5256195,
rice_shower_(umamusume),4,9000,
umamusume,3,150000,
"""


def _write_dataset(root: Path) -> Path:
    for stem, (folder, size, caption) in CAPTIONS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 100, 50)).save(root / folder / f"{stem}.png")
        (root / folder / f"{stem}.txt").write_text(caption + "\nsecond line is ignored", encoding="utf-8")
    bad = root / "1_misc"
    Image.new("RGB", (32, 32)).save(bad / "20.png")  # no caption file
    Image.new("RGB", (32, 32)).save(bad / "21.png")
    (bad / "21.txt").write_bytes(b"caf\xe9, solo")  # latin-1, not UTF-8
    Image.new("RGB", (32, 32)).save(bad / "22.png")
    (bad / "22.txt").write_text("  \n", encoding="utf-8")
    (bad / "23.webp").write_bytes(b"RIFF0000WEBPnot really")
    (bad / "23.txt").write_text("solo", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("ds") / "my_set")


@pytest.fixture(scope="module")
def vocab() -> TagVocabulary:
    return TagVocabulary.from_csv_text(VOCAB_CSV)


def test_kohya_layout_order_repeats_and_captions(dataset):
    index = open_dataset(dataset)
    assert index.layout == "kohya"
    # Folders by name ("chars" < "misc"), ids numerically (2 < 10).
    assert [(e.image, e.repeats) for e in index.entries] == [
        ("3_chars/1.png", 3),
        ("3_chars/2.png", 3),
        ("3_chars/10.png", 3),
        ("1_misc/5.png", 1),
        ("1_misc/20.png", 1),
        ("1_misc/21.png", 1),
        ("1_misc/22.png", 1),
        ("1_misc/23.webp", 1),
    ]
    assert index.entries[0].caption == CAPTIONS["1"][2]  # first line only
    assert index.entries[4].caption == "" and not index.entries[4].has_caption_file


def test_bad_files_are_listed_not_fatal(dataset):
    index = open_dataset(dataset)
    messages = {p.path: p.message for p in index.problems}
    assert messages == {
        "1_misc/20.png": "no caption file: the trainer will see an empty caption",
        "1_misc/21.txt": "caption is not UTF-8 (bad byte at offset 3)",
        "1_misc/22.txt": "empty caption (sd-scripts stops with an assertion on it)",
    }
    assert index.image_size(7) is None  # the fake webp
    assert index.problems[-1].path == "1_misc/23.webp"
    assert index.problems[-1].message.startswith("image cannot be decoded")
    assert index.image_size(0) == (64, 96)


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(KxlError, match="dataset folder not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KxlError, match="no images here"):
        open_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("", ["1", "2", "10", "5", "20", "21", "22", "23"]),
        ("long hair", ["1", "2"]),
        ("LONG_HAIR", ["1", "2"]),
        ("long hair, solo", ["1"]),
        ("long hair -solo", ["2"]),
        ("long hair AND NOT solo", ["2"]),
        ("1girl | 1boy", ["1", "5"]),
        ("blue eyes & (1boy OR solo)", ["10", "5"]),
        ("!solo, smile", ["2"]),
        ("rice shower (umamusume)", ["1"]),
        ('"rice shower (umamusume)" | 2girls', ["1", "2"]),
        ("rice shower \\(umamusume\\)", ["1"]),
        ("*quality", ["2", "10"]),  # masterpiece is not *quality
        ("*girl*", ["1", "2"]),
        ("solo", ["1", "10", "23"]),
        ("nothing like this", []),
    ],
)
def test_filter(dataset, query, ids):
    index = open_dataset(dataset)
    assert [index.entries[i].id for i in index.filter(query)] == ids


def test_query_parse_tree_and_errors(dataset):
    assert parse_tag_query("a b, -c | d") == Or(
        (And((TagTerm("a_b", "a b"), Not(TagTerm("c", "c")))), TagTerm("d", "d"))
    )
    assert parse_tag_query("mid-air") == TagTerm("mid-air", "mid-air")
    assert parse_tag_query("long hair,") == TagTerm("long_hair", "long hair")  # half-typed query still works
    for bad, why in (
        ("(solo", "not closed"),
        ('"solo', "not closed"),
        ("solo NOT", "NOT needs a tag"),
        ("solo)", "unexpected"),
    ):
        with pytest.raises(KxlError, match=why):
            parse_tag_query(bad)
    index = open_dataset(dataset)
    assert index.unknown_terms("long hair, nothing | *zzz*") == ["nothing", "*zzz*"]


def test_manifest_supplies_sizes_and_fills_missing_captions(tmp_path):
    root = tmp_path / "built"
    (root / "2_set").mkdir(parents=True)
    for i in (7, 8):
        Image.new("RGB", (40, 30)).save(root / "2_set" / f"{i}.webp")
    (root / "2_set" / "7.txt").write_text("from txt, |||solo", encoding="utf-8")
    lines = [
        {
            "id": 7,
            "file": "2_set/7.webp",
            "caption": "from manifest",
            "width": 1200,
            "height": 900,
            "rating": "explicit",
            "quality": "masterpiece",
            "year": "newest",
        },
        {"id": 8, "file": "2_set/8.webp", "caption": "manifest caption, |||smile", "width": 0, "height": 0},
    ]
    (root / "manifest.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\nnot json\n", encoding="utf-8"
    )
    index = open_dataset(root)
    e7, e8 = index.entries
    assert (e7.caption, e7.size, e7.rating, e7.quality, e7.year) == (
        "from txt, |||solo",
        (1200, 900),
        "explicit",
        "masterpiece",
        "newest",
    )
    assert e8.caption == "manifest caption, |||smile" and e8.size is None
    assert index.image_size(1) == (40, 30)  # read lazily from the header
    assert [str(p) for p in index.problems] == [
        "manifest.jsonl: line 3: not JSON (Expecting value)",
        "2_set/8.webp: no caption file (using the manifest's caption)",
    ]
    # manifest-only layout: images named by the manifest.
    flat = tmp_path / "flat"
    (flat / "img").mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(flat / "img" / "3.png")
    (flat / "manifest.jsonl").write_text(
        json.dumps({"id": 3, "file": "img/3.png", "caption": "a, |||b"}) + "\n"
    )
    flat_index = open_dataset(flat)
    assert flat_index.layout == "manifest"
    assert [(e.image, e.caption) for e in flat_index.entries] == [("img/3.png", "a, |||b")]


def test_categories_and_split(vocab):
    assert split_caption("a, b, |||c, d|||e").fixed == ["a", "b"]
    assert split_caption("a, b, |||c, d|||e").suffix == ["e"]
    assert split_caption("x, y").flex == ["x", "y"] and not split_caption("x, y").has_separator
    kinds = {
        t: classify_caption_tag(t, vocab)
        for t in (
            "1girl",
            "multiple girls",
            "rice shower (umamusume)",
            "umamusume",
            "highres",
            "long hair",
            "newest",
            "nsfw",
            "best quality",
            "never heard of it",
        )
    }
    assert kinds == {
        "1girl": CaptionTagKind.COUNT,
        "multiple girls": CaptionTagKind.COUNT,
        "rice shower (umamusume)": CaptionTagKind.CHARACTER,
        "umamusume": CaptionTagKind.SERIES,
        "highres": CaptionTagKind.META,
        "long hair": CaptionTagKind.GENERAL,
        "newest": CaptionTagKind.YEAR,
        "nsfw": CaptionTagKind.RATING,
        "best quality": CaptionTagKind.QUALITY,
        "never heard of it": CaptionTagKind.UNKNOWN,
    }


def test_stats(dataset, vocab):
    index = open_dataset(dataset)
    index.read_image_sizes()
    stats = compute_stats(index, vocab, images_per_step=4)
    top = {t.text: (t.images, t.kind, t.vocab_count) for t in stats.tags}
    assert top["solo"] == (3, CaptionTagKind.GENERAL, 5000954)
    assert top["long hair"] == (2, CaptionTagKind.GENERAL, 4350743)
    assert top["newest"] == (1, CaptionTagKind.YEAR, None)
    assert stats.tags[0].text == "solo"
    assert stats.images == 8 and stats.samples_per_epoch == 3 * 3 + 5
    assert stats.kinds[CaptionTagKind.RATING] == (4, 5)  # safe x2, explicit, nsfw, sensitive
    assert dict(stats.ratings) == {"safe": 2, "explicit": 1, "sensitive": 1, "none": 4}
    assert dict(stats.qualities) == {"masterpiece": 1, "worst quality": 1, "best quality": 1, "none": 5}
    assert dict(stats.years) == {"newest": 1, "old": 1, "recent": 1, "none": 5}
    # Buckets weighted by repeats; the fake webp has no size.
    buckets = make_buckets()
    expected: dict = {}
    for e in index.entries:
        if e.size:
            b = assign_bucket(e.size, buckets).bucket
            expected[b] = expected.get(b, 0) + e.repeats
    assert dict(stats.buckets) == expected
    assert stats.buckets[(1024, 1024)] == 3 + 4  # the square 80x80 (x3) and four 64/32 squares (x1)
    assert stats.unknown_sizes == 1
    assert any("bucket(s) hold fewer samples than one optimizer step's 4 images" in w for w in stats.warnings)
    assert any("fewer than 10 images" in w for w in stats.warnings)


def test_vectorized_buckets_match_assign_bucket():
    buckets = make_buckets()
    rng = random.Random(3)
    sizes = [(rng.randint(50, 5000), rng.randint(50, 5000)) for _ in range(3000)] + list(buckets[:5])
    got = assign_buckets_vectorized(np.array(sizes, dtype=np.int64), buckets)
    assert [buckets[i] for i in got] == [assign_bucket(s, buckets).bucket for s in sizes]


def test_variants_and_bucket_preview_are_the_trainers():
    caption = CAPTIONS["1"][2]
    options = card_caption_processing()
    variants = caption_variants(caption, options, seed=7, epoch=3, index=11, n=4)
    assert [(v.epoch, v.index) for v in variants] == [(3, 11), (4, 11), (5, 11), (6, 11)]
    for v in variants:
        assert v.processed == process_caption(caption, options, seed=7, epoch=v.epoch, index=11)
        assert v.processed.text.startswith("1girl, rice shower (umamusume), umamusume, ")
    preview = bucket_preview((421, 512))
    assert (preview.bucket, preview.resized, preview.crop) == ((896, 1152), (947, 1152), (25, 0, 921, 1152))
    assert preview.label == "bucket 896x1152 (image 421x512 -> resized 947x1152, crop 51x0 px)"
    left, top, right, bottom = preview.crop_in_image
    assert (round(left, 2), top, round(right, 2), bottom) == (11.11, 0.0, 409.44, 512.0)  # 921 * 421 / 947


def test_dataset_completer_offers_dataset_tags_by_frequency(dataset, vocab):
    index = open_dataset(dataset)
    completer = TagCompleter(dataset_tag_vocabulary(index, vocab))
    names = [c.caption_text for c in completer.complete("s", limit=3)]
    assert names == ["solo", "safe", "smile"]  # 3, 2, 2 images; ties by name
    assert completer.complete("longhair")[0].caption_text == "long hair"  # alias from the vocabulary


def test_find_newest_dataset(tmp_path, dataset):
    assert find_newest_dataset(tmp_path / "none") is None
    datasets = tmp_path / "datasets"
    old = datasets / "old" / "1_x"
    old.mkdir(parents=True)
    (datasets / "not_a_dataset").mkdir()
    new = datasets / "new"
    new.mkdir()
    (new / "manifest.jsonl").write_text("")
    import os

    os.utime(datasets / "old", (1_000_000, 1_000_000))
    assert find_newest_dataset(datasets) == new


def test_cli_preview_and_stats(dataset, capsys):
    assert kxl_main(["tags", "preview", str(dataset), "--index", "0", "--seed", "1", "--n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "image:    3_chars/1.png  (sample index 0, repeats 3)"
    assert out[2] == "fixed:    1girl, rice shower (umamusume), umamusume"
    # 2:3 = 0.667; the nearest bucket is 832x1216 (0.684): width fits exactly, 32 px of height are cropped.
    assert out[4] == "bucket 832x1216 (image 64x96 -> resized 832x1248, crop 0x32 px)"
    expected = process_caption(CAPTIONS["1"][2], card_caption_processing(), seed=1, epoch=2, index=0).text
    assert out[7].startswith(f"  epoch 2: {expected}")
    assert kxl_main(["tags", "preview", str(dataset), "--filter", "1boy", "--index", "0", "--n", "1"]) == 0
    assert capsys.readouterr().out.startswith("image:    1_misc/5.png  (sample index 3, repeats 1)")
    assert kxl_main(["tags", "preview", str(dataset), "--filter", "1boy", "--index", "1"]) == 2
    assert "--index 1 is out of range: 1 image(s) match" in capsys.readouterr().err

    assert kxl_main(["tags", "stats", str(dataset), "--top", "2", "--filter", "long hair"]) == 0
    out = capsys.readouterr().out
    assert "2 images, 6 samples per epoch (repeats counted)" in out
    assert "\n  " + f"{2:>8,}  {'long hair':<40} {'general':<10} 4,350,743 posts" in out
