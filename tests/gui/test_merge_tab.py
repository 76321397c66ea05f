"""Merge tab driven with qtbot on the demo workspace: defaults, preset, Run == engine, cancel and bad input."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from user_input import click  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs import merge as merge_tab  # noqa: E402
from trainer_core.demo import init_demo  # noqa: E402
from trainer_core.hashing import short_hash  # noqa: E402
from trainer_core.merge.blocks import BLOCKS  # noqa: E402
from trainer_core.merge.engine import (
    RAM_BASELINE,  # noqa: E402
    run_merge,  # noqa: E402
)
from trainer_core.merge.recipe import kohaku_xl_delta_recipe  # noqa: E402
from trainer_core.models.checkpoint_info import describe_checkpoint  # noqa: E402
from trainer_core.models.sdxl_layout import UNET_PREFIX  # noqa: E402
from trainer_core.workspace_summary import format_bytes  # noqa: E402

REVERTS = ("te1_token", "te1_position", "te2_token", "te2_position")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return init_demo(tmp_path_factory.mktemp("merge-demo") / "ws", posts=40, seed=0, images=False)


@pytest.fixture
def context(tmp_path, demo):
    ctx = AppContext(AppSettings(tmp_path / "settings" / "gui.ini"))
    ctx.set_workspace(demo)
    return ctx


@pytest.fixture
def tab(qtbot, context):
    widget = merge_tab.create_tab(context)
    qtbot.addWidget(widget)
    widget.resize(1180, 900)
    widget.show()
    return widget


def wait_plan(qtbot, tab) -> merge_tab.PlanOutcome:
    qtbot.waitUntil(lambda: tab.outcome is not None, timeout=20000)
    return tab.outcome


def test_tab_metadata():
    assert merge_tab.TAB_TITLE == "Merge" and merge_tab.TAB_ORDER == 30


def test_pickers_default_to_the_workspace_checkpoints_and_describe_them(qtbot, tab, demo):
    gamma, beta, original = (demo.checkpoint_path(r) for r in ("gamma", "beta", "original"))
    assert [r.picker.path for r in tab.rows] == [gamma, beta]
    assert tab.original_picker.path == original
    assert tab.output_path == demo.models_path / "kohaku-xl-delta-base.safetensors"
    info = describe_checkpoint(gamma)
    text = tab.rows[0].picker.info_label.text()
    for part in (
        "single-file",
        info.arch,  # kxl-demo: the trained demo model
        "fp16",
        f"{info.tensor_count:,} tensors",
        format_bytes(info.size_bytes),
    ):
        assert part in text
    # The short hash arrives from a worker job and lands in the same line.
    qtbot.waitUntil(lambda: tab.rows[0].picker.short_hash == short_hash(gamma), timeout=20000)
    assert f"hash {short_hash(gamma)}" in tab.rows[0].picker.info_label.text()
    outcome = wait_plan(qtbot, tab)
    assert outcome.error is None and tab.run_button.isEnabled()
    assert outcome.plan.out_bytes > 0
    assert format_bytes(outcome.plan.out_bytes) in tab.estimate_label.text()
    assert (
        format_bytes(outcome.plan.peak_ram_bytes - RAM_BASELINE) in tab.estimate_label.text()
    )  # the merge's own


def test_preset_sets_half_and_half_and_all_four_reverts(qtbot, tab, demo):
    tab.rows[1].weight.spin.setValue(0.3)  # linked: A follows as 1 - B
    assert [r.weight.value() for r in tab.rows] == [0.7, 0.3]
    tab.revert_boxes["te2_position"].setChecked(False)
    assert tab.preset_combo.currentData() == merge_tab.PRESET_CUSTOM
    recipe = tab.build_recipe()
    assert recipe.weights == [0.7, 0.3] and recipe.revert == ["te1_token", "te1_position", "te2_token"]

    index = tab.preset_combo.findData(merge_tab.PRESET_KXL)
    tab.preset_combo.setCurrentIndex(index)
    tab.preset_combo.activated.emit(index)
    assert [r.weight.value() for r in tab.rows] == [0.5, 0.5]
    assert all(tab.revert_boxes[name].isChecked() for name in REVERTS)
    gamma, beta, original = (demo.checkpoint_path(r) for r in ("gamma", "beta", "original"))
    assert tab.build_recipe() == kohaku_xl_delta_recipe(gamma, beta, original)


def test_block_weights_panel_sets_per_block_b_weight(qtbot, tab):
    tab.block_toggle.setChecked(True)
    assert tab.block_card.isVisible() and len(tab.block_panel.sliders) == 20
    tab.block_panel.sliders["IN04"].spin.setValue(1.0)
    tab.block_panel.sliders["OUT08"].spin.setValue(0.0)
    blocks = tab.build_recipe().block_weights
    assert list(blocks) == list(BLOCKS)
    assert blocks["IN04"] == [0.0, 1.0] and blocks["OUT08"] == [1.0, 0.0] and blocks["MID"] == [0.5, 0.5]


def test_run_writes_the_same_tensors_as_the_engine(qtbot, tab, context, demo, tmp_path):
    out = tmp_path / "gui.safetensors"
    tab.set_output(out)
    assert wait_plan(qtbot, tab).error is None
    with qtbot.waitSignal(tab.merge_finished, timeout=60000):
        qtbot.mouseClick(tab.run_button, merge_tab.Qt.MouseButton.LeftButton)
    assert tab.result_box.isVisible() and out.name in tab.result_label.text()
    # a chosen output name stays; the warning says it is this merge's own result, not some other file
    qtbot.waitUntil(lambda: tab.warnings_label.isVisible(), timeout=20000)
    assert "holds the merge just made" in tab.warnings_label.text()

    gamma, beta, original = (demo.checkpoint_path(r) for r in ("gamma", "beta", "original"))
    cli = run_merge(kohaku_xl_delta_recipe(gamma, beta, original), tmp_path / "engine.safetensors").path
    from_gui, from_engine = load_file(out), load_file(cli)
    assert from_gui.keys() == from_engine.keys() and len(from_gui) > 800
    assert all(from_gui[k].equal(from_engine[k]) for k in from_gui)

    with qtbot.waitSignal(context.requested, check_params_cb=lambda a, p: (a, p) == ("train.set_base", out)):
        click(tab.use_base_button)
    with qtbot.waitSignal(
        context.requested, check_params_cb=lambda a, p: (a, p) == ("generate.set_model", out)
    ):
        click(tab.open_generate_button)


def test_cancel_leaves_no_file(qtbot, tab, tmp_path):
    folder = tmp_path / "cancel"
    folder.mkdir()
    tab.set_output(folder / "c.safetensors")
    assert wait_plan(qtbot, tab).error is None
    with qtbot.waitSignal(tab.merge_cancelled, timeout=60000):
        qtbot.mouseClick(tab.run_button, merge_tab.Qt.MouseButton.LeftButton)
        assert tab.cancel_button.isVisible()
        qtbot.mouseClick(tab.cancel_button, merge_tab.Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: tab.run_button.isVisible())
    assert list(folder.iterdir()) == []
    assert "nothing was written" in tab.run_message.text()


def test_truncated_input_shows_a_problem_naming_it(qtbot, tab, demo, tmp_path):
    cut = tmp_path / "cut-beta.safetensors"
    cut.write_bytes(demo.checkpoint_path("beta").read_bytes()[:-4096])
    tab.rows[1].picker.set_path(cut)
    assert "cut-beta.safetensors" in tab.rows[1].picker.info_label.text()
    assert "truncated" in tab.rows[1].picker.info_label.text()
    outcome = wait_plan(qtbot, tab)
    assert "cut-beta.safetensors" in outcome.error and "cut-beta.safetensors" in tab.problem_label.text()
    assert not tab.run_button.isEnabled()


def test_output_equal_to_an_input_is_refused(qtbot, tab, demo, tmp_path):
    a = tmp_path / "a.safetensors"
    shutil.copyfile(demo.checkpoint_path("gamma"), a)
    before = a.read_bytes()
    tab.rows[0].picker.set_path(a)
    tab.set_output(a)
    outcome = wait_plan(qtbot, tab)
    assert "also an input" in outcome.error and "also an input" in tab.problem_label.text()
    assert not tab.run_button.isEnabled()
    # Even forced past the disabled button, the engine refuses and the input stays as it was.
    with qtbot.waitSignal(tab.merge_failed, timeout=60000) as failed:
        tab.start_merge()
    assert "also an input" in failed.args[0] and "also an input" in tab.run_message.text()
    assert a.read_bytes() == before


def test_full_disk_is_reported_and_leaves_no_file(qtbot, tab, tmp_path, monkeypatch):
    from collections import namedtuple

    folder = tmp_path / "full"
    folder.mkdir()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9 - 1000, 1000))
    tab.set_output(folder / "o.safetensors")
    outcome = wait_plan(qtbot, tab)
    assert outcome.free_bytes == 1000 and "not enough free disk space" in tab.estimate_label.text()
    with qtbot.waitSignal(tab.merge_failed, timeout=60000) as failed:
        qtbot.mouseClick(tab.run_button, merge_tab.Qt.MouseButton.LeftButton)
    assert "not enough free disk space" in failed.args[0]
    qtbot.waitUntil(lambda: tab.run_button.isVisible())
    assert "not enough free disk space" in tab.run_message.text() and tab.run_message.isVisible()
    assert list(folder.iterdir()) == []


def test_missing_keys_offer_take_from_a(qtbot, tab, demo, tmp_path):
    sd = load_file(demo.checkpoint_path("beta"))
    gone = UNET_PREFIX + "out.2.bias"
    del sd[gone]
    partial = tmp_path / "partial.safetensors"
    save_file(sd, str(partial))
    tab.rows[1].picker.set_path(partial)
    outcome = wait_plan(qtbot, tab)
    assert "lacks 1 tensor" in outcome.error and outcome.fixable_missing == 1
    assert tab.take_a_button.isVisible() and not tab.run_button.isEnabled()
    click(tab.take_a_button)
    outcome = wait_plan(qtbot, tab)
    assert outcome.error is None and outcome.plan.taken_from_a == [gone]
    assert "copied from A" in tab.warnings_label.text() and tab.run_button.isEnabled()


def test_a_lokr_is_not_accepted_as_a_model(qtbot, tab, tmp_path):
    import torch

    lokr = tmp_path / "style.safetensors"
    save_file(
        {"lora_unet_out_2.lokr_w1": torch.zeros(2, 2), "lora_unet_out_2.lokr_w2": torch.zeros(2, 2)},
        str(lokr),
    )
    tab.rows[1].picker.set_path(lokr)
    assert tab.rows[1].picker.problem is not None and "style.safetensors" in tab.rows[1].picker.problem
    assert "style.safetensors" in wait_plan(qtbot, tab).error


def test_add_difference_recipe_from_the_widgets(qtbot, tab, demo):
    tab.op_combo.setCurrentIndex(tab.op_combo.findData("add_difference"))
    tab.op_combo.activated.emit(tab.op_combo.currentIndex())
    assert len(tab.rows) == 3 and not tab.rows[0].weight.isVisible()
    tab.rows[2].picker.set_path(demo.checkpoint_path("original"))
    tab.multiplier.spin.setValue(0.7)
    recipe = tab.build_recipe()
    assert recipe.operation == "add_difference" and recipe.weights == [0.7]
    assert recipe.inputs[2] == str(demo.checkpoint_path("original"))
    assert tab.preset_combo.currentData() == merge_tab.PRESET_CUSTOM
    assert wait_plan(qtbot, tab).error is None


def test_output_path_defaults_to_a_free_name(tmp_path):
    from kxl_gui.tabs.merge_plan import unique_output

    (tmp_path / "x.safetensors").write_bytes(b"")
    assert unique_output(tmp_path, "x") == tmp_path / "x-2.safetensors"
    assert unique_output(tmp_path, "y") == Path(tmp_path / "y.safetensors")
