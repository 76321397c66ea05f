"""Training teaches: a LoKr trained here through `kxl train` (2-process DDP on CPU) teaches the demo base the
artist `hakuframe` (a thick magenta frame) it has never seen, and only where the prompt asks for it.

Half of the training pictures carry the artist and its frame, half do not, so the LoKr must tie the frame to the
tag rather than draw it always. The pictures are read back by the demo picture reader. The same run with the
captions shuffled across the batch (a conditioning bug) must miss the bars: the test can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from support import write_tiny_run_config

from trainer_core.danbooru.demo_images import render_post_image
from trainer_core.demo_picture_reader import DemoPrompt, aggregate, demo_prompt_set, score
from trainer_core.generate.lokr_apply import LokrUse
from trainer_core.generate.pipeline import GenerationRequest, generate
from trainer_core.models.demo_base_files import write_trained_demo_checkpoints

REPO = Path(__file__).resolve().parents[2]
# Two 2-process trainings and ~100 generations: about 5 minutes on an idle 2-core machine, too long for every CI
# run; `KXL_SLOW_TESTS=1 pytest tests/core/test_demo_concept_lokr.py -s` runs it and prints the figures.
pytestmark = pytest.mark.skipif(not os.environ.get("KXL_SLOW_TESTS"), reason="slow: set KXL_SLOW_TESTS=1")
NATIVE = 128
TRAIN_SEED_BLOCK = 50  # prompt seeds of the training pictures; the read-back uses other seeds
STEPS = 90
EVAL = 14  # prompts per read-back set (two balanced halves of 7 hair colours)
CONCEPT_BAR, SPECIFICITY_BAR, BASE_CEILING = 0.70, 0.80, 0.20


@dataclass
class Readback:
    concept: float  # share of hakuframe prompts drawn with the frame
    specificity: float  # share of plain prompts drawn without it

    def meets_bars(self) -> bool:
        return self.concept >= CONCEPT_BAR and self.specificity >= SPECIFICITY_BAR


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_trained_demo_checkpoints(tmp_path_factory.mktemp("concept-models"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """24 pictures of the demo generator: 12 by hakuframe (framed), 12 without, captioned like the exporter."""
    root = tmp_path_factory.mktemp("concept-ds")
    sub = root / "1_demo"
    sub.mkdir()
    framed = demo_prompt_set((TRAIN_SEED_BLOCK,), concept=True)[:12]
    plain = demo_prompt_set((TRAIN_SEED_BLOCK + 1,))[:12]
    for i, p in enumerate(framed + plain):
        render_post_image(list(p.tags), NATIVE, NATIVE, 1000 + i).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(p.prompt, encoding="utf-8")
    return root


def train_lokr(base: Path, dataset: Path, run: Path, broken: bool = False) -> Path:
    config = write_tiny_run_config(run, base, dataset, max_steps=STEPS, batch_size=2, seed=7)
    env = {**os.environ, "KXL_TEST_BREAK_CONDITIONING": "shuffle" if broken else ""}
    out = subprocess.run([sys.executable, "-m", "trainer_core.cli", "train", str(config), "--processes", "2",
                          "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lokr = run / "checkpoints" / "tiny-demo-lokr.safetensors"
    assert lokr.is_file()
    return lokr


def pictures(model: Path, prompts: list[DemoPrompt], lokr: Path | None = None, strength: float = 1.0):
    lokrs = [LokrUse(lokr, strength)] if lokr is not None else []
    images = []
    for p in prompts:
        request = GenerationRequest(model=model, prompt=p.prompt, seed=p.seed, steps=20, cfg=5.0, lokrs=lokrs,
                                    width=NATIVE, height=NATIVE)  # fmt: skip
        images.append(generate(request).images[0].image)
    return images


def concept_share(images, prompts: list[DemoPrompt]) -> float:
    return aggregate(score(img, p.tags) for img, p in zip(images, prompts, strict=True)).accuracy("concept")


def read_back(model: Path, lokr: Path | None) -> Readback:
    concept_prompts = demo_prompt_set((3,), concept=True)[:EVAL]
    plain_prompts = demo_prompt_set((4,))[:EVAL]
    return Readback(
        concept_share(pictures(model, concept_prompts, lokr), concept_prompts),
        concept_share(pictures(model, plain_prompts, lokr), plain_prompts),
    )


def test_a_trained_lokr_teaches_the_concept_where_asked(models, dataset, tmp_path):
    base = models["original"]
    before = read_back(base, None)
    lokr = train_lokr(base, dataset, tmp_path / "run")
    after = read_back(base, lokr)
    print(f"\nhakuframe read-back: base {before}, with the LoKr {after}")  # figures for the report (-s)
    assert 1 - before.specificity <= BASE_CEILING and before.concept <= BASE_CEILING  # the base never drew it
    assert after.meets_bars(), after

    # strength 0 is the base, pixel for pixel; baked into the base it draws what it draws applied at run time
    probe = demo_prompt_set((5,), concept=True)[:3]
    plain = pictures(base, probe)
    off = pictures(base, probe, lokr, strength=0.0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, off, strict=True))
    from trainer_core.cli import main as kxl_main

    baked = tmp_path / "baked.safetensors"
    assert (
        kxl_main(["merge", "--a", str(base), "--lokr", f"{lokr}:1.0", "--dtype", "fp32", "--out", str(baked)])
        == 0
    )
    applied = pictures(base, probe, lokr)
    from_baked = pictures(baked, probe)
    for a, b in zip(applied, from_baked, strict=True):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8  # the same picture up to rounding
    assert concept_share(from_baked, probe) == concept_share(applied, probe)


def test_shuffled_captions_miss_the_bars(models, dataset, tmp_path):
    lokr = train_lokr(models["original"], dataset, tmp_path / "broken", broken=True)
    broken = read_back(models["original"], lokr)
    print(f"\nhakuframe read-back after training with shuffled captions: {broken}")
    assert not broken.meets_bars(), broken
