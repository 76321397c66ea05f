"""The trainer's on-disk latent cache (`dataset.cache_latents`), exercised through real in-process runs on CPU.

What a user relies on: the first epoch encodes each image once and stores its latent distribution under
`<run>/cache/latents`; a resumed run reads those entries instead of running the VAE again; the stored values are
what the VAE gives for the image at its bucket; a new base model (a new VAE) never reuses old entries; a damaged
entry is re-encoded instead of crashing; and caching does not change what is trained (same losses as without).

The trainer runs in this process (no subprocess start-up) so the test can count VAE encodes by wrapping
`AutoencoderKL.encode`. Dataset: three images in one `2_` folder at resolution 128 -> two in the 128x128 bucket
(one of them upscaled from 96 px), one in the 192x64 bucket; batch 2 gives 3 steps per epoch, and the 192x64 batch
always holds both repeats of the same image.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")  # what `python -m trainer_core.train` sets

from trainer_core.train.config import load_config, load_preset  # noqa: E402
from trainer_core.train.events import read_events  # noqa: E402

IMAGES = {"a.png": (128, 128), "b.png": (96, 96), "c.png": (192, 64)}
BUCKETS = {"a.png": (128, 128), "b.png": (128, 128), "c.png": (192, 64)}
STEPS_PER_EPOCH = 3


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny fp16 base checkpoint and a kohya dataset of three small images (two buckets, repeats 2)."""
    from PIL import Image, ImageDraw

    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("latent-cache-assets")
    base = save_single_file(build_tiny_components(0), root / "base.safetensors", dtype="fp16")
    sub = root / "dataset" / "2_shapes"
    sub.mkdir(parents=True)
    for i, (name, size) in enumerate(IMAGES.items()):
        im = Image.new("RGB", size, (90 * i, 40, 160))
        ImageDraw.Draw(im).ellipse((6, 6, 50, 40), fill=(250, 220, 10))
        im.save(sub / name)
        (sub / name).with_suffix(".txt").write_text(f"1girl ||| shape{i}, yellow", encoding="utf-8")
    return base, root / "dataset"


def _config(
    run_dir: Path, base: Path, dataset: Path, *, max_steps: int, cache: bool = True, **dataset_kw
) -> Path:
    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = str(base), str(dataset)
    cfg.dataset.cache_latents = cache
    for k, v in dataset_kw.items():
        setattr(cfg.dataset, k, v)
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 2, 1
    cfg.training.max_steps, cfg.training.save_every_n_steps = max_steps, 0
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    return path


def _set_max_steps(config: Path, max_steps: int) -> None:
    """Lengthen a run before resuming it (max_steps is not part of the resume fingerprint)."""
    cfg = load_config(config)
    cfg.training.max_steps = max_steps
    config.write_text(cfg.to_toml(), encoding="utf-8")


def _train(config: Path, resume: bool = False) -> tuple[int, int]:
    """Run the trainer in this process; (exit code, number of images that went through the VAE encoder)."""
    from diffusers import AutoencoderKL

    from trainer_core.train.loop import Trainer

    encoded: list[int] = []
    original = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):
        encoded.append(int(x.shape[0]))
        return original(self, x, *args, **kwargs)

    sigterm = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoencoderKL, "encode", counting)
        try:
            code = Trainer(config, resume=resume).run()
        finally:
            signal.signal(signal.SIGTERM, sigterm)  # the trainer installs its own handler
    return code, sum(encoded)


def _losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["type"] == "step"}


def _entries(run_dir: Path) -> dict[str, int]:
    """Cache file name -> mtime_ns."""
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "cache" / "latents").glob("*.safetensors")}


def _key_files(run_dir: Path, base: Path, dataset: Path) -> dict[str, Path]:
    """Image file name -> the cache file the trainer uses for it (through the cache's own key)."""
    from trainer_core.train.data import BucketPlan, scan_dataset
    from trainer_core.train.latent_cache import LatentCache, vae_identity

    cfg = load_config(run_dir / "config.toml")
    items = scan_dataset(dataset)
    plan = BucketPlan(items, cfg.dataset, cfg.training.batch_size)
    cache = LatentCache(run_dir / "cache" / "latents", vae_identity(base))
    out = {}
    for e in plan.entries:
        it = plan.items[e.item]
        assert e.assignment.bucket == BUCKETS[it.path.name]
        out[it.path.name] = cache.folder / f"{cache.key(it, e.assignment)}.safetensors"
    return out


def _fresh_encode(base: Path, dataset: Path) -> dict[str, tuple]:
    """Image file name -> (mean, std) of a fresh fp32 VAE encode of the image preprocessed at its bucket."""
    import torch

    from trainer_core.models.loading import load_sdxl
    from trainer_core.train.data import BucketPlan, load_pixels, scan_dataset

    cfg = load_preset("tiny-demo")
    items = scan_dataset(dataset)
    plan = BucketPlan(items, cfg.dataset, 1)
    vae = load_sdxl(base, dtype=torch.float32).vae.eval()
    out = {}
    with torch.no_grad():
        for e in plan.entries:
            it = plan.items[e.item]
            d = vae.encode(load_pixels(it, e.assignment)[None]).latent_dist
            out[it.path.name] = (d.mean[0], d.std[0])
    return out


@pytest.fixture(scope="module")
def cached_run(assets, tmp_path_factory):
    """One cached epoch, then a resume for a second epoch, and the same 6 steps without the cache."""
    base, dataset = assets
    root = tmp_path_factory.mktemp("latent-cache-runs")
    run = root / "cached"
    config = _config(run, base, dataset, max_steps=STEPS_PER_EPOCH)
    first = _train(config)
    after_first = _entries(run)
    _set_max_steps(config, 2 * STEPS_PER_EPOCH)
    second = _train(config, resume=True)
    plain = root / "plain"
    plain_code, _ = _train(_config(plain, base, dataset, max_steps=2 * STEPS_PER_EPOCH, cache=False))
    assert plain_code == 0
    return {"run": run, "plain": plain, "first": first, "second": second, "after_first": after_first}


def test_first_epoch_encodes_each_image_once_and_a_resume_encodes_nothing(cached_run):
    run = cached_run["run"]
    code, encoded = cached_run["first"]
    assert code == 0
    # 6 entries per epoch (3 images x 2 repeats) but one encode and one file per (image, bucket).
    assert encoded == len(IMAGES)
    assert len(cached_run["after_first"]) == len(IMAGES)
    code, encoded = cached_run["second"]
    assert code == 0
    assert encoded == 0
    assert _entries(run) == cached_run["after_first"]  # same files, none rewritten
    steps = [s for s in _losses(run)]
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))


def test_cached_entries_equal_a_fresh_encode_at_the_bucket(assets, cached_run):
    from safetensors.torch import load_file

    base, dataset = assets
    files = _key_files(cached_run["run"], base, dataset)
    assert {p.name for p in files.values()} == set(cached_run["after_first"])
    fresh = _fresh_encode(base, dataset)
    for name, path in files.items():
        stored = load_file(str(path))
        w, h = BUCKETS[name]
        assert set(stored) == {"mean", "std"}
        assert stored["mean"].shape == stored["std"].shape == (4, h // 8, w // 8), name
        mean, std = fresh[name]
        assert (stored["mean"] - mean).abs().max().item() <= 1e-5, name
        assert (stored["std"] - std).abs().max().item() <= 1e-5, name
    # The two 128x128 images must not share an entry (keyed by the image, not only by the bucket).
    a = load_file(str(files["a.png"]))["mean"]
    b = load_file(str(files["b.png"]))["mean"]
    assert (a - b).abs().max().item() > 1e-3


def test_training_with_the_cache_gives_the_same_losses_as_without(cached_run):
    # Without random_crop the pixels are the same either way, and the cache stores the distribution (not one
    # sample), so each step draws the same latents from the step's generator as the uncached run does.
    cached, plain = _losses(cached_run["run"]), _losses(cached_run["plain"])
    assert sorted(plain) == sorted(cached) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for step in plain:
        assert cached[step] == pytest.approx(plain[step], rel=1e-4, abs=1e-6), step
    assert len({round(v, 6) for v in plain.values()}) > 1  # the losses really vary step to step


def test_a_new_base_model_does_not_reuse_old_entries(assets, tmp_path):
    from safetensors.torch import load_file

    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    _, dataset = assets
    base = Path(shutil.copy2(assets[0], tmp_path / "base.safetensors"))
    run = tmp_path / "run"
    config = _config(run, base, dataset, max_steps=STEPS_PER_EPOCH)
    assert _train(config) == (0, len(IMAGES))
    old = _entries(run)
    old_files = _key_files(run, base, dataset)
    # Same path, other weights (a re-downloaded or replaced base): the resume fingerprint still matches, the
    # VAE identity does not.
    save_single_file(build_tiny_components(1), base, dtype="fp16")
    _set_max_steps(config, 2 * STEPS_PER_EPOCH)
    code, encoded = _train(config, resume=True)
    assert code == 0
    assert encoded == len(IMAGES)
    now = _entries(run)
    assert len(now) == 2 * len(IMAGES)
    assert {k: now[k] for k in old} == old  # old entries untouched, new ones beside them
    new_files = _key_files(run, base, dataset)
    fresh = _fresh_encode(base, dataset)
    for name, path in new_files.items():
        assert path.name not in old
        mean = load_file(str(path))["mean"]
        assert (mean - fresh[name][0]).abs().max().item() <= 1e-5, name
        assert (mean - load_file(str(old_files[name]))["mean"]).abs().max().item() > 1e-3, name


def test_damaged_entries_are_encoded_again(assets, cached_run, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    base, dataset = assets
    run = tmp_path / "cached"
    shutil.copytree(cached_run["run"], run)  # copy2 keeps mtimes; the config holds absolute paths
    files = _key_files(run, base, dataset)
    # Cloned: load_file maps the file, and the truncation below would change a mapped tensor's values.
    good = {name: {k: v.clone() for k, v in load_file(str(p)).items()} for name, p in files.items()}
    # A truncated file (copy interrupted) and a readable file without the expected tensors.
    data = files["a.png"].read_bytes()
    files["a.png"].write_bytes(data[: len(data) // 2])
    save_file({"latents": torch.zeros(4, 8, 24)}, str(files["c.png"]))
    _set_max_steps(run / "config.toml", 3 * STEPS_PER_EPOCH)
    code, encoded = _train(run / "config.toml", resume=True)
    assert code == 0, read_events(run)[-1]
    assert encoded == 2  # exactly the two damaged images, once each
    for name in ("a.png", "c.png"):
        repaired = load_file(str(files[name]))
        assert set(repaired) == {"mean", "std"}
        assert torch.equal(repaired["mean"], good[name]["mean"]), name
        assert torch.equal(repaired["std"], good[name]["std"]), name
    assert [e["step"] for e in read_events(run) if e["type"] == "step"][-1] == 3 * STEPS_PER_EPOCH


def test_cache_latents_refuses_random_crop(assets, tmp_path):
    base, dataset = assets
    run = tmp_path / "crop"
    config = _config(run, base, dataset, max_steps=2, random_crop=True)
    code, encoded = _train(config)
    assert code == 2 and encoded == 0
    err = read_events(run)[-1]
    assert err["type"] == "error" and err["exit_code"] == 2
    assert "dataset.cache_latents cannot be combined with dataset.random_crop" in err["message"]
    assert str(config) in err["message"]
    assert not (run / "cache").exists()
    assert not any((run / "checkpoints").iterdir())
