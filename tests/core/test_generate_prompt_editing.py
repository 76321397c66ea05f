"""Prompt editing and alternation while sampling: every model call sees the text A1111's schedule gives it."""

from __future__ import annotations

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
