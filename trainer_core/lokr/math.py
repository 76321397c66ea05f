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


def _shape(t: Mapping[str, Any], key: str) -> tuple[int, ...]:
    v = t[key]
    return tuple(v) if isinstance(v, tuple) else tuple(v.shape)


def _flat(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(out, everything else): how a conv weight lines up with a 2-D LoKr product."""
    return (shape[0], math.prod(shape[1:])) if shape else shape


def lokr_delta_shape(t: Mapping[str, Any], target_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `lokr_delta` produces before fitting it to `target_shape`, from tensor shapes alone.

    `t` maps suffix -> tensor (or shape tuple). Raises ValueError naming the tensors whose shapes do not chain,
    or the product's shape next to the target's when the module was made for another layer (or `lokr_w1` was
    stored transposed): a product is only fitted to the target when it is the same up to flattening a conv
    kernel ((out, in*k*k) or trailing 1x1), never by an arbitrary reshape of the same element count.
    """
    target_shape = tuple(target_shape)

    def matrix(key: str) -> tuple[int, ...]:
        s = _shape(t, key)
        if len(s) != 2 or 0 in s:
            raise ValueError(f"{key} has shape {s}, expected a non-empty matrix")
        return s

    def chained(a_key: str, b_key: str) -> tuple[int, int]:
        a, b = matrix(a_key), matrix(b_key)
        if a[1] != b[0]:
            raise ValueError(f"{a_key} {a} and {b_key} {b} do not multiply ({a[1]} != {b[0]})")
        return a[0], b[1]

    if "lokr_w1" in t:
        w1 = matrix("lokr_w1")
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        w1 = chained("lokr_w1_a", "lokr_w1_b")
    else:
        raise ValueError("has neither lokr_w1 nor the pair lokr_w1_a, lokr_w1_b")
    if "lokr_w2" in t:
        w2 = _shape(t, "lokr_w2")
        if len(w2) not in (2, 4) or 0 in w2:
            raise ValueError(f"lokr_w2 has shape {w2}, expected a non-empty matrix or conv kernel")
    elif "lokr_w2_a" not in t or "lokr_w2_b" not in t:
        raise ValueError("has neither lokr_w2 nor the pair lokr_w2_a, lokr_w2_b")
    elif "lokr_t2" in t:
        t2, a, b = _shape(t, "lokr_t2"), matrix("lokr_w2_a"), matrix("lokr_w2_b")
        if len(t2) != 4 or 0 in t2:
            raise ValueError(f"lokr_t2 has shape {t2}, expected a non-empty 4-D Tucker core")
        if a[0] != t2[0] or b[0] != t2[1]:
            raise ValueError(f"lokr_t2 {t2} does not chain with lokr_w2_a {a} and lokr_w2_b {b} "
                             f"(needs lokr_w2_a ({t2[0]}, ...) and lokr_w2_b ({t2[1]}, ...))")  # fmt: skip
        w2 = (a[1], b[1], t2[2], t2[3])
    else:
        p, q = chained("lokr_w2_a", "lokr_w2_b")
        w2 = (p, q)
        if len(target_shape) == 4:
            kernel = math.prod(target_shape[2:])
            if kernel == 0 or q % kernel:
                raise ValueError(f"lokr_w2_b gives {q} columns, not a multiple of the {target_shape[2:]} kernel "
                                 f"of the target weight {target_shape}")  # fmt: skip
            w2 = (p, q // kernel, *target_shape[2:])
    if "alpha" in t and math.prod(_shape(t, "alpha")) != 1:
        raise ValueError(f"alpha has shape {_shape(t, 'alpha')}, expected a single number")
    if len(w2) == 4 and len(w1) == 2:
        w1 = (*w1, 1, 1)
    ndim = max(len(w1), len(w2))
    w1, w2 = (1,) * (ndim - len(w1)) + w1, (1,) * (ndim - len(w2)) + w2
    product = tuple(x * y for x, y in zip(w1, w2, strict=True))
    if product != target_shape and _flat(product) != _flat(target_shape):
        raise ValueError(f"kron(lokr_w1, lokr_w2) has shape {product}, the target weight is {target_shape}")
    return product


def lokr_delta(t: Mapping[str, Any], target_shape: tuple[int, ...]):
    """scale * kron(W1, W2) fitted to `target_shape`, in fp32. `t` maps tensor suffix -> tensor.

    Shapes are checked first (`lokr_delta_shape`), so a module made for another layer is a ValueError, never a
    silently reshaped delta."""
    import torch

    if "dora_scale" in t:
        raise ValueError("DoRA (dora_scale) LoKr modules are not supported")
    lokr_delta_shape(t, target_shape)
    w1, w2 = _w1(t), _w2(t, target_shape)
    if w2.dim() == 4 and w1.dim() == 2:
        w1 = w1[:, :, None, None]
    delta = torch.kron(w1.contiguous(), w2.contiguous())
    if tuple(delta.shape) != tuple(target_shape):
        delta = delta.reshape(target_shape)
    return delta * lokr_scale(t)
