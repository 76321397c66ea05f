"""The Merge form's inputs: operation, models and weights, per-block weights, embedding reverts, a LoKr to bake,
output file, dtype and missing-key policy.

`to_engine()` is the `MergeRecipe` that `kxl merge` runs for the same choices (the kohaku-xl-delta preset gives
exactly `kohaku_xl_delta_recipe(...)`); `from_engine(recipe)` shows a recipe, and a preset is
`from_engine(preset recipe)`. Rules that tie fields together live here, not in widgets: linked weights
(A = 1 − B), the number of models an operation takes, the block-weight shapes, the default output name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainer_core.errors import KxlError
from trainer_core.merge.blocks import BLOCKS
from trainer_core.merge.recipe import OPERATIONS, MergeRecipe, kohaku_xl_delta_recipe
from trainer_core.models.sdxl_layout import EMBEDDING_KEYS
from trainer_core.workspace_queries import MERGED_BASE_STEM

PRESET_KXL = "kohaku-xl-delta"
PRESET_CUSTOM = "custom"
PRESET_OUTPUT_NAME = MERGED_BASE_STEM  # the Train tab proposes it as the base
MAX_MODELS = 6
MODELS_FOR = {"weighted_sum": 2, "add_difference": 3, "copy": 1}  # rows an operation starts with
WEIGHT_DECIMALS = 3


def _ramp(i: int, rising: bool) -> float:
    frac = i / (len(BLOCKS) - 1)
    return frac if rising else 1.0 - frac


# Block-weight shapes users reach for first (supermerger's MBW presets follow the same idea): each maps a block
# index in BLOCKS and the global weight to that block's weight.
BLOCK_SHAPES: dict[str, Callable[[int, float], float]] = {
    "Flat (global weight)": lambda i, w: w,
    "IN blocks only": lambda i, w: w if BLOCKS[i].startswith("IN") else 0.0,
    "MID + OUT blocks only": lambda i, w: w if BLOCKS[i] == "MID" or BLOCKS[i].startswith("OUT") else 0.0,
    "Ramp up (BASE → OUT08)": lambda i, w: round(w * _ramp(i, True), 3),
    "Ramp down (BASE → OUT08)": lambda i, w: round(w * _ramp(i, False), 3),
}


def role_name(i: int) -> str:
    """A, B, C, … : how the form and the recipe's formula name input i."""
    return chr(ord("A") + i)


@dataclass
class MergeInput:
    path: str = ""  # as typed or chosen; "" = not chosen
    weight: float = 0.5  # weighted_sum only


def _flat_blocks(weight: float = 0.5) -> dict[str, float]:
    return {name: weight for name in BLOCKS}


@dataclass
class MergeForm:
    operation: str = "weighted_sum"
    models: list[MergeInput] = field(default_factory=lambda: [MergeInput(), MergeInput()])
    link_weights: bool = True  # weighted sum of two: keep A = 1 − B
    multiplier: float = 1.0  # add_difference: M in A + M·(B − C)
    blocks_on: bool = False
    block_weights: dict[str, float] = field(default_factory=_flat_blocks)  # B's weight, or M, per block
    revert: list[str] = field(default_factory=lambda: list(EMBEDDING_KEYS))
    original: str = ""
    lokr_on: bool = False
    lokr_path: str = ""
    lokr_multiplier: float = 1.0
    out: str = ""
    out_auto: bool = True  # the output follows the inputs until the user chooses one
    dtype: str = "fp16"
    missing: str = "error"

    # ---- derived ------------------------------------------------------------------------------------------
    @property
    def preset(self) -> str:
        """kohaku-xl-delta when the recipe is the card's (any dtype, missing-key policy, LoKr or output),
        else custom. Derived, so the preset shown can never disagree with the settings."""
        card = (
            self.operation == "weighted_sum"
            and [m.weight for m in self.models] == [0.5, 0.5]
            and not self.blocks_active
            and self.revert == list(EMBEDDING_KEYS)
        )
        return PRESET_KXL if card else PRESET_CUSTOM

    @property
    def weighted(self) -> bool:
        return self.operation == "weighted_sum"

    @property
    def link_applies(self) -> bool:
        return self.weighted and len(self.models) == 2

    @property
    def blocks_apply(self) -> bool:
        """Per-block weights exist for a weighted sum of two and for add-difference."""
        return self.link_applies or self.operation == "add_difference"

    @property
    def blocks_active(self) -> bool:
        return self.blocks_on and self.blocks_apply

    @property
    def can_add_model(self) -> bool:
        return self.weighted and len(self.models) < MAX_MODELS

    @property
    def can_remove_model(self) -> bool:
        return self.weighted and len(self.models) > 2

    def global_weight(self) -> float:
        """The weight block shapes scale: B's weight, or M for add-difference."""
        if self.operation == "add_difference":
            return self.multiplier
        return self.models[1].weight if len(self.models) > 1 else 0.5

    def formula(self) -> str:
        if self.weighted:
            return " + ".join(f"{m.weight:g}·{role_name(i)}" for i, m in enumerate(self.models))
        if self.operation == "add_difference":
            return f"A + {self.multiplier:g}·(B − C)"
        return "A (plus the LoKr and reverted embeddings below)"

    def default_output_stem(self) -> str:
        """The output file's name (without suffix) while it follows the inputs."""
        if self.preset == PRESET_KXL:
            return PRESET_OUTPUT_NAME
        stems = [Path(m.path).stem for m in self.models if m.path.strip()][:3]
        if self.operation == "copy" and self.lokr_path.strip() and stems:
            return f"{stems[0]}+{Path(self.lokr_path).stem}"
        return "merge-" + "-".join(stems) if stems else "merge"

    def output_path(self) -> Path | None:
        text = self.out.strip()
        return Path(text).expanduser() if text else None

    # ---- changes that touch more than one field ----------------------------------------------------------
    def set_operation(self, operation: str) -> None:
        if operation not in OPERATIONS:
            raise KxlError(f"unknown merge operation {operation!r} (use {', '.join(OPERATIONS)})")
        self.operation = operation
        want = MODELS_FOR[operation]
        if operation == "weighted_sum":
            want = max(want, min(len(self.models), MAX_MODELS))
        self.models = self.models[:want] + [MergeInput() for _ in range(want - len(self.models))]

    def set_weight(self, index: int, weight: float) -> None:
        """Input `index`'s weight; with linked weights the other of the two follows as 1 − weight."""
        self.models[index].weight = weight
        if self.link_weights and self.link_applies:
            self.models[1 - index].weight = round(1.0 - weight, WEIGHT_DECIMALS)

    def set_link(self, on: bool) -> None:
        self.link_weights = on
        if on and self.link_applies:
            self.models[0].weight = round(1.0 - self.models[1].weight, WEIGHT_DECIMALS)

    def set_blocks_on(self, on: bool) -> None:
        """Turning per-block weights on starts every block at the global weight: the result does not change."""
        self.blocks_on = on
        if on:
            self.apply_block_shape("Flat (global weight)")

    def apply_block_shape(self, shape: str) -> None:
        try:
            fn = BLOCK_SHAPES[shape]
        except KeyError:
            raise KxlError(
                f"unknown block shape {shape!r}; choose one of {', '.join(BLOCK_SHAPES)}"
            ) from None
        w = self.global_weight()
        self.block_weights = {name: fn(i, w) for i, name in enumerate(BLOCKS)}

    def set_revert(self, name: str, on: bool) -> None:
        if name not in EMBEDDING_KEYS:
            raise KxlError(f"unknown embedding {name!r} to revert (use {', '.join(EMBEDDING_KEYS)})")
        chosen = set(self.revert) - {name} | ({name} if on else set())
        self.revert = [n for n in EMBEDDING_KEYS if n in chosen]  # the engine's order, whatever the clicks

    def add_model(self, path: str = "") -> None:
        if not self.can_add_model:
            raise KxlError(f"a weighted sum takes at most {MAX_MODELS} models" if self.weighted else
                           f"{self.operation} takes exactly {MODELS_FOR[self.operation]} models")  # fmt: skip
        self.models.append(MergeInput(path, 0.5))

    def remove_model(self, index: int) -> None:
        if not self.can_remove_model:
            raise KxlError("a weighted sum needs at least 2 models")
        del self.models[index]

    def set_lokr_path(self, path: str) -> None:
        """Choosing a LoKr file also ticks "bake this LoKr": picking one is asking for it."""
        self.lokr_path = path
        if path.strip():
            self.lokr_on = True

    def set_output(self, path: str) -> None:
        """The user's own output file: it no longer follows the inputs."""
        self.out = path
        self.out_auto = False

    def apply_preset(self, name: str, gamma: str = "", beta: str = "", original: str = "") -> None:
        """The preset's recipe; the models already chosen stay, empty ones take the workspace's stand-ins
        (`gamma`, `beta`, `original`). LoKr, output and the rest of the form are left as they are."""
        if name == PRESET_CUSTOM:
            return
        if name != PRESET_KXL:
            raise KxlError(f"unknown merge preset {name!r}; choose {PRESET_KXL} or {PRESET_CUSTOM}")
        paths = [m.path for m in self.models] if self.weighted else [m.path for m in self.models[:1]]
        a = paths[0] if len(paths) > 0 and paths[0] else gamma
        b = paths[1] if len(paths) > 1 and paths[1] else beta
        # The card's recipe field by field, not through from_engine: models may still be unchosen here.
        card = kohaku_xl_delta_recipe(a, b, self.original or original)
        self.operation, self.link_weights, self.blocks_on = card.operation, True, False
        self.models = [MergeInput(p, w) for p, w in zip(card.inputs, card.weights, strict=True)]
        self.revert, self.original = list(card.revert), card.original or ""
        self.dtype, self.missing = card.dtype, card.missing

    # ---- engine -------------------------------------------------------------------------------------------
    def to_engine(self) -> MergeRecipe:
        """The recipe; KxlError names what still needs choosing or what the engine would refuse."""
        for i, m in enumerate(self.models):
            if not m.path.strip():
                raise KxlError(f"choose model {role_name(i)}")
        inputs = [str(Path(m.path.strip()).expanduser()) for m in self.models]
        op = self.operation
        if op == "weighted_sum":
            weights = [m.weight for m in self.models]
        elif op == "add_difference":
            weights = [self.multiplier]
        else:
            weights = []
        blocks: dict[str, list[float]] = {}
        if self.blocks_active:
            for name in BLOCKS:
                v = self.block_weights[name]
                blocks[name] = [round(1.0 - v, 6), v] if op == "weighted_sum" else [v]
        original = None
        if self.revert:
            if not self.original.strip():
                raise KxlError(
                    "choose the original model to revert the embeddings to (or untick the reverts)"
                )
            original = str(Path(self.original.strip()).expanduser())
        lokr: list[tuple[str, float]] = []
        if self.lokr_on:
            if not self.lokr_path.strip():
                raise KxlError("choose the LoKr file to bake (or untick 'Bake this LoKr')")
            lokr = [(str(Path(self.lokr_path.strip()).expanduser()), self.lokr_multiplier)]
        recipe = MergeRecipe(
            operation=op,
            inputs=inputs,
            weights=weights,
            block_weights=blocks,
            revert=list(self.revert),
            original=original,
            lokr=lokr,
            dtype=self.dtype,
            missing=self.missing,
        )
        recipe.validate()
        return recipe

    @classmethod
    def from_engine(cls, recipe: MergeRecipe, out: str | Path | None = None) -> MergeForm:
        """The form that `to_engine()`s back to `recipe` (a preset, a recipe saved next to a merge)."""
        recipe.validate()
        if len(recipe.lokr) > 1:
            raise KxlError(f"the Merge form bakes one LoKr; this recipe has {len(recipe.lokr)}")
        op = recipe.operation
        weights = recipe.weights if op == "weighted_sum" else [0.5] * len(recipe.inputs)
        models = [MergeInput(p, w) for p, w in zip(recipe.inputs, weights, strict=True)]
        blocks = _flat_blocks()
        if recipe.block_weights:
            if op == "weighted_sum" and len(recipe.inputs) != 2:
                raise KxlError("the Merge form has per-block weights for a weighted sum of two models only")
            for name, ws in recipe.block_weights.items():
                blocks[name] = ws[-1]  # B's weight ([1 − B, B]) or M ([M])
        return cls(
            operation=op,
            models=models,
            link_weights=op == "weighted_sum" and len(weights) == 2 and abs(sum(weights) - 1.0) < 1e-9,
            multiplier=recipe.weights[0] if op == "add_difference" else 1.0,
            blocks_on=bool(recipe.block_weights),
            block_weights=blocks,
            revert=[n for n in EMBEDDING_KEYS if n in recipe.revert],
            original=recipe.original or "",
            lokr_on=bool(recipe.lokr),
            lokr_path=recipe.lokr[0][0] if recipe.lokr else "",
            lokr_multiplier=recipe.lokr[0][1] if recipe.lokr else 1.0,
            out="" if out is None else str(out),
            out_auto=out is None,
            dtype=recipe.dtype,
            missing=recipe.missing,
        )

    def copy(self) -> MergeForm:
        return replace(
            self,
            models=[replace(m) for m in self.models],
            block_weights=dict(self.block_weights),
            revert=list(self.revert),
        )
