"""A1111's Brownian noise for the SDE samplers (DPM++ SDE, DPM++ 2M SDE (Heun), DPM++ 3M SDE).

A1111 gives these samplers k-diffusion's BrownianTreeNoiseSampler with ONE tree per image, seeded with that image's
seed, spanning [smallest sigma > 0, largest sigma] of the pass's full schedule (the hires pass gets fresh trees from
the same seeds). An image is then the same whatever the batch size. diffusers' schedulers either draw this noise
from the torch generator or build one tree for the whole batch; A1111Scheduler (kdiffusion_scheduler.py) uses this
class instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

# torchsde warns when a query time lands a float rounding outside the tree's span (sigma_min/max are float32,
# queries float64); it clamps and the noise is right. A1111 prints the same line; users cannot act on it.
warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", module=r"torchsde\.")


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler as A1111 builds it: a torchsde.BrownianTree per image.

    Trees are float32 on the sample's device whatever the UNet dtype: A1111 samples in float32 latents, and the
    tree's values depend on its dtype.
    """

    def __init__(self, sample: torch.Tensor, sigma_min: Any, sigma_max: Any, seeds: Sequence[int]) -> None:
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
