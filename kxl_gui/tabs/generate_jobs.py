"""What the Generate tab runs in workers: the tag vocabulary and completion index, the CLIP tokenizer for the token
counter, the engine warm-up, a generation, a dropped PNG's parameters. No Qt here: these are the callables the
tab hands to `Job`s, so nothing of this runs on the GUI thread.

The first generation of a session imports torch and diffusers (~2,000 modules); `warm_engine` does that when the
tab is first shown, inside `quiet_gc()` (see kxl_gui/jobs.py), so the collector's full passes over that import do
not freeze the window.
"""

from __future__ import annotations

import threading
from pathlib import Path

from trainer_core.generate.infotext import read_png_parameters
from trainer_core.generate.pipeline import GenerationRequest
from trainer_core.progress import Progress
from trainer_core.workspace import Workspace
from trainer_core.workspace_queries import KnownModels, scan_models

from ..jobs import quiet_gc


def load_vocabulary(ws: Workspace | None, progress: Progress):
    """(vocabulary, completer): the workspace's own tags first, then the whole shipped Danbooru list."""
    from trainer_core.tags import TagCompleter
    from trainer_core.tags.shipped_vocabulary import builder_vocabulary

    with quiet_gc():  # long-lived: no full collection over it while it is built, nor after
        vocab = builder_vocabulary(ws, progress)
        progress.stage("building the completion index")
        return vocab, TagCompleter(vocab)


def load_tokenizer(_progress: Progress):
    from trainer_core.models.tokenizers import load_sdxl_tokenizers

    with quiet_gc():
        return load_sdxl_tokenizers()[0]


_engine_lock = threading.Lock()
_engine_warm = False


def warm_engine(progress: Progress | None = None) -> None:
    """Import what the first generation of a session needs, once per process, with the collector paused and the
    result frozen (jobs.quiet_gc): measured on the demo, this turns 0.2-0.6 s GUI stalls at the first Generate
    into none. A second caller waits for the first one's imports."""
    global _engine_warm
    with _engine_lock:
        if _engine_warm:
            return
        if progress is not None:
            progress.stage("loading the generation engine (first run only)")
        with quiet_gc():
            from trainer_core.hf_quiet import quiet_hf

            with quiet_hf():
                import diffusers
                import transformers

                for name in ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "AutoencoderKL",
                             "UNet2DConditionModel", "EulerDiscreteScheduler"):  # fmt: skip
                    getattr(diffusers, name)  # diffusers and transformers import their classes lazily
                for name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
                    getattr(transformers, name)
                import trainer_core.generate.kdiffusion_scheduler  # noqa: F401
                import trainer_core.generate.lokr_apply  # noqa: F401
                import trainer_core.generate.pipeline  # noqa: F401
                import trainer_core.generate.samplers  # noqa: F401
                import trainer_core.models.loading  # noqa: F401
        _engine_warm = True


def engine_is_warm() -> bool:
    return _engine_warm


def run_generation(request: GenerationRequest, progress: Progress):
    """One press of Generate: the engine's `generate` (the code the CLI and the trainer's samples use)."""
    from trainer_core.generate.pipeline import generate

    warm_engine(progress)
    return generate(request, progress)


def read_dropped_image(path: Path, ws: Workspace | None) -> tuple[str, KnownModels]:
    """(the image's A1111 parameters or "", the workspace's models and LoKrs looked at again): a LoKr or a base
    it names may have been trained or merged since the tab last looked."""
    return read_png_parameters(path) or "", scan_models(ws)


def model_named(known: KnownModels, name: str, digest: str) -> Path | None:
    """The known base an infotext's `Model hash` (a SHA-256 prefix) or `Model` (a file stem) names."""
    digest = digest.strip().lower()
    if digest:
        for path in known.bases:
            if known.sha256.get(path, "").startswith(digest):
                return path
    return next((path for path in known.bases if name and path.stem == name), None)
