"""X/Y/Z grid: A1111 value syntax, one model load per checkpoint, labelled grid + JSON, cancel leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.errors import Cancelled, KxlError
from trainer_core.generate import pipeline
from trainer_core.generate.infotext import parse_infotext, read_png_parameters
from trainer_core.generate.pipeline import GenerationRequest
from trainer_core.generate.xyz_grid import parse_axis, plan_cells, run_grid, run_state_values
from trainer_core.models.loading import save_single_file
from trainer_core.models.tiny import build_tiny_components
from trainer_core.progress import CancelToken, Progress


@pytest.mark.parametrize(
    ("kind", "text", "labels"),
    [
        ("Seed", "1-3", ["Seed: 1", "Seed: 2", "Seed: 3"]),
        ("Steps", "10-20 (+5), 28", ["Steps: 10", "Steps: 15", "Steps: 20", "Steps: 28"]),
        ("CFG Scale", "3-7 [3]", ["CFG Scale: 3", "CFG Scale: 5", "CFG Scale: 7"]),
        ("CFG Scale", "4.5, 7", ["CFG Scale: 4.5", "CFG Scale: 7"]),
        ("Prompt S/R", 'red, "blue, light", green', ["red", "blue, light", "green"]),
        ("Sampler", "Euler a, DPM++ 2M", ["Euler a", "DPM++ 2M"]),
    ],
)
def test_axis_values_read_as_a1111_writes_them(kind, text, labels):
    assert [v.label for v in parse_axis(kind, text).values] == labels


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [("Seed", "1, x", "'x' is not a whole number"), ("Steps", "10-1 (+2)", "never reaches"),
     ("Color", "1", "unknown grid axis"), ("Checkpoint name", "nowhere.safetensors", "no file")],
)  # fmt: skip
def test_bad_axis_values_are_named(kind, text, message):
    with pytest.raises(KxlError, match=message):
        parse_axis(kind, text)


def test_run_states_axis_lists_saved_lokrs_in_step_order(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("style-step00000200", "style-step00000050", "style"):
        (ckpts / f"{name}.safetensors").write_bytes(b"x")
    assert [v.label for v in run_state_values(tmp_path / "run")] == ["step 50", "step 200", "final (style)"]
    axis = parse_axis("Run states", str(tmp_path / "run"))
    assert axis.kind == "LoKr" and [Path(v.value).stem for v in axis.values][-1] == "style"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("grid-models")
    return [
        save_single_file(build_tiny_components(s), folder / f"m{s}.safetensors", dtype="fp16") for s in (0, 1)
    ]


def _request(model: Path) -> GenerationRequest:
    return GenerationRequest(model=model, prompt="1girl, red hair", negative="", steps=2, width=64, height=64,
                             seed=5, cfg=5.0)  # fmt: skip


def test_cells_group_by_checkpoint_so_each_loads_once(models):
    x = parse_axis("Checkpoint name", ", ".join(str(m) for m in models))
    y = parse_axis("Seed", "1-3")
    order = [c.request.model for c in plan_cells(_request(models[0]), x, y)]
    assert order == [models[0]] * 3 + [models[1]] * 3


def test_grid_png_json_and_cells(models, tmp_path, monkeypatch):
    from trainer_core.models import loading

    loads = []
    real = loading.load_sdxl
    monkeypatch.setattr(
        loading, "load_sdxl", lambda path, **kw: loads.append(Path(path).name) or real(path, **kw)
    )
    pipeline.clear_model_cache()
    x = parse_axis("Checkpoint name", ", ".join(str(m) for m in models))
    y = parse_axis("CFG Scale", "3, 6")
    stages: list[str] = []
    progress = Progress(callback=lambda ev: stages.append(ev.message))
    result = run_grid(_request(models[0]), x, y, None, tmp_path / "grid", progress)
    assert sorted(p.name for p in result.folder.iterdir()) == [
        "cell-00-00-00.png", "cell-00-00-01.png", "cell-00-01-00.png", "cell-00-01-01.png", "grid.json", "grid.png"]  # fmt: skip
    data = json.loads((result.folder / "grid.json").read_text())
    assert data["x"]["labels"] == ["m0", "m1"] and data["y"]["labels"] == ["CFG Scale: 3", "CFG Scale: 6"]
    for cell in data["cells"]:
        params = parse_infotext(read_png_parameters(result.folder / cell["file"]))
        assert params["CFG scale"] == ["3", "6"][cell["y"]] and params["Model"] == ["m0", "m1"][cell["x"]]
        assert parse_infotext(cell["infotext"]) == params
    from PIL import Image

    grid = Image.open(result.grid)
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # two cells each way plus the labels
    assert read_png_parameters(result.grid) == data["cells"][0]["infotext"]
    # a model switch loads each checkpoint once (the cache then serves the other cells of the same model)
    assert loads == ["m0.safetensors", "m1.safetensors"]
    assert any(s.startswith("cell 4/4") for s in stages)


def test_cancel_leaves_no_grid_and_no_cells(models, tmp_path):
    token = CancelToken()
    seen = []

    def on_progress(ev):
        seen.append(ev.message)
        if ev.message.startswith("cell 2/"):
            token.cancel()

    with pytest.raises(Cancelled):
        run_grid(_request(models[0]), parse_axis("Seed", "1-3"), None, None, tmp_path / "grid",
                 Progress(callback=on_progress, cancel_token=token), token)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_unknown_sampler_is_refused_before_any_cell_runs():
    with pytest.raises(KxlError, match="unknown sampler 'Euler b'"):
        parse_axis("Sampler", "Euler a, Euler b")


def test_cli_grid(models, tmp_path, capsys):
    from trainer_core.cli import main as kxl_main

    code = kxl_main(["generate", "--model", str(models[0]), "--prompt", "1girl", "--steps", "2", "--size", "64x64",
                     "--seed", "3", "--out", str(tmp_path), "--grid-x", "seed: 1, 2", "--grid-y", "CFG Scale: 3"])  # fmt: skip
    assert code == 0
    folder = next(tmp_path.glob("grid-*"))
    data = json.loads((folder / "grid.json").read_text())
    assert data["x"]["labels"] == ["Seed: 1", "Seed: 2"] and len(data["cells"]) == 2
    assert str(folder / "grid.png") in capsys.readouterr().out
    assert kxl_main(["generate", "--model", str(models[0]), "--prompt", "x", "--out", str(tmp_path),
                     "--grid-x", "Colour: 1"]) == 2  # fmt: skip
    assert "--grid-x" in capsys.readouterr().err
