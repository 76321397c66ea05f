"""A1111's Brownian noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE), and the schedulers that use it.

A1111 gives these samplers k-diffusion's BrownianTreeNoiseSampler with ONE tree per image, seeded with that image's
seed, spanning [smallest sigma > 0, largest sigma] of the pass's full schedule (the hires pass gets fresh trees from
the same seeds). An image is then the same whatever the batch size. diffusers' schedulers either draw the noise from
the torch generator (DPM++ 2M/3M SDE) or build one tree for the whole batch (DPM++ SDE with an int seed); the classes
here replace that with `BrownianNoise`, seeded by `seed_brownian_noise` before each pass.

The multistep class also follows k-diffusion where diffusers differs: the model gets the fractional timestep of each
sigma (diffusers rounds some schedules), the initial noise is scaled to the first sigma (diffusers assumes 1.0),
the second-to-last step keeps its full order, and the 3M update uses DPM-Solver++'s phi_3 term with k-diffusion's sign.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSDEScheduler

# torchsde warns when a query time lands a float rounding outside the tree's span (sigma_min/max are float32,
# queries float64); it clamps and the noise is right. A1111 prints the same line; users cannot act on it.
warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", module=r"torchsde\.")


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler as A1111 builds it: a torchsde.BrownianTree per image.

    Trees are float32 on the sample's device whatever the UNet dtype: A1111 samples in float32 latents, and the
    tree's values depend on its dtype.
    """

    def __init__(
        self, sample: torch.Tensor, sigma_min: float, sigma_max: float, seeds: Sequence[int]
    ) -> None:
        import torchsde

        if len(seeds) != sample.shape[0]:
            raise ValueError(f"{len(seeds)} seed(s) for a batch of {sample.shape[0]} image(s)")
        t0, t1 = float(sigma_min), float(sigma_max)
        w0 = torch.zeros(sample.shape[1:], dtype=torch.float32, device=sample.device)
        self._trees = [
            torchsde.BrownianTree(t0, w0, t1, entropy=int(seed), tol=1e-6, pool_size=24) for seed in seeds
        ]

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        """Unit-variance noise for the step sigma -> sigma_next (the tree's increment over that interval)."""
        a = torch.as_tensor(sigma, dtype=torch.float32)
        b = torch.as_tensor(sigma_next, dtype=torch.float32)
        # k-diffusion queries the tree low-to-high and flips the sign when the step runs downwards.
        sign = 1.0 if a < b else -1.0
        lo, hi = (a, b) if a < b else (b, a)
        w = torch.stack([tree(float(lo), float(hi)) for tree in self._trees]) * sign
        return w / (b - a).abs().sqrt().to(w.device)


def seed_brownian_noise(scheduler: Any, seeds: Sequence[int]) -> None:
    """Give an SDE scheduler the batch's image seeds (one tree each); other schedulers are left as they are."""
    if isinstance(scheduler, (BrownianDPMSolverSDEScheduler, BrownianDPMSolverMultistepScheduler)):
        scheduler.noise_sampler_seed = [int(s) for s in seeds]
        scheduler.noise_sampler = None


def _brownian(scheduler: Any, sample: torch.Tensor) -> BrownianNoise:
    seeds = scheduler.noise_sampler_seed
    if seeds is None:
        raise RuntimeError(
            "the SDE sampler's Brownian noise needs the image seeds: call seed_brownian_noise first"
        )
    if isinstance(seeds, int):
        seeds = [seeds + i for i in range(sample.shape[0])]
    sigmas = scheduler.sigmas
    return BrownianNoise(sample, sigmas[sigmas > 0].min(), sigmas.max(), seeds)


class BrownianDPMSolverSDEScheduler(DPMSolverSDEScheduler):
    """A1111 "DPM++ SDE": diffusers' update equals k-diffusion's sample_dpmpp_sde (r = 1/2, eta 1); only the
    noise is replaced by per-image trees. The float32 noise is cast to the sample's dtype so that an fp16 loop
    stays fp16."""

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any
    ):
        if self.noise_sampler is None:
            noise = _brownian(self, sample)
            self.noise_sampler = lambda s, s_next: noise(s, s_next).to(sample.dtype)
        return super().step(model_output, timestep, sample, *args, **kwargs)


class BrownianDPMSolverMultistepScheduler(DPMSolverMultistepScheduler):
    """A1111 "DPM++ 2M SDE" (k-diffusion sample_dpmpp_2m_sde, midpoint, eta 1) with algorithm_type
    "sde-dpmsolver++", solver_order 2, solver_type "midpoint", lower_order_final False."""

    noise_sampler_seed: list[int] | int | None = None
    noise_sampler: BrownianNoise | None = None
    discard_next_to_last_sigma = False  # A1111 option of DPM++ 3M SDE (and DPM2)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any
    ) -> None:
        extra = 1 if self.discard_next_to_last_sigma else 0
        super().set_timesteps(num_inference_steps + extra, device=device, **kwargs)
        sigmas = self.sigmas
        if extra:
            # A1111 builds steps + 1 sigmas and drops the one before the final 0.
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        log_sigmas = np.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).numpy() ** 0.5)
        # k-diffusion's CompVisDenoiser calls the model at the fractional timestep of each sigma.
        t = np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas[:-1].numpy().astype(np.float64)])
        self.sigmas = sigmas
        self.timesteps = torch.from_numpy(t.astype(np.float32)).to(device)
        self.num_inference_steps = len(t)
        # k-diffusion starts from noise * sigma_max, which is noise * sigma_t(sigma_max) in diffusers' VP space.
        self.init_noise_sigma = float(self._sigma_to_alpha_sigma_t(sigmas[0])[1])
        self.noise_sampler = None

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: Any = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        if self.step_index is None:
            self._init_step_index(timestep)
        if variance_noise is None:
            sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
            if sigma_next > 0:
                if self.noise_sampler is None:
                    self.noise_sampler = _brownian(self, sample)
                variance_noise = self.noise_sampler(sigma, sigma_next)
            else:
                variance_noise = torch.zeros_like(sample, dtype=torch.float32)  # the last step adds no noise
        return super().step(
            model_output,
            timestep,
            sample,
            generator=generator,
            variance_noise=variance_noise,
            return_dict=return_dict,
        )


class Brownian3MSDEScheduler(BrownianDPMSolverMultistepScheduler):
    """A1111 "DPM++ 3M SDE" (k-diffusion sample_dpmpp_3m_sde, eta 1): steps + 1 sigmas with the next-to-last
    dropped, the second step in the "heun" form (phi_2 * d) and a third-order update of our own, because diffusers'
    SDE third-order term adds + 0.5 * D2 where k-diffusion's -phi_3 * d2 has - 0.5."""

    discard_next_to_last_sigma = True

    def multistep_dpm_solver_third_order_update(
        self,
        model_output_list: list[torch.Tensor],
        *args: Any,
        sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        lambdas = [-torch.log(self.sigmas[j]) for j in (i + 1, i, i - 1, i - 2)]  # lambda = -log(k-sigma)
        _, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        h, h_1, h_2 = lambdas[0] - lambdas[1], lambdas[1] - lambdas[2], lambdas[2] - lambdas[3]
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        r0, r1 = h_1 / h, h_2 / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        h_eta = 2.0 * h
        phi_2 = torch.expm1(-h_eta) / h_eta + 1.0
        phi_3 = phi_2 / h_eta - 0.5
        return (
            (sigma_t / sigma_s0 * torch.exp(-h)) * sample
            + alpha_t * (-torch.expm1(-h_eta)) * m0
            + alpha_t * phi_2 * d1
            - alpha_t * phi_3 * d2
            + sigma_t * torch.sqrt(-torch.expm1(-h_eta)) * noise
        )
