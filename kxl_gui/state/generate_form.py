"""The Generate tab's form as plain data: what one press of Generate will ask the engine for.

`GenerationForm` holds every setting of the form (prompt, negative, checkpoint, LoKrs and strengths, sampling,
size, batch, emphasis, hires fix). The tab only binds widgets to its fields; the conversions live here, without
Qt, so they are tested with plain pytest:
- `to_engine()`: the `GenerationRequest` the engine runs (trainer_core.generate.pipeline);
- `from_engine(request)`: a form showing a request (a preset, the CLI's request, a test's);
- `from_infotext(text, ...)`: what dropping an A1111 PNG restores, with notes on what could not be restored.

The ranges in `LIMITS` are the form's: the widgets take theirs from here, and a value read from an infotext is
clamped into them, so the form never holds a value its widget cannot show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer_core.buckets import make_buckets
from trainer_core.generate.conditioning import DEFAULT_EMPHASIS
from trainer_core.generate.infotext import parse_infotext
from trainer_core.generate.lokr_apply import LokrUse
from trainer_core.generate.pipeline import MAX_SEED, UPSCALERS, GenerationRequest
from trainer_core.generate.prompt import (
    EMPHASIS_MODES,
    PromptSyntaxError,
    extra_network_multiplier,
    strip_extra_networks,
)
from trainer_core.generate.samplers import AUTOMATIC, DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS, SCHEDULES

NEGATIVE_PRESETS = {
    "Kohaku XL (quality + artifacts)": "low quality, worst quality, normal quality, text, signature, jpeg artifacts, "
    "bad anatomy, old, early, copyright name, watermark, artist name",
    "Minimal": "worst quality, low quality",
    "Empty (zero conditioning)": "",
}
DEFAULT_NEGATIVE = NEGATIVE_PRESETS["Kohaku XL (quality + artifacts)"]
DEFAULT_SIZE = (1024, 1024)

# (low, high) of each numeric field, and the decimals shown for the fractional ones.
LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 150),
    "cfg": (1.0, 30.0),
    "seed": (-1, MAX_SEED),
    "width": (64, 4096),
    "height": (64, 4096),
    "batch_count": (1, 100),
    "batch_size": (1, 8),
    "hires_scale": (1.0, 4.0),
    "hires_steps": (0, 150),
    "denoise": (0.01, 1.0),
    "strength": (-4.0, 4.0),  # a LoKr's
}
DECIMALS = {"cfg": 2, "hires_scale": 2, "denoise": 2, "strength": 2}


def clamp(name: str, value: float) -> float:
    """`value` inside the form's range for `name`, rounded to the decimals the form shows."""
    low, high = LIMITS[name]
    value = min(max(value, low), high)
    return round(value, DECIMALS[name]) if name in DECIMALS else int(value)


def size_presets() -> list[tuple[int, int]]:
    """The card's training buckets (1024² area, 256..4096, step 64), portrait to landscape."""
    return sorted(make_buckets(), key=lambda s: (s[0] / s[1], s[0]))


def negative_preset_of(text: str) -> str:
    """The name of the negative preset whose text this is; "" for a text of the user's own."""
    return next((name for name, preset in NEGATIVE_PRESETS.items() if preset == text), "")


@dataclass
class LokrChoice:
    """One LoKr file in the form, at a strength."""

    path: Path
    strength: float = 1.0


@dataclass
class Restored:
    """A form restored from an infotext, and what could not be restored (one line each, for the user)."""

    form: GenerationForm
    notes: list[str]


@dataclass
class GenerationForm:
    prompt: str = ""
    negative: str = DEFAULT_NEGATIVE
    model: Path | None = None  # None: no base checkpoint chosen yet
    lokrs: list[LokrChoice] = field(default_factory=list)
    sampler: str = DEFAULT_SAMPLER
    schedule: str = AUTOMATIC
    steps: int = DEFAULT_STEPS  # the default sampler's (samplers.default_steps)
    cfg: float = 7.0
    seed: int = -1  # -1: a new random seed for each press
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    batch_count: int = 1
    batch_size: int = 1
    emphasis: str = DEFAULT_EMPHASIS
    hires: bool = False
    hires_scale: float = 1.5
    hires_steps: int = 0  # 0: same as steps
    denoise: float = 0.5
    hires_upscaler: str = UPSCALERS[0]
    out_dir: Path | None = None  # where images are saved: the workspace's outputs/generate (not a form field)

    # ---- LoKrs --------------------------------------------------------------------------------------------
    def set_lokr(self, path: Path, strength: float = 1.0) -> None:
        """Add a LoKr, or set the strength of the one already listed (a file is listed once)."""
        path = Path(path)
        for choice in self.lokrs:
            if choice.path == path:
                choice.strength = clamp("strength", strength)
                return
        self.lokrs.append(LokrChoice(path, clamp("strength", strength)))

    # ---- engine -------------------------------------------------------------------------------------------
    def to_engine(self) -> GenerationRequest:
        """The request the engine runs for this form (no model chosen: an empty path, which the engine refuses
        with a message naming it)."""
        return GenerationRequest(
            model=self.model if self.model is not None else Path(""),
            prompt=self.prompt,
            negative=self.negative,
            lokrs=[LokrUse(choice.path, choice.strength) for choice in self.lokrs],
            steps=self.steps,
            cfg=self.cfg,
            sampler=self.sampler,
            schedule=self.schedule,
            seed=self.seed,
            width=self.width,
            height=self.height,
            batch_count=self.batch_count,
            batch_size=self.batch_size,
            emphasis=self.emphasis,
            hires=self.hires,
            hires_scale=self.hires_scale,
            hires_steps=self.hires_steps,
            denoise=self.denoise,
            hires_upscaler=self.hires_upscaler,
            out_dir=self.out_dir,
        )

    @classmethod
    def from_engine(cls, request: GenerationRequest) -> GenerationForm:
        """The form that shows `request` (its LoKrs at their multipliers; an empty model path: none chosen)."""
        model = Path(request.model) if str(request.model) not in ("", ".") else None
        return cls(
            prompt=request.prompt,
            negative=request.negative,
            model=model,
            lokrs=[LokrChoice(Path(use.path), float(use.multiplier)) for use in request.lokrs],
            sampler=request.sampler,
            schedule=request.schedule,
            steps=request.steps,
            cfg=request.cfg,
            seed=request.seed,
            width=request.width,
            height=request.height,
            batch_count=request.batch_count,
            batch_size=request.batch_size,
            emphasis=request.emphasis,
            hires=request.hires,
            hires_scale=request.hires_scale,
            hires_steps=request.hires_steps,
            denoise=request.denoise,
            hires_upscaler=request.hires_upscaler,
            out_dir=request.out_dir,
        )

    # ---- infotext (a dropped PNG, "Use these parameters") --------------------------------------------------
    @classmethod
    def from_infotext(
        cls,
        text: str,
        *,
        current: GenerationForm | None = None,
        find_lokr: Callable[[str], Path | None] | None = None,
        find_model: Callable[[str, str], Path | None] | None = None,
    ) -> Restored:
        """The settings an A1111 infotext records, over `current` (what the infotext does not record, such as
        the batch, is kept from it). `find_lokr(name)` finds the LoKr file a `<lora:name:mult>` tag names;
        `find_model(name, hash)` the checkpoint of `Model` / `Model hash`. The image's LoKrs replace the form's.
        Values outside the form's ranges are clamped; names this build does not offer keep the current choice
        and get a note."""
        base = current if current is not None else cls()
        form = dataclasses.replace(base, lokrs=[dataclasses.replace(choice) for choice in base.lokrs])
        if not text.strip():
            return Restored(form, [])
        params = parse_infotext(text)
        notes: list[str] = []

        prompt, networks = strip_extra_networks(params["Prompt"])
        form.prompt = prompt.rstrip()
        form.negative = params.get("Negative prompt", "")
        form.lokrs = []
        for kind, name, args in networks:
            found = find_lokr(name) if kind == "lora" and find_lokr is not None else None
            if found is None:
                notes.append(f"<{kind}:{name}> not found in the workspace; it was kept out of the prompt")
                continue
            try:
                form.set_lokr(found, extra_network_multiplier(args, tag=f"{kind}:{name}"))
            except PromptSyntaxError as exc:
                notes.append(f"{exc}; <{kind}:{name}> was kept out of the prompt")

        model_name, model_hash = params.get("Model", ""), params.get("Model hash", "")
        if model_name or model_hash:
            found = find_model(model_name, model_hash) if find_model is not None else None
            if found is not None:
                form.model = found
            else:
                kept = f"kept {form.model.name}" if form.model is not None else "choose a base checkpoint"
                named = model_name or f"with hash {model_hash}"
                notes.append(f"checkpoint {named} is not among the models here; {kept}")

        form.sampler = _choice(params.get("Sampler"), SAMPLERS, form.sampler, "sampler", notes)
        schedule = params.get("Schedule type", AUTOMATIC)
        form.schedule = schedule if schedule in SCHEDULES else AUTOMATIC
        form.steps = _number(params.get("Steps"), "steps", form.steps)
        form.cfg = _number(params.get("CFG scale"), "cfg", form.cfg)
        form.seed = _number(params.get("Seed"), "seed", form.seed)
        form.width = _number(params.get("Size-1"), "width", form.width)
        form.height = _number(params.get("Size-2"), "height", form.height)
        # A1111 leaves "Emphasis" out for "Original" and for prompts without ( or [ (where the mode changes
        # nothing): then only a prompt with brackets means "Original"; otherwise the form keeps its mode.
        if "Emphasis" in parse_infotext(text, defaults=False) or any(ch in text for ch in "(["):
            form.emphasis = _choice(
                params.get("Emphasis"), EMPHASIS_MODES, form.emphasis, "emphasis mode", notes
            )
        # A1111 writes "Hires upscale" (or "Hires resize") only for a hires image; old versions wrote no scale
        # but a hires step count next to the denoising strength.
        form.hires = "Hires upscale" in params or ("Denoising strength" in params and "Hires steps" in params)
        if form.hires:
            form.hires_scale = _number(params.get("Hires upscale"), "hires_scale", form.hires_scale)
            form.hires_steps = _number(params.get("Hires steps", "0"), "hires_steps", form.hires_steps)
            form.denoise = _number(params.get("Denoising strength"), "denoise", form.denoise)
            form.hires_upscaler = _choice(
                params.get("Hires upscaler"), UPSCALERS, form.hires_upscaler, "upscaler", notes
            )
        return Restored(form, notes)


def _choice(value: str | None, offered, current: str, what: str, notes: list[str]) -> str:
    if not value:
        return current
    if value not in offered:
        notes.append(f"{what} {value!r} is not available here; kept {current!r}")
        return current
    return value


def _number(value: str | None, name: str, current):
    """An infotext number for field `name`, clamped into the form's range; `current` when absent or not a
    number."""
    if value is None:
        return current
    try:
        number = float(value)
    except ValueError:
        return current
    if number != number:  # NaN
        return current
    return clamp(name, number)
