"""A1111 sampler and schedule names -> diffusers schedulers (specs/generation.md §4).

The checkpoint's own scheduler config (Euler, timestep_spacing "leading", steps_offset 1) must never be used as
is: it starts at sigma 8.39 instead of 14.61 and loses detail. Every sampler therefore overrides the spacing
(or sets the sigma flags) so its sigma schedule matches A1111's k-diffusion one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import KxlError
from .infotext import SCHEDULE_SUFFIXES


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers class name
    default_schedule: str  # what "Automatic" means for this sampler
    options: Mapping[str, Any] = field(default_factory=dict)
    kdiffusion: bool = True  # k-diffusion samplers write their resolved schedule label into the infotext
    # A1111 "second_order": two model calls per step, so prompt-editing steps count over twice the step count
    second_order: bool = False


# k-diffusion's multistep SDE loop: full order up to the last step (diffusers lowers the last two below 15 steps
# unless told not to), the final step to sigma 0 returns the denoised sample, eta 1.
_SDE_MULTISTEP: dict[str, Any] = {
    "algorithm_type": "sde-dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": False,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
}

SAMPLERS: dict[str, SamplerSpec] = {
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", "Uniform"),
    "Euler": SamplerSpec("EulerDiscreteScheduler", "Uniform"),
    "DPM++ 2M": SamplerSpec(
        "DPMSolverMultistepScheduler", "Karras", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    # The SDE samplers draw A1111's per-image Brownian noise (brownian_noise.py), not the torch generator's.
    "DPM++ SDE": SamplerSpec("BrownianDPMSolverSDEScheduler", "Karras", second_order=True),
    "DPM++ 2M SDE": SamplerSpec("BrownianDPMSolverMultistepScheduler", "Exponential", _SDE_MULTISTEP),
    "DPM++ 3M SDE": SamplerSpec(
        "Brownian3MSDEScheduler",
        "Exponential",
        # k-diffusion's second 3M step is phi_2 * d: diffusers' "heun" form
        {**_SDE_MULTISTEP, "solver_order": 3, "solver_type": "heun"},
    ),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", "Karras", second_order=True),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", "Karras", second_order=True),
    "LMS": SamplerSpec("LMSDiscreteScheduler", "Uniform"),
    "Heun": SamplerSpec("HeunDiscreteScheduler", "Uniform", second_order=True),
    "DDIM": SamplerSpec(
        "DDIMScheduler", "DDIM", {"set_alpha_to_one": False, "steps_offset": 1}, kdiffusion=False
    ),
    "UniPC": SamplerSpec(
        "UniPCMultistepScheduler",
        "Uniform",  # A1111 runs UniPC time-uniform from t=1, i.e. from full noise: linspace, not leading
        {"solver_type": "bh1", "solver_order": 3, "lower_order_final": True},
        kdiffusion=False,
    ),
    "PLMS": SamplerSpec("PNDMScheduler", "DDIM", {"skip_prk_steps": True}, kdiffusion=False),
}
"""Samplers that reproduce A1111's. Not offered (an infotext naming them falls back to the default with a note):
DPM fast / DPM adaptive (adaptive step counts that no fixed diffusers loop has), DPM++ 2S a (no diffusers scheduler:
each step's second model call sits at a sigma that depends on the ancestral split, and its noise comes from the
per-image generators between the calls) and Restart (A1111's own loop of Heun steps with restart segments and noise
injected between them, also with no diffusers counterpart). Both would need a scheduler of our own implementing
k-diffusion's algorithm, checked against it; until then they stay out rather than approximate."""

DEFAULT_SAMPLER = "Euler a"
AUTOMATIC = "Automatic"

# Schedule label -> scheduler config overrides. Sigma flags need a scheduler that has them (not Euler a/DDIM/PLMS).
SCHEDULES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {"timestep_spacing": "linspace"},
    "Normal": {"timestep_spacing": "linspace"},
    "Karras": {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", "use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
}
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


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
    resolved = spec.default_schedule if schedule == AUTOMATIC else schedule
    if resolved == spec.default_schedule:
        # A1111 writes "Automatic" when the sampler has no default scheduler of its own (Euler a, DDIM, ...).
        shown = resolved if spec.kdiffusion and resolved != "Uniform" else AUTOMATIC
    else:
        shown = resolved
    return ResolvedSampler(sampler, resolved, shown, note)


def scheduler_config(base_config: Mapping[str, Any], resolved: ResolvedSampler) -> dict[str, Any]:
    """The diffusers config for `resolved`, derived from the checkpoint's scheduler config (betas etc.)."""
    spec = SAMPLERS[resolved.sampler]
    cls = scheduler_class(spec.scheduler)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    for flag in SIGMA_FLAGS:
        config[flag] = False
    config.update(spec.options)
    overrides = SCHEDULES[resolved.schedule]
    wanted_flags = [f for f in SIGMA_FLAGS if overrides.get(f)]
    if wanted_flags and not _accepts(cls, wanted_flags[0]):
        raise KxlError(
            f"sampler {resolved.sampler!r} cannot use the {resolved.schedule} schedule; choose Automatic, "
            "Uniform, SGM Uniform or another sampler"
        )
    config.update(overrides)
    return config


def make_scheduler(
    base_config: Mapping[str, Any], sampler: str, schedule: str = AUTOMATIC
) -> tuple[Any, ResolvedSampler]:
    """A fresh diffusers scheduler for an A1111 (sampler, schedule) pair, plus the resolved names."""
    from ..hf_quiet import quiet_hf

    resolved = resolve_sampler(sampler, schedule)
    cls = scheduler_class(SAMPLERS[resolved.sampler].scheduler)
    with quiet_hf():
        return cls.from_config(scheduler_config(base_config, resolved)), resolved


def scheduler_class(name: str) -> Any:
    """A scheduler class by name: ours (brownian_noise.py) first, else diffusers'."""
    import diffusers

    from . import brownian_noise

    return getattr(brownian_noise, name, None) or getattr(diffusers, name)


def _accepts(cls: Any, option: str) -> bool:
    import inspect

    return option in inspect.signature(cls.__init__).parameters
