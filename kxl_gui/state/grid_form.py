"""The Generate tab's X/Y/Z grid as plain data: which setting each axis varies and the values typed for it.

`GridForm` holds three axes (X, Y, Z), each a kind from the engine's `AXIS_KINDS` or "Nothing", and its value
list in A1111's syntax. The panel (kxl_gui/tabs/generate_grid_panel.py) binds widgets to these fields; the
conversions live here, without Qt, so they are tested with plain pytest:
- `to_engine(resolve_model)`: the engine's (x, y, z) `Axis` objects, or a `GridFormError` that names the axis;
- `workspace_resolver(...)`: how names picked from the workspace (a checkpoint's stem, a LoKr's, a run's folder
  name) turn back into paths;
- `read_compare_setup(run_dir)` / `GridForm.for_run(...)` / `apply_compare(...)`: what the Train tab's "Compare
  states" sets up: the run's saved states on X, two seeds on Y, and the run's base, first sample prompt, sample
  steps and resolution in the generation form.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer_core.errors import KxlError
from trainer_core.generate.xyz_grid import AXIS_KINDS, Axis, parse_axis, run_state_values

from .generate_form import GenerationForm

NOTHING = "Nothing"
KINDS = (NOTHING, *AXIS_KINDS)
AXIS_NAMES = ("X", "Y", "Z")
# Axes whose values name things of the workspace: the panel offers a list to pick them from.
PICKED_FROM = {"Checkpoint name": "models", "LoKr": "lokrs", "Run states": "runs"}
# What each kind's values look like, shown in the empty values field.
PLACEHOLDERS = {
    "Seed": "e.g. 1-4 or 1234, 5678",
    "Steps": "e.g. 10-30 (+10)",
    "CFG Scale": "e.g. 3-9 [4] or 5, 7",
    "LoKr strength": "e.g. 0.25-1 [4]",
    "Prompt S/R": "first: the text to find in the prompt; then what replaces it",
    "Sampler": "e.g. Euler a, DPM++ 2M",
    "Schedule type": "e.g. Automatic, Karras",
    "Checkpoint name": "pick from the list, or type file names or paths",
    "LoKr": "pick from the list, or type names or paths (None: without LoKr)",
    "Run states": "pick a run: its saved LoKrs in step order",
}
COMPARE_SEEDS = 2  # "Compare states" puts this many seeds on Y: one image per state could mislead by chance


class GridFormError(KxlError):
    """A grid that cannot run; `axis` is "X", "Y" or "Z" when one axis is at fault ("" otherwise)."""

    def __init__(self, message: str, axis: str = "") -> None:
        self.axis = axis
        super().__init__(message)


@dataclass
class AxisChoice:
    kind: str = NOTHING
    text: str = ""


@dataclass
class GridForm:
    axes: list[AxisChoice] = field(default_factory=lambda: [AxisChoice() for _ in AXIS_NAMES])

    def used(self) -> list[tuple[str, AxisChoice]]:
        """(axis name, choice) of the axes that vary something, in X, Y, Z order."""
        return [(name, a) for name, a in zip(AXIS_NAMES, self.axes, strict=True) if a.kind != NOTHING]

    def varies(self, kind: str) -> bool:
        return any(a.kind == kind for _, a in self.used())

    def to_engine(
        self, resolve_model: Callable[[str], Path] | None = None
    ) -> tuple[Axis, Axis | None, Axis | None]:
        """The engine's axes. Every problem is found here, before anything runs: an axis without values, a
        value the engine cannot read (its message, prefixed with the axis: "Y axis: grid axis 'Seed': 'x' is not
        a whole number"), a sampler or schedule name this app does not have, two axes varying the same thing."""
        if self.axes[0].kind == NOTHING:
            raise GridFormError("Choose what the X axis varies (Y and Z are optional).", "X")
        seen: dict[str, str] = {}
        parsed: list[Axis | None] = []
        for name, choice in zip(AXIS_NAMES, self.axes, strict=True):
            if choice.kind == NOTHING:
                parsed.append(None)
                continue
            if choice.kind not in AXIS_KINDS:
                raise GridFormError(f"{name} axis: unknown kind {choice.kind!r}", name)
            # Run states vary the LoKr file too: both on one grid would fight over it.
            what = "LoKr" if choice.kind == "Run states" else choice.kind
            if what in seen:
                raise GridFormError(
                    f"{name} axis: the {seen[what]} axis already varies {what}; choose another kind", name
                )
            seen[what] = name
            if not choice.text.strip():
                raise GridFormError(f"{name} axis ({choice.kind}) has no values", name)
            try:
                axis = parse_axis(choice.kind, choice.text, resolve_model=resolve_model)
            except KxlError as exc:
                raise GridFormError(f"{name} axis: {exc}", name) from None
            parsed.append(axis)
        x, y, z = parsed
        assert x is not None  # checked above
        return x, y, z

    @classmethod
    def for_run(cls, run_value: str, seed: int) -> GridForm:
        """For "Compare states": the run's saved states on X, seeds `seed`, `seed + 1`, ... on Y."""
        seeds = ", ".join(str(seed + i) for i in range(COMPARE_SEEDS))
        return cls([AxisChoice("Run states", run_value), AxisChoice("Seed", seeds), AxisChoice()])


# ---- values -------------------------------------------------------------------------------------------------
def quote_value(value: str) -> str:
    """`value` as one item of an A1111 value list (CSV: quoted when it holds a comma or a quote)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([value])
    return out.getvalue()


def append_value(text: str, value: str) -> str:
    """The value list `text` with `value` added at the end (unchanged when it already lists it)."""
    items = [v.strip() for row in csv.reader(io.StringIO(text.strip()), skipinitialspace=True) for v in row]
    if value in items:
        return text
    quoted = quote_value(value)
    return f"{text.rstrip().rstrip(',')}, {quoted}" if text.strip() else quoted


def pick_names(paths: list[Path]) -> list[tuple[str, str]]:
    """(shown, value to insert) for files to pick: the file stem, or the full path when two share a stem."""
    stems = [p.stem for p in paths]
    return [(p.name, p.stem if stems.count(p.stem) == 1 else str(p)) for p in paths]


def workspace_resolver(
    bases: list[Path], lokrs: dict[str, Path], runs_root: Path | None
) -> Callable[[str], Path]:
    """Names to paths: a path that exists as typed, else a base checkpoint by stem or file name, a LoKr by stem
    or file name, a run folder under `runs_root`; else the text as a path (the engine then names it as missing)."""

    def resolve(name: str) -> Path:
        path = Path(name).expanduser()
        if path.is_absolute() or path.exists():
            return path
        for base in bases:
            if name in (base.stem, base.name):
                return base
        stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
        if stem in lokrs:
            return lokrs[stem]
        if runs_root is not None and (runs_root / name).is_dir():
            return runs_root / name
        return path

    return resolve


def grid_folder(outputs: Path, when: float | None = None) -> Path:
    """A new folder for one grid: `<outputs>/grids/YYYYmmdd-HHMMSS` (a numeric suffix if that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    base = outputs / "grids" / stamp
    path, i = base, 2
    while _taken(path):
        path = base.with_name(f"{stamp}-{i}")
        i += 1
    return path


def _taken(path: Path) -> bool:
    # A grid still running has only its hidden `.NAME.*.part` folder: that name is taken too.
    return path.exists() or (path.parent.is_dir() and any(path.parent.glob(f".{path.name}.*.part")))


# ---- Compare states -----------------------------------------------------------------------------------------
@dataclass
class CompareSetup:
    """What "Compare states" takes from a run: its folder, base, first sample prompt and sample settings."""

    run_dir: Path
    states: int  # saved LoKr files the grid will compare
    base: Path | None = None  # None: its config does not name one that exists here
    prompt: str = ""  # "" : the run has no sample prompts; the form's prompt stays
    steps: int | None = None
    size: int | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def read_compare_setup(run_dir: Path) -> CompareSetup:
    """Read a run's config.toml and count its saved states. Raises KxlError when it has no saved LoKr (nothing
    to compare); an unreadable config only leaves the form's settings as they are, with a note."""
    from trainer_core.train.config import load_config

    run_dir = Path(run_dir)
    states = len(run_state_values(run_dir))
    setup = CompareSetup(run_dir, states)
    try:
        cfg = load_config(run_dir / "config.toml")
    except KxlError as exc:
        setup.notes.append(f"The run's settings could not be read ({exc}); the form keeps its own.")
        return setup
    setup.seed = cfg.training.seed
    setup.steps = cfg.training.sample_steps
    setup.size = cfg.dataset.resolution
    if cfg.model.base:
        base = cfg.base_path
        if base.exists():
            setup.base = base
        else:
            setup.notes.append(
                f"The run's base {base.name} is not on this machine; the current checkpoint stays."
            )
    prompts = [p for p in cfg.training.sample_prompts if p.strip()]
    if prompts:
        setup.prompt = prompts[0]
        if len(prompts) > 1:
            setup.notes.append(f"The run has {len(prompts)} sample prompts; the grid uses the first.")
    else:
        setup.notes.append("The run has no sample prompts; the grid uses the prompt in the form.")
    return setup


def apply_compare(form: GenerationForm, setup: CompareSetup) -> GenerationForm:
    """The generation form for comparing a run's states: its base, first sample prompt, sample steps and size,
    the run's sample seed, and no LoKr of its own (the Run states axis brings each state's)."""
    changes: dict[str, object] = {"lokrs": [], "seed": setup.seed, "batch_count": 1, "batch_size": 1}
    if setup.base is not None:
        changes["model"] = setup.base
    if setup.prompt:
        changes["prompt"] = setup.prompt
    if setup.steps:
        changes["steps"] = setup.steps
    if setup.size:
        changes["width"] = changes["height"] = setup.size
    return dataclasses.replace(form, **changes)


def run_value(run_dir: Path, runs_root: Path | None) -> str:
    """How a run is written on the Run states axis: its folder name when it is one of the workspace's runs."""
    run_dir = Path(run_dir)
    if runs_root is not None and run_dir.parent == Path(runs_root):
        return quote_value(run_dir.name)
    return quote_value(str(run_dir))
