"""Trainer building blocks against the formulas of specs/training.md §2 (no training run here)."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from trainer_core.errors import KxlError  # noqa: E402
from trainer_core.train import config as tcfg  # noqa: E402


# ------------------------------------------------------------------------------------------------ config
def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_presets_hold_the_card_values():
    cfg = tcfg.load_preset("kohaku-xl-delta")
    n, o, t, d = cfg.network, cfg.optimizer, cfg.training, cfg.dataset
    assert (n.algo, n.dim, n.alpha, n.factor, n.train_norm, n.train_text_encoder) == ("lokr", 10000, 10000.0, 8,
                                                                                     True, True)  # fmt: skip
    assert n.module_factors == {"Attention": 4, "FeedForward": 2, "CLIPAttention": 8, "CLIPMLP": 8}
    assert (o.type, o.unet_lr, o.text_encoder_lr, o.betas, o.weight_decay) == ("Lion8bit", 4e-5, 1e-5, [0.9, 0.95],
                                                                               0.1)  # fmt: skip
    assert (o.lr_scheduler, o.lr_warmup_steps, o.max_grad_norm) == ("constant_with_warmup", 100, 1.0)
    assert (t.batch_size, t.gradient_accumulation_steps, t.min_snr_gamma, t.noise_offset) == (
        4,
        16,
        5.0,
        0.05,
    )
    assert (t.mixed_precision, t.gradient_checkpointing) == ("fp16", True)
    assert (d.resolution, d.min_bucket_reso, d.max_bucket_reso, d.bucket_step) == (1024, 256, 4096, 64)
    assert (d.shuffle_caption, d.caption_tag_dropout_rate, d.keep_tokens_separator, d.max_token_length) == (
        True, 0.1, "|||", 225)  # fmt: skip
    tiny = tcfg.load_preset("tiny-demo")
    # the card's LoKr, its factors scaled to the tiny model's 8-16x narrower layers (the preset says why)
    assert (
        replace(tiny.network, factor=cfg.network.factor, module_factors=cfg.network.module_factors)
        == cfg.network
    )
    assert (tiny.network.factor, tiny.network.module_factors) == (2, {"Attention": 1, "FeedForward": 1,
                                                                      "CLIPAttention": 1, "CLIPMLP": 1})  # fmt: skip
    assert tiny.optimizer.type == "Lion" and tiny.training.mixed_precision == "no"
    assert set(tcfg.preset_names()) >= {"kohaku-xl-delta", "tiny-demo"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[model]\nbase='x'\n", "schema_version"),
        ("schema_version = 9\n", "schema_version 9"),
        ("schema_version = 1\n[training]\nbatch_sise = 2\n", "training.batch_sise"),
        (
            "schema_version = 1\n[training]\nbatch_size = 'two'\n",
            "'training.batch_size' must be a whole number",
        ),
        ("schema_version = 1\n[optimizer]\ntype = 'SGD'\n", "'optimizer.type' must be one of"),
        ("schema_version = 1\n[dataset]\nbucket_step = 48\n", "bucket_step"),
        ("schema_version = 1\n[trainig]\n", "unknown section [trainig]"),
        ("schema_version = 1\n[optimizer]\nbetas = [0.9]\n", "optimizer.betas"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(KxlError) as err:
        tcfg.load_config(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_config_roundtrip_and_relative_paths(tmp_path):
    cfg = tcfg.load_preset("tiny-demo")
    cfg.model.base = "models/base.safetensors"
    cfg.dataset.path = "data"
    path = _write(tmp_path, cfg.to_toml())
    back = tcfg.load_config(path)
    assert back.to_dict() == cfg.to_dict()
    assert back.base_path == tmp_path / "models" / "base.safetensors"
    assert back.run_dir == tmp_path
    # Length/cadence changes keep the resume fingerprint; a learning-rate change does not.
    fp = back.resume_fingerprint()
    back.training.max_steps = 99
    back.training.save_every_n_steps = 3
    assert back.resume_fingerprint() == fp
    back.optimizer.unet_lr = 1.0
    assert back.resume_fingerprint() != fp


# ------------------------------------------------------------------------------------------------ loss
def test_alphas_cumprod_matches_scaled_linear_formula():
    from trainer_core.train.loss import alphas_cumprod

    acp = alphas_cumprod()
    betas = [
        (math.sqrt(0.00085) + i / 999 * (math.sqrt(0.012) - math.sqrt(0.00085))) ** 2 for i in range(1000)
    ]
    prod = 1.0
    expected = []
    for b in betas:
        prod *= 1 - b
        expected.append(prod)
    for i in (0, 1, 146, 147, 500, 999):
        assert acp[i].item() == pytest.approx(expected[i], rel=1e-12)


def test_min_snr_weights_match_spec_values():
    import torch

    from trainer_core.train.loss import alphas_cumprod, min_snr_weights, snr

    acp = alphas_cumprod()
    t = torch.tensor([0, 146, 147, 500, 999])
    s = snr(t, acp)
    assert s[0].item() == pytest.approx(1175, rel=0.01)  # SNR(0) ≈ 1175
    assert s[-1].item() == pytest.approx(0.0047, rel=0.02)
    w = min_snr_weights(t, acp, 5.0)
    assert w[0].item() == pytest.approx(5 / s[0].item(), rel=1e-6) and w[0].item() == pytest.approx(
        0.0043, abs=1e-4
    )
    assert s[1].item() > 5 and w[1].item() < 1  # t = 146 still clipped
    assert w[2:].tolist() == [1.0, 1.0, 1.0]  # from t = 147 on, SNR <= 5
    wv = min_snr_weights(t, acp, 5.0, v_prediction=True)
    expected_v = torch.clamp(s, max=5) / (s + 1)
    assert torch.allclose(wv, expected_v.float())
    assert min_snr_weights(t, acp, 0.0).tolist() == [1.0] * 5


def test_noise_offset_is_one_scalar_per_sample_and_channel():
    import torch

    from trainer_core.train.loss import sample_noise

    lat = torch.zeros(3, 4, 8, 8)
    offset = sample_noise(lat, 0.05, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    eps = torch.randn((3, 4, 8, 8), generator=gen)
    per_channel = torch.randn((3, 4, 1, 1), generator=gen)
    assert offset.shape == (3, 4, 8, 8)
    assert torch.allclose(offset, eps + 0.05 * per_channel)  # ε + o·N(0,1) of shape (B, C, 1, 1)
    diff = offset - eps
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff)) and diff[:, :, 0, 0].std() > 0
    assert torch.equal(sample_noise(lat, 0.0, torch.Generator().manual_seed(1)), eps)


def test_v_prediction_target_formula():
    import torch

    from trainer_core.train.loss import alphas_cumprod, target_for

    acp = alphas_cumprod()
    x0, eps, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    v = target_for(x0, eps, t, acp, True)
    a = acp[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    assert target_for(x0, eps, t, acp, False) is eps


# ------------------------------------------------------------------------------------------------ schedule
def test_warmup_is_counted_in_optimizer_steps():
    from trainer_core.train.optim import lr_factor

    assert [lr_factor("constant_with_warmup", s, 100, 1000) for s in (0, 1, 50, 99, 100, 5000)] == [
        0.0, 0.01, 0.5, 0.99, 1.0, 1.0]  # fmt: skip
    assert lr_factor("constant", 0, 0, 10) == 1.0
    assert lr_factor("linear", 55, 10, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 10 + 45, 10, 100) == pytest.approx(0.5)


def test_two_param_groups_te_first():
    import torch

    from trainer_core.train.optim import create_optimizer, param_groups, set_learning_rates

    cfg = tcfg.load_preset("kohaku-xl-delta").optimizer
    te, un = [torch.nn.Parameter(torch.zeros(3))], [torch.nn.Parameter(torch.zeros(5000))]
    opt = create_optimizer(param_groups(te, un, cfg), cfg)
    assert type(opt).__name__ == "Lion8bit"
    assert [g["name"] for g in opt.param_groups] == ["textencoder", "unet"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert set_learning_rates(opt, cfg, 50, 1000) == {
        "textencoder": pytest.approx(5e-6),
        "unet": pytest.approx(2e-5),
    }


# ------------------------------------------------------------------------------------------------ data
def test_time_ids_use_sd_scripts_fitted_crop():
    from trainer_core.train.data import time_ids_for

    # spec §2.3: 1920×1080 into 1344×768 -> crop (top 6, left 0), although the real crop trims the width.
    assert time_ids_for((1920, 1080), (1344, 768)) == [1080, 1920, 6, 0, 768, 1344]
    # Taller than the bucket: fitted by height, offset on the left.
    assert time_ids_for((900, 1200), (896, 1152)) == [1200, 900, 0, 16, 1152, 896]
    assert time_ids_for((1024, 1024), (1024, 1024)) == [1024, 1024, 0, 0, 1024, 1024]


def test_time_ids_embedding_matches_diffusers_timesteps():
    """§2.3: the 6 ints become 6 × 256 sinusoids, [cos, sin], freqs exp(−ln(10000)·i/128)."""
    import torch
    from diffusers.models.embeddings import Timesteps

    ids = torch.tensor([[1080.0, 1920.0, 6.0, 0.0, 768.0, 1344.0]])
    emb = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(ids.flatten()).reshape(1, -1)
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    args = ids.flatten()[:, None] * freqs[None]
    manual = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(1, -1)
    assert emb.shape == (1, 1536)
    assert torch.allclose(emb, manual, atol=1e-5)


def _kohya_folder(root: Path, sizes: list[tuple[int, int]], repeats: int = 2) -> Path:
    from PIL import Image

    sub = root / f"{repeats}_set"
    sub.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 40, 0, 0)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(f"1girl ||| tag{i}, red\nsecond line ignored", encoding="utf-8")
    return root


def test_dataset_scan_repeats_and_rank_sharding(tmp_path):
    from trainer_core.train.config import DatasetConfig
    from trainer_core.train.data import BucketPlan, scan_dataset, tag_frequency

    root = _kohya_folder(tmp_path / "ds", [(64, 64), (128, 64), (64, 128), (64, 64), (64, 64)])
    items = scan_dataset(root)
    assert [it.caption for it in items][:1] == ["1girl ||| tag0, red"] and items[1].size == (128, 64)
    assert tag_frequency(items) == {"2_set": {"1girl": 5, "red": 5, **{f"tag{i}": 1 for i in range(5)}}}
    cfg = DatasetConfig(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_step=64)
    plan = BucketPlan(items, cfg, batch_size=2)
    assert len(plan.entries) == 10
    batches = plan.epoch_batches(0, seed=3)
    assert sorted(e for b in batches for e in b) == list(range(10))  # every entry once per epoch
    for b in batches:  # one bucket per batch
        assert len({plan.entries[e].assignment.bucket for e in b}) == 1
    assert plan.epoch_batches(0, 3) == batches and plan.epoch_batches(1, 3) != batches
    r0 = plan.rank_micro_batches(0, 3, world=2, rank=0, accum=2)
    r1 = plan.rank_micro_batches(0, 3, world=2, rank=1, accum=2)
    assert len(r0) == len(r1) == plan.steps_per_epoch(2, 2) * 2
    assert r0[0] == batches[0] and r1[0] == batches[1]  # ranks see different batches


def test_dataset_bad_input_messages(tmp_path):
    from trainer_core.train.config import DatasetConfig
    from trainer_core.train.data import BucketPlan, scan_dataset

    with pytest.raises(KxlError, match="dataset folder not found"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(KxlError, match="repeats"):
        scan_dataset(tmp_path / "flat")
    root = _kohya_folder(tmp_path / "ds", [(64, 64)], repeats=1)
    (root / "1_set" / "0.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(KxlError, match="caption is empty") as err:
        scan_dataset(root)
    assert "0.txt" in str(err.value)
    (root / "1_set" / "0.txt").write_text("a", encoding="utf-8")
    with pytest.raises(KxlError, match="fewer than one batch of 4"):
        BucketPlan(
            scan_dataset(root), DatasetConfig(resolution=128, min_bucket_reso=64, max_bucket_reso=256), 4
        )


def test_caption_chunks_follow_sd_scripts_rules():
    import torch

    from trainer_core.models.tokenizers import load_sdxl_tokenizers
    from trainer_core.train.text_encoding import tokenize_captions

    tok1, tok2 = load_sdxl_tokenizers()
    long = ", ".join(f"tag{i}" for i in range(60))  # > 75 tokens: spills into chunk 2
    ids1 = tokenize_captions([long, "1girl"], tok1, 225)
    ids2 = tokenize_captions([long, "1girl"], tok2, 225, pad_id=0)
    assert ids1.shape == ids2.shape == (2, 3, 77)
    bos, eos = tok1.bos_token_id, tok1.eos_token_id
    full = tok1([long], max_length=227, padding="max_length", truncation=True)["input_ids"][0]
    assert ids1[0, 0].tolist() == full[:76] + [full[-1]]
    assert ids1[0, 1, 1:76].tolist() == full[76:151]
    assert (ids1[:, :, 0] == bos).all()
    # TE2 pads with 0; chunk 0 of a long caption is cut mid-text, so its last id becomes EOS.
    assert ids2[0, 0, -1].item() == eos
    # An empty chunk (BOS, PAD, ...) gets EOS at position 1.
    assert ids2[1, 2, :3].tolist() == [bos, eos, 0]
    assert ids1[1, 2, 1].item() == eos and torch.all(ids2[1, 0, 4:] == 0)


def test_launch_commands_for_cpu_ddp_and_multi_node(tmp_path):
    from trainer_core.train.launch import LaunchPlan, launch_command, per_node_commands

    cfg = tmp_path / "config.toml"
    argv, env = launch_command(LaunchPlan(cfg, processes=2, cpu=True, port=1234))
    assert env == {"ACCELERATE_USE_CPU": "true"}
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in argv and argv[argv.index("--num_processes") + 1] == "2"
    assert argv[-3:] == ["-m", "trainer_core.train", str(cfg)]
    lines = per_node_commands(LaunchPlan(cfg, processes=4, machines=2, main_ip="10.0.0.5", cpu=False,
                                         mixed_precision="fp16", resume=True))  # fmt: skip
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"--machine_rank {rank}" in line and "--num_processes 8" in line and "--num_machines 2" in line
        assert "--main_process_ip 10.0.0.5" in line and line.endswith("--resume")
        assert "ACCELERATE_USE_CPU" not in line
    single, _ = launch_command(LaunchPlan(cfg, processes=1, cpu=True))
    assert "--multi_gpu" not in single


# ------------------------------------------------------------------------------------------------ checkpointing
@pytest.mark.parametrize(
    ("training", "mode"),
    [
        ("gradient_checkpointing = true", "full"),
        ("gradient_checkpointing = false", "none"),
        ('checkpointing = "selective"', "selective"),
        ('checkpointing = "selective"\ngradient_checkpointing = true', "selective"),
        ("", "full"),
    ],
)
def test_checkpointing_setting_reads_the_old_bool_as_an_alias(tmp_path, training, mode):
    cfg = tcfg.load_config(_write(tmp_path, f"schema_version = 1\n[training]\n{training}\n"))
    assert cfg.training.checkpointing == mode
    assert cfg.training.gradient_checkpointing == (mode != "none")
    text = cfg.to_toml()
    assert f'checkpointing = "{mode}"' in text and "gradient_checkpointing" not in text
    assert tcfg.load_config(_write(tmp_path, text)).training.checkpointing == mode


@pytest.mark.parametrize(
    ("training", "needle"),
    [
        (
            'checkpointing = "some"',
            "'training.checkpointing' must be one of full, selective, none, got 'some'",
        ),
        ('checkpointing = "none"\ngradient_checkpointing = true', "contradicts 'training.checkpointing"),
        ('checkpointing = "full"\ngradient_checkpointing = false', "gradient_checkpointing = false"),
        ("gradient_checkpointing = 1", "'training.gradient_checkpointing' must be true or false"),
    ],
)
def test_bad_checkpointing_setting_names_file_and_key(tmp_path, training, needle):
    path = _write(tmp_path, f"schema_version = 1\n[training]\n{training}\n")
    with pytest.raises(KxlError) as err:
        tcfg.load_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_resume_fingerprint_of_the_old_bool_is_kept(tmp_path):
    """A state saved before `checkpointing` existed (its config says gradient_checkpointing = true) still resumes;
    selective and full are the same math and may be swapped on resume, none could not be before and still cannot."""
    text = (
        tcfg.load_preset("kohaku-xl-delta")
        .to_toml()
        .replace('checkpointing = "full"', "gradient_checkpointing = true")
    )
    assert "gradient_checkpointing = true" in text
    legacy = tcfg.load_config(_write(tmp_path, text))
    prints = {}
    for mode in tcfg.CHECKPOINTING:
        cfg = tcfg.load_config(_write(tmp_path, text))
        cfg.training.checkpointing = mode
        prints[mode] = cfg.resume_fingerprint()
    assert prints["full"] == prints["selective"] == legacy.resume_fingerprint() != prints["none"]
    # the hash is the one of the old settings dict, where the bool sat under its own name
    import hashlib
    import json

    d = legacy.to_dict()
    d["dataset"].pop("num_workers")
    d["training"]["gradient_checkpointing"] = d["training"].pop("checkpointing") != "none"
    kept = ("epochs", "max_steps", "save_every_n_steps", "keep_states", "sample_every", "sample_prompts",
            "sample_steps", "save_every_minutes", "max_nonfinite_steps", "data_seed", "ddp_timeout_minutes")  # fmt: skip
    d["training"] = {k: v for k, v in d["training"].items() if k not in kept}
    d["model"]["base"], d["dataset"]["path"] = (
        str(legacy.base_path.resolve()),
        str(legacy.dataset_path.resolve()),
    )
    d.pop("output")
    assert (
        legacy.resume_fingerprint() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    )


def _tiny_micro_step(mode: str):
    """One trainer micro-step (micro_step.micro_loss + backward_micro) of the tiny model with LoKr on the UNet and
    both TEs under `training.checkpointing = mode`: (loss, gradients, forward calls per block kind in the forward,
    forward calls per block kind during the backward)."""
    import contextlib
    from collections import Counter

    import torch

    from trainer_core.models.tiny import build_tiny_components
    from trainer_core.train.loss import alphas_cumprod
    from trainer_core.train.micro_step import backward_micro, micro_loss, prepare_for_training
    from trainer_core.train.networks import create_networks
    from trainer_core.train.text_encoding import tokenize_captions

    cfg = tcfg.load_preset("tiny-demo")
    cfg.training.checkpointing = mode
    comps = build_tiny_components(0)
    prepare_for_training(comps, cfg.training, torch.device("cpu"))
    torch.manual_seed(0)
    models = {"unet": comps.unet, "text_encoder": comps.text_encoder, "text_encoder_2": comps.text_encoder_2}
    nets = create_networks(models, cfg.network)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        # LoKr w2 starts at zero: give every factor a value so every gradient flows
        for p in nets.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    calls: Counter = Counter()
    for m in comps.unet.modules():
        kind = type(m).__name__
        if kind in ("BasicTransformerBlock", "ResnetBlock2D"):
            # a PRE-hook: torch's non-reentrant recompute stops as soon as it has what the backward needs, so a
            # recomputed block never reaches its forward (post-)hooks
            m.register_forward_pre_hook(lambda *_, kind=kind: calls.update([kind]))
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    captions = ["1girl, solo, smile, outdoors", "cat, window, sunlight"]
    ids1 = tokenize_captions(captions, comps.tokenizer, cfg.dataset.max_token_length)
    ids2 = tokenize_captions(captions, comps.tokenizer_2, cfg.dataset.max_token_length, pad_id=0)
    time_ids = torch.tensor([[128.0, 128, 0, 0, 128, 128]] * 2)
    loss = micro_loss(comps, cfg, latents, ids1, ids2, time_ids, g, alphas_cumprod(), torch.device("cpu"),
                      contextlib.nullcontext)  # fmt: skip
    forward = Counter(calls)
    backward_micro(loss, 1)
    recomputed = calls - forward
    grads = [p.grad.clone() if p.grad is not None else None for p in nets.parameters()]
    return float(loss.detach()), grads, forward, recomputed


def test_selective_checkpointing_gives_the_same_loss_and_gradients_and_recomputes_only_transformer_blocks():
    import torch

    none_loss, none_grads, forward, none_re = _tiny_micro_step("none")
    assert forward["BasicTransformerBlock"] > 0 and forward["ResnetBlock2D"] > 0
    assert not none_re  # nothing runs twice without checkpointing
    for mode in ("selective", "full"):
        loss, grads, fwd, recomputed = _tiny_micro_step(mode)
        assert fwd == forward
        assert loss == pytest.approx(none_loss, rel=1e-6)
        assert len(grads) == len(none_grads) > 0
        # TE1's last layer feeds nothing (SDXL takes its penultimate hidden states): no gradient in any mode
        assert [g is None for g in grads] == [g is None for g in none_grads]
        assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
        for a, b in zip(grads, none_grads, strict=True):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        # the backward runs every transformer block's forward again; only "full" also re-runs the ResNet blocks
        assert recomputed["BasicTransformerBlock"] == forward["BasicTransformerBlock"]
        # (diffusers runs the mid block's first ResNet outside its checkpoint: "full" re-runs all others)
        assert recomputed["ResnetBlock2D"] == (forward["ResnetBlock2D"] - 1 if mode == "full" else 0)


def test_training_dtypes_are_what_prepare_for_training_leaves():
    import torch

    from trainer_core.train.micro_step import training_dtypes

    cfg = tcfg.load_preset("kohaku-xl-delta")
    assert training_dtypes(cfg.training) == {"unet": torch.float16, "text_encoder": torch.float16,
                                             "text_encoder_2": torch.float16, "vae": torch.float32}  # fmt: skip
    cfg.training.mixed_precision, cfg.training.vae_dtype = "bf16", "bf16"
    assert set(training_dtypes(cfg.training).values()) == {torch.bfloat16}
    assert set(training_dtypes(tcfg.load_preset("tiny-demo").training).values()) == {torch.float32}


def test_bf16_is_refused_on_a_gpu_older_than_ampere(monkeypatch):
    import torch

    from trainer_core.train.micro_step import check_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    t = tcfg.load_preset("kohaku-xl-delta").training
    check_precision(t, torch.device("cuda"))  # fp16: any GPU
    t.mixed_precision = "bf16"
    check_precision(t, torch.device("cpu"))  # CPU autocast is the CPU's business
    with pytest.raises(
        KxlError, match=r"needs an NVIDIA Ampere or newer GPU.*Tesla T4, compute capability 7\.5"
    ):
        check_precision(t, torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    check_precision(t, torch.device("cuda:0"))
