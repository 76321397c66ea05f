"""k-diffusion's samplers as A1111 runs them, written as coroutines that a diffusers-style scheduler can drive.

Each sampler is a generator: it yields `(x, sigma)` whenever it needs the denoiser and receives the denoised
sample (A1111's CFG-combined `denoised`) back, and it returns the final latent. Writing the published algorithms
this way keeps them whole (a DPM++ 2S a step, with its second model call at a sigma that depends on the ancestral
split, is one loop iteration) while the diffusers loop still makes exactly one model call per iteration.

`noise(sigma, sigma_next)` is the sampler's noise source: A1111's per-image generators for the ancestral samplers
and Restart, a per-image Brownian tree for the SDE samplers. Defaults are A1111's: eta 1 and s_noise 1 for the
ancestral and SDE samplers, s_churn 0 for Euler/Heun/DPM2.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

Tensor = torch.Tensor
Noise = Callable[[Tensor, Tensor], Tensor]
Sampler = Generator[tuple[Tensor, Tensor], Tensor, Tensor]


def _to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def _ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): the deterministic target and the noise to add back for an ancestral step."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - up**2) ** 0.5, up


def _t(sigma: Tensor) -> Tensor:  # DPM-Solver's time: t = -log(sigma)
    return sigma.log().neg()


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def euler(x: Tensor, sigmas: Tensor, noise: Noise) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def euler_ancestral(
    x: Tensor, sigmas: Tensor, noise: Noise, eta: float = 1.0, s_noise: float = 1.0
) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + _to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def heun(x: Tensor, sigmas: Tensor, noise: Noise) -> Sampler:
    for i in range(len(sigmas) - 1):
        x = yield from _heun_step(x, sigmas[i], sigmas[i + 1])
    return x


def _heun_step(x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Sampler:
    """One Heun step (an Euler step when it lands on sigma 0): two model calls, or one."""
    denoised = yield x, sigma
    d = _to_d(x, sigma, denoised)
    dt = sigma_next - sigma
    if sigma_next == 0:
        return x + d * dt
    x_2 = x + d * dt
    denoised_2 = yield x_2, sigma_next
    return x + (d + _to_d(x_2, sigma_next, denoised_2)) / 2 * dt


def dpm_2(x: Tensor, sigmas: Tensor, noise: Noise) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = _to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()  # geometric midpoint
        x_2 = x + d * (mid - sigmas[i])
        denoised_2 = yield x_2, mid
        x = x + _to_d(x_2, mid, denoised_2) * (sigmas[i + 1] - sigmas[i])
    return x


def dpm_2_ancestral(
    x: Tensor, sigmas: Tensor, noise: Noise, eta: float = 1.0, s_noise: float = 1.0
) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = _to_d(x, sigmas[i], denoised)
        if down == 0:
            x = x + d * (down - sigmas[i])
            continue
        mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
        x_2 = x + d * (mid - sigmas[i])
        denoised_2 = yield x_2, mid
        x = x + _to_d(x_2, mid, denoised_2) * (down - sigmas[i])
        x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_i+1] of the Lagrange basis polynomial of node i - j (nodes t_i .. t_i-order+1)."""
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(x: Tensor, sigmas: Tensor, noise: Noise, order: int = 4) -> Sampler:
    # k-diffusion integrates over the float32 sigmas (numpy float32 scalars): keep that precision
    nodes = list(sigmas.detach().cpu().numpy())
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur = min(i + 1, order)
        coefficients = [_lms_coefficient(cur, nodes, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds), strict=True))
    return x


def dpmpp_2s_ancestral(
    x: Tensor, sigmas: Tensor, noise: Noise, eta: float = 1.0, s_noise: float = 1.0
) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        down, up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(down)
            h = t_next - t
            s = t + 0.5 * h  # DPM-Solver++(2S): the second call half way in log-sigma towards sigma_down
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = yield x_2, _sigma(s)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
    return x


def dpmpp_sde(
    x: Tensor, sigmas: Tensor, noise: Noise, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5
) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        down, up = _ancestral_step(_sigma(t), _sigma(s), eta)
        s_ = _t(down)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * up
        denoised_2 = yield x_2, _sigma(s)
        down, up = _ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(down)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * up
    return x


def dpmpp_2m(x: Tensor, sigmas: Tensor, noise: Noise) -> Sampler:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def dpmpp_2m_sde(
    x: Tensor,
    sigmas: Tensor,
    noise: Noise,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Sampler:
    old_denoised = h_last = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        h = None
        if sigmas[i + 1] == 0:
            x = denoised  # the last step returns the denoised sample
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    phi = (-h - eta_h).expm1().neg() / (-h - eta_h) + 1
                    x = x + phi * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                scale = sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde(x: Tensor, sigmas: Tensor, noise: Noise, eta: float = 1.0, s_noise: float = 1.0) -> Sampler:
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                scale = sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise(sigmas[i], sigmas[i + 1]) * scale
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def dpm_fast(
    x: Tensor,
    noise: Noise,
    n: int,
    sigma_min: Tensor,
    sigma_max: Tensor,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Sampler:
    """DPM-Solver-Fast: n model calls in DPM-Solver-3 steps evenly spaced in log-sigma (orders 3, ..., 3 and a
    2/1 tail), each ending ancestrally (eta 1: it lands on sigma_min with noise, not on 0)."""
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    m = n // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        if eta:
            down, _ = _ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, _t(down))
            up = (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5
        else:
            t_next_, up = t_next, torch.tensor(0.0)
        x = yield from _dpm_solver_step(x, t, t_next_, order)
        x = x + up * s_noise * noise(_sigma(t), _sigma(t_next))
    return x


def _dpm_solver_step(x: Tensor, t: Tensor, t_next: Tensor, order: int) -> Sampler:
    """One DPM-Solver-1/2/3 step from t to t_next (intermediate points at 1/2, or 1/3 and 2/3, of the step)."""

    def eps_at(x_: Tensor, t_: Tensor) -> Sampler:
        denoised = yield x_, _sigma(t_)
        return (x_ - denoised) / _sigma(t_)

    h = t_next - t
    eps = yield from eps_at(x, t)
    if order == 1:
        return x - _sigma(t_next) * h.expm1() * eps
    if order == 2:
        s1 = t + 0.5 * h
        u1 = x - _sigma(s1) * (0.5 * h).expm1() * eps
        eps_r1 = yield from eps_at(u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * 0.5) * h.expm1() * (eps_r1 - eps)
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = yield from eps_at(u1, s1)
    phi = (r2 * h).expm1() / (r2 * h) - 1
    u2 = x - _sigma(s2) * (r2 * h).expm1() * eps - _sigma(s2) * (r2 / r1) * phi * (eps_r1 - eps)
    eps_r2 = yield from eps_at(u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def restart_segments(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A1111's Restart plan: the (sigma, sigma_next) Heun steps in order, restart segments included.

    From 20 steps on, the main schedule is rebuilt as Karras over fewer steps and, at the step nearest sigma 0.1,
    the sampler jumps back to the sigma nearest 2 and walks down again (9 steps once; from 36 steps on, steps // 4
    steps twice). Below 20 steps it is plain Heun.
    """
    from .kdiffusion_sigmas import karras

    steps = sigmas.shape[0] - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}
    at_index = {int(torch.argmin((sigmas - key).abs())): value for key, value in restarts.items()}
    plan: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in at_index:
            n, times, restart_max = at_index[i + 1]
            top = int(torch.argmin((sigmas - restart_max).abs()))
            if top < i + 1:
                segment = karras(n, sigmas[i + 1].item(), sigmas[top].item())[:-1]
                plan.extend(list(zip(segment[:-1], segment[1:], strict=True)) * times)
    return plan


def restart(x: Tensor, sigmas: Tensor, noise: Noise, s_noise: float = 1.0) -> Sampler:
    last = None
    for sigma, sigma_next in restart_segments(sigmas):
        if last is None:
            last = sigma
        elif last < sigma:  # a restart: noise back up from where the last segment ended
            x = x + noise(last, sigma) * s_noise * (sigma**2 - last**2) ** 0.5
        x = yield from _heun_step(x, sigma, sigma_next)
        last = sigma_next
    return x


ALGORITHMS: dict[str, Callable[..., Sampler]] = {
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral,
    "lms": lms,
    "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "restart": restart,
    "dpm_fast": dpm_fast,
}
