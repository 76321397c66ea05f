"""The shipped demo base draws what its prompt asks for, through the Generate tab's own pipeline.

Every picture is read back by the demo picture reader (background, hair colour, number of figures) against the
demo prompt set; chance is 1/7 for background and hair and 1/3 for the count. A sampler, conditioning, CFG or
hires bug that leaves pictures wrong fails here, where a falling loss curve would not notice.

The shipped base (resources/demo_base/manifest.json) reaches issue 16's bars on the balanced block of 21: count,
background and hair. Before its colour stage (offset noise, high-noise timesteps, captions in the prompts' order)
it drew the count but bound colour words only a little above chance (background and hair 36 %); before its
multires stage (128, 192 px and the 2:3 buckets) a hires pass lost the figures.
"""

from __future__ import annotations

import os

import pytest

from trainer_core.demo_picture_reader import DemoPrompt, aggregate, demo_prompt_set, score
from trainer_core.generate.native_size import default_generation_size
from trainer_core.generate.pipeline import SampleSettings, render_samples
from trainer_core.generate.samplers import SAMPLERS, default_steps
from trainer_core.merge.engine import run_merge
from trainer_core.merge.recipe import kohaku_xl_delta_recipe as kohaku_delta_recipe
from trainer_core.models.checkpoint_info import CheckpointInfo
from trainer_core.models.demo_base_files import write_trained_demo_checkpoints
from trainer_core.models.loading import load_sdxl

torch = pytest.importorskip("torch")

NATIVE = 128


def balanced_prompts(n_per_seed: int, seeds=(0, 1)) -> list[DemoPrompt]:
    """The first `n_per_seed` prompts of each seed's block: every 21 hold each hair, background and count equally."""
    out = []
    for seed in seeds:
        out += [p for p in demo_prompt_set((seed,))[:n_per_seed]]
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_trained_demo_checkpoints(tmp_path_factory.mktemp("demo-models"))


@pytest.fixture(scope="module")
def base(models):
    return load_sdxl(models["original"])


def read_back(components, prompts: list[DemoPrompt], **settings):
    items = [
        SampleSettings(prompt=p.prompt, seed=p.seed, width=NATIVE, height=NATIVE, **settings) for p in prompts
    ]
    images = render_samples(components, items)
    acc = aggregate(score(img.image, p.tags) for img, p in zip(images, prompts, strict=True))
    print(
        f"read-back of {len(prompts)} pictures {settings}: {acc.as_dict()}"
    )  # the figures for the report (-s)
    return acc


# Every sampler and the merge read-back draw ~100 pictures: minutes on a 2-core CI machine. They run with
# KXL_SLOW_TESTS=1 (the figures in the session notes come from such a run); the base read-back always runs.
slow = pytest.mark.skipif(not os.environ.get("KXL_SLOW_TESTS"), reason="slow: set KXL_SLOW_TESTS=1")

COUNT_BAR = 0.6  # issue 16
COLOUR_BAR = 0.8  # issue 16, background and hair
# Every sampler must read its 9 pictures at SAMPLER_BAR or better for count, background and hair; one that loses
# the conditioning falls to ~1/7 for the colours.
SAMPLER_BAR = 0.7  # issue 16
ABOVE_CHANCE = 0.2  # chance is 1/7 for background and hair


@pytest.fixture(scope="module")
def base_read_back(base):
    return read_back(base, balanced_prompts(21, seeds=(0,)), steps=20)  # one balanced block of 21


def test_base_draws_the_count_and_colours_above_chance(base_read_back):
    acc = base_read_back
    assert acc.accuracy("count") >= COUNT_BAR, acc.as_dict()
    assert acc.accuracy("background") >= ABOVE_CHANCE, acc.as_dict()
    assert acc.accuracy("hair") >= ABOVE_CHANCE, acc.as_dict()


def test_base_reaches_the_issue_bars_for_background_and_hair(base_read_back):
    assert base_read_back.accuracy("background") >= COLOUR_BAR, base_read_back.as_dict()
    assert base_read_back.accuracy("hair") >= COLOUR_BAR, base_read_back.as_dict()


def test_the_picture_follows_the_prompt_not_the_seed(base):
    """Same seeds, prompts rotated by one: the count read back is the prompt's, so it no longer matches."""
    prompts = balanced_prompts(7, seeds=(1,))
    rotated = [
        DemoPrompt(prompts[(i + 1) % len(prompts)].prompt, p.tags, p.seed) for i, p in enumerate(prompts)
    ]
    acc = read_back(base, rotated, steps=20)
    assert acc.accuracy("count") <= 0.3, acc.as_dict()


@slow
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_draws_the_count_at_its_default_steps(base, sampler):
    # at the steps the Generate tab and `kxl generate` give the sampler (28; DPM fast 40, samplers.py says why)
    acc = read_back(base, balanced_prompts(9, seeds=(2,)), sampler=sampler, steps=default_steps(sampler))
    assert acc.accuracy("count") >= SAMPLER_BAR, (sampler, acc.as_dict())
    assert acc.accuracy("background") >= SAMPLER_BAR, (sampler, acc.as_dict())
    assert acc.accuracy("hair") >= SAMPLER_BAR, (sampler, acc.as_dict())


def test_hires_fix_keeps_the_attributes(base):
    """At the 1.5x hires size (192 px, Latent upscaler, denoise 0.5) the picture keeps what the first pass drew.

    Before the base's multires stage (128 px only) a hires pass, even at denoise 0.05, broke the picture up into a
    canvas of extra figures (count read back 0/6): the UNet had learned where things sit in a 16x16 latent."""
    prompts = balanced_prompts(6, seeds=(3,))
    first = read_back(base, prompts, steps=12)
    hires = read_back(base, prompts, steps=12, hires=True, hires_scale=1.5, denoise=0.5, hires_steps=8)
    assert hires.accuracy("count") >= COUNT_BAR, hires.as_dict()
    for attribute in ("background", "hair", "count"):  # at most one picture worse than the first pass
        assert hires.accuracy(attribute) >= first.accuracy(attribute) - 1 / len(prompts), (
            attribute, first.as_dict(), hires.as_dict())  # fmt: skip


@slow
def test_merged_base_draws_at_least_as_well_as_gamma_and_beta(models, tmp_path):
    merged = tmp_path / "delta-base.safetensors"
    run_merge(kohaku_delta_recipe(models["gamma"], models["beta"], models["original"]), merged)
    prompts = balanced_prompts(9, seeds=(4,))

    def total(path) -> int:
        acc = read_back(load_sdxl(path), prompts, steps=16)
        return sum(acc.right.get(a, 0) for a in ("background", "hair", "count"))

    merged_total = total(merged)
    assert merged_total >= total(models["gamma"])
    assert merged_total >= total(models["beta"])


def test_training_captions_in_prompt_order_are_the_read_back_prompts():
    """The colour stage trains on the prompts' own text: same tag order, same caption form, nothing dropped."""
    import numpy as np

    from trainer_core.models.demo_base_data import caption_for

    rng = np.random.default_rng(0)
    for p in demo_prompt_set((0,))[:21]:
        assert caption_for(p.tags, rng, tag_dropout=0.9, prompt_order=1.0) == p.prompt


def test_caption_dropout_keeps_count_hair_and_background_tags():
    import numpy as np

    from trainer_core.models.demo_base_data import caption_for

    tags = [
        "2girls",
        "multiple_girls",
        "red_hair",
        "blue_eyes",
        "smile",
        "pink_background",
        "simple_background",
    ]
    rng = np.random.default_rng(1)
    captions = [caption_for(tags, rng, tag_dropout=0.5, prompt_order=1.0) for _ in range(200)]
    kept = "2girls, multiple girls, red hair, pink background, simple background"
    assert kept in captions  # both others dropped at least once in 200 draws (1 in 4 each)
    assert all(c.replace("blue eyes, ", "").replace("smile, ", "") == kept for c in captions)
    assert 0.35 < sum("blue eyes" in c for c in captions) / len(captions) < 0.65


def test_generation_defaults_to_the_models_native_size(models, tmp_path):
    from trainer_core.generate.pipeline import GenerationRequest, generate

    result = generate(GenerationRequest(model=models["original"], prompt="1girl, solo, red hair, blue background",
                                        steps=4, seed=1, out_dir=tmp_path))  # fmt: skip
    assert result.images[0].image.size == (NATIVE, NATIVE)
    sdxl = CheckpointInfo(
        tmp_path / "sdxl.safetensors", "sdxl-single-file", "sdxl-base", "fp16", 2514, 0, None, {}
    )
    assert default_generation_size(sdxl) == (1024, 1024)
    assert default_generation_size(models["beta"]) == (NATIVE, NATIVE)
