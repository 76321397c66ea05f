"""A1111 samplers: every listed sampler and schedule type against A1111's own code, and on the tiny model.

The reference latents (tests/core/data/sampler_vectors.json) were made by running A1111 v1.10.1's sampler code and
k-diffusion on an analytic model (tests/core/data/make_sampler_vectors.py, which this file imports for that model);
here the same model, seeds and img2img start go through A1111Scheduler the way the diffusers pipelines drive it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.errors import KxlError
from trainer_core.generate.samplers import SAMPLERS, SCHEDULES, make_scheduler, resolve_sampler
from trainer_core.paths import sdxl_config_dir

torch = pytest.importorskip("torch")
# torchsde notes query times a float32 rounding outside a tree's span (it clamps); A1111 prints the same
pytestmark = pytest.mark.filterwarnings("ignore:Should have t")

DATA = Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "sampler_vectors.json").read_text(encoding="utf-8"))
_spec = importlib.util.spec_from_file_location("make_sampler_vectors", DATA / "make_sampler_vectors.py")
oracle_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle_model)

KARRAS = [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292, 0.0]
UNIFORM = [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.625, 0.3687, 0.0292, 0.0]
EXPONENTIAL = [14.6146, 7.3249, 3.6712, 1.84, 0.9222, 0.4622, 0.2317, 0.1161, 0.0582, 0.0292, 0.0]
# model calls A1111 makes for a 3-step pass (second order: 2 x 3 - 1; DDIM: len(range(0, 1000, 333)) - 1 = 3;
# PLMS: 3 + its two-call first step; UniPC: len(range(0, 1000, 333)) = 4 steps; Restart below 20 steps: Heun)
CALLS_AT_3_STEPS = {"DPM++ SDE": 5, "DPM++ 2S a": 5, "DPM2": 5, "DPM2 a": 5, "Heun": 5, "Restart": 5, "PLMS": 4,
                    "UniPC": 4}  # fmt: skip


@pytest.fixture(scope="module")
def base_config():
    # The real SDXL scheduler config: Euler, timestep_spacing "leading", steps_offset 1 (the trap of §4).
    return json.loads((sdxl_config_dir() / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


def _case_id(case: dict) -> str:
    extra = ("-hires" if case.get("hires") else "") + ("-v" if case.get("prediction") else "")
    return f"{case['sampler']}-{case['schedule']}-{case['steps']}{extra}"


def _run(base_config, case: dict, seeds: list[int]):
    """Our latent for a reference case: A1111Scheduler driven as the SDXL pipelines drive it (scale_model_input,
    model, step with the per-image generators), from A1111's initial noise."""
    from trainer_core.generate.pipeline import hires_schedule

    config = dict(base_config)
    if case.get("prediction") == "v":
        config["prediction_type"] = "v_prediction"
    scheduler, _ = make_scheduler(config, case["sampler"], case["schedule"])
    scheduler.use_image_seeds(seeds)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = VECTORS["shape"][1:]
    first_noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
    hires = case.get("hires")
    if hires:
        scheduler.denoise_steps = hires["steps"]
        scheduler.set_timesteps(hires_schedule(hires["steps"], hires["denoise"])[0])
        x = scheduler.add_noise(oracle_model.hires_init(), first_noise)
    else:
        scheduler.set_timesteps(case["steps"])
        x = first_noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = oracle_model.analytic_eps(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, generator=generators).prev_sample
    return x, scheduler


def _expected(case: dict):
    return torch.tensor(case["latent"], dtype=torch.float32).reshape(VECTORS["shape"])


@pytest.mark.parametrize("case", VECTORS["cases"], ids=_case_id)
def test_sampler_equals_a1111(base_config, case):
    got, scheduler = _run(base_config, case, VECTORS["seeds"])
    # the same model calls at the same (fractional) timesteps: the reference keeps 4 decimals
    assert len(scheduler.timesteps) == len(case["model_timesteps"])
    assert torch.allclose(scheduler.timesteps, torch.tensor(case["model_timesteps"]), rtol=0, atol=1e-4)
    expected = _expected(case)
    assert expected.abs().max() < 5  # unit-scale latents, so the bound below is absolute
    assert (got - expected).abs().max() <= 1e-4, (got - expected).abs().max()


def test_every_listed_sampler_and_schedule_has_a1111_vectors():
    automatic = {
        c["sampler"] for c in VECTORS["cases"] if c["schedule"] == "Automatic" and not c.get("hires")
    }
    assert set(SAMPLERS) <= automatic
    assert set(SCHEDULES) - {"Automatic"} <= {c["schedule"] for c in VECTORS["cases"]}
    hires = {c["sampler"] for c in VECTORS["cases"] if c.get("hires")}
    assert {"DPM++ SDE", "DPM++ 2S a", "Restart", "DPM2", "DPM fast", "DDIM", "UniPC", "PLMS"} <= hires


@pytest.mark.parametrize(
    ("sampler", "steps"),
    [("Euler a", 8), ("DPM++ SDE", 8), ("DPM++ 2S a", 8), ("DPM2 a", 8), ("Restart", 21)],
)
def test_sampler_noise_is_per_image_and_follows_the_seed(base_config, sampler, steps):
    case = next(
        c for c in VECTORS["cases"]
        if (c["sampler"], c["schedule"], c["steps"]) == (sampler, "Automatic", steps) and not c.get("hires")
    )  # fmt: skip
    expected = _expected(case)
    alone, _ = _run(base_config, case, VECTORS["seeds"][1:])  # image 2 of the batch, made on its own
    assert (alone[0] - expected[1]).abs().max() <= 1e-4
    other, _ = _run(base_config, case, [1, 2])
    assert (other - expected).abs().max() > 0.05  # the noise matters: another seed, another latent


@pytest.mark.parametrize(
    ("sampler", "schedule", "expected"),
    [
        ("Euler a", "Automatic", UNIFORM),
        ("Euler", "Automatic", UNIFORM),
        ("Euler", "Karras", KARRAS),
        ("Euler a", "Karras", KARRAS),
        ("Euler", "Exponential", EXPONENTIAL),
        ("DPM++ 2M", "Automatic", KARRAS),
        ("DPM++ 2M Karras", "Automatic", KARRAS),  # legacy combined name
        ("DPM++ 2M SDE", "Automatic", EXPONENTIAL),
        ("DPM++ 2S a", "Automatic", KARRAS),
        ("LMS", "Karras", KARRAS),
    ],
)
def test_sigma_schedules_match_a1111(base_config, sampler, schedule, expected):
    scheduler, _ = make_scheduler(base_config, sampler, schedule)
    scheduler.set_timesteps(10)
    assert [round(float(s), 4) for s in scheduler.sigmas] == expected
    # the first pass starts from noise * sigmas[0], not noise * sqrt(sigmas[0]^2 + 1)
    assert scheduler.init_noise_sigma == pytest.approx(14.6146, abs=1e-4)


def test_discarding_samplers_drop_the_next_to_last_sigma(base_config):
    scheduler, _ = make_scheduler(base_config, "DPM2")
    scheduler.set_timesteps(10)
    karras_11 = make_scheduler(base_config, "Euler", "Karras")[0]
    karras_11.set_timesteps(11)
    assert torch.equal(scheduler.sigmas, torch.cat([karras_11.sigmas[:-2], karras_11.sigmas[-1:]]))


def test_ddim_calls_the_model_at_a1111_timesteps(base_config):
    scheduler, resolved = make_scheduler(base_config, "DDIM")
    scheduler.set_timesteps(10)
    # A1111's list is 1, 101, ..., 901 and its DDIM loop skips the first entry: 9 calls for 10 steps
    assert [int(t) for t in scheduler.timesteps] == [901, 801, 701, 601, 501, 401, 301, 201, 101]
    assert resolved.infotext_schedule == "Automatic" and scheduler.init_noise_sigma == 1.0
    # A1111 ignores the schedule type for its timestep samplers (and writes it as chosen)
    karras, resolved = make_scheduler(base_config, "DDIM", "Karras")
    karras.set_timesteps(10)
    assert torch.equal(karras.timesteps, scheduler.timesteps) and resolved.infotext_schedule == "Karras"


def test_unipc_below_its_order_is_a_clear_error(base_config):
    scheduler, _ = make_scheduler(base_config, "UniPC")
    with pytest.raises(KxlError, match="UniPC needs at least 3 steps in a pass; this pass has 2"):
        scheduler.set_timesteps(2)  # range(0, 1000, 500) + 1: two timesteps


def test_the_latent_stays_float32_and_the_unet_gets_its_dtype(base_config):
    scheduler, _ = make_scheduler(base_config, "DPM++ 2M")
    scheduler.model_dtype = torch.float16
    scheduler.set_timesteps(4)
    x = torch.randn(1, 4, 4, 4) * scheduler.init_noise_sigma
    t = scheduler.timesteps[0]
    model_input = scheduler.scale_model_input(torch.cat([x, x]), t)
    assert model_input.dtype == torch.float16
    torch.testing.assert_close(model_input[:1].float(), x / (14.6146**2 + 1) ** 0.5, rtol=2e-3, atol=2e-3)
    out = scheduler.step(torch.zeros(1, 4, 4, 4, dtype=torch.float16), t, x.half())
    assert out.prev_sample.dtype == torch.float32


def test_infotext_schedule_labels_are_a1111s():
    cases = {
        ("DPM++ 2M", "Automatic"): ("Karras", "Karras"),
        ("Euler a", "Automatic"): ("Uniform", "Automatic"),
        ("Euler", "Uniform"): ("Uniform", "Uniform"),  # chosen explicitly: A1111 writes it
        ("Euler", "Karras"): ("Karras", "Karras"),
        ("DPM++ 2S a", "Automatic"): ("Karras", "Karras"),
        ("Restart", "Automatic"): ("Karras", "Karras"),
        ("DPM++ 2M SDE Heun", "Automatic"): ("Exponential", "Exponential"),
        ("DDIM", "Automatic"): ("DDIM", "Automatic"),
        ("UniPC", "Automatic"): ("DDIM", "Automatic"),
    }
    for (sampler, schedule), labels in cases.items():
        resolved = resolve_sampler(sampler, schedule)
        assert (resolved.schedule, resolved.infotext_schedule) == labels, (sampler, schedule)
    legacy = resolve_sampler("DPM++ 2M SDE Exponential")
    assert (legacy.sampler, legacy.schedule, legacy.infotext_schedule) == ("DPM++ 2M SDE", "Exponential",
                                                                         "Exponential")  # fmt: skip
    assert resolve_sampler("DPM++ 2M SDE Heun Karras").sampler == "DPM++ 2M SDE Heun"


def test_every_sampler_and_schedule_round_trips_through_infotext():
    from trainer_core.generate.infotext import create_infotext, parse_infotext

    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            resolved = resolve_sampler(sampler, schedule)
            text = create_infotext(
                "cat",
                "",
                {"Steps": 20, "Sampler": resolved.sampler, "Schedule type": resolved.infotext_schedule},
            )
            params = parse_infotext(text)
            back = resolve_sampler(params["Sampler"], params["Schedule type"])
            assert (back.sampler, back.schedule, back.note) == (sampler, resolved.schedule, ""), schedule


def test_unknown_sampler_falls_back_with_a_note_unknown_schedule_fails():
    resolved = resolve_sampler("DPM adaptive", "Automatic")
    assert resolved.sampler == "Euler a" and "DPM adaptive" in resolved.note
    with pytest.raises(KxlError, match="unknown or unsupported schedule type 'Turbo'"):
        resolve_sampler("Euler", "Turbo")


def test_second_order_samplers_count_prompt_edits_over_twice_the_steps():
    from trainer_core.generate.scheduled_conditioning import schedule_steps

    doubled = {name for name in SAMPLERS if schedule_steps(name, 10) == 20}
    # A1111's "second_order" option: one model call more per step, except Restart's extra restart calls
    assert doubled == {"DPM++ SDE", "DPM++ 2S a", "DPM2", "DPM2 a", "Heun", "Restart"}
    assert schedule_steps("DDIM", 10) == 10 and schedule_steps("UniPC", 10) == 10


def test_brownian_trees_equal_k_diffusions_per_image():
    """k-diffusion's BrownianTreeNoiseSampler with a list of seeds, written out: a torchsde tree per image."""
    import torchsde

    from trainer_core.generate.brownian_noise import BrownianNoise

    seeds = VECTORS["seeds"]
    x = torch.zeros([2, 4, 8, 8])
    trees = [torchsde.BrownianTree(0.0292, torch.zeros(4, 8, 8), 14.6146, entropy=s, tol=1e-6, pool_size=24)
             for s in seeds]  # fmt: skip
    ours = BrownianNoise(x, 0.0292, 14.6146, seeds)
    single = BrownianNoise(x[1:], 0.0292, 14.6146, seeds[1:])
    for a, b in [(14.6146, 9.1), (9.1, 3.3), (3.3, 3.29), (0.5, 0.0292), (2.0, 7.0)]:
        lo, hi, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        want = torch.stack([tree(lo, hi) for tree in trees]) * sign / abs(b - a) ** 0.5
        torch.testing.assert_close(ours(a, b), want, rtol=1e-6, atol=1e-6)
        assert torch.equal(single(a, b)[0], ours(a, b)[1])  # image 2 alone = image 2 of the batch
    assert not torch.allclose(want[0], want[1])
    with pytest.raises(ValueError, match="2 seed"):
        BrownianNoise(torch.zeros([3, 4, 8, 8]), 0.03, 14.6, seeds)


# ------------------------------------------------------------------------------------------ on the tiny model


@pytest.fixture(scope="module")
def tiny():
    from trainer_core.models.tiny import build_tiny_components

    return build_tiny_components(0)


def _images(comps, sampler, seed, batch_size=1, **extra):
    import numpy as np

    from trainer_core.generate.pipeline import SampleSettings, run_txt2img

    calls: list[tuple[int, int]] = []
    hook = comps.unet.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape[-2:])))
    try:
        settings = SampleSettings(prompt="cat", steps=3, width=64, height=64, seed=seed, sampler=sampler,
                                  batch_size=batch_size, **extra)  # fmt: skip
        images = run_txt2img(comps, settings, out_dir=None, infotext_params={}, progress=None,
                             check=lambda: None, warnings=[])  # fmt: skip
    finally:
        hook.remove()
    return [np.asarray(im.image, dtype=np.int16) for im in images], calls, images


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_on_the_tiny_model_and_names_itself(tiny, sampler):
    import numpy as np

    from trainer_core.generate.infotext import parse_infotext
    from trainer_core.generate.pipeline import _loop_length

    (image,), calls, images = _images(tiny, sampler, 5)
    resolved = resolve_sampler(sampler)
    assert len(calls) == CALLS_AT_3_STEPS.get(sampler, 3) == _loop_length(tiny, resolved, 3)
    assert np.isfinite(image).all() and image.std() > 5
    params = parse_infotext(images[0].infotext)
    assert (params["Sampler"], params["Schedule type"]) == (sampler, resolved.infotext_schedule)
    back = resolve_sampler(params["Sampler"], params["Schedule type"])
    assert (back.sampler, back.schedule) == (sampler, resolved.schedule)


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ 2S a"])  # Brownian trees; per-image generators
def test_noisy_samplers_on_the_tiny_model_are_per_image_and_reproducible(tiny, sampler):
    import numpy as np

    (alone_5,), _, _ = _images(tiny, sampler, 5)
    again, _, _ = _images(tiny, sampler, 5)
    assert np.array_equal(again[0], alone_5)
    (alone_6,), _, _ = _images(tiny, sampler, 6)
    batch, _, _ = _images(tiny, sampler, 5, batch_size=2)
    # per-image generators and Brownian trees: image 2 of a batch is the image of seed + 1 alone
    assert np.abs(batch[0] - alone_5).max() <= 1 and np.abs(batch[1] - alone_6).max() <= 1
    assert np.abs(alone_5 - alone_6).max() > 10


@pytest.mark.parametrize(
    ("sampler", "first", "hires"),
    # hires 4 steps at denoise 0.5: A1111 builds 8 and runs the last 4 (DDIM: 2 calls, UniPC: 3 steps)
    [("DPM++ SDE", 5, 7), ("DDIM", 3, 2), ("UniPC", 4, 3), ("PLMS", 4, 3)],
)
def test_hires_pass_counts_its_model_calls(tiny, sampler, first, hires):
    from trainer_core.generate.pipeline import _loop_length, hires_schedule

    (image,), calls, _ = _images(tiny, sampler, 3, hires=True, hires_scale=1.5, hires_steps=4, denoise=0.5)
    assert calls.count((8, 8)) == first and calls.count((12, 12)) == hires
    resolved = resolve_sampler(sampler)
    n, _ = hires_schedule(4, 0.5)
    assert _loop_length(tiny, resolved, 3) == first and _loop_length(tiny, resolved, n, 4) == hires


def test_beta_schedule_infotext_records_the_distribution_as_a1111_does():
    from trainer_core.generate.pipeline import SampleSettings, _infotext_params
    from trainer_core.generate.samplers import resolve_sampler

    params = _infotext_params(SampleSettings(prompt="1girl"), resolve_sampler("Euler", "Beta"), {})
    assert (params["Schedule type"], params["Beta schedule alpha"], params["Beta schedule beta"]) == (
        "Beta",
        0.6,
        0.6,
    )
    assert "Beta schedule alpha" not in _infotext_params(
        SampleSettings(prompt="1girl"), resolve_sampler("Euler"), {}
    )


def test_schedule_labels_are_the_schedules_that_exist():
    from trainer_core.generate.kdiffusion_sigmas import SCHEDULE_FUNCTIONS
    from trainer_core.generate.samplers import SCHEDULE_LABELS

    assert SCHEDULE_LABELS == tuple(SCHEDULE_FUNCTIONS)
