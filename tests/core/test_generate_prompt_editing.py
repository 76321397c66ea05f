"""Prompt editing and alternation while sampling: every model call sees the text A1111's schedule gives it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.generate.conditioning import encode_pair
from trainer_core.generate.pipeline import SampleSettings, run_txt2img
from trainer_core.generate.scheduled_conditioning import schedule_steps
from trainer_core.models.tiny import build_tiny_components


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(0)


def _run(comps, **kw):
    """Images plus, per UNet call, the conditioning it got (the pipeline sends [uncond, cond] when guided)."""
    seen: list[torch.Tensor] = []

    def grab(_module, _args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    hook = comps.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        settings = SampleSettings(**{"width": 64, "height": 64, "seed": 3, "cfg": 5.0, **kw})
        images = run_txt2img(comps, settings, out_dir=None, infotext_params={}, progress=None,
                             check=lambda: None, warnings=[])  # fmt: skip
    finally:
        hook.remove()
    return images, seen


def _pair(comps, prompt, negative):
    cond, uncond = encode_pair(prompt, negative, comps)
    return torch.cat([uncond.embeds, cond.embeds])


def test_each_model_call_gets_the_scheduled_texts(comps):
    prompt, negative = "1girl, [red|blue] hair, [smile:frown:2]", "[lowres::3]"
    _, seen = _run(comps, prompt=prompt, negative=negative, steps=6, sampler="Euler")
    assert len(seen) == 6
    # A1111: calls 0..5 of a 6-step pass; "[x|y]" is x, x, y, x, y, x (the entry ending at step 1 covers calls
    # 0 and 1); "[smile:frown:2]" is smile for calls 0..2; the negative "[lowres::3]" is lowres for calls 0..3.
    hair = ["red", "red", "blue", "red", "blue", "red"]
    face = ["smile"] * 3 + ["frown"] * 3
    neg = ["lowres"] * 4 + [""] * 2
    for call in range(6):
        expected = _pair(comps, f"1girl, {hair[call]} hair, {face[call]}", neg[call])
        torch.testing.assert_close(seen[call], expected, rtol=0, atol=0, msg=f"model call {call}")


def test_hires_pass_has_its_own_schedule(comps):
    # 4 base steps, 4 hires steps at denoise 1: "[cat:dog:1.5]" switches half way through the hires pass only.
    _, seen = _run(comps, prompt="[cat:dog:1.5]", negative="", steps=4, hires=True, hires_steps=4, denoise=1.0,
                   hires_scale=1.5)  # fmt: skip
    assert len(seen) == 8
    cat, dog = _pair(comps, "cat", ""), _pair(comps, "dog", "")
    for call in range(4):
        torch.testing.assert_close(seen[call], cat)  # first pass: 1.5 is past its end
    for call, expected in zip(range(4, 8), [cat, cat, cat, dog], strict=True):  # hires calls 0..2 use "cat"
        torch.testing.assert_close(seen[call], expected)


def test_an_edit_past_the_last_step_gives_the_plain_prompts_pixels(comps):
    edited, _ = _run(comps, prompt="1girl, [smile:frown:50]", negative="lowres", steps=3)
    plain, _ = _run(comps, prompt="1girl, smile", negative="lowres", steps=3)
    assert np.array_equal(np.asarray(edited[0].image), np.asarray(plain[0].image))
    switched, _ = _run(comps, prompt="1girl, [smile:frown:1]", negative="lowres", steps=3)
    assert not np.array_equal(np.asarray(switched[0].image), np.asarray(plain[0].image))


def test_second_order_samplers_schedule_over_twice_the_steps():
    assert schedule_steps("Heun", 10) == 20 and schedule_steps("DPM2 a", 7) == 14
    assert schedule_steps("Euler a", 10) == 10 and schedule_steps("DPM++ 2M", 10) == 10


def test_an_a1111_infotext_with_editing_and_an_sde_sampler_restores_and_regenerates(comps, tmp_path):
    """What A1111 v1.10 writes for such an image (values as it formats them) comes back as the same settings, and
    the image made from them carries an infotext that reads back to the same settings again."""
    from kxl_gui.state.generate_form import GenerationForm
    from trainer_core.generate.infotext import parse_infotext, read_png_parameters
    from trainer_core.generate.pipeline import generate
    from trainer_core.models.loading import save_single_file

    model = save_single_file(comps, tmp_path / "base.safetensors", dtype="fp16")
    a1111 = (
        "1girl, [blonde hair:blue hair:0.5], [smile|frown]\n"
        "Negative prompt: [lowres::2]\n"
        "Steps: 4, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 5, Seed: 7, Size: 64x64, "
        "Model hash: 0123456789, Model: base, Version: v1.10.1"
    )
    restored = GenerationForm.from_infotext(
        a1111, find_model=lambda name, _hash: model if name == "base" else None
    )
    request = restored.form.to_engine()
    assert (request.prompt, request.negative) == (
        "1girl, [blonde hair:blue hair:0.5], [smile|frown]",
        "[lowres::2]",
    )
    assert (request.sampler, request.schedule, request.steps, request.cfg, request.seed) == (
        "DPM++ SDE", "Karras", 4, 5.0, 7)  # fmt: skip
    assert (request.width, request.height, request.model) == (64, 64, model)
    result = generate(replace(request, out_dir=tmp_path / "out"))
    again = parse_infotext(read_png_parameters(result.images[0].path))
    original = parse_infotext(a1111)
    for key in (
        "Prompt",
        "Negative prompt",
        "Steps",
        "Sampler",
        "Schedule type",
        "CFG scale",
        "Seed",
        "Size-1",
        "Size-2",
    ):
        assert again[key] == original[key], key
