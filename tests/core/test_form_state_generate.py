"""The Generate tab's form state without Qt: the request it sends, a request shown back, and what a dropped A1111
PNG's infotext restores (exact values, notes naming what could not be restored)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kxl_gui.state.generate_form import (
    DEFAULT_NEGATIVE,
    GenerationForm,
    LokrChoice,
    negative_preset_of,
    size_presets,
)
from trainer_core.generate.infotext import create_infotext
from trainer_core.generate.lokr_apply import LokrUse
from trainer_core.generate.pipeline import GenerationRequest

LOKR = Path("/ws/runs/r1/checkpoints/my-style.safetensors")
BASE = Path("/ws/models/kohaku-xl-delta-base.safetensors")
OTHER = Path("/ws/models/other.safetensors")


def a1111_text(**extra: object) -> str:
    """An infotext as the engine (and A1111 1.10) writes it for a hires image with a LoKr."""
    params = {
        "Steps": 20,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 5.5,
        "Seed": 3_000_000_000,  # above 2**31: A1111 seeds go to 2**32 - 2
        "Size": "832x1216",
        "Model hash": "1a2b3c4d5e",
        "Model": "kohaku-xl-delta-base",
        "Denoising strength": 0.35,
        "Hires upscale": 1.75,
        "Hires steps": 12,
        "Hires upscaler": "Lanczos",
        "Emphasis": "No norm",
        "Version": "kxl 0.1.0",
        **extra,
    }
    return create_infotext("1girl, (solo:1.5) <lora:my-style:0.8>", "lowres, bad hands", params)


def find_lokr(name: str) -> Path | None:
    return LOKR if name == "my-style" else None


def find_model(name: str, digest: str) -> Path | None:
    return BASE if digest == "1a2b3c4d5e" or name == BASE.stem else None


def test_the_default_form_asks_for_the_cards_settings():
    request = GenerationForm().to_engine()
    assert request == GenerationRequest(
        model=Path(""),
        prompt="",
        negative=DEFAULT_NEGATIVE,
        steps=28,
        cfg=7.0,
        sampler="Euler a",
        schedule="Automatic",
        seed=-1,
        width=1024,
        height=1024,
        emphasis="No norm",
        hires=False,
        hires_scale=1.5,
        hires_steps=0,
        denoise=0.5,
        hires_upscaler="Latent",
    )
    assert negative_preset_of(request.negative) == "Kohaku XL (quality + artifacts)"
    assert negative_preset_of("lowres") == ""


def test_to_engine_carries_every_field_and_from_engine_shows_it_back():
    form = GenerationForm(prompt="1girl", negative="", model=BASE, lokrs=[LokrChoice(LOKR, 0.6)],
                          sampler="Euler", schedule="Karras", steps=9, cfg=4.5, seed=42, width=832, height=1216,
                          batch_count=3, batch_size=2, emphasis="Original", hires=True, hires_scale=2.0,
                          hires_steps=5, denoise=0.4, hires_upscaler="Lanczos", out_dir=Path("/ws/out"))  # fmt: skip
    request = form.to_engine()
    assert (request.model, request.lokrs, request.out_dir) == (BASE, [LokrUse(LOKR, 0.6)], Path("/ws/out"))
    assert (request.steps, request.cfg, request.seed, request.width, request.height) == (
        9,
        4.5,
        42,
        832,
        1216,
    )
    assert (request.batch_count, request.batch_size, request.hires, request.hires_upscaler) == (
        3,
        2,
        True,
        "Lanczos",
    )
    request.validate()  # the engine accepts what the form holds
    assert GenerationForm.from_engine(request) == form
    # an empty model path is "none chosen", not a file called "."
    assert GenerationForm.from_engine(GenerationForm().to_engine()).model is None


def test_a_lokr_is_listed_once_and_strengths_stay_in_range():
    form = GenerationForm()
    form.set_lokr(LOKR)
    form.set_lokr(LOKR, 9.0)
    assert form.lokrs == [LokrChoice(LOKR, 4.0)]


def test_from_infotext_restores_what_the_png_records():
    current = GenerationForm(model=OTHER, batch_count=4, lokrs=[LokrChoice(OTHER, 1.0)])
    restored = GenerationForm.from_infotext(
        a1111_text(), current=current, find_lokr=find_lokr, find_model=find_model
    )
    assert restored.notes == []
    form = restored.form
    assert (form.prompt, form.negative) == ("1girl, (solo:1.5)", "lowres, bad hands")
    assert form.lokrs == [LokrChoice(LOKR, 0.8)]  # the image's LoKrs replace the form's
    assert form.model == BASE
    assert (form.sampler, form.schedule, form.steps, form.cfg, form.seed) == ("DPM++ 2M", "Karras", 20, 5.5,
                                                                              3_000_000_000)  # fmt: skip
    assert (form.width, form.height, form.emphasis) == (832, 1216, "No norm")
    assert (form.hires, form.hires_scale, form.hires_steps, form.denoise, form.hires_upscaler) == (
        True, 1.75, 12, 0.35, "Lanczos")  # fmt: skip
    assert form.batch_count == 4  # not recorded in an infotext: kept
    assert current.lokrs == [LokrChoice(OTHER, 1.0)] and current.prompt == ""  # the current form is untouched


def test_from_infotext_names_what_it_could_not_restore():
    text = a1111_text(
        Sampler="DPM adaptive", **{"Hires upscaler": "4x-UltraSharp", "Model hash": "ffff", "Model": "sdxl-x"}
    )
    text = text.replace("<lora:my-style:0.8>", "<lora:elsewhere:0.5> <hypernet:h:1>")
    current = GenerationForm(model=OTHER)
    restored = GenerationForm.from_infotext(text, current=current, find_lokr=find_lokr, find_model=find_model)
    assert restored.notes == [
        "<lora:elsewhere> not found in the workspace; it was kept out of the prompt",
        "<hypernet:h> not found in the workspace; it was kept out of the prompt",
        "checkpoint sdxl-x is not among the models here; kept other.safetensors",
        "sampler 'DPM adaptive' is not available here; kept 'Euler a'",
        "upscaler '4x-UltraSharp' is not available here; kept 'Latent'",
    ]
    form = restored.form
    assert (form.model, form.sampler, form.hires_upscaler, form.lokrs) == (OTHER, "Euler a", "Latent", [])
    assert form.prompt == "1girl, (solo:1.5)"


def test_from_infotext_reads_old_and_odd_values():
    # A1111 before 1.9 wrote the schedule into the sampler's name; no hires; out-of-range numbers are clamped.
    text = (
        "cat\nSteps: 500, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 12, Size: 8192x32, Schedule type: Foo"
    )
    form = GenerationForm.from_infotext(text).form
    assert (form.sampler, form.schedule, form.steps, form.width, form.height) == ("DPM++ 2M", "Karras", 150,
                                                                                  4096, 64)  # fmt: skip
    assert form.negative == "" and not form.hires
    assert (
        form.emphasis == "No norm"
    )  # no "Emphasis" and no brackets: the mode changes nothing, the form keeps it
    bracketed = GenerationForm.from_infotext("(cat:1.2)\nSteps: 3, Sampler: Euler, Seed: 1").form
    assert bracketed.emphasis == "Original"  # A1111 leaves "Emphasis" out for its default
    bad = GenerationForm.from_infotext("cat <lora:my-style:strong>\nSteps: 3, Sampler: Euler, Seed: x",
                                       find_lokr=find_lokr)  # fmt: skip
    assert bad.form.lokrs == [] and bad.form.seed == -1 and bad.form.steps == 3
    assert bad.notes == [
        "<lora:my-style>: strength 'strong' is not a number (write e.g. <lora:name:0.8>); <lora:my-style> was kept "
        "out of the prompt"
    ]
    # no text: the current form, unchanged
    assert GenerationForm.from_infotext("  ", current=GenerationForm(steps=9)).form == GenerationForm(steps=9)


def test_size_presets_are_the_card_buckets_portrait_first():
    presets = size_presets()
    assert len(presets) == 97 and presets[0] == (256, 4096) and presets[-1] == (4096, 256)
    assert (1024, 1024) in presets and (832, 1216) in presets


def test_the_form_state_package_imports_no_qt():
    code = "import sys, kxl_gui.state.generate_form; sys.exit('PySide6' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
