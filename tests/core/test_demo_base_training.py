"""The demo base's multires stage: pictures of every size it names, SDXL's size conditioning for each, and a
training step at each size (scripts/train_demo_base.py runs it after the colour stage so hires fix keeps the
picture)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from trainer_core.models.demo_base_data import time_ids_for
from trainer_core.models.demo_base_files import write_trained_demo_checkpoints
from trainer_core.models.demo_base_training import (
    BASE_STAGES,
    MULTIRES_SIZES,
    STAGES,
    DemoBaseTrainer,
    Recipe,
    StageProgress,
)

torch = pytest.importorskip("torch")


def test_the_multires_stage_trains_the_base_at_the_hires_size_and_the_buckets():
    assert STAGES.index("colour") < STAGES.index("multires") < STAGES.index("gamma")
    assert BASE_STAGES[-1] == "multires"  # the shipped base is its EMA
    sizes = Recipe().multires.sizes
    assert (128, 128) in sizes and (192, 192) in sizes  # native and 1.5x hires
    assert (128, 192) in sizes and (192, 128) in sizes  # the 2:3 buckets both ways


def test_time_ids_are_what_the_generate_pipeline_sends():
    # diffusers: original_size (h, w) + crop (top, left) + target_size (h, w)
    assert time_ids_for(128, 192) == (192, 128, 0, 0, 192, 128)
    assert time_ids_for(192, 128) == (128, 192, 0, 0, 128, 192)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from trainer_core.models.loading import load_sdxl

    path = write_trained_demo_checkpoints(tmp_path_factory.mktemp("base"))["original"]
    return load_sdxl(path, dtype="fp32")


def test_each_size_gets_its_own_pool_of_latents(base, tmp_path):
    stage = replace(Recipe().multires, pool=8)
    trainer = DemoBaseTrainer(
        base, Recipe(multires=stage), tmp_path / "state.safetensors", log=lambda _m: None
    )
    pools = trainer.encode_pool("multires", stage)
    assert len(pools) == len(MULTIRES_SIZES)
    for (w, h), (means, stds, tags) in zip(MULTIRES_SIZES, pools, strict=True):
        assert tuple(means.shape) == (2, 4, h // 8, w // 8) == tuple(stds.shape)
        assert len(tags) == 2


def test_a_multires_step_runs_at_every_size_and_changes_the_unet(base, tmp_path):
    torch.set_num_threads(1)
    stage = replace(Recipe().multires, pool=8, steps=6, batch=2, warmup=1)
    recipe = Recipe(multires=stage)
    drawn: set[tuple[int, int]] = set()  # latent sizes the UNet was called with
    unet = base.unet
    original_forward = unet.forward

    def spy(sample, *args, **kwargs):
        drawn.add(tuple(sample.shape[-2:]))
        return original_forward(sample, *args, **kwargs)

    before = {k: v.clone() for k, v in unet.state_dict().items() if k.endswith("conv_in.weight")}
    unet.forward = spy
    try:
        trainer = DemoBaseTrainer(base, recipe, tmp_path / "state.safetensors", log=lambda _m: None)
        trainer.train_unet("multires", StageProgress("multires"), {})
    finally:
        unet.forward = original_forward
    assert len(drawn) >= 2  # 6 steps over 4 sizes: one size per step, several sizes
    assert drawn <= {(h // 8, w // 8) for w, h in MULTIRES_SIZES}
    after = unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
