"""What the Merge tab shows about a recipe before and after running it (plain Python, no widgets).

`estimate` is the worker side of the live check: `plan_merge` opens every input's header, so it never runs on the
GUI thread. The text helpers turn a plan or a result into the lines the footer shows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from trainer_core.atomic import free_bytes
from trainer_core.errors import KxlError
from trainer_core.merge.engine import RAM_BASELINE, MergePlan, MergeResult, plan_merge
from trainer_core.merge.recipe import MergeRecipe
from trainer_core.workspace_summary import format_bytes


@dataclass
class PlanOutcome:
    """What the background check found for one recipe."""

    plan: MergePlan | None
    error: str | None
    fixable_missing: int | None  # keys "take missing keys from A" would copy, when that fixes the error
    free_bytes: int | None
    available_ram: int | None

    @classmethod
    def problem(cls, error: str) -> PlanOutcome:
        return cls(None, error, None, None, None)


def estimate(recipe: MergeRecipe, out: Path | None) -> PlanOutcome:
    import psutil

    ram = psutil.virtual_memory().available
    free = free_bytes(out.parent) if out is not None else None
    try:
        plan = plan_merge(recipe, out)
    except KxlError as exc:
        fixable = None
        if recipe.missing == "error":
            # Is this the key-set difference the "take missing keys from A" policy resolves? Ask the engine.
            try:
                fixable = len(plan_merge(replace(recipe, missing="take_a"), out).taken_from_a)
            except KxlError:
                fixable = None
        return PlanOutcome(None, str(exc), fixable, free, ram)
    return PlanOutcome(plan, None, None, free, ram)


def estimate_text(o: PlanOutcome) -> str:
    """`N tensors (arch, dtype) · Disk: … (free: …) · RAM for the merge ≈ … (available: …)` and what else the plan
    does."""
    plan = o.plan
    assert plan is not None
    disk = f"Disk: {format_bytes(plan.out_bytes)}"
    if o.free_bytes is not None:
        disk += f" (free: {format_bytes(o.free_bytes)})"
    # The merge's own buffers, apart from the program's fixed ~450 MiB (interpreter + torch): "605 MiB" for a
    # 13 MB merge read as if the merge needed it.
    ram = f"RAM for the merge ≈ {format_bytes(max(0, plan.peak_ram_bytes - RAM_BASELINE))} (+ program)"
    if o.available_ram is not None:
        ram += f" (available: {format_bytes(o.available_ram)})"
    parts = [f"{len(plan.keys):,} tensors ({plan.arch}, {plan.recipe.dtype})", disk, ram]
    if plan.reverted:
        parts.append(f"{len(plan.reverted)} embedding(s) reverted")
    for lf in plan.lokr_files:
        parts.append(f"LoKr {lf.name}: {len(lf.modules):,} modules")
    text = "  ·  ".join(parts)
    if o.free_bytes is not None and o.free_bytes < plan.out_bytes:
        text += "  —  not enough free disk space"
    return text


def plan_warnings(o: PlanOutcome, out: Path | None, last_result: MergeResult | None) -> list[str]:
    """The engine's warnings, keys copied from A, and what running would replace on disk."""
    assert o.plan is not None
    warnings = list(o.plan.warnings)
    if o.plan.taken_from_a:
        warnings.append(f"{len(o.plan.taken_from_a):,} tensor(s) missing from other inputs are copied from A")
    if out is not None and out.exists():
        own = last_result is not None and same_file(last_result.path, out)
        warnings.append(f"{out.name} holds the merge just made; running again replaces it" if own
                        else f"{out.name} exists and will be replaced")  # fmt: skip
    return warnings


def result_text(result: MergeResult) -> str:
    plan = result.plan
    lines = [f"Wrote {result.path.name}  ({len(plan.keys):,} tensors, {format_bytes(plan.out_bytes)}, "
             f"{plan.recipe.dtype}) in {result.seconds:.1f} s"]  # fmt: skip
    if plan.reverted:
        lines.append(
            f"Reverted from {Path(plan.recipe.original or '').name}: {', '.join(plan.recipe.revert)}"
        )
    if plan.taken_from_a:
        lines.append(f"{len(plan.taken_from_a):,} tensor(s) copied from A")
    for lf in plan.lokr_files:
        lines.append(f"Baked {lf.name}: {len(lf.modules):,} modules")
    return "\n".join(lines)


def unique_output(folder: Path, stem: str) -> Path:
    """`folder/stem.safetensors`, or `stem-2`, `stem-3`, … : a default output never replaces a file."""
    path = folder / f"{stem}.safetensors"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.safetensors"
        n += 1
    return path


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
