"""The pre-flight memory estimate against a trace of the trainer's own micro-step (issue #14, item 2).

Full-size SDXL on the meta device (no memory): `benchmarks/bench_train_cost.py` runs `micro_step` (what
`loop.Trainer` calls) with the kohaku-xl-delta networks, CUDA fp16 autocast emulated, flash-style attention, and
counts live tensor bytes per phase. The estimate (`runs.estimate_memory`, per phase `memory_model.estimate_phases`)
must be within 10 % of that trace at the card's setting (1024² batch 4), 1024² batch 1 and 2048x512 batch 4 — for the
peak and for every phase; the part above the resident weights/state/gradients is held to the same 10 %.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from trainer_core.train.config import load_preset
from trainer_core.train.memory_model import PHASES, estimate_phases, optimizer_state_bytes
from trainer_core.train.runs import GIB, ModelParams, count_model_params, estimate_memory

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_cost.py"
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def traced(bench):
    setup = bench.build_setup()
    bench.add_networks(setup)
    return setup


@pytest.fixture(scope="module")
def sdxl_params(bench, traced, tmp_path_factory):
    """ModelParams exactly as the pre-flight reads them: from an SDXL checkpoint header (sparse file, no data)."""
    path = bench.write_header_only_sdxl(tmp_path_factory.mktemp("sdxl") / "sdxl.safetensors")
    params = count_model_params(path, traced.cfg)
    exact = sum(p.numel() for p in traced.nets.parameters())
    assert abs(params.lokr / exact - 1) < 1e-3  # the header-derived LoKr size is the networks' own
    return params


@pytest.mark.parametrize("width,height,batch", [(1024, 1024, 4), (1024, 1024, 1), (2048, 512, 4)])
def test_estimate_within_ten_percent_of_the_trace(bench, traced, sdxl_params, width, height, batch):
    trace = bench.trace_micro_step(traced, width, height, batch, count_flops=False)
    assert trace.autocast_misses == 0
    assert set(trace.peaks) >= set(PHASES)
    check = bench.check_estimate(traced, trace, sdxl_params)
    errors = check.errors()
    report = {k: f"{v:+.1%}" for k, v in errors.items()}
    assert all(abs(e) <= TOLERANCE for e in errors.values()), report
    transient = check.transient_errors()
    assert {"unet_forward", "backward", "vae_encode"} <= set(transient)
    assert all(abs(e) <= TOLERANCE for e in transient.values()), {
        k: f"{v:+.1%}" for k, v in transient.items()
    }
    if (width, height, batch) == (1024, 1024, 4):
        assert trace.peak <= 16 * GIB  # the card's recipe fits a 16 GB card
        assert max(PHASES, key=lambda p: trace.peaks[p]) == "backward"


@pytest.mark.parametrize("width,height,batch", [(1024, 1024, 4), (768, 1344, 2)])
def test_selective_checkpointing_estimate_within_ten_percent_of_the_trace(bench, traced, sdxl_params, width,
                                                                            height, batch):  # fmt: skip
    """training.checkpointing = "selective" (only the UNet's transformer blocks recomputed): the estimate holds at
    the card's setting and at a bucket and batch it was not calibrated at; it costs memory and saves compute."""
    bench.set_mode(traced, "selective")
    try:
        trace = bench.trace_micro_step(traced, width, height, batch)
    finally:
        bench.set_mode(traced, "full")
    assert trace.checkpointing == "selective" and trace.autocast_misses == 0
    check = bench.check_estimate(traced, trace, sdxl_params)
    errors = check.errors()
    assert all(abs(e) <= TOLERANCE for e in errors.values()), {k: f"{v:+.1%}" for k, v in errors.items()}
    transient = check.transient_errors()
    assert all(abs(e) <= TOLERANCE for e in transient.values()), {
        k: f"{v:+.1%}" for k, v in transient.items()
    }
    if (width, height, batch) == (1024, 1024, 4):
        full = bench.trace_micro_step(traced, width, height, batch)
        assert full.checkpointing == "full"
        assert full.peak + 2 * GIB < trace.peak < 20 * GIB  # more memory than "full", fits a 24 GB card
        assert sum(trace.flops.values()) < 0.98 * sum(full.flops.values())  # the ResNets are not recomputed


# ------------------------------------------------------------------------------------------ the formula itself


def _sdxl() -> ModelParams:
    return ModelParams(unet=2_567_463_684, text_encoders=817_720_320, vae=83_653_863,
                       lokr_tensor_sizes=[384_000_000, 4095, 5000])  # fmt: skip


def test_phases_cover_the_step_and_resident_parts_are_exact():
    cfg = load_preset("kohaku-xl-delta")
    est = estimate_phases(_sdxl(), cfg)
    assert set(est.phases) == set(PHASES)
    assert est.weights == (2_567_463_684 + 817_720_320) * 2 + 83_653_863 * 4
    p = 384_000_000 + 4095 + 5000
    assert est.lokr_params == est.gradients == 4 * p
    # Lion8bit: uint8 state + fp32 absmax per 256 for >= 4096 elements, fp32 below
    assert est.optimizer == 384_000_000 + 4 * 1_500_000 + 4 * 4095 + 5000 + 4 * 20
    assert est.phases["optimizer"] == est.resident
    assert est.peak_phase == "backward"


def test_vae_phase_is_per_image_and_activations_scale_with_batch_and_area():
    cfg = load_preset("kohaku-xl-delta")
    b1 = estimate_phases(_sdxl(), cfg, batch=1).transient
    b4 = estimate_phases(_sdxl(), cfg, batch=4).transient
    wide = estimate_phases(_sdxl(), cfg, width=2048, height=512, batch=4).transient
    assert b1["vae_encode"] == b4["vae_encode"]  # one image at a time
    assert b4["backward"] > b4["unet_forward"] > b1["unet_forward"]
    assert wide == b4  # same area, same memory (flash attention has no N² term)
    cfg.training.vae_dtype = "fp16"
    assert estimate_phases(_sdxl(), cfg, batch=4).transient["vae_encode"] == pytest.approx(
        b4["vae_encode"] / 2, 1e-6
    )


def test_without_checkpointing_or_mixed_precision_the_estimate_grows():
    cfg = load_preset("kohaku-xl-delta")
    base = estimate_phases(_sdxl(), cfg)
    cfg.training.gradient_checkpointing = False
    no_gc = estimate_phases(_sdxl(), cfg)
    assert no_gc.peak > base.peak + 20 * GIB  # every layer's activations and merged weights are kept
    assert no_gc.transient["backward"] == no_gc.transient["unet_forward"]
    cfg.training.gradient_checkpointing = True
    cfg.training.mixed_precision = "no"
    fp32 = estimate_phases(_sdxl(), cfg)
    assert fp32.weights == (2_567_463_684 + 817_720_320) * 4 + 83_653_863 * 4
    assert fp32.transient["backward"] > base.transient["backward"]


def test_selective_sits_between_full_and_none():
    cfg = load_preset("kohaku-xl-delta")
    est = {}
    for mode in ("full", "selective", "none"):
        cfg.training.checkpointing = mode
        est[mode] = estimate_phases(_sdxl(), cfg)
    assert est["full"].peak + 3 * GIB < est["selective"].peak < est["none"].peak - 20 * GIB
    # the TEs are checkpointed in both
    assert est["selective"].transient["te_forward"] == est["full"].transient["te_forward"]
    assert est["selective"].resident == est["full"].resident == est["none"].resident
    b1 = estimate_phases(_sdxl(), cfg, batch=1)
    cfg.training.checkpointing = "selective"
    # activations scale with the batch
    assert estimate_phases(_sdxl(), cfg, batch=1).peak < est["selective"].peak
    assert b1.peak < est["none"].peak


def test_estimate_memory_is_the_peak_phase():
    cfg = load_preset("kohaku-xl-delta")
    phases = estimate_phases(_sdxl(), cfg)
    est = estimate_memory(_sdxl(), cfg, gpu=False)
    assert est.total == phases.peak
    assert est.activations == phases.transient["backward"]
    assert est.lokr == phases.lokr_params + phases.gradients and est.optimizer == phases.optimizer
    gpu = estimate_memory(_sdxl(), cfg, gpu=True)
    assert gpu.overhead > 0 and gpu.total == est.total + gpu.overhead  # CUDA context etc., GPUs only


def test_optimizer_state_bytes():
    assert optimizer_state_bytes("Lion8bit", [4096, 4095]) == 4096 + 4 * 16 + 4 * 4095
    assert optimizer_state_bytes("AdamW8bit", [4096]) == 2 * (4096 + 4 * 16)
    assert optimizer_state_bytes("AdamW", [10]) == 80 and optimizer_state_bytes("Lion", [10]) == 40
    with pytest.raises(ValueError):
        optimizer_state_bytes("SGD", [1])
