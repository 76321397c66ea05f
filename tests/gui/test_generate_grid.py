"""The Generate tab's X/Y/Z grid, driven like a user (qtbot, offscreen): axes chosen with the keyboard, values
typed or picked from the workspace, Generate grid -> grid.png + grid.json in outputs/grids/<time>, shown in the
gallery; a bad value is refused inline and runs nothing; Cancel leaves no folder; and the Train tab's "Compare
states" sets the grid up over a run's saved LoKrs.

The workspace is built by hand (tiny SDXL base + a tiny LoKr), images are 64 x 64 with 2 steps."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QScrollArea  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from stall_watch import StallWatch  # noqa: E402
from user_input import click, type_into  # noqa: E402

from kxl_gui.context import AppContext  # noqa: E402
from kxl_gui.settings import AppSettings  # noqa: E402
from kxl_gui.tabs.generate import GenerateTab  # noqa: E402
from trainer_core.workspace import Workspace  # noqa: E402

GRID_TIMEOUT_MS = 60_000
STALL_BOUND_MS = 150  # as the Generate tab's own stall test


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    import trainer_core.hf_quiet  # noqa: F401
    from trainer_core.lokr.keys import module_targets
    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("grid-ws")
    comps = build_tiny_components(0)
    save_single_file(comps, root / "models" / "base.safetensors", dtype="fp16")
    # A LoKr on one cross-attention output: enough to change the picture, found under models/ by its name.
    target = next(t for t in module_targets("kxl-tiny").values()
                  if t.weight.diffusers_key.endswith("attn2.to_out.0.weight"))  # fmt: skip
    o, i = comps.unet.get_parameter(target.weight.diffusers_key).shape
    g = torch.Generator().manual_seed(0)
    save_file({f"{target.name}.lokr_w1": torch.randn(2, 2, generator=g),
               f"{target.name}.lokr_w2": torch.randn(o // 2, i // 2, generator=g)},
              str(root / "models" / "style-lokr.safetensors"))  # fmt: skip
    ws = Workspace(root=root, name="grid", checkpoints={"base": "models/base.safetensors"})
    ws.save()
    return ws


@pytest.fixture
def context(workspace, tmp_path) -> AppContext:
    shutil.rmtree(workspace.outputs_path / "grids", ignore_errors=True)
    ctx = AppContext(AppSettings(tmp_path / "gui.ini"))
    ctx.workspace = workspace
    return ctx


def make_generate_tab(qtbot, context) -> GenerateTab:
    tab = GenerateTab(context)
    qtbot.addWidget(tab)
    tab.resize(1400, 900)
    tab.show()
    qtbot.waitExposed(tab)
    qtbot.waitUntil(lambda: tab.known is not None and tab.model_path() is not None, timeout=30_000)
    return tab


def type_number(box: QAbstractSpinBox, value: float) -> None:
    """Select the spin box's text and type a number, as a user does, then Enter."""
    box.setFocus()
    QTest.keyClick(box, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClicks(box, str(value))
    QTest.keyClick(box, Qt.Key.Key_Return)
    assert box.value() == value


def choose(qtbot, combo: QComboBox, text: str) -> None:
    """Focus the combo box and step to the item `text` with the arrow keys, as a keyboard user does."""
    assert combo.isVisible() and combo.isEnabled()
    index = combo.findText(text)
    assert index >= 0, f"no {text!r} in {[combo.itemText(i) for i in range(combo.count())]}"
    combo.setFocus()
    key = Qt.Key.Key_Down if index > combo.currentIndex() else Qt.Key.Key_Up
    for _ in range(abs(index - combo.currentIndex())):
        QTest.keyClick(combo, key)


def small_fast_settings(tab: GenerateTab) -> None:
    type_number(tab.width_box, 64)
    type_number(tab.height_box, 64)
    type_number(tab.steps, 2)


def open_grid(qtbot, tab: GenerateTab):
    """Scroll the settings column down to the grid card and open it."""
    panel = tab.grid_panel
    area = panel.parentWidget()
    while not isinstance(area, QScrollArea):
        area = area.parentWidget()
    area.ensureWidgetVisible(panel.toggle_button)
    click(panel.toggle_button)
    assert panel.generate_grid_button.isVisible()
    area.ensureWidgetVisible(panel.generate_grid_button)
    return panel


def grids(ws: Workspace) -> list[str]:
    folder = ws.outputs_path / "grids"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_grid_over_cfg_and_a_picked_lokr_lands_in_the_gallery(qtbot, context, workspace, opened_urls):
    tab = make_generate_tab(qtbot, context)
    small_fast_settings(tab)
    panel = open_grid(qtbot, tab)
    choose(qtbot, panel.kind_combos[0], "CFG Scale")
    type_into(panel.value_edits[0], "3, 9")
    choose(qtbot, panel.kind_combos[1], "LoKr")
    pick, add = panel.pick_combos[1], panel.pick_buttons[1]
    assert [pick.itemText(i) for i in range(pick.count())] == [
        "style-lokr.safetensors",
        "None (without LoKr)",
    ]
    choose(qtbot, pick, "None (without LoKr)")
    choose(qtbot, pick, "style-lokr.safetensors")
    assert panel.value_edits[1].text() == ""  # choosing alone adds nothing
    click(add)
    choose(qtbot, pick, "None (without LoKr)")
    click(add)
    click(add)  # listed once
    assert panel.value_edits[1].text() == "style-lokr, None"
    assert not panel.pick_combos[0].isVisible() and not panel.pick_buttons[0].isVisible()  # CFG is typed

    # measured from here: the tab's own start-up jobs (tag vocabulary, tokenizer) are not the grid's
    qtbot.waitUntil(lambda: tab.vocabulary is not None and tab.tokenizer is not None, timeout=30_000)
    watch = StallWatch(threads=True).start()
    with qtbot.waitSignal(panel.grid_finished, timeout=GRID_TIMEOUT_MS) as done:
        click(panel.generate_grid_button)
        assert not panel.generate_grid_button.isEnabled()  # one grid at a time
    watch.stop()
    result = done.args[0]
    folder = result.folder
    assert folder.parent == workspace.outputs_path / "grids" and grids(workspace) == [folder.name]
    data = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
    assert data["x"] == {"kind": "CFG Scale", "labels": ["CFG Scale: 3", "CFG Scale: 9"]}
    assert data["y"] == {"kind": "LoKr", "labels": ["style-lokr", "no LoKr"]} and data["z"] is None
    assert [(c["x"], c["y"]) for c in data["cells"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert len({c["seed"] for c in data["cells"]}) == 1  # the form's -1 was drawn once for every cell
    for cell in data["cells"]:
        assert Image.open(folder / cell["file"]).size == (64, 64)
        assert "Steps: 2" in cell["infotext"] and "Size: 64x64" in cell["infotext"]
    assert ("<lora:style-lokr:1>" in data["cells"][0]["infotext"]) and "<lora:" not in data["cells"][2][
        "infotext"
    ]
    with Image.open(folder / "grid.png") as grid:
        assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2 x 2 cells plus the labels
        grid_size = grid.size
    # shown like a generated image: newest in the gallery, in the preview, its parameters below
    item = tab.gallery.item(0)
    assert (
        tab.gallery.currentItem() is item and Path(item.data(Qt.ItemDataRole.UserRole)) == folder / "grid.png"
    )
    assert tab.gallery.full_image(item).size().toTuple() == grid_size
    assert not tab.preview.pixmap().isNull()
    assert tab.params_view.toPlainText() == data["cells"][0]["infotext"]
    assert panel.folder_label.text() == f"saved to {folder.relative_to(workspace.root)}"
    assert panel.job_progress.status_label.text() == f"4 cells, seed {data['cells'][0]['seed']}"
    click(panel.open_folder_button)
    assert [u.toLocalFile() for u in opened_urls.urls] == [str(folder)]
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()


def test_a_bad_value_is_named_inline_and_nothing_runs(qtbot, context, workspace):
    tab = make_generate_tab(qtbot, context)
    panel = open_grid(qtbot, tab)
    failed: list[str] = []
    panel.grid_failed.connect(failed.append)
    choose(qtbot, panel.kind_combos[0], "Seed")
    type_into(panel.value_edits[0], "1, 2")
    choose(qtbot, panel.kind_combos[1], "Sampler")
    type_into(panel.value_edits[1], "Euler a, Euler x")
    click(panel.generate_grid_button)
    assert panel.message.isVisible() and panel.message.level == "error"
    assert panel.message.text().startswith(
        "Y axis: grid axis 'Sampler': unknown sampler 'Euler x'; choose from Euler a, Euler,"
    )
    type_into(panel.value_edits[1], "Euler a")
    assert not panel.message.isVisible()  # the message described what was just changed
    type_into(panel.value_edits[0], "1, x")
    click(panel.generate_grid_button)
    assert panel.message.text() == "X axis: grid axis 'Seed': 'x' is not a whole number"
    assert len(failed) == 2 and panel.job is None and panel.generate_grid_button.isEnabled()
    assert grids(workspace) == [] and tab.gallery.count() == 0


def test_cancel_mid_grid_leaves_no_folder(qtbot, context, workspace):
    tab = make_generate_tab(qtbot, context)
    small_fast_settings(tab)
    type_number(tab.steps, 20)  # long enough cells to press Cancel in the middle of the grid
    panel = open_grid(qtbot, tab)
    choose(qtbot, panel.kind_combos[0], "Seed")
    type_into(panel.value_edits[0], "1-6")
    click(panel.generate_grid_button)
    status = panel.job_progress.status_label
    qtbot.waitUntil(lambda: status.text().startswith("cell 2/6"), timeout=GRID_TIMEOUT_MS)
    assert panel.job_progress.progress_bar.value() >= panel.job_progress.progress_bar.maximum() // 6
    assert grids(workspace) and grids(workspace)[0].startswith(".")  # built hidden while it runs
    with qtbot.waitSignal(panel.grid_cancelled, timeout=GRID_TIMEOUT_MS):
        click(panel.job_progress.cancel_button)
    assert status.text() == "cancelled: no grid was written"
    assert grids(workspace) == [] and tab.gallery.count() == 0
    assert panel.generate_grid_button.isEnabled() and not panel.open_folder_button.isEnabled()


# ---- Compare states (Train tab -> Generate tab) ---------------------------------------------------------------
def write_run_with_states(run_dir: Path, ws: Workspace) -> None:
    """A finished run as the trainer leaves it: config.toml (64 px, 2 sample steps, one sample prompt), events,
    run.json, two interval LoKrs and the final one (copies of the workspace's tiny LoKr)."""
    from trainer_core.train.config import load_preset
    from trainer_core.train.events import EventWriter, write_run_info

    cfg = load_preset("tiny-demo")
    cfg.model.base = str(ws.checkpoint_path("base"))
    cfg.dataset.path = str(ws.datasets_path / "none")
    cfg.dataset.resolution = 64
    cfg.training.sample_prompts = ["1girl, solo"]
    cfg.training.sample_steps = 2
    cfg.training.seed = 5
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    w = EventWriter(run_dir)
    w.emit("status", 0, message="dataset", total_steps=20)
    for step in range(1, 21):
        w.emit("step", step, loss=1.0 / step, lr={"unet": 1e-4}, grad_norm=0.5, total_steps=20)
    w.emit("done", 20, reason="finished", final_step=20)
    w.close()
    write_run_info(run_dir, "done", final_step=20)
    folder = run_dir / "checkpoints"
    folder.mkdir()
    lokr = ws.models_path / "style-lokr.safetensors"
    for stem in ("demo-step00000010", "demo-step00000020", "demo"):
        shutil.copyfile(lokr, folder / f"{stem}.safetensors")


def test_compare_states_sets_the_grid_up_over_the_runs_saved_lokrs(qtbot, context, workspace):
    from kxl_gui.tabs.train import TrainTab

    run_dir = workspace.runs_path / "demo-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    write_run_with_states(run_dir, workspace)
    switched: list[str] = []
    context.activate_tab_requested.connect(switched.append)
    generate = make_generate_tab(qtbot, context)
    train = TrainTab(context)
    qtbot.addWidget(train)
    train.resize(1280, 860)
    train.show()
    qtbot.waitExposed(train)
    assert not train.checkpoints.compare_button.isEnabled()  # no run shown yet

    # Runs -> the run's row -> Watch / inspect, then the Checkpoints page
    tabs = train.live_tabs
    click_tab(qtbot, tabs, "Runs")
    table = train.runs.table
    qtbot.waitUntil(lambda: train.runs.summary(run_dir) is not None, timeout=20_000)
    row = next(
        r for r in range(table.rowCount()) if Path(table.item(r, 0).data(Qt.ItemDataRole.UserRole)) == run_dir
    )
    rect = table.visualItemRect(table.item(row, 0))
    QTest.mouseClick(
        table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center()
    )
    click(train.runs.open_button)
    qtbot.waitUntil(lambda: train.monitor is not None and train.monitor.run_dir == run_dir, timeout=5000)
    click_tab(qtbot, tabs, "Checkpoints")
    assert train.lokr_list.count() == 3

    panel = generate.grid_panel
    with qtbot.waitSignal(panel.compare_ready, timeout=10_000):
        click(train.checkpoints.compare_button)
    assert switched == ["Generate"]
    assert [(c.currentText(), e.text()) for c, e in zip(panel.kind_combos, panel.value_edits, strict=True)] == [
        ("Run states", "demo-run"), ("Seed", "5, 6"), ("Nothing", "")]  # fmt: skip
    assert panel.generate_grid_button.isVisible()  # the card opened itself
    assert panel.message.level == "info" and panel.message.text().startswith("demo-run: 3 saved states on X")
    assert generate.prompt_edit.toPlainText() == "1girl, solo"
    assert generate.model_path() == workspace.checkpoint_path("base")
    assert (generate.steps.value(), generate.width_box.value(), generate.height_box.value()) == (2, 64, 64)
    assert generate.lokrs() == []

    with qtbot.waitSignal(panel.grid_finished, timeout=GRID_TIMEOUT_MS) as done:
        click(panel.generate_grid_button)
    data = json.loads((done.args[0].folder / "grid.json").read_text(encoding="utf-8"))
    assert data["x"] == {"kind": "LoKr", "labels": ["step 10", "step 20", "final (demo)"]}
    assert data["y"] == {"kind": "Seed", "labels": ["Seed: 5", "Seed: 6"]}
    assert [c["seed"] for c in data["cells"]] == [5, 5, 5, 6, 6, 6]
    assert "<lora:demo-step00000010:1>" in data["cells"][0]["infotext"]


def click_tab(qtbot, tabs, title: str) -> None:
    """Click a sub-tab's title in its tab bar, as a user does."""
    index = next(i for i in range(tabs.count()) if tabs.tabText(i) == title)
    bar = tabs.tabBar()
    QTest.mouseClick(
        bar, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, bar.tabRect(index).center()
    )
    qtbot.waitUntil(lambda: tabs.currentIndex() == index, timeout=2000)
