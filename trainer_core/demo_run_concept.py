"""The concept figure of `kxl demo run`: did the trained LoKr teach the demo's new artist, and only where asked?

The demo DB holds posts by a made-up artist, `hakuframe`, whose pictures carry a thick magenta frame the demo base
never saw (issue 16). The demo run trains on those posts, so its report says how often the model draws the frame
for prompts that name the artist (concept) and how often it leaves it out for prompts that do not (specificity),
before (the merged base) and after (the baked model). Pictures are read back by `demo_picture_reader`, so this is
a number rather than a look at the grid.

The prompts are the reader's fixed set (hair colour x background x count, the card's caption order), not the
training captions: a model that only memorised its captions would not pass. The two sets are paired: prompt i of
each has the same hair, background, count and seed, and only the artist tag differs. With one seed per set
instead, the starting noise alone decided whether a frame came out: a LoKr trained with its captions shuffled
across the batch "passed" (tests/core/test_demo_concept_lokr.py). Drawn with the grid's sampler, steps and size
but at CONCEPT_CFG; the pictures are kept next to the grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .progress import Progress

CONCEPT_DIR = "concept"
DEFAULT_CONCEPT_PROMPTS = 7  # per set: one of each of the reader's 7 hair colours and 7 backgrounds
PROMPT_BLOCK = 3  # which block of the reader's prompt set (its hair / background / count order)
FIRST_SEED = 100  # prompt i of both sets is drawn with seed FIRST_SEED + i
MIN_CONCEPT_SIZE = 64  # the reader needs at least this many pixels a side
# At the Generate tab's CFG 7 the tiny demo model's guidance pushes the colours it learned past themselves: a
# learned magenta frame comes out crimson and misses the reader's colour tolerance though it is plainly drawn
# (tests/core/test_demo_concept_lokr.py measured 86 % at CFG 3, 57 % at 5, 38 % at 7 for one LoKr).
CONCEPT_CFG = 3.0
# The optimizer settings that teach the concept, over the tiny-demo preset's (the demo run and
# tests/core/test_demo_concept_lokr.py train with them): four times the preset's Lion rates, on a cosine schedule
# that ends the LoKr at a rate near zero instead of the full one (held constant, this rate turns the demo base's
# pictures to noise within 40 steps). Over the test's 700 steps and three seeds (7 / 8 / 9) the frame is drawn for
# 29 / 93 / 57 % of its prompts at this rate, 43 / 79 / 71 % at half and 36 / 71 / 43 % at the preset's (which
# also draws it where not asked for 21 % at seed 8). No rate learns it at every seed within the budget; this one
# gives the test's seed the widest margin (`kxl demo run` draws it for 4/7 of its prompts).
CONCEPT_OPTIMIZER = {"lr_scheduler": "cosine", "unet_lr": 1e-3, "text_encoder_lr": 2.5e-4}


@dataclass(frozen=True)
class ConceptFigure:
    """Counts out of `prompts` per set: how many pictures read back as asked, before and after training."""

    prompts: int
    cfg: float  # the guidance scale the pictures were drawn at
    concept_before: int  # hakuframe prompts drawn with the frame by the merged base
    concept_after: int  # ... by the baked model
    specificity_before: int  # prompts without the artist drawn without the frame by the merged base
    specificity_after: int  # ... by the baked model

    def line(self) -> str:
        """One line for the CLI summary."""

        def share(n: int) -> str:
            return f"{n}/{self.prompts} ({100 * n / self.prompts:.0f} %)"

        return (
            f"hakuframe concept: frame drawn for {share(self.concept_before)} -> {share(self.concept_after)} "
            f"of its prompts; left out for {share(self.specificity_before)} -> {share(self.specificity_after)} "
            f"of prompts without it (before -> after, CFG {self.cfg:g}, read back by the demo picture reader)"
        )


def concept_prompt_sets(count: int) -> tuple[list, list]:
    """(hakuframe prompts, the same prompts without the artist): `count` DemoPrompts each, pair i on one seed."""
    from .demo_picture_reader import demo_prompt_set

    sets = []
    for concept in (True, False):
        prompts = demo_prompt_set((PROMPT_BLOCK,), concept=concept)[:count]
        sets.append([replace(p, seed=FIRST_SEED + i) for i, p in enumerate(prompts)])
    return sets[0], sets[1]


def read_concept(before: Path, after: Path, count: int, size: int, steps: int, negative: str, out_dir: Path,
                 progress: Progress) -> ConceptFigure:  # fmt: skip
    """Draw both prompt sets with both models (PNGs under `out_dir`/before|after) and count the read-backs.

    All pictures of one model are drawn before the other's: the generation cache holds one model at a time."""
    from .demo_picture_reader import read_picture, score
    from .generate.pipeline import GenerationRequest, generate

    if size < MIN_CONCEPT_SIZE:
        raise ValueError(
            f"the concept read-back needs pictures of at least {MIN_CONCEPT_SIZE} px, got {size}"
        )
    framed, plain = concept_prompt_sets(count)
    quiet = Progress(callback=None, cancel_token=progress.cancel_token)
    right: dict[str, int] = {}
    total, done = 2 * (len(framed) + len(plain)), 0
    for label, model in (("before", before), ("after", after)):
        for kind, prompts in (("concept", framed), ("specificity", plain)):
            key = f"{kind}_{label}"
            right[key] = 0
            for i, p in enumerate(prompts):
                progress.update(done, total, f"concept read-back, {label}: {kind} prompt {i + 1}")
                req = GenerationRequest(model=model, prompt=p.prompt, negative=negative, steps=steps, seed=p.seed,
                                        cfg=CONCEPT_CFG, width=size, height=size, out_dir=out_dir / label,
                                        device="cpu", dtype="fp32")  # fmt: skip
                image = generate(req, progress=quiet).images[0].image
                right[key] += int(score(read_picture(image), p.tags)["concept"])
                done += 1
    progress.update(total, total, "done")
    return ConceptFigure(prompts=count, cfg=CONCEPT_CFG, **right)
