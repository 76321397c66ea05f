"""A1111 sampler/schedule names -> diffusers schedulers, checked against the sigma vectors of specs §4."""

from __future__ import annotations

import json

import pytest

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.errors import KxlError
from trainer_core.generate.samplers import SAMPLERS, make_scheduler, resolve_sampler
from trainer_core.paths import sdxl_config_dir

KARRAS = [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0.0]
UNIFORM = [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.625, 0.3687, 0.0292, 0.0]
EXPONENTIAL = [14.6146, 7.3249, 3.6712, 1.84, 0.9222, 0.4622, 0.2317, 0.1161, 0.0582, 0.0292, 0.0]


@pytest.fixture(scope="module")
def base_config():
    # The real SDXL scheduler config: Euler, timestep_spacing "leading", steps_offset 1 (the trap of §4).
    return json.loads((sdxl_config_dir() / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


def _sigmas(base_config, sampler, schedule="Automatic"):
    scheduler, _ = make_scheduler(base_config, sampler, schedule)
    scheduler.set_timesteps(10)
    return [round(float(s), 4) for s in scheduler.sigmas]


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("Euler a", "Automatic", UNIFORM),
        ("Euler", "Automatic", UNIFORM),
        ("Euler", "Karras", KARRAS),
        ("Euler", "Exponential", EXPONENTIAL),
        ("DPM++ 2M", "Automatic", KARRAS),
        ("DPM++ 2M Karras", "Automatic", KARRAS),  # legacy combined name
        ("DPM++ 2M SDE", "Automatic", EXPONENTIAL),
        ("LMS", "Karras", KARRAS),
    ],
)
def test_sigma_schedules_match_a1111(base_config, sampler, schedule, expected):
    assert _sigmas(base_config, sampler, schedule) == expected


def test_ddim_timesteps_match_a1111(base_config):
    scheduler, resolved = make_scheduler(base_config, "DDIM")
    scheduler.set_timesteps(10)
    assert [int(t) for t in scheduler.timesteps] == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert resolved.infotext_schedule == "Automatic"


def test_scheduler_classes_and_options(base_config):
    scheduler, _ = make_scheduler(base_config, "DPM++ 3M SDE")
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "sde-dpmsolver++" and scheduler.config.solver_order == 3
    scheduler, _ = make_scheduler(base_config, "Euler a")
    assert type(scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert scheduler.config.timestep_spacing == "linspace"
    # betas come from the checkpoint's config, not from diffusers defaults
    assert scheduler.config.beta_end == 0.012 and scheduler.config.beta_schedule == "scaled_linear"


def test_every_listed_sampler_builds_with_automatic(base_config):
    for name in SAMPLERS:
        scheduler, resolved = make_scheduler(base_config, name)
        scheduler.set_timesteps(8)
        assert resolved.sampler == name and resolved.schedule != "Automatic"


def test_infotext_schedule_labels():
    assert resolve_sampler("DPM++ 2M", "Automatic").infotext_schedule == "Karras"
    assert resolve_sampler("Euler a", "Automatic").infotext_schedule == "Automatic"
    assert resolve_sampler("Euler", "Karras").infotext_schedule == "Karras"
    legacy = resolve_sampler("DPM++ 2M SDE Exponential")
    assert (legacy.sampler, legacy.schedule, legacy.infotext_schedule) == (
        "DPM++ 2M SDE",
        "Exponential",
        "Exponential",
    )


def test_unknown_sampler_falls_back_with_a_note_unknown_schedule_fails():
    resolved = resolve_sampler("Restart", "Automatic")
    assert resolved.sampler == "Euler a" and "Restart" in resolved.note
    with pytest.raises(KxlError, match="unknown or unsupported schedule type 'Turbo'"):
        resolve_sampler("Euler", "Turbo")


def test_sigma_schedule_on_a_sampler_without_it_is_a_clear_error(base_config):
    with pytest.raises(KxlError, match="'Euler a' cannot use the Karras schedule"):
        make_scheduler(base_config, "Euler a", "Karras")
