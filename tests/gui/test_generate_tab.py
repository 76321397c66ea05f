"""Generate tab (qtbot, offscreen): tag widgets -> A1111 prompt, text flowing back into chips, generation on the
tiny model into the gallery, parameters restored from a PNG, cross-tab requests."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.generate import GenerateTab, size_presets  # noqa: E402
from kxl_gui.widgets.generate_prompt import ChipValue, PromptFields, fields_from_text  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    import trainer_core.hf_quiet  # noqa: F401
    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("gen-ws")
    save_single_file(build_tiny_components(0), root / "models" / "base.safetensors", dtype="fp16")
    ws = Workspace(root=root, name="gen", checkpoints={"base": "models/base.safetensors"})
    ws.save()
    return ws


@pytest.fixture
def tab(qtbot, workspace, tmp_path):
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    context.workspace = workspace
    tab = GenerateTab(context)
    qtbot.addWidget(tab)
    tab.resize(1280, 800)
    qtbot.waitUntil(lambda: tab.vocabulary is not None and tab.tokenizer is not None, timeout=30000)
    return tab


def _type_and_enter(qtbot, field, text: str) -> None:
    field.entry.setText(text)
    field.entry.textEdited.emit(text)
    field._completer.popup().hide()
    field.entry.returnPressed.emit()


def test_tag_widgets_build_the_card_ordered_prompt(qtbot, tab):
    # Entered out of order on purpose: the text follows the card's order, not the order of typing.
    _type_and_enter(qtbot, tab.fields["general"], "long hair")
    _type_and_enter(qtbot, tab.fields["character"], "hatsune mi")  # completion, character category only
    _type_and_enter(qtbot, tab.fields["count"], "1girl")
    _type_and_enter(qtbot, tab.fields["series"], "vocaloid")
    tab.special["quality"].setCurrentIndex(tab.special["quality"].findData("masterpiece"))
    tab.special["date"].setCurrentIndex(tab.special["date"].findData("newest"))
    tab.fields["character"].chips[0].weight.setValue(1.5)
    assert (
        tab.prompt_edit.toPlainText() == "1girl, (hatsune miku:1.5), vocaloid, masterpiece, newest, long hair"
    )
    assert tab.token_label.text().startswith("tokens ") and tab.token_label.text().endswith("/75")
    chip = tab.fields["character"].chips[0]
    assert chip.badge.text() == "107k"  # 106,634 posts in the shipped tag list
    # Removing a chip rewrites the text.
    tab.fields["general"].chips[0].remove_requested.emit(tab.fields["general"].chips[0])
    assert tab.prompt_edit.toPlainText().endswith("masterpiece, newest")


def test_character_field_completes_only_characters(tab):
    names = [name for _, name in tab.fields["character"].completions("touhou")]
    assert names and all(tab.vocabulary.get(n).category.name == "CHARACTER" for n in names)
    series = [name for _, name in tab.fields["series"].completions("touhou")]
    assert series[0] == "touhou"


def test_rare_tags_get_the_emphasis_suggestion_badge(tab):
    tab.fields["artists"].add_tag("gmkj")  # 998 posts: "may work with emphasis 1.5-2.5"
    chip = tab.fields["artists"].chips[0]
    assert chip.badge.text() == "998 · try 1.5-2.5" and chip.suggested


def test_edited_text_flows_back_into_chips(qtbot, tab):
    tab.prompt_edit.setPlainText("2girls, (long hair:1.8), masterpiece, rice shower \\(umamusume\\)")
    qtbot.waitUntil(lambda: tab.sync_label.text() == "chips updated from the text", timeout=3000)
    assert [c.value.name for c in tab.fields["count"].chips] == ["2girls"]
    assert [(c.value.name, c.value.weight) for c in tab.fields["general"].chips][0] == ("long_hair", 1.8)
    assert tab.special["quality"].currentData() == "masterpiece"
    # The text itself is left exactly as typed.
    assert (
        tab.prompt_edit.toPlainText() == "2girls, (long hair:1.8), masterpiece, rice shower \\(umamusume\\)"
    )
    tab.prompt_edit.setPlainText("a BREAK b")
    qtbot.waitUntil(lambda: tab.sync_label.text().startswith("text only"), timeout=3000)


def test_prompt_fields_round_trip_without_widgets():
    fields = PromptFields()
    fields.chips["character"] = [ChipValue("rice_shower_(umamusume)", 2.0)]
    fields.chips["general"] = [ChipValue("^_^"), ChipValue("long_hair", 0.8)]
    fields.special["rating"] = "safe"
    text = fields.to_text()
    assert text == "(rice shower \\(umamusume\\):2), safe, ^_^, (long hair:0.8)"
    back = fields_from_text(text, None)
    assert back.chips["general"] == [
        ChipValue("rice_shower_(umamusume)", 2.0),
        ChipValue("^_^"),
        ChipValue("long_hair", 0.8),
    ]  # fmt: skip  (no vocabulary: all general)
    assert back.special["rating"] == "safe"


def test_generate_into_gallery_and_restore_from_png(qtbot, tab, workspace):
    tab.prompt_edit.setPlainText("1girl, (solo:1.5)")
    tab.negative_edit.setPlainText("lowres")
    tab.width_box.setValue(64)
    tab.height_box.setValue(64)
    tab.steps.setValue(2)
    tab.seed.setValue(5)
    assert tab.model_path() == workspace.checkpoint_path("base")
    with qtbot.waitSignal(tab.generation_finished, timeout=60000):
        tab.start_generation()
    assert tab.gallery.count() == 1 and tab.generate_button.isEnabled()
    assert "Seed: 5" in tab.params_view.toPlainText() and "Size: 64x64" in tab.params_view.toPlainText()
    png = workspace.outputs_path / "generate" / "00000-5.png"
    assert png.is_file()
    tab.steps.setValue(30)
    tab.seed.setValue(-1)
    tab.prompt_edit.setPlainText("something else")
    tab.restore_from_image(png)
    assert (tab.steps.value(), int(tab.seed.value()), tab.prompt_edit.toPlainText()) == (
        2,
        5,
        "1girl, (solo:1.5)",
    )
    assert tab.emphasis.currentText() == "No norm" and not tab.hires_group.isChecked()


def test_bad_input_keeps_the_tab_usable(qtbot, tab, tmp_path):
    tab.set_model(tmp_path / "missing.safetensors")
    tab.prompt_edit.setPlainText("cat")
    with qtbot.waitSignal(tab.generation_failed, timeout=30000) as blocker:
        tab.start_generation()
    assert "base model not found" in blocker.args[0]
    assert tab.error_label.isVisibleTo(tab) and tab.generate_button.isEnabled()
    plain = tmp_path / "plain.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(plain)
    tab.restore_from_image(plain)
    assert tab.error_label.text() == "plain.png has no generation parameters"


def test_cross_tab_requests(tab, tmp_path):
    lokr = tmp_path / "my_lokr.safetensors"
    tab.context.request("generate.add_lokr", lokr)
    tab.context.request("generate.add_lokr", lokr)  # the same file twice is one row
    assert tab.lokrs() == [(lokr, 1.0)]
    model = tmp_path / "merged.safetensors"
    tab.context.request("generate.set_model", model)
    assert tab.model_path() == model


def test_size_presets_are_the_card_buckets():
    presets = size_presets()
    assert len(presets) == 97 and (1024, 1024) in presets and (832, 1216) in presets


def test_size_preset_and_spin_boxes_stay_in_sync(tab):
    tab.width_box.setValue(1024)
    tab.height_box.setValue(1024)
    assert tab.size_preset.currentData() == "1024x1024"
    tab.height_box.setValue(1000)
    assert tab.size_preset.currentText() == "custom"
    index = tab.size_preset.findData("832x1216")
    tab.size_preset.setCurrentIndex(index)
    tab.size_preset.activated.emit(index)
    assert (tab.width_box.value(), tab.height_box.value()) == (832, 1216)
