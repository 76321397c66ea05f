"""A1111's timestep samplers (DDIM, PLMS, UniPC) as coroutines for the same scheduler as the k-diffusion ones.

Since v1.6 A1111 runs these three in k-diffusion's harness (sd_samplers_timesteps_impl): a function over the
model's integer timesteps that calls the epsilon model and returns the final latent. Each coroutine here yields
`(x, t)` when it needs the model at timestep t (x unscaled, in the DDPM's variance-preserving space) and receives
the CFG-combined epsilon back.

A1111's quirks are kept, since matching it is the point:
- the timesteps are `range(0, 1000, 1000 // steps) + 1`, and DDIM/PLMS loop over all but the first, so DDIM makes
  one model call fewer than that list is long and ends at alphas_cumprod[1], not at a clean sample;
- img2img (the hires pass) noises to the level of timestep `t_enc` but starts one timestep lower;
- UniPC (bh1, order 3, time-uniform from t = 1, lower order at the end) runs `len(timesteps)` steps of its own
  continuous schedule and refuses fewer steps than its order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from ..errors import KxlError

Tensor = torch.Tensor
Sampler = Generator[tuple[Tensor, Tensor], Tensor, Tensor]
UNIPC_ORDER = 3


def a1111_timesteps(steps: int) -> torch.Tensor:
    """CompVisSampler.get_timesteps: every (1000 // steps)-th timestep from 1 (int64)."""
    if steps > 1000:  # A1111 fails here too (a zero stride)
        raise KxlError(
            f"DDIM, PLMS and UniPC take at most 1000 steps in a pass; this one has {steps} (a hires pass has "
            "hires steps / denoising strength): use fewer steps or a higher denoising strength"
        )
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def _alpha_tables(acp: Tensor, timesteps: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per timestep index: (alpha_t, sqrt(1 - alpha_t), alpha of the timestep it steps to) as float32 scalars.

    The step from timesteps[i] lands on timesteps[i - 1]'s alpha (alphas_cumprod[0] before the first)."""
    alphas = acp[timesteps]
    sqrt_one_minus = torch.sqrt(1 - alphas)
    alphas_prev = acp[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))]
    scalar = lambda v: torch.tensor(v.item(), dtype=torch.float32)  # noqa: E731 - A1111 goes through .item()
    return [
        (scalar(a), scalar(s), scalar(p)) for a, s, p in zip(alphas, sqrt_one_minus, alphas_prev, strict=True)
    ]


def _ddim_update(x: Tensor, eps: Tensor, alpha: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    a_t, sqrt_one_minus_at, a_prev = alpha
    pred_x0 = (x - sqrt_one_minus_at * eps) / a_t.sqrt()
    return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * eps


def ddim(x: Tensor, acp: Tensor, timesteps: Tensor) -> Sampler:
    """A1111 DDIM at its default eta 0 (deterministic)."""
    alphas = _alpha_tables(acp, timesteps)
    for index in range(len(timesteps) - 1, 0, -1):
        eps = yield x, timesteps[index].float()
        x = _ddim_update(x, eps, alphas[index])
    return x


def plms(x: Tensor, acp: Tensor, timesteps: Tensor) -> Sampler:
    """Pseudo linear multistep: a pseudo improved-Euler first step (two calls), then Adams-Bashforth up to 4th order."""
    alphas = _alpha_tables(acp, timesteps)
    old_eps: list[Tensor] = []
    for index in range(len(timesteps) - 1, 0, -1):
        eps = yield x, timesteps[index].float()
        if not old_eps:
            x_prev = _ddim_update(x, eps, alphas[index])
            eps_next = yield x_prev, timesteps[index - 1].float()
            eps_prime = (eps + eps_next) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = _ddim_update(x, eps_prime, alphas[index])
        old_eps = [*old_eps[-2:], eps]
    return x


class VPSchedule:
    """UniPC's NoiseScheduleVP('discrete'): log(alpha_t) piecewise linear in continuous time t in [1/N, 1]."""

    def __init__(self, acp: Tensor) -> None:
        self.total_n = len(acp)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.log_alpha_array = 0.5 * torch.log(acp.to(torch.float32))

    def log_alpha(self, t: Tensor) -> Tensor:
        xp, yp = self.t_array, self.log_alpha_array
        # the bracketing segment; beyond either end the outermost segment is extended
        j = (torch.searchsorted(xp, t.reshape(-1)) - 1).clamp(0, len(xp) - 2)
        x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
        return (y0 + (t.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)).reshape(t.shape)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: Tensor) -> Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def model_time(self, t: Tensor) -> Tensor:
        """The model's (fractional) timestep for continuous time t."""
        return (t - 1.0 / self.total_n) * 1000.0


def unipc_times(vp: VPSchedule, steps: int, t_start: Tensor | float | None = None) -> Tensor:
    if steps < UNIPC_ORDER:
        raise KxlError(
            f"UniPC needs at least {UNIPC_ORDER} steps in a pass; this pass has {steps} (A1111 stops there too): "
            "use more steps or another sampler"
        )
    t_end = 1.0 / vp.total_n
    return torch.linspace(1.0 if t_start is None else t_start, t_end, steps + 1)


def _unipc_bh1_update(
    vp: VPSchedule,
    x: Tensor,
    model_prev: list[Tensor],
    t_prev: list[Tensor],
    t: Tensor,
    order: int,
    use_corrector: bool,
) -> Generator[tuple[Tensor, Tensor], Tensor, tuple[Tensor, Tensor | None]]:
    """One UniPC step (data prediction, B(h) = h): predictor from the stored model values, then, with the
    corrector, one model call at the predicted point and the corrected update."""
    lambda_prev_0, lambda_t = vp.lam(t_prev[-1]), vp.lam(t)
    m0 = model_prev[-1]
    sigma_prev_0, sigma_t = vp.std(t_prev[-1]), vp.std(t)
    alpha_t = torch.exp(vp.log_alpha(t))
    h = lambda_t - lambda_prev_0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (vp.lam(t_prev[-(i + 1)]) - lambda_prev_0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - m0) / rk)
    rks.append(torch.tensor(1.0))
    r = torch.stack(rks).to(torch.float32)
    hh = -h
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(r, i - 1))
        b.append(h_phi_k * factorial / hh)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    big_r, b_vec = torch.stack(rows), torch.stack(b)
    x_base = (sigma_t / sigma_prev_0) * x - (alpha_t * h_phi_1) * m0
    stacked = torch.stack(d1s, dim=1) if d1s else None
    if stacked is not None:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(big_r[:-1, :-1], b_vec[:-1])
        x_t = x_base - (alpha_t * hh) * torch.einsum("k,bkchw->bchw", rhos_p.to(stacked.device), stacked)
    else:
        x_t = x_base
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(big_r, b_vec)
    eps = yield x_t, vp.model_time(t)
    model_t = (x_t - sigma_t * eps) / alpha_t
    corr = torch.einsum("k,bkchw->bchw", rhos_c[:-1].to(x.device), stacked) if stacked is not None else 0
    return x_base - (alpha_t * hh) * (corr + rhos_c[-1] * (model_t - m0)), model_t


def unipc(x: Tensor, vp: VPSchedule, times: Tensor) -> Sampler:
    steps = len(times) - 1

    def x0(x_: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (x_ - vp.std(t) * eps) / vp.alpha(t)

    eps = yield x, vp.model_time(times[0])
    model_prev, t_prev = [x0(x, times[0], eps)], [times[0]]
    for init_order in range(1, UNIPC_ORDER):
        t = times[init_order]
        x, model_x = yield from _unipc_bh1_update(vp, x, model_prev, t_prev, t, init_order, True)
        model_prev.append(model_x)
        t_prev.append(t)
    for step in range(UNIPC_ORDER, steps + 1):
        t = times[step]
        order = min(UNIPC_ORDER, steps + 1 - step)  # lower_order_final
        x, model_x = yield from _unipc_bh1_update(vp, x, model_prev, t_prev, t, order, step < steps)
        model_prev, t_prev = model_prev[1:] + [model_x], t_prev[1:] + [t]
    return x


TIMESTEP_ALGORITHMS: dict[str, Callable[..., Sampler]] = {"ddim": ddim, "plms": plms, "unipc": unipc}
