"""The tiny SDXL-architecture models behind the demo workspace.

Same block structure as SDXL (3 UNet levels, 4 VAE blocks, two CLIP encoders, the real tokenizer), tiny widths, so
every tab works on a laptop CPU in seconds. Two flavours:
- trained (arch kxl-demo): the base shipped in resources/demo_base, trained by scripts/train_demo_base.py on the
  demo generator's pictures, so it really draws; `kxl demo init` writes these;
- random (arch kxl-tiny): weights fully determined by a seed, for unit tests that only need shapes and speed.

The demo needs three checkpoints for the merge tab, mimicking the card's inputs:
- "original": plays the untouched SDXL base;
- "gamma" / "beta": play two fine-tunes of it: every tensor drifted from the original, and the CLIP token/position
  embeddings drifted more strongly (the card's reason to revert them).
"""

from __future__ import annotations

from pathlib import Path

from .architectures import build_empty_components
from .loading import SdxlComponents, _scheduler_and_tokenizers, save_single_file
from .sdxl_layout import COMPONENTS

TINY_ARCH = "kxl-tiny"
EMBEDDING_PARAM_SUFFIXES = ("token_embedding.weight", "position_embedding.weight")


def build_tiny_components(seed: int = 0) -> SdxlComponents:
    """Fresh tiny components with seeded weights (CPU, fp32)."""
    import torch

    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        models = build_empty_components(TINY_ARCH, device="cpu")
    finally:
        torch.random.set_rng_state(gen_state)
    # diffusers zero-initialises some output layers (e.g. conv_out of resnets? no: proj_out of attention blocks in
    # some versions); give every tensor seeded noise on top so merges and LoKr bakes change every key measurably.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in COMPONENTS:
            for _, p in sorted(models[name].named_parameters()):
                if torch.count_nonzero(p) == 0:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    for m in models.values():
        m.eval()
    scheduler, tok1, tok2 = _scheduler_and_tokenizers(TINY_ARCH)
    return SdxlComponents(**models, tokenizer=tok1, tokenizer_2=tok2, scheduler=scheduler, arch=TINY_ARCH)


def drift_components(
    base: SdxlComponents, seed: int, scale: float = 0.02, embedding_scale: float = 0.2
) -> None:
    """Perturb `base` in place like a fine-tune would: small drift everywhere, larger drift on CLIP embeddings."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in COMPONENTS:
            for pname, p in sorted(base.models()[name].named_parameters()):
                s = (
                    embedding_scale
                    if (name.startswith("text_encoder") and pname.endswith(EMBEDDING_PARAM_SUFFIXES))
                    else scale
                )
                p.add_(torch.randn(p.shape, generator=gen) * s * (p.detach().std() + 1e-3))


def write_demo_checkpoints(folder: str | Path, seed: int = 0, *, trained: bool = False) -> dict[str, Path]:
    """Write original / gamma / beta tiny checkpoints (fp16 single files, SGM keys) and return their paths.

    `trained`: the shipped trained demo models (sha256-verified against their manifest; `seed` plays no part);
    otherwise random kxl-tiny weights from `seed`, the same bytes for the same seed.
    """
    if trained:
        from .demo_base_files import write_trained_demo_checkpoints

        return write_trained_demo_checkpoints(folder)
    folder = Path(folder)
    out: dict[str, Path] = {}
    for role, drift_seed in (("original", None), ("gamma", 101), ("beta", 202)):
        comps = build_tiny_components(seed)
        if drift_seed is not None:
            drift_components(comps, seed * 1000 + drift_seed)
        name = {"original": "kxl-tiny-sdxl-base", "gamma": "kxl-tiny-gamma-rev2", "beta": "kxl-tiny-beta7"}[
            role
        ]
        out[role] = save_single_file(
            comps,
            folder / f"{name}.safetensors",
            dtype="fp16",
            metadata={"kxl.demo_role": role, "kxl.seed": str(seed)},
        )
    return out
