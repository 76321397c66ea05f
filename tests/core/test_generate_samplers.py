"""A1111 sampler/schedule names -> diffusers schedulers, checked against the sigma vectors of specs §4."""

from __future__ import annotations

import json
import math

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
    assert type(scheduler).__name__ == "Brownian3MSDEScheduler"
    assert scheduler.config.algorithm_type == "sde-dpmsolver++" and scheduler.config.solver_order == 3
    assert scheduler.config.solver_type == "heun" and not scheduler.config.lower_order_final
    scheduler, _ = make_scheduler(base_config, "DPM++ 2M SDE")
    assert (type(scheduler).__name__, scheduler.config.solver_type) == (
        "BrownianDPMSolverMultistepScheduler",
        "midpoint",
    )
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


# ---------------------------------------------------------------------------------- A1111 SDE samplers
# References below are k-diffusion's published algorithms written out here (sample_dpmpp_sde, sample_dpmpp_2m_sde,
# sample_dpmpp_3m_sde, BrownianTreeNoiseSampler as A1111 seeds it), run in k-diffusion's sigma space; the
# schedulers run the way diffusers' pipelines drive them. Both use the same fake epsilon model.

SEEDS = [1234, 98765]


def _reference_tree_noise(shape, sigma_min, sigma_max, seeds):
    """k-diffusion's BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[...]): a torchsde.BrownianTree per image."""
    import torch
    import torchsde

    lo, hi = float(sigma_min), float(sigma_max)
    trees = [
        torchsde.BrownianTree(lo, torch.zeros(shape[1:]), hi, entropy=s, tol=1e-6, pool_size=24)
        for s in seeds
    ]

    def noise(sigma, sigma_next):
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        t0, t1, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = torch.stack([tree(float(t0), float(t1)) for tree in trees]) * sign
        return w / (b - a).abs().sqrt()

    return noise


class _KModel:
    """k-diffusion's CompVisDenoiser around a fake epsilon model: fractional t from log-sigma interpolation."""

    def __init__(self, scheduler, eps):
        import torch

        ac = scheduler.alphas_cumprod.to(torch.float32)
        self.log_sigmas = (((1 - ac) / ac) ** 0.5).log()
        self.eps = eps

    @property
    def sigma_min(self):
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self):
        return float(self.log_sigmas[-1].exp())

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def __call__(self, x, sigma):
        sigma = sigma.reshape(())
        c_in = 1 / (sigma**2 + 1) ** 0.5
        return x - sigma * self.eps(x * c_in, self.sigma_to_t(sigma.reshape(1))[0])


def _fake_eps(x, t):
    import torch

    t = torch.as_tensor(t, dtype=torch.float32)
    return 0.8 * torch.tanh(x) + 0.2 * torch.sin(t / 97.0) * x.flip(-1)


def _k_sigmas(kind, n, model):
    import torch

    if kind == "Karras":
        ramp = torch.linspace(0, 1, n)
        lo, hi = model.sigma_min ** (1 / 7), model.sigma_max ** (1 / 7)
        sigmas = (hi + ramp * (lo - hi)) ** 7
    else:
        sigmas = torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _k_dpmpp_sde(model, x, sigmas, noise):
    sigma_fn, t_fn = (lambda t: t.neg().exp()), (lambda s: s.log().neg())

    def ancestral(a, b):
        up = min(b, (b**2 * (a**2 - b**2) / a**2) ** 0.5)
        return (b**2 - up**2) ** 0.5, up

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * 0.5
        sd, su = ancestral(sigma_fn(t), sigma_fn(s))
        x_2 = (sigma_fn(t_fn(sd)) / sigma_fn(t)) * x - (t - t_fn(sd)).expm1() * denoised
        x_2 = x_2 + noise(sigma_fn(t), sigma_fn(s)) * su
        denoised_2 = model(x_2, sigma_fn(s))
        sd, su = ancestral(sigma_fn(t), sigma_fn(t_next))
        x = (sigma_fn(t_fn(sd)) / sigma_fn(t)) * x - (t - t_fn(sd)).expm1() * denoised_2
        x = x + noise(sigma_fn(t), sigma_fn(t_next)) * su
    return x


def _k_dpmpp_2m_sde(model, x, sigmas, noise):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            x = sigmas[i + 1] / sigmas[i] * (-h).exp() * x + (-2 * h).expm1().neg() * denoised
            if old is not None:
                x = x + 0.5 * (-2 * h).expm1().neg() * (h / h_last) * (denoised - old)  # midpoint
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        old, h_last = denoised, h
    return x


def _k_dpmpp_3m_sde(model, x, sigmas, noise):
    d_1 = d_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = 2 * h
            x = (-h_eta).exp() * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h).expm1().neg().sqrt()
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
    return x


def _run_scheduler(scheduler, noise, steps, seeds):
    from trainer_core.generate.brownian_noise import seed_brownian_noise

    scheduler.set_timesteps(steps)
    seed_brownian_noise(scheduler, seeds)
    x = noise * scheduler.init_noise_sigma
    calls = 0
    for t in scheduler.timesteps:
        eps = _fake_eps(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x).prev_sample
        calls += 1
    return x, calls


@pytest.mark.parametrize(
    ("sampler", "reference", "schedule", "discard", "steps"),
    [
        ("DPM++ SDE", _k_dpmpp_sde, "Karras", False, 6),
        ("DPM++ 2M SDE", _k_dpmpp_2m_sde, "Exponential", False, 6),
        ("DPM++ 2M SDE", _k_dpmpp_2m_sde, "Karras", False, 20),
        ("DPM++ 3M SDE", _k_dpmpp_3m_sde, "Exponential", True, 7),
    ],
)
def test_sde_samplers_equal_k_diffusion_with_a1111_brownian_noise(
    base_config, sampler, reference, schedule, discard, steps
):
    import torch

    scheduler, _ = make_scheduler(base_config, sampler, schedule)
    model = _KModel(scheduler, _fake_eps)
    sigmas = _k_sigmas(schedule, steps + 1, model) if discard else _k_sigmas(schedule, steps, model)
    if discard:  # A1111 discard_next_to_last_sigma
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    noise = torch.randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(7))
    got, calls = _run_scheduler(scheduler, noise, steps, SEEDS)
    # The schedule equals k-diffusion's to float32 rounding (numpy vs torch). The Brownian tree is sensitive to
    # the last bits of its query times, so the algorithm is compared on the scheduler's own sigmas.
    unique_sigmas = torch.unique_consecutive(scheduler.sigmas)
    assert torch.allclose(unique_sigmas, sigmas, rtol=1e-5, atol=1e-6)
    sigmas = unique_sigmas
    tree = _reference_tree_noise(noise.shape, sigmas[sigmas > 0].min(), sigmas.max(), SEEDS)
    expected = reference(model, noise * sigmas[0], sigmas, tree)
    assert calls == (2 * steps - 1 if sampler == "DPM++ SDE" else steps)
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max(), (got - expected).abs().max()
    # the noise matters: other seeds give another result
    other, _ = _run_scheduler(make_scheduler(base_config, sampler, schedule)[0], noise, steps, [1, 2])
    assert (other - expected).abs().max() > 1e-2


def test_brownian_trees_equal_k_diffusions_and_diffusers_per_image():
    import torch
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    from trainer_core.generate.brownian_noise import BrownianNoise

    x = torch.zeros([2, 4, 8, 8])
    reference = _reference_tree_noise(x.shape, 0.0292, 14.6146, SEEDS)
    ours = BrownianNoise(x, 0.0292, 14.6146, SEEDS)
    theirs = BrownianTreeNoiseSampler(
        x, 0.0292, 14.6146, seed=SEEDS
    )  # diffusers' BrownianInterval(halfway_tree)
    single = BrownianNoise(x[1:], 0.0292, 14.6146, SEEDS[1:])
    for a, b in [(14.6146, 9.1), (9.1, 3.3), (3.3, 3.29), (0.5, 0.0292), (2.0, 7.0)]:
        want = reference(torch.tensor(a), torch.tensor(b))
        assert torch.equal(ours(a, b), want)
        assert torch.equal(theirs(torch.tensor(a), torch.tensor(b)), want)
        assert torch.equal(single(a, b)[0], want[1])  # image 2 alone = image 2 of the batch
    assert not torch.allclose(want[0], want[1])
    with pytest.raises(ValueError, match="2 seed"):
        BrownianNoise(torch.zeros([3, 4, 8, 8]), 0.03, 14.6, SEEDS)


def test_sde_samplers_keep_their_a1111_defaults_and_names():
    from trainer_core.generate.infotext import create_infotext, parse_infotext

    sde = resolve_sampler("DPM++ SDE")
    assert (sde.schedule, sde.infotext_schedule) == ("Karras", "Karras")
    assert SAMPLERS["DPM++ SDE"].second_order and not SAMPLERS["DPM++ 2M SDE"].second_order
    text = create_infotext(
        "cat", "", {"Steps": 20, "Sampler": "DPM++ SDE", "Schedule type": sde.infotext_schedule}
    )
    params = parse_infotext(text)
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ SDE", "Karras")
    a1111 = "cat\nSteps: 20, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 7, Seed: 5, Size: 64x64"
    params = parse_infotext(a1111)
    back = resolve_sampler(params["Sampler"], params["Schedule type"])
    assert (back.sampler, back.schedule, back.note) == ("DPM++ 2M SDE", "Exponential", "")
    assert resolve_sampler("DPM++ SDE Karras").sampler == "DPM++ SDE"  # legacy combined name


# ------------------------------------------------------------------ the SDE samplers on the tiny model


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


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_sde_samplers_on_the_tiny_model_are_per_image_and_reproducible(tiny, sampler):
    import numpy as np

    (alone_5,), calls, images = _images(tiny, sampler, 5)
    assert calls.count((8, 8)) == (2 * 3 - 1 if sampler == "DPM++ SDE" else 3)
    assert np.isfinite(alone_5).all() and alone_5.std() > 0
    assert f"Sampler: {sampler}," in images[0].infotext
    again, _, _ = _images(tiny, sampler, 5)
    assert np.array_equal(again[0], alone_5)
    (alone_6,), _, _ = _images(tiny, sampler, 6)
    batch, _, _ = _images(tiny, sampler, 5, batch_size=2)
    # one Brownian tree per image: image 2 of a batch is the image of seed + 1 alone
    assert np.abs(batch[0] - alone_5).max() <= 1 and np.abs(batch[1] - alone_6).max() <= 1
    assert np.abs(alone_5 - alone_6).max() > 10


def test_sde_sampler_hires_pass_counts_its_model_calls(tiny):
    from trainer_core.generate.pipeline import _loop_length, hires_schedule
    from trainer_core.generate.scheduled_conditioning import schedule_steps

    (image,), calls, _ = _images(
        tiny, "DPM++ SDE", 3, hires=True, hires_scale=1.5, hires_steps=4, denoise=0.5
    )
    # A1111 "second order": 2 calls a step except the last (a single Euler call to sigma 0), in both passes.
    assert calls.count((8, 8)) == 5 and calls.count((12, 12)) == 7
    resolved = resolve_sampler("DPM++ SDE")
    n, strength = hires_schedule(4, 0.5)
    assert _loop_length(tiny, resolved, 3) == 5 and _loop_length(tiny, resolved, n, strength) == 7
    assert schedule_steps("DPM++ SDE", 3) == 6
