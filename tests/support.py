"""Helpers shared by core, faults and GUI tests (a plain module: `tests/gui/conftest.py` shadows the name
`conftest` for the GUI tests, so what they share with the others lives here)."""

from __future__ import annotations

from pathlib import Path

import pytest


def write_tiny_run_config(
    run: Path, base: Path, dataset: Path, optimizer: dict | None = None, **training
) -> Path:
    """`run/config.toml` for a short tiny-demo run of one image per step: no interval saves, no samples,
    `training.<key>` overridden by `training` (and `optimizer.<key>` by `optimizer`). Returns the config's path."""
    from trainer_core.train.config import load_preset

    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = str(base), str(dataset)
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 1, 1
    cfg.training.save_every_n_steps, cfg.training.sample_every = 0, 0
    for key, value in training.items():
        setattr(cfg.training, key, value)
    for key, value in (optimizer or {}).items():
        setattr(cfg.optimizer, key, value)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def interrupted_build(opts, after: int, workers: int = 1) -> None:
    """Run a dataset build and cancel it once `after` posts are exported: an interrupted build to resume."""
    from trainer_core.dataset.export import build_dataset
    from trainer_core.errors import Cancelled
    from trainer_core.progress import CancelToken, Progress

    token = CancelToken()

    def stop(ev) -> None:
        if ev.total and ev.message.startswith("Exporting") and ev.done >= after:
            token.cancel()

    with pytest.raises(Cancelled):
        build_dataset(
            opts, workers=workers, progress=Progress(callback=stop, cancel_token=token, min_interval_s=0)
        )


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar shard holding `members` (name, bytes), in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_train_squares(root: Path) -> tuple[Path, Path]:
    """(tiny fp16 base checkpoint, kohya dataset of two 64 px images with `|||` captions) under `root`:
    the smallest real training input, shared by the trainer tests."""
    from PIL import Image, ImageDraw

    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    base = save_single_file(build_tiny_components(0), root / "base.safetensors", dtype="fp16")
    sub = root / "dataset" / "1_squares"
    sub.mkdir(parents=True)
    for i in range(2):
        im = Image.new("RGB", (64, 64), (200 * i, 30, 120))
        ImageDraw.Draw(im).rectangle((8, 8, 40, 40), fill=(255, 255, 0))
        im.save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(f"1girl ||| yellow square, tag{i}", encoding="utf-8")
    return base, root / "dataset"


def demo_workspace_with_squares(root: Path):
    """A demo workspace (DB + the demo checkpoints, no image shards) holding a 4-image kohya dataset `squares`:
    what the Train tab tests launch on."""
    from PIL import Image, ImageDraw

    from trainer_core.demo import init_demo

    ws = init_demo(root, posts=20, seed=0, images=False)
    sub = ws.datasets_path / "squares" / "1_demo"
    sub.mkdir(parents=True)
    for i in range(4):
        im = Image.new("RGB", (64, 64), (60 * i, 40, 140))
        ImageDraw.Draw(im).ellipse((10, 10, 50, 50), fill=(250, 220, 40))
        im.save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(f"1girl ||| yellow circle, tag{i}", encoding="utf-8")
    return ws
