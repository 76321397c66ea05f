"""ΔW of a LoKr module, with A1111 / LyCORIS-forward semantics (specs/generation.md §9, training.md §1.2).

Our own math on purpose: lycoris-lora 4.1.3's `merge_to` applies alpha/rank twice when scale != 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

LOKR_TENSORS = frozenset(
    {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}
)
NORM_TENSORS = frozenset({"w_norm", "b_norm"})


def lokr_scale(t: Mapping[str, Any]) -> float:
    """alpha/rank when a factor is low-rank; 1 when both factors are full matrices or alpha is absent."""
    low_rank = "lokr_w1" not in t or "lokr_w2" not in t
    if not low_rank or "alpha" not in t:
        return 1.0
    rank = t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else t["lokr_w1_b"].shape[0]
    return float(t["alpha"]) / float(rank)


def _w1(t: Mapping[str, Any]):
    if "lokr_w1" in t:
        return t["lokr_w1"].float()
    return t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()


def _w2(t: Mapping[str, Any], target_shape: tuple[int, ...]):
    import torch

    if "lokr_w2" in t:
        return t["lokr_w2"].float()
    a, b = t["lokr_w2_a"].float(), t["lokr_w2_b"].float()
    if "lokr_t2" in t:
        # Tucker: W2[p, r, k, l] = sum_ij t2[i, j, k, l] * a[i, p] * b[j, r]
        return torch.einsum("ijkl,ip,jr->prkl", t["lokr_t2"].float(), a, b)
    w2 = a @ b
    if len(target_shape) == 4:
        w2 = w2.reshape(w2.shape[0], -1, *target_shape[2:])
    return w2


def lokr_delta(t: Mapping[str, Any], target_shape: tuple[int, ...]):
    """scale * kron(W1, W2) reshaped to `target_shape`, in fp32. `t` maps tensor suffix -> tensor."""
    import torch

    if "dora_scale" in t:
        raise ValueError("DoRA (dora_scale) LoKr modules are not supported")
    w1, w2 = _w1(t), _w2(t, target_shape)
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    delta = torch.kron(w1.contiguous(), w2.contiguous())
    if tuple(delta.shape) != tuple(target_shape):
        if delta.numel() != math.prod(target_shape):
            raise ValueError(
                f"LoKr delta has shape {tuple(delta.shape)}, target weight is {tuple(target_shape)}"
            )
        delta = delta.reshape(target_shape)
    return delta * lokr_scale(t)
