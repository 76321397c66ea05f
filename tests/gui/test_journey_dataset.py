"""Journey: a new user builds a dataset with the wizard, by mouse and keyboard only, from a fresh demo workspace.

Browse for the DB, check the source, try an extra id range (the inline error names it, the count label stays a
count), put it back, see real captions, browse for an output folder, start the export, cancel it half-way, start
again and resume, and hand the result to Tags and Train. The stall watchdog runs from the first paint: the GUI
thread must never be blocked for more than 150 ms.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from stall_watch import StallWatch  # noqa: E402
from user_input import answer_file_dialog, answer_next_dialog, click, roll_wheel, type_into  # noqa: E402

from trainer_core.cli import main as kxl_main  # noqa: E402

STALL_BOUND_MS = 150
SLOW_IMAGE_S = 0.02  # per exported image, so a Cancel click lands in the middle of the export


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_wizard_to_a_built_dataset_with_cancel_and_resume(qtbot, tmp_path, monkeypatch, opened_urls):
    from kxl_gui.context import AppContext
    from kxl_gui.settings import AppSettings
    from kxl_gui.tabs.dataset import create_tab
    from trainer_core.dataset import export
    from trainer_core.demo import init_demo

    ws = init_demo(tmp_path / "ws", posts=120, seed=0, models=False)
    slow = export._prepare_image

    def slow_prepare(hit, opts):
        time.sleep(SLOW_IMAGE_S)
        return slow(hit, opts)

    monkeypatch.setattr(export, "_prepare_image", slow_prepare)
    context = AppContext(AppSettings(tmp_path / "gui.ini"))
    context.set_workspace(ws)
    tab = create_tab(context)
    qtbot.addWidget(tab)
    tab.resize(1100, 760)
    tab.show()
    qtbot.waitExposed(tab)
    requests: list[tuple[str, object]] = []
    context.requested.connect(lambda action, payload: requests.append((action, payload)))
    watch = StallWatch().start()

    # 1. Source: browse for the DB, check it, then take the workspace's defaults back.
    qtbot.waitUntil(lambda: "schema OK" in tab.source_info.text(), timeout=10_000)
    click(tab.source.db_row.browse_button)
    answer_file_dialog(qtbot, tab.source.db_row, ws.db_path)
    assert tab.form.db == str(ws.db_path) and tab.db_edit.text() == str(ws.db_path)
    click(tab.source.check_button)
    qtbot.waitUntil(lambda: "posttagrelation" in tab.source_info.text(), timeout=10_000)
    click(tab.source.workspace_button)
    click(tab.next_button)

    # 2. Selection: an extra range overlaps; the inline message says so and the count label holds no error.
    qtbot.waitUntil(lambda: tab.estimate_label.text().endswith("posts will be selected"), timeout=10_000)
    selected = tab.estimate_label.text()
    roll_wheel(tab.seed_spin, -3)  # scrolling over the form changes no setting
    assert tab.form.seed == 1 and tab.seed_spin.value() == 1
    click(tab.selection.add_range_button)
    assert tab.range_table.rowCount() == 4 and tab.preset_combo.currentText() == "custom"
    assert "overlap" in tab.error_label.text() and tab.error_label.level == "error"
    assert tab.estimate_label.text() == ""
    assert all(tab.range_table.item(r, 3).text() == "" for r in range(4))  # no stale counts next to an error
    click(tab.selection.remove_range_button)
    assert tab.preset_combo.currentText() == "kohaku-xl-delta" and not tab.error_label.isVisible()
    qtbot.waitUntil(lambda: tab.estimate_label.text() == selected, timeout=10_000)
    assert tab.range_table.item(0, 3).text().count("/") == 1
    click(tab.next_button)

    # 3. Captions: twenty real captions, kept part ||| shuffled part.
    qtbot.waitUntil(lambda: tab.preview.toPlainText().count("|||") >= 10, timeout=10_000)
    click(tab.next_button)

    # 4. Output: browse for an empty folder.
    out = tmp_path / "my-dataset"
    out.mkdir()
    click(tab.output.out_row.browse_button)
    answer_file_dialog(qtbot, tab.output.out_row, out)
    assert tab.form.out_path() == out
    type_into(tab.output.workers_spin.lineEdit(), "2")
    assert tab.form.workers == 2
    click(tab.next_button)

    # 5. Run: start, cancel half-way, start again and resume.
    assert "→ " + str(out / "1_kxl") in tab.run.run_summary.text()
    click(tab.start_button)
    assert not tab.next_button.isEnabled() and not tab.back_button.isEnabled()
    # cancel once some id buckets are complete (those are what a resume keeps)
    qtbot.waitUntil(lambda: "Exporting" in tab.rate_label.text() and tab.progress_bar.value() >= 400,
                    timeout=20_000)  # fmt: skip
    click(tab.cancel_button)
    qtbot.waitUntil(lambda: tab.rate_label.text().startswith("Cancelled"), timeout=20_000)
    assert tab.result is None and tab.start_button.isEnabled()
    asked: list[str] = []
    answer_next_dialog("Resume", asked)
    with qtbot.waitSignal(tab.build_finished, timeout=60_000):
        click(tab.start_button)
    assert len(asked) == 1 and str(out) in asked[0]
    assert tab.result.resumed_buckets > 0 and tab.rate_label.text().startswith("Done:")

    # 6. Summary, and the hand-offs.
    assert tab.stack.currentIndex() == 5
    qtbot.waitUntil(lambda: len(tab.charts) == 3, timeout=5_000)
    click(tab.open_tags_button)
    click(tab.train_button)
    click(tab.open_button)
    assert requests == [("tags.open_dataset", out), ("train.set_dataset", out)]
    assert [u.toLocalFile() for u in opened_urls.urls] == [str(out)]
    watch.stop()
    assert watch.worst_blocked_ms <= STALL_BOUND_MS, watch.report()
    print(f"\ndataset journey: {watch.report(limit=1)}")

    # the resumed build is the one `kxl dataset build` writes
    monkeypatch.setattr(export, "_prepare_image", slow)
    cli = tmp_path / "cli"
    assert kxl_main(["dataset", "build", "--db", str(ws.db_path), "--images", str(ws.images_path),
                     "--out", str(cli), "--preset", "kohaku-xl-delta"]) == 0  # fmt: skip
    assert tree(out) == tree(cli)
