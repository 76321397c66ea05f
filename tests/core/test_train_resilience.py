"""#14.7-9: a run that lasts — skipped non-finite steps, the fp16 GradScaler path on CPU, saves by wall time,
gradient checkpointing equivalence, and launch lines for other machines."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import write_tiny_run_config, write_train_squares

from trainer_core.train.config import load_preset
from trainer_core.train.events import read_events

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_train_squares(tmp_path_factory.mktemp("resilience-assets"))


def _run(tmp_path: Path, assets, inject: str = "", **training) -> tuple[subprocess.CompletedProcess, Path]:
    run = tmp_path / "run"
    write_tiny_run_config(run, *assets, **{"max_steps": 6, **training})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "KXL_INJECT_NONFINITE_GRAD": inject}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "trainer_core.train", str(run / "config.toml")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    return proc, run


def _steps(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in read_events(run) if e["type"] == "step"}


def test_fp16_grad_scaler_skips_an_inf_gradient_halves_the_scale_and_goes_on(assets, tmp_path):
    proc, run = _run(tmp_path, assets, inject="3,4", mixed_precision="fp16", save_every_minutes=0.0005)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = _steps(run)
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    scale = {n: e["loss_scale"] for n, e in steps.items()}
    assert steps[3]["skipped"] and steps[4]["skipped"] and steps[4]["nonfinite_total"] == 2
    assert scale[3] == scale[2] / 2 and scale[4] == scale[3] / 2 and scale[6] == scale[4]
    assert not any(steps[n].get("skipped") for n in (1, 2, 5, 6))
    # saves by wall time: every step boundary here, since the interval is 0.03 s
    reasons = [e["reason"] for e in read_events(run) if e["type"] == "save"]
    assert reasons.count("time") >= 3 and reasons[-1] == "final"
    from safetensors.torch import load_file

    lokr = load_file(str(run / "checkpoints" / "tiny-demo-lokr.safetensors"))
    assert all(bool(t.float().isfinite().all()) for t in lokr.values())


def test_an_inf_gradient_without_scaler_is_skipped_not_applied(assets, tmp_path):
    proc, run = _run(tmp_path, assets, inject="2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = _steps(run)
    assert steps[2]["skipped"] and steps[2]["nonfinite_total"] == 1
    assert not any(steps[n].get("skipped") for n in (1, 3, 4, 5, 6))
    assert all(math.isfinite(steps[n]["loss"]) for n in (3, 4, 5, 6))  # the weights were never poisoned


def test_a_streak_of_non_finite_steps_ends_the_run_with_exit_3(assets, tmp_path):
    proc, run = _run(tmp_path, assets, inject="2,3,4", max_nonfinite_steps=3)
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [e for e in read_events(run) if e["type"] == "error"]
    assert errors and "non-finite for 3 steps in a row" in errors[-1]["message"]
    assert errors[-1]["exit_code"] == 3


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    import torch

    from trainer_core.models.tiny import build_tiny_components
    from trainer_core.train.config import NetworkConfig
    from trainer_core.train.networks import create_networks

    results = []
    for checkpointing in (False, True):
        comps = build_tiny_components(0)
        unet = comps.unet
        unet.requires_grad_(False)
        torch.manual_seed(0)
        nets = create_networks({"unet": unet}, NetworkConfig(train_text_encoder=False))
        for p in nets.parameters():  # LoKr w2 starts at zero: give every factor a value so gradients flow
            p.data.normal_(0, 0.02)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        g = torch.Generator().manual_seed(1)
        sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
        ctx = torch.randn(2, 8, unet.config.cross_attention_dim, generator=g)
        text = torch.randn(2, comps.text_encoder_2.config.projection_dim, generator=g)
        time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
        out = unet(sample, torch.tensor([10, 500]), encoder_hidden_states=ctx,
                   added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}).sample  # fmt: skip
        loss = out.square().mean()
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in nets.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_print_launch_targets_gpus_and_names_what_each_machine_needs(tmp_path, capsys):
    from trainer_core.cli import main as kxl_main

    cfg = load_preset("tiny-demo")
    cfg.model.base, cfg.dataset.path = "/data/base.safetensors", "/data/set"
    (tmp_path / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    argv = ["train", str(tmp_path / "config.toml"), "--print-launch", "--machines", "2", "--processes", "2"]
    assert kxl_main(argv) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(lines) == 2
    assert "ACCELERATE_USE_CPU" not in out and "--num_cpu_threads_per_process" not in out
    assert all(
        ln.startswith("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True accelerate launch ") for ln in lines
    )
    assert sys.executable not in out
    assert "/data/base.safetensors" in out and "/data/set" in out  # what every machine must have
    assert kxl_main([*argv, "--cpu"]) == 0
    cpu = capsys.readouterr().out
    assert "ACCELERATE_USE_CPU=true" in cpu and "--num_cpu_threads_per_process" not in cpu
    with pytest.raises(SystemExit):
        kxl_main([*argv, "--cpu", "--gpu"])
    capsys.readouterr()
    assert kxl_main(["train", str(tmp_path / "config.toml"), "--data-seed", "3"]) == 2
    assert "--data-seed goes with --resume" in capsys.readouterr().err
