"""txt2img / hires fix / LoKr / infotext on the tiny model, through `generate`, `render_samples` and `kxl generate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import trainer_core.hf_quiet  # noqa: F401
from trainer_core.cli import main as kxl_main
from trainer_core.errors import Cancelled, KxlError
from trainer_core.generate import pipeline
from trainer_core.generate.infotext import parse_infotext, read_png_parameters
from trainer_core.generate.lokr_apply import LokrUse
from trainer_core.generate.pipeline import (
    GenerationRequest,
    SampleSettings,
    generate,
    hires_schedule,
    render_samples,
    run_txt2img,
)
from trainer_core.hashing import safetensors_payload_hash, short_hash
from trainer_core.lokr.keys import module_targets
from trainer_core.models.loading import save_single_file
from trainer_core.models.tiny import build_tiny_components
from trainer_core.progress import CancelToken, Progress


@pytest.fixture(scope="module")
def comps():
    return build_tiny_components(0)


@pytest.fixture(scope="module")
def model_path(comps, tmp_path_factory) -> Path:
    return save_single_file(comps, tmp_path_factory.mktemp("models") / "base.safetensors", dtype="fp16")


@pytest.fixture(scope="module")
def lokr_path(comps, tmp_path_factory) -> Path:
    target = next(
        t
        for t in module_targets("kxl-tiny").values()
        if t.weight.diffusers_key.endswith("attn2.to_out.0.weight")
    )
    o, i = comps.unet.get_parameter(target.weight.diffusers_key).shape
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("lokr") / "style.safetensors"
    save_file({f"{target.name}.lokr_w1": torch.randn(2, 2, generator=g),
               f"{target.name}.lokr_w2": torch.randn(o // 2, i // 2, generator=g)}, str(path))  # fmt: skip
    return path


def _request(model_path: Path, out: Path | None, **kw) -> GenerationRequest:
    base = dict(model=model_path, prompt="1girl, (solo:1.5), [blurry]", negative="lowres", steps=3,
                width=64, height=64, seed=42, out_dir=out)  # fmt: skip
    return GenerationRequest(**{**base, **kw})


def test_txt2img_writes_pngs_whose_parameters_parse_back(model_path, lokr_path, tmp_path):
    result = generate(_request(model_path, tmp_path, batch_size=2, lokrs=[LokrUse(lokr_path, 0.7)]))
    assert [p.path.name for p in result.images] == ["00000-42.png", "00001-43.png"]
    assert result.warnings == []
    for image, seed in zip(result.images, (42, 43), strict=True):
        text = read_png_parameters(image.path)
        assert text == image.infotext
        params = parse_infotext(text)
        assert params["Prompt"] == "1girl, (solo:1.5), [blurry] <lora:style:0.7>"
        assert params["Negative prompt"] == "lowres"
        assert {k: params[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1",
                                       "Size-2", "Model", "Emphasis", "Version")} == {
            "Steps": "3", "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": "7", "Seed": str(seed),
            "Size-1": "64", "Size-2": "64", "Model": "base", "Emphasis": "No norm", "Version": "kxl 0.1.0",
        }  # fmt: skip
        assert params["Model hash"] == short_hash(model_path)
        assert params["Lora hashes"] == f"style: {safetensors_payload_hash(lokr_path)}"
        assert "Hires upscale" not in params
    # Next run continues the A1111 counter instead of overwriting.
    again = generate(_request(model_path, tmp_path, seed=7))
    assert again.images[0].path.name == "00002-7.png"


def test_image_i_of_a_batch_is_the_image_of_seed_plus_i(model_path, tmp_path):
    batch = generate(_request(model_path, None, batch_size=2, seed=100))
    single = generate(_request(model_path, None, seed=101))
    a = np.asarray(batch.images[1].image, dtype=np.int16)
    b = np.asarray(single.images[0].image, dtype=np.int16)
    assert np.abs(a - b).max() <= 2  # batched matmul float noise only
    c = np.asarray(batch.images[0].image, dtype=np.int16)
    assert np.abs(a - c).max() > 10  # different seeds really differ


@pytest.mark.parametrize(
    ("hires_steps", "denoise", "n_schedule"), [(7, 0.55, 12), (10, 0.7, 14), (20, 0.3, 66)]
)
def test_hires_schedule_runs_exactly_h_steps(hires_steps, denoise, n_schedule):
    n, strength = hires_schedule(hires_steps, denoise)
    assert n == n_schedule
    assert min(int(n * strength), n) == hires_steps  # what diffusers' img2img will run
    assert int(n * denoise) != hires_steps or denoise == 0.3  # plain strength=d would lose a step (§5)


def test_hires_fix_second_pass_has_exactly_h_steps(comps, tmp_path):
    calls: list[tuple[int, int]] = []
    hook = comps.unet.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape[-2:])))
    try:
        settings = SampleSettings(prompt="cat", steps=4, width=64, height=64, seed=1, hires=True,
                                  hires_scale=1.5, hires_steps=7, denoise=0.55)  # fmt: skip
        images = run_txt2img(comps, settings, out_dir=tmp_path, infotext_params={}, progress=None,
                             check=lambda: None, warnings=[])  # fmt: skip
    finally:
        hook.remove()
    assert calls.count((8, 8)) == 4 and calls.count((12, 12)) == 7 and len(calls) == 11
    assert images[0].image.size == (96, 96)
    params = parse_infotext(read_png_parameters(images[0].path))
    assert (params["Size-1"], params["Denoising strength"], params["Hires upscale"], params["Hires steps"],
            params["Hires upscaler"]) == ("64", "0.55", "1.5", "7", "Latent")  # fmt: skip


def test_progress_per_step_and_cancel_between_steps(model_path, tmp_path):
    events = []
    generate(_request(model_path, None, steps=5, batch_count=2),
             Progress(callback=events.append, min_interval_s=0))  # fmt: skip
    steps = [(e.done, e.total) for e in events if e.total == 10]
    assert steps[-1] == (10, 10) and (3, 10) in steps and (8, 10) in steps
    token = CancelToken()

    def cancel_at_two(event):
        if event.total and event.done >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        generate(
            _request(model_path, tmp_path / "c", steps=5),
            Progress(callback=cancel_at_two, min_interval_s=0),
            token,
        )
    written = list((tmp_path / "c").glob("*.png")) if (tmp_path / "c").exists() else []
    assert written == []  # cancelled before the decode: nothing half-done on disk


def test_model_is_cached_and_lokr_removal_restores_weights(model_path, lokr_path):
    generate(_request(model_path, None))
    cached = pipeline._cache.components
    before = {k: v.clone() for k, v in cached.unet.state_dict().items()}
    generate(_request(model_path, None, lokrs=[LokrUse(lokr_path, 1.0)]))
    assert pipeline._cache.components is cached
    assert any(not torch.equal(v, before[k]) for k, v in cached.unet.state_dict().items())
    generate(_request(model_path, None))
    assert all(torch.equal(v, before[k]) for k, v in cached.unet.state_dict().items())


def test_bad_requests_are_clear_errors(model_path, tmp_path):
    with pytest.raises(KxlError, match="width 100 is not a valid size"):
        generate(_request(model_path, None, width=100))
    with pytest.raises(KxlError, match="base model not found"):
        generate(_request(tmp_path / "nope.safetensors", None))
    with pytest.raises(KxlError, match="LoKr file not found"):
        generate(_request(model_path, None, lokrs=[LokrUse(tmp_path / "x.safetensors", 1.0)]))
    with pytest.raises(KxlError, match="denoising strength 0"):
        generate(_request(model_path, None, hires=True, denoise=0.0))
    with pytest.raises(KxlError, match="invalid emphasis weight"):
        generate(_request(model_path, None, prompt="(a:1.2.3)"))


def test_prompt_lora_tags_without_a_file_warn(model_path):
    result = generate(_request(model_path, None, prompt="cat <lora:unknown:0.5>"))
    assert result.warnings == [
        "<lora:unknown> in the prompt is ignored: add the file to the LoKr list (or --lokr) to use it"
    ]


def test_render_samples_uses_the_same_path_and_restores_train_mode(comps, tmp_path):
    comps.unet.train()
    out = render_samples(
        comps, ["cat", SampleSettings(prompt="dog", seed=9, width=64, height=96, steps=2)], tmp_path,
        defaults=SampleSettings(prompt="", seed=3, steps=2, width=64, height=64), file_stem="step000010",
        model_name="run1",
    )  # fmt: skip
    assert comps.unet.training and not comps.vae.training
    comps.unet.eval()
    assert [p.path.name for p in out] == ["step000010-00-3.png", "step000010-01-9.png"]
    assert out[1].image.size == (64, 96)
    params = parse_infotext(read_png_parameters(out[0].path))
    assert (params["Prompt"], params["Model"], params["Seed"]) == ("cat", "run1", "3")


def test_cli_generate(model_path, tmp_path, capsys):
    code = kxl_main(["generate", "--model", str(model_path), "--prompt", "1girl", "--steps", "2",
                     "--size", "64x64", "--seed", "5", "--sampler", "DPM++ 2M", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    params = parse_infotext(read_png_parameters(tmp_path / "00000-5.png"))
    assert (params["Sampler"], params["Schedule type"], params["Steps"]) == ("DPM++ 2M", "Karras", "2")
    assert (
        kxl_main(
            ["generate", "--model", str(model_path), "--prompt", "x", "--size", "64", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "--size '64' is not WxH" in capsys.readouterr().err


def test_cli_steps_default_to_the_samplers(monkeypatch, tmp_path):
    """Without --steps, `kxl generate` runs the sampler's default steps: 28, and 40 for DPM fast (samplers.py
    says why); --steps always wins."""
    from trainer_core.generate import pipeline
    from trainer_core.generate.samplers import default_steps

    seen = []

    def fake_generate(request, progress=None):
        seen.append((request.sampler, request.steps))
        raise KxlError("stop here")

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    base = ["generate", "--model", str(tmp_path / "m.safetensors"), "--prompt", "x", "--out", str(tmp_path)]
    for extra in ([], ["--sampler", "DPM fast"], ["--sampler", "DPM++ 2M Karras"], ["--sampler", "DPM fast",
                                                                                     "--steps", "12"]):  # fmt: skip
        assert kxl_main(base + extra) != 0
    assert seen == [("Euler a", 28), ("DPM fast", 40), ("DPM++ 2M Karras", 28), ("DPM fast", 12)]
    assert (
        default_steps("DPM fast") == 40 and default_steps("Euler a") == 28 and default_steps("nonsense") == 28
    )
