"""A1111 sampler and schedule names -> schedulers that reproduce A1111's sampling (specs/generation.md §4).

Every sampler listed runs A1111's own algorithm (k-diffusion's, or A1111's DDIM/PLMS/UniPC) through
A1111Scheduler (kdiffusion_scheduler.py), with A1111's sigma schedules, initial noise scale, per-image noise and
model timesteps. Each one is checked against the real k-diffusion / A1111 code on an analytic model
(tests/core/data/sampler_vectors.json, made by tests/core/data/make_sampler_vectors.py).

Not offered (an infotext naming them falls back to the default with a note): DPM adaptive (its error control
decides at run time how many model calls it makes and where, which a loop planned before the first call cannot
follow), DDIM CFG++ (its guidance needs the unconditional prediction apart from the combined one, which the
diffusers pipeline does not hand to the scheduler) and LCM (a sampler for distilled models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import KxlError
from .infotext import SCHEDULE_SUFFIXES

# The steps the Generate tab and `kxl generate` start from (a sampler may ask for more, `SamplerSpec.default_steps`).
DEFAULT_STEPS = 28


@dataclass(frozen=True)
class SamplerSpec:
    algorithm: str  # kdiffusion_samplers.ALGORITHMS or kdiffusion_timestep_samplers.TIMESTEP_ALGORITHMS
    default_schedule: str  # what "Automatic" means for this sampler
    kdiffusion: bool = True  # k-diffusion samplers use the schedule type and write it into the infotext
    # A1111 "second_order": two model calls per step, so prompt-editing steps count over twice the step count
    second_order: bool = False
    discard_next_to_last_sigma: bool = False  # one sigma more, the one before the final 0 dropped
    brownian_noise: bool = False  # SDE noise from per-image Brownian trees
    solver_type: str | None = None  # DPM++ 2M SDE's second-order correction ("heun"; default midpoint)
    default_steps: int = DEFAULT_STEPS  # what the steps become when this sampler is picked (`default_steps`)


# A1111's options per sampler (sd_samplers_kdiffusion.samplers_k_diffusion / sd_samplers_timesteps).
SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("euler_ancestral", "Uniform"),
    "Euler": SamplerSpec("euler", "Uniform"),
    "DPM++ 2M": SamplerSpec("dpmpp_2m", "Karras"),
    "DPM++ SDE": SamplerSpec("dpmpp_sde", "Karras", second_order=True, brownian_noise=True),
    "DPM++ 2M SDE": SamplerSpec("dpmpp_2m_sde", "Exponential", brownian_noise=True),
    "DPM++ 2M SDE Heun": SamplerSpec("dpmpp_2m_sde", "Exponential", brownian_noise=True, solver_type="heun"),
    "DPM++ 2S a": SamplerSpec("dpmpp_2s_ancestral", "Karras", second_order=True),
    "DPM++ 3M SDE": SamplerSpec(
        "dpmpp_3m_sde", "Exponential", discard_next_to_last_sigma=True, brownian_noise=True
    ),
    "DPM2": SamplerSpec("dpm_2", "Karras", second_order=True, discard_next_to_last_sigma=True),
    "DPM2 a": SamplerSpec("dpm_2_ancestral", "Karras", second_order=True, discard_next_to_last_sigma=True),
    "LMS": SamplerSpec("lms", "Uniform"),
    "Heun": SamplerSpec("heun", "Uniform", second_order=True),
    "Restart": SamplerSpec("restart", "Karras", second_order=True),
    # DPM fast spends its model calls on third-order steps (n // 3 + 1 of them): 28 calls make 10 ancestral steps,
    # too coarse for the layout and colours the first steps settle (the demo base read back 5/9 backgrounds at
    # 28, 8/9 at 40, where the other samplers read 8/9 or 9/9 at 28). 40 calls are still fewer than Heun's or
    # DPM2's 55 at 28 steps.
    "DPM fast": SamplerSpec("dpm_fast", "Uniform", default_steps=40),
    # A1111's timestep samplers ignore the schedule type; "DDIM" is only their "Automatic".
    "DDIM": SamplerSpec("ddim", "DDIM", kdiffusion=False),
    "UniPC": SamplerSpec("unipc", "DDIM", kdiffusion=False),
    "PLMS": SamplerSpec("plms", "DDIM", kdiffusion=False),
}

DEFAULT_SAMPLER = "Euler a"
# A1111's schedule types, in its order. Spelled out here rather than read from kdiffusion_sigmas (which builds them
# with torch) so that the GUI's forms can list them without importing torch; a test keeps the two in step.
SCHEDULE_LABELS = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")  # fmt: skip
AUTOMATIC = "Automatic"

# Schedule types (A1111's labels, in A1111's order): "Automatic" resolves to the sampler's default.
SCHEDULES: dict[str, str] = {
    AUTOMATIC: "the sampler's default",
    **{label: label for label in SCHEDULE_LABELS},
}


def default_steps(sampler: str) -> int:
    """The steps a run of `sampler` (an A1111 name, legacy forms included) starts from when none are given."""
    return SAMPLERS[resolve_sampler(sampler).sampler].default_steps  # an unknown name resolves to the default


@dataclass(frozen=True)
class ResolvedSampler:
    sampler: str  # A1111 sampler name, e.g. "DPM++ 2M"
    schedule: str  # the schedule actually used, never "Automatic"
    infotext_schedule: str  # what A1111 writes as "Schedule type"
    note: str = ""  # why the request was changed (unknown sampler), empty when it was not


def resolve_sampler(sampler: str, schedule: str = AUTOMATIC) -> ResolvedSampler:
    """A1111's get_sampler_and_scheduler: split legacy names ("DPM++ 2M Karras"), resolve Automatic.

    An unknown sampler falls back to the default (A1111 does the same) and says so in `note`; an unknown
    schedule label is an error because silently changing the noise schedule changes the picture.
    """
    sampler = (sampler or "").strip()
    schedule = (schedule or AUTOMATIC).strip()
    note = ""
    if sampler not in SAMPLERS:
        for suffix, label in sorted(SCHEDULE_SUFFIXES.items(), key=lambda item: -len(item[0])):
            if sampler.endswith(" " + suffix) and sampler[: -len(suffix) - 1] in SAMPLERS:
                sampler, schedule = sampler[: -len(suffix) - 1], label
                break
    if sampler not in SAMPLERS:
        note = f"sampler {sampler!r} is not available here; using {DEFAULT_SAMPLER}"
        sampler = DEFAULT_SAMPLER
    if schedule not in SCHEDULES:
        raise KxlError(
            f"unknown or unsupported schedule type {schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    spec = SAMPLERS[sampler]
    if schedule != AUTOMATIC:
        return ResolvedSampler(sampler, schedule, schedule, note)
    # A1111 writes the default's label for Automatic, except where the sampler has no default scheduler of its
    # own (Euler a, Euler, LMS, Heun: plain model sigmas) and for the timestep samplers, which ignore the type.
    shown = spec.default_schedule if spec.kdiffusion and spec.default_schedule != "Uniform" else AUTOMATIC
    return ResolvedSampler(sampler, spec.default_schedule, shown, note)


def make_scheduler(
    base_config: Mapping[str, Any], sampler: str, schedule: str = AUTOMATIC
) -> tuple[Any, ResolvedSampler]:
    """A fresh scheduler for an A1111 (sampler, schedule) pair (betas from the checkpoint's scheduler config),
    plus the resolved names."""
    from .kdiffusion_scheduler import CONFIG_KEYS, A1111Scheduler

    resolved = resolve_sampler(sampler, schedule)
    spec = SAMPLERS[resolved.sampler]
    model = {key: base_config[key] for key in CONFIG_KEYS if key in base_config}
    scheduler = A1111Scheduler(
        **model,
        algorithm=spec.algorithm,
        schedule=resolved.schedule,
        discard_next_to_last_sigma=spec.discard_next_to_last_sigma,
        brownian_noise=spec.brownian_noise,
        solver_type=spec.solver_type,
    )
    return scheduler, resolved
