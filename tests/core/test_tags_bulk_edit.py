"""Bulk tag edits: exact captions after add / remove / replace, the files and manifest written, the undo journal
(exact bytes back, refusal after an outside change, cancel half-way then undo) and the `kxl tags edit/undo` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer_core.cli import main as kxl_main
from trainer_core.errors import Cancelled, KxlError
from trainer_core.progress import CancelToken, Progress
from trainer_core.tags.bulk_edit import (
    TagEdit,
    apply_bulk_edit,
    edit_caption,
    edit_dataset,
    preview_bulk_edit,
)
from trainer_core.tags.dataset_index import open_dataset
from trainer_core.tags.edit_journal import UNDO_DIR, last_edit, undo_last

HEAD = "1girl, rice shower (umamusume), |||long hair, solo, smile"


@pytest.mark.parametrize(
    ("caption", "edit", "expected", "counts"),
    [
        # add: flexible part by default, at its end; head = just before |||
        (HEAD, TagEdit("add", "blue_eyes"), HEAD + ", blue eyes", (1, 0, 0)),
        (
            HEAD,
            TagEdit("add", "kohaku_(artist)", head=True),
            "1girl, rice shower (umamusume), kohaku (artist), |||long hair, solo, smile",
            (1, 0, 0),
        ),
        (", |||solo", TagEdit("add", "1boy", head=True), "1boy, |||solo", (1, 0, 0)),
        ("a, b", TagEdit("add", "smile"), "a, b, smile", (1, 0, 0)),
        ("a, b", TagEdit("add", "smile", head=True), "smile, |||a, b", (1, 0, 0)),
        ("", TagEdit("add", "smile"), "smile", (1, 0, 0)),
        ("a, |||b, |||c", TagEdit("add", "d"), "a, |||b, d, |||c", (1, 0, 0)),
        ("a, |||b", TagEdit("add", "o_o"), "a, |||b, o_o", (1, 0, 0)),  # 3 chars: underscore kept
        # already there, in any part and any spelling: not duplicated
        (HEAD, TagEdit("add", "Long_Hair"), HEAD, (0, 0, 0)),
        (HEAD, TagEdit("add", "Rice_Shower_\\(Umamusume\\)"), HEAD, (0, 0, 0)),
        (HEAD, TagEdit("add", "1girl", head=False), HEAD, (0, 0, 0)),
        # remove: every occurrence, either part; ||| stays, HakuBooru's ", |||" for an empty head
        (HEAD, TagEdit("remove", "solo"), "1girl, rice shower (umamusume), |||long hair, smile", (0, 1, 0)),
        (
            HEAD,
            TagEdit("remove", "rice_shower_\\(umamusume\\)"),
            "1girl, |||long hair, solo, smile",
            (0, 1, 0),
        ),
        ("1girl, |||solo", TagEdit("remove", "1GIRL"), ", |||solo", (0, 1, 0)),
        ("1girl, |||solo", TagEdit("remove", "solo"), "1girl, |||", (0, 1, 0)),
        ("a, |||b, a, c,a", TagEdit("remove", "a"), ", |||b, c", (0, 3, 0)),
        ("a, |||b, |||c", TagEdit("remove", "c"), "a, |||b, |||", (0, 1, 0)),
        ("a, b", TagEdit("remove", "a"), "b", (0, 1, 0)),
        (HEAD, TagEdit("remove", "long"), HEAD, (0, 0, 0)),  # whole tags only
        # replace: in place, in either part
        (
            HEAD,
            TagEdit("replace", "long_hair", "Short Hair"),
            "1girl, rice shower (umamusume), |||Short Hair, solo, smile",
            (0, 0, 1),
        ),
        (HEAD, TagEdit("replace", "1girl", "2girls"), HEAD.replace("1girl", "2girls"), (0, 0, 1)),
        # the new tag is there already (after or before the old one): the old one is dropped
        (
            "1girl, |||long hair, solo, short hair",
            TagEdit("replace", "long hair", "short_hair"),
            "1girl, |||solo, short hair",
            (0, 1, 0),
        ),
        ("solo, |||long hair", TagEdit("replace", "long hair", "solo"), "solo, |||", (0, 1, 0)),
        # the old tag twice: the first becomes the new one, the second goes
        ("a, |||old, b, old", TagEdit("replace", "old", "new"), "a, |||new, b", (0, 1, 1)),
        # same tag, other spelling: re-spelled
        ("a, |||long_hair", TagEdit("replace", "long hair", "long hair"), "a, |||long hair", (0, 0, 1)),
        ("a, |||long hair", TagEdit("replace", "long_hair", "long hair"), "a, |||long hair", (0, 0, 0)),
    ],
)
def test_edit_caption_exact(caption, edit, expected, counts):
    change = edit_caption(caption, edit)
    assert change.text == expected
    assert (change.added, change.removed, change.replaced) == counts
    assert change.changed == (expected != caption)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "  "), "tag is empty"),
        (("add", "a, b"), "contains a comma"),
        (("remove", "a|||b"), "contains '|||'"),
        (("replace", "a", ""), "replacement tag is empty"),
        (("rename", "a"), "unknown tag edit 'rename'"),
    ],
)
def test_bad_edits_are_refused(args, message):
    with pytest.raises(KxlError, match=message):
        TagEdit(*args)
    with pytest.raises(KxlError, match="only an added tag"):
        TagEdit("remove", "a", head=True)


# -- files -------------------------------------------------------------------------------------------------------
CAPTION_FILES = {
    "2_set/1.txt": b"1girl, |||long hair, solo, smile",
    "2_set/2.txt": "\ufeff2girls, |||long_hair, café, smile\r\nsecond line stays\n".encode(),
    "2_set/3.txt": b", |||solo, blue eyes",
    "2_set/4.txt": b"\xff\xfe not utf-8, solo",
}


def _write_dataset(root: Path) -> Path:
    for rel, data in CAPTION_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.with_suffix(".png").write_bytes(b"")  # never decoded: the edit reads captions only
    (root / "2_set" / "5.png").write_bytes(b"")  # no caption file
    records = [
        {"id": 1, "file": "2_set/1.png", "caption": "1girl, |||long hair, solo, smile", "rating": "safe"},
        {"id": 2, "file": "2_set/2.png", "caption": "2girls, |||long_hair, café, smile"},
        {"id": 3, "file": "2_set/3.png", "caption": ", |||solo, blue eyes"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    lines.insert(1, "{not json\n")  # kept byte for byte
    (root / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and UNDO_DIR not in p.parts
    }


def _manifest_captions(root: Path) -> dict[int, str]:
    out = {}
    for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if line.startswith("{not"):
            continue
        record = json.loads(line)
        out[record["id"]] = record["caption"]
    return out


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "ds")


def test_remove_writes_captions_and_manifest_then_undo_restores_bytes(dataset):
    original = _snapshot(dataset)
    index = open_dataset(dataset)
    summary = edit_dataset(index, TagEdit("remove", "Long Hair"))

    assert (dataset / "2_set/1.txt").read_bytes() == b"1girl, |||solo, smile"
    # BOM, CRLF and the second line survive; only the caption line is rewritten.
    assert (
        dataset / "2_set/2.txt"
    ).read_bytes() == "\ufeff2girls, |||café, smile\r\nsecond line stays\n".encode()
    assert (dataset / "2_set/3.txt").read_bytes() == CAPTION_FILES["2_set/3.txt"]
    assert (dataset / "2_set/4.txt").read_bytes() == CAPTION_FILES["2_set/4.txt"]
    assert _manifest_captions(dataset) == {
        1: "1girl, |||solo, smile",
        2: "2girls, |||café, smile",
        3: ", |||solo, blue eyes",
    }
    manifest_lines = (dataset / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert manifest_lines[1] == "{not json"
    assert json.loads(manifest_lines[0])["rating"] == "safe"  # other keys of an edited record kept
    assert (
        manifest_lines[3] == original["manifest.jsonl"].decode().splitlines()[3]
    )  # untouched line: same bytes

    assert (summary.files_considered, summary.files_changed, summary.tags_removed) == (5, 2, 2)
    assert summary.manifest_updated
    assert summary.skipped == [
        "2_set/4.txt: not UTF-8 (bad byte at offset 0)",
        "2_set/5.txt: no caption file",
    ]
    assert summary.journal == dataset / UNDO_DIR / "1.jsonl"
    assert summary.describe() == 'remove "Long Hair": 2 of 5 caption(s) changed (2 tag(s) removed); 2 skipped'
    info = last_edit(dataset)
    assert (info.number, info.description, info.files) == (
        1,
        'remove "Long Hair"',
        3,
    )  # 2 captions + manifest

    # The re-read index agrees with the files (what the Tags tab shows after an edit).
    assert open_dataset(dataset).images_with_tag("long hair").tolist() == []

    result = undo_last(dataset)
    assert (result.files_restored, result.files_already_old, result.captions_restored) == (3, 0, 2)
    # said as the edit was: in captions ("2 captions changed" -> "2 restored"), the manifest mentioned apart
    assert result.describe().endswith(": 2 caption(s) restored (and 1 dataset file(s))")
    assert _snapshot(dataset) == original
    assert not (dataset / UNDO_DIR).exists() and last_edit(dataset) is None
    with pytest.raises(KxlError, match="no tag edit to undo"):
        undo_last(dataset)


def test_selection_only_and_undo_is_last_in_first_out(dataset):
    original = _snapshot(dataset)
    index = open_dataset(dataset)
    assert [e.id for e in index.entries] == ["1", "2", "3", "4", "5"]
    first = edit_dataset(index, TagEdit("add", "smile", head=True), entries=[0, 2])
    assert first.files_changed == 1  # entry 0 has smile already (not duplicated); entry 2 gains it
    assert (dataset / "2_set/3.txt").read_bytes() == b"smile, |||solo, blue eyes"
    after_first = _snapshot(dataset)
    second = edit_dataset(open_dataset(dataset), TagEdit("replace", "solo", "1boy"))
    assert second.files_changed == 2 and second.tags_replaced == 2
    assert (dataset / "2_set/3.txt").read_bytes() == b"smile, |||1boy, blue eyes"
    assert last_edit(dataset).number == 2

    undo_last(dataset)
    assert _snapshot(dataset) == after_first
    undo_last(dataset)
    assert _snapshot(dataset) == original


def test_nothing_to_change_writes_no_journal(dataset):
    summary = edit_dataset(open_dataset(dataset), TagEdit("remove", "no such tag"))
    assert summary.files_changed == 0 and summary.journal is None
    assert not (dataset / UNDO_DIR).exists()


def test_undo_refused_after_an_outside_change(dataset):
    edit_dataset(open_dataset(dataset), TagEdit("add", "highres"))
    edited = _snapshot(dataset)
    (dataset / "2_set/3.txt").write_bytes(b", |||solo, blue eyes, highres, hand edit")
    with pytest.raises(KxlError) as err:
        undo_last(dataset)
    assert str(dataset / "2_set/3.txt") in str(err.value)
    assert "changed since the tag edit" in str(err.value)
    # Nothing was restored: every other file is still as the edit left it, and the journal is still there.
    now = _snapshot(dataset)
    assert {k for k in now if now[k] != edited[k]} == {"2_set/3.txt"}
    assert last_edit(dataset) is not None


def test_cancel_half_way_leaves_old_or_new_and_undo_restores(dataset):
    original = _snapshot(dataset)
    token = CancelToken()

    def cancel_after_first_write(event) -> None:
        if event.message.startswith("writing") and event.done == 1:
            token.cancel()

    progress = Progress(callback=cancel_after_first_write, cancel_token=token, min_interval_s=0.0)
    with pytest.raises(Cancelled):
        apply_bulk_edit(
            dataset, ["2_set/1.txt", "2_set/2.txt", "2_set/3.txt"], TagEdit("add", "blue_eyes"), progress
        )
    assert (dataset / "2_set/1.txt").read_bytes() == b"1girl, |||long hair, solo, smile, blue eyes"
    assert (dataset / "2_set/2.txt").read_bytes() == CAPTION_FILES["2_set/2.txt"]  # never written
    # The manifest follows the one caption written, not the planned edit.
    assert _manifest_captions(dataset)[1] == "1girl, |||long hair, solo, smile, blue eyes"
    assert _manifest_captions(dataset)[2] == "2girls, |||long_hair, café, smile"
    assert not list(dataset.rglob("*.part"))
    assert last_edit(dataset).files == 2  # the written caption + the manifest

    result = undo_last(dataset)
    assert result.files_restored == 2
    assert _snapshot(dataset) == original


def test_undo_after_a_crash_between_journal_and_writes(dataset, monkeypatch):
    """A journal listing a file that was never written (the disk filled up mid-edit): it counts as old."""
    import trainer_core.tags.bulk_edit as bulk_edit

    original = _snapshot(dataset)
    calls = []

    def write_one_then_fail(path, data):
        if len(calls) == 1:
            raise OSError("disk full")
        calls.append(path)
        Path(path).write_bytes(data)

    monkeypatch.setattr(bulk_edit, "atomic_write_bytes", write_one_then_fail)
    with pytest.raises(OSError, match="disk full"):
        edit_dataset(open_dataset(dataset), TagEdit("remove", "solo"))
    monkeypatch.undo()
    # 1.txt was written, 3.txt failed; fixing the manifest up failed too (same full disk): the journal lists
    # 1.txt and the manifest, which is still old.
    assert calls == [dataset / "2_set/1.txt"]
    result = undo_last(dataset)
    assert (result.files_restored, result.files_already_old) == (1, 1)
    assert _snapshot(dataset) == original


def test_failed_write_keeps_manifest_in_line(dataset, monkeypatch):
    import trainer_core.tags.bulk_edit as bulk_edit

    original = _snapshot(dataset)
    real_write = bulk_edit.atomic_write_bytes

    def fail_on_caption_3(path, data):
        if Path(path).name == "3.txt":
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(bulk_edit, "atomic_write_bytes", fail_on_caption_3)
    with pytest.raises(OSError, match="disk full"):
        edit_dataset(open_dataset(dataset), TagEdit("remove", "solo"))
    monkeypatch.undo()
    assert _manifest_captions(dataset) == {
        1: "1girl, |||long hair, smile",
        2: "2girls, |||long_hair, café, smile",
        3: ", |||solo, blue eyes",
    }
    assert last_edit(dataset).files == 2
    assert undo_last(dataset).files_restored == 2
    assert _snapshot(dataset) == original


def test_preview_counts_and_samples(dataset):
    index = open_dataset(dataset)
    preview = preview_bulk_edit(index, TagEdit("remove", "long_hair"))
    assert (preview.considered, preview.changed) == (5, 2)
    assert preview.samples[0] == ("2_set/1.png", "1girl, |||long hair, solo, smile", "1girl, |||solo, smile")
    # add: images that lack the tag and have a caption file (4 is unreadable, 5 has none -> their caption is "")
    add = preview_bulk_edit(index, TagEdit("add", "solo"), entries=[0, 1, 2], samples=1)
    assert (add.considered, add.changed) == (3, 1)
    assert add.samples == [
        ("2_set/2.png", "2girls, |||long_hair, café, smile", "2girls, |||long_hair, café, smile, solo")
    ]
    assert add.describe() == "1 of 3 caption(s) would change"


def test_cli_edit_and_undo(dataset, capsys):
    original = _snapshot(dataset)
    assert (
        kxl_main(
            ["tags", "edit", str(dataset), "--replace", "long hair", "very_long_hair", "--filter", "1girl"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(
        'replace "long hair" with "very long hair": 1 of 1 caption(s) changed (1 tag(s) replaced)'
    )
    assert f"undo with: kxl tags undo {dataset}" in out
    assert (dataset / "2_set/1.txt").read_bytes() == b"1girl, |||very long hair, solo, smile"
    assert (dataset / "2_set/2.txt").read_bytes() == CAPTION_FILES["2_set/2.txt"]

    assert kxl_main(["tags", "edit", str(dataset), "--add", "x", "--head", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith('add "x" (fixed head): 3 of 5 caption(s) would change')
    assert kxl_main(["tags", "edit", str(dataset), "--remove", "solo", "--head"]) == 2
    assert "--head only goes with --add" in capsys.readouterr().err

    assert kxl_main(["tags", "undo", str(dataset)]) == 0
    assert capsys.readouterr().out.startswith(
        'undid replace "long hair" with "very long hair": 1 caption(s) restored (and 1 dataset file(s))'
    )
    assert _snapshot(dataset) == original
    assert kxl_main(["tags", "undo", str(dataset)]) == 2
    assert "no tag edit to undo" in capsys.readouterr().err
