"""What a merge does, as data: operations, weights, reverts, LoKr bakes, output dtype; and the card's preset."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import KxlError
from ..models.sdxl_layout import EMBEDDING_KEYS
from .blocks import BLOCKS

OPERATIONS = ("weighted_sum", "add_difference", "copy")
DTYPES = ("fp16", "bf16", "fp32")
MISSING_POLICIES = ("error", "take_a")


@dataclass
class MergeRecipe:
    """
    - weighted_sum: out = sum_i w_i * input_i (2..N inputs; weights need not sum to 1, a warning says so);
    - add_difference: out = A + m * (B - C) with inputs [A, B, C] and weights [m];
    - copy: out = A (with `lokr`, this bakes a LoKr into a model).
    `block_weights` (UNet blocks BASE/IN00../MID/OUT00..) override `weights` per block, same length.
    `revert` names embedding tensors (EMBEDDING_KEYS) to take from `original` unchanged.
    `lokr` bakes (path, multiplier) pairs on top of the result.
    """

    operation: str
    inputs: list[str]
    weights: list[float] = field(default_factory=list)
    block_weights: dict[str, list[float]] = field(default_factory=dict)
    revert: list[str] = field(default_factory=list)
    original: str | None = None
    lokr: list[tuple[str, float]] = field(default_factory=list)
    dtype: str = "fp16"
    missing: str = "error"

    def validate(self) -> list[str]:
        """Raise KxlError on an impossible recipe; return warnings for a questionable one."""
        warnings: list[str] = []
        if self.operation not in OPERATIONS:
            raise KxlError(f"unknown merge operation '{self.operation}' (use {', '.join(OPERATIONS)})")
        if self.dtype not in DTYPES:
            raise KxlError(f"unknown output dtype '{self.dtype}' (use {', '.join(DTYPES)})")
        if self.missing not in MISSING_POLICIES:
            raise KxlError(f"unknown missing-key policy '{self.missing}' (use {', '.join(MISSING_POLICIES)})")
        n = len(self.inputs)
        need = {"weighted_sum": (2, None), "add_difference": (3, 3), "copy": (1, 1)}[self.operation]
        if n < need[0] or (need[1] is not None and n > need[1]):
            want = f"exactly {need[0]}" if need[0] == need[1] else f"at least {need[0]}"
            raise KxlError(f"{self.operation} needs {want} input models, got {n}")
        n_weights = {"weighted_sum": n, "add_difference": 1, "copy": 0}[self.operation]
        if len(self.weights) != n_weights:
            raise KxlError(f"{self.operation} needs {n_weights} weight(s), got {len(self.weights)}")
        for block, ws in self.block_weights.items():
            if block not in BLOCKS:
                raise KxlError(f"unknown block '{block}' (blocks: {', '.join(BLOCKS)})")
            if len(ws) != n_weights:
                raise KxlError(f"block {block} needs {n_weights} weight(s), got {len(ws)}")
        for name in self.revert:
            if name not in EMBEDDING_KEYS:
                raise KxlError(f"unknown embedding '{name}' to revert (use {', '.join(EMBEDDING_KEYS)})")
        if self.revert and not self.original:
            raise KxlError("reverting embeddings needs the original model (--original)")
        if self.operation == "copy" and not self.lokr and not self.revert:
            raise KxlError("nothing to do: a single input needs a LoKr to bake or embeddings to revert")
        if self.operation == "weighted_sum":
            total = sum(self.weights)
            if abs(total - 1.0) > 1e-6:
                warnings.append(f"weights sum to {total:g}, not 1: the result is scaled by {total:g}")
        return warnings

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> MergeRecipe:
        data = dict(data)
        data["lokr"] = [(str(p), float(m)) for p, m in data.get("lokr", [])]
        return cls(**data)


def kohaku_xl_delta_recipe(gamma: str | Path, beta: str | Path, original: str | Path) -> MergeRecipe:
    """The card's base: 0.5 x gamma rev2 + 0.5 x beta7, TE1/TE2 token and position embeddings from SDXL base."""
    return MergeRecipe(
        operation="weighted_sum",
        inputs=[str(gamma), str(beta)],
        weights=[0.5, 0.5],
        revert=list(EMBEDDING_KEYS),
        original=str(original),
        dtype="fp16",
    )


PRESETS = {"kohaku-xl-delta": kohaku_xl_delta_recipe}
