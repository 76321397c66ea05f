"""#14.4: batches made in data worker processes are exactly the serial path's (0, 1, 3 workers, a resume mid-epoch,
the latent-cache case), a corrupt image names its file, workers survive the stop signals and leave nothing behind;
the `dataset.num_workers` setting; a training run with a worker reports `data_wait_s`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

from trainer_core.errors import KxlError  # noqa: E402
from trainer_core.train.config import DatasetConfig, TrainConfig, config_from_dict  # noqa: E402
from trainer_core.train.data import BucketPlan, caption_options, make_batch, scan_dataset  # noqa: E402
from trainer_core.train.data_loader import TrainBatches, resolve_num_workers  # noqa: E402

# torch warns when a loader has more workers than the machine has cores (3 on a 2-core CI box)
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

SEED, ORDER_SEED, BATCH, ACCUM = 11, 23, 2, 2
SIZES = [(96, 64), (64, 96), (64, 64), (100, 70), (70, 100), (128, 64), (64, 64), (90, 90)]


def _write_dataset(root: Path, corrupt: int | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub_name, sizes in (("2_first", SIZES[:5]), ("1_second", SIZES[5:])):
        sub = root / sub_name
        sub.mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            path = sub / f"{sub_name}-{i}.png"
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
            (sub / f"{sub_name}-{i}.txt").write_text(f"1girl ||| tag{i}, red, blue, green, {sub_name}",
                                                    encoding="utf-8")  # fmt: skip
    if corrupt is not None:  # header intact (the scan sizes it), pixel data cut: decoding fails
        path = sorted((root / "2_first").glob("*.png"))[corrupt]
        path.write_bytes(path.read_bytes()[:300])
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("loader-ds") / "ds")


def _cfg() -> DatasetConfig:
    # random crops and caption shuffles both depend on the per-entry seeding the workers must reproduce
    return DatasetConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, bucket_step=64, random_crop=True,
                         caption_tag_dropout_rate=0.3)  # fmt: skip


def _serial(plan, cfg, world, rank, start, total, load=True):
    """The training loop's data path before #14.4: slice the epoch's rank order, make_batch on this thread."""
    spe = plan.steps_per_epoch(world, ACCUM)
    options = caption_options(cfg)
    out = []
    for step in range(start, total):
        epoch, in_epoch = divmod(step, spe)
        order = plan.rank_micro_batches(epoch, ORDER_SEED, world, rank, ACCUM)
        for ids in order[in_epoch * ACCUM : (in_epoch + 1) * ACCUM]:
            out.append(make_batch(plan, ids, cfg, SEED, epoch, options, load=load))
    return out


def _loaded(plan, cfg, world, rank, start, total, workers, load=True):
    spe = plan.steps_per_epoch(world, ACCUM)
    with TrainBatches(plan, cfg, seed=SEED, order_seed=ORDER_SEED, world=world, rank=rank, accum=ACCUM,
                      steps_per_epoch=spe, start_step=start, total_steps=total, load=load,
                      num_workers=workers) as batches:  # fmt: skip
        pids = batches.worker_pids()
        assert len(pids) == workers
        out = [b for step in range(start, total) for b in batches.micro_batches(step)]
    return out, pids


def _assert_same(got, want):
    import torch

    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.entries == w.entries and g.items == w.items and g.captions == w.captions
        assert torch.equal(g.time_ids, w.time_ids)
        if w.pixels is None:
            assert g.pixels is None
        else:
            assert g.pixels.dtype == w.pixels.dtype and torch.equal(g.pixels, w.pixels)  # bit-identical


def _gone(pids: list[int]) -> bool:
    def dead(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    end = time.monotonic() + 10
    while time.monotonic() < end and not all(dead(p) for p in pids):
        time.sleep(0.05)
    return all(dead(p) for p in pids)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_equal_the_serial_path_for_any_worker_count(dataset, workers):
    """Rank 1 of 2 resumed in the middle of epoch 2 and run to the end of epoch 3: a mid-epoch start, an epoch
    change and the rank's own share of the order, against the loop's old slicing + make_batch."""
    cfg = _cfg()
    plan = BucketPlan(scan_dataset(dataset), cfg, BATCH)
    spe = plan.steps_per_epoch(2, ACCUM)
    assert spe >= 2
    start, total = spe + 1, 3 * spe
    got, pids = _loaded(plan, cfg, 2, 1, start, total, workers)
    _assert_same(got, _serial(plan, cfg, 2, 1, start, total))
    assert got[0].entries == plan.rank_micro_batches(1, ORDER_SEED, 2, 1, ACCUM)[ACCUM]  # epoch 2, its step 2
    assert _gone(pids)
    if workers == 0:  # and a whole run from step 0 on one rank
        got, _ = _loaded(plan, cfg, 1, 0, 0, 2 * plan.steps_per_epoch(1, ACCUM), 0)
        _assert_same(got, _serial(plan, cfg, 1, 0, 0, 2 * plan.steps_per_epoch(1, ACCUM)))


def test_latent_cache_batches_carry_no_pixels(dataset):
    cfg = _cfg()
    cfg.random_crop = False  # the trainer refuses cached latents with random crops
    plan = BucketPlan(scan_dataset(dataset), cfg, BATCH)
    total = plan.steps_per_epoch(1, ACCUM) + 1
    got, pids = _loaded(plan, cfg, 1, 0, 0, total, 1, load=False)
    _assert_same(got, _serial(plan, cfg, 1, 0, 0, total, load=False))
    assert all(b.pixels is None for b in got)
    assert _gone(pids)


def test_a_corrupt_image_names_its_file_in_worker_and_serial_path(tmp_path):
    root = _write_dataset(tmp_path / "ds", corrupt=1)
    bad = sorted((root / "2_first").glob("*.png"))[1]
    cfg = _cfg()
    plan = BucketPlan(scan_dataset(root), cfg, BATCH)  # the header is fine: the scan accepts the file
    spe = plan.steps_per_epoch(1, ACCUM)
    errors = {}
    for workers in (0, 1):
        with pytest.raises(KxlError) as info:
            _loaded(plan, cfg, 1, 0, 0, spe, workers)
        errors[workers] = info.value
    assert str(errors[0]) == str(errors[1])
    assert str(bad) in str(errors[1]) and "cannot read image" in str(errors[1])
    assert errors[1].path == bad and type(errors[1]) is KxlError


def test_workers_survive_stop_signals_and_are_gone_after_close(dataset):
    """The supervisor's stop SIGTERMs every process below the launcher and Ctrl+C SIGINTs the whole group: the
    rank finishes its step and saves, so its workers must keep serving until it closes them."""
    cfg = _cfg()
    plan = BucketPlan(scan_dataset(dataset), cfg, BATCH)
    spe = plan.steps_per_epoch(1, ACCUM)
    batches = TrainBatches(plan, cfg, seed=SEED, order_seed=ORDER_SEED, world=1, rank=0, accum=ACCUM,
                           steps_per_epoch=spe, start_step=0, total_steps=50 * spe, num_workers=1)  # fmt: skip
    try:
        pids = batches.worker_pids()
        assert len(pids) == 1
        first = list(batches.micro_batches(0))
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        more = [b for step in range(1, 3) for b in batches.micro_batches(step)]
        assert len(first) == ACCUM and len(more) == 2 * ACCUM
        assert all(psutil.Process(p).is_running() for p in pids)
        assert batches.wait_s > 0
    finally:
        batches.close()  # mid-run, with batches still in flight: what a stop does
    assert _gone(pids)
    batches.close()  # idempotent


def test_num_workers_setting_resolution_validation_and_fingerprint(monkeypatch):
    assert resolve_num_workers(0) == 0 and resolve_num_workers(3, local_processes=8) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert resolve_num_workers(-1) == 4
    assert resolve_num_workers(-1, local_processes=4) == 3  # 4 cores per rank: 3 workers
    # one core per rank: decode on the training thread
    assert resolve_num_workers(-1, local_processes=16) == 0
    assert TrainConfig().dataset.num_workers == -1

    def cfg_with(n: int) -> TrainConfig:
        return config_from_dict({"schema_version": 1, "dataset": {"path": "ds", "num_workers": n}},
                                source=Path("/x/c.toml"))  # fmt: skip

    for bad in (-2, 65):
        with pytest.raises(KxlError, match="dataset.num_workers"):
            cfg_with(bad)
    # the worker count does not change the batches: a resume may change it
    assert (
        cfg_with(0).resume_fingerprint()
        == cfg_with(8).resume_fingerprint()
        == cfg_with(-1).resume_fingerprint()
    )


def test_a_run_with_a_worker_reports_data_wait(tmp_path):
    """An in-process tiny run with one data worker: the step events carry data_wait_s, the status the worker count.
    (Same losses with and without workers follows from the batches being equal; the trainer tests run with the
    default worker count.)"""
    from support import write_train_squares

    from trainer_core.train.config import load_preset
    from trainer_core.train.events import read_events
    from trainer_core.train.loop import Trainer

    base, ds = write_train_squares(tmp_path / "assets")
    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = str(base), str(ds)
    cfg.dataset.resolution, cfg.dataset.num_workers = 64, 1
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 1, 2
    cfg.training.max_steps, cfg.training.save_every_n_steps = 2, 0
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    sigterm, sigint = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert Trainer(run / "config.toml").run() == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # the trainer installs its own handlers
        signal.signal(signal.SIGINT, sigint)
    events = read_events(run)
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 2 and all(
        isinstance(e["data_wait_s"], float) and e["data_wait_s"] >= 0 for e in steps
    )
    status = next(e for e in events if e["type"] == "status" and "data_workers" in e)
    assert status["data_workers"] == 1 and status["scan"]["images"] == 2
