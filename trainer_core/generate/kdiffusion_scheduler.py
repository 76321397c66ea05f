"""A diffusers-compatible scheduler that runs A1111's samplers exactly (kdiffusion_samplers.py and
kdiffusion_timestep_samplers.py), so that the diffusers SDXL pipelines can drive them.

How it fits the diffusers loop: `set_timesteps` builds A1111's schedule for the pass and dry-runs the sampler once
(zeros in, zeros out) to learn at which noise level it will call the model; those calls, one per loop iteration,
are the `timesteps` (the fractional model timestep of each sigma, as k-diffusion's CompVisDenoiser passes them).
`step` feeds the model output of the current call into the running sampler and returns the latent of the next
call, so a second-order step is two iterations and a Restart pass is as long as its restart plan.

What it keeps from A1111 that diffusers' schedulers do not:
- the latent is held in float32 between calls whatever the UNet dtype (A1111 samples in float32); the UNet gets
  its input cast to `model_dtype`;
- the first pass starts from noise * sigmas[0] (k-diffusion), the timestep samplers from unit noise;
- ancestral and Restart noise come from the per-image generators passed to `step` (A1111's ImageRNG), the SDE
  samplers' noise from one Brownian tree per image seeded with that image's seed (`use_image_seeds`);
- img2img (the hires pass) is A1111's: with `denoise_steps` H set, `set_timesteps(N)` builds the N-step schedule
  and the pass runs its last H steps; the pipeline must then be called with strength 1 so that it keeps every
  timestep (diffusers' own strength slicing assumes a fixed number of calls per step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..errors import KxlError
from .brownian_noise import BrownianNoise
from .kdiffusion_samplers import ALGORITHMS
from .kdiffusion_sigmas import ModelSigmas, a1111_sigmas, alphas_cumprod
from .kdiffusion_timestep_samplers import (
    TIMESTEP_ALGORITHMS,
    VPSchedule,
    a1111_timesteps,
    unipc_times,
)

Tensor = torch.Tensor
CONFIG_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
)


class A1111Scheduler(SchedulerMixin, ConfigMixin):
    """One A1111 sampler + schedule type, driven one model call per diffusers loop iteration."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        algorithm: str = "euler_ancestral",
        schedule: str = "Uniform",
        discard_next_to_last_sigma: bool = False,
        brownian_noise: bool = False,
        solver_type: str | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS and algorithm not in TIMESTEP_ALGORITHMS:
            raise ValueError(f"unknown sampling algorithm {algorithm!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise KxlError(
                f"the model's prediction type {prediction_type!r} is not supported (epsilon or v only)"
            )
        self.model_sigmas = ModelSigmas(alphas_cumprod(self.config))
        self.kdiffusion = algorithm in ALGORITHMS
        self.image_seeds: list[int] | None = None
        self.model_dtype: torch.dtype | None = None
        self.denoise_steps: int | None = None
        self.timesteps = torch.zeros(0)
        self.sigmas = torch.zeros(0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._levels: list[Tensor] = []
        self._make: Callable[[Tensor, Callable[[Tensor, Tensor], Tensor]], Any] | None = None
        self._noised: Callable[[Tensor, Tensor], Tensor] | None = None
        self._reset_run()

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def use_image_seeds(self, seeds: Sequence[int]) -> None:
        """The batch's image seeds: the SDE samplers grow one Brownian tree from each (A1111's p.all_seeds)."""
        self.image_seeds = [int(s) for s in seeds]

    # ------------------------------------------------------------------------------------------ schedule

    def set_timesteps(self, num_inference_steps: int, device: Any = None, **_: Any) -> None:
        """A1111's schedule for a pass of `num_inference_steps` (with `denoise_steps`: its last H steps)."""
        steps = int(num_inference_steps)
        if steps < 1:
            raise KxlError(f"a pass needs at least one step, got {steps}")
        if self.denoise_steps is not None and not 1 <= self.denoise_steps <= steps:
            raise KxlError(f"img2img runs {self.denoise_steps} of {steps} steps: it must be 1..{steps}")
        if self.kdiffusion:
            self._plan_kdiffusion(steps)
        else:
            self._plan_timesteps(steps)
        self._levels = _dry_run(self._make)
        if self.kdiffusion:
            levels = torch.stack(self._levels) if self._levels else torch.zeros(0)
            timesteps = self.model_sigmas.sigma_to_t(levels)
        else:
            timesteps = torch.stack(self._levels) if self._levels else torch.zeros(0)
        self.timesteps = timesteps.to(torch.float32).to(device)
        self.num_inference_steps = steps
        self._reset_run()

    def _plan_kdiffusion(self, steps: int) -> None:
        cfg = self.config
        sigmas = a1111_sigmas(self.model_sigmas, cfg.schedule, steps, cfg.discard_next_to_last_sigma)
        # A1111 sample_img2img: sigma_sched = sigmas[steps - t_enc - 1:] with t_enc = H - 1
        sigma_sched = sigmas[steps - self.denoise_steps :] if self.denoise_steps else sigmas
        options = {"solver_type": cfg.solver_type} if cfg.solver_type else {}
        algorithm = ALGORITHMS[cfg.algorithm]
        self.sigmas = sigmas
        self.init_noise_sigma = float(sigma_sched[0])
        if cfg.algorithm == "dpm_fast":
            # DPM fast takes a sigma range and a call count, not sigmas: the model's own range and `steps` in
            # txt2img (the schedule type only scales the initial noise), the img2img part's range otherwise
            if self.denoise_steps:
                span = (len(sigma_sched) - 1, sigma_sched[-2], sigma_sched[0])
            else:
                model = self.model_sigmas
                span = (steps, torch.tensor(model.sigma_min), torch.tensor(model.sigma_max))
            self._make = lambda x, noise: algorithm(x, noise, *span)
        else:
            self._make = lambda x, noise: algorithm(x, sigma_sched, noise, **options)
        self._noised = lambda x, noise: x + noise * sigma_sched[0]

    def _plan_timesteps(self, steps: int) -> None:
        acp = self.model_sigmas.alphas_cumprod
        timesteps = a1111_timesteps(steps)
        noise_level = None
        if self.denoise_steps:  # A1111 CompVisSampler.sample_img2img with t_enc = H - 1
            t_enc = self.denoise_steps - 1
            noise_level = acp[timesteps[t_enc]]
            timesteps = timesteps[:t_enc]
        name = self.config.algorithm
        if name == "unipc":
            vp = VPSchedule(acp)
            # A1111 starts img2img UniPC at the continuous time of the last kept timestep
            t_start = timesteps[-1] / 1000 + 1 / 1000 if noise_level is not None and len(timesteps) else None
            times = unipc_times(vp, len(timesteps), t_start)
            self._make = lambda x, _noise: TIMESTEP_ALGORITHMS["unipc"](x, vp, times)
        else:
            algorithm, kept = TIMESTEP_ALGORITHMS[name], timesteps
            self._make = lambda x, _noise: algorithm(x, acp, kept)
        self.sigmas = torch.zeros(0)
        self.init_noise_sigma = 1.0
        if noise_level is not None:
            self._noised = lambda x, noise: x * torch.sqrt(noise_level) + noise * torch.sqrt(1 - noise_level)
        else:
            self._noised = lambda x, noise: x + noise

    # ------------------------------------------------------------------------------------------ the loop

    def _reset_run(self) -> None:
        self._index = 0
        self._running: Any = None
        self._pending: tuple[Tensor, Tensor] | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        if begin_index != 0:
            raise RuntimeError(
                "A1111 samplers run img2img over denoise_steps; call the pipeline with strength 1.0"
            )

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Any = None) -> Tensor:
        """The img2img start: the init latent noised to the pass's first level (the timestep argument is not
        needed: the level is the schedule's)."""
        if self._noised is None:
            raise RuntimeError("call set_timesteps before add_noise")
        return self._noised(original_samples.to(torch.float32), noise.to(torch.float32))

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The UNet input for the current call: k-diffusion's c_in = 1 / sqrt(sigma^2 + 1) (the timestep samplers
        feed x as is), in the UNet's dtype."""
        if self.kdiffusion:
            sigma = self._levels[self._index]
            sample = sample * (1 / (sigma**2 + 1) ** 0.5)
        return sample.to(self.model_dtype) if self.model_dtype is not None else sample

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: Any = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        if self._make is None:
            raise RuntimeError("call set_timesteps before step")
        if self._index >= len(self._levels):
            raise RuntimeError(f"step called {self._index + 1} times for a pass of {len(self._levels)} calls")
        if self._running is None:
            x = sample.to(torch.float32)
            self._running = self._make(x, self._noise_source(x, generator))
            self._pending = next(self._running)
        x, level = self._pending
        if not torch.equal(level.reshape(()), self._levels[self._index].reshape(())):
            raise RuntimeError("the sampler asked for the model at another noise level than planned")
        result = self._from_model(model_output.to(torch.float32), x, level)
        try:
            self._pending = self._running.send(result)
            prev = self._pending[0]
        except StopIteration as done:
            self._pending, prev = None, done.value
        self._index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _from_model(self, output: Tensor, x: Tensor, level: Tensor) -> Tensor:
        """What the sampler consumes: k-diffusion's denoised sample, or the timestep samplers' epsilon."""
        v_pred = self.config.prediction_type == "v_prediction"
        if self.kdiffusion:
            sigma = level
            if v_pred:  # CompVisVDenoiser
                c_skip, c_out = 1 / (sigma**2 + 1), -sigma / (sigma**2 + 1) ** 0.5
                return x * c_skip + output * c_out
            return x + output * -sigma  # CompVisDenoiser: c_out = -sigma
        if v_pred:  # CompVisTimestepsVDenoiser: eps from v at the integer timestep
            acp = self.model_sigmas.alphas_cumprod[level.to(torch.int64)]
            return acp.sqrt() * output + (1 - acp).sqrt() * x
        return output

    def _noise_source(self, x: Tensor, generator: Any) -> Callable[[Tensor, Tensor], Tensor]:
        if self.kdiffusion and self.config.brownian_noise:
            if self.image_seeds is None:
                raise RuntimeError(
                    "the SDE samplers' Brownian noise needs the image seeds: call use_image_seeds"
                )
            sigmas = self.sigmas
            return BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), self.image_seeds)
        return lambda _sigma, _sigma_next: _generator_noise(x, generator)


def _generator_noise(x: Tensor, generator: Any) -> Tensor:
    """A1111's ImageRNG.next(): one standard-normal latent per image, each from that image's generator."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generator(s) for a batch of {x.shape[0]} image(s)")
        draws = [
            torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator
        ]
        return torch.stack(draws).to(x.device)
    if generator is not None:
        draw = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return draw.to(x.device)
    return torch.randn_like(x)


def _dry_run(make: Callable[..., Any] | None) -> list[Tensor]:
    """The noise levels (sigma or timestep) at which the sampler calls the model: run it on zeros."""
    if make is None:
        return []
    zero = torch.zeros(1, 1, 1, 1)  # one 1x1 latent: shape-generic code (UniPC's einsums) runs unchanged
    running = make(zero, lambda _a, _b: zero)
    levels = []
    try:
        _, level = next(running)
        while True:
            levels.append(level.reshape(()).clone())
            _, level = running.send(zero)
    except StopIteration:
        pass
    return levels
