"""The Generate tab's X/Y/Z grid form without Qt: axes to engine axes (errors named by axis, before anything
runs), names picked from the workspace back to paths, value lists as A1111 reads them, grid folders, and what
"Compare states" takes from a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import write_tiny_run_config

from kxl_gui.state.generate_form import GenerationForm, LokrChoice
from kxl_gui.state.grid_form import (
    AxisChoice,
    GridForm,
    GridFormError,
    append_value,
    apply_compare,
    grid_folder,
    pick_names,
    quote_value,
    read_compare_setup,
    run_value,
    workspace_resolver,
)
from trainer_core.errors import KxlError
from trainer_core.generate.xyz_grid import _split_values


def _form(*axes: tuple[str, str]) -> GridForm:
    choices = [AxisChoice(kind, text) for kind, text in axes]
    return GridForm(choices + [AxisChoice() for _ in range(3 - len(choices))])


def _run(
    tmp_path: Path, name: str = "run-a", stems=("style-step00000020", "style-step00000010", "style")
) -> Path:
    folder = tmp_path / "runs" / name / "checkpoints"
    folder.mkdir(parents=True)
    for stem in stems:
        (folder / f"{stem}.safetensors").write_bytes(b"x")
    return folder.parent


def test_axes_become_engine_axes_in_x_y_z_order(tmp_path):
    x, y, z = _form(
        ("Steps", "10-20 (+5)"), ("CFG Scale", "3-7 [3]"), ("Sampler", "Euler a, DPM++ 2M")
    ).to_engine()
    assert (x.kind, [v.value for v in x.values]) == ("Steps", [10, 15, 20])
    assert (y.kind, [v.value for v in y.values]) == ("CFG Scale", [3.0, 5.0, 7.0])
    assert (z.kind, [v.value for v in z.values]) == ("Sampler", ["Euler a", "DPM++ 2M"])
    x, y, z = _form(("Seed", "5, 6")).to_engine()
    assert [v.value for v in x.values] == [5, 6] and y is None and z is None
    # Y may stay empty while Z varies
    x, y, z = GridForm([AxisChoice("Seed", "1"), AxisChoice(), AxisChoice("Steps", "2, 4")]).to_engine()
    assert y is None and [v.value for v in z.values] == [2, 4]


@pytest.mark.parametrize(
    ("axes", "axis", "message"),
    [
        ([("Nothing", ""), ("Seed", "1")], "X", "Choose what the X axis varies"),
        ([("Seed", "1, 2"), ("Steps", "")], "Y", "Y axis (Steps) has no values"),
        ([("Seed", "1"), ("Steps", "4, x")], "Y", "Y axis: grid axis 'Steps': 'x' is not a whole number"),
        ([("Seed", "1"), ("Steps", "4"), ("CFG Scale", "9-1 (+2)")], "Z", "Z axis: grid axis 'CFG Scale': the "
         "range '9-1 (+2)' never reaches its end"),
        ([("Sampler", "Euler a, Euler b")], "X", "X axis: grid axis 'Sampler': unknown sampler 'Euler b'; choose from Euler a, Euler,"),
        ([("Seed", "1"), ("Schedule type", "Karras, karras")], "Y", "Y axis: grid axis 'Schedule type': unknown schedule type 'karras'"),
        ([("Seed", "1"), ("Seed", "2")], "Y", "Y axis: the X axis already varies Seed"),
        ([("LoKr", "None"), ("Run states", "r")], "Y", "Y axis: the X axis already varies LoKr"),
        ([("Checkpoint name", "nowhere")], "X", "X axis: nowhere: grid axis 'Checkpoint name': no file for 'nowhere'"),
    ],
)  # fmt: skip
def test_a_grid_that_cannot_run_names_the_axis(axes, axis, message):
    with pytest.raises(GridFormError) as caught:
        _form(*axes).to_engine()
    assert str(caught.value).startswith(message)
    assert caught.value.axis == axis
    assert isinstance(
        caught.value, KxlError
    )  # the GUI's job machinery shows it as a message, not a traceback


def test_workspace_names_resolve_to_checkpoints_lokrs_and_runs(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    base = models / "base.safetensors"
    lokr = models / "style-lokr.safetensors"
    for path in (base, lokr):
        path.write_bytes(b"x")
    run = _run(tmp_path)
    resolve = workspace_resolver([base], {"style-lokr": lokr}, tmp_path / "runs")
    assert resolve("base") == base and resolve("base.safetensors") == base
    assert resolve("style-lokr") == lokr and resolve("style-lokr.safetensors") == lokr
    assert resolve("run-a") == run
    assert resolve(str(lokr)) == lokr  # a path as typed
    assert resolve("gone") == Path("gone")  # left to the engine, which names it as missing

    x, y, z = _form(("Checkpoint name", "base"), ("LoKr", "style-lokr, None"), ("Seed", "3")).to_engine(
        resolve
    )
    assert [v.value for v in x.values] == [base]
    assert [(v.label, v.value) for v in y.values] == [("style-lokr", lokr), ("no LoKr", None)]
    x, _, _ = _form(("Run states", run_value(run, tmp_path / "runs"))).to_engine(resolve)
    assert x.kind == "LoKr"  # the engine's kind for a run's states
    assert [v.label for v in x.values] == ["step 10", "step 20", "final (style)"]
    assert [Path(v.value).name for v in x.values] == [
        "style-step00000010.safetensors", "style-step00000020.safetensors", "style.safetensors"]  # fmt: skip


def test_picked_values_are_appended_as_a1111_reads_them():
    assert quote_value("plain") == "plain"
    assert quote_value("with, comma") == '"with, comma"'
    text = append_value("", "a")
    text = append_value(text, "with, comma")
    text = append_value(text, 'say "hi"')
    assert text == 'a, "with, comma", "say ""hi"""'
    assert _split_values(text) == ["a", "with, comma", 'say "hi"']  # the engine's own reading
    assert append_value(text, "a") == text  # listed once
    assert append_value("a,", "b") == "a, b"


def test_picked_files_are_named_by_stem_unless_two_share_it(tmp_path):
    a, b, c = tmp_path / "x" / "m.safetensors", tmp_path / "y" / "m.safetensors", tmp_path / "n.safetensors"
    assert pick_names([a, b, c]) == [
        ("m.safetensors", str(a)),
        ("m.safetensors", str(b)),
        ("n.safetensors", "n"),
    ]


def test_grid_folders_are_new_and_skip_one_still_being_built(tmp_path):
    when = 1_700_000_000.0
    first = grid_folder(tmp_path, when)
    assert first.parent == tmp_path / "grids" and len(first.name) == len("20231114-221320")
    first.mkdir(parents=True)
    second = grid_folder(tmp_path, when)
    assert second.name == first.name + "-2"
    (tmp_path / "grids" / f".{second.name}.abc123.part").mkdir()  # a grid of the same second, still running
    assert grid_folder(tmp_path, when).name == first.name + "-3"


def test_compare_setup_takes_the_runs_base_first_prompt_and_sample_settings(tmp_path):
    run = _run(tmp_path)
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"x")
    write_tiny_run_config(run, base, tmp_path / "data", sample_prompts=["1girl, solo", "2girls"], sample_steps=3,
                          seed=77)  # fmt: skip
    setup = read_compare_setup(run)
    assert (setup.states, setup.base, setup.prompt, setup.steps, setup.size, setup.seed) == (
        3, base, "1girl, solo", 3, 128, 77)  # fmt: skip
    assert setup.notes == ["The run has 2 sample prompts; the grid uses the first."]

    grid = GridForm.for_run(run_value(run, tmp_path / "runs"), setup.seed)
    assert [(a.kind, a.text) for a in grid.axes] == [
        ("Run states", "run-a"),
        ("Seed", "77, 78"),
        ("Nothing", ""),
    ]
    before = GenerationForm(prompt="old", model=tmp_path / "other.safetensors", seed=-1, batch_count=4,
                            lokrs=[LokrChoice(tmp_path / "l.safetensors", 0.5)], out_dir=tmp_path / "out")  # fmt: skip
    after = apply_compare(before, setup)
    assert (after.model, after.prompt, after.steps, after.width, after.height, after.seed) == (
        base, "1girl, solo", 3, 128, 128, 77)  # fmt: skip
    assert after.lokrs == [] and after.batch_count == 1 and after.out_dir == tmp_path / "out"
    assert before.prompt == "old"  # a new form: the old one is left as it was
    request = after.to_engine()
    assert (request.model, request.seed, request.lokrs) == (base, 77, [])


def test_compare_setup_of_runs_with_little_to_say(tmp_path):
    bare = _run(tmp_path, "bare")  # no config.toml: the form keeps its settings
    setup = read_compare_setup(bare)
    assert setup.states == 3 and setup.base is None and setup.prompt == "" and setup.steps is None
    assert setup.notes[0].startswith("The run's settings could not be read (")
    form = GenerationForm(prompt="mine", steps=12)
    assert apply_compare(form, setup).prompt == "mine" and apply_compare(form, setup).steps == 12

    moved = _run(tmp_path, "moved")
    write_tiny_run_config(moved, tmp_path / "elsewhere" / "base.safetensors", tmp_path / "data")
    setup = read_compare_setup(moved)
    assert setup.base is None and setup.prompt == ""
    assert setup.notes == [
        "The run's base base.safetensors is not on this machine; the current checkpoint stays.",
        "The run has no sample prompts; the grid uses the prompt in the form.",
    ]

    empty = _run(tmp_path, "empty", stems=())
    with pytest.raises(KxlError, match="the run has saved no LoKr yet"):
        read_compare_setup(empty)
    assert run_value(empty, tmp_path / "elsewhere") == str(empty)  # not one of the workspace's runs: its path
