"""Journey: a new user reproduces the card's base merge, by mouse and keyboard only, from a fresh demo workspace.

Change a setting (the preset turns "custom"), choose the kohaku-xl-delta preset again, try a third model and
per-block weights and put them back, browse for the output file, run the merge and hand it to Train
("Use as training base"), Generate and the file manager. The stall watchdog runs from the first paint: the GUI
thread must never be blocked for more than 150 ms.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from user_input import answer_file_dialog, click, file_dialog_of, roll_wheel  # noqa: E402

from trainer_core.merge.engine import run_merge  # noqa: E402
from trainer_core.merge.recipe import kohaku_xl_delta_recipe  # noqa: E402

STALL_BOUND_MS = 150


def test_preset_to_a_merged_training_base(qtbot, tmp_path, opened_urls):
    from kxl_gui.context import AppContext
    from kxl_gui.settings import AppSettings
    from kxl_gui.tabs.merge import PRESET_CUSTOM, PRESET_KXL, create_tab
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path / "ws", posts=40, seed=0, images=False)
    gamma, beta, original = (ws.checkpoint_path(r) for r in ("gamma", "beta", "original"))
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    context.set_workspace(ws)
    tab = create_tab(context)
    qtbot.addWidget(tab)
    tab.resize(1180, 900)
    tab.show()
    qtbot.waitExposed(tab)
    requests: list[tuple[str, object]] = []
    context.requested.connect(lambda action, payload: requests.append((action, payload)))
    watch = StallWatch().start()

    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=20_000)
    assert tab.preset_combo.currentData() == PRESET_KXL

    # A change the card does not make turns the preset "custom"; choosing the preset puts the card back.
    click(tab.revert_boxes["te2_position"])
    assert tab.preset_combo.currentData() == PRESET_CUSTOM and "te2_position" not in tab.form.revert
    tab.preset_combo.setFocus(Qt.FocusReason.TabFocusReason)  # the user tabs to the combo box
    QTest.keyClick(tab.preset_combo, Qt.Key.Key_Home)  # and picks the first entry, the preset
    assert tab.preset_combo.currentData() == PRESET_KXL
    assert all(box.isChecked() for box in tab.revert_boxes.values())
    roll_wheel(tab.rows[1].weight.spin, -3)  # scrolling over the form changes no weight
    assert [m.weight for m in tab.form.models] == [0.5, 0.5]

    # A third model and per-block weights, tried and put back.
    click(tab.add_button)
    assert len(tab.rows) == 3 and tab.preset_combo.currentData() == PRESET_CUSTOM
    qtbot.waitUntil(
        lambda: tab.outcome is not None and "choose model C" in (tab.outcome.error or ""), timeout=5_000
    )
    assert "choose model C" in tab.problem_label.text() and not tab.run_button.isEnabled()
    qtbot.waitUntil(tab.rows[2].remove_button.isVisible, timeout=2_000)  # shown on the next event-loop turn
    click(tab.rows[2].remove_button)
    assert len(tab.rows) == 2 and tab.preset_combo.currentData() == PRESET_KXL
    click(tab.block_toggle)
    assert tab.block_card.isVisible() and set(tab.block_panel.values().values()) == {0.5}
    tab.block_panel.preset_combo.setFocus(Qt.FocusReason.TabFocusReason)
    QTest.keyClick(tab.block_panel.preset_combo, Qt.Key.Key_Down)  # "IN blocks only"
    click(tab.block_panel.apply_button)
    assert tab.form.block_weights["IN04"] == 0.5 and tab.form.block_weights["OUT08"] == 0.0
    assert tab.block_panel.sliders["OUT08"].value() == 0.0
    click(tab.block_toggle)
    assert not tab.block_card.isVisible() and tab.preset_combo.currentData() == PRESET_KXL

    # The LoKr browser opens and can be dismissed; the output file is chosen with Browse.
    click(tab.lokr_picker.browse)
    QTest.keyClick(file_dialog_of(qtbot, tab.lokr_picker), Qt.Key.Key_Escape)
    assert tab.lokr_picker.path is None and not tab.form.lokr_on
    out = tmp_path / "outputs" / "delta-base.safetensors"
    out.parent.mkdir()
    click(tab.view.out_row.browse_button)
    answer_file_dialog(qtbot, tab.view.out_row, out)
    assert tab.output_path == out and not tab.form.out_auto

    # Run, then hand the result over.
    qtbot.waitUntil(lambda: tab.run_button.isEnabled(), timeout=20_000)
    with qtbot.waitSignal(tab.merge_finished, timeout=120_000):
        click(tab.run_button)
        assert tab.cancel_button.isVisible() and not tab.view.isEnabled()
    assert tab.result_box.isVisible() and out.name in tab.result_label.text()
    click(tab.use_base_button)
    click(tab.open_generate_button)
    click(tab.show_folder_button)
    assert requests == [("train.set_base", out), ("generate.set_model", out)]
    assert [u.toLocalFile() for u in opened_urls.urls] == [str(out.parent)]
    qtbot.waitUntil(lambda: tab.warnings_label.isVisible(), timeout=20_000)
    assert "holds the merge just made" in tab.warnings_label.text()
    watch.stop()
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()
    print(f"\nmerge journey: {watch.report(limit=1)}")

    # the merge is the CLI's preset, tensor for tensor
    cli = run_merge(kohaku_xl_delta_recipe(gamma, beta, original), tmp_path / "cli.safetensors").path
    from_gui, from_cli = load_file(out), load_file(cli)
    assert from_gui.keys() == from_cli.keys() and all(from_gui[k].equal(from_cli[k]) for k in from_gui)
