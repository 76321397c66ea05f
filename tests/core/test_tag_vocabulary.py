"""Tag vocabulary (CSV, DB and the shipped full Danbooru list), completion ranking, popularity guidance and tag
text rules."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from trainer_core.errors import DatabaseError, KxlError
from trainer_core.tags import string_sort
from trainer_core.tags.completion import MatchKind, TagCompleter, complete_naive
from trainer_core.tags.popularity import PopularityLevel, popularity_guidance
from trainer_core.tags.shipped_vocabulary import (
    MANIFEST_NAME,
    PACK_NAME,
    builder_vocabulary,
    compress_pack,
    load_shipped_vocabulary,
    pack_text,
    read_shipped_tags,
    shipped_tags_dir,
    unpack_tags,
    write_pack,
)
from trainer_core.tags.string_sort import NUMPY_MIN_ITEMS, argsort_desc_int_then_string, argsort_strings
from trainer_core.tags.text import escape_prompt_text, tag_to_caption_text, tag_to_prompt_text
from trainer_core.tags.vocabulary import Tag, TagCategory, TagVocabulary
from trainer_core.workspace import Workspace

REAL_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "danbooru_tags.csv"

# Danbooru category ids: 0 general, 1 artist, 3 copyright, 4 character, 5 meta.
INLINE_CSV = """\
1girl,0,6008644,"1girls,sole_female"
highres,5,5256195,"high_res,high_resolution,hires"
long_hair,0,4350743,"/lh,longhair"
hair_ornament,0,900000,
very_long_hair,0,800000,"hair_past_waist"
hatsune_miku,4,106634,/hm
vocaloid,3,150000,
^_^,0,110141,^^
rice_shower_(umamusume),4,30000,
umamusume,3,90000,
kohaku_(artist),1,500,
longcat,0,700,
blonde_hair,0,1500000,
blue_hair,0,1500000,
chair,0,300000,
ha,0,50,
"""


@pytest.fixture(scope="module")
def vocab() -> TagVocabulary:
    return TagVocabulary.from_csv_text(INLINE_CSV)


@pytest.fixture(scope="module")
def completer(vocab) -> TagCompleter:
    return TagCompleter(vocab)


def test_csv_maps_danbooru_categories_and_parses_aliases(vocab):
    assert len(vocab) == 16
    assert vocab.get("hatsune_miku") == Tag("hatsune_miku", TagCategory.CHARACTER, 106634, ("/hm",))
    assert vocab.get("vocaloid").category == TagCategory.COPYRIGHT
    assert vocab.get("highres").category == TagCategory.META
    assert vocab.get("kohaku_(artist)").category == TagCategory.ARTIST
    assert vocab.get("1girl").aliases == ("1girls", "sole_female")
    assert vocab.get("hair_ornament").aliases == ()
    # Ordered by count, ties by name: the rank is the popularity order.
    assert [t.name for t in vocab.tags[:3]] == ["1girl", "highres", "long_hair"]
    assert vocab.rank(vocab.get("blonde_hair")) < vocab.rank(vocab.get("blue_hair"))


def test_lookup_accepts_spaces_case_escapes_and_aliases(vocab):
    assert vocab.get("Long Hair").name == "long_hair"
    assert vocab.get("rice shower \\(umamusume\\)").name == "rice_shower_(umamusume)"
    assert vocab.get("long hair ").name == "long_hair"
    assert vocab.get("longhair").name == "long_hair"  # alias
    assert vocab.alias_target("/lh").name == "long_hair"
    assert vocab.alias_target("long_hair") is None  # a name, not an alias
    assert "sole female" in vocab and "nonexistent_tag" not in vocab


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,0\n", "row 1: expected name,category,post_count"),
        ("a,0,1\nb,2,5\n", "row 2 ('b'): unknown Danbooru category 2"),
        ("a,x,1\n", "row 1 ('a'): category and post_count must be integers"),
        ("a,0,1\n,0,3\n", "row 2: empty or multi-line tag name"),
    ],
)
def test_bad_csv_rows_name_the_row(text, message):
    with pytest.raises(KxlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TagVocabulary.from_csv_text(text)


def test_csv_file_errors(tmp_path):
    with pytest.raises(KxlError, match="tag list not found"):
        TagVocabulary.from_csv(tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("caf\xe9,0,5,\n".encode("latin-1"))
    with pytest.raises(KxlError, match="not UTF-8"):
        TagVocabulary.from_csv(bad)
    header = tmp_path / "header.csv"
    header.write_text("name,category,post_count,aliases\nsolo,0,5000954,solo_female\n", encoding="utf-8")
    assert [t.name for t in TagVocabulary.from_csv(header)] == ["solo"]


def _make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE tag (id INTEGER PRIMARY KEY, name VARCHAR UNIQUE, type INTEGER, popularity INTEGER)"
    )
    conn.executemany(
        "INSERT INTO tag VALUES (?, ?, ?, ?)",
        [
            (1, "1girl", 0, 900),
            (2, "kohaku_(artist)", 1, 40),
            (3, "rice_shower_(umamusume)", 2, 70),
            (4, "umamusume", 3, 75),
            (5, "highres", 4, 800),
        ],
    )
    conn.commit()
    conn.close()


def test_db_vocabulary_uses_hakubooru_enum_read_only(tmp_path):
    db = tmp_path / "danbooru2023.db"
    _make_db(db)
    before = db.read_bytes()
    vocab = TagVocabulary.from_db(db)
    assert [(t.name, t.category, t.count) for t in vocab] == [
        ("1girl", TagCategory.GENERAL, 900),
        ("highres", TagCategory.META, 800),
        ("umamusume", TagCategory.COPYRIGHT, 75),
        ("rice_shower_(umamusume)", TagCategory.CHARACTER, 70),
        ("kohaku_(artist)", TagCategory.ARTIST, 40),
    ]
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["danbooru2023.db"]  # no journal/wal left behind


def test_db_errors(tmp_path):
    with pytest.raises(DatabaseError, match="metadata DB not found"):
        TagVocabulary.from_db(tmp_path / "none.db")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(DatabaseError, match="no 'tag' table"):
        TagVocabulary.from_db(empty)
    bad = tmp_path / "bad.db"
    conn = sqlite3.connect(bad)
    conn.execute("CREATE TABLE tag (id INTEGER PRIMARY KEY, name VARCHAR, type INTEGER, popularity INTEGER)")
    conn.execute("INSERT INTO tag VALUES (7, 'x', 9, 1)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="tag id 7 .* type 9"):
        TagVocabulary.from_db(bad)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseError):
        TagVocabulary.from_db(garbage)


def _summary(results):
    return [(c.display, c.kind.name) for c in results]


def test_ranking_tiers_and_popularity(completer):
    assert _summary(completer.complete("hair")) == [
        ("hair ornament", "PREFIX"),
        ("hair past waist → very long hair", "PREFIX"),
        ("long hair", "WORD_START"),
        ("blonde hair", "WORD_START"),
        ("blue hair", "WORD_START"),
        ("chair", "SUBSTRING"),
    ]
    # An exact hit beats more popular prefix hits; "ha" has 50 posts, long_hair 4M.
    assert _summary(completer.complete("ha"))[:3] == [
        ("ha", "EXACT"),
        ("hair ornament", "PREFIX"),
        ("hair past waist → very long hair", "PREFIX"),
    ]
    assert _summary(completer.complete("umamusume")) == [
        ("umamusume", "EXACT"),
        ("rice shower (umamusume)", "WORD_START"),
    ]


def test_aliases_resolve_and_display_with_arrow(completer):
    (first,) = completer.complete("/lh", limit=1)
    assert (first.tag.name, first.alias, first.kind, first.display) == (
        "long_hair",
        "/lh",
        MatchKind.EXACT,
        "/lh → long hair",
    )
    # The name beats an alias of the same tag in the same tier; each tag appears once.
    names = [c.tag.name for c in completer.complete("long")]
    assert names == ["long_hair", "longcat", "very_long_hair"]
    assert completer.complete("long")[0].alias is None


def test_typed_forms_category_filter_and_limit(completer):
    assert completer.complete("Long Ha")[0].tag.name == "long_hair"
    assert completer.complete("long_ha")[0].tag.name == "long_hair"
    assert completer.complete("rice shower \\(")[0].tag.name == "rice_shower_(umamusume)"
    only_chars = completer.complete("u", categories=[TagCategory.CHARACTER])
    assert [c.tag.name for c in only_chars] == ["rice_shower_(umamusume)", "hatsune_miku"]
    assert all(
        c.tag.category == TagCategory.META for c in completer.complete("h", categories={TagCategory.META})
    )
    assert len(completer.complete("h", limit=2)) == 2
    assert completer.complete("") == [] and completer.complete("   ") == []
    assert completer.complete("zzzz") == []


def test_fuzzy_matches_one_typo(completer):
    assert _summary(completer.complete("lnog_h")) == [("long hair", "FUZZY")]
    assert _summary(completer.complete("blnode")) == [("blonde hair", "FUZZY")]  # swapped letters
    assert _summary(completer.complete("hatsun_m")) == [("hatsune miku", "FUZZY")]  # missing letter
    assert _summary(completer.complete("vocalloid")) == [("vocaloid", "FUZZY")]  # extra letter (5+ chars)
    assert completer.complete("hq") == []  # too short for fuzzy


def test_insert_and_display_text(completer):
    (rice,) = completer.complete("rice", limit=1)
    assert rice.prompt_text == "rice shower \\(umamusume\\)"
    assert rice.caption_text == "rice shower (umamusume)"
    (smile,) = completer.complete("^_^", limit=1)
    assert (smile.display, smile.prompt_text) == ("^_^", "^_^")
    assert rice.guidance.level == PopularityLevel.SHOULD_WORK


def test_fast_completion_equals_naive_scan_on_inline_list(vocab, completer):
    queries = set()
    for tag in vocab:
        for key in (tag.name, *tag.aliases):
            queries.update(key[:i] for i in range(1, len(key) + 1))
            queries.update(key[:i] + "x" + key[i + 1 :] for i in range(len(key)))
    queries.update(["air", "ai", "(", "_", "ir_", "hiar", "uamusume", "ohaku"])
    for q in sorted(queries):
        for cats in (None, [TagCategory.GENERAL], [TagCategory.CHARACTER, TagCategory.COPYRIGHT]):
            assert completer.complete(q, 5, cats) == complete_naive(vocab, q, 5, cats), q


@pytest.mark.parametrize(
    ("name", "caption"),
    [
        ("^_^", "^_^"),
        (">_<", ">_<"),
        ("o_o", "o_o"),
        ("6_9", "6_9"),
        (":d", ":d"),
        ("v", "v"),
        ("long_hair", "long hair"),
        ("rice_shower_(umamusume)", "rice shower (umamusume)"),
        ("<|>_<|>", "<|> <|>"),
        ("<o>_<o>", "<o> <o>"),
        ("t_k_g", "t k g"),
    ],
)
def test_underscore_rule(name, caption):
    assert tag_to_caption_text(name) == caption


def test_prompt_escaping():
    assert tag_to_prompt_text("rice_shower_(umamusume)") == "rice shower \\(umamusume\\)"
    assert escape_prompt_text("a[b]\\c") == "a\\[b\\]\\\\c"


@pytest.mark.parametrize(
    ("count", "level", "emphasis"),
    [
        (0, PopularityLevel.UNLIKELY, None),
        (99, PopularityLevel.UNLIKELY, None),
        (100, PopularityLevel.MAY_WORK, (1.5, 2.5)),
        (999, PopularityLevel.MAY_WORK, (1.5, 2.5)),
        (1000, PopularityLevel.SHOULD_WORK, None),
        (6008644, PopularityLevel.SHOULD_WORK, None),
    ],
)
def test_popularity_guidance_thresholds(count, level, emphasis):
    guidance = popularity_guidance(count)
    assert (guidance.level, guidance.emphasis, guidance.post_count) == (level, emphasis, count)
    assert guidance.label


@pytest.fixture(scope="module")
def real_vocab() -> TagVocabulary:
    if not REAL_CSV.is_file():
        pytest.skip(f"real tag list not found at {REAL_CSV} (CI keeps ../shared beside the clone)")
    return TagVocabulary.from_csv(REAL_CSV)


def test_real_csv_counts_per_spec(real_vocab):
    assert len(real_vocab) == 140782
    assert Counter(t.category for t in real_vocab) == {
        TagCategory.ARTIST: 59201,
        TagCategory.CHARACTER: 40931,
        TagCategory.GENERAL: 30782,
        TagCategory.COPYRIGHT: 9478,
        TagCategory.META: 390,
    }
    assert real_vocab.tags[0] == Tag("1girl", TagCategory.GENERAL, 6008644, ("1girls", "sole_female"))
    assert real_vocab.get("hatsune miku").category == TagCategory.CHARACTER
    assert real_vocab.get("/hm").name == "hatsune_miku"


def test_real_csv_fast_equals_naive_on_popular_subset(real_vocab):
    subset = TagVocabulary(real_vocab.tags[:4000])
    completer = TagCompleter(subset)
    rng = random.Random(0)
    queries = []
    for tag in rng.sample(subset.tags, 60):
        name = tag.name
        queries.append(name[: rng.randint(1, len(name))])
        typo = list(name)
        i = rng.randrange(len(typo))
        typo[i] = rng.choice("aeiourst_")
        queries.append("".join(typo)[: rng.randint(3, max(3, len(typo)))])
    for q in queries:
        assert completer.complete(q, 10) == complete_naive(subset, q, 10), q
    assert completer.complete("long ha", 1)[0].tag.name == "long_hair"


# ---- the shipped full Danbooru list (resources/danbooru_tags) and the tag builder's vocabulary -------------------
@pytest.fixture(scope="module")
def shipped() -> TagVocabulary:
    return load_shipped_vocabulary()  # held for the module: the loader hands out this one copy meanwhile


def test_shipped_list_has_the_full_danbooru_vocabulary_with_counts_and_aliases(shipped):
    assert len(shipped) == 140782
    assert Counter(t.category for t in shipped) == {
        TagCategory.ARTIST: 59201,
        TagCategory.CHARACTER: 40931,
        TagCategory.GENERAL: 30782,
        TagCategory.COPYRIGHT: 9478,
        TagCategory.META: 390,
    }
    # The README's example artist, which the 3,328-tag demo list lacks; its row in the CSV is
    # `ciloranko,1,204,"kipilus,yunkkker"`.
    assert shipped.get("ciloranko") == Tag("ciloranko", TagCategory.ARTIST, 204, ("kipilus", "yunkkker"))
    assert shipped.get("kipilus").name == "ciloranko"
    assert shipped.tags[0] == Tag("1girl", TagCategory.GENERAL, 6008644, ("1girls", "sole_female"))
    assert shipped.get("^_^") == Tag("^_^", TagCategory.GENERAL, 110141, ("^^",))
    assert (
        TagCompleter(shipped).complete("cilo", 1, categories=[TagCategory.ARTIST])[0].tag.name == "ciloranko"
    )
    assert load_shipped_vocabulary() is shipped  # one copy in memory while it is held


def test_shipped_pack_is_small_and_regenerates_from_the_csv(shipped):
    folder = shipped_tags_dir()
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    packed = (folder / PACK_NAME).read_bytes()
    assert manifest["rows"] == 140782 and manifest["bytes"] == len(packed)
    assert manifest["sha256"] == hashlib.sha256(packed).hexdigest()
    assert len(packed) < 0.35 * manifest["source"]["bytes"]  # 1.08 MB for the 3.52 MB CSV
    assert "a1111-sd-webui-tagcomplete" in manifest["origin"] and "MIT" in manifest["origin"]
    assert "Copyright (c) 2022 Dominik Reh" in (folder / "NOTICE.txt").read_text(encoding="utf-8")
    if not REAL_CSV.is_file():
        pytest.skip(f"real tag list not found at {REAL_CSV} (CI keeps ../shared beside the clone)")
    source = REAL_CSV.read_bytes()
    assert manifest["source"]["sha256"] == hashlib.sha256(source).hexdigest()
    real = TagVocabulary.from_csv(REAL_CSV)
    text = pack_text(real.tags).encode("utf-8")
    assert hashlib.sha256(text).hexdigest() == manifest["text_sha256"]  # the CSV packs to the shipped text
    assert shipped.tags == real.tags


def test_pack_is_deterministic_and_round_trips(tmp_path):
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(INLINE_CSV, encoding="utf-8")
    first = write_pack(csv_path, tmp_path / "a", origin="inline test list")
    # The same tags in another row order pack to the same bytes: the pack stores popularity order.
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("".join(reversed(INLINE_CSV.splitlines(keepends=True))), encoding="utf-8")
    second = write_pack(shuffled, tmp_path / "b", origin="inline test list")
    assert (tmp_path / "a" / PACK_NAME).read_bytes() == (tmp_path / "b" / PACK_NAME).read_bytes()
    assert first["sha256"] == second["sha256"] and first["text_sha256"] == second["text_sha256"]
    assert first["source"] != second["source"]  # the manifests differ in the source's hash only
    write_pack(csv_path, tmp_path / "c", origin="inline test list")
    for name in (PACK_NAME, MANIFEST_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    assert first["rows"] == 16 and first["categories"] == {
        "general": 10, "artist": 1, "character": 2, "copyright": 2, "meta": 1,
    }  # fmt: skip
    assert read_shipped_tags(tmp_path / "a") == TagVocabulary.from_csv_text(INLINE_CSV).tags
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [PACK_NAME, MANIFEST_NAME]  # no temp files


def test_pack_script_writes_and_checks(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pack_danbooru_tags", Path(__file__).resolve().parents[2] / "scripts" / "pack_danbooru_tags.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(INLINE_CSV, encoding="utf-8")
    out = tmp_path / "out"
    assert script.main(["--src", str(csv_path), "--out", str(out)]) == 0
    assert "16 tags" in capsys.readouterr().out
    assert script.main(["--src", str(csv_path), "--out", str(out), "--check"]) == 0
    csv_path.write_text(INLINE_CSV + "extra_tag,0,30,\n", encoding="utf-8")
    assert script.main(["--src", str(csv_path), "--out", str(out), "--check"]) == 1
    assert "differ from a fresh pack" in capsys.readouterr().err
    csv_path.write_text("broken,row\n", encoding="utf-8")
    assert script.main(["--src", str(csv_path), "--out", str(out)]) == 2
    assert "row 1" in capsys.readouterr().err
    assert script.main(["--src", str(tmp_path / "none.csv"), "--out", str(out)]) == 2


def test_damaged_or_foreign_packs_are_named_errors(tmp_path):
    csv_path = tmp_path / "tags.csv"
    csv_path.write_text(INLINE_CSV, encoding="utf-8")
    folder = tmp_path / "pack"
    write_pack(csv_path, folder, origin="inline test list")
    pack = folder / PACK_NAME
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(KxlError, match="damaged .*SHA-256") as err:
        read_shipped_tags(folder)
    assert str(pack) in str(err.value) and "reinstall" in str(err.value)
    (folder / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(KxlError, match="manifest cannot be read"):
        read_shipped_tags(folder)
    good = pack_text(TagVocabulary.from_csv_text(INLINE_CSV).tags)
    for text, message in [
        (good.replace("kxl-danbooru-tags 1", "something else 1"), "not a packed tag list"),
        (good.replace("kxl-danbooru-tags 1", "kxl-danbooru-tags 2"), "format '2'"),
        (good[: len(good) // 2], "truncated or damaged"),
        (good.replace("\n6008644\n", "\nmany\n"), r"row 1 \('1girl'\)"),
    ]:
        with pytest.raises(KxlError, match=message):
            unpack_tags(compress_pack(text), "t.xz")
    with pytest.raises(KxlError, match="not a packed tag list"):
        unpack_tags(b"plain bytes", "t.xz")
    with pytest.raises(KxlError, match="alias 'a,b'"):
        pack_text([Tag("x", TagCategory.GENERAL, 1, ("a,b",))])


def test_union_keeps_the_first_sources_category_and_count_and_fills_in_aliases():
    db_like = [Tag("1girl", TagCategory.GENERAL, 900), Tag("ciloranko", TagCategory.GENERAL, 5)]
    shipped = TagVocabulary.from_csv_text(INLINE_CSV + 'ciloranko,1,204,"kipilus,yunkkker"\n')
    union = TagVocabulary.union(db_like, shipped.tags)
    assert len(union) == 17
    assert union.get("1girl") == Tag("1girl", TagCategory.GENERAL, 900, ("1girls", "sole_female"))
    assert union.get("kipilus") == Tag("ciloranko", TagCategory.GENERAL, 5, ("kipilus", "yunkkker"))
    assert union.get("hatsune_miku") == shipped.get("hatsune_miku")  # only in the fallback


def test_builder_vocabulary_puts_workspace_tags_first_and_falls_back_on_the_shipped_list(shipped, tmp_path):
    assert builder_vocabulary(None) is shipped
    no_db = Workspace(root=tmp_path / "plain")
    assert builder_vocabulary(no_db) is shipped
    # A user workspace with its DB: the DB's categories and counts, shipped aliases and the tags it lacks.
    db = tmp_path / "user" / "danbooru2023.db"
    db.parent.mkdir()
    _make_db(db)
    user = builder_vocabulary(Workspace(root=db.parent, db="danbooru2023.db"))
    assert user.get("1girl") == Tag("1girl", TagCategory.GENERAL, 900, ("1girls", "sole_female"))
    assert user.get("kohaku_(artist)").count == 40
    assert user.get("ciloranko") == shipped.get("ciloranko")
    assert len(user) == len(shipped) + sum(1 for t in TagVocabulary.from_db(db) if t.name not in shipped)
    # A DB that cannot be read: completion still has the shipped list.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "danbooru2023.db").write_bytes(b"not a database" * 100)
    assert builder_vocabulary(Workspace(root=broken, db="danbooru2023.db")) is shipped
    # The demo: its own tag list (real counts, plus the meta tags the Danbooru snapshot lacks), then the rest.
    demo = builder_vocabulary(Workspace(root=tmp_path / "demo", kind="demo", db="danbooru/danbooru2023.db"))
    assert demo.get("commentary_request") == Tag("commentary_request", TagCategory.META, 3_400_000)
    assert demo.get("ciloranko").category == TagCategory.ARTIST
    assert len(demo) == len(shipped) + 8


def test_gil_free_sorts_equal_pythons_sort():
    rng = random.Random(1)
    # Long shared prefixes (past the 32 bytes numpy compares), non-ASCII, empty strings, duplicates.
    stems = ["", "a", "fate/grand_order_" * 3, "ré_", "z" * 40, "東方_"]
    strings = [
        rng.choice(stems) + "".join(rng.choice("ab_(é") for _ in range(rng.randint(0, 6)))
        for _ in range(30000)
    ]
    assert len(strings) >= NUMPY_MIN_ITEMS
    assert argsort_strings(strings) == sorted(range(len(strings)), key=strings.__getitem__)
    counts = [rng.randint(0, 3) for _ in strings]
    assert argsort_desc_int_then_string(counts, strings) == sorted(
        range(len(strings)), key=lambda i: (-counts[i], strings[i])
    )
    with_nul = strings + ["a\0"]
    assert argsort_strings(with_nul) == sorted(range(len(with_nul)), key=with_nul.__getitem__)


def test_full_list_index_built_with_numpy_sorts_equals_the_plain_python_build(shipped, monkeypatch):
    fast = TagCompleter(shipped)
    monkeypatch.setattr(string_sort, "NUMPY_MIN_ITEMS", 10**9)  # every sort in plain Python
    plain = TagCompleter(shipped)
    assert fast._sorted_keys == plain._sorted_keys and fast._word_keys == plain._word_keys
    assert fast._sorted_eids.tolist() == plain._sorted_eids.tolist()
    assert fast._word_eids.tolist() == plain._word_eids.tolist()
    assert (
        TagVocabulary(shipped.tags[::-1]).tags == shipped.tags
    )  # popularity order, whatever the input order
