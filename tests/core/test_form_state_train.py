"""The Train launch form without Qt: presets and run configs in, the exact TrainConfig and launch plan out, bad
typed values named by key, and spin-box minimums held against the engine's validate()."""

from __future__ import annotations

from pathlib import Path

import pytest

from kxl_gui.state.train_form import (
    FIELDS_BY_KEY,
    INT_RANGES,
    SETTING_FIELDS,
    SettingValues,
    TrainForm,
    engine_value,
    prompt_lines,
)
from trainer_core.errors import KxlError
from trainer_core.train.config import SECTIONS, TrainConfig, config_from_dict, load_config, load_preset

# options validate() checks against another one: the partner value that lets the probed minimum through
PARTNERS = {
    "dataset.max_bucket_reso": {"dataset.min_bucket_reso": 1},
    "training.epochs": {"training.max_steps": 1},
}


def test_every_config_option_is_a_form_field_except_the_paths():
    keys = {f"{s}.{name}" for s, cls in SECTIONS.items() for name in cls.__dataclass_fields__}
    assert {f.key for f in SETTING_FIELDS} == keys - {"model.base", "dataset.path", "output.run_dir"}
    kinds = {k: FIELDS_BY_KEY[k].kind for k in ("training.batch_size", "optimizer.unet_lr", "optimizer.betas",
                                                "network.module_factors", "training.sample_prompts",
                                                "optimizer.type", "dataset.cache_latents", "output.name")}  # fmt: skip
    assert kinds == {"training.batch_size": "int", "optimizer.unet_lr": "number", "optimizer.betas": "numbers",
                     "network.module_factors": "factors", "training.sample_prompts": "lines",
                     "optimizer.type": "choice", "dataset.cache_latents": "bool", "output.name": "text"}  # fmt: skip


@pytest.mark.parametrize("preset", ["kohaku-xl-delta", "tiny-demo"])
def test_a_preset_round_trips_to_the_same_config(preset, tmp_path):
    cfg = load_preset(preset)
    form = TrainForm.from_engine(cfg, preset)
    assert form.preset == preset and form.dataset == "" and form.base == ""
    form.dataset, form.base = str(tmp_path / "ds"), str(tmp_path / "base.safetensors")
    out = form.to_engine()
    expected = cfg.to_dict()
    expected["model"]["base"], expected["dataset"]["path"] = form.base, form.dataset
    assert out.to_dict() == expected


def test_a_run_config_shows_its_paths_resolved_and_its_values_as_typed(tmp_path):
    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = "../models/base.safetensors", "data/ds"
    cfg.optimizer.unet_lr, cfg.optimizer.betas = 4e-05, [0.9, 0.99]
    cfg.network.module_factors = {"Attention": 4, "FeedForward": 2, "CLIPAttention": 8, "CLIPMLP": 8}
    cfg.training.gradient_accumulation_steps, cfg.training.sample_prompts = 3, ["1girl", "1boy, solo"]
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    form = TrainForm.from_engine(load_config(run / "config.toml"))
    assert (
        Path(form.base).resolve() == tmp_path / "runs" / "models" / "base.safetensors"
    )  # relative to the file
    assert form.dataset == str(run / "data" / "ds")
    s = form.settings
    assert s["optimizer.unet_lr"] == "4e-05" and s["optimizer.betas"] == "0.9, 0.99"
    assert s["network.module_factors"] == "Attention=4, FeedForward=2, CLIPAttention=8, CLIPMLP=8"
    assert s["training.gradient_accumulation_steps"] == 3
    assert s["training.sample_prompts"] == ["1girl", "1boy, solo"]
    assert form.to_engine().optimizer.betas == [0.9, 0.99]


def test_typed_values_reach_the_engine_and_bad_ones_name_their_key(tmp_path):
    form = TrainForm.from_engine(load_preset("tiny-demo"))
    form.dataset, form.base = "/d", "/b"
    setattr(form.settings, "optimizer.unet_lr", " 2.5e-4 ")
    setattr(form.settings, "network.module_factors", "Attention=2, CLIPMLP=-1")
    setattr(form.settings, "training.sample_prompts", prompt_lines("1girl, solo\n\n  1boy \n"))
    cfg = form.to_engine()
    assert cfg.optimizer.unet_lr == 2.5e-4 and cfg.network.module_factors == {"Attention": 2, "CLIPMLP": -1}
    assert cfg.training.sample_prompts == ["1girl, solo", "1boy"]
    setattr(form.settings, "optimizer.betas", "0.9; 0.95")
    with pytest.raises(
        KxlError, match=r"'optimizer.betas' must be numbers separated by commas, got '0.9; 0.95'"
    ):
        form.to_engine()
    setattr(form.settings, "optimizer.betas", "0.9, 1.5")  # parses, but the engine refuses it
    with pytest.raises(KxlError, match=r"'optimizer.betas' must be two numbers in \[0, 1\)"):
        form.to_engine()
    with pytest.raises(KxlError, match="'optimizer.unet_lr' must be a number, got '2.5e-'"):
        engine_value(FIELDS_BY_KEY["optimizer.unet_lr"], "2.5e-")
    with pytest.raises(AttributeError, match="no training option 'training.nope'"):
        setattr(form.settings, "training.nope", 1)


def test_loading_a_preset_keeps_the_chosen_paths_and_a_file_replaces_them(tmp_path):
    form = TrainForm(dataset="/my/ds", base="/my/base.safetensors", processes=2)
    form.load(TrainForm.from_engine(load_preset("kohaku-xl-delta"), "kohaku-xl-delta"), keep_paths=True)
    assert (form.dataset, form.base, form.processes) == ("/my/ds", "/my/base.safetensors", 2)
    assert form.settings["training.batch_size"] == 4 and form.preset == "kohaku-xl-delta"
    other = load_preset("tiny-demo")
    other.model.base, other.dataset.path = "/o/base.safetensors", "/o/ds"
    form.load(TrainForm.from_engine(other))
    assert (form.dataset, form.base) == ("/o/ds", "/o/base.safetensors")
    assert form.settings == TrainForm.from_engine(other).settings


def test_launch_plan_follows_device_machines_and_resume(tmp_path):
    form = TrainForm.from_engine(load_preset("kohaku-xl-delta"))
    form.processes, form.device = 4, "auto"
    plan = form.launch_plan(tmp_path / "config.toml", local_port=41234, gpu_present=True)
    assert (plan.processes, plan.machines, plan.port, plan.cpu, plan.mixed_precision, plan.resume) == (
        4, 1, 41234, False, "fp16", False)  # fmt: skip
    assert form.launch_plan(tmp_path / "c", local_port=1, gpu_present=False).cpu is True
    form.device = "gpu"
    assert form.launch_plan(tmp_path / "c", local_port=1, gpu_present=False).cpu is False
    form.machines, form.main_ip, form.port = 2, " 10.0.0.1 ", 29511
    state = tmp_path / "checkpoints" / "state-00000012"
    plan = form.launch_plan(tmp_path / "c", local_port=1, gpu_present=True, resume_from=state, processes=1)
    assert (plan.machines, plan.main_ip, plan.port, plan.processes) == (2, "10.0.0.1", 29511, 1)
    assert plan.resume and plan.resume_from == state
    assert form.run_path is None
    form.run_dir = " ~/runs/x "
    assert form.run_path == Path("~/runs/x").expanduser()


def _accepts(key: str, value: int) -> bool:
    data = TrainConfig().to_dict()
    for k, v in {**PARTNERS.get(key, {}), key: value}.items():
        section, name = k.split(".")
        data[section][name] = v
    try:
        config_from_dict(data)
    except KxlError:
        return False
    return True


@pytest.mark.parametrize("field", [f for f in SETTING_FIELDS if f.kind == "int"], ids=lambda f: f.key)
def test_each_whole_number_minimum_is_the_engines(field):
    """The spin box's lowest value is one validate() accepts, and one step below it is refused (for the options
    listed in INT_RANGES; the others start at 0, which validate() accepts)."""
    assert _accepts(field.key, field.minimum), (
        f"{field.key}: validate() refuses the form's minimum {field.minimum}"
    )
    if field.key in INT_RANGES:
        assert not _accepts(field.key, field.minimum - 1), (
            f"{field.key}: validate() accepts below the minimum"
        )
    assert field.minimum <= FIELDS_BY_KEY[field.key].default <= field.maximum


def test_setting_values_compare_by_content():
    a, b = SettingValues(), SettingValues()
    assert a == b
    setattr(b, "training.batch_size", 7)
    assert a != b and b["training.batch_size"] == 7 and getattr(b, "training.batch_size") == 7
