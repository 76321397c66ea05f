"""A1111's noise levels: the model's 1000 discrete sigmas and the schedule types built from them.

k-diffusion wraps an epsilon (or v) model as a denoiser over a table of 1000 sigmas, sigma_t = sqrt((1 - a_t) / a_t)
with a_t the model's alphas_cumprod; it calls the model at the FRACTIONAL timestep of any sigma (log-sigma
interpolation between table entries). A1111 builds every "Schedule type" from that table or from its two ends.
diffusers' schedulers only approximate this (linear-in-sigma interpolation, rounded timesteps), which is why the
samplers here compute their schedules themselves.

A1111 computes alphas_cumprod in float64 (sgm's LegacyDDPMDiscretization) and keeps a float32 copy on the model;
`alphas_cumprod` does the same, so that the sigma table matches A1111's to the last bit rather than diffusers'
float32 cumprod.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..errors import KxlError

# A1111 opts.beta_dist_alpha / beta_dist_beta defaults ("Beta" schedule)
BETA_ALPHA = 0.6
BETA_BETA = 0.6
# The Align Your Steps table A1111 uses for SDXL models (its SD 1.5 table is not used: this workbench is SDXL only)
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def alphas_cumprod(config: Mapping[str, Any]) -> torch.Tensor:
    """The model's alphas_cumprod (float32) from a diffusers scheduler config, computed in float64 as A1111 does."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "scaled_linear")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
    elif kind == "scaled_linear":  # CompVis/sgm "linear": linear in sqrt(beta)
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise KxlError(
            f"the model's scheduler config has beta_schedule {kind!r}; only scaled_linear and linear work"
        )
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class ModelSigmas:
    """k-diffusion's DiscreteSchedule: the sigma table and the sigma <-> fractional timestep maps."""

    def __init__(self, acp: torch.Tensor) -> None:
        self.alphas_cumprod = acp.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose log-sigma interpolates to `sigma` (clamped to the table's ends)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.log()
        last = self.log_sigmas.shape[0] - 2
        # index of the last table entry <= log_sigma, as the lower end of the bracketing pair
        low = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, last)
        low_log, high_log = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((low_log - log_sigma.reshape(-1)) / (low_log - high_log)).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        """k-diffusion get_sigmas(n): n timesteps evenly from the last to the first, plus a final 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _append_zero(torch.exp(ramp * (hi - lo) + lo))


def _through_timesteps(model: ModelSigmas, n: int, drop_last: bool) -> torch.Tensor:
    # "Normal" (n timesteps from the first sigma's to the last sigma's) and "SGM Uniform" (n + 1, the last dropped)
    start = model.sigma_to_t(torch.tensor(model.sigma_max))
    end = model.sigma_to_t(torch.tensor(model.sigma_min))
    ts = torch.linspace(start, end, n + 1)[:-1] if drop_last else torch.linspace(start, end, n)
    return torch.tensor([float(model.t_to_sigma(t)) for t in ts] + [0.0], dtype=torch.float32)


def simple(model: ModelSigmas, n: int) -> torch.Tensor:
    stride = len(model.sigmas) / n
    picked = [float(model.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def ddim_uniform(model: ModelSigmas, n: int) -> torch.Tensor:
    """The "DDIM" schedule: every (1000 // n)-th table sigma from timestep 1 up, highest first (its length is
    len(range(1, 1000, 1000 // n)), which is not always n)."""
    stride = max(len(model.sigmas) // n, 1)
    picked = [float(model.sigmas[i]) for i in range(1, len(model.sigmas), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def beta(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    from scipy import stats

    ppf = [stats.beta.ppf(x, BETA_ALPHA, BETA_BETA) for x in 1 - np.linspace(0, 1, n)]
    return torch.tensor([sigma_min + p * (sigma_max - sigma_min) for p in ppf] + [0.0], dtype=torch.float32)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """KL-optimal steps; A1111 ends this one at sigma_min, without a final 0."""
    a_min, a_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * a_min + (1.0 - frac) * a_max)


def align_your_steps(n: int) -> torch.Tensor:
    """NVIDIA's 10-step SDXL table, log-linearly resampled to n steps."""
    if n == len(AYS_SDXL):
        return torch.tensor([*AYS_SDXL, 0.0], dtype=torch.float32)
    xs = np.linspace(0, 1, len(AYS_SDXL))
    ys = np.log(AYS_SDXL[::-1])
    resampled = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return torch.tensor([*resampled, 0.0], dtype=torch.float32)


_Schedule = Callable[[ModelSigmas, int], torch.Tensor]
SCHEDULE_FUNCTIONS: dict[str, _Schedule] = {
    "Uniform": lambda m, n: m.uniform(n),
    "Karras": lambda m, n: karras(n, m.sigma_min, m.sigma_max),
    "Exponential": lambda m, n: exponential(n, m.sigma_min, m.sigma_max),
    "Polyexponential": lambda m, n: polyexponential(n, m.sigma_min, m.sigma_max),
    "SGM Uniform": lambda m, n: _through_timesteps(m, n, drop_last=True),
    "KL Optimal": lambda m, n: kl_optimal(n, m.sigma_min, m.sigma_max),
    "Align Your Steps": lambda _m, n: align_your_steps(n),
    "Simple": simple,
    "Normal": lambda m, n: _through_timesteps(m, n, drop_last=False),
    "DDIM": ddim_uniform,
    "Beta": lambda m, n: beta(n, m.sigma_min, m.sigma_max),
}


def a1111_sigmas(
    model: ModelSigmas, schedule: str, steps: int, discard_next_to_last_sigma: bool = False
) -> torch.Tensor:
    """KDiffusionSampler.get_sigmas: the pass's sigmas (float32, ending in 0 except KL Optimal).

    Samplers with discard_next_to_last_sigma (DPM2, DPM2 a, DPM++ 3M SDE) build one sigma more and drop the one
    before the last, so the step count stays `steps`.
    """
    if schedule not in SCHEDULE_FUNCTIONS:
        raise KxlError(f"unknown schedule type {schedule!r}; choose one of {', '.join(SCHEDULE_FUNCTIONS)}")
    sigmas = SCHEDULE_FUNCTIONS[schedule](model, steps + 1 if discard_next_to_last_sigma else steps)
    if discard_next_to_last_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to(torch.float32)
