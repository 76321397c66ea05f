"""Tag builder with the shipped Danbooru tag list (issue 18 item 6), driven by typing like a user: `ciloranko`
completes as an artist in a workspace without a DB, a tag in no list gets a visible "unknown" mark, editing the
prompt text keeps an unknown artist among the artists, and loading the 140k-tag list does not freeze the window.

Widgets are found by type (ChipField by its key, the prompt box by its placeholder), not by the tab's attribute
names, so these tests follow the tab through layout refactors."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QPlainTextEdit  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from user_input import type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.jobs import Job, quiet_gc, running_jobs  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.generate import GenerateTab  # noqa: E402
from kxl_gui.widgets.tag_builder_chips import UNKNOWN_MARK, ChipField  # noqa: E402
from trainer_core.tags import TagCategory, TagVocabulary  # noqa: E402
from trainer_core.tags.completion import TagCompleter  # noqa: E402
from trainer_core.tags.shipped_vocabulary import read_shipped_tags  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402

STALL_BOUND_MS = 150  # the bound the Generate tab's other stall tests use


@pytest.fixture
def tab(qtbot, tmp_path):
    """The Generate tab on a user workspace that has no metadata DB: the builder falls back on the shipped list."""
    ws = Workspace(root=tmp_path / "ws", name="no-db")
    ws.save()
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    context.workspace = ws
    tab = GenerateTab(context)
    qtbot.addWidget(tab)
    tab.resize(1280, 900)
    tab.show()
    qtbot.waitExposed(tab)
    fields = chip_fields(tab)
    qtbot.waitUntil(lambda: fields["artists"].completer_source is not None, timeout=60_000)
    return tab


def chip_fields(tab) -> dict[str, ChipField]:
    return {field.key: field for field in tab.findChildren(ChipField)}


def prompt_box(tab) -> QPlainTextEdit:
    (box,) = [e for e in tab.findChildren(QPlainTextEdit) if e.placeholderText().startswith("1girl")]
    return box


def chips(field: ChipField) -> list[tuple[str, float]]:
    return [(chip.value.name, chip.value.weight) for chip in field.chips]


def press_enter(field: ChipField) -> None:
    """Enter where a user's key goes: to the completion popup while it is open (Qt routes keys there), else to
    the entry."""
    QTest.keyClick(QApplication.activePopupWidget() or field.entry, Qt.Key.Key_Return)
    QApplication.processEvents()  # the entry is cleared after the completer has written into it


def type_tag(field: ChipField, text: str) -> None:
    """Type into the field's entry and press Enter, with the completion popup open as it would be."""
    type_into(field.entry, text)
    press_enter(field)


def test_ciloranko_completes_as_an_artist_without_a_workspace_db(qtbot, tab):
    artists = chip_fields(tab)["artists"]
    type_into(artists.entry, "cilo")
    shown = artists._model.stringList()
    assert shown[0] == "ciloranko   (204)"  # the README's example artist, 204 posts in the Danbooru list
    press_enter(artists)
    assert chips(artists) == [("ciloranko", 1.0)] and artists.entry.text() == ""
    chip = artists.chips[0]
    assert not chip.unknown and chip.badge.text() == "204 · try 1.5-2.5"
    qtbot.waitUntil(chip.badge.isVisible, timeout=2000)
    assert "ciloranko" in prompt_box(tab).toPlainText()
    # Its aliases complete to it too, and only in the artist field.
    type_into(artists.entry, "kipilus")
    assert artists._model.stringList()[0] == "kipilus → ciloranko   (204)"
    general = chip_fields(tab)["general"]
    assert all("ciloranko" not in name for _, name in general.completions("cilorank"))
    assert tab_vocabulary_category(artists, "ciloranko") == TagCategory.ARTIST


def tab_vocabulary_category(field: ChipField, name: str) -> TagCategory:
    return field.completer_source.vocabulary.get(name).category


def test_unknown_artist_is_marked_and_stays_an_artist_when_the_prompt_is_edited(qtbot, tab):
    fields = chip_fields(tab)
    type_tag(fields["artists"], "my original artist")
    type_tag(fields["general"], "long hair")
    assert chips(fields["artists"]) == [("my_original_artist", 1.0)]  # kept as typed, not a look-alike artist
    artist = fields["artists"].chips[0]
    assert artist.unknown and artist.badge.text() == UNKNOWN_MARK
    qtbot.waitUntil(artist.badge.isVisible, timeout=2000)
    assert "neither" in artist.badge.toolTip() and "my original artist" in artist.badge.toolTip()
    known = fields["general"].chips[0]
    assert not known.unknown and known.badge.text() == "4.4M"  # long_hair: 4,350,743 posts
    box = prompt_box(tab)
    assert box.toPlainText() == "my original artist, long hair"

    # The user rewrites the prompt: emphasis on the artist, one more general tag.
    type_into(box, "(my original artist:1.3), long hair, smile")
    qtbot.waitUntil(lambda: "smile" in [n for n, _ in chips(fields["general"])], timeout=5000)
    assert chips(fields["artists"]) == [("my_original_artist", 1.3)]
    assert chips(fields["general"]) == [("long_hair", 1.0), ("smile", 1.0)]
    assert fields["artists"].chips[0].unknown
    assert box.toPlainText() == "(my original artist:1.3), long hair, smile"  # the text stays as typed

    # A tag typed only in the text, in no list, has no earlier field to keep: it lands in General, marked.
    type_into(box, "(my original artist:1.3), long hair, smile, zzqx unheard tag")
    qtbot.waitUntil(lambda: len(fields["general"].chips) == 3, timeout=5000)
    assert chips(fields["artists"]) == [("my_original_artist", 1.3)]
    assert fields["general"].chips[2].value.name == "zzqx_unheard_tag" and fields["general"].chips[2].unknown


def test_chips_typed_before_the_vocabulary_arrives_are_marked_when_it_does(qtbot):
    field = ChipField("artists", "Artists", (TagCategory.ARTIST,))
    qtbot.addWidget(field)
    field.show()
    qtbot.waitExposed(field)
    type_tag(field, "ciloranko")
    type_tag(field, "nobody knows me")
    # No vocabulary yet: neither a count nor an "unknown" mark (nothing is known or unknown yet).
    assert [(c.unknown, c.badge.isVisible()) for c in field.chips] == [(False, False), (False, False)]
    vocabulary = TagVocabulary.from_csv_text('ciloranko,1,204,"kipilus,yunkkker"\n')
    field.count_lookup = lambda name: tag.count if (tag := vocabulary.get(name)) else None
    assert [c.badge.text() for c in field.chips] == ["204 · try 1.5-2.5", UNKNOWN_MARK]
    assert [c.unknown for c in field.chips] == [False, True]
    qtbot.waitUntil(lambda: all(c.badge.isVisible() for c in field.chips), timeout=2000)  # once laid out


def test_loading_the_full_tag_list_in_a_worker_keeps_the_window_responsive(qtbot):
    """The heavy part of the tab's vocabulary job (unpack ~140k tags, build the vocabulary and the completion
    index, as in the tab: in a Job, collector paused) while the GUI thread ticks."""
    from PySide6.QtWidgets import QLabel

    window = QLabel("tag builder")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)

    def load(_progress):
        with quiet_gc():
            vocabulary = TagVocabulary(read_shipped_tags())
            return vocabulary, TagCompleter(vocabulary)

    # Only this load may run while the window is watched: a tab of an earlier test may still be warming up the
    # generation engine (importing torch holds the GIL for a while), which is not what this test measures.
    qtbot.waitUntil(lambda: not running_jobs(), timeout=300_000)
    results: list = []
    job = Job(load, name="Load tag vocabulary")
    job.succeeded.connect(results.append)
    watch = StallWatch().start()
    job.start()
    qtbot.waitUntil(lambda: bool(results), timeout=120_000)
    watch.stop()
    vocabulary, completer = results[0]
    assert len(vocabulary) == 140_782
    assert completer.complete("cilo", 1, categories=[TagCategory.ARTIST])[0].tag.name == "ciloranko"
    print(watch.report())
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()
