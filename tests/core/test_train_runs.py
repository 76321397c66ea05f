"""trainer_core.train.runs: event tailing, the plotted series, run reconciliation, pre-flight and the memory formula."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from trainer_core.train.config import load_preset
from trainer_core.train.events import EventWriter, request_command, write_run_info
from trainer_core.train.runs import (
    GIB,
    EventTail,
    ModelParams,
    RunSeries,
    checkpoint_states,
    estimate_memory,
    factorize,
    list_runs,
    lokr_tensor_sizes,
    new_run_dir,
    preflight,
    process_alive,
    reconcile_run,
    start_trainer,
    summarize_run,
)


def step(n: int, loss: float = 1.0, t: float | None = None, **extra) -> dict:
    return {"type": "step", "step": n, "t": float(n) if t is None else t, "loss": loss,
            "lr": {"unet": 1e-3, "textencoder": 2e-4}, "grad_norm": 0.5, **extra}  # fmt: skip


# ------------------------------------------------------------------------------------------ tail


def test_tail_keeps_a_torn_line_for_the_next_read(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # no file yet
    first = json.dumps(step(1)) + "\n"
    second = json.dumps(step(2))
    path.write_text(first + second[:10], encoding="utf-8")
    assert [e["step"] for e in tail.read()] == [1]
    assert tail.offset == len(first) + 10
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(second[10:] + "\n" + "not json\n")
    assert [e["step"] for e in tail.read()] == [2]
    assert tail.bad_lines == 1 and not tail.pending


def test_tail_reads_in_bounded_slices_and_restarts_on_a_replaced_file(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(step(i)) + "\n" for i in range(1, 101)), encoding="utf-8")
    tail = EventTail(path)
    got = []
    while tail.pending:
        got += tail.read(max_bytes=500)
    assert [e["step"] for e in got] == list(range(1, 101))
    path.write_text(json.dumps(step(1)) + "\n", encoding="utf-8")  # shorter: a new run wrote it
    assert [e["step"] for e in tail.read()] == [1] and tail.resets == 1


def test_tail_parses_a_slice_at_once_but_counts_each_bad_line(tmp_path):
    # "1, 2" is no JSON document, but joined into one array it would parse as two values: the line count check
    # must send the slice back to line-by-line parsing, which counts it as one bad line
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(step(1)), "1, 2", json.dumps(step(2)), '{"no": "type"}', json.dumps(step(3))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tail = EventTail(path)
    assert [e["step"] for e in tail.read()] == [1, 2, 3]
    assert tail.bad_lines == 1


# ------------------------------------------------------------------------------------------ series


def test_series_cuts_back_to_the_resumed_step_and_keeps_markers_before_it():
    s = RunSeries()
    s.add([{"type": "status", "step": 0, "message": "dataset", "total_steps": 10}])
    s.add([step(i, loss=float(i)) for i in range(1, 8)])
    s.add(
        [{"type": "save", "step": 4, "path": "a"}, {"type": "sample", "step": 6, "path": "s.png", "index": 0}]
    )
    assert s.last_step == 7 and s.total_steps == 10
    s.ema(0.5)  # a running EMA state exists before the cut
    s.add([{"type": "status", "step": 4, "message": "resumed", "resumed_from": 4}])
    assert list(s.column("step")) == [1, 2, 3, 4]
    assert [(m.step, m.kind) for m in s.markers] == [(4, "save"), (4, "resume")] and s.samples == []
    s.add([step(5, loss=50.0), step(6, loss=60.0)])
    assert list(s.column("step")) == [1, 2, 3, 4, 5, 6] and list(s.column("loss"))[-2:] == [50.0, 60.0]
    fresh = RunSeries()
    fresh.add([step(i, loss=float(i)) for i in range(1, 5)] + [step(5, loss=50.0), step(6, loss=60.0)])
    assert list(s.ema(0.5)) == pytest.approx(list(fresh.ema(0.5)))  # the smoothed curve restarts cleanly
    s.add([step(3, loss=3.0)])  # a step that does not advance: a restart without resumed_from
    assert list(s.column("step")) == [1, 2, 3]


def test_ema_is_debiased_and_incremental():
    s = RunSeries()
    s.add([step(1, loss=2.0), step(2, loss=4.0)])
    assert list(s.ema(0.0)) == [2.0, 4.0]
    ema = s.ema(0.5)
    assert ema[0] == 2.0  # debiased: the first point is the first value, not half of it
    assert ema[1] == pytest.approx((0.5 * 0.5 * 2.0 + 0.5 * 4.0) / 0.75)
    s.add([step(3, loss=float("nan")), step(4, loss=6.0)])  # NaN is skipped, not propagated
    assert s.ema(0.5)[2] == pytest.approx(ema[1])
    fresh = RunSeries()
    fresh.add([step(1, loss=2.0), step(2, loss=4.0), step(3, loss="nan"), step(4, loss=6.0)])
    assert list(fresh.ema(0.5)) == pytest.approx(list(s.ema(0.5)), nan_ok=True)


def reference_ema(values: list[float], smoothing: float) -> list[float]:
    acc = weight = 0.0
    out = []
    for v in values:
        if v == v:  # NaN leaves the state alone
            acc, weight = smoothing * acc + (1 - smoothing) * v, smoothing * weight + (1 - smoothing)
        out.append(acc / weight if weight > 0 else float("nan"))
    return out


@pytest.mark.parametrize("smoothing", [0.0, 0.001, 0.3, 0.9, 0.99])
def test_ema_matches_the_point_by_point_definition_across_blocks(smoothing):
    # 1000 points span several of the vectorised blocks (and, for tiny smoothing, many short ones); NaNs at the
    # start, inside and across a block edge; added in three uneven parts like a tail read would
    values = [0.5 + 0.4 * ((i * 7919) % 101) / 101 for i in range(1000)]
    for i in (0, 1, 127, 128, 129, 500, 999):
        values[i] = float("nan")
    s = RunSeries()
    for lo, hi in ((0, 3), (3, 700), (700, 1000)):
        s.add([step(i + 1, loss=values[i]) for i in range(lo, hi)])
        s.ema(smoothing)
    assert list(s.ema(smoothing)) == pytest.approx(reference_ema(values, smoothing), rel=1e-12, nan_ok=True)


def test_eta_from_recent_step_times():
    s = RunSeries()
    s.add([{"type": "status", "step": 0, "message": "x", "total_steps": 100}])
    s.add([step(i, t=1000.0 + 2.0 * i) for i in range(1, 11)])
    assert s.seconds_per_step() == pytest.approx(2.0)
    assert s.eta_seconds() == pytest.approx(180.0)


# ------------------------------------------------------------------------------------------ runs


def _run(tmp_path: Path, name: str, state: str, pid: int, start: float | None, events: list[dict]) -> Path:
    run = tmp_path / name
    run.mkdir()
    info = {"pid": pid, "pgid": pid, "process_start_time": start, "state": state, "updated": time.time(),
            "host": os.uname().nodename}  # fmt: skip
    (run / "run.json").write_text(json.dumps(info), encoding="utf-8")
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return run


def test_reconcile_dead_recycled_and_live_processes(tmp_path):
    me = psutil.Process()
    live = _run(tmp_path, "live", "running", me.pid, me.create_time(), [step(1)])
    recycled = _run(tmp_path, "recycled", "running", me.pid, me.create_time() - 3600, [step(1), step(2)])
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid = proc.pid
    proc.wait()
    dead = _run(tmp_path, "dead", "running", dead_pid, None, [step(1)])
    finished = _run(tmp_path, "finished", "running", dead_pid, None,
                    [step(1), {"type": "done", "step": 1, "reason": "finished"}])  # fmt: skip
    (tmp_path / "not-a-run").mkdir()

    assert reconcile_run(live).state == "running"
    r = reconcile_run(recycled)
    assert r.state == "failed" and "gone" in r.message and r.step == 2
    saved = json.loads((recycled / "run.json").read_text())
    assert saved["state"] == "failed" and saved["reconciled_by"] == "gui"
    assert summarize_run(recycled).state == "failed"  # the verdict persists without looking at processes
    assert reconcile_run(dead).state == "failed"
    assert reconcile_run(finished).state == "finished"
    runs = list_runs(tmp_path)
    assert sorted(r.name for r in runs) == ["dead", "finished", "live", "recycled"]


def test_process_alive_checks_start_time():
    me = psutil.Process()
    assert process_alive(me.pid, me.create_time())
    assert not process_alive(me.pid, me.create_time() + 100)
    assert not process_alive(None)


def test_start_trainer_runs_in_its_own_session_and_logs(tmp_path):
    proc = start_trainer(
        [sys.executable, "-c", "import os; print('pg', os.getpgid(0))"], {"KXL_X": "1"}, tmp_path
    )
    assert proc.wait(timeout=30) == 0
    log = (tmp_path / "logs" / "launcher.log").read_text()
    assert f"pg {proc.pid}" in log  # the launcher leads its own process group
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch["pid"] == launch["pgid"] == proc.pid and launch["env"] == {"KXL_X": "1"}


def test_command_files_and_run_dirs(tmp_path):
    assert request_command(tmp_path, "sample") == tmp_path / "commands" / "sample"
    assert (tmp_path / "commands" / "sample").is_file()
    with pytest.raises(ValueError, match="unknown trainer command"):
        request_command(tmp_path, "explode")
    first = new_run_dir(tmp_path, "lokr", when=0)
    first.mkdir()
    second = new_run_dir(tmp_path, "lokr", when=0)
    assert second.name == first.name + "-2"
    state = tmp_path / "checkpoints" / "state-00000012"
    state.mkdir(parents=True)
    (state / "train_state.json").write_text(json.dumps({"step": 12, "saved": 5.0}), encoding="utf-8")
    assert [(s.step, s.saved) for s in checkpoint_states(tmp_path)] == [(12, 5.0)]


def test_writer_and_run_info_feed_the_summary(tmp_path):
    w = EventWriter(tmp_path)
    w.emit("status", 0, message="dataset", total_steps=50)
    w.emit("step", 1, loss=0.5)
    w.close()
    write_run_info(tmp_path, "stopped", final_step=1)
    s = summarize_run(tmp_path)
    assert (s.state, s.step, s.total_steps) == ("stopped", 1, 50)


# ------------------------------------------------------------------------------------------ memory


def test_factorize_and_lokr_sizes():
    assert factorize(640, 8) == (8, 80)
    assert factorize(640, 4) == (4, 160)
    assert factorize(12, 5) == (3, 4)  # no divisor equal to 5: the largest one below it
    assert lokr_tensor_sizes((640, 640), 4, 10000, False) == [16, 160 * 160]
    assert lokr_tensor_sizes((1280, 640, 3, 3), 8, 10000, False) == [64, 160 * 80 * 9]
    assert lokr_tensor_sizes((1280, 640), 8, 4, False) == [64, 160 * 4, 4 * 80]  # low rank: w2 = a @ b


def test_memory_formula_exact_figures():
    """The resident parts are exact; the activations are memory_model's largest phase (the constants and their
    agreement with a trace of the trainer are tested in test_memory_estimate.py)."""
    import math

    from trainer_core.train import memory_model as mm

    params = ModelParams(unet=2_567_000_000, text_encoders=817_000_000, vae=83_650_000,
                         lokr_tensor_sizes=[100_000_000, 1000])  # fmt: skip
    cfg = load_preset("kohaku-xl-delta")  # fp16, fp32 VAE, batch 4, gradient checkpointing, 1024², Lion8bit
    est = estimate_memory(params, cfg, gpu=True)
    assert est.weights == (2_567_000_000 + 817_000_000) * 2 + 83_650_000 * 4
    assert est.lokr == 100_001_000 * 8
    assert est.optimizer == 100_000_000 * 1 + 4 * 390_625 + 1000 * 4  # 8-bit state + fp32 absmax per 256
    # the card's largest phase is the backward with recompute: U0 + D1 x batch x megapixels
    width = math.sqrt(2_567_000_000 / mm.SDXL_UNET_PARAMS)
    backward = mm.UNET_CONST * 2_567_000_000 / mm.SDXL_UNET_PARAMS + mm.BACKWARD_PER_MP * width * 4 * 1.0
    assert est.activations == int(backward * (1 << 20))
    assert est.overhead == int(0.6 * GIB)
    cfg.training.gradient_checkpointing = False
    cfg.training.mixed_precision = "no"
    cfg.optimizer.type = "AdamW"
    est = estimate_memory(params, cfg, gpu=False)
    assert est.weights == (2_567_000_000 + 817_000_000) * 4 + 83_650_000 * 4
    assert est.optimizer == 100_001_000 * 8
    # without checkpointing every layer's activations and merged weights are kept
    assert est.activations > 40 * GIB and est.overhead == 0


# ------------------------------------------------------------------------------------------ pre-flight


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    from trainer_core.models.loading import save_single_file
    from trainer_core.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("runs-base")
    return save_single_file(build_tiny_components(0), root / "base.safetensors", dtype="fp16")


def _dataset(root: Path, n: int, caption: bool = True) -> Path:
    from PIL import Image

    sub = root / "ds" / "2_demo"
    sub.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(sub / f"{i}.png")
        if caption:
            (sub / f"{i}.txt").write_text(f"tag{i}", encoding="utf-8")
    return root / "ds"


def test_preflight_reports_every_problem_at_once(tmp_path, base_ckpt):
    cfg = load_preset("tiny-demo")
    cfg.dataset.path = str(_dataset(tmp_path, 3, caption=False))
    cfg.model.base = str(tmp_path / "missing.safetensors")
    report = preflight(cfg, processes=2, run_dir=tmp_path / "run")
    levels = {i.topic: i.level for i in report.items}
    assert levels == {"dataset": "error", "base": "error", "disk": "ok"} and not report.ok
    assert "no caption file" in next(i.message for i in report.items if i.topic == "dataset")


def test_preflight_counts_buckets_against_the_effective_batch(tmp_path, base_ckpt):
    cfg = load_preset("tiny-demo")
    cfg.dataset.path = str(_dataset(tmp_path, 3))
    cfg.model.base = str(base_ckpt)
    cfg.dataset.resolution = 64
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 2, 2
    report = preflight(cfg, processes=2, run_dir=tmp_path / "run")
    assert report.ok and report.images == 3 and report.entries == 6  # repeats 2
    assert report.bucket_counts == {(64, 64): 6}
    warning = next(i for i in report.items if i.topic == "buckets")
    assert warning.level == "warning" and "= 8" in warning.message and "64x64: 6" in warning.message
    assert report.memory is not None and report.memory.overhead == 0  # no GPU given: a CPU estimate
    assert report.params.lokr > 0 and report.params.unet > 0
    cfg.training.gradient_accumulation_steps = 1
    report = preflight(cfg, processes=1, gpus=[("Tiny GPU", 1 << 20)])
    levels = {i.topic: i.level for i in report.items}
    assert levels["buckets"] == "ok" and levels["memory"] == "warning"  # 1 MiB of GPU memory is too little


def test_series_reports_data_wait_share_and_skipped_steps():
    from trainer_core.train.runs import RunSeries

    s = RunSeries()
    assert s.data_wait_fraction() is None and s.skipped_steps() == 0
    s.add([{"type": "step", "step": 1, "loss": 1.0, "step_time_s": 2.0, "data_wait_s": 1.0},
           {"type": "step", "step": 2, "loss": None, "skipped": True, "step_time_s": 2.0, "data_wait_s": 0.0},
           {"type": "step", "step": 3, "loss": 0.9, "step_time_s": 4.0, "data_wait_s": 0.0}])  # fmt: skip
    assert s.data_wait_fraction() == pytest.approx(1.0 / 8.0)
    assert s.skipped_steps() == 1
    s.add([{"type": "status", "message": "resumed", "resumed_from": 1}])  # the skipped step is cut away
    assert s.skipped_steps() == 0
