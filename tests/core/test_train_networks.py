"""The Kohaku LyCORIS preset on full-size SDXL (meta device) and the saved LoKr's round trip (specs §1.3, §1.4)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from trainer_core.train.config import load_preset  # noqa: E402


def test_kohaku_preset_on_full_sdxl_counts_and_names():
    import torch

    from trainer_core.lokr.keys import module_targets
    from trainer_core.models.architectures import build_empty_components, sgm_shapes
    from trainer_core.train.checkpoint import lokr_tensors
    from trainer_core.train.networks import create_networks

    models = build_empty_components("sdxl-base", "meta")
    nets = create_networks(models, load_preset("kohaku-xl-delta").network, device="meta")
    assert nets.module_count() == {"LokrModule": 1058, "NormModule": 256}
    assert {c: len(n.loras) for c, n in nets.nets.items()} == {
        "unet": 1050,
        "text_encoder": 72,
        "text_encoder_2": 192,
    }
    state = nets.state_dict()
    assert len(state) == 3686
    assert sum(v.numel() for v in state.values()) == 384_646_418  # ≈ 384.6 M, 769.3 MB in fp16
    assert all(v.dtype == torch.float32 for v in state.values())
    # Spot shapes from the spec: attn1.to_q (4,4);(320,320), ff.net.0.proj (2,2);(5120,640), conv_in (8,2);(40,2,3,3).
    blk = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_"
    assert tuple(state[blk + "attn1_to_q.lokr_w1"].shape) == (4, 4)
    assert tuple(state[blk + "attn1_to_q.lokr_w2"].shape) == (320, 320)
    assert tuple(state[blk + "ff_net_0_proj.lokr_w2"].shape) == (5120, 640)
    assert tuple(state["lora_unet_conv_in.lokr_w2"].shape) == (40, 2, 3, 3)
    assert state["lora_unet_conv_in.alpha"].shape == ()

    # File names: kohya/SGM spelling, TE1 with text_model_, and every UNet module names a single-file tensor.
    meta_state = {k: torch.empty(v.shape, dtype=torch.float16) for k, v in state.items()}
    saved = lokr_tensors(meta_state, "sdxl-base")
    assert len(saved) == 3686
    modules = {k.rsplit(".", 1)[0] for k in saved}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules
    assert (
        "lora_unet_out_0" in modules
        and "lora_unet_input_blocks_0_0" in modules
        and "lora_unet_label_emb_0_0" in modules
    )
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2" in modules
    assert not any(m.startswith("lora_te1_encoder_") or "down_blocks" in m for m in modules)
    targets, sgm = module_targets("sdxl-base"), sgm_shapes("sdxl-base")
    unet_modules = [m for m in modules if m.startswith("lora_unet_")]
    assert len(unet_modules) == 1050
    for m in unet_modules:
        assert targets[m].name == m
        assert targets[m].weight.sgm_key in sgm


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """Tiny components with networks whose every tensor is non-zero (fp16-exact values) and the saved file."""
    import torch

    from trainer_core.models.tiny import build_tiny_components
    from trainer_core.train.checkpoint import save_lokr
    from trainer_core.train.networks import create_networks

    comps = build_tiny_components(0)
    for m in comps.models().values():
        m.requires_grad_(False)
    torch.manual_seed(0)
    nets = create_networks({"unet": comps.unet, "text_encoder": comps.text_encoder,
                            "text_encoder_2": comps.text_encoder_2}, load_preset("tiny-demo").network)  # fmt: skip
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in nets.named_parameters():
            if not name.endswith("alpha"):
                p.copy_((torch.randn(p.shape, generator=gen) * 0.05).half().float())
    path = tmp_path_factory.mktemp("lokr") / "tiny.safetensors"
    save_lokr(path, nets.state_dict(), "kxl-tiny", {"ss_base_model_version": "sdxl_base_v1-0"})
    return comps, nets, path


def _outputs(comps):
    """UNet noise prediction and both TEs' hidden states for fixed inputs (what a LoKr changes)."""
    import torch

    from trainer_core.train.text_encoding import encode_tokens, tokenize_captions

    ids1 = tokenize_captions(["1girl, red hair"], comps.tokenizer, 225)
    ids2 = tokenize_captions(["1girl, red hair"], comps.tokenizer_2, 225, pad_id=0)
    with torch.no_grad():
        ctx, pooled = encode_tokens(ids1, ids2, comps.text_encoder, comps.text_encoder_2)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((1, 4, 8, 8), generator=gen)
        pred = comps.unet(x, torch.tensor([500]), encoder_hidden_states=ctx,
                          added_cond_kwargs={"text_embeds": pooled,
                                             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}).sample  # fmt: skip
    return ctx, pooled, pred


def test_saved_lokr_file_layout(tiny_trained):
    from trainer_core.lokr.file import read_lokr
    from trainer_core.models.safetensors_header import read_header

    _, nets, path = tiny_trained
    header = read_header(path)
    assert len(header.tensors) == len(nets.state_dict())
    assert {t.dtype for t in header.tensors.values()} == {"F16"}
    lokr = read_lokr(path, "kxl-tiny")
    assert lokr.unmatched == []
    assert sum(m.is_norm for m in lokr.modules) == nets.module_count()["NormModule"]


def test_saved_lokr_loads_back_via_lycoris_and_our_bake(tiny_trained):
    """Live network == lycoris-lora reloading the file == trainer_core.lokr's bake, on UNet and TE outputs."""
    import torch
    from lycoris import LycorisNetwork, create_lycoris_from_weights
    from safetensors.torch import load_file

    from trainer_core.lokr.file import read_lokr
    from trainer_core.lokr.keys import module_targets
    from trainer_core.lokr.math import lokr_delta
    from trainer_core.models.tiny import build_tiny_components
    from trainer_core.train.networks import NETWORK_PREFIXES

    comps, _, path = tiny_trained
    live = _outputs(comps)
    base = _outputs(build_tiny_components(0))
    assert not torch.allclose(live[2], base[2], atol=1e-4)  # the network really changes the output

    # 1) our bake: W += ΔW, norm weight/bias += w_norm/b_norm, on fresh components
    baked = build_tiny_components(0)
    with torch.no_grad():
        for mod in read_lokr(path, "kxl-tiny").modules:
            w = mod.target.weight
            model = getattr(baked, w.component)
            params = dict(model.named_parameters())
            if mod.is_norm:
                params[w.diffusers_key].add_(mod.tensors["w_norm"].float())
                params[mod.target.bias.diffusers_key].add_(mod.tensors["b_norm"].float())
            else:
                p = params[w.diffusers_key]
                p.add_(lokr_delta(mod.tensors, tuple(p.shape)))
    for a, b in zip(_outputs(baked), live, strict=True):
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-3)

    # 2) lycoris-lora: rename SGM file keys to each model's own module paths, load, apply
    fresh = build_tiny_components(0)
    targets = module_targets("kxl-tiny")
    file_sd = load_file(str(path))
    for comp, prefix in NETWORK_PREFIXES.items():
        model = getattr(fresh, comp)
        own = {}
        for mname, _ in model.named_modules():
            lyco = f"{prefix}_{mname}".replace(".", "_")
            if lyco in targets:
                own[targets[lyco].name] = lyco
        sd = {}
        for key, value in file_sd.items():
            module, suffix = key.rsplit(".", 1)
            if module in own:
                sd[f"{own[module]}.{suffix}"] = value.float()
        LycorisNetwork.apply_preset({"lora_prefix": prefix})
        net, _ = create_lycoris_from_weights(1.0, "", model, weights_sd=sd)
        assert len(net.loras) == len({k.rsplit(".", 1)[0] for k in sd}) > 0
        net.apply_to()
        net.load_state_dict(sd, strict=False)
    LycorisNetwork.apply_preset({"lora_prefix": "lycoris"})
    for a, b in zip(_outputs(fresh), live, strict=True):
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-3)
