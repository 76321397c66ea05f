"""#17.7: `kxl tags edit` with a relative folder path edits the captions (the prefix was joined twice)."""

from __future__ import annotations

from PIL import Image

from trainer_core.cli import main as kxl_main


def test_tags_edit_and_undo_with_a_relative_folder(tmp_path, monkeypatch, capsys):
    sub = tmp_path / "ds" / "1_a"
    sub.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text("1girl ||| solo, red hair", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert kxl_main(["tags", "edit", "ds", "--add", "blue_eyes"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 caption(s) changed" in out and "skipped" not in out
    assert all((sub / f"{i}.txt").read_text(encoding="utf-8").endswith("blue eyes") for i in range(3))
    assert kxl_main(["tags", "undo", "./ds"]) == 0
    assert all((sub / f"{i}.txt").read_text(encoding="utf-8") == "1girl ||| solo, red hair" for i in range(3))
